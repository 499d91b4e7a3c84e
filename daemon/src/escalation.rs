//! Deadlines for handling inbox items, and the decision when to escalate.
//!
//! This module owns the `[[inboxes.deadlines]]` rules (per inbox and notice
//! kind: how many working hours staff have to handle an item, and which
//! inbox is told when they do not) and [`EscalationPolicy::step`], a pure
//! function of (items, now) in the spirit of `delivery::machine`: no clock,
//! no store, no tasks. Working time comes from [`crate::working_hours`].
//!
//! # Rules
//!
//! 1. An item's deadline is [`WorkingHours::deadline`] of its
//!    `received_at_ms` (when this site stored it in that inbox) plus the
//!    rule's working time. An inbox and kind without a rule has none.
//! 2. An item is due when it is neither handled nor escalated and
//!    `deadline <= now`. Handling an item late, after its deadline but
//!    before a step saw it, prevents the escalation: it is handled.
//! 3. [`EscalationStep::next_check_at_ms`] is the earliest deadline of the
//!    items that are not due yet (`None`: nothing to wait for).
//!
//! The driver (wired by the daemon) loads the unhandled, not yet escalated
//! items, calls [`EscalationPolicy::step`], files an escalation item in each
//! [`Escalate::escalate_to`] inbox, tells the sender the notice is overdue,
//! marks the item escalated in the same transaction (so a restart does not
//! escalate twice), then sleeps until `next_check_at_ms` or until a new item
//! arrives, whichever is first.

use crate::Millis;
use crate::config::{NOTICE_KINDS, NOTICE_KINDS_HINT, normalize_notice_kinds};
use crate::routing::{INBOX_NAME_RULE, is_valid_inbox_name};
use crate::working_hours::WorkingHours;

/// Largest deadline accepted, in working hours (about five years of
/// standard working days): anything longer is a typo.
pub const MAX_WORKING_HOURS: f64 = 10_000.0;

/// Why a deadline rule set was refused. [`EscalationError::config_key`]
/// names the config key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscalationError {
    #[error("invalid inbox name {name:?}: {}", INBOX_NAME_RULE)]
    InvalidInboxName {
        rule: usize,
        field: &'static str,
        name: String,
    },
    #[error("no route or escalation leads to inbox {name:?}: check its spelling in [inboxes]")]
    UnknownInbox { rule: usize, name: String },
    #[error("an inbox cannot escalate to itself")]
    EscalatesToItself { rule: usize },
    #[error("unknown notice kind {kind:?}: {}", NOTICE_KINDS_HINT)]
    UnknownKind { rule: usize, kind: String },
    #[error("must be a number of hours from 0 to {}", MAX_WORKING_HOURS)]
    InvalidDuration { rule: usize },
    #[error("{kind} items of inbox {inbox} already have a deadline in inboxes.deadlines[{first}]")]
    Overlap {
        rule: usize,
        first: usize,
        inbox: String,
        kind: &'static str,
    },
}

impl EscalationError {
    /// The config key the error is about, e.g. `inboxes.deadlines[1].inbox`.
    pub fn config_key(&self) -> String {
        let (rule, field) = match self {
            EscalationError::InvalidInboxName { rule, field, .. } => (rule, *field),
            EscalationError::UnknownInbox { rule, .. } | EscalationError::Overlap { rule, .. } => {
                (rule, "inbox")
            }
            EscalationError::EscalatesToItself { rule } => (rule, "escalate_to"),
            EscalationError::UnknownKind { rule, .. } => (rule, "kinds"),
            EscalationError::InvalidDuration { rule } => (rule, "within_working_hours"),
        };
        format!("inboxes.deadlines[{rule}].{field}")
    }
}

/// One `[[inboxes.deadlines]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadlineRule {
    /// The inbox whose items it times.
    pub inbox: String,
    /// Notice kinds (either spelling); empty: every kind.
    pub kinds: Vec<String>,
    /// Working hours to handle an item in (fractions allowed, 0 escalates
    /// at the first working moment).
    pub within_working_hours: f64,
    /// The inbox that gets an escalation item when the deadline passes.
    pub escalate_to: String,
}

impl DeadlineRule {
    fn applies_to(&self, inbox: &str, kind: &str) -> bool {
        self.inbox == inbox && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
    }

    /// The rule's working time in ms.
    pub fn working_ms(&self) -> i64 {
        // Checked in `EscalationPolicy::new` to be within 0..=MAX_WORKING_HOURS,
        // so the product fits an i64 easily.
        (self.within_working_hours * 3_600_000.0).round() as i64
    }
}

