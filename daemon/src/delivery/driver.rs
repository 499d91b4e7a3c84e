//! The thin async layer around [`Machine`]: one task per peer that feeds the
//! machine events (new outbox rows, connections, receipts, timer ticks) and
//! performs the actions it returns (dial, send on QUIC streams, persist
//! outcomes, sleep until a deadline).
//!
//! All decisions live in the machine; this file only does I/O.
//!
//! Outcomes are written to the store behind the sends, not in their way: at
//! most one write (one transaction) per peer is in progress, and while it
//! commits the driver keeps taking events and sending new outbox rows; the
//! outcomes decided meanwhile go into the next write. A write used to be
//! awaited inside the loop, so every new notice waited for the fsync of the
//! previous turn's outcomes before it was sent. Writes stay in order (the
//! next starts only when the previous one finished), and a delivered status
//! is still recorded only after the peer's receipt arrived, so durability is
//! unchanged: the attempt counts written here only steer backoff, and a
//! crash before they are written leads to a resend that the receiver answers
//! with its stored receipt.
//!
//! Which rows: only those of outbox shards this instance holds a lease on
//! (see [`crate::lease`]). The driver loads a shard's undelivered rows from
//! the store when it gains the shard, releases them from the machine
//! (without an outcome) when it loses it or its lease nears expiry
//! un-renewed, and, when other instances may share the store, polls for rows
//! they stored. A row handed over at submit is parked until a poll that
//! started after it completes: that poll sees every row committed before
//! it, so an earlier row of the same citizen submitted on another instance
//! is never overtaken.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tvaers_proto::v1;

use super::CitizenKeys;
use super::machine::{
    Action, ConnectionState, EXPIRED_REASON, Event, Machine, MachineConfig, Pending, ReceiptVerdict,
};
use crate::lease::Owned;
use crate::metrics::{Metrics, PeerMetrics};
use crate::signing::{OpenError, PublicKey};
use crate::store::{OutboxItem, OutboxState, OutboxUpdate, Store, StoreError};
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
    /// When a connection came up or a receipt arrived last.
    pub last_contact_ms: Option<Millis>,
    /// Smoothed round-trip time of the live connection.
    pub rtt: Option<Duration>,
}

/// Which peer, and where it listens. With several addresses (instances of
/// one organisation) the driver dials them in turn: a failed dial or a lost
/// connection moves on to the next, so a stopped instance is failed over.
/// Once connected, it also connects to the other addresses and spreads its
/// sends over all the connections that are up.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    pub org_id: String,
    pub addresses: Vec<SocketAddr>,
    /// The key its receipts must be signed with.
    pub signing_key: Option<PublicKey>,
}

impl PeerTarget {
    /// The address for dial number `attempt` (round robin).
    fn address(&self, attempt: usize) -> Option<SocketAddr> {
        match self.addresses.len() {
            0 => None,
            n => Some(self.addresses[attempt % n]),
        }
    }
}

/// How long before a spare connection to an address that does not answer
/// (or was lost) is dialled again.
const SPARE_REDIAL: Duration = Duration::from_secs(2);

/// Settings shared by all peer drivers.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    pub machine: MachineConfig,
    pub send_timeout: Duration,
    pub max_frame_bytes: u32,
    pub metrics: Metrics,
    /// The shards this instance holds, kept current by the lease keeper.
    pub leases: watch::Receiver<Arc<Owned>>,
    /// Orders rows loaded from the store per citizen.
    pub citizens: CitizenKeys,
    /// How often to look for rows other instances stored, when the store
    /// is shared.
    pub poll_interval: Duration,
}

/// Messages into a driver task.
#[derive(Debug)]
enum Input {
    Enqueue(Pending, Held),
    Poll,
    Connected(u64, quinn::Connection),
    /// A connection to another address of the peer, opened while the
    /// connection of that generation is up.
    SpareConnected(u64, quinn::Connection),
    /// Dial this address again as a spare, if the connection of that
    /// generation is still up and none goes there.
    RedialSpare(u64, SocketAddr),
    ConnectFailed(String),
    Disconnected(u64, String),
    Replied(i64, Result<Reply, String>),
    Cancel(i64, String, tokio::sync::oneshot::Sender<bool>),
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
        let leases = settings.leases.clone();
        let owned = leases.borrow().clone();
        let task = Task {
            owned,
            leases,
            leases_open: true,
            by_shard: HashMap::new(),
            loaded: HashSet::new(),
            parked: Vec::new(),
            polling: None,
            polls_started: 0,
            poll_wanted: true,
            next_poll_ms: None,
            finished: HashMap::new(),
            writes_done: 0,
            first_load: true,
            metrics: settings.metrics.peer(&target.org_id),
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
            dials: 0,
            last_contact_ms: None,
            generation: 0,
            spares: Vec::new(),
            sends: 0,
            wake_at: None,
            updates: Vec::new(),
            writing: None,
            write_paused_until: None,
        };
        let handle = tokio::spawn(task.run(queue, shutdown));
        (PeerDriver { inputs, health }, handle)
    }

    /// Hands a stored outbox row of outbox shard `shard` to the driver:
    /// `notice_id` is the id its envelope carries (the peer's receipt must
    /// name it), `created_at_ms` when its notice was submitted (for the
    /// delivery latency metric). A row of a shard this instance does not
    /// hold is left to the instance that does.
    pub fn enqueue(
        &self,
        pending: Pending,
        shard: u16,
        notice_id: &str,
        envelope: Vec<u8>,
        created_at_ms: Millis,
    ) {
        let held = Held {
            notice_id: notice_id.into(),
            envelope: Arc::new(envelope),
            created_at_ms,
            shard,
        };
        let _ = self.inputs.send(Input::Enqueue(pending, held));
    }

    /// Asks the driver to look in the store for rows of its shards it does
    /// not hold yet (e.g. failed rows put back to pending).
    pub fn poll(&self) {
        let _ = self.inputs.send(Input::Poll);
    }

    /// Gives up on a queued outbox row (recorded as failed with `reason`).
    /// Answers false when the driver does not hold it queued: it is on the
    /// wire (its receipt decides), finished, or the driver has stopped.
    pub async fn cancel(&self, seq: i64, reason: String) -> bool {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self
            .inputs
            .send(Input::Cancel(seq, reason, answer))
            .is_err()
        {
            return false;
        }
        answered.await.unwrap_or(false)
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
    /// Signed envelopes held for sending.
    envelopes: HashMap<i64, Held>,
    receipts: HashMap<i64, Reply>,
    connection: Option<(u64, quinn::Connection)>,
    /// Connections to the peer's other addresses (its other instances),
    /// opened once `connection` is up: sends are spread over all of them.
    /// They live and die with `connection`, which alone is what the machine
    /// sees as connected.
    spares: Vec<(u64, quinn::Connection)>,
    /// Round robin over `connection` and `spares`.
    sends: usize,
    /// Failed dials and lost connections so far: picks the next address.
    dials: usize,
    last_contact_ms: Option<Millis>,
    /// Tells a stale connection's close event from the current one's.
    generation: u64,
    wake_at: Option<Millis>,
    /// Outcomes decided and not yet handed to a write.
    updates: Vec<OutboxUpdate>,
    /// The write in progress and a copy of what it writes, kept so a failed
    /// write loses nothing.
    writing: Option<(Vec<OutboxUpdate>, Write)>,
    /// After a failed write, no new one before this time (the runtime's
    /// clock, which tests can pause).
    write_paused_until: Option<tokio::time::Instant>,
    metrics: PeerMetrics,
    leases: watch::Receiver<Arc<Owned>>,
    leases_open: bool,
    /// The shards held, as last published by the lease keeper.
    owned: Arc<Owned>,
    /// Seqs held (in `envelopes`) per shard, to release a lost shard.
    by_shard: HashMap<u16, BTreeSet<i64>>,
    /// Held shards whose rows a poll has loaded since they were gained.
    loaded: HashSet<u16>,
    /// Rows handed over at submit, waiting for a poll numbered above the
    /// first value to complete (see the module documentation).
    parked: Vec<(u64, Pending, Held)>,
    polling: Option<(u64, PollTask)>,
    polls_started: u64,
    poll_wanted: bool,
    /// When the next periodic poll is due (shared store only).
    next_poll_ms: Option<Millis>,
    /// Seqs the machine finished whose outcome is not yet known to be in the
    /// store (`None`), or was written by write number `Some(n)`: a poll
    /// that started before that write may still see them open.
    finished: HashMap<i64, Option<u64>>,
    writes_done: u64,
    first_load: bool,
}

