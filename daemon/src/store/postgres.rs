//! A [`Store`] in PostgreSQL, for sites that already run a database server
//! (and make it highly available with the tools they use for that).
//!
//! Durability: a method returns after its transaction committed, which with
//! PostgreSQL's default `synchronous_commit = on` means the commit record is
//! flushed to the server's WAL (and, with synchronous standbys configured, to
//! them too). The store does not override that setting: a server running with
//! `synchronous_commit = off` can lose acknowledged notices in a crash.
//!
//! Structure and batching mirror [`super::sqlite`]: every write method runs
//! its whole batch in one transaction with multi-row statements
//! (`INSERT .. VALUES (..), (..)`, `UPDATE .. FROM (VALUES ..)`) split into
//! chunks of at most [`MAX_BINDS`] parameters, and `INSERT .. ON CONFLICT DO
//! NOTHING RETURNING` tells which rows a deduplicating insert actually wrote.
//! Transactions run at PostgreSQL's default `READ COMMITTED`: an insert that
//! conflicts with a row another transaction is writing waits for it, and the
//! read-back that follows sees it committed.
//!
//! This is one daemon instance per database schema: claiming outbox work
//! across several instances (leases, `SKIP LOCKED`) and waking inbox
//! streams with `LISTEN/NOTIFY` are not here yet.
//!
//! The schema lives in `migrations/postgres/`, embedded at compile time and
//! applied by [`PostgresStore::open`] in the first schema of the connection's
//! `search_path`. Errors name the operation, never the envelope, receipt or
//! any other notice content, and never the password of the URL.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{QueryBuilder, Row, Transaction};

use super::{
    AcceptOutcome, InboxRecord, IncomingNotice, NewNotice, NoticeDelivery, OutboxItem, OutboxState,
    OutboxUpdate, RecipientDelivery, Store, StoreCounts, StoreError, SubmitOutcome,
};
use crate::Millis;

/// Bind parameters per statement. The protocol allows 65,535; a smaller
/// chunk keeps each statement's text modest while a 1,000-row batch still
/// needs only one or two statements.
const MAX_BINDS: usize = 8_192;

/// How long opening the store, and any later query, waits for a pooled
/// connection (retrying an unreachable server meanwhile) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, from `daemon/migrations/postgres/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Outbox states an update may still change; `delivered` and `failed` are
/// final.
const OPEN_STATES: &str = "('pending', 'in_flight')";

/// The [`Store`] backed by one PostgreSQL database (one schema of it).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
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
        Ok(PostgresStore { pool })
    }

    /// Starts a write transaction.
    async fn begin_write(
        &self,
        operation: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(query_error(operation))
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

/// Wraps a sqlx error with the store operation it happened in.
fn query_error(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError + Copy {
    move |source| StoreError::Query { operation, source }
}

/// Rows per multi-row statement with `columns` bind parameters each.
fn rows_per_chunk(columns: usize) -> usize {
    (MAX_BINDS / columns).max(1)
}

fn parse_state(seq: i64, text: &str) -> Result<OutboxState, StoreError> {
    OutboxState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("outbox row {seq} has unknown state {text:?}")))
}

fn parse_attempts(seq: i64, attempts: i64) -> Result<u32, StoreError> {
    u32::try_from(attempts).map_err(|_| {
        StoreError::Corrupt(format!(
            "outbox row {seq} has attempt count {attempts} out of range"
        ))
    })
}

fn parse_cursor(cursor: i64) -> Result<u64, StoreError> {
    u64::try_from(cursor)
        .map_err(|_| StoreError::Corrupt(format!("inbox cursor {cursor} is negative")))
}

fn parse_count(what: &str, count: i64) -> Result<u64, StoreError> {
    u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("{what} count {count}")))
}

