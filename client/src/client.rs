//! The connection to the local daemon and one method per call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};
use tvaers_proto::v1;
use tvaers_proto::v1::local_api_client::LocalApiClient;

use crate::error::{ClientError, Target};
use crate::inbox::InboxStream;
use crate::status::DeliveryStatus;
use crate::submission::{Submission, Submitted};

/// How long establishing the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Client::wait_delivered`] asks the daemon.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A gRPC channel to a daemon socket (local or admin API).
pub(crate) async fn unix_channel(socket_path: &Path) -> Result<(Channel, Target), ClientError> {
    let path = Arc::new(socket_path.to_path_buf());
    let target = Target::Unix(PathBuf::clone(&path));
    // The URI is required by the HTTP layer but never resolved: the
    // connector below ignores it and dials the socket.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(CONNECT_TIMEOUT);
    let connector = tower::service_fn(move |_: Uri| {
        let path = Arc::clone(&path);
        async move {
            let stream = tokio::net::UnixStream::connect(&*path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    match endpoint.connect_with_connector(connector).await {
        Ok(channel) => Ok((channel, target)),
        Err(e) => Err(ClientError::from_connect(&e, target)),
    }
}

/// A connection to the local tvaers daemon.
///
/// Cheap to clone: clones share one HTTP/2 connection, and every method
/// takes `&self`, so one client can serve many tasks at once. If the
/// connection breaks, calls fail with [`ClientError::Unavailable`] and the
/// next call reconnects.
#[derive(Debug, Clone)]
pub struct Client {
    inner: LocalApiClient<Channel>,
    target: Target,
}

impl Client {
    /// Connects to the daemon's local API on a Unix domain socket.
    ///
    /// Fails with [`ClientError::DaemonNotRunning`], naming the path and how
    /// to start the daemon, when the socket does not exist or nobody listens
    /// on it.
    pub async fn connect(socket_path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let (channel, target) = unix_channel(socket_path.as_ref()).await?;
        Ok(Client::from_channel(channel, target))
    }

    /// Connects to a daemon whose local API listens on loopback TCP, e.g.
    /// `http://127.0.0.1:7600` (a missing `http://` is added). The local API
    /// has no TLS: do not use this across a network.
    pub async fn connect_tcp(addr: &str) -> Result<Client, ClientError> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::InvalidAddress {
                addr: addr.to_owned(),
                reason: innermost(&e),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let target = Target::Tcp(uri);
        match endpoint.connect().await {
            Ok(channel) => Ok(Client::from_channel(channel, target)),
            Err(e) => Err(ClientError::from_connect(&e, target)),
        }
    }

    fn from_channel(channel: Channel, target: Target) -> Client {
        Client {
            inner: LocalApiClient::new(channel),
            target,
        }
    }

    /// Where this client talks to its daemon.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The generated gRPC client, for calls this crate does not wrap.
    pub fn raw(&self) -> LocalApiClient<Channel> {
        self.inner.clone()
    }

    fn map(&self, status: tonic::Status) -> ClientError {
        ClientError::from_status(status, &self.target)
    }

    /// Stores a notice for its recipients; returns once it is on the
    /// daemon's disk. Delivery happens afterwards: follow it with
    /// [`delivery_status`](Self::delivery_status) or
    /// [`wait_delivered`](Self::wait_delivered).
    ///
    /// Safe to retry with the same `Submission` (same idempotency key): the
    /// second answer has `duplicate: true` and the first notice id.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, ClientError> {
        let response = self
            .inner
            .clone()
            .submit(submission.into_request())
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(Submitted {
            notice_id: response.notice_id,
            duplicate: response.duplicate,
        })
    }

    /// Where a submitted notice is, per recipient.
    pub async fn delivery_status(
        &self,
        notice_id: impl AsRef<str>,
    ) -> Result<DeliveryStatus, ClientError> {
        let request = v1::DeliveryStatusRequest {
            notice_id: notice_id.as_ref().to_owned(),
        };
        let response = self
            .inner
            .clone()
            .delivery_status(request)
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(response.into())
    }

    /// Asks for the delivery status every 50 ms until every recipient is
    /// delivered or failed, and returns that status (check
    /// [`DeliveryStatus::all_delivered`]). Fails with
    /// [`ClientError::Timeout`], carrying the last status, after `timeout`.
    pub async fn wait_delivered(
        &self,
        notice_id: impl AsRef<str>,
        timeout: Duration,
    ) -> Result<DeliveryStatus, ClientError> {
        let notice_id = notice_id.as_ref();
        let start = tokio::time::Instant::now();
        loop {
            let status = self.delivery_status(notice_id).await?;
            if status.is_settled() {
                return Ok(status);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ClientError::Timeout {
                    notice_id: notice_id.to_owned(),
                    waited,
                    last: Box::new(status),
                });
            }
            tokio::time::sleep(POLL_INTERVAL.min(timeout - waited)).await;
        }
    }

    /// Inbox items with a cursor greater than `after_cursor` (0 for the
    /// start), at most `limit` of them (0 means the daemon's default, 100),
    /// acknowledged or not. An item acknowledged long enough ago to be past
    /// the daemon's retention has no envelope and a non-zero
    /// `purged_at_ms`; its `sender` and `notice_id` are still set.
    pub async fn list_inbox(
        &self,
        after_cursor: u64,
        limit: u32,
    ) -> Result<Vec<v1::InboxItem>, ClientError> {
        self.list(after_cursor, limit, false).await
    }

    /// Like [`list_inbox`](Self::list_inbox), leaving out acknowledged items.
    pub async fn list_unacked(
        &self,
        after_cursor: u64,
        limit: u32,
    ) -> Result<Vec<v1::InboxItem>, ClientError> {
        self.list(after_cursor, limit, true).await
    }

    /// The items placed in one team inbox (see each item's `placements`)
    /// at a position greater than `after_position` (0 for the start), in
    /// the order they were placed there: page on with the last item's
    /// `position`. An item escalated into the inbox is placed when it is
    /// escalated, so it comes after items received later.
    pub async fn list_team_inbox(
        &self,
        inbox: &str,
        after_position: u64,
        limit: u32,
    ) -> Result<Vec<v1::InboxItem>, ClientError> {
        self.list_request(v1::ListInboxRequest {
            after_cursor: 0,
            limit,
            unacked_only: false,
            inbox: inbox.to_owned(),
            after_position,
        })
        .await
    }

    async fn list(
        &self,
        after_cursor: u64,
        limit: u32,
        unacked_only: bool,
    ) -> Result<Vec<v1::InboxItem>, ClientError> {
        self.list_request(v1::ListInboxRequest {
            after_cursor,
            limit,
            unacked_only,
            inbox: String::new(),
            after_position: 0,
        })
        .await
    }

    async fn list_request(
        &self,
        request: v1::ListInboxRequest,
    ) -> Result<Vec<v1::InboxItem>, ClientError> {
        let response = self
            .inner
            .clone()
            .list_inbox(request)
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(response.items)
    }

    /// Inbox items after `after_cursor`, then every new item as it arrives.
    /// Read it with [`StreamExt::next`](crate::StreamExt::next); see
    /// [`InboxStream`] for resuming after a disconnect.
    pub fn inbox_stream(&self, after_cursor: u64) -> InboxStream {
        self.stream(v1::StreamInboxRequest {
            after_cursor,
            ..Default::default()
        })
    }

    /// Like [`inbox_stream`](Self::inbox_stream), only the items placed in
    /// one team inbox, in the order they were placed there (escalations
    /// included), after position `after_position` or, with `None`, only
    /// those placed from now on. Resume with `client.team_inbox_stream(inbox,
    /// Some(stream.last_position()))` once an item was seen.
    pub fn team_inbox_stream(&self, inbox: &str, after_position: Option<u64>) -> InboxStream {
        self.stream(v1::StreamInboxRequest {
            inbox: inbox.to_owned(),
            from_newest: after_position.is_none(),
            after_position: after_position.unwrap_or_default(),
            ..Default::default()
        })
    }

    fn stream(&self, request: v1::StreamInboxRequest) -> InboxStream {
        let mut inner = self.inner.clone();
        let (after_cursor, after_position) = (request.after_cursor, request.after_position);
        let open = Box::pin(async move { Ok(inner.stream_inbox(request).await?.into_inner()) });
        InboxStream::new(open, self.target.clone(), after_cursor, after_position)
    }

    /// Records that `reader` (a staff member, as the local system names
    /// them) opened the item in team inbox `inbox`. Returns false when it
    /// was read before; the first reader is kept.
    pub async fn mark_read(
        &self,
        cursor: u64,
        inbox: &str,
        reader: &str,
    ) -> Result<bool, ClientError> {
        let response = self
            .inner
            .clone()
            .mark_read(v1::MarkReadRequest {
                cursor,
                inbox: inbox.to_owned(),
                reader: reader.to_owned(),
            })
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(response.newly_read)
    }

    /// Records that `handler` took the item in team inbox `inbox`, with
    /// how to reach them and an optional note. Returns false when it was
    /// handled before; the first handler is kept.
    pub async fn mark_handled(
        &self,
        cursor: u64,
        inbox: &str,
        handler: v1::Contact,
        note: &str,
    ) -> Result<bool, ClientError> {
        let response = self
            .inner
            .clone()
            .mark_handled(v1::MarkHandledRequest {
                cursor,
                inbox: inbox.to_owned(),
                handler: Some(handler),
                note: note.to_owned(),
            })
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(response.newly_handled)
    }

    /// Who works with the citizen `cpr` in the other organisations, and how
    /// to reach them: per organisation and unit the latest contact this
    /// site learned (from the handled receipts it received and the plan
    /// changes it sent and received), with when it held and when it was
    /// learned. Ordered by organisation, then unit. The daemon records
    /// each lookup in its audit log.
    pub async fn care_team(&self, cpr: &str) -> Result<Vec<v1::CareTeamMember>, ClientError> {
        let response = self
            .inner
            .clone()
            .care_team(v1::CareTeamRequest {
                citizen_cpr: cpr.to_owned(),
            })
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(response.members)
    }

    /// Marks an inbox item as taken care of. Returns false when it was
    /// acknowledged before.
    pub async fn ack(&self, cursor: u64) -> Result<bool, ClientError> {
        let response = self
            .inner
            .clone()
            .ack_inbox(v1::AckInboxRequest { cursor })
            .await
            .map_err(|s| self.map(s))?
            .into_inner();
        Ok(response.newly_acked)
    }
}

/// The innermost cause of an error, for people.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tvaers-client-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[tokio::test]
    async fn missing_socket_says_daemon_not_running() {
        let dir = scratch_dir("missing");
        let path = dir.join("local.sock");
        let err = Client::connect(&path).await.expect_err("no daemon there");
        match &err {
            ClientError::DaemonNotRunning { target, kind } => {
                assert_eq!(target, &Target::Unix(path.clone()));
                assert_eq!(*kind, std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("tvaersd --config FILE"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn stale_socket_says_daemon_not_running() {
        let dir = scratch_dir("stale");
        let path = dir.join("local.sock");
        // A socket file left behind by a daemon that stopped.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = Client::connect(&path).await.expect_err("nobody listens");
        assert!(
            matches!(
                &err,
                ClientError::DaemonNotRunning {
                    kind: std::io::ErrorKind::ConnectionRefused,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("nothing is listening"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn closed_tcp_port_says_daemon_not_running() {
        // Bind and drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let err = Client::connect_tcp(&format!("127.0.0.1:{port}"))
            .await
            .expect_err("nobody listens");
        assert!(
            matches!(&err, ClientError::DaemonNotRunning { target: Target::Tcp(addr), .. }
                if addr == &format!("http://127.0.0.1:{port}")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bad_address_is_refused() {
        let err = Client::connect_tcp("http://exa mple:1")
            .await
            .expect_err("bad uri");
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err:?}");
    }
}
