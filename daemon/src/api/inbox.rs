//! `ListInbox`, `StreamInbox` and `AckInbox`: reading what peers sent us.
//!
//! A stream first replays the items after the caller's cursor, then waits
//! for the receive path to signal a newer cursor. Delivery to the caller is
//! at least once: a caller that reconnects with the last cursor it
//! processed sees nothing twice and misses nothing.
//!
//! Reads of one team inbox page by the item's position in that inbox
//! instead of its cursor: an escalated item is placed in the escalation
//! inbox long after it was received, and a reader past its cursor would
//! never see it there.

use tokio_stream::Stream;
use tonic::Status;
use tvaers_proto::v1;

use super::ApiState;
use crate::audit::{AuditAction, AuditEvent};
use crate::now_ms;
use crate::store::{InboxRecord, Placement, StoreError};
use prost::Message;

const PAGE: u32 = 100;

/// Where a reader stands: past a cursor of the whole inbox, or past a
/// position in one team inbox.
#[derive(Debug, Clone, Copy)]
enum After<'a> {
    Cursor(u64),
    Position { inbox: &'a str, position: u64 },
}

impl<'a> After<'a> {
    /// From a request's fields: its team inbox, if it names one, decides.
    fn of(inbox: &'a str, after_cursor: u64, after_position: u64) -> Self {
        match team(inbox) {
            Some(inbox) => After::Position {
                inbox,
                position: after_position,
            },
            None => After::Cursor(after_cursor),
        }
    }

    /// After the newest item stored now.
    async fn newest(self, state: &ApiState) -> Result<Self, StoreError> {
        Ok(match self {
            After::Cursor(_) => After::Cursor(state.store.newest_inbox_cursor().await?),
            After::Position { inbox, .. } => After::Position {
                inbox,
                position: state.store.newest_position().await?,
            },
        })
    }

    /// The next page, at most `limit` items.
    async fn page(
        self,
        state: &ApiState,
        limit: u32,
        unacked_only: bool,
    ) -> Result<Vec<v1::InboxItem>, Status> {
        let records = match self {
            After::Cursor(cursor) => {
                state
                    .store
                    .inbox_after(cursor, limit, unacked_only, None)
                    .await
            }
            After::Position { inbox, position } => {
                state
                    .store
                    .team_inbox_after(inbox, position, limit, unacked_only)
                    .await
            }
        }
        .map_err(|e| super::internal("inbox read", e))?;
        let inbox = match self {
            After::Cursor(_) => None,
            After::Position { inbox, .. } => Some(inbox),
        };
        records
            .into_iter()
            .map(|record| item(record, inbox))
            .collect()
    }

    /// Past `item`, which this reader was just handed.
    fn past(self, item: &v1::InboxItem) -> Self {
        match self {
            After::Cursor(_) => After::Cursor(item.cursor),
            After::Position { inbox, .. } => After::Position {
                inbox,
                position: item.position,
            },
        }
    }
}

/// An inbox item for the caller, with its position in team inbox `inbox`
/// when it is read through one. A purged item (retention) has no envelope
/// left to decode: it goes out with its ids, times and `purged_at_ms`.
fn item(record: InboxRecord, inbox: Option<&str>) -> Result<v1::InboxItem, Status> {
    let envelope = match record.purged_at_ms {
        Some(_) => None,
        None => Some(
            tvaers_proto::open_envelope(&record.envelope).ok_or_else(|| {
                super::internal(
                    "inbox read",
                    format!(
                        "stored envelope at cursor {} does not decode",
                        record.cursor
                    ),
                )
            })?,
        ),
    };
    let position = inbox
        .and_then(|inbox| record.placements.iter().find(|p| p.inbox == inbox))
        .map_or(0, |placement| placement.position);
    let placements = record.placements.into_iter().map(placement).collect();
    Ok(v1::InboxItem {
        position,
        cursor: record.cursor,
        received_at_ms: record.received_at_ms,
        envelope,
        acked_at_ms: record.acked_at_ms.unwrap_or_default(),
        placements,
        purged_at_ms: record.purged_at_ms.unwrap_or_default(),
        sender: record.sender,
        notice_id: record.notice_id,
    })
}

