//! Trust changes on running daemons through the admin API: peers revoked,
//! restored and rotated without a restart, and the outbox commands.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tvaers_client::{Client, DeliveryState, Submission, v1};
use tvaers_daemon::at_rest::{Kek, KekSource, Keyring};
use tvaers_daemon::store::Store;
use tvaers_daemon::store::sealed;
use tvaers_daemon::store::sqlite::SqliteStore;
use tvaers_e2e::{MUNICIPALITY, PSYCHIATRY, Sites};
use tvaers_proto::validate::sample;

const CPR: &str = "0101904000";
const WAIT: Duration = Duration::from_secs(30);

fn admission(key: &str, to: &str) -> Submission {
    Submission::new(sample::admission(CPR))
        .idempotency_key(key)
        .episode("ep-1")
        .to(to)
}

async fn state_of(client: &Client, notice_id: &str) -> (DeliveryState, String) {
    let status = client.delivery_status(notice_id).await.unwrap();
    let recipient = &status.recipients[0];
    (
        recipient.state,
        recipient.last_error.clone().unwrap_or_default(),
    )
}

/// Waits until the notice is delivered to all its recipients.
async fn assert_delivered(client: &Client, notice_id: &str) {
    let status = client.wait_delivered(notice_id, WAIT).await.unwrap();
    assert!(status.all_delivered(), "{status:?}");
}

/// Polls until `check` holds (for effects that travel between processes).
async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn revoke(text: String, org: &str) -> String {
    text.replace(
        &format!("org_id = \"{org}\"\n"),
        &format!("org_id = \"{org}\"\nrevoked_at = \"2026-11-23T12:00:00Z\"\n"),
    )
}

