//! The behaviour every [`Store`] backend must show, written against the trait
//! only so each backend runs the same cases.
//!
//! Each case is an `async fn` taking a fresh, empty store. A backend runs
//! them all with [`store_suite!`], given an expression that yields
//! `(guard, store)`: the guard (a temporary directory, a test database…)
//! lives until the case ends. A backend that needs an outside server may
//! yield `Option<(guard, store)>` instead: `None` skips the case (the
//! backend says why on stderr).
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     crate::store::suite::store_suite!(fresh_store());
//! }
//! ```
#![allow(clippy::unwrap_used)]

use super::{
    InboxRecord, IncomingNotice, NewNotice, NewOutboxItem, OpenOutbox, OutboxFilter, OutboxItem,
    OutboxState, OutboxUpdate, PurgeReport, Store, StoreCounts, StoreError, StoredKey,
    SubmitOutcome, WebhookCount, WebhookFilter, WebhookState, WebhookUpdate,
};
use crate::Millis;
use crate::audit::{
    AuditAction, AuditEvent, AuditQuery, ChainBreak, ChainVerifier, CitizenRef, test_chain_key,
};

/// `created_at_ms` of every notice built by [`notice`].
pub(crate) const CREATED_AT: Millis = 1_000;
/// `expires_at_ms` of every notice built by [`notice`].
pub(crate) const EXPIRES_AT: Millis = CREATED_AT + 86_400_000;
/// `received_at_ms` of every item built by [`incoming`].
pub(crate) const RECEIVED_AT: Millis = 5_000;

/// The envelope [`notice`] gives `recipient`.
pub(crate) fn envelope(notice_id: &str, recipient: &str) -> Vec<u8> {
    format!("envelope {notice_id} for {recipient}").into_bytes()
}

/// The request digest [`notice`] gives a key: the same key, the same digest.
pub(crate) fn digest(key: &str) -> Vec<u8> {
    format!("digest of {key}").into_bytes()
}

/// A notice to `recipients`, in that order.
pub(crate) fn notice(notice_id: &str, key: &str, recipients: &[&str]) -> NewNotice {
    NewNotice {
        notice_id: notice_id.to_owned(),
        idempotency_key: key.to_owned(),
        request_digest: digest(key),
        created_at_ms: CREATED_AT,
        expires_at_ms: EXPIRES_AT,
        recipients: recipients
            .iter()
            .map(|recipient| NewOutboxItem {
                recipient: (*recipient).to_owned(),
                envelope: envelope(notice_id, recipient),
            })
            .collect(),
        actor: "api uid=1000".to_owned(),
        citizen: Some(citizen_of(notice_id)),
        care_team: None,
    }
}

/// The citizen reference [`notice`] and [`incoming`] give a notice id.
pub(crate) fn citizen_of(notice_id: &str) -> CitizenRef {
    CitizenRef(format!("citizen of {notice_id}").into_bytes())
}

/// The same as [`notice`] with a different request under the same key.
pub(crate) fn altered(notice_id: &str, key: &str, recipients: &[&str]) -> NewNotice {
    let mut notice = notice(notice_id, key, recipients);
    notice.request_digest = b"a different request".to_vec();
    notice
}

/// The envelope [`incoming`] gives an item.
pub(crate) fn incoming_envelope(sender: &str, notice_id: &str) -> Vec<u8> {
    format!("envelope {notice_id} from {sender}").into_bytes()
}

/// A notice `sender` sent us, to be answered with `receipt`.
pub(crate) fn incoming(sender: &str, notice_id: &str, receipt: &[u8]) -> IncomingNotice {
    IncomingNotice {
        sender: sender.to_owned(),
        notice_id: notice_id.to_owned(),
        envelope: incoming_envelope(sender, notice_id),
        received_at_ms: RECEIVED_AT,
        receipt: receipt.to_vec(),
        citizen: Some(citizen_of(notice_id)),
        inboxes: vec!["main".to_owned()],
        kind: "admission".to_owned(),
        handled: None,
        webhooks: Vec::new(),
        care_team: None,
    }
}

/// The outbox seqs of a [`SubmitOutcome::Stored`]; panics on anything else.
pub(crate) fn stored_seqs(outcome: &SubmitOutcome) -> Vec<i64> {
    match outcome {
        SubmitOutcome::Stored { outbox_seqs } => outbox_seqs.clone(),
        other => panic!("expected Stored, got {other:?}"),
    }
}

async fn submit_one(store: &dyn Store, notice: NewNotice) -> SubmitOutcome {
    let mut outcomes = store.submit(vec![notice]).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

async fn seqs_of(store: &dyn Store, recipient: &str) -> Vec<i64> {
    store
        .undelivered(recipient)
        .await
        .unwrap()
        .iter()
        .map(|item| item.seq)
        .collect()
}

async fn state_of(store: &dyn Store, notice_id: &str, seq: i64) -> super::RecipientDelivery {
    let delivery = store.delivery(notice_id).await.unwrap().unwrap();
    delivery
        .recipients
        .into_iter()
        .find(|row| row.seq == seq)
        .unwrap()
}

fn assert_increasing(seqs: &[i64]) {
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "not increasing: {seqs:?}"
    );
}

/// A stored notice has one pending outbox row per recipient, in the order
/// given, each carrying its own envelope.
pub(crate) async fn submit_stores_notice_and_outbox_rows(store: &dyn Store) {
    let outcome = submit_one(store, notice("n-1", "key-1", &["org-c", "org-a", "org-b"])).await;
    let seqs = stored_seqs(&outcome);
    assert_eq!(seqs.len(), 3);
    assert_increasing(&seqs);

    let delivery = store.delivery("n-1").await.unwrap().unwrap();
    assert_eq!(delivery.notice_id, "n-1");
    assert_eq!(delivery.created_at_ms, CREATED_AT);
    let recipients: Vec<&str> = delivery
        .recipients
        .iter()
        .map(|row| row.recipient.as_str())
        .collect();
    assert_eq!(recipients, ["org-c", "org-a", "org-b"]);
    for (row, seq) in delivery.recipients.iter().zip(&seqs) {
        assert_eq!(row.seq, *seq);
        assert_eq!(row.state, OutboxState::Pending);
        assert_eq!(row.attempts, 0);
        assert_eq!(row.next_attempt_at_ms, CREATED_AT);
        assert_eq!(row.last_error, None);
        assert_eq!(row.finished_at_ms, None);
        assert_eq!(row.receipt, None);
    }

    let items = store.undelivered("org-a").await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.seq, seqs[1]);
    assert_eq!(item.notice_id, "n-1");
    assert_eq!(item.recipient, "org-a");
    assert_eq!(item.envelope, envelope("n-1", "org-a"));
    assert_eq!(item.state, OutboxState::Pending);
    assert_eq!(item.attempts, 0);
    assert_eq!(item.next_attempt_at_ms, CREATED_AT);
    assert_eq!(item.expires_at_ms, EXPIRES_AT);
    assert_eq!(item.last_error, None);

    // A notice without recipients is stored with no outbox rows.
    let outcome = submit_one(store, notice("n-2", "key-2", &[])).await;
    assert_eq!(stored_seqs(&outcome), Vec::<i64>::new());
    let delivery = store.delivery("n-2").await.unwrap().unwrap();
    assert!(delivery.recipients.is_empty());

    // An empty batch is answered with no outcomes.
    assert!(store.submit(Vec::new()).await.unwrap().is_empty());
}

/// The same key with the same digest is an honest retry: the original id
/// comes back and nothing new is written.
pub(crate) async fn submit_same_key_same_digest_is_duplicate(store: &dyn Store) {
    let first = submit_one(store, notice("n-1", "key-1", &["org-b"])).await;
    let seqs = stored_seqs(&first);

    let again = submit_one(store, notice("n-retry", "key-1", &["org-b", "org-c"])).await;
    assert_eq!(
        again,
        SubmitOutcome::Duplicate {
            notice_id: "n-1".to_owned()
        }
    );
    assert_eq!(seqs_of(store, "org-b").await, seqs);
    assert!(store.undelivered("org-c").await.unwrap().is_empty());
    assert!(store.delivery("n-retry").await.unwrap().is_none());
    assert_eq!(store.counts().await.unwrap().outbox_pending, 1);
}

/// The same key with a different request is refused, naming the notice
/// that holds the key.
pub(crate) async fn submit_same_key_other_digest_is_key_reused(store: &dyn Store) {
    let first = submit_one(store, notice("n-1", "key-1", &["org-b"])).await;
    let seqs = stored_seqs(&first);

    let reused = submit_one(store, altered("n-2", "key-1", &["org-b"])).await;
    assert_eq!(
        reused,
        SubmitOutcome::KeyReused {
            notice_id: "n-1".to_owned()
        }
    );
    assert_eq!(seqs_of(store, "org-b").await, seqs);
    assert!(store.delivery("n-2").await.unwrap().is_none());
}

/// Within one batch the first notice with a key is stored and later ones
/// are answered against it; outcomes follow the input order, and seqs follow
/// submission order.
pub(crate) async fn submit_duplicates_inside_one_batch(store: &dyn Store) {
    let outcomes = store
        .submit(vec![
            notice("n-a", "key-1", &["org-b", "org-c"]),
            notice("n-b", "key-1", &["org-b"]),
            altered("n-c", "key-1", &["org-b"]),
            notice("n-d", "key-2", &["org-b"]),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 4);
    let seqs_a = stored_seqs(&outcomes[0]);
    assert_eq!(
        outcomes[1],
        SubmitOutcome::Duplicate {
            notice_id: "n-a".to_owned()
        }
    );
    assert_eq!(
        outcomes[2],
        SubmitOutcome::KeyReused {
            notice_id: "n-a".to_owned()
        }
    );
    let seqs_d = stored_seqs(&outcomes[3]);
    assert_eq!(seqs_a.len(), 2);
    assert_eq!(seqs_d.len(), 1);
    assert!(seqs_a[1] < seqs_d[0]);
    assert_eq!(seqs_of(store, "org-b").await, vec![seqs_a[0], seqs_d[0]]);
    assert!(store.delivery("n-b").await.unwrap().is_none());
    assert!(store.delivery("n-c").await.unwrap().is_none());

    // A later batch mixing stored keys, a new key and its own repeat.
    let outcomes = store
        .submit(vec![
            altered("n-e", "key-2", &["org-b"]),
            notice("n-f", "key-3", &["org-b"]),
            notice("n-g", "key-1", &["org-b"]),
            altered("n-h", "key-3", &["org-b"]),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes[0],
        SubmitOutcome::KeyReused {
            notice_id: "n-d".to_owned()
        }
    );
    let seqs_f = stored_seqs(&outcomes[1]);
    assert!(seqs_f[0] > seqs_d[0]);
    assert_eq!(
        outcomes[2],
        SubmitOutcome::Duplicate {
            notice_id: "n-a".to_owned()
        }
    );
    assert_eq!(
        outcomes[3],
        SubmitOutcome::KeyReused {
            notice_id: "n-f".to_owned()
        }
    );
    assert_eq!(store.counts().await.unwrap().outbox_pending, 4);
}

/// `undelivered` lists one recipient's pending and in-flight rows by seq,
/// across notices, and drops rows once they are delivered or failed.
pub(crate) async fn undelivered_filters_by_recipient_in_seq_order(store: &dyn Store) {
    let one = stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b", "org-c"])).await);
    let two = stored_seqs(&submit_one(store, notice("n-2", "key-2", &["org-c"])).await);
    let three = stored_seqs(&submit_one(store, notice("n-3", "key-3", &["org-b"])).await);
    let four = stored_seqs(&submit_one(store, notice("n-4", "key-4", &["org-c", "org-b"])).await);

    assert_eq!(
        seqs_of(store, "org-b").await,
        vec![one[0], three[0], four[1]]
    );
    assert_eq!(seqs_of(store, "org-c").await, vec![one[1], two[0], four[0]]);
    assert!(store.undelivered("org-unknown").await.unwrap().is_empty());

    let items = store.undelivered("org-c").await.unwrap();
    let ids: Vec<&str> = items.iter().map(|item| item.notice_id.as_str()).collect();
    assert_eq!(ids, ["n-1", "n-2", "n-4"]);
    assert!(items.iter().all(|item| item.recipient == "org-c"));

    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: three[0],
                attempts: 1,
            },
            OutboxUpdate::Delivered {
                seq: one[0],
                receipt: b"receipt".to_vec(),
                at_ms: 2_000,
            },
            OutboxUpdate::Failed {
                seq: four[1],
                reason: "expired".to_owned(),
                receipt: None,
                at_ms: 2_000,
            },
        ])
        .await
        .unwrap();
    let items = store.undelivered("org-b").await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].seq, three[0]);
    assert_eq!(items[0].state, OutboxState::InFlight);
    assert_eq!(items[0].attempts, 1);
    assert_eq!(seqs_of(store, "org-c").await, vec![one[1], two[0], four[0]]);
}

