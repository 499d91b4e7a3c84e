//! Encryption at rest for every backend: [`SealedStore`] wraps any
//! [`Store`] and encrypts each envelope (it carries the CPR number and the
//! health details) with the data key of a [`Keyring`] before the backend
//! sees it, and decrypts it on the way out. Everything else passes through
//! unchanged: ids, states, times and receipts (a receipt names the notice,
//! never the citizen) stay readable for queries and operators.
//!
//! Each ciphertext is bound to its row: `outbox` + notice id + recipient,
//! or `inbox` + sender + notice id. A ciphertext copied into another row
//! does not decrypt, and that is reported as [`StoreError::Corrupt`] naming
//! the row by its ids only. The handling record of a team-inbox placement
//! (the handler's contact and a free-text note, which may mention health
//! details) is sealed the same way, bound to `handling` + cursor + inbox,
//! and so are a care-team contact (staff names and phone numbers about one
//! citizen), bound to `care_team` + citizen reference + organisation +
//! unit, and a peer's handled receipt (the same contact, about our notice),
//! bound to `handled_receipt` + notice id + organisation + team inbox. A body retention purged (`purged_at_ms` set, bytes empty) stays
//! empty.

use std::sync::Arc;

use crate::Millis;
use crate::at_rest::Keyring;
use crate::audit::{AuditEntry, AuditEvent, AuditQuery, CitizenRef};
use crate::lease::{Lease, LeasePlan, LeaseView};

use super::{
    AcceptOutcome, CareTeamChange, CareTeamContact, Handled, HandledReceipt, InboxListener,
    InboxRecord, IncomingNotice, NewNotice, NoticeDelivery, OpenOutbox, OpenPlacement,
    OutboxFilter, OutboxItem, OutboxUpdate, PurgeReport, Store, StoreCounts, StoreError, StoredKey,
    SubmitOutcome, WebhookCount, WebhookEvent, WebhookFilter, WebhookUpdate,
};

/// A [`Store`] whose envelopes are encrypted at rest.
#[derive(Debug)]
pub struct SealedStore {
    inner: Arc<dyn Store>,
    keyring: Arc<Keyring>,
}

impl SealedStore {
    pub fn new(inner: Arc<dyn Store>, keyring: Arc<Keyring>) -> SealedStore {
        SealedStore { inner, keyring }
    }

    fn seal(&self, row: &[&[u8]], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.keyring
            .seal(row, plain)
            .map_err(|_| StoreError::Encrypt)
    }

    /// Decrypts what [`SealedStore::seal`] made for `row`; `what` names the
    /// row (by ids only) when it does not decrypt.
    fn open(
        &self,
        row: &[&[u8]],
        sealed: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Vec<u8>, StoreError> {
        self.keyring.open_sealed(row, sealed).ok_or_else(|| {
            StoreError::Corrupt(format!("{} does not decrypt under the data key", what()))
        })
    }

    fn open_outbox(&self, mut item: OutboxItem) -> Result<OutboxItem, StoreError> {
        if item.purged_at_ms.is_some() {
            return Ok(item);
        }
        item.envelope = self.open(
            &outbox_row(&item.notice_id, &item.recipient),
            &item.envelope,
            || {
                format!(
                    "the envelope of outbox row {} (notice {} to {})",
                    item.seq, item.notice_id, item.recipient
                )
            },
        )?;
        Ok(item)
    }

    /// Seals a care-team contact for its row, if there is one.
    fn seal_care_team(&self, change: &mut Option<CareTeamChange>) -> Result<(), StoreError> {
        if let Some(CareTeamChange::Learn(contact)) = change {
            contact.contact = self.seal(
                &care_team_row(&contact.citizen, &contact.org, &contact.unit),
                &contact.contact,
            )?;
        }
        Ok(())
    }

    fn open_inboxes(&self, records: Vec<InboxRecord>) -> Result<Vec<InboxRecord>, StoreError> {
        records
            .into_iter()
            .map(|record| self.open_inbox(record))
            .collect()
    }

    fn open_inbox(&self, mut record: InboxRecord) -> Result<InboxRecord, StoreError> {
        for placement in &mut record.placements {
            if let Some(sealed) = &placement.handling {
                let cursor = record.cursor.to_be_bytes();
                let row = handling_row(&cursor, &placement.inbox);
                placement.handling = Some(self.open(&row, sealed, || {
                    format!(
                        "the handling record of inbox item {} in {}",
                        record.cursor, placement.inbox
                    )
                })?);
            }
        }
        if record.purged_at_ms.is_some() {
            return Ok(record);
        }
        record.envelope = self.open(
            &inbox_row(&record.sender, &record.notice_id),
            &record.envelope,
            || {
                format!(
                    "the envelope of inbox item {} (notice {} from {})",
                    record.cursor, record.notice_id, record.sender
                )
            },
        )?;
        Ok(record)
    }
}

/// What an outbox row's envelope is bound to (its additional data).
pub fn outbox_row<'a>(notice_id: &'a str, recipient: &'a str) -> [&'a [u8]; 3] {
    [b"outbox", notice_id.as_bytes(), recipient.as_bytes()]
}

