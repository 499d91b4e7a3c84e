//! Receiving notices from peers: one incoming QUIC connection, one stream
//! per notice.
//!
//! For each stream: read one frame (size checked before allocation), decode,
//! check that the envelope's sender is the organisation the certificate
//! proved, that it is addressed to us, valid and not expired; then store it
//! in the inbox (unique on sender and notice id, so a resent notice is stored
//! once) and answer with a receipt. A duplicate is answered with the receipt
//! stored the first time. A bad stream gets a rejection receipt and never
//! harms the connection or the next notice.

use std::sync::Arc;

use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tvaers_proto::v1;

use crate::audit::{AuditAction, AuditEvent, CitizenHasher, CitizenRef};
use crate::batch::GroupCommit;
use crate::care_team::Learned;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::peers::PeerSet;
use crate::routing::{NoticeFacts, RoutingTable, unit_codes};
use crate::signing::{OpenError, SigningKey};
use crate::store::{AcceptOutcome, HandledReceipt, HandledStatus, IncomingNotice, Store};
use crate::transport::endpoint::Endpoint;
use crate::transport::frame::{self, FrameError};

/// Stable reason codes of rejection receipts.
pub mod reason {
    pub const SENDER_MISMATCH: &str = "SENDER_MISMATCH";
    pub const WRONG_RECIPIENT: &str = "WRONG_RECIPIENT";
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    pub const TOO_LARGE: &str = "TOO_LARGE";
    pub const MALFORMED: &str = "MALFORMED";
    pub const EXPIRED: &str = "EXPIRED";
    pub const UNKNOWN_PEER: &str = "UNKNOWN_PEER";
    pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
    pub const KIND_NOT_ALLOWED: &str = "KIND_NOT_ALLOWED";
    pub const CLOCK_SKEW: &str = "CLOCK_SKEW";
    /// A handled receipt about a notice we did not send to that peer.
    pub const UNKNOWN_NOTICE: &str = "UNKNOWN_NOTICE";
    pub const SIGNATURE_MISSING: &str = "SIGNATURE_MISSING";
    pub const UNKNOWN_SIGNING_KEY: &str = "UNKNOWN_SIGNING_KEY";
    pub const BAD_SIGNATURE: &str = "BAD_SIGNATURE";
}

/// Everything a receiving stream needs. Shared by all connections.
#[derive(Debug)]
pub struct Receiver {
    pub org_id: String,
    /// Who may send which kinds.
    pub peers: Arc<PeerSet>,
    pub max_clock_skew_ms: i64,
    /// Signs every receipt.
    pub signing_key: Arc<SigningKey>,
    pub max_frame_bytes: u32,
    pub inbox: GroupCommit<IncomingNotice, AcceptOutcome>,
    /// Which team inboxes an accepted notice goes to.
    pub routing: RoutingTable,
    /// Team inboxes with a webhook: placing an item there enqueues an
    /// event (see [`crate::webhook`]).
    pub webhook_inboxes: Vec<String>,
    /// Where rejections are recorded (see [`crate::audit`]).
    pub store: Arc<dyn Store>,
    pub citizen_refs: CitizenHasher,
    /// The highest inbox cursor stored, for waking inbox streams.
    pub newest_cursor: watch::Sender<u64>,
    pub metrics: Metrics,
}

