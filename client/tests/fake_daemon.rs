//! The client against an in-process fake of the daemon's local API on a Unix
//! socket: what goes over the wire and how answers and errors come back.
//! End-to-end tests against real `tvaersd` processes live in `tests/`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tvaers_client::{Client, ClientError, DeliveryState, StreamExt, Submission, v1};
use tvaers_proto::v1::local_api_server::{LocalApi, LocalApiServer};

#[derive(Debug, Default)]
struct Fake {
    submits: Mutex<Vec<v1::SubmitRequest>>,
    status_calls: Mutex<u32>,
    stuck: std::sync::atomic::AtomicBool,
    acked: Mutex<Vec<u64>>,
}

fn item(cursor: u64) -> v1::InboxItem {
    v1::InboxItem {
        cursor,
        received_at_ms: 1_767_261_600_000,
        envelope: Some(v1::Envelope {
            notice_id: format!("notice-{cursor}"),
            sender: "region-h".into(),
            recipient: "kommune-gribskov".into(),
            ..Default::default()
        }),
        acked_at_ms: 0,
        placements: Vec::new(),
        purged_at_ms: 0,
        sender: "region-h".into(),
        notice_id: format!("notice-{cursor}"),
        position: 0,
    }
}

/// What the server holds; the test keeps another handle to the same `Fake`.
#[derive(Debug)]
struct Service(Arc<Fake>);

impl std::ops::Deref for Service {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.0
    }
}

#[tonic::async_trait]
impl LocalApi for Service {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let request = request.into_inner();
        if request.recipients.is_empty() {
            return Err(Status::invalid_argument(
                "recipients: at least one is required",
            ));
        }
        let mut submits = self.submits.lock().expect("lock");
        let duplicate = submits
            .iter()
            .any(|s| s.idempotency_key == request.idempotency_key);
        if duplicate
            && submits
                .iter()
                .any(|s| s.idempotency_key == request.idempotency_key && s != &request)
        {
            return Err(Status::already_exists(
                "idempotency_key: already used for another notice",
            ));
        }
        if !duplicate {
            submits.push(request);
        }
        Ok(Response::new(v1::SubmitResponse {
            notice_id: "0197a0b0-0000-7000-8000-000000000001".into(),
            duplicate,
        }))
    }

    async fn delivery_status(
        &self,
        request: Request<v1::DeliveryStatusRequest>,
    ) -> Result<Response<v1::DeliveryStatusResponse>, Status> {
        let notice_id = request.into_inner().notice_id;
        if notice_id != "0197a0b0-0000-7000-8000-000000000001" {
            return Err(Status::not_found("notice_id: no such notice"));
        }
        let mut calls = self.status_calls.lock().expect("lock");
        *calls += 1;
        // In flight for the first two polls, then delivered.
        let stuck = self.stuck.load(std::sync::atomic::Ordering::Relaxed);
        let state = if *calls >= 3 && !stuck {
            DeliveryState::Delivered
        } else {
            DeliveryState::InFlight
        };
        Ok(Response::new(v1::DeliveryStatusResponse {
            notice_id,
            created_at_ms: 1_767_261_600_000,
            recipients: vec![v1::RecipientStatus {
                recipient: "kommune-gribskov".into(),
                state: state as i32,
                attempts: 1,
                ..Default::default()
            }],
        }))
    }

    async fn list_inbox(
        &self,
        request: Request<v1::ListInboxRequest>,
    ) -> Result<Response<v1::ListInboxResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            u64::from(r.limit)
        };
        let items = (r.after_cursor + 1..=5)
            .take(limit as usize)
            .map(item)
            .collect();
        Ok(Response::new(v1::ListInboxResponse { items }))
    }

    type StreamInboxStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::InboxItem, Status>> + Send>>;

    async fn stream_inbox(
        &self,
        request: Request<v1::StreamInboxRequest>,
    ) -> Result<Response<Self::StreamInboxStream>, Status> {
        let after = request.into_inner().after_cursor;
        if after > 100 {
            return Err(Status::failed_precondition(
                "after_cursor: beyond the inbox",
            ));
        }
        // Three items, then the daemon "goes away".
        let items = (after + 1..=after + 3)
            .map(|c| Ok(item(c)))
            .chain([Err(Status::unavailable("daemon shutting down"))]);
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn ack_inbox(
        &self,
        request: Request<v1::AckInboxRequest>,
    ) -> Result<Response<v1::AckInboxResponse>, Status> {
        let cursor = request.into_inner().cursor;
        let mut acked = self.acked.lock().expect("lock");
        let newly_acked = !acked.contains(&cursor);
        acked.push(cursor);
        Ok(Response::new(v1::AckInboxResponse { newly_acked }))
    }

    // Team-inbox handling is tested against the real daemon (tests/).
    async fn mark_read(
        &self,
        _: Request<v1::MarkReadRequest>,
    ) -> Result<Response<v1::MarkReadResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn mark_handled(
        &self,
        _: Request<v1::MarkHandledRequest>,
    ) -> Result<Response<v1::MarkHandledResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn care_team(
        &self,
        _: Request<v1::CareTeamRequest>,
    ) -> Result<Response<v1::CareTeamResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }
}

