//! `tvaers inbox watch INBOX` end to end: the CLI as a child process
//! prints a line per new item of one team inbox as it arrives, and Ctrl-C
//! (SIGINT) ends it with exit 0.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tvaers_client::Submission;
use tvaers_e2e::{MUNICIPALITY, PSYCHIATRY, Sites, cli_binary, cpr_leaks};
use tvaers_proto::validate::sample;

const CPR: &str = "0707814321";
const WAIT: Duration = Duration::from_secs(30);

const ROUTES: &str = r#"
[inboxes]
default = "caseworkers"

[[inboxes.routes]]
kinds = ["admission", "discharge"]
to = ["discharge-coordinators"]
"#;

/// Starts `tvaers [--json] inbox watch ARGS`; its stdout lines arrive on
/// the receiver.
fn watch(sites: &Sites, json: bool, args: &[&str]) -> (Child, mpsc::UnboundedReceiver<String>) {
    let mut command = Command::new(cli_binary().unwrap());
    command
        .arg("--config")
        .arg(&sites.site(MUNICIPALITY.org_id).config);
    if json {
        command.arg("--json");
    }
    let mut child = command
        .args(["inbox", "watch"])
        .args(args)
        .env_remove("TVAERS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("no line from inbox watch within 30 s")
        .expect("inbox watch ended")
}

async fn send(sites: &Sites, key: &str, notice: tvaers_client::v1::Notice) -> String {
    let sender = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let submitted = sender
        .submit(
            Submission::new(notice)
                .idempotency_key(key)
                .to(MUNICIPALITY.org_id),
        )
        .await
        .unwrap();
    let status = sender
        .wait_delivered(&submitted.notice_id, WAIT)
        .await
        .unwrap();
    assert!(status.all_delivered(), "{status:?}");
    submitted.notice_id
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_new_items_of_one_team_inbox_and_ends_on_ctrl_c() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites
        .edit_config(kommune, |text| {
            text.replacen("\n[[peers]]", &format!("{ROUTES}\n[[peers]]"), 1)
        })
        .unwrap();
    sites.start_all().await.unwrap();

    // There before the watch starts: not shown by default.
    let old = send(&sites, "old", sample::admission(CPR)).await;
    let staff = sites.client(kommune).await.unwrap();
    let old_cursor = staff.list_inbox(0, 10).await.unwrap()[0].cursor;
    let old_position = staff
        .list_team_inbox("discharge-coordinators", 0, 10)
        .await
        .unwrap()[0]
        .position;

    let (mut plain, mut plain_lines) = watch(&sites, false, &["discharge-coordinators"]);
    let (mut json, mut json_lines) = watch(
        &sites,
        true,
        &[
            "discharge-coordinators",
            "--from-position",
            &old_position.to_string(),
        ],
    );
    // The default watch starts at the newest item when its stream opens.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Routed elsewhere: not shown.
    send(&sites, "other", sample::plan_change(CPR, kommune)).await;
    let new = send(&sites, "new", sample::discharge(CPR)).await;

    let line = next_line(&mut plain_lines).await;
    assert!(line.contains(&new), "{line}");
    assert!(line.contains("discharge"), "{line}");
    assert!(line.contains(psyk), "{line}");
    assert!(!line.contains(&old), "{line}");
    assert!(cpr_leaks(&line, &[CPR]).is_empty(), "{line}");

    let value: serde_json::Value = serde_json::from_str(&next_line(&mut json_lines).await).unwrap();
    assert_eq!(value["notice_id"], new.as_str());
    assert_eq!(value["kind"], "discharge");
    assert_eq!(value["inbox"], "discharge-coordinators");
    assert!(value["cursor"].as_u64().unwrap() > old_cursor);
    assert!(value["position"].as_u64().unwrap() > old_position);
    assert!(value.get("citizen_cpr").is_none());

    // Nothing else arrived in the meantime.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(plain_lines.try_recv().is_err());
    assert!(json_lines.try_recv().is_err());

    for child in [&mut plain, &mut json] {
        let status = std::process::Command::new("kill")
            .arg("-INT")
            .arg(child.id().unwrap().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code(), Some(0), "Ctrl-C ends the watch with exit 0");
    }
}
