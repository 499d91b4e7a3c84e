//! Wiring one daemon together, and taking it apart again gracefully.
//!
//! Start-up order: key files checked (owner-only), store, its data key
//! unwrapped with the key-encryption key and the store wrapped so envelopes
//! are encrypted at rest, keys, QUIC endpoint, writers (group commits),
//! one delivery driver per peer (reloaded from the outbox), the receive
//! loop, the local API, then the retention purge (at once, then hourly). Shutdown runs the other way: stop taking new
//! work (API, incoming streams), let the writes in progress commit, let the
//! drivers record the outcomes they hold, then close the store. Nothing
//! acknowledged is lost: a submit is answered only after its commit, and a
//! notice still in flight at shutdown is sent again after the restart
//! (the receiver answers a duplicate with its stored receipt).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Millis;
use crate::admin::{AdminService, AdminState};
use crate::api::{self, ApiState, LocalApiService};
use crate::at_rest::{AtRestError, Kek, KekSource, Keyring};
use crate::audit::{AuditAction, AuditEvent, AuditQuery, ChainKey};
use crate::batch::GroupCommit;
use crate::config::{Config, StoreConfig};
use crate::delivery::CitizenKeys;
use crate::delivery::driver::DriverSettings;
use crate::delivery::machine::MachineConfig;
use crate::identity::IdentityError;
use crate::lease::{LeaseKeeper, LeaseSettings};
use crate::metrics::{self, Metrics};
use crate::peers::{DriverContext, PeerSet};
use crate::receive::Receiver;
use crate::signing::{SigningError, SigningKey};
use crate::store::postgres::{PostgresStore, describe_url};
use crate::store::sealed::SealedStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::transport::endpoint::{Endpoint, EndpointSettings, TransportError};
use crate::transport::tls::{Identity, TlsError, TrustStore};

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
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    KeyFile(#[from] IdentityError),
    #[error("webhook of inbox {inbox:?}: {source}")]
    Webhook {
        inbox: String,
        #[source]
        source: crate::webhook::WebhookError,
    },
    #[error(transparent)]
    AtRest(#[from] AtRestError),
    #[error(
        "no [storage] key-encryption key is configured: notices are stored encrypted and the key that protects them must be given. Create one with `tvaers keys generate-kek keys/storage.kek` (mode 0600) and add to the config:\n  [storage]\n  key_file = \"keys/storage.kek\"\n(or `key_env = \"VARIABLE\"` naming an environment variable that holds its 64 hex digits)"
    )]
    NoStorageKey,
    #[error(
        "site.signing_key is not set: every notice is signed; create a key with `tvaersd generate-keys` (or `tvaers init`) and name it in [site]"
    )]
    NoSigningKey,
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

impl DaemonError {
    /// True when the configuration (a key file, a missing setting) is at
    /// fault: `tvaersd` exits with 2 then, as for a bad config file.
    pub fn is_configuration(&self) -> bool {
        match self {
            DaemonError::KeyFile(_)
            | DaemonError::NoStorageKey
            | DaemonError::NoSigningKey
            | DaemonError::Webhook { .. } => true,
            DaemonError::AtRest(error) => error.is_configuration(),
            _ => false,
        }
    }
}

