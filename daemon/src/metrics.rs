//! What operators can watch: Prometheus metrics on `/metrics`, and the
//! liveness and readiness probes `/healthz` and `/readyz`, on an optional
//! HTTP listener (`[metrics] listen`, loopback unless explicitly allowed).
//!
//! Counters and the latency histogram are updated where things happen
//! (submit, the delivery driver, the receive path) through the cheap
//! handles in [`Metrics`]. Outbox depth and the age of the oldest pending
//! notice per peer are read from the store at scrape time, so they are the
//! durable truth rather than a count kept beside it; connection state comes
//! from the drivers' health.
//!
//! Labels are only a peer's organisation id, a notice kind and a reason
//! code: never a CPR number, a name, free text or a notice id, so nothing
//! about a citizen can reach a metrics system and label sets stay small.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;

use crate::now_ms;
use crate::peers::PeerSet;
use crate::store::{Store, WebhookState};

/// The Prometheus text format's content type (what `prometheus-client`
/// writes: OpenMetrics text, which Prometheus scrapes natively).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scraper may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest peer reason code used as a label as it is.
const MAX_REASON_CODE: usize = 32;

/// How long a probe may wait for the store before `/readyz` says not ready.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerKind {
    peer: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerState {
    peer: String,
    /// `pending` (waiting for its turn or a retry) or `in_flight` (sent,
    /// awaiting the receipt).
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InboxState {
    inbox: String,
    /// `pending`, `delivered` or `dead`.
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerReason {
    peer: String,
    reason: String,
}

/// Every metric of one daemon. Cloning is cheap (the families share their
/// storage), so each part of the daemon keeps its own handle.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    submitted: Family<PeerKind, Counter>,
    submit_commit: Histogram,
    delivery: Family<PeerLabel, Histogram, fn() -> Histogram>,
    delivered: Family<PeerLabel, Counter>,
    failed: Family<PeerReason, Counter>,
    sends: Family<PeerLabel, Counter>,
    send_failures: Family<PeerLabel, Counter>,
    inbox_accepted: Family<PeerKind, Counter>,
    inbox_duplicates: Family<PeerLabel, Counter>,
    inbox_rejected: Family<PeerReason, Counter>,
    outbox_depth: Family<PeerState, Gauge>,
    webhook_events: Family<InboxState, Gauge>,
    oldest_pending: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    connected: Family<PeerLabel, Gauge>,
    rtt: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    inbox_unacked: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tvaers");
        let submitted = registered(
            &mut registry,
            "notices_submitted",
            "Notices stored by the local API, one per recipient",
            Family::default(),
        );
        // 0.25 ms .. ~4 s: a group commit on a fast disk up to a stalled one.
        let submit_commit = registered(
            &mut registry,
            "submit_commit_seconds",
            "Time from a Submit call arriving to its notice being committed (fsynced)",
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
        );
        // 1 ms .. ~33 s: a healthy peer up to a retry after an outage.
        let delivery = registered(
            &mut registry,
            "delivery_seconds",
            "Time from a notice's submit to its peer's signed receipt arriving (wall clock; retries included)",
            Family::<PeerLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        );
        let delivered = registered(
            &mut registry,
            "notices_delivered",
            "Notices the peer accepted, with its receipt stored",
            Family::default(),
        );
        let failed = registered(
            &mut registry,
            "notices_failed",
            "Notices that will not be delivered: rejected by the peer (its reason code) or EXPIRED",
            Family::default(),
        );
        let sends = registered(
            &mut registry,
            "send_attempts",
            "Notices sent on the wire to a peer, retries included",
            Family::default(),
        );
        let send_failures = registered(
            &mut registry,
            "send_failures",
            "Sends that will be retried: no receipt, a lost connection or a transient rejection",
            Family::default(),
        );
        let inbox_accepted = registered(
            &mut registry,
            "inbox_accepted",
            "Notices from a peer newly stored in the inbox",
            Family::default(),
        );
        let inbox_duplicates = registered(
            &mut registry,
            "inbox_duplicates",
            "Notices from a peer received again and answered with the stored receipt",
            Family::default(),
        );
        let inbox_rejected = registered(
            &mut registry,
            "inbox_rejected",
            "Notices from a peer refused, by reason code",
            Family::default(),
        );
        let outbox_depth = registered(
            &mut registry,
            "outbox_depth",
            "Notices to a peer not yet delivered or failed, by state (pending, in_flight), read from the store",
            Family::default(),
        );
        let webhook_events = registered(
            &mut registry,
            "webhook_events",
            "Webhook events of a team inbox, by state (pending, delivered, dead), read from the store",
            Family::default(),
        );
        let oldest_pending = registered(
            &mut registry,
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest notice to a peer not yet delivered or failed; 0 when there is none",
            Family::default(),
        );
        let connected = registered(
            &mut registry,
            "peer_connected",
            "1 while a QUIC connection to the peer is up",
            Family::default(),
        );
        let rtt = registered(
            &mut registry,
            "peer_rtt_seconds",
            "Smoothed round-trip time of the connection to the peer; 0 while not connected",
            Family::default(),
        );
        let inbox_unacked = registered(
            &mut registry,
            "inbox_unacked",
            "Inbox items not yet acknowledged by the local system, read from the store at scrape time",
            Gauge::default(),
        );
        Metrics {
            registry: Arc::new(registry),
            submitted,
            submit_commit,
            delivery,
            delivered,
            failed,
            sends,
            send_failures,
            inbox_accepted,
            inbox_duplicates,
            inbox_rejected,
            outbox_depth,
            webhook_events,
            oldest_pending,
            connected,
            rtt,
            inbox_unacked,
        }
    }

    /// One notice stored for `peer`.
    pub fn submitted(&self, peer: &str, kind: &str) {
        self.submitted
            .get_or_create(&PeerKind {
                peer: peer.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A submit's time from arrival to commit.
    pub fn submit_committed(&self, took: Duration) {
        self.submit_commit.observe(took.as_secs_f64());
    }

    /// The counters of one peer's delivery, resolved once so the driver's
    /// hot path does not hash labels.
    pub fn peer(&self, peer: &str) -> PeerMetrics {
        let label = PeerLabel {
            peer: peer.to_owned(),
        };
        PeerMetrics {
            peer: peer.to_owned(),
            failed: self.failed.clone(),
            delivered: self.delivered.get_or_create(&label).clone(),
            delivery: self.delivery.get_or_create(&label).clone(),
            sends: self.sends.get_or_create(&label).clone(),
            send_failures: self.send_failures.get_or_create(&label).clone(),
        }
    }

    /// A notice from `peer` newly stored in the inbox.
    pub fn inbox_accepted(&self, peer: &str, kind: &str) {
        self.inbox_accepted
            .get_or_create(&PeerKind {
                peer: peer.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A notice from `peer` received again.
    pub fn inbox_duplicate(&self, peer: &str) {
        self.inbox_duplicates
            .get_or_create(&PeerLabel {
                peer: peer.to_owned(),
            })
            .inc();
    }

    /// A notice from `peer` refused with a receipt carrying `reason`.
    pub fn inbox_rejected(&self, peer: &str, reason: &str) {
        self.inbox_rejected
            .get_or_create(&PeerReason {
                peer: peer.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The whole exposition, after refreshing the gauges read at scrape time.
    async fn render(&self, sources: &Sources) -> Result<String, std::fmt::Error> {
        let now = now_ms();
        let open = match sources.store.outbox_open().await {
            Ok(open) => Some(open),
            Err(error) => {
                // Keep the last values: a scrape still shows the counters.
                tracing::warn!(%error, "metrics: cannot read outbox depth from the store");
                None
            }
        };
        for (peer, driver) in &sources.peers.drivers().await {
            let label = PeerLabel { peer: peer.clone() };
            let health = driver.health();
            self.connected
                .get_or_create(&label)
                .set(i64::from(health.connected));
            self.rtt
                .get_or_create(&label)
                .set(health.rtt.map_or(0.0, |rtt| rtt.as_secs_f64()));
            if let Some(open) = &open {
                let row = open.iter().find(|row| &row.recipient == peer);
                let in_flight = row.map_or(0, |row| row.in_flight);
                let pending = row.map_or(0, |row| row.notices.saturating_sub(row.in_flight));
                for (state, depth) in [("pending", pending), ("in_flight", in_flight)] {
                    self.outbox_depth
                        .get_or_create(&PeerState {
                            peer: peer.clone(),
                            state,
                        })
                        .set(i64::try_from(depth).unwrap_or(i64::MAX));
                }
                let age = row.map_or(0.0, |row| {
                    (now - row.oldest_created_at_ms).max(0) as f64 / 1000.0
                });
                self.oldest_pending.get_or_create(&label).set(age);
            }
        }
        match sources.store.counts().await {
            Ok(counts) => {
                self.inbox_unacked
                    .set(i64::try_from(counts.inbox_unacked).unwrap_or(i64::MAX));
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot read inbox counts from the store")
            }
        }
        match sources.store.webhook_counts().await {
            Ok(counts) => {
                // Every state of an inbox with events, so a drained state
                // reads 0 rather than its last value.
                for inbox in counts.iter().map(|count| &count.inbox) {
                    for state in WebhookState::ALL {
                        let n = counts
                            .iter()
                            .find(|count| &count.inbox == inbox && count.state == state)
                            .map_or(0, |count| i64::try_from(count.count).unwrap_or(i64::MAX));
                        self.webhook_events
                            .get_or_create(&InboxState {
                                inbox: inbox.clone(),
                                state: state.as_str(),
                            })
                            .set(n);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot read webhook counts from the store")
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Registers `metric` under `name` and hands back the caller's handle.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The delivery counters of one peer; see [`Metrics::peer`].
#[derive(Debug, Clone)]
pub struct PeerMetrics {
    peer: String,
    failed: Family<PeerReason, Counter>,
    delivered: Counter,
    delivery: Histogram,
    sends: Counter,
    send_failures: Counter,
}

impl PeerMetrics {
    pub fn sent(&self, notices: usize) {
        self.sends.inc_by(notices as u64);
    }

    pub fn send_failed(&self) {
        self.send_failures.inc();
    }

    /// A receipt accepted the notice; `took` is from its submit.
    pub fn delivered(&self, took: Duration) {
        self.delivered.inc();
        self.delivery.observe(took.as_secs_f64());
    }

    /// A notice failed for good; `reason` is the peer's reason code or
    /// `EXPIRED`.
    pub fn failed(&self, reason: &str) {
        // The code comes from the peer: anything but a short upper-case code
        // could carry text or grow the label set without bound.
        let is_code = !reason.is_empty()
            && reason.len() <= MAX_REASON_CODE
            && reason
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let reason = if is_code { reason } else { "OTHER" };
        self.failed
            .get_or_create(&PeerReason {
                peer: self.peer.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// What the HTTP listener reads at request time.
#[derive(Debug)]
pub struct Sources {
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    pub peers: Arc<PeerSet>,
    /// Set once the daemon has finished start-up (everything listens).
    pub started: Arc<AtomicBool>,
}

/// Binds the metrics listener now (so a taken port fails start-up) and
/// serves it until `shutdown`.
pub fn serve(
    listen: SocketAddr,
    sources: Sources,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)?;
    let sources = Arc::new(sources);
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener: accept failed");
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let sources = sources.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&sources, request).await) }
                });
                // A client that never finishes its request must not hold a
                // task and a socket for ever.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

async fn answer(sources: &Sources, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => match sources.metrics.render(sources).await {
            Ok(text) => Response::builder()
                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_default(),
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
        },
        "/healthz" => plain(StatusCode::OK, "alive\n"),
        "/readyz" => {
            if !sources.started.load(Ordering::Acquire) {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
            }
            let probe = sources.store.probe_write(now_ms());
            match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => plain(StatusCode::OK, "ready\n"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "readiness probe: the store cannot commit a write");
                    plain(StatusCode::SERVICE_UNAVAILABLE, "store not writable\n")
                }
                Err(_) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store not writable: a write did not commit in time\n",
                ),
            }
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodable");
        text
    }

    #[test]
    fn a_peer_reason_code_is_a_label_only_when_it_looks_like_one() {
        let metrics = Metrics::new();
        let peer = metrics.peer("org-b");
        peer.failed("INVALID_FIELD");
        peer.failed("cpr 0707814321 is wrong");
        peer.failed(&"A".repeat(MAX_REASON_CODE + 1));
        let text = exposition(&metrics);
        assert!(
            text.contains(r#"tvaers_notices_failed_total{peer="org-b",reason="INVALID_FIELD"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tvaers_notices_failed_total{peer="org-b",reason="OTHER"} 2"#),
            "{text}"
        );
        assert!(!text.contains("0707814321"), "{text}");
    }
}
