//! The local API: gRPC for the organisation's own systems, on a Unix socket
//! (mode 0660) and optionally on loopback TCP.
//!
//! One file per call: [`submit`], [`status`], [`inbox`] (list, stream,
//! ack), [`handling`] (read and handled in a team inbox), [`care_team`] (who
//! works with a citizen elsewhere). This file holds the
//! shared state, the mapping of errors to gRPC status codes and the server.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tvaers_proto::v1;
use tvaers_proto::v1::local_api_server::{LocalApi, LocalApiServer};

use crate::audit::CitizenHasher;
use crate::batch::GroupCommit;
use crate::delivery::CitizenKeys;
use crate::metrics::Metrics;
use crate::peers::PeerSet;
use crate::signing::SigningKey;
use crate::store::{NewNotice, Store, SubmitOutcome};

pub mod care_team;
pub mod handling;
pub mod inbox;
pub mod status;
pub mod submit;

/// What every API call may use.
#[derive(Debug)]
pub struct ApiState {
    pub org_id: String,
    /// The site's name, for the care-team view of its own plan changes.
    pub org_name: String,
    pub store: Arc<dyn Store>,
    pub submits: GroupCommit<NewNotice, SubmitOutcome>,
    /// Signs every envelope at submit, before it is stored.
    pub signing_key: Arc<SigningKey>,
    pub peers: Arc<PeerSet>,
    pub citizens: CitizenKeys,
    /// Turns CPR numbers into the keyed references the audit log keeps.
    pub citizen_refs: CitizenHasher,
    pub default_ttl_ms: i64,
    pub newest_cursor: watch::Receiver<u64>,
    pub shutdown: CancellationToken,
    pub metrics: Metrics,
}

/// The tonic service: each method delegates to its own module.
#[derive(Debug, Clone)]
pub struct LocalApiService {
    state: Arc<ApiState>,
}

impl LocalApiService {
    pub fn new(state: Arc<ApiState>) -> LocalApiService {
        LocalApiService { state }
    }

    pub fn into_server(self) -> LocalApiServer<LocalApiService> {
        LocalApiServer::new(self)
    }
}

type InboxStream = Pin<Box<dyn Stream<Item = Result<v1::InboxItem, Status>> + Send>>;

#[tonic::async_trait]
impl LocalApi for LocalApiService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let actor = actor("api", &request);
        submit::submit(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn delivery_status(
        &self,
        request: Request<v1::DeliveryStatusRequest>,
    ) -> Result<Response<v1::DeliveryStatusResponse>, Status> {
        status::delivery_status(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_inbox(
        &self,
        request: Request<v1::ListInboxRequest>,
    ) -> Result<Response<v1::ListInboxResponse>, Status> {
        let actor = actor("api", &request);
        inbox::list(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    type StreamInboxStream = InboxStream;

    async fn stream_inbox(
        &self,
        request: Request<v1::StreamInboxRequest>,
    ) -> Result<Response<Self::StreamInboxStream>, Status> {
        let actor = actor("api", &request);
        let stream = inbox::stream(self.state.clone(), request.into_inner(), actor);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_inbox(
        &self,
        request: Request<v1::AckInboxRequest>,
    ) -> Result<Response<v1::AckInboxResponse>, Status> {
        let actor = actor("api", &request);
        inbox::ack(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn mark_read(
        &self,
        request: Request<v1::MarkReadRequest>,
    ) -> Result<Response<v1::MarkReadResponse>, Status> {
        let actor = actor("api", &request);
        handling::mark_read(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn mark_handled(
        &self,
        request: Request<v1::MarkHandledRequest>,
    ) -> Result<Response<v1::MarkHandledResponse>, Status> {
        let actor = actor("api", &request);
        handling::mark_handled(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }

    async fn care_team(
        &self,
        request: Request<v1::CareTeamRequest>,
    ) -> Result<Response<v1::CareTeamResponse>, Status> {
        let actor = actor("api", &request);
        care_team::care_team(&self.state, request.into_inner(), actor)
            .await
            .map(Response::new)
    }
}

/// The metadata key a calling system may name its signed-in staff user
/// under, so the audit log says who read or handled an item.
pub const USER_HEADER: &str = "x-tvaers-user";

/// Who is calling, for the audit log: `role` and the Unix user id of the
/// process at the other end of the socket (told by the kernel, not by the
/// caller) or the TCP address, then the staff user the caller names in
/// [`USER_HEADER`], if any (kept to 64 plain characters).
pub(crate) fn actor<T>(role: &str, request: &Request<T>) -> String {
    let mut actor = role.to_owned();
    let uds = request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    if let Some(cred) = uds {
        actor.push_str(&format!(" uid={}", cred.uid()));
    } else if let Some(addr) = request.remote_addr() {
        actor.push_str(&format!(" tcp={addr}"));
    }
    if let Some(user) = request
        .metadata()
        .get(USER_HEADER)
        .and_then(|value| value.to_str().ok())
    {
        let user: String = user
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-@".contains(*c))
            .take(64)
            .collect();
        if !user.is_empty() {
            actor.push_str(&format!(" user={user}"));
        }
    }
    actor
}

/// Maps a store failure to a gRPC status without leaking details a caller
/// cannot act on; the daemon's log has the cause.
pub(crate) fn internal(operation: &str, error: impl std::fmt::Display) -> Status {
    tracing::error!(operation, %error, "local API call failed");
    Status::unavailable(format!(
        "{operation} failed: the daemon's store is unavailable; retry"
    ))
}

/// Binds the Unix socket with mode 0660, replacing a stale socket file left
/// by a crashed daemon.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    bind_unix_with_mode(path, 0o660)
}

/// Binds a Unix socket with `mode`, replacing a stale socket file.
///
/// The socket is bound under a staging name, given its mode, and only then
/// renamed into place, so there is no moment at which the final path
/// accepts connections with the process's default permissions.
pub fn bind_unix_with_mode(path: &Path, mode: u32) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staging = path.with_extension("binding");
    match std::fs::remove_file(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
    // Replaces a stale socket a crashed daemon left, in one step.
    std::fs::rename(&staging, path)?;
    Ok(listener)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn sockets_appear_with_their_mode_and_replace_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        let first = bind_unix_with_mode(&path, 0o600).unwrap();
        drop(first);
        // The file of the dropped listener stays behind, like after a crash.
        assert!(path.exists());
        let _second = bind_unix_with_mode(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!path.with_extension("binding").exists());
        tokio::net::UnixStream::connect(&path).await.unwrap();
    }
}
