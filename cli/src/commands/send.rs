//! `tvaers send admission | discharge | no-show | plan-change`: a notice
//! by hand, for trying a set-up. The notice is checked with the same rules
//! the daemon applies before it is submitted; errors name the field, never
//! its value.

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tvaers_client::{ClientError, Submission, v1};
use tvaers_daemon::config::parse_time;

use crate::commands::{load_config, local};
use crate::error::CliError;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct Common {
    /// Recipient organisation id (a configured peer); repeat for several.
    #[arg(long, required = true, value_name = "ORG")]
    to: Vec<String>,
    /// The citizen's CPR number (DDMMYYSSSS or DDMMYY-SSSS).
    #[arg(long)]
    cpr: String,
    /// Links notices about the same stay or plan.
    #[arg(long)]
    episode: Option<String>,
    /// Wait up to this many seconds for delivery and print its status.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ContactArgs {
    /// Contact person at this organisation.
    #[arg(long)]
    contact_name: String,
    #[arg(long)]
    contact_phone: String,
    #[arg(long)]
    contact_role: Option<String>,
    #[arg(long)]
    contact_email: Option<String>,
}

impl ContactArgs {
    fn contact(&self) -> Option<v1::Contact> {
        Some(v1::Contact {
            name: self.contact_name.clone(),
            role: self.contact_role.clone().unwrap_or_default(),
            phone: self.contact_phone.clone(),
            email: self.contact_email.clone().unwrap_or_default(),
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Urgency {
    Acute,
    Planned,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LegalBasis {
    Voluntary,
    Involuntary,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Destination {
    OwnHome,
    SupportedHousing,
    Other,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NoShowKind {
    DidNotAttend,
    CancelledByCitizen,
    CancelledByUnit,
}

#[derive(Subcommand, Debug)]
pub enum SendCommand {
    /// Indlæggelse: the citizen was admitted.
    Admission {
        #[command(flatten)]
        common: Common,
        /// When (RFC 3339); default now.
        #[arg(long)]
        admitted_at: Option<String>,
        /// Hospital unit code (SOR).
        #[arg(long)]
        hospital: String,
        #[arg(long)]
        hospital_name: String,
        /// Ward unit code.
        #[arg(long)]
        ward: String,
        #[arg(long)]
        ward_name: String,
        #[arg(long, value_enum)]
        urgency: Urgency,
        #[arg(long, value_enum)]
        legal_basis: LegalBasis,
        /// Ask the municipality to join discharge planning.
        #[arg(long)]
        discharge_planning: bool,
        #[command(flatten)]
        contact: ContactArgs,
    },
    /// Udskrivning: discharged (--discharged-at) or expected (--expected-date).
    Discharge {
        #[command(flatten)]
        common: Common,
        /// When (RFC 3339).
        #[arg(
            long,
            conflicts_with = "expected_date",
            required_unless_present = "expected_date"
        )]
        discharged_at: Option<String>,
        /// Expected discharge date, YYYY-MM-DD.
        #[arg(long)]
        expected_date: Option<String>,
        /// Unit code.
        #[arg(long)]
        unit: String,
        #[arg(long)]
        unit_name: Option<String>,
        #[arg(long, value_enum)]
        destination: Destination,
        /// Required with --destination other.
        #[arg(long)]
        destination_text: Option<String>,
        /// Follow-up text.
        #[arg(long)]
        follow_up: Option<String>,
        #[command(flatten)]
        contact: ContactArgs,
    },
    /// Udeblivelse / aflysning: an appointment did not take place.
    NoShow {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        appointment_id: String,
        /// When it was scheduled (RFC 3339).
        #[arg(long)]
        scheduled_at: String,
        /// Unit code.
        #[arg(long)]
        unit: String,
        #[arg(long)]
        unit_name: Option<String>,
        #[arg(long, value_enum)]
        kind: NoShowKind,
        /// Ask the recipient to reach out to the citizen.
        #[arg(long)]
        outreach: bool,
        #[command(flatten)]
        contact: ContactArgs,
    },
    /// Ændring i tværfaglig plan: goals or actions of the shared plan changed.
    PlanChange {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        plan_id: String,
        #[arg(long)]
        plan_version: u32,
        /// A changed goal (repeat).
        #[arg(long)]
        goal: Vec<String>,
        /// A changed action (repeat).
        #[arg(long)]
        action: Vec<String>,
        /// The organisation owning the goals and actions; default this site.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        caseworker_name: String,
        #[arg(long)]
        caseworker_org: String,
        #[arg(long)]
        caseworker_phone: String,
        #[arg(long)]
        caseworker_email: Option<String>,
    },
}

fn when(flag: &str, text: Option<&str>) -> anyhow::Result<i64> {
    match text {
        None => Ok(tvaers_daemon::now_ms()),
        Some(t) => parse_time(t).ok_or_else(|| {
            CliError::invalid(format!(
                "--{flag}: expected an RFC 3339 time like 2026-11-23T14:30:00Z"
            ))
        }),
    }
}

fn unit(code: &str, name: Option<&str>) -> Option<v1::Unit> {
    Some(v1::Unit {
        code: code.to_owned(),
        display_name: name.unwrap_or_default().to_owned(),
    })
}

fn build(command: SendCommand, own_org: &str) -> anyhow::Result<(Common, Submission)> {
    Ok(match command {
        SendCommand::Admission {
            common,
            admitted_at,
            hospital,
            hospital_name,
            ward,
            ward_name,
            urgency,
            legal_basis,
            discharge_planning,
            contact,
        } => {
            let a = v1::Admission {
                admitted_at_ms: when("admitted-at", admitted_at.as_deref())?,
                hospital: unit(&hospital, Some(&hospital_name)),
                ward: unit(&ward, Some(&ward_name)),
                urgency: match urgency {
                    Urgency::Acute => v1::AdmissionUrgency::Acute,
                    Urgency::Planned => v1::AdmissionUrgency::Planned,
                }
                .into(),
                legal_basis: match legal_basis {
                    LegalBasis::Voluntary => v1::AdmissionLegalBasis::Voluntary,
                    LegalBasis::Involuntary => v1::AdmissionLegalBasis::Involuntary,
                }
                .into(),
                discharge_planning_requested: discharge_planning,
                ward_contact: contact.contact(),
            };
            let s = Submission::admission(&common.cpr, a);
            (common, s)
        }
        SendCommand::Discharge {
            common,
            discharged_at,
            expected_date,
            unit: code,
            unit_name,
            destination,
            destination_text,
            follow_up,
            contact,
        } => {
            let when = match (discharged_at, expected_date) {
                (_, Some(date)) => v1::discharge::When::ExpectedDate(date),
                (at, None) => {
                    v1::discharge::When::DischargedAtMs(when("discharged-at", at.as_deref())?)
                }
            };
            let d = v1::Discharge {
                when: Some(when),
                unit: unit(&code, unit_name.as_deref()),
                destination: match destination {
                    Destination::OwnHome => v1::DischargeDestination::OwnHome,
                    Destination::SupportedHousing => v1::DischargeDestination::SupportedHousing,
                    Destination::Other => v1::DischargeDestination::Other,
                }
                .into(),
                destination_text: destination_text.unwrap_or_default(),
                follow_up: follow_up.map(|text| v1::FollowUp {
                    text,
                    next_appointment_at_ms: 0,
                }),
                contact: contact.contact(),
            };
            let s = Submission::discharge(&common.cpr, d);
            (common, s)
        }
        SendCommand::NoShow {
            common,
            appointment_id,
            scheduled_at,
            unit: code,
            unit_name,
            kind,
            outreach,
            contact,
        } => {
            let n = v1::NoShow {
                appointment_id,
                scheduled_at_ms: when("scheduled-at", Some(&scheduled_at))?,
                unit: unit(&code, unit_name.as_deref()),
                kind: match kind {
                    NoShowKind::DidNotAttend => v1::NoShowKind::DidNotAttend,
                    NoShowKind::CancelledByCitizen => v1::NoShowKind::CancelledByCitizen,
                    NoShowKind::CancelledByUnit => v1::NoShowKind::CancelledByUnit,
                }
                .into(),
                outreach_requested: outreach,
                contact: contact.contact(),
            };
            let s = Submission::no_show(&common.cpr, n);
            (common, s)
        }
        SendCommand::PlanChange {
            common,
            plan_id,
            plan_version,
            goal,
            action,
            owner,
            caseworker_name,
            caseworker_org,
            caseworker_phone,
            caseworker_email,
        } => {
            let owner = owner.unwrap_or_else(|| own_org.to_owned());
            let item = |kind: v1::PlanItemKind, text: String| v1::PlanItem {
                kind: kind.into(),
                text,
                owner_org: owner.clone(),
            };
            let mut changed_items: Vec<v1::PlanItem> = goal
                .into_iter()
                .map(|t| item(v1::PlanItemKind::Goal, t))
                .collect();
            changed_items.extend(
                action
                    .into_iter()
                    .map(|t| item(v1::PlanItemKind::Action, t)),
            );
            let c = v1::PlanChange {
                plan_id,
                plan_version,
                changed_items,
                coordinating_caseworker: Some(v1::Caseworker {
                    name: caseworker_name,
                    organisation: caseworker_org,
                    phone: caseworker_phone,
                    email: caseworker_email.unwrap_or_default(),
                }),
            };
            let s = Submission::plan_change(&common.cpr, c);
            (common, s)
        }
    })
}

pub async fn run(command: SendCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let (common, mut submission) = build(command, &config.site.org_id)?;
    if let Some(episode) = &common.episode {
        submission = submission.episode(episode.clone());
    }
    for to in &common.to {
        submission = submission.to(to.clone());
    }
    // The daemon's own rules, checked before connecting; the error names
    // the field (as a flag path in the notice), never the value.
    let request = submission.clone().into_request();
    tvaers_proto::validate::submit_request(&request).map_err(|e| {
        CliError::invalid(format!(
            "the notice is not valid: {e}; see `tvaers send --help`"
        ))
    })?;
    let client = local(&config).await?;
    let submitted = client.submit(submission).await?;
    let mut value = json!({"notice_id": submitted.notice_id, "duplicate": submitted.duplicate});
    let mut status_text = None;
    let mut timed_out = false;
    if let Some(seconds) = common.wait {
        let status = match client
            .wait_delivered(&submitted.notice_id, Duration::from_secs(seconds))
            .await
        {
            Ok(status) => status,
            Err(ClientError::Timeout { last, .. }) => {
                timed_out = true;
                *last
            }
            Err(e) => return Err(e.into()),
        };
        value["delivered"] = json!(status.all_delivered());
        value["recipients"] = json!(
            status
                .recipients
                .iter()
                .map(|r| json!({
                    "recipient": r.recipient,
                    "state": r.state.as_str_name(),
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                }))
                .collect::<Vec<_>>()
        );
        value["timed_out"] = json!(timed_out);
        let delivered = status.all_delivered();
        status_text = Some((status.to_string(), delivered));
    }
    out.emit(&value, || {
        let mut text = format!("Submitted notice {}", submitted.notice_id);
        if submitted.duplicate {
            text.push_str(" (submitted before: nothing new stored)");
        }
        text.push('\n');
        if let Some((status, _)) = &status_text {
            text.push_str(status);
            text.push('\n');
            if timed_out {
                text.push_str("Not settled yet; follow it with `tvaers outbox show ID`.\n");
            }
        }
        text
    });
    match status_text {
        Some((_, false)) => Err(anyhow::anyhow!(
            "notice {} is not delivered to every recipient{}; see `tvaers outbox show {}` and \
             `tvaers status`",
            submitted.notice_id,
            if timed_out { " yet" } else { "" },
            submitted.notice_id
        )),
        _ => Ok(()),
    }
}
