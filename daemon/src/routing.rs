//! Routing of received notices to the staff inboxes (teams) of this site.
//!
//! This module owns the routing rules of `[inboxes]` in the config, their
//! checks, and the decision which inboxes one accepted notice goes to. It is
//! pure: no store, no clock, no I/O; the receiver asks [`RoutingTable::route`]
//! and files the notice in every inbox it names.
//!
//! # Semantics
//!
//! * A rule ([`RouteRule`]) has conditions and a non-empty list of inboxes
//!   (`to`). Each condition is a list; a notice meets it when it matches
//!   *any* entry (an empty list is no condition). A rule matches when the
//!   notice meets *all* its conditions: its kind is in `kinds`, its sender
//!   is in `from_orgs`, the sender's sector (from its `[[peers]]` entry) is
//!   in `from_sectors`, and one of the unit codes in the notice (hospital and
//!   ward of an admission, unit of a discharge or no-show; plan changes and
//!   corrections carry none, see [`unit_codes`]) is in `units`. A rule
//!   without conditions matches every notice.
//! * Rules are tried in file order; every matching rule adds its inboxes
//!   (each inbox once, in the order first named). A matching rule with
//!   `stop = true` ends the search.
//! * When no rule matches, the notice goes to the `default` inbox.
//! * Every notice kind must reach an inbox whatever its sender and units:
//!   either there is a `default`, or some rule for that kind has no
//!   condition besides `kinds`. Otherwise [`RoutingTable::new`] refuses the
//!   rule set naming the kinds, so a site cannot start with a notice kind
//!   that would be stored in no inbox.
//! * Without an `[inboxes]` section every notice goes to [`DEFAULT_INBOX`],
//!   as before routing existed ([`RoutingTable::default`]).

use tvaers_proto::v1::Notice;

use crate::config::{NOTICE_KINDS, NOTICE_KINDS_HINT, Sector, normalize_notice_kinds};

/// The inbox everything goes to when the config has no `[inboxes]` section.
pub const DEFAULT_INBOX: &str = "main";

/// How an error about an invalid inbox name says what is accepted.
pub const INBOX_NAME_RULE: &str =
    "use lowercase letters, digits and `-` (at most 64 characters, not starting with `-`)";

/// Longest inbox name; names appear in URLs, metrics labels and CLI tables.
pub const MAX_INBOX_NAME_CHARS: usize = 64;

/// Why a routing rule set was refused. [`RoutingError::config_key`] names
/// the config key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("invalid inbox name {name:?}: {}", INBOX_NAME_RULE)]
    InvalidInboxName { rule: Option<usize>, name: String },
    #[error("unknown notice kind {kind:?}: {}", NOTICE_KINDS_HINT)]
    UnknownKind { rule: usize, kind: String },
    #[error("invalid organisation id {org_id:?}: {problem}")]
    InvalidOrgId {
        rule: usize,
        org_id: String,
        problem: String,
    },
    #[error("a unit code must not be empty")]
    EmptyUnitCode { rule: usize },
    #[error("a route needs at least one inbox in `to`")]
    NoInbox { rule: usize },
    #[error(
        "notice kind{} {} would reach no inbox: set `default` in [inboxes] or add a route with only `kinds` for {}",
        if .kinds.len() == 1 { "" } else { "s" },
        .kinds.join(", "),
        if .kinds.len() == 1 { "it" } else { "them" }
    )]
    Unrouted { kinds: Vec<&'static str> },
}

impl RoutingError {
    /// The config key the error is about, e.g. `inboxes.routes[2].to`.
    pub fn config_key(&self) -> String {
        let route = |rule: &usize, field: &str| format!("inboxes.routes[{rule}].{field}");
        match self {
            RoutingError::InvalidInboxName { rule: None, .. } => "inboxes.default".into(),
            RoutingError::InvalidInboxName {
                rule: Some(rule), ..
            }
            | RoutingError::NoInbox { rule } => route(rule, "to"),
            RoutingError::UnknownKind { rule, .. } => route(rule, "kinds"),
            RoutingError::InvalidOrgId { rule, .. } => route(rule, "from_orgs"),
            RoutingError::EmptyUnitCode { rule } => route(rule, "units"),
            RoutingError::Unrouted { .. } => "inboxes".into(),
        }
    }
}

