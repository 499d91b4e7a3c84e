//! A [`Store`](super::Store) in PostgreSQL, for sites that already run a database server
//! (and make it highly available with the tools they use for that).
//!
//! Durability: a method returns after its transaction committed, which with
//! PostgreSQL's default `synchronous_commit = on` means the commit record is
//! flushed to the server's WAL (and, with synchronous standbys configured, to
//! them too). The store does not override that setting: a server running with
//! `synchronous_commit = off` can lose acknowledged notices in a crash.
//!
//! The statements are shared with [`super::sqlite`] (see `store/sql.rs`): every write method runs
//! its whole batch in one transaction with multi-row statements
//! (`INSERT .. VALUES (..), (..)`, `UPDATE .. FROM (VALUES ..)`) split into
//! chunks of at most [`MAX_BINDS`] parameters, and `INSERT .. ON CONFLICT DO
//! NOTHING RETURNING` tells which rows a deduplicating insert actually wrote.
//! Transactions run at PostgreSQL's default `READ COMMITTED`: an insert that
//! conflicts with a row another transaction is writing waits for it, and the
//! read-back that follows sees it committed.
//! `ack_inbox` runs its update and existence check in one transaction too.
//!
//! Several daemon instances of one organisation may share one schema.
//! Outbox work is split by leases on shards (see [`crate::lease`]), claimed
//! with `SKIP LOCKED`. An accept that stores inbox items sends `NOTIFY` on a
//! channel named after the database and schema (in its transaction, so it
//! is delivered on commit); every instance `LISTEN`s on it, so an inbox
//! stream opened on any instance wakes for items any instance received (see
//! [`Store::listen_inbox`](super::Store::listen_inbox)).
//!
//! The schema lives in `migrations/postgres/`, embedded at compile time and
//! applied by [`PostgresStore::open`] in the first schema of the connection's
//! `search_path`. Errors name the operation, never the envelope, receipt or
//! any other notice content, and never the password of the URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, Postgres};

use super::sql::query_error;
use super::{InboxListener, StoreError};
use crate::audit::ChainKey;

/// Bind parameters per statement. The protocol allows 65,535; a smaller
/// chunk keeps each statement's text modest while a 1,000-row batch still
/// needs only one or two statements.
const MAX_BINDS: usize = 8_192;

/// How long opening the store, and any later query, waits for a pooled
/// connection (retrying an unreachable server meanwhile) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, from `daemon/migrations/postgres/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The [`Store`](super::Store) backed by one PostgreSQL database (one schema of it).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where accepts announce new inbox items: one channel per database and
    /// schema, so organisations sharing a server do not wake each other.
    inbox_channel: String,
    /// Computes the audit chain's MACs; writes that need an audit entry
    /// fail until it is set.
    audit_key: Option<ChainKey>,
}

impl PostgresStore {
    /// Lease claims lock the rows they take and skip those another
    /// instance is claiming, instead of waiting for it.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// any form libpq accepts as a URL) with a pool of at most
    /// `max_connections`, and brings its schema up to date.
    pub async fn open(url: &str, max_connections: u32) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_in(url, max_connections, None, ACQUIRE_TIMEOUT).await
    }

    /// [`PostgresStore::open`], with every pooled connection's `search_path`
    /// set to `schema` (which must exist) when one is given, giving up on an
    /// unreachable server after `acquire_timeout`.
    async fn open_in(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
        acquire_timeout: Duration,
    ) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Open {
            location: "a PostgreSQL URL that does not parse".to_owned(),
            source,
        })?;
        let location = describe(&options);
        let mut pool_options = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout);
        if let Some(schema) = schema {
            let set_path = format!("SET search_path TO {}", quote_identifier(schema));
            pool_options = pool_options.after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(set_path))
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            });
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { location, source })?;
        if let Err(error) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(error.into());
        }
        let inbox_channel = match inbox_channel(&pool).await {
            Ok(channel) => channel,
            Err(error) => {
                pool.close().await;
                return Err(error);
            }
        };
        Ok(PostgresStore {
            pool,
            inbox_channel,
            audit_key: None,
        })
    }

    /// Sets the key the audit chain is computed with (see [`crate::audit`]).
    pub fn set_audit_key(&mut self, key: ChainKey) {
        self.audit_key = Some(key);
    }

    /// Takes the audit table's write lock until `tx` ends, so two writers
    /// (two transactions, or two daemon instances) never append after the
    /// same entry. Readers are not blocked.
    async fn lock_audit(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
            .execute(&mut **tx)
            .await
            .map(|_| ())
            .map_err(query_error("lock_audit"))
    }

    /// Starts a write transaction.
    async fn begin_write(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(query_error(operation))
    }

    /// Queues a notification of inbox items up to `newest_cursor`; the
    /// server delivers it to the listeners when `tx` commits, and drops it
    /// if `tx` rolls back.
    async fn announce_inbox(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        newest_cursor: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.inbox_channel.as_str())
            .bind(newest_cursor.to_string())
            .execute(&mut **tx)
            .await
            .map(|_| ())
            .map_err(query_error("announce_inbox"))
    }

    /// Listens on this store's inbox channel on a connection of its own.
    async fn inbox_listener(&self) -> Result<Option<Box<dyn InboxListener>>, StoreError> {
        let error = query_error("listen_inbox");
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(error)?;
        listener.listen(&self.inbox_channel).await.map_err(error)?;
        Ok(Some(Box::new(PgInboxListener(listener))))
    }

    /// Waits for in-progress queries and closes the pool.
    async fn close_pools(&self) {
        self.pool.close().await;
    }
}

