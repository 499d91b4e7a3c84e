//! Wire schema v1 of tvaers and the rules every notice must satisfy.
//!
//! The types in [`v1`] are generated from `proto/tvaers/v1/*.proto` at build
//! time. [`validate`] holds the checks a notice must pass before a daemon
//! stores it (on submit) or accepts it (on receipt); [`cpr`] parses CPR
//! numbers into a type that never prints its digits.
#![forbid(unsafe_code)]

pub mod cpr;
pub mod validate;

use prost::Message;

/// Generated types of package `tvaers.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("tvaers.v1");
}

impl std::fmt::Debug for v1::Notice {
    /// Shows only the payload kind: the CPR number and the health details
    /// must never reach a log line, an error or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("citizen_cpr", &"<redacted>")
            .field("episode_id", &self.episode_id)
            .field("kind", &self.kind_name())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for v1::SignedEnvelope {
    /// The envelope's bytes hold the notice (CPR, health details): only
    /// sizes are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedEnvelope")
            .field("envelope_bytes", &self.envelope.len())
            .field("signature_bytes", &self.signature.len())
            .finish()
    }
}

impl std::fmt::Debug for v1::CareTeamRequest {
    /// The request is a CPR number and nothing else: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CareTeamRequest")
            .field("citizen_cpr", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for v1::AuditEntriesRequest {
    /// Everything but the CPR number the search may name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditEntriesRequest")
            .field("after_seq", &self.after_seq)
            .field("limit", &self.limit)
            .field("from_ms", &self.from_ms)
            .field("to_ms", &self.to_ms)
            .field(
                "citizen_cpr",
                &if self.citizen_cpr.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl std::fmt::Debug for v1::SignedReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedReceipt")
            .field(
                "receipt",
                &v1::Receipt::decode(self.receipt.as_slice()).ok(),
            )
            .field("signature_bytes", &self.signature.len())
            .finish()
    }
}

/// The envelope inside stored `SignedEnvelope` bytes (the form outboxes and
/// inboxes keep), without checking the signature.
pub fn open_envelope(stored: &[u8]) -> Option<v1::Envelope> {
    let signed = v1::SignedEnvelope::decode(stored).ok()?;
    v1::Envelope::decode(signed.envelope.as_slice()).ok()
}

/// The receipt inside stored `SignedReceipt` bytes, without checking the
/// signature.
pub fn open_receipt(stored: &[u8]) -> Option<v1::Receipt> {
    let signed = v1::SignedReceipt::decode(stored).ok()?;
    v1::Receipt::decode(signed.receipt.as_slice()).ok()
}

impl v1::Notice {
    /// The payload kind as a stable lower-case name (`admission`, `discharge`,
    /// `no_show`, `plan_change`, `correction`), or `none` when it is missing.
    pub fn kind_name(&self) -> &'static str {
        use v1::notice::Payload;
        match &self.payload {
            Some(Payload::Admission(_)) => "admission",
            Some(Payload::Discharge(_)) => "discharge",
            Some(Payload::NoShow(_)) => "no_show",
            Some(Payload::PlanChange(_)) => "plan_change",
            Some(Payload::Correction(_)) => "correction",
            Some(Payload::Handled(_)) => "handled",
            None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    /// Requests and messages that carry a CPR number print without it, so a
    /// `?request` in a log line or a panic message cannot leak one.
    #[test]
    fn debug_output_never_shows_a_cpr_number() {
        const CPR: &str = "0707814321";
        let notice = v1::Notice {
            citizen_cpr: CPR.to_owned(),
            ..Default::default()
        };
        let shown = [
            format!("{notice:?}"),
            format!(
                "{:?}",
                v1::CareTeamRequest {
                    citizen_cpr: CPR.to_owned(),
                }
            ),
            format!(
                "{:?}",
                v1::AuditEntriesRequest {
                    citizen_cpr: CPR.to_owned(),
                    limit: 7,
                    ..Default::default()
                }
            ),
        ];
        for text in &shown {
            assert!(!text.contains(CPR), "{text}");
        }
        assert!(
            shown[2].contains("limit: 7"),
            "the other fields stay: {}",
            shown[2]
        );
    }
}
