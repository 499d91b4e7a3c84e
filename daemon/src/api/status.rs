//! `DeliveryStatus`: where a notice is, per recipient, from the store, with
//! the peer's current connection trouble filled in for rows still waiting.

use prost::Message;
use tonic::Status;
use tvaers_proto::v1;

use super::ApiState;
use crate::store::OutboxState;

pub async fn delivery_status(
    state: &ApiState,
    request: v1::DeliveryStatusRequest,
) -> Result<v1::DeliveryStatusResponse, Status> {
    let found = state
        .store
        .delivery(&request.notice_id)
        .await
        .map_err(|e| super::internal("delivery status", e))?;
    let Some(delivery) = found else {
        return Err(Status::not_found(format!(
            "no notice with id {:?} was submitted here",
            request.notice_id
        )));
    };
    let handled = state
        .store
        .handled_receipts(&request.notice_id)
        .await
        .map_err(|e| super::internal("delivery status", e))?;
    let drivers = state.peers.drivers().await;
    let recipients = delivery
        .recipients
        .into_iter()
        .map(|row| {
            let waiting = matches!(row.state, OutboxState::Pending | OutboxState::InFlight);
            let peer_error = waiting
                .then(|| drivers.get(&row.recipient))
                .flatten()
                .and_then(|peer| peer.health().last_error);
            v1::RecipientStatus {
                state: match row.state {
                    OutboxState::Pending => v1::DeliveryState::Pending,
                    OutboxState::InFlight => v1::DeliveryState::InFlight,
                    OutboxState::Delivered => v1::DeliveryState::Delivered,
                    OutboxState::Failed => v1::DeliveryState::Failed,
                } as i32,
                attempts: row.attempts,
                last_error: peer_error.or(row.last_error).unwrap_or_default(),
                delivered_at_ms: if row.state == OutboxState::Delivered {
                    row.finished_at_ms.unwrap_or_default()
                } else {
                    0
                },
                receipt: row
                    .receipt
                    .and_then(|bytes| tvaers_proto::open_receipt(&bytes)),
                handled: handled
                    .iter()
                    .filter(|receipt| receipt.from_org == row.recipient)
                    .filter_map(|receipt| v1::Handled::decode(receipt.handled.as_slice()).ok())
                    .collect(),
                recipient: row.recipient,
                next_attempt_at_ms: row.next_attempt_at_ms,
            }
        })
        .collect();
    Ok(v1::DeliveryStatusResponse {
        notice_id: delivery.notice_id,
        created_at_ms: delivery.created_at_ms,
        recipients,
    })
}