/// The notification channel of the database and schema `pool` works in. A
/// digest keeps the name within PostgreSQL's 63-byte identifier limit
/// whatever the schema is called.
async fn inbox_channel(pool: &PgPool) -> Result<String, StoreError> {
    let place: String = sqlx::query_scalar("SELECT current_database() || '.' || current_schema()")
        .fetch_one(pool)
        .await
        .map_err(query_error("inbox_channel"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, place.as_bytes());
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(format!("tvaers_inbox_{hex}"))
}

/// [`InboxListener`] over a `LISTEN` connection.
#[derive(Debug)]
struct PgInboxListener(PgListener);

#[async_trait::async_trait]
impl InboxListener for PgInboxListener {
    async fn next(&mut self) -> Result<Option<u64>, StoreError> {
        match self.0.try_recv().await {
            // A payload that does not parse still means "something was
            // stored": wake the readers as if notifications were missed.
            Ok(Some(notification)) => Ok(notification.payload().parse().ok()),
            // The connection dropped; the next call reconnects.
            Ok(None) => Ok(None),
            Err(source) => Err(StoreError::Query {
                operation: "listen_inbox",
                source,
            }),
        }
    }
}

/// Where a store is, for messages: host, port and database, never the user
/// or password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// Where the store at `url` is, for logs and messages: host, port and
/// database, never the user or password.
pub fn describe_url(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => describe(&options),
        Err(_) => "a PostgreSQL URL that does not parse".to_owned(),
    }
}

/// `name` as a quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