/// The updates of one run of [`OutboxUpdate`]s in which no row appears
/// twice, so they can be applied grouped by kind without changing the result
/// of applying them one by one.
#[derive(Default)]
struct UpdateGroup {
    /// Rows sent, by their new attempt count.
    in_flight: BTreeMap<u32, Vec<i64>>,
    delivered: Vec<(i64, Vec<u8>, Millis)>,
    failed: Vec<(i64, String, Option<Vec<u8>>, Millis)>,
    retry: Vec<(i64, Millis, String)>,
    seqs: HashSet<i64>,
}

impl UpdateGroup {
    /// Adds `update` unless its row is already in the group; then hands it
    /// back so the group can be flushed first.
    fn try_add(&mut self, update: OutboxUpdate) -> Result<(), OutboxUpdate> {
        let seq = match &update {
            OutboxUpdate::InFlight { seq, .. }
            | OutboxUpdate::Delivered { seq, .. }
            | OutboxUpdate::Failed { seq, .. }
            | OutboxUpdate::Retry { seq, .. } => *seq,
        };
        if !self.seqs.insert(seq) {
            return Err(update);
        }
        match update {
            OutboxUpdate::InFlight { seq, attempts } => {
                self.in_flight.entry(attempts).or_default().push(seq);
            }
            OutboxUpdate::Delivered {
                seq,
                receipt,
                at_ms,
            } => self.delivered.push((seq, receipt, at_ms)),
            OutboxUpdate::Failed {
                seq,
                reason,
                receipt,
                at_ms,
            } => self.failed.push((seq, reason, receipt, at_ms)),
            OutboxUpdate::Retry {
                seq,
                next_attempt_at_ms,
                error,
            } => self.retry.push((seq, next_attempt_at_ms, error)),
        }
        Ok(())
    }

