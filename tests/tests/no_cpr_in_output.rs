//! No CPR number in any output, at the most verbose logging there is: three
//! real daemons run at `RUST_LOG=trace` (their own TRACE lines and those of
//! quinn, rustls, h2, tonic and sqlx) through the main scenarios, and
//! everything they write to stdout and stderr is searched for every CPR
//! number used, plain and dashed. Errors the local API returns must name
//! the field, never the value.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tvaers_client::{Client, ClientError, DeliveryState, StreamExt, Submission, v1};
use tvaers_e2e::{GENERAL_PRACTICE, MUNICIPALITY, PSYCHIATRY, Sites, cpr_leaks};
use tvaers_proto::validate::sample;

/// One citizen per scenario, so a leak points at the scenario.
const CPR_EVERY_KIND: &str = "0707814321";
const CPR_DUPLICATE: &str = "1203925678";
const CPR_PEER_DOWN: &str = "2512894417";
const CPR_NOT_ALLOWED: &str = "0102034007";
const CPR_BAD_SIGNATURE: &str = "1511723331";
/// 31 February: refused at submit.
const CPR_INVALID: &str = "3102814321";
const ALL_CPRS: [&str; 6] = [
    CPR_EVERY_KIND,
    CPR_DUPLICATE,
    CPR_PEER_DOWN,
    CPR_NOT_ALLOWED,
    CPR_BAD_SIGNATURE,
    CPR_INVALID,
];

const DELIVERY: Duration = Duration::from_secs(30);

fn submission(key: &str, notice: v1::Notice, to: &[&str]) -> Submission {
    to.iter()
        .fold(Submission::new(notice).idempotency_key(key), |s, r| {
            s.to(*r)
        })
}

async fn submit(client: &Client, key: &str, notice: v1::Notice, to: &[&str]) -> String {
    let submitted = client.submit(submission(key, notice, to)).await.unwrap();
    assert!(!submitted.duplicate);
    submitted.notice_id
}

async fn settled(client: &Client, id: &str) -> tvaers_client::DeliveryStatus {
    client.wait_delivered(id, DELIVERY).await.unwrap()
}