super::sql::sql_store!(PostgresStore, Postgres, max_binds = MAX_BINDS);

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, PgConnection};

    use super::*;
    use crate::store::suite::{self, store_suite};
    use crate::store::{OutboxState, OutboxUpdate, Store, SubmitOutcome};

    /// The environment variable naming the test server.
    const TEST_URL_VAR: &str = "TVAERS_TEST_POSTGRES_URL";

    /// A schema of its own for one test, with a random name, so tests (and
    /// concurrent runs) never see each other's rows. Dropping the guard
    /// drops the schema; if that fails (the server went away) the schema is
    /// left behind, named `tvaers_test_…`, harmless and easy to clean up.
    #[derive(Debug)]
    struct TestSchema {
        url: String,
        name: String,
    }

    impl TestSchema {
        /// A new empty schema on the test server, or `None` (announced on
        /// stderr) when no test server is configured.
        async fn create() -> Option<TestSchema> {
            let url = match std::env::var(TEST_URL_VAR) {
                Ok(url) if !url.trim().is_empty() => url,
                _ => {
                    eprintln!("skipping PostgreSQL store test: {TEST_URL_VAR} is not set");
                    return None;
                }
            };
            let name = format!("tvaers_test_{}", uuid::Uuid::now_v7().simple());
            let mut conn = PgConnection::connect(&url)
                .await
                .unwrap_or_else(|error| panic!("cannot connect to {TEST_URL_VAR}: {error}"));
            conn.execute(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA {}",
                quote_identifier(&name)
            )))
            .await
            .expect("create the test schema");
            conn.close().await.expect("close");
            Some(TestSchema { url, name })
        }

        /// A store in this schema.
        async fn open(&self) -> PostgresStore {
            let mut store = PostgresStore::open_in(&self.url, 4, Some(&self.name), ACQUIRE_TIMEOUT)
                .await
                .expect("open the store in the test schema");
            store.set_audit_key(crate::audit::test_chain_key());
            store
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let url = self.url.clone();
            let sql = format!(
                "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
                quote_identifier(&self.name)
            );
            // Drop runs inside the test's runtime, which cannot be blocked
            // on: a thread of its own with its own runtime does the work.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async move {
                    let mut conn = PgConnection::connect(&url).await.ok()?;
                    let result = conn.execute(sqlx::AssertSqlSafe(sql)).await;
                    let _ = conn.close().await;
                    result.ok()
                })
            })
            .join();
            if !matches!(dropped, Ok(Some(_))) {
                eprintln!("could not drop test schema {}", self.name);
            }
        }
    }

    /// A fresh store in its own schema, or `None` without a test server.
    async fn fresh() -> Option<(TestSchema, PostgresStore)> {
        let schema = TestSchema::create().await?;
        let store = schema.open().await;
        Some((schema, store))
    }

    store_suite!(fresh());

    /// Two instances on one schema: what one accepts, the other hears of,
    /// and a store in another schema (another organisation on the same
    /// server) does not.
    #[tokio::test]
    async fn inbox_items_stored_by_one_instance_wake_the_other() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let Some(other_org) = TestSchema::create().await else {
            return;
        };
        let first = schema.open().await;
        let second = schema.open().await;
        let elsewhere = other_org.open().await;
        let mut listener = second
            .listen_inbox()
            .await
            .expect("listen")
            .expect("PostgreSQL stores listen");
        let mut unrelated = elsewhere
            .listen_inbox()
            .await
            .expect("listen")
            .expect("PostgreSQL stores listen");

        let accepted = first
            .accept_inbox(vec![
                suite::incoming("org-x", "in-1", b"r-1"),
                suite::incoming("org-x", "in-2", b"r-2"),
            ])
            .await
            .expect("accept");
        let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
            .await
            .expect("the other instance hears of the items within 10 s")
            .expect("notification");
        assert_eq!(
            heard,
            Some(accepted[1].cursor),
            "one notice, the newest cursor"
        );
        let items = second.inbox_after(0, 10, false, None).await.expect("inbox");
        assert_eq!(items.len(), 2, "what was announced is committed");

        // A duplicate stores nothing and announces nothing.
        first
            .accept_inbox(vec![suite::incoming("org-x", "in-1", b"again")])
            .await
            .expect("accept again");
        let third = first
            .accept_inbox(vec![suite::incoming("org-x", "in-3", b"r-3")])
            .await
            .expect("accept a third");
        let heard = tokio::time::timeout(Duration::from_secs(10), listener.next())
            .await
            .expect("the third item is heard of")
            .expect("notification");
        assert_eq!(
            heard,
            Some(third[0].cursor),
            "the duplicate was not announced"
        );

        assert!(
            tokio::time::timeout(Duration::from_millis(300), unrelated.next())
                .await
                .is_err(),
            "another schema's listener heard nothing"
        );
    }

    /// Two instances sharing one database: the same notice reaching both
    /// at once is stored once, and both answer with the first receipt.
    #[tokio::test]
    async fn the_same_notice_reaching_two_instances_is_stored_once() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let (one, two) = (schema.open().await, schema.open().await);
        for round in 0..20 {
            let id = format!("n-{round}");
            let (a, b) = tokio::join!(
                one.accept_inbox(vec![suite::incoming("org-x", &id, b"receipt one")]),
                two.accept_inbox(vec![suite::incoming("org-x", &id, b"receipt two")]),
            );
            let (a, b) = (a.expect("accept on one"), b.expect("accept on two"));
            assert_eq!(a[0].cursor, b[0].cursor, "{id}");
            assert!(a[0].newly_stored ^ b[0].newly_stored, "{id}: {a:?} {b:?}");
            assert_eq!(a[0].receipt, b[0].receipt);
        }
        assert_eq!(one.counts().await.expect("counts").inbox_total, 20);
        assert_eq!(
            two.inbox_after(0, 100, false, None)
                .await
                .expect("inbox")
                .len(),
            20
        );
        one.close().await;
        two.close().await;
    }

    #[tokio::test]
    async fn data_persists_across_close_and_reopen() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };

        let store = schema.open().await;
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

        // Reopening runs the migrator again: it must find nothing to do.
        let store = schema.open().await;
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
    async fn concurrent_writers() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
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

    /// Two instances sharing one database that start at the same moment
    /// end with one data key: what one seals, the other opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_starting_together_agree_on_one_data_key() {
        use crate::at_rest::{Kek, KekSource, Keyring, generate_kek_file};
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let kek_path = dir.path().join("storage.kek");
        generate_kek_file(&kek_path).expect("kek");
        let load = || Kek::load(&KekSource::File(kek_path.clone())).expect("load kek");
        let (a, b) = (schema.open().await, schema.open().await);
        let (first, second) = tokio::join!(Keyring::open(&a, load()), Keyring::open(&b, load()));
        let (first, second) = (first.expect("first"), second.expect("second"));
        let sealed = first.seal(&[b"row"], b"body").expect("seal");
        assert_eq!(
            second.open_sealed(&[b"row"], &sealed).as_deref(),
            Some(&b"body"[..])
        );
        a.close().await;
        b.close().await;
    }

    #[test]
    fn locations_never_show_the_password() {
        let options = PgConnectOptions::from_str("postgres://tvaers:s3cret@db.example:6543/tvaers")
            .expect("parse");
        let location = describe(&options);
        assert_eq!(location, "postgres://db.example:6543/tvaers");
        assert_eq!(
            describe_url("postgres://tvaers@db.example/tvaers?password=s3cret"),
            "postgres://db.example:5432/tvaers"
        );
        assert!(!location.contains("s3cret"));
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[tokio::test]
    async fn open_reports_an_unreachable_server_without_the_password() {
        // Port 1 on loopback: nothing listens there.
        let url = "postgres://tvaers:s3cret@127.0.0.1:1/tvaers";
        match PostgresStore::open_in(url, 1, None, Duration::from_secs(1)).await {
            Err(error @ StoreError::Open { .. }) => {
                let text = format!("{error} {error:?}");
                assert!(!text.contains("s3cret"), "{text}");
                assert!(text.contains("127.0.0.1:1/tvaers"), "{text}");
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }
}
