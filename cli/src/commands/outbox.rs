//! `tvaers outbox list | show | retry | cancel`.

use std::path::Path;

use clap::Subcommand;
use serde_json::{Value, json};
use tvaers_client::v1;

use crate::commands::{admin, load_config, local};
use crate::error::CliError;
use crate::output::{Output, Table, time};

#[derive(Subcommand, Debug)]
pub enum OutboxCommand {
    /// Outbox rows, newest first.
    List {
        /// Only rows in this state.
        #[arg(long, value_parser = ["pending", "in_flight", "delivered", "failed"])]
        state: Option<String>,
        /// At most this many rows (max 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delivery of one notice, per recipient.
    Show { notice_id: String },
    /// Send a failed notice again (every recipient, or --to one).
    Retry {
        notice_id: String,
        #[arg(long, value_name = "ORG")]
        to: Option<String>,
    },
    /// Give up on a queued notice (every recipient, or --to one).
    Cancel {
        notice_id: String,
        #[arg(long, value_name = "ORG")]
        to: Option<String>,
    },
}

fn row_json(r: &v1::OutboxRow) -> Value {
    json!({
        "seq": r.seq, "notice_id": r.notice_id, "recipient": r.recipient, "state": r.state,
        "kind": r.kind, "attempts": r.attempts, "created_at_ms": r.created_at_ms,
        "next_attempt_at_ms": r.next_attempt_at_ms, "expires_at_ms": r.expires_at_ms,
        "last_error": r.last_error,
    })
}

fn table(rows: &[v1::OutboxRow]) -> String {
    let mut t = Table::new(&[
        "NOTICE",
        "TO",
        "KIND",
        "STATE",
        "ATTEMPTS",
        "CREATED",
        "NEXT ATTEMPT",
        "LAST ERROR",
    ]);
    for r in rows {
        t.row(vec![
            r.notice_id.clone(),
            r.recipient.clone(),
            r.kind.clone(),
            r.state.clone(),
            r.attempts.to_string(),
            time(r.created_at_ms),
            time(r.next_attempt_at_ms),
            if r.last_error.is_empty() {
                "-".into()
            } else {
                r.last_error.clone()
            },
        ]);
    }
    if t.is_empty() {
        "No outbox rows.\n".into()
    } else {
        t.render()
    }
}

pub fn check_id(id: &str) -> anyhow::Result<()> {
    if id.len() != 36 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(CliError::invalid(
            "a notice id is a UUID like 0193c6f2-7a1b-7c3d-9e4f-0a1b2c3d4e5f (see `tvaers outbox list`)",
        ));
    }
    Ok(())
}

pub async fn run(command: OutboxCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    match command {
        OutboxCommand::List { state, limit } => {
            let client = admin(&config).await?;
            let rows = client
                .list_outbox(v1::ListOutboxRequest {
                    state: state.unwrap_or_default(),
                    limit,
                    before_seq: 0,
                })
                .await?;
            let value = json!({"rows": rows.iter().map(row_json).collect::<Vec<_>>()});
            out.emit(&value, || table(&rows));
        }
        OutboxCommand::Show { notice_id } => {
            check_id(&notice_id)?;
            let client = local(&config).await?;
            let status = client.delivery_status(&notice_id).await?;
            let value = json!({
                "notice_id": status.notice_id,
                "created_at_ms": status.created_at_ms,
                "recipients": status.recipients.iter().map(|r| json!({
                    "recipient": r.recipient,
                    "state": r.state.as_str_name(),
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                    "delivered_at_ms": r.delivered_at_ms,
                    "next_attempt_at_ms": r.next_attempt_at_ms,
                    "receipt_reason": r.receipt.as_ref().map(|x| x.reason_code.clone()),
                    "business_receipts": r.handled.iter().map(business_receipt_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            out.emit(&value, || {
                let mut text = status.to_string();
                for r in &status.recipients {
                    for receipt in &r.handled {
                        text.push_str(&format!(
                            "\n  {}: {}",
                            r.recipient,
                            business_receipt_line(receipt)
                        ));
                    }
                }
                text
            });
        }
        OutboxCommand::Retry { notice_id, to } => {
            check_id(&notice_id)?;
            let client = admin(&config).await?;
            let r = client.retry_outbox(&notice_id, to.as_deref()).await?;
            action(out, "retried", &r);
        }
        OutboxCommand::Cancel { notice_id, to } => {
            check_id(&notice_id)?;
            let client = admin(&config).await?;
            let r = client.cancel_outbox(&notice_id, to.as_deref()).await?;
            action(out, "cancelled", &r);
        }
    }
    Ok(())
}

fn action(out: Output, verb: &str, r: &v1::OutboxActionResponse) {
    let value = json!({
        "changed": r.changed.iter().map(row_json).collect::<Vec<_>>(),
        "skipped": r.skipped,
    });
    out.emit(&value, || {
        let mut text = format!("{} row(s) {verb}.\n", r.changed.len());
        if !r.changed.is_empty() {
            text.push_str(&table(&r.changed));
        }
        for s in &r.skipped {
            text.push_str(&format!("skipped: {s}\n"));
        }
        text
    });
}

fn is_overdue(receipt: &v1::Handled) -> bool {
    receipt.status == v1::HandledStatus::Overdue as i32
}

/// A recipient's business receipt for people: who took the notice in which
/// team, or that nobody did in time.
fn business_receipt_line(receipt: &v1::Handled) -> String {
    if is_overdue(receipt) {
        return format!(
            "overdue in {} since {} (nobody took it in time)",
            receipt.inbox,
            time(receipt.overdue_at_ms)
        );
    }
    let handler = receipt.handler.clone().unwrap_or_default();
    let reach: Vec<&str> = [&handler.role, &handler.phone, &handler.email]
        .into_iter()
        .map(String::as_str)
        .filter(|part| !part.is_empty())
        .collect();
    format!(
        "handled in {} by {} ({}) at {}",
        receipt.inbox,
        handler.name,
        reach.join(", "),
        time(receipt.handled_at_ms)
    )
}

fn business_receipt_json(receipt: &v1::Handled) -> Value {
    json!({
        "inbox": receipt.inbox,
        "status": if is_overdue(receipt) { "overdue" } else { "handled" },
        "handler": receipt.handler.as_ref().map(|c| json!({
            "name": c.name, "role": c.role, "phone": c.phone, "email": c.email,
        })),
        "handled_at_ms": (receipt.handled_at_ms != 0).then_some(receipt.handled_at_ms),
        "overdue_at_ms": (receipt.overdue_at_ms != 0).then_some(receipt.overdue_at_ms),
    })
}
