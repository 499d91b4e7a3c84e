//! The tvaers daemon as a library: everything `tvaersd` runs, cut by
//! responsibility so a reader finds each step of a notice's trip in one file:
//!
//! | step | file |
//! |---|---|
//! | a local system submits | [`api::submit`] (signed there, [`signing`]) |
//! | the notice is persisted | [`store`] ([`store::sqlite`]), its envelope encrypted by [`store::sealed`] |
//! | it is scheduled and retried | [`delivery::machine`] (no I/O), driven by [`delivery::driver`]; which instance sends it: [`lease`] |
//! | it crosses the network | [`transport`] (pinned mutual TLS over QUIC, length-prefixed frames) |
//! | the peer receives it | [`receive`] |
//! | it is routed to staff inboxes | [`routing`] |
//! | its handling deadline passes | [`escalation`] (no I/O), in [`working_hours`], applied by [`escalator`] |
//! | it is read from the inbox | [`api::inbox`], woken across instances by [`inbox_signal`] |
//! | the team's own system is told | [`webhook`] (the notice as JSON, on opt-in: [`notice_json`]) |
//! | the sender learns who took it | [`api::handling`] (handled and overdue receipts), [`care_team`] |
//!
//! [`daemon`] wires these together and owns graceful shutdown; [`config`]
//! turns the TOML file into typed settings; [`peers`] holds who we exchange
//! with and applies trust changes while running; [`admin`] is what the
//! `tvaers` CLI asks; [`metrics`] is what operators scrape; [`retention`]
//! purges notice bodies once they are no longer needed; [`at_rest`] holds
//! the keys of encryption at rest and [`identity`] the site's key files;
//! [`audit`] is the tamper-evident audit log of everything above.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod at_rest;
pub mod audit;
pub mod batch;
pub mod care_team;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod escalation;
pub mod escalator;
pub mod identity;
pub mod inbox_signal;
pub mod lease;
pub mod metrics;
pub mod notice_json;
pub mod peers;
pub mod receive;
pub mod retention;
pub mod routing;
pub mod signing;
pub mod store;
pub mod transport;
pub mod webhook;
pub mod working_hours;

/// Wall-clock time as UTC milliseconds since the Unix epoch: the unit every
/// stored and transmitted time uses.
pub type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_ms() -> Millis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
