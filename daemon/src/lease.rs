//! Who sends which outbox rows when several daemon instances of one
//! organisation share one store (PostgreSQL), and, with the same code, when
//! one instance runs alone (SQLite, or a single PostgreSQL instance).
//!
//! The outbox is split into [`SHARDS`] shards by a stable function of the
//! citizen ([`shard_of`]): the [`CitizenRef`] is an HMAC under a key derived
//! from the organisation's shared data key, so every instance computes the
//! same shard. Each shard is held by at most one instance at a time under a
//! lease with an expiry (table `outbox_leases`); an instance sends only rows
//! of shards it holds, so all notices about one citizen go out through one
//! instance, in submission order.
//!
//! This module owns:
//! * [`plan`]: the lease decisions (which shards to renew, claim or give
//!   up) as a plain function of the leases seen and the time, tested with a
//!   fake clock like the delivery machine;
//! * [`Owned`]: what an instance holds, published to the delivery drivers,
//!   with the fencing rule ([`Owned::usable`]): a lease about to expire
//!   un-renewed is no longer used, so a paused instance stops sending before
//!   another may take its shards over;
//! * [`LeaseKeeper`]: the loop that runs a lease round every third of the
//!   lease time and gives the leases up at shutdown.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::CitizenRef;
use crate::store::{Store, StoreError};
use crate::{Millis, now_ms};

/// How many shards the outbox is split into. Fixed: changing it moves
/// citizens between shards, which is only safe with every instance stopped.
pub const SHARDS: u16 = 32;

/// The instance id of a store only one instance can use (SQLite): fixed, so
/// a restarted daemon takes its own leases back at once instead of waiting
/// for them to expire.
pub const LOCAL_INSTANCE: &str = "local";

/// The shard of a notice: from the citizen reference when there is one (so
/// all notices about a citizen share a shard), else from the notice id.
pub fn shard_of(citizen: Option<&CitizenRef>, notice_id: &str) -> u16 {
    let bytes: &[u8] = match citizen {
        Some(reference) if reference.0.len() >= 2 => &reference.0,
        _ => notice_id.as_bytes(),
    };
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(SHARDS)) as u16
}

/// One row of `outbox_leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: u16,
    pub owner: String,
    pub expires_at_ms: Millis,
}

/// The leases and instances as one instance saw them at the start of a
/// round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub leases: Vec<Lease>,
    /// Instances whose heartbeat has not expired.
    pub live: Vec<String>,
}

/// What one lease round does, decided by [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeasePlan {
    /// Own leases to extend (also expired ones nobody took meanwhile).
    pub renew: Vec<u16>,
    /// Free or expired shards to take.
    pub claim: Vec<u16>,
    /// Own leases to give up (more than the fair share, or shutting down).
    pub release: Vec<u16>,
    /// The instance stops: its heartbeat goes too.
    pub leave: bool,
}

impl LeasePlan {
    /// Gives up every lease of `me` in `view` (graceful shutdown).
    pub fn leave(me: &str, view: &LeaseView) -> LeasePlan {
        LeasePlan {
            release: view
                .leases
                .iter()
                .filter(|lease| lease.owner == me)
                .map(|lease| lease.shard)
                .collect(),
            leave: true,
            ..LeasePlan::default()
        }
    }
}

/// Decides one lease round of instance `me` at time `now`.
///
/// Live instances are those with an unexpired heartbeat or lease, and `me`.
/// The fair share is `ceil(SHARDS / live)`. An instance above it releases
/// its highest shards (another instance has joined); below it, it claims
/// free or expired shards, starting at an offset derived from its id so two
/// instances starting together mostly try different shards. All its other
/// leases are renewed.
pub fn plan(me: &str, view: &LeaseView, now: Millis) -> LeasePlan {
    let mut live: BTreeSet<&str> = view.live.iter().map(String::as_str).collect();
    live.insert(me);
    live.extend(
        view.leases
            .iter()
            .filter(|lease| lease.expires_at_ms > now)
            .map(|lease| lease.owner.as_str()),
    );
    let share = usize::from(SHARDS).div_ceil(live.len());

    let mut mine: Vec<u16> = view
        .leases
        .iter()
        .filter(|lease| lease.owner == me)
        .map(|lease| lease.shard)
        .collect();
    mine.sort_unstable();
    let taken: HashMap<u16, &Lease> = view.leases.iter().map(|l| (l.shard, l)).collect();

    let mut out = LeasePlan::default();
    if mine.len() > share {
        out.release = mine.split_off(share);
    } else {
        let offset = shard_of(None, me);
        out.claim = (0..SHARDS)
            .map(|n| (offset + n) % SHARDS)
            .filter(|shard| {
                taken
                    .get(shard)
                    .is_none_or(|lease| lease.owner != me && lease.expires_at_ms <= now)
            })
            .take(share - mine.len())
            .collect();
    }
    out.renew = mine;
    out
}

