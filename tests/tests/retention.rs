//! Retention end to end: with `retention.body_days = 0` a notice's body is
//! purged as soon as it is delivered (sender) and acknowledged (receiver).
//! `tvaers purge` does it at once; afterwards the inbox item shows as
//! purged, `tvaers inbox show` and `tvaers verify` say so, and the CPR number
//! is in no row of either database any more, while ids, times, states and
//! receipts stay.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use tvaers_client::{Submission, v1};
use tvaers_e2e::{MUNICIPALITY, PSYCHIATRY, Sites, cpr_leaks};
use tvaers_proto::validate::sample;

const CPR: &str = "0707814321";
const DELIVERY: Duration = Duration::from_secs(30);

/// `tvaers --json ARGS` against a site: its exit code and stdout.
fn tvaers(sites: &Sites, org: &str, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(tvaers_e2e::cli_binary().unwrap())
        .arg("--config")
        .arg(&sites.site(org).config)
        .args(args)
        .env_remove("TVAERS_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        format!("{stdout}{stderr}"),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every byte of the notice bodies, receipts and errors a site's database
/// holds, table by table, so a search finds any copy of the CPR number.
async fn stored_bytes(db: &Path) -> Vec<u8> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut bytes = Vec::new();
    for sql in [
        "SELECT envelope, COALESCE(receipt, X''), CAST(COALESCE(last_error, '') AS BLOB) FROM outbox",
        "SELECT envelope, receipt, CAST(sender AS BLOB) FROM inbox",
        "SELECT request_digest, CAST(idempotency_key AS BLOB), CAST(notice_id AS BLOB) FROM notices",
    ] {
        for row in sqlx::query(sql).fetch_all(&pool).await.unwrap() {
            for column in 0..3 {
                bytes.extend(row.get::<Vec<u8>, _>(column));
                bytes.push(b'\n');
            }
        }
    }
    pool.close().await;
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_removes_delivered_and_acknowledged_bodies_and_keeps_the_rest() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    for org in [kommune, psyk] {
        sites
            .edit_config(org, |text| {
                text.replacen("[api]\n", "[retention]\nbody_days = 0\n\n[api]\n", 1)
            })
            .unwrap();
    }
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(psyk).await.unwrap();
    let municipality = sites.client(kommune).await.unwrap();

    let notice_id = psychiatry
        .submit(
            Submission::new(sample::admission(CPR))
                .idempotency_key("retained")
                .to(kommune),
        )
        .await
        .unwrap()
        .notice_id;
    let status = psychiatry
        .wait_delivered(&notice_id, DELIVERY)
        .await
        .unwrap();
    assert!(status.all_delivered(), "{status:?}");
    let items = municipality.list_inbox(0, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.purged_at_ms, 0);
    assert_eq!(
        item.envelope
            .as_ref()
            .unwrap()
            .notice
            .as_ref()
            .unwrap()
            .citizen_cpr,
        CPR
    );

    // Not acknowledged yet: the receiver keeps the body; the sender's row
    // is delivered, so it is due.
    let (code, out) = tvaers(&sites, kommune, &["--json", "purge", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    let dry = json(&out);
    assert_eq!(dry["inbox_items"], 0, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["body_days"], 0);
    let (code, out) = tvaers(&sites, psyk, &["--json", "purge", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["outbox_rows"], 1, "{out}");
    // A dry run changed nothing.
    let (code, out) = tvaers(&sites, psyk, &["--json", "purge", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["outbox_rows"], 1, "{out}");

    assert!(municipality.ack(item.cursor).await.unwrap());
    // A clock tick past the acknowledgement: the cutoff is "before now".
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (org, field) in [(kommune, "inbox_items"), (psyk, "outbox_rows")] {
        let (code, out) = tvaers(&sites, org, &["--json", "purge"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(json(&out)[field], 1, "{org}: {out}");
        let (code, out) = tvaers(&sites, org, &["--json", "purge"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(json(&out)[field], 0, "{org}: a purge is done once: {out}");
        // The purge that took something is in the audit log, by whom.
        let (code, out) = tvaers(&sites, org, &["audit", "export"]);
        assert_eq!(code, 0, "{out}");
        let purges: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("\"action\":\"purged\""))
            .collect();
        assert_eq!(purges.len(), 1, "{org}: {out}");
        assert!(
            purges[0].contains("\"actor\":\"admin uid="),
            "{}",
            purges[0]
        );
    }

    // The local API shows the item as purged, still with its ids and times.
    let purged = municipality.list_inbox(0, 10).await.unwrap();
    assert_eq!(purged.len(), 1);
    let purged: &v1::InboxItem = &purged[0];
    assert!(purged.envelope.is_none());
    assert!(purged.purged_at_ms >= purged.acked_at_ms);
    assert_eq!(purged.notice_id, notice_id);
    assert_eq!(purged.sender, psyk);
    assert_eq!(purged.received_at_ms, item.received_at_ms);
    // The sender still knows it was delivered, with the signed receipt.
    let status = psychiatry.delivery_status(&notice_id).await.unwrap();
    assert!(status.all_delivered());
    assert!(status.recipients[0].receipt.is_some());

    let cursor = purged.cursor.to_string();
    let (code, out) = tvaers(&sites, kommune, &["inbox", "show", &cursor, "--reveal"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("body purged on"), "{out}");
    assert!(cpr_leaks(&out, &[CPR]).is_empty(), "{out}");
    for org in [kommune, psyk] {
        let (code, out) = tvaers(&sites, org, &["verify", &notice_id]);
        assert_eq!(code, 0, "a purged body is not a broken signature: {out}");
        assert!(out.contains("body purged on"), "{org}: {out}");
        let (code, out) = tvaers(&sites, org, &["--json", "verify", &notice_id]);
        assert_eq!(code, 0, "{out}");
        let checks = json(&out)["checks"].as_array().unwrap().clone();
        let receipt = checks.iter().find(|c| c["item"] == "receipt").unwrap();
        assert_eq!(
            receipt["valid"], true,
            "the receipt is kept and checked: {out}"
        );
    }

    for org in [kommune, psyk] {
        assert!(sites.stop(org).await.unwrap().success());
    }
    for org in [kommune, psyk] {
        let bytes = stored_bytes(&sites.site(org).dir.join("data/tvaers.db")).await;
        assert!(bytes.len() > 64, "{org}: no rows read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(&notice_id), "{org}: the ids are kept");
        assert!(
            cpr_leaks(&text, &[CPR]).is_empty(),
            "{org}: the CPR number is still stored"
        );
    }
}
