//! Durable state of one organisation: the outbox (what we must deliver) and
//! the inbox (what we have accepted), behind one [`Store`] trait.
//!
//! The trait knows records and their states, not notice semantics: the
//! envelope travels as the encoded bytes the daemon produced, and the store
//! never decodes it. Every method that writes takes a batch and commits it in
//! one transaction, so concurrent callers share one fsync (see
//! [`crate::batch`]). Backends: [`sqlite`] (the embedded default) and
//! [`postgres`] (for sites that run a PostgreSQL server). Each one passes the
//! shared suite in [`suite`]. The daemon wraps its backend in [`sealed`], so
//! envelopes are encrypted before they reach either backend.

use crate::Millis;
use crate::audit::{AuditEntry, AuditEvent, AuditQuery, CitizenRef};
use crate::lease::{Lease, LeasePlan, LeaseView};

pub mod postgres;
pub mod sealed;
mod sql;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

/// What went wrong in the store. Never carries notice contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {location}: {source}")]
    Open {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store query failed during {operation}: {source}")]
    Query {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("no inbox item with cursor {0}")]
    NoSuchInboxItem(u64),
    #[error("inbox item {cursor} is not in team inbox {inbox:?}")]
    NoSuchPlacement { cursor: u64, inbox: String },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("the store has no audit chain key: it cannot record the audit entry a write needs")]
    NoAuditKey,
    #[error("cannot encrypt an envelope for storage: the system's random source failed")]
    Encrypt,
}

/// Delivery state of one (notice, recipient) row of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    Pending,
    InFlight,
    Delivered,
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::InFlight => "in_flight",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => OutboxState::Pending,
            "in_flight" => OutboxState::InFlight,
            "delivered" => OutboxState::Delivered,
            "failed" => OutboxState::Failed,
            _ => return None,
        })
    }
}

/// A notice a local system submitted, with one envelope per recipient.
#[derive(Debug, Clone)]
pub struct NewNotice {
    pub notice_id: String,
    pub idempotency_key: String,
    /// Digest of the submit request, so the same key with different content
    /// is told apart from an honest retry.
    pub request_digest: Vec<u8>,
    pub created_at_ms: Millis,
    pub expires_at_ms: Millis,
    pub recipients: Vec<NewOutboxItem>,
    /// Who submitted it, for the audit entry (see [`crate::audit`]).
    pub actor: String,
    pub citizen: Option<CitizenRef>,
    /// What the notice changes in the care-team view (a plan change's
    /// coordinating caseworker; a correction withdrawing what an earlier
    /// notice taught), applied with the notice.
    pub care_team: Option<CareTeamChange>,
}

#[derive(Debug, Clone)]
pub struct NewOutboxItem {
    pub recipient: String,
    /// The encoded `tvaers.v1.Envelope` for this recipient.
    pub envelope: Vec<u8>,
}

/// What [`Store::submit`] did with one [`NewNotice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored now; one outbox row per recipient, in the order given.
    Stored { outbox_seqs: Vec<i64> },
    /// The idempotency key was stored before with the same request digest:
    /// nothing new was written.
    Duplicate { notice_id: String },
    /// The idempotency key was stored before with a different request.
    KeyReused { notice_id: String },
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Position in submission order over the whole outbox.
    pub seq: i64,
    pub notice_id: String,
    pub recipient: String,
    pub envelope: Vec<u8>,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_at_ms: Millis,
    pub expires_at_ms: Millis,
    pub last_error: Option<String>,
    /// When retention purged `envelope` (then empty); see
    /// [`Store::purge_bodies`].
    pub purged_at_ms: Option<Millis>,
}

/// Which outbox rows [`Store::list_outbox`] returns: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    pub state: Option<OutboxState>,
    /// Only rows with a smaller seq (paging back).
    pub before_seq: Option<i64>,
    pub notice_id: Option<String>,
    pub limit: u32,
}

