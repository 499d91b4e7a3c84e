//! `AuditVerify` and `AuditEntries`: checking and reading the audit log
//! (see [`crate::audit`]), and [`record`], how the other admin calls leave
//! their entries in it.

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::audit::{AuditAction, AuditEntry, AuditEvent, AuditQuery, ChainVerifier};
use crate::now_ms;

/// Entries read per query while verifying.
const VERIFY_PAGE: u32 = 2_000;
const DEFAULT_LIMIT: u32 = 500;
const MAX_LIMIT: u32 = 5_000;

/// Records operator actions. An action that took effect is not undone when
/// its entry cannot be written, but the caller is told.
pub async fn record(state: &AdminState, events: Vec<AuditEvent>) -> Result<(), Status> {
    state
        .store
        .record_audit(events)
        .await
        .map_err(|e| crate::api::internal("record the audit entry", e))
}

pub async fn verify(state: &AdminState) -> Result<v1::AuditVerifyResponse, Status> {
    let mut verifier = ChainVerifier::new(state.audit_keys.chain.clone());
    let mut after_seq = 0;
    loop {
        let page = state
            .store
            .audit_entries(AuditQuery {
                after_seq,
                limit: VERIFY_PAGE,
                ..AuditQuery::default()
            })
            .await
            .map_err(|e| crate::api::internal("audit verify", e))?;
        for entry in &page {
            verifier.check(entry);
        }
        match page.last() {
            Some(last) if page.len() == VERIFY_PAGE as usize => after_seq = last.seq,
            _ => break,
        }
    }
    let report = verifier.finish();
    if !report.breaks.is_empty() {
        tracing::error!(
            breaks = report.breaks.len(),
            first = %report.breaks[0],
            "the audit log's chain is broken"
        );
    }
    Ok(v1::AuditVerifyResponse {
        checked: report.checked,
        head_seq: report.head_seq,
        head_mac: hex::encode(&report.head_mac),
        breaks: report.breaks.iter().map(ToString::to_string).collect(),
    })
}

pub async fn entries(
    state: &AdminState,
    request: v1::AuditEntriesRequest,
    actor: String,
) -> Result<v1::AuditEntriesResponse, Status> {
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let citizen = if request.citizen_cpr.is_empty() {
        None
    } else {
        let cpr = tvaers_proto::cpr::Cpr::parse(&request.citizen_cpr)
            .map_err(|_| Status::invalid_argument("field `citizen_cpr`: not a valid CPR number"))?;
        let citizen = state.audit_keys.citizens.reference(cpr.digits());
        // Asking who saw a citizen's data is itself an access to be traced.
        if request.after_seq == 0 {
            record(
                state,
                vec![
                    AuditEvent::new(now_ms(), actor, AuditAction::Admin)
                        .citizen(Some(citizen.clone()))
                        .detail("audit log searched for this citizen"),
                ],
            )
            .await?;
        }
        Some(citizen)
    };
    let positive = |ms: i64| (ms > 0).then_some(ms);
    let page = state
        .store
        .audit_entries(AuditQuery {
            after_seq: request.after_seq,
            limit,
            from_ms: positive(request.from_ms),
            to_ms: positive(request.to_ms),
            citizen,
            ..AuditQuery::default()
        })
        .await
        .map_err(|e| crate::api::internal("audit entries", e))?;
    let next_after_seq = match page.last() {
        Some(last) if page.len() == limit as usize => last.seq,
        _ => 0,
    };
    Ok(v1::AuditEntriesResponse {
        entries: page.into_iter().map(row).collect(),
        next_after_seq,
    })
}

fn row(entry: AuditEntry) -> v1::AuditEntryRow {
    let AuditEntry {
        seq,
        event,
        prev_mac,
        mac,
    } = entry;
    v1::AuditEntryRow {
        seq,
        at_ms: event.at_ms,
        actor: event.actor,
        action: event.action.as_str().to_owned(),
        notice_id: event.notice_id.unwrap_or_default(),
        peer: event.peer.unwrap_or_default(),
        citizen_ref: event.citizen.map(|c| hex::encode(c.0)).unwrap_or_default(),
        detail: event.detail,
        prev_mac: hex::encode(prev_mac),
        mac: hex::encode(mac),
    }
}
