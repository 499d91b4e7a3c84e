//! The admin API: what the `tvaers` CLI asks a running daemon, on its own
//! Unix socket with mode 0600 (only the account the daemon runs as, i.e. its
//! operator, may manage trust; local systems use the 0660 local API).
//!
//! One file per concern: [`status`], [`reload`] (peers from the config file,
//! applied without a restart), [`outbox`] (list, retry, cancel), [`verify`]
//! (a notice's signatures), [`audit`] (the audit log), [`purge`] (retention
//! on demand), [`rewrap`] (the data key under a new key-encryption key).
//! Every call that changes something leaves an audit entry naming the
//! operator's Unix user.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tvaers_proto::v1;
use tvaers_proto::v1::admin_api_server::{AdminApi, AdminApiServer};

use crate::at_rest::Keyring;
use crate::audit::AuditKeys;
use crate::config::{RetentionConfig, Site};
use crate::peers::PeerSet;
use crate::signing::PublicKey;
use crate::store::Store;
use crate::transport::tls::Fingerprint;
use crate::{Millis, api};

pub mod audit;
pub mod outbox;
pub mod purge;
pub mod reload;
pub mod rewrap;
pub mod status;
pub mod verify;
pub mod webhooks;

/// What the admin calls use.
#[derive(Debug)]
pub struct AdminState {
    /// The config file, re-read by `ReloadPeers`.
    pub config_path: PathBuf,
    pub site: Site,
    pub store: Arc<dyn Store>,
    /// Where the store is, without credentials.
    pub store_description: String,
    pub peers: Arc<PeerSet>,
    pub listen: std::net::SocketAddr,
    pub fingerprint: Fingerprint,
    /// Our signing key's public half, to re-check what we signed.
    pub signing_key: PublicKey,
    pub certificate_not_after_ms: Option<Millis>,
    pub started_at_ms: Millis,
    /// Checks the audit chain; turns a CPR asked about into its reference.
    pub audit_keys: AuditKeys,
    /// For `Purge`: the same setting the hourly purge uses.
    pub retention: RetentionConfig,
    /// The store's data key, for `RewrapStoreKey`.
    pub keyring: Arc<Keyring>,
    /// This instance's id in the outbox leases (see [`crate::lease`]).
    pub instance_id: String,
}

#[derive(Debug, Clone)]
pub struct AdminService {
    state: Arc<AdminState>,
}

impl AdminService {
    pub fn new(state: Arc<AdminState>) -> AdminService {
        AdminService { state }
    }

    pub fn into_server(self) -> AdminApiServer<AdminService> {
        AdminApiServer::new(self)
    }
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    async fn status(
        &self,
        _: Request<v1::AdminStatusRequest>,
    ) -> Result<Response<v1::AdminStatusResponse>, Status> {
        status::status(&self.state).await.map(Response::new)
    }

    async fn reload_peers(
        &self,
        request: Request<v1::ReloadPeersRequest>,
    ) -> Result<Response<v1::ReloadPeersResponse>, Status> {
        let actor = api::actor("admin", &request);
        reload::reload_peers(&self.state, actor)
            .await
            .map(Response::new)
    }

    async fn list_outbox(
        &self,
        request: Request<v1::ListOutboxRequest>,
    ) -> Result<Response<v1::ListOutboxResponse>, Status> {
        outbox::list(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn retry_outbox(
        &self,
        request: Request<v1::OutboxActionRequest>,
    ) -> Result<Response<v1::OutboxActionResponse>, Status> {
        let actor = api::actor("admin", &request);
        outbox::retry(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn verify_notice(
        &self,
        request: Request<v1::VerifyNoticeRequest>,
    ) -> Result<Response<v1::VerifyNoticeResponse>, Status> {
        verify::verify_notice(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn purge(
        &self,
        request: Request<v1::PurgeRequest>,
    ) -> Result<Response<v1::PurgeResponse>, Status> {
        let actor = api::actor("admin", &request);
        purge::purge(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn rewrap_store_key(
        &self,
        request: Request<v1::RewrapStoreKeyRequest>,
    ) -> Result<Response<v1::RewrapStoreKeyResponse>, Status> {
        let actor = api::actor("admin", &request);
        rewrap::rewrap_store_key(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn cancel_outbox(
        &self,
        request: Request<v1::OutboxActionRequest>,
    ) -> Result<Response<v1::OutboxActionResponse>, Status> {
        let actor = api::actor("admin", &request);
        outbox::cancel(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn list_webhooks(
        &self,
        request: Request<v1::ListWebhooksRequest>,
    ) -> Result<Response<v1::ListWebhooksResponse>, Status> {
        webhooks::list(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn retry_webhook(
        &self,
        request: Request<v1::RetryWebhookRequest>,
    ) -> Result<Response<v1::RetryWebhookResponse>, Status> {
        let actor = api::actor("admin", &request);
        webhooks::retry(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn audit_verify(
        &self,
        _: Request<v1::AuditVerifyRequest>,
    ) -> Result<Response<v1::AuditVerifyResponse>, Status> {
        audit::verify(&self.state).await.map(Response::new)
    }

    async fn audit_entries(
        &self,
        request: Request<v1::AuditEntriesRequest>,
    ) -> Result<Response<v1::AuditEntriesResponse>, Status> {
        let actor = api::actor("admin", &request);
        audit::entries(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }
}

/// Binds the admin socket with mode 0600.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    api::bind_unix_with_mode(path, 0o600)
}
