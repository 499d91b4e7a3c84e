//! `tvaers webhooks list | retry`: the webhook queue of the team inboxes.

use std::path::Path;

use clap::Subcommand;
use serde_json::{Value, json};
use tvaers_client::v1;

use crate::commands::{admin, load_config};
use crate::output::{Output, Table, time};

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Webhook events, newest first.
    List {
        /// Only events in this state (`dead`: gave up after max_attempts).
        #[arg(long, value_parser = ["pending", "delivered", "dead"])]
        state: Option<String>,
        /// Only events of this team inbox.
        #[arg(long)]
        inbox: Option<String>,
        /// At most this many events (max 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Send a dead event again, with a fresh count of attempts.
    Retry { id: i64 },
}

fn row_json(r: &v1::WebhookEventRow) -> Value {
    json!({
        "id": r.id, "inbox": r.inbox, "cursor": r.cursor, "notice_id": r.notice_id,
        "sender": r.sender, "kind": r.kind, "state": r.state, "attempts": r.attempts,
        "next_attempt_at_ms": r.next_attempt_at_ms, "last_error": r.last_error,
        "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
    })
}

fn table(rows: &[v1::WebhookEventRow]) -> String {
    let mut t = Table::new(&[
        "ID",
        "INBOX",
        "CURSOR",
        "KIND",
        "FROM",
        "STATE",
        "ATTEMPTS",
        "UPDATED",
        "LAST ERROR",
    ]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            r.inbox.clone(),
            r.cursor.to_string(),
            r.kind.clone(),
            r.sender.clone(),
            r.state.clone(),
            r.attempts.to_string(),
            time(r.updated_at_ms),
            if r.last_error.is_empty() {
                "-".into()
            } else {
                r.last_error.clone()
            },
        ]);
    }
    if t.is_empty() {
        "No webhook events.\n".into()
    } else {
        t.render()
    }
}

pub async fn run(command: WebhooksCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let client = admin(&config).await?;
    match command {
        WebhooksCommand::List {
            state,
            inbox,
            limit,
        } => {
            let rows = client
                .list_webhooks(v1::ListWebhooksRequest {
                    state: state.unwrap_or_default(),
                    inbox: inbox.unwrap_or_default(),
                    limit,
                })
                .await?;
            let value = json!({"events": rows.iter().map(row_json).collect::<Vec<_>>()});
            out.emit(&value, || table(&rows));
        }
        WebhooksCommand::Retry { id } => {
            let r = client.retry_webhook(id).await?;
            let value = json!({
                "reopened": r.reopened,
                "event": r.event.as_ref().map(row_json),
            });
            out.emit(&value, || {
                let mut text = if r.reopened {
                    format!("Webhook event {id} will be sent again.\n")
                } else {
                    format!("Webhook event {id} is not dead: nothing changed.\n")
                };
                text.push_str(&table(r.event.as_slice()));
                text
            });
        }
    }
    Ok(())
}
