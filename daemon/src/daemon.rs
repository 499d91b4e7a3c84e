//! Wiring one daemon together, and taking it apart again gracefully.
//!
//! Start-up order: store, keys, QUIC endpoint, writers (group commits),
//! one delivery driver per peer (reloaded from the outbox), the receive
//! loop, then the local API. Shutdown runs the other way: stop taking new
//! work (API, incoming streams), let the writes in progress commit, let the
//! drivers record the outcomes they hold, then close the store. Nothing
//! acknowledged is lost: a submit is answered only after its commit, and a
//! notice still in flight at shutdown is sent again after the restart
//! (the receiver answers a duplicate with its stored receipt).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tvaers_proto::cpr::Cpr;
use tvaers_proto::v1;

use crate::api::{self, ApiState, LocalApiService};
use crate::batch::GroupCommit;
use crate::config::{Config, StoreConfig};
use crate::delivery::CitizenKeys;
use crate::delivery::driver::{DriverSettings, PeerDriver, PeerTarget};
use crate::delivery::machine::{MachineConfig, Pending};
use crate::metrics::{self, Metrics};
use crate::receive::Receiver;
use crate::store::postgres::{PostgresStore, describe_url};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::transport::endpoint::{Endpoint, EndpointSettings, TransportError};
use crate::transport::tls::{Identity, Pin, TlsError, TrustStore};

/// Requests that go into one transaction at most.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve the local API on {place}: {source}")]
    Api {
        place: String,
        #[source]
        source: std::io::Error,
    },
}

/// Addresses a running daemon actually bound (useful when port 0 was asked).
#[derive(Debug, Clone)]
pub struct Bound {
    pub peer_addr: SocketAddr,
}

