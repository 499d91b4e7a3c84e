//! The care-team view: who works with a citizen in the other
//! organisations, and how to reach them. This module owns what a notice
//! teaches about that; [`crate::api::care_team`] answers the lookup.
//!
//! Two kinds of notices teach a contact: a handled receipt a peer sends
//! about one of our notices (the handler, in the team inbox that took it)
//! and a plan change, sent or received (its coordinating caseworker).
//! Overdue receipts and the other kinds name nobody and teach nothing. A
//! correction (retract or replace) of a notice withdraws what that notice
//! taught: a retracted admission may have been about the wrong citizen, and
//! its handler must not stay in that citizen's care team. (A correction
//! that arrives before the notice it withdraws cannot stop it.)
//!
//! **Stored when learned, not derived when asked.** The notices that teach
//! a contact are sealed envelopes the store never decodes, and retention
//! purges their bodies after `retention.body_days`. Deriving the view at
//! lookup time would decrypt and decode every stored notice of the site on
//! each lookup and would forget a caseworker once the plan change naming
//! them was purged. So the daemon takes the contact out when it stores the
//! notice, and the store writes it in the same transaction as the notice
//! ([`crate::store::Store::submit`], [`crate::store::Store::accept_inbox`]):
//! a notice stored is never without what it teaches, a duplicate teaches
//! nothing twice. Rows are keyed by the citizen's [`CitizenRef`] (never the
//! CPR number) and the contact is sealed at rest like a handling record.

use prost::Message;
use tvaers_proto::v1;

use crate::Millis;
use crate::audit::CitizenRef;
use crate::store::{CareTeamChange, CareTeamContact};

/// The unit of a plan's coordinating caseworker: one per organisation.
pub const COORDINATOR_UNIT: &str = "coordinating-caseworker";
/// [`v1::CareTeamMember::source`] of a contact from a handled receipt.
pub const SOURCE_HANDLED: &str = "handled";
/// [`v1::CareTeamMember::source`] of a contact from a plan change.
pub const SOURCE_PLAN_CHANGE: &str = "plan_change";

/// One notice, as far as the care-team view cares.
#[derive(Debug, Clone, Copy)]
pub struct Learned<'a> {
    /// The organisation that sent it.
    pub sender: &'a str,
    pub notice_id: &'a str,
    pub notice: &'a v1::Notice,
    pub citizen: &'a CitizenRef,
    /// When the sender wrote it (the envelope's `created_at_ms`).
    pub created_at_ms: Millis,
    /// When this site stored it.
    pub stored_at_ms: Millis,
}

impl Learned<'_> {
    /// What a notice a peer sent us changes: a handled receipt's handler
    /// or a plan change's coordinating caseworker is learned; a correction
    /// withdraws what the peer's corrected notice taught.
    pub fn received(&self) -> Option<CareTeamChange> {
        match &self.notice.payload {
            Some(v1::notice::Payload::Handled(handled)) => {
                self.handler(handled).map(CareTeamChange::Learn)
            }
            Some(v1::notice::Payload::PlanChange(plan)) => {
                self.coordinator(plan).map(CareTeamChange::Learn)
            }
            Some(v1::notice::Payload::Correction(correction)) => Some(CareTeamChange::Forget {
                // Only what this peer told us: it may not withdraw others'.
                org: Some(self.sender.to_owned()),
                notice_id: correction.refers_to_notice_id.clone(),
            }),
            _ => None,
        }
    }

    /// What a notice we send changes: a plan change's coordinating
    /// caseworker is learned (a handled receipt we send names our own
    /// staff); a correction withdraws what our corrected notice taught,
    /// including the handlers peers told us about it.
    pub fn sent(&self) -> Option<CareTeamChange> {
        match &self.notice.payload {
            Some(v1::notice::Payload::PlanChange(plan)) => {
                self.coordinator(plan).map(CareTeamChange::Learn)
            }
            Some(v1::notice::Payload::Correction(correction)) => Some(CareTeamChange::Forget {
                org: None,
                notice_id: correction.refers_to_notice_id.clone(),
            }),
            _ => None,
        }
    }

    fn handler(&self, handled: &v1::Handled) -> Option<CareTeamContact> {
        // An overdue receipt (or any later status) names no handler.
        if handled.status != v1::HandledStatus::Handled as i32 {
            return None;
        }
        let member = v1::CareTeamMember {
            contact: Some(handled.handler.clone()?),
            source: SOURCE_HANDLED.to_owned(),
            ..v1::CareTeamMember::default()
        };
        Some(self.contact(
            &handled.inbox,
            member,
            handled.handled_at_ms,
            // Our notice the receipt is about: the one to look up.
            &handled.notice_id,
        ))
    }

    fn coordinator(&self, plan: &v1::PlanChange) -> Option<CareTeamContact> {
        let caseworker = plan.coordinating_caseworker.as_ref()?;
        let member = v1::CareTeamMember {
            contact: Some(v1::Contact {
                name: caseworker.name.clone(),
                role: "coordinating caseworker".to_owned(),
                phone: caseworker.phone.clone(),
                email: caseworker.email.clone(),
            }),
            works_at: caseworker.organisation.clone(),
            source: SOURCE_PLAN_CHANGE.to_owned(),
            ..v1::CareTeamMember::default()
        };
        Some(self.contact(COORDINATOR_UNIT, member, self.created_at_ms, self.notice_id))
    }

    fn contact(
        &self,
        unit: &str,
        member: v1::CareTeamMember,
        as_of_ms: Millis,
        notice_id: &str,
    ) -> CareTeamContact {
        CareTeamContact {
            citizen: self.citizen.clone(),
            org: self.sender.to_owned(),
            unit: unit.to_owned(),
            contact: member.encode_to_vec(),
            as_of_ms,
            learned_at_ms: self.stored_at_ms,
            notice_id: notice_id.to_owned(),
        }
    }
}