/// Checks an inbox name: 1 to [`MAX_INBOX_NAME_CHARS`] lowercase ASCII
/// letters, digits and `-`, not starting with `-`.
pub fn is_valid_inbox_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INBOX_NAME_CHARS
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The unit codes a notice names, for matching `units`: the hospital and
/// ward of an admission, the unit of a discharge or a no-show. Empty codes
/// are left out; plan changes and corrections name no unit.
pub fn unit_codes(notice: &Notice) -> Vec<&str> {
    use tvaers_proto::v1::notice::Payload;
    let units = match &notice.payload {
        Some(Payload::Admission(a)) => vec![a.hospital.as_ref(), a.ward.as_ref()],
        Some(Payload::Discharge(d)) => vec![d.unit.as_ref()],
        Some(Payload::NoShow(n)) => vec![n.unit.as_ref()],
        Some(Payload::PlanChange(_))
        | Some(Payload::Correction(_))
        | Some(Payload::Handled(_))
        | None => Vec::new(),
    };
    units
        .into_iter()
        .flatten()
        .map(|unit| unit.code.as_str())
        .filter(|code| !code.is_empty())
        .collect()
}

/// What routing looks at in one accepted notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeFacts<'a> {
    /// As [`Notice::kind_name`] spells it (`no_show`, not `no-show`).
    pub kind: &'a str,
    /// The sending organisation (the envelope's verified sender).
    pub sender_org: &'a str,
    /// The sender's sector from its `[[peers]]` entry, when given there.
    pub sender_sector: Option<Sector>,
    /// The unit codes in the notice ([`unit_codes`]).
    pub units: &'a [&'a str],
}

/// One `[[inboxes.routes]]` entry; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRule {
    /// Notice kinds (either spelling, `no-show` or `no_show`); empty: any.
    pub kinds: Vec<String>,
    /// Sending organisation ids; empty: any.
    pub from_orgs: Vec<String>,
    /// Sectors of the sender; empty: any. A sender whose sector is not
    /// configured matches no sector.
    pub from_sectors: Vec<Sector>,
    /// Unit codes; empty: any. A notice matches when one of its unit codes
    /// is listed.
    pub units: Vec<String>,
    /// The inboxes a matching notice goes to (at least one).
    pub to: Vec<String>,
    /// A match ends the search: later rules are not tried.
    pub stop: bool,
}

impl RouteRule {
    fn matches(&self, facts: &NoticeFacts<'_>) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == facts.kind))
            && (self.from_orgs.is_empty() || self.from_orgs.iter().any(|o| o == facts.sender_org))
            && (self.from_sectors.is_empty()
                || facts
                    .sender_sector
                    .is_some_and(|s| self.from_sectors.contains(&s)))
            && (self.units.is_empty()
                || facts
                    .units
                    .iter()
                    .any(|u| self.units.iter().any(|r| r == u)))
    }

    /// True when this rule matches every notice of `kind`, whoever sends it
    /// and whatever units it names.
    fn always_matches(&self, kind: &str) -> bool {
        self.from_orgs.is_empty()
            && self.from_sectors.is_empty()
            && self.units.is_empty()
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
    }
}

/// The checked routing rules of a site; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    default: Option<String>,
    rules: Vec<RouteRule>,
}

impl Default for RoutingTable {
    /// Everything to [`DEFAULT_INBOX`]: a config without `[inboxes]`.
    fn default() -> Self {
        RoutingTable {
            default: Some(DEFAULT_INBOX.to_owned()),
            rules: Vec::new(),
        }
    }
}

impl RoutingTable {
    /// Checks the rules (inbox names, kinds, org ids, unit codes, a target
    /// for every rule) and that every notice kind reaches an inbox.
    /// Kinds are stored in [`Notice::kind_name`] spelling and each rule's
    /// `to` without repeats.
    pub fn new(default: Option<String>, mut rules: Vec<RouteRule>) -> Result<Self, RoutingError> {
        if let Some(name) = &default
            && !is_valid_inbox_name(name)
        {
            return Err(RoutingError::InvalidInboxName {
                rule: None,
                name: name.clone(),
            });
        }
        for (i, rule) in rules.iter_mut().enumerate() {
            normalize_notice_kinds(&mut rule.kinds)
                .map_err(|kind| RoutingError::UnknownKind { rule: i, kind })?;
            for org_id in &rule.from_orgs {
                tvaers_proto::validate::org_id("from_orgs", org_id).map_err(|e| {
                    RoutingError::InvalidOrgId {
                        rule: i,
                        org_id: org_id.clone(),
                        problem: e.problem.to_string(),
                    }
                })?;
            }
            if rule.units.iter().any(|u| u.is_empty()) {
                return Err(RoutingError::EmptyUnitCode { rule: i });
            }
            if rule.to.is_empty() {
                return Err(RoutingError::NoInbox { rule: i });
            }
            if let Some(name) = rule.to.iter().find(|n| !is_valid_inbox_name(n)) {
                return Err(RoutingError::InvalidInboxName {
                    rule: Some(i),
                    name: name.clone(),
                });
            }
            let mut to: Vec<String> = Vec::with_capacity(rule.to.len());
            for name in rule.to.drain(..) {
                if !to.contains(&name) {
                    to.push(name);
                }
            }
            rule.to = to;
        }
        let unrouted: Vec<&'static str> = NOTICE_KINDS
            .iter()
            .copied()
            .filter(|kind| default.is_none() && !rules.iter().any(|r| r.always_matches(kind)))
            .collect();
        if !unrouted.is_empty() {
            return Err(RoutingError::Unrouted { kinds: unrouted });
        }
        Ok(RoutingTable { default, rules })
    }

