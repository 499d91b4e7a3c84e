//! `tvaers status`: the running daemon, from its admin API.

use std::path::Path;

use serde_json::json;

use crate::commands::{admin, load_config};
use crate::output::{Output, Table, age, time};

pub async fn run(config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let client = admin(&config).await?;
    let s = client.status().await?;
    let now = tvaers_daemon::now_ms();
    // The daemon's warnings include the certificate's 30-day warning.
    let warnings = s.warnings.clone();
    let peers: Vec<_> = s
        .peers
        .iter()
        .map(|p| {
            json!({
                "org_id": p.org_id, "name": p.name, "sector": p.sector,
                "addresses": p.addresses, "fingerprint": p.fingerprint,
                "revoked": p.revoked, "connected": p.connected,
                "last_contact_ms": p.last_contact_ms, "rtt_us": p.rtt_us,
                "outbox_depth": p.outbox_depth, "oldest_pending_age_ms": p.oldest_pending_age_ms,
                "in_flight": p.in_flight, "last_error": p.last_error,
            })
        })
        .collect();
    let value = json!({
        "org_id": s.org_id, "name": s.name, "sector": s.sector, "version": s.version,
        "started_at_ms": s.started_at_ms, "listen": s.listen,
        "tls_fingerprint": s.tls_fingerprint,
        "certificate_not_after_ms": s.certificate_not_after_ms,
        "store": s.store, "peers": peers,
        "outbox": {"pending": s.outbox_pending, "delivered": s.outbox_delivered, "failed": s.outbox_failed},
        "inbox": {"total": s.inbox_total, "unacked": s.inbox_unacked},
        "warnings": warnings,
        "instance_id": s.instance_id,
        "instances": s.instances.iter().map(|i| json!({
            "instance_id": i.instance_id, "shards": i.shards,
        })).collect::<Vec<_>>(),
    });
    out.emit(&value, || {
        let started = i64::try_from(s.started_at_ms).unwrap_or(0);
        let mut text = format!(
            "tvaersd {} running: {} ({}, {})\n  up since:    {} ({})\n  listen:      {}\n  \
             fingerprint: {}\n  certificate: valid until {}\n  store:       {}\n  outbox:      \
             {} pending, {} delivered, {} failed\n  inbox:       {} received, {} not acknowledged\n  \
             instances:   {}\n\n",
            s.version,
            s.org_id,
            s.name,
            s.sector,
            time(started),
            age(now - started),
            s.listen,
            s.tls_fingerprint,
            time(s.certificate_not_after_ms),
            s.store,
            s.outbox_pending,
            s.outbox_delivered,
            s.outbox_failed,
            s.inbox_total,
            s.inbox_unacked,
            instances_line(&s),
        );
        let mut table = Table::new(&[
            "PEER", "STATE", "LAST CONTACT", "RTT", "OUTBOX", "IN FLIGHT", "OLDEST", "LAST ERROR",
        ]);
        for p in &s.peers {
            let state = if p.revoked {
                "revoked"
            } else if p.connected {
                "connected"
            } else {
                "not connected"
            };
            table.row(vec![
                p.org_id.clone(),
                state.into(),
                time(p.last_contact_ms),
                if p.rtt_us > 0 { format!("{:.1}ms", p.rtt_us as f64 / 1000.0) } else { "-".into() },
                p.outbox_depth.to_string(),
                p.in_flight.to_string(),
                if p.oldest_pending_age_ms > 0 { age(p.oldest_pending_age_ms) } else { "-".into() },
                if p.last_error.is_empty() { "-".into() } else { p.last_error.clone() },
            ]);
        }
        if table.is_empty() {
            text.push_str("No peers: add one with `tvaers peer add CARD`.\n");
        } else {
            text.push_str(&table.render());
        }
        if s.outbox_failed > 0 {
            text.push_str(&format!(
                "\n{} notice(s) failed: `tvaers outbox list --state failed`, then `tvaers outbox \
                 retry ID`\n",
                s.outbox_failed
            ));
        }
        for w in &warnings {
            text.push_str(&format!("warning: {w}\n"));
        }
        text
    });
    Ok(())
}

/// Who sends which share of the outbox: each live instance and how many of
/// the 32 shards it holds, this one marked.
fn instances_line(s: &tvaers_client::v1::AdminStatusResponse) -> String {
    if s.instances.is_empty() {
        return format!("{} (holds no outbox shards)", s.instance_id);
    }
    s.instances
        .iter()
        .map(|i| {
            let this = if i.instance_id == s.instance_id {
                ", this one"
            } else {
                ""
            };
            format!("{} ({} shards{this})", i.instance_id, i.shards.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
