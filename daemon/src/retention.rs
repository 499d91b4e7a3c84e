//! Retention: purging notice bodies once nobody needs them in this daemon.
//!
//! A body (the signed envelope, with the CPR number and health details) is a
//! transport copy: the record lives in the EHR or case system that submitted
//! or acknowledged it. It is purged `retention.body_days` after its outbox
//! row was delivered or failed, or after its inbox item was acknowledged;
//! ids, times, states and signed receipts stay (see
//! [`Store::purge_bodies`]). The daemon purges at start and then every
//! [`PURGE_INTERVAL`]; the admin API's `Purge` runs the same [`purge`] on
//! demand. Logs carry counts and times only.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Millis;
use crate::audit::{AuditAction, AuditEvent};
use crate::config::{RetentionConfig, format_time};
use crate::store::{PurgeReport, Store, StoreError};

/// How often the daemon purges by itself.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

const DAY_MS: Millis = 86_400_000;

/// What one purge did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Bodies of notices finished before this time were taken.
    pub cutoff_ms: Millis,
    pub report: PurgeReport,
}

/// The time before which a finished notice's body is due for purging.
pub fn cutoff_ms(retention: RetentionConfig, now_ms: Millis) -> Millis {
    now_ms.saturating_sub(i64::from(retention.body_days).saturating_mul(DAY_MS))
}

/// Purges (or with `dry_run` counts) the bodies due at `now_ms`.
pub async fn purge(
    store: &dyn Store,
    retention: RetentionConfig,
    now_ms: Millis,
    dry_run: bool,
    actor: &str,
) -> Result<Purged, StoreError> {
    let cutoff_ms = cutoff_ms(retention, now_ms);
    let report = store.purge_bodies(cutoff_ms, now_ms, dry_run).await?;
    if !dry_run && report != PurgeReport::default() {
        store
            .record_audit(vec![
                AuditEvent::new(now_ms, actor, AuditAction::Purged).detail(format!(
                    "{} outbox bodies and {} inbox bodies finished before {}",
                    report.outbox_rows,
                    report.inbox_items,
                    format_time(cutoff_ms)
                )),
            ])
            .await?;
    }
    Ok(Purged { cutoff_ms, report })
}

/// Purges at once and then every [`PURGE_INTERVAL`] until `shutdown`. A
/// purge in progress at shutdown is finished, not cut off, so the task's
/// handle must be awaited before the store is closed.
pub fn spawn(
    store: Arc<dyn Store>,
    retention: RetentionConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(PURGE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match purge(store.as_ref(), retention, crate::now_ms(), false, "daemon").await {
                Ok(Purged { cutoff_ms, report }) => {
                    let cutoff = format_time(cutoff_ms);
                    if report == PurgeReport::default() {
                        tracing::debug!(%cutoff, "retention: no notice bodies due");
                    } else {
                        tracing::info!(
                            outbox_rows = report.outbox_rows,
                            inbox_items = report.inbox_items,
                            %cutoff,
                            body_days = retention.body_days,
                            "retention: purged notice bodies"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "retention: purge failed; trying again at the next run");
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::suite;

    #[test]
    fn cutoff_is_body_days_before_now() {
        let now = 1_800_000_000_000;
        assert_eq!(cutoff_ms(RetentionConfig { body_days: 0 }, now), now);
        assert_eq!(
            cutoff_ms(RetentionConfig { body_days: 30 }, now),
            now - 30 * DAY_MS
        );
        assert_eq!(
            cutoff_ms(RetentionConfig { body_days: 3 }, 5),
            5 - 3 * DAY_MS
        );
    }

    /// The task purges at start, without waiting an interval, and stops at
    /// shutdown.
    #[tokio::test]
    async fn the_task_purges_at_start_and_stops_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_for_test(&dir.path().join("t.db")).await);
        let accepted = store
            .accept_inbox(vec![suite::incoming("org-x", "in-1", b"r")])
            .await
            .unwrap();
        store
            .ack_inbox(accepted[0].cursor, 1_000, "api uid=1000")
            .await
            .unwrap();

        let shutdown = CancellationToken::new();
        let task = spawn(
            store.clone(),
            RetentionConfig { body_days: 1 },
            shutdown.clone(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let items = store.inbox_after(0, 1, false, None).await.unwrap();
            if items[0].purged_at_ms.is_some() {
                assert!(items[0].envelope.is_empty());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not purged at start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        store.close().await;
    }
}
