//! The rules every notice must satisfy before a daemon stores it (on
//! submit) or accepts it (on receipt).
//!
//! What must be handed over at a transition between sectors is fixed in
//! advance, not left to each employee's judgement: every notice kind has
//! required fields, and these functions check them. Each function stops at
//! the first problem and returns a [`ValidationError`] naming the field and
//! the problem, never the field's value (which may be a CPR number or a
//! health detail). On success they return the parsed [`Cpr`] of the
//! citizen, whose [`Cpr::digits`] is the normalized form to store.
//!
//! # Field paths
//!
//! A field is named by its path of proto field names joined by `.`, with
//! `[i]` for the `i`th (from 0) element of a repeated field, starting at
//! the message that is validated:
//!
//! * [`notice`]: `notice.citizen_cpr`, `notice.payload`,
//!   `notice.admission.ward.code`,
//!   `notice.plan_change.changed_items[2].owner_org`, … A oneof is named by
//!   its own name when no member is set (`notice.payload`,
//!   `notice.discharge.when`) and by the member's name otherwise
//!   (`notice.admission`, `notice.discharge.expected_date`).
//! * [`envelope`]: `envelope.notice_id`, `envelope.sender`, … and the
//!   notice's fields below `envelope.notice`:
//!   `envelope.notice.admission.ward.code`.
//! * [`submit_request`]: the request's own fields are unprefixed, as in the
//!   RPC's argument (`idempotency_key`, `recipients`, `recipients[1]`,
//!   `notice`), so the notice's fields read exactly as from [`notice`]:
//!   `notice.admission.ward.code`.
//! * [`org_id`]: the path the caller passes.
//!
//! # Limits
//!
//! Lengths count characters (Unicode scalar values), not bytes. Names,
//! roles, display names and organisation names: at most
//! [`MAX_NAME_CHARS`]; codes and ids: [`MAX_CODE_CHARS`]; phone numbers:
//! [`MAX_PHONE_CHARS`] of digits, spaces, `+` and `-` (with at least one
//! digit); e-mail addresses: [`MAX_EMAIL_CHARS`] and an `@`; free texts:
//! [`MAX_TEXT_CHARS`]; episode ids and idempotency keys:
//! [`MAX_KEY_CHARS`]; plan items per change: [`MAX_PLAN_ITEMS`];
//! recipients per submit: [`MAX_RECIPIENTS`]. A required string that holds
//! only whitespace counts as missing. Single-line fields (everything but
//! free texts) must not contain control characters.
//!
//! Notice ids are UUIDs in the canonical lower-case hyphenated form (as
//! `uuid::Uuid`'s `Display` writes them), so they compare equal as strings.
//!
//! [`sample`] builds a valid notice of each kind, for tests and demos.

use std::collections::HashSet;
use std::fmt;

use crate::cpr::{Cpr, CprError, days_in_month};
use crate::v1;

/// Names, roles, display names, organisation names.
pub const MAX_NAME_CHARS: usize = 200;
/// Codes and ids: unit codes, appointment and plan ids, organisation ids.
pub const MAX_CODE_CHARS: usize = 64;
/// Phone numbers.
pub const MAX_PHONE_CHARS: usize = 32;
/// E-mail addresses (the limit of RFC 5321).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Free texts: reasons, follow-up, plan items, destination text.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Episode ids and idempotency keys.
pub const MAX_KEY_CHARS: usize = 128;
/// Changed items in one plan change.
pub const MAX_PLAN_ITEMS: usize = 100;
/// Recipients of one submitted notice.
pub const MAX_RECIPIENTS: usize = 16;

/// Latest accepted time, 9999-12-31T23:59:59.999Z in milliseconds.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A field that breaks a rule. Never contains the field's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct ValidationError {
    /// Path of the field, see the [module documentation](self).
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl ValidationError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// What is wrong with a field. Carries no part of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    /// Missing, empty, zero or UNSPECIFIED.
    Required,
    /// Longer than `max` characters.
    TooLong {
        /// The limit, in characters.
        max: usize,
    },
    /// A repeated field with more than `max` elements.
    TooMany {
        /// The limit, in elements.
        max: usize,
    },
    /// A repeated field holds the same value twice.
    Duplicate,
    /// Present but not acceptable; a short fixed description why.
    Invalid(&'static str),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Required => f.write_str("is required"),
            Self::TooLong { max } => write!(f, "is longer than {max} characters"),
            Self::TooMany { max } => write!(f, "has more than {max} elements"),
            Self::Duplicate => f.write_str("contains a duplicate"),
            Self::Invalid(why) => write!(f, "is invalid: {why}"),
        }
    }
}

type Result<T = (), E = ValidationError> = std::result::Result<T, E>;

/// Validates a notice as a local system submits it or a peer sends it.
/// Field paths start with `notice.`.
///
/// # Errors
///
/// The first field that breaks a rule.
pub fn notice(n: &v1::Notice) -> Result<Cpr, ValidationError> {
    notice_at("notice", n)
}

