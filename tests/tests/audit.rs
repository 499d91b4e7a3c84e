//! The audit log end to end: real daemons record a notice's whole trip,
//! `tvaers audit` reads and verifies it, and every kind of tampering with
//! the database file (a changed, deleted, inserted or reordered entry) is
//! caught by `tvaers audit verify`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use tvaers_client::Submission;
use tvaers_e2e::{MUNICIPALITY, PSYCHIATRY, Sites, cli_binary};
use tvaers_proto::validate::sample;

const CPR: &str = "0707814321";
const OTHER_CPR: &str = "1203925678";
const WAIT: Duration = Duration::from_secs(30);

/// `tvaers --json …` against a site: exit code and parsed stdout (or the
/// raw text when it is not one JSON document).
fn tvaers(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(cli_binary().unwrap())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TVAERS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn actions(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_s_trip_is_audited_on_both_sides_and_tampering_is_caught() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();

    let sender = sites.client(psyk).await.unwrap();
    let notice_id = sender
        .submit(
            Submission::new(sample::admission(CPR))
                .idempotency_key("a-1")
                .to(kommune),
        )
        .await
        .unwrap()
        .notice_id;
    // Another citizen's notice, which `audit citizen` must leave out.
    let other_id = sender
        .submit(
            Submission::new(sample::discharge(OTHER_CPR))
                .idempotency_key("a-2")
                .to(kommune),
        )
        .await
        .unwrap()
        .notice_id;
    for id in [&notice_id, &other_id] {
        let status = sender.wait_delivered(id, WAIT).await.unwrap();
        assert!(status.all_delivered(), "{status:?}");
    }
    let receiver = sites.client(kommune).await.unwrap();
    let items = receiver.list_inbox(0, 10).await.unwrap();
    assert_eq!(items.len(), 2);
    let ours = items
        .iter()
        .find(|i| i.envelope.as_ref().unwrap().notice_id == notice_id)
        .unwrap();
    assert!(receiver.ack(ours.cursor).await.unwrap());

    // The sender's side of the trip, found by the citizen's number.
    let psyk_config = sites.site(psyk).config.clone();
    let (code, out, err) = tvaers(&psyk_config, &["--json", "audit", "citizen", CPR]);
    assert_eq!(code, 0, "{out}{err}");
    let entries = json(&out)["entries"].clone();
    let trip = actions(&entries);
    for expected in ["submit", "send_attempt", "delivered"] {
        assert!(trip.contains(&expected.to_owned()), "{trip:?}");
    }
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["notice_id"].is_null() || e["notice_id"] == notice_id.as_str()),
        "another citizen's notice is listed: {entries}"
    );
    let submit = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "submit")
        .unwrap();
    assert!(
        submit["actor"].as_str().unwrap().starts_with("api uid="),
        "{submit}"
    );

    // The receiver's side: received, read by the local system, acknowledged.
    let kommune_config = sites.site(kommune).config.clone();
    let (code, out, err) = tvaers(&kommune_config, &["--json", "audit", "citizen", CPR]);
    assert_eq!(code, 0, "{out}{err}");
    let trip = actions(&json(&out)["entries"]);
    for expected in ["received", "inbox_read", "inbox_ack"] {
        assert!(trip.contains(&expected.to_owned()), "{trip:?}");
    }
    // The search itself is recorded.
    let (_, out, _) = tvaers(&kommune_config, &["--json", "audit", "citizen", CPR]);
    let searches = actions(&json(&out)["entries"])
        .iter()
        .filter(|a| *a == "admin")
        .count();
    assert_eq!(searches, 2, "{out}");

    // Export: JSON lines, none carrying a CPR number.
    let (code, out, err) = tvaers(&kommune_config, &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out.lines().map(json).collect();
    assert!(lines.len() >= 7, "{out}");
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    for cpr in [CPR, OTHER_CPR] {
        assert!(
            !out.contains(cpr) && !out.contains(&cpr[..6]),
            "a CPR in the export"
        );
    }
    let (code, windowed, _) = tvaers(
        &kommune_config,
        &[
            "audit",
            "export",
            "--from",
            "2000-01-01",
            "--to",
            "2000-01-02",
        ],
    );
    assert_eq!((code, windowed.as_str()), (0, ""));

    let (code, out, err) = tvaers(&kommune_config, &["--json", "audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let report = json(&out);
    assert_eq!(report["intact"], true, "{report}");
    let head = report["head_seq"].as_i64().unwrap();
    assert!(head >= 7, "{report}");

    // Tampering, each on a fresh copy of the untouched database.
    sites.stop(kommune).await.unwrap();
    let db = sites.site(kommune).dir.join("data/tvaers.db");
    let wal = sites.site(kommune).dir.join("data/tvaers.db-wal");
    let pristine = std::fs::read(&db).unwrap();
    // A clean stop checkpoints the WAL into the file; anything left in it
    // would be lost by restoring the file alone.
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the WAL was not checkpointed at shutdown"
    );
    let cases: [(&str, String, &str); 4] = [
        (
            "changed",
            "UPDATE audit_log SET actor = 'api uid=0' WHERE seq = 3".into(),
            "entry 3 does not match its MAC",
        ),
        (
            "deleted",
            "DELETE FROM audit_log WHERE seq = 4".into(),
            "entries 4 to 4 are missing",
        ),
        (
            "inserted",
            format!(
                "INSERT INTO audit_log (seq, at_ms, actor, action, notice_id, peer, citizen_ref, \
                 detail, prev_mac, mac) SELECT {next}, at_ms, actor, action, notice_id, peer, \
                 citizen_ref, detail, mac, mac FROM audit_log WHERE seq = {head}",
                next = head + 1
            ),
            &format!("entry {} does not match its MAC", head + 1),
        ),
        (
            "reordered",
            // Swap the contents of entries 2 and 5, keeping their positions.
            "UPDATE audit_log SET \
               action = CASE seq WHEN 2 THEN (SELECT action FROM audit_log WHERE seq = 5) \
                                 ELSE (SELECT action FROM audit_log WHERE seq = 2) END, \
               at_ms = CASE seq WHEN 2 THEN (SELECT at_ms FROM audit_log WHERE seq = 5) \
                                ELSE (SELECT at_ms FROM audit_log WHERE seq = 2) END, \
               detail = CASE seq WHEN 2 THEN (SELECT detail FROM audit_log WHERE seq = 5) \
                                 ELSE (SELECT detail FROM audit_log WHERE seq = 2) END \
             WHERE seq IN (2, 5)"
                .into(),
            "entry 2 does not match its MAC",
        ),
    ];
    for (case, sql, expected) in cases {
        std::fs::write(&db, &pristine).unwrap();
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let changed = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
        assert!(changed > 0, "{case}: the edit changed nothing");
        conn.close().await.unwrap();

        sites.start(kommune).await.unwrap();
        let (code, out, err) = tvaers(&kommune_config, &["audit", "verify"]);
        assert_eq!(code, 4, "{case}: verify must fail with exit 4:\n{out}{err}");
        assert!(
            out.contains(expected),
            "{case}: expected {expected:?} in:\n{out}"
        );
        assert!(err.contains("tampered"), "{case}: {err}");
        sites.stop(kommune).await.unwrap();
    }

    // Untouched again: intact, and the restarts are on record.
    std::fs::write(&db, &pristine).unwrap();
    sites.start(kommune).await.unwrap();
    let (code, out, err) = tvaers(&kommune_config, &["--json", "audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let logs = sites.all_logs();
    for cpr in [CPR, OTHER_CPR] {
        assert!(!logs.contains(cpr), "a CPR number appears in the logs");
    }
}
