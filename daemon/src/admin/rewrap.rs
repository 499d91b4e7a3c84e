//! `RewrapStoreKey`: wraps the store's data key under a new key-encryption
//! key. The new KEK file must be owner-only like every key file; its
//! contents never appear in a reply or a log line, only its id.

use std::path::PathBuf;

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::at_rest::{AtRestError, Kek, KekSource};
use crate::audit::{AuditAction, AuditEvent};

pub async fn rewrap_store_key(
    state: &AdminState,
    request: v1::RewrapStoreKeyRequest,
    actor: String,
) -> Result<v1::RewrapStoreKeyResponse, Status> {
    let path = PathBuf::from(&request.new_key_file);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(
            "new_key_file must be an absolute path (the daemon's working directory is not the caller's)",
        ));
    }
    let new = Kek::load(&KekSource::File(path)).map_err(|e| match e {
        AtRestError::Store(_) => crate::api::internal("rewrap store key", e),
        other => Status::invalid_argument(other.to_string()),
    })?;
    let old_kek_id = state.keyring.kek_id().to_owned();
    let new_kek_id = state
        .keyring
        .rewrap(state.store.as_ref(), &new)
        .await
        .map_err(|e| match e {
            AtRestError::SameKek(_) => Status::invalid_argument(e.to_string()),
            AtRestError::Raced => Status::failed_precondition(e.to_string()),
            other => crate::api::internal("rewrap store key", other),
        })?;
    tracing::info!(
        old_kek_id = %old_kek_id,
        new_kek_id = %new_kek_id,
        "store data key re-wrapped under a new key-encryption key"
    );
    super::audit::record(
        state,
        vec![
            AuditEvent::new(crate::now_ms(), actor, AuditAction::StoreKeyRewrapped)
                .detail(format!("kek {old_kek_id} -> {new_kek_id}")),
        ],
    )
    .await?;
    Ok(v1::RewrapStoreKeyResponse {
        old_kek_id,
        new_kek_id,
    })
}
