//! End-to-end tests: real `tvaersd` processes, real QUIC sockets on
//! loopback, real SQLite files. Every test sets up its own sites in a fresh
//! temporary directory.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use tvaers_client::{Client, ClientError, DeliveryState, StreamExt, Submission, v1};
use tvaers_daemon::signing::{PublicKey, SigningKey};
use tvaers_daemon::transport::endpoint::{Endpoint, EndpointSettings};
use tvaers_daemon::transport::frame;
use tvaers_daemon::transport::tls::{Fingerprint, Identity, Pin, TrustStore};
use tvaers_e2e::{
    GENERAL_PRACTICE, MUNICIPALITY, PSYCHIATRY, SiteSpec, Sites, cpr_leaks, http_get,
};
use tvaers_proto::validate::sample;

const CPR_A: &str = "0707814321";
const CPR_B: &str = "1203925678";
const DELIVERY: Duration = Duration::from_secs(30);

fn submission(key: &str, notice: v1::Notice, to: &[&str]) -> Submission {
    to.iter().fold(
        Submission::new(notice).idempotency_key(key).episode("ep-1"),
        |s, r| s.to(*r),
    )
}

fn kinds(items: &[v1::InboxItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i.envelope
                .as_ref()
                .unwrap()
                .notice
                .as_ref()
                .unwrap()
                .kind_name()
                .to_owned()
        })
        .collect()
}

/// Every item of a site's inbox, up to `limit`.
async fn inbox(sites: &Sites, org: &str, limit: u32) -> Vec<v1::InboxItem> {
    let client = sites.client(org).await.unwrap();
    client.list_inbox(0, limit).await.unwrap()
}

/// Waits until each notice is delivered to all its recipients.
async fn assert_all_delivered(client: &Client, ids: &[String]) {
    for id in ids {
        let status = client.wait_delivered(id, DELIVERY).await.unwrap();
        assert!(status.all_delivered(), "{status:?}");
    }
}

