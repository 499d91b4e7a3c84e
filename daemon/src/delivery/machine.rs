//! The per-peer delivery state machine: sans-IO, in the style of quinn-proto.
//!
//! One [`Machine`] exists per peer organisation. It owns the *decisions* of
//! delivery and nothing else: which outbox rows are sent now, when to open a
//! connection, how long to back off, when a row is delivered, retried or failed
//! for good. It has no clock, no sockets, no database and no tasks: the driver
//! (`delivery::driver`) feeds it [`Event`]s together with the current time and
//! performs the [`Action`]s that [`Machine::handle`] returns, **in the order
//! returned** (each [`Action::MarkInFlight`] precedes the [`Action::Send`] that
//! carries its seq, so an attempt is persisted before it is made).
//!
//! # What it owns
//!
//! * the set of undelivered items (queued or in flight) of this peer, by
//!   outbox `seq`;
//! * the connection state ([`ConnectionState`]) and its backoff;
//! * a seeded random generator for jitter, so tests are deterministic.
//!
//! # Rules
//!
//! 1. **Per-citizen order.** An item is sent only when no item with a smaller
//!    `seq` for the same citizen is still undelivered (queued or in flight) in
//!    this machine. Other citizens never wait. A delivered, permanently failed
//!    or expired item no longer blocks later ones. Consequently at most one item
//!    per citizen is in flight.
//! 2. **Window.** At most [`MachineConfig::max_in_flight`] items are in flight;
//!    eligible items are sent in `seq` order.
//! 3. **Connection.** When an item is eligible, the state is
//!    [`ConnectionState::Disconnected`] and `now >= next_connect_at_ms`, the
//!    machine emits [`Action::Connect`] and becomes `Connecting`.
//!    [`Event::ConnectFailed`] backs off: `delay = backoff(failures)` with
//!    `backoff(n) = min(initial · 2ⁿ, max)`, drawn with "equal jitter" from
//!    `[delay/2, delay]`, then `failures += 1`. [`Event::Connected`] resets
//!    `failures`.
//!
//!    On [`Event::Disconnected`] of an established connection every in-flight
//!    item goes back to the queue, eligible at once (an [`Action::Retry`] with
//!    `next_attempt_at_ms = now` is emitted so the store knows; the attempt
//!    already counted at send is not counted again). Reconnection policy:
//!    * if the connection was *proven* (the peer answered at least one send
//!      with a receipt of any verdict) or nothing was sent on it (an idle
//!      close), the machine reconnects **immediately** if work waits, with
//!      `failures = 0`;
//!    * otherwise (we sent, the peer never answered, the connection dropped:
//!      a crashing peer, or a client certificate refused right after the
//!      handshake) the connection counts as one more failed attempt: the
//!      failure count from before that connection is restored and backed off
//!      as for [`Event::ConnectFailed`]. A flapping peer thus backs off
//!      1 s, 2 s, 4 s… instead of being hammered.
//!
//!    [`Event::Disconnected`] while `Connecting` is treated as
//!    [`Event::ConnectFailed`]; [`Event::ConnectFailed`] while `Connected` and
//!    [`Event::Disconnected`] while `Disconnected` are stale and ignored.
//! 4. **Outcomes.** [`ReceiptVerdict::Accepted`] → [`Action::Delivered`].
//!    [`ReceiptVerdict::RejectedPermanent`] → [`Action::Failed`] with
//!    `rejected_by_peer: true` and reason `"CODE: text"`; never retried.
//!    [`ReceiptVerdict::RejectedTransient`] and [`Event::SendFailed`] (the
//!    attempt was counted at send) → [`Action::Retry`] at
//!    `now + jitter(backoff(attempts - 1))`; until then the item is not sent
//!    and it blocks later items of its citizen. Receipts for unknown seqs are
//!    ignored; transient outcomes for items that are not in flight are ignored.
//!    An `Accepted` or `RejectedPermanent` receipt for a known item that is
//!    queued (a late receipt after a disconnect) is applied.
//! 5. **TTL.** An item not in flight whose `expires_at_ms <= now` fails with
//!    reason [`EXPIRED_REASON`] and `rejected_by_peer: false`. An in-flight
//!    item does not expire until its outcome arrives: an `Accepted` receipt
//!    still delivers it; a transient outcome (or a disconnect) after its
//!    expiry fails it as expired instead of retrying.
//! 6. **Wake-ups.** At the end of every [`Machine::handle`] call that leaves a
//!    future deadline (an item's `not_before_ms`, the earliest expiry of a
//!    queued item, or the next connect time while eligible work waits), the
//!    last action is [`Action::WakeAt`] with the earliest one. The newest
//!    `WakeAt` supersedes earlier ones; a [`Event::Tick`] when nothing is due
//!    is harmless.
//! 7. **Duplicates.** [`Event::Enqueued`] of a seq the machine currently holds
//!    is ignored. The machine forgets finished items, so the driver must not
//!    enqueue a row the store already marked delivered or failed.
//!
//! 8. **Release.** [`Event::Release`] forgets items without any action
//!    (their shard's lease moved to another instance, which sends them
//!    now). Later items of a citizen not in the event are unblocked as for
//!    a finished one; the driver releases a whole shard at once, so a
//!    citizen's items all go together.
//!
//! At start-up the driver should feed every reloaded row (in any order: they
//! are ordered by `seq`) before it delivers [`Event::Connected`]: an item
//! already sent cannot be recalled if a smaller `seq` of its citizen appears
//! later.
//!
//! Every event costs `O(log n)` plus `O(k log n)` for the `k` items it sends,
//! fails or returns; 100 000 queued items are fine.