type Write = tokio::task::JoinHandle<Result<(), StoreError>>;
type PollTask = tokio::task::JoinHandle<Result<Polled, StoreError>>;

/// What a poll found: rows of the polled shards the driver did not hold.
#[derive(Debug)]
struct Polled {
    /// Writes completed when the poll started.
    mark: u64,
    shards: Vec<u16>,
    rows: Vec<(u16, OutboxItem)>,
}

/// An outbox row's signed envelope, held by the driver until it is
/// finished.
#[derive(Debug)]
struct Held {
    /// The id the envelope carries, which the receipt must name.
    notice_id: Arc<str>,
    envelope: Arc<Vec<u8>>,
    /// When its notice was submitted.
    created_at_ms: Millis,
    /// Its outbox shard.
    shard: u16,
}

/// Waits for the write in progress, or forever when there is none.
async fn written(writing: &mut Option<(Vec<OutboxUpdate>, Write)>) -> Result<(), String> {
    match writing {
        Some((_, write)) => joined(write).await,
        None => std::future::pending().await,
    }
}

/// Waits for the poll in progress, or forever when there is none.
async fn polled(polling: &mut Option<(u64, PollTask)>) -> Result<Polled, String> {
    match polling {
        Some((_, poll)) => joined(poll).await,
        None => std::future::pending().await,
    }
}

async fn joined<T>(task: &mut tokio::task::JoinHandle<Result<T, StoreError>>) -> Result<T, String> {
    match task.await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(panicked) => Err(panicked.to_string()),
    }
}

