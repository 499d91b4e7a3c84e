//! `MarkRead` and `MarkHandled`: staff taking an item in one of the
//! organisation's team inboxes. The first reader and the first handler are
//! kept; doing it again changes nothing and says so.

use prost::Message;
use tonic::Status;
use tvaers_proto::v1;

use super::ApiState;
use crate::now_ms;
use crate::store::{Handled, StoreError};

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
    field("handler.phone", &handler.phone, false, MAX_FIELD)?;
    field("handler.email", &handler.email, false, MAX_FIELD)?;
    field("note", &request.note, false, MAX_NOTE)?;
    let by = handler.name.trim().to_owned();
    let handling = v1::Placement {
        note: request.note,
        contact: Some(handler),
        ..v1::Placement::default()
    };
    let newly_handled = state
        .store
        .mark_handled(
            request.cursor,
            &request.inbox,
            Handled {
                by,
                at_ms: now_ms(),
                handling: handling.encode_to_vec(),
            },
            &actor,
        )
        .await
        .map_err(not_found)?;
    Ok(v1::MarkHandledResponse { newly_handled })
}