/// Each kind of update moves a row as the delivery machine decided.
pub(crate) async fn update_outbox_transitions(store: &dyn Store) {
    let seqs =
        stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b", "org-c", "org-d"])).await);
    let (b, c, d) = (seqs[0], seqs[1], seqs[2]);

    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: b,
                attempts: 1,
            },
            OutboxUpdate::InFlight {
                seq: c,
                attempts: 1,
            },
            OutboxUpdate::InFlight {
                seq: d,
                attempts: 3,
            },
        ])
        .await
        .unwrap();
    for (seq, attempts) in [(b, 1), (c, 1), (d, 3)] {
        let row = state_of(store, "n-1", seq).await;
        assert_eq!(row.state, OutboxState::InFlight);
        assert_eq!(row.attempts, attempts);
        assert_eq!(row.finished_at_ms, None);
    }

    store
        .update_outbox(vec![OutboxUpdate::Retry {
            seq: b,
            next_attempt_at_ms: 9_000,
            error: "connection refused".to_owned(),
        }])
        .await
        .unwrap();
    let row = state_of(store, "n-1", b).await;
    assert_eq!(row.state, OutboxState::Pending);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at_ms, 9_000);
    assert_eq!(row.last_error.as_deref(), Some("connection refused"));
    let item = store.undelivered("org-b").await.unwrap().remove(0);
    assert_eq!(item.state, OutboxState::Pending);
    assert_eq!(item.next_attempt_at_ms, 9_000);
    assert_eq!(item.last_error.as_deref(), Some("connection refused"));

    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: b,
                attempts: 2,
            },
            OutboxUpdate::Delivered {
                seq: c,
                receipt: b"receipt c".to_vec(),
                at_ms: 10_000,
            },
            OutboxUpdate::Failed {
                seq: d,
                reason: "rejected: KIND_NOT_ALLOWED".to_owned(),
                receipt: Some(b"rejection d".to_vec()),
                at_ms: 11_000,
            },
        ])
        .await
        .unwrap();
    let row = state_of(store, "n-1", b).await;
    assert_eq!(row.state, OutboxState::InFlight);
    assert_eq!(row.attempts, 2);
    let row = state_of(store, "n-1", c).await;
    assert_eq!(row.state, OutboxState::Delivered);
    assert_eq!(row.receipt.as_deref(), Some(&b"receipt c"[..]));
    assert_eq!(row.finished_at_ms, Some(10_000));
    assert_eq!(row.attempts, 1);
    let row = state_of(store, "n-1", d).await;
    assert_eq!(row.state, OutboxState::Failed);
    assert_eq!(
        row.last_error.as_deref(),
        Some("rejected: KIND_NOT_ALLOWED")
    );
    assert_eq!(row.receipt.as_deref(), Some(&b"rejection d"[..]));
    assert_eq!(row.finished_at_ms, Some(11_000));

    // Failing without a receipt (e.g. expired before any answer).
    store
        .update_outbox(vec![OutboxUpdate::Failed {
            seq: b,
            reason: "expired".to_owned(),
            receipt: None,
            at_ms: 12_000,
        }])
        .await
        .unwrap();
    let row = state_of(store, "n-1", b).await;
    assert_eq!(row.state, OutboxState::Failed);
    assert_eq!(row.last_error.as_deref(), Some("expired"));
    assert_eq!(row.receipt, None);
    assert_eq!(row.finished_at_ms, Some(12_000));

    // Updates to rows that do not exist change nothing and do not fail.
    store
        .update_outbox(vec![OutboxUpdate::InFlight {
            seq: d + 1_000,
            attempts: 1,
        }])
        .await
        .unwrap();
    store.update_outbox(Vec::new()).await.unwrap();
}

/// Delivered and failed are final: no later update moves a row out of them.
pub(crate) async fn finished_rows_are_not_changed_back(store: &dyn Store) {
    let seqs = stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b", "org-c"])).await);
    let (delivered, failed) = (seqs[0], seqs[1]);
    store
        .update_outbox(vec![
            OutboxUpdate::Delivered {
                seq: delivered,
                receipt: b"receipt".to_vec(),
                at_ms: 2_000,
            },
            OutboxUpdate::Failed {
                seq: failed,
                reason: "expired".to_owned(),
                receipt: None,
                at_ms: 3_000,
            },
        ])
        .await
        .unwrap();
    let before = store.delivery("n-1").await.unwrap().unwrap();

    for seq in [delivered, failed] {
        store
            .update_outbox(vec![
                OutboxUpdate::InFlight { seq, attempts: 7 },
                OutboxUpdate::Retry {
                    seq,
                    next_attempt_at_ms: 99_000,
                    error: "late".to_owned(),
                },
                OutboxUpdate::Delivered {
                    seq,
                    receipt: b"late receipt".to_vec(),
                    at_ms: 99_000,
                },
                OutboxUpdate::Failed {
                    seq,
                    reason: "late".to_owned(),
                    receipt: Some(b"late".to_vec()),
                    at_ms: 99_000,
                },
            ])
            .await
            .unwrap();
    }
    assert_eq!(store.delivery("n-1").await.unwrap().unwrap(), before);
    assert!(store.undelivered("org-b").await.unwrap().is_empty());
    assert!(store.undelivered("org-c").await.unwrap().is_empty());
}

/// Several updates to one row inside one batch apply in the order given.
pub(crate) async fn update_outbox_applies_a_batch_in_order(store: &dyn Store) {
    let seqs =
        stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b", "org-c", "org-d"])).await);
    let (b, c, d) = (seqs[0], seqs[1], seqs[2]);
    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: b,
                attempts: 1,
            },
            OutboxUpdate::InFlight {
                seq: c,
                attempts: 1,
            },
            OutboxUpdate::Retry {
                seq: b,
                next_attempt_at_ms: 5_000,
                error: "timeout".to_owned(),
            },
            OutboxUpdate::InFlight {
                seq: b,
                attempts: 2,
            },
            OutboxUpdate::Delivered {
                seq: c,
                receipt: b"receipt c".to_vec(),
                at_ms: 6_000,
            },
            OutboxUpdate::Retry {
                seq: c,
                next_attempt_at_ms: 7_000,
                error: "too late".to_owned(),
            },
            OutboxUpdate::InFlight {
                seq: d,
                attempts: 1,
            },
            OutboxUpdate::Retry {
                seq: d,
                next_attempt_at_ms: 8_000,
                error: "reset".to_owned(),
            },
        ])
        .await
        .unwrap();

    let row = state_of(store, "n-1", b).await;
    assert_eq!(row.state, OutboxState::InFlight);
    assert_eq!(row.attempts, 2);
    assert_eq!(row.next_attempt_at_ms, 5_000);
    assert_eq!(row.last_error.as_deref(), Some("timeout"));
    let row = state_of(store, "n-1", c).await;
    assert_eq!(row.state, OutboxState::Delivered);
    assert_eq!(row.finished_at_ms, Some(6_000));
    let row = state_of(store, "n-1", d).await;
    assert_eq!(row.state, OutboxState::Pending);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at_ms, 8_000);
}

/// `delivery` reports each recipient of a notice, and `None` for an
/// unknown notice.
pub(crate) async fn delivery_reports_status(store: &dyn Store) {
    assert!(store.delivery("n-unknown").await.unwrap().is_none());
    let seqs = stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b", "org-c"])).await);
    submit_one(store, notice("n-2", "key-2", &["org-b"])).await;
    store
        .update_outbox(vec![OutboxUpdate::Delivered {
            seq: seqs[1],
            receipt: b"receipt c".to_vec(),
            at_ms: 4_000,
        }])
        .await
        .unwrap();
    let delivery = store.delivery("n-1").await.unwrap().unwrap();
    assert_eq!(delivery.notice_id, "n-1");
    assert_eq!(delivery.recipients.len(), 2);
    assert_eq!(delivery.recipients[0].recipient, "org-b");
    assert_eq!(delivery.recipients[0].state, OutboxState::Pending);
    assert_eq!(delivery.recipients[1].recipient, "org-c");
    assert_eq!(delivery.recipients[1].state, OutboxState::Delivered);
    assert_eq!(delivery.recipients[1].finished_at_ms, Some(4_000));
    assert!(store.delivery("n-unknown").await.unwrap().is_none());
}

/// One row per (sender, notice id): a resend gets the first copy's cursor
/// and receipt; the same notice id from another sender is another item.
pub(crate) async fn accept_inbox_dedups_by_sender_and_notice_id(store: &dyn Store) {
    let first = store
        .accept_inbox(vec![incoming("org-a", "n-1", b"receipt 1")])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].newly_stored);
    assert_eq!(first[0].receipt, b"receipt 1");

    let resent = store
        .accept_inbox(vec![incoming("org-a", "n-1", b"receipt 2")])
        .await
        .unwrap();
    assert_eq!(resent[0].cursor, first[0].cursor);
    assert!(!resent[0].newly_stored);
    assert_eq!(resent[0].receipt, b"receipt 1");

    let other = store
        .accept_inbox(vec![incoming("org-b", "n-1", b"receipt 3")])
        .await
        .unwrap();
    assert!(other[0].newly_stored);
    assert!(other[0].cursor > first[0].cursor);
    assert_eq!(other[0].receipt, b"receipt 3");

    let items = store.inbox_after(0, 10, false, None).await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].cursor, first[0].cursor);
    assert_eq!(items[0].sender, "org-a");
    assert_eq!(items[0].notice_id, "n-1");
    assert_eq!(items[0].envelope, incoming_envelope("org-a", "n-1"));
    assert_eq!(items[0].received_at_ms, RECEIVED_AT);
    assert_eq!(items[0].acked_at_ms, None);
    assert_eq!(items[1].sender, "org-b");
    assert_eq!(store.counts().await.unwrap().inbox_total, 2);
    assert!(store.accept_inbox(Vec::new()).await.unwrap().is_empty());
}

