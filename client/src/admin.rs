//! The daemon's admin API (`tvaers.v1.AdminApi`), for the `tvaers` CLI and
//! operators' scripts: status, peer reloads, outbox management, signature
//! checks, the retention purge, the audit log and re-wrapping the store's
//! data key. It listens on its own Unix socket (mode 0600), apart from the
//! local API.

use std::path::Path;

use tonic::transport::Channel;
use tvaers_proto::v1;
use tvaers_proto::v1::admin_api_client::AdminApiClient;

use crate::client::unix_channel;
use crate::error::{ClientError, Target};

/// A connection to a daemon's admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    inner: AdminApiClient<Channel>,
    target: Target,
}

impl AdminClient {
    /// Connects to the admin socket; a missing daemon is reported as
    /// [`ClientError::DaemonNotRunning`] with the path and how to start it.
    pub async fn connect(socket_path: impl AsRef<Path>) -> Result<AdminClient, ClientError> {
        let (channel, target) = unix_channel(socket_path.as_ref()).await?;
        Ok(AdminClient {
            inner: AdminApiClient::new(channel),
            target,
        })
    }

    fn map(&self, status: tonic::Status) -> ClientError {
        ClientError::from_status(status, &self.target)
    }

    pub async fn status(&self) -> Result<v1::AdminStatusResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .status(v1::AdminStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    pub async fn reload_peers(&self) -> Result<v1::ReloadPeersResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .reload_peers(v1::ReloadPeersRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    pub async fn list_outbox(
        &self,
        request: v1::ListOutboxRequest,
    ) -> Result<Vec<v1::OutboxRow>, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .list_outbox(request)
            .await
            .map(|r| r.into_inner().rows)
            .map_err(|s| self.map(s))
    }

    pub async fn retry_outbox(
        &self,
        notice_id: &str,
        recipient: Option<&str>,
    ) -> Result<v1::OutboxActionResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .retry_outbox(action(notice_id, recipient))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    /// Webhook events, newest first.
    pub async fn list_webhooks(
        &self,
        request: v1::ListWebhooksRequest,
    ) -> Result<Vec<v1::WebhookEventRow>, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .list_webhooks(request)
            .await
            .map(|r| r.into_inner().events)
            .map_err(|s| self.map(s))
    }

    /// Sends a dead webhook event again.
    pub async fn retry_webhook(&self, id: i64) -> Result<v1::RetryWebhookResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .retry_webhook(v1::RetryWebhookRequest { id })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    /// Checks the audit log's chain from its first entry to its head.
    pub async fn audit_verify(&self) -> Result<v1::AuditVerifyResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .audit_verify(v1::AuditVerifyRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    /// One page of audit entries; pass `next_after_seq` of the answer as
    /// `after_seq` of the next request until it is 0.
    pub async fn audit_entries(
        &self,
        request: v1::AuditEntriesRequest,
    ) -> Result<v1::AuditEntriesResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .audit_entries(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    /// Asks the daemon to wrap its store's data key under the key-encryption
    /// key in `new_key_file` (an absolute path on the daemon's host, mode
    /// 0600). Returns the old and new key-encryption key ids.
    pub async fn rewrap_store_key(
        &self,
        new_key_file: &Path,
    ) -> Result<v1::RewrapStoreKeyResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .rewrap_store_key(v1::RewrapStoreKeyRequest {
                new_key_file: new_key_file.to_string_lossy().into_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    pub async fn verify_notice(
        &self,
        notice_id: &str,
    ) -> Result<Vec<v1::SignatureCheck>, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .verify_notice(v1::VerifyNoticeRequest {
                notice_id: notice_id.to_owned(),
            })
            .await
            .map(|r| r.into_inner().checks)
            .map_err(|s| self.map(s))
    }

    /// Runs the retention purge now, or with `dry_run` counts what it
    /// would take.
    pub async fn purge(&self, dry_run: bool) -> Result<v1::PurgeResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .purge(v1::PurgeRequest { dry_run })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }

    pub async fn cancel_outbox(
        &self,
        notice_id: &str,
        recipient: Option<&str>,
    ) -> Result<v1::OutboxActionResponse, ClientError> {
        let mut inner = self.inner.clone();
        inner
            .cancel_outbox(action(notice_id, recipient))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.map(s))
    }
}

fn action(notice_id: &str, recipient: Option<&str>) -> v1::OutboxActionRequest {
    v1::OutboxActionRequest {
        notice_id: notice_id.to_owned(),
        recipient: recipient.unwrap_or_default().to_owned(),
    }
}
