//! `tvaers verify NOTICE_ID`: re-checks the stored signatures of a notice,
//! sent or received (the envelope's by its sender, the receipt's by its
//! receiver). Exits 4 when any present signature does not hold, so a
//! script can alert on it; an envelope purged by retention is reported as
//! such ("body purged on <date>") and does not count.

use std::path::Path;

use serde_json::json;

use crate::commands::outbox::check_id;
use crate::commands::{admin, load_config};
use crate::error::CliError;
use crate::output::{Output, Table};

pub async fn run(notice_id: String, config_path: &Path, out: Output) -> anyhow::Result<()> {
    check_id(&notice_id)?;
    let config = load_config(config_path)?;
    let checks = admin(&config).await?.verify_notice(&notice_id).await?;
    let value = json!({
        "notice_id": notice_id,
        "checks": checks.iter().map(|c| json!({
            "direction": c.direction, "peer": c.peer, "item": c.item,
            "signer": c.signer, "signer_key": c.signer_key,
            "valid": c.valid, "detail": c.detail,
            "purged_at_ms": (c.purged_at_ms != 0).then_some(c.purged_at_ms),
        })).collect::<Vec<_>>(),
    });
    out.emit(&value, || {
        let mut table = Table::new(&["DIRECTION", "PEER", "ITEM", "SIGNED BY", "VALID", "DETAIL"]);
        for c in &checks {
            table.row(vec![
                c.direction.clone(),
                c.peer.clone(),
                c.item.clone(),
                c.signer.clone(),
                match (c.valid, c.purged_at_ms != 0) {
                    (true, _) => "yes",
                    (false, true) => "purged",
                    (false, false) => "NO",
                }
                .to_owned(),
                if c.detail.is_empty() {
                    "-".to_owned()
                } else {
                    c.detail.clone()
                },
            ]);
        }
        table.render()
    });
    // A receipt not there yet, or a body purged by retention, is not a
    // broken signature.
    let broken = checks
        .iter()
        .filter(|c| !c.valid && c.detail != "no receipt yet" && c.purged_at_ms == 0)
        .count();
    if broken > 0 {
        return Err(CliError::refused(format!(
            "{broken} signature(s) of notice {notice_id} do not hold: the stored notice or receipt was changed, or the peer's pinned key is not the one it signed with"
        )));
    }
    Ok(())
}