/// What a placement's handling record is bound to (its additional data).
pub fn handling_row<'a>(cursor: &'a [u8; 8], inbox: &'a str) -> [&'a [u8]; 3] {
    [b"handling", cursor, inbox.as_bytes()]
}

/// What a peer's business receipt (handled, with its handler's contact, or
/// overdue) is bound to: its row, status included, so a handled and an
/// overdue receipt of one team cannot be swapped.
pub fn handled_row(receipt: &HandledReceipt) -> [&[u8]; 5] {
    [
        b"handled_receipt",
        receipt.notice_id.as_bytes(),
        receipt.from_org.as_bytes(),
        receipt.inbox.as_bytes(),
        receipt.status.as_str().as_bytes(),
    ]
}

/// What a care-team contact is bound to (its additional data).
pub fn care_team_row<'a>(citizen: &'a CitizenRef, org: &'a str, unit: &'a str) -> [&'a [u8]; 4] {
    [b"care_team", &citizen.0, org.as_bytes(), unit.as_bytes()]
}

/// What an inbox item's envelope is bound to (its additional data).
pub fn inbox_row<'a>(sender: &'a str, notice_id: &'a str) -> [&'a [u8]; 3] {
    [b"inbox", sender.as_bytes(), notice_id.as_bytes()]
}

#[async_trait::async_trait]
impl Store for SealedStore {
    async fn submit(&self, mut batch: Vec<NewNotice>) -> Result<Vec<SubmitOutcome>, StoreError> {
        for notice in &mut batch {
            for item in &mut notice.recipients {
                item.envelope = self.seal(
                    &outbox_row(&notice.notice_id, &item.recipient),
                    &item.envelope,
                )?;
            }
            self.seal_care_team(&mut notice.care_team)?;
        }
        self.inner.submit(batch).await
    }

    async fn undelivered(&self, recipient: &str) -> Result<Vec<OutboxItem>, StoreError> {
        let items = self.inner.undelivered(recipient).await?;
        items
            .into_iter()
            .map(|item| self.open_outbox(item))
            .collect()
    }

    async fn list_outbox(&self, filter: OutboxFilter) -> Result<Vec<OutboxItem>, StoreError> {
        let items = self.inner.list_outbox(filter).await?;
        items
            .into_iter()
            .map(|item| self.open_outbox(item))
            .collect()
    }

