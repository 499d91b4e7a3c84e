//! The escalation driver: applies [`crate::escalation`]'s decisions to the
//! store. It loads the team-inbox items that are neither handled nor
//! escalated (only of inboxes that have a deadline), asks
//! [`EscalationPolicy::step`] which are overdue, escalates each in one store
//! transaction (marked escalated where it was, placed in the escalation
//! inbox, audited), then sleeps until the next deadline, a new item, or at
//! most [`MAX_SLEEP`], whichever comes first. A restart loses nothing: the
//! state is in the store, and an item escalated once is not escalated again.
//!
//! After each escalation the sender is told that its notice is overdue here
//! (an overdue business receipt, see [`crate::api::handling::tell_overdue`]);
//! one a crash kept from the outbox goes out at the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::escalation::{EscalationPolicy, InboxItem};
use crate::store::{Store, StoreError};
use crate::{Millis, now_ms};

/// Look again at least this often: the clock may jump, and an item handled
/// or escalated by another instance changes nothing here until then.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// At most one round per this long: a round reads every open item of the
/// timed inboxes, so a burst of new items must not start one each.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// One round: escalates every overdue item. Returns those it escalated, as
/// (cursor, the inbox whose deadline passed), and when the next deadline
/// falls.
pub async fn escalate_due(
    store: &dyn Store,
    policy: &EscalationPolicy,
    webhook_inboxes: &[String],
    now: Millis,
) -> Result<(Vec<(u64, String)>, Option<Millis>), StoreError> {
    let mut timed: Vec<String> = policy.rules().iter().map(|r| r.inbox.clone()).collect();
    timed.sort();
    timed.dedup();
    let open = store.open_placements(&timed).await?;
    let items: Vec<InboxItem> = open
        .into_iter()
        .map(|placement| InboxItem {
            id: placement.cursor,
            inbox: placement.inbox,
            kind: placement.kind,
            received_at_ms: placement.placed_at_ms,
            handled_at_ms: None,
            escalated: false,
        })
        .collect();
    let step = policy.step(now, &items);
    let mut escalated = Vec::new();
    for due in &step.escalate {
        if store
            .escalate(
                due.id,
                &due.inbox,
                &due.escalate_to,
                now,
                webhook_inboxes.contains(&due.escalate_to),
            )
            .await?
        {
            escalated.push((due.id, due.inbox.clone()));
            tracing::warn!(
                cursor = due.id,
                inbox = %due.inbox,
                kind = %due.kind,
                escalate_to = %due.escalate_to,
                "handling deadline passed: escalated"
            );
        }
    }
    Ok((escalated, step.next_check_at_ms))
}

/// Runs [`escalate_due`] until `shutdown`, waking for new items
/// (`newest_cursor`) and deadlines, and tells the senders of the items it
/// escalates. Escalating places items in escalation inboxes, so it raises
/// `newest_cursor` too: streams of those inboxes wake, and an escalation
/// inbox among `webhook_inboxes` gets a webhook event.
pub fn spawn(
    state: Arc<ApiState>,
    policy: EscalationPolicy,
    webhook_inboxes: Vec<String>,
    newest_cursor: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut placed = newest_cursor.subscribe();
        loop {
            placed.borrow_and_update();
            let now = now_ms();
            let sleep = match escalate_due(state.store.as_ref(), &policy, &webhook_inboxes, now)
                .await
            {
                Ok((escalated, next)) => {
                    if !escalated.is_empty() {
                        newest_cursor.send_modify(|_| {});
                    }
                    for (cursor, inbox) in escalated {
                        crate::api::handling::tell_overdue(&state, cursor, &inbox, now).await;
                    }
                    next.map_or(MAX_SLEEP, |at| {
                        Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(MAX_SLEEP)
                    })
                }
                Err(error) => {
                    tracing::error!(%error, "escalation: cannot read or write the store; retrying");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep.max(MIN_INTERVAL)) => {}
                changed = async {
                    let changed = placed.changed().await;
                    tokio::time::sleep(MIN_INTERVAL).await;
                    changed
                } => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    })
}