/// No CPR number may appear in any daemon log.
fn assert_no_cpr_in_logs(sites: &Sites, cprs: &[&str]) {
    let logs = sites.all_logs();
    assert!(!logs.is_empty());
    let leaks = cpr_leaks(&logs, cprs);
    assert!(
        leaks.is_empty(),
        "a CPR number appears in the logs: {leaks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_reaches_the_right_inbox_once_with_contents_intact() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY, GENERAL_PRACTICE]).unwrap();
    sites.start_all().await.unwrap();
    let (kommune, psyk, gp) = (
        MUNICIPALITY.org_id,
        PSYCHIATRY.org_id,
        GENERAL_PRACTICE.org_id,
    );
    let psychiatry = sites.client(psyk).await.unwrap();
    let municipality = sites.client(kommune).await.unwrap();

    let mut admission = sample::admission(CPR_A);
    admission.episode_id = "ep-1".into();
    let sent = [
        (
            &psychiatry,
            submission("a1", admission.clone(), &[kommune, gp]),
        ),
        (
            &municipality,
            submission("n1", sample::no_show(CPR_A), &[psyk]),
        ),
        (
            &municipality,
            submission("p1", sample::plan_change(CPR_A, kommune), &[psyk, gp]),
        ),
        (
            &psychiatry,
            submission("d1", sample::discharge(CPR_A), &[kommune, gp]),
        ),
    ];
    let mut ids = Vec::new();
    for (client, s) in sent {
        let submitted = client.submit(s).await.unwrap();
        assert!(!submitted.duplicate);
        ids.push(submitted.notice_id);
    }
    let correction = sample::correction(CPR_A, &ids[0]);
    let retracted = psychiatry
        .submit(submission("c1", correction, &[kommune]))
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        let client = if i == 1 || i == 2 {
            &municipality
        } else {
            &psychiatry
        };
        let status = client.wait_delivered(id, DELIVERY).await.unwrap();
        assert!(status.all_delivered(), "{status:?}");
        for r in &status.recipients {
            let receipt = r
                .receipt
                .as_ref()
                .expect("a delivered notice has its receipt stored");
            assert_eq!(receipt.outcome, v1::ReceiptOutcome::Accepted as i32);
            assert_eq!(&receipt.receiver, &r.recipient);
        }
    }
    assert!(
        psychiatry
            .wait_delivered(&retracted.notice_id, DELIVERY)
            .await
            .unwrap()
            .all_delivered()
    );

    let k = inbox(&sites, kommune, 100).await;
    assert_eq!(kinds(&k), ["admission", "discharge", "correction"]);
    let first = k[0].envelope.as_ref().unwrap();
    assert_eq!(first.sender, psyk);
    assert_eq!(first.recipient, kommune);
    assert_eq!(first.notice_id, ids[0]);
    assert_eq!(
        first.notice.as_ref().unwrap(),
        &admission,
        "the notice arrives unchanged"
    );
    let mut p = kinds(&inbox(&sites, psyk, 100).await);
    p.sort();
    assert_eq!(p, ["no_show", "plan_change"]);
    let mut g = kinds(&inbox(&sites, gp, 100).await);
    g.sort();
    assert_eq!(g, ["admission", "discharge", "plan_change"]);

    // Acknowledge, and a stream from cursor 0 replays everything in order.
    let kc = sites.client(kommune).await.unwrap();
    assert!(kc.ack(k[0].cursor).await.unwrap());
    assert!(!kc.ack(k[0].cursor).await.unwrap());
    assert_eq!(kc.list_unacked(0, 100).await.unwrap().len(), 2);
    let mut stream = kc.inbox_stream(0);
    for expected in &k {
        let item = tokio::time::timeout(DELIVERY, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(item.cursor, expected.cursor);
    }

    for org in sites.org_ids() {
        assert!(
            sites.stop(org).await.unwrap().success(),
            "graceful exit on SIGTERM"
        );
    }
    assert_no_cpr_in_logs(&sites, &[CPR_A]);
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_stream_delivers_new_items_and_resumes_from_a_cursor() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let municipality = sites.client(MUNICIPALITY.org_id).await.unwrap();
    let mut stream = municipality.inbox_stream(0);

    let first = psychiatry
        .submit(submission(
            "s1",
            sample::admission(CPR_A),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap();
    let item = tokio::time::timeout(DELIVERY, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(item.envelope.unwrap().notice_id, first.notice_id);
    let cursor = stream.last_cursor();
    drop(stream);

    let second = psychiatry
        .submit(submission(
            "s2",
            sample::discharge(CPR_A),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap();
    let mut resumed = municipality.inbox_stream(cursor);
    let item = tokio::time::timeout(DELIVERY, resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        item.envelope.unwrap().notice_id,
        second.notice_id,
        "resuming skips nothing and repeats nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_to_a_peer_that_is_down_arrive_when_it_comes_up_in_citizen_order() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let to = [MUNICIPALITY.org_id];
    let mut ids = Vec::new();
    for (key, notice) in [
        ("x1", sample::admission(CPR_A)),
        ("x2", sample::admission(CPR_B)),
        ("x3", sample::discharge(CPR_A)),
        ("x4", sample::discharge(CPR_B)),
    ] {
        ids.push(
            psychiatry
                .submit(submission(key, notice, &to))
                .await
                .unwrap()
                .notice_id,
        );
    }
    // Down for a while: retries back off, nothing is lost, and the status
    // tells why it waits.
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        let status = psychiatry.delivery_status(&ids[0]).await.unwrap();
        let waiting = &status.recipients[0];
        assert_eq!(waiting.state, DeliveryState::Pending);
        if waiting
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot reach"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reason given: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    sites.start(MUNICIPALITY.org_id).await.unwrap();
    assert_all_delivered(&psychiatry, &ids).await;
    let items = inbox(&sites, MUNICIPALITY.org_id, 100).await;
    assert_eq!(items.len(), 4);
    let order: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            let n = i.envelope.as_ref().unwrap().notice.as_ref().unwrap();
            (n.citizen_cpr.clone(), n.kind_name().to_owned())
        })
        .collect();
    for cpr in [CPR_A, CPR_B] {
        let per_citizen: Vec<&str> = order
            .iter()
            .filter(|(c, _)| c == cpr)
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(
            per_citizen,
            ["admission", "discharge"],
            "an admission is never delivered after its discharge"
        );
    }
    assert_no_cpr_in_logs(&sites, &[CPR_A, CPR_B]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sender_killed_with_pending_notices_delivers_all_exactly_once_after_restart() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let cpr = if i % 2 == 0 { CPR_A } else { CPR_B };
        let notice = if i % 4 < 2 {
            sample::admission(cpr)
        } else {
            sample::discharge(cpr)
        };
        let id = psychiatry
            .submit(submission(&format!("k{i}"), notice, &[MUNICIPALITY.org_id]))
            .await
            .unwrap()
            .notice_id;
        ids.push(id);
    }
    // Every notice is pending (the receiver is down) when the sender dies.
    let pending = psychiatry.delivery_status(&ids[39]).await.unwrap();
    assert_eq!(pending.recipients[0].state, DeliveryState::Pending);
    sites.kill(PSYCHIATRY.org_id).unwrap();
    drop(psychiatry);

    sites.start(MUNICIPALITY.org_id).await.unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    assert_all_delivered(&psychiatry, &ids).await;
    let items = inbox(&sites, MUNICIPALITY.org_id, 1000).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for item in &items {
        *counts
            .entry(item.envelope.as_ref().unwrap().notice_id.clone())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), ids.len(), "every notice arrived");
    assert!(counts.values().all(|&n| n == 1), "none arrived twice");

    // A submit repeated after the restart is still recognised.
    let again = psychiatry
        .submit(submission(
            "k0",
            sample::admission(CPR_A),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.notice_id, ids[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_submit_twice_is_stored_and_delivered_once() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let s = submission("same-key", sample::admission(CPR_A), &[MUNICIPALITY.org_id]);
    let first = psychiatry.submit(s.clone()).await.unwrap();
    let second = psychiatry.submit(s).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.notice_id, second.notice_id);

    // The same key with different content is refused, naming the first id.
    let other = submission("same-key", sample::discharge(CPR_A), &[MUNICIPALITY.org_id]);
    match psychiatry.submit(other).await {
        Err(ClientError::Conflict { message, .. }) => {
            assert!(message.contains(&first.notice_id), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    psychiatry
        .wait_delivered(&first.notice_id, DELIVERY)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let items = inbox(&sites, MUNICIPALITY.org_id, 100).await;
    assert_eq!(items.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_cpr_at_submit_names_the_field_and_stores_nothing() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let bad_cpr = "3102814321"; // 31 February
    let error = psychiatry
        .submit(submission(
            "bad",
            sample::admission(bad_cpr),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap_err();
    match &error {
        ClientError::InvalidArgument { message } => {
            assert!(message.contains("citizen_cpr"), "{message}");
            assert!(
                !message.contains(bad_cpr),
                "the error must not echo the CPR"
            );
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // A recipient that is not a peer is refused the same way.
    let error = psychiatry
        .submit(submission(
            "bad2",
            sample::admission(CPR_A),
            &["kommune.ukendt"],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::InvalidArgument { ref message } if message.contains("recipients")),
        "{error:?}"
    );

    sites.stop(PSYCHIATRY.org_id).await.unwrap();
    let db = sites.site(PSYCHIATRY.org_id).dir.join("data/tvaers.db");
    let store = tvaers_daemon::store::sqlite::SqliteStore::open(&db)
        .await
        .unwrap();
    use tvaers_daemon::store::Store;
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts.outbox_pending + counts.outbox_delivered + counts.outbox_failed,
        0
    );
    assert_no_cpr_in_logs(&sites, &[bad_cpr, CPR_A]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_that_is_not_pinned_is_refused_and_named() {
    const OUTSIDER: SiteSpec = SiteSpec {
        org_id: "kommune.fremmed",
        name: "Ukendt Kommune",
        sector: "municipality",
        pinned_by_others: false,
    };
    let mut sites = Sites::temporary(&[MUNICIPALITY, OUTSIDER]).unwrap();
    sites.start_all().await.unwrap();
    let outsider = sites.client(OUTSIDER.org_id).await.unwrap();
    let id = outsider
        .submit(submission(
            "o1",
            sample::no_show(CPR_A),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap()
        .notice_id;
    let fingerprint = sites.site(OUTSIDER.org_id).fingerprint.clone();
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let error = loop {
        let status = outsider.delivery_status(&id).await.unwrap();
        let r = &status.recipients[0];
        assert_ne!(r.state, DeliveryState::Delivered);
        if let Some(error) = r.last_error.clone().filter(|e| e.contains("refused")) {
            break error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        error.contains(&fingerprint),
        "the sender's error names its fingerprint: {error}"
    );
    let log = sites.log(MUNICIPALITY.org_id);
    assert!(
        log.contains(&fingerprint),
        "the receiver logs the refused fingerprint"
    );
    assert!(log.contains("UNKNOWN_PEER"));
    let items = inbox(&sites, MUNICIPALITY.org_id, 10).await;
    assert!(items.is_empty());
}

/// A hand-driven peer: a site's real keys, but frames we choose.
struct RawPeer {
    connection: quinn::Connection,
    /// The organisation's signing key, for envelopes.
    signing_key: SigningKey,
    /// The receiver's public key, to check its receipts.
    their_key: PublicKey,
    _endpoint: Endpoint,
}

impl RawPeer {
    async fn connect(sites: &Sites, as_org: &str, to_org: &str) -> RawPeer {
        let me = sites.site(as_org);
        let them = sites.site(to_org);
        let identity = Identity::load(
            &me.dir.join("keys/tls-cert.pem"),
            &me.dir.join("keys/tls-key.pem"),
        )
        .unwrap();
        let their_fp = Fingerprint::parse(&them.fingerprint).unwrap();
        let endpoint = Endpoint::bind(
            &EndpointSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                idle_timeout: Duration::from_secs(10),
            },
            identity,
            TrustStore::new([Pin::new(their_fp, to_org)]),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", them.port).parse().unwrap();
        let connection = endpoint.connect(addr, to_org).await.unwrap();
        RawPeer {
            connection,
            signing_key: SigningKey::load(&me.dir.join("keys/signing-key.pk8")).unwrap(),
            their_key: PublicKey::parse(&them.signing_key).unwrap(),
            _endpoint: endpoint,
        }
    }

    /// Sends raw bytes on a new stream and returns the receipt, whose
    /// signature must be the receiver's.
    async fn exchange(&self, bytes: &[u8]) -> v1::Receipt {
        let (mut send, mut recv) = self.connection.open_bi().await.unwrap();
        // The receiver may stop reading an oversized frame early.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        let response: v1::PeerResponse = frame::read_message(&mut recv, 1 << 20).await.unwrap();
        match response.body {
            Some(v1::peer_response::Body::SignedReceipt(signed)) => {
                self.their_key.open_receipt(&signed).unwrap()
            }
            other => panic!("no signed receipt: {other:?}"),
        }
    }

    /// Sends an envelope signed with this site's key.
    async fn send_envelope(&self, envelope: v1::Envelope) -> v1::Receipt {
        self.send_signed_by(&self.signing_key, envelope).await
    }

    async fn send_signed_by(&self, key: &SigningKey, envelope: v1::Envelope) -> v1::Receipt {
        let signed = v1::SignedEnvelope::decode(key.seal_envelope(&envelope).as_slice()).unwrap();
        let request = v1::PeerRequest {
            body: Some(v1::peer_request::Body::SignedNotice(signed)),
        };
        self.exchange(&frame::encode(&request)).await
    }

    async fn send_unsigned(&self, envelope: v1::Envelope) -> v1::Receipt {
        let request = v1::PeerRequest {
            body: Some(v1::peer_request::Body::Notice(envelope)),
        };
        self.exchange(&frame::encode(&request)).await
    }
}

fn envelope(sender: &str, recipient: &str, notice: v1::Notice) -> v1::Envelope {
    let now = tvaers_daemon::now_ms();
    v1::Envelope {
        notice_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: "raw".into(),
        sender: sender.into(),
        recipient: recipient.into(),
        created_at_ms: now,
        expires_at_ms: now + 60_000,
        notice: Some(notice),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_oversized_and_malformed_input_is_rejected_without_harm() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY, GENERAL_PRACTICE]).unwrap();
    sites.start(MUNICIPALITY.org_id).await.unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let (kommune, psyk, gp) = (
        MUNICIPALITY.org_id,
        PSYCHIATRY.org_id,
        GENERAL_PRACTICE.org_id,
    );
    let peer = RawPeer::connect(&sites, psyk, kommune).await;
    let permanent = v1::ReceiptOutcome::RejectedPermanent as i32;

    // Psychiatry's certificate, the GP's name: a forged sender.
    let forged = peer
        .send_envelope(envelope(gp, kommune, sample::admission(CPR_A)))
        .await;
    assert_eq!(
        (forged.outcome, forged.reason_code.as_str()),
        (permanent, "SENDER_MISMATCH")
    );

    // Announces 16 MiB: refused on the length prefix.
    let mut oversized = (16u32 << 20).to_be_bytes().to_vec();
    oversized.extend(std::iter::repeat_n(0u8, 70_000));
    let receipt = peer.exchange(&oversized).await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "TOO_LARGE")
    );

    let mut malformed = 6u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let receipt = peer.exchange(&malformed).await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "MALFORMED")
    );

    let mut invalid = envelope(psyk, kommune, sample::admission(CPR_A));
    invalid.notice.as_mut().unwrap().citizen_cpr = "3102814321".into();
    let receipt = peer.send_envelope(invalid).await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "INVALID_FIELD")
    );
    assert!(
        receipt.reason_text.contains("citizen_cpr") && !receipt.reason_text.contains("3102814321")
    );

    let wrong_recipient = peer
        .send_envelope(envelope(psyk, gp, sample::admission(CPR_A)))
        .await;
    assert_eq!(wrong_recipient.reason_code, "WRONG_RECIPIENT");

    // Unsigned, signed by another key, or with the signed bytes changed.
    let receipt = peer
        .send_unsigned(envelope(psyk, kommune, sample::admission(CPR_A)))
        .await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "SIGNATURE_MISSING")
    );
    let stranger = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let receipt = peer
        .send_signed_by(&stranger, envelope(psyk, kommune, sample::admission(CPR_A)))
        .await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "BAD_SIGNATURE")
    );
    let sealed = peer
        .signing_key
        .seal_envelope(&envelope(psyk, kommune, sample::admission(CPR_A)));
    let mut signed = v1::SignedEnvelope::decode(sealed.as_slice()).unwrap();
    let last = signed.envelope.len() - 1;
    signed.envelope[last] ^= 1;
    let request = v1::PeerRequest {
        body: Some(v1::peer_request::Body::SignedNotice(signed)),
    };
    let receipt = peer.exchange(&frame::encode(&request)).await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "BAD_SIGNATURE")
    );

    // Created ten minutes ahead of the receiver's clock: beyond the skew.
    let mut future = envelope(psyk, kommune, sample::admission(CPR_A));
    future.created_at_ms += 600_000;
    future.expires_at_ms += 600_000;
    let receipt = peer.send_envelope(future).await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "CLOCK_SKEW")
    );

    // A municipality may not announce a psychiatric admission.
    let from_kommune = RawPeer::connect(&sites, kommune, psyk).await;
    let receipt = from_kommune
        .send_envelope(envelope(kommune, psyk, sample::admission(CPR_A)))
        .await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (permanent, "KIND_NOT_ALLOWED")
    );
    assert!(
        receipt.reason_text.contains("may_send"),
        "{}",
        receipt.reason_text
    );
    let allowed = from_kommune
        .send_envelope(envelope(kommune, psyk, sample::no_show(CPR_A)))
        .await;
    assert_eq!(allowed.outcome, v1::ReceiptOutcome::Accepted as i32);

    // The same connection still works, and a resent notice is stored once.
    let valid = envelope(psyk, kommune, sample::admission(CPR_A));
    let first = peer.send_envelope(valid.clone()).await;
    assert_eq!(first.outcome, v1::ReceiptOutcome::Accepted as i32);
    let again = peer.send_envelope(valid.clone()).await;
    assert_eq!(
        again, first,
        "a duplicate is answered with the stored receipt"
    );

    let items = inbox(&sites, kommune, 10).await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].envelope.as_ref().unwrap().notice_id,
        valid.notice_id
    );
    assert_eq!(
        items[0].envelope.as_ref().unwrap().encode_to_vec(),
        valid.encode_to_vec()
    );
    let log = sites.log(kommune);
    for code in [
        "SENDER_MISMATCH",
        "TOO_LARGE",
        "MALFORMED",
        "INVALID_FIELD",
        "CLOCK_SKEW",
        "SIGNATURE_MISSING",
        "BAD_SIGNATURE",
    ] {
        assert!(log.contains(code), "{code} is logged");
    }
    assert!(sites.log(psyk).contains("KIND_NOT_ALLOWED"));
    // The role violation is in the receiver's audit log, naming the sender.
    let audit = sites
        .admin(psyk)
        .await
        .unwrap()
        .audit_entries(v1::AuditEntriesRequest::default())
        .await
        .unwrap();
    assert!(
        audit.entries.iter().any(|e| e.action == "rejected"
            && e.peer == kommune
            && e.detail.starts_with("KIND_NOT_ALLOWED")),
        "{:?}",
        audit.entries
    );
    assert_no_cpr_in_logs(&sites, &[CPR_A, "3102814321"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_not_running_gives_an_error_naming_the_socket() {
    let sites = Sites::temporary(&[MUNICIPALITY]).unwrap();
    let socket = sites.site(MUNICIPALITY.org_id).socket.clone();
    let error = Client::connect(&socket).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("tvaersd --config"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_submitting_loses_no_acknowledged_notice() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let client = psychiatry.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let cpr = if i % 2 == 0 { CPR_A } else { CPR_B };
                    let s = submission(
                        &format!("w{w}-{i}"),
                        sample::no_show(cpr),
                        &[MUNICIPALITY.org_id],
                    );
                    match client.submit(s).await {
                        Ok(submitted) => acked.lock().unwrap().push(submitted.notice_id),
                        Err(_) => return, // the daemon went away
                    }
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = sites.stop(PSYCHIATRY.org_id).await.unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the daemon cleanly: {status}"
    );
    for worker in workers {
        worker.await.unwrap();
    }
    drop(psychiatry);

    let acked = acked.lock().unwrap().clone();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    for id in &acked {
        let status = psychiatry.wait_delivered(id, DELIVERY).await.unwrap();
        assert!(
            status.all_delivered(),
            "an acknowledged notice is delivered: {status:?}"
        );
    }
    let items = inbox(&sites, MUNICIPALITY.org_id, 1000).await;
    let mut seen = std::collections::HashSet::new();
    for item in &items {
        assert!(
            seen.insert(item.envelope.as_ref().unwrap().notice_id.clone()),
            "stored twice"
        );
    }
    for id in &acked {
        assert!(
            seen.contains(id),
            "acknowledged notice {id} is missing at the receiver"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_api_also_serves_loopback_tcp_when_configured() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    let port = tvaers_e2e::free_port().unwrap();
    sites
        .add_api_setting(PSYCHIATRY.org_id, &format!("tcp = \"127.0.0.1:{port}\""))
        .unwrap();
    sites.start_all().await.unwrap();
    let over_tcp = Client::connect_tcp(&format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let submitted = over_tcp
        .submit(submission(
            "tcp-1",
            sample::admission(CPR_A),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap();
    let status = over_tcp
        .wait_delivered(&submitted.notice_id, DELIVERY)
        .await
        .unwrap();
    assert!(status.all_delivered());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_not_delivered_within_its_ttl_fails_with_the_reason() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let submitted = psychiatry
        .submit(
            submission("ttl-1", sample::admission(CPR_A), &[MUNICIPALITY.org_id])
                .ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let status = psychiatry
        .wait_delivered(&submitted.notice_id, DELIVERY)
        .await
        .unwrap();
    let recipient = &status.recipients[0];
    assert_eq!(recipient.state, DeliveryState::Failed);
    assert!(
        recipient
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("expired"),
        "{recipient:?}"
    );

    // Once the peer is up, the expired notice is still not delivered.
    sites.start(MUNICIPALITY.org_id).await.unwrap();
    let later = psychiatry
        .submit(submission(
            "ttl-2",
            sample::discharge(CPR_A),
            &[MUNICIPALITY.org_id],
        ))
        .await
        .unwrap();
    assert!(
        psychiatry
            .wait_delivered(&later.notice_id, DELIVERY)
            .await
            .unwrap()
            .all_delivered()
    );
    let items = inbox(&sites, MUNICIPALITY.org_id, 10).await;
    assert_eq!(kinds(&items), ["discharge"]);
}

/// The value of one sample in a metrics exposition, e.g.
/// `metric(text, "tvaers_outbox_depth", "peer=\"x\"")`; 0 when absent.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_a_backlog_to_a_stopped_peer_until_it_drains() {
    const N: usize = 3;
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    let sender = sites.enable_metrics(PSYCHIATRY.org_id).unwrap();
    let receiver = sites.enable_metrics(MUNICIPALITY.org_id).unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    assert_eq!(http_get(sender, "/healthz").await.unwrap().0, 200);
    let (status, body) = http_get(sender, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));

    let psychiatry = sites.client(PSYCHIATRY.org_id).await.unwrap();
    let kommune = MUNICIPALITY.org_id;
    let peer = format!("peer=\"{kommune}\"");
    let mut ids = Vec::new();
    for (i, cpr) in [CPR_A, CPR_B, CPR_A].into_iter().enumerate() {
        let notice = sample::admission(cpr);
        let submitted = psychiatry
            .submit(submission(&format!("m{i}"), notice, &[kommune]))
            .await
            .unwrap();
        ids.push(submitted.notice_id);
    }
    let (_, text) = http_get(sender, "/metrics").await.unwrap();
    let depth = |text: &str, state: &str| {
        metric(
            text,
            "tvaers_outbox_depth",
            &format!("{peer},state=\"{state}\""),
        )
    };
    // Nothing can be on the wire to a peer that is down.
    assert_eq!(depth(&text, "pending"), N as f64, "{text}");
    assert_eq!(depth(&text, "in_flight"), 0.0, "{text}");
    assert_eq!(metric(&text, "tvaers_peer_connected", &peer), 0.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "tvaers_notices_submitted_total",
            &format!("{peer},kind=\"admission\"")
        ),
        N as f64,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tvaers_submit_commit_seconds_count", ""),
        N as f64,
        "{text}"
    );
    assert_eq!(metric(&text, "tvaers_notices_delivered_total", &peer), 0.0);

    sites.start(kommune).await.unwrap();
    assert_all_delivered(&psychiatry, &ids).await;
    let (_, text) = http_get(sender, "/metrics").await.unwrap();
    assert_eq!(
        depth(&text, "pending") + depth(&text, "in_flight"),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tvaers_outbox_oldest_pending_age_seconds", &peer),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tvaers_notices_delivered_total", &peer),
        N as f64,
        "{text}"
    );
    assert_eq!(metric(&text, "tvaers_peer_connected", &peer), 1.0, "{text}");
    assert!(
        metric(&text, "tvaers_send_attempts_total", &peer) >= N as f64,
        "{text}"
    );

    let (status, received) = http_get(receiver, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let from = format!("peer=\"{}\"", PSYCHIATRY.org_id);
    assert_eq!(
        metric(
            &received,
            "tvaers_inbox_accepted_total",
            &format!("{from},kind=\"admission\"")
        ),
        N as f64,
        "{received}"
    );
    assert_eq!(
        metric(&received, "tvaers_inbox_unacked", ""),
        N as f64,
        "{received}"
    );
    assert!(
        metric(&text, "tvaers_peer_rtt_seconds", &peer) > 0.0,
        "{text}"
    );
    // Every delivered notice has its submit-to-receipt time in the histogram,
    // and these waited for the stopped peer, so they took a while.
    assert_eq!(
        metric(&text, "tvaers_delivery_seconds_count", &peer),
        N as f64,
        "{text}"
    );
    assert!(
        metric(&text, "tvaers_delivery_seconds_sum", &peer) > 0.0,
        "{text}"
    );
    assert_eq!(http_get(receiver, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(receiver, "/nowhere").await.unwrap().0, 404);

    // Nothing about a citizen in any exposition.
    for text in [&text, &received] {
        for cpr in [CPR_A, CPR_B] {
            assert!(!text.contains(cpr), "a CPR number appears in /metrics");
        }
    }
    assert_no_cpr_in_logs(&sites, &[CPR_A, CPR_B]);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_unready_while_the_store_cannot_take_writes() {
    use sqlx::Connection;
    let kommune = MUNICIPALITY.org_id;
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    let metrics = sites.enable_metrics(kommune).unwrap();
    sites.start(kommune).await.unwrap();
    assert_eq!(http_get(metrics, "/readyz").await.unwrap().0, 200);

    // Another writer holds the SQLite file's write lock.
    let db = sites.site(kommune).dir.join("data/tvaers.db");
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let (status, body) = http_get(metrics, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not writable"), "{body}");
    assert_eq!(http_get(metrics, "/healthz").await.unwrap().0, 200);

    // Released: ready again, and the store takes notices as before.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    assert_eq!(http_get(metrics, "/readyz").await.unwrap().0, 200);
    let municipality = sites.client(kommune).await.unwrap();
    let submitted = municipality
        .submit(submission(
            "n1",
            sample::no_show(CPR_A),
            &[PSYCHIATRY.org_id],
        ))
        .await
        .unwrap();
    sites.start(PSYCHIATRY.org_id).await.unwrap();
    assert_all_delivered(&municipality, &[submitted.notice_id]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handled_receipt_about_a_notice_never_sent_to_that_peer_is_refused() {
    let (kommune, psyk, gp) = (
        MUNICIPALITY.org_id,
        PSYCHIATRY.org_id,
        GENERAL_PRACTICE.org_id,
    );
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY, GENERAL_PRACTICE]).unwrap();
    sites.start_all().await.unwrap();
    // Psychiatry sends an admission to the municipality only.
    let psychiatry = sites.client(psyk).await.unwrap();
    let sent = psychiatry
        .submit(submission("h1", sample::admission(CPR_A), &[kommune]))
        .await
        .unwrap()
        .notice_id;
    assert_all_delivered(&psychiatry, std::slice::from_ref(&sent)).await;

    let handled = |notice_id: &str| v1::Notice {
        citizen_cpr: CPR_A.into(),
        episode_id: String::new(),
        payload: Some(v1::notice::Payload::Handled(v1::Handled {
            notice_id: notice_id.into(),
            inbox: "clinic".into(),
            status: v1::HandledStatus::Handled as i32,
            handler: Some(v1::Contact {
                name: "Dr. Eve".into(),
                phone: "+45 55 55 00 00".into(),
                ..Default::default()
            }),
            handled_at_ms: tvaers_daemon::now_ms(),
            overdue_at_ms: 0,
        })),
    };
    // The GP claims to have handled a notice psychiatry never sent it.
    let from_gp = RawPeer::connect(&sites, gp, psyk).await;
    let receipt = from_gp
        .send_envelope(envelope(gp, psyk, handled(&sent)))
        .await;
    assert_eq!(
        (receipt.outcome, receipt.reason_code.as_str()),
        (
            v1::ReceiptOutcome::RejectedPermanent as i32,
            "UNKNOWN_NOTICE"
        ),
        "{}",
        receipt.reason_text
    );
    let status = psychiatry.delivery_status(&sent).await.unwrap();
    assert!(status.recipients[0].handled.is_empty());
    // The municipality, which did receive it, is believed.
    let from_kommune = RawPeer::connect(&sites, kommune, psyk).await;
    let receipt = from_kommune
        .send_envelope(envelope(kommune, psyk, handled(&sent)))
        .await;
    assert_eq!(receipt.outcome, v1::ReceiptOutcome::Accepted as i32);
    let status = psychiatry.delivery_status(&sent).await.unwrap();
    assert_eq!(status.recipients[0].handled.len(), 1);
    assert_no_cpr_in_logs(&sites, &[CPR_A]);
}