/// A stored placement as the API shows it; the handling record (note and
/// contact) is stored as an encoded `Placement` holding only those fields.
fn placement(stored: Placement) -> v1::Placement {
    let handling = stored
        .handling
        .as_deref()
        .and_then(|bytes| v1::Placement::decode(bytes).ok())
        .unwrap_or_default();
    let state = if stored.handled_at_ms.is_some() {
        "handled"
    } else if stored.read_at_ms.is_some() {
        "read"
    } else {
        "new"
    };
    v1::Placement {
        inbox: stored.inbox,
        state: state.to_owned(),
        read_by: stored.read_by.unwrap_or_default(),
        read_at_ms: stored.read_at_ms.unwrap_or_default(),
        handled_by: stored.handled_by.unwrap_or_default(),
        handled_at_ms: stored.handled_at_ms.unwrap_or_default(),
        note: handling.note,
        contact: handling.contact,
        escalated_at_ms: stored.escalated_at_ms.unwrap_or_default(),
        escalated_from: stored.escalated_from.unwrap_or_default(),
    }
}

/// The team inbox a request names, if any.
fn team(inbox: &str) -> Option<&str> {
    (!inbox.is_empty()).then_some(inbox)
}

/// Records that `actor` read `items`, before they are handed out: an item
/// whose read cannot be recorded is not shown.
async fn record_reads(
    state: &ApiState,
    actor: &str,
    items: &[v1::InboxItem],
) -> Result<(), Status> {
    let at_ms = now_ms();
    let events = items
        .iter()
        .filter_map(|item| item.envelope.as_ref())
        .map(|envelope| {
            let citizen = envelope
                .notice
                .as_ref()
                .map(|notice| state.citizen_refs.reference(&notice.citizen_cpr));
            AuditEvent::new(at_ms, actor, AuditAction::InboxRead)
                .notice(envelope.notice_id.as_str())
                .peer(envelope.sender.as_str())
                .citizen(citizen)
        })
        .collect();
    state
        .store
        .record_audit(events)
        .await
        .map_err(|e| super::internal("inbox read", e))
}

pub async fn list(
    state: &ApiState,
    request: v1::ListInboxRequest,
    actor: String,
) -> Result<v1::ListInboxResponse, Status> {
    let limit = match request.limit {
        0 => PAGE,
        n => n.min(1000),
    };
    let after = After::of(&request.inbox, request.after_cursor, request.after_position);
    let items = after.page(state, limit, request.unacked_only).await?;
    record_reads(state, &actor, &items).await?;
    Ok(v1::ListInboxResponse { items })
}

pub fn stream(
    state: std::sync::Arc<ApiState>,
    request: v1::StreamInboxRequest,
    actor: String,
) -> impl Stream<Item = Result<v1::InboxItem, Status>> + Send {
    let (items, out) = tokio::sync::mpsc::channel(PAGE as usize);
    tokio::spawn(async move {
        let mut after = After::of(&request.inbox, request.after_cursor, request.after_position);
        if request.from_newest {
            after = match after.newest(&state).await {
                Ok(newest) => newest,
                Err(e) => {
                    let _ = items.send(Err(super::internal("inbox stream", e))).await;
                    return;
                }
            };
        }
        let mut newest = state.newest_cursor.clone();
        loop {
            // Mark the signal seen before reading, so an item stored while
            // we read wakes the next wait instead of being missed.
            newest.borrow_and_update();
            let page = match after.page(&state, PAGE, false).await {
                Ok(page) => page,
                Err(status) => {
                    let _ = items.send(Err(status)).await;
                    return;
                }
            };
            let full = page.len() == PAGE as usize;
            if let Err(status) = record_reads(&state, &actor, &page).await {
                let _ = items.send(Err(status)).await;
                return;
            }
            for read in page {
                after = after.past(&read);
                if items.send(Ok(read)).await.is_err() {
                    return; // the caller went away
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { return },
                () = state.shutdown.cancelled() => return,
                () = items.closed() => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(out)
}

pub async fn ack(
    state: &ApiState,
    request: v1::AckInboxRequest,
    actor: String,
) -> Result<v1::AckInboxResponse, Status> {
    match state
        .store
        .ack_inbox(request.cursor, now_ms(), &actor)
        .await
    {
        Ok(newly_acked) => Ok(v1::AckInboxResponse { newly_acked }),
        Err(StoreError::NoSuchInboxItem(cursor)) => Err(Status::not_found(format!(
            "no inbox item with cursor {cursor}"
        ))),
        Err(e) => Err(super::internal("inbox ack", e)),
    }
}
