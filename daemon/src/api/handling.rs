//! `MarkRead` and `MarkHandled`: staff taking an item in one of the
//! organisation's team inboxes. The first reader and the first handler are
//! kept; doing it again changes nothing and says so. Also the business
//! receipts back to the sender: handled (with the handler's contact) and
//! overdue (sent when the escalator escalates an item).

use prost::Message;
use tonic::Status;
use tvaers_proto::v1;

use super::ApiState;
use crate::now_ms;
use crate::store::{Handled, InboxRecord, Placement, StoreError};

/// Longest staff name, role or phone number accepted.
const MAX_FIELD: usize = 200;
/// Longest note accepted.
const MAX_NOTE: usize = 2_000;

fn field(name: &str, value: &str, required: bool, max: usize) -> Result<(), Status> {
    if required && value.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "field `{name}`: required"
        )));
    }
    if value.chars().count() > max {
        return Err(Status::invalid_argument(format!(
            "field `{name}`: at most {max} characters"
        )));
    }
    Ok(())
}

fn not_found(error: StoreError) -> Status {
    match error {
        StoreError::NoSuchInboxItem(cursor) => {
            Status::not_found(format!("no inbox item with cursor {cursor}"))
        }
        StoreError::NoSuchPlacement { cursor, inbox } => Status::not_found(format!(
            "inbox item {cursor} was not routed to team inbox {inbox:?}: see the item's placements"
        )),
        other => super::internal("inbox handling", other),
    }
}

pub async fn mark_read(
    state: &ApiState,
    request: v1::MarkReadRequest,
    actor: String,
) -> Result<v1::MarkReadResponse, Status> {
    field("inbox", &request.inbox, true, MAX_FIELD)?;
    field("reader", &request.reader, true, MAX_FIELD)?;
    let newly_read = state
        .store
        .mark_read(
            request.cursor,
            &request.inbox,
            request.reader.trim(),
            now_ms(),
            &actor,
        )
        .await
        .map_err(not_found)?;
    Ok(v1::MarkReadResponse { newly_read })
}

pub async fn mark_handled(
    state: &ApiState,
    request: v1::MarkHandledRequest,
    actor: String,
) -> Result<v1::MarkHandledResponse, Status> {
    field("inbox", &request.inbox, true, MAX_FIELD)?;
    let handler = request.handler.unwrap_or_default();
    field("handler.name", &handler.name, true, MAX_FIELD)?;
    field("handler.role", &handler.role, false, MAX_FIELD)?;
    // Required: the sender learns how to reach the handler (the business
    // receipt's contact needs a phone number).
    field("handler.phone", &handler.phone, true, MAX_FIELD)?;
    field("handler.email", &handler.email, false, MAX_FIELD)?;
    field("note", &request.note, false, MAX_NOTE)?;
    let by = handler.name.trim().to_owned();
    let handled_at_ms = now_ms();
    let handling = v1::Placement {
        note: request.note,
        contact: Some(handler.clone()),
        ..v1::Placement::default()
    };
    let newly_handled = state
        .store
        .mark_handled(
            request.cursor,
            &request.inbox,
            Handled {
                by,
                at_ms: handled_at_ms,
                handling: handling.encode_to_vec(),
            },
            &actor,
        )
        .await
        .map_err(not_found)?;
    if newly_handled {
        tell_the_sender(
            state,
            request.cursor,
            &request.inbox,
            handled_receipt(handler, handled_at_ms),
            actor,
        )
        .await;
    }
    Ok(v1::MarkHandledResponse { newly_handled })
}

