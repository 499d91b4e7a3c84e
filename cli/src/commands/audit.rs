//! `tvaers audit verify|export|citizen`: the daemon's tamper-evident audit
//! log (see `tvaers_daemon::audit`). `verify` exits 4 when the chain is
//! broken, so a scheduled job can alert on it.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;
use serde_json::{Value, json};
use tvaers_daemon::Millis;
use tvaers_daemon::config::{format_time, parse_time};
use tvaers_proto::v1;

use crate::commands::{admin, load_config, read_cpr};
use crate::error::CliError;
use crate::output::{Output, Table};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every entry's MAC and link, first to newest. Prints the head
    /// (sequence number and MAC): keep it somewhere else, so a later run can
    /// show that no newest entries were cut off. Exit 4 if broken.
    Verify,
    /// Write entries as JSON lines (one object per line), oldest first.
    Export {
        /// From this time (RFC 3339, or a date: 2026-11-01 = midnight UTC).
        #[arg(long)]
        from: Option<String>,
        /// Up to (not including) this time.
        #[arg(long)]
        to: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Who did what with a citizen's notices: every entry carrying the
    /// citizen's reference and every entry about the same notices. The
    /// search itself is recorded in the log.
    Citizen {
        /// The CPR number; omit it to read it from standard input, which
        /// keeps it out of the shell history and the process list.
        cpr: Option<String>,
    },
}

pub async fn run(command: AuditCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify => verify(config_path, out).await,
        AuditCommand::Export { from, to, output } => {
            export(config_path, from, to, output.as_deref()).await
        }
        AuditCommand::Citizen { cpr } => citizen(config_path, cpr, out).await,
    }
}

async fn verify(config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let report = admin(&config).await?.audit_verify().await?;
    let value = json!({
        "intact": report.breaks.is_empty(),
        "checked": report.checked,
        "head_seq": report.head_seq,
        "head_mac": report.head_mac,
        "breaks": report.breaks,
    });
    out.emit(&value, || {
        let mut text = format!(
            "checked {} entries; head: entry {} mac {}\n",
            report.checked, report.head_seq, report.head_mac
        );
        if report.breaks.is_empty() {
            text.push_str("the chain is intact\n");
        } else {
            for broken in &report.breaks {
                text.push_str(&format!("BROKEN: {broken}\n"));
            }
        }
        text
    });
    if report.breaks.is_empty() {
        Ok(())
    } else {
        Err(CliError::refused(format!(
            "the audit log was tampered with: {} break(s) in its chain, the first: {}",
            report.breaks.len(),
            report.breaks[0]
        )))
    }
}

/// A time bound from the command line.
fn time_bound(flag: &str, text: Option<String>) -> anyhow::Result<Millis> {
    let Some(text) = text else {
        return Ok(0);
    };
    parse_time(&text)
        .or_else(|| parse_time(&format!("{text}T00:00:00Z")))
        .ok_or_else(|| {
            CliError::invalid(format!(
                "--{flag} {text:?}: expected a time like 2026-11-23T08:00:00Z or a date like 2026-11-23"
            ))
        })
}

fn entry_json(entry: &v1::AuditEntryRow) -> Value {
    let optional = |text: &str| {
        if text.is_empty() {
            Value::Null
        } else {
            Value::from(text)
        }
    };
    json!({
        "seq": entry.seq,
        "at": format_time(entry.at_ms),
        "at_ms": entry.at_ms,
        "actor": entry.actor,
        "action": entry.action,
        "notice_id": optional(&entry.notice_id),
        "peer": optional(&entry.peer),
        "citizen_ref": optional(&entry.citizen_ref),
        "detail": entry.detail,
        "prev_mac": entry.prev_mac,
        "mac": entry.mac,
    })
}

/// Every entry matching `request`, page by page.
async fn each_entry(
    config_path: &Path,
    mut request: v1::AuditEntriesRequest,
    mut each: impl FnMut(&v1::AuditEntryRow) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let config = load_config(config_path)?;
    let client = admin(&config).await?;
    let mut count = 0;
    loop {
        let page = client.audit_entries(request.clone()).await?;
        for entry in &page.entries {
            each(entry)?;
            count += 1;
        }
        if page.next_after_seq == 0 {
            return Ok(count);
        }
        request.after_seq = page.next_after_seq;
    }
}

async fn export(
    config_path: &Path,
    from: Option<String>,
    to: Option<String>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let request = v1::AuditEntriesRequest {
        from_ms: time_bound("from", from)?,
        to_ms: time_bound("to", to)?,
        ..v1::AuditEntriesRequest::default()
    };
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let count = each_entry(config_path, request, |entry| {
        writeln!(sink, "{}", entry_json(entry))?;
        Ok(())
    })
    .await?;
    sink.flush()?;
    eprintln!("exported {count} audit entries");
    Ok(())
}

async fn citizen(config_path: &Path, cpr: Option<String>, out: Output) -> anyhow::Result<()> {
    let cpr = read_cpr(cpr)?;
    let request = v1::AuditEntriesRequest {
        citizen_cpr: cpr,
        ..v1::AuditEntriesRequest::default()
    };
    let mut entries = Vec::new();
    each_entry(config_path, request, |entry| {
        entries.push(entry.clone());
        Ok(())
    })
    .await?;
    let value = json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() });
    out.emit(&value, || {
        if entries.is_empty() {
            return "no audit entries about this citizen".to_owned();
        }
        let mut table = Table::new(&["TIME", "ACTOR", "ACTION", "NOTICE", "PEER", "DETAIL"]);
        for e in &entries {
            table.row(vec![
                format_time(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.notice_id.clone(),
                e.peer.clone(),
                e.detail.clone(),
            ]);
        }
        table.render()
    });
    Ok(())
}