/// Validates an organisation id (a SOR code, a GLN/EAN number or another
/// opaque id): non-empty, at most [`MAX_CODE_CHARS`] characters, only ASCII
/// letters, digits, `.`, `-` and `_`. `field` is the path reported in the
/// error.
///
/// # Errors
///
/// [`Problem::Required`], [`Problem::TooLong`] or [`Problem::Invalid`] for
/// `field`.
pub fn org_id(field: &str, id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::new(field, Problem::Required));
    }
    if too_long(id, MAX_CODE_CHARS) {
        return Err(ValidationError::new(
            field,
            Problem::TooLong {
                max: MAX_CODE_CHARS,
            },
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(ValidationError::new(
            field,
            Problem::Invalid("only ASCII letters, digits, '.', '-' and '_' are allowed"),
        ));
    }
    Ok(())
}

/// Validates an envelope as it travels between daemons. Field paths start
/// with `envelope.`; the notice's with `envelope.notice.`.
///
/// # Errors
///
/// The first field that breaks a rule.
pub fn envelope(e: &v1::Envelope) -> Result<Cpr, ValidationError> {
    uuid_field("envelope.notice_id", &e.notice_id, true)?;
    key_field("envelope.idempotency_key", &e.idempotency_key)?;
    org_id("envelope.sender", &e.sender)?;
    org_id("envelope.recipient", &e.recipient)?;
    time_field("envelope.created_at_ms", e.created_at_ms)?;
    time_field("envelope.expires_at_ms", e.expires_at_ms)?;
    if e.expires_at_ms <= e.created_at_ms {
        return Err(ValidationError::new(
            "envelope.expires_at_ms",
            Problem::Invalid("must be later than created_at_ms"),
        ));
    }
    let n = e
        .notice
        .as_ref()
        .ok_or_else(|| ValidationError::new("envelope.notice", Problem::Required))?;
    notice_at("envelope.notice", n)
}

/// Validates a `LocalApi.Submit` request. The request's own fields are
/// unprefixed (`idempotency_key`, `recipients`, `recipients[i]`), the
/// notice's start with `notice.`. Whether each recipient is a configured
/// peer is for the daemon to check.
///
/// # Errors
///
/// The first field that breaks a rule; a repeated recipient is
/// [`Problem::Duplicate`] on `recipients`.
pub fn submit_request(r: &v1::SubmitRequest) -> Result<Cpr, ValidationError> {
    key_field("idempotency_key", &r.idempotency_key)?;
    if r.recipients.is_empty() {
        return Err(ValidationError::new("recipients", Problem::Required));
    }
    if r.recipients.len() > MAX_RECIPIENTS {
        return Err(ValidationError::new(
            "recipients",
            Problem::TooMany {
                max: MAX_RECIPIENTS,
            },
        ));
    }
    let mut seen = HashSet::with_capacity(r.recipients.len());
    for (i, recipient) in r.recipients.iter().enumerate() {
        org_id(&format!("recipients[{i}]"), recipient)?;
        if !seen.insert(recipient.as_str()) {
            return Err(ValidationError::new("recipients", Problem::Duplicate));
        }
    }
    let n = r
        .notice
        .as_ref()
        .ok_or_else(|| ValidationError::new("notice", Problem::Required))?;
    notice(n)
}

// ---------------------------------------------------------------------------
// Notice and payloads. `p` is the path of the message being checked.

fn notice_at(p: &str, n: &v1::Notice) -> Result<Cpr> {
    use v1::notice::Payload;

    if n.citizen_cpr.is_empty() {
        return Err(err(p, "citizen_cpr", Problem::Required));
    }
    let cpr = Cpr::parse(&n.citizen_cpr).map_err(|e| {
        let why = match e {
            CprError::WrongLength { .. } => "not a CPR number: wrong length",
            CprError::NotDigits => "not a CPR number: DDMMYYSSSS or DDMMYY-SSSS expected",
            CprError::InvalidDate => "not a CPR number: no such date of birth",
        };
        err(p, "citizen_cpr", Problem::Invalid(why))
    })?;
    line(p, "episode_id", &n.episode_id, MAX_KEY_CHARS, false)?;

    match &n.payload {
        None => Err(err(p, "payload", Problem::Required)),
        Some(Payload::Admission(a)) => admission(&join(p, "admission"), a),
        Some(Payload::Discharge(d)) => discharge(&join(p, "discharge"), d),
        Some(Payload::NoShow(s)) => no_show(&join(p, "no_show"), s),
        Some(Payload::PlanChange(c)) => plan_change(&join(p, "plan_change"), c),
        Some(Payload::Correction(c)) => correction(&join(p, "correction"), c),
        Some(Payload::Handled(h)) => handled(&join(p, "handled"), h),
    }?;
    Ok(cpr)
}

fn handled(p: &str, h: &v1::Handled) -> Result {
    uuid_field(&join(p, "notice_id"), &h.notice_id, false)?;
    line(p, "inbox", &h.inbox, MAX_KEY_CHARS, true)?;
    match enumeration::<v1::HandledStatus>(p, "status", h.status)? {
        v1::HandledStatus::Overdue => {
            time(p, "overdue_at_ms", h.overdue_at_ms)?;
            // Nobody took it: a handler or a handling time would contradict that.
            if h.handler.is_some() {
                return Err(err(
                    p,
                    "handler",
                    Problem::Invalid("not for an overdue notice"),
                ));
            }
            if h.handled_at_ms != 0 {
                return Err(err(
                    p,
                    "handled_at_ms",
                    Problem::Invalid("not for an overdue notice"),
                ));
            }
            Ok(())
        }
        _ => {
            time(p, "handled_at_ms", h.handled_at_ms)?;
            if h.overdue_at_ms != 0 {
                return Err(err(
                    p,
                    "overdue_at_ms",
                    Problem::Invalid("only for an overdue notice"),
                ));
            }
            contact(p, "handler", h.handler.as_ref())
        }
    }
}

fn admission(p: &str, a: &v1::Admission) -> Result {
    time(p, "admitted_at_ms", a.admitted_at_ms)?;
    unit(p, "hospital", a.hospital.as_ref(), true)?;
    unit(p, "ward", a.ward.as_ref(), true)?;
    enumeration::<v1::AdmissionUrgency>(p, "urgency", a.urgency)?;
    enumeration::<v1::AdmissionLegalBasis>(p, "legal_basis", a.legal_basis)?;
    contact(p, "ward_contact", a.ward_contact.as_ref())
}

fn discharge(p: &str, d: &v1::Discharge) -> Result {
    use v1::discharge::When;

    match &d.when {
        None => return Err(err(p, "when", Problem::Required)),
        Some(When::DischargedAtMs(ms)) => time(p, "discharged_at_ms", *ms)?,
        Some(When::ExpectedDate(date)) => {
            if date.is_empty() {
                return Err(err(p, "expected_date", Problem::Required));
            }
            if !is_iso_date(date) {
                return Err(err(
                    p,
                    "expected_date",
                    Problem::Invalid("not a calendar date in the form YYYY-MM-DD"),
                ));
            }
        }
    }
    unit(p, "unit", d.unit.as_ref(), false)?;
    let destination = enumeration::<v1::DischargeDestination>(p, "destination", d.destination)?;
    let other = destination == v1::DischargeDestination::Other;
    text(p, "destination_text", &d.destination_text, other)?;
    if let Some(f) = &d.follow_up {
        let fp = join(p, "follow_up");
        text(&fp, "text", &f.text, false)?;
        if f.next_appointment_at_ms != 0 {
            time(&fp, "next_appointment_at_ms", f.next_appointment_at_ms)?;
        }
    }
    contact(p, "contact", d.contact.as_ref())
}

fn no_show(p: &str, s: &v1::NoShow) -> Result {
    line(p, "appointment_id", &s.appointment_id, MAX_CODE_CHARS, true)?;
    time(p, "scheduled_at_ms", s.scheduled_at_ms)?;
    unit(p, "unit", s.unit.as_ref(), false)?;
    enumeration::<v1::NoShowKind>(p, "kind", s.kind)?;
    contact(p, "contact", s.contact.as_ref())
}

fn plan_change(p: &str, c: &v1::PlanChange) -> Result {
    line(p, "plan_id", &c.plan_id, MAX_CODE_CHARS, true)?;
    if c.plan_version == 0 {
        return Err(err(p, "plan_version", Problem::Required));
    }
    if c.changed_items.is_empty() {
        return Err(err(p, "changed_items", Problem::Required));
    }
    if c.changed_items.len() > MAX_PLAN_ITEMS {
        return Err(err(
            p,
            "changed_items",
            Problem::TooMany {
                max: MAX_PLAN_ITEMS,
            },
        ));
    }
    for (i, item) in c.changed_items.iter().enumerate() {
        let ip = format!("{p}.changed_items[{i}]");
        enumeration::<v1::PlanItemKind>(&ip, "kind", item.kind)?;
        text(&ip, "text", &item.text, true)?;
        org_id(&join(&ip, "owner_org"), &item.owner_org)?;
    }
    let cw = c
        .coordinating_caseworker
        .as_ref()
        .ok_or_else(|| err(p, "coordinating_caseworker", Problem::Required))?;
    let cp = join(p, "coordinating_caseworker");
    line(&cp, "name", &cw.name, MAX_NAME_CHARS, true)?;
    line(&cp, "organisation", &cw.organisation, MAX_NAME_CHARS, true)?;
    phone(&cp, "phone", &cw.phone)?;
    email(&cp, "email", &cw.email)
}

fn correction(p: &str, c: &v1::Correction) -> Result {
    uuid_field(
        &join(p, "refers_to_notice_id"),
        &c.refers_to_notice_id,
        false,
    )?;
    let action = enumeration::<v1::CorrectionAction>(p, "action", c.action)?;
    text(p, "reason", &c.reason, true)?;
    let replaced_by = join(p, "replaced_by_notice_id");
    match action {
        v1::CorrectionAction::Replace => {
            uuid_field(&replaced_by, &c.replaced_by_notice_id, false)?;
            if c.replaced_by_notice_id == c.refers_to_notice_id {
                return Err(ValidationError::new(
                    replaced_by,
                    Problem::Invalid("must differ from refers_to_notice_id"),
                ));
            }
        }
        _ => {
            if !c.replaced_by_notice_id.is_empty() {
                return Err(ValidationError::new(
                    replaced_by,
                    Problem::Invalid("only allowed with action REPLACE"),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Shared message checks.

/// A unit: `code` always required; `display_name` required when `named`.
fn unit(p: &str, name: &str, u: Option<&v1::Unit>, named: bool) -> Result {
    let u = u.ok_or_else(|| err(p, name, Problem::Required))?;
    let up = join(p, name);
    line(&up, "code", &u.code, MAX_CODE_CHARS, true)?;
    line(&up, "display_name", &u.display_name, MAX_NAME_CHARS, named)
}

/// A contact: name and phone required, role and email optional.
fn contact(p: &str, name: &str, c: Option<&v1::Contact>) -> Result {
    let c = c.ok_or_else(|| err(p, name, Problem::Required))?;
    let cp = join(p, name);
    line(&cp, "name", &c.name, MAX_NAME_CHARS, true)?;
    line(&cp, "role", &c.role, MAX_NAME_CHARS, false)?;
    phone(&cp, "phone", &c.phone)?;
    email(&cp, "email", &c.email)
}

// ---------------------------------------------------------------------------
// Scalar checks. Paths are only built when there is an error.

fn join(p: &str, name: &str) -> String {
    format!("{p}.{name}")
}

fn err(p: &str, name: &str, problem: Problem) -> ValidationError {
    ValidationError::new(join(p, name), problem)
}

fn too_long(s: &str, max: usize) -> bool {
    // A string of at most `max` bytes has at most `max` characters.
    s.len() > max && s.chars().count() > max
}

fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// A single-line string: optional or required, at most `max` characters,
/// no control characters.
fn line(p: &str, name: &str, s: &str, max: usize, required: bool) -> Result {
    if s.is_empty() && !required {
        return Ok(());
    }
    if is_blank(s) {
        return Err(err(
            p,
            name,
            if required {
                Problem::Required
            } else {
                Problem::Invalid("only whitespace")
            },
        ));
    }
    if too_long(s, max) {
        return Err(err(p, name, Problem::TooLong { max }));
    }
    if s.chars().any(char::is_control) {
        return Err(err(
            p,
            name,
            Problem::Invalid("contains control characters"),
        ));
    }
    Ok(())
}

/// A free text: optional or required, at most [`MAX_TEXT_CHARS`]; line
/// breaks and tabs allowed.
fn text(p: &str, name: &str, s: &str, required: bool) -> Result {
    if required && is_blank(s) {
        return Err(err(p, name, Problem::Required));
    }
    if too_long(s, MAX_TEXT_CHARS) {
        return Err(err(
            p,
            name,
            Problem::TooLong {
                max: MAX_TEXT_CHARS,
            },
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(err(
            p,
            name,
            Problem::Invalid("contains control characters"),
        ));
    }
    Ok(())
}

/// A required phone number: digits, spaces, `+` and `-`, at least one
/// digit.
fn phone(p: &str, name: &str, s: &str) -> Result {
    if is_blank(s) {
        return Err(err(p, name, Problem::Required));
    }
    if too_long(s, MAX_PHONE_CHARS) {
        return Err(err(
            p,
            name,
            Problem::TooLong {
                max: MAX_PHONE_CHARS,
            },
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'+' | b'-'))
        || !s.bytes().any(|b| b.is_ascii_digit())
    {
        return Err(err(
            p,
            name,
            Problem::Invalid("only digits, spaces, '+' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// An optional e-mail address: when present, it must contain `@` with
/// something on both sides.
fn email(p: &str, name: &str, s: &str) -> Result {
    if s.is_empty() {
        return Ok(());
    }
    line(p, name, s, MAX_EMAIL_CHARS, false)?;
    match s.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err(err(p, name, Problem::Invalid("not an e-mail address"))),
    }
}

/// A required idempotency key: at most [`MAX_KEY_CHARS`] characters.
fn key_field(field: &str, s: &str) -> Result {
    if s.is_empty() {
        return Err(ValidationError::new(field, Problem::Required));
    }
    if too_long(s, MAX_KEY_CHARS) {
        return Err(ValidationError::new(
            field,
            Problem::TooLong { max: MAX_KEY_CHARS },
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            Problem::Invalid("contains control characters"),
        ));
    }
    Ok(())
}

/// A required time in milliseconds since the Unix epoch: after 1970 and
/// before year 10000.
fn time(p: &str, name: &str, ms: i64) -> Result {
    time_problem(ms).map_or(Ok(()), |problem| Err(err(p, name, problem)))
}

fn time_field(field: &str, ms: i64) -> Result {
    time_problem(ms).map_or(Ok(()), |problem| Err(ValidationError::new(field, problem)))
}

fn time_problem(ms: i64) -> Option<Problem> {
    match ms {
        0 => Some(Problem::Required),
        1..=MAX_TIME_MS => None,
        _ => Some(Problem::Invalid(
            "not a time in milliseconds between 1970 and 9999",
        )),
    }
}

/// A required UUID in canonical lower-case hyphenated form, not nil;
/// version 7 when `v7`.
fn uuid_field(field: &str, s: &str, v7: bool) -> Result {
    if s.is_empty() {
        return Err(ValidationError::new(field, Problem::Required));
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let canonical = uuid::Uuid::try_parse(s)
        .ok()
        .filter(|u| &*u.hyphenated().encode_lower(&mut buf) == s);
    let Some(u) = canonical else {
        return Err(ValidationError::new(
            field,
            Problem::Invalid("not a UUID in lower-case hyphenated form"),
        ));
    };
    if u.is_nil() {
        return Err(ValidationError::new(
            field,
            Problem::Invalid("the nil UUID"),
        ));
    }
    if v7 && u.get_version_num() != 7 {
        return Err(ValidationError::new(
            field,
            Problem::Invalid("not a version 7 UUID"),
        ));
    }
    Ok(())
}

/// A required enumeration: known and not UNSPECIFIED (value 0).
fn enumeration<E>(p: &str, name: &str, value: i32) -> Result<E>
where
    E: TryFrom<i32>,
{
    if value == 0 {
        return Err(err(p, name, Problem::Required));
    }
    E::try_from(value).map_err(|_| err(p, name, Problem::Invalid("unknown value")))
}

/// `YYYY-MM-DD`, a real date in years 0001–9999.
fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let Ok(year) = i32::try_from(year) else {
        return false;
    };
    year >= 1 && (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)
}

/// Valid notices of each kind with realistic Danish content, for tests and
/// demos. Times are fixed (March–April 2025) so results are reproducible.
///
/// The CPR string is put in as given; it must be valid for the notice to
/// validate.
pub mod sample {
    use crate::v1;
    use crate::v1::notice::Payload;

    /// Episode id linking the sample admission and discharge.
    const EPISODE: &str = "PRS-SLA-2025-004117";

    fn notice(cpr: &str, episode_id: &str, payload: Payload) -> v1::Notice {
        v1::Notice {
            citizen_cpr: cpr.to_owned(),
            episode_id: episode_id.to_owned(),
            payload: Some(payload),
        }
    }

    fn unit(code: &str, display_name: &str) -> Option<v1::Unit> {
        Some(v1::Unit {
            code: code.to_owned(),
            display_name: display_name.to_owned(),
        })
    }

    fn contact(name: &str, role: &str, phone: &str, email: &str) -> Option<v1::Contact> {
        Some(v1::Contact {
            name: name.to_owned(),
            role: role.to_owned(),
            phone: phone.to_owned(),
            email: email.to_owned(),
        })
    }

    /// Acute, voluntary admission to a general psychiatric ward in Slagelse
    /// on Friday 14 March 2025 at 21:40 Danish time, with discharge
    /// planning requested.
    pub fn admission(cpr: &str) -> v1::Notice {
        notice(
            cpr,
            EPISODE,
            Payload::Admission(v1::Admission {
                admitted_at_ms: 1_741_984_800_000, // 2025-03-14T20:40:00Z
                hospital: unit("6630011", "Psykiatrisk Sygehus Slagelse"),
                ward: unit("6630011-S2", "Afsnit S2, almenpsykiatrisk sengeafsnit"),
                urgency: v1::AdmissionUrgency::Acute.into(),
                legal_basis: v1::AdmissionLegalBasis::Voluntary.into(),
                discharge_planning_requested: true,
                ward_contact: contact(
                    "Mette Kjær Jensen",
                    "Afdelingssygeplejerske",
                    "+45 58 55 91 20",
                    "mkje@regionsjaelland.dk",
                ),
            }),
        )
    }

    /// Discharge from the same ward to supported housing on 27 March 2025,
    /// with follow-up in district psychiatry.
    pub fn discharge(cpr: &str) -> v1::Notice {
        notice(
            cpr,
            EPISODE,
            Payload::Discharge(v1::Discharge {
                when: Some(v1::discharge::When::DischargedAtMs(1_743_067_800_000)), // 2025-03-27T09:30:00Z
                unit: unit("6630011-S2", "Afsnit S2, almenpsykiatrisk sengeafsnit"),
                destination: v1::DischargeDestination::SupportedHousing.into(),
                destination_text: String::new(),
                follow_up: Some(v1::FollowUp {
                    text: "Ambulant opfølgning i Distriktspsykiatrien Slagelse. \
                           Medicinen er uændret; egen læge bedes følge op på \
                           blodprøver om fire uger."
                        .to_owned(),
                    next_appointment_at_ms: 1_743_580_800_000, // 2025-04-02T08:00:00Z
                }),
                contact: contact(
                    "Anders Holm",
                    "Udskrivningsansvarlig sygeplejerske",
                    "+45 58 55 91 24",
                    "",
                ),
            }),
        )
    }

    /// The citizen did not attend an appointment in district psychiatry on
    /// 10 April 2025; outreach is requested.
    pub fn no_show(cpr: &str) -> v1::Notice {
        notice(
            cpr,
            "",
            Payload::NoShow(v1::NoShow {
                appointment_id: "DP-SLA-2025-118734".to_owned(),
                scheduled_at_ms: 1_744_282_800_000, // 2025-04-10T11:00:00Z
                unit: unit("6630052", "Distriktspsykiatrien Slagelse"),
                kind: v1::NoShowKind::DidNotAttend.into(),
                outreach_requested: true,
                contact: contact(
                    "Sofie Lund",
                    "Kontaktperson, sygeplejerske",
                    "+45 58 55 93 00",
                    "sofl@regionsjaelland.dk",
                ),
            }),
        )
    }

    /// Version 3 of a cross-disciplinary plan: one changed goal and one
    /// changed action, both owned by `owner_org` (which must be a valid
    /// organisation id).
    pub fn plan_change(cpr: &str, owner_org: &str) -> v1::Notice {
        notice(
            cpr,
            "TVP-SLA-2025-0117",
            Payload::PlanChange(v1::PlanChange {
                plan_id: "TVP-SLA-2025-0117".to_owned(),
                plan_version: 3,
                changed_items: vec![
                    v1::PlanItem {
                        kind: v1::PlanItemKind::Goal.into(),
                        text: "Borgeren ønsker at flytte i egen lejlighed med \
                               bostøtte inden sommerferien."
                            .to_owned(),
                        owner_org: owner_org.to_owned(),
                    },
                    v1::PlanItem {
                        kind: v1::PlanItemKind::Action.into(),
                        text: "Bostøtte to gange om ugen (§ 85), herunder følge \
                               borgeren til samtaler i distriktspsykiatrien."
                            .to_owned(),
                        owner_org: owner_org.to_owned(),
                    },
                ],
                coordinating_caseworker: Some(v1::Caseworker {
                    name: "Lene Kristiansen".to_owned(),
                    organisation: "Slagelse Kommune, Socialpsykiatri og Udsatte".to_owned(),
                    phone: "+45 58 57 36 00".to_owned(),
                    email: "lekri@slagelse.dk".to_owned(),
                }),
            }),
        )
    }

    /// Retracts the notice `refers_to` (which must be a UUID in lower-case
    /// hyphenated form) because it concerned the wrong citizen.
    pub fn correction(cpr: &str, refers_to: &str) -> v1::Notice {
        notice(
            cpr,
            "",
            Payload::Correction(v1::Correction {
                refers_to_notice_id: refers_to.to_owned(),
                action: v1::CorrectionAction::Retract.into(),
                reason: "Meddelelsen blev sendt om en forkert borger ved en fejl \
                         i afsnittets system."
                    .to_owned(),
                replaced_by_notice_id: String::new(),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::notice::Payload;

    const CPR: &str = "240385-1234";
    const CPR_DIGITS: &str = "2403851234";
    const ORG: &str = "kommune.slagelse";
    const REFERS_TO: &str = "01963a4e-8f2b-7c3d-9e4f-0a1b2c3d4e5f";
    const OTHER_ID: &str = "01963a4e-9000-7000-8000-000000000001";

    fn all_samples() -> Vec<v1::Notice> {
        vec![
            sample::admission(CPR),
            sample::discharge(CPR),
            sample::no_show(CPR),
            sample::plan_change(CPR, ORG),
            sample::correction(CPR, REFERS_TO),
        ]
    }

    /// Applies `f` to the sample payload of the given kind and returns the
    /// error `notice` reports.
    fn fails(mut n: v1::Notice, f: impl FnOnce(&mut Payload)) -> ValidationError {
        if let Some(p) = n.payload.as_mut() {
            f(p);
        }
        match notice(&n) {
            Ok(_) => panic!("expected a validation error"),
            Err(e) => e,
        }
    }

    fn assert_fails(n: v1::Notice, f: impl FnOnce(&mut Payload), field: &str, problem: Problem) {
        let e = fails(n, f);
        assert_eq!(e.field, field, "{e}");
        assert_eq!(e.problem, problem, "{e}");
    }

    fn adm(p: &mut Payload) -> &mut v1::Admission {
        match p {
            Payload::Admission(a) => a,
            _ => panic!("not an admission"),
        }
    }
    fn dis(p: &mut Payload) -> &mut v1::Discharge {
        match p {
            Payload::Discharge(d) => d,
            _ => panic!("not a discharge"),
        }
    }
    fn nos(p: &mut Payload) -> &mut v1::NoShow {
        match p {
            Payload::NoShow(s) => s,
            _ => panic!("not a no-show"),
        }
    }
    fn pc(p: &mut Payload) -> &mut v1::PlanChange {
        match p {
            Payload::PlanChange(c) => c,
            _ => panic!("not a plan change"),
        }
    }
    fn cor(p: &mut Payload) -> &mut v1::Correction {
        match p {
            Payload::Correction(c) => c,
            _ => panic!("not a correction"),
        }
    }
    fn ward(p: &mut Payload) -> &mut v1::Unit {
        adm(p).ward.as_mut().unwrap_or_else(|| panic!("no ward"))
    }
    fn ward_contact(p: &mut Payload) -> &mut v1::Contact {
        adm(p)
            .ward_contact
            .as_mut()
            .unwrap_or_else(|| panic!("no contact"))
    }
    fn caseworker(p: &mut Payload) -> &mut v1::Caseworker {
        pc(p)
            .coordinating_caseworker
            .as_mut()
            .unwrap_or_else(|| panic!("no caseworker"))
    }

    fn ok<T>(r: Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("unexpected error: {e}"))
    }

    fn envelope_for(n: v1::Notice) -> v1::Envelope {
        v1::Envelope {
            notice_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: "ehr-7781-admission".to_owned(),
            sender: "psykiatrien.regionsjaelland".to_owned(),
            recipient: ORG.to_owned(),
            created_at_ms: 1_741_985_000_000,
            expires_at_ms: 1_742_589_800_000,
            notice: Some(n),
        }
    }

    fn submit_for(n: v1::Notice) -> v1::SubmitRequest {
        v1::SubmitRequest {
            idempotency_key: "ehr-7781-admission".to_owned(),
            recipients: vec![ORG.to_owned(), "5790000123456".to_owned()],
            notice: Some(n),
            ttl_seconds: 0,
        }
    }

    #[test]
    fn samples_validate() {
        for n in all_samples() {
            let kind = n.kind_name();
            let cpr = notice(&n).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(cpr.digits(), CPR_DIGITS);
            assert_eq!(cpr.birth_date(), (1985, 3, 24));
            let cpr = envelope(&envelope_for(n.clone())).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(cpr.digits(), CPR_DIGITS);
            let cpr = submit_request(&submit_for(n)).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(cpr.digits(), CPR_DIGITS);
        }
        assert_eq!(sample::admission(CPR).kind_name(), "admission");
        assert_eq!(sample::discharge(CPR).kind_name(), "discharge");
        assert_eq!(sample::no_show(CPR).kind_name(), "no_show");
        assert_eq!(sample::plan_change(CPR, ORG).kind_name(), "plan_change");
        assert_eq!(sample::correction(CPR, REFERS_TO).kind_name(), "correction");
    }

    #[test]
    fn notice_top_level() {
        let mut n = sample::admission(CPR);
        n.citizen_cpr.clear();
        let e = notice(&n).err();
        assert_eq!(
            e,
            Some(ValidationError::new(
                "notice.citizen_cpr",
                Problem::Required
            ))
        );

        for bad in ["310485-1234", "24038512345", "2403851a34", "240385 1234"] {
            let mut n = sample::admission(CPR);
            n.citizen_cpr = bad.to_owned();
            let e = notice(&n).err().unwrap_or_else(|| panic!("accepted"));
            assert_eq!(e.field, "notice.citizen_cpr");
            assert!(matches!(e.problem, Problem::Invalid(_)));
            for s in [e.to_string(), format!("{e:?}")] {
                assert!(!s.contains(bad), "{s}");
                assert!(!s.contains("1234"), "{s}");
            }
        }

        let mut n = sample::admission(CPR);
        n.episode_id = "e".repeat(MAX_KEY_CHARS);
        ok(notice(&n));
        n.episode_id = "e".repeat(MAX_KEY_CHARS + 1);
        assert_eq!(
            notice(&n).err(),
            Some(ValidationError::new(
                "notice.episode_id",
                Problem::TooLong { max: MAX_KEY_CHARS }
            ))
        );
        n.episode_id.clear();
        ok(notice(&n));

        let mut n = sample::admission(CPR);
        n.payload = None;
        assert_eq!(
            notice(&n).err(),
            Some(ValidationError::new("notice.payload", Problem::Required))
        );
    }

    #[test]
    fn admission_required_fields() {
        let s = || sample::admission(CPR);
        let req = Problem::Required;
        let f = "notice.admission";
        assert_fails(
            s(),
            |p| adm(p).admitted_at_ms = 0,
            &format!("{f}.admitted_at_ms"),
            req,
        );
        assert_fails(
            s(),
            |p| adm(p).admitted_at_ms = -1,
            &format!("{f}.admitted_at_ms"),
            Problem::Invalid("not a time in milliseconds between 1970 and 9999"),
        );
        assert_fails(
            s(),
            |p| adm(p).hospital = None,
            &format!("{f}.hospital"),
            req,
        );
        assert_fails(
            s(),
            |p| {
                if let Some(h) = adm(p).hospital.as_mut() {
                    h.code.clear();
                }
            },
            &format!("{f}.hospital.code"),
            req,
        );
        assert_fails(
            s(),
            |p| {
                if let Some(h) = adm(p).hospital.as_mut() {
                    h.display_name = "   ".to_owned();
                }
            },
            &format!("{f}.hospital.display_name"),
            req,
        );
        assert_fails(s(), |p| adm(p).ward = None, &format!("{f}.ward"), req);
        assert_fails(
            s(),
            |p| ward(p).code.clear(),
            &format!("{f}.ward.code"),
            req,
        );
        assert_fails(
            s(),
            |p| ward(p).display_name.clear(),
            &format!("{f}.ward.display_name"),
            req,
        );
        assert_fails(s(), |p| adm(p).urgency = 0, &format!("{f}.urgency"), req);
        assert_fails(
            s(),
            |p| adm(p).urgency = 99,
            &format!("{f}.urgency"),
            Problem::Invalid("unknown value"),
        );
        assert_fails(
            s(),
            |p| adm(p).legal_basis = 0,
            &format!("{f}.legal_basis"),
            req,
        );
        assert_fails(
            s(),
            |p| adm(p).ward_contact = None,
            &format!("{f}.ward_contact"),
            req,
        );
        assert_fails(
            s(),
            |p| ward_contact(p).name.clear(),
            &format!("{f}.ward_contact.name"),
            req,
        );
        assert_fails(
            s(),
            |p| ward_contact(p).phone.clear(),
            &format!("{f}.ward_contact.phone"),
            req,
        );
        // Role and e-mail are optional.
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            ward_contact(p).role.clear();
            ward_contact(p).email.clear();
            adm(p).discharge_planning_requested = false;
        }
        ok(notice(&n));
    }

    #[test]
    fn discharge_required_fields() {
        use v1::discharge::When;
        let s = || sample::discharge(CPR);
        let req = Problem::Required;
        let f = "notice.discharge";
        assert_fails(s(), |p| dis(p).when = None, &format!("{f}.when"), req);
        assert_fails(
            s(),
            |p| dis(p).when = Some(When::DischargedAtMs(0)),
            &format!("{f}.discharged_at_ms"),
            req,
        );
        assert_fails(
            s(),
            |p| dis(p).when = Some(When::ExpectedDate(String::new())),
            &format!("{f}.expected_date"),
            req,
        );
        for bad in [
            "2025-02-29",
            "2025-04-31",
            "2025-13-01",
            "2025-00-10",
            "2025-1-5",
            "25-03-28",
            "2025/03/28",
            "28-03-2025",
            "2025-03-28T10:00",
            "０２５-03-28",
        ] {
            assert_fails(
                s(),
                |p| dis(p).when = Some(When::ExpectedDate(bad.to_owned())),
                &format!("{f}.expected_date"),
                Problem::Invalid("not a calendar date in the form YYYY-MM-DD"),
            );
        }
        for good in ["2025-03-28", "2024-02-29", "2000-02-29", "2025-12-31"] {
            let mut n = s();
            if let Some(p) = n.payload.as_mut() {
                dis(p).when = Some(When::ExpectedDate(good.to_owned()));
            }
            ok(notice(&n));
        }
        assert_fails(s(), |p| dis(p).unit = None, &format!("{f}.unit"), req);
        assert_fails(
            s(),
            |p| {
                if let Some(u) = dis(p).unit.as_mut() {
                    u.code.clear();
                }
            },
            &format!("{f}.unit.code"),
            req,
        );
        assert_fails(
            s(),
            |p| dis(p).destination = 0,
            &format!("{f}.destination"),
            req,
        );
        assert_fails(
            s(),
            |p| dis(p).destination = v1::DischargeDestination::Other.into(),
            &format!("{f}.destination_text"),
            req,
        );
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            let d = dis(p);
            d.destination = v1::DischargeDestination::Other.into();
            d.destination_text = "Forsorgshjem (§ 110), Slagelse".to_owned();
            d.follow_up = None;
            if let Some(u) = d.unit.as_mut() {
                u.display_name.clear();
            }
        }
        ok(notice(&n));
        assert_fails(s(), |p| dis(p).contact = None, &format!("{f}.contact"), req);
        assert_fails(
            s(),
            |p| {
                if let Some(c) = dis(p).contact.as_mut() {
                    c.name.clear();
                }
            },
            &format!("{f}.contact.name"),
            req,
        );
        assert_fails(
            s(),
            |p| {
                if let Some(c) = dis(p).contact.as_mut() {
                    c.phone.clear();
                }
            },
            &format!("{f}.contact.phone"),
            req,
        );
        assert_fails(
            s(),
            |p| {
                if let Some(fu) = dis(p).follow_up.as_mut() {
                    fu.text = "x".repeat(MAX_TEXT_CHARS + 1);
                }
            },
            &format!("{f}.follow_up.text"),
            Problem::TooLong {
                max: MAX_TEXT_CHARS,
            },
        );
    }

    #[test]
    fn no_show_required_fields() {
        let s = || sample::no_show(CPR);
        let req = Problem::Required;
        let f = "notice.no_show";
        assert_fails(
            s(),
            |p| nos(p).appointment_id.clear(),
            &format!("{f}.appointment_id"),
            req,
        );
        assert_fails(
            s(),
            |p| nos(p).scheduled_at_ms = 0,
            &format!("{f}.scheduled_at_ms"),
            req,
        );
        assert_fails(s(), |p| nos(p).unit = None, &format!("{f}.unit"), req);
        assert_fails(
            s(),
            |p| {
                if let Some(u) = nos(p).unit.as_mut() {
                    u.code.clear();
                }
            },
            &format!("{f}.unit.code"),
            req,
        );
        assert_fails(s(), |p| nos(p).kind = 0, &format!("{f}.kind"), req);
        assert_fails(s(), |p| nos(p).contact = None, &format!("{f}.contact"), req);
        assert_fails(
            s(),
            |p| {
                if let Some(c) = nos(p).contact.as_mut() {
                    c.name.clear();
                }
            },
            &format!("{f}.contact.name"),
            req,
        );
        assert_fails(
            s(),
            |p| {
                if let Some(c) = nos(p).contact.as_mut() {
                    c.phone.clear();
                }
            },
            &format!("{f}.contact.phone"),
            req,
        );
    }

    #[test]
    fn plan_change_required_fields() {
        let s = || sample::plan_change(CPR, ORG);
        let req = Problem::Required;
        let f = "notice.plan_change";
        assert_fails(s(), |p| pc(p).plan_id.clear(), &format!("{f}.plan_id"), req);
        assert_fails(
            s(),
            |p| pc(p).plan_version = 0,
            &format!("{f}.plan_version"),
            req,
        );
        assert_fails(
            s(),
            |p| pc(p).changed_items.clear(),
            &format!("{f}.changed_items"),
            req,
        );
        assert_fails(
            s(),
            |p| pc(p).changed_items[1].kind = 0,
            &format!("{f}.changed_items[1].kind"),
            req,
        );
        assert_fails(
            s(),
            |p| pc(p).changed_items[0].text.clear(),
            &format!("{f}.changed_items[0].text"),
            req,
        );
        assert_fails(
            s(),
            |p| pc(p).changed_items[1].owner_org.clear(),
            &format!("{f}.changed_items[1].owner_org"),
            req,
        );
        assert_fails(
            s(),
            |p| pc(p).changed_items[1].owner_org = "Slagelse Kommune".to_owned(),
            &format!("{f}.changed_items[1].owner_org"),
            Problem::Invalid("only ASCII letters, digits, '.', '-' and '_' are allowed"),
        );
        assert_fails(
            s(),
            |p| pc(p).coordinating_caseworker = None,
            &format!("{f}.coordinating_caseworker"),
            req,
        );
        assert_fails(
            s(),
            |p| caseworker(p).name.clear(),
            &format!("{f}.coordinating_caseworker.name"),
            req,
        );
        assert_fails(
            s(),
            |p| caseworker(p).organisation.clear(),
            &format!("{f}.coordinating_caseworker.organisation"),
            req,
        );
        assert_fails(
            s(),
            |p| caseworker(p).phone.clear(),
            &format!("{f}.coordinating_caseworker.phone"),
            req,
        );
        assert_fails(
            s(),
            |p| caseworker(p).email = "lekri.slagelse.dk".to_owned(),
            &format!("{f}.coordinating_caseworker.email"),
            Problem::Invalid("not an e-mail address"),
        );
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            caseworker(p).email.clear();
        }
        ok(notice(&n));

        // At most MAX_PLAN_ITEMS items.
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            let items = &mut pc(p).changed_items;
            let item = items[0].clone();
            items.resize(MAX_PLAN_ITEMS, item);
        }
        ok(notice(&n));
        assert_fails(
            n,
            |p| {
                let items = &mut pc(p).changed_items;
                items.push(items[0].clone());
            },
            &format!("{f}.changed_items"),
            Problem::TooMany {
                max: MAX_PLAN_ITEMS,
            },
        );
    }

    #[test]
    fn correction_required_fields() {
        let s = || sample::correction(CPR, REFERS_TO);
        let req = Problem::Required;
        let f = "notice.correction";
        assert_fails(
            s(),
            |p| cor(p).refers_to_notice_id.clear(),
            &format!("{f}.refers_to_notice_id"),
            req,
        );
        for bad in [
            "not-a-uuid",
            "01963A4E-8F2B-7C3D-9E4F-0A1B2C3D4E5F",
            "01963a4e8f2b7c3d9e4f0a1b2c3d4e5f",
            "{01963a4e-8f2b-7c3d-9e4f-0a1b2c3d4e5f}",
            "urn:uuid:01963a4e-8f2b-7c3d-9e4f-0a1b2c3d4e5f",
        ] {
            assert_fails(
                s(),
                |p| cor(p).refers_to_notice_id = bad.to_owned(),
                &format!("{f}.refers_to_notice_id"),
                Problem::Invalid("not a UUID in lower-case hyphenated form"),
            );
        }
        assert_fails(
            s(),
            |p| cor(p).refers_to_notice_id = uuid::Uuid::nil().to_string(),
            &format!("{f}.refers_to_notice_id"),
            Problem::Invalid("the nil UUID"),
        );
        // Any UUID version may be referred to.
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            cor(p).refers_to_notice_id = "6f1c2a9e-3b4d-4e5f-8a6b-7c8d9e0f1a2b".to_owned();
        }
        ok(notice(&n));
        assert_fails(s(), |p| cor(p).action = 0, &format!("{f}.action"), req);
        assert_fails(s(), |p| cor(p).reason.clear(), &format!("{f}.reason"), req);
        assert_fails(
            s(),
            |p| cor(p).action = v1::CorrectionAction::Replace.into(),
            &format!("{f}.replaced_by_notice_id"),
            req,
        );
        assert_fails(
            s(),
            |p| {
                let c = cor(p);
                c.action = v1::CorrectionAction::Replace.into();
                c.replaced_by_notice_id = "nope".to_owned();
            },
            &format!("{f}.replaced_by_notice_id"),
            Problem::Invalid("not a UUID in lower-case hyphenated form"),
        );
        assert_fails(
            s(),
            |p| {
                let c = cor(p);
                c.action = v1::CorrectionAction::Replace.into();
                c.replaced_by_notice_id = REFERS_TO.to_owned();
            },
            &format!("{f}.replaced_by_notice_id"),
            Problem::Invalid("must differ from refers_to_notice_id"),
        );
        assert_fails(
            s(),
            |p| cor(p).replaced_by_notice_id = OTHER_ID.to_owned(),
            &format!("{f}.replaced_by_notice_id"),
            Problem::Invalid("only allowed with action REPLACE"),
        );
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            let c = cor(p);
            c.action = v1::CorrectionAction::Replace.into();
            c.replaced_by_notice_id = OTHER_ID.to_owned();
        }
        ok(notice(&n));
    }

    #[test]
    fn lengths_count_characters() {
        let f = "notice.admission";
        // 200 'æ' are 400 bytes but 200 characters: accepted.
        let mut n = sample::admission(CPR);
        if let Some(p) = n.payload.as_mut() {
            ward_contact(p).name = "æ".repeat(MAX_NAME_CHARS);
            ward_contact(p).role = "ø".repeat(MAX_NAME_CHARS);
            ward(p).display_name = "å".repeat(MAX_NAME_CHARS);
            ward(p).code = "Æ".repeat(MAX_CODE_CHARS);
            ward_contact(p).phone = "1".repeat(MAX_PHONE_CHARS);
        }
        ok(notice(&n));

        let name = Problem::TooLong {
            max: MAX_NAME_CHARS,
        };
        let s = || sample::admission(CPR);
        assert_fails(
            s(),
            |p| ward_contact(p).name = "æ".repeat(MAX_NAME_CHARS + 1),
            &format!("{f}.ward_contact.name"),
            name,
        );
        assert_fails(
            s(),
            |p| ward_contact(p).role = "x".repeat(MAX_NAME_CHARS + 1),
            &format!("{f}.ward_contact.role"),
            name,
        );
        assert_fails(
            s(),
            |p| ward(p).display_name = "x".repeat(MAX_NAME_CHARS + 1),
            &format!("{f}.ward.display_name"),
            name,
        );
        assert_fails(
            s(),
            |p| ward(p).code = "x".repeat(MAX_CODE_CHARS + 1),
            &format!("{f}.ward.code"),
            Problem::TooLong {
                max: MAX_CODE_CHARS,
            },
        );
        assert_fails(
            s(),
            |p| ward_contact(p).phone = "1".repeat(MAX_PHONE_CHARS + 1),
            &format!("{f}.ward_contact.phone"),
            Problem::TooLong {
                max: MAX_PHONE_CHARS,
            },
        );
        for bad in [
            "+45 58a55",
            "58.55.91.20",
            "(+45) 5855",
            "+ -",
            "58\u{a0}55",
        ] {
            assert_fails(
                s(),
                |p| ward_contact(p).phone = bad.to_owned(),
                &format!("{f}.ward_contact.phone"),
                Problem::Invalid("only digits, spaces, '+' and '-' are allowed"),
            );
        }
        assert_fails(
            s(),
            |p| ward(p).display_name = "Afsnit\nS2".to_owned(),
            &format!("{f}.ward.display_name"),
            Problem::Invalid("contains control characters"),
        );

        let s = || sample::correction(CPR, REFERS_TO);
        let mut n = s();
        if let Some(p) = n.payload.as_mut() {
            cor(p).reason = format!("{}\n{}", "å".repeat(2000), "ø".repeat(1999));
        }
        ok(notice(&n));
        assert_fails(
            s(),
            |p| cor(p).reason = "å".repeat(MAX_TEXT_CHARS + 1),
            "notice.correction.reason",
            Problem::TooLong {
                max: MAX_TEXT_CHARS,
            },
        );

        let s = || sample::no_show(CPR);
        assert_fails(
            s(),
            |p| nos(p).appointment_id = "x".repeat(MAX_CODE_CHARS + 1),
            "notice.no_show.appointment_id",
            Problem::TooLong {
                max: MAX_CODE_CHARS,
            },
        );
    }

    #[test]
    fn errors_never_contain_values() {
        let secret = "Borgeren er indlagt med psykose";
        let e = fails(sample::correction(CPR, REFERS_TO), |p| {
            cor(p).reason = format!("{secret}{}", "x".repeat(MAX_TEXT_CHARS));
        });
        for s in [e.to_string(), format!("{e:?}")] {
            assert!(!s.contains(secret), "{s}");
            assert!(!s.contains(CPR_DIGITS), "{s}");
        }
        assert_eq!(
            e.to_string(),
            "field `notice.correction.reason`: is longer than 4000 characters"
        );
        let e = ValidationError::new("notice.admission.ward.code", Problem::Required);
        assert_eq!(
            e.to_string(),
            "field `notice.admission.ward.code`: is required"
        );
        let e = ValidationError::new("x", Problem::Invalid("not a version 7 UUID"));
        assert_eq!(e.to_string(), "field `x`: is invalid: not a version 7 UUID");
    }

    #[test]
    fn org_ids() {
        for good in [
            "5790000123456",
            "kommune.slagelse",
            "SOR-6630011",
            "a_b-c.d",
            "x",
        ] {
            ok(org_id("f", good));
        }
        assert_eq!(
            org_id("f", ""),
            Err(ValidationError::new("f", Problem::Required))
        );
        ok(org_id("f", &"a".repeat(MAX_CODE_CHARS)));
        assert_eq!(
            org_id("f", &"a".repeat(MAX_CODE_CHARS + 1)),
            Err(ValidationError::new(
                "f",
                Problem::TooLong {
                    max: MAX_CODE_CHARS
                }
            ))
        );
        for bad in [
            "region sjaelland",
            "kommune/slagelse",
            "æbeltoft",
            "sor:6630011",
            " slagelse",
            "slagelse\n",
        ] {
            let e = org_id("f", bad).err().unwrap_or_else(|| panic!("accepted"));
            assert!(matches!(e.problem, Problem::Invalid(_)));
            assert!(!e.to_string().contains(bad));
        }
    }

    #[test]
    fn envelope_rules() {
        let good = || envelope_for(sample::admission(CPR));
        ok(envelope(&good()));

        let check = |f: &dyn Fn(&mut v1::Envelope), field: &str, problem: Problem| {
            let mut e = good();
            f(&mut e);
            assert_eq!(
                envelope(&e).err(),
                Some(ValidationError::new(field, problem)),
                "{field}"
            );
        };
        check(
            &|e| e.notice_id.clear(),
            "envelope.notice_id",
            Problem::Required,
        );
        check(
            &|e| e.notice_id = uuid::Uuid::nil().to_string(),
            "envelope.notice_id",
            Problem::Invalid("the nil UUID"),
        );
        check(
            &|e| e.notice_id = "6f1c2a9e-3b4d-4e5f-8a6b-7c8d9e0f1a2b".to_owned(),
            "envelope.notice_id",
            Problem::Invalid("not a version 7 UUID"),
        );
        check(
            &|e| e.notice_id = e.notice_id.to_uppercase(),
            "envelope.notice_id",
            Problem::Invalid("not a UUID in lower-case hyphenated form"),
        );
        check(
            &|e| e.idempotency_key.clear(),
            "envelope.idempotency_key",
            Problem::Required,
        );
        check(
            &|e| e.idempotency_key = "k".repeat(MAX_KEY_CHARS + 1),
            "envelope.idempotency_key",
            Problem::TooLong { max: MAX_KEY_CHARS },
        );
        check(&|e| e.sender.clear(), "envelope.sender", Problem::Required);
        check(
            &|e| e.recipient = "no spaces".to_owned(),
            "envelope.recipient",
            Problem::Invalid("only ASCII letters, digits, '.', '-' and '_' are allowed"),
        );
        check(
            &|e| e.created_at_ms = 0,
            "envelope.created_at_ms",
            Problem::Required,
        );
        check(
            &|e| e.expires_at_ms = 0,
            "envelope.expires_at_ms",
            Problem::Required,
        );
        check(
            &|e| e.expires_at_ms = e.created_at_ms,
            "envelope.expires_at_ms",
            Problem::Invalid("must be later than created_at_ms"),
        );
        check(&|e| e.notice = None, "envelope.notice", Problem::Required);
        check(
            &|e| {
                if let Some(n) = e.notice.as_mut() {
                    n.citizen_cpr.clear();
                }
            },
            "envelope.notice.citizen_cpr",
            Problem::Required,
        );
        check(
            &|e| {
                if let Some(p) = e.notice.as_mut().and_then(|n| n.payload.as_mut()) {
                    ward(p).code.clear();
                }
            },
            "envelope.notice.admission.ward.code",
            Problem::Required,
        );
        check(
            &|e| {
                if let Some(n) = e.notice.as_mut() {
                    n.payload = None;
                }
            },
            "envelope.notice.payload",
            Problem::Required,
        );
    }

    #[test]
    fn submit_request_rules() {
        let good = || submit_for(sample::plan_change(CPR, ORG));
        ok(submit_request(&good()));

        let check = |f: &dyn Fn(&mut v1::SubmitRequest), field: &str, problem: Problem| {
            let mut r = good();
            f(&mut r);
            assert_eq!(
                submit_request(&r).err(),
                Some(ValidationError::new(field, problem)),
                "{field}"
            );
        };
        check(
            &|r| r.idempotency_key.clear(),
            "idempotency_key",
            Problem::Required,
        );
        check(
            &|r| r.idempotency_key = "k".repeat(MAX_KEY_CHARS + 1),
            "idempotency_key",
            Problem::TooLong { max: MAX_KEY_CHARS },
        );
        check(&|r| r.recipients.clear(), "recipients", Problem::Required);
        check(
            &|r| r.recipients[1].clear(),
            "recipients[1]",
            Problem::Required,
        );
        check(
            &|r| r.recipients[0] = "Slagelse Kommune".to_owned(),
            "recipients[0]",
            Problem::Invalid("only ASCII letters, digits, '.', '-' and '_' are allowed"),
        );
        check(
            &|r| r.recipients.push(ORG.to_owned()),
            "recipients",
            Problem::Duplicate,
        );
        check(
            &|r| {
                r.recipients = (0..=MAX_RECIPIENTS).map(|i| format!("org-{i}")).collect();
            },
            "recipients",
            Problem::TooMany {
                max: MAX_RECIPIENTS,
            },
        );
        let mut r = good();
        r.recipients = (0..MAX_RECIPIENTS).map(|i| format!("org-{i}")).collect();
        ok(submit_request(&r));
        check(&|r| r.notice = None, "notice", Problem::Required);
        check(
            &|r| {
                if let Some(p) = r.notice.as_mut().and_then(|n| n.payload.as_mut()) {
                    caseworker(p).phone.clear();
                }
            },
            "notice.plan_change.coordinating_caseworker.phone",
            Problem::Required,
        );
    }

    #[test]
    fn handled_receipt_rules_depend_on_the_status() {
        let receipt = |h: v1::Handled| v1::Notice {
            citizen_cpr: CPR.into(),
            episode_id: String::new(),
            payload: Some(Payload::Handled(h)),
        };
        let handled = v1::Handled {
            notice_id: REFERS_TO.into(),
            inbox: "discharge-coordinators".into(),
            status: v1::HandledStatus::Handled as i32,
            handler: Some(v1::Contact {
                name: "Ane".into(),
                role: String::new(),
                phone: "+45 12 34 56 78".into(),
                email: String::new(),
            }),
            handled_at_ms: 1_767_261_600_000,
            overdue_at_ms: 0,
        };
        let overdue = v1::Handled {
            status: v1::HandledStatus::Overdue as i32,
            handler: None,
            handled_at_ms: 0,
            overdue_at_ms: 1_767_261_600_000,
            ..handled.clone()
        };
        ok(notice(&receipt(handled.clone())));
        ok(notice(&receipt(overdue.clone())));
        let problem = |h: v1::Handled| match notice(&receipt(h)) {
            Ok(_) => panic!("expected a validation error"),
            Err(e) => (e.field, e.problem),
        };
        let invalid = |what| Problem::Invalid(what);
        assert_eq!(
            problem(v1::Handled {
                overdue_at_ms: 0,
                ..overdue.clone()
            }),
            ("notice.handled.overdue_at_ms".to_owned(), Problem::Required)
        );
        assert_eq!(
            problem(v1::Handled {
                handler: handled.handler.clone(),
                ..overdue.clone()
            }),
            (
                "notice.handled.handler".to_owned(),
                invalid("not for an overdue notice")
            )
        );
        assert_eq!(
            problem(v1::Handled {
                handled_at_ms: 5,
                ..overdue
            }),
            (
                "notice.handled.handled_at_ms".to_owned(),
                invalid("not for an overdue notice")
            )
        );
        assert_eq!(
            problem(v1::Handled {
                overdue_at_ms: 5,
                ..handled.clone()
            }),
            (
                "notice.handled.overdue_at_ms".to_owned(),
                invalid("only for an overdue notice")
            )
        );
        assert_eq!(
            problem(v1::Handled {
                handler: None,
                ..handled
            }),
            ("notice.handled.handler".to_owned(), Problem::Required)
        );
    }
}