impl Task {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Input>, shutdown: CancellationToken) {
        let mut ready = Vec::new();
        self.start_poll();
        loop {
            let now = now_ms();
            let deadline = [self.wake_at, self.owned.next_lapse(now), self.next_poll_ms]
                .into_iter()
                .flatten()
                .min();
            let sleep = match deadline {
                Some(at) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                received = queue.recv_many(&mut ready, 1024) => {
                    if received == 0 { break; }
                    for input in ready.drain(..) {
                        self.on_input(input);
                    }
                }
                result = written(&mut self.writing) => self.on_written(result),
                result = polled(&mut self.polling) => self.on_polled(result),
                changed = self.leases.changed(), if self.leases_open => match changed {
                    Ok(()) => {
                        self.owned = self.leases.borrow_and_update().clone();
                        self.on_leases();
                    }
                    // The keeper stopped (shutdown): leases lapse by time.
                    Err(_) => self.leases_open = false,
                },
                () = tokio::time::sleep(sleep) => {
                    self.wake_at = None;
                    self.feed(Event::Tick);
                }
                () = shutdown.cancelled() => break,
            }
            self.start_write();
            self.start_poll();
            self.publish_health();
        }
        // Record what we hold: the write in progress, then one more for the
        // rest (a failure here is logged; the rows are resent after restart).
        if self.writing.is_some() {
            let result = written(&mut self.writing).await;
            self.on_written(result);
        }
        self.write_paused_until = None;
        self.start_write();
        if self.writing.is_some() {
            let result = written(&mut self.writing).await;
            self.on_written(result);
        }
        self.close_spares(b"shutting down");
        if let Some((_, connection)) = self.connection.take() {
            connection.close(quinn::VarInt::from_u32(0), b"shutting down");
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Enqueue(pending, held) => {
                let shard = held.shard;
                if !self.owned.shared && self.loaded.contains(&shard) {
                    if self.owned.usable(shard, now_ms()) {
                        self.hold(pending, held);
                    }
                } else {
                    // Wait for a poll that starts after this row was stored.
                    self.parked.push((self.polls_started, pending, held));
                    self.poll_wanted = true;
                }
            }
            Input::Poll => self.poll_wanted = true,
            Input::Connected(generation, connection) => {
                self.watch_close(generation, connection.clone());
                self.dial_spares(generation, connection.remote_address());
                self.connection = Some((generation, connection));
                self.last_contact_ms = Some(now_ms());
                self.feed(Event::Connected);
            }
            Input::SpareConnected(primary, connection) => {
                if self.connection.as_ref().is_some_and(|(g, _)| *g == primary) {
                    self.generation += 1;
                    self.watch_close(self.generation, connection.clone());
                    tracing::debug!(peer = %self.target.org_id, address = %connection.remote_address(), "sending over another address too");
                    self.spares.push((self.generation, connection));
                } else {
                    connection.close(quinn::VarInt::from_u32(0), b"not needed");
                }
            }
            Input::RedialSpare(primary, address) => {
                let current = self.connection.as_ref().is_some_and(|(g, _)| *g == primary);
                let covered = self
                    .spares
                    .iter()
                    .any(|(_, c)| c.remote_address() == address);
                if current && !covered {
                    self.dial_spare(primary, address);
                }
            }
            Input::ConnectFailed(error) => {
                self.dials = self.dials.wrapping_add(1);
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
                    self.close_spares(b"reconnecting");
                    self.dials = self.dials.wrapping_add(1);
                    tracing::info!(peer = %self.target.org_id, %error, "connection to peer lost");
                    self.feed(Event::Disconnected { error });
                } else if let Some(at) = self.spares.iter().position(|(g, _)| *g == generation) {
                    // Its sends in flight fail one by one and are retried;
                    // the others carry on, and the address is dialled again.
                    let (_, spare) = self.spares.swap_remove(at);
                    spare.close(quinn::VarInt::from_u32(0), b"lost");
                    let address = spare.remote_address();
                    tracing::info!(peer = %self.target.org_id, %address, %error, "connection to another address of the peer lost");
                    if let Some((primary, _)) = &self.connection {
                        self.redial_spare_later(*primary, address);
                    }
                }
            }
            Input::Replied(seq, Ok(reply)) => {
                let verdict = verdict_of(&reply.receipt);
                self.receipts.insert(seq, reply);
                self.last_contact_ms = Some(now_ms());
                self.feed(Event::Receipt { seq, verdict });
            }
            Input::Replied(seq, Err(error)) => self.feed(Event::SendFailed { seq, error }),
            Input::Cancel(seq, reason, answer) => {
                let before = self.updates.len();
                self.feed(Event::Cancel { seq, reason });
                let cancelled = self.updates[before..].iter().any(
                    |update| matches!(update, OutboxUpdate::Failed { seq: failed, .. } if *failed == seq),
                );
                let _ = answer.send(cancelled);
            }
        }
    }

    fn feed(&mut self, event: Event) {
        let now = now_ms();
        self.fence(now);
        let actions = self.machine.handle(now, event);
        for action in actions {
            self.perform(action);
        }
    }

    /// Hands a row of a held shard to the machine.
    fn hold(&mut self, pending: Pending, held: Held) {
        if self.envelopes.contains_key(&pending.seq) {
            return;
        }
        self.by_shard
            .entry(held.shard)
            .or_default()
            .insert(pending.seq);
        self.envelopes.insert(pending.seq, held);
        self.feed(Event::Enqueued(pending));
    }

    /// Stops holding `seq`: finished, or its shard released.
    fn forget(&mut self, seq: i64) -> Option<Held> {
        let held = self.envelopes.remove(&seq)?;
        if let Some(seqs) = self.by_shard.get_mut(&held.shard) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_shard.remove(&held.shard);
            }
        }
        Some(held)
    }

    /// Releases the rows of every shard whose lease is lost or about to
    /// expire un-renewed: from now on another instance may send them.
    fn fence(&mut self, now: Millis) {
        let owned = self.owned.clone();
        self.loaded.retain(|&shard| owned.usable(shard, now));
        let lapsed: Vec<u16> = self
            .by_shard
            .keys()
            .copied()
            .filter(|&shard| !owned.usable(shard, now))
            .collect();
        for shard in lapsed {
            let seqs = self.by_shard.remove(&shard).unwrap_or_default();
            tracing::info!(peer = %self.target.org_id, shard, notices = seqs.len(), "outbox shard released to another instance");
            for seq in &seqs {
                self.envelopes.remove(seq);
                self.receipts.remove(seq);
            }
            let seqs = seqs.into_iter().collect();
            for action in self.machine.handle(now, Event::Release { seqs }) {
                self.perform(action);
            }
        }
    }

    /// The lease keeper published new holdings.
    fn on_leases(&mut self) {
        let now = now_ms();
        self.fence(now);
        if self
            .owned
            .usable_shards(now)
            .iter()
            .any(|shard| !self.loaded.contains(shard))
        {
            self.poll_wanted = true;
        }
    }

    /// Starts a poll when one is wanted or due and none is in progress.
    fn start_poll(&mut self) {
        let now = now_ms();
        let due = self.next_poll_ms.is_some_and(|at| at <= now);
        if self.polling.is_some() || !(self.poll_wanted || due) {
            return;
        }
        self.poll_wanted = false;
        self.next_poll_ms = None;
        self.polls_started += 1;
        let shards = self.owned.usable_shards(now);
        let skip: HashSet<i64> = self
            .envelopes
            .keys()
            .chain(self.finished.keys())
            .copied()
            .chain(self.parked.iter().map(|(_, pending, _)| pending.seq))
            .collect();
        let mark = self.writes_done;
        let store = self.store.clone();
        let recipient = self.target.org_id.clone();
        let poll = tokio::spawn(async move {
            let open = store.open_seqs(&recipient, &shards).await?;
            let shard_of: HashMap<i64, u16> = open
                .into_iter()
                .filter(|(seq, _)| !skip.contains(seq))
                .collect();
            let mut missing: Vec<i64> = shard_of.keys().copied().collect();
            missing.sort_unstable();
            let rows = store.outbox_rows(&missing).await?;
            let rows = rows
                .into_iter()
                .filter_map(|row| shard_of.get(&row.seq).map(|&shard| (shard, row)))
                .collect();
            Ok(Polled { mark, shards, rows })
        });
        self.polling = Some((self.polls_started, poll));
    }

    fn on_polled(&mut self, result: Result<Polled, String>) {
        let Some((number, _)) = self.polling.take() else {
            return;
        };
        let now = now_ms();
        if self.owned.shared {
            let every = i64::try_from(self.settings.poll_interval.as_millis()).unwrap_or(1_000);
            self.next_poll_ms = Some(now + every);
        }
        let polled = match result {
            Ok(polled) => polled,
            Err(error) => {
                tracing::warn!(peer = %self.target.org_id, %error, "cannot look for outbox rows; will retry");
                self.next_poll_ms = Some(now + 1_000);
                return;
            }
        };
        let mut found = Vec::new();
        for (shard, row) in polled.rows {
            let stale = match self.finished.get(&row.seq) {
                Some(Some(write)) => *write > polled.mark,
                Some(None) => true,
                None => false,
            };
            let open = matches!(row.state, OutboxState::Pending | OutboxState::InFlight)
                && row.purged_at_ms.is_none();
            if stale || !open || !self.owned.usable(shard, now) {
                continue;
            }
            found.push(self.pending_of(shard, row));
        }
        let loaded = found.len();
        for &shard in &polled.shards {
            if self.owned.usable(shard, now) {
                self.loaded.insert(shard);
            }
        }
        // Rows handed over at submit go with this poll's rows when the poll
        // started after they were parked (it saw every row stored before
        // them), or when it found a later row of the same citizen (its query
        // ran after they were stored, so it saw their predecessors too: the
        // later row must not go first). A row of a shard the poll did not
        // cover waits for the next poll, which loads the shard's earlier
        // rows.
        let mut newest: HashMap<u64, i64> = HashMap::new();
        for (pending, _) in &found {
            let seq = newest.entry(pending.citizen).or_insert(pending.seq);
            *seq = (*seq).max(pending.seq);
        }
        for (after, pending, held) in std::mem::take(&mut self.parked) {
            if !self.owned.usable(held.shard, now) {
                continue;
            }
            let covered = polled.shards.contains(&held.shard);
            let overtaken = newest
                .get(&pending.citizen)
                .is_some_and(|&seq| seq > pending.seq);
            if covered && (after < number || overtaken) {
                found.push((pending, held));
            } else {
                self.parked.push((after, pending, held));
                if after < number {
                    self.poll_wanted = true;
                }
            }
        }
        // In seq order, so each citizen's earliest row is its head.
        found.sort_by_key(|(pending, _)| pending.seq);
        for (pending, held) in found {
            self.hold(pending, held);
        }
        // Outcomes written before the next poll starts are seen by it.
        self.finished.retain(|_, write| write.is_none());
        if loaded > 0 && std::mem::take(&mut self.first_load) {
            tracing::info!(peer = %self.target.org_id, notices = loaded, "resuming delivery of stored notices");
        }
    }

    /// The machine's view of a row loaded from the store.
    fn pending_of(&self, shard: u16, row: OutboxItem) -> (Pending, Held) {
        // Order is per citizen; a row whose CPR does not parse (it was
        // checked at submit, so only a damaged row) is ordered on its own.
        let envelope = tvaers_proto::open_envelope(&row.envelope);
        let created_at_ms = envelope
            .as_ref()
            .map_or(row.next_attempt_at_ms, |e| e.created_at_ms);
        let citizen = envelope
            .and_then(|e| e.notice)
            .and_then(|n| tvaers_proto::cpr::Cpr::parse(&n.citizen_cpr).ok())
            .map_or(row.seq as u64, |cpr| self.settings.citizens.key(&cpr));
        let pending = Pending {
            seq: row.seq,
            citizen,
            expires_at_ms: row.expires_at_ms,
            attempts: row.attempts,
            not_before_ms: row.next_attempt_at_ms,
        };
        let held = Held {
            notice_id: row.notice_id.into(),
            envelope: Arc::new(row.envelope),
            created_at_ms,
            shard,
        };
        (pending, held)
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Connect => self.connect(),
            Action::Send(seqs) => {
                self.metrics.sent(seqs.len());
                for seq in seqs {
                    self.send(seq);
                }
            }
            Action::MarkInFlight { seq, attempts } => {
                self.updates.push(OutboxUpdate::InFlight { seq, attempts });
            }
            Action::Delivered { seq } => {
                self.finished.insert(seq, None);
                let created_at_ms = self.forget(seq).map(|held| held.created_at_ms);
                let stored = self
                    .receipts
                    .remove(&seq)
                    .map(|reply| reply.stored)
                    .unwrap_or_default();
                let took = created_at_ms.map_or(0, |at| (now_ms() - at).max(0));
                self.metrics
                    .delivered(Duration::from_millis(u64::try_from(took).unwrap_or(0)));
                self.updates.push(OutboxUpdate::Delivered {
                    seq,
                    receipt: stored,
                    at_ms: now_ms(),
                });
            }
            Action::Failed {
                seq,
                reason,
                rejected_by_peer,
            } => {
                self.finished.insert(seq, None);
                self.forget(seq);
                let receipt = self.receipts.remove(&seq).filter(|_| rejected_by_peer);
                // Only the code goes into a label: the text may quote content.
                let code = match &receipt {
                    Some(reply) => reply.receipt.reason_code.as_str(),
                    None if reason == EXPIRED_REASON => "EXPIRED",
                    None => "OTHER",
                };
                self.metrics.failed(code);
                tracing::warn!(peer = %self.target.org_id, seq, %reason, "notice failed permanently");
                self.updates.push(OutboxUpdate::Failed {
                    seq,
                    reason,
                    receipt: receipt.map(|reply| reply.stored),
                    at_ms: now_ms(),
                });
            }
            Action::Retry {
                seq,
                next_attempt_at_ms,
                error,
            } => {
                self.receipts.remove(&seq);
                self.metrics.send_failed();
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
        let org_id = self.target.org_id.clone();
        let Some(address) = self.target.address(self.dials) else {
            let _ = self
                .inputs
                .send(Input::ConnectFailed("the peer has no address".into()));
            return;
        };
        let inputs = self.inputs.clone();
        // A QUIC dial to a dead address only gives up at the idle timeout;
        // the send timeout bounds it so the status says so sooner.
        let timeout = self.settings.send_timeout;
        tokio::spawn(async move {
            let dial = endpoint.connect(address, &org_id);
            let input = match tokio::time::timeout(timeout, dial).await {
                Ok(Ok(connection)) => Input::Connected(generation, connection),
                Ok(Err(error)) => Input::ConnectFailed(error.to_string()),
                Err(_) => Input::ConnectFailed(format!(
                    "cannot reach {address}: no answer within {timeout:?}"
                )),
            };
            let _ = inputs.send(input);
        });
    }

    /// Dials the peer's addresses other than `primary_address` (best
    /// effort: an address that does not answer is left out until the next
    /// connection).
    fn dial_spares(&self, primary: u64, primary_address: SocketAddr) {
        for &address in self
            .target
            .addresses
            .iter()
            .filter(|a| **a != primary_address)
        {
            self.dial_spare(primary, address);
        }
    }

    /// Dials `address` as a spare of the connection `primary`; an address
    /// that does not answer is tried again after [`SPARE_REDIAL`] for as
    /// long as `primary` is up.
    fn dial_spare(&self, primary: u64, address: SocketAddr) {
        let endpoint = self.endpoint.clone();
        let org_id = self.target.org_id.clone();
        let inputs = self.inputs.clone();
        let timeout = self.settings.send_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, endpoint.connect(address, &org_id)).await {
                Ok(Ok(connection)) => {
                    let _ = inputs.send(Input::SpareConnected(primary, connection));
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(peer = %org_id, %address, %error, "another address of the peer does not answer");
                }
                Err(_) => {
                    tracing::debug!(peer = %org_id, %address, "another address of the peer does not answer in time");
                }
            }
            tokio::time::sleep(SPARE_REDIAL).await;
            let _ = inputs.send(Input::RedialSpare(primary, address));
        });
    }

    fn redial_spare_later(&self, primary: u64, address: SocketAddr) {
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_REDIAL).await;
            let _ = inputs.send(Input::RedialSpare(primary, address));
        });
    }

    fn close_spares(&mut self, reason: &[u8]) {
        for (_, spare) in self.spares.drain(..) {
            spare.close(quinn::VarInt::from_u32(0), reason);
        }
    }

    /// The connection for the next send, the peer's addresses in turn, and
    /// for a spare its generation.
    fn next_connection(&mut self) -> Option<(quinn::Connection, Option<u64>)> {
        let (_, primary) = self.connection.as_ref()?;
        self.sends = self.sends.wrapping_add(1);
        Some(match self.sends % (self.spares.len() + 1) {
            0 => (primary.clone(), None),
            n => {
                let (generation, spare) = &self.spares[n - 1];
                (spare.clone(), Some(*generation))
            }
        })
    }

    fn watch_close(&self, generation: u64, connection: quinn::Connection) {
        let inputs = self.inputs.clone();
        let endpoint = self.endpoint.clone();
        let address = connection.remote_address();
        tokio::spawn(async move {
            let error = connection.closed().await;
            let explained = endpoint.explain(address, &error).to_string();
            let _ = inputs.send(Input::Disconnected(generation, explained));
        });
    }

    fn send(&mut self, seq: i64) {
        let connection = self.next_connection();
        let (Some((connection, spare)), Some(held)) = (connection, self.envelopes.get(&seq)) else {
            let _ = self.inputs.send(Input::Replied(
                seq,
                Err("not connected when the send was due".into()),
            ));
            return;
        };
        let envelope = held.envelope.clone();
        let notice_id = held.notice_id.clone();
        let peer = self.target.org_id.clone();
        let endpoint = self.endpoint.clone();
        let address = connection.remote_address();
        let signing_key = self.target.signing_key;
        let timeout = self.settings.send_timeout;
        let limit = self.settings.max_frame_bytes;
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let exchanged = exchange(
                &connection,
                &envelope,
                limit,
                signing_key.as_ref(),
                &notice_id,
            );
            let result = tokio::time::timeout(timeout, exchanged)
                .await
                .unwrap_or_else(|_| Err(Exchange::Timeout(timeout)));
            // A spare that fails a send is dropped (and dialled again later)
            // before more sends wait on it; the main connection's loss is
            // left to its close event, as ever.
            if let (Some(generation), Err(Exchange::Connection(_) | Exchange::Timeout(_))) =
                (spare, &result)
            {
                let _ = inputs.send(Input::Disconnected(
                    generation,
                    format!("a send to {address} failed"),
                ));
            }
            let result = result.map_err(|error| match error {
                Exchange::Connection(e) => endpoint.explain(address, &e).to_string(),
                bad @ (Exchange::NoSigningKey
                | Exchange::BadReceipt(_)
                | Exchange::UnsignedAcceptance
                | Exchange::ReceiptForOtherNotice { .. }) => {
                    // The peer answered, but its answer proves nothing: say
                    // so loudly, the row is retried like a lost reply.
                    tracing::warn!(%peer, seq, %notice_id, error = %bad, "bad receipt; the notice will be sent again");
                    bad.to_string()
                }
                other => other.to_string(),
            });
            let _ = inputs.send(Input::Replied(seq, result));
        });
    }

    /// Hands the outcomes decided so far to a new write, unless one is in
    /// progress (they wait for the next) or writes are paused after a failure.
    fn start_write(&mut self) {
        if self.writing.is_some() || self.updates.is_empty() {
            return;
        }
        if let Some(until) = self.write_paused_until {
            let now = tokio::time::Instant::now();
            if now < until {
                // Wake when the pause ends, whatever else wakes us first: the
                // wake-up time is kept in wall-clock ms, which drifts from the
                // runtime's clock, so an earlier tick may find the pause not
                // yet over and must not leave the outcomes waiting for an
                // event that may never come.
                let left_ms = i64::try_from((until - now).as_millis()).unwrap_or(1_000);
                let retry_at = now_ms() + left_ms + 1;
                self.wake_at = Some(self.wake_at.map_or(retry_at, |at| at.min(retry_at)));
                return;
            }
        }
        self.write_paused_until = None;
        let updates = std::mem::take(&mut self.updates);
        let store = self.store.clone();
        let batch = updates.clone();
        let write = tokio::spawn(async move { store.update_outbox(batch).await });
        self.writing = Some((updates, write));
    }

    fn on_written(&mut self, result: Result<(), String>) {
        let Some((updates, _)) = self.writing.take() else {
            return;
        };
        if result.is_ok() {
            self.writes_done += 1;
            for update in &updates {
                if let OutboxUpdate::Delivered { seq, .. } | OutboxUpdate::Failed { seq, .. } =
                    update
                {
                    if self.polling.is_some() {
                        self.finished.insert(*seq, Some(self.writes_done));
                    } else {
                        // Any later poll starts after this write.
                        self.finished.remove(seq);
                    }
                }
            }
        }
        if let Err(error) = result {
            // The machine already moved on; put the rows back in front of
            // the newer ones so a passing store error loses no outcome and
            // the order of writes is kept.
            tracing::error!(peer = %self.target.org_id, %error, "could not record delivery outcomes; will retry");
            let newer = std::mem::replace(&mut self.updates, updates);
            self.updates.extend(newer);
            let pause = Duration::from_secs(1);
            self.write_paused_until = Some(tokio::time::Instant::now() + pause);
        }
    }

    fn publish_health(&self) {
        let connection = self.machine.connection();
        let health = PeerHealth {
            connected: matches!(connection, ConnectionState::Connected),
            queued: self.machine.queued(),
            in_flight: self.machine.in_flight(),
            last_error: self.machine.last_connect_error().map(str::to_owned),
            last_contact_ms: self.last_contact_ms,
            rtt: self.connection.as_ref().map(|(_, c)| c.rtt()),
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
    #[error(
        "the peer's receipt cannot be checked: no signing key is pinned for it (add its card with `tvaers peer add`)"
    )]
    NoSigningKey,
    #[error("the peer's receipt does not carry a valid signature of its pinned key: {0}")]
    BadReceipt(OpenError),
    #[error("the peer accepted without signing its receipt")]
    UnsignedAcceptance,
    #[error("the peer's receipt names notice {received}, not notice {sent} sent on that stream")]
    ReceiptForOtherNotice { sent: String, received: String },
}

