//! `VerifyNotice`: re-checks the signatures stored for one notice, years
//! later if need be. Sent: our signature on each envelope and each
//! recipient's signature on its receipt. Received: the sender's signature on
//! the envelope and ours on the receipt we answered with. Peers' keys are
//! the ones pinned now; a peer that changed its key since shows as invalid,
//! with the key that was tried. An envelope purged by retention has no
//! signed bytes left: it shows as "body purged on <date>", not as a broken
//! signature; its receipt is kept and still checked.

use prost::Message;
use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::Millis;
use crate::signing::PublicKey;
use crate::store::OutboxFilter;

pub async fn verify_notice(
    state: &AdminState,
    request: v1::VerifyNoticeRequest,
) -> Result<v1::VerifyNoticeResponse, Status> {
    let notice_id = request.notice_id;
    let internal = |e| crate::api::internal("verify notice", e);
    let sent = state
        .store
        .list_outbox(OutboxFilter {
            notice_id: Some(notice_id.clone()),
            limit: 1000,
            ..OutboxFilter::default()
        })
        .await
        .map_err(internal)?;
    let delivery = state.store.delivery(&notice_id).await.map_err(internal)?;
    let received = state
        .store
        .inbox_by_notice(&notice_id)
        .await
        .map_err(internal)?;
    if sent.is_empty() && received.is_empty() {
        return Err(Status::not_found(format!(
            "notice {notice_id:?} was neither sent nor received here"
        )));
    }
    let peers = state.peers.configured().await;
    let key_of = |org: &str| {
        peers
            .iter()
            .find(|p| p.org_id == org)
            .and_then(|p| p.signing_key)
    };
    let me = state.site.org_id.as_str();

    let mut checks = Vec::new();
    for row in &sent {
        checks.push(check_envelope(
            "sent",
            &row.recipient,
            me,
            Some(state.signing_key),
            &row.envelope,
            row.purged_at_ms,
        ));
        let receipt = delivery
            .as_ref()
            .and_then(|d| d.recipients.iter().find(|r| r.seq == row.seq))
            .and_then(|r| r.receipt.as_deref());
        checks.push(check_receipt(
            "sent",
            &row.recipient,
            &row.recipient,
            key_of(&row.recipient),
            receipt,
        ));
    }
    for record in &received {
        checks.push(check_envelope(
            "received",
            &record.sender,
            &record.sender,
            key_of(&record.sender),
            &record.envelope,
            record.purged_at_ms,
        ));
        checks.push(check_receipt(
            "received",
            &record.sender,
            me,
            Some(state.signing_key),
            Some(&record.receipt),
        ));
    }
    Ok(v1::VerifyNoticeResponse { checks })
}

fn check(
    direction: &str,
    peer: &str,
    item: &str,
    signer: &str,
    key: Option<PublicKey>,
) -> v1::SignatureCheck {
    v1::SignatureCheck {
        direction: direction.to_owned(),
        peer: peer.to_owned(),
        item: item.to_owned(),
        signer: signer.to_owned(),
        signer_key: key.map(|k| k.to_string()).unwrap_or_default(),
        valid: false,
        detail: String::new(),
        purged_at_ms: 0,
    }
}

fn check_envelope(
    direction: &str,
    peer: &str,
    signer: &str,
    key: Option<PublicKey>,
    stored: &[u8],
    purged_at_ms: Option<Millis>,
) -> v1::SignatureCheck {
    let mut result = check(direction, peer, "envelope", signer, key);
    if let Some(at) = purged_at_ms {
        result.purged_at_ms = at;
        result.detail = purged_detail(at);
        return result;
    }
    let outcome = match (key, v1::SignedEnvelope::decode(stored)) {
        (None, _) => Err(format!("no signing key is pinned for {signer}")),
        (_, Err(_)) => Err("the stored envelope does not decode".to_owned()),
        (Some(key), Ok(signed)) => key
            .open_envelope(&signed)
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    settle(&mut result, outcome);
    result
}

fn check_receipt(
    direction: &str,
    peer: &str,
    signer: &str,
    key: Option<PublicKey>,
    stored: Option<&[u8]>,
) -> v1::SignatureCheck {
    let mut result = check(direction, peer, "receipt", signer, key);
    let outcome = match (key, stored.map(v1::SignedReceipt::decode)) {
        (_, None) => Err("no receipt yet".to_owned()),
        (None, _) => Err(format!("no signing key is pinned for {signer}")),
        (_, Some(Err(_))) => Err("the stored receipt does not decode".to_owned()),
        (Some(_), Some(Ok(signed))) if signed.signature.is_empty() => {
            Err("an unsigned rejection (the request could not be read)".to_owned())
        }
        (Some(key), Some(Ok(signed))) => key
            .open_receipt(&signed)
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    settle(&mut result, outcome);
    result
}

/// What `tvaers verify` shows for an envelope retention purged.
fn purged_detail(at_ms: Millis) -> String {
    format!("body purged on {}", crate::config::format_time(at_ms))
}

fn settle(result: &mut v1::SignatureCheck, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => result.valid = true,
        Err(detail) => result.detail = detail,
    }
}
