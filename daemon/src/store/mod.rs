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
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
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
    pub notices: u64,
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
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Stores notices and their outbox rows in one transaction, deduplicated
    /// by idempotency key. Returns one outcome per input, in order.
    async fn submit(&self, batch: Vec<NewNotice>) -> Result<Vec<SubmitOutcome>, StoreError>;

    /// Outbox rows to `recipient` that still need delivery (pending or in
    /// flight), in `seq` order.
    async fn undelivered(&self, recipient: &str) -> Result<Vec<OutboxItem>, StoreError>;

    /// Per recipient with anything still to deliver: how much and since
    /// when. Cheap (served by the index of undelivered rows), so metrics and
    /// the readiness probe may call it on every scrape.
    async fn outbox_open(&self) -> Result<Vec<OpenOutbox>, StoreError>;

    /// Outbox rows matching `filter`, newest (highest seq) first.
    async fn list_outbox(&self, filter: OutboxFilter) -> Result<Vec<OutboxItem>, StoreError>;

    /// Puts failed rows back to pending for a new round of attempts
    /// (attempts reset, error and receipt cleared, due at `now_ms`). Rows
    /// that are not failed, or whose notice has expired, stay as they are.
    /// Returns how many rows were reopened.
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

    /// Inbox items with a cursor greater than `after_cursor`, oldest first.
    async fn inbox_after(
        &self,
        after_cursor: u64,
        limit: u32,
        unacked_only: bool,
    ) -> Result<Vec<InboxRecord>, StoreError>;

    /// Inbox items with this notice id (one per sender that used it).
    async fn inbox_by_notice(&self, notice_id: &str) -> Result<Vec<InboxRecord>, StoreError>;

    /// Marks an inbox item acknowledged. Returns false if it already was.
    async fn ack_inbox(&self, cursor: u64, at_ms: Millis) -> Result<bool, StoreError>;

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

    /// Waits for in-progress writes and closes the connections.
    async fn close(&self);
}