use std::collections::{BTreeSet, HashMap};

use crate::Millis;

/// The reason recorded when an item outlives its time to live.
pub const EXPIRED_REASON: &str = "expired: not delivered within its time to live";

/// Tuning of one [`Machine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Most items in flight at once (default 256; 0 is treated as 1).
    pub max_in_flight: usize,
    /// Backoff before the first retry, in ms (default 1 000).
    pub backoff_initial_ms: i64,
    /// Largest backoff, in ms (default 300 000 = 5 min).
    pub backoff_max_ms: i64,
    /// Seed of the jitter generator. [`Default`] draws a random one so peers
    /// do not retry in lock-step; tests set a fixed one.
    pub rng_seed: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            rng_seed: fastrand::u64(..),
        }
    }
}

/// An outbox row waiting for delivery to this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Global submission order (the outbox row's seq).
    pub seq: i64,
    /// Opaque per-citizen key (a hash); items of one citizen are delivered in
    /// `seq` order.
    pub citizen: u64,
    /// When the notice stops being worth delivering.
    pub expires_at_ms: Millis,
    /// Sends made so far (from the store at reload; 0 for a new row).
    pub attempts: u32,
    /// Earliest next attempt.
    pub not_before_ms: Millis,
}

/// What the peer answered about one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptVerdict {
    /// The peer stored it.
    Accepted,
    /// The peer refused it for good; never retry.
    RejectedPermanent { code: String, text: String },
    /// The peer refused it for now; retry after backoff.
    RejectedTransient { code: String, text: String },
}

/// Something that happened, fed to [`Machine::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new outbox row, or one reloaded at start-up (any order).
    Enqueued(Pending),
    /// A connection to the peer is up.
    Connected,
    /// Opening a connection failed.
    ConnectFailed { error: String },
    /// The connection was lost; in-flight items go back to the queue.
    Disconnected { error: String },
    /// The peer's answer about one seq.
    Receipt { seq: i64, verdict: ReceiptVerdict },
    /// Stream-level failure for one seq (timeout, reset, bad reply): transient.
    SendFailed { seq: i64, error: String },
    /// An operator gave up on one seq. Applies only while it is queued: once
    /// on the wire, the peer's receipt decides.
    Cancel { seq: i64, reason: String },
    /// This instance no longer holds the lease of these seqs' shard:
    /// forget them (queued or in flight) without an outcome, as if never
    /// enqueued. Another instance sends them now; a late receipt for one is
    /// ignored. Give all of a citizen's held seqs in one event: none of
    /// them is sent on the way.
    Release { seqs: Vec<i64> },
    /// Time passed (the driver woke up).
    Tick,
    /// The daemon is stopping: no new connections and no new sends; outcomes
    /// of in-flight items are still recorded.
    Shutdown,
}

/// A decision for the driver to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection now; answer with `Connected` or `ConnectFailed`.
    Connect,
    /// Send these seqs now (in `seq` order); they are in flight.
    Send(Vec<i64>),
    /// Persist: sent, with this new attempt count (one per sent seq, before
    /// the `Send` that carries it).
    MarkInFlight { seq: i64, attempts: u32 },
    /// The peer accepted it: persist the receipt.
    Delivered { seq: i64 },
    /// Permanent failure: persist, never retry.
    Failed {
        seq: i64,
        reason: String,
        rejected_by_peer: bool,
    },
    /// Persist: back to pending, next attempt not before `next_attempt_at_ms`.
    Retry {
        seq: i64,
        next_attempt_at_ms: Millis,
        error: String,
    },
    /// Deliver a `Tick` no later than this (supersedes earlier `WakeAt`s).
    WakeAt(Millis),
}

/// The machine's view of its connection to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// No connection. `next_connect_at_ms` is the earliest time a `Connect`
    /// may be emitted (`Millis::MIN` initially); `failures` counts
    /// consecutive failed attempts.
    Disconnected {
        next_connect_at_ms: Millis,
        failures: u32,
        last_error: Option<String>,
    },
    /// `Connect` was emitted; waiting for `Connected` or `ConnectFailed`.
    Connecting,
    /// A connection is up.
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Disconnected,
    Connecting,
    Connected,
}

#[derive(Debug, Clone)]
struct Item {
    citizen: u64,
    expires_at_ms: Millis,
    attempts: u32,
    not_before_ms: Millis,
}

/// The per-peer delivery state machine; see the module documentation.
#[derive(Debug)]
pub struct Machine {
    config: MachineConfig,
    rng: fastrand::Rng,
    /// Every undelivered item, queued or in flight.
    items: HashMap<i64, Item>,
    /// Undelivered seqs per citizen; the first one is the citizen's head, the
    /// only one that may be sent.
    citizens: HashMap<u64, BTreeSet<i64>>,
    /// Queued heads whose `not_before` has passed: sendable now.
    ready: BTreeSet<i64>,
    /// Queued heads whose `not_before` is in the future, by time.
    waiting: BTreeSet<(Millis, i64)>,
    /// Every queued (not in flight) item, by expiry.
    expiry: BTreeSet<(Millis, i64)>,
    in_flight: BTreeSet<i64>,
    conn: Conn,
    failures: u32,
    /// `failures` as it was before the current connection came up, restored
    /// if that connection turns out unproven.
    failures_at_connect: u32,
    next_connect_at: Millis,
    last_error: Option<String>,
    sent_on_connection: bool,
    proven: bool,
    shutting_down: bool,
}