/// The shards one instance holds, as published to its delivery drivers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// Held shards and when each lease expires.
    pub shards: HashMap<u16, Millis>,
    /// A lease with less than this left is not used (fencing).
    pub margin_ms: i64,
    /// Other instances may share the store: rows submitted elsewhere are
    /// found by polling, and local submits go through the poll too so that
    /// rows of one citizen submitted on two instances keep their order.
    pub shared: bool,
}

impl Owned {
    /// Every shard for ever, alone: for tests of the driver.
    pub fn everything() -> Owned {
        Owned {
            shards: (0..SHARDS).map(|shard| (shard, Millis::MAX)).collect(),
            margin_ms: 0,
            shared: false,
        }
    }

    /// Whether rows of `shard` may be sent at `now`.
    pub fn usable(&self, shard: u16, now: Millis) -> bool {
        self.shards
            .get(&shard)
            .is_some_and(|&expires| expires.saturating_sub(self.margin_ms) > now)
    }

    /// The shards usable at `now`, in order.
    pub fn usable_shards(&self, now: Millis) -> Vec<u16> {
        let mut shards: Vec<u16> = self
            .shards
            .keys()
            .copied()
            .filter(|&shard| self.usable(shard, now))
            .collect();
        shards.sort_unstable();
        shards
    }

    /// When the first usable lease stops being usable, if any.
    pub fn next_lapse(&self, now: Millis) -> Option<Millis> {
        self.shards
            .values()
            .map(|&expires| expires.saturating_sub(self.margin_ms))
            .filter(|&at| at > now)
            .min()
    }
}

/// How this instance takes part in the leases.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub instance_id: String,
    pub lease_ms: i64,
    pub shared: bool,
}

/// Runs lease rounds and publishes what this instance holds.
#[derive(Debug)]
pub struct LeaseKeeper {
    store: Arc<dyn Store>,
    settings: LeaseSettings,
    published: watch::Sender<Arc<Owned>>,
}

impl LeaseKeeper {
    /// Runs the first round (so drivers start with their shards) and
    /// returns the keeper and the receiver drivers watch.
    pub async fn start(
        store: Arc<dyn Store>,
        settings: LeaseSettings,
    ) -> Result<(LeaseKeeper, watch::Receiver<Arc<Owned>>), StoreError> {
        let (published, owned) = watch::channel(Arc::new(Owned {
            shared: settings.shared,
            ..Owned::default()
        }));
        let keeper = LeaseKeeper {
            store,
            settings,
            published,
        };
        keeper.round().await?;
        Ok((keeper, owned))
    }

    /// One round: look, decide, apply, publish.
    async fn round(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let me = self.settings.instance_id.as_str();
        let view = self.store.lease_view(now).await?;
        let decided = plan(me, &view, now);
        let held = self
            .store
            .apply_leases(me, now, self.settings.lease_ms, &decided)
            .await?;
        let owned = Owned {
            shards: held
                .into_iter()
                .filter(|lease| lease.owner == me && lease.expires_at_ms > now)
                .map(|lease| (lease.shard, lease.expires_at_ms))
                .collect(),
            margin_ms: self.settings.lease_ms / 3,
            shared: self.settings.shared,
        };
        if !decided.claim.is_empty() || !decided.release.is_empty() {
            tracing::info!(
                instance = me,
                held = owned.shards.len(),
                released = decided.release.len(),
                "outbox shards rebalanced"
            );
        }
        self.published.send_replace(Arc::new(owned));
        Ok(())
    }

