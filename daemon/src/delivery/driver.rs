//! The thin async layer around [`Machine`]: one task per peer that feeds the
//! machine events (new outbox rows, connections, receipts, timer ticks) and
//! performs the actions it returns (dial, send on QUIC streams, persist
//! outcomes, sleep until a deadline).
//!
//! All decisions live in the machine; this file only does I/O. Outcomes are
//! written to the store in one batch per loop turn: the driver drains every
//! event that is ready before it writes, so a burst of receipts costs one
//! transaction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tvaers_proto::v1;

use super::machine::{
    Action, ConnectionState, Event, Machine, MachineConfig, Pending, ReceiptVerdict,
};
use crate::store::{OutboxUpdate, Store};
use crate::transport::endpoint::Endpoint;
use crate::transport::frame;
use crate::{Millis, now_ms};

/// What the operator and the status API can see of one peer's delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerHealth {
    pub connected: bool,
    pub queued: usize,
    pub in_flight: usize,
    /// The last reason the peer could not be reached, while it cannot.
    pub last_error: Option<String>,
}

/// Where one peer is and how to check it is the right one.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    pub org_id: String,
    pub address: SocketAddr,
}

/// Settings shared by all peer drivers.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    pub machine: MachineConfig,
    pub send_timeout: Duration,
    pub max_frame_bytes: u32,
}

/// Messages into a driver task.
#[derive(Debug)]
enum Input {
    Enqueue(Pending, Arc<Vec<u8>>),
    Connected(u64, quinn::Connection),
    ConnectFailed(String),
    Disconnected(u64, String),
    Replied(i64, Result<v1::Receipt, String>),
}

/// A handle to one peer's driver task.
#[derive(Debug, Clone)]
pub struct PeerDriver {
    inputs: mpsc::UnboundedSender<Input>,
    health: Arc<Mutex<PeerHealth>>,
}