struct Running {
    fake: Arc<Fake>,
    path: PathBuf,
    dir: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start() -> Running {
    let dir = std::env::temp_dir().join(format!(
        "tvaers-client-fake-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("local.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let fake = Arc::new(Fake::default());
    let service = LocalApiServer::new(Service(Arc::clone(&fake)));
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await
            .expect("serve");
    });
    Running {
        fake,
        path,
        dir,
        server,
    }
}

fn admission() -> v1::Admission {
    v1::Admission {
        admitted_at_ms: 1_767_261_600_000,
        urgency: v1::AdmissionUrgency::Acute as i32,
        legal_basis: v1::AdmissionLegalBasis::Voluntary as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn submit_sends_the_built_request_and_retries_are_duplicates() -> anyhow::Result<()> {
    let daemon = start().await;
    let client = Client::connect(&daemon.path).await?;

    let submission = Submission::admission("0101904000", admission())
        .to("kommune-gribskov")
        .to("almen-praksis-42")
        .episode("stay-1")
        .ttl(Duration::from_secs(600));
    let first = client.submit(submission.clone()).await?;
    assert!(!first.duplicate);
    let again = client.submit(submission.clone()).await?;
    assert!(again.duplicate);
    assert_eq!(again.notice_id, first.notice_id);

    let submits = daemon.fake.submits.lock().expect("lock").clone();
    assert_eq!(submits.len(), 1);
    assert_eq!(submits[0], submission.into_request());
    assert_eq!(submits[0].ttl_seconds, 600);
    Ok(())
}

#[tokio::test]
async fn daemon_errors_become_typed_errors() -> anyhow::Result<()> {
    let daemon = start().await;
    let client = Client::connect(&daemon.path).await?;

    let err = client
        .submit(Submission::admission("0101904000", admission()))
        .await
        .expect_err("no recipients");
    match &err {
        ClientError::InvalidArgument { message } => assert!(message.contains("recipients")),
        other => panic!("unexpected: {other:?}"),
    }
    assert!(!err.to_string().contains("0101904000"));

    client
        .submit(
            Submission::admission("0101904000", admission())
                .to("kommune-gribskov")
                .idempotency_key("k1"),
        )
        .await?;
    let err = client
        .submit(
            Submission::discharge("0101904000", v1::Discharge::default())
                .to("kommune-gribskov")
                .idempotency_key("k1"),
        )
        .await
        .expect_err("key reused");
    assert!(
        matches!(
            err,
            ClientError::Conflict {
                code: tonic::Code::AlreadyExists,
                ..
            }
        ),
        "{err:?}"
    );

    let err = client
        .delivery_status("nope")
        .await
        .expect_err("unknown id");
    assert!(matches!(err, ClientError::NotFound { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn wait_delivered_polls_until_settled() -> anyhow::Result<()> {
    let daemon = start().await;
    let client = Client::connect(&daemon.path).await?;
    let id = "0197a0b0-0000-7000-8000-000000000001";

    let status = client.wait_delivered(id, Duration::from_secs(5)).await?;
    assert!(status.all_delivered());
    assert_eq!(*daemon.fake.status_calls.lock().expect("lock"), 3);

    daemon
        .fake
        .stuck
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let err = client
        .wait_delivered(id, Duration::from_millis(120))
        .await
        .expect_err("never delivered");
    match err {
        ClientError::Timeout {
            notice_id, last, ..
        } => {
            assert_eq!(notice_id, id);
            assert_eq!(last.recipients[0].state, DeliveryState::InFlight);
        }
        other => panic!("unexpected: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn inbox_list_stream_and_ack() -> anyhow::Result<()> {
    let daemon = start().await;
    let client = Client::connect(&daemon.path).await?;

    let listed = client.list_inbox(2, 2).await?;
    assert_eq!(listed.iter().map(|i| i.cursor).collect::<Vec<_>>(), [3, 4]);

    let mut stream = client.inbox_stream(10);
    let mut cursors = Vec::new();
    let mut error = None;
    while let Some(next) = stream.next().await {
        match next {
            Ok(item) => cursors.push(item.cursor),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(cursors, [11, 12, 13]);
    assert!(
        matches!(error, Some(ClientError::Unavailable { .. })),
        "{error:?}"
    );
    assert_eq!(stream.last_cursor(), 13, "resume point");

    let mut refused = client.inbox_stream(1000);
    let first = refused.next().await;
    assert!(
        matches!(first, Some(Err(ClientError::Conflict { .. }))),
        "{first:?}"
    );
    assert!(refused.next().await.is_none());

    assert!(client.ack(11).await?);
    assert!(!client.ack(11).await?);
    Ok(())
}