    /// Renews every third of the lease time until `stop`, then gives the
    /// leases up (call after the drivers have stopped).
    pub async fn run(self, stop: CancellationToken) {
        let every = Duration::from_millis(u64::try_from(self.settings.lease_ms / 3).unwrap_or(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => break,
            }
            if let Err(error) = self.round().await {
                // Drivers stop using leases as they near expiry; nothing
                // else to do but try again.
                tracing::warn!(%error, "cannot renew outbox leases; will retry");
            }
        }
        let me = self.settings.instance_id.as_str();
        let now = now_ms();
        let result = match self.store.lease_view(now).await {
            Ok(view) => self
                .store
                .apply_leases(
                    me,
                    now,
                    self.settings.lease_ms,
                    &LeasePlan::leave(me, &view),
                )
                .await
                .map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(%error, "cannot give up outbox leases; they expire on their own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: u16, owner: &str, expires_at_ms: Millis) -> Lease {
        Lease {
            shard,
            owner: owner.into(),
            expires_at_ms,
        }
    }

    /// Applies `plan` the way the store does: renew and claim to
    /// `now + lease`, claims only where free or expired.
    fn apply(view: &mut LeaseView, me: &str, decided: &LeasePlan, now: Millis, lease_ms: i64) {
        view.leases
            .retain(|l| !(l.owner == me && decided.release.contains(&l.shard)));
        for l in &mut view.leases {
            if l.owner == me && decided.renew.contains(&l.shard) {
                l.expires_at_ms = now + lease_ms;
            }
        }
        for &shard in &decided.claim {
            match view.leases.iter_mut().find(|l| l.shard == shard) {
                Some(l) if l.expires_at_ms <= now => {
                    l.owner = me.into();
                    l.expires_at_ms = now + lease_ms;
                }
                Some(_) => {}
                None => view.leases.push(lease(shard, me, now + lease_ms)),
            }
        }
        if !view.live.iter().any(|i| i == me) {
            view.live.push(me.into());
        }
    }

    fn held(view: &LeaseView, me: &str, now: Millis) -> usize {
        view.leases
            .iter()
            .filter(|l| l.owner == me && l.expires_at_ms > now)
            .count()
    }

    #[test]
    fn a_lone_instance_takes_every_shard_and_keeps_them() {
        let mut view = LeaseView::default();
        let decided = plan("a", &view, 0);
        assert_eq!(decided.claim.len(), usize::from(SHARDS));
        assert!(decided.renew.is_empty() && decided.release.is_empty());
        apply(&mut view, "a", &decided, 0, 15_000);
        let next = plan("a", &view, 5_000);
        assert_eq!(next.renew.len(), usize::from(SHARDS));
        assert!(next.claim.is_empty() && next.release.is_empty());
    }

    #[test]
    fn two_instances_split_the_shards_and_a_dead_ones_are_taken_over() {
        let lease_ms = 3_000;
        let mut view = LeaseView::default();
        let mut now = 0;
        // a alone, then b starts: both converge to half within a few rounds.
        let decided = plan("a", &view, now);
        apply(&mut view, "a", &decided, now, lease_ms);
        for _ in 0..4 {
            now += 1_000;
            for me in ["b", "a"] {
                let decided = plan(me, &view, now);
                apply(&mut view, me, &decided, now, lease_ms);
            }
        }
        let half = usize::from(SHARDS / 2);
        assert_eq!(held(&view, "a", now), half);
        assert_eq!(held(&view, "b", now), half);
        // No shard is held twice.
        let shards: BTreeSet<u16> = view.leases.iter().map(|l| l.shard).collect();
        assert_eq!(shards.len(), view.leases.len());

        // b stops renewing (killed): a takes its shards once they expire,
        // not before.
        view.live.retain(|i| i != "b");
        now += 1_000;
        let early = plan("a", &view, now);
        assert!(early.claim.is_empty(), "{early:?}");
        now += lease_ms;
        let decided = plan("a", &view, now);
        assert_eq!(decided.claim.len(), half);
        apply(&mut view, "a", &decided, now, lease_ms);
        assert_eq!(held(&view, "a", now), usize::from(SHARDS));
    }

    #[test]
    fn leaving_releases_every_own_lease() {
        let view = LeaseView {
            leases: vec![lease(1, "a", 10), lease(2, "b", 10), lease(3, "a", 1)],
            live: vec!["a".into(), "b".into()],
        };
        let decided = LeasePlan::leave("a", &view);
        assert_eq!(decided.release, vec![1, 3]);
        assert!(decided.leave && decided.claim.is_empty() && decided.renew.is_empty());
    }

    #[test]
    fn a_lease_near_its_expiry_is_not_used() {
        let owned = Owned {
            shards: HashMap::from([(1, 10_000), (2, 20_000)]),
            margin_ms: 5_000,
            shared: true,
        };
        assert!(owned.usable(1, 4_999));
        assert!(!owned.usable(1, 5_000));
        assert!(!owned.usable(3, 0));
        assert_eq!(owned.usable_shards(6_000), vec![2]);
        assert_eq!(owned.next_lapse(0), Some(5_000));
        assert_eq!(owned.next_lapse(5_000), Some(15_000));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let a = CitizenRef(vec![1, 2, 3, 4]);
        assert_eq!(shard_of(Some(&a), "x"), shard_of(Some(&a), "y"));
        let used: BTreeSet<u16> = (0..1_000u32)
            .map(|n| shard_of(Some(&CitizenRef(n.to_be_bytes().to_vec())), ""))
            .collect();
        assert_eq!(used.len(), usize::from(SHARDS));
        assert!(used.iter().all(|&s| s < SHARDS));
    }
}