impl PeerDriver {
    /// Starts the driver task for one peer. It stops at `shutdown`, after
    /// writing the outcomes it already has.
    pub fn spawn(
        target: PeerTarget,
        settings: DriverSettings,
        endpoint: Endpoint,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> (PeerDriver, tokio::task::JoinHandle<()>) {
        let (inputs, queue) = mpsc::unbounded_channel();
        let health = Arc::new(Mutex::new(PeerHealth::default()));
        let task = Task {
            machine: Machine::new(settings.machine.clone()),
            target,
            settings,
            endpoint,
            store,
            inputs: inputs.clone(),
            health: health.clone(),
            envelopes: HashMap::new(),
            receipts: HashMap::new(),
            connection: None,
            generation: 0,
            wake_at: None,
            updates: Vec::new(),
        };
        let handle = tokio::spawn(task.run(queue, shutdown));
        (PeerDriver { inputs, health }, handle)
    }

    /// Hands a stored outbox row to the driver.
    pub fn enqueue(&self, pending: Pending, envelope: Vec<u8>) {
        let _ = self
            .inputs
            .send(Input::Enqueue(pending, Arc::new(envelope)));
    }

    pub fn health(&self) -> PeerHealth {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

struct Task {
    machine: Machine,
    target: PeerTarget,
    settings: DriverSettings,
    endpoint: Endpoint,
    store: Arc<dyn Store>,
    inputs: mpsc::UnboundedSender<Input>,
    health: Arc<Mutex<PeerHealth>>,
    envelopes: HashMap<i64, Arc<Vec<u8>>>,
    receipts: HashMap<i64, v1::Receipt>,
    connection: Option<(u64, quinn::Connection)>,
    /// Tells a stale connection's close event from the current one's.
    generation: u64,
    wake_at: Option<Millis>,
    updates: Vec<OutboxUpdate>,
}

impl Task {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Input>, shutdown: CancellationToken) {
        let mut ready = Vec::new();
        loop {
            let sleep = match self.wake_at {
                Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                received = queue.recv_many(&mut ready, 1024) => {
                    if received == 0 { break; }
                    for input in ready.drain(..) {
                        self.on_input(input);
                    }
                }
                () = tokio::time::sleep(sleep) => {
                    self.wake_at = None;
                    self.feed(Event::Tick);
                }
                () = shutdown.cancelled() => break,
            }
            self.flush().await;
            self.publish_health();
        }
        self.flush().await;
        if let Some((_, connection)) = self.connection.take() {
            connection.close(quinn::VarInt::from_u32(0), b"shutting down");
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Enqueue(pending, envelope) => {
                self.envelopes.insert(pending.seq, envelope);
                self.feed(Event::Enqueued(pending));
            }
            Input::Connected(generation, connection) => {
                self.watch_close(generation, connection.clone());
                self.connection = Some((generation, connection));
                self.feed(Event::Connected);
            }
            Input::ConnectFailed(error) => {
                tracing::warn!(peer = %self.target.org_id, %error, "cannot reach peer");
                self.feed(Event::ConnectFailed { error });
            }
            Input::Disconnected(generation, error) => {
                if self
                    .connection
                    .as_ref()
                    .is_some_and(|(g, _)| *g == generation)
                {
                    self.connection = None;
                    tracing::info!(peer = %self.target.org_id, %error, "connection to peer lost");
                    self.feed(Event::Disconnected { error });
                }
            }
            Input::Replied(seq, Ok(receipt)) => {
                let verdict = verdict_of(&receipt);
                self.receipts.insert(seq, receipt);
                self.feed(Event::Receipt { seq, verdict });
            }
            Input::Replied(seq, Err(error)) => self.feed(Event::SendFailed { seq, error }),
        }
    }

    fn feed(&mut self, event: Event) {
        let actions = self.machine.handle(now_ms(), event);
        for action in actions {
            self.perform(action);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Connect => self.connect(),
            Action::Send(seqs) => {
                for seq in seqs {
                    self.send(seq);
                }
            }
            Action::MarkInFlight { seq, attempts } => {
                self.updates.push(OutboxUpdate::InFlight { seq, attempts });
            }
            Action::Delivered { seq } => {
                self.envelopes.remove(&seq);
                let receipt = self.receipts.remove(&seq).unwrap_or_default();
                self.updates.push(OutboxUpdate::Delivered {
                    seq,
                    receipt: receipt.encode_to_vec(),
                    at_ms: now_ms(),
                });
            }
            Action::Failed {
                seq,
                reason,
                rejected_by_peer,
            } => {
                self.envelopes.remove(&seq);
                let receipt = self.receipts.remove(&seq).filter(|_| rejected_by_peer);
                tracing::warn!(peer = %self.target.org_id, seq, %reason, "notice failed permanently");
                self.updates.push(OutboxUpdate::Failed {
                    seq,
                    reason,
                    receipt: receipt.map(|r| r.encode_to_vec()),
                    at_ms: now_ms(),
                });
            }
            Action::Retry {
                seq,
                next_attempt_at_ms,
                error,
            } => {
                self.receipts.remove(&seq);
                self.updates.push(OutboxUpdate::Retry {
                    seq,
                    next_attempt_at_ms,
                    error,
                });
            }
            Action::WakeAt(at) => {
                self.wake_at = Some(self.wake_at.map_or(at, |current| current.min(at)));
            }
        }
    }

    fn connect(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        let endpoint = self.endpoint.clone();
        let target = self.target.clone();
        let inputs = self.inputs.clone();
        // A QUIC dial to a dead address only gives up at the idle timeout;
        // the send timeout bounds it so the status says so sooner.
        let timeout = self.settings.send_timeout;
        tokio::spawn(async move {
            let dial = endpoint.connect(target.address, &target.org_id);
            let input = match tokio::time::timeout(timeout, dial).await {
                Ok(Ok(connection)) => Input::Connected(generation, connection),
                Ok(Err(error)) => Input::ConnectFailed(error.to_string()),
                Err(_) => Input::ConnectFailed(format!(
                    "cannot reach {}: no answer within {timeout:?}",
                    target.address
                )),
            };
            let _ = inputs.send(input);
        });
    }

    fn watch_close(&self, generation: u64, connection: quinn::Connection) {
        let inputs = self.inputs.clone();
        let endpoint = self.endpoint.clone();
        let address = self.target.address;
        tokio::spawn(async move {
            let error = connection.closed().await;
            let explained = endpoint.explain(address, &error).to_string();
            let _ = inputs.send(Input::Disconnected(generation, explained));
        });
    }

    fn send(&mut self, seq: i64) {
        let (Some((_, connection)), Some(envelope)) = (&self.connection, self.envelopes.get(&seq))
        else {
            let _ = self.inputs.send(Input::Replied(
                seq,
                Err("not connected when the send was due".into()),
            ));
            return;
        };
        let connection = connection.clone();
        let envelope = envelope.clone();
        let endpoint = self.endpoint.clone();
        let address = self.target.address;
        let timeout = self.settings.send_timeout;
        let limit = self.settings.max_frame_bytes;
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(timeout, exchange(&connection, &envelope, limit))
                .await
                .unwrap_or_else(|_| Err(Exchange::Timeout(timeout)));
            let result = result.map_err(|error| match error {
                Exchange::Connection(e) => endpoint.explain(address, &e).to_string(),
                other => other.to_string(),
            });
            let _ = inputs.send(Input::Replied(seq, result));
        });
    }

