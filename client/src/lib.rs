//! Typed client for a local tvaers daemon.
//!
//! A hospital EHR, a municipal case system or a clinic system never talks to
//! other organisations directly: it hands its notices (admission, discharge,
//! no-show, plan change, correction) to its own `tvaersd`, which stores them
//! and delivers them to the recipients' daemons, and it reads what others
//! sent it from the same daemon's inbox. This crate wraps that local gRPC
//! API (`tvaers.v1.LocalApi`, normally on a Unix domain socket) in plain
//! async Rust:
//!
//! - [`Client::connect`] (or [`Client::connect_tcp`] for a loopback
//!   listener) opens the connection; a missing daemon is reported with its
//!   socket path and how to start it.
//! - [`Submission`] builds a notice with its recipients, idempotency key,
//!   episode and time to live; [`Client::submit`] stores it.
//! - [`Client::delivery_status`] and [`Client::wait_delivered`] follow
//!   delivery per recipient.
//! - [`Client::list_inbox`], [`Client::inbox_stream`] and [`Client::ack`]
//!   read and acknowledge incoming notices.
//! - [`Client::care_team`] answers "who works with this citizen in the
//!   other organisations, and how do I reach them".
//!
//! Errors are one [`ClientError`] enum; like the notices' own `Debug`, they
//! never contain a CPR number or health details.
//!
//! The generated message types are re-exported as [`v1`], so a local system
//! needs no other tvaers crate.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tvaers_client::{Client, StreamExt, Submission, v1};
//!
//! # async fn run() -> Result<(), tvaers_client::ClientError> {
//! let client = Client::connect("/run/tvaers/local.sock").await?;
//!
//! let admission = v1::Admission {
//!     admitted_at_ms: 1_767_261_600_000,
//!     urgency: v1::AdmissionUrgency::Acute as i32,
//!     legal_basis: v1::AdmissionLegalBasis::Voluntary as i32,
//!     ..Default::default()
//! };
//! let submission = Submission::admission("0101904000", admission)
//!     .to("kommune-gribskov")
//!     .episode("stay-2026-0042");
//! let submitted = client.submit(submission).await?;
//!
//! let status = client
//!     .wait_delivered(&submitted.notice_id, Duration::from_secs(30))
//!     .await?;
//! println!("{status}");
//!
//! // Everything that arrived, then each new notice as it comes.
//! let mut inbox = client.inbox_stream(0);
//! while let Some(item) = inbox.next().await {
//!     let item = item?;
//!     // … hand the notice to the local system, then:
//!     client.ack(item.cursor).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A complete program is `examples/submit_admission.rs`:
//!
//! ```text
//! cargo run -p tvaers-client --example submit_admission -- \
//!     --socket /run/tvaers/local.sock --to kommune-gribskov
//! ```
#![forbid(unsafe_code)]

pub mod admin;
mod client;
mod error;
mod inbox;
mod status;
mod submission;

pub use admin::AdminClient;
pub use client::Client;
pub use error::{ClientError, Target};
pub use inbox::InboxStream;
pub use status::{DeliveryState, DeliveryStatus, RecipientStatus};
pub use submission::{Submission, Submitted};

/// `next()` and friends for [`InboxStream`].
pub use tokio_stream::{Stream, StreamExt};
/// The generated types of package `tvaers.v1`.
pub use tvaers_proto::v1;