/// Copies inside one batch are deduplicated against each other and against
/// what was stored before; outcomes follow the input order.
pub(crate) async fn accept_inbox_dedups_inside_one_batch(store: &dyn Store) {
    let outcomes = store
        .accept_inbox(vec![
            incoming("org-a", "n-1", b"r1"),
            incoming("org-a", "n-1", b"r2"),
            incoming("org-b", "n-1", b"r3"),
            incoming("org-a", "n-2", b"r4"),
        ])
        .await
        .unwrap();
    let flags: Vec<bool> = outcomes.iter().map(|o| o.newly_stored).collect();
    assert_eq!(flags, [true, false, true, true]);
    assert_eq!(outcomes[1].cursor, outcomes[0].cursor);
    assert_eq!(outcomes[1].receipt, b"r1");
    assert!(outcomes[0].cursor < outcomes[2].cursor);
    assert!(outcomes[2].cursor < outcomes[3].cursor);
    let receipts: Vec<&[u8]> = outcomes.iter().map(|o| o.receipt.as_slice()).collect();
    assert_eq!(receipts, [&b"r1"[..], b"r1", b"r3", b"r4"]);

    let later = store
        .accept_inbox(vec![
            incoming("org-a", "n-3", b"r5"),
            incoming("org-b", "n-1", b"r6"),
            incoming("org-a", "n-3", b"r7"),
        ])
        .await
        .unwrap();
    assert!(later[0].newly_stored);
    assert!(later[0].cursor > outcomes[3].cursor);
    assert_eq!(later[0].receipt, b"r5");
    assert!(!later[1].newly_stored);
    assert_eq!(later[1].cursor, outcomes[2].cursor);
    assert_eq!(later[1].receipt, b"r3");
    assert!(!later[2].newly_stored);
    assert_eq!(later[2].cursor, later[0].cursor);
    assert_eq!(later[2].receipt, b"r5");
    assert_eq!(store.counts().await.unwrap().inbox_total, 4);
}

/// `inbox_after` pages by cursor and limit, oldest first, and can skip
/// acknowledged items.
pub(crate) async fn inbox_after_pages_and_filters(store: &dyn Store) {
    let batch = (1..=5)
        .map(|n| incoming("org-a", &format!("n-{n}"), b"r"))
        .collect();
    let cursors: Vec<u64> = store
        .accept_inbox(batch)
        .await
        .unwrap()
        .iter()
        .map(|o| o.cursor)
        .collect();

    let page = |items: Vec<super::InboxRecord>| -> Vec<u64> {
        items.iter().map(|item| item.cursor).collect()
    };
    assert_eq!(
        page(store.inbox_after(0, 2, false, None).await.unwrap()),
        cursors[..2]
    );
    assert_eq!(
        page(store.inbox_after(cursors[1], 2, false, None).await.unwrap()),
        cursors[2..4]
    );
    assert_eq!(
        page(store.inbox_after(cursors[3], 2, false, None).await.unwrap()),
        cursors[4..]
    );
    assert!(
        store
            .inbox_after(cursors[4], 2, false, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .inbox_after(0, 0, false, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .inbox_after(u64::MAX, 10, false, None)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(
        store
            .ack_inbox(cursors[1], 7_000, "api uid=1000")
            .await
            .unwrap()
    );
    assert!(
        store
            .ack_inbox(cursors[3], 8_000, "api uid=1000")
            .await
            .unwrap()
    );
    assert_eq!(
        page(store.inbox_after(0, 10, true, None).await.unwrap()),
        vec![cursors[0], cursors[2], cursors[4]]
    );
    assert_eq!(
        page(store.inbox_after(cursors[0], 1, true, None).await.unwrap()),
        vec![cursors[2]]
    );
    let all = store.inbox_after(0, 10, false, None).await.unwrap();
    assert_eq!(page(all.clone()), cursors);
    let acked: Vec<Option<Millis>> = all.iter().map(|item| item.acked_at_ms).collect();
    assert_eq!(acked, [None, Some(7_000), None, Some(8_000), None]);
    let ids: Vec<&str> = all.iter().map(|item| item.notice_id.as_str()).collect();
    assert_eq!(ids, ["n-1", "n-2", "n-3", "n-4", "n-5"]);
}

/// Acknowledging twice: true, then false, keeping the first time.
pub(crate) async fn ack_inbox_twice(store: &dyn Store) {
    let cursor = store
        .accept_inbox(vec![incoming("org-a", "n-1", b"r")])
        .await
        .unwrap()[0]
        .cursor;
    assert!(
        store
            .ack_inbox(cursor, 7_000, "api uid=1000")
            .await
            .unwrap()
    );
    assert!(
        !store
            .ack_inbox(cursor, 9_000, "api uid=1000")
            .await
            .unwrap()
    );
    let items = store.inbox_after(0, 10, false, None).await.unwrap();
    assert_eq!(items[0].acked_at_ms, Some(7_000));
}

/// Acknowledging a cursor that names no item is an error naming it.
pub(crate) async fn ack_unknown_cursor_is_an_error(store: &dyn Store) {
    let cursor = store
        .accept_inbox(vec![incoming("org-a", "n-1", b"r")])
        .await
        .unwrap()[0]
        .cursor;
    for unknown in [cursor + 1, 0, u64::MAX] {
        match store.ack_inbox(unknown, 7_000, "api uid=1000").await {
            Err(StoreError::NoSuchInboxItem(reported)) => assert_eq!(reported, unknown),
            other => panic!("expected NoSuchInboxItem({unknown}), got {other:?}"),
        }
    }
}

/// Counts of outbox rows by state (in flight counts as pending) and of
/// inbox items.
pub(crate) async fn counts_reflect_states(store: &dyn Store) {
    assert_eq!(store.counts().await.unwrap(), StoreCounts::default());
    let one = stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b", "org-c"])).await);
    let two = stored_seqs(&submit_one(store, notice("n-2", "key-2", &["org-b", "org-c"])).await);
    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: one[0],
                attempts: 1,
            },
            OutboxUpdate::Delivered {
                seq: one[1],
                receipt: b"r".to_vec(),
                at_ms: 2_000,
            },
            OutboxUpdate::Failed {
                seq: two[0],
                reason: "expired".to_owned(),
                receipt: None,
                at_ms: 2_000,
            },
        ])
        .await
        .unwrap();
    let accepted = store
        .accept_inbox(vec![
            incoming("org-a", "n-1", b"r"),
            incoming("org-a", "n-2", b"r"),
            incoming("org-a", "n-3", b"r"),
        ])
        .await
        .unwrap();
    store
        .ack_inbox(accepted[1].cursor, 3_000, "api uid=1000")
        .await
        .unwrap();
    assert_eq!(
        store.counts().await.unwrap(),
        StoreCounts {
            outbox_pending: 2,
            outbox_delivered: 1,
            outbox_failed: 1,
            inbox_total: 3,
            inbox_unacked: 2,
        }
    );
}

/// Open outbox rows per recipient: pending and in flight count, finished
/// rows do not, and the oldest is the earliest submitted of the open ones.
pub(crate) async fn outbox_open_counts_undelivered_per_recipient(store: &dyn Store) {
    assert_eq!(store.outbox_open().await.unwrap(), Vec::new());
    let mut early = notice("n-1", "key-1", &["org-b", "org-c"]);
    early.created_at_ms = 500;
    let one = stored_seqs(&submit_one(store, early).await);
    let two = stored_seqs(&submit_one(store, notice("n-2", "key-2", &["org-b", "org-c"])).await);
    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: one[0],
                attempts: 1,
            },
            OutboxUpdate::Delivered {
                seq: one[1],
                receipt: b"r".to_vec(),
                at_ms: 2_000,
            },
            OutboxUpdate::Failed {
                seq: two[1],
                reason: "expired".to_owned(),
                receipt: None,
                at_ms: 2_000,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.outbox_open().await.unwrap(),
        vec![OpenOutbox {
            recipient: "org-b".to_owned(),
            notices: 2,
            in_flight: 1,
            oldest_created_at_ms: 500,
        }]
    );
}

/// Batches far larger than one statement can bind work through every write
/// method.
pub(crate) async fn large_batches(store: &dyn Store) {
    const N: usize = 1_000;
    let batch: Vec<NewNotice> = (0..N)
        .map(|n| notice(&format!("n-{n}"), &format!("key-{n}"), &["org-b", "org-c"]))
        .collect();
    let outcomes = store.submit(batch.clone()).await.unwrap();
    assert_eq!(outcomes.len(), N);
    let seqs: Vec<i64> = outcomes.iter().flat_map(stored_seqs).collect();
    assert_eq!(seqs.len(), 2 * N);
    assert_increasing(&seqs);

    let to_b = store.undelivered("org-b").await.unwrap();
    assert_eq!(to_b.len(), N);
    assert_eq!(to_b[N - 1].notice_id, format!("n-{}", N - 1));
    assert_eq!(
        to_b[N - 1].envelope,
        envelope(&format!("n-{}", N - 1), "org-b")
    );

    // The whole batch again: every notice is a duplicate of itself.
    let again = store.submit(batch).await.unwrap();
    assert!(again.iter().enumerate().all(|(n, outcome)| {
        *outcome
            == SubmitOutcome::Duplicate {
                notice_id: format!("n-{n}"),
            }
    }));

    // Every kind of update over every row, with varying attempt counts.
    let updates: Vec<OutboxUpdate> = seqs
        .iter()
        .enumerate()
        .map(|(n, &seq)| match n % 4 {
            0 => OutboxUpdate::InFlight {
                seq,
                attempts: u32::try_from(n % 7).unwrap() + 1,
            },
            1 => OutboxUpdate::Delivered {
                seq,
                receipt: format!("receipt {n}").into_bytes(),
                at_ms: 2_000,
            },
            2 => OutboxUpdate::Failed {
                seq,
                reason: format!("reason {n}"),
                receipt: None,
                at_ms: 2_000,
            },
            _ => OutboxUpdate::Retry {
                seq,
                next_attempt_at_ms: 3_000,
                error: format!("error {n}"),
            },
        })
        .collect();
    store.update_outbox(updates).await.unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.outbox_pending, 1_000);
    assert_eq!(counts.outbox_delivered, 500);
    assert_eq!(counts.outbox_failed, 500);
    let row = state_of(store, "n-0", seqs[1]).await;
    assert_eq!(row.receipt.as_deref(), Some(&b"receipt 1"[..]));
    let row = state_of(store, "n-8", seqs[16]).await;
    assert_eq!(row.state, OutboxState::InFlight);
    assert_eq!(row.attempts, 16 % 7 + 1);

    let inbox: Vec<IncomingNotice> = (0..N)
        .map(|n| incoming("org-a", &format!("n-{n}"), format!("r{n}").as_bytes()))
        .collect();
    let accepted = store.accept_inbox(inbox.clone()).await.unwrap();
    assert!(accepted.iter().all(|o| o.newly_stored));
    let cursors: Vec<u64> = accepted.iter().map(|o| o.cursor).collect();
    assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]));
    let resent = store.accept_inbox(inbox).await.unwrap();
    for (n, (first, again)) in accepted.iter().zip(&resent).enumerate() {
        assert!(!again.newly_stored);
        assert_eq!(again.cursor, first.cursor);
        assert_eq!(again.receipt, format!("r{n}").into_bytes());
    }
    assert_eq!(store.counts().await.unwrap().inbox_total, 1_000);
}

