//! Team inboxes end to end: a municipality's routing rules place each
//! received notice in the right team inboxes, and staff read and handle it
//! there through the client library.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sqlx::Connection;

use tvaers_client::{ClientError, StreamExt, Submission, v1};
use tvaers_e2e::{MUNICIPALITY, MUNICIPALITY_ROUTES, OVERDUE_AT_ONCE, PSYCHIATRY, Sites};
use tvaers_proto::validate::sample;

const CPR: &str = "0707814321";
const WAIT: Duration = Duration::from_secs(30);

/// The municipality with [`MUNICIPALITY_ROUTES`] and `extra` config, and
/// psychiatry, both running.
async fn routed_sites(extra: &str) -> Sites {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites
        .add_config_tables(
            MUNICIPALITY.org_id,
            &format!("{MUNICIPALITY_ROUTES}{extra}"),
        )
        .unwrap();
    sites.start_all().await.unwrap();
    sites
}

/// Polls `check` until it yields something, for effects that travel
/// between processes; fails with `what` after [`WAIT`].
async fn eventually<T, F: AsyncFn() -> Option<T>>(what: &str, check: F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The handler the tests' staff name: a discharge coordinator.
fn ane_holm() -> v1::Contact {
    v1::Contact {
        name: "Ane Holm".into(),
        role: "udskrivningskoordinator".into(),
        phone: "+45 55 55 12 34".into(),
        email: String::new(),
    }
}

/// Delivers `notice` from psychiatry to the municipality under `key`;
/// returns its notice id.
async fn delivered(sites: &Sites, key: &str, notice: v1::Notice) -> String {
    sites
        .deliver(PSYCHIATRY.org_id, MUNICIPALITY.org_id, key, notice, WAIT)
        .await
        .unwrap()
}

/// How many entries of `action` `org`'s audit log holds (only those about
/// the citizen `cpr`, unless it is empty).
async fn audit_count(sites: &Sites, org: &str, cpr: &str, action: &str) -> usize {
    let audit = sites
        .admin(org)
        .await
        .unwrap()
        .audit_entries(v1::AuditEntriesRequest {
            citizen_cpr: cpr.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    audit.entries.iter().filter(|e| e.action == action).count()
}

fn cursors(items: &[v1::InboxItem]) -> Vec<u64> {
    items.iter().map(|item| item.cursor).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_items_are_read_and_handled_per_team_inbox() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let sites = routed_sites("").await;

    let sender = sites.client(psyk).await.unwrap();
    let mut ids = Vec::new();
    for (key, notice) in [
        ("t-1", sample::admission(CPR)),
        ("t-2", sample::no_show(CPR)),
        ("t-3", sample::plan_change(CPR, kommune)),
    ] {
        let submitted = sender
            .submit(Submission::new(notice).idempotency_key(key).to(kommune))
            .await
            .unwrap();
        ids.push(submitted.notice_id);
    }
    for id in &ids {
        let status = sender.wait_delivered(id, WAIT).await.unwrap();
        assert!(status.all_delivered(), "{status:?}");
    }

    let staff = sites.client(kommune).await.unwrap();
    let all = staff.list_inbox(0, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let (admission, no_show, plan) = (all[0].cursor, all[1].cursor, all[2].cursor);
    let coordinators = staff
        .list_team_inbox("discharge-coordinators", 0, 10)
        .await
        .unwrap();
    assert_eq!(cursors(&coordinators), [admission]);
    let housing = staff
        .list_team_inbox("housing-support", 0, 10)
        .await
        .unwrap();
    assert_eq!(cursors(&housing), [no_show]);
    // No rule for plan changes: the default inbox.
    let caseworkers = staff.list_team_inbox("caseworkers", 0, 10).await.unwrap();
    assert_eq!(cursors(&caseworkers), [plan]);
    let placement = &coordinators[0].placements[0];
    assert_eq!(
        (placement.inbox.as_str(), placement.state.as_str()),
        ("discharge-coordinators", "new")
    );

    assert!(
        staff
            .mark_read(admission, "discharge-coordinators", "Ane Holm")
            .await
            .unwrap()
    );
    let handler = ane_holm();
    assert!(
        staff
            .mark_handled(
                admission,
                "discharge-coordinators",
                handler.clone(),
                "home visit booked"
            )
            .await
            .unwrap()
    );
    // A second handler does not replace the first.
    let other = v1::Contact {
        name: "Bo Berg".into(),
        ..handler.clone()
    };
    assert!(
        !staff
            .mark_handled(admission, "discharge-coordinators", other, "")
            .await
            .unwrap()
    );
    let item = staff
        .list_team_inbox("discharge-coordinators", 0, 10)
        .await
        .unwrap()
        .remove(0);
    let placement = &item.placements[0];
    assert_eq!(placement.state, "handled");
    assert_eq!(placement.read_by, "Ane Holm");
    assert_eq!(placement.handled_by, "Ane Holm");
    assert_eq!(placement.note, "home visit booked");
    assert_eq!(placement.contact.as_ref(), Some(&handler));
    assert!(placement.handled_at_ms >= placement.read_at_ms && placement.read_at_ms > 0);

    // The hospital learns who took its admission, without a phone call: the
    // municipality's signed business receipt comes back through the outbox.
    let learned = eventually("the handled receipt reaches the hospital", async || {
        let status = sender.delivery_status(&ids[0]).await.unwrap();
        let handled = status.recipients[0].handled.clone();
        (!handled.is_empty()).then_some(handled)
    })
    .await;
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0].inbox, "discharge-coordinators");
    assert_eq!(learned[0].handler.as_ref(), Some(&handler));
    assert_eq!(learned[0].handled_at_ms, placement.handled_at_ms);
    assert_eq!(learned[0].status, v1::HandledStatus::Handled as i32);
    // Only the admission was handled.
    for id in &ids[1..] {
        let status = sender.delivery_status(id).await.unwrap();
        assert!(status.recipients[0].handled.is_empty());
    }
    // A business receipt is the daemon's to send, not a local system's.
    let forged = v1::Notice {
        citizen_cpr: CPR.into(),
        episode_id: String::new(),
        payload: Some(v1::notice::Payload::Handled(v1::Handled {
            notice_id: ids[0].clone(),
            inbox: "x".into(),
            status: v1::HandledStatus::Handled as i32,
            handler: Some(handler.clone()),
            handled_at_ms: 1_767_261_600_000,
            overdue_at_ms: 0,
        })),
    };
    match staff
        .submit(Submission::new(forged).idempotency_key("forged").to(psyk))
        .await
    {
        Err(ClientError::InvalidArgument { message }) => {
            assert!(message.contains("notice.handled"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // Handling in an inbox the item was not routed to names the inbox.
    match staff
        .mark_read(no_show, "discharge-coordinators", "Ane Holm")
        .await
    {
        Err(ClientError::NotFound { message }) => {
            assert!(message.contains("discharge-coordinators"), "{message}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A handler without a name is refused, naming the field.
    match staff
        .mark_handled(no_show, "housing-support", v1::Contact::default(), "")
        .await
    {
        Err(ClientError::InvalidArgument { message }) => {
            assert!(message.contains("handler.name"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let logs = sites.all_logs();
    assert!(!logs.contains(CPR), "a CPR number appears in the logs");
}

/// The business receipts `sender` holds about its notice `id` from its one
/// recipient, once there are `count` of them.
async fn business_receipts(
    sender: &tvaers_client::Client,
    id: &str,
    count: usize,
) -> Vec<v1::Handled> {
    eventually(
        &format!("{count} business receipts reach the sender"),
        async || {
            let status = sender.delivery_status(id).await.unwrap();
            let receipts = status.recipients[0].handled.clone();
            (receipts.len() >= count).then_some(receipts)
        },
    )
    .await
}

/// How many notices `org` has in its outbox: at the municipality, only the
/// business receipts it sent.
async fn outbox_rows(sites: &Sites, org: &str) -> usize {
    sites
        .admin(org)
        .await
        .unwrap()
        .list_outbox(v1::ListOutboxRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_not_handled_in_time_is_escalated_once() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = routed_sites(OVERDUE_AT_ONCE).await;

    let sender = sites.client(psyk).await.unwrap();
    let mut ids = Vec::new();
    for (key, notice) in [
        ("e-1", sample::admission(CPR)),
        ("e-2", sample::no_show(CPR)),
    ] {
        ids.push(delivered(&sites, key, notice).await);
    }

    let staff = sites.client(kommune).await.unwrap();
    let leads = eventually("the admission is escalated", async || {
        let leads = staff.list_team_inbox("team-leads", 0, 10).await.unwrap();
        (!leads.is_empty()).then_some(leads)
    })
    .await;
    assert_eq!(leads.len(), 1, "only the admission has a deadline");
    let item = &leads[0];
    let escalated = item
        .placements
        .iter()
        .find(|p| p.inbox == "team-leads")
        .unwrap();
    assert_eq!(escalated.escalated_from, "discharge-coordinators");
    let original = item
        .placements
        .iter()
        .find(|p| p.inbox == "discharge-coordinators")
        .unwrap();
    assert!(original.escalated_at_ms > 0);
    // The no-show has no deadline and stays where it was.
    let housing = staff
        .list_team_inbox("housing-support", 0, 10)
        .await
        .unwrap();
    assert!(housing[0].placements.iter().all(|p| p.escalated_at_ms == 0));

    // The hospital learns that its admission is overdue there: which team,
    // since when, and nobody named yet.
    let overdue = business_receipts(&sender, &ids[0], 1).await;
    assert_eq!(overdue.len(), 1, "{overdue:?}");
    assert_eq!(overdue[0].status, v1::HandledStatus::Overdue as i32);
    assert_eq!(overdue[0].inbox, "discharge-coordinators");
    assert_eq!(overdue[0].overdue_at_ms, original.escalated_at_ms);
    assert_eq!(
        (overdue[0].handler.as_ref(), overdue[0].handled_at_ms),
        (None, 0)
    );
    let status = sender.delivery_status(&ids[1]).await.unwrap();
    assert!(
        status.recipients[0].handled.is_empty(),
        "the no-show is not overdue"
    );

    // Once only, also across a restart.
    sites.stop(kommune).await.unwrap();
    sites.start(kommune).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let staff = sites.client(kommune).await.unwrap();
    assert_eq!(
        staff
            .list_team_inbox("team-leads", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let escalations = audit_count(&sites, kommune, "", "escalated").await;
    assert_eq!(escalations, 1);
    // The restart's check sent no second overdue receipt.
    assert_eq!(outbox_rows(&sites, kommune).await, 1);

    // Handled late, in the team that missed the deadline: the hospital then
    // sees both, overdue first.
    let handler = ane_holm();
    assert!(
        staff
            .mark_handled(item.cursor, "discharge-coordinators", handler.clone(), "")
            .await
            .unwrap()
    );
    let receipts = business_receipts(&sender, &ids[0], 2).await;
    let statuses: Vec<(i32, &str)> = receipts
        .iter()
        .map(|r| (r.status, r.inbox.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            (v1::HandledStatus::Overdue as i32, "discharge-coordinators"),
            (v1::HandledStatus::Handled as i32, "discharge-coordinators")
        ]
    );
    assert_eq!(receipts[1].handler.as_ref(), Some(&handler));
    assert_eq!(outbox_rows(&sites, kommune).await, 2);
    // The operator's view, `tvaers outbox show`, says both.
    let shown = std::process::Command::new(tvaers_e2e::cli_binary().unwrap())
        .arg("--config")
        .arg(&sites.site(psyk).config)
        .args(["outbox", "show", &ids[0]])
        .env_remove("TVAERS_CONFIG")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "{kommune}: overdue in discharge-coordinators since "
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "{kommune}: handled in discharge-coordinators by Ane Holm (udskrivningskoordinator, +45 55 55 12 34) at "
        )),
        "{shown}"
    );
    let logs = sites.all_logs();
    assert!(!logs.contains(CPR), "a CPR number appears in the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handled_receipt_lost_in_a_crash_is_sent_after_the_restart() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = routed_sites("").await;
    let id = delivered(&sites, "c-1", sample::admission(CPR)).await;

    // The hospital is down while the item is handled: the receipt waits in
    // the municipality's outbox.
    sites.stop(psyk).await.unwrap();
    let staff = sites.client(kommune).await.unwrap();
    let cursor = staff
        .list_team_inbox("discharge-coordinators", 0, 10)
        .await
        .unwrap()[0]
        .cursor;
    let handler = ane_holm();
    assert!(
        staff
            .mark_handled(cursor, "discharge-coordinators", handler.clone(), "")
            .await
            .unwrap()
    );
    // A crash right after marking: the receipt never reached the outbox.
    // Back up, the municipality notices the handled item without a receipt
    // and sends it, once.
    let handled = receipts_after_a_crash(&mut sites, "handled", &id).await;
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].handler.as_ref(), Some(&handler));
    assert_eq!(outbox_rows(&sites, kommune).await, 1);
}

/// Kills the municipality and deletes from its database the business
/// receipt (idempotency key prefix `prefix`) waiting in its outbox, as if
/// it had crashed before storing it; starts both sites again and returns
/// the business receipts the hospital (down until then) gets about its
/// notice `id`.
async fn receipts_after_a_crash(sites: &mut Sites, prefix: &str, id: &str) -> Vec<v1::Handled> {
    let org = MUNICIPALITY.org_id;
    sites.kill(org).unwrap();
    let db = sites.site(org).dir.join("data/tvaers.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let removed = sqlx::query(
        "DELETE FROM outbox WHERE notice_id IN \
         (SELECT notice_id FROM notices WHERE idempotency_key LIKE ?)",
    )
    .bind(format!("{prefix}:%"))
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(removed, 1, "the receipt was waiting in the outbox");
    sqlx::query("DELETE FROM notices WHERE idempotency_key LIKE ?")
        .bind(format!("{prefix}:%"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    sites.start(org).await.unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let sender = sites.client(PSYCHIATRY.org_id).await.unwrap();
    business_receipts(&sender, id, 1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overdue_receipt_lost_in_a_crash_is_sent_after_the_restart() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = routed_sites(OVERDUE_AT_ONCE).await;
    // The hospital is down from delivery on: the overdue receipt waits in
    // the municipality's outbox.
    let id = delivered(&sites, "o-1", sample::admission(CPR)).await;
    sites.stop(psyk).await.unwrap();
    eventually("the overdue receipt is stored to send", async || {
        (outbox_rows(&sites, kommune).await == 1).then_some(())
    })
    .await;
    let overdue = receipts_after_a_crash(&mut sites, "overdue", &id).await;
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].status, v1::HandledStatus::Overdue as i32);
    assert_eq!(outbox_rows(&sites, kommune).await, 1);
}

/// Another citizen, whom nobody has told this site anything about.
const OTHER_CPR: &str = "0101904000";

/// `tvaers --json care-team` against the site of `config`, with `input`
/// on standard input: its exit code, stdout and stderr. Neither output may
/// show the CPR number given.
fn care_team_cli(config: &std::path::Path, input: &str) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tvaers_e2e::cli_binary().unwrap())
        .arg("--config")
        .arg(config)
        .args(["--json", "care-team"])
        .env_remove("TVAERS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stdout.contains(input) && !stderr.contains(input),
        "the CPR number was printed"
    );
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

/// (org, unit, name) per member of `tvaers --json care-team` output.
fn cli_members(stdout: &str) -> Vec<(String, String, String)> {
    let value: serde_json::Value = serde_json::from_str(stdout).unwrap();
    value["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = |key: &str| m[key].as_str().unwrap().to_owned();
            (text("org_id"), text("unit"), text("name"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_care_team_view_lists_the_latest_contact_per_organisation() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let sites = routed_sites("").await;
    let hospital = sites.client(psyk).await.unwrap();
    let staff = sites.client(kommune).await.unwrap();

    // Psychiatry sends an admission and a discharge; both go to the
    // municipality's discharge coordinators.
    let mut ids = Vec::new();
    for (key, notice) in [
        ("c-1", sample::admission(CPR)),
        ("c-2", sample::discharge(CPR)),
    ] {
        let id = hospital
            .submit(Submission::new(notice).idempotency_key(key).to(kommune))
            .await
            .unwrap()
            .notice_id;
        assert!(
            hospital
                .wait_delivered(&id, WAIT)
                .await
                .unwrap()
                .all_delivered()
        );
        ids.push(id);
    }
    assert!(hospital.care_team(CPR).await.unwrap().is_empty());

    // Ane takes the admission, later Bo the discharge, in the same team.
    let items = staff
        .list_team_inbox("discharge-coordinators", 0, 10)
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    let contact = |name: &str, phone: &str| v1::Contact {
        name: name.into(),
        role: "udskrivningskoordinator".into(),
        phone: phone.into(),
        email: String::new(),
    };
    let (ane, bo) = (
        contact("Ane Holm", "+45 55 55 12 34"),
        contact("Bo Berg", "+45 55 55 56 78"),
    );
    for (item, handler) in items.iter().zip([&ane, &bo]) {
        // Apart in time, so "later" does not depend on the clock's grain.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            staff
                .mark_handled(item.cursor, "discharge-coordinators", handler.clone(), "")
                .await
                .unwrap()
        );
    }
    // The municipality's plan change names its coordinating caseworker.
    let plan = sample::plan_change(CPR, kommune);
    let Some(v1::notice::Payload::PlanChange(change)) = &plan.payload else {
        panic!("not a plan change");
    };
    let caseworker = change.coordinating_caseworker.clone().unwrap();
    let plan_id = staff
        .submit(Submission::new(plan).idempotency_key("c-3").to(psyk))
        .await
        .unwrap()
        .notice_id;
    assert!(
        staff
            .wait_delivered(&plan_id, WAIT)
            .await
            .unwrap()
            .all_delivered()
    );

    // Both handled receipts come back to the hospital.
    for id in &ids {
        eventually("the handled receipt reaches the hospital", async || {
            let status = hospital.delivery_status(id).await.unwrap();
            (!status.recipients[0].handled.is_empty()).then_some(())
        })
        .await;
    }
    let handled_at = |id: &str| {
        let id = id.to_owned();
        let hospital = &hospital;
        async move {
            hospital.delivery_status(&id).await.unwrap().recipients[0].handled[0].handled_at_ms
        }
    };
    let bo_at = handled_at(&ids[1]).await;
    assert!(bo_at > handled_at(&ids[0]).await);

    // Psychiatry's view: per municipal unit the latest contact (Bo, not
    // Ane), and the plan's coordinator, with when each held and was learned.
    let team = hospital.care_team(CPR).await.unwrap();
    let rows: Vec<(&str, &str, &str)> = team
        .iter()
        .map(|m| {
            let name = m.contact.as_ref().map_or("", |c| c.name.as_str());
            (m.org_id.as_str(), m.unit.as_str(), name)
        })
        .collect();
    assert_eq!(
        rows,
        [
            (kommune, "coordinating-caseworker", caseworker.name.as_str()),
            (kommune, "discharge-coordinators", "Bo Berg"),
        ]
    );
    let (coordinator, coordinators) = (&team[0], &team[1]);
    assert_eq!(coordinators.contact.as_ref(), Some(&bo));
    assert_eq!(coordinators.source, "handled");
    assert_eq!(coordinators.notice_id, ids[1]);
    assert_eq!(coordinators.as_of_ms, bo_at);
    assert!(coordinators.learned_at_ms >= bo_at);
    assert_eq!(coordinators.org_name, MUNICIPALITY.name);
    assert_eq!(coordinator.source, "plan_change");
    assert_eq!(coordinator.notice_id, plan_id);
    assert_eq!(coordinator.works_at, caseworker.organisation);
    let reach = coordinator.contact.as_ref().unwrap();
    assert_eq!(
        (reach.phone.as_str(), reach.email.as_str()),
        (caseworker.phone.as_str(), caseworker.email.as_str())
    );
    assert!(coordinator.as_of_ms > 0 && coordinator.learned_at_ms >= coordinator.as_of_ms);

    // The municipality sent the plan change: it knows its own coordinator,
    // and nothing from the handled receipts it sent.
    let own = staff.care_team(CPR).await.unwrap();
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(
        (own[0].org_id.as_str(), own[0].unit.as_str()),
        (kommune, "coordinating-caseworker")
    );
    // Nobody is known for another citizen; a malformed number is refused.
    assert!(hospital.care_team(OTHER_CPR).await.unwrap().is_empty());
    match hospital.care_team("12345").await {
        Err(ClientError::InvalidArgument { message }) => {
            assert!(message.contains("citizen_cpr"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // The admin CLI shows the same, reading the number from stdin.
    let config = &sites.site(psyk).config;
    let (code, stdout, stderr) = care_team_cli(config, CPR);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let cli = cli_members(&stdout);
    let expected: Vec<(String, String, String)> = rows
        .iter()
        .map(|(org, unit, name)| ((*org).into(), (*unit).into(), (*name).into()))
        .collect();
    assert_eq!(cli, expected);
    // A mistyped number is invalid input (exit 2), refused without being
    // echoed and without asking the daemon.
    let (code, _, stderr) = care_team_cli(config, "07078143");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("CPR number is not valid"), "{stderr}");

    // Every lookup of this citizen is in psychiatry's audit log, under the
    // citizen: two through the client, one through the CLI.
    let lookups = audit_count(&sites, psyk, CPR, "care_team_viewed").await;
    assert_eq!(lookups, 3, "the empty, the full and the CLI lookup");

    // Psychiatry retracts its discharge (say, the wrong citizen): Bo, who
    // took it, leaves the citizen's care team; the coordinator stays.
    hospital
        .submit(
            Submission::new(sample::correction(CPR, &ids[1]))
                .idempotency_key("c-4")
                .to(kommune),
        )
        .await
        .unwrap();
    let team = hospital.care_team(CPR).await.unwrap();
    let units: Vec<&str> = team.iter().map(|m| m.unit.as_str()).collect();
    assert_eq!(units, ["coordinating-caseworker"]);
    assert!(
        !sites.all_logs().contains(CPR),
        "a CPR number appears in the logs"
    );
}

/// A stream of the escalation inbox shows an escalated item even when it
/// is already past that item's cursor: here it has shown a no-show that
/// arrived after the admission, before the admission's deadline passed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_the_escalation_inbox_shows_items_escalated_later() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let extra = format!(
        r#"
[[inboxes.routes]]
kinds = ["no-show"]
to = ["team-leads"]
{OVERDUE_AT_ONCE}"#
    );
    let sites = routed_sites(&extra).await;
    let staff = sites.client(kommune).await.unwrap();
    let mut leads = staff.team_inbox_stream("team-leads", None);
    // The first poll opens the stream at the newest position; nothing is
    // there yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), leads.next())
            .await
            .is_err()
    );

    let sender = sites.client(psyk).await.unwrap();
    let mut ids = Vec::new();
    for (key, notice) in [
        ("s-1", sample::admission(CPR)),
        ("s-2", sample::no_show(CPR)),
    ] {
        let submitted = sender
            .submit(Submission::new(notice).idempotency_key(key).to(kommune))
            .await
            .unwrap();
        ids.push(submitted.notice_id);
    }

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let item = tokio::time::timeout(WAIT, leads.next())
            .await
            .expect("both items reach the team-leads stream")
            .expect("the stream stays open")
            .unwrap();
        let placed = item
            .placements
            .iter()
            .find(|p| p.inbox == "team-leads")
            .unwrap();
        assert_eq!(item.position, leads.last_position());
        seen.push((item.notice_id.clone(), placed.escalated_from.clone()));
    }
    seen.sort();
    let mut expected = vec![
        (ids[0].clone(), "discharge-coordinators".to_owned()),
        (ids[1].clone(), String::new()),
    ];
    expected.sort();
    assert_eq!(
        seen, expected,
        "the no-show as routed, the admission as escalated"
    );

    // Listing by position gives the same items in placement order, and
    // resuming after the last position gives nothing more.
    let listed = staff.list_team_inbox("team-leads", 0, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].position < listed[1].position);
    assert!(
        staff
            .list_team_inbox("team-leads", listed[1].position, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