    /// Writes the group with one statement per kind (and chunk) and empties it.
    async fn flush(&mut self, tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        const OP: &str = "update_outbox";
        let error = query_error(OP);

        for (attempts, seqs) in std::mem::take(&mut self.in_flight) {
            for chunk in seqs.chunks(MAX_BINDS - 1) {
                let mut query = QueryBuilder::<Postgres>::new(
                    "UPDATE outbox SET state = 'in_flight', attempts = ",
                );
                query.push_bind(i64::from(attempts));
                query.push(format_args!(" WHERE state IN {OPEN_STATES} AND seq IN ("));
                let mut list = query.separated(", ");
                for seq in chunk {
                    list.push_bind(*seq);
                }
                list.push_unseparated(")");
                query
                    .build()
                    .persistent(false)
                    .execute(&mut **tx)
                    .await
                    .map_err(error)?;
            }
        }

        let delivered = std::mem::take(&mut self.delivered);
        let mut rows = delivered.into_iter().peekable();
        while rows.peek().is_some() {
            let mut query = QueryBuilder::<Postgres>::new("WITH v (seq, receipt, at_ms) AS (");
            query.push_values(rows.by_ref().take(rows_per_chunk(3)), |mut row, item| {
                let (seq, receipt, at_ms) = item;
                row.push_bind(seq).push_bind(receipt).push_bind(at_ms);
            });
            query.push(format_args!(
                ") UPDATE outbox SET state = 'delivered', receipt = v.receipt, \
                 finished_at_ms = v.at_ms FROM v \
                 WHERE outbox.seq = v.seq AND outbox.state IN {OPEN_STATES}"
            ));
            query
                .build()
                .persistent(false)
                .execute(&mut **tx)
                .await
                .map_err(error)?;
        }

        let failed = std::mem::take(&mut self.failed);
        let mut rows = failed.into_iter().peekable();
        while rows.peek().is_some() {
            let mut query =
                QueryBuilder::<Postgres>::new("WITH v (seq, reason, receipt, at_ms) AS (");
            query.push_values(rows.by_ref().take(rows_per_chunk(4)), |mut row, item| {
                let (seq, reason, receipt, at_ms) = item;
                row.push_bind(seq)
                    .push_bind(reason)
                    .push_bind(receipt)
                    .push_bind(at_ms);
            });
            query.push(format_args!(
                ") UPDATE outbox SET state = 'failed', last_error = v.reason, \
                 receipt = v.receipt, finished_at_ms = v.at_ms FROM v \
                 WHERE outbox.seq = v.seq AND outbox.state IN {OPEN_STATES}"
            ));
            query
                .build()
                .persistent(false)
                .execute(&mut **tx)
                .await
                .map_err(error)?;
        }

        let retry = std::mem::take(&mut self.retry);
        let mut rows = retry.into_iter().peekable();
        while rows.peek().is_some() {
            let mut query =
                QueryBuilder::<Postgres>::new("WITH v (seq, next_attempt_at_ms, error) AS (");
            query.push_values(rows.by_ref().take(rows_per_chunk(3)), |mut row, item| {
                let (seq, next_attempt_at_ms, error) = item;
                row.push_bind(seq)
                    .push_bind(next_attempt_at_ms)
                    .push_bind(error);
            });
            query.push(format_args!(
                ") UPDATE outbox SET state = 'pending', \
                 next_attempt_at_ms = v.next_attempt_at_ms, last_error = v.error FROM v \
                 WHERE outbox.seq = v.seq AND outbox.state IN {OPEN_STATES}"
            ));
            query
                .build()
                .persistent(false)
                .execute(&mut **tx)
                .await
                .map_err(error)?;
        }

        self.seqs.clear();
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn submit(&self, mut batch: Vec<NewNotice>) -> Result<Vec<SubmitOutcome>, StoreError> {
        const OP: &str = "submit";
        let error = query_error(OP);
        if batch.is_empty() {
            return Ok(Vec::new());
        }

        // Envelopes move into the statements; everything else is still
        // needed to answer.
        let mut envelopes: Vec<Vec<Vec<u8>>> = batch
            .iter_mut()
            .map(|notice| {
                notice
                    .recipients
                    .iter_mut()
                    .map(|item| std::mem::take(&mut item.envelope))
                    .collect()
            })
            .collect();
        let batch = batch;

        // The first notice with each key is the one that may be stored; a
        // later one with the same key is answered as a retry of it.
        let mut first_with_key: HashMap<&str, usize> = HashMap::new();
        let mut firsts: Vec<usize> = Vec::new();
        for (index, notice) in batch.iter().enumerate() {
            if let Entry::Vacant(entry) = first_with_key.entry(notice.idempotency_key.as_str()) {
                entry.insert(index);
                firsts.push(index);
            }
        }

        let mut tx = self.begin_write(OP).await?;

        // Keys whose notice this batch stored.
        let mut stored_keys: HashSet<String> = HashSet::new();
        for chunk in firsts.chunks(rows_per_chunk(5)) {
            let mut query = QueryBuilder::<Postgres>::new(
                "INSERT INTO notices \
                 (notice_id, idempotency_key, request_digest, created_at_ms, expires_at_ms) ",
            );
            query.push_values(chunk, |mut row, &index| {
                let notice = &batch[index];
                row.push_bind(notice.notice_id.as_str())
                    .push_bind(notice.idempotency_key.as_str())
                    .push_bind(notice.request_digest.as_slice())
                    .push_bind(notice.created_at_ms)
                    .push_bind(notice.expires_at_ms);
            });
            query.push(" ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key");
            let keys: Vec<String> = query
                .build_query_scalar()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(error)?;
            stored_keys.extend(keys);
        }

        // Keys stored before this batch: their notice id and digest.
        let known_keys: Vec<&str> = firsts
            .iter()
            .map(|&index| batch[index].idempotency_key.as_str())
            .filter(|key| !stored_keys.contains(*key))
            .collect();
        let mut known: HashMap<String, (String, Vec<u8>)> = HashMap::new();
        for chunk in known_keys.chunks(MAX_BINDS) {
            let mut query = QueryBuilder::<Postgres>::new(
                "SELECT idempotency_key, notice_id, request_digest FROM notices \
                 WHERE idempotency_key IN (",
            );
            let mut list = query.separated(", ");
            for key in chunk {
                list.push_bind(*key);
            }
            list.push_unseparated(")");
            let rows = query
                .build()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(error)?;
            for row in rows {
                let key: String = row.try_get(0).map_err(error)?;
                let notice_id: String = row.try_get(1).map_err(error)?;
                let digest: Vec<u8> = row.try_get(2).map_err(error)?;
                known.insert(key, (notice_id, digest));
            }
        }

        // Outbox rows of the notices stored now, in input order.
        let new_rows: Vec<(usize, usize)> = firsts
            .iter()
            .filter(|&&index| stored_keys.contains(&batch[index].idempotency_key))
            .flat_map(|&index| (0..batch[index].recipients.len()).map(move |item| (index, item)))
            .collect();
        let mut seqs: HashMap<(String, String), i64> = HashMap::with_capacity(new_rows.len());
        for chunk in new_rows.chunks(rows_per_chunk(4)) {
            let mut query = QueryBuilder::<Postgres>::new(
                "INSERT INTO outbox (notice_id, recipient, envelope, next_attempt_at_ms, state) ",
            );
            query.push_values(chunk, |mut row, &(index, item)| {
                let notice = &batch[index];
                row.push_bind(notice.notice_id.as_str())
                    .push_bind(notice.recipients[item].recipient.as_str())
                    .push_bind(std::mem::take(&mut envelopes[index][item]))
                    .push_bind(notice.created_at_ms)
                    .push("'pending'");
            });
            query.push(" RETURNING seq, notice_id, recipient");
            let rows = query
                .build()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(error)?;
            for row in rows {
                let seq: i64 = row.try_get(0).map_err(error)?;
                let notice_id: String = row.try_get(1).map_err(error)?;
                let recipient: String = row.try_get(2).map_err(error)?;
                seqs.insert((notice_id, recipient), seq);
            }
        }

        tx.commit().await.map_err(error)?;

        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, notice) in batch.iter().enumerate() {
            let key = notice.idempotency_key.as_str();
            let first = first_with_key.get(key).copied().unwrap_or(index);
            let (original_id, original_digest) = if stored_keys.contains(key) {
                if first == index {
                    let mut outbox_seqs = Vec::with_capacity(notice.recipients.len());
                    for item in &notice.recipients {
                        let seq = seqs
                            .get(&(notice.notice_id.clone(), item.recipient.clone()))
                            .copied()
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!(
                                    "no outbox row returned for notice {}",
                                    notice.notice_id
                                ))
                            })?;
                        outbox_seqs.push(seq);
                    }
                    outcomes.push(SubmitOutcome::Stored { outbox_seqs });
                    continue;
                }
                let original = &batch[first];
                (&original.notice_id, &original.request_digest)
            } else {
                let (notice_id, digest) = known.get(key).ok_or_else(|| {
                    StoreError::Corrupt(
                        "an idempotency key conflicted but no notice holds it".to_owned(),
                    )
                })?;
                (notice_id, digest)
            };
            outcomes.push(if *original_digest == notice.request_digest {
                SubmitOutcome::Duplicate {
                    notice_id: original_id.clone(),
                }
            } else {
                SubmitOutcome::KeyReused {
                    notice_id: original_id.clone(),
                }
            });
        }
        Ok(outcomes)
    }

    async fn undelivered(&self, recipient: &str) -> Result<Vec<OutboxItem>, StoreError> {
        const OP: &str = "undelivered";
        let error = query_error(OP);
        let rows = sqlx::query(
            "SELECT o.seq, o.notice_id, o.recipient, o.envelope, o.state, o.attempts, \
                    o.next_attempt_at_ms, n.expires_at_ms, o.last_error \
             FROM outbox o JOIN notices n ON n.notice_id = o.notice_id \
             WHERE o.recipient = $1 AND o.state IN ('pending', 'in_flight') \
             ORDER BY o.seq",
        )
        .bind(recipient)
        .fetch_all(&self.pool)
        .await
        .map_err(error)?;
        rows.iter()
            .map(|row: &PgRow| {
                let seq: i64 = row.try_get(0).map_err(error)?;
                let state: &str = row.try_get(4).map_err(error)?;
                let attempts: i64 = row.try_get(5).map_err(error)?;
                Ok(OutboxItem {
                    seq,
                    notice_id: row.try_get(1).map_err(error)?,
                    recipient: row.try_get(2).map_err(error)?,
                    envelope: row.try_get(3).map_err(error)?,
                    state: parse_state(seq, state)?,
                    attempts: parse_attempts(seq, attempts)?,
                    next_attempt_at_ms: row.try_get(6).map_err(error)?,
                    expires_at_ms: row.try_get(7).map_err(error)?,
                    last_error: row.try_get(8).map_err(error)?,
                })
            })
            .collect()
    }

    async fn update_outbox(&self, updates: Vec<OutboxUpdate>) -> Result<(), StoreError> {
        const OP: &str = "update_outbox";
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write(OP).await?;
        let mut group = UpdateGroup::default();
        for update in updates {
            if let Err(update) = group.try_add(update) {
                // The row comes back: apply what came before it first.
                group.flush(&mut tx).await?;
                if group.try_add(update).is_err() {
                    return Err(StoreError::Corrupt(
                        "an emptied update group refused an update".to_owned(),
                    ));
                }
            }
        }
        group.flush(&mut tx).await?;
        tx.commit().await.map_err(query_error(OP))
    }

    async fn delivery(&self, notice_id: &str) -> Result<Option<NoticeDelivery>, StoreError> {
        const OP: &str = "delivery";
        let error = query_error(OP);
        let rows = sqlx::query(
            "SELECT n.created_at_ms, o.seq, o.recipient, o.state, o.attempts, \
                    o.next_attempt_at_ms, o.last_error, o.finished_at_ms, o.receipt \
             FROM notices n LEFT JOIN outbox o ON o.notice_id = n.notice_id \
             WHERE n.notice_id = $1 \
             ORDER BY o.seq",
        )
        .bind(notice_id)
        .fetch_all(&self.pool)
        .await
        .map_err(error)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let created_at_ms: Millis = first.try_get(0).map_err(error)?;
        let mut recipients = Vec::with_capacity(rows.len());
        for row in &rows {
            // A notice without recipients joins to one row of NULLs.
            let Some(seq) = row.try_get::<Option<i64>, _>(1).map_err(error)? else {
                continue;
            };
            let state: &str = row.try_get(3).map_err(error)?;
            let attempts: i64 = row.try_get(4).map_err(error)?;
            recipients.push(RecipientDelivery {
                seq,
                recipient: row.try_get(2).map_err(error)?,
                state: parse_state(seq, state)?,
                attempts: parse_attempts(seq, attempts)?,
                next_attempt_at_ms: row.try_get(5).map_err(error)?,
                last_error: row.try_get(6).map_err(error)?,
                finished_at_ms: row.try_get(7).map_err(error)?,
                receipt: row.try_get(8).map_err(error)?,
            });
        }
        Ok(Some(NoticeDelivery {
            notice_id: notice_id.to_owned(),
            created_at_ms,
            recipients,
        }))
    }

    async fn accept_inbox(
        &self,
        mut batch: Vec<IncomingNotice>,
    ) -> Result<Vec<AcceptOutcome>, StoreError> {
        const OP: &str = "accept_inbox";
        let error = query_error(OP);
        if batch.is_empty() {
            return Ok(Vec::new());
        }

        let mut envelopes: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|notice| std::mem::take(&mut notice.envelope))
            .collect();
        let batch = batch;

        // The first copy of each (sender, notice id) is the one that may be
        // stored; later copies are answered with its cursor and receipt.
        let mut first_copy: HashMap<(&str, &str), usize> = HashMap::new();
        let mut firsts: Vec<usize> = Vec::new();
        for (index, notice) in batch.iter().enumerate() {
            let key = (notice.sender.as_str(), notice.notice_id.as_str());
            if let Entry::Vacant(entry) = first_copy.entry(key) {
                entry.insert(index);
                firsts.push(index);
            }
        }

        let mut tx = self.begin_write(OP).await?;

        // (sender, notice id) stored now → cursor.
        let mut stored: HashMap<(String, String), i64> = HashMap::with_capacity(firsts.len());
        for chunk in firsts.chunks(rows_per_chunk(5)) {
            let mut query = QueryBuilder::<Postgres>::new(
                "INSERT INTO inbox (sender, notice_id, envelope, received_at_ms, receipt) ",
            );
            query.push_values(chunk, |mut row, &index| {
                let notice = &batch[index];
                row.push_bind(notice.sender.as_str())
                    .push_bind(notice.notice_id.as_str())
                    .push_bind(std::mem::take(&mut envelopes[index]))
                    .push_bind(notice.received_at_ms)
                    .push_bind(notice.receipt.as_slice());
            });
            query.push(
                " ON CONFLICT (sender, notice_id) DO NOTHING RETURNING cursor, sender, notice_id",
            );
            let rows = query
                .build()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(error)?;
            for row in rows {
                let cursor: i64 = row.try_get(0).map_err(error)?;
                let sender: String = row.try_get(1).map_err(error)?;
                let notice_id: String = row.try_get(2).map_err(error)?;
                stored.insert((sender, notice_id), cursor);
            }
        }

        // Copies stored before this batch: their cursor and receipt.
        let is_stored = |notice: &IncomingNotice| {
            stored.contains_key(&(notice.sender.clone(), notice.notice_id.clone()))
        };
        let known_keys: Vec<usize> = firsts
            .iter()
            .copied()
            .filter(|&index| !is_stored(&batch[index]))
            .collect();
        let mut known: HashMap<(String, String), (i64, Vec<u8>)> = HashMap::new();
        for chunk in known_keys.chunks(rows_per_chunk(2)) {
            let mut query = QueryBuilder::<Postgres>::new("WITH k (sender, notice_id) AS (");
            query.push_values(chunk, |mut row, &index| {
                let notice = &batch[index];
                row.push_bind(notice.sender.as_str())
                    .push_bind(notice.notice_id.as_str());
            });
            query.push(
                ") SELECT i.cursor, i.sender, i.notice_id, i.receipt FROM k \
                 JOIN inbox i ON i.sender = k.sender AND i.notice_id = k.notice_id",
            );
            let rows = query
                .build()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .map_err(error)?;
            for row in rows {
                let cursor: i64 = row.try_get(0).map_err(error)?;
                let sender: String = row.try_get(1).map_err(error)?;
                let notice_id: String = row.try_get(2).map_err(error)?;
                let receipt: Vec<u8> = row.try_get(3).map_err(error)?;
                known.insert((sender, notice_id), (cursor, receipt));
            }
        }

        tx.commit().await.map_err(error)?;

        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, notice) in batch.iter().enumerate() {
            let key = (notice.sender.clone(), notice.notice_id.clone());
            let outcome = if let Some(&cursor) = stored.get(&key) {
                let first = first_copy
                    .get(&(notice.sender.as_str(), notice.notice_id.as_str()))
                    .copied()
                    .unwrap_or(index);
                AcceptOutcome {
                    cursor: parse_cursor(cursor)?,
                    newly_stored: first == index,
                    receipt: batch[first].receipt.clone(),
                }
            } else {
                let (cursor, receipt) = known.get(&key).ok_or_else(|| {
                    StoreError::Corrupt(
                        "an inbox item conflicted but no stored item matches it".to_owned(),
                    )
                })?;
                AcceptOutcome {
                    cursor: parse_cursor(*cursor)?,
                    newly_stored: false,
                    receipt: receipt.clone(),
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn inbox_after(
        &self,
        after_cursor: u64,
        limit: u32,
        unacked_only: bool,
    ) -> Result<Vec<InboxRecord>, StoreError> {
        const OP: &str = "inbox_after";
        let error = query_error(OP);
        let Ok(after) = i64::try_from(after_cursor) else {
            // Cursors are BIGINT identities: none lies beyond i64::MAX.
            return Ok(Vec::new());
        };
        let sql = if unacked_only {
            "SELECT cursor, sender, notice_id, envelope, received_at_ms, acked_at_ms \
             FROM inbox WHERE cursor > $1 AND acked_at_ms IS NULL ORDER BY cursor LIMIT $2"
        } else {
            "SELECT cursor, sender, notice_id, envelope, received_at_ms, acked_at_ms \
             FROM inbox WHERE cursor > $1 ORDER BY cursor LIMIT $2"
        };
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(error)?;
        rows.iter()
            .map(|row: &PgRow| {
                let cursor: i64 = row.try_get(0).map_err(error)?;
                Ok(InboxRecord {
                    cursor: parse_cursor(cursor)?,
                    sender: row.try_get(1).map_err(error)?,
                    notice_id: row.try_get(2).map_err(error)?,
                    envelope: row.try_get(3).map_err(error)?,
                    received_at_ms: row.try_get(4).map_err(error)?,
                    acked_at_ms: row.try_get(5).map_err(error)?,
                })
            })
            .collect()
    }

    async fn ack_inbox(&self, cursor: u64, at_ms: Millis) -> Result<bool, StoreError> {
        const OP: &str = "ack_inbox";
        let error = query_error(OP);
        let Ok(row_cursor) = i64::try_from(cursor) else {
            return Err(StoreError::NoSuchInboxItem(cursor));
        };
        // One statement, committed on its own: it needs no explicit
        // transaction.
        let result = sqlx::query(
            "UPDATE inbox SET acked_at_ms = $1 WHERE cursor = $2 AND acked_at_ms IS NULL",
        )
        .bind(at_ms)
        .bind(row_cursor)
        .execute(&self.pool)
        .await
        .map_err(error)?;
        if result.rows_affected() > 0 {
            return Ok(true);
        }
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM inbox WHERE cursor = $1")
            .bind(row_cursor)
            .fetch_optional(&self.pool)
            .await
            .map_err(error)?;
        match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::NoSuchInboxItem(cursor)),
        }
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        const OP: &str = "counts";
        let error = query_error(OP);
        // One statement, so all five counts come from one snapshot.
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'in_flight')), \
               (SELECT COUNT(*) FROM outbox WHERE state = 'delivered'), \
               (SELECT COUNT(*) FROM outbox WHERE state = 'failed'), \
               (SELECT COUNT(*) FROM inbox), \
               (SELECT COUNT(*) FROM inbox WHERE acked_at_ms IS NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(error)?;
        Ok(StoreCounts {
            outbox_pending: parse_count("pending", row.try_get(0).map_err(error)?)?,
            outbox_delivered: parse_count("delivered", row.try_get(1).map_err(error)?)?,
            outbox_failed: parse_count("failed", row.try_get(2).map_err(error)?)?,
            inbox_total: parse_count("inbox", row.try_get(3).map_err(error)?)?,
            inbox_unacked: parse_count("unacked", row.try_get(4).map_err(error)?)?,
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, PgConnection};

    use super::*;
    use crate::store::suite::{self, store_suite};

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
            PostgresStore::open_in(&self.url, 4, Some(&self.name), ACQUIRE_TIMEOUT)
                .await
                .expect("open the store in the test schema")
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
                .ack_inbox(accepted[0].cursor, 3_000)
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
        let inbox = store.inbox_after(0, 10, false).await.expect("inbox");
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
