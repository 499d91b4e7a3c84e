//! `ListOutbox`, `RetryOutbox` and `CancelOutbox`: an operator's view of
//! what this site still has to deliver, and the two ways to intervene.
//!
//! Rows show the notice kind and ids, never the content. A retry reopens
//! failed rows (not expired ones: the peer would refuse them) and hands them
//! to the driver again; a cancel goes through the driver, because only it
//! knows whether a row is still queued or already on the wire (then the
//! peer's receipt decides).

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::audit::{AuditAction, AuditEvent};
use crate::now_ms;
use crate::store::{OutboxFilter, OutboxItem, OutboxState};

/// Failure reason of a row an operator cancelled.
pub const CANCELLED_REASON: &str = "cancelled by operator";

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub async fn list(
    state: &AdminState,
    request: v1::ListOutboxRequest,
) -> Result<v1::ListOutboxResponse, Status> {
    let wanted_state = match request.state.as_str() {
        "" => None,
        text => Some(OutboxState::parse(text).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown outbox state {text:?}: use pending, in_flight, delivered or failed"
            ))
        })?),
    };
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let rows = state
        .store
        .list_outbox(OutboxFilter {
            state: wanted_state,
            before_seq: (request.before_seq > 0).then_some(request.before_seq),
            notice_id: None,
            limit,
        })
        .await
        .map_err(|e| crate::api::internal("list outbox", e))?;
    Ok(v1::ListOutboxResponse {
        rows: rows.iter().map(row).collect(),
    })
}

pub async fn retry(
    state: &AdminState,
    request: v1::OutboxActionRequest,
    actor: String,
) -> Result<v1::OutboxActionResponse, Status> {
    let rows = rows_of(state, &request).await?;
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for item in rows {
        if item.state == OutboxState::Failed {
            failed.push(item.seq);
        } else {
            skipped.push(format!(
                "{}: {}, not failed",
                item.recipient,
                item.state.as_str()
            ));
        }
    }
    let now = now_ms();
    state
        .store
        .reopen_outbox(failed.clone(), now)
        .await
        .map_err(|e| crate::api::internal("retry outbox", e))?;
    let after = rows_of(state, &request).await?;
    let (reopened, still_failed): (Vec<_>, Vec<_>) = after
        .into_iter()
        .filter(|item| failed.contains(&item.seq))
        .partition(|item| item.state == OutboxState::Pending);
    for item in &still_failed {
        skipped.push(match item.purged_at_ms {
            Some(at) => format!(
                "{}: its body was purged on {} (retention); submit it again",
                item.recipient,
                crate::config::format_time(at)
            ),
            None => format!(
                "{}: the notice has expired; submit it again",
                item.recipient
            ),
        });
    }
    let changed: Vec<v1::OutboxRow> = reopened.iter().map(row).collect();
    for orphan in state.peers.resume(reopened).await {
        skipped.push(format!(
            "{}: reopened, but the peer is revoked or unknown; it is sent once the peer is added again",
            orphan.recipient
        ));
    }
    tracing::info!(notice_id = %request.notice_id, reopened = changed.len(), "outbox retry by operator");
    record_action(state, actor, AuditAction::OutboxRetry, &changed).await?;
    Ok(v1::OutboxActionResponse { changed, skipped })
}

pub async fn cancel(
    state: &AdminState,
    request: v1::OutboxActionRequest,
    actor: String,
) -> Result<v1::OutboxActionResponse, Status> {
    let rows = rows_of(state, &request).await?;
    let drivers = state.peers.drivers().await;
    let mut changed = Vec::new();
    let mut skipped = Vec::new();
    for mut item in rows {
        if !matches!(item.state, OutboxState::Pending | OutboxState::InFlight) {
            skipped.push(format!(
                "{}: already {}",
                item.recipient,
                item.state.as_str()
            ));
            continue;
        }
        let cancelled = match drivers.get(&item.recipient) {
            Some(driver) => driver.cancel(item.seq, CANCELLED_REASON.to_owned()).await,
            None => false,
        };
        if cancelled {
            item.state = OutboxState::Failed;
            item.last_error = Some(CANCELLED_REASON.to_owned());
            changed.push(row(&item));
        } else {
            skipped.push(format!(
                "{}: on the wire now; the peer's receipt decides",
                item.recipient
            ));
        }
    }
    tracing::info!(notice_id = %request.notice_id, cancelled = changed.len(), "outbox cancel by operator");
    record_action(state, actor, AuditAction::OutboxCancel, &changed).await?;
    Ok(v1::OutboxActionResponse { changed, skipped })
}

/// One audit entry per row the operator's action changed.
async fn record_action(
    state: &AdminState,
    actor: String,
    action: AuditAction,
    changed: &[v1::OutboxRow],
) -> Result<(), Status> {
    let at_ms = now_ms();
    let events = changed
        .iter()
        .map(|row| {
            AuditEvent::new(at_ms, actor.as_str(), action)
                .notice(row.notice_id.as_str())
                .peer(row.recipient.as_str())
                .detail(format!("outbox row {}", row.seq))
        })
        .collect();
    super::audit::record(state, events).await
}

/// The rows of the notice in `request`, limited to its recipient if given.
async fn rows_of(
    state: &AdminState,
    request: &v1::OutboxActionRequest,
) -> Result<Vec<OutboxItem>, Status> {
    let rows = state
        .store
        .list_outbox(OutboxFilter {
            notice_id: Some(request.notice_id.clone()),
            limit: MAX_LIMIT,
            ..OutboxFilter::default()
        })
        .await
        .map_err(|e| crate::api::internal("outbox", e))?;
    let rows: Vec<OutboxItem> = rows
        .into_iter()
        .filter(|item| request.recipient.is_empty() || item.recipient == request.recipient)
        .collect();
    if rows.is_empty() {
        return Err(Status::not_found(format!(
            "no outbox row for notice {:?}{}: see `tvaers outbox list`",
            request.notice_id,
            if request.recipient.is_empty() {
                String::new()
            } else {
                format!(" to {}", request.recipient)
            }
        )));
    }
    Ok(rows)
}

/// An outbox row for the operator: ids, state and kind, no content.
fn row(item: &OutboxItem) -> v1::OutboxRow {
    let envelope = tvaers_proto::open_envelope(&item.envelope);
    v1::OutboxRow {
        seq: item.seq,
        notice_id: item.notice_id.clone(),
        recipient: item.recipient.clone(),
        state: item.state.as_str().to_owned(),
        attempts: item.attempts,
        next_attempt_at_ms: item.next_attempt_at_ms,
        expires_at_ms: item.expires_at_ms,
        last_error: item.last_error.clone().unwrap_or_default(),
        kind: envelope
            .as_ref()
            .and_then(|e| e.notice.as_ref())
            .map(|n| n.kind_name().to_owned())
            .unwrap_or_default(),
        created_at_ms: envelope.map_or(0, |e| e.created_at_ms),
        purged_at_ms: item.purged_at_ms.unwrap_or_default(),
    }
}