/// Runs the daemon until `shutdown` is cancelled, then shuts down
/// gracefully. `ready` is sent the bound addresses once everything listens.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), DaemonError> {
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Sqlite { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| DaemonError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            Arc::new(SqliteStore::open(path).await?)
        }
        StoreConfig::Postgres {
            url,
            max_connections,
        } => {
            // The URL may carry a password: log only where it points.
            tracing::info!(
                store = %describe_url(url),
                max_connections,
                "opening the PostgreSQL store"
            );
            Arc::new(PostgresStore::open(url, *max_connections).await?)
        }
    };
    let identity = Identity::load(&config.transport.certificate, &config.transport.private_key)?;
    let trust = TrustStore::new(trust_pins(&config));
    let endpoint = Endpoint::bind(
        &EndpointSettings {
            listen: config.transport.listen,
            idle_timeout: Duration::from_millis(config.transport.idle_timeout_ms),
        },
        identity,
        trust,
    )?;
    let peer_addr = endpoint
        .local_addr()
        .map_err(|source| TransportError::Bind {
            addr: config.transport.listen,
            source,
        })?;

    let (submits, submit_writer) = {
        let store = store.clone();
        GroupCommit::spawn(MAX_BATCH, move |batch| {
            let store = store.clone();
            async move { store.submit(batch).await }
        })
    };
    let (accepts, accept_writer) = {
        let store = store.clone();
        GroupCommit::spawn(MAX_BATCH, move |batch| {
            let store = store.clone();
            async move { store.accept_inbox(batch).await }
        })
    };

    // Drivers outlive the API and the receive loop, so outcomes of sends in
    // progress at shutdown are still recorded.
    let drivers_stop = CancellationToken::new();
    let citizens = CitizenKeys::default();
    let metrics = Metrics::new();
    let settings = DriverSettings {
        machine: MachineConfig {
            max_in_flight: config.delivery.max_in_flight,
            backoff_initial_ms: config.delivery.backoff_initial_ms,
            backoff_max_ms: config.delivery.backoff_max_ms,
            rng_seed: fastrand::u64(..),
        },
        send_timeout: Duration::from_millis(config.delivery.send_timeout_ms),
        max_frame_bytes: config.transport.max_frame_bytes,
        metrics: metrics.clone(),
    };
    let mut peers = HashMap::new();
    let mut driver_tasks = Vec::new();
    for peer in config.active_peers() {
        let (driver, task) = PeerDriver::spawn(
            PeerTarget {
                org_id: peer.org_id.clone(),
                address: peer.addresses[0],
            },
            settings.clone(),
            endpoint.clone(),
            store.clone(),
            drivers_stop.clone(),
        );
        let reloaded = reload_outbox(store.as_ref(), &peer.org_id, &driver, &citizens).await?;
        if reloaded > 0 {
            tracing::info!(peer = %peer.org_id, notices = reloaded, "resuming delivery of stored notices");
        }
        peers.insert(peer.org_id.clone(), driver);
        driver_tasks.push(task);
    }

    let (newest_cursor, newest_cursor_rx) = watch::channel(0u64);
    let receiver = Arc::new(Receiver {
        org_id: config.site.org_id.clone(),
        max_frame_bytes: config.transport.max_frame_bytes,
        inbox: accepts,
        newest_cursor,
        metrics: metrics.clone(),
    });
    let receive_tasks = TaskTracker::new();
    let receive_loop =
        tokio::spawn(receiver.serve(endpoint.clone(), receive_tasks.clone(), shutdown.clone()));

    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics_server = match config.metrics.listen {
        Some(addr) => Some(
            metrics::serve(
                addr,
                metrics::Sources {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    peers: peers.clone(),
                    started: started.clone(),
                },
                shutdown.clone(),
            )
            .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let state = Arc::new(ApiState {
        org_id: config.site.org_id.clone(),
        store: store.clone(),
        submits,
        peers,
        citizens,
        default_ttl_ms: i64::try_from(config.delivery.ttl_seconds * 1000).unwrap_or(i64::MAX / 2),
        newest_cursor: newest_cursor_rx,
        shutdown: shutdown.clone(),
        metrics,
    });
    let api_servers = serve_api(&config, state.clone(), &shutdown)?;

    tracing::info!(
        org = %config.site.org_id,
        listen = %peer_addr,
        fingerprint = %endpoint.fingerprint(),
        socket = %config.api.socket.display(),
        peers = config.peers.len(),
        metrics = ?config.metrics.listen,
        "tvaersd ready"
    );
    started.store(true, std::sync::atomic::Ordering::Release);
    if let Some(ready) = ready {
        let _ = ready.send(Bound { peer_addr });
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down: finishing writes in progress");
    for server in api_servers.into_iter().chain(metrics_server) {
        let _ = server.await;
    }
    let _ = receive_loop.await;
    receive_tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), receive_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some incoming streams did not finish within 5 s; their senders will retry");
    }
    drivers_stop.cancel();
    for task in driver_tasks {
        let _ = task.await;
    }
    // The last handles to the writers go here; each writer commits what is
    // queued and ends.
    drop(state);
    let _ = submit_writer.await;
    let _ = accept_writer.await;
    endpoint.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The certificates peers may connect with, from the configured peers.
pub fn trust_pins(config: &Config) -> Vec<Pin> {
    config
        .peers
        .iter()
        .flat_map(|peer| {
            peer.pins()
                .into_iter()
                .map(|(fingerprint, valid_until_ms)| Pin {
                    fingerprint,
                    org_id: peer.org_id.clone(),
                    valid_until_ms,
                })
        })
        .collect()
}

/// Hands a peer's undelivered outbox rows to its driver after a restart.
async fn reload_outbox(
    store: &dyn Store,
    peer: &str,
    driver: &PeerDriver,
    citizens: &CitizenKeys,
) -> Result<usize, StoreError> {
    let rows = store.undelivered(peer).await?;
    let count = rows.len();
    for row in rows {
        // Order is per citizen; a row whose CPR does not parse (it was
        // checked at submit, so only a damaged row) is ordered on its own.
        let citizen = v1::Envelope::decode(row.envelope.as_slice())
            .ok()
            .and_then(|e| e.notice)
            .and_then(|n| Cpr::parse(&n.citizen_cpr).ok())
            .map_or(row.seq as u64, |cpr| citizens.key(&cpr));
        driver.enqueue(
            Pending {
                seq: row.seq,
                citizen,
                expires_at_ms: row.expires_at_ms,
                attempts: row.attempts,
                not_before_ms: row.next_attempt_at_ms,
            },
            row.envelope,
        );
    }
    Ok(count)
}

fn serve_api(
    config: &Config,
    state: Arc<ApiState>,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    let mut servers = Vec::new();
    let socket = &config.api.socket;
    let listener = api::bind_unix(socket).map_err(|source| DaemonError::Api {
        place: socket.display().to_string(),
        source,
    })?;
    let service = LocalApiService::new(state.clone());
    let stop = shutdown.clone();
    let unix = tonic::transport::Server::builder()
        .add_service(service.clone().into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop.cancelled_owned(),
        );
    servers.push(tokio::spawn(async move {
        if let Err(error) = unix.await {
            tracing::error!(%error, "local API (Unix socket) stopped");
        }
    }));

    if let Some(addr) = config.api.tcp {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| DaemonError::Api {
                place: addr.to_string(),
                source,
            })?;
        let stop = shutdown.clone();
        let tcp = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            );
        servers.push(tokio::spawn(async move {
            if let Err(error) = tcp.await {
                tracing::error!(%error, "local API (TCP) stopped");
            }
        }));
    }
    Ok(servers)
}
