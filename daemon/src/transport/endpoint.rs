//! The QUIC endpoint of one daemon: it listens for peers and dials them on
//! the same UDP socket, and it tells which organisation is on a connection.
//!
//! Who a peer is comes from one place: the fingerprint of the certificate it
//! proved it holds, looked up in the [`TrustStore`] again on every accepted
//! connection (not only in the handshake verifier), so a change to the
//! pinned set applies to the next connection whatever TLS remembered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::tls::{self, Fingerprint, Identity, TlsError, TrustStore};

/// Concurrent streams a peer may open on one connection. quinn reserves
/// state for each allowed stream as soon as a connection is accepted, before
/// the peer is known, so this stays modest.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Application close code for a connection dropped because its peer was
/// revoked or removed.
pub const PEER_REVOKED: u32 = 0x52;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error(
        "the peer at {addr} refused our TLS certificate {ours}: ask its operator to pin this fingerprint"
    )]
    RefusedByPeer { addr: SocketAddr, ours: Fingerprint },
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("certificate {0} is not pinned for any peer")]
    NotPinned(Fingerprint),
}

/// Settings the endpoint needs from the configuration.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub listen: SocketAddr,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    quinn: quinn::Endpoint,
    identity: Arc<Identity>,
    trust: TrustStore,
    transport: Arc<quinn::TransportConfig>,
    /// Live connections by organisation, both directions, so revoking a peer
    /// can drop them at once.
    live: Arc<Mutex<Vec<(String, quinn::Connection)>>>,
}

impl Endpoint {
    pub fn bind(
        settings: &EndpointSettings,
        identity: Identity,
        trust: TrustStore,
    ) -> Result<Endpoint, TransportError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into())
            .max_concurrent_uni_streams(0u32.into())
            .keep_alive_interval(Some(settings.idle_timeout / 3))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(settings.idle_timeout)
                    .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))),
            ));
        let transport = Arc::new(transport);

        let server_tls = tls::server_config(&identity, trust.clone())?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| TlsError::Setup(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());

        let quinn = quinn::Endpoint::server(server, settings.listen).map_err(|source| {
            TransportError::Bind {
                addr: settings.listen,
                source,
            }
        })?;
        Ok(Endpoint {
            quinn,
            identity: Arc::new(identity),
            trust,
            transport,
            live: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quinn.local_addr()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// Dials a peer whose certificate must be pinned for `peer_org`.
    ///
    /// A finished handshake is not acceptance: with TLS 1.3 the server checks
    /// our certificate after the client considers the handshake done, so a
    /// refusal shows up at the first stream operation. [`Self::explain`]
    /// turns that into [`TransportError::RefusedByPeer`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer_org: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let client_tls = tls::client_config(&self.identity, self.trust.clone(), peer_org)?;
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| TlsError::Setup(rustls::Error::General(e.to_string())))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(self.transport.clone());
        let connecting = self
            .quinn
            .connect_with(client, addr, tls::SERVER_NAME)
            .map_err(|e| TransportError::Connect {
                addr,
                message: e.to_string(),
            })?;
        let connection = connecting.await.map_err(|e| self.explain(addr, &e))?;
        self.register(peer_org, &connection);
        Ok(connection)
    }

    fn register(&self, org_id: &str, connection: &quinn::Connection) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(_, c)| c.close_reason().is_none());
        live.push((org_id.to_owned(), connection.clone()));
    }

    /// Closes every live connection with `org_id` (both directions) and
    /// returns how many there were. New ones are kept out by the trust store.
    pub fn close_peer(&self, org_id: &str, reason: &str) -> usize {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        live.retain(|(org, connection)| {
            if org != org_id {
                return connection.close_reason().is_none();
            }
            connection.close(quinn::VarInt::from_u32(PEER_REVOKED), reason.as_bytes());
            closed += 1;
            false
        });
        closed
    }

    /// Describes a connection error for an operator: a TLS alert from the
    /// peer means it does not trust our certificate, so name our fingerprint.
    pub fn explain(&self, addr: SocketAddr, error: &quinn::ConnectionError) -> TransportError {
        let crypto_alert = |code: quinn::TransportErrorCode| {
            let raw = u64::from(code);
            (0x100..0x200).contains(&raw)
        };
        match error {
            quinn::ConnectionError::ConnectionClosed(close) if crypto_alert(close.error_code) => {
                TransportError::RefusedByPeer {
                    addr,
                    ours: self.fingerprint(),
                }
            }
            quinn::ConnectionError::TransportError(e) if crypto_alert(e.code) => {
                TransportError::Connect {
                    addr,
                    message: format!("TLS handshake failed: {e}"),
                }
            }
            other => TransportError::Connect {
                addr,
                message: other.to_string(),
            },
        }
    }

    /// The next incoming connection attempt; `None` once the endpoint closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.quinn.accept().await
    }

    /// The organisation on an established incoming connection, from its
    /// certificate's fingerprint, checked against the current pinned set.
    pub fn authenticate(
        &self,
        connection: &quinn::Connection,
    ) -> Result<(String, Fingerprint), TransportError> {
        let certificates = connection
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(TransportError::NoCertificate)?;
        let first = certificates.first().ok_or(TransportError::NoCertificate)?;
        let fingerprint = Fingerprint::of(first);
        match self.trust.organisation(&fingerprint) {
            Some(org) => {
                self.register(&org, connection);
                Ok((org, fingerprint))
            }
            None => Err(TransportError::NotPinned(fingerprint)),
        }
    }

    /// Refuses new connections, closes live ones and waits until the peers
    /// were told.
    pub async fn shutdown(&self) {
        self.quinn
            .close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.quinn.wait_idle()).await;
    }
}