impl Machine {
    /// A machine with nothing queued, disconnected, free to connect at once.
    pub fn new(config: MachineConfig) -> Self {
        let rng = fastrand::Rng::with_seed(config.rng_seed);
        Self {
            config,
            rng,
            items: HashMap::new(),
            citizens: HashMap::new(),
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            expiry: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            conn: Conn::Disconnected,
            failures: 0,
            failures_at_connect: 0,
            next_connect_at: Millis::MIN,
            last_error: None,
            sent_on_connection: false,
            proven: false,
            shutting_down: false,
        }
    }

    /// Apply one event at time `now` and return the decisions, in order.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Enqueued(pending) => self.enqueue(now, pending),
            Event::Connected => self.on_connected(),
            Event::ConnectFailed { error } => {
                if self.conn != Conn::Connected {
                    self.connection_failed(now, error);
                }
            }
            Event::Disconnected { error } => self.on_disconnected(now, error, &mut out),
            Event::Receipt { seq, verdict } => self.on_receipt(now, seq, verdict, &mut out),
            Event::SendFailed { seq, error } => self.transient(now, seq, error, &mut out),
            Event::Cancel { seq, reason } => {
                if self.items.contains_key(&seq) && !self.in_flight.contains(&seq) {
                    self.finish(now, seq);
                    out.push(Action::Failed {
                        seq,
                        reason,
                        rejected_by_peer: false,
                    });
                }
            }
            Event::Release { mut seqs } => {
                // Latest first, so forgetting one never makes a later one
                // of its citizen the head (and sendable) meanwhile.
                seqs.sort_unstable_by(|a, b| b.cmp(a));
                for seq in seqs {
                    self.finish(now, seq);
                }
            }
            Event::Tick => {}
            Event::Shutdown => self.shutting_down = true,
        }
        self.expire(now, &mut out);
        self.promote(now);
        self.send(&mut out);
        self.maybe_connect(now, &mut out);
        if let Some(at) = self.next_deadline() {
            out.push(Action::WakeAt(at));
        }
        out
    }

    /// The connection state, for status reports.
    pub fn connection(&self) -> ConnectionState {
        match self.conn {
            Conn::Disconnected => ConnectionState::Disconnected {
                next_connect_at_ms: self.next_connect_at,
                failures: self.failures,
                last_error: self.last_error.clone(),
            },
            Conn::Connecting => ConnectionState::Connecting,
            Conn::Connected => ConnectionState::Connected,
        }
    }

    /// Items held and not in flight (eligible, backing off or blocked).
    pub fn queued(&self) -> usize {
        self.items.len() - self.in_flight.len()
    }

    /// Items sent and awaiting their outcome.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The error of the last failed connection attempt or lost connection;
    /// cleared when a connection comes up.
    pub fn last_connect_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    // ----- events -----

    fn enqueue(&mut self, now: Millis, p: Pending) {
        if self.items.contains_key(&p.seq) {
            return;
        }
        let seq = p.seq;
        let set = self.citizens.entry(p.citizen).or_default();
        let prev_head = set.first().copied();
        set.insert(seq);
        self.items.insert(
            seq,
            Item {
                citizen: p.citizen,
                expires_at_ms: p.expires_at_ms,
                attempts: p.attempts,
                not_before_ms: p.not_before_ms,
            },
        );
        self.expiry.insert((p.expires_at_ms, seq));
        match prev_head {
            Some(head) if head < seq => {} // waits behind its citizen's head
            Some(head) => {
                // The new item comes first (start-up reload out of order):
                // the old head is no longer sendable.
                if !self.in_flight.contains(&head) {
                    self.unschedule(head);
                }
                self.schedule(now, seq);
            }
            None => self.schedule(now, seq),
        }
    }

    fn on_connected(&mut self) {
        if self.conn == Conn::Connected {
            return;
        }
        self.conn = Conn::Connected;
        self.failures_at_connect = self.failures;
        self.failures = 0;
        self.last_error = None;
        self.sent_on_connection = false;
        self.proven = false;
    }

    fn on_disconnected(&mut self, now: Millis, error: String, out: &mut Vec<Action>) {
        match self.conn {
            Conn::Disconnected => {}
            Conn::Connecting => self.connection_failed(now, error),
            Conn::Connected => {
                let returned = std::mem::take(&mut self.in_flight);
                for seq in returned {
                    let Some(item) = self.items.get(&seq) else {
                        continue;
                    };
                    if item.expires_at_ms <= now {
                        self.finish(now, seq);
                        out.push(expired(seq));
                    } else {
                        self.requeue(now, seq, now);
                        out.push(Action::Retry {
                            seq,
                            next_attempt_at_ms: now,
                            error: format!("connection lost: {error}"),
                        });
                    }
                }
                if self.proven || !self.sent_on_connection {
                    self.conn = Conn::Disconnected;
                    self.failures = 0;
                    self.next_connect_at = now;
                    self.last_error = Some(error);
                } else {
                    self.failures = self.failures_at_connect;
                    self.connection_failed(now, error);
                }
            }
        }
    }

    fn on_receipt(
        &mut self,
        now: Millis,
        seq: i64,
        verdict: ReceiptVerdict,
        out: &mut Vec<Action>,
    ) {
        if !self.items.contains_key(&seq) {
            return;
        }
        if self.conn == Conn::Connected && self.in_flight.contains(&seq) {
            self.proven = true;
        }
        match verdict {
            ReceiptVerdict::Accepted => {
                self.finish(now, seq);
                out.push(Action::Delivered { seq });
            }
            ReceiptVerdict::RejectedPermanent { code, text } => {
                self.finish(now, seq);
                out.push(Action::Failed {
                    seq,
                    reason: format!("{code}: {text}"),
                    rejected_by_peer: true,
                });
            }
            ReceiptVerdict::RejectedTransient { code, text } => {
                self.transient(now, seq, format!("{code}: {text}"), out);
            }
        }
    }

    /// A transient outcome for `seq`: retry after its backoff, or fail it if
    /// it expired meanwhile. Ignored unless `seq` is in flight.
    fn transient(&mut self, now: Millis, seq: i64, error: String, out: &mut Vec<Action>) {
        if !self.in_flight.contains(&seq) {
            return;
        }
        let Some(item) = self.items.get(&seq) else {
            return;
        };
        if item.expires_at_ms <= now {
            self.finish(now, seq);
            out.push(expired(seq));
            return;
        }
        let n = item.attempts.saturating_sub(1);
        let next = now.saturating_add(self.jittered_backoff(n));
        self.in_flight.remove(&seq);
        self.requeue(now, seq, next);
        out.push(Action::Retry {
            seq,
            next_attempt_at_ms: next,
            error,
        });
    }

    fn connection_failed(&mut self, now: Millis, error: String) {
        let delay = self.jittered_backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.next_connect_at = now.saturating_add(delay);
        self.conn = Conn::Disconnected;
        self.last_error = Some(error);
    }

    // ----- per-handle steps -----

    fn expire(&mut self, now: Millis, out: &mut Vec<Action>) {
        while let Some(&(at, seq)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.finish(now, seq);
            out.push(expired(seq));
        }
    }

    fn promote(&mut self, now: Millis) {
        while let Some(&(at, seq)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(seq);
        }
    }

    fn send(&mut self, out: &mut Vec<Action>) {
        if self.conn != Conn::Connected || self.shutting_down {
            return;
        }
        let max = self.config.max_in_flight.max(1);
        let mut batch = Vec::new();
        while self.in_flight.len() < max {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            let Some(item) = self.items.get_mut(&seq) else {
                continue;
            };
            item.attempts = item.attempts.saturating_add(1);
            self.expiry.remove(&(item.expires_at_ms, seq));
            self.in_flight.insert(seq);
            out.push(Action::MarkInFlight {
                seq,
                attempts: item.attempts,
            });
            batch.push(seq);
        }
        if !batch.is_empty() {
            self.sent_on_connection = true;
            out.push(Action::Send(batch));
        }
    }

    fn maybe_connect(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.conn == Conn::Disconnected
            && !self.shutting_down
            && !self.ready.is_empty()
            && now >= self.next_connect_at
        {
            self.conn = Conn::Connecting;
            out.push(Action::Connect);
        }
    }

    fn next_deadline(&self) -> Option<Millis> {
        let mut at = self.waiting.first().map(|&(t, _)| t);
        if let Some(&(t, _)) = self.expiry.first() {
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        if self.conn == Conn::Disconnected && !self.shutting_down && !self.ready.is_empty() {
            let t = self.next_connect_at;
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        at
    }

    // ----- bookkeeping -----

    /// Make the queued head `seq` sendable now or at its `not_before`.
    fn schedule(&mut self, now: Millis, seq: i64) {
        let Some(item) = self.items.get(&seq) else {
            return;
        };
        if item.not_before_ms <= now {
            self.ready.insert(seq);
        } else {
            self.waiting.insert((item.not_before_ms, seq));
        }
    }

    fn unschedule(&mut self, seq: i64) {
        if let Some(item) = self.items.get(&seq) {
            self.waiting.remove(&(item.not_before_ms, seq));
        }
        self.ready.remove(&seq);
    }

    /// Put a formerly in-flight `seq` (already removed from `in_flight`) back
    /// in the queue, not before `not_before`.
    fn requeue(&mut self, now: Millis, seq: i64, not_before: Millis) {
        let Some(item) = self.items.get_mut(&seq) else {
            return;
        };
        item.not_before_ms = not_before;
        self.expiry.insert((item.expires_at_ms, seq));
        let citizen = item.citizen;
        if self.head_of(citizen) == Some(seq) {
            self.schedule(now, seq);
        }
    }

    fn head_of(&self, citizen: u64) -> Option<i64> {
        self.citizens.get(&citizen).and_then(|s| s.first()).copied()
    }

    /// Forget `seq` (delivered, failed or expired) and unblock its citizen.
    fn finish(&mut self, now: Millis, seq: i64) {
        let Some(item) = self.items.get(&seq) else {
            return;
        };
        let (citizen, expires_at) = (item.citizen, item.expires_at_ms);
        if !self.in_flight.remove(&seq) {
            self.expiry.remove(&(expires_at, seq));
            self.unschedule(seq);
        }
        self.items.remove(&seq);
        let Some(set) = self.citizens.get_mut(&citizen) else {
            return;
        };
        let was_head = set.first() == Some(&seq);
        set.remove(&seq);
        match set.first().copied() {
            None => {
                self.citizens.remove(&citizen);
            }
            Some(next) => {
                if was_head && !self.in_flight.contains(&next) {
                    self.schedule(now, next);
                }
            }
        }
    }

    fn jittered_backoff(&mut self, n: u32) -> i64 {
        let delay = backoff(
            self.config.backoff_initial_ms,
            self.config.backoff_max_ms,
            n,
        );
        if delay <= 0 {
            0
        } else {
            self.rng.i64(delay / 2..=delay)
        }
    }
}

/// `min(initial · 2ⁿ, max)`, without overflow.
pub(crate) fn backoff(initial: i64, max: i64, n: u32) -> i64 {
    let factor = if n >= 62 { i64::MAX } else { 1_i64 << n };
    initial.max(0).saturating_mul(factor).min(max.max(0))
}

fn expired(seq: i64) -> Action {
    Action::Failed {
        seq,
        reason: EXPIRED_REASON.to_owned(),
        rejected_by_peer: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FAR: Millis = 1_000_000_000;

    fn cfg(seed: u64) -> MachineConfig {
        MachineConfig {
            rng_seed: seed,
            ..MachineConfig::default()
        }
    }

    fn item(seq: i64, citizen: u64) -> Pending {
        Pending {
            seq,
            citizen,
            expires_at_ms: FAR,
            attempts: 0,
            not_before_ms: 0,
        }
    }

    fn sent(actions: &[Action]) -> Vec<i64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(seqs) => Some(seqs.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn wake(actions: &[Action]) -> Option<Millis> {
        actions.iter().rev().find_map(|a| match a {
            Action::WakeAt(t) => Some(*t),
            _ => None,
        })
    }

    fn has_connect(actions: &[Action]) -> bool {
        actions.contains(&Action::Connect)
    }

    fn accepted(seq: i64) -> Event {
        Event::Receipt {
            seq,
            verdict: ReceiptVerdict::Accepted,
        }
    }

    /// A connected machine holding `items`, all sent if the window allows;
    /// returns the machine and the actions of `Connected`.
    fn connected(config: MachineConfig, items: &[Pending]) -> (Machine, Vec<Action>) {
        let mut m = Machine::new(config);
        for p in items {
            m.handle(0, Event::Enqueued(p.clone()));
        }
        let a = m.handle(0, Event::Connected);
        (m, a)
    }

    #[test]
    fn released_items_are_forgotten_without_an_outcome() {
        let mut m = Machine::new(cfg(1));
        m.handle(0, Event::Enqueued(item(1, 7)));
        m.handle(0, Event::Enqueued(item(2, 7)));
        m.handle(0, Event::Enqueued(item(3, 8)));
        let a = m.handle(0, Event::Connected);
        assert_eq!(sent(&a), vec![1, 3]);
        // Seq 2 queued behind seq 1 in flight: both released together,
        // and seq 2 is not sent on the way.
        let a = m.handle(10, Event::Release { seqs: vec![1, 2] });
        assert!(
            a.iter().all(|action| matches!(action, Action::WakeAt(_))),
            "{a:?}"
        );
        assert_eq!((m.queued(), m.in_flight()), (0, 1));
        // A late receipt for a released seq is ignored.
        assert!(m.handle(20, accepted(1)).is_empty());
        let a = m.handle(20, accepted(3));
        assert_eq!(a, vec![Action::Delivered { seq: 3 }]);
        assert_eq!((m.queued(), m.in_flight()), (0, 0));
    }

    #[test]
    fn backoff_while_peer_down_doubles_with_bounded_jitter() {
        for seed in 0..20 {
            let mut m = Machine::new(cfg(seed));
            let a = m.handle(0, Event::Enqueued(item(1, 7)));
            assert!(has_connect(&a), "{a:?}");
            assert_eq!(m.connection(), ConnectionState::Connecting);
            let mut now = 0;
            for n in 0..12_u32 {
                let a = m.handle(
                    now,
                    Event::ConnectFailed {
                        error: format!("refused {n}"),
                    },
                );
                assert!(!has_connect(&a), "{a:?}");
                let nominal = (1_000_i64 << n).min(300_000);
                let ConnectionState::Disconnected {
                    next_connect_at_ms,
                    failures,
                    last_error,
                } = m.connection()
                else {
                    panic!("not disconnected: {:?}", m.connection());
                };
                assert_eq!(failures, n + 1);
                assert_eq!(last_error.as_deref(), Some(format!("refused {n}").as_str()));
                assert_eq!(
                    m.last_connect_error(),
                    Some(format!("refused {n}").as_str())
                );
                let delay = next_connect_at_ms - now;
                assert!(
                    delay >= nominal / 2 && delay <= nominal,
                    "attempt {n}: delay {delay} outside [{}, {nominal}]",
                    nominal / 2
                );
                assert_eq!(wake(&a), Some(next_connect_at_ms));
                // Too early: nothing.
                let a = m.handle(next_connect_at_ms - 1, Event::Tick);
                assert!(!has_connect(&a), "{a:?}");
                assert_eq!(wake(&a), Some(next_connect_at_ms));
                // On time: connect.
                now = next_connect_at_ms;
                let a = m.handle(now, Event::Tick);
                assert!(has_connect(&a), "{a:?}");
            }
            // Success resets the count.
            let a = m.handle(now, Event::Connected);
            assert_eq!(sent(&a), vec![1]);
            assert_eq!(m.last_connect_error(), None);
            m.handle(now, accepted(1));
            m.handle(now, Event::Enqueued(item(2, 7)));
            m.handle(now, Event::Disconnected { error: "x".into() });
            let a = m.handle(now, Event::ConnectFailed { error: "y".into() });
            let ConnectionState::Disconnected {
                next_connect_at_ms,
                failures,
                ..
            } = m.connection()
            else {
                panic!("not disconnected");
            };
            assert_eq!(failures, 1);
            assert!((500..=1_000).contains(&(next_connect_at_ms - now)), "{a:?}");
        }
    }

    #[test]
    fn same_citizen_waits_for_first_receipt() {
        let (mut m, a) = connected(cfg(1), &[item(1, 42), item(2, 42)]);
        assert_eq!(sent(&a), vec![1]);
        assert!(a.contains(&Action::MarkInFlight {
            seq: 1,
            attempts: 1
        }));
        assert_eq!(m.queued(), 1);
        assert_eq!(m.in_flight(), 1);
        let a = m.handle(10, Event::Tick);
        assert!(sent(&a).is_empty(), "{a:?}");
        let a = m.handle(20, accepted(1));
        assert_eq!(a[0], Action::Delivered { seq: 1 });
        assert_eq!(sent(&a), vec![2]);
        let a = m.handle(30, accepted(2));
        assert_eq!(a, vec![Action::Delivered { seq: 2 }]);
        assert_eq!(m.queued() + m.in_flight(), 0);
    }

    #[test]
    fn other_citizen_is_not_held_back() {
        let (mut m, a) = connected(cfg(1), &[item(1, 1), item(2, 1), item(3, 2)]);
        assert_eq!(sent(&a), vec![1, 3]);
        // Enqueued while connected: sent at once if its citizen is free.
        let a = m.handle(5, Event::Enqueued(item(4, 3)));
        assert_eq!(sent(&a), vec![4]);
        let a = m.handle(5, Event::Enqueued(item(5, 2)));
        assert!(sent(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn window_limit_is_respected() {
        let config = MachineConfig {
            max_in_flight: 3,
            ..cfg(1)
        };
        let items: Vec<_> = (1..=10).map(|s| item(s, s as u64)).collect();
        let (mut m, a) = connected(config, &items);
        assert_eq!(sent(&a), vec![1, 2, 3]);
        assert_eq!(m.in_flight(), 3);
        assert_eq!(m.queued(), 7);
        let a = m.handle(1, Event::Tick);
        assert!(sent(&a).is_empty());
        let a = m.handle(2, accepted(2));
        assert_eq!(sent(&a), vec![4]);
        let a = m.handle(
            3,
            Event::Receipt {
                seq: 1,
                verdict: ReceiptVerdict::RejectedPermanent {
                    code: "X".into(),
                    text: "y".into(),
                },
            },
        );
        assert_eq!(sent(&a), vec![5]);
        assert_eq!(m.in_flight(), 3);
    }

    #[test]
    fn ttl_expiry_fails_item_and_unblocks_next_of_citizen() {
        let mut m = Machine::new(cfg(3));
        let mut first = item(1, 9);
        first.expires_at_ms = 5_000;
        let a = m.handle(0, Event::Enqueued(first));
        assert!(has_connect(&a));
        assert_eq!(wake(&a), Some(5_000));
        m.handle(0, Event::Enqueued(item(2, 9)));
        // The peer stays down long enough for item 1 to expire.
        let a = m.handle(
            0,
            Event::ConnectFailed {
                error: "down".into(),
            },
        );
        assert!(wake(&a).unwrap() <= 1_000);
        let a = m.handle(4_999, Event::Tick);
        assert!(!a.iter().any(|x| matches!(x, Action::Failed { .. })));
        // A late Tick still fails it (now >= expires).
        let a = m.handle(5_200, Event::Tick);
        assert!(a.contains(&Action::Failed {
            seq: 1,
            reason: EXPIRED_REASON.into(),
            rejected_by_peer: false,
        }));
        assert_eq!(m.queued(), 1);
        let a = m.handle(5_300, Event::Connected);
        assert_eq!(sent(&a), vec![2]);
    }

    #[test]
    fn in_flight_item_expires_only_with_its_outcome() {
        let mut a1 = item(1, 1);
        a1.expires_at_ms = 100;
        let mut a2 = item(2, 2);
        a2.expires_at_ms = 100;
        let (mut m, a) = connected(cfg(1), &[a1, a2]);
        assert_eq!(sent(&a), vec![1, 2]);
        let a = m.handle(500, Event::Tick);
        assert!(
            !a.iter().any(|x| matches!(x, Action::Failed { .. })),
            "{a:?}"
        );
        let a = m.handle(600, accepted(1));
        assert_eq!(a, vec![Action::Delivered { seq: 1 }]);
        let a = m.handle(
            700,
            Event::SendFailed {
                seq: 2,
                error: "timeout".into(),
            },
        );
        assert_eq!(
            a,
            vec![Action::Failed {
                seq: 2,
                reason: EXPIRED_REASON.into(),
                rejected_by_peer: false,
            }]
        );
        assert_eq!(m.queued() + m.in_flight(), 0);
    }

    #[test]
    fn permanent_rejection_stops_retries_and_records_reason() {
        let (mut m, a) = connected(cfg(1), &[item(1, 5), item(2, 5)]);
        assert_eq!(sent(&a), vec![1]);
        let a = m.handle(
            10,
            Event::Receipt {
                seq: 1,
                verdict: ReceiptVerdict::RejectedPermanent {
                    code: "INVALID_FIELD".into(),
                    text: "cpr malformed".into(),
                },
            },
        );
        assert_eq!(
            a[0],
            Action::Failed {
                seq: 1,
                reason: "INVALID_FIELD: cpr malformed".into(),
                rejected_by_peer: true,
            }
        );
        assert_eq!(sent(&a), vec![2]);
        // Never again: seq 1 is forgotten, later events about it are ignored.
        let a = m.handle(
            20,
            Event::SendFailed {
                seq: 1,
                error: "late".into(),
            },
        );
        assert!(a.is_empty(), "{a:?}");
        let a = m.handle(10_000_000, Event::Tick);
        assert!(sent(&a).is_empty() && !a.iter().any(|x| matches!(x, Action::Retry { .. })));
    }

    #[test]
    fn transient_rejection_retries_after_backoff_and_blocks_citizen() {
        let (mut m, a) = connected(cfg(11), &[item(1, 5), item(2, 5), item(3, 6)]);
        assert_eq!(sent(&a), vec![1, 3]);
        let a = m.handle(
            1_000,
            Event::Receipt {
                seq: 1,
                verdict: ReceiptVerdict::RejectedTransient {
                    code: "BUSY".into(),
                    text: "try later".into(),
                },
            },
        );
        let Some(Action::Retry {
            seq: 1,
            next_attempt_at_ms: next,
            error,
        }) = a.first().cloned()
        else {
            panic!("{a:?}");
        };
        assert_eq!(error, "BUSY: try later");
        assert!((1_500..=2_000).contains(&next), "{next}");
        assert!(sent(&a).is_empty(), "item 2 must wait behind item 1: {a:?}");
        assert_eq!(wake(&a), Some(next));
        let a = m.handle(next - 1, Event::Tick);
        assert!(sent(&a).is_empty());
        let a = m.handle(next, Event::Tick);
        assert_eq!(sent(&a), vec![1]);
        assert!(a.contains(&Action::MarkInFlight {
            seq: 1,
            attempts: 2
        }));
        // Second failure: backoff(1) in [1 s, 2 s].
        let now = next + 10;
        let a = m.handle(
            now,
            Event::SendFailed {
                seq: 1,
                error: "reset".into(),
            },
        );
        let Some(Action::Retry {
            next_attempt_at_ms: next2,
            ..
        }) = a.first().cloned()
        else {
            panic!("{a:?}");
        };
        assert!((now + 1_000..=now + 2_000).contains(&next2), "{next2}");
        let a = m.handle(next2, Event::Tick);
        assert_eq!(sent(&a), vec![1]);
        let a = m.handle(next2, accepted(1));
        assert_eq!(sent(&a), vec![2]);
    }

    #[test]
    fn disconnect_returns_in_flight_items_and_resends_after_connected() {
        let (mut m, a) = connected(cfg(1), &[item(1, 1), item(2, 2), item(3, 3)]);
        assert_eq!(sent(&a), vec![1, 2, 3]);
        m.handle(10, accepted(1)); // the connection is proven
        let a = m.handle(
            20,
            Event::Disconnected {
                error: "idle".into(),
            },
        );
        assert_eq!(
            a,
            vec![
                Action::Retry {
                    seq: 2,
                    next_attempt_at_ms: 20,
                    error: "connection lost: idle".into()
                },
                Action::Retry {
                    seq: 3,
                    next_attempt_at_ms: 20,
                    error: "connection lost: idle".into()
                },
                Action::Connect,
                Action::WakeAt(FAR),
            ]
        );
        assert_eq!(m.in_flight(), 0);
        assert_eq!(m.queued(), 2);
        let a = m.handle(30, Event::Connected);
        assert_eq!(
            a,
            vec![
                Action::MarkInFlight {
                    seq: 2,
                    attempts: 2
                },
                Action::MarkInFlight {
                    seq: 3,
                    attempts: 2
                },
                Action::Send(vec![2, 3]),
            ]
        );
        // Everything is in flight: in-flight items do not expire, so there is
        // no deadline and no WakeAt.
        assert!(wake(&a).is_none());
    }

    #[test]
    fn unproven_connection_drop_backs_off() {
        let (mut m, a) = connected(cfg(2), &[item(1, 1)]);
        assert_eq!(sent(&a), vec![1]);
        // Dropped before any receipt (e.g. certificate refused after handshake).
        let a = m.handle(
            100,
            Event::Disconnected {
                error: "refused".into(),
            },
        );
        assert!(!has_connect(&a), "{a:?}");
        let ConnectionState::Disconnected {
            next_connect_at_ms,
            failures: 1,
            ..
        } = m.connection()
        else {
            panic!("{:?}", m.connection());
        };
        assert!((600..=1_100).contains(&next_connect_at_ms));
        assert_eq!(wake(&a), Some(next_connect_at_ms));
        let a = m.handle(next_connect_at_ms, Event::Tick);
        assert!(has_connect(&a));
        m.handle(next_connect_at_ms, Event::Connected);
        let a = m.handle(
            next_connect_at_ms,
            Event::Disconnected {
                error: "refused".into(),
            },
        );
        assert!(!has_connect(&a));
        let ConnectionState::Disconnected {
            next_connect_at_ms: n2,
            failures: 2,
            ..
        } = m.connection()
        else {
            panic!("{:?}", m.connection());
        };
        assert!((next_connect_at_ms + 1_000..=next_connect_at_ms + 2_000).contains(&n2));
    }

    #[test]
    fn duplicate_enqueued_is_ignored() {
        let mut m = Machine::new(cfg(1));
        let a = m.handle(0, Event::Enqueued(item(1, 1)));
        assert!(has_connect(&a));
        let a = m.handle(0, Event::Enqueued(item(1, 1)));
        assert_eq!(a, vec![Action::WakeAt(FAR)]);
        assert_eq!(m.queued(), 1);
        let a = m.handle(1, Event::Connected);
        assert_eq!(sent(&a), vec![1]);
        let a = m.handle(2, Event::Enqueued(item(1, 1)));
        assert!(sent(&a).is_empty());
        assert_eq!((m.queued(), m.in_flight()), (0, 1));
        // Receipts for unknown seqs are ignored.
        let a = m.handle(3, accepted(99));
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn reload_with_future_not_before_waits_until_then() {
        let mut m = Machine::new(cfg(1));
        // Reloaded out of order; the later one has a stored retry time.
        let mut later = item(8, 4);
        later.attempts = 3;
        later.not_before_ms = 10_000;
        let a = m.handle(0, Event::Enqueued(later));
        assert!(!has_connect(&a), "{a:?}");
        assert_eq!(wake(&a), Some(10_000));
        let a = m.handle(0, Event::Enqueued(item(5, 4)));
        assert!(has_connect(&a), "seq 5 comes first and is eligible: {a:?}");
        let a = m.handle(1, Event::Connected);
        assert_eq!(sent(&a), vec![5]);
        let a = m.handle(2, accepted(5));
        assert!(sent(&a).is_empty(), "seq 8 not before 10 000: {a:?}");
        assert_eq!(wake(&a), Some(10_000));
        let a = m.handle(9_999, Event::Tick);
        assert!(sent(&a).is_empty());
        let a = m.handle(10_000, Event::Tick);
        assert_eq!(sent(&a), vec![8]);
        assert!(a.contains(&Action::MarkInFlight {
            seq: 8,
            attempts: 4
        }));
    }

    #[test]
    fn reload_alone_in_future_connects_only_then() {
        let mut m = Machine::new(cfg(1));
        let mut p = item(1, 1);
        p.not_before_ms = 5_000;
        let a = m.handle(0, Event::Enqueued(p));
        assert_eq!(a, vec![Action::WakeAt(5_000)]);
        let a = m.handle(4_999, Event::Tick);
        assert_eq!(a, vec![Action::WakeAt(5_000)]);
        let a = m.handle(5_000, Event::Tick);
        assert_eq!(a, vec![Action::Connect, Action::WakeAt(FAR)]);
    }

    #[test]
    fn shutdown_stops_connecting_and_sending() {
        let mut m = Machine::new(cfg(1));
        m.handle(0, Event::Shutdown);
        let a = m.handle(0, Event::Enqueued(item(1, 1)));
        assert!(!has_connect(&a));
        let a = m.handle(1, Event::Connected);
        assert!(sent(&a).is_empty());
    }

    #[test]
    fn hundred_thousand_items_drain_through_receipts() {
        const N: i64 = 100_000;
        let mut m = Machine::new(cfg(9));
        // Enqueue in reverse to exercise out-of-order reload.
        for seq in (1..=N).rev() {
            m.handle(0, Event::Enqueued(item(seq, (seq % 1_000) as u64)));
        }
        assert_eq!(m.queued(), N as usize);
        let mut pending: Vec<i64> = sent(&m.handle(1, Event::Connected));
        assert_eq!(pending.len(), 256);
        let mut delivered = 0_i64;
        let mut last_seq_of_citizen: HashMap<u64, i64> = HashMap::new();
        let mut now = 2;
        while let Some(seq) = pending.pop() {
            let a = m.handle(now, accepted(seq));
            now += 1;
            for x in &a {
                if let Action::Delivered { seq } = x {
                    delivered += 1;
                    let c = (*seq % 1_000) as u64;
                    let prev = last_seq_of_citizen.insert(c, *seq).unwrap_or(0);
                    assert!(prev < *seq, "citizen order broken");
                }
            }
            pending.extend(sent(&a));
            assert!(m.in_flight() <= 256);
        }
        assert_eq!(delivered, N);
        assert_eq!((m.queued(), m.in_flight()), (0, 0));
    }

    #[test]
    fn cancel_drops_a_queued_item_and_unblocks_its_citizen_but_not_one_in_flight() {
        let mut m = Machine::new(cfg(1));
        m.handle(0, Event::Enqueued(item(1, 7)));
        m.handle(0, Event::Enqueued(item(2, 7)));
        let a = m.handle(0, Event::Connected);
        assert!(a.contains(&Action::Send(vec![1])), "{a:?}");
        // In flight: the receipt decides, cancel changes nothing.
        let a = m.handle(
            1,
            Event::Cancel {
                seq: 1,
                reason: "cancelled".into(),
            },
        );
        assert!(
            !a.iter().any(|x| matches!(x, Action::Failed { .. })),
            "{a:?}"
        );
        assert_eq!(m.in_flight(), 1);
        // Queued behind it: cancelled at once, never sent.
        let a = m.handle(
            2,
            Event::Cancel {
                seq: 2,
                reason: "cancelled".into(),
            },
        );
        assert!(a.contains(&Action::Failed {
            seq: 2,
            reason: "cancelled".into(),
            rejected_by_peer: false
        }));
        assert_eq!(m.queued(), 0);
        let a = m.handle(3, accepted(1));
        assert!(!a.iter().any(|x| matches!(x, Action::Send(_))), "{a:?}");
        // Unknown seqs are ignored.
        let a = m.handle(
            4,
            Event::Cancel {
                seq: 99,
                reason: "cancelled".into(),
            },
        );
        assert!(!a.iter().any(|x| matches!(x, Action::Failed { .. })));
    }
}
