//! `Submit`: validate a notice, store it with one outbox row per recipient,
//! and only then answer. The same idempotency key again returns the first
//! notice id and stores nothing.

use prost::Message;
use tonic::Status;
use tvaers_proto::v1;
use tvaers_proto::validate::{self, ValidationError};

use super::ApiState;
use crate::batch::BatchError;
use crate::care_team::Learned;
use crate::delivery::machine::Pending;
use crate::now_ms;
use crate::store::{NewNotice, NewOutboxItem, SubmitOutcome};

/// The longest time to live a caller may ask for.
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid notice: {0}")]
    Invalid(#[from] ValidationError),
    #[error("field `ttl_seconds`: at most {MAX_TTL_SECONDS} seconds")]
    TtlTooLong,
    #[error("field `recipients`: {0} is not a configured peer of this site")]
    UnknownRecipient(String),
    #[error(
        "field `notice.handled`: handled receipts are sent by the daemon when staff mark an item handled (MarkHandled), not submitted"
    )]
    DaemonOnly,
    #[error(
        "idempotency key was already used for a different notice ({notice_id}); use a new key for a new notice"
    )]
    KeyReused { notice_id: String },
    #[error(transparent)]
    Store(#[from] BatchError),
}

impl From<SubmitError> for Status {
    fn from(error: SubmitError) -> Status {
        match &error {
            SubmitError::Invalid(_)
            | SubmitError::TtlTooLong
            | SubmitError::UnknownRecipient(_)
            | SubmitError::DaemonOnly => Status::invalid_argument(error.to_string()),
            SubmitError::KeyReused { .. } => Status::already_exists(error.to_string()),
            SubmitError::Store(BatchError::Closed) => Status::unavailable(error.to_string()),
            SubmitError::Store(e) => super::internal("submit", e),
        }
    }
}

/// `Submit` from a local system: anything but a business receipt, which
/// only the daemon sends (see [`super::handling`]).
pub async fn submit(
    state: &ApiState,
    request: v1::SubmitRequest,
    actor: String,
) -> Result<v1::SubmitResponse, SubmitError> {
    let payload = request.notice.as_ref().and_then(|n| n.payload.as_ref());
    if matches!(payload, Some(v1::notice::Payload::Handled(_))) {
        return Err(SubmitError::DaemonOnly);
    }
    store_and_send(state, request, actor).await
}

/// Validates, signs, stores and hands a notice to the drivers; answers once
/// it is on disk.
pub(crate) async fn store_and_send(
    state: &ApiState,
    request: v1::SubmitRequest,
    actor: String,
) -> Result<v1::SubmitResponse, SubmitError> {
    let arrived = std::time::Instant::now();
    let cpr = validate::submit_request(&request)?;
    if request.ttl_seconds > MAX_TTL_SECONDS {
        return Err(SubmitError::TtlTooLong);
    }
    // Held until the drivers have the new rows, so a peer revoked meanwhile
    // cannot be left with a row nobody delivers or fails.
    let peers = state.peers.read().await;
    if let Some(unknown) = request.recipients.iter().find(|r| !peers.contains_key(*r)) {
        return Err(SubmitError::UnknownRecipient(unknown.clone()));
    }

    let request_digest = ring::digest::digest(&ring::digest::SHA256, &request.encode_to_vec())
        .as_ref()
        .to_vec();
    let notice_id = uuid::Uuid::now_v7().to_string();
    let created_at_ms = now_ms();
    let ttl_ms = match request.ttl_seconds {
        0 => state.default_ttl_ms,
        seconds => i64::try_from(seconds * 1000).unwrap_or(state.default_ttl_ms),
    };
    let expires_at_ms = created_at_ms + ttl_ms;
    let kind = request
        .notice
        .as_ref()
        .map_or("none", v1::Notice::kind_name);
    let recipients: Vec<NewOutboxItem> = request
        .recipients
        .iter()
        .map(|recipient| NewOutboxItem {
            recipient: recipient.clone(),
            envelope: state.signing_key.seal_envelope(&v1::Envelope {
                notice_id: notice_id.clone(),
                idempotency_key: request.idempotency_key.clone(),
                sender: state.org_id.clone(),
                recipient: recipient.clone(),
                created_at_ms,
                expires_at_ms,
                notice: request.notice.clone(),
            }),
        })
        .collect();

    let citizen_ref = state.citizen_refs.reference(cpr.digits());
    let care_team = request.notice.as_ref().and_then(|notice| {
        Learned {
            sender: &state.org_id,
            notice_id: &notice_id,
            notice,
            citizen: &citizen_ref,
            created_at_ms,
            stored_at_ms: created_at_ms,
        }
        .sent()
    });
    let shard = crate::lease::shard_of(Some(&citizen_ref), &notice_id);
    let outcome = state
        .submits
        .run(NewNotice {
            notice_id: notice_id.clone(),
            idempotency_key: request.idempotency_key.clone(),
            request_digest,
            created_at_ms,
            expires_at_ms,
            recipients: recipients.clone(),
            actor,
            citizen: Some(citizen_ref),
            care_team,
        })
        .await?;

    match outcome {
        SubmitOutcome::Stored { outbox_seqs } => {
            state.metrics.submit_committed(arrived.elapsed());
            for recipient in &request.recipients {
                state.metrics.submitted(recipient, kind);
            }
            let citizen = state.citizens.key(&cpr);
            for (item, seq) in recipients.into_iter().zip(outbox_seqs) {
                if let Some(peer) = peers.get(&item.recipient) {
                    peer.driver.enqueue(
                        Pending {
                            seq,
                            citizen,
                            expires_at_ms,
                            attempts: 0,
                            not_before_ms: created_at_ms,
                        },
                        shard,
                        &notice_id,
                        item.envelope,
                        created_at_ms,
                    );
                }
            }
            tracing::info!(%notice_id, kind, recipients = ?request.recipients, "notice submitted");
            Ok(v1::SubmitResponse {
                notice_id,
                duplicate: false,
            })
        }
        SubmitOutcome::Duplicate { notice_id } => {
            tracing::info!(%notice_id, kind, "submit repeated with the same idempotency key; nothing stored");
            Ok(v1::SubmitResponse {
                notice_id,
                duplicate: true,
            })
        }
        SubmitOutcome::KeyReused { notice_id } => Err(SubmitError::KeyReused { notice_id }),
    }
}