impl Receiver {
    /// Accepts connections until `shutdown`; each connection and stream runs
    /// on `tasks` so shutdown can wait for stores in progress.
    pub async fn serve(
        self: Arc<Self>,
        endpoint: Endpoint,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => incoming,
                () = shutdown.cancelled() => None,
            };
            let Some(incoming) = incoming else { break };
            let receiver = self.clone();
            let endpoint = endpoint.clone();
            let conn_tasks = tasks.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                receiver
                    .serve_connection(endpoint, incoming, conn_tasks, shutdown)
                    .await
            });
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        endpoint: Endpoint,
        incoming: quinn::Incoming,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let remote = incoming.remote_address();
        let connection = match incoming.await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%remote, %error, "incoming connection failed during the handshake");
                return;
            }
        };
        // Checked again here, not only in the handshake verifier: the
        // pinned set may have changed, and this is the identity we use.
        let (peer, fingerprint) = match endpoint.authenticate(&connection) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%remote, %error, reason = reason::UNKNOWN_PEER, "refused a connection");
                connection.close(quinn::VarInt::from_u32(1), reason::UNKNOWN_PEER.as_bytes());
                return;
            }
        };
        tracing::info!(%peer, %remote, %fingerprint, "peer connected");
        loop {
            let stream = tokio::select! {
                stream = connection.accept_bi() => stream,
                () = shutdown.cancelled() => break,
            };
            match stream {
                Ok((send, recv)) => {
                    let receiver = self.clone();
                    let peer = peer.clone();
                    tasks.spawn(async move { receiver.serve_stream(&peer, send, recv).await });
                }
                Err(error) => {
                    tracing::info!(%peer, %error, "peer connection closed");
                    break;
                }
            }
        }
    }

    async fn serve_stream(
        &self,
        peer: &str,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let receipt = match frame::read_message::<v1::PeerRequest, _>(
            &mut recv,
            self.max_frame_bytes,
        )
        .await
        {
            Ok(request) => self.handle_request(peer, request).await,
            Err(FrameError::TooLarge { announced, limit }) => {
                tracing::warn!(%peer, announced, limit, reason = reason::TOO_LARGE, "rejected an oversized frame");
                self.metrics.inbox_rejected(peer, reason::TOO_LARGE);
                let _ = recv.stop(quinn::VarInt::from_u32(2));
                self.signing_key.sign_receipt(&rejection(
                    &self.org_id,
                    "",
                    reason::TOO_LARGE,
                    format!("frame of {announced} bytes exceeds the limit of {limit} bytes"),
                ))
            }
            Err(FrameError::Malformed(error)) => {
                tracing::warn!(%peer, %error, reason = reason::MALFORMED, "rejected a malformed frame");
                self.metrics.inbox_rejected(peer, reason::MALFORMED);
                self.signing_key.sign_receipt(&rejection(
                    &self.org_id,
                    "",
                    reason::MALFORMED,
                    format!("frame is not a valid PeerRequest: {error}"),
                ))
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "stream ended before a request arrived");
                return;
            }
        };
        let response = v1::PeerResponse {
            body: Some(v1::peer_response::Body::SignedReceipt(receipt)),
        };
        if let Err(error) = frame::write_message(&mut send, &response).await {
            tracing::debug!(%peer, %error, "could not send the receipt; the sender will retry");
            return;
        }
        let _ = send.finish();
        // Let the receipt leave before the stream's state is dropped.
        let _ = send.stopped().await;
    }

    /// The team inboxes an accepted notice goes to.
    fn routes(&self, peer: &str, kind: &str, notice: Option<&v1::Notice>) -> Vec<String> {
        let units = notice.map(unit_codes).unwrap_or_default();
        self.routing.route(&NoticeFacts {
            kind,
            sender_org: peer,
            sender_sector: self.peers.sector(peer),
            units: &units,
        })
    }

    /// [`Receiver::refuse`] for a request refused before its envelope was
    /// opened: no notice id, kind or citizen to name.
    async fn refuse_unopened(
        &self,
        peer: &str,
        code: &'static str,
        text: String,
    ) -> v1::SignedReceipt {
        self.refuse(peer, "", "none", None, code, text).await
    }

    /// Logs, counts, audits and signs a permanent rejection.
    async fn refuse(
        &self,
        peer: &str,
        notice_id: &str,
        kind: &str,
        citizen: Option<CitizenRef>,
        code: &'static str,
        text: String,
    ) -> v1::SignedReceipt {
        tracing::warn!(%peer, %notice_id, kind, reason = code, detail = %text, "rejected a notice");
        self.metrics.inbox_rejected(peer, code);
        let mut event = AuditEvent::new(now_ms(), format!("peer {peer}"), AuditAction::Rejected)
            .peer(peer)
            .citizen(citizen)
            .detail(format!("{code}: {kind}"));
        if !notice_id.is_empty() {
            event = event.notice(notice_id);
        }
        // The rejection stands whether or not it could be recorded: a store
        // that cannot write would fail the accept path too.
        if let Err(error) = self.store.record_audit(vec![event]).await {
            tracing::error!(%peer, %notice_id, %error, "could not record a rejection in the audit log");
        }
        self.signing_key
            .sign_receipt(&rejection(&self.org_id, notice_id, code, text))
    }

    async fn handle_request(&self, peer: &str, request: v1::PeerRequest) -> v1::SignedReceipt {
        let signed = match request.body {
            Some(v1::peer_request::Body::SignedNotice(signed)) => signed,
            Some(v1::peer_request::Body::Notice(_)) => {
                return self
                    .refuse_unopened(
                        peer,
                        reason::SIGNATURE_MISSING,
                        "the notice is not signed: every envelope must be signed by its sender"
                            .into(),
                    )
                    .await;
            }
            None => {
                return self
                    .refuse_unopened(peer, reason::MALFORMED, "request carries no notice".into())
                    .await;
            }
        };
        // Nothing is decoded, let alone stored, before the signature holds.
        let Some(key) = self.peers.signing_key(peer) else {
            return self.refuse_unopened(peer, reason::UNKNOWN_SIGNING_KEY,
                format!(
                    "{} has no signing key pinned for {peer}: its operator must add {peer}'s card (`tvaers peer add`)",
                    self.org_id
                ),
            ).await;
        };
        let envelope = match key.open_envelope(&signed) {
            Ok(envelope) => envelope,
            Err(OpenError::BadSignature) => {
                return self
                    .refuse_unopened(
                        peer,
                        reason::BAD_SIGNATURE,
                        format!(
                            "the envelope's signature does not match {peer}'s pinned key {key}"
                        ),
                    )
                    .await;
            }
            Err(OpenError::Malformed) => {
                return self
                    .refuse_unopened(
                        peer,
                        reason::MALFORMED,
                        "the signed bytes are not an Envelope".into(),
                    )
                    .await;
            }
        };
        let notice_id = envelope.notice_id.clone();
        let kind = envelope
            .notice
            .as_ref()
            .map_or("none", v1::Notice::kind_name);
        let citizen = envelope
            .notice
            .as_ref()
            .map(|notice| self.citizen_refs.reference(&notice.citizen_cpr));
        if envelope.sender != peer {
            return self
                .refuse(
                    peer,
                    &notice_id,
                    kind,
                    citizen.clone(),
                    reason::SENDER_MISMATCH,
                    format!(
                        "envelope names sender {:?} but the connection is authenticated as {peer}",
                        envelope.sender
                    ),
                )
                .await;
        }
        if envelope.recipient != self.org_id {
            return self
                .refuse(
                    peer,
                    &notice_id,
                    kind,
                    citizen.clone(),
                    reason::WRONG_RECIPIENT,
                    format!(
                        "envelope is addressed to {:?}, this is {}",
                        envelope.recipient, self.org_id
                    ),
                )
                .await;
        }
        if let Err(error) = tvaers_proto::validate::envelope(&envelope) {
            return self
                .refuse(
                    peer,
                    &notice_id,
                    kind,
                    citizen.clone(),
                    reason::INVALID_FIELD,
                    error.to_string(),
                )
                .await;
        }
        let handled = match envelope.notice.as_ref().and_then(|n| n.payload.as_ref()) {
            Some(v1::notice::Payload::Handled(handled)) => Some(handled),
            _ => None,
        };
        if let Some(handled) = handled {
            // Any peer may tell us who took a notice we sent it, and only that.
            match self.store.delivery(&handled.notice_id).await {
                Ok(Some(delivery)) if delivery.recipients.iter().any(|r| r.recipient == peer) => {}
                Ok(_) => {
                    return self
                        .refuse(
                            peer,
                            &notice_id,
                            kind,
                            citizen.clone(),
                            reason::UNKNOWN_NOTICE,
                            format!(
                                "{} sent no notice {} to {peer}: a handled receipt must be about one",
                                self.org_id, handled.notice_id
                            ),
                        )
                        .await;
                }
                Err(error) => {
                    tracing::error!(%peer, %notice_id, %error, "could not look up the notice a handled receipt is about");
                    return self.signing_key.sign_receipt(&v1::Receipt {
                        notice_id,
                        outcome: v1::ReceiptOutcome::RejectedTransient as i32,
                        reason_code: reason::STORE_UNAVAILABLE.into(),
                        reason_text: "the receiver could not check the notice; retry later".into(),
                        receiver: self.org_id.clone(),
                        received_at_ms: now_ms(),
                    });
                }
            }
        } else if !self.peers.may_send(peer, kind) {
            return self.refuse(peer, &notice_id, kind, citizen.clone(),
                reason::KIND_NOT_ALLOWED,
                format!(
                    "{peer} may not send {kind} notices to {}: its operator can allow it with `may_send` in the [[peers]] entry",
                    self.org_id
                ),
            ).await;
        }
        let now = now_ms();
        if envelope.created_at_ms > now + self.max_clock_skew_ms {
            return self.refuse(peer, &notice_id, kind, citizen.clone(),
                reason::CLOCK_SKEW,
                format!(
                    "the notice was created {} s in the future, more than the allowed {} s: check the sender's clock (NTP)",
                    (envelope.created_at_ms - now) / 1000,
                    self.max_clock_skew_ms / 1000
                ),
            ).await;
        }
        if envelope.expires_at_ms <= now {
            return self
                .refuse(
                    peer,
                    &notice_id,
                    kind,
                    citizen.clone(),
                    reason::EXPIRED,
                    "the notice's time to live has passed".into(),
                )
                .await;
        }

        let accepted = v1::Receipt {
            notice_id: notice_id.clone(),
            outcome: v1::ReceiptOutcome::Accepted as i32,
            receiver: self.org_id.clone(),
            received_at_ms: now,
            ..Default::default()
        };
        let accepted = self.signing_key.sign_receipt(&accepted);
        // A business receipt is for the delivery status, not for staff.
        let inboxes = if handled.is_some() {
            Vec::new()
        } else {
            self.routes(peer, kind, envelope.notice.as_ref())
        };
        let webhooks = inboxes
            .iter()
            .filter(|inbox| self.webhook_inboxes.contains(*inbox))
            .cloned()
            .collect();
        let care_team = match (&envelope.notice, &citizen) {
            (Some(notice), Some(citizen)) => Learned {
                sender: peer,
                notice_id: &notice_id,
                notice,
                citizen,
                created_at_ms: envelope.created_at_ms,
                stored_at_ms: now,
            }
            .received(),
            _ => None,
        };
        let incoming = IncomingNotice {
            care_team,
            webhooks,
            sender: peer.to_owned(),
            notice_id: notice_id.clone(),
            // As received: the signed bytes and the signature, kept as
            // evidence of what the sender sent.
            envelope: signed.encode_to_vec(),
            received_at_ms: now,
            receipt: accepted.encode_to_vec(),
            citizen,
            inboxes,
            kind: kind.to_owned(),
            handled: handled.map(|handled| HandledReceipt {
                notice_id: handled.notice_id.clone(),
                from_org: peer.to_owned(),
                inbox: handled.inbox.clone(),
                status: if handled.status == v1::HandledStatus::Overdue as i32 {
                    HandledStatus::Overdue
                } else {
                    HandledStatus::Handled
                },
                handled: handled.encode_to_vec(),
                received_at_ms: now,
            }),
        };
        match self.inbox.run(incoming).await {
            Ok(outcome) => {
                if outcome.newly_stored {
                    self.metrics.inbox_accepted(peer, kind);
                    tracing::info!(%peer, %notice_id, kind, cursor = outcome.cursor, "accepted a notice");
                    self.newest_cursor
                        .send_modify(|newest| *newest = (*newest).max(outcome.cursor));
                    accepted
                } else {
                    self.metrics.inbox_duplicate(peer);
                    tracing::info!(%peer, %notice_id, kind, "notice received again; answered with the stored receipt");
                    v1::SignedReceipt::decode(outcome.receipt.as_slice()).unwrap_or(accepted)
                }
            }
            Err(error) => {
                tracing::error!(%peer, %notice_id, %error, "could not store an incoming notice");
                self.metrics.inbox_rejected(peer, reason::STORE_UNAVAILABLE);
                self.signing_key.sign_receipt(&v1::Receipt {
                    notice_id,
                    outcome: v1::ReceiptOutcome::RejectedTransient as i32,
                    reason_code: reason::STORE_UNAVAILABLE.into(),
                    reason_text: "the receiver could not store the notice; retry later".into(),
                    receiver: self.org_id.clone(),
                    received_at_ms: now,
                })
            }
        }
    }
}

fn rejection(receiver: &str, notice_id: &str, code: &str, text: String) -> v1::Receipt {
    v1::Receipt {
        notice_id: notice_id.to_owned(),
        outcome: v1::ReceiptOutcome::RejectedPermanent as i32,
        reason_code: code.to_owned(),
        reason_text: text,
        receiver: receiver.to_owned(),
        received_at_ms: now_ms(),
    }
}