/// What a backend's `$make` in [`store_suite!`] may yield: a fresh store
/// with its guard, or `None` when the case must be skipped.
/// `inbox_by_notice` returns each sender's item with that notice id, with
/// the receipt it was answered with.
pub(crate) async fn inbox_by_notice_finds_every_sender_s_copy(store: &dyn Store) {
    store
        .accept_inbox(vec![
            incoming("org-a", "n-1", b"receipt a"),
            incoming("org-b", "n-1", b"receipt b"),
            incoming("org-a", "n-2", b"receipt c"),
        ])
        .await
        .unwrap();
    let found = store.inbox_by_notice("n-1").await.unwrap();
    let senders: Vec<&str> = found.iter().map(|r| r.sender.as_str()).collect();
    assert_eq!(senders, ["org-a", "org-b"]);
    assert_eq!(found[1].receipt, b"receipt b");
    assert_eq!(found[0].envelope, incoming_envelope("org-a", "n-1"));
    assert!(store.inbox_by_notice("n-3").await.unwrap().is_empty());
}

/// The readiness probe's write succeeds on a healthy store, again and again
/// (it rewrites one row), and leaves notices alone.
pub(crate) async fn probe_write_commits_repeatedly(store: &dyn Store) {
    store.probe_write(1).await.unwrap();
    store.probe_write(2).await.unwrap();
    assert_eq!(store.counts().await.unwrap(), StoreCounts::default());
}

/// `list_outbox` returns matching rows newest first, by state, notice and
/// page, with their envelopes.
pub(crate) async fn list_outbox_filters_newest_first(store: &dyn Store) {
    let a = stored_seqs(&submit_one(store, notice("n-1", "k-1", &["org-a", "org-b"])).await);
    let b = stored_seqs(&submit_one(store, notice("n-2", "k-2", &["org-a"])).await);
    store
        .update_outbox(vec![OutboxUpdate::Failed {
            seq: a[1],
            reason: "no".into(),
            receipt: None,
            at_ms: 2_000,
        }])
        .await
        .unwrap();
    let all = |filter: OutboxFilter| async move {
        store
            .list_outbox(filter)
            .await
            .unwrap()
            .iter()
            .map(|item| item.seq)
            .collect::<Vec<_>>()
    };
    let limit = 10;
    assert_eq!(
        all(OutboxFilter {
            limit,
            ..Default::default()
        })
        .await,
        [b[0], a[1], a[0]]
    );
    assert_eq!(
        all(OutboxFilter {
            limit: 1,
            ..Default::default()
        })
        .await,
        [b[0]]
    );
    assert_eq!(
        all(OutboxFilter {
            state: Some(OutboxState::Failed),
            limit,
            ..Default::default()
        })
        .await,
        [a[1]]
    );
    assert_eq!(
        all(OutboxFilter {
            notice_id: Some("n-1".into()),
            limit,
            ..Default::default()
        })
        .await,
        [a[1], a[0]]
    );
    assert_eq!(
        all(OutboxFilter {
            before_seq: Some(b[0]),
            limit,
            ..Default::default()
        })
        .await,
        [a[1], a[0]]
    );
    let rows = store
        .list_outbox(OutboxFilter {
            limit,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows[1].envelope, envelope("n-1", "org-b"));
    assert_eq!(rows[1].last_error.as_deref(), Some("no"));
    assert_eq!(rows[1].expires_at_ms, EXPIRES_AT);
}

/// `reopen_outbox` puts failed rows of unexpired notices back to pending
/// with a fresh attempt count; other rows stay as they are.
pub(crate) async fn reopen_outbox_only_reopens_failed_unexpired_rows(store: &dyn Store) {
    let seqs = stored_seqs(&submit_one(store, notice("n-1", "k-1", &["a", "b", "c"])).await);
    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: seqs[0],
                attempts: 3,
            },
            OutboxUpdate::Failed {
                seq: seqs[0],
                reason: "refused".into(),
                receipt: Some(b"r".to_vec()),
                at_ms: 2_000,
            },
            OutboxUpdate::Delivered {
                seq: seqs[1],
                receipt: b"ok".to_vec(),
                at_ms: 2_000,
            },
        ])
        .await
        .unwrap();
    let reopened = store.reopen_outbox(seqs.clone(), 3_000).await.unwrap();
    assert_eq!(reopened, 1);
    let row = state_of(store, "n-1", seqs[0]).await;
    assert_eq!(row.state, OutboxState::Pending);
    assert_eq!(row.attempts, 0);
    assert_eq!(row.last_error, None);
    assert_eq!(row.receipt, None);
    assert_eq!(row.next_attempt_at_ms, 3_000);
    assert_eq!(
        state_of(store, "n-1", seqs[1]).await.state,
        OutboxState::Delivered
    );
    assert_eq!(seqs_of(store, "a").await, [seqs[0]]);

    store
        .update_outbox(vec![OutboxUpdate::Failed {
            seq: seqs[0],
            reason: "again".into(),
            receipt: None,
            at_ms: 4_000,
        }])
        .await
        .unwrap();
    // After the notice's expiry nothing is reopened: the peer would refuse it.
    assert_eq!(
        store
            .reopen_outbox(vec![seqs[0]], EXPIRES_AT)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        state_of(store, "n-1", seqs[0]).await.state,
        OutboxState::Failed
    );
}

/// Every audited write appends its entries in the order of the writes, and
/// the whole log verifies as one chain.
pub(crate) async fn audited_writes_append_one_verifiable_chain(store: &dyn Store) {
    let seqs = stored_seqs(&submit_one(store, notice("n-1", "key-1", &["org-b"])).await);
    // A duplicate submit stores nothing and so records nothing.
    submit_one(store, notice("n-1", "key-1", &["org-b"])).await;
    store
        .update_outbox(vec![
            OutboxUpdate::InFlight {
                seq: seqs[0],
                attempts: 1,
            },
            OutboxUpdate::Delivered {
                seq: seqs[0],
                receipt: b"receipt".to_vec(),
                at_ms: 2_000,
            },
        ])
        .await
        .unwrap();
    let accepted = store
        .accept_inbox(vec![
            incoming("org-x", "in-1", b"r-1"),
            incoming("org-x", "in-1", b"r-1"),
        ])
        .await
        .unwrap();
    store
        .ack_inbox(accepted[0].cursor, 3_000, "api uid=42")
        .await
        .unwrap();
    // A second ack changes nothing and records nothing.
    store
        .ack_inbox(accepted[0].cursor, 3_500, "api uid=42")
        .await
        .unwrap();
    store
        .record_audit(vec![
            AuditEvent::new(4_000, "api uid=42", AuditAction::InboxRead)
                .notice("in-1")
                .peer("org-x")
                .citizen(Some(citizen_of("in-1"))),
        ])
        .await
        .unwrap();

    let entries = store
        .audit_entries(AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<AuditAction> = entries.iter().map(|e| e.event.action).collect();
    assert_eq!(
        actions,
        [
            AuditAction::Submit,
            AuditAction::SendAttempt,
            AuditAction::Delivered,
            AuditAction::Received,
            AuditAction::ReceivedDuplicate,
            AuditAction::InboxAck,
            AuditAction::InboxRead,
        ]
    );
    let seq_numbers: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seq_numbers, [1, 2, 3, 4, 5, 6, 7]);
    let submit = &entries[0].event;
    assert_eq!(submit.actor, "api uid=1000");
    assert_eq!(submit.notice_id.as_deref(), Some("n-1"));
    assert_eq!(submit.citizen, Some(citizen_of("n-1")));
    assert!(submit.detail.contains("org-b"), "{}", submit.detail);
    let delivered = &entries[2].event;
    assert_eq!(delivered.peer.as_deref(), Some("org-b"));
    assert_eq!(delivered.at_ms, 2_000);
    let received = &entries[3].event;
    assert_eq!(received.actor, "peer org-x");
    assert_eq!(received.citizen, Some(citizen_of("in-1")));
    let ack = &entries[5].event;
    assert_eq!(
        (ack.actor.as_str(), ack.notice_id.as_deref(), ack.at_ms),
        ("api uid=42", Some("in-1"), 3_000)
    );

    let mut verifier = ChainVerifier::new(test_chain_key());
    for entry in &entries {
        verifier.check(entry);
    }
    let report = verifier.finish();
    assert_eq!(report.breaks, Vec::<ChainBreak>::new());
    assert_eq!(report.head_seq, 7);
}

pub(crate) async fn audit_entries_page_and_filter_by_time_and_citizen(store: &dyn Store) {
    let events: Vec<AuditEvent> = (0..10)
        .map(|i| {
            let notice_id = format!("n-{}", i % 3);
            let citizen = (i < 3).then(|| citizen_of(&notice_id));
            AuditEvent::new(1_000 * i, "daemon", AuditAction::SendAttempt)
                .notice(notice_id)
                .citizen(citizen)
        })
        .collect();
    store.record_audit(events).await.unwrap();

    let page = |after_seq, limit| AuditQuery {
        after_seq,
        limit,
        ..AuditQuery::default()
    };
    let first = store.audit_entries(page(0, 4)).await.unwrap();
    let next = store.audit_entries(page(4, 100)).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(next.len(), 6);
    assert_eq!(next[0].seq, 5);

    let window = store
        .audit_entries(AuditQuery {
            from_ms: Some(2_000),
            to_ms: Some(5_000),
            ..page(0, 100)
        })
        .await
        .unwrap();
    let times: Vec<Millis> = window.iter().map(|e| e.event.at_ms).collect();
    assert_eq!(times, [2_000, 3_000, 4_000]);

    // n-1's citizen: the entry carrying the reference and every later
    // entry about n-1 (which carry none).
    let about = store
        .audit_entries(AuditQuery {
            citizen: Some(citizen_of("n-1")),
            ..page(0, 100)
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = about.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 5, 8]);
    assert!(
        about
            .iter()
            .all(|e| e.event.notice_id.as_deref() == Some("n-1"))
    );
    let nobody = store
        .audit_entries(AuditQuery {
            citizen: Some(CitizenRef(b"nobody".to_vec())),
            ..page(0, 100)
        })
        .await
        .unwrap();
    assert!(nobody.is_empty());
}

/// A write that fails leaves neither its rows nor its audit entries.
pub(crate) async fn a_rolled_back_write_leaves_no_audit_entry(store: &dyn Store) {
    submit_one(store, notice("n-1", "key-1", &["org-b"])).await;
    // The same recipient twice violates UNIQUE (notice_id, recipient).
    let broken = notice("n-2", "key-2", &["org-b", "org-b"]);
    assert!(store.submit(vec![broken]).await.is_err());
    let entries = store
        .audit_entries(AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].event.notice_id.as_deref(), Some("n-1"));
    assert!(store.delivery("n-2").await.unwrap().is_none());
    // The chain goes on from the last committed entry.
    submit_one(store, notice("n-3", "key-3", &["org-b"])).await;
    let entries = store
        .audit_entries(AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
}