    async fn accept_inbox(
        &self,
        mut batch: Vec<IncomingNotice>,
    ) -> Result<Vec<AcceptOutcome>, StoreError> {
        for notice in &mut batch {
            notice.envelope = self.seal(
                &inbox_row(&notice.sender, &notice.notice_id),
                &notice.envelope,
            )?;
            self.seal_care_team(&mut notice.care_team)?;
            if let Some(receipt) = &mut notice.handled {
                receipt.handled = self.seal(&handled_row(receipt), &receipt.handled)?;
            }
        }
        self.inner.accept_inbox(batch).await
    }

    async fn inbox_after(
        &self,
        after_cursor: u64,
        limit: u32,
        unacked_only: bool,
        inbox: Option<&str>,
    ) -> Result<Vec<InboxRecord>, StoreError> {
        let records = self
            .inner
            .inbox_after(after_cursor, limit, unacked_only, inbox)
            .await?;
        self.open_inboxes(records)
    }

    async fn newest_inbox_cursor(&self) -> Result<u64, StoreError> {
        self.inner.newest_inbox_cursor().await
    }

    async fn team_inbox_after(
        &self,
        inbox: &str,
        after_position: u64,
        limit: u32,
        unacked_only: bool,
    ) -> Result<Vec<InboxRecord>, StoreError> {
        let records = self
            .inner
            .team_inbox_after(inbox, after_position, limit, unacked_only)
            .await?;
        self.open_inboxes(records)
    }

    async fn newest_position(&self) -> Result<u64, StoreError> {
        self.inner.newest_position().await
    }

    async fn inbox_by_notice(&self, notice_id: &str) -> Result<Vec<InboxRecord>, StoreError> {
        let records = self.inner.inbox_by_notice(notice_id).await?;
        self.open_inboxes(records)
    }

    async fn outbox_open(&self) -> Result<Vec<OpenOutbox>, StoreError> {
        self.inner.outbox_open().await
    }

    async fn reopen_outbox(&self, seqs: Vec<i64>, now_ms: Millis) -> Result<u64, StoreError> {
        self.inner.reopen_outbox(seqs, now_ms).await
    }

    async fn update_outbox(&self, updates: Vec<OutboxUpdate>) -> Result<(), StoreError> {
        self.inner.update_outbox(updates).await
    }

    async fn delivery(&self, notice_id: &str) -> Result<Option<NoticeDelivery>, StoreError> {
        self.inner.delivery(notice_id).await
    }

    async fn mark_handled(
        &self,
        cursor: u64,
        inbox: &str,
        mut handled: Handled,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let cursor_bytes = cursor.to_be_bytes();
        handled.handling = self.seal(&handling_row(&cursor_bytes, inbox), &handled.handling)?;
        self.inner.mark_handled(cursor, inbox, handled, actor).await
    }

    // ---- pass-through: nothing below carries an envelope ----------------

    async fn ack_inbox(&self, cursor: u64, at_ms: Millis, actor: &str) -> Result<bool, StoreError> {
        self.inner.ack_inbox(cursor, at_ms, actor).await
    }

    async fn mark_read(
        &self,
        cursor: u64,
        inbox: &str,
        reader: &str,
        at_ms: Millis,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.inner
            .mark_read(cursor, inbox, reader, at_ms, actor)
            .await
    }