/// Reads every item of the inbox (list and stream) and acknowledges each.
async fn read_and_ack(client: &Client, expected: usize) {
    let items = client.list_inbox(0, 100).await.unwrap();
    assert_eq!(items.len(), expected);
    let mut stream = client.inbox_stream(0);
    for item in &items {
        let streamed = tokio::time::timeout(DELIVERY, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(streamed.cursor, item.cursor);
        assert!(client.ack(item.cursor).await.unwrap());
    }
    assert!(client.list_unacked(0, 100).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_cpr_appears_in_any_daemon_output_at_trace_level() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY, GENERAL_PRACTICE]).unwrap();
    sites.set_rust_log("trace");
    sites.start_all().await.unwrap();
    let (kommune, psyk, gp) = (
        MUNICIPALITY.org_id,
        PSYCHIATRY.org_id,
        GENERAL_PRACTICE.org_id,
    );
    let psychiatry = sites.client(psyk).await.unwrap();
    let municipality = sites.client(kommune).await.unwrap();

    // Every kind, each to the inboxes its sender's role allows.
    let cpr = CPR_EVERY_KIND;
    let admission = submit(&psychiatry, "a", sample::admission(cpr), &[kommune, gp]).await;
    let sent = [
        (&psychiatry, admission.clone()),
        (
            &municipality,
            submit(&municipality, "n", sample::no_show(cpr), &[psyk]).await,
        ),
        (
            &municipality,
            submit(
                &municipality,
                "p",
                sample::plan_change(cpr, kommune),
                &[psyk, gp],
            )
            .await,
        ),
        (
            &psychiatry,
            submit(&psychiatry, "d", sample::discharge(cpr), &[kommune, gp]).await,
        ),
        (
            &psychiatry,
            submit(
                &psychiatry,
                "c",
                sample::correction(cpr, &admission),
                &[kommune],
            )
            .await,
        ),
    ];
    for (client, id) in &sent {
        assert!(settled(client, id).await.all_delivered());
    }

    // The same submit twice: stored and sent once.
    let twice = submission("dup", sample::admission(CPR_DUPLICATE), &[kommune]);
    let first = psychiatry.submit(twice.clone()).await.unwrap();
    let again = psychiatry.submit(twice).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.notice_id, first.notice_id);
    assert!(settled(&psychiatry, &first.notice_id).await.all_delivered());

    // An invalid CPR: the error names the field, not the value.
    let error = psychiatry
        .submit(submission(
            "bad",
            sample::admission(CPR_INVALID),
            &[kommune],
        ))
        .await
        .unwrap_err();
    match &error {
        ClientError::InvalidArgument { message } => {
            assert!(message.contains("citizen_cpr"), "{message}");
            assert!(cpr_leaks(message, &ALL_CPRS).is_empty(), "{message}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(cpr_leaks(&format!("{error} {error:?}"), &ALL_CPRS).is_empty());
    // So does a refused idempotency key reuse (its content differs).
    let reused = psychiatry
        .submit(submission(
            "dup",
            sample::discharge(CPR_DUPLICATE),
            &[kommune],
        ))
        .await
        .unwrap_err();
    assert!(matches!(reused, ClientError::Conflict { .. }), "{reused:?}");
    assert!(cpr_leaks(&format!("{reused} {reused:?}"), &ALL_CPRS).is_empty());

    // A peer that is down, then comes up.
    sites.stop(gp).await.unwrap();
    let waiting = submit(&municipality, "down", sample::no_show(CPR_PEER_DOWN), &[gp]).await;
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        let status = municipality.delivery_status(&waiting).await.unwrap();
        assert_eq!(status.recipients[0].state, DeliveryState::Pending);
        if status.recipients[0].attempts > 0 || status.recipients[0].last_error.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sites.start(gp).await.unwrap();
    assert!(settled(&municipality, &waiting).await.all_delivered());

    // A kind the sender's role does not allow: refused by the receiver.
    let refused = submit(
        &municipality,
        "role",
        sample::admission(CPR_NOT_ALLOWED),
        &[psyk],
    )
    .await;
    let status = settled(&municipality, &refused).await;
    assert_eq!(status.recipients[0].state, DeliveryState::Failed);
    let reason = status.recipients[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("KIND_NOT_ALLOWED"), "{reason}");

    // A bad signature: the municipality now pins another key for
    // psychiatry, so psychiatry's next notice does not verify there.
    let wrong_key = sites.site(gp).signing_key.clone();
    let right_key = sites.site(psyk).signing_key.clone();
    sites
        .edit_config(kommune, |text| text.replace(&right_key, &wrong_key))
        .unwrap();
    sites
        .admin(kommune)
        .await
        .unwrap()
        .reload_peers()
        .await
        .unwrap();
    let forged = submit(
        &psychiatry,
        "sig",
        sample::discharge(CPR_BAD_SIGNATURE),
        &[kommune],
    )
    .await;
    let status = settled(&psychiatry, &forged).await;
    assert_eq!(status.recipients[0].state, DeliveryState::Failed);
    let reason = status.recipients[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("BAD_SIGNATURE"), "{reason}");

    // Every inbox read (listed and streamed) and acknowledged.
    read_and_ack(&municipality, 4).await;
    read_and_ack(&psychiatry, 2).await;
    read_and_ack(&sites.client(gp).await.unwrap(), 4).await;

    for org in sites.org_ids() {
        assert!(sites.stop(org).await.unwrap().success());
    }
    let output = sites.all_logs();
    // The search can only fail if there is output to search: TRACE lines
    // of the daemon and of its dependencies, naming every site.
    assert!(
        output.len() > 100_000,
        "only {} bytes of output",
        output.len()
    );
    assert!(output.contains("TRACE"), "no TRACE lines");
    for dependency in ["quinn", "rustls", "h2", "sqlx"] {
        assert!(
            output.contains(dependency),
            "no output from {dependency} at TRACE"
        );
    }
    for org in [kommune, psyk, gp] {
        assert!(output.contains(org), "{org} is not in the output");
    }
    let leaks = cpr_leaks(&output, &ALL_CPRS);
    assert!(
        leaks.is_empty(),
        "CPR numbers appear in daemon output ({} places); first at: {}",
        leaks.len(),
        leaks[0]
    );
}