/// Items go to the team inboxes routing chose; read and handled are kept
/// per team inbox, first come first kept, and audited.
pub(crate) async fn team_inboxes_place_items_and_keep_the_first_reader_and_handler(
    store: &dyn Store,
) {
    let mut both = incoming("org-x", "in-1", b"r-1");
    both.inboxes = vec!["discharge-coordinators".into(), "caseworkers".into()];
    let mut one = incoming("org-x", "in-2", b"r-2");
    one.inboxes = vec!["housing-support".into()];
    let accepted = store.accept_inbox(vec![both, one]).await.unwrap();
    let (first, second) = (accepted[0].cursor, accepted[1].cursor);

    let team = |inbox: &'static str| async move {
        store
            .inbox_after(0, 10, false, Some(inbox))
            .await
            .unwrap()
            .iter()
            .map(|record| record.cursor)
            .collect::<Vec<_>>()
    };
    assert_eq!(team("caseworkers").await, [first]);
    assert_eq!(team("housing-support").await, [second]);
    assert!(team("nobody").await.is_empty());
    let all = store.inbox_after(0, 10, false, None).await.unwrap();
    let names: Vec<&str> = all[0].placements.iter().map(|p| p.inbox.as_str()).collect();
    assert_eq!(names, ["caseworkers", "discharge-coordinators"]);
    assert!(all[0].placements.iter().all(|p| p.read_at_ms.is_none()));

    assert!(
        store
            .mark_read(first, "caseworkers", "Ane", 7_000, "api uid=1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_read(first, "caseworkers", "Bo", 7_500, "api uid=1")
            .await
            .unwrap()
    );
    let handled = |by: &str, at_ms| super::Handled {
        by: by.to_owned(),
        at_ms,
        handling: format!("contact of {by}").into_bytes(),
    };
    assert!(
        store
            .mark_handled(
                first,
                "discharge-coordinators",
                handled("Cai", 8_000),
                "api uid=1"
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_handled(
                first,
                "discharge-coordinators",
                handled("Dan", 9_000),
                "api uid=1"
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.handled_since(8_000).await.unwrap(),
        [(first, "discharge-coordinators".to_owned())]
    );
    assert!(store.handled_since(8_001).await.unwrap().is_empty());
    let record = store.inbox_by_notice("in-1").await.unwrap().remove(0);
    let caseworkers = &record.placements[0];
    assert_eq!(
        (
            caseworkers.read_by.as_deref(),
            caseworkers.read_at_ms,
            caseworkers.handled_at_ms
        ),
        (Some("Ane"), Some(7_000), None)
    );
    let coordinators = &record.placements[1];
    // Handling implies reading.
    assert_eq!(
        (
            coordinators.read_by.as_deref(),
            coordinators.handled_by.as_deref(),
            coordinators.handled_at_ms,
            coordinators.handling.as_deref(),
        ),
        (
            Some("Cai"),
            Some("Cai"),
            Some(8_000),
            Some(&b"contact of Cai"[..])
        )
    );

    match store
        .mark_read(second, "caseworkers", "Ane", 7_000, "api uid=1")
        .await
    {
        Err(StoreError::NoSuchPlacement { cursor, inbox }) => {
            assert_eq!((cursor, inbox.as_str()), (second, "caseworkers"));
        }
        other => panic!("expected NoSuchPlacement, got {other:?}"),
    }
    match store
        .mark_read(second + 100, "caseworkers", "Ane", 7_000, "api uid=1")
        .await
    {
        Err(StoreError::NoSuchInboxItem(_)) => {}
        other => panic!("expected NoSuchInboxItem, got {other:?}"),
    }

    let actions: Vec<AuditAction> = store
        .audit_entries(AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.event.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::Received,
            AuditAction::Received,
            AuditAction::MarkedRead,
            AuditAction::MarkedHandled,
        ]
    );
}

/// A team inbox is read in placement order: an item escalated into it
/// comes after items placed there before the escalation, even ones
/// received later, so a reader past those still gets it.
pub(crate) async fn team_inbox_reads_follow_placement_order(store: &dyn Store) {
    assert_eq!(store.newest_position().await.unwrap(), 0);
    let mut admission = incoming("org-x", "in-1", b"r-1");
    admission.inboxes = vec!["coordinators".into()];
    let mut no_show = incoming("org-x", "in-2", b"r-2");
    no_show.inboxes = vec!["leads".into(), "housing".into()];
    let accepted = store.accept_inbox(vec![admission]).await.unwrap();
    let later = store.accept_inbox(vec![no_show]).await.unwrap();
    let (early, late) = (accepted[0].cursor, later[0].cursor);
    assert!(early < late);

    let leads = store.team_inbox_after("leads", 0, 10, false).await.unwrap();
    assert_eq!(cursors_of(&leads), vec![late]);
    let seen = position_in(&leads[0], "leads");
    assert!(
        store
            .team_inbox_after("leads", seen, 10, false)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(
        store
            .escalate(early, "coordinators", "leads", 7_000, false)
            .await
            .unwrap()
    );
    let newest = store.newest_position().await.unwrap();
    let after_seen = store
        .team_inbox_after("leads", seen, 10, false)
        .await
        .unwrap();
    assert_eq!(
        cursors_of(&after_seen),
        vec![early],
        "the escalation comes after what was seen"
    );
    assert_eq!(position_in(&after_seen[0], "leads"), newest);
    // By cursor the same reader would have missed it.
    assert!(
        store
            .inbox_after(late, 10, false, Some("leads"))
            .await
            .unwrap()
            .is_empty()
    );

    let all = store.team_inbox_after("leads", 0, 10, false).await.unwrap();
    assert_eq!(cursors_of(&all), vec![late, early]);
    assert!(
        store
            .team_inbox_after("leads", 0, 1, false)
            .await
            .unwrap()
            .len()
            == 1
    );
    store.ack_inbox(late, 8_000, "api uid=1").await.unwrap();
    let unacked = store.team_inbox_after("leads", 0, 10, true).await.unwrap();
    assert_eq!(cursors_of(&unacked), vec![early]);
    // Positions are unique across inboxes and the envelope comes along.
    let housing = store
        .team_inbox_after("housing", 0, 10, false)
        .await
        .unwrap();
    assert_ne!(position_in(&housing[0], "housing"), seen);
    assert_eq!(housing[0].envelope, incoming_envelope("org-x", "in-2"));
}

fn cursors_of(records: &[InboxRecord]) -> Vec<u64> {
    records.iter().map(|record| record.cursor).collect()
}

fn position_in(record: &InboxRecord, inbox: &str) -> u64 {
    record
        .placements
        .iter()
        .find(|p| p.inbox == inbox)
        .map(|p| p.position)
        .unwrap()
}

/// Open placements are the unhandled, unescalated items of the inboxes
/// asked about; escalating one marks it and places it in the escalation
/// inbox once, and a handled item is never escalated.
pub(crate) async fn escalation_moves_an_open_item_once_and_never_a_handled_one(store: &dyn Store) {
    let mut first = incoming("org-x", "in-1", b"r-1");
    first.inboxes = vec!["coordinators".into()];
    let mut second = incoming("org-x", "in-2", b"r-2");
    second.inboxes = vec!["coordinators".into(), "elsewhere".into()];
    second.kind = "no_show".into();
    let accepted = store.accept_inbox(vec![first, second]).await.unwrap();
    let (one, two) = (accepted[0].cursor, accepted[1].cursor);
    let timed = vec!["coordinators".to_owned()];

    let open = store.open_placements(&timed).await.unwrap();
    assert_eq!(
        open,
        vec![
            super::OpenPlacement {
                cursor: one,
                inbox: "coordinators".into(),
                kind: "admission".into(),
                placed_at_ms: RECEIVED_AT,
            },
            super::OpenPlacement {
                cursor: two,
                inbox: "coordinators".into(),
                kind: "no_show".into(),
                placed_at_ms: RECEIVED_AT,
            },
        ]
    );

    let handled = super::Handled {
        by: "Ane".into(),
        at_ms: 6_000,
        handling: Vec::new(),
    };
    store
        .mark_handled(two, "coordinators", handled, "api uid=1")
        .await
        .unwrap();
    assert!(
        !store
            .escalate(two, "coordinators", "leads", 7_000, true)
            .await
            .unwrap()
    );
    assert!(
        store
            .escalate(one, "coordinators", "leads", 7_000, true)
            .await
            .unwrap()
    );
    assert!(
        !store
            .escalate(one, "coordinators", "leads", 8_000, true)
            .await
            .unwrap()
    );
    assert!(store.open_placements(&timed).await.unwrap().is_empty());
    // The restart check finds the escalation, once, by the inbox it left.
    assert_eq!(
        store.escalated_since(7_000).await.unwrap(),
        [(one, "coordinators".to_owned())]
    );
    assert!(store.escalated_since(7_001).await.unwrap().is_empty());

    let leads = store
        .inbox_after(0, 10, false, Some("leads"))
        .await
        .unwrap();
    assert_eq!(leads.len(), 1);
    let placements = &leads[0].placements;
    let (coordinators, escalated): (Vec<_>, Vec<_>) =
        placements.iter().partition(|p| p.inbox == "coordinators");
    assert_eq!(coordinators[0].escalated_at_ms, Some(7_000));
    assert_eq!(escalated[0].inbox, "leads");
    assert_eq!(escalated[0].escalated_from.as_deref(), Some("coordinators"));
    // The escalation item waits in its own inbox from the escalation on.
    let open_leads = store.open_placements(&["leads".to_owned()]).await.unwrap();
    assert_eq!(open_leads.len(), 1);
    assert_eq!(
        (open_leads[0].placed_at_ms, open_leads[0].kind.as_str()),
        (7_000, "admission")
    );
    let last = store
        .audit_entries(AuditQuery {
            action: Some(AuditAction::Escalated),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].event.notice_id.as_deref(), Some("in-1"));
    // The escalation inbox has a webhook: one event, for the escalated item
    // only (the refused and repeated escalations added none).
    let events = store
        .list_webhooks(WebhookFilter {
            limit: 10,
            ..WebhookFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].inbox.as_str(),
            events[0].cursor,
            events[0].kind.as_str()
        ),
        ("leads", one, "admission")
    );
    assert_eq!(events[0].state, WebhookState::Pending);
    assert_eq!(events[0].next_attempt_at_ms, 7_000);
}

/// A business receipt is stored with the item that carries it, once per
/// (notice, peer, team, status), and found by the notice it is about.
pub(crate) async fn handled_receipts_are_stored_with_their_item_once_per_team(store: &dyn Store) {
    let receipt = |inbox: &str, bytes: &[u8]| super::HandledReceipt {
        notice_id: "ours-1".into(),
        from_org: "org-x".into(),
        inbox: inbox.into(),
        status: super::HandledStatus::Handled,
        handled: bytes.to_vec(),
        received_at_ms: RECEIVED_AT,
    };
    let mut first = incoming("org-x", "hr-1", b"r-1");
    first.handled = Some(receipt("coordinators", b"first"));
    first.inboxes = Vec::new();
    let mut again = incoming("org-x", "hr-2", b"r-2");
    again.handled = Some(receipt("coordinators", b"second"));
    let mut other_team = incoming("org-x", "hr-3", b"r-3");
    other_team.handled = Some(receipt("caseworkers", b"third"));
    // A resend of the first is a duplicate and stores nothing new.
    let mut resent = incoming("org-x", "hr-1", b"r-1");
    resent.handled = Some(receipt("leads", b"resent"));
    store
        .accept_inbox(vec![first, again, other_team, resent])
        .await
        .unwrap();
    let found = store.handled_receipts("ours-1").await.unwrap();
    let teams: Vec<(&str, &[u8])> = found
        .iter()
        .map(|r| (r.inbox.as_str(), r.handled.as_slice()))
        .collect();
    assert_eq!(
        teams,
        [
            ("caseworkers", &b"third"[..]),
            ("coordinators", &b"first"[..])
        ]
    );
    assert!(store.handled_receipts("ours-2").await.unwrap().is_empty());
    // The carrying item has no team inbox.
    let items = store.inbox_after(0, 10, false, Some("main")).await.unwrap();
    assert_eq!(items.len(), 2, "hr-2 and hr-3 went to main, hr-1 nowhere");

    // Overdue in a team, then handled there: both are kept; a second
    // overdue receipt for the team is not.
    let overdue = |id: &str, bytes: &[u8]| {
        let mut item = incoming("org-x", id, b"r");
        item.inboxes = Vec::new();
        item.handled = Some(super::HandledReceipt {
            notice_id: "ours-3".into(),
            status: super::HandledStatus::Overdue,
            ..receipt("coordinators", bytes)
        });
        item
    };
    let mut handled = incoming("org-x", "hr-6", b"r");
    handled.inboxes = Vec::new();
    handled.handled = Some(super::HandledReceipt {
        notice_id: "ours-3".into(),
        received_at_ms: RECEIVED_AT + 1,
        ..receipt("coordinators", b"handled")
    });
    store
        .accept_inbox(vec![
            overdue("hr-4", b"late"),
            overdue("hr-5", b"late again"),
        ])
        .await
        .unwrap();
    store.accept_inbox(vec![handled]).await.unwrap();
    let found = store.handled_receipts("ours-3").await.unwrap();
    let statuses: Vec<(super::HandledStatus, &[u8])> = found
        .iter()
        .map(|r| (r.status, r.handled.as_slice()))
        .collect();
    assert_eq!(
        statuses,
        [
            (super::HandledStatus::Overdue, &b"late"[..]),
            (super::HandledStatus::Handled, &b"handled"[..])
        ]
    );
}

/// The outbox rows of one notice, keyed by recipient.
async fn outbox_rows(store: &dyn Store, notice_id: &str) -> Vec<OutboxItem> {
    let mut rows = store
        .list_outbox(OutboxFilter {
            notice_id: Some(notice_id.to_owned()),
            limit: 100,
            ..OutboxFilter::default()
        })
        .await
        .unwrap();
    rows.sort_by_key(|row| row.seq);
    rows
}

/// Retention empties the bodies of outbox rows finished before the cutoff
/// and of inbox items acknowledged before it, and nothing else; metadata
/// and receipts stay; a dry run changes nothing; a second run finds nothing.
pub(crate) async fn purge_bodies_empties_finished_and_acknowledged_bodies_only(store: &dyn Store) {
    const CUTOFF: Millis = 5_000;
    const NOW: Millis = 6_000;
    let seqs = stored_seqs(&submit_one(store, notice("n-1", "k-1", &["a", "b", "c", "d"])).await);
    store
        .update_outbox(vec![
            OutboxUpdate::Delivered {
                seq: seqs[0],
                receipt: b"receipt a".to_vec(),
                at_ms: 2_000,
            },
            OutboxUpdate::Failed {
                seq: seqs[1],
                reason: "refused".into(),
                receipt: Some(b"receipt b".to_vec()),
                at_ms: 2_000,
            },
            // Finished exactly at the cutoff: not before it.
            OutboxUpdate::Delivered {
                seq: seqs[2],
                receipt: b"receipt c".to_vec(),
                at_ms: CUTOFF,
            },
            OutboxUpdate::InFlight {
                seq: seqs[3],
                attempts: 1,
            },
        ])
        .await
        .unwrap();
    let cursors: Vec<u64> = store
        .accept_inbox(vec![
            incoming("org-x", "in-1", b"r-1"),
            incoming("org-x", "in-2", b"r-2"),
            incoming("org-x", "in-3", b"r-3"),
        ])
        .await
        .unwrap()
        .iter()
        .map(|outcome| outcome.cursor)
        .collect();
    assert!(
        store
            .ack_inbox(cursors[0], 2_000, "api uid=1000")
            .await
            .unwrap()
    );
    assert!(
        store
            .ack_inbox(cursors[1], CUTOFF, "api uid=1000")
            .await
            .unwrap()
    );
    let before = outbox_rows(store, "n-1").await;
    let inbox_before = store.inbox_after(0, 10, false, None).await.unwrap();
    assert!(before.iter().all(|row| row.purged_at_ms.is_none()));
    assert!(inbox_before.iter().all(|item| item.purged_at_ms.is_none()));

    let expected = PurgeReport {
        outbox_rows: 2,
        inbox_items: 1,
    };
    assert_eq!(
        store.purge_bodies(CUTOFF, NOW, true).await.unwrap(),
        expected
    );
    assert_eq!(
        outbox_rows(store, "n-1").await,
        before,
        "a dry run changes nothing"
    );
    assert_eq!(
        store.inbox_after(0, 10, false, None).await.unwrap(),
        inbox_before
    );

    assert_eq!(
        store.purge_bodies(CUTOFF, NOW, false).await.unwrap(),
        expected
    );
    let after = outbox_rows(store, "n-1").await;
    for (row, old) in after.iter().zip(&before) {
        let purged = row.seq == seqs[0] || row.seq == seqs[1];
        if purged {
            assert!(
                row.envelope.is_empty(),
                "row {} keeps its body",
                row.recipient
            );
            assert_eq!(row.purged_at_ms, Some(NOW));
            let kept = OutboxItem {
                envelope: old.envelope.clone(),
                purged_at_ms: None,
                ..row.clone()
            };
            assert_eq!(&kept, old, "only the body changes");
        } else {
            assert_eq!(row, old, "row {} is not due", row.recipient);
        }
    }
    let receipts: Vec<Option<Vec<u8>>> = store
        .delivery("n-1")
        .await
        .unwrap()
        .unwrap()
        .recipients
        .into_iter()
        .map(|row| row.receipt)
        .collect();
    assert_eq!(receipts[0].as_deref(), Some(&b"receipt a"[..]));
    assert_eq!(receipts[1].as_deref(), Some(&b"receipt b"[..]));
    let inbox_after = store.inbox_after(0, 10, false, None).await.unwrap();
    assert!(inbox_after[0].envelope.is_empty());
    assert_eq!(inbox_after[0].purged_at_ms, Some(NOW));
    assert_eq!(inbox_after[0].receipt, b"r-1");
    assert_eq!(inbox_after[0].acked_at_ms, Some(2_000));
    assert_eq!(inbox_after[0].notice_id, "in-1");
    assert_eq!(inbox_after[1..], inbox_before[1..]);
    assert_eq!(
        store.inbox_by_notice("in-1").await.unwrap()[0].purged_at_ms,
        Some(NOW)
    );

    // Idempotent: nothing is due again, and the first purge time stays.
    assert_eq!(
        store
            .purge_bodies(CUTOFF, NOW + 1_000, false)
            .await
            .unwrap(),
        PurgeReport::default()
    );
    assert_eq!(outbox_rows(store, "n-1").await, after);
    // A purged failed row has nothing left to send: it is not reopened.
    assert_eq!(store.reopen_outbox(vec![seqs[1]], NOW).await.unwrap(), 0);

    // A later cutoff takes the rows finished at the first one; the row in
    // flight and the unacknowledged item are never purged.
    assert_eq!(
        store
            .purge_bodies(EXPIRES_AT * 2, NOW, false)
            .await
            .unwrap(),
        PurgeReport {
            outbox_rows: 1,
            inbox_items: 1,
        }
    );
    let last = outbox_rows(store, "n-1").await;
    assert_eq!(last[3].envelope, envelope("n-1", "d"));
    assert_eq!(last[3].purged_at_ms, None);
    assert_eq!(seqs_of(store, "d").await, [seqs[3]]);
    let unacked = store.inbox_after(0, 10, true, None).await.unwrap();
    assert_eq!(unacked.len(), 1);
    assert_eq!(unacked[0].envelope, incoming_envelope("org-x", "in-3"));
}

fn stored_key(wrapped: &[u8], kek_id: &str, at_ms: Millis) -> StoredKey {
    StoredKey {
        wrapped: wrapped.to_vec(),
        kek_id: kek_id.to_owned(),
        created_at_ms: at_ms,
        updated_at_ms: at_ms,
    }
}

// The names differ from the daemon's own ("data"), which a sealed store
// holds from the start.

/// A store key is created once: a second create (another instance racing
/// at first start) gets the first one back and changes nothing.
pub(crate) async fn store_keys_are_created_once(store: &dyn Store) {
    assert_eq!(store.load_store_key("suite-key").await.unwrap(), None);
    let first = stored_key(b"wrapped-1\x00\xff", "kek-a", 1_000);
    assert_eq!(
        store
            .create_store_key("suite-key", first.clone())
            .await
            .unwrap(),
        first
    );
    let second = stored_key(b"wrapped-2", "kek-b", 2_000);
    assert_eq!(
        store.create_store_key("suite-key", second).await.unwrap(),
        first
    );
    assert_eq!(
        store.load_store_key("suite-key").await.unwrap(),
        Some(first.clone())
    );
    // Names are independent.
    let other = stored_key(b"other", "kek-a", 3_000);
    assert_eq!(
        store
            .create_store_key("other", other.clone())
            .await
            .unwrap(),
        other
    );
    assert_eq!(
        store.load_store_key("suite-key").await.unwrap(),
        Some(first)
    );
}

/// Replacing a store key is a compare-and-set on its wrapped bytes and KEK
/// id: a stale expectation changes nothing.
pub(crate) async fn replace_store_key_is_compare_and_set(store: &dyn Store) {
    let missing = stored_key(b"w", "kek-a", 1_000);
    assert!(
        !store
            .replace_store_key("suite-key", &missing, missing.clone())
            .await
            .unwrap()
    );
    let original = stored_key(b"wrapped-a", "kek-a", 1_000);
    store
        .create_store_key("suite-key", original.clone())
        .await
        .unwrap();
    let rewrapped = StoredKey {
        updated_at_ms: 5_000,
        ..stored_key(b"wrapped-b", "kek-b", 1_000)
    };
    assert!(
        store
            .replace_store_key("suite-key", &original, rewrapped.clone())
            .await
            .unwrap()
    );
    assert_eq!(
        store.load_store_key("suite-key").await.unwrap(),
        Some(rewrapped.clone())
    );
    // The original is gone: replacing it again fails, as does an
    // expectation with the right bytes but another KEK id.
    let third = stored_key(b"wrapped-c", "kek-c", 6_000);
    assert!(
        !store
            .replace_store_key("suite-key", &original, third.clone())
            .await
            .unwrap()
    );
    let wrong_id = StoredKey {
        kek_id: "kek-x".to_owned(),
        ..rewrapped.clone()
    };
    assert!(
        !store
            .replace_store_key("suite-key", &wrong_id, third)
            .await
            .unwrap()
    );
    assert_eq!(
        store.load_store_key("suite-key").await.unwrap(),
        Some(rewrapped)
    );
}

pub(crate) trait Fresh {
    type Guard;
    type Store;
    fn into_fresh(self) -> Option<(Self::Guard, Self::Store)>;
}

impl<G, S> Fresh for (G, S) {
    type Guard = G;
    type Store = S;
    fn into_fresh(self) -> Option<(G, S)> {
        Some(self)
    }
}

impl<G, S> Fresh for Option<(G, S)> {
    type Guard = G;
    type Store = S;
    fn into_fresh(self) -> Option<(G, S)> {
        self
    }
}

fn webhook_filter(state: Option<WebhookState>, inbox: Option<&str>) -> WebhookFilter {
    WebhookFilter {
        id: None,
        state,
        inbox: inbox.map(str::to_owned),
        limit: 100,
    }
}

async fn webhook_ids(store: &dyn Store, filter: WebhookFilter) -> Vec<i64> {
    store
        .list_webhooks(filter)
        .await
        .unwrap()
        .iter()
        .map(|event| event.id)
        .collect()
}

/// Placing an item in an inbox with a webhook writes one pending event with
/// it (a duplicate copy writes none); it is claimed when due, leased, and
/// moved through retry, dead, manual retry and delivered; finished events
/// are not changed back.
pub(crate) async fn webhook_events_queue_with_their_placement(store: &dyn Store) {
    let mut hooked = incoming("org-x", "in-1", b"r-1");
    hooked.inboxes = vec!["discharge-coordinators".into(), "caseworkers".into()];
    // "team-leads" has a webhook but routing did not place the item there.
    hooked.webhooks = vec!["discharge-coordinators".into(), "team-leads".into()];
    hooked.kind = "discharge".into();
    let plain = incoming("org-x", "in-2", b"r-2");
    let accepted = store
        .accept_inbox(vec![hooked.clone(), plain])
        .await
        .unwrap();
    let cursor = accepted[0].cursor;

    let events = store
        .list_webhooks(webhook_filter(None, None))
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = events[0].clone();
    assert_eq!(event.inbox, "discharge-coordinators");
    assert_eq!(event.cursor, cursor);
    assert_eq!(event.notice_id, "in-1");
    assert_eq!(event.sender, "org-x");
    assert_eq!(event.kind, "discharge");
    assert_eq!(event.received_at_ms, RECEIVED_AT);
    assert_eq!(event.state, WebhookState::Pending);
    assert_eq!(event.attempts, 0);
    assert_eq!(event.next_attempt_at_ms, RECEIVED_AT);
    assert_eq!(event.last_error, None);

    // The same notice again: no second event.
    store.accept_inbox(vec![hooked]).await.unwrap();
    assert_eq!(
        webhook_ids(store, webhook_filter(None, None)).await,
        [event.id]
    );

    // Not due before its time; claimed once, then leased.
    let t = RECEIVED_AT;
    assert!(
        store
            .claim_webhooks(t - 1, t + 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim_webhooks(t, t + 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, event.id);
    assert_eq!(claimed[0].next_attempt_at_ms, t + 60_000);
    assert!(
        store
            .claim_webhooks(t + 1, t + 60_001, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A sender that died mid-send: the lease runs out and it is due again.
    assert_eq!(
        store
            .claim_webhooks(t + 60_000, t + 120_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    store
        .update_webhooks(vec![WebhookUpdate::Retry {
            id: event.id,
            attempts: 1,
            next_attempt_at_ms: t + 200_000,
            error: "HTTP 500".into(),
            at_ms: t + 60_001,
        }])
        .await
        .unwrap();
    let retried = &store
        .list_webhooks(webhook_filter(None, None))
        .await
        .unwrap()[0];
    assert_eq!(retried.state, WebhookState::Pending);
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(retried.updated_at_ms, t + 60_001);
    assert!(
        store
            .claim_webhooks(t + 199_999, t + 300_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_webhooks(t + 200_000, t + 300_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    store
        .update_webhooks(vec![WebhookUpdate::Dead {
            id: event.id,
            attempts: 2,
            error: "cannot connect".into(),
            at_ms: t + 200_001,
        }])
        .await
        .unwrap();
    // Dead is final for the sender: a late outcome does not revive it.
    store
        .update_webhooks(vec![WebhookUpdate::Delivered {
            id: event.id,
            attempts: 3,
            at_ms: t + 200_002,
        }])
        .await
        .unwrap();
    let dead = &store
        .list_webhooks(webhook_filter(Some(WebhookState::Dead), None))
        .await
        .unwrap()[0];
    assert_eq!(dead.id, event.id);
    assert_eq!(dead.attempts, 2);
    assert_eq!(dead.last_error.as_deref(), Some("cannot connect"));
    assert!(
        store
            .claim_webhooks(i64::MAX / 2, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.webhook_counts().await.unwrap(),
        [WebhookCount {
            inbox: "discharge-coordinators".into(),
            state: WebhookState::Dead,
            count: 1
        }]
    );

    // An operator retries it: pending again, attempts reset, due now.
    assert!(store.retry_webhook(event.id, t + 300_000).await.unwrap());
    assert!(!store.retry_webhook(event.id, t + 300_000).await.unwrap());
    assert!(
        !store
            .retry_webhook(event.id + 1000, t + 300_000)
            .await
            .unwrap()
    );
    let reopened = &store
        .list_webhooks(webhook_filter(None, None))
        .await
        .unwrap()[0];
    assert_eq!(
        (
            reopened.state,
            reopened.attempts,
            reopened.last_error.clone()
        ),
        (WebhookState::Pending, 0, None)
    );
    assert_eq!(
        store
            .claim_webhooks(t + 300_000, t + 400_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    store
        .update_webhooks(vec![WebhookUpdate::Delivered {
            id: event.id,
            attempts: 1,
            at_ms: t + 300_001,
        }])
        .await
        .unwrap();
    assert!(!store.retry_webhook(event.id, t + 400_000).await.unwrap());
    assert_eq!(
        webhook_ids(store, webhook_filter(Some(WebhookState::Delivered), None)).await,
        [event.id]
    );
    assert!(
        webhook_ids(store, webhook_filter(Some(WebhookState::Pending), None))
            .await
            .is_empty()
    );
    assert!(
        webhook_ids(store, webhook_filter(None, Some("caseworkers")))
            .await
            .is_empty()
    );
}

/// Claims take the oldest due events first, at most `limit`; listing is
/// newest first and filtered by inbox.
pub(crate) async fn webhook_claims_are_oldest_first_and_bounded(store: &dyn Store) {
    let batch: Vec<IncomingNotice> = (0..5)
        .map(|n| {
            let mut notice = incoming("org-x", &format!("in-{n}"), b"r");
            notice.inboxes = vec!["a".into(), "b".into()];
            notice.webhooks = vec![if n % 2 == 0 { "a" } else { "b" }.into()];
            notice
        })
        .collect();
    store.accept_inbox(batch).await.unwrap();
    let all = webhook_ids(store, webhook_filter(None, None)).await;
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|pair| pair[0] > pair[1]), "{all:?}");
    assert_eq!(
        webhook_ids(store, webhook_filter(None, Some("a")))
            .await
            .len(),
        3
    );

    let first = store
        .claim_webhooks(RECEIVED_AT, RECEIVED_AT + 1, 2)
        .await
        .unwrap();
    let rest = store
        .claim_webhooks(RECEIVED_AT, RECEIVED_AT + 1, 10)
        .await
        .unwrap();
    let mut oldest: Vec<i64> = all.clone();
    oldest.reverse();
    assert_eq!(
        first
            .iter()
            .chain(&rest)
            .map(|event| event.id)
            .collect::<Vec<_>>(),
        oldest
    );
    assert_eq!(first.len(), 2);
    let counts = store.webhook_counts().await.unwrap();
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.inbox.as_str(), c.state, c.count))
            .collect::<Vec<_>>(),
        [
            ("a", WebhookState::Pending, 3),
            ("b", WebhookState::Pending, 2)
        ]
    );
}

/// The newest cursor is 0 for an empty inbox, then the highest stored; a
/// duplicate does not move it.
pub(crate) async fn newest_inbox_cursor_follows_accepts(store: &dyn Store) {
    assert_eq!(store.newest_inbox_cursor().await.unwrap(), 0);
    let accepted = store
        .accept_inbox(vec![
            incoming("org-x", "in-1", b"r-1"),
            incoming("org-y", "in-2", b"r-2"),
        ])
        .await
        .unwrap();
    let newest = accepted[1].cursor;
    assert!(newest > accepted[0].cursor);
    assert_eq!(store.newest_inbox_cursor().await.unwrap(), newest);
    store
        .accept_inbox(vec![incoming("org-x", "in-1", b"r-1")])
        .await
        .unwrap();
    assert_eq!(store.newest_inbox_cursor().await.unwrap(), newest);
}

/// Learn [`contact`]`(…)`.
fn learn(citizen: &str, org: &str, unit: &str, who: &str, as_of: Millis) -> super::CareTeamChange {
    super::CareTeamChange::Learn(contact(citizen, org, unit, who, as_of))
}

/// A care-team contact for `citizen` from `org`'s `unit`, holding at `as_of`.
fn contact(
    citizen: &str,
    org: &str,
    unit: &str,
    who: &str,
    as_of: Millis,
) -> super::CareTeamContact {
    super::CareTeamContact {
        citizen: CitizenRef(citizen.as_bytes().to_vec()),
        org: org.to_owned(),
        unit: unit.to_owned(),
        contact: who.as_bytes().to_vec(),
        as_of_ms: as_of,
        learned_at_ms: as_of + 10,
        notice_id: format!("about {who}"),
    }
}

/// (org, unit, contact, as_of) of `citizen`'s care team.
async fn care_team_of(store: &dyn Store, citizen: &str) -> Vec<(String, String, String, Millis)> {
    store
        .care_team(&CitizenRef(citizen.as_bytes().to_vec()))
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(c.learned_at_ms, c.as_of_ms + 10);
            assert_eq!(
                c.notice_id,
                format!("about {}", String::from_utf8_lossy(&c.contact))
            );
            (
                c.org,
                c.unit,
                String::from_utf8(c.contact).unwrap(),
                c.as_of_ms,
            )
        })
        .collect()
}

pub(crate) async fn care_team_keeps_the_latest_contact_per_organisation_and_unit(
    store: &dyn Store,
) {
    // Learned from received items: a handled receipt per team, two from
    // the same team (the later one wins even though it arrives first), and
    // another citizen's.
    let mut items = Vec::new();
    for (id, care) in [
        (
            "ct-1",
            contact("cit-a", "org-x", "coordinators", "Bo, later", 300),
        ),
        (
            "ct-2",
            contact("cit-a", "org-x", "coordinators", "Ane, earlier", 200),
        ),
        ("ct-3", contact("cit-a", "org-x", "housing", "Eva", 250)),
        ("ct-4", contact("cit-b", "org-x", "coordinators", "Ib", 100)),
    ] {
        let mut item = incoming("org-x", id, b"r");
        item.care_team = Some(super::CareTeamChange::Learn(care));
        items.push(item);
    }
    // In the same batch as a contact with the same key: the later stays.
    let mut same_batch = incoming("org-y", "ct-5", b"r");
    same_batch.care_team = Some(learn("cit-a", "org-y", "caseworker", "Ole", 500));
    let mut same_batch_older = incoming("org-y", "ct-6", b"r");
    same_batch_older.care_team = Some(learn("cit-a", "org-y", "caseworker", "Kim", 400));
    items.push(same_batch);
    items.push(same_batch_older);
    store.accept_inbox(items).await.unwrap();
    // A resent item teaches nothing new: it is a duplicate.
    let mut resent = incoming("org-x", "ct-2", b"r");
    resent.care_team = Some(learn("cit-a", "org-x", "coordinators", "Ane, again", 900));
    store.accept_inbox(vec![resent]).await.unwrap();

    assert_eq!(
        care_team_of(store, "cit-a").await,
        [
            (
                "org-x".into(),
                "coordinators".into(),
                "Bo, later".into(),
                300
            ),
            ("org-x".into(), "housing".into(), "Eva".into(), 250),
            ("org-y".into(), "caseworker".into(), "Ole".into(), 500),
        ]
    );

    // Learned from a plan change we submit: a later one replaces it, an
    // older one (and a duplicate submit) does not.
    let mut plan = notice("plan-1", "k-plan-1", &["org-y"]);
    plan.care_team = Some(learn("cit-a", "org-a", "coordinator", "Lis", 600));
    let mut older = notice("plan-2", "k-plan-2", &["org-y"]);
    older.care_team = Some(learn("cit-a", "org-a", "coordinator", "Per", 550));
    store.submit(vec![plan, older]).await.unwrap();
    let mut duplicate = notice("plan-3", "k-plan-1", &["org-y"]);
    duplicate.care_team = Some(learn("cit-a", "org-a", "coordinator", "Dup", 999));
    store.submit(vec![duplicate]).await.unwrap();
    let team = care_team_of(store, "cit-a").await;
    assert_eq!(
        team[0],
        ("org-a".into(), "coordinator".into(), "Lis".into(), 600)
    );
    let mut newer = notice("plan-4", "k-plan-4", &["org-y"]);
    newer.care_team = Some(learn("cit-a", "org-a", "coordinator", "Mia", 700));
    store.submit(vec![newer]).await.unwrap();
    let team = care_team_of(store, "cit-a").await;
    assert_eq!(team.len(), 4);
    assert_eq!(
        team[0],
        ("org-a".into(), "coordinator".into(), "Mia".into(), 700)
    );

    assert_eq!(
        care_team_of(store, "cit-b").await,
        [("org-x".into(), "coordinators".into(), "Ib".into(), 100)]
    );
    assert!(care_team_of(store, "cit-c").await.is_empty());

    // A correction withdraws what its notice taught: from a peer only that
    // peer's (org-y's "about Eva" would be org-x's), ours any peer's.
    let forget = |org: Option<&str>, who: &str| super::CareTeamChange::Forget {
        org: org.map(str::to_owned),
        notice_id: format!("about {who}"),
    };
    let mut not_theirs = incoming("org-y", "ct-7", b"r");
    not_theirs.care_team = Some(forget(Some("org-y"), "Eva"));
    let mut theirs = incoming("org-y", "ct-8", b"r");
    theirs.care_team = Some(forget(Some("org-y"), "Ole"));
    // Replaced already: "Ane, earlier" is no longer stored, Bo stays.
    let mut replaced = incoming("org-x", "ct-9", b"r");
    replaced.care_team = Some(forget(Some("org-x"), "Ane, earlier"));
    store
        .accept_inbox(vec![not_theirs, theirs, replaced])
        .await
        .unwrap();
    let mut ours = notice("corr-1", "k-corr-1", &["org-x"]);
    ours.care_team = Some(forget(None, "Ib"));
    store.submit(vec![ours]).await.unwrap();
    let units = |team: Vec<(String, String, String, Millis)>| -> Vec<String> {
        team.into_iter()
            .map(|(org, unit, _, _)| format!("{org}/{unit}"))
            .collect()
    };
    assert_eq!(
        units(care_team_of(store, "cit-a").await),
        ["org-a/coordinator", "org-x/coordinators", "org-x/housing"]
    );
    assert!(care_team_of(store, "cit-b").await.is_empty());
}

/// Rows are found by shard (the citizen's, see [`crate::lease::shard_of`])
/// without their envelopes, then read by seq; finished rows are not open.
pub(crate) async fn open_seqs_follow_the_shards_of_undelivered_rows(store: &dyn Store) {
    use crate::lease::shard_of;
    let ids: Vec<String> = (0..12).map(|n| format!("n-{n}")).collect();
    let batch = ids
        .iter()
        .map(|id| notice(id, &format!("k-{id}"), &["org-b"]))
        .collect();
    let outcomes = store.submit(batch).await.unwrap();
    let seqs: Vec<i64> = outcomes.iter().flat_map(stored_seqs).collect();
    let shards: Vec<u16> = ids
        .iter()
        .map(|id| shard_of(Some(&citizen_of(id)), id))
        .collect();
    let all: Vec<u16> = (0..crate::lease::SHARDS).collect();
    let open = store.open_seqs("org-b", &all).await.unwrap();
    assert_eq!(
        open,
        seqs.iter()
            .copied()
            .zip(shards.iter().copied())
            .collect::<Vec<_>>()
    );
    assert!(store.open_seqs("org-c", &all).await.unwrap().is_empty());
    assert!(store.open_seqs("org-b", &[]).await.unwrap().is_empty());

    // Only the shards asked for; a delivered row is no longer open.
    let one = shards[0];
    store
        .update_outbox(vec![OutboxUpdate::Delivered {
            seq: seqs[0],
            receipt: b"r".to_vec(),
            at_ms: 2_000,
        }])
        .await
        .unwrap();
    let expected: Vec<(i64, u16)> = seqs
        .iter()
        .zip(&shards)
        .skip(1)
        .filter(|(_, shard)| **shard == one)
        .map(|(seq, shard)| (*seq, *shard))
        .collect();
    assert_eq!(store.open_seqs("org-b", &[one]).await.unwrap(), expected);

    let rows = store.outbox_rows(&[seqs[2], seqs[0]]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].seq, rows[0].state),
        (seqs[0], OutboxState::Delivered)
    );
    assert_eq!(rows[1].seq, seqs[2]);
    assert_eq!(rows[1].envelope, envelope("n-2", "org-b"));
    assert!(store.outbox_rows(&[]).await.unwrap().is_empty());
}

/// Leases: claims take free or expired shards only, renewals and releases
/// touch the instance's own leases only, and the heartbeat makes an
/// instance live until it leaves.
pub(crate) async fn leases_are_claimed_renewed_and_released(store: &dyn Store) {
    use crate::lease::{Lease, LeasePlan};
    let plan = |claim: &[u16], renew: &[u16], release: &[u16]| LeasePlan {
        claim: claim.to_vec(),
        renew: renew.to_vec(),
        release: release.to_vec(),
        leave: false,
    };
    let lease = |shard, owner: &str, expires_at_ms| Lease {
        shard,
        owner: owner.to_owned(),
        expires_at_ms,
    };
    let view = store.lease_view(0).await.unwrap();
    assert!(view.leases.is_empty() && view.live.is_empty());

    let held = store
        .apply_leases("a", 1_000, 3_000, &plan(&[1, 2, 3], &[], &[]))
        .await
        .unwrap();
    assert_eq!(
        held,
        vec![
            lease(1, "a", 4_000),
            lease(2, "a", 4_000),
            lease(3, "a", 4_000)
        ]
    );
    // b cannot take a's unexpired shards; it gets only the free one.
    let held = store
        .apply_leases("b", 2_000, 3_000, &plan(&[2, 3, 4], &[1], &[1]))
        .await
        .unwrap();
    assert_eq!(held, vec![lease(4, "b", 5_000)]);
    let view = store.lease_view(2_000).await.unwrap();
    assert_eq!(view.live, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(view.leases.len(), 4);
    assert!(view.leases.iter().any(|l| *l == lease(1, "a", 4_000)));

    // a renews 1 and gives up 2; at 4 500 its unrenewed 3 has expired and
    // b takes it (and 2, now free).
    let held = store
        .apply_leases("a", 3_000, 3_000, &plan(&[], &[1], &[2]))
        .await
        .unwrap();
    assert_eq!(held, vec![lease(1, "a", 6_000), lease(3, "a", 4_000)]);
    let held = store
        .apply_leases("b", 4_500, 3_000, &plan(&[1, 2, 3], &[4], &[]))
        .await
        .unwrap();
    assert_eq!(
        held,
        vec![
            lease(2, "b", 7_500),
            lease(3, "b", 7_500),
            lease(4, "b", 7_500)
        ]
    );
    // a's renewal of 3 is too late: b holds it now.
    let held = store
        .apply_leases("a", 4_600, 3_000, &plan(&[], &[1, 3], &[]))
        .await
        .unwrap();
    assert_eq!(held, vec![lease(1, "a", 7_600)]);

    // Leaving drops the heartbeat and the given-up leases.
    let view = store.lease_view(4_600).await.unwrap();
    let leave = LeasePlan::leave("a", &view);
    assert!(
        store
            .apply_leases("a", 4_700, 3_000, &leave)
            .await
            .unwrap()
            .is_empty()
    );
    let view = store.lease_view(4_700).await.unwrap();
    assert_eq!(view.live, vec!["b".to_owned()]);
    assert!(view.leases.iter().all(|l| l.owner == "b"));
    // An expired heartbeat is not live.
    assert!(store.lease_view(8_000).await.unwrap().live.is_empty());
}

/// Defines one `#[tokio::test]` per suite case for a backend. `$make` is an
/// expression (evaluated afresh for each test) that awaits to
/// `(guard, store)`, or to `Option<(guard, store)>` where `None` skips the
/// case; the store must be empty.
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store::suite::store_suite!(@cases $make;
            submit_stores_notice_and_outbox_rows,
            submit_same_key_same_digest_is_duplicate,
            submit_same_key_other_digest_is_key_reused,
            submit_duplicates_inside_one_batch,
            undelivered_filters_by_recipient_in_seq_order,
            update_outbox_transitions,
            finished_rows_are_not_changed_back,
            update_outbox_applies_a_batch_in_order,
            delivery_reports_status,
            accept_inbox_dedups_by_sender_and_notice_id,
            accept_inbox_dedups_inside_one_batch,
            inbox_after_pages_and_filters,
            ack_inbox_twice,
            ack_unknown_cursor_is_an_error,
            counts_reflect_states,
            outbox_open_counts_undelivered_per_recipient,
            large_batches,
            list_outbox_filters_newest_first,
            reopen_outbox_only_reopens_failed_unexpired_rows,
            probe_write_commits_repeatedly,
            inbox_by_notice_finds_every_sender_s_copy,
            audited_writes_append_one_verifiable_chain,
            audit_entries_page_and_filter_by_time_and_citizen,
            a_rolled_back_write_leaves_no_audit_entry,
            team_inboxes_place_items_and_keep_the_first_reader_and_handler,
            escalation_moves_an_open_item_once_and_never_a_handled_one,
            team_inbox_reads_follow_placement_order,
            handled_receipts_are_stored_with_their_item_once_per_team,
            purge_bodies_empties_finished_and_acknowledged_bodies_only,
            store_keys_are_created_once,
            replace_store_key_is_compare_and_set,
            webhook_events_queue_with_their_placement,
            webhook_claims_are_oldest_first_and_bounded,
            newest_inbox_cursor_follows_accepts,
            care_team_keeps_the_latest_contact_per_organisation_and_unit,
            open_seqs_follow_the_shards_of_undelivered_rows,
            leases_are_claimed_renewed_and_released,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        mod shared_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let Some((_guard, store)) =
                        $crate::store::suite::Fresh::into_fresh($make.await)
                    else {
                        return;
                    };
                    $crate::store::suite::$case(&store).await;
                    $crate::store::Store::close(&store).await;
                }
            )*
        }
    };
}
pub(crate) use store_suite;
