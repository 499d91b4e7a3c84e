//! `ListWebhooks` and `RetryWebhook`: an operator's view of the webhook
//! queue (see [`crate::webhook`]) and the way to revive a dead-lettered
//! event. Rows show ids, kind and times, never notice content.

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::audit::{AuditAction, AuditEvent};
use crate::now_ms;
use crate::store::{WebhookEvent, WebhookFilter, WebhookState};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub async fn list(
    state: &AdminState,
    request: v1::ListWebhooksRequest,
) -> Result<v1::ListWebhooksResponse, Status> {
    let wanted_state = match request.state.as_str() {
        "" => None,
        text => Some(WebhookState::parse(text).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown webhook state {text:?}: use pending, delivered or dead"
            ))
        })?),
    };
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let events = state
        .store
        .list_webhooks(WebhookFilter {
            id: None,
            state: wanted_state,
            inbox: (!request.inbox.is_empty()).then_some(request.inbox),
            limit,
        })
        .await
        .map_err(|e| crate::api::internal("list webhooks", e))?;
    Ok(v1::ListWebhooksResponse {
        events: events.iter().map(row).collect(),
    })
}

pub async fn retry(
    state: &AdminState,
    request: v1::RetryWebhookRequest,
    actor: String,
) -> Result<v1::RetryWebhookResponse, Status> {
    let at_ms = now_ms();
    let reopened = state
        .store
        .retry_webhook(request.id, at_ms)
        .await
        .map_err(|e| crate::api::internal("retry webhook", e))?;
    let event = find(state, request.id).await?;
    if reopened {
        tracing::info!(id = event.id, inbox = %event.inbox, "webhook retry by operator");
        let entry = AuditEvent::new(at_ms, actor.as_str(), AuditAction::Admin)
            .notice(event.notice_id.as_str())
            .peer(event.sender.as_str())
            .detail(format!(
                "webhook event {} to inbox {} retried",
                event.id, event.inbox
            ));
        super::audit::record(state, vec![entry]).await?;
    }
    Ok(v1::RetryWebhookResponse {
        reopened,
        event: Some(row(&event)),
    })
}

async fn find(state: &AdminState, id: i64) -> Result<WebhookEvent, Status> {
    let events = state
        .store
        .list_webhooks(WebhookFilter {
            id: Some(id),
            limit: 1,
            ..WebhookFilter::default()
        })
        .await
        .map_err(|e| crate::api::internal("retry webhook", e))?;
    events
        .into_iter()
        .find(|event| event.id == id)
        .ok_or_else(|| Status::not_found(format!("no webhook event with id {id}")))
}

fn row(event: &WebhookEvent) -> v1::WebhookEventRow {
    v1::WebhookEventRow {
        id: event.id,
        inbox: event.inbox.clone(),
        cursor: event.cursor,
        notice_id: event.notice_id.clone(),
        sender: event.sender.clone(),
        kind: event.kind.clone(),
        state: event.state.as_str().to_owned(),
        attempts: event.attempts,
        next_attempt_at_ms: event.next_attempt_at_ms,
        last_error: event.last_error.clone().unwrap_or_default(),
        created_at_ms: event.created_at_ms,
        updated_at_ms: event.updated_at_ms,
    }
}