/// A change to outbox rows decided by the delivery machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxUpdate {
    /// Sent on the wire; `attempts` is the new attempt count.
    InFlight { seq: i64, attempts: u32 },
    /// The peer accepted it; `receipt` is the encoded `tvaers.v1.Receipt`.
    Delivered {
        seq: i64,
        receipt: Vec<u8>,
        at_ms: Millis,
    },
    /// Will not be delivered; `receipt` is present when the peer rejected it.
    Failed {
        seq: i64,
        reason: String,
        receipt: Option<Vec<u8>>,
        at_ms: Millis,
    },
    /// Back to pending, to be tried again no earlier than `next_attempt_at_ms`.
    Retry {
        seq: i64,
        next_attempt_at_ms: Millis,
        error: String,
    },
}

/// Delivery status of one notice to one recipient, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientDelivery {
    pub seq: i64,
    pub recipient: String,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_at_ms: Millis,
    pub last_error: Option<String>,
    pub finished_at_ms: Option<Millis>,
    pub receipt: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeDelivery {
    pub notice_id: String,
    pub created_at_ms: Millis,
    pub recipients: Vec<RecipientDelivery>,
}

/// A notice a peer sent us, checked and about to be stored.
#[derive(Debug, Clone)]
pub struct IncomingNotice {
    pub sender: String,
    pub notice_id: String,
    pub envelope: Vec<u8>,
    pub received_at_ms: Millis,
    /// The encoded `tvaers.v1.Receipt` to store and answer with.
    pub receipt: Vec<u8>,
    /// Whom the notice is about, for the audit entry.
    pub citizen: Option<CitizenRef>,
    /// The team inboxes the routing rules place it in (at least one).
    pub inboxes: Vec<String>,
    /// Its notice kind (`admission`, …), kept with its webhook events.
    pub kind: String,
    /// Those of `inboxes` with a webhook: each gets a pending
    /// [`WebhookEvent`] in the transaction that places the item.
    pub webhooks: Vec<String>,
    /// For a business receipt (`Handled`) about a notice we sent: stored
    /// with it, for the delivery status.
    pub handled: Option<HandledReceipt>,
    /// What it changes in the care-team view (a handled receipt's
    /// handler, a plan change's coordinating caseworker, a correction
    /// withdrawing what an earlier notice taught), applied with the item
    /// when the item is new.
    pub care_team: Option<CareTeamChange>,
}

/// A peer's business receipt about one of our notices: who took it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandledReceipt {
    /// Our notice it is about.
    pub notice_id: String,
    pub from_org: String,
    pub inbox: String,
    /// Handled or overdue: one of each is kept per (notice, peer, team).
    pub status: HandledStatus,
    /// The encoded `tvaers.v1.Handled`; opaque here.
    pub handled: Vec<u8>,
    pub received_at_ms: Millis,
}

/// What a business receipt says about a notice in a peer's team inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandledStatus {
    /// Someone took it.
    Handled,
    /// Nobody took it within the peer's handling deadline.
    Overdue,
}

impl HandledStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HandledStatus::Handled => "handled",
            HandledStatus::Overdue => "overdue",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "handled" => HandledStatus::Handled,
            "overdue" => HandledStatus::Overdue,
            _ => return None,
        })
    }
}

/// A team-inbox item neither handled nor escalated: what the escalation
/// driver checks against the deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPlacement {
    pub cursor: u64,
    pub inbox: String,
    pub kind: String,
    /// When it was placed in `inbox` (received, or escalated there).
    pub placed_at_ms: Millis,
}

/// One inbox item in one team inbox, and how far it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub inbox: String,
    pub read_by: Option<String>,
    pub read_at_ms: Option<Millis>,
    pub handled_by: Option<String>,
    pub handled_at_ms: Option<Millis>,
    /// The handler's contact and note, encoded by the daemon; opaque here.
    pub handling: Option<Vec<u8>>,
    /// When its handling deadline passed and it was escalated.
    pub escalated_at_ms: Option<Millis>,
    /// For an escalation item: the inbox whose deadline passed.
    pub escalated_from: Option<String>,
    /// Where it stands in `inbox`'s feed: increasing in the order items
    /// were placed (an escalation is placed when it happens, after items
    /// received later), so a team-inbox reader resumes from one (see
    /// [`Store::team_inbox_after`]).
    pub position: u64,
}

/// Who handled an item in a team inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub by: String,
    pub at_ms: Millis,
    pub handling: Vec<u8>,
}