/// Sends again the business receipts of items handled or escalated in the
/// last `window_ms` (the notices' time to live: an older receipt would
/// expire unsent). The idempotency key makes this a no-op for every receipt
/// already stored, so it only fills the gap a crash between marking an item
/// handled (or escalating it) and storing its receipt leaves. Run at
/// start-up.
pub async fn resend_recent_receipts(state: &ApiState, window_ms: crate::Millis) {
    let since = now_ms() - window_ms;
    match state.store.handled_since(since).await {
        Ok(handled) => {
            for (cursor, inbox) in handled {
                let Some(placement) = placement(state, cursor, &inbox).await else {
                    continue;
                };
                let handling = placement
                    .handling
                    .as_deref()
                    .and_then(|bytes| v1::Placement::decode(bytes).ok())
                    .unwrap_or_default();
                if let (Some(handler), Some(at_ms)) = (handling.contact, placement.handled_at_ms) {
                    tell_the_sender(
                        state,
                        cursor,
                        &inbox,
                        handled_receipt(handler, at_ms),
                        "daemon",
                    )
                    .await;
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, "could not list handled items to check their receipts");
        }
    }
    match state.store.escalated_since(since).await {
        Ok(escalated) => {
            for (cursor, inbox) in escalated {
                let Some(placement) = placement(state, cursor, &inbox).await else {
                    continue;
                };
                if let Some(at_ms) = placement.escalated_at_ms {
                    tell_overdue(state, cursor, &inbox, at_ms).await;
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, "could not list escalated items to check their receipts");
        }
    }
}

/// Tells the sender of the item at `cursor` that nobody handled it in
/// `inbox` before its deadline passed at `overdue_at_ms` (a
/// `HANDLED_STATUS_OVERDUE` business receipt). Called by the escalator
/// after it escalated the item; a crash in between is repaired at the next
/// start by [`resend_recent_receipts`].
pub async fn tell_overdue(
    state: &ApiState,
    cursor: u64,
    inbox: &str,
    overdue_at_ms: crate::Millis,
) {
    let receipt = v1::Handled {
        status: v1::HandledStatus::Overdue as i32,
        overdue_at_ms,
        ..v1::Handled::default()
    };
    tell_the_sender(state, cursor, inbox, receipt, "daemon").await;
}

fn handled_receipt(handler: v1::Contact, handled_at_ms: crate::Millis) -> v1::Handled {
    v1::Handled {
        status: v1::HandledStatus::Handled as i32,
        handler: Some(handler),
        handled_at_ms,
        ..v1::Handled::default()
    }
}

/// The inbox item at `cursor`, if it (still) exists.
async fn item(state: &ApiState, cursor: u64) -> Option<InboxRecord> {
    match crate::store::inbox_item(state.store.as_ref(), cursor).await {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(cursor, %error, "could not read an inbox item to send its business receipt");
            None
        }
    }
}

/// The item at `cursor`'s placement in `inbox`.
async fn placement(state: &ApiState, cursor: u64, inbox: &str) -> Option<Placement> {
    item(state, cursor)
        .await?
        .placements
        .into_iter()
        .find(|placement| placement.inbox == inbox)
}

/// Sends a business receipt (`Handled`, with `receipt`'s status and
/// details) for the item at `cursor` in `inbox` to the organisation that
/// sent it, through the outbox like any notice. The idempotency key is
/// derived from (status, sender, notice, inbox), so asking again sends
/// nothing twice.
///
/// The item is marked handled (or escalated) before this stores the
/// receipt: a crash in between is repaired at the next start by
/// [`resend_recent_receipts`].
async fn tell_the_sender(
    state: &ApiState,
    cursor: u64,
    inbox: &str,
    mut receipt: v1::Handled,
    actor: impl Into<String>,
) {
    let Some(record) = item(state, cursor).await else {
        return;
    };
    let Some(envelope) = tvaers_proto::open_envelope(&record.envelope) else {
        // Purged already: nothing to say it about.
        return;
    };
    let Some(original) = envelope.notice else {
        return;
    };
    let overdue = receipt.status == v1::HandledStatus::Overdue as i32;
    let what = if overdue { "overdue" } else { "handled" };
    let key_material = format!("{}\n{}\n{inbox}", envelope.sender, envelope.notice_id);
    let digest = ring::digest::digest(&ring::digest::SHA256, key_material.as_bytes());
    receipt.notice_id.clone_from(&envelope.notice_id);
    receipt.inbox = inbox.to_owned();
    let request = v1::SubmitRequest {
        // Its own prefix per status: the overdue and the handled receipt
        // about one item are two receipts.
        idempotency_key: format!("{what}:{}", hex::encode(&digest.as_ref()[..16])),
        recipients: vec![envelope.sender.clone()],
        notice: Some(v1::Notice {
            citizen_cpr: original.citizen_cpr,
            episode_id: original.episode_id,
            payload: Some(v1::notice::Payload::Handled(receipt)),
        }),
        ttl_seconds: 0,
    };
    match super::submit::store_and_send(state, request, actor.into()).await {
        Ok(sent) => tracing::info!(
            notice_id = %envelope.notice_id,
            receipt_id = %sent.notice_id,
            to = %envelope.sender,
            "{what} receipt on its way to the sender"
        ),
        Err(error) => tracing::warn!(
            notice_id = %envelope.notice_id,
            to = %envelope.sender,
            %error,
            "could not send the {what} receipt"
        ),
    }
}
