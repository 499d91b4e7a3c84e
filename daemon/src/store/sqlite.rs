//! The embedded default [`Store`](super::Store): one SQLite file next to the daemon.
//!
//! Durability: the file runs in WAL journal mode with `synchronous = FULL`,
//! so a method that returned has had its transaction fsynced to the WAL.
//! Every write method opens one `BEGIN IMMEDIATE` transaction for its whole
//! batch: it takes SQLite's single writer lock up front (waiting up to the
//! busy timeout for another writer) instead of upgrading a read transaction
//! later, which in WAL mode can fail with `SQLITE_BUSY_SNAPSHOT` no matter
//! how long one waits.
//!
//! Writes go through a pool of their own with a single connection, so the
//! daemon's writers (submits, delivery outcomes, inbox accepts, acks) queue
//! for it in order inside the process. With several writing connections they
//! would meet at SQLite's lock instead, and SQLite's busy handler waits by
//! polling with sleeps of 1, 2, 5, 10 … 100 ms: under steady load the loser
//! of each collision slept far longer than the winner's transaction took
//! (submit-to-delivered p99 of ~1 s at 1,000 notices/s, BENCHMARKS.md).
//! Readers keep their own connections; WAL lets them run beside the writer.
//!
//! The statements are shared with [`super::postgres`] (see `store/sql.rs`).
//!
//! Cost: each statement costs tens of microseconds of round trip to the
//! connection's worker thread, so batches are written with multi-row
//! statements (`INSERT .. VALUES (..), (..)`, `UPDATE .. FROM (VALUES ..)`)
//! split into chunks of at most [`MAX_BINDS`] parameters, not one statement
//! per row. `RETURNING` tells which rows an `ON CONFLICT DO NOTHING` insert
//! actually wrote; conflicting rows are read back in one query per chunk.
//!
//! The schema lives in `migrations/sqlite/`, embedded at compile time and
//! applied by [`SqliteStore::open`]. Errors name the operation, never the
//! envelope, receipt or any other notice content.

use std::path::Path;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::StoreError;
use super::sql::query_error;
use crate::audit::ChainKey;

/// Connections serving reads (WAL lets them run beside the writer); the one
/// writing connection comes on top.
const READ_CONNECTIONS: u32 = 3;

/// How long a writer waits for the write lock before failing with
/// `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind parameters per statement. SQLite's own limit is 32,766 since 3.32
/// (999 before); staying at the old limit keeps any SQLite build working and
/// keeps each statement's text small, while a 1,000-row batch still needs only
/// a handful of statements.
const MAX_BINDS: usize = 999;

/// The schema, from `daemon/migrations/sqlite/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The [`Store`](super::Store) backed by one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// Writes: one connection, so writers queue here rather than at
    /// SQLite's busy handler (see the module documentation).
    writer: SqlitePool,
    /// Computes the audit chain's MACs; writes that need an audit entry
    /// fail until it is set.
    audit_key: Option<ChainKey>,
}

impl SqliteStore {
    /// Write transactions hold the one writer lock from the start
    /// (`BEGIN IMMEDIATE`): there is nothing to skip.
    const SKIP_LOCKED: &'static str = "";