/// A receipt as checked, and the bytes to store for it (the signed
/// receipt, kept as evidence of delivery).
#[derive(Debug)]
struct Reply {
    receipt: v1::Receipt,
    stored: Vec<u8>,
}

/// One notice on one stream: the envelope out, the receipt back.
async fn exchange(
    connection: &quinn::Connection,
    envelope: &[u8],
    limit: u32,
    signing_key: Option<&PublicKey>,
    notice_id: &str,
) -> Result<Reply, Exchange> {
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
    check_reply(response, signing_key, notice_id)
}

/// Checks the peer's answer to the notice `notice_id`: an acceptance must
/// be signed by the peer's pinned key and name that notice, and a receipt
/// naming another one is refused (from a confused or replaying peer it
/// would otherwise be stored as proof of delivery, or cause of failure, of
/// this one).
fn check_reply(
    response: v1::PeerResponse,
    signing_key: Option<&PublicKey>,
    notice_id: &str,
) -> Result<Reply, Exchange> {
    let reply = match response.body {
        Some(v1::peer_response::Body::SignedReceipt(signed)) => {
            let key = signing_key.ok_or(Exchange::NoSigningKey)?;
            let receipt = key.open_receipt(&signed).map_err(Exchange::BadReceipt)?;
            let stored = signed.encode_to_vec();
            Reply { receipt, stored }
        }
        // A receiver answers unsigned only when it could not read the
        // request at all; that can be a rejection, never an acceptance.
        Some(v1::peer_response::Body::Receipt(receipt))
            if receipt.outcome != v1::ReceiptOutcome::Accepted as i32 =>
        {
            let stored = v1::SignedReceipt {
                receipt: receipt.encode_to_vec(),
                signature: Vec::new(),
            }
            .encode_to_vec();
            Reply { receipt, stored }
        }
        Some(v1::peer_response::Body::Receipt(_)) => return Err(Exchange::UnsignedAcceptance),
        None => return Err(Exchange::NoReceipt),
    };
    // A rejection of an envelope the peer could not read or verify (it
    // checks the signature before decoding) names no notice; any other
    // receipt, and every acceptance, must name this one.
    let accepted = reply.receipt.outcome == v1::ReceiptOutcome::Accepted as i32;
    if reply.receipt.notice_id != notice_id && (accepted || !reply.receipt.notice_id.is_empty()) {
        return Err(Exchange::ReceiptForOtherNotice {
            sent: notice_id.to_owned(),
            received: reply.receipt.notice_id,
        });
    }
    Ok(reply)
}

