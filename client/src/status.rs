//! Typed view of a notice's delivery status.

use std::fmt;

use tvaers_proto::v1;

pub use tvaers_proto::v1::DeliveryState;

/// Where a submitted notice is, per recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryStatus {
    /// The notice id the daemon assigned on submit.
    pub notice_id: String,
    /// When the daemon stored the notice (UTC ms since the Unix epoch).
    pub created_at_ms: i64,
    /// One entry per recipient, in the daemon's order.
    pub recipients: Vec<RecipientStatus>,
}

/// Delivery of one notice to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// The recipient's organisation id.
    pub recipient: String,
    /// `Unspecified` when the daemon sent a state this client does not know.
    pub state: DeliveryState,
    /// Send attempts so far.
    pub attempts: u32,
    /// The last send error, if any; for people.
    pub last_error: Option<String>,
    /// When the receipt arrived (UTC ms), once delivered.
    pub delivered_at_ms: Option<i64>,
    /// The recipient's receipt, once it has arrived.
    pub receipt: Option<v1::Receipt>,
    /// When the daemon tries again (UTC ms), while not settled.
    pub next_attempt_at_ms: Option<i64>,
    /// Who took the notice at the recipient (one per team inbox), with how
    /// to reach them, and where it is overdue there (status
    /// `HandledStatus::Overdue`: nobody took it before the team's deadline):
    /// from the recipient's signed business receipts, oldest first.
    pub handled: Vec<v1::Handled>,
}

impl RecipientStatus {
    /// Delivered or failed: the daemon will not try again.
    pub fn is_settled(&self) -> bool {
        matches!(self.state, DeliveryState::Delivered | DeliveryState::Failed)
    }
}

impl DeliveryStatus {
    /// Every recipient is delivered or failed (vacuously true without
    /// recipients).
    pub fn is_settled(&self) -> bool {
        self.recipients.iter().all(RecipientStatus::is_settled)
    }

    /// Every recipient is delivered.
    pub fn all_delivered(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.state == DeliveryState::Delivered)
    }

    /// The recipients whose delivery failed for good.
    pub fn failed(&self) -> impl Iterator<Item = &RecipientStatus> {
        self.recipients
            .iter()
            .filter(|r| r.state == DeliveryState::Failed)
    }
}

fn nonzero(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

impl From<v1::RecipientStatus> for RecipientStatus {
    fn from(r: v1::RecipientStatus) -> Self {
        RecipientStatus {
            recipient: r.recipient,
            state: DeliveryState::try_from(r.state).unwrap_or(DeliveryState::Unspecified),
            attempts: r.attempts,
            last_error: (!r.last_error.is_empty()).then_some(r.last_error),
            delivered_at_ms: nonzero(r.delivered_at_ms),
            receipt: r.receipt,
            next_attempt_at_ms: nonzero(r.next_attempt_at_ms),
            handled: r.handled,
        }
    }
}

impl From<v1::DeliveryStatusResponse> for DeliveryStatus {
    fn from(r: v1::DeliveryStatusResponse) -> Self {
        DeliveryStatus {
            notice_id: r.notice_id,
            created_at_ms: r.created_at_ms,
            recipients: r.recipients.into_iter().map(Into::into).collect(),
        }
    }
}

fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Unspecified => "unknown",
        DeliveryState::Pending => "pending",
        DeliveryState::InFlight => "in flight",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Failed => "failed",
    }
}

/// One line for the notice, then one line per recipient, e.g.
///
/// ```text
/// notice 0197…: 1 of 2 recipients delivered
///   kommune-gribskov: delivered, 1 attempt
///   almen-praksis-42: pending, 3 attempts, last error: connection refused
/// ```
impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delivered = self
            .recipients
            .iter()
            .filter(|r| r.state == DeliveryState::Delivered)
            .count();
        write!(
            f,
            "notice {}: {delivered} of {} recipients delivered",
            self.notice_id,
            self.recipients.len()
        )?;
        for r in &self.recipients {
            let plural = if r.attempts == 1 { "" } else { "s" };
            write!(
                f,
                "\n  {}: {}, {} attempt{plural}",
                r.recipient,
                state_name(r.state),
                r.attempts
            )?;
            if let Some(receipt) = &r.receipt
                && !receipt.reason_code.is_empty()
            {
                write!(f, ", receipt {}", receipt.reason_code)?;
            }
            if let Some(err) = &r.last_error {
                write!(f, ", last error: {err}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(name: &str, state: DeliveryState) -> v1::RecipientStatus {
        v1::RecipientStatus {
            recipient: name.into(),
            state: state as i32,
            attempts: 1,
            ..Default::default()
        }
    }

    #[test]
    fn settled_and_delivered() {
        let mut status = DeliveryStatus::from(v1::DeliveryStatusResponse {
            notice_id: "n1".into(),
            created_at_ms: 1,
            recipients: vec![
                recipient("a", DeliveryState::Delivered),
                recipient("b", DeliveryState::InFlight),
            ],
        });
        assert!(!status.is_settled());
        assert_eq!(status.recipients[1].last_error, None);
        assert_eq!(status.recipients[1].delivered_at_ms, None);
        status.recipients[1].state = DeliveryState::Failed;
        assert!(status.is_settled());
        assert!(!status.all_delivered());
        assert_eq!(status.failed().count(), 1);
        let text = status.to_string();
        assert!(
            text.starts_with("notice n1: 1 of 2 recipients delivered"),
            "{text}"
        );
    }

    #[test]
    fn unknown_state_is_unspecified() {
        let mut r = recipient("a", DeliveryState::Pending);
        r.state = 99;
        assert_eq!(RecipientStatus::from(r).state, DeliveryState::Unspecified);
    }
}
