//! `CareTeam`: who works with a citizen in the other organisations, from
//! the contacts stored with handled receipts and plan changes (see
//! [`crate::care_team`]). The answer reveals who is involved with the
//! citizen, so each lookup is recorded in the audit log before anything is
//! shown: a lookup that cannot be recorded is refused.

use std::collections::HashMap;

use tonic::Status;
use tvaers_proto::v1;

use super::ApiState;
use crate::audit::{AuditAction, AuditEvent};
use crate::care_team::member;
use crate::now_ms;

pub async fn care_team(
    state: &ApiState,
    request: v1::CareTeamRequest,
    actor: String,
) -> Result<v1::CareTeamResponse, Status> {
    let cpr = tvaers_proto::cpr::Cpr::parse(&request.citizen_cpr)
        .map_err(|_| Status::invalid_argument("field `citizen_cpr`: not a valid CPR number"))?;
    let citizen = state.citizen_refs.reference(cpr.digits());
    let contacts = state
        .store
        .care_team(&citizen)
        .await
        .map_err(|e| super::internal("care team", e))?;
    state
        .store
        .record_audit(vec![
            AuditEvent::new(now_ms(), actor, AuditAction::CareTeamViewed)
                .citizen(Some(citizen))
                .detail(format!("{} contacts shown", contacts.len())),
        ])
        .await
        .map_err(|e| super::internal("record the audit entry", e))?;
    let mut names: HashMap<String, String> = state
        .peers
        .configured()
        .await
        .into_iter()
        .map(|peer| (peer.org_id, peer.name))
        .collect();
    names.insert(state.org_id.clone(), state.org_name.clone());
    let members = contacts
        .into_iter()
        .map(|contact| {
            let name = names.get(&contact.org).cloned().unwrap_or_default();
            member(contact, name)
        })
        .collect();
    Ok(v1::CareTeamResponse { members })
}