/// Frames a stored signed envelope as a `PeerRequest` without decoding it:
/// field 2 of `PeerRequest` is the signed envelope, so its bytes go in as
/// they are.
fn request_frame(envelope: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let body_len = key_len(2) + encoded_len_varint(envelope.len() as u64) + envelope.len();
    let mut framed = Vec::with_capacity(4 + body_len);
    framed.extend_from_slice(&(body_len as u32).to_be_bytes());
    encode_key(2, WireType::LengthDelimited, &mut framed);
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
    use crate::store::{
        AcceptOutcome, InboxRecord, IncomingNotice, NewNotice, NoticeDelivery, OpenOutbox,
        OutboxFilter, OutboxItem, PurgeReport, StoreCounts, StoredKey, SubmitOutcome, WebhookCount,
        WebhookEvent, WebhookFilter, WebhookUpdate,
    };
    use crate::transport::endpoint::EndpointSettings;
    use crate::transport::tls::{Identity, TrustStore};

    /// A store that only records outcome writes: the first `fail_first`
    /// fail, and each write waits for `gate` when one is given.
    #[derive(Debug, Default)]
    struct OutcomeStore {
        fail_first: usize,
        gate: Option<Arc<tokio::sync::Semaphore>>,
        attempts: Mutex<Vec<Vec<i64>>>,
        written: Mutex<Vec<i64>>,
    }

    fn seq_of(update: &OutboxUpdate) -> i64 {
        match update {
            OutboxUpdate::InFlight { seq, .. }
            | OutboxUpdate::Delivered { seq, .. }
            | OutboxUpdate::Failed { seq, .. }
            | OutboxUpdate::Retry { seq, .. } => *seq,
        }
    }

    #[async_trait::async_trait]
    impl Store for OutcomeStore {
        async fn update_outbox(&self, updates: Vec<OutboxUpdate>) -> Result<(), StoreError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            let seqs: Vec<i64> = updates.iter().map(seq_of).collect();
            let attempt = {
                let mut attempts = self.attempts.lock().unwrap();
                attempts.push(seqs.clone());
                attempts.len()
            };
            if attempt <= self.fail_first {
                return Err(StoreError::Corrupt("disk on fire".into()));
            }
            self.written.lock().unwrap().extend(seqs);
            Ok(())
        }
        async fn submit(&self, _: Vec<NewNotice>) -> Result<Vec<SubmitOutcome>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn undelivered(&self, _: &str) -> Result<Vec<OutboxItem>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn outbox_open(&self) -> Result<Vec<OpenOutbox>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn list_outbox(&self, _: OutboxFilter) -> Result<Vec<OutboxItem>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn reopen_outbox(&self, _: Vec<i64>, _: Millis) -> Result<u64, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn probe_write(&self, _: Millis) -> Result<(), StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn inbox_by_notice(&self, _: &str) -> Result<Vec<InboxRecord>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn delivery(&self, _: &str) -> Result<Option<NoticeDelivery>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn accept_inbox(
            &self,
            _: Vec<IncomingNotice>,
        ) -> Result<Vec<AcceptOutcome>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn inbox_after(
            &self,
            _: u64,
            _: u32,
            _: bool,
            _: Option<&str>,
        ) -> Result<Vec<InboxRecord>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn mark_read(
            &self,
            _: u64,
            _: &str,
            _: &str,
            _: Millis,
            _: &str,
        ) -> Result<bool, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn mark_handled(
            &self,
            _: u64,
            _: &str,
            _: crate::store::Handled,
            _: &str,
        ) -> Result<bool, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn handled_receipts(
            &self,
            _: &str,
        ) -> Result<Vec<crate::store::HandledReceipt>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn handled_since(&self, _: Millis) -> Result<Vec<(u64, String)>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn open_placements(
            &self,
            _: &[String],
        ) -> Result<Vec<crate::store::OpenPlacement>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn escalate(
            &self,
            _: u64,
            _: &str,
            _: &str,
            _: Millis,
            _: bool,
        ) -> Result<bool, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn ack_inbox(&self, _: u64, _: Millis, _: &str) -> Result<bool, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn record_audit(&self, _: Vec<crate::audit::AuditEvent>) -> Result<(), StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn audit_entries(
            &self,
            _: crate::audit::AuditQuery,
        ) -> Result<Vec<crate::audit::AuditEntry>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn counts(&self) -> Result<StoreCounts, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn purge_bodies(
            &self,
            _: Millis,
            _: Millis,
            _: bool,
        ) -> Result<PurgeReport, StoreError> {
            unimplemented!("not used by the driver")
        }

        async fn load_store_key(&self, _: &str) -> Result<Option<StoredKey>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn create_store_key(&self, _: &str, _: StoredKey) -> Result<StoredKey, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn replace_store_key(
            &self,
            _: &str,
            _: &StoredKey,
            _: StoredKey,
        ) -> Result<bool, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn newest_inbox_cursor(&self) -> Result<u64, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn team_inbox_after(
            &self,
            _: &str,
            _: u64,
            _: u32,
            _: bool,
        ) -> Result<Vec<crate::store::InboxRecord>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn newest_position(&self) -> Result<u64, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn claim_webhooks(
            &self,
            _: Millis,
            _: Millis,
            _: u32,
        ) -> Result<Vec<WebhookEvent>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn update_webhooks(&self, _: Vec<WebhookUpdate>) -> Result<(), StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn list_webhooks(&self, _: WebhookFilter) -> Result<Vec<WebhookEvent>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn retry_webhook(&self, _: i64, _: Millis) -> Result<bool, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn webhook_counts(&self) -> Result<Vec<WebhookCount>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn listen_inbox(
            &self,
        ) -> Result<Option<Box<dyn crate::store::InboxListener>>, StoreError> {
            Ok(None)
        }
        async fn close(&self) {}
        async fn care_team(
            &self,
            _: &crate::audit::CitizenRef,
        ) -> Result<Vec<crate::store::CareTeamContact>, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn escalated_since(&self, _: Millis) -> Result<Vec<(u64, String)>, StoreError> {
            unimplemented!("not used by the driver")
        }

        async fn open_seqs(&self, _: &str, _: &[u16]) -> Result<Vec<(i64, u16)>, StoreError> {
            // Nothing stored: the tests hand rows over directly.
            Ok(Vec::new())
        }
        async fn outbox_rows(&self, _: &[i64]) -> Result<Vec<OutboxItem>, StoreError> {
            Ok(Vec::new())
        }
        async fn lease_view(&self, _: Millis) -> Result<crate::lease::LeaseView, StoreError> {
            unimplemented!("not used by the driver")
        }
        async fn apply_leases(
            &self,
            _: &str,
            _: Millis,
            _: i64,
            _: &crate::lease::LeasePlan,
        ) -> Result<Vec<crate::lease::Lease>, StoreError> {
            unimplemented!("not used by the driver")
        }
    }

    /// A driver for a peer nobody listens for. The rows these tests enqueue
    /// have expired or are not yet due, so it never dials.
    fn driver(
        store: Arc<OutcomeStore>,
    ) -> (
        tempfile::TempDir,
        PeerDriver,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::identity::generate(dir.path(), "org-a").unwrap();
        let identity = Identity::load(&keys.certificate, &keys.private_key).unwrap();
        let endpoint = Endpoint::bind(
            &EndpointSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                idle_timeout: Duration::from_secs(30),
            },
            identity,
            TrustStore::new([]),
        )
        .unwrap();
        let settings = DriverSettings {
            machine: MachineConfig {
                rng_seed: 7,
                ..MachineConfig::default()
            },
            send_timeout: Duration::from_secs(10),
            max_frame_bytes: 65_536,
            metrics: Metrics::new(),
            leases: watch::channel(Arc::new(Owned::everything())).1,
            citizens: CitizenKeys::default(),
            poll_interval: Duration::from_secs(1),
        };
        let target = PeerTarget {
            org_id: "org-b".into(),
            addresses: vec!["127.0.0.1:9".parse().unwrap()],
            signing_key: None,
        };
        let shutdown = CancellationToken::new();
        let (driver, task) = PeerDriver::spawn(target, settings, endpoint, store, shutdown.clone());
        (dir, driver, shutdown, task)
    }

    fn expired(seq: i64) -> Pending {
        Pending {
            seq,
            citizen: seq as u64,
            expires_at_ms: 1,
            attempts: 0,
            not_before_ms: 0,
        }
    }

    /// Lets the driver task run until it waits for something.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn new_rows_are_taken_while_an_outcome_write_is_in_progress() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let store = Arc::new(OutcomeStore {
            gate: Some(gate.clone()),
            ..OutcomeStore::default()
        });
        let (_dir, driver, shutdown, task) = driver(store.clone());
        driver.enqueue(expired(1), 0, "n-1", Vec::new(), 0);
        settle().await;
        // The write of seq 1's outcome is held at the gate; a new row due
        // later must still reach the machine meanwhile.
        let mut later = expired(2);
        later.expires_at_ms = now_ms() + 7_200_000;
        later.not_before_ms = now_ms() + 3_600_000;
        driver.enqueue(later, 0, "n-2", Vec::new(), 0);
        settle().await;
        assert_eq!(
            driver.health().queued,
            1,
            "the driver stopped taking input during a write"
        );
        assert!(store.attempts.lock().unwrap().is_empty());
        gate.add_permits(10);
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(*store.written.lock().unwrap(), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_outcome_write_is_retried_in_order_and_loses_nothing() {
        let store = Arc::new(OutcomeStore {
            fail_first: 1,
            ..OutcomeStore::default()
        });
        let (_dir, driver, shutdown, task) = driver(store.clone());
        driver.enqueue(expired(1), 0, "n-1", Vec::new(), 0);
        driver.enqueue(expired(2), 0, "n-2", Vec::new(), 0);
        settle().await;
        driver.enqueue(expired(3), 0, "n-3", Vec::new(), 0);
        settle().await;
        // Paused after the failure: nothing written yet.
        assert_eq!(store.attempts.lock().unwrap().len(), 1);
        assert!(store.written.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        settle().await;
        assert_eq!(*store.written.lock().unwrap(), vec![1, 2, 3]);
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(store.attempts.lock().unwrap().len(), 2);
    }

    #[test]
    fn request_frame_is_a_peer_request_holding_the_signed_envelope() {
        let envelope = v1::Envelope {
            notice_id: "abc".into(),
            sender: "a".into(),
            ..Default::default()
        };
        let signed = v1::SignedEnvelope {
            envelope: envelope.encode_to_vec(),
            signature: vec![7; 64],
        };
        let framed = request_frame(&signed.encode_to_vec());
        let len = u32::from_be_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(len, framed.len() - 4);
        let decoded = v1::PeerRequest::decode(&framed[4..]).unwrap();
        assert_eq!(
            decoded.body,
            Some(v1::peer_request::Body::SignedNotice(signed))
        );
    }

    #[test]
    fn dials_the_addresses_of_a_peer_in_turn() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let target = PeerTarget {
            org_id: "org".into(),
            addresses: vec![a, b],
            signing_key: None,
        };
        let picked: Vec<_> = (0..4).map(|n| target.address(n).unwrap()).collect();
        assert_eq!(picked, [a, b, a, b]);
        let none = PeerTarget {
            org_id: "org".into(),
            addresses: vec![],
            signing_key: None,
        };
        assert_eq!(none.address(0), None);
    }

    fn receipt(notice_id: &str, outcome: v1::ReceiptOutcome) -> v1::Receipt {
        v1::Receipt {
            notice_id: notice_id.into(),
            outcome: outcome as i32,
            receiver: "org-b".into(),
            received_at_ms: 1_000,
            ..v1::Receipt::default()
        }
    }

    fn signed_reply(key: &crate::signing::SigningKey, receipt: &v1::Receipt) -> v1::PeerResponse {
        v1::PeerResponse {
            body: Some(v1::peer_response::Body::SignedReceipt(
                key.sign_receipt(receipt),
            )),
        }
    }

    fn unsigned_reply(receipt: v1::Receipt) -> v1::PeerResponse {
        v1::PeerResponse {
            body: Some(v1::peer_response::Body::Receipt(receipt)),
        }
    }

    fn new_key() -> crate::signing::SigningKey {
        crate::signing::SigningKey::from_pkcs8(
            &crate::signing::SigningKey::generate_pkcs8().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_receipt_must_name_the_notice_sent_on_its_stream() {
        let peer = new_key();
        let pinned = peer.public_key();
        let accepted = receipt("n-sent", v1::ReceiptOutcome::Accepted);
        let reply = check_reply(signed_reply(&peer, &accepted), Some(&pinned), "n-sent").unwrap();
        assert_eq!(reply.receipt, accepted);
        assert!(!reply.stored.is_empty());

        // Validly signed by the pinned key, but about another notice: not
        // proof of delivery of this one.
        let other = receipt("n-other", v1::ReceiptOutcome::Accepted);
        let error = check_reply(signed_reply(&peer, &other), Some(&pinned), "n-sent").unwrap_err();
        assert!(
            matches!(&error, Exchange::ReceiptForOtherNotice { sent, received }
                if sent == "n-sent" && received == "n-other"),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("n-sent") && text.contains("n-other"),
            "{text}"
        );

        // A signed rejection of another notice is refused too: it would
        // fail this one permanently.
        let rejected = receipt("n-other", v1::ReceiptOutcome::RejectedPermanent);
        assert!(matches!(
            check_reply(signed_reply(&peer, &rejected), Some(&pinned), "n-sent"),
            Err(Exchange::ReceiptForOtherNotice { .. })
        ));
        // An acceptance naming no notice proves nothing either.
        let nameless = receipt("", v1::ReceiptOutcome::Accepted);
        assert!(matches!(
            check_reply(signed_reply(&peer, &nameless), Some(&pinned), "n-sent"),
            Err(Exchange::ReceiptForOtherNotice { .. })
        ));
        // A rejection of an envelope whose signature did not verify names
        // no notice (the receiver does not decode what it cannot verify).
        let unverified = receipt("", v1::ReceiptOutcome::RejectedPermanent);
        let reply = check_reply(signed_reply(&peer, &unverified), Some(&pinned), "n-sent").unwrap();
        assert_eq!(reply.receipt, unverified);

        // The id is checked after the signature: a forged receipt stays a
        // bad signature whatever it names.
        let forged = signed_reply(&new_key(), &accepted);
        assert!(matches!(
            check_reply(forged, Some(&pinned), "n-sent"),
            Err(Exchange::BadReceipt(OpenError::BadSignature))
        ));
    }

    #[test]
    fn an_unsigned_rejection_may_name_no_notice_but_not_another() {
        let pinned = new_key().public_key();
        let unreadable = receipt("", v1::ReceiptOutcome::RejectedPermanent);
        let reply = check_reply(unsigned_reply(unreadable), Some(&pinned), "n-sent").unwrap();
        assert!(reply.receipt.notice_id.is_empty());
        let other = receipt("n-other", v1::ReceiptOutcome::RejectedPermanent);
        assert!(matches!(
            check_reply(unsigned_reply(other), Some(&pinned), "n-sent"),
            Err(Exchange::ReceiptForOtherNotice { .. })
        ));
        let accepted = receipt("n-sent", v1::ReceiptOutcome::Accepted);
        assert!(matches!(
            check_reply(unsigned_reply(accepted), Some(&pinned), "n-sent"),
            Err(Exchange::UnsignedAcceptance)
        ));
    }
}
