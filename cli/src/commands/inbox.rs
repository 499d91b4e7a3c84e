//! `tvaers inbox list | show | ack | watch`, through the local API.
//!
//! Terminals are often logged, so a notice's content (the citizen's CPR
//! number, health details) is shown only with `--reveal`; by default only
//! kind, sender, ids and times. An item whose body retention purged shows
//! its ids and times and says when it was purged.

use std::path::Path;

use clap::Subcommand;
use serde_json::{Value, json};
use tvaers_client::v1;

use crate::commands::{load_config, local};
use crate::error::CliError;
use crate::output::{Output, Table, time};

#[derive(Subcommand, Debug)]
pub enum InboxCommand {
    /// Received notices, oldest first.
    List {
        /// Only notices not acknowledged yet.
        #[arg(long)]
        unacked: bool,
        /// At most this many (0: the daemon's default, 100).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this cursor.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Also show the content: CPR number and health details.
        #[arg(long)]
        reveal: bool,
    },
    /// One received notice, by its cursor.
    Show {
        cursor: u64,
        /// Also show the content: CPR number and health details.
        #[arg(long)]
        reveal: bool,
    },
    /// Mark a received notice as taken care of.
    Ack { cursor: u64 },
    /// New items of one team inbox as they arrive, one line each (with
    /// --json one JSON object per line); Ctrl-C ends it.
    Watch {
        /// The team inbox, e.g. discharge-coordinators.
        inbox: String,
        /// Start after this position in the team inbox, as the last line
        /// (`position` in --json) showed (default: only items placed from
        /// now on).
        #[arg(long, value_name = "N")]
        from_position: Option<u64>,
        /// Also show the CPR number.
        #[arg(long)]
        reveal: bool,
    },
}

fn item_json(item: &v1::InboxItem, reveal: bool) -> Value {
    let e = item.envelope.as_ref();
    let notice = e.and_then(|e| e.notice.as_ref());
    let mut value = json!({
        "cursor": item.cursor,
        "received_at_ms": item.received_at_ms,
        "acked_at_ms": (item.acked_at_ms != 0).then_some(item.acked_at_ms),
        "purged_at_ms": (item.purged_at_ms != 0).then_some(item.purged_at_ms),
        "notice_id": notice_id(item),
        "sender": sender(item),
        "recipient": e.map(|e| e.recipient.clone()),
        "created_at_ms": e.map(|e| e.created_at_ms),
        "kind": notice.map(|n| n.kind_name()),
    });
    if reveal && let Some(n) = notice {
        value["citizen_cpr"] = json!(n.citizen_cpr);
        value["episode_id"] = json!(n.episode_id);
        value["content"] = json!(content(n));
    }
    value
}

/// The notice id, also of a purged item (whose envelope is gone).
fn notice_id(item: &v1::InboxItem) -> String {
    match &item.envelope {
        Some(e) if item.notice_id.is_empty() => e.notice_id.clone(),
        _ => item.notice_id.clone(),
    }
}

fn sender(item: &v1::InboxItem) -> String {
    match &item.envelope {
        Some(e) if item.sender.is_empty() => e.sender.clone(),
        _ => item.sender.clone(),
    }
}

/// The payload, for `--reveal` only.
fn content(n: &v1::Notice) -> String {
    use v1::notice::Payload;
    match &n.payload {
        Some(Payload::Admission(p)) => format!("{p:#?}"),
        Some(Payload::Discharge(p)) => format!("{p:#?}"),
        Some(Payload::NoShow(p)) => format!("{p:#?}"),
        Some(Payload::PlanChange(p)) => format!("{p:#?}"),
        Some(Payload::Correction(p)) => format!("{p:#?}"),
        Some(Payload::Handled(p)) => format!("{p:#?}"),
        None => "(no payload)".to_owned(),
    }
}

