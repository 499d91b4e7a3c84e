//! The SQL both backends share: [`super::sqlite`] and [`super::postgres`]
//! run the same statements, written once here.
//!
//! Pure helpers are plain functions. The [`Store`](super::Store)
//! implementation itself is generated per backend by [`sql_store!`]: a
//! generic `impl<DB: sqlx::Database>` would need a bound for every type bound
//! into every statement (`for<'q> T: Encode<'q, DB> + Type<DB>`, plus
//! `Decode` for every column read and `Executor` for the pool and the
//! transaction), which is unwieldy and hides the SQL. Every statement is
//! built with [`sqlx::QueryBuilder`] and `push_bind`, so its text carries no
//! backend's placeholder syntax.
//!
//! A backend provides a type with a `pool` field (its `sqlx::Pool`, for
//! reads) and an `audit_key: Option<ChainKey>` field, an inherent `async fn
//! begin_write(&self, operation: &'static str) -> Result<Transaction<'static,
//! DB>, StoreError>` that opens a write transaction the way that backend
//! needs (every write goes through it), an inherent `async fn
//! lock_audit(tx: &mut Transaction<'static, DB>) -> Result<(), StoreError>`
//! that keeps other writers from appending to the audit chain until `tx`
//! ends, an inherent `async fn announce_inbox(&self, tx, newest_cursor: i64)
//! -> Result<(), StoreError>` that tells other processes sharing the store,
//! when `tx` commits, that inbox items up to that cursor were stored, an
//! inherent `async fn inbox_listener(&self) -> Result<Option<Box<dyn
//! InboxListener>>, StoreError>` that hears those announcements, an inherent
//! `async fn close_pools(&self)`, an inherent `const SKIP_LOCKED: &str` (the
//! clause that makes a `SELECT` lock its rows and skip rows other
//! transactions hold, or nothing where writers are serialised anyway), and
//! its parameter limit per statement.

use super::{HandledStatus, OutboxState, StoreError, WebhookState};

/// Outbox states an update may still change; `delivered` and `failed` are
/// final.
pub(super) const OPEN_STATES: &str = "('pending', 'in_flight')";

/// Wraps a sqlx error with the store operation it happened in.
pub(super) fn query_error(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError + Copy {
    move |source| StoreError::Query { operation, source }
}

/// Rows per multi-row statement with `columns` bind parameters each, for a
/// backend allowing `max_binds` parameters per statement.
pub(super) fn rows_per_chunk(max_binds: usize, columns: usize) -> usize {
    (max_binds / columns).max(1)
}

pub(super) fn parse_state(seq: i64, text: &str) -> Result<OutboxState, StoreError> {
    OutboxState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("outbox row {seq} has unknown state {text:?}")))
}

pub(super) fn parse_handled_status(
    notice_id: &str,
    text: &str,
) -> Result<HandledStatus, StoreError> {
    HandledStatus::parse(text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "business receipt about notice {notice_id} has unknown status {text:?}"
        ))
    })
}

pub(super) fn parse_webhook_state(id: i64, text: &str) -> Result<WebhookState, StoreError> {
    WebhookState::parse(text).ok_or_else(|| {
        StoreError::Corrupt(format!("webhook event {id} has unknown state {text:?}"))
    })
}

/// An attempt count read from `row` (e.g. "outbox row 7").
pub(super) fn parse_attempts(
    row: std::fmt::Arguments<'_>,
    attempts: i64,
) -> Result<u32, StoreError> {
    u32::try_from(attempts).map_err(|_| {
        StoreError::Corrupt(format!("{row} has attempt count {attempts} out of range"))
    })
}

pub(super) fn parse_cursor(cursor: i64) -> Result<u64, StoreError> {
    u64::try_from(cursor)
        .map_err(|_| StoreError::Corrupt(format!("inbox cursor {cursor} is negative")))
}

pub(super) fn parse_position(position: Option<i64>) -> Result<u64, StoreError> {
    match position {
        Some(position) => u64::try_from(position)
            .map_err(|_| StoreError::Corrupt(format!("placement position {position} is negative"))),
        None => Err(StoreError::Corrupt(
            "a placement has no position".to_owned(),
        )),
    }
}

pub(super) fn parse_count(what: &str, count: i64) -> Result<u64, StoreError> {
    u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("{what} count {count}")))
}

