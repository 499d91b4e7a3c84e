//! `Purge`: the retention purge on demand (the daemon also runs it hourly,
//! see [`crate::retention`]), or with `dry_run` a count of what it would
//! take now.

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::retention::{self, Purged};

pub async fn purge(
    state: &AdminState,
    request: v1::PurgeRequest,
    actor: String,
) -> Result<v1::PurgeResponse, Status> {
    let Purged { cutoff_ms, report } = retention::purge(
        state.store.as_ref(),
        state.retention,
        crate::now_ms(),
        request.dry_run,
        &actor,
    )
    .await
    .map_err(|e| crate::api::internal("purge", e))?;
    tracing::info!(
        dry_run = request.dry_run,
        outbox_rows = report.outbox_rows,
        inbox_items = report.inbox_items,
        cutoff = %crate::config::format_time(cutoff_ms),
        "retention purge by operator"
    );
    Ok(v1::PurgeResponse {
        cutoff_ms,
        outbox_rows: report.outbox_rows,
        inbox_items: report.inbox_items,
        dry_run: request.dry_run,
        body_days: state.retention.body_days,
    })
}