/// Refuses private key files (TLS key, signing key, KEK file, webhook
/// secrets) that group or others may read or write, before any of them is
/// used.
pub fn check_key_files(config: &Config) -> Result<(), DaemonError> {
    let mut files = vec![&config.transport.private_key];
    files.extend(config.site.signing_key.as_ref());
    if let Some(crate::config::StorageConfig {
        kek: KekSource::File(path),
    }) = &config.storage
    {
        files.push(path);
    }
    files.extend(config.webhooks.iter().map(|hook| &hook.secret_file));
    for path in files {
        crate::identity::check_owner_only(path)?;
    }
    Ok(())
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
    let signing_key_path = config
        .site
        .signing_key
        .as_ref()
        .ok_or(DaemonError::NoSigningKey)?;
    let signing_key = Arc::new(SigningKey::load(signing_key_path)?);
    check_key_files(&config)?;
    let hooks = config
        .webhooks
        .iter()
        .map(|hook| {
            crate::webhook::Hook::load(hook)
                .map(|loaded| (hook.inbox.clone(), loaded))
                .map_err(|source| DaemonError::Webhook {
                    inbox: hook.inbox.clone(),
                    source,
                })
        })
        .collect::<Result<std::collections::HashMap<_, _>, _>>()?;
    let kek = match &config.storage {
        Some(storage) => Kek::load(&storage.kek)?,
        None => return Err(DaemonError::NoStorageKey),
    };
    let (backend, keyring): (Arc<dyn Store>, Arc<Keyring>) = match &config.store {
        StoreConfig::Sqlite { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| DaemonError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            keyed(
                SqliteStore::open(path).await?,
                kek,
                SqliteStore::set_audit_key,
            )
            .await?
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
            keyed(
                PostgresStore::open(url, *max_connections).await?,
                kek,
                PostgresStore::set_audit_key,
            )
            .await?
        }
    };
    let audit_keys = keyring.audit_keys();
    tracing::info!(kek_id = %keyring.kek_id(), "store encrypted at rest");
    let store: Arc<dyn Store> = Arc::new(SealedStore::new(backend, keyring.clone()));
    let started_at_ms = crate::now_ms();
    let identity = Identity::load(&config.transport.certificate, &config.transport.private_key)?;
    let certificate_not_after_ms = identity.not_after_ms();
    // PeerSet::start pins the configured peers.
    let trust = TrustStore::default();
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
    // The first lease round runs before the drivers start, so they begin
    // with this instance's shards; leases are given up after the drivers
    // stopped.
    let shared = matches!(config.store, StoreConfig::Postgres { .. });
    let instance_id = config.instances.instance_id.clone().unwrap_or_else(|| {
        if shared {
            format!("{}-{:016x}", config.site.org_id, fastrand::u64(..))
        } else {
            crate::lease::LOCAL_INSTANCE.to_owned()
        }
    });
    tracing::info!(instance = %instance_id, "taking outbox leases");
    let (lease_keeper, leases) = LeaseKeeper::start(
        store.clone(),
        LeaseSettings {
            instance_id: instance_id.clone(),
            lease_ms: config.instances.lease_ms,
            shared,
        },
    )
    .await?;
    let leases_stop = CancellationToken::new();
    let lease_task = tokio::spawn(lease_keeper.run(leases_stop.clone()));
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
        leases,
        citizens: citizens.clone(),
        poll_interval: Duration::from_millis(config.instances.poll_ms),
    };
    let peers = Arc::new(
        PeerSet::start(
            DriverContext {
                settings,
                endpoint: endpoint.clone(),
                store: store.clone(),
                shutdown: drivers_stop.clone(),
            },
            config.peers.clone(),
        )
        .await?,
    );

    let (newest_cursor, newest_cursor_rx) = watch::channel(0u64);
    let webhook_inboxes: Vec<String> = config.webhooks.iter().map(|h| h.inbox.clone()).collect();
    let webhook_wake = newest_cursor_rx.clone();
    let inbox_listener =
        crate::inbox_signal::spawn(store.clone(), newest_cursor.clone(), shutdown.clone());
    let escalation_signal = newest_cursor.clone();
    let receiver = Arc::new(Receiver {
        org_id: config.site.org_id.clone(),
        signing_key: signing_key.clone(),
        peers: peers.clone(),
        max_clock_skew_ms: config.delivery.max_clock_skew_ms,
        max_frame_bytes: config.transport.max_frame_bytes,
        inbox: accepts,
        routing: config.routing.clone(),
        webhook_inboxes: webhook_inboxes.clone(),
        store: store.clone(),
        citizen_refs: audit_keys.citizens.clone(),
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
    let signing_public_key = signing_key.public_key();
    let state = Arc::new(ApiState {
        org_id: config.site.org_id.clone(),
        org_name: config.site.name.clone(),
        signing_key,
        store: store.clone(),
        submits,
        peers: peers.clone(),
        citizens,
        citizen_refs: audit_keys.citizens.clone(),
        default_ttl_ms: i64::try_from(config.delivery.ttl_seconds * 1000).unwrap_or(i64::MAX / 2),
        newest_cursor: newest_cursor_rx.clone(),
        shutdown: shutdown.clone(),
        metrics,
    });
    let admin = Arc::new(AdminState {
        config_path: config.path.clone(),
        site: config.site.clone(),
        store: store.clone(),
        store_description: match &config.store {
            StoreConfig::Sqlite { path } => format!("sqlite://{}", path.display()),
            StoreConfig::Postgres { url, .. } => describe_url(url),
        },
        peers: peers.clone(),
        listen: peer_addr,
        fingerprint: endpoint.fingerprint(),
        signing_key: signing_public_key,
        certificate_not_after_ms,
        started_at_ms,
        audit_keys: audit_keys.clone(),
        retention: config.retention,
        keyring,
        instance_id,
    });
    record_start(
        store.as_ref(),
        started_at_ms,
        &format!(
            "tls {}; signing {}",
            endpoint.fingerprint(),
            signing_public_key
        ),
    )
    .await?;
    // Handled receipts a crash kept from being stored go out now.
    let receipts_check = {
        let state = state.clone();
        tokio::spawn(async move {
            crate::api::handling::resend_recent_receipts(&state, state.default_ttl_ms).await;
        })
    };
    let api_servers = serve_api(&config, state.clone(), admin, &shutdown)?;
    let purger = crate::retention::spawn(store.clone(), config.retention, shutdown.clone());
    let escalator = (!config.escalation.rules().is_empty()).then(|| {
        crate::escalator::spawn(
            state.clone(),
            config.escalation.clone(),
            webhook_inboxes,
            escalation_signal,
            shutdown.clone(),
        )
    });
    let webhooks = crate::webhook::spawn(
        store.clone(),
        hooks,
        crate::webhook::Backoff {
            initial_ms: config.delivery.backoff_initial_ms,
            max_ms: config.delivery.backoff_max_ms,
        },
        webhook_wake,
        shutdown.clone(),
    );

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
    peers.stop_all().await;
    drivers_stop.cancel();
    leases_stop.cancel();
    let _ = lease_task.await;
    let _ = receipts_check.await;
    // The escalator holds the API state (it submits overdue receipts): it
    // must end before the submit writer can.
    if let Some(escalator) = escalator {
        let _ = escalator.await;
    }
    // The last handles to the writers go here; each writer commits what is
    // queued and ends.
    drop(state);
    let _ = submit_writer.await;
    let _ = accept_writer.await;
    let _ = purger.await;
    let _ = webhooks.await;
    let _ = inbox_listener.await;
    endpoint.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the data key in `backend` with `kek`, and gives the backend the
/// audit chain key derived from it (before it is shared: appends need it).
/// The keyring stays beside the store: the admin API re-wraps with it.
async fn keyed<S: Store>(
    mut backend: S,
    kek: Kek,
    set_audit_key: fn(&mut S, ChainKey),
) -> Result<(Arc<dyn Store>, Arc<Keyring>), DaemonError> {
    let keyring = match Keyring::open(&backend, kek).await {
        Ok(keyring) => keyring,
        Err(error) => {
            backend.close().await;
            return Err(error.into());
        }
    };
    set_audit_key(&mut backend, keyring.audit_keys().chain);
    Ok((Arc::new(backend), Arc::new(keyring)))
}

/// Records the start, with the keys it runs with; when those differ from
/// the previous start's, records the rotation too.
async fn record_start(store: &dyn Store, at_ms: Millis, keys: &str) -> Result<(), StoreError> {
    let previous = store
        .audit_entries(AuditQuery {
            action: Some(AuditAction::DaemonStarted),
            newest_first: true,
            limit: 1,
            ..AuditQuery::default()
        })
        .await?;
    let mut events = Vec::new();
    if let Some(previous) = previous.first()
        && previous.event.detail != keys
    {
        events.push(
            AuditEvent::new(at_ms, "daemon", AuditAction::KeysRotated)
                .detail(format!("was: {}; now: {keys}", previous.event.detail)),
        );
    }
    events.push(AuditEvent::new(at_ms, "daemon", AuditAction::DaemonStarted).detail(keys));
    store.record_audit(events).await
}

fn serve_api(
    config: &Config,
    state: Arc<ApiState>,
    admin: Arc<AdminState>,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    let mut servers = Vec::new();
    let admin_socket = &config.api.admin_socket;
    let listener = crate::admin::bind_unix(admin_socket).map_err(|source| DaemonError::Api {
        place: admin_socket.display().to_string(),
        source,
    })?;
    let admin_server = tonic::transport::Server::builder()
        .add_service(AdminService::new(admin).into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    servers.push(tokio::spawn(async move {
        if let Err(error) = admin_server.await {
            tracing::error!(%error, "admin API stopped");
        }
    }));

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
