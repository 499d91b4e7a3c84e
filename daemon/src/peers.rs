//! The peers this daemon exchanges notices with, changeable while it runs.
//!
//! [`PeerSet`] owns one delivery driver per active peer and the trust
//! store's pins. `tvaers peer add | revoke | remove` edit the config file and
//! ask the daemon (admin API `ReloadPeers`) to apply the difference here:
//!
//! - a new peer is pinned and gets a driver, which loads the outbox rows of
//!   the shards this instance holds (see [`crate::lease`]);
//! - a changed peer (new address or certificate) gets a fresh driver: the
//!   old one stops after recording what it knows, and rows it had in flight
//!   are sent again by the new one (the receiver answers duplicates with the
//!   stored receipt);
//! - a revoked or removed peer is unpinned (no new connections, both ways),
//!   its live connections are closed at once, its driver stops, and its
//!   open outbox rows fail with reason "peer revoked" / "peer removed".
//!
//! Submits hold the read side of the lock from the recipient check to the
//! hand-over to the driver, and a revocation takes the write side, so no
//! notice is stored for a peer after its open rows were failed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{RwLock, RwLockReadGuard};
use tokio_util::sync::CancellationToken;

use crate::config::{Peer, Sector};
use crate::delivery::driver::{DriverSettings, PeerDriver, PeerTarget};
use crate::now_ms;
use crate::signing::PublicKey;
use crate::store::{OutboxItem, OutboxUpdate, Store, StoreError};
use crate::transport::endpoint::Endpoint;
use crate::transport::tls::Pin;

/// Failure reason of open outbox rows of a revoked peer.
pub const REVOKED_REASON: &str = "peer revoked";
/// Failure reason of open outbox rows of a peer removed from the config.
pub const REMOVED_REASON: &str = "peer removed";

#[derive(Debug, Clone)]
struct Policy {
    may_send: Vec<String>,
    signing_key: Option<PublicKey>,
    sector: Option<Sector>,
}