    /// The inboxes one accepted notice goes to, in rule order, each once.
    /// Never empty for a kind in [`NOTICE_KINDS`] (checked by
    /// [`RoutingTable::new`]).
    pub fn route(&self, facts: &NoticeFacts<'_>) -> Vec<String> {
        let mut inboxes: Vec<String> = Vec::new();
        for rule in &self.rules {
            if !rule.matches(facts) {
                continue;
            }
            for name in &rule.to {
                if !inboxes.contains(name) {
                    inboxes.push(name.clone());
                }
            }
            if rule.stop {
                break;
            }
        }
        if inboxes.is_empty()
            && let Some(default) = &self.default
        {
            inboxes.push(default.clone());
        }
        inboxes
    }

    /// The inbox for notices no rule matches, if any.
    pub fn default_inbox(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The rules, checked, in file order.
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    /// Every inbox a notice can be routed to: the default, then each rule's
    /// inboxes in file order, each once.
    pub fn inboxes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let all = self
            .default
            .iter()
            .chain(self.rules.iter().flat_map(|r| r.to.iter()));
        for name in all {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(kinds: &[&str], to: &[&str]) -> RouteRule {
        RouteRule {
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            to: to.iter().map(|t| (*t).to_owned()).collect(),
            ..RouteRule::default()
        }
    }

    fn facts<'a>(kind: &'a str, sector: Option<Sector>, units: &'a [&'a str]) -> NoticeFacts<'a> {
        NoticeFacts {
            kind,
            sender_org: "psykiatri.sjaelland",
            sender_sector: sector,
            units,
        }
    }

    /// The municipality of the issue: admissions and discharges to the
    /// discharge coordinators, psychiatric no-shows to housing support,
    /// plan changes to the caseworkers, the rest to the front desk.
    fn municipality() -> RoutingTable {
        RoutingTable::new(
            Some("front-desk".into()),
            vec![
                rule(&["admission", "discharge"], &["discharge-coordinators"]),
                RouteRule {
                    from_sectors: vec![Sector::Psychiatry],
                    ..rule(&["no-show"], &["housing-support"])
                },
                rule(&["plan-change"], &["caseworkers"]),
            ],
        )
        .unwrap()
    }

    #[test]
    fn without_inboxes_everything_goes_to_main() {
        let table = RoutingTable::default();
        for kind in NOTICE_KINDS {
            assert_eq!(table.route(&facts(kind, None, &[])), ["main"]);
        }
        assert_eq!(table.inboxes(), ["main"]);
    }

    #[test]
    fn rules_by_kind_and_sector_with_a_default() {
        let table = municipality();
        let psychiatry = Some(Sector::Psychiatry);
        assert_eq!(
            table.route(&facts("admission", psychiatry, &["6630011"])),
            ["discharge-coordinators"]
        );
        assert_eq!(
            table.route(&facts("discharge", psychiatry, &[])),
            ["discharge-coordinators"]
        );
        assert_eq!(
            table.route(&facts("no_show", psychiatry, &[])),
            ["housing-support"]
        );
        // A GP's no-show, or one from a peer without a configured sector,
        // does not meet `from_sectors`: the default takes it.
        assert_eq!(
            table.route(&facts("no_show", Some(Sector::GeneralPractice), &[])),
            ["front-desk"]
        );
        assert_eq!(table.route(&facts("no_show", None, &[])), ["front-desk"]);
        assert_eq!(
            table.route(&facts("plan_change", psychiatry, &[])),
            ["caseworkers"]
        );
        assert_eq!(
            table.route(&facts("correction", psychiatry, &[])),
            ["front-desk"]
        );
        assert_eq!(
            table.inboxes(),
            [
                "front-desk",
                "discharge-coordinators",
                "housing-support",
                "caseworkers"
            ]
        );
    }

    #[test]
    fn every_matching_rule_adds_its_inboxes_once_until_stop() {
        let table = RoutingTable::new(
            None,
            vec![
                RouteRule {
                    units: vec!["6630011-S2".into()],
                    ..rule(&[], &["ward-s2-liaison", "caseworkers"])
                },
                RouteRule {
                    from_orgs: vec!["praksis.stege".into()],
                    stop: true,
                    ..rule(&[], &["gp-liaison"])
                },
                rule(&[], &["caseworkers", "all-notices"]),
            ],
        )
        .unwrap();
        // Unit rule and catch-all: both add, `caseworkers` once, in order.
        assert_eq!(
            table.route(&facts("admission", None, &["6630011", "6630011-S2"])),
            ["ward-s2-liaison", "caseworkers", "all-notices"]
        );
        assert_eq!(
            table.route(&facts("admission", None, &["6630011"])),
            ["caseworkers", "all-notices"]
        );
        // `stop` keeps the catch-all from adding to the GP's notices.
        let gp = NoticeFacts {
            sender_org: "praksis.stege",
            ..facts("no_show", Some(Sector::GeneralPractice), &[])
        };
        assert_eq!(table.route(&gp), ["gp-liaison"]);
    }

    #[test]
    fn unrouted_kinds_are_refused_by_name() {
        // Conditional rules do not cover a kind: a notice may fail them.
        let err = RoutingTable::new(
            None,
            vec![
                rule(&["admission", "discharge"], &["discharge-coordinators"]),
                RouteRule {
                    from_sectors: vec![Sector::Psychiatry],
                    ..rule(&["no_show"], &["housing-support"])
                },
                rule(&["plan_change", "correction"], &["caseworkers"]),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            RoutingError::Unrouted {
                kinds: vec!["no_show"]
            }
        );
        assert_eq!(err.config_key(), "inboxes");
        assert!(
            err.to_string().contains("notice kind no_show would"),
            "{err}"
        );

        let err = RoutingTable::new(None, vec![rule(&["admission"], &["a"])]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("notice kinds discharge, no_show, plan_change, correction would"),
            "{err}"
        );
        assert!(RoutingTable::new(None, Vec::new()).is_err());
        // A rule without conditions covers everything.
        let table = RoutingTable::new(None, vec![rule(&[], &["clinic"])]).unwrap();
        assert_eq!(table.route(&facts("correction", None, &[])), ["clinic"]);
        assert_eq!(table.default_inbox(), None);
    }

    #[test]
    fn bad_rules_name_their_key() {
        let cases: [(Option<&str>, RouteRule, &str); 6] = [
            (Some("Front Desk"), rule(&[], &["x"]), "inboxes.default"),
            (Some("ok"), rule(&[], &["-x"]), "inboxes.routes[0].to"),
            (Some("ok"), rule(&[], &[]), "inboxes.routes[0].to"),
            (
                Some("ok"),
                rule(&["gossip"], &["x"]),
                "inboxes.routes[0].kinds",
            ),
            (
                Some("ok"),
                RouteRule {
                    from_orgs: vec!["bad id!".into()],
                    ..rule(&[], &["x"])
                },
                "inboxes.routes[0].from_orgs",
            ),
            (
                Some("ok"),
                RouteRule {
                    units: vec![String::new()],
                    ..rule(&[], &["x"])
                },
                "inboxes.routes[0].units",
            ),
        ];
        for (default, bad, key) in cases {
            let err = RoutingTable::new(default.map(str::to_owned), vec![bad]).unwrap_err();
            assert_eq!(err.config_key(), key, "{err}");
        }
    }

    #[test]
    fn inbox_names() {
        for good in ["main", "discharge-coordinators", "team-2", "7b"] {
            assert!(is_valid_inbox_name(good), "{good}");
        }
        let long = "a".repeat(MAX_INBOX_NAME_CHARS + 1);
        for bad in ["", "Main", "team_2", "-x", "a b", "æble", long.as_str()] {
            assert!(!is_valid_inbox_name(bad), "{bad}");
        }
    }

    #[test]
    fn unit_codes_of_each_kind() {
        use tvaers_proto::v1::{Admission, NoShow, PlanChange, Unit, notice::Payload};
        let unit = |code: &str| {
            Some(Unit {
                code: code.into(),
                display_name: String::new(),
            })
        };
        let admission = Notice {
            payload: Some(Payload::Admission(Admission {
                hospital: unit("6630011"),
                ward: unit("6630011-S2"),
                ..Admission::default()
            })),
            ..Notice::default()
        };
        assert_eq!(unit_codes(&admission), ["6630011", "6630011-S2"]);
        let no_show = Notice {
            payload: Some(Payload::NoShow(NoShow {
                unit: unit(""),
                ..NoShow::default()
            })),
            ..Notice::default()
        };
        assert!(unit_codes(&no_show).is_empty());
        let plan = Notice {
            payload: Some(Payload::PlanChange(PlanChange::default())),
            ..Notice::default()
        };
        assert!(unit_codes(&plan).is_empty());
    }
}
