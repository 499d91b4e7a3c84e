//! `tvaers-demo`: three organisations on loopback exchange the four notice
//! kinds; the municipality's staff handle the admission, so psychiatry
//! learns who took it (a handled receipt) and whom to call about the
//! citizen (its care-team view). Then each notice's delivery, each site's
//! inbox with the team inboxes its routing rules chose, the handled receipt
//! and the care-team view are printed.
//!
//! Runs real `tvaersd` processes with fresh keys and SQLite files. Exit code
//! 0 when every notice (and the handled receipt) reached the right site and
//! team inbox exactly once and is delivered, and the care-team view lists
//! exactly who it should; 1 otherwise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tvaers_client::{Client, DeliveryState, Submission, v1};
use tvaers_daemon::config::format_time;
use tvaers_e2e::{GENERAL_PRACTICE, MUNICIPALITY, MUNICIPALITY_ROUTES, PSYCHIATRY, Sites, Tuning};
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

/// Routing rules of the general practice: everything to the clinic.
const PRACTICE_INBOXES: &str = r#"
[inboxes]
default = "clinic"
"#;

/// The team inbox a notice of `kind` should land in at `org`, by
/// [`MUNICIPALITY_ROUTES`] and [`PRACTICE_INBOXES`] (psychiatry has no
/// rules: everything goes to `main`). A handled receipt is for the delivery
/// status, in no team inbox.
fn expected_inbox(org: &str, kind: &str) -> Option<&'static str> {
    Some(match (org, kind) {
        (_, "handled") => return None,
        (o, "admission" | "discharge") if o == MUNICIPALITY.org_id => "discharge-coordinators",
        (o, "no_show") if o == MUNICIPALITY.org_id => "housing-support",
        (o, _) if o == MUNICIPALITY.org_id => "caseworkers",
        (o, _) if o == GENERAL_PRACTICE.org_id => "clinic",
        _ => "main",
    })
}

/// Who at the municipality takes the admission.
fn coordinator() -> v1::Contact {
    v1::Contact {
        name: "Ane Holm".into(),
        role: "udskrivningskoordinator".into(),
        phone: "+45 55 36 12 34".into(),
        email: String::new(),
    }
}

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
    sites.add_config_tables(MUNICIPALITY.org_id, MUNICIPALITY_ROUTES)?;
    sites.add_config_tables(GENERAL_PRACTICE.org_id, PRACTICE_INBOXES)?;
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

    let admission = sent
        .iter()
        .find(|n| n.label == "admission")
        .map(|n| n.notice_id.clone())
        .context("the admission was not sent")?;
    handle_the_admission(&municipality, &psychiatry, &admission, &mut problems).await?;
    show_the_care_team(&psychiatry, &mut problems).await?;

    println!("\nInboxes (team inboxes chosen by each site's routing rules):");
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
            let placed: Vec<&str> = item.placements.iter().map(|p| p.inbox.as_str()).collect();
            let shown = if placed.is_empty() {
                "(delivery status)".to_owned()
            } else {
                format!("→ {}", placed.join(", "))
            };
            println!(
                "    #{:<3} from {:<22} {:<12} {:<27} {}",
                item.cursor, envelope.sender, kind, shown, envelope.notice_id
            );
            let expected: Vec<&str> = expected_inbox(org, kind).into_iter().collect();
            if placed != expected {
                problems.push(format!(
                    "{kind} from {} is in {org}'s team inboxes {placed:?}, expected {expected:?}",
                    envelope.sender
                ));
            }
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
        // Psychiatry also holds the municipality's handled receipt.
        let receipts = usize::from(org == psyk);
        let handled = items
            .iter()
            .filter(|i| {
                i.envelope
                    .as_ref()
                    .and_then(|e| e.notice.as_ref())
                    .is_some_and(|n| n.kind_name() == "handled")
            })
            .count();
        if handled != receipts {
            problems.push(format!(
                "{org} holds {handled} handled receipts, expected {receipts}"
            ));
        }
        let expected = sent.iter().filter(|n| n.to.contains(&org)).count() + receipts;
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
    println!(
        "All four notices are in the right team inboxes, once each, and delivered; psychiatry \
         learned who handled its admission and whom to call about the citizen."
    );
    Ok(())
}

/// The municipality's discharge coordinator opens and takes the admission;
/// psychiatry's delivery status then shows who did, from the handled
/// receipt.
async fn handle_the_admission(
    municipality: &Client,
    psychiatry: &Client,
    admission: &str,
    problems: &mut Vec<String>,
) -> Result<()> {
    let (kommune, team) = (MUNICIPALITY.org_id, "discharge-coordinators");
    let items = municipality.list_team_inbox(team, 0, 100).await?;
    let item = items
        .iter()
        .find(|i| i.notice_id == admission)
        .with_context(|| format!("the admission is not in {kommune}'s {team} inbox"))?;
    let handler = coordinator();
    municipality
        .mark_read(item.cursor, team, &handler.name)
        .await?;
    municipality
        .mark_handled(item.cursor, team, handler.clone(), "home visit booked")
        .await?;
    println!(
        "\nHandled: {} takes the admission in {kommune}'s {team} inbox",
        handler.name
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let handled = loop {
        let status = psychiatry.delivery_status(admission).await?;
        let handled = status
            .recipients
            .iter()
            .find(|r| r.recipient == kommune)
            .map(|r| r.handled.clone())
            .unwrap_or_default();
        if !handled.is_empty() || Instant::now() > deadline {
            break handled;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("  psychiatry's delivery status of its admission to {kommune}:");
    for receipt in &handled {
        let contact = receipt.handler.clone().unwrap_or_default();
        println!(
            "    delivered, handled in {} by {} ({}, {}) at {}",
            receipt.inbox,
            contact.name,
            contact.role,
            contact.phone,
            format_time(receipt.handled_at_ms)
        );
    }
    let by: Vec<(String, Option<v1::Contact>)> =
        handled.into_iter().map(|r| (r.inbox, r.handler)).collect();
    if by != [(team.to_owned(), Some(handler))] {
        problems.push(format!(
            "psychiatry's status of its admission shows {} handled receipts, expected one from {team}",
            by.len()
        ));
    }
    Ok(())
}

/// Psychiatry's care-team view of the citizen: the municipality's
/// discharge coordinator (from the handled receipt) and the plan's
/// coordinating caseworker (from the plan change).
async fn show_the_care_team(psychiatry: &Client, problems: &mut Vec<String>) -> Result<()> {
    let team = psychiatry.care_team(CITIZEN).await?;
    println!("\nCare team of the citizen, as psychiatry knows it (tvaers care-team):");
    for member in &team {
        let contact = member.contact.clone().unwrap_or_default();
        println!(
            "  {:<22} {:<25} {:<18} {:<17} learned {}",
            member.org_id,
            member.unit,
            contact.name,
            contact.phone,
            format_time(member.learned_at_ms)
        );
    }
    let found: Vec<(&str, &str)> = team
        .iter()
        .map(|m| (m.org_id.as_str(), m.unit.as_str()))
        .collect();
    let kommune = MUNICIPALITY.org_id;
    let expected = [
        (kommune, "coordinating-caseworker"),
        (kommune, "discharge-coordinators"),
    ];
    if found != expected {
        problems.push(format!(
            "psychiatry's care-team view lists {found:?}, expected {expected:?}"
        ));
    }
    if team
        .get(1)
        .and_then(|m| m.contact.as_ref())
        .is_none_or(|c| *c != coordinator())
    {
        problems.push("the care-team view does not name the discharge coordinator".to_owned());
    }
    Ok(())
}