/// One active peer: its configuration and its driver.
#[derive(Debug)]
pub struct RunningPeer {
    pub config: Peer,
    pub driver: PeerDriver,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What [`PeerSet::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub revoked: Vec<String>,
    pub removed: Vec<String>,
    /// Open outbox rows failed because their peer went away.
    pub failed_items: u64,
}

/// Everything a driver needs, kept to start drivers later.
#[derive(Debug, Clone)]
pub struct DriverContext {
    pub settings: DriverSettings,
    pub endpoint: Endpoint,
    pub store: Arc<dyn Store>,
    /// Cancelled at daemon shutdown; each driver stops on a child of it.
    pub shutdown: CancellationToken,
}

#[derive(Debug)]
pub struct PeerSet {
    context: DriverContext,
    /// Every configured peer, revoked ones included, as last applied.
    configured: RwLock<Vec<Peer>>,
    running: RwLock<HashMap<String, RunningPeer>>,
    /// What each active peer may send us and the key it signs with; read
    /// on every incoming notice, so a plain lock held for a lookup only.
    policies: std::sync::RwLock<HashMap<String, Policy>>,
}

impl PeerSet {
    /// Pins the configured peers and starts a driver for each active one.
    pub async fn start(context: DriverContext, peers: Vec<Peer>) -> Result<PeerSet, StoreError> {
        let set = PeerSet {
            context,
            configured: RwLock::new(Vec::new()),
            running: RwLock::new(HashMap::new()),
            policies: std::sync::RwLock::default(),
        };
        set.apply_changes(peers, true).await?;
        Ok(set)
    }

    /// The active peers, locked against revocation while held: hold it from
    /// checking a recipient until its driver has the new row.
    pub async fn read(&self) -> RwLockReadGuard<'_, HashMap<String, RunningPeer>> {
        self.running.read().await
    }

    /// Whether `peer` may send us notices of `kind` (`Notice::kind_name`).
    pub fn may_send(&self, peer: &str, kind: &str) -> bool {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|policy| policy.may_send.iter().any(|k| k == kind))
    }

    /// The key `peer` signs its notices with, if one is pinned.
    pub fn signing_key(&self, peer: &str) -> Option<PublicKey> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .and_then(|policy| policy.signing_key)
    }

    /// The sector `peer`'s entry names, if any (for routing).
    pub fn sector(&self, peer: &str) -> Option<Sector> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .and_then(|policy| policy.sector)
    }

    /// Every configured peer (revoked ones too), as last applied.
    pub async fn configured(&self) -> Vec<Peer> {
        self.configured.read().await.clone()
    }

    /// A snapshot of the drivers, for status and metrics.
    pub async fn drivers(&self) -> BTreeMap<String, PeerDriver> {
        self.running
            .read()
            .await
            .iter()
            .map(|(org, peer)| (org.clone(), peer.driver.clone()))
            .collect()
    }

    /// Makes the running set match `peers` (the config's `[[peers]]`).
    pub async fn apply(&self, peers: Vec<Peer>) -> Result<PeerChanges, StoreError> {
        self.apply_changes(peers, false).await
    }

    async fn apply_changes(
        &self,
        peers: Vec<Peer>,
        at_start: bool,
    ) -> Result<PeerChanges, StoreError> {
        let mut configured = self.configured.write().await;
        let mut running = self.running.write().await;
        let mut changes = PeerChanges::default();

        // Unpin first: from here on a revoked peer cannot connect.
        self.context.endpoint.trust().replace(pins(&peers));
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = peers
            .iter()
            .filter(|p| !p.is_revoked())
            .map(|p| {
                let policy = Policy {
                    may_send: p.may_send.clone(),
                    signing_key: p.signing_key,
                    sector: p.sector,
                };
                (p.org_id.clone(), policy)
            })
            .collect();

        let wanted: HashMap<&str, &Peer> = peers
            .iter()
            .filter(|p| !p.is_revoked())
            .map(|p| (p.org_id.as_str(), p))
            .collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|org| wanted.get(org.as_str()) != Some(&&running[*org].config))
            .cloned()
            .collect();
        for org in gone {
            let Some(old) = running.remove(&org) else {
                continue;
            };
            old.stop.cancel();
            let _ = old.task.await;
            let reason = match peers.iter().find(|p| p.org_id == org) {
                Some(p) if p.is_revoked() => {
                    changes.revoked.push(org.clone());
                    Some(REVOKED_REASON)
                }
                Some(_) => {
                    changes.updated.push(org.clone());
                    None
                }
                None => {
                    changes.removed.push(org.clone());
                    Some(REMOVED_REASON)
                }
            };
            if let Some(reason) = reason {
                let closed = self.context.endpoint.close_peer(&org, reason);
                changes.failed_items += self.fail_open_rows(&org, reason).await?;
                tracing::warn!(peer = %org, reason, connections_closed = closed, "peer no longer trusted");
            }
        }
        for (org, peer) in &wanted {
            if running.contains_key(*org) {
                continue;
            }
            let started = self.start_driver(peer).await?;
            running.insert((*org).to_owned(), started);
            if !changes.updated.iter().any(|u| u == org) && !at_start {
                changes.added.push((*org).to_owned());
            }
        }
        // Revoked before this daemon started: nothing ran, nothing to stop,
        // but rows submitted earlier must not wait for ever.
        for peer in peers.iter().filter(|p| p.is_revoked()) {
            let was_known_revoked = configured
                .iter()
                .any(|c| c.org_id == peer.org_id && c.is_revoked());
            if !was_known_revoked && !changes.revoked.contains(&peer.org_id) {
                changes.failed_items += self.fail_open_rows(&peer.org_id, REVOKED_REASON).await?;
                if !at_start {
                    changes.revoked.push(peer.org_id.clone());
                }
            }
        }
        *configured = peers;
        Ok(changes)
    }

    /// Stops every driver after it recorded what it holds (daemon shutdown).
    pub async fn stop_all(&self) {
        let mut running = self.running.write().await;
        for peer in running.values() {
            peer.stop.cancel();
        }
        for (_, peer) in running.drain() {
            let _ = peer.task.await;
        }
    }

    async fn start_driver(&self, peer: &Peer) -> Result<RunningPeer, StoreError> {
        let stop = self.context.shutdown.child_token();
        let (driver, task) = PeerDriver::spawn(
            PeerTarget {
                org_id: peer.org_id.clone(),
                addresses: peer.addresses.clone(),
                signing_key: peer.signing_key,
            },
            self.context.settings.clone(),
            self.context.endpoint.clone(),
            self.context.store.clone(),
            stop.clone(),
        );
        Ok(RunningPeer {
            config: peer.clone(),
            driver,
            stop,
            task,
        })
    }

    /// Has the drivers of reopened outbox rows load them (each instance
    /// sends those of the shards it holds). Returns the rows whose peer has
    /// no driver (revoked or unknown).
    pub async fn resume(&self, rows: Vec<OutboxItem>) -> Vec<OutboxItem> {
        let running = self.running.read().await;
        let (known, orphans): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|row| running.contains_key(&row.recipient));
        let peers: std::collections::BTreeSet<&str> =
            known.iter().map(|row| row.recipient.as_str()).collect();
        for org in peers {
            if let Some(peer) = running.get(org) {
                peer.driver.poll();
            }
        }
        orphans
    }

    async fn fail_open_rows(&self, peer: &str, reason: &str) -> Result<u64, StoreError> {
        let rows = self.context.store.undelivered(peer).await?;
        let count = rows.len() as u64;
        if count > 0 {
            let at_ms = now_ms();
            self.context
                .store
                .update_outbox(
                    rows.into_iter()
                        .map(|row| OutboxUpdate::Failed {
                            seq: row.seq,
                            reason: reason.to_owned(),
                            receipt: None,
                            at_ms,
                        })
                        .collect(),
                )
                .await?;
        }
        Ok(count)
    }
}

/// The certificates peers may connect with.
pub fn pins(peers: &[Peer]) -> Vec<Pin> {
    peers
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