    /// Opens (creating it if missing) the database at `path` and brings its
    /// schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let open_error = |source| StoreError::Open {
            location: path.display().to_string(),
            source,
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        if let Err(error) = MIGRATOR.run(&writer).await {
            writer.close().await;
            return Err(error.into());
        }
        let pool = match SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options)
            .await
        {
            Ok(pool) => pool,
            Err(source) => {
                writer.close().await;
                return Err(open_error(source));
            }
        };
        Ok(SqliteStore {
            pool,
            writer,
            audit_key: None,
        })
    }

    /// Sets the key the audit chain is computed with (see [`crate::audit`]).
    pub fn set_audit_key(&mut self, key: ChainKey) {
        self.audit_key = Some(key);
    }

    /// The store at `path` with the tests' audit key, ready for any write.
    #[cfg(test)]
    #[allow(clippy::expect_used)]
    pub(crate) async fn open_for_test(path: &Path) -> SqliteStore {
        let mut store = SqliteStore::open(path).await.expect("open the store");
        store.set_audit_key(crate::audit::test_chain_key());
        store
    }

    /// Nothing to do: `BEGIN IMMEDIATE` already holds the one writer lock
    /// for the whole transaction.
    async fn lock_audit(_tx: &mut Transaction<'static, Sqlite>) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts a write transaction holding the writer lock from the start.
    async fn begin_write(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error(operation))
    }

    /// Waits for in-progress writes and closes both pools.
    /// Only this process writes the file, so there is no one to tell.
    async fn announce_inbox(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _newest_cursor: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Only this process writes the file: the receive path wakes streams.
    async fn inbox_listener(&self) -> Result<Option<Box<dyn super::InboxListener>>, StoreError> {
        Ok(None)
    }

    async fn close_pools(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

super::sql::sql_store!(SqliteStore, Sqlite, max_binds = MAX_BINDS);

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;
    use crate::store::suite::{self, store_suite};
    use crate::store::{OutboxState, OutboxUpdate, Store, SubmitOutcome};

    /// A fresh store in its own temporary directory; the directory lives as
    /// long as the returned guard.
    async fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open_for_test(&dir.path().join("store.db")).await;
        (dir, store)
    }

    store_suite!(fresh());

    async fn pragma(store: &SqliteStore, name: &'static str) -> String {
        let sql = match name {
            "journal_mode" => "PRAGMA journal_mode",
            "synchronous" => "PRAGMA synchronous",
            "foreign_keys" => "PRAGMA foreign_keys",
            _ => panic!("unexpected pragma {name}"),
        };
        let row = sqlx::query(sql)
            .fetch_one(&store.pool)
            .await
            .expect("pragma");
        match row.try_get::<String, _>(0) {
            Ok(text) => text,
            Err(_) => row.try_get::<i64, _>(0).expect("pragma value").to_string(),
        }
    }

    #[tokio::test]
    async fn database_is_durable_wal_with_foreign_keys() {
        let (dir, store) = fresh().await;
        assert_eq!(pragma(&store, "journal_mode").await, "wal");
        // 2 = FULL
        assert_eq!(pragma(&store, "synchronous").await, "2");
        assert_eq!(pragma(&store, "foreign_keys").await, "1");
        store.close().await;

        // WAL mode is a property of the file, seen by any later opener.
        let store = SqliteStore::open(&dir.path().join("store.db"))
            .await
            .expect("reopen");
        assert_eq!(pragma(&store, "journal_mode").await, "wal");
        store.close().await;
    }

    #[tokio::test]
    async fn open_creates_missing_file_and_reports_bad_location() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("new.db");
        assert!(!path.exists());
        let store = SqliteStore::open(&path).await.expect("open");
        assert!(path.exists());
        store.close().await;

        let bad = dir.path().join("no-such-directory").join("store.db");
        match SqliteStore::open(&bad).await {
            Err(StoreError::Open { location, .. }) => {
                assert!(location.contains("no-such-directory"));
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn data_persists_across_close_and_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.db");

        let store = SqliteStore::open_for_test(&path).await;
        let outcomes = store
            .submit(vec![suite::notice("n-1", "key-1", &["org-b", "org-c"])])
            .await
            .expect("submit");
        let seqs = suite::stored_seqs(&outcomes[0]);
        store
            .update_outbox(vec![OutboxUpdate::Delivered {
                seq: seqs[0],
                receipt: b"receipt-b".to_vec(),
                at_ms: 2_000,
            }])
            .await
            .expect("update");
        let accepted = store
            .accept_inbox(vec![
                suite::incoming("org-x", "in-1", b"r-1"),
                suite::incoming("org-x", "in-2", b"r-2"),
            ])
            .await
            .expect("accept");
        assert!(
            store
                .ack_inbox(accepted[0].cursor, 3_000, "api uid=1000")
                .await
                .expect("ack")
        );
        let counts_before = store.counts().await.expect("counts");
        store.close().await;

        let store = SqliteStore::open_for_test(&path).await;
        assert_eq!(store.counts().await.expect("counts"), counts_before);
        let delivery = store
            .delivery("n-1")
            .await
            .expect("delivery")
            .expect("notice persisted");
        assert_eq!(delivery.recipients.len(), 2);
        assert_eq!(delivery.recipients[0].state, OutboxState::Delivered);
        assert_eq!(
            delivery.recipients[0].receipt.as_deref(),
            Some(&b"receipt-b"[..])
        );
        let pending = store.undelivered("org-c").await.expect("undelivered");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, seqs[1]);
        assert_eq!(pending[0].envelope, suite::envelope("n-1", "org-c"));

        // Deduplication state persisted too.
        let again = store
            .submit(vec![suite::notice("n-other", "key-1", &["org-b"])])
            .await
            .expect("submit again");
        assert_eq!(
            again,
            vec![SubmitOutcome::Duplicate {
                notice_id: "n-1".to_owned()
            }]
        );
        let resent = store
            .accept_inbox(vec![suite::incoming("org-x", "in-1", b"other")])
            .await
            .expect("accept again");
        assert_eq!(resent[0].cursor, accepted[0].cursor);
        assert!(!resent[0].newly_stored);
        assert_eq!(resent[0].receipt, b"r-1");
        let inbox = store.inbox_after(0, 10, false, None).await.expect("inbox");
        assert_eq!(inbox.len(), 2);
        assert_eq!(inbox[0].acked_at_ms, Some(3_000));
        assert_eq!(inbox[1].acked_at_ms, None);

        // Sequence numbers are never reused after a restart.
        let later = store
            .submit(vec![suite::notice("n-2", "key-2", &["org-b"])])
            .await
            .expect("submit later");
        assert!(suite::stored_seqs(&later[0])[0] > seqs[1]);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_for_the_lock() {
        let (_dir, store) = fresh().await;
        let mut tasks = Vec::new();
        for task in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..10 {
                    let id = format!("n-{task}-{round}");
                    let outcomes = store
                        .submit(vec![suite::notice(&id, &id, &["org-b"])])
                        .await
                        .expect("concurrent submit");
                    let seq = suite::stored_seqs(&outcomes[0])[0];
                    store
                        .update_outbox(vec![OutboxUpdate::InFlight { seq, attempts: 1 }])
                        .await
                        .expect("concurrent update");
                    store
                        .accept_inbox(vec![suite::incoming("org-x", &id, b"r")])
                        .await
                        .expect("concurrent accept");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let counts = store.counts().await.expect("counts");
        assert_eq!(counts.outbox_pending, 80);
        assert_eq!(counts.inbox_total, 80);
        store.close().await;
    }

    #[tokio::test]
    async fn undelivered_uses_the_partial_index() {
        let (_dir, store) = fresh().await;
        let plan: Vec<String> = sqlx::query(
            "EXPLAIN QUERY PLAN \
             SELECT o.seq FROM outbox o JOIN notices n ON n.notice_id = o.notice_id \
             WHERE o.recipient = ? AND o.state IN ('pending', 'in_flight') ORDER BY o.seq",
        )
        .bind("org-b")
        .fetch_all(&store.pool)
        .await
        .expect("plan")
        .iter()
        .map(|row| row.try_get::<String, _>(3).expect("detail"))
        .collect();
        assert!(
            plan.iter().any(|step| step.contains("outbox_undelivered")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
        store.close().await;
    }

    /// A webhook event claimed by a daemon that then stopped (mid-send) is
    /// still in the file after a reopen, and due again once its lease ends.
    #[tokio::test]
    async fn webhook_events_survive_a_restart() {
        use crate::store::{WebhookFilter, WebhookState};
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open_for_test(&path).await;
        let mut notice = suite::incoming("org-x", "in-1", b"r-1");
        notice.webhooks = vec!["main".into()];
        store.accept_inbox(vec![notice]).await.expect("accept");
        let t = suite::RECEIVED_AT;
        let claimed = store
            .claim_webhooks(t, t + 60_000, 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        store.close().await;

        let store = SqliteStore::open_for_test(&path).await;
        let listed = store
            .list_webhooks(WebhookFilter {
                limit: 10,
                ..WebhookFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, WebhookState::Pending);
        assert!(
            store
                .claim_webhooks(t + 59_999, t + 120_000, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        let again = store
            .claim_webhooks(t + 60_000, t + 120_000, 10)
            .await
            .expect("claim");
        assert_eq!(again[0].id, claimed[0].id);
        store.close().await;
    }
}