/// An inbox item as escalation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    /// The store's id of the item (with `inbox`, it names one routed copy).
    pub id: u64,
    pub inbox: String,
    /// As [`tvaers_proto::v1::Notice::kind_name`] spells it.
    pub kind: String,
    /// When this site stored it in `inbox`.
    pub received_at_ms: Millis,
    pub handled_at_ms: Option<Millis>,
    /// An escalation was already filed for it.
    pub escalated: bool,
}

/// An item whose deadline passed unhandled: file an escalation item in
/// `escalate_to` and tell the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalate {
    pub id: u64,
    pub inbox: String,
    pub kind: String,
    pub escalate_to: String,
    pub deadline_ms: Millis,
}

/// What one [`EscalationPolicy::step`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscalationStep {
    /// Items due now, in the order given.
    pub escalate: Vec<Escalate>,
    /// Call `step` again no later than this (the next deadline), unless an
    /// item arrives first; `None` when no item waits for a deadline.
    pub next_check_at_ms: Option<Millis>,
}

/// The checked deadline rules with the calendar they count in.
#[derive(Debug, Clone)]
pub struct EscalationPolicy {
    hours: WorkingHours,
    rules: Vec<DeadlineRule>,
}

impl EscalationPolicy {
    /// Checks the rules: valid inbox names, an `inbox` that a route, the
    /// default or another rule's `escalate_to` leads to (`routable` lists
    /// the first two, see [`crate::routing::RoutingTable::inboxes`]), no
    /// escalation to itself, known kinds, a duration from 0 to
    /// [`MAX_WORKING_HOURS`], and at most one rule per inbox and kind.
    pub fn new(
        hours: WorkingHours,
        mut rules: Vec<DeadlineRule>,
        routable: &[&str],
    ) -> Result<Self, EscalationError> {
        for (i, rule) in rules.iter_mut().enumerate() {
            for (field, name) in [("inbox", &rule.inbox), ("escalate_to", &rule.escalate_to)] {
                if !is_valid_inbox_name(name) {
                    return Err(EscalationError::InvalidInboxName {
                        rule: i,
                        field,
                        name: name.clone(),
                    });
                }
            }
            if rule.escalate_to == rule.inbox {
                return Err(EscalationError::EscalatesToItself { rule: i });
            }
            normalize_notice_kinds(&mut rule.kinds)
                .map_err(|kind| EscalationError::UnknownKind { rule: i, kind })?;
            if !(0.0..=MAX_WORKING_HOURS).contains(&rule.within_working_hours) {
                return Err(EscalationError::InvalidDuration { rule: i });
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            let known = routable.contains(&rule.inbox.as_str())
                || rules.iter().any(|r| r.escalate_to == rule.inbox);
            if !known {
                return Err(EscalationError::UnknownInbox {
                    rule: i,
                    name: rule.inbox.clone(),
                });
            }
            for kind in NOTICE_KINDS {
                if !rule.applies_to(&rule.inbox, kind) {
                    continue;
                }
                if let Some(first) = rules[..i]
                    .iter()
                    .position(|r| r.applies_to(&rule.inbox, kind))
                {
                    return Err(EscalationError::Overlap {
                        rule: i,
                        first,
                        inbox: rule.inbox.clone(),
                        kind,
                    });
                }
            }
        }
        Ok(EscalationPolicy { hours, rules })
    }

    /// No deadlines: nothing ever escalates.
    pub fn without_deadlines(hours: WorkingHours) -> Self {
        EscalationPolicy {
            hours,
            rules: Vec::new(),
        }
    }

    pub fn working_hours(&self) -> &WorkingHours {
        &self.hours
    }

    pub fn rules(&self) -> &[DeadlineRule] {
        &self.rules
    }

    /// The rule timing items of `kind` in `inbox`, if any.
    pub fn rule_for(&self, inbox: &str, kind: &str) -> Option<&DeadlineRule> {
        self.rules.iter().find(|r| r.applies_to(inbox, kind))
    }

    /// When `item` must be handled by, if its inbox and kind have a rule.
    pub fn deadline(&self, item: &InboxItem) -> Option<Millis> {
        self.rule_for(&item.inbox, &item.kind)
            .map(|rule| self.hours.deadline(item.received_at_ms, rule.working_ms()))
    }

    /// Which `items` are due for escalation at `now`, and when to look
    /// again; see the module documentation.
    pub fn step(&self, now: Millis, items: &[InboxItem]) -> EscalationStep {
        let mut step = EscalationStep::default();
        for item in items {
            if item.escalated || item.handled_at_ms.is_some() {
                continue;
            }
            let Some(rule) = self.rule_for(&item.inbox, &item.kind) else {
                continue;
            };
            let deadline_ms = self.hours.deadline(item.received_at_ms, rule.working_ms());
            if deadline_ms <= now {
                step.escalate.push(Escalate {
                    id: item.id,
                    inbox: item.inbox.clone(),
                    kind: item.kind.clone(),
                    escalate_to: rule.escalate_to.clone(),
                    deadline_ms,
                });
            } else if deadline_ms != Millis::MAX {
                step.next_check_at_ms = Some(
                    step.next_check_at_ms
                        .map_or(deadline_ms, |next| next.min(deadline_ms)),
                );
            }
        }
        step
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::working_hours::tests::cph;

    const HOUR: i64 = 3_600_000;

    fn rule(inbox: &str, kinds: &[&str], hours: f64, escalate_to: &str) -> DeadlineRule {
        DeadlineRule {
            inbox: inbox.into(),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            within_working_hours: hours,
            escalate_to: escalate_to.into(),
        }
    }

    fn policy(rules: Vec<DeadlineRule>) -> Result<EscalationPolicy, EscalationError> {
        EscalationPolicy::new(
            WorkingHours::standard().unwrap(),
            rules,
            &["discharge-coordinators", "housing-support", "front-desk"],
        )
    }

    /// Admissions to the discharge coordinators: 4 working hours, then the
    /// team leads; no-shows to housing support: 8 hours.
    fn municipality() -> EscalationPolicy {
        policy(vec![
            rule("discharge-coordinators", &["admission"], 4.0, "team-leads"),
            rule("housing-support", &[], 8.0, "team-leads"),
        ])
        .unwrap()
    }

    fn item(id: u64, inbox: &str, kind: &str, received_at: &str) -> InboxItem {
        InboxItem {
            id,
            inbox: inbox.into(),
            kind: kind.into(),
            received_at_ms: cph(received_at),
            handled_at_ms: None,
            escalated: false,
        }
    }

    fn due(step: &EscalationStep) -> Vec<u64> {
        step.escalate.iter().map(|e| e.id).collect()
    }

    #[test]
    fn before_and_after_the_deadline() {
        let p = municipality();
        let items = [item(
            1,
            "discharge-coordinators",
            "admission",
            "2026-11-24T09:00",
        )];
        let deadline = cph("2026-11-24T13:00");

        let before = p.step(deadline - 1, &items);
        assert!(before.escalate.is_empty());
        assert_eq!(before.next_check_at_ms, Some(deadline));

        let at = p.step(deadline, &items);
        assert_eq!(
            at.escalate,
            [Escalate {
                id: 1,
                inbox: "discharge-coordinators".into(),
                kind: "admission".into(),
                escalate_to: "team-leads".into(),
                deadline_ms: deadline,
            }]
        );
        assert_eq!(at.next_check_at_ms, None);

        // Once escalated, or handled (even late), it is never due again.
        let mut escalated = items.clone();
        escalated[0].escalated = true;
        assert_eq!(
            p.step(deadline + HOUR, &escalated),
            EscalationStep::default()
        );
        let mut handled = items.clone();
        handled[0].handled_at_ms = Some(deadline + 1);
        assert_eq!(p.step(deadline + HOUR, &handled), EscalationStep::default());
    }

    #[test]
    fn a_weekend_in_between() {
        let p = municipality();
        // Friday 15:00: 1 h on Friday, 3 h on Monday.
        let items = [item(
            7,
            "discharge-coordinators",
            "admission",
            "2026-11-27T15:00",
        )];
        for quiet in ["2026-11-27T16:30", "2026-11-28T12:00", "2026-11-30T10:59"] {
            let step = p.step(cph(quiet), &items);
            assert!(step.escalate.is_empty(), "{quiet}");
            assert_eq!(
                step.next_check_at_ms,
                Some(cph("2026-11-30T11:00")),
                "{quiet}"
            );
        }
        assert_eq!(due(&p.step(cph("2026-11-30T11:00"), &items)), [7]);
    }

    #[test]
    fn a_weekend_with_a_clock_change() {
        let p = municipality();
        // Friday 2026-03-27 14:00 CET; clocks spring forward on Sunday;
        // 2 h on Friday, 6 h on Monday (CEST).
        let items = [item(3, "housing-support", "no_show", "2026-03-27T14:00")];
        let deadline = cph("2026-03-30T14:00");
        assert_eq!(
            p.step(cph("2026-03-30T13:59"), &items).next_check_at_ms,
            Some(deadline)
        );
        assert_eq!(due(&p.step(deadline, &items)), [3]);
        // In October the clocks fall back.
        let items = [item(4, "housing-support", "no_show", "2026-10-23T14:00")];
        let deadline = cph("2026-10-26T14:00");
        assert!(p.step(deadline - 1, &items).escalate.is_empty());
        assert_eq!(due(&p.step(deadline, &items)), [4]);
    }

    #[test]
    fn next_check_is_the_earliest_pending_deadline() {
        let p = municipality();
        let items = [
            item(1, "discharge-coordinators", "admission", "2026-11-24T08:00"),
            item(2, "discharge-coordinators", "admission", "2026-11-24T10:00"),
            item(3, "housing-support", "plan_change", "2026-11-24T08:30"),
            // No rule: discharges to the coordinators, and the front desk.
            item(4, "discharge-coordinators", "discharge", "2026-11-20T08:00"),
            item(5, "front-desk", "correction", "2026-11-20T08:00"),
        ];
        let step = p.step(cph("2026-11-24T12:30"), &items);
        assert_eq!(due(&step), [1]);
        assert_eq!(step.next_check_at_ms, Some(cph("2026-11-24T14:00")));
        let step = p.step(cph("2026-11-24T14:00"), &items);
        assert_eq!(due(&step), [1, 2]);
        // 7.5 h on Tuesday, the last half hour on Wednesday morning.
        assert_eq!(step.next_check_at_ms, Some(cph("2026-11-25T08:30")));
        let step = p.step(cph("2026-11-25T08:30"), &items);
        assert_eq!(due(&step), [1, 2, 3]);
        assert_eq!(step.next_check_at_ms, None);
    }

    #[test]
    fn a_deadline_of_zero_escalates_at_the_first_working_moment() {
        let p = policy(vec![rule("front-desk", &["correction"], 0.0, "team-leads")]).unwrap();
        let night = [item(1, "front-desk", "correction", "2026-11-24T22:00")];
        let step = p.step(cph("2026-11-24T22:00"), &night);
        assert!(step.escalate.is_empty());
        assert_eq!(step.next_check_at_ms, Some(cph("2026-11-25T08:00")));
        let day = [item(2, "front-desk", "correction", "2026-11-24T10:00")];
        assert_eq!(due(&p.step(cph("2026-11-24T10:00"), &day)), [2]);
    }

    #[test]
    fn fractional_hours() {
        let p = policy(vec![rule("front-desk", &[], 0.5, "team-leads")]).unwrap();
        assert_eq!(
            p.rule_for("front-desk", "no_show").unwrap().working_ms(),
            HOUR / 2
        );
        // 15 minutes before closing, 15 after the next opening.
        let late = item(1, "front-desk", "no_show", "2026-11-24T15:45");
        assert_eq!(p.deadline(&late), Some(cph("2026-11-25T08:15")));
    }

    #[test]
    fn bad_rules_name_their_key() {
        let cases = [
            (rule("Front", &[], 1.0, "x"), "inboxes.deadlines[0].inbox"),
            (
                rule("front-desk", &[], 1.0, "X"),
                "inboxes.deadlines[0].escalate_to",
            ),
            (rule("nowhere", &[], 1.0, "x"), "inboxes.deadlines[0].inbox"),
            (
                rule("front-desk", &[], 1.0, "front-desk"),
                "inboxes.deadlines[0].escalate_to",
            ),
            (
                rule("front-desk", &["gossip"], 1.0, "x"),
                "inboxes.deadlines[0].kinds",
            ),
            (
                rule("front-desk", &[], -1.0, "x"),
                "inboxes.deadlines[0].within_working_hours",
            ),
            (
                rule("front-desk", &[], f64::NAN, "x"),
                "inboxes.deadlines[0].within_working_hours",
            ),
            (
                rule("front-desk", &[], 1e9, "x"),
                "inboxes.deadlines[0].within_working_hours",
            ),
        ];
        for (bad, key) in cases {
            let err = policy(vec![bad]).unwrap_err();
            assert_eq!(err.config_key(), key, "{err}");
        }
        let err = policy(vec![
            rule("front-desk", &[], 4.0, "team-leads"),
            rule("front-desk", &["no-show"], 2.0, "team-leads"),
        ])
        .unwrap_err();
        assert_eq!(err.config_key(), "inboxes.deadlines[1].inbox");
        assert_eq!(
            err.to_string(),
            "no_show items of inbox front-desk already have a deadline in inboxes.deadlines[0]"
        );
        // An escalation inbox may have a deadline of its own.
        policy(vec![
            rule("front-desk", &[], 4.0, "team-leads"),
            rule("team-leads", &[], 8.0, "management"),
        ])
        .unwrap();
    }
}
