//! The signal that new inbox items were stored, for everything that waits
//! on it: inbox streams, the webhook sender and the escalator.
//!
//! This daemon's receive path raises it for what it accepts itself. When
//! several instances share one store (PostgreSQL), the others accept items
//! too; [`spawn`] forwards the store's notifications of those (see
//! [`Store::listen_inbox`]) into the same signal, so a stream opened on one
//! instance sees items received by any, woken rather than polling.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{InboxListener, Store};

/// How long to wait before listening again after the store failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// Forwards the store's inbox notifications into `newest_cursor` until
/// `shutdown`. Does nothing (and returns at once) for a store that only this
/// process writes.
pub fn spawn(
    store: Arc<dyn Store>,
    newest_cursor: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut listener: Option<Box<dyn InboxListener>> = None;
        loop {
            let current = match listener.as_mut() {
                Some(current) => current,
                None => match store.listen_inbox().await {
                    Ok(Some(new)) => {
                        // Items stored while nobody listened: readers look again.
                        newest_cursor.send_modify(|_| {});
                        listener.insert(new)
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for inbox items other instances store; retrying");
                        if pause(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = current.next() => next,
            };
            match next {
                Ok(Some(cursor)) => {
                    newest_cursor.send_modify(|newest| *newest = (*newest).max(cursor));
                }
                Ok(None) => newest_cursor.send_modify(|_| {}),
                Err(error) => {
                    tracing::warn!(%error, "lost the inbox notifications of other instances; listening again");
                    listener = None;
                    if pause(&shutdown).await {
                        return;
                    }
                }
            }
        }
    })
}

/// Sleeps before a retry; true when shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(RELISTEN_AFTER) => false,
    }
}
