//! `ListInbox`, `StreamInbox` and `AckInbox`: reading what peers sent us.
//!
//! A stream first replays the items after the caller's cursor, then waits
//! for the receive path to signal a newer cursor. Delivery to the caller is
//! at least once: a caller that reconnects with the last cursor it
//! processed sees nothing twice and misses nothing.

use tokio_stream::Stream;
use tonic::Status;
use tvaers_proto::v1;

use super::ApiState;
use crate::now_ms;
use crate::store::{InboxRecord, StoreError};

const PAGE: u32 = 100;

/// An inbox item for the caller. A purged item (retention) has no envelope
/// left to decode: it goes out with its ids, times and `purged_at_ms`.
fn item(record: InboxRecord) -> Result<v1::InboxItem, Status> {
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
    Ok(v1::InboxItem {
        cursor: record.cursor,
        received_at_ms: record.received_at_ms,
        envelope,
        acked_at_ms: record.acked_at_ms.unwrap_or_default(),
        purged_at_ms: record.purged_at_ms.unwrap_or_default(),
        sender: record.sender,
        notice_id: record.notice_id,
    })
}

pub async fn list(
    state: &ApiState,
    request: v1::ListInboxRequest,
) -> Result<v1::ListInboxResponse, Status> {
    let limit = match request.limit {
        0 => PAGE,
        n => n.min(1000),
    };
    let records = state
        .store
        .inbox_after(request.after_cursor, limit, request.unacked_only)
        .await
        .map_err(|e| super::internal("inbox list", e))?;
    let items = records.into_iter().map(item).collect::<Result<_, _>>()?;
    Ok(v1::ListInboxResponse { items })
}

pub fn stream(
    state: std::sync::Arc<ApiState>,
    request: v1::StreamInboxRequest,
) -> impl Stream<Item = Result<v1::InboxItem, Status>> + Send {
    let (items, out) = tokio::sync::mpsc::channel(PAGE as usize);
    tokio::spawn(async move {
        let mut cursor = request.after_cursor;
        let mut newest = state.newest_cursor.clone();
        loop {
            // Mark the signal seen before reading, so an item stored while
            // we read wakes the next wait instead of being missed.
            newest.borrow_and_update();
            let page = match state.store.inbox_after(cursor, PAGE, false).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = items.send(Err(super::internal("inbox stream", e))).await;
                    return;
                }
            };
            let full = page.len() == PAGE as usize;
            for record in page {
                cursor = record.cursor;
                if items.send(item(record)).await.is_err() {
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
) -> Result<v1::AckInboxResponse, Status> {
    match state.store.ack_inbox(request.cursor, now_ms()).await {
        Ok(newly_acked) => Ok(v1::AckInboxResponse { newly_acked }),
        Err(StoreError::NoSuchInboxItem(cursor)) => Err(Status::not_found(format!(
            "no inbox item with cursor {cursor}"
        ))),
        Err(e) => Err(super::internal("inbox ack", e)),
    }
}
