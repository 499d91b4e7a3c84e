//! A notice as JSON, for the webhooks whose inbox opted in to the full
//! notice (`include_notice = true`). It carries the CPR number and health
//! details: build it only for such a webhook's body, never for logs or
//! errors.
//!
//! The form follows the wire schema (`proto/tvaers/v1/notice.proto`): field
//! names as there, times in UTC milliseconds, enums by their schema names
//! (`ADMISSION_URGENCY_ACUTE`; the number when this version does not know
//! it), an absent message as `null`, and the payload under its kind's name
//! next to `kind`.

use serde_json::{Value, json};
use tvaers_proto::v1;

/// An enum field by its schema name, or its number when unknown.
macro_rules! enum_name {
    ($type:ty, $value:expr) => {
        match <$type>::try_from($value) {
            Ok(known) => json!(known.as_str_name()),
            Err(_) => json!($value),
        }
    };
}

/// The notice, payload included.
pub fn notice(notice: &v1::Notice) -> Value {
    use v1::notice::Payload;
    let kind = notice.kind_name();
    let payload = match &notice.payload {
        Some(Payload::Admission(a)) => admission(a),
        Some(Payload::Discharge(d)) => discharge(d),
        Some(Payload::NoShow(n)) => no_show(n),
        Some(Payload::PlanChange(p)) => plan_change(p),
        Some(Payload::Correction(c)) => correction(c),
        Some(Payload::Handled(h)) => handled(h),
        None => Value::Null,
    };
    let mut value = json!({
        "citizen_cpr": notice.citizen_cpr,
        "episode_id": notice.episode_id,
        "kind": kind,
    });
    value[kind] = payload;
    value
}

/// A contact (a person to reach), or `null`.
pub fn contact(contact: Option<&v1::Contact>) -> Value {
    contact.map_or(
        Value::Null,
        |c| json!({"name": c.name, "role": c.role, "phone": c.phone, "email": c.email}),
    )
}

fn unit(unit: Option<&v1::Unit>) -> Value {
    unit.map_or(
        Value::Null,
        |u| json!({"code": u.code, "display_name": u.display_name}),
    )
}

fn admission(a: &v1::Admission) -> Value {
    json!({
        "admitted_at_ms": a.admitted_at_ms,
        "hospital": unit(a.hospital.as_ref()),
        "ward": unit(a.ward.as_ref()),
        "urgency": enum_name!(v1::AdmissionUrgency, a.urgency),
        "legal_basis": enum_name!(v1::AdmissionLegalBasis, a.legal_basis),
        "discharge_planning_requested": a.discharge_planning_requested,
        "ward_contact": contact(a.ward_contact.as_ref()),
    })
}

fn discharge(d: &v1::Discharge) -> Value {
    use v1::discharge::When;
    let mut value = json!({
        "unit": unit(d.unit.as_ref()),
        "destination": enum_name!(v1::DischargeDestination, d.destination),
        "destination_text": d.destination_text,
        "follow_up": d.follow_up.as_ref().map_or(Value::Null, |f| json!({
            "text": f.text,
            "next_appointment_at_ms": f.next_appointment_at_ms,
        })),
        "contact": contact(d.contact.as_ref()),
    });
    match &d.when {
        Some(When::DischargedAtMs(ms)) => value["discharged_at_ms"] = json!(ms),
        Some(When::ExpectedDate(date)) => value["expected_date"] = json!(date),
        None => {}
    }
    value
}

fn no_show(n: &v1::NoShow) -> Value {
    json!({
        "appointment_id": n.appointment_id,
        "scheduled_at_ms": n.scheduled_at_ms,
        "unit": unit(n.unit.as_ref()),
        "kind": enum_name!(v1::NoShowKind, n.kind),
        "outreach_requested": n.outreach_requested,
        "contact": contact(n.contact.as_ref()),
    })
}

fn plan_change(p: &v1::PlanChange) -> Value {
    json!({
        "plan_id": p.plan_id,
        "plan_version": p.plan_version,
        "changed_items": p.changed_items.iter().map(|item| json!({
            "kind": enum_name!(v1::PlanItemKind, item.kind),
            "text": item.text,
            "owner_org": item.owner_org,
        })).collect::<Vec<_>>(),
        "coordinating_caseworker": p.coordinating_caseworker.as_ref().map_or(Value::Null, |c| json!({
            "name": c.name,
            "organisation": c.organisation,
            "phone": c.phone,
            "email": c.email,
        })),
    })
}

fn correction(c: &v1::Correction) -> Value {
    json!({
        "refers_to_notice_id": c.refers_to_notice_id,
        "action": enum_name!(v1::CorrectionAction, c.action),
        "reason": c.reason,
        "replaced_by_notice_id": c.replaced_by_notice_id,
    })
}

fn handled(h: &v1::Handled) -> Value {
    json!({
        "notice_id": h.notice_id,
        "inbox": h.inbox,
        "status": enum_name!(v1::HandledStatus, h.status),
        "handler": contact(h.handler.as_ref()),
        "handled_at_ms": h.handled_at_ms,
        "overdue_at_ms": h.overdue_at_ms,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tvaers_proto::validate::sample;

    const CPR: &str = "0707814321";

    #[test]
    fn every_sample_has_its_payload_under_its_kind() {
        for sample in [
            sample::admission(CPR),
            sample::discharge(CPR),
            sample::no_show(CPR),
            sample::plan_change(CPR, "kommune.x"),
            sample::correction(CPR, "01963a4e-8f2b-7c3d-9e4f-0a1b2c3d4e5f"),
        ] {
            let value = notice(&sample);
            let kind = sample.kind_name();
            assert_eq!(value["kind"], kind);
            assert_eq!(value["citizen_cpr"], CPR);
            assert!(value[kind].is_object(), "{kind}: {value}");
        }
    }

    #[test]
    fn an_admission_reads_as_the_schema_says() {
        let sample = sample::admission(CPR);
        let Some(v1::notice::Payload::Admission(a)) = &sample.payload else {
            panic!("the sample is an admission");
        };
        let value = notice(&sample);
        let admission = &value["admission"];
        assert_eq!(admission["admitted_at_ms"], a.admitted_at_ms);
        assert_eq!(
            admission["ward"]["code"],
            a.ward.as_ref().unwrap().code.as_str()
        );
        assert_eq!(
            admission["urgency"],
            v1::AdmissionUrgency::try_from(a.urgency)
                .unwrap()
                .as_str_name()
        );
        assert_eq!(
            admission["ward_contact"]["phone"],
            a.ward_contact.as_ref().unwrap().phone.as_str()
        );
        // An enum value this version does not know stays a number.
        let mut unknown = a.clone();
        unknown.urgency = 99;
        assert_eq!(super::admission(&unknown)["urgency"], 99);
    }
}