/// A stored contact as the API shows it; `org_name` is the organisation's
/// name as this site knows it (empty when it does not).
pub fn member(contact: CareTeamContact, org_name: String) -> v1::CareTeamMember {
    // Only this module writes the bytes; a row that does not decode shows
    // its ids and times without a contact rather than hiding the row.
    let stored = v1::CareTeamMember::decode(contact.contact.as_slice()).unwrap_or_default();
    v1::CareTeamMember {
        org_id: contact.org,
        org_name,
        unit: contact.unit,
        notice_id: contact.notice_id,
        as_of_ms: contact.as_of_ms,
        learned_at_ms: contact.learned_at_ms,
        ..stored
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tvaers_proto::validate::sample;

    const CPR: &str = "0707814321";

    fn learned(notice: &v1::Notice) -> Learned<'_> {
        Learned {
            sender: "org-x",
            notice_id: "n-1",
            notice,
            citizen: &CITIZEN,
            created_at_ms: 1_000,
            stored_at_ms: 2_000,
        }
    }

    static CITIZEN: CitizenRef = CitizenRef(Vec::new());

    fn learn(change: Option<CareTeamChange>) -> CareTeamContact {
        match change {
            Some(CareTeamChange::Learn(contact)) => contact,
            other => panic!("expected a contact to learn, got {other:?}"),
        }
    }

    #[test]
    fn a_correction_withdraws_what_the_corrected_notice_taught() {
        let notice = sample::correction(CPR, "01a20a50-e02b-74e7-b55e-87017abceebe");
        let forget = |org: Option<&str>| {
            Some(CareTeamChange::Forget {
                org: org.map(str::to_owned),
                notice_id: "01a20a50-e02b-74e7-b55e-87017abceebe".to_owned(),
            })
        };
        // From a peer: only what that peer told us.
        assert_eq!(learned(&notice).received(), forget(Some("org-x")));
        // Ours: also the handled receipts peers sent about it.
        assert_eq!(learned(&notice).sent(), forget(None));
    }

    fn handled(status: v1::HandledStatus) -> v1::Notice {
        v1::Notice {
            citizen_cpr: CPR.into(),
            episode_id: String::new(),
            payload: Some(v1::notice::Payload::Handled(v1::Handled {
                notice_id: "ours-1".into(),
                inbox: "discharge-coordinators".into(),
                status: status as i32,
                handler: Some(v1::Contact {
                    name: "Ane Holm".into(),
                    role: "koordinator".into(),
                    phone: "+45 55 55 12 34".into(),
                    email: String::new(),
                }),
                handled_at_ms: 1_500,
                overdue_at_ms: 0,
            })),
        }
    }

    #[test]
    fn a_handled_receipt_teaches_its_handler_in_its_team_about_our_notice() {
        let notice = handled(v1::HandledStatus::Handled);
        let contact = learn(learned(&notice).received());
        assert_eq!(contact.org, "org-x");
        assert_eq!(contact.unit, "discharge-coordinators");
        assert_eq!(contact.notice_id, "ours-1");
        assert_eq!((contact.as_of_ms, contact.learned_at_ms), (1_500, 2_000));
        let shown = member(contact, "Org X".into());
        assert_eq!(shown.org_name, "Org X");
        assert_eq!(shown.source, SOURCE_HANDLED);
        assert_eq!(shown.contact.unwrap().name, "Ane Holm");
        // Ours to send, not to learn from.
        assert!(learned(&notice).sent().is_none());
    }

    #[test]
    fn a_receipt_without_a_handled_status_teaches_nothing() {
        let notice = handled(v1::HandledStatus::Unspecified);
        assert!(learned(&notice).received().is_none());
    }

    #[test]
    fn a_plan_change_sent_or_received_teaches_its_coordinating_caseworker() {
        let notice = sample::plan_change(CPR, "org-x");
        let Some(v1::notice::Payload::PlanChange(plan)) = &notice.payload else {
            panic!("not a plan change");
        };
        let caseworker = plan.coordinating_caseworker.clone().unwrap();
        for contact in [
            learn(learned(&notice).received()),
            learn(learned(&notice).sent()),
        ] {
            assert_eq!(contact.unit, COORDINATOR_UNIT);
            assert_eq!(
                (contact.as_of_ms, contact.notice_id.as_str()),
                (1_000, "n-1")
            );
            let shown = member(contact, String::new());
            assert_eq!(shown.works_at, caseworker.organisation);
            assert_eq!(shown.source, SOURCE_PLAN_CHANGE);
            let person = shown.contact.unwrap();
            assert_eq!(
                (person.name, person.phone),
                (caseworker.name.clone(), caseworker.phone.clone())
            );
        }
        assert!(learned(&sample::admission(CPR)).received().is_none());
    }
}
