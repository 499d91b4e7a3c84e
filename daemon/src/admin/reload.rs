//! `ReloadPeers`: re-reads the `[[peers]]` of the config file and applies the
//! difference without a restart (see [`crate::peers`]). Only peers change:
//! other settings need a restart, and an invalid file changes nothing.

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::audit::{AuditAction, AuditEvent};
use crate::config::Config;
use crate::now_ms;

pub async fn reload_peers(
    state: &AdminState,
    actor: String,
) -> Result<v1::ReloadPeersResponse, Status> {
    let config = Config::load(&state.config_path).map_err(|error| {
        Status::invalid_argument(format!(
            "the config file was not reloaded, nothing changed: {error}"
        ))
    })?;
    if config.site.org_id != state.site.org_id {
        return Err(Status::failed_precondition(format!(
            "the config file now names organisation {} but this daemon runs as {}: restart it to change that",
            config.site.org_id, state.site.org_id
        )));
    }
    let changes = state
        .peers
        .apply(config.peers)
        .await
        .map_err(|e| crate::api::internal("reload peers", e))?;
    tracing::info!(
        added = ?changes.added,
        updated = ?changes.updated,
        revoked = ?changes.revoked,
        removed = ?changes.removed,
        failed_items = changes.failed_items,
        "peers reloaded"
    );
    let at_ms = now_ms();
    let events = [
        (AuditAction::PeerAdded, &changes.added),
        (AuditAction::PeerChanged, &changes.updated),
        (AuditAction::PeerRevoked, &changes.revoked),
        (AuditAction::PeerRemoved, &changes.removed),
    ]
    .into_iter()
    .flat_map(|(action, peers)| {
        let actor = &actor;
        peers.iter().map(move |peer| {
            AuditEvent::new(at_ms, actor.as_str(), action)
                .peer(peer.as_str())
                .detail("config reloaded")
        })
    })
    .collect();
    super::audit::record(state, events).await?;
    Ok(v1::ReloadPeersResponse {
        added: changes.added,
        updated: changes.updated,
        revoked: changes.revoked,
        removed: changes.removed,
        failed_items: changes.failed_items,
    })
}