/// What [`Store::accept_inbox`] did with one [`IncomingNotice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptOutcome {
    pub cursor: u64,
    /// False when (sender, notice id) was stored before.
    pub newly_stored: bool,
    /// The receipt stored with the first copy: answer a duplicate with it.
    pub receipt: Vec<u8>,
}

/// One item of the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    pub cursor: u64,
    pub sender: String,
    pub notice_id: String,
    pub envelope: Vec<u8>,
    pub received_at_ms: Millis,
    pub acked_at_ms: Option<Millis>,
    /// The receipt we answered with (a signed receipt, encoded).
    pub receipt: Vec<u8>,
    /// The team inboxes it is in, by inbox name.
    pub placements: Vec<Placement>,
    /// When retention purged `envelope` (then empty); see
    /// [`Store::purge_bodies`].
    pub purged_at_ms: Option<Millis>,
}

/// What [`Store::purge_bodies`] purged, or in a dry run would purge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub outbox_rows: u64,
    pub inbox_items: u64,
}

/// Where a webhook event is: waiting to be sent (or retried), sent, or
/// given up after its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookState {
    Pending,
    Delivered,
    Dead,
}

impl WebhookState {
    pub const ALL: [WebhookState; 3] = [
        WebhookState::Pending,
        WebhookState::Delivered,
        WebhookState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookState::Pending => "pending",
            WebhookState::Delivered => "delivered",
            WebhookState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => WebhookState::Pending,
            "delivered" => WebhookState::Delivered,
            "dead" => WebhookState::Dead,
            _ => return None,
        })
    }
}

/// One webhook event: an inbox item placed in a team inbox with a webhook.
/// The ids and times come from the inbox item; nothing here names the
/// citizen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: i64,
    pub inbox: String,
    pub cursor: u64,
    pub notice_id: String,
    pub sender: String,
    pub kind: String,
    pub received_at_ms: Millis,
    pub state: WebhookState,
    pub attempts: u32,
    pub next_attempt_at_ms: Millis,
    pub last_error: Option<String>,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
}

/// A change to a pending webhook event decided by [`crate::webhook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookUpdate {
    Delivered {
        id: i64,
        attempts: u32,
        at_ms: Millis,
    },
    Retry {
        id: i64,
        attempts: u32,
        next_attempt_at_ms: Millis,
        error: String,
        at_ms: Millis,
    },
    Dead {
        id: i64,
        attempts: u32,
        error: String,
        at_ms: Millis,
    },
}

/// Which events [`Store::list_webhooks`] returns: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookFilter {
    /// Only the event with this id.
    pub id: Option<i64>,
    pub state: Option<WebhookState>,
    pub inbox: Option<String>,
    pub limit: u32,
}

/// How many webhook events one inbox has in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookCount {
    pub inbox: String,
    pub state: WebhookState,
    pub count: u64,
}

/// Someone who works with a citizen in another organisation, as this site
/// learned it (see [`Store::care_team`]). One row per citizen,
/// organisation and unit: a later contact replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareTeamContact {
    /// Whom it is about: the keyed reference, never the CPR number.
    pub citizen: CitizenRef,
    /// The organisation id that told us (or our own, for a plan change we
    /// sent).
    pub org: String,
    /// The team inbox that took our notice, or the plan's coordinator.
    pub unit: String,
    /// The contact, encoded by the daemon; opaque here, sealed at rest.
    pub contact: Vec<u8>,
    /// When the contact held at its source (handled, or the plan change
    /// written): of two for one unit, the one with the later time stays.
    pub as_of_ms: Millis,
    /// When this site learned it.
    pub learned_at_ms: Millis,
    /// The notice it was learned from or about.
    pub notice_id: String,
}

/// What one notice changes in the care-team view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CareTeamChange {
    /// A contact to keep, unless one at least as recent is stored.
    Learn(CareTeamContact),
    /// A correction withdrew notice `notice_id`: the contacts learned from
    /// or about it go (only those `org` told us, when given). A contact
    /// that has since replaced them stays.
    Forget {
        org: Option<String>,
        notice_id: String,
    },
}

