//! `tvaers`: the admin CLI of a tvaers site. Argument parsing, dispatch and
//! exit codes; each command group lives in `commands/`.
#![forbid(unsafe_code)]

mod card;
mod commands;
mod error;
mod org_id;
mod output;
mod site_config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{
    audit, card as card_cmd, care_team, inbox, init, keys, outbox, peer, purge, send, status,
    verify, webhooks,
};
use crate::error::exit;
use crate::output::Output;

/// Set up a tvaers site, exchange trust with peer organisations, and see
/// what the daemon is doing.
///
/// Connecting two organisations: `tvaers init` on each side, `tvaers card
/// export` and send the card file to the peer, `tvaers peer add CARD` on
/// the other side (compare the fingerprints over the phone), then start
/// `tvaersd --config tvaers.toml run`.
///
/// Exit codes:
///   0  ok
///   1  error (the message says what to do next)
///   2  bad usage or invalid input (a flag, an id, a malformed file)
///   3  the daemon is not running or cannot be reached
///   4  refused: by the operator at a prompt, or by a trust check
///      (a tampered card, a different signing key for a known peer)
#[derive(Parser, Debug)]
#[command(name = "tvaers", version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// The site's config file.
    #[arg(
        long,
        short,
        env = "TVAERS_CONFIG",
        default_value = "./tvaers.toml",
        global = true
    )]
    config: PathBuf,
    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set up a new site: keys and a commented config file.
    Init(init::InitArgs),
    /// This site's peer card: export it for peers, or verify one.
    #[command(subcommand)]
    Card(card_cmd::CardCommand),
    /// Peers this site trusts: add from a card, list, show, remove, revoke.
    #[command(subcommand)]
    Peer(peer::PeerCommand),
    /// This site's keys: show them, rotate the TLS certificate, re-wrap the
    /// storage key.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The running daemon: health, peers, counts, warnings.
    Status,
    /// Notices this site sends: list, show, retry, cancel.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Notices this site received: list, show, acknowledge.
    #[command(subcommand)]
    Inbox(inbox::InboxCommand),
    /// Webhook events of team inboxes: list, retry a dead one.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Send a notice by hand, to try a set-up.
    #[command(subcommand)]
    Send(Box<send::SendCommand>),
    /// The tamper-evident audit log: verify its chain, export it, or find
    /// who handled a citizen's notices.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Who works with a citizen in the other organisations, and how to
    /// reach them: the latest contact per organisation and unit, learned
    /// from handled receipts and plan changes. Each lookup is audited.
    CareTeam {
        /// The CPR number; omit it to read it from standard input, which
        /// keeps it out of the shell history and the process list.
        cpr: Option<String>,
    },
    /// Re-check the stored signatures of a notice, sent or received (exit
    /// 4 if one does not hold).
    Verify {
        /// The notice id (see `tvaers outbox list` / `tvaers inbox list`).
        notice_id: String,
    },
    /// Purge notice bodies past retention now (the daemon also does this
    /// hourly).
    ///
    /// A body is the signed envelope: the CPR number and health details.
    /// It is purged `retention.body_days` (config, default 30) after its
    /// notice was delivered or failed (sent) or acknowledged (received);
    /// with `body_days = 0` as soon as that happened. Kept: notice ids,
    /// senders and recipients, times, delivery states and errors, and the
    /// signed receipts. Afterwards `tvaers inbox show` and `tvaers verify`
    /// say "body purged on <date>". Notices still to deliver and inbox items
    /// not acknowledged are never purged.
    #[command(verbatim_doc_comment)]
    Purge {
        /// Only count what would be purged now; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = Output { json: args.json };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let config = args.config;
    let result = runtime.block_on(async move {
        match args.command {
            Command::Init(a) => init::run(a, out),
            Command::Card(c) => card_cmd::run(c, &config, out),
            Command::Peer(c) => peer::run(c, &config, out).await,
            Command::Keys(c) => keys::run(c, &config, out).await,
            Command::Status => status::run(&config, out).await,
            Command::Outbox(c) => outbox::run(c, &config, out).await,
            Command::Inbox(c) => inbox::run(c, &config, out).await,
            Command::Webhooks(c) => webhooks::run(c, &config, out).await,
            Command::Send(c) => send::run(*c, &config, out).await,
            Command::Audit(c) => audit::run(c, &config, out).await,
            Command::CareTeam { cpr } => care_team::run(cpr, &config, out).await,
            Command::Verify { notice_id } => verify::run(notice_id, &config, out).await,
            Command::Purge { dry_run } => purge::run(dry_run, &config, out).await,
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            let code = error::exit_code(&error);
            if out.json {
                let doc = serde_json::json!({
                    "error": format!("{error:#}"),
                    "exit_code": code,
                });
                println!("{doc}");
            }
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