    async fn record_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.inner.record_audit(events).await
    }

    async fn handled_receipts(&self, notice_id: &str) -> Result<Vec<HandledReceipt>, StoreError> {
        let receipts = self.inner.handled_receipts(notice_id).await?;
        receipts
            .into_iter()
            .map(|mut receipt| {
                receipt.handled = self.open(&handled_row(&receipt), &receipt.handled, || {
                    format!(
                        "the handled receipt for notice {} from {} ({})",
                        receipt.notice_id, receipt.from_org, receipt.inbox
                    )
                })?;
                Ok(receipt)
            })
            .collect()
    }

    async fn handled_since(&self, since_ms: Millis) -> Result<Vec<(u64, String)>, StoreError> {
        self.inner.handled_since(since_ms).await
    }

    async fn open_placements(&self, inboxes: &[String]) -> Result<Vec<OpenPlacement>, StoreError> {
        self.inner.open_placements(inboxes).await
    }

    async fn escalate(
        &self,
        cursor: u64,
        inbox: &str,
        escalate_to: &str,
        at_ms: Millis,
        webhook: bool,
    ) -> Result<bool, StoreError> {
        self.inner
            .escalate(cursor, inbox, escalate_to, at_ms, webhook)
            .await
    }

    async fn audit_entries(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_entries(query).await
    }

    async fn purge_bodies(
        &self,
        cutoff_ms: Millis,
        now_ms: Millis,
        dry_run: bool,
    ) -> Result<PurgeReport, StoreError> {
        self.inner.purge_bodies(cutoff_ms, now_ms, dry_run).await
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.inner.counts().await
    }

    async fn probe_write(&self, now_ms: Millis) -> Result<(), StoreError> {
        self.inner.probe_write(now_ms).await
    }

    async fn load_store_key(&self, name: &str) -> Result<Option<StoredKey>, StoreError> {
        self.inner.load_store_key(name).await
    }

    async fn create_store_key(&self, name: &str, key: StoredKey) -> Result<StoredKey, StoreError> {
        self.inner.create_store_key(name, key).await
    }

    async fn replace_store_key(
        &self,
        name: &str,
        expected: &StoredKey,
        new: StoredKey,
    ) -> Result<bool, StoreError> {
        self.inner.replace_store_key(name, expected, new).await
    }

    // Webhook events carry ids, kinds and times only: nothing to seal.
    async fn claim_webhooks(
        &self,
        now_ms: Millis,
        lease_until_ms: Millis,
        limit: u32,
    ) -> Result<Vec<WebhookEvent>, StoreError> {
        self.inner
            .claim_webhooks(now_ms, lease_until_ms, limit)
            .await
    }

    async fn update_webhooks(&self, updates: Vec<WebhookUpdate>) -> Result<(), StoreError> {
        self.inner.update_webhooks(updates).await
    }

    async fn list_webhooks(&self, filter: WebhookFilter) -> Result<Vec<WebhookEvent>, StoreError> {
        self.inner.list_webhooks(filter).await
    }

    async fn retry_webhook(&self, id: i64, now_ms: Millis) -> Result<bool, StoreError> {
        self.inner.retry_webhook(id, now_ms).await
    }

    async fn webhook_counts(&self) -> Result<Vec<WebhookCount>, StoreError> {
        self.inner.webhook_counts().await
    }

    async fn listen_inbox(&self) -> Result<Option<Box<dyn InboxListener>>, StoreError> {
        self.inner.listen_inbox().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn care_team(&self, citizen: &CitizenRef) -> Result<Vec<CareTeamContact>, StoreError> {
        let contacts = self.inner.care_team(citizen).await?;
        contacts
            .into_iter()
            .map(|mut contact| {
                contact.contact = self.open(
                    &care_team_row(&contact.citizen, &contact.org, &contact.unit),
                    &contact.contact,
                    || {
                        format!(
                            "the care-team contact from {} ({}) learned with notice {}",
                            contact.org, contact.unit, contact.notice_id
                        )
                    },
                )?;
                Ok(contact)
            })
            .collect()
    }

    async fn escalated_since(&self, since_ms: Millis) -> Result<Vec<(u64, String)>, StoreError> {
        self.inner.escalated_since(since_ms).await
    }

    async fn open_seqs(
        &self,
        recipient: &str,
        shards: &[u16],
    ) -> Result<Vec<(i64, u16)>, StoreError> {
        self.inner.open_seqs(recipient, shards).await
    }

    async fn outbox_rows(&self, seqs: &[i64]) -> Result<Vec<OutboxItem>, StoreError> {
        let items = self.inner.outbox_rows(seqs).await?;
        items
            .into_iter()
            .map(|item| self.open_outbox(item))
            .collect()
    }

    async fn lease_view(&self, now_ms: Millis) -> Result<LeaseView, StoreError> {
        self.inner.lease_view(now_ms).await
    }

    async fn apply_leases(
        &self,
        instance: &str,
        now_ms: Millis,
        lease_ms: i64,
        plan: &LeasePlan,
    ) -> Result<Vec<Lease>, StoreError> {
        self.inner
            .apply_leases(instance, now_ms, lease_ms, plan)
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sqlx::Row;

    use super::*;
    use crate::at_rest::{Kek, KekSource, generate_kek_file};
    use crate::store::sqlite::SqliteStore;
    use crate::store::suite::{self, store_suite};

    /// A sealed SQLite store in a temporary directory, and its inner store
    /// to look at what is really written.
    async fn sealed() -> (tempfile::TempDir, SealedStore, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(SqliteStore::open_for_test(&dir.path().join("s.db")).await);
        let kek_path = dir.path().join("k.kek");
        generate_kek_file(&kek_path).unwrap();
        let kek = Kek::load(&KekSource::File(kek_path)).unwrap();
        let keyring = Arc::new(Keyring::open(inner.as_ref(), kek).await.unwrap());
        let store = SealedStore::new(inner.clone(), keyring);
        (dir, store, inner)
    }

    async fn fresh() -> (tempfile::TempDir, SealedStore) {
        let (dir, store, _) = sealed().await;
        (dir, store)
    }

    // The wrapper must not change any behaviour the suite checks.
    store_suite!(fresh());

    #[tokio::test]
    async fn envelopes_are_ciphertext_in_the_backend_and_plain_through_the_wrapper() {
        let (_dir, store, inner) = sealed().await;
        let seqs = suite::stored_seqs(
            &store
                .submit(vec![suite::notice("n-1", "k-1", &["org-b", "org-c"])])
                .await
                .unwrap()[0],
        );
        store
            .accept_inbox(vec![suite::incoming("org-x", "in-1", b"r-1")])
            .await
            .unwrap();

        let raw = inner.undelivered("org-b").await.unwrap();
        assert_eq!(raw[0].seq, seqs[0]);
        let plain = suite::envelope("n-1", "org-b");
        assert_ne!(raw[0].envelope, plain);
        assert!(!raw[0].envelope.windows(8).any(|w| w == b"envelope"));
        let raw_inbox = inner.inbox_after(0, 10, false, None).await.unwrap();
        assert_ne!(
            raw_inbox[0].envelope,
            suite::incoming_envelope("org-x", "in-1")
        );
        // Receipts are not sealed.
        assert_eq!(raw_inbox[0].receipt, b"r-1");

        assert_eq!(store.undelivered("org-b").await.unwrap()[0].envelope, plain);
        assert_eq!(
            store.inbox_by_notice("in-1").await.unwrap()[0].envelope,
            suite::incoming_envelope("org-x", "in-1")
        );
        store.close().await;
    }

    #[tokio::test]
    async fn care_team_contacts_and_handled_receipts_are_ciphertext_in_the_backend() {
        let (_dir, store, inner) = sealed().await;
        let citizen = CitizenRef(b"citizen-1".to_vec());
        let contact = |unit: &str| CareTeamContact {
            citizen: citizen.clone(),
            org: "org-x".into(),
            unit: unit.into(),
            contact: b"Ane Holm +45 55 55 12 34".to_vec(),
            as_of_ms: 10,
            learned_at_ms: 20,
            notice_id: "n-1".into(),
        };
        let mut first = suite::incoming("org-x", "in-1", b"r-1");
        first.care_team = Some(CareTeamChange::Learn(contact("coordinators")));
        let mut second = suite::incoming("org-x", "in-2", b"r-2");
        second.care_team = Some(CareTeamChange::Learn(contact("housing")));
        store.accept_inbox(vec![first, second]).await.unwrap();

        let raw = inner.care_team(&citizen).await.unwrap();
        assert_eq!(raw.len(), 2);
        assert!(!raw[0].contact.windows(8).any(|w| w == b"Ane Holm"));
        // The handled receipt that teaches such a contact is sealed too.
        let mut receipt = suite::incoming("org-x", "in-3", b"r-3");
        receipt.handled = Some(crate::store::HandledReceipt {
            notice_id: "ours-1".into(),
            from_org: "org-x".into(),
            inbox: "coordinators".into(),
            status: crate::store::HandledStatus::Handled,
            handled: b"Ane Holm +45 55 55 12 34".to_vec(),
            received_at_ms: 30,
        });
        store.accept_inbox(vec![receipt]).await.unwrap();
        let raw_receipt = inner.handled_receipts("ours-1").await.unwrap();
        assert!(!raw_receipt[0].handled.windows(8).any(|w| w == b"Ane Holm"));
        assert_eq!(
            store.handled_receipts("ours-1").await.unwrap()[0].handled,
            b"Ane Holm +45 55 55 12 34"
        );
        let plain = store.care_team(&citizen).await.unwrap();
        assert_eq!(plain, [contact("coordinators"), contact("housing")]);

        // One unit's ciphertext copied over the other's does not decrypt.
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(_dir.path().join("s.db")),
        )
        .await
        .unwrap();
        sqlx::query("UPDATE care_team SET contact = ? WHERE unit = 'housing'")
            .bind(raw[0].contact.clone())
            .execute(&pool)
            .await
            .unwrap();
        let error = store.care_team(&citizen).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, StoreError::Corrupt(_)), "{text}");
        assert!(text.contains("org-x") && text.contains("housing"), "{text}");

        // The same team's overdue receipt: its row differs only in status,
        // and the handled receipt's ciphertext does not decrypt there.
        let mut overdue = suite::incoming("org-x", "in-4", b"r-4");
        overdue.handled = Some(crate::store::HandledReceipt {
            notice_id: "ours-1".into(),
            from_org: "org-x".into(),
            inbox: "coordinators".into(),
            status: crate::store::HandledStatus::Overdue,
            handled: b"overdue since 40".to_vec(),
            received_at_ms: 40,
        });
        store.accept_inbox(vec![overdue]).await.unwrap();
        assert_eq!(store.handled_receipts("ours-1").await.unwrap().len(), 2);
        sqlx::query("UPDATE handled_receipts SET handled = ? WHERE status = 'overdue'")
            .bind(raw_receipt[0].handled.clone())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let error = store.handled_receipts("ours-1").await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
        store.close().await;
    }

    #[tokio::test]
    async fn a_ciphertext_moved_to_another_row_is_corrupt_named_by_ids() {
        let (_dir, store, inner) = sealed().await;
        let seqs = suite::stored_seqs(
            &store
                .submit(vec![suite::notice("n-1", "k-1", &["org-b", "org-c"])])
                .await
                .unwrap()[0],
        );
        // Copy org-b's ciphertext over org-c's row, as someone with write
        // access to the database file could.
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(_dir.path().join("s.db")),
        )
        .await
        .unwrap();
        let envelope: Vec<u8> = sqlx::query("SELECT envelope FROM outbox WHERE seq = ?")
            .bind(seqs[0])
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        sqlx::query("UPDATE outbox SET envelope = ? WHERE seq = ?")
            .bind(envelope)
            .bind(seqs[1])
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        assert_eq!(store.undelivered("org-b").await.unwrap().len(), 1);
        let error = store.undelivered("org-c").await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, StoreError::Corrupt(_)), "{text}");
        assert!(text.contains(&seqs[1].to_string()), "{text}");
        assert!(text.contains("n-1") && text.contains("org-c"), "{text}");
        assert!(!text.contains("envelope n-1"), "{text}");
        drop(inner);
        store.close().await;
    }
}