/// Counts for health output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub outbox_pending: u64,
    pub outbox_delivered: u64,
    pub outbox_failed: u64,
    pub inbox_total: u64,
    pub inbox_unacked: u64,
}

/// Notices to one recipient still to deliver (pending or in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOutbox {
    pub recipient: String,
    /// Pending and in flight together.
    pub notices: u64,
    /// Of those, on the wire now (awaiting the peer's receipt).
    pub in_flight: u64,
    /// When the oldest of them was submitted.
    pub oldest_created_at_ms: Millis,
}

/// A key kept in the store, wrapped (encrypted) under a key-encryption key
/// that is not (see [`crate::at_rest`]). `Debug` shows the KEK id, not the
/// wrapped bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub wrapped: Vec<u8>,
    /// Which key-encryption key wrapped it (a short digest, not secret).
    pub kek_id: String,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("wrapped_len", &self.wrapped.len())
            .field("kek_id", &self.kek_id)
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// Durable storage for one organisation. Every write is committed (and, on
/// SQLite, fsynced) before the method returns.
///
/// Writes that change what happened to a notice (submit, outbox updates,
/// inbox accepts and acks) append their audit entries (see [`crate::audit`])
/// in the same transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Stores notices and their outbox rows in one transaction, deduplicated
    /// by idempotency key. Returns one outcome per input, in order.
    async fn submit(&self, batch: Vec<NewNotice>) -> Result<Vec<SubmitOutcome>, StoreError>;

    /// Outbox rows to `recipient` that still need delivery (pending or in
    /// flight, never purged), in `seq` order.
    async fn undelivered(&self, recipient: &str) -> Result<Vec<OutboxItem>, StoreError>;

    /// Per recipient with anything still to deliver: how much and since
    /// when. Cheap (served by the index of undelivered rows), so metrics and
    /// the readiness probe may call it on every scrape.
    async fn outbox_open(&self) -> Result<Vec<OpenOutbox>, StoreError>;

    /// Outbox rows matching `filter`, newest (highest seq) first.
    async fn list_outbox(&self, filter: OutboxFilter) -> Result<Vec<OutboxItem>, StoreError>;

    /// Puts failed rows back to pending for a new round of attempts
    /// (attempts reset, error and receipt cleared, due at `now_ms`). Rows
    /// that are not failed, whose notice has expired, or whose body was
    /// purged (nothing left to send) stay as they are. Returns how many rows
    /// were reopened.
    async fn reopen_outbox(&self, seqs: Vec<i64>, now_ms: Millis) -> Result<u64, StoreError>;

    /// Applies delivery decisions in one transaction.
    async fn update_outbox(&self, updates: Vec<OutboxUpdate>) -> Result<(), StoreError>;

    /// The delivery status of a notice, or `None` when no such notice exists.
    async fn delivery(&self, notice_id: &str) -> Result<Option<NoticeDelivery>, StoreError>;

    /// Stores incoming notices in one transaction, unique on
    /// (sender, notice id). Returns one outcome per input, in order.
    async fn accept_inbox(
        &self,
        batch: Vec<IncomingNotice>,
    ) -> Result<Vec<AcceptOutcome>, StoreError>;

    /// Inbox items with a cursor greater than `after_cursor`, oldest first;
    /// only those placed in team inbox `inbox` when one is given.
    async fn inbox_after(
        &self,
        after_cursor: u64,
        limit: u32,
        unacked_only: bool,
        inbox: Option<&str>,
    ) -> Result<Vec<InboxRecord>, StoreError>;

    /// Marks an item read in one team inbox by `reader`. Returns false if it
    /// was read before (the first reader stays).
    async fn mark_read(
        &self,
        cursor: u64,
        inbox: &str,
        reader: &str,
        at_ms: Millis,
        actor: &str,
    ) -> Result<bool, StoreError>;

    /// The business receipts peers sent about our notice `notice_id`.
    async fn handled_receipts(&self, notice_id: &str) -> Result<Vec<HandledReceipt>, StoreError>;

    /// Items in the team inboxes `inboxes` that are neither handled nor
    /// escalated, oldest first.
    async fn open_placements(&self, inboxes: &[String]) -> Result<Vec<OpenPlacement>, StoreError>;

    /// Team-inbox items handled at or after `since_ms`, as (cursor, inbox),
    /// oldest first: whose handled receipts a restart sends again if the
    /// daemon stopped before storing them.
    async fn handled_since(&self, since_ms: Millis) -> Result<Vec<(u64, String)>, StoreError>;

    /// Escalates an item whose deadline in `inbox` passed: marks it
    /// escalated there and places it in `escalate_to` (with a pending
    /// [`WebhookEvent`] there when `webhook`: that inbox has a webhook), in
    /// one transaction. Returns false (and changes nothing) if it was
    /// handled or escalated meanwhile.
    async fn escalate(
        &self,
        cursor: u64,
        inbox: &str,
        escalate_to: &str,
        at_ms: Millis,
        webhook: bool,
    ) -> Result<bool, StoreError>;

    /// Marks an item handled in one team inbox (and read, if it was not).
    /// Returns false if it was handled before (the first handler stays).
    async fn mark_handled(
        &self,
        cursor: u64,
        inbox: &str,
        handled: Handled,
        actor: &str,
    ) -> Result<bool, StoreError>;

    /// The highest inbox cursor stored (0 when the inbox is empty).
    async fn newest_inbox_cursor(&self) -> Result<u64, StoreError>;

    /// Items placed in team inbox `inbox` at a position greater than
    /// `after_position`, in position order (see [`Placement::position`]).
    async fn team_inbox_after(
        &self,
        inbox: &str,
        after_position: u64,
        limit: u32,
        unacked_only: bool,
    ) -> Result<Vec<InboxRecord>, StoreError>;

    /// The highest placement position stored (0 when nothing was placed).
    async fn newest_position(&self) -> Result<u64, StoreError>;

    /// Inbox items with this notice id (one per sender that used it).
    async fn inbox_by_notice(&self, notice_id: &str) -> Result<Vec<InboxRecord>, StoreError>;

    /// Marks an inbox item acknowledged by `actor`. Returns false if it
    /// already was.
    async fn ack_inbox(&self, cursor: u64, at_ms: Millis, actor: &str) -> Result<bool, StoreError>;

    /// Appends audit entries for events that change nothing else (reads,
    /// rejections, operator actions), in one transaction.
    async fn record_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError>;

    /// Audit entries matching `query`, in sequence order.
    async fn audit_entries(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;

    /// Retention: empties the envelope (the notice body, with the CPR
    /// number and health details) of outbox rows finished (delivered or
    /// failed) and inbox items acknowledged before `cutoff_ms`, and records
    /// `now_ms` as their `purged_at_ms`. Ids, times, states and receipts
    /// stay. Rows purged before are not counted again. With `dry_run`
    /// nothing changes and the report says what would be purged.
    async fn purge_bodies(
        &self,
        cutoff_ms: Millis,
        now_ms: Millis,
        dry_run: bool,
    ) -> Result<PurgeReport, StoreError>;

    /// Counts for status output.
    async fn counts(&self) -> Result<StoreCounts, StoreError>;

    /// Commits a small write (for the readiness probe): fails when the
    /// store cannot take writes (locked, read-only, disk full, a standby).
    async fn probe_write(&self, now_ms: Millis) -> Result<(), StoreError>;

    /// The key stored under `name`, if any.
    async fn load_store_key(&self, name: &str) -> Result<Option<StoredKey>, StoreError>;

    /// Stores `key` under `name` unless a key is stored there already, and
    /// returns the key stored there now: of two instances racing to create
    /// a key, both get the one written first.
    async fn create_store_key(&self, name: &str, key: StoredKey) -> Result<StoredKey, StoreError>;

    /// Replaces the key under `name` with `new` if it is still `expected`
    /// (wrapped bytes and KEK id); false when it was not.
    async fn replace_store_key(
        &self,
        name: &str,
        expected: &StoredKey,
        new: StoredKey,
    ) -> Result<bool, StoreError>;

    /// Claims pending webhook events due at `now_ms` (oldest first, at most
    /// `limit`) by moving their next attempt to `lease_until_ms`: a sender
    /// that dies mid-send leaves them due again then, and a second sender
    /// does not take them meanwhile.
    async fn claim_webhooks(
        &self,
        now_ms: Millis,
        lease_until_ms: Millis,
        limit: u32,
    ) -> Result<Vec<WebhookEvent>, StoreError>;

    /// Applies send outcomes in one transaction; events no longer pending
    /// stay as they are.
    async fn update_webhooks(&self, updates: Vec<WebhookUpdate>) -> Result<(), StoreError>;

    /// Webhook events matching `filter`, newest (highest id) first.
    async fn list_webhooks(&self, filter: WebhookFilter) -> Result<Vec<WebhookEvent>, StoreError>;

    /// Puts a dead webhook event back to pending (attempts reset, error
    /// cleared, due at `now_ms`). False when it is not dead.
    async fn retry_webhook(&self, id: i64, now_ms: Millis) -> Result<bool, StoreError>;

    /// Webhook events per inbox and state, for metrics.
    async fn webhook_counts(&self) -> Result<Vec<WebhookCount>, StoreError>;

    /// Hears of inbox items stored by any process sharing this store (other
    /// daemon instances on one PostgreSQL), so inbox streams wake without
    /// polling. `None` for a store only this process writes (SQLite), where
    /// the receive path's own signal is enough.
    async fn listen_inbox(&self) -> Result<Option<Box<dyn InboxListener>>, StoreError>;

    /// Waits for in-progress writes and closes the connections.
    async fn close(&self);

    // ----- several instances (see crate::lease) -----

    /// Undelivered rows to `recipient` (pending or in flight, never purged)
    /// in the given shards, as (seq, shard) in seq order. Reads no
    /// envelope, so a driver may poll it often.
    async fn open_seqs(
        &self,
        recipient: &str,
        shards: &[u16],
    ) -> Result<Vec<(i64, u16)>, StoreError>;

    /// The outbox rows with these seqs, in any state, in seq order.
    async fn outbox_rows(&self, seqs: &[i64]) -> Result<Vec<OutboxItem>, StoreError>;

    /// Every outbox lease, and the instances whose heartbeat is unexpired
    /// at `now_ms`.
    async fn lease_view(&self, now_ms: Millis) -> Result<LeaseView, StoreError>;

    /// One lease round of `instance` in one transaction: renews its
    /// heartbeat (or removes it when `plan.leave`), releases, renews (own
    /// leases only) and claims (free or expired shards only; on PostgreSQL
    /// rows locked by another instance's round are skipped) to expire at
    /// `now_ms + lease_ms`. Returns the leases `instance` holds afterwards.
    async fn apply_leases(
        &self,
        instance: &str,
        now_ms: Millis,
        lease_ms: i64,
        plan: &LeasePlan,
    ) -> Result<Vec<Lease>, StoreError>;
    /// The care-team view of `citizen`: the latest contact per
    /// (organisation, unit) that [`Store::submit`] and
    /// [`Store::accept_inbox`] stored, ordered by organisation and unit.
    async fn care_team(&self, citizen: &CitizenRef) -> Result<Vec<CareTeamContact>, StoreError>;

    /// Team-inbox items escalated at or after `since_ms`, as (cursor, the
    /// inbox whose deadline passed), oldest first: whose overdue receipts a
    /// restart sends again if the daemon stopped before storing them.
    async fn escalated_since(&self, since_ms: Millis) -> Result<Vec<(u64, String)>, StoreError>;
}

/// The inbox item at `cursor`, if there is one.
pub async fn inbox_item(store: &dyn Store, cursor: u64) -> Result<Option<InboxRecord>, StoreError> {
    let mut records = store
        .inbox_after(cursor.saturating_sub(1), 1, false, None)
        .await?;
    Ok(records.pop().filter(|record| record.cursor == cursor))
}

/// Notifications of stored inbox items, from [`Store::listen_inbox`].
#[async_trait::async_trait]
pub trait InboxListener: Send + std::fmt::Debug {
    /// Waits for the next notification: `Some(cursor)` when an item was
    /// stored with that cursor, `None` when notifications may have been
    /// missed (the connection dropped and is being re-established), so
    /// whoever waits should read again rather than trust the last cursor.
    async fn next(&mut self) -> Result<Option<u64>, StoreError>;
}
