//! `tvaers-demo`: three organisations on loopback exchange the four notice
//! kinds, then each site's inbox and each notice's delivery are printed.
//!
//! Runs real `tvaersd` processes with fresh keys and SQLite files. Exit code
//! 0 when every notice reached the right inboxes exactly once and is
//! delivered, 1 otherwise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tvaers_client::{Client, DeliveryState, Submission, v1};
use tvaers_e2e::{GENERAL_PRACTICE, MUNICIPALITY, PSYCHIATRY, Sites, Tuning};
use tvaers_proto::validate::sample;

/// Run three tvaers sites (municipality, psychiatry, general practice) on
/// loopback and exchange admission, no-show, plan change and discharge.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Put the sites here instead of a temporary directory (must not exist).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the sites running after the exchange, until Ctrl-C, so you can
    /// try the client library and the API against them.
    #[arg(long)]
    keep_running: bool,
}

/// A made-up citizen (a valid CPR format; not a real person).
const CITIZEN: &str = "0707814321";

struct Sent {
    label: &'static str,
    from: &'static str,
    to: Vec<&'static str>,
    notice_id: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<()> {
    // Building tvaersd (when it is out of date) is not part of the demo.
    tvaers_e2e::daemon_binary()?;
    let started = Instant::now();
    let specs = [MUNICIPALITY, PSYCHIATRY, GENERAL_PRACTICE];
    let mut sites = match &args.dir {
        Some(dir) => {
            if dir.exists() {
                bail!("{} exists already; choose a new directory", dir.display());
            }
            Sites::create(dir, &specs, Tuning::default())?
        }
        None if args.keep_running => {
            let dir = std::env::temp_dir().join(format!("tvaers-demo-{}", std::process::id()));
            Sites::create(&dir, &specs, Tuning::default())?
        }
        None => Sites::temporary(&specs)?,
    };
    println!("Sites in {}", sites.root.display());
    println!("Starting three daemons …");
    sites.start_all().await?;

    let (kommune, psyk, gp) = (
        MUNICIPALITY.org_id,
        PSYCHIATRY.org_id,
        GENERAL_PRACTICE.org_id,
    );
    let psychiatry = sites.client(psyk).await?;
    let municipality = sites.client(kommune).await?;

    let episode = "indl-2026-0001";
    let mut sent = Vec::new();
    let mut submit = async |client: &Client,
                            label,
                            from,
                            to: Vec<&'static str>,
                            notice: v1::Notice|
           -> Result<()> {
        let mut submission = Submission::new(notice)
            .idempotency_key(format!("demo-{label}-{}", std::process::id()))
            .episode(episode);
        for recipient in &to {
            submission = submission.to(*recipient);
        }
        let submitted = client
            .submit(submission)
            .await
            .with_context(|| format!("submitting the {label}"))?;
        println!(
            "  {from:<22} → {:<45} {label:<12} {}",
            to.join(", "),
            submitted.notice_id
        );
        sent.push(Sent {
            label,
            from,
            to,
            notice_id: submitted.notice_id,
        });
        Ok(())
    };
    println!("Submitting:");
    submit(
        &psychiatry,
        "admission",
        psyk,
        vec![kommune, gp],
        sample::admission(CITIZEN),
    )
    .await?;
    submit(
        &municipality,
        "no-show",
        kommune,
        vec![psyk],
        sample::no_show(CITIZEN),
    )
    .await?;
    submit(
        &municipality,
        "plan change",
        kommune,
        vec![psyk, gp],
        sample::plan_change(CITIZEN, kommune),
    )
    .await?;
    submit(
        &psychiatry,
        "discharge",
        psyk,
        vec![kommune, gp],
        sample::discharge(CITIZEN),
    )
    .await?;

    println!("\nDelivery:");
    let mut problems = Vec::new();
    for notice in &sent {
        let client = if notice.from == psyk {
            &psychiatry
        } else {
            &municipality
        };
        let status = client
            .wait_delivered(&notice.notice_id, Duration::from_secs(30))
            .await?;
        for recipient in &status.recipients {
            let after = recipient
                .delivered_at_ms
                .map(|at| format!("{} ms after submit", at - status.created_at_ms))
                .unwrap_or_default();
            println!(
                "  {:<12} → {:<22} {:<10} attempts {}  {after}",
                notice.label,
                recipient.recipient,
                format!("{:?}", recipient.state).to_lowercase(),
                recipient.attempts
            );
            if recipient.state != DeliveryState::Delivered {
                problems.push(format!(
                    "{} to {} is {:?}",
                    notice.label, recipient.recipient, recipient.state
                ));
            }
        }
    }

    println!("\nInboxes:");
    for org in sites.org_ids() {
        let client = sites.client(org).await?;
        let items = client.list_inbox(0, 100).await?;
        println!("  {org} ({} items)", items.len());
        for item in &items {
            let envelope = item.envelope.clone().unwrap_or_default();
            let kind = envelope
                .notice
                .as_ref()
                .map_or("none", v1::Notice::kind_name);
            println!(
                "    #{:<3} from {:<22} {:<12} {}",
                item.cursor, envelope.sender, kind, envelope.notice_id
            );
        }
        for notice in sent.iter().filter(|n| n.to.contains(&org)) {
            let copies = items
                .iter()
                .filter(|i| {
                    i.envelope
                        .as_ref()
                        .is_some_and(|e| e.notice_id == notice.notice_id)
                })
                .count();
            if copies != 1 {
                problems.push(format!(
                    "{} is in {org}'s inbox {copies} times",
                    notice.label
                ));
            }
        }
        let expected = sent.iter().filter(|n| n.to.contains(&org)).count();
        if items.len() != expected {
            problems.push(format!(
                "{org} has {} items, expected {expected}",
                items.len()
            ));
        }
    }

    if args.keep_running && problems.is_empty() {
        println!("\nThe sites keep running. Local API sockets:");
        for org in sites.org_ids() {
            println!("  {org}: {}", sites.site(org).socket.display());
        }
        println!(
            "Try: cargo run -p tvaers-client --example submit_admission -- --socket {} --to {kommune}",
            sites.site(psyk).socket.display()
        );
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    for org in sites.org_ids() {
        let status = sites.stop(org).await?;
        if !status.success() {
            problems.push(format!("{org} exited with {status} on SIGTERM"));
        }
    }
    println!("\nDemo wall time: {:.2} s", started.elapsed().as_secs_f64());
    if !problems.is_empty() {
        bail!("{}\n\nlogs:\n{}", problems.join("\n"), sites.all_logs());
    }
    println!("All four notices are in the right inboxes, once each, and delivered.");
    Ok(())
}