fn unrevoke(text: String) -> String {
    text.replace("revoked_at = \"2026-11-23T12:00:00Z\"\n", "")
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_peer_fails_its_outbox_drops_its_connections_and_can_be_undone() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(psyk).await.unwrap();
    let municipality = sites.client(kommune).await.unwrap();

    // Connected both ways first.
    let first = psychiatry.submit(admission("a1", kommune)).await.unwrap();
    assert_delivered(&psychiatry, &first.notice_id).await;
    let back = municipality
        .submit(
            Submission::new(sample::no_show(CPR))
                .idempotency_key("n1")
                .to(psyk),
        )
        .await
        .unwrap();
    assert_delivered(&municipality, &back.notice_id).await;
    let admin_psyk = sites.admin(psyk).await.unwrap();
    let status = admin_psyk.status().await.unwrap();
    let peer = status.peers.iter().find(|p| p.org_id == kommune).unwrap();
    assert!(
        peer.connected && peer.last_contact_ms > 0 && !peer.revoked,
        "{peer:?}"
    );

    // A notice waits in psychiatry's outbox while the municipality is down.
    sites.stop(kommune).await.unwrap();
    let queued = psychiatry.submit(admission("a2", kommune)).await.unwrap();

    // The municipality's operator revokes psychiatry while it is down...
    sites.edit_config(kommune, |t| revoke(t, psyk)).unwrap();
    sites.start(kommune).await.unwrap();
    // ...and psychiatry's operator revokes the municipality, live.
    sites.edit_config(psyk, |t| revoke(t, kommune)).unwrap();
    let changes = admin_psyk.reload_peers().await.unwrap();
    assert_eq!(changes.revoked, [kommune]);
    assert_eq!(changes.failed_items, 1);
    let (state, error) = state_of(&psychiatry, &queued.notice_id).await;
    assert_eq!(state, DeliveryState::Failed);
    assert!(error.contains("peer revoked"), "{error}");
    let refused = psychiatry
        .submit(admission("a3", kommune))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains(kommune), "{refused}");

    // Neither side gets in: the municipality's notice is refused by TLS.
    let municipality = sites.client(kommune).await.unwrap();
    let admin_kommune = sites.admin(kommune).await.unwrap();
    let status = admin_kommune.status().await.unwrap();
    assert!(
        status.peers.iter().any(|p| p.org_id == psyk && p.revoked),
        "{status:?}"
    );

    // Restoring trust on both sides lets traffic flow again, no restart.
    sites.edit_config(psyk, unrevoke).unwrap();
    let changes = admin_psyk.reload_peers().await.unwrap();
    assert_eq!(changes.added, [kommune]);
    sites.edit_config(kommune, unrevoke).unwrap();
    let changes = admin_kommune.reload_peers().await.unwrap();
    assert_eq!(changes.added, [psyk]);
    let again = municipality
        .submit(
            Submission::new(sample::no_show(CPR))
                .idempotency_key("n2")
                .to(psyk),
        )
        .await
        .unwrap();
    assert_delivered(&municipality, &again.notice_id).await;

    // The failed notice can be retried by the operator and then arrives.
    let retried = admin_psyk
        .retry_outbox(&queued.notice_id, None)
        .await
        .unwrap();
    assert_eq!(retried.changed.len(), 1, "{retried:?}");
    assert_eq!(retried.changed[0].kind, "admission");
    assert_delivered(&psychiatry, &queued.notice_id).await;
    let notice_ids: Vec<String> = municipality
        .list_inbox(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|item| item.envelope.map(|e| e.notice_id))
        .collect();
    assert!(notice_ids.contains(&queued.notice_id));
    assert_eq!(
        notice_ids
            .iter()
            .filter(|id| **id == queued.notice_id)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_drops_a_live_connection_at_once() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(psyk).await.unwrap();
    let sent = psychiatry.submit(admission("a1", kommune)).await.unwrap();
    assert_delivered(&psychiatry, &sent.notice_id).await;
    let admin_psyk = sites.admin(psyk).await.unwrap();
    let connected = async || {
        let status = admin_psyk.status().await.unwrap();
        status
            .peers
            .iter()
            .any(|p| p.org_id == kommune && p.connected)
    };
    assert!(connected().await);

    // The receiving side revokes the sender: the sender's connection (which
    // the receiver accepted) is closed, and a new one is refused.
    sites.edit_config(kommune, |t| revoke(t, psyk)).unwrap();
    let changes = sites
        .admin(kommune)
        .await
        .unwrap()
        .reload_peers()
        .await
        .unwrap();
    assert_eq!(changes.revoked, [psyk]);
    eventually("psychiatry sees the connection closed", async || {
        !connected().await
    })
    .await;
    let blocked = psychiatry.submit(admission("a2", kommune)).await.unwrap();
    eventually("psychiatry is told it is refused", async || {
        let (state, error) = state_of(&psychiatry, &blocked.notice_id).await;
        state == DeliveryState::Pending && error.contains("refused")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_gives_up_on_a_queued_notice_and_status_reports_it() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start(psyk).await.unwrap();
    let psychiatry = sites.client(psyk).await.unwrap();
    let queued = psychiatry.submit(admission("a1", kommune)).await.unwrap();
    let admin = sites.admin(psyk).await.unwrap();

    let pending = admin
        .list_outbox(v1::ListOutboxRequest {
            state: "pending".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].notice_id, queued.notice_id);
    let status = admin.status().await.unwrap();
    assert_eq!(status.outbox_pending, 1);
    let peer = status.peers.iter().find(|p| p.org_id == kommune).unwrap();
    assert_eq!(peer.outbox_depth, 1);
    assert!(!peer.connected);

    let cancelled = admin.cancel_outbox(&queued.notice_id, None).await.unwrap();
    assert_eq!(cancelled.changed.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled.changed[0].state, "failed");
    eventually("the cancel is stored", async || {
        state_of(&psychiatry, &queued.notice_id).await.0 == DeliveryState::Failed
    })
    .await;
    let again = admin.cancel_outbox(&queued.notice_id, None).await.unwrap();
    assert!(
        again.changed.is_empty() && again.skipped[0].contains("already failed"),
        "{again:?}"
    );
    let unknown = admin
        .cancel_outbox("no-such-notice", None)
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("tvaers outbox list"),
        "{unknown}"
    );

    // Nothing of the cancelled notice reaches the peer when it comes up.
    sites.start(kommune).await.unwrap();
    let after = psychiatry.submit(admission("a2", kommune)).await.unwrap();
    assert_delivered(&psychiatry, &after.notice_id).await;
    let inbox = sites
        .client(kommune)
        .await
        .unwrap()
        .list_inbox(0, 100)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
    let status = admin.status().await.unwrap();
    assert_eq!(status.outbox_failed, 1);
    assert!(
        status.warnings.iter().any(|w| w.contains("failed")),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_several_addresses_is_reached_on_the_one_that_answers() {
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    let live = sites.site(kommune).port;
    let dead = tvaers_e2e::free_port().unwrap();
    sites
        .edit_config(psyk, |text| {
            text.replace(
                &format!("address = \"127.0.0.1:{live}\""),
                &format!("addresses = [\"127.0.0.1:{dead}\", \"127.0.0.1:{live}\"]"),
            )
        })
        .unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(psyk).await.unwrap();
    let sent = psychiatry.submit(admission("a1", kommune)).await.unwrap();
    assert_delivered(&psychiatry, &sent.notice_id).await;
    let inbox = sites
        .client(kommune)
        .await
        .unwrap()
        .list_inbox(0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_rechecks_both_signatures_on_both_sides_and_finds_tampering() {
    use sqlx::{Connection, Row};
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    sites.start_all().await.unwrap();
    let psychiatry = sites.client(psyk).await.unwrap();
    let sent = psychiatry.submit(admission("a1", kommune)).await.unwrap();
    assert_delivered(&psychiatry, &sent.notice_id).await;

    let cli = tvaers_e2e::cli_binary().unwrap();
    let verify = |org: &str| {
        std::process::Command::new(&cli)
            .arg("--config")
            .arg(&sites.site(org).config)
            .args(["--json", "verify", &sent.notice_id])
            .output()
            .unwrap()
    };
    for (org, direction) in [(psyk, "sent"), (kommune, "received")] {
        let checks = sites
            .admin(org)
            .await
            .unwrap()
            .verify_notice(&sent.notice_id)
            .await
            .unwrap();
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(
            checks.iter().all(|c| c.valid && c.direction == direction),
            "{checks:?}"
        );
        let items: Vec<&str> = checks.iter().map(|c| c.item.as_str()).collect();
        assert_eq!(items, ["envelope", "receipt"]);
        assert_eq!(verify(org).status.code(), Some(0));
    }

    // Someone with access to the receiver's database file and its storage
    // key (encryption at rest stops anyone without it) changes the stored
    // envelope's last byte (inside the signature) and seals it again.
    let site = sites.site(kommune);
    let db = site.dir.join("data/tvaers.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let kek = Kek::load(&KekSource::File(site.dir.join("keys/storage.kek"))).unwrap();
    let keyring = Keyring::open(&store, kek).await.unwrap();
    store.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let row = sqlx::query("SELECT cursor, sender, notice_id, envelope FROM inbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (cursor, sender, notice_id): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    let row_id = sealed::inbox_row(&sender, &notice_id);
    let mut plain = keyring
        .open_sealed(&row_id, &row.get::<Vec<u8>, _>(3))
        .unwrap();
    *plain.last_mut().unwrap() ^= 1;
    let changed = sqlx::query("UPDATE inbox SET envelope = ? WHERE cursor = ?")
        .bind(keyring.seal(&row_id, &plain).unwrap())
        .bind(cursor)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    conn.close().await.unwrap();
    let checks = sites
        .admin(kommune)
        .await
        .unwrap()
        .verify_notice(&sent.notice_id)
        .await
        .unwrap();
    let envelope = checks.iter().find(|c| c.item == "envelope").unwrap();
    assert!(!envelope.valid && envelope.signer == psyk, "{envelope:?}");
    let output = verify(kommune);
    assert_eq!(output.status.code(), Some(4));
    let text: String = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .collect();
    assert!(text.contains("\"valid\":false"), "{text}");
    let unknown = sites
        .admin(psyk)
        .await
        .unwrap()
        .verify_notice("nothing")
        .await;
    assert!(unknown.is_err());
}
