//! `tvaers purge [--dry-run]`: the retention purge now, instead of at the
//! daemon's next hourly run, through the admin API.

use std::path::Path;

use serde_json::json;

use crate::commands::{admin, load_config};
use crate::output::{Output, time};

pub async fn run(dry_run: bool, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let purged = admin(&config).await?.purge(dry_run).await?;
    let value = json!({
        "dry_run": purged.dry_run,
        "body_days": purged.body_days,
        "cutoff_ms": purged.cutoff_ms,
        "outbox_rows": purged.outbox_rows,
        "inbox_items": purged.inbox_items,
    });
    out.emit(&value, || {
        let verb = if purged.dry_run {
            "Would purge"
        } else {
            "Purged"
        };
        format!(
            "{verb} the bodies of {} sent notice(s) delivered or failed, and {} received notice(s) acknowledged, before {} (retention.body_days = {}).\nIds, times, states and signed receipts are kept.",
            purged.outbox_rows,
            purged.inbox_items,
            time(purged.cutoff_ms),
            purged.body_days,
        )
    });
    Ok(())
}