/// `impl Store for $store` over the sqlx database `$db`, with multi-row
/// statements of at most `$max_binds` bind parameters. See the module
/// documentation for what `$store` must provide.
macro_rules! sql_store {
    ($store:ty, $db:ty, max_binds = $max_binds:expr) => {
        const _: () = {
            use std::collections::hash_map::Entry;
            use std::collections::{BTreeMap, HashMap, HashSet};

            use sqlx::{QueryBuilder, Row, Transaction};

            use $crate::Millis;
            use $crate::audit::{
                AuditAction, AuditEntry, AuditEvent, AuditQuery, CitizenRef, ChainKey, GENESIS_MAC, chain,
            };
            use $crate::store::sql::{
                OPEN_STATES, parse_attempts, parse_count, parse_cursor, parse_position, parse_state, query_error,
                rows_per_chunk,
            };
            use $crate::store::{
                AcceptOutcome, CareTeamChange, CareTeamContact, Handled, HandledReceipt, InboxRecord, IncomingNotice, NewNotice, NoticeDelivery, OpenOutbox, OutboxFilter, OutboxItem,
                OpenPlacement, OutboxUpdate, Placement, PurgeReport, RecipientDelivery, Store, StoreCounts, StoreError, StoredKey, SubmitOutcome,
                WebhookCount, WebhookEvent, WebhookFilter, WebhookState, WebhookUpdate,
            };
            use $crate::store::sql::{parse_handled_status, parse_webhook_state};
            use $crate::lease::{Lease, LeasePlan, LeaseView, shard_of};

            /// Columns [`webhook_event`] reads, in its order.
            const WEBHOOK_EVENT_SELECT: &str =
                "SELECT w.id, w.inbox, w.cursor, i.notice_id, i.sender, w.kind, i.received_at_ms, \
                        w.state, w.attempts, w.next_attempt_at_ms, w.last_error, w.created_at_ms, \
                        w.updated_at_ms \
                 FROM webhook_events w JOIN inbox i ON i.cursor = w.cursor";

            fn webhook_event(
                operation: &'static str,
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<WebhookEvent, StoreError> {
                let error = query_error(operation);
                let id: i64 = row.try_get(0).map_err(error)?;
                let cursor: i64 = row.try_get(2).map_err(error)?;
                let state: &str = row.try_get(7).map_err(error)?;
                let attempts: i64 = row.try_get(8).map_err(error)?;
                Ok(WebhookEvent {
                    id,
                    inbox: row.try_get(1).map_err(error)?,
                    cursor: parse_cursor(cursor)?,
                    notice_id: row.try_get(3).map_err(error)?,
                    sender: row.try_get(4).map_err(error)?,
                    kind: row.try_get(5).map_err(error)?,
                    received_at_ms: row.try_get(6).map_err(error)?,
                    state: parse_webhook_state(id, state)?,
                    attempts: parse_attempts(format_args!("webhook event {id}"), attempts)?,
                    next_attempt_at_ms: row.try_get(9).map_err(error)?,
                    last_error: row.try_get(10).map_err(error)?,
                    created_at_ms: row.try_get(11).map_err(error)?,
                    updated_at_ms: row.try_get(12).map_err(error)?,
                })
            }

            /// Reads (shard, owner, expires_at_ms) of `outbox_leases`.
            fn lease_row(
                operation: &'static str,
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<Lease, StoreError> {
                let error = query_error(operation);
                let shard: i32 = row.try_get(0).map_err(error)?;
                Ok(Lease {
                    shard: u16::try_from(shard)
                        .map_err(|_| StoreError::Corrupt(format!("outbox lease of shard {shard}")))?,
                    owner: row.try_get(1).map_err(error)?,
                    expires_at_ms: row.try_get(2).map_err(error)?,
                })
            }

            /// Appends the bound `ids` and `)`, closing an `IN (` list: at
            /// most `$max_binds` of them.
            fn push_ids(query: &mut QueryBuilder<$db>, ids: &[i64]) {
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
            }

            /// Appends ` AND shard IN (…)`; at most [`crate::lease::SHARDS`]
            /// shards, well under any backend's parameter limit.
            fn push_shards(query: &mut QueryBuilder<$db>, shards: &[u16]) {
                query.push(" AND shard IN (");
                let mut list = query.separated(", ");
                for shard in shards {
                    list.push_bind(i32::from(*shard));
                }
                list.push_unseparated(")");
            }

            /// Columns [`outbox_item`] reads, in its order.
            const OUTBOX_ITEM_SELECT: &str =
                "SELECT o.seq, o.notice_id, o.recipient, o.envelope, o.state, o.attempts, \
                        o.next_attempt_at_ms, n.expires_at_ms, o.last_error, o.purged_at_ms \
                 FROM outbox o JOIN notices n ON n.notice_id = o.notice_id";

            fn outbox_item(
                operation: &'static str,
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<OutboxItem, StoreError> {
                let error = query_error(operation);
                let seq: i64 = row.try_get(0).map_err(error)?;
                let state: &str = row.try_get(4).map_err(error)?;
                let attempts: i64 = row.try_get(5).map_err(error)?;
                Ok(OutboxItem {
                    seq,
                    notice_id: row.try_get(1).map_err(error)?,
                    recipient: row.try_get(2).map_err(error)?,
                    envelope: row.try_get(3).map_err(error)?,
                    state: parse_state(seq, state)?,
                    attempts: parse_attempts(format_args!("outbox row {seq}"), attempts)?,
                    next_attempt_at_ms: row.try_get(6).map_err(error)?,
                    expires_at_ms: row.try_get(7).map_err(error)?,
                    last_error: row.try_get(8).map_err(error)?,
                    purged_at_ms: row.try_get(9).map_err(error)?,
                })
            }

            /// Columns [`inbox_record`] reads, in its order.
            /// Columns qualified, so a query may join `inbox` with a table
            /// that has a `cursor` too.
            const INBOX_RECORD_SELECT: &str =
                "SELECT inbox.cursor, inbox.sender, inbox.notice_id, inbox.envelope, \
                        inbox.received_at_ms, inbox.acked_at_ms, inbox.receipt, inbox.purged_at_ms \
                 FROM inbox";

            fn inbox_record(
                operation: &'static str,
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<InboxRecord, StoreError> {
                let error = query_error(operation);
                let cursor: i64 = row.try_get(0).map_err(error)?;
                Ok(InboxRecord {
                    cursor: parse_cursor(cursor)?,
                    sender: row.try_get(1).map_err(error)?,
                    notice_id: row.try_get(2).map_err(error)?,
                    envelope: row.try_get(3).map_err(error)?,
                    received_at_ms: row.try_get(4).map_err(error)?,
                    acked_at_ms: row.try_get(5).map_err(error)?,
                    receipt: row.try_get(6).map_err(error)?,
                    placements: Vec::new(),
                    purged_at_ms: row.try_get(7).map_err(error)?,
                })
            }

            /// Fills in the team-inbox placements of `records`.
            async fn with_placements(
                pool: &sqlx::Pool<$db>,
                operation: &'static str,
                mut records: Vec<InboxRecord>,
            ) -> Result<Vec<InboxRecord>, StoreError> {
                let error = query_error(operation);
                let cursors: Vec<i64> = records
                    .iter()
                    .filter_map(|record| i64::try_from(record.cursor).ok())
                    .collect();
                let mut by_cursor: HashMap<i64, Vec<Placement>> = HashMap::new();
                for chunk in cursors.chunks($max_binds) {
                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT cursor, inbox_name, read_by, read_at_ms, handled_by, handled_at_ms, handling, \
                                escalated_at_ms, escalated_from, position \
                         FROM inbox_placements WHERE cursor IN (",
                    );
                    let mut list = query.separated(", ");
                    for cursor in chunk {
                        list.push_bind(*cursor);
                    }
                    list.push_unseparated(") ORDER BY cursor, inbox_name");
                    let rows = query.build().persistent(false).fetch_all(pool).await.map_err(error)?;
                    for row in rows {
                        let cursor: i64 = row.try_get(0).map_err(error)?;
                        by_cursor.entry(cursor).or_default().push(Placement {
                            inbox: row.try_get(1).map_err(error)?,
                            read_by: row.try_get(2).map_err(error)?,
                            read_at_ms: row.try_get(3).map_err(error)?,
                            handled_by: row.try_get(4).map_err(error)?,
                            handled_at_ms: row.try_get(5).map_err(error)?,
                            handling: row.try_get(6).map_err(error)?,
                            escalated_at_ms: row.try_get(7).map_err(error)?,
                            escalated_from: row.try_get(8).map_err(error)?,
                            position: parse_position(row.try_get(9).map_err(error)?)?,
                        });
                    }
                }
                for record in &mut records {
                    if let Ok(cursor) = i64::try_from(record.cursor) {
                        record.placements = by_cursor.remove(&cursor).unwrap_or_default();
                    }
                }
                Ok(records)
            }

            /// The position the next placement gets. The caller holds the
            /// audit lock (taken before anything is placed), so no other
            /// writer assigns positions until it commits: positions then
            /// follow commit order, and a reader resuming after one never
            /// skips a placement committed later with a smaller one.
            async fn next_position(
                tx: &mut Transaction<'static, $db>,
                operation: &'static str,
            ) -> Result<i64, StoreError> {
                let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM inbox_placements")
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(query_error(operation))?;
                Ok(newest + 1)
            }

            /// Appends `sql` and binds `value` when there is one: an optional
            /// filter condition.
            fn push_condition<'t, T>(query: &mut QueryBuilder<$db>, sql: &str, value: Option<T>)
            where
                T: sqlx::Encode<'t, $db> + sqlx::Type<$db>,
            {
                if let Some(value) = value {
                    query.push(sql);
                    query.push_bind(value);
                }
            }

            /// Columns [`audit_entry`] reads, in its order.
            const AUDIT_ENTRY_SELECT: &str =
                "SELECT seq, at_ms, actor, action, notice_id, peer, citizen_ref, detail, prev_mac, mac \
                 FROM audit_log";

            fn audit_entry(
                operation: &'static str,
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<AuditEntry, StoreError> {
                let error = query_error(operation);
                let action: &str = row.try_get(3).map_err(error)?;
                Ok(AuditEntry {
                    seq: row.try_get(0).map_err(error)?,
                    event: AuditEvent {
                        at_ms: row.try_get(1).map_err(error)?,
                        actor: row.try_get(2).map_err(error)?,
                        // Only an edit of the file writes an unknown action; read
                        // as `admin`, the entry then fails its MAC check, which is
                        // where `audit verify` reports it.
                        action: AuditAction::parse(action).unwrap_or(AuditAction::Admin),
                        notice_id: row.try_get(4).map_err(error)?,
                        peer: row.try_get(5).map_err(error)?,
                        citizen: row
                            .try_get::<Option<Vec<u8>>, _>(6)
                            .map_err(error)?
                            .map(CitizenRef),
                        detail: row.try_get(7).map_err(error)?,
                    },
                    prev_mac: row.try_get(8).map_err(error)?,
                    mac: row.try_get(9).map_err(error)?,
                })
            }

            /// Appends `events` to the audit chain inside `tx`, after the
            /// newest entry committed before it.
            async fn append_audit(
                key: Option<&ChainKey>,
                tx: &mut Transaction<'static, $db>,
                events: Vec<AuditEvent>,
            ) -> Result<(), StoreError> {
                const OP: &str = "append_audit";
                let error = query_error(OP);
                if events.is_empty() {
                    return Ok(());
                }
                let key = key.ok_or(StoreError::NoAuditKey)?;
                <$store>::lock_audit(tx).await?;
                let last = sqlx::query("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(error)?;
                let (last_seq, last_mac): (i64, Vec<u8>) = match last {
                    Some(row) => (row.try_get(0).map_err(error)?, row.try_get(1).map_err(error)?),
                    None => (0, GENESIS_MAC.to_vec()),
                };
                let mut rows = chain(key, last_seq, last_mac, events).into_iter().peekable();
                while rows.peek().is_some() {
                    let mut query = QueryBuilder::<$db>::new(
                        "INSERT INTO audit_log \
                         (seq, at_ms, actor, action, notice_id, peer, citizen_ref, detail, prev_mac, mac) ",
                    );
                    query.push_values(rows.by_ref().take(rows_per_chunk($max_binds, 10)), |mut row, entry| {
                        let AuditEntry { seq, event, prev_mac, mac } = entry;
                        row.push_bind(seq)
                            .push_bind(event.at_ms)
                            .push_bind(event.actor)
                            .push_bind(event.action.as_str())
                            .push_bind(event.notice_id)
                            .push_bind(event.peer)
                            .push_bind(event.citizen.map(|citizen| citizen.0))
                            .push_bind(event.detail)
                            .push_bind(prev_mac)
                            .push_bind(mac);
                    });
                    query
                        .build()
                        .persistent(false)
                        .execute(&mut **tx)
                        .await
                        .map_err(error)?;
                }
                Ok(())
            }

            /// The notice id and sender of the item at `cursor` in team inbox
            /// `inbox`, or the error naming what does not exist.
            async fn placement_notice(
                tx: &mut Transaction<'static, $db>,
                operation: &'static str,
                cursor: u64,
                row_cursor: i64,
                inbox: &str,
            ) -> Result<(String, String), StoreError> {
                let error = query_error(operation);
                let mut query = QueryBuilder::<$db>::new(
                    "SELECT i.notice_id, i.sender, p.inbox_name FROM inbox i \
                     LEFT JOIN inbox_placements p ON p.cursor = i.cursor AND p.inbox_name = ",
                );
                query.push_bind(inbox);
                query.push(" WHERE i.cursor = ");
                query.push_bind(row_cursor);
                let Some(row) = query.build().fetch_optional(&mut **tx).await.map_err(error)? else {
                    return Err(StoreError::NoSuchInboxItem(cursor));
                };
                let placed: Option<String> = row.try_get(2).map_err(error)?;
                if placed.is_none() {
                    return Err(StoreError::NoSuchPlacement {
                        cursor,
                        inbox: inbox.to_owned(),
                    });
                }
                Ok((row.try_get(0).map_err(error)?, row.try_get(1).map_err(error)?))
            }

            /// Applies care-team changes inside `tx`: per (citizen,
            /// organisation, unit) the contact with the latest `as_of_ms`
            /// stays, whether it came in this batch or before; then the
            /// contacts of withdrawn notices go (also those learned in this
            /// batch).
            async fn change_care_team(
                tx: &mut Transaction<'static, $db>,
                operation: &'static str,
                changes: Vec<&CareTeamChange>,
            ) -> Result<(), StoreError> {
                let error = query_error(operation);
                // One statement may not touch a row twice (PostgreSQL
                // refuses): the latest per key of this batch goes in.
                let mut latest: BTreeMap<(&[u8], &str, &str), &CareTeamContact> = BTreeMap::new();
                let mut forget = Vec::new();
                for change in changes {
                    let contact = match change {
                        CareTeamChange::Learn(contact) => contact,
                        CareTeamChange::Forget { org, notice_id } => {
                            forget.push((org.as_deref(), notice_id.as_str()));
                            continue;
                        }
                    };
                    let key = (contact.citizen.0.as_slice(), contact.org.as_str(), contact.unit.as_str());
                    match latest.entry(key) {
                        std::collections::btree_map::Entry::Vacant(entry) => {
                            entry.insert(contact);
                        }
                        std::collections::btree_map::Entry::Occupied(mut entry) => {
                            if contact.as_of_ms >= entry.get().as_of_ms {
                                entry.insert(contact);
                            }
                        }
                    }
                }
                let rows: Vec<&CareTeamContact> = latest.into_values().collect();
                for chunk in rows.chunks(rows_per_chunk($max_binds, 7)) {
                    let mut query = QueryBuilder::<$db>::new(
                        "INSERT INTO care_team \
                         (citizen_ref, org, unit, contact, as_of_ms, learned_at_ms, notice_id) ",
                    );
                    query.push_values(chunk, |mut row, contact| {
                        row.push_bind(contact.citizen.0.as_slice())
                            .push_bind(contact.org.as_str())
                            .push_bind(contact.unit.as_str())
                            .push_bind(contact.contact.as_slice())
                            .push_bind(contact.as_of_ms)
                            .push_bind(contact.learned_at_ms)
                            .push_bind(contact.notice_id.as_str());
                    });
                    query.push(
                        " ON CONFLICT (citizen_ref, org, unit) DO UPDATE SET \
                         contact = excluded.contact, as_of_ms = excluded.as_of_ms, \
                         learned_at_ms = excluded.learned_at_ms, notice_id = excluded.notice_id \
                         WHERE excluded.as_of_ms >= care_team.as_of_ms",
                    );
                    query.build().persistent(false).execute(&mut **tx).await.map_err(error)?;
                }
                for (org, notice_id) in forget {
                    let mut query = QueryBuilder::<$db>::new("DELETE FROM care_team WHERE notice_id = ");
                    query.push_bind(notice_id);
                    if let Some(org) = org {
                        query.push(" AND org = ");
                        query.push_bind(org);
                    }
                    query.build().persistent(false).execute(&mut **tx).await.map_err(error)?;
                }
                Ok(())
            }

            /// The audit event for one outbox update of the row to `recipient`
            /// of `notice_id`.
            fn outbox_event(update: &OutboxUpdate, notice_id: &str, recipient: &str) -> AuditEvent {
                let (at_ms, action, detail) = match update {
                    OutboxUpdate::InFlight { attempts, .. } => {
                        ($crate::now_ms(), AuditAction::SendAttempt, format!("attempt {attempts}"))
                    }
                    OutboxUpdate::Delivered { at_ms, .. } => {
                        (*at_ms, AuditAction::Delivered, "signed receipt stored".to_owned())
                    }
                    OutboxUpdate::Failed { at_ms, reason, receipt, .. } => {
                        let by = if receipt.is_some() { "rejected by the peer: " } else { "" };
                        (*at_ms, AuditAction::SendFailed, format!("{by}{reason}"))
                    }
                    OutboxUpdate::Retry { next_attempt_at_ms, error, .. } => (
                        $crate::now_ms(),
                        AuditAction::SendRetry,
                        format!("{error}; next attempt at {next_attempt_at_ms}"),
                    ),
                };
                AuditEvent::new(at_ms, "daemon", action)
                    .notice(notice_id)
                    .peer(recipient)
                    .detail(detail)
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
                async fn flush(&mut self, tx: &mut Transaction<'static, $db>) -> Result<(), StoreError> {
                    const OP: &str = "update_outbox";
                    let error = query_error(OP);

                    for (attempts, seqs) in std::mem::take(&mut self.in_flight) {
                        for chunk in seqs.chunks($max_binds - 1) {
                            let mut query = QueryBuilder::<$db>::new(
                                "UPDATE outbox SET state = 'in_flight', attempts = ",
                            );
                            query.push_bind(i64::from(attempts));
                            query.push(format_args!(" WHERE state IN {OPEN_STATES} AND seq IN ("));
                            push_ids(&mut query, chunk);
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
                        let mut query = QueryBuilder::<$db>::new("WITH v (seq, receipt, at_ms) AS (");
                        query.push_values(rows.by_ref().take(rows_per_chunk($max_binds, 3)), |mut row, item| {
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
                            QueryBuilder::<$db>::new("WITH v (seq, reason, receipt, at_ms) AS (");
                        query.push_values(rows.by_ref().take(rows_per_chunk($max_binds, 4)), |mut row, item| {
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
                            QueryBuilder::<$db>::new("WITH v (seq, next_attempt_at_ms, error) AS (");
                        query.push_values(rows.by_ref().take(rows_per_chunk($max_binds, 3)), |mut row, item| {
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
            impl Store for $store {
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
                    // Before the first outbox seq is drawn: with several
                    // instances on one database, seqs then follow commit order,
                    // so whoever reads the outbox past a seq never misses a row
                    // committed later with a smaller one. The entries appended
                    // below need this lock anyway.
                    <$store>::lock_audit(&mut tx).await?;

                    // Keys whose notice this batch stored.
                    let mut stored_keys: HashSet<String> = HashSet::new();
                    for chunk in firsts.chunks(rows_per_chunk($max_binds, 5)) {
                        let mut query = QueryBuilder::<$db>::new(
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
                    for chunk in known_keys.chunks($max_binds) {
                        let mut query = QueryBuilder::<$db>::new(
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
                    for chunk in new_rows.chunks(rows_per_chunk($max_binds, 5)) {
                        let mut query = QueryBuilder::<$db>::new(
                            "INSERT INTO outbox (notice_id, recipient, envelope, next_attempt_at_ms, shard, state) ",
                        );
                        query.push_values(chunk, |mut row, &(index, item)| {
                            let notice = &batch[index];
                            let shard = shard_of(notice.citizen.as_ref(), &notice.notice_id);
                            row.push_bind(notice.notice_id.as_str())
                                .push_bind(notice.recipients[item].recipient.as_str())
                                .push_bind(std::mem::take(&mut envelopes[index][item]))
                                .push_bind(notice.created_at_ms)
                                .push_bind(i32::from(shard))
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

                    let events = firsts
                        .iter()
                        .map(|&index| &batch[index])
                        .filter(|notice| stored_keys.contains(&notice.idempotency_key))
                        .map(|notice| {
                            let recipients: Vec<&str> =
                                notice.recipients.iter().map(|item| item.recipient.as_str()).collect();
                            AuditEvent::new(notice.created_at_ms, notice.actor.as_str(), AuditAction::Submit)
                                .notice(notice.notice_id.as_str())
                                .citizen(notice.citizen.clone())
                                .detail(format!("to {}", recipients.join(", ")))
                        })
                        .collect();
                    let changes = firsts
                        .iter()
                        .map(|&index| &batch[index])
                        .filter(|notice| stored_keys.contains(&notice.idempotency_key))
                        .filter_map(|notice| notice.care_team.as_ref())
                        .collect();
                    change_care_team(&mut tx, OP, changes).await?;
                    append_audit(self.audit_key.as_ref(), &mut tx, events).await?;

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
                    let mut query = QueryBuilder::<$db>::new(OUTBOX_ITEM_SELECT);
                    query.push(" WHERE o.recipient = ");
                    query.push_bind(recipient);
                    // A purged row is finished; the check only guards against sending
                    // an empty body should a damaged row say otherwise.
                    query.push(
                        " AND o.state IN ('pending', 'in_flight') AND o.purged_at_ms IS NULL \
                         ORDER BY o.seq",
                    );
                    let rows = query.build().fetch_all(&self.pool).await.map_err(query_error(OP))?;
                    rows.iter().map(|row| outbox_item(OP, row)).collect()
                }

                async fn probe_write(&self, now_ms: Millis) -> Result<(), StoreError> {
                    const OP: &str = "probe_write";
                    let error = query_error(OP);
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new(
                        "INSERT INTO write_probe (id, probed_at_ms) VALUES (1, ",
                    );
                    query.push_bind(now_ms);
                    query.push(") ON CONFLICT (id) DO UPDATE SET probed_at_ms = excluded.probed_at_ms");
                    query.build().execute(&mut *tx).await.map_err(error)?;
                    tx.commit().await.map_err(error)
                }

                async fn list_outbox(&self, filter: OutboxFilter) -> Result<Vec<OutboxItem>, StoreError> {
                    const OP: &str = "list_outbox";
                    let mut query = QueryBuilder::<$db>::new(OUTBOX_ITEM_SELECT);
                    query.push(" WHERE 1 = 1");
                    push_condition(&mut query, " AND o.state = ", filter.state.map(|state| state.as_str()));
                    push_condition(&mut query, " AND o.seq < ", filter.before_seq);
                    push_condition(&mut query, " AND o.notice_id = ", filter.notice_id);
                    query.push(" ORDER BY o.seq DESC LIMIT ");
                    query.push_bind(i64::from(filter.limit));
                    let rows = query.build().fetch_all(&self.pool).await.map_err(query_error(OP))?;
                    rows.iter().map(|row| outbox_item(OP, row)).collect()
                }

                async fn reopen_outbox(&self, seqs: Vec<i64>, now_ms: Millis) -> Result<u64, StoreError> {
                    const OP: &str = "reopen_outbox";
                    let error = query_error(OP);
                    let mut tx = self.begin_write(OP).await?;
                    let mut reopened = 0;
                    for chunk in seqs.chunks($max_binds - 2) {
                        let mut query = QueryBuilder::<$db>::new(
                            "UPDATE outbox SET state = 'pending', attempts = 0, last_error = NULL, \
                             receipt = NULL, finished_at_ms = NULL, next_attempt_at_ms = ",
                        );
                        query.push_bind(now_ms);
                        query.push(
                            " WHERE state = 'failed' AND purged_at_ms IS NULL AND notice_id IN \
                             (SELECT notice_id FROM notices WHERE expires_at_ms > ",
                        );
                        query.push_bind(now_ms);
                        query.push(") AND seq IN (");
                        push_ids(&mut query, chunk);
                        reopened += query.build().execute(&mut *tx).await.map_err(error)?.rows_affected();
                    }
                    tx.commit().await.map_err(error)?;
                    Ok(reopened)
                }

                async fn outbox_open(&self) -> Result<Vec<OpenOutbox>, StoreError> {
                    const OP: &str = "outbox_open";
                    let error = query_error(OP);
                    let rows = sqlx::query(
                        "SELECT o.recipient, COUNT(*), MIN(n.created_at_ms), \
                                SUM(CASE WHEN o.state = 'in_flight' THEN 1 ELSE 0 END) \
                         FROM outbox o JOIN notices n ON n.notice_id = o.notice_id \
                         WHERE o.state IN ('pending', 'in_flight') \
                         GROUP BY o.recipient ORDER BY o.recipient",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(error)?;
                    rows.iter()
                        .map(|row: &<$db as sqlx::Database>::Row| {
                            Ok(OpenOutbox {
                                recipient: row.try_get(0).map_err(error)?,
                                notices: parse_count("open", row.try_get(1).map_err(error)?)?,
                                oldest_created_at_ms: row.try_get(2).map_err(error)?,
                                in_flight: parse_count("in flight", row.try_get(3).map_err(error)?)?,
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

                    // Which notice and peer each row is, for the audit entries.
                    let mut rows_of: HashMap<i64, (String, String)> = HashMap::with_capacity(updates.len());
                    let all_seqs: Vec<i64> = updates
                        .iter()
                        .map(|update| match update {
                            OutboxUpdate::InFlight { seq, .. }
                            | OutboxUpdate::Delivered { seq, .. }
                            | OutboxUpdate::Failed { seq, .. }
                            | OutboxUpdate::Retry { seq, .. } => *seq,
                        })
                        .collect();
                    for chunk in all_seqs.chunks($max_binds) {
                        let mut query =
                            QueryBuilder::<$db>::new("SELECT seq, notice_id, recipient FROM outbox WHERE seq IN (");
                        push_ids(&mut query, chunk);
                        let rows = query
                            .build()
                            .persistent(false)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(query_error(OP))?;
                        for row in rows {
                            let seq: i64 = row.try_get(0).map_err(query_error(OP))?;
                            let notice_id: String = row.try_get(1).map_err(query_error(OP))?;
                            let recipient: String = row.try_get(2).map_err(query_error(OP))?;
                            rows_of.insert(seq, (notice_id, recipient));
                        }
                    }
                    let events: Vec<AuditEvent> = updates
                        .iter()
                        .zip(&all_seqs)
                        .filter_map(|(update, seq)| {
                            rows_of
                                .get(seq)
                                .map(|(notice_id, recipient)| outbox_event(update, notice_id, recipient))
                        })
                        .collect();

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
                    append_audit(self.audit_key.as_ref(), &mut tx, events).await?;
                    tx.commit().await.map_err(query_error(OP))
                }

                async fn delivery(&self, notice_id: &str) -> Result<Option<NoticeDelivery>, StoreError> {
                    const OP: &str = "delivery";
                    let error = query_error(OP);
                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT n.created_at_ms, o.seq, o.recipient, o.state, o.attempts, \
                                o.next_attempt_at_ms, o.last_error, o.finished_at_ms, o.receipt \
                         FROM notices n LEFT JOIN outbox o ON o.notice_id = n.notice_id \
                         WHERE n.notice_id = ",
                    );
                    query.push_bind(notice_id);
                    query.push(" ORDER BY o.seq");
                    let rows = query.build().fetch_all(&self.pool).await.map_err(error)?;
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
                            attempts: parse_attempts(format_args!("outbox row {seq}"), attempts)?,
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
                    // Before the first cursor is drawn: with several instances
                    // on one database, cursors and positions then follow commit
                    // order (see `next_position`). The entries appended below
                    // need this lock anyway.
                    <$store>::lock_audit(&mut tx).await?;

                    // (sender, notice id) stored now → cursor.
                    let mut stored: HashMap<(String, String), i64> = HashMap::with_capacity(firsts.len());
                    for chunk in firsts.chunks(rows_per_chunk($max_binds, 5)) {
                        let mut query = QueryBuilder::<$db>::new(
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
                    for chunk in known_keys.chunks(rows_per_chunk($max_binds, 2)) {
                        let mut query = QueryBuilder::<$db>::new("WITH k (sender, notice_id) AS (");
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

                    let placements: Vec<(i64, &str, &str)> = firsts
                        .iter()
                        .filter_map(|&index| {
                            let notice = &batch[index];
                            stored
                                .get(&(notice.sender.clone(), notice.notice_id.clone()))
                                .map(|&cursor| (cursor, notice))
                        })
                        .flat_map(|(cursor, notice)| {
                            notice
                                .inboxes
                                .iter()
                                .map(move |inbox| (cursor, inbox.as_str(), notice.kind.as_str()))
                        })
                        .collect();
                    let mut position = next_position(&mut tx, OP).await?;
                    for chunk in placements.chunks(rows_per_chunk($max_binds, 4)) {
                        let mut query = QueryBuilder::<$db>::new(
                            "INSERT INTO inbox_placements (cursor, inbox_name, kind, position) ",
                        );
                        query.push_values(chunk, |mut row, (cursor, inbox, kind)| {
                            row.push_bind(*cursor).push_bind(*inbox).push_bind(*kind).push_bind(position);
                            position += 1;
                        });
                        query.push(" ON CONFLICT (cursor, inbox_name) DO NOTHING");
                        query
                            .build()
                            .persistent(false)
                            .execute(&mut *tx)
                            .await
                            .map_err(error)?;
                    }

                    let receipts: Vec<&HandledReceipt> = firsts
                        .iter()
                        .map(|&index| &batch[index])
                        .filter(|notice| stored.contains_key(&(notice.sender.clone(), notice.notice_id.clone())))
                        .filter_map(|notice| notice.handled.as_ref())
                        .collect();
                    for chunk in receipts.chunks(rows_per_chunk($max_binds, 6)) {
                        let mut query = QueryBuilder::<$db>::new(
                            "INSERT INTO handled_receipts (notice_id, from_org, inbox, status, handled, received_at_ms) ",
                        );
                        query.push_values(chunk, |mut row, receipt| {
                            row.push_bind(receipt.notice_id.as_str())
                                .push_bind(receipt.from_org.as_str())
                                .push_bind(receipt.inbox.as_str())
                                .push_bind(receipt.status.as_str())
                                .push_bind(receipt.handled.as_slice())
                                .push_bind(receipt.received_at_ms);
                        });
                        // The first receipt of each status for a team stays, like
                        // the first handler.
                        query.push(" ON CONFLICT (notice_id, from_org, inbox, status) DO NOTHING");
                        query.build().persistent(false).execute(&mut *tx).await.map_err(error)?;
                    }

                    let changes = firsts
                        .iter()
                        .map(|&index| &batch[index])
                        .filter(|notice| stored.contains_key(&(notice.sender.clone(), notice.notice_id.clone())))
                        .filter_map(|notice| notice.care_team.as_ref())
                        .collect();
                    change_care_team(&mut tx, OP, changes).await?;

                    // A webhook event per new placement in an inbox with a webhook, in
                    // this transaction: a placement is never without its event.
                    let hooks: Vec<(i64, &str, &IncomingNotice)> = firsts
                        .iter()
                        .filter_map(|&index| {
                            let notice = &batch[index];
                            stored
                                .get(&(notice.sender.clone(), notice.notice_id.clone()))
                                .map(|&cursor| (cursor, notice))
                        })
                        .flat_map(|(cursor, notice)| {
                            notice
                                .webhooks
                                .iter()
                                .filter(|inbox| notice.inboxes.contains(inbox))
                                .map(move |inbox| (cursor, inbox.as_str(), notice))
                        })
                        .collect();
                    for chunk in hooks.chunks(rows_per_chunk($max_binds, 6)) {
                        let mut query = QueryBuilder::<$db>::new(
                            "INSERT INTO webhook_events \
                             (inbox, cursor, kind, state, next_attempt_at_ms, created_at_ms, updated_at_ms) ",
                        );
                        query.push_values(chunk, |mut row, (cursor, inbox, notice)| {
                            row.push_bind(*inbox)
                                .push_bind(*cursor)
                                .push_bind(notice.kind.as_str())
                                .push("'pending'")
                                .push_bind(notice.received_at_ms)
                                .push_bind(notice.received_at_ms)
                                .push_bind(notice.received_at_ms);
                        });
                        query.push(" ON CONFLICT (cursor, inbox) DO NOTHING");
                        query
                            .build()
                            .persistent(false)
                            .execute(&mut *tx)
                            .await
                            .map_err(error)?;
                    }

                    let events = batch
                        .iter()
                        .enumerate()
                        .map(|(index, notice)| {
                            let key = (notice.sender.clone(), notice.notice_id.clone());
                            let first = first_copy
                                .get(&(notice.sender.as_str(), notice.notice_id.as_str()))
                                .copied();
                            let event = match stored.get(&key) {
                                Some(cursor) if first == Some(index) => {
                                    AuditEvent::new(notice.received_at_ms, format!("peer {}", notice.sender), AuditAction::Received)
                                        .detail(format!("inbox cursor {cursor}, to {}", notice.inboxes.join(", ")))
                                }
                                _ => AuditEvent::new(
                                    notice.received_at_ms,
                                    format!("peer {}", notice.sender),
                                    AuditAction::ReceivedDuplicate,
                                )
                                .detail("answered with the stored receipt"),
                            };
                            event
                                .notice(notice.notice_id.as_str())
                                .peer(notice.sender.as_str())
                                .citizen(notice.citizen.clone())
                        })
                        .collect();
                    append_audit(self.audit_key.as_ref(), &mut tx, events).await?;
                    if let Some(&newest) = stored.values().max() {
                        self.announce_inbox(&mut tx, newest).await?;
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
                    inbox: Option<&str>,
                ) -> Result<Vec<InboxRecord>, StoreError> {
                    const OP: &str = "inbox_after";
                    let error = query_error(OP);
                    let Ok(after) = i64::try_from(after_cursor) else {
                        // Cursors are positive i64 (SQLite rowids, PostgreSQL BIGINT
                        // identities): none lies beyond i64::MAX.
                        return Ok(Vec::new());
                    };
                    let mut query = QueryBuilder::<$db>::new(INBOX_RECORD_SELECT);
                    query.push(" WHERE cursor > ");
                    query.push_bind(after);
                    if unacked_only {
                        query.push(" AND acked_at_ms IS NULL");
                    }
                    if let Some(inbox) = inbox {
                        query.push(" AND cursor IN (SELECT cursor FROM inbox_placements WHERE inbox_name = ");
                        query.push_bind(inbox);
                        query.push(")");
                    }
                    query.push(" ORDER BY cursor LIMIT ");
                    query.push_bind(i64::from(limit));
                    let rows = query.build().fetch_all(&self.pool).await.map_err(error)?;
                    let records = rows.iter().map(|row| inbox_record(OP, row)).collect::<Result<Vec<_>, _>>()?;
                    with_placements(&self.pool, OP, records).await
                }

                async fn newest_inbox_cursor(&self) -> Result<u64, StoreError> {
                    const OP: &str = "newest_inbox_cursor";
                    let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(cursor), 0) FROM inbox")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(query_error(OP))?;
                    parse_cursor(newest)
                }

                async fn team_inbox_after(
                    &self,
                    inbox: &str,
                    after_position: u64,
                    limit: u32,
                    unacked_only: bool,
                ) -> Result<Vec<InboxRecord>, StoreError> {
                    const OP: &str = "team_inbox_after";
                    let error = query_error(OP);
                    let Ok(after) = i64::try_from(after_position) else {
                        return Ok(Vec::new());
                    };
                    let mut query = QueryBuilder::<$db>::new(INBOX_RECORD_SELECT);
                    query.push(" JOIN inbox_placements p ON p.cursor = inbox.cursor WHERE p.inbox_name = ");
                    query.push_bind(inbox);
                    query.push(" AND p.position > ");
                    query.push_bind(after);
                    if unacked_only {
                        query.push(" AND inbox.acked_at_ms IS NULL");
                    }
                    query.push(" ORDER BY p.position LIMIT ");
                    query.push_bind(i64::from(limit));
                    let rows = query.build().fetch_all(&self.pool).await.map_err(error)?;
                    let records = rows.iter().map(|row| inbox_record(OP, row)).collect::<Result<Vec<_>, _>>()?;
                    with_placements(&self.pool, OP, records).await
                }

                async fn newest_position(&self) -> Result<u64, StoreError> {
                    const OP: &str = "newest_position";
                    let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM inbox_placements")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(query_error(OP))?;
                    parse_cursor(newest)
                }

                async fn inbox_by_notice(&self, notice_id: &str) -> Result<Vec<InboxRecord>, StoreError> {
                    const OP: &str = "inbox_by_notice";
                    let mut query = QueryBuilder::<$db>::new(INBOX_RECORD_SELECT);
                    query.push(" WHERE notice_id = ");
                    query.push_bind(notice_id);
                    query.push(" ORDER BY cursor");
                    let rows = query.build().fetch_all(&self.pool).await.map_err(query_error(OP))?;
                    let records = rows.iter().map(|row| inbox_record(OP, row)).collect::<Result<Vec<_>, _>>()?;
                    with_placements(&self.pool, OP, records).await
                }

                async fn ack_inbox(&self, cursor: u64, at_ms: Millis, actor: &str) -> Result<bool, StoreError> {
                    const OP: &str = "ack_inbox";
                    let error = query_error(OP);
                    let Ok(row_cursor) = i64::try_from(cursor) else {
                        return Err(StoreError::NoSuchInboxItem(cursor));
                    };
                    // In a write transaction like every other write, so a backend
                    // that serialises its writers (SQLite) queues this one too.
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new("UPDATE inbox SET acked_at_ms = ");
                    query.push_bind(at_ms);
                    query.push(" WHERE cursor = ");
                    query.push_bind(row_cursor);
                    query.push(" AND acked_at_ms IS NULL RETURNING notice_id, sender");
                    if let Some(row) = query.build().fetch_optional(&mut *tx).await.map_err(error)? {
                        let notice_id: String = row.try_get(0).map_err(error)?;
                        let sender: String = row.try_get(1).map_err(error)?;
                        let event = AuditEvent::new(at_ms, actor, AuditAction::InboxAck)
                            .notice(notice_id)
                            .peer(sender)
                            .detail(format!("inbox cursor {cursor}"));
                        append_audit(self.audit_key.as_ref(), &mut tx, vec![event]).await?;
                        tx.commit().await.map_err(error)?;
                        return Ok(true);
                    }
                    let mut query = QueryBuilder::<$db>::new("SELECT COUNT(*) FROM inbox WHERE cursor = ");
                    query.push_bind(row_cursor);
                    let exists: i64 = query
                        .build_query_scalar()
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(error)?;
                    tx.commit().await.map_err(error)?;
                    if exists > 0 {
                        Ok(false)
                    } else {
                        Err(StoreError::NoSuchInboxItem(cursor))
                    }
                }

                async fn mark_read(
                    &self,
                    cursor: u64,
                    inbox: &str,
                    reader: &str,
                    at_ms: Millis,
                    actor: &str,
                ) -> Result<bool, StoreError> {
                    const OP: &str = "mark_read";
                    let error = query_error(OP);
                    let row_cursor = i64::try_from(cursor).map_err(|_| StoreError::NoSuchInboxItem(cursor))?;
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new("UPDATE inbox_placements SET read_by = ");
                    query.push_bind(reader);
                    query.push(", read_at_ms = ");
                    query.push_bind(at_ms);
                    query.push(" WHERE cursor = ");
                    query.push_bind(row_cursor);
                    query.push(" AND inbox_name = ");
                    query.push_bind(inbox);
                    query.push(" AND read_at_ms IS NULL");
                    let newly = query.build().execute(&mut *tx).await.map_err(error)?.rows_affected() > 0;
                    let notice = placement_notice(&mut tx, OP, cursor, row_cursor, inbox).await?;
                    if newly {
                        let (notice_id, sender) = notice;
                        let event = AuditEvent::new(at_ms, actor, AuditAction::MarkedRead)
                            .notice(notice_id)
                            .peer(sender)
                            .detail(format!("inbox {inbox}, read by {reader}"));
                        append_audit(self.audit_key.as_ref(), &mut tx, vec![event]).await?;
                    }
                    tx.commit().await.map_err(error)?;
                    Ok(newly)
                }

                async fn handled_receipts(&self, notice_id: &str) -> Result<Vec<HandledReceipt>, StoreError> {
                    const OP: &str = "handled_receipts";
                    let error = query_error(OP);
                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT notice_id, from_org, inbox, handled, received_at_ms, status FROM handled_receipts \
                         WHERE notice_id = ",
                    );
                    query.push_bind(notice_id);
                    query.push(" ORDER BY received_at_ms, from_org, inbox, status");
                    let rows = query.build().fetch_all(&self.pool).await.map_err(error)?;
                    rows.iter()
                        .map(|row| {
                            let notice_id: String = row.try_get(0).map_err(error)?;
                            let status = parse_handled_status(&notice_id, row.try_get::<&str, _>(5).map_err(error)?)?;
                            Ok(HandledReceipt {
                                notice_id,
                                from_org: row.try_get(1).map_err(error)?,
                                inbox: row.try_get(2).map_err(error)?,
                                status,
                                handled: row.try_get(3).map_err(error)?,
                                received_at_ms: row.try_get(4).map_err(error)?,
                            })
                        })
                        .collect()
                }

                async fn handled_since(&self, since_ms: Millis) -> Result<Vec<(u64, String)>, StoreError> {
                    self.placements_since("handled_since", "handled_at_ms", since_ms).await
                }

                async fn open_placements(&self, inboxes: &[String]) -> Result<Vec<OpenPlacement>, StoreError> {
                    const OP: &str = "open_placements";
                    let error = query_error(OP);
                    let mut open = Vec::new();
                    for chunk in inboxes.chunks($max_binds) {
                        let mut query = QueryBuilder::<$db>::new(
                            "SELECT p.cursor, p.inbox_name, p.kind, COALESCE(p.placed_at_ms, i.received_at_ms) \
                             FROM inbox_placements p JOIN inbox i ON i.cursor = p.cursor \
                             WHERE p.handled_at_ms IS NULL AND p.escalated_at_ms IS NULL AND p.inbox_name IN (",
                        );
                        let mut list = query.separated(", ");
                        for inbox in chunk {
                            list.push_bind(inbox.as_str());
                        }
                        list.push_unseparated(") ORDER BY p.cursor");
                        let rows = query.build().persistent(false).fetch_all(&self.pool).await.map_err(error)?;
                        for row in rows {
                            open.push(OpenPlacement {
                                cursor: parse_cursor(row.try_get(0).map_err(error)?)?,
                                inbox: row.try_get(1).map_err(error)?,
                                kind: row.try_get(2).map_err(error)?,
                                placed_at_ms: row.try_get(3).map_err(error)?,
                            });
                        }
                    }
                    open.sort_by_key(|placement| placement.cursor);
                    Ok(open)
                }

                async fn escalate(
                    &self,
                    cursor: u64,
                    inbox: &str,
                    escalate_to: &str,
                    at_ms: Millis,
                    webhook: bool,
                ) -> Result<bool, StoreError> {
                    const OP: &str = "escalate";
                    let error = query_error(OP);
                    let row_cursor = i64::try_from(cursor).map_err(|_| StoreError::NoSuchInboxItem(cursor))?;
                    let mut tx = self.begin_write(OP).await?;
                    // Before the position is drawn (see `next_position`).
                    <$store>::lock_audit(&mut tx).await?;
                    let mut query = QueryBuilder::<$db>::new("UPDATE inbox_placements SET escalated_at_ms = ");
                    query.push_bind(at_ms);
                    query.push(" WHERE cursor = ");
                    query.push_bind(row_cursor);
                    query.push(" AND inbox_name = ");
                    query.push_bind(inbox);
                    query.push(" AND handled_at_ms IS NULL AND escalated_at_ms IS NULL RETURNING kind");
                    let Some(row) = query.build().fetch_optional(&mut *tx).await.map_err(error)? else {
                        tx.commit().await.map_err(error)?;
                        return Ok(false);
                    };
                    let kind: String = row.try_get(0).map_err(error)?;
                    let mut query = QueryBuilder::<$db>::new(
                        "INSERT INTO inbox_placements (cursor, inbox_name, kind, placed_at_ms, escalated_from, position) ",
                    );
                    let position = next_position(&mut tx, OP).await?;
                    query.push_values([()], |mut row, ()| {
                        row.push_bind(row_cursor)
                            .push_bind(escalate_to)
                            .push_bind(kind.as_str())
                            .push_bind(at_ms)
                            .push_bind(inbox)
                            .push_bind(position);
                    });
                    query.push(" ON CONFLICT (cursor, inbox_name) DO NOTHING");
                    query.build().execute(&mut *tx).await.map_err(error)?;
                    if webhook {
                        // Like a received item's: the placement is never without it.
                        let mut query = QueryBuilder::<$db>::new(
                            "INSERT INTO webhook_events \
                             (inbox, cursor, kind, state, next_attempt_at_ms, created_at_ms, updated_at_ms) ",
                        );
                        query.push_values([()], |mut row, ()| {
                            row.push_bind(escalate_to)
                                .push_bind(row_cursor)
                                .push_bind(kind.as_str())
                                .push("'pending'")
                                .push_bind(at_ms)
                                .push_bind(at_ms)
                                .push_bind(at_ms);
                        });
                        query.push(" ON CONFLICT (cursor, inbox) DO NOTHING");
                        query.build().execute(&mut *tx).await.map_err(error)?;
                    }
                    let (notice_id, sender) = placement_notice(&mut tx, OP, cursor, row_cursor, inbox).await?;
                    let event = AuditEvent::new(at_ms, "daemon", AuditAction::Escalated)
                        .notice(notice_id)
                        .peer(sender)
                        .detail(format!("{kind} in {inbox} not handled in time: escalated to {escalate_to}"));
                    append_audit(self.audit_key.as_ref(), &mut tx, vec![event]).await?;
                    // Other instances' streams of `escalate_to` wake too.
                    self.announce_inbox(&mut tx, row_cursor).await?;
                    tx.commit().await.map_err(error)?;
                    Ok(true)
                }

                async fn mark_handled(
                    &self,
                    cursor: u64,
                    inbox: &str,
                    handled: Handled,
                    actor: &str,
                ) -> Result<bool, StoreError> {
                    const OP: &str = "mark_handled";
                    let error = query_error(OP);
                    let row_cursor = i64::try_from(cursor).map_err(|_| StoreError::NoSuchInboxItem(cursor))?;
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new("UPDATE inbox_placements SET handled_by = ");
                    query.push_bind(handled.by.as_str());
                    query.push(", handled_at_ms = ");
                    query.push_bind(handled.at_ms);
                    query.push(", handling = ");
                    query.push_bind(handled.handling);
                    // Handling an item implies having read it.
                    query.push(", read_by = COALESCE(read_by, ");
                    query.push_bind(handled.by.as_str());
                    query.push("), read_at_ms = COALESCE(read_at_ms, ");
                    query.push_bind(handled.at_ms);
                    query.push(") WHERE cursor = ");
                    query.push_bind(row_cursor);
                    query.push(" AND inbox_name = ");
                    query.push_bind(inbox);
                    query.push(" AND handled_at_ms IS NULL");
                    let newly = query.build().execute(&mut *tx).await.map_err(error)?.rows_affected() > 0;
                    let notice = placement_notice(&mut tx, OP, cursor, row_cursor, inbox).await?;
                    if newly {
                        let (notice_id, sender) = notice;
                        let event = AuditEvent::new(handled.at_ms, actor, AuditAction::MarkedHandled)
                            .notice(notice_id)
                            .peer(sender)
                            .detail(format!("inbox {inbox}, handled by {}", handled.by));
                        append_audit(self.audit_key.as_ref(), &mut tx, vec![event]).await?;
                    }
                    tx.commit().await.map_err(error)?;
                    Ok(newly)
                }

                async fn record_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
                    const OP: &str = "record_audit";
                    if events.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write(OP).await?;
                    append_audit(self.audit_key.as_ref(), &mut tx, events).await?;
                    tx.commit().await.map_err(query_error(OP))
                }

                async fn audit_entries(&self, filter: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
                    const OP: &str = "audit_entries";
                    let mut query = QueryBuilder::<$db>::new(AUDIT_ENTRY_SELECT);
                    query.push(" WHERE seq > ");
                    query.push_bind(if filter.newest_first { 0 } else { filter.after_seq });
                    push_condition(&mut query, " AND action = ", filter.action.map(|action| action.as_str()));
                    push_condition(&mut query, " AND at_ms >= ", filter.from_ms);
                    push_condition(&mut query, " AND at_ms < ", filter.to_ms);
                    if let Some(citizen) = filter.citizen {
                        query.push(" AND (citizen_ref = ");
                        query.push_bind(citizen.0.clone());
                        query.push(
                            " OR notice_id IN (SELECT notice_id FROM audit_log \
                             WHERE notice_id IS NOT NULL AND citizen_ref = ",
                        );
                        query.push_bind(citizen.0);
                        query.push("))");
                    }
                    query.push(if filter.newest_first { " ORDER BY seq DESC LIMIT " } else { " ORDER BY seq LIMIT " });
                    query.push_bind(i64::from(filter.limit));
                    let rows = query.build().fetch_all(&self.pool).await.map_err(query_error(OP))?;
                    rows.iter().map(|row| audit_entry(OP, row)).collect()
                }

                async fn purge_bodies(
                    &self,
                    cutoff_ms: Millis,
                    now_ms: Millis,
                    dry_run: bool,
                ) -> Result<PurgeReport, StoreError> {
                    const OP: &str = "purge_bodies";
                    let error = query_error(OP);
                    // The conditions match the partial indexes of migration 0006.
                    let outbox_where = |query: &mut QueryBuilder<$db>| {
                        query.push(
                            " WHERE purged_at_ms IS NULL AND state IN ('delivered', 'failed') \
                             AND finished_at_ms < ",
                        );
                        query.push_bind(cutoff_ms);
                    };
                    let inbox_where = |query: &mut QueryBuilder<$db>| {
                        query.push(
                            " WHERE purged_at_ms IS NULL AND acked_at_ms IS NOT NULL \
                             AND acked_at_ms < ",
                        );
                        query.push_bind(cutoff_ms);
                    };
                    if dry_run {
                        let mut query = QueryBuilder::<$db>::new("SELECT (SELECT COUNT(*) FROM outbox");
                        outbox_where(&mut query);
                        query.push("), (SELECT COUNT(*) FROM inbox");
                        inbox_where(&mut query);
                        query.push(")");
                        let row = query.build().fetch_one(&self.pool).await.map_err(error)?;
                        return Ok(PurgeReport {
                            outbox_rows: parse_count("purgeable outbox", row.try_get(0).map_err(error)?)?,
                            inbox_items: parse_count("purgeable inbox", row.try_get(1).map_err(error)?)?,
                        });
                    }
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new("UPDATE outbox SET envelope = ");
                    query.push_bind(Vec::<u8>::new());
                    query.push(", purged_at_ms = ");
                    query.push_bind(now_ms);
                    outbox_where(&mut query);
                    let outbox_rows = query.build().execute(&mut *tx).await.map_err(error)?.rows_affected();
                    let mut query = QueryBuilder::<$db>::new("UPDATE inbox SET envelope = ");
                    query.push_bind(Vec::<u8>::new());
                    query.push(", purged_at_ms = ");
                    query.push_bind(now_ms);
                    inbox_where(&mut query);
                    let inbox_items = query.build().execute(&mut *tx).await.map_err(error)?.rows_affected();
                    tx.commit().await.map_err(error)?;
                    Ok(PurgeReport {
                        outbox_rows,
                        inbox_items,
                    })
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

                async fn load_store_key(&self, name: &str) -> Result<Option<StoredKey>, StoreError> {
                    const OP: &str = "load_store_key";
                    let error = query_error(OP);
                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT wrapped, kek_id, created_at_ms, updated_at_ms FROM store_keys WHERE name = ",
                    );
                    query.push_bind(name);
                    let Some(row) = query.build().fetch_optional(&self.pool).await.map_err(error)? else {
                        return Ok(None);
                    };
                    Ok(Some(StoredKey {
                        wrapped: row.try_get(0).map_err(error)?,
                        kek_id: row.try_get(1).map_err(error)?,
                        created_at_ms: row.try_get(2).map_err(error)?,
                        updated_at_ms: row.try_get(3).map_err(error)?,
                    }))
                }

                async fn create_store_key(&self, name: &str, key: StoredKey) -> Result<StoredKey, StoreError> {
                    const OP: &str = "create_store_key";
                    let error = query_error(OP);
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new(
                        "INSERT INTO store_keys (name, wrapped, kek_id, created_at_ms, updated_at_ms) VALUES (",
                    );
                    let mut values = query.separated(", ");
                    values
                        .push_bind(name)
                        .push_bind(key.wrapped)
                        .push_bind(key.kek_id)
                        .push_bind(key.created_at_ms)
                        .push_bind(key.updated_at_ms);
                    query.push(") ON CONFLICT (name) DO NOTHING");
                    query.build().execute(&mut *tx).await.map_err(error)?;
                    // The winner's row, ours or one committed before: under
                    // READ COMMITTED the conflicting insert waited for it.
                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT wrapped, kek_id, created_at_ms, updated_at_ms FROM store_keys WHERE name = ",
                    );
                    query.push_bind(name);
                    let row = query.build().fetch_one(&mut *tx).await.map_err(error)?;
                    let stored = StoredKey {
                        wrapped: row.try_get(0).map_err(error)?,
                        kek_id: row.try_get(1).map_err(error)?,
                        created_at_ms: row.try_get(2).map_err(error)?,
                        updated_at_ms: row.try_get(3).map_err(error)?,
                    };
                    tx.commit().await.map_err(error)?;
                    Ok(stored)
                }

                async fn replace_store_key(
                    &self,
                    name: &str,
                    expected: &StoredKey,
                    new: StoredKey,
                ) -> Result<bool, StoreError> {
                    const OP: &str = "replace_store_key";
                    let error = query_error(OP);
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new("UPDATE store_keys SET wrapped = ");
                    query.push_bind(new.wrapped);
                    query.push(", kek_id = ");
                    query.push_bind(new.kek_id);
                    query.push(", updated_at_ms = ");
                    query.push_bind(new.updated_at_ms);
                    query.push(" WHERE name = ");
                    query.push_bind(name);
                    query.push(" AND wrapped = ");
                    query.push_bind(expected.wrapped.as_slice());
                    query.push(" AND kek_id = ");
                    query.push_bind(expected.kek_id.as_str());
                    let result = query.build().execute(&mut *tx).await.map_err(error)?;
                    tx.commit().await.map_err(error)?;
                    Ok(result.rows_affected() == 1)
                }

                async fn claim_webhooks(
                    &self,
                    now_ms: Millis,
                    lease_until_ms: Millis,
                    limit: u32,
                ) -> Result<Vec<WebhookEvent>, StoreError> {
                    const OP: &str = "claim_webhooks";
                    let error = query_error(OP);
                    let mut tx = self.begin_write(OP).await?;
                    // The outer condition is checked again on each row it updates,
                    // so of two senders racing for an event only one claims it.
                    let mut query = QueryBuilder::<$db>::new("UPDATE webhook_events SET next_attempt_at_ms = ");
                    query.push_bind(lease_until_ms);
                    query.push(", updated_at_ms = ");
                    query.push_bind(now_ms);
                    query.push(" WHERE state = 'pending' AND next_attempt_at_ms <= ");
                    query.push_bind(now_ms);
                    query.push(
                        " AND id IN (SELECT id FROM webhook_events \
                         WHERE state = 'pending' AND next_attempt_at_ms <= ",
                    );
                    query.push_bind(now_ms);
                    query.push(" ORDER BY id LIMIT ");
                    query.push_bind(i64::from(limit));
                    query.push(") RETURNING id");
                    let rows = query.build().fetch_all(&mut *tx).await.map_err(error)?;
                    let mut ids = Vec::with_capacity(rows.len());
                    for row in rows {
                        let id: i64 = row.try_get(0).map_err(error)?;
                        ids.push(id);
                    }
                    let mut claimed = Vec::with_capacity(ids.len());
                    for chunk in ids.chunks($max_binds) {
                        let mut query = QueryBuilder::<$db>::new(WEBHOOK_EVENT_SELECT);
                        query.push(" WHERE w.id IN (");
                        let mut list = query.separated(", ");
                        for id in chunk {
                            list.push_bind(*id);
                        }
                        list.push_unseparated(") ORDER BY w.id");
                        let rows = query.build().persistent(false).fetch_all(&mut *tx).await.map_err(error)?;
                        for row in &rows {
                            claimed.push(webhook_event(OP, row)?);
                        }
                    }
                    tx.commit().await.map_err(error)?;
                    Ok(claimed)
                }

                async fn update_webhooks(&self, updates: Vec<WebhookUpdate>) -> Result<(), StoreError> {
                    const OP: &str = "update_webhooks";
                    let error = query_error(OP);
                    if updates.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write(OP).await?;
                    for update in updates {
                        let (id, state, attempts, next, last_error, at_ms) = match update {
                            WebhookUpdate::Delivered { id, attempts, at_ms } => {
                                (id, WebhookState::Delivered, attempts, None, None, at_ms)
                            }
                            WebhookUpdate::Retry { id, attempts, next_attempt_at_ms, error, at_ms } => {
                                (id, WebhookState::Pending, attempts, Some(next_attempt_at_ms), Some(error), at_ms)
                            }
                            WebhookUpdate::Dead { id, attempts, error, at_ms } => {
                                (id, WebhookState::Dead, attempts, None, Some(error), at_ms)
                            }
                        };
                        let mut query = QueryBuilder::<$db>::new("UPDATE webhook_events SET state = ");
                        query.push_bind(state.as_str());
                        query.push(", attempts = ");
                        query.push_bind(i64::from(attempts));
                        if let Some(next) = next {
                            query.push(", next_attempt_at_ms = ");
                            query.push_bind(next);
                        }
                        query.push(", last_error = ");
                        query.push_bind(last_error);
                        query.push(", updated_at_ms = ");
                        query.push_bind(at_ms);
                        query.push(" WHERE id = ");
                        query.push_bind(id);
                        query.push(" AND state = 'pending'");
                        query.build().execute(&mut *tx).await.map_err(error)?;
                    }
                    tx.commit().await.map_err(error)
                }

                async fn list_webhooks(&self, filter: WebhookFilter) -> Result<Vec<WebhookEvent>, StoreError> {
                    const OP: &str = "list_webhooks";
                    let mut query = QueryBuilder::<$db>::new(WEBHOOK_EVENT_SELECT);
                    query.push(" WHERE 1 = 1");
                    if let Some(id) = filter.id {
                        query.push(" AND w.id = ");
                        query.push_bind(id);
                    }
                    if let Some(state) = filter.state {
                        query.push(" AND w.state = ");
                        query.push_bind(state.as_str());
                    }
                    if let Some(inbox) = filter.inbox {
                        query.push(" AND w.inbox = ");
                        query.push_bind(inbox);
                    }
                    query.push(" ORDER BY w.id DESC LIMIT ");
                    query.push_bind(i64::from(filter.limit));
                    let rows = query.build().fetch_all(&self.pool).await.map_err(query_error(OP))?;
                    rows.iter().map(|row| webhook_event(OP, row)).collect()
                }

                async fn retry_webhook(&self, id: i64, now_ms: Millis) -> Result<bool, StoreError> {
                    const OP: &str = "retry_webhook";
                    let error = query_error(OP);
                    let mut tx = self.begin_write(OP).await?;
                    let mut query = QueryBuilder::<$db>::new(
                        "UPDATE webhook_events SET state = 'pending', attempts = 0, last_error = NULL, \
                         next_attempt_at_ms = ",
                    );
                    query.push_bind(now_ms);
                    query.push(", updated_at_ms = ");
                    query.push_bind(now_ms);
                    query.push(" WHERE state = 'dead' AND id = ");
                    query.push_bind(id);
                    let done = query.build().execute(&mut *tx).await.map_err(error)?.rows_affected();
                    tx.commit().await.map_err(error)?;
                    Ok(done > 0)
                }

                async fn webhook_counts(&self) -> Result<Vec<WebhookCount>, StoreError> {
                    const OP: &str = "webhook_counts";
                    let error = query_error(OP);
                    let rows = sqlx::query(
                        "SELECT inbox, state, COUNT(*) FROM webhook_events \
                         GROUP BY inbox, state ORDER BY inbox, state",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(error)?;
                    rows.iter()
                        .map(|row: &<$db as sqlx::Database>::Row| {
                            let state: &str = row.try_get(1).map_err(error)?;
                            Ok(WebhookCount {
                                inbox: row.try_get(0).map_err(error)?,
                                state: parse_webhook_state(0, state)?,
                                count: parse_count("webhook", row.try_get(2).map_err(error)?)?,
                            })
                        })
                        .collect()
                }

                async fn listen_inbox(&self) -> Result<Option<Box<dyn $crate::store::InboxListener>>, StoreError> {
                    self.inbox_listener().await
                }

                async fn care_team(&self, citizen: &CitizenRef) -> Result<Vec<CareTeamContact>, StoreError> {
                    const OP: &str = "care_team";
                    let error = query_error(OP);
                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT org, unit, contact, as_of_ms, learned_at_ms, notice_id FROM care_team \
                         WHERE citizen_ref = ",
                    );
                    query.push_bind(citizen.0.as_slice());
                    query.push(" ORDER BY org, unit");
                    let rows = query.build().fetch_all(&self.pool).await.map_err(error)?;
                    rows.iter()
                        .map(|row| {
                            Ok(CareTeamContact {
                                citizen: citizen.clone(),
                                org: row.try_get(0).map_err(error)?,
                                unit: row.try_get(1).map_err(error)?,
                                contact: row.try_get(2).map_err(error)?,
                                as_of_ms: row.try_get(3).map_err(error)?,
                                learned_at_ms: row.try_get(4).map_err(error)?,
                                notice_id: row.try_get(5).map_err(error)?,
                            })
                        })
                        .collect()
                }

                async fn close(&self) {
                    self.close_pools().await;
                }

                async fn open_seqs(&self, recipient: &str, shards: &[u16]) -> Result<Vec<(i64, u16)>, StoreError> {
                    const OP: &str = "open_seqs";
                    let error = query_error(OP);
                    if shards.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut query = QueryBuilder::<$db>::new("SELECT seq, shard FROM outbox WHERE recipient = ");
                    query.push_bind(recipient);
                    push_shards(&mut query, shards);
                    query.push(format_args!(
                        " AND state IN {OPEN_STATES} AND purged_at_ms IS NULL ORDER BY seq"
                    ));
                    let rows = query.build().persistent(false).fetch_all(&self.pool).await.map_err(error)?;
                    rows.iter()
                        .map(|row| {
                            let seq: i64 = row.try_get(0).map_err(error)?;
                            let shard: i32 = row.try_get(1).map_err(error)?;
                            let shard = u16::try_from(shard)
                                .map_err(|_| StoreError::Corrupt(format!("outbox row {seq} has shard {shard}")))?;
                            Ok((seq, shard))
                        })
                        .collect()
                }

                async fn outbox_rows(&self, seqs: &[i64]) -> Result<Vec<OutboxItem>, StoreError> {
                    const OP: &str = "outbox_rows";
                    let mut items = Vec::with_capacity(seqs.len());
                    for chunk in seqs.chunks($max_binds) {
                        let mut query = QueryBuilder::<$db>::new(OUTBOX_ITEM_SELECT);
                        query.push(" WHERE o.seq IN (");
                        push_ids(&mut query, chunk);
                        let rows = query
                            .build()
                            .persistent(false)
                            .fetch_all(&self.pool)
                            .await
                            .map_err(query_error(OP))?;
                        for row in &rows {
                            items.push(outbox_item(OP, row)?);
                        }
                    }
                    items.sort_by_key(|item| item.seq);
                    Ok(items)
                }

                async fn lease_view(&self, now_ms: Millis) -> Result<LeaseView, StoreError> {
                    const OP: &str = "lease_view";
                    let error = query_error(OP);
                    let rows = sqlx::query("SELECT shard, owner, expires_at_ms FROM outbox_leases ORDER BY shard")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(error)?;
                    let leases = rows
                        .iter()
                        .map(|row: &<$db as sqlx::Database>::Row| lease_row(OP, row))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut query =
                        QueryBuilder::<$db>::new("SELECT instance_id FROM store_instances WHERE expires_at_ms > ");
                    query.push_bind(now_ms);
                    query.push(" ORDER BY instance_id");
                    let live = query
                        .build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(error)?
                        .iter()
                        .map(|row| row.try_get(0).map_err(error))
                        .collect::<Result<Vec<String>, _>>()?;
                    Ok(LeaseView { leases, live })
                }

                async fn apply_leases(
                    &self,
                    instance: &str,
                    now_ms: Millis,
                    lease_ms: i64,
                    plan: &LeasePlan,
                ) -> Result<Vec<Lease>, StoreError> {
                    const OP: &str = "apply_leases";
                    let error = query_error(OP);
                    let until = now_ms.saturating_add(lease_ms);
                    let mut tx = self.begin_write(OP).await?;

                    let mut query = QueryBuilder::<$db>::new("");
                    if plan.leave {
                        query.push("DELETE FROM store_instances WHERE instance_id = ");
                        query.push_bind(instance);
                    } else {
                        query.push("INSERT INTO store_instances (instance_id, expires_at_ms) VALUES (");
                        query.push_bind(instance);
                        query.push(", ");
                        query.push_bind(until);
                        query.push(") ON CONFLICT (instance_id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms");
                    }
                    query.build().execute(&mut *tx).await.map_err(error)?;
                    // Instances gone for an hour are forgotten.
                    let mut query = QueryBuilder::<$db>::new("DELETE FROM store_instances WHERE expires_at_ms < ");
                    query.push_bind(now_ms.saturating_sub(3_600_000));
                    query.build().execute(&mut *tx).await.map_err(error)?;

                    // (statement head, shards, whether to bind the new expiry first)
                    let own: [(&str, &[u16], bool); 2] = [
                        ("DELETE FROM outbox_leases WHERE owner = ", &plan.release, false),
                        ("UPDATE outbox_leases SET expires_at_ms = ", &plan.renew, true),
                    ];
                    for (head, shards, set_until) in own {
                        if shards.is_empty() {
                            continue;
                        }
                        let mut query = QueryBuilder::<$db>::new(head);
                        if set_until {
                            query.push_bind(until);
                            query.push(" WHERE owner = ");
                        }
                        query.push_bind(instance);
                        push_shards(&mut query, shards);
                        query.build().persistent(false).execute(&mut *tx).await.map_err(error)?;
                    }

                    if !plan.claim.is_empty() {
                        // Expired leases of others: lock those no other
                        // round holds (PostgreSQL skips the rest) and take them.
                        let mut query =
                            QueryBuilder::<$db>::new("SELECT shard FROM outbox_leases WHERE expires_at_ms <= ");
                        query.push_bind(now_ms);
                        push_shards(&mut query, &plan.claim);
                        query.push(Self::SKIP_LOCKED);
                        let expired = query
                            .build()
                            .persistent(false)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(error)?
                            .iter()
                            .map(|row| row.try_get::<i32, _>(0).map_err(error))
                            .collect::<Result<Vec<i32>, _>>()?;
                        let expired: Vec<u16> = expired.into_iter().filter_map(|s| u16::try_from(s).ok()).collect();
                        if !expired.is_empty() {
                            let mut query = QueryBuilder::<$db>::new("UPDATE outbox_leases SET owner = ");
                            query.push_bind(instance);
                            query.push(", expires_at_ms = ");
                            query.push_bind(until);
                            query.push(" WHERE expires_at_ms <= ");
                            query.push_bind(now_ms);
                            push_shards(&mut query, &expired);
                            query.build().persistent(false).execute(&mut *tx).await.map_err(error)?;
                        }
                        // Shards nobody held yet.
                        let mut query =
                            QueryBuilder::<$db>::new("INSERT INTO outbox_leases (shard, owner, expires_at_ms) ");
                        query.push_values(&plan.claim, |mut row, shard| {
                            row.push_bind(i32::from(*shard)).push_bind(instance).push_bind(until);
                        });
                        query.push(" ON CONFLICT (shard) DO NOTHING");
                        query.build().persistent(false).execute(&mut *tx).await.map_err(error)?;
                    }

                    let mut query = QueryBuilder::<$db>::new(
                        "SELECT shard, owner, expires_at_ms FROM outbox_leases WHERE owner = ",
                    );
                    query.push_bind(instance);
                    query.push(" ORDER BY shard");
                    let held = query
                        .build()
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(error)?
                        .iter()
                        .map(|row| lease_row(OP, row))
                        .collect::<Result<Vec<_>, _>>()?;
                    tx.commit().await.map_err(error)?;
                    Ok(held)
                }
                async fn escalated_since(&self, since_ms: Millis) -> Result<Vec<(u64, String)>, StoreError> {
                    self.placements_since("escalated_since", "escalated_at_ms", since_ms).await
                }
            }

            impl $store {
                /// (cursor, inbox) of the placements whose time `column` (a
                /// column name, never outside input) is at or after `since_ms`,
                /// oldest first.
                async fn placements_since(
                    &self,
                    operation: &'static str,
                    column: &'static str,
                    since_ms: Millis,
                ) -> Result<Vec<(u64, String)>, StoreError> {
                    let error = query_error(operation);
                    let mut query = QueryBuilder::<$db>::new(
                        format!("SELECT cursor, inbox_name FROM inbox_placements WHERE {column} >= "),
                    );
                    query.push_bind(since_ms);
                    query.push(format!(" ORDER BY {column}, cursor, inbox_name"));
                    let rows = query.build().fetch_all(&self.pool).await.map_err(error)?;
                    rows.iter()
                        .map(|row| Ok((parse_cursor(row.try_get(0).map_err(error)?)?, row.try_get(1).map_err(error)?)))
                        .collect()
                }
            }
        };
    };
}

pub(super) use sql_store;
