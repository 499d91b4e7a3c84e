//! Building a notice submission.

use std::time::Duration;

use tvaers_proto::v1;
use tvaers_proto::v1::notice::Payload;

/// A notice, its recipients and how long to try, ready for
/// [`Client::submit`](crate::Client::submit).
///
/// A fresh idempotency key (a UUIDv7) is chosen when the submission is
/// created, so submitting a clone of the same `Submission` again (after a
/// timeout or an [`Unavailable`](crate::ClientError::Unavailable) error) stores
/// the notice only once. Set [`idempotency_key`](Self::idempotency_key) when
/// the key must survive a restart of the local system, e.g. derived from the
/// local record's id.
///
/// `Debug` shows recipients and key but never the citizen's CPR number or the
/// health details.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    notice: v1::Notice,
    recipients: Vec<String>,
    idempotency_key: String,
    ttl: Duration,
}

fn notice(cpr: &str, payload: Payload) -> v1::Notice {
    v1::Notice {
        citizen_cpr: cpr.to_owned(),
        episode_id: String::new(),
        payload: Some(payload),
    }
}

impl Submission {
    /// A submission of a notice built by hand, with no recipients yet.
    pub fn new(notice: v1::Notice) -> Self {
        Submission {
            notice,
            recipients: Vec::new(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            ttl: Duration::ZERO,
        }
    }

    /// Indlæggelse: the citizen with this CPR number was admitted.
    pub fn admission(cpr: &str, admission: v1::Admission) -> Self {
        Self::new(notice(cpr, Payload::Admission(admission)))
    }

    /// Udskrivning: the citizen was (or is expected to be) discharged.
    pub fn discharge(cpr: &str, discharge: v1::Discharge) -> Self {
        Self::new(notice(cpr, Payload::Discharge(discharge)))
    }

    /// Udeblivelse / aflysning: an appointment did not take place.
    pub fn no_show(cpr: &str, no_show: v1::NoShow) -> Self {
        Self::new(notice(cpr, Payload::NoShow(no_show)))
    }

    /// Ændring i tværfaglig plan: the shared plan changed.
    pub fn plan_change(cpr: &str, plan_change: v1::PlanChange) -> Self {
        Self::new(notice(cpr, Payload::PlanChange(plan_change)))
    }

    /// Rettelse / annullering of an earlier notice from this organisation.
    pub fn correction(cpr: &str, correction: v1::Correction) -> Self {
        Self::new(notice(cpr, Payload::Correction(correction)))
    }

    /// Adds a recipient organisation id (a peer configured in the daemon).
    /// Call once per recipient.
    #[must_use]
    pub fn to(mut self, org_id: impl Into<String>) -> Self {
        self.recipients.push(org_id.into());
        self
    }

    /// Replaces the generated idempotency key with one chosen by the caller.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = key.into();
        self
    }

    /// Links the notice to a stay or plan, so notices about it can be
    /// related.
    #[must_use]
    pub fn episode(mut self, episode_id: impl Into<String>) -> Self {
        self.notice.episode_id = episode_id.into();
        self
    }

    /// How long the daemon keeps trying to deliver. Sent in whole seconds,
    /// rounded up; `Duration::ZERO` (the default) means the daemon's default.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The idempotency key this submission will be sent with.
    pub fn key(&self) -> &str {
        &self.idempotency_key
    }

    /// The recipients added so far.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// The notice.
    pub fn notice(&self) -> &v1::Notice {
        &self.notice
    }

    /// The request sent to the daemon's `Submit`.
    pub fn into_request(self) -> v1::SubmitRequest {
        let ttl_seconds = self
            .ttl
            .as_secs()
            .saturating_add(u64::from(self.ttl.subsec_nanos() > 0));
        v1::SubmitRequest {
            idempotency_key: self.idempotency_key,
            recipients: self.recipients,
            notice: Some(self.notice),
            ttl_seconds,
        }
    }
}

impl From<Submission> for v1::SubmitRequest {
    fn from(submission: Submission) -> Self {
        submission.into_request()
    }
}

/// The daemon's answer to a submit: the notice is on its disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Submitted {
    /// The notice id (UUIDv7) the daemon assigned; use it with
    /// [`Client::delivery_status`](crate::Client::delivery_status).
    pub notice_id: String,
    /// True when the idempotency key was seen before: nothing new was stored
    /// and `notice_id` is the first submission's.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> v1::Admission {
        v1::Admission {
            admitted_at_ms: 1_700_000_000_000,
            urgency: v1::AdmissionUrgency::Acute as i32,
            ..Default::default()
        }
    }

    #[test]
    fn builder_fills_the_request() {
        let request = Submission::admission("0101904000", admission())
            .to("kommune-gribskov")
            .to("almen-praksis-42")
            .idempotency_key("epj-4711")
            .episode("stay-1")
            .ttl(Duration::from_secs(3600))
            .into_request();
        assert_eq!(request.idempotency_key, "epj-4711");
        assert_eq!(request.recipients, ["kommune-gribskov", "almen-praksis-42"]);
        assert_eq!(request.ttl_seconds, 3600);
        let notice = request.notice.expect("notice is set");
        assert_eq!(notice.citizen_cpr, "0101904000");
        assert_eq!(notice.episode_id, "stay-1");
        assert!(notice.payload == Some(Payload::Admission(admission())));
    }

    #[test]
    fn defaults_generate_a_key_and_leave_ttl_to_the_daemon() {
        let a = Submission::discharge("0101904000", v1::Discharge::default());
        let b = Submission::discharge("0101904000", v1::Discharge::default());
        assert_ne!(a.key(), b.key(), "each submission gets its own key");
        assert_eq!(a.key().len(), 36, "a hyphenated UUID");
        let key = a.key().to_owned();
        let retry = a.clone().into_request();
        assert_eq!(retry.idempotency_key, key, "a clone keeps the key");
        assert_eq!(retry.ttl_seconds, 0);
        assert!(retry.recipients.is_empty());
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let request = |ttl| {
            Submission::no_show("0101904000", v1::NoShow::default())
                .ttl(ttl)
                .into_request()
                .ttl_seconds
        };
        assert_eq!(request(Duration::from_millis(1)), 1);
        assert_eq!(request(Duration::from_millis(1500)), 2);
        assert_eq!(request(Duration::ZERO), 0);
        assert_eq!(request(Duration::MAX), u64::MAX);
    }

    #[test]
    fn each_constructor_sets_its_payload_kind() {
        let kinds = [
            Submission::admission("x", v1::Admission::default()),
            Submission::discharge("x", v1::Discharge::default()),
            Submission::no_show("x", v1::NoShow::default()),
            Submission::plan_change("x", v1::PlanChange::default()),
            Submission::correction("x", v1::Correction::default()),
        ]
        .map(|s| s.notice().kind_name());
        assert_eq!(
            kinds,
            [
                "admission",
                "discharge",
                "no_show",
                "plan_change",
                "correction"
            ]
        );
    }

    #[test]
    fn debug_hides_the_cpr() {
        let s = Submission::admission("0101904000", admission()).to("kommune-gribskov");
        let text = format!("{s:?}");
        assert!(!text.contains("0101904000"), "{text}");
        assert!(text.contains("kommune-gribskov"), "{text}");
    }
}