fn render(items: &[v1::InboxItem], reveal: bool) -> String {
    let mut t = Table::new(&["CURSOR", "KIND", "FROM", "NOTICE", "RECEIVED", "ACKED"]);
    for item in items {
        let e = item.envelope.as_ref();
        t.row(vec![
            item.cursor.to_string(),
            if item.purged_at_ms != 0 {
                "(purged)"
            } else {
                e.and_then(|e| e.notice.as_ref())
                    .map_or("-", |n| n.kind_name())
            }
            .to_owned(),
            sender(item),
            notice_id(item),
            time(item.received_at_ms),
            time(item.acked_at_ms),
        ]);
    }
    let mut text = if t.is_empty() {
        "The inbox is empty.\n".into()
    } else {
        t.render()
    };
    for item in items.iter().filter(|i| i.purged_at_ms != 0) {
        text.push_str(&format!(
            "cursor {}: body purged on {} (retention); ids and times are kept\n",
            item.cursor,
            time(item.purged_at_ms)
        ));
    }
    if reveal {
        for item in items {
            if let Some(n) = item.envelope.as_ref().and_then(|e| e.notice.as_ref()) {
                text.push_str(&format!(
                    "\n--- cursor {} ---\ncitizen CPR: {}\nepisode: {}\n{}\n",
                    item.cursor,
                    n.citizen_cpr,
                    n.episode_id,
                    content(n)
                ));
            }
        }
    } else if !items.is_empty() {
        text.push_str("(content hidden; add --reveal to show CPR numbers and health details)\n");
    }
    text
}

/// One line of `inbox watch`: cursor, time, kind, sender, notice id, and
/// with `reveal` the CPR number.
fn watch_line(item: &v1::InboxItem, inbox: &str, reveal: bool) -> String {
    let notice = item.envelope.as_ref().and_then(|e| e.notice.as_ref());
    let kind = if item.purged_at_ms != 0 {
        "(purged)"
    } else {
        notice.map_or("-", |n| n.kind_name())
    };
    let mut line = format!(
        "{}  {}  {kind}  from {}  notice {}",
        item.cursor,
        time(item.received_at_ms),
        sender(item),
        notice_id(item)
    );
    if let Some(from) = item
        .placements
        .iter()
        .find(|p| p.inbox == inbox && !p.escalated_from.is_empty())
        .map(|p| &p.escalated_from)
    {
        line.push_str(&format!("  escalated: not handled in time in {from}"));
    }
    if reveal && let Some(n) = notice {
        line.push_str(&format!("  cpr {}", n.citizen_cpr));
    }
    line
}

async fn watch(
    client: &tvaers_client::Client,
    inbox: &str,
    from_position: Option<u64>,
    reveal: bool,
    out: Output,
) -> anyhow::Result<()> {
    use tvaers_client::StreamExt;
    let mut stream = client.team_inbox_stream(inbox, from_position);
    if !out.json {
        eprintln!("Watching inbox {inbox}; Ctrl-C ends.");
    }
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match item {
            Some(Ok(item)) => {
                if out.json {
                    let mut value = item_json(&item, reveal);
                    value["inbox"] = json!(inbox);
                    value["position"] = json!(item.position);
                    println!("{value}");
                } else {
                    println!("{}", watch_line(&item, inbox, reveal));
                }
            }
            Some(Err(error)) => return Err(error.into()),
            None => anyhow::bail!("the daemon ended the stream (it is shutting down)"),
        }
    }
}

pub async fn run(command: InboxCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let client = local(&config).await?;
    match command {
        InboxCommand::List {
            unacked,
            limit,
            after,
            reveal,
        } => {
            let items = if unacked {
                client.list_unacked(after, limit).await?
            } else {
                client.list_inbox(after, limit).await?
            };
            let value =
                json!({"items": items.iter().map(|i| item_json(i, reveal)).collect::<Vec<_>>()});
            out.emit(&value, || render(&items, reveal));
        }
        InboxCommand::Show { cursor, reveal } => {
            let items = client.list_inbox(cursor.saturating_sub(1), 1).await?;
            let item = items
                .into_iter()
                .find(|i| i.cursor == cursor)
                .ok_or_else(|| {
                    CliError::invalid(format!(
                        "no inbox item with cursor {cursor}; `tvaers inbox list` shows the cursors"
                    ))
                })?;
            out.emit(&item_json(&item, reveal), || {
                render(std::slice::from_ref(&item), reveal)
            });
        }
        InboxCommand::Watch {
            inbox,
            from_position,
            reveal,
        } => watch(&client, &inbox, from_position, reveal, out).await?,
        InboxCommand::Ack { cursor } => {
            let newly = client.ack(cursor).await?;
            out.emit(&json!({"cursor": cursor, "newly_acked": newly}), || {
                if newly {
                    format!("Acknowledged inbox item {cursor}.")
                } else {
                    format!("Inbox item {cursor} was acknowledged before.")
                }
            });
        }
    }
    Ok(())
}