    async fn flush(&mut self) {
        if self.updates.is_empty() {
            return;
        }
        let updates = std::mem::take(&mut self.updates);
        if let Err(error) = self.store.update_outbox(updates.clone()).await {
            // The machine already moved on; keep the rows for the next turn
            // so a passing store error loses no outcome.
            tracing::error!(peer = %self.target.org_id, %error, "could not record delivery outcomes; will retry");
            self.updates.extend(updates);
            self.wake_at = Some(now_ms() + 1_000);
        }
    }

    fn publish_health(&self) {
        let connection = self.machine.connection();
        let health = PeerHealth {
            connected: matches!(connection, ConnectionState::Connected),
            queued: self.machine.queued(),
            in_flight: self.machine.in_flight(),
            last_error: self.machine.last_connect_error().map(str::to_owned),
        };
        *self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = health;
    }
}

#[derive(Debug, thiserror::Error)]
enum Exchange {
    #[error("{0}")]
    Connection(quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("bad reply: {0}")]
    Reply(#[from] frame::FrameError),
    #[error("the reply carried no receipt")]
    NoReceipt,
    #[error("no receipt within {0:?}")]
    Timeout(Duration),
}

/// One notice on one stream: the envelope out, the receipt back.
async fn exchange(
    connection: &quinn::Connection,
    envelope: &[u8],
    limit: u32,
) -> Result<v1::Receipt, Exchange> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(Exchange::Connection)?;
    let request = request_frame(envelope);
    send.write_all(&request).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(e) => Exchange::Connection(e),
        other => Exchange::Stream(other.to_string()),
    })?;
    let _ = send.finish();
    let response = match frame::read_message::<v1::PeerResponse, _>(&mut recv, limit).await {
        Ok(response) => response,
        Err(frame::FrameError::Io(io)) => {
            // quinn reports a lost connection as an I/O error on the stream.
            return Err(match connection.close_reason() {
                Some(reason) => Exchange::Connection(reason),
                None => Exchange::Stream(io.to_string()),
            });
        }
        Err(other) => return Err(other.into()),
    };
    match response.body {
        Some(v1::peer_response::Body::Receipt(receipt)) => Ok(receipt),
        None => Err(Exchange::NoReceipt),
    }
}

/// Frames a stored envelope as a `PeerRequest` without decoding it: field 1
/// of `PeerRequest` is the envelope, so its bytes go in as they are.
fn request_frame(envelope: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let body_len = key_len(1) + encoded_len_varint(envelope.len() as u64) + envelope.len();
    let mut framed = Vec::with_capacity(4 + body_len);
    framed.extend_from_slice(&(body_len as u32).to_be_bytes());
    encode_key(1, WireType::LengthDelimited, &mut framed);
    encode_varint(envelope.len() as u64, &mut framed);
    framed.extend_from_slice(envelope);
    framed
}

fn verdict_of(receipt: &v1::Receipt) -> ReceiptVerdict {
    match v1::ReceiptOutcome::try_from(receipt.outcome) {
        Ok(v1::ReceiptOutcome::Accepted) => ReceiptVerdict::Accepted,
        Ok(v1::ReceiptOutcome::RejectedPermanent) => ReceiptVerdict::RejectedPermanent {
            code: receipt.reason_code.clone(),
            text: receipt.reason_text.clone(),
        },
        _ => ReceiptVerdict::RejectedTransient {
            code: receipt.reason_code.clone(),
            text: receipt.reason_text.clone(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_is_a_peer_request_holding_the_envelope() {
        let envelope = v1::Envelope {
            notice_id: "abc".into(),
            sender: "a".into(),
            ..Default::default()
        };
        let framed = request_frame(&envelope.encode_to_vec());
        let len = u32::from_be_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(len, framed.len() - 4);
        let decoded = v1::PeerRequest::decode(&framed[4..]).unwrap();
        assert_eq!(decoded.body, Some(v1::peer_request::Body::Notice(envelope)));
    }
}
