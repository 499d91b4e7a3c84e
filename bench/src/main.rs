//! `tvaers-bench`: starts two real `tvaersd` processes on loopback (fresh
//! keys and SQLite files in a temporary directory), drives the sender
//! (psychiatry) through `tvaers-client` over its Unix socket, follows the
//! receiver's (municipality's) inbox stream, and reports:
//!
//! 1. sustained durable throughput, submit to delivered, with N concurrent
//!    submitters;
//! 2. open-loop latency at fixed offered rates, from the scheduled send time
//!    to the submit acknowledgement and to the notice appearing on the
//!    receiver's inbox stream;
//! 3. backlog drain: receiver stopped, a backlog submitted, receiver
//!    started, time until all are in its inbox;
//! 4. footprint: resident memory and CPU seconds per 1,000 notices of each
//!    daemon, from `/proc`;
//! 5. exactly once: every submitted notice id is in the receiver's inbox
//!    exactly once; otherwise the bench exits 1.
//!
//! Run it in release mode (`cargo run --release -p tvaers-bench`): the
//! harness builds `tvaersd` in the same profile as this binary. With
//! `--postgres URL` both organisations use PostgreSQL (a fresh database
//! each), and `--sender-instances N` runs N sending instances sharing the
//! sender's database, to compare 1 vs 2 instances vs SQLite.
#![forbid(unsafe_code)]

mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use serde::Serialize;
use tvaers_client::{Client, StreamExt, Submission};
use tvaers_e2e::{MUNICIPALITY, PSYCHIATRY, PgDatabase, Sites};
use tvaers_proto::v1;
use tvaers_proto::validate::{self, sample};

use stats::{LatencySummary, cpr, fmt_ms};

const SENDER: &str = PSYCHIATRY.org_id;
const RECEIVER: &str = MUNICIPALITY.org_id;
/// Give up waiting for deliveries after this long without progress.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// Client connections to the sender; submitters are spread over them.
const SENDER_CONNECTIONS: usize = 4;
/// The largest `--notice-size`: the envelope around it must still fit the
/// daemons' default frame limit of 64 KiB.
const MAX_NOTICE_SIZE: u32 = 60_000;

/// Benchmark two real tvaersd daemons on loopback.
#[derive(Debug, Parser)]
#[command(name = "tvaers-bench", version)]
struct Args {
    /// Concurrent submitters for the throughput and backlog phases.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of the measured throughput phase.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of closed-loop warm-up before it.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Offered rates (notices/s) of the open-loop latency phases.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100u32, 1000])]
    rates: Vec<u32>,
    /// Seconds of each latency phase.
    #[arg(long, default_value_t = 10)]
    rate_duration: u64,
    /// Notices submitted while the receiver is stopped.
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Skip the backlog phase.
    #[arg(long)]
    skip_backlog: bool,
    /// Pad every notice to about this many encoded bytes: plan changes with
    /// as many plan items of free text as it takes (without it: small
    /// no-shows and admissions of a few hundred bytes).
    #[arg(long, value_parser = clap::value_parser!(u32).range(..=MAX_NOTICE_SIZE as i64))]
    notice_size: Option<u32>,
    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Store both organisations in PostgreSQL instead of SQLite: a database
    /// of their own each, created on this server (the URL names any
    /// database the user may connect to) and dropped afterwards.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Sending instances sharing the sender's database (needs --postgres);
    /// submitters are spread over them. Footprint figures are of the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    sender_instances: u32,
}

#[derive(Debug, Serialize)]
struct Report {
    config: ReportConfig,
    idle: Footprint,
    throughput: Throughput,
    latency: Vec<RateLatency>,
    backlog: Option<Backlog>,
    idle_after: Footprint,
    exactly_once: ExactlyOnce,
}

#[derive(Debug, Serialize)]
struct ReportConfig {
    concurrency: usize,
    duration_s: u64,
    warmup_s: u64,
    rates: Vec<u32>,
    rate_duration_s: u64,
    backlog: Option<u64>,
    /// Encoded size of each notice (of the first one without
    /// `--notice-size`, whose notices alternate between two kinds).
    notice_bytes: usize,
    release_build: bool,
    /// `sqlite` or `postgres`.
    store: &'static str,
    sender_instances: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Footprint {
    sender_rss_mib: f64,
    receiver_rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    notices: u64,
    submit_seconds: f64,
    submitted_per_s: f64,
    /// From the start of the measured phase until the last one is in the
    /// receiver's inbox.
    delivered_seconds: f64,
    delivered_per_s: f64,
    submit_ack: LatencySummary,
    peak: Footprint,
    sender_cpu_s_per_1000: f64,
    receiver_cpu_s_per_1000: f64,
}

#[derive(Debug, Serialize)]
struct RateLatency {
    offered_per_s: u32,
    notices: u64,
    /// From the scheduled send time to the submit acknowledgement.
    submit_ack: LatencySummary,
    /// From the scheduled send time to the receiver's inbox stream
    /// yielding it.
    submit_to_delivered: LatencySummary,
    /// The sender's own view for a sample (every 10th): from its
    /// `created_at_ms` to its `delivered_at_ms` (receipt stored), wall
    /// clock, millisecond resolution.
    sender_created_to_receipt: LatencySummary,
}

#[derive(Debug, Serialize)]
struct Backlog {
    notices: u64,
    submit_seconds: f64,
    /// From starting the receiver's process until its API answered.
    receiver_startup_seconds: f64,
    /// From starting the receiver's process until all are in its inbox.
    drain_seconds: f64,
    drained_per_s: f64,
    sender_rss_with_backlog_mib: f64,
    peak: Footprint,
    sender_cpu_s_per_1000: f64,
    receiver_cpu_s_per_1000: f64,
}

#[derive(Debug, Serialize)]
struct ExactlyOnce {
    submitted: u64,
    inbox_items: u64,
    missing: u64,
    duplicated: u64,
    unexpected: u64,
    sender_status_checked: u64,
    sender_status_not_delivered: u64,
    ok: bool,
}

/// What the receiver's inbox stream has yielded: per notice id, how often
/// and when first.
#[derive(Debug, Default)]
struct Arrivals {
    seen: HashMap<String, (u32, Instant)>,
}

/// Follows the receiver's inbox stream from a background task, reconnecting
/// (from the last cursor) when the receiver is restarted.
#[derive(Debug)]
struct Follower {
    arrivals: Arc<Mutex<Arrivals>>,
    distinct: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(socket: PathBuf) -> Follower {
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let distinct = Arc::new(AtomicU64::new(0));
        let (a, d) = (Arc::clone(&arrivals), Arc::clone(&distinct));
        let task = tokio::spawn(async move {
            let mut cursor = 0;
            loop {
                if let Ok(client) = Client::connect(&socket).await {
                    let mut stream = client.inbox_stream(cursor);
                    while let Some(Ok(item)) = stream.next().await {
                        let now = Instant::now();
                        let id = item.envelope.map(|e| e.notice_id).unwrap_or_default();
                        let mut arrivals = a.lock().unwrap_or_else(|e| e.into_inner());
                        let entry = arrivals.seen.entry(id).or_insert((0, now));
                        entry.0 += 1;
                        if entry.0 == 1 {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    cursor = stream.last_cursor();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Follower {
            arrivals,
            distinct,
            task,
        }
    }

    fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Relaxed)
    }

    fn first_seen(&self, id: &str) -> Option<Instant> {
        let arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        arrivals.seen.get(id).map(|(_, at)| *at)
    }

    /// Waits until `total` distinct notices have arrived; returns when the
    /// last did. Fails after [`STALL_LIMIT`] without progress.
    async fn wait_for(&self, total: u64, label: &str) -> Result<Instant> {
        let bar = counter_bar(total, label);
        let mut last = self.distinct();
        let mut last_progress = Instant::now();
        loop {
            let now = self.distinct();
            bar.set_position(now);
            if now >= total {
                bar.finish_and_clear();
                return Ok(Instant::now());
            }
            if now != last {
                last = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL_LIMIT {
                bar.abandon();
                bail!(
                    "DELIVERY STALLED: {now} of {total} notices in the receiver's inbox, \
                     no progress for {} s",
                    STALL_LIMIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sender's clients and the running count of workload items.
#[derive(Debug, Clone)]
struct Workload {
    clients: Arc<Vec<Client>>,
    next: Arc<AtomicU64>,
    run: String,
    /// Plan items that pad each notice to `--notice-size`.
    padding: Option<Arc<Vec<v1::PlanItem>>>,
}

impl Workload {
    /// The notice of workload item `i`.
    fn notice(&self, i: u64) -> v1::Notice {
        let cpr = cpr(i);
        match &self.padding {
            Some(items) => {
                let mut notice = sample::plan_change(&cpr, RECEIVER);
                if let Some(v1::notice::Payload::PlanChange(change)) = &mut notice.payload {
                    change.changed_items = items.as_ref().clone();
                }
                notice
            }
            None if i.is_multiple_of(2) => sample::no_show(&cpr),
            None => sample::admission(&cpr),
        }
    }

    /// Submits workload item `i` and returns its notice id.
    async fn submit(&self, i: u64) -> Result<String> {
        let notice = self.notice(i);
        let submission = Submission::new(notice)
            .idempotency_key(format!("bench-{}-{i}", self.run))
            .to(RECEIVER);
        let client = &self.clients[(i as usize) % self.clients.len()];
        let submitted = client.submit(submission).await.context("SUBMIT FAILED")?;
        if submitted.duplicate {
            bail!("SUBMIT ANSWERED DUPLICATE for a fresh idempotency key");
        }
        Ok(submitted.notice_id)
    }

    /// `concurrency` closed-loop submitters until `until` says stop;
    /// returns the notice ids and the submit-acknowledged latencies.
    async fn closed_loop(
        &self,
        concurrency: usize,
        until: Until,
        bar: &ProgressBar,
    ) -> Result<(Vec<String>, Histogram<u64>)> {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let this = self.clone();
            let bar = bar.clone();
            workers.spawn(async move {
                let mut ids = Vec::new();
                let mut h = stats::histogram();
                loop {
                    if let Until::Deadline(at) = until
                        && Instant::now() >= at
                    {
                        break;
                    }
                    let i = this.next.fetch_add(1, Ordering::Relaxed);
                    if let Until::Item(end) = until
                        && i >= end
                    {
                        break;
                    }
                    let started = Instant::now();
                    ids.push(this.submit(i).await?);
                    stats::record(&mut h, started.elapsed());
                    if matches!(until, Until::Item(_)) {
                        bar.inc(1);
                    }
                }
                anyhow::Ok((ids, h))
            });
        }
        let mut all = Vec::new();
        let mut h = stats::histogram();
        while let Some(done) = workers.join_next().await {
            let (ids, worker_h) = done??;
            all.extend(ids);
            h.add(worker_h)?;
        }
        Ok((all, h))
    }
}

/// Plan items (each within the schema's free-text limit) that make a plan
/// change notice about `size` bytes long when encoded.
fn padding_for(size: u32) -> Vec<v1::PlanItem> {
    let target = size as usize;
    let mut notice = sample::plan_change(&cpr(0), RECEIVER);
    let Some(v1::notice::Payload::PlanChange(change)) = &mut notice.payload else {
        unreachable!("the sample plan change has a plan change payload");
    };
    let mut items = std::mem::take(&mut change.changed_items);
    let template = items[0].clone();
    items.truncate(1);
    let encoded = |items: &[v1::PlanItem]| {
        let mut n = notice.clone();
        if let Some(v1::notice::Payload::PlanChange(c)) = &mut n.payload {
            c.changed_items = items.to_vec();
        }
        n.encoded_len()
    };
    // Fill items up to the text limit, one after the other, then trim the
    // last one to land on the target.
    loop {
        let len = encoded(&items);
        if len >= target || items.len() >= validate::MAX_PLAN_ITEMS {
            break;
        }
        let last = items.last_mut().expect("at least one item");
        let room = validate::MAX_TEXT_CHARS - last.text.chars().count();
        if room == 0 {
            items.push(v1::PlanItem {
                text: "x".to_owned(),
                ..template.clone()
            });
            continue;
        }
        let add = room.min(target - len);
        last.text.push_str(&"x".repeat(add));
    }
    items
}

#[derive(Debug, Clone, Copy)]
enum Until {
    Deadline(Instant),
    /// Stop before this workload item index.
    Item(u64),
}

fn counter_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// A bar over `seconds` that shows how many notices were submitted so far.
fn timed_bar(seconds: u64, label: &str, next: Arc<AtomicU64>) -> (ProgressBar, AbortOnDrop) {
    let bar = ProgressBar::new(seconds * 10);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let ticker = bar.clone();
    let start_item = next.load(Ordering::Relaxed);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ticker.inc(1);
            let done = next.load(Ordering::Relaxed) - start_item;
            ticker.set_message(format!("{done} submitted"));
        }
    });
    (bar, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Samples the peak resident memory of both daemons until dropped.
struct PeakSampler {
    peak: Arc<Mutex<Footprint>>,
    _task: AbortOnDrop,
}

impl PeakSampler {
    fn start(sender: u32, receiver: Option<u32>) -> PeakSampler {
        let peak = Arc::new(Mutex::new(Footprint {
            sender_rss_mib: 0.0,
            receiver_rss_mib: 0.0,
        }));
        let p = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                {
                    let mut peak = p.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(rss) = stats::rss_mib(sender) {
                        peak.sender_rss_mib = peak.sender_rss_mib.max(rss);
                    }
                    if let Some(rss) = receiver.and_then(stats::rss_mib) {
                        peak.receiver_rss_mib = peak.receiver_rss_mib.max(rss);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        PeakSampler {
            peak,
            _task: AbortOnDrop(task),
        }
    }

    fn peak(&self) -> Footprint {
        *self.peak.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Bench {
    args: Args,
    sites: Sites,
    workload: Workload,
    follower: Follower,
    submitted: Vec<String>,
    ticks: f64,
}

impl Bench {
    fn pid(&self, org: &str) -> Result<u32> {
        self.sites
            .pid(org)
            .with_context(|| format!("{org} is not running"))
    }

    fn footprint(&self) -> Result<Footprint> {
        let rss = |org| -> Result<f64> {
            stats::rss_mib(self.pid(org)?).with_context(|| format!("no /proc entry for {org}"))
        };
        Ok(Footprint {
            sender_rss_mib: rss(SENDER)?,
            receiver_rss_mib: rss(RECEIVER)?,
        })
    }

    fn cpu(&self, org: &str) -> Result<f64> {
        stats::cpu_seconds(self.pid(org)?, self.ticks)
            .with_context(|| format!("no /proc entry for {org}"))
    }

    fn total(&self) -> u64 {
        self.submitted.len() as u64
    }

    async fn throughput(&mut self) -> Result<Throughput> {
        let concurrency = self.args.concurrency;
        if self.args.warmup > 0 {
            let (bar, _ticker) =
                timed_bar(self.args.warmup, "warm-up", Arc::clone(&self.workload.next));
            let until = Until::Deadline(Instant::now() + Duration::from_secs(self.args.warmup));
            let (ids, _) = self.workload.closed_loop(concurrency, until, &bar).await?;
            bar.finish_and_clear();
            self.submitted.extend(ids);
            self.follower
                .wait_for(self.total(), "warm-up delivered")
                .await?;
        }

        let sampler = PeakSampler::start(self.pid(SENDER)?, Some(self.pid(RECEIVER)?));
        let (cpu_s0, cpu_r0) = (self.cpu(SENDER)?, self.cpu(RECEIVER)?);
        let start = Instant::now();
        let (bar, ticker) = timed_bar(
            self.args.duration,
            "throughput",
            Arc::clone(&self.workload.next),
        );
        let until = Until::Deadline(start + Duration::from_secs(self.args.duration));
        let (ids, ack) = self.workload.closed_loop(concurrency, until, &bar).await?;
        drop(ticker);
        bar.finish_and_clear();
        let submit_seconds = start.elapsed().as_secs_f64();
        let notices = ids.len() as u64;
        self.submitted.extend(ids);
        let done = self
            .follower
            .wait_for(self.total(), "throughput delivered")
            .await?;
        let delivered_seconds = (done - start).as_secs_f64();
        let per_1000 = |cpu: f64| cpu / notices.max(1) as f64 * 1000.0;
        Ok(Throughput {
            notices,
            submit_seconds,
            submitted_per_s: notices as f64 / submit_seconds,
            delivered_seconds,
            delivered_per_s: notices as f64 / delivered_seconds,
            submit_ack: LatencySummary::of(&ack),
            peak: sampler.peak(),
            sender_cpu_s_per_1000: per_1000(self.cpu(SENDER)? - cpu_s0),
            receiver_cpu_s_per_1000: per_1000(self.cpu(RECEIVER)? - cpu_r0),
        })
    }

    async fn latency(&mut self, rate: u32) -> Result<RateLatency> {
        let count = u64::from(rate) * self.args.rate_duration;
        let interval_ns = 1_000_000_000 / u64::from(rate.max(1));
        let bar = counter_bar(count, &format!("latency at {rate}/s"));
        let start = Instant::now() + Duration::from_millis(20);
        let mut sends = tokio::task::JoinSet::new();
        for n in 0..count {
            let scheduled = start + Duration::from_nanos(n * interval_ns);
            tokio::time::sleep_until(scheduled.into()).await;
            let i = self.workload.next.fetch_add(1, Ordering::Relaxed);
            let workload = self.workload.clone();
            sends.spawn(async move {
                let id = workload.submit(i).await?;
                anyhow::Ok((id, scheduled, Instant::now()))
            });
            bar.inc(1);
        }
        let mut sent = Vec::with_capacity(count as usize);
        while let Some(done) = sends.join_next().await {
            sent.push(done??);
        }
        bar.finish_and_clear();
        self.submitted
            .extend(sent.iter().map(|(id, _, _)| id.clone()));
        self.follower
            .wait_for(self.total(), &format!("{rate}/s delivered"))
            .await?;
        let mut ack = stats::histogram();
        let mut delivered = stats::histogram();
        for (id, scheduled, acked) in &sent {
            stats::record(&mut ack, *acked - *scheduled);
            let seen = self
                .follower
                .first_seen(id)
                .context("a delivered notice has no arrival time")?;
            stats::record(&mut delivered, seen.saturating_duration_since(*scheduled));
        }
        let sender = self.sites.client(SENDER).await?;
        let mut receipt = stats::histogram();
        for (id, _, _) in sent.iter().step_by(10) {
            let status = sender.delivery_status(id).await?;
            for r in &status.recipients {
                if let Some(at) = r.delivered_at_ms {
                    let ms = u64::try_from(at - status.created_at_ms).unwrap_or(0);
                    stats::record(&mut receipt, Duration::from_millis(ms));
                }
            }
        }
        Ok(RateLatency {
            offered_per_s: rate,
            notices: count,
            submit_ack: LatencySummary::of(&ack),
            submit_to_delivered: LatencySummary::of(&delivered),
            sender_created_to_receipt: LatencySummary::of(&receipt),
        })
    }

    async fn backlog(&mut self) -> Result<Backlog> {
        let notices = self.args.backlog;
        self.sites.stop(RECEIVER).await?;
        let bar = counter_bar(notices, "backlog submitted");
        let start = Instant::now();
        let end = self.workload.next.load(Ordering::Relaxed) + notices;
        // Items are taken from the shared counter, so `end` bounds exactly
        // `notices` submits while nothing else submits.
        let (ids, _) = self
            .workload
            .closed_loop(self.args.concurrency, Until::Item(end), &bar)
            .await?;
        bar.finish_and_clear();
        let submit_seconds = start.elapsed().as_secs_f64();
        self.submitted.extend(ids);
        // Let the sender settle so its memory shows the held backlog.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sender_rss_with_backlog_mib =
            stats::rss_mib(self.pid(SENDER)?).context("no /proc entry for the sender")?;
        let cpu_s0 = self.cpu(SENDER)?;

        let start = Instant::now();
        self.sites.start(RECEIVER).await?;
        let receiver_startup_seconds = start.elapsed().as_secs_f64();
        let sampler = PeakSampler::start(self.pid(SENDER)?, Some(self.pid(RECEIVER)?));
        let done = self
            .follower
            .wait_for(self.total(), "backlog drained")
            .await?;
        let drain_seconds = (done - start).as_secs_f64();
        let per_1000 = |cpu: f64| cpu / notices.max(1) as f64 * 1000.0;
        Ok(Backlog {
            notices,
            submit_seconds,
            receiver_startup_seconds,
            drain_seconds,
            drained_per_s: notices as f64 / drain_seconds,
            sender_rss_with_backlog_mib,
            peak: sampler.peak(),
            sender_cpu_s_per_1000: per_1000(self.cpu(SENDER)? - cpu_s0),
            // The receiver's whole life so far is this drain.
            receiver_cpu_s_per_1000: per_1000(self.cpu(RECEIVER)?),
        })
    }

    /// Pages through the receiver's whole inbox and checks every submitted
    /// notice is there exactly once; asks the sender about a sample.
    async fn exactly_once(&self) -> Result<ExactlyOnce> {
        let receiver = self.sites.client(RECEIVER).await?;
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut cursor = 0;
        let mut inbox_items = 0;
        // Pages of at most about 2 MiB: the client refuses replies over
        // gRPC's 4 MiB default, which 1,000 padded notices exceed.
        let per_page = (2 << 20) / (self.workload.notice(0).encoded_len() + 512);
        let per_page = u32::try_from(per_page.clamp(1, 1000)).unwrap_or(1000);
        loop {
            let page = receiver.list_inbox(cursor, per_page).await?;
            let Some(last) = page.last() else { break };
            cursor = last.cursor;
            for item in page {
                inbox_items += 1;
                let id = item.envelope.map(|e| e.notice_id).unwrap_or_default();
                *counts.entry(id).or_default() += 1;
            }
        }
        let mut missing = 0;
        let mut duplicated = 0;
        for id in &self.submitted {
            match counts.remove(id) {
                None => missing += 1,
                Some(1) => {}
                Some(_) => duplicated += 1,
            }
        }
        let unexpected = counts.len() as u64;

        let sender = self.sites.client(SENDER).await?;
        let step = (self.submitted.len() / 200).max(1);
        let mut checked = 0;
        let mut not_delivered = 0;
        for id in self.submitted.iter().step_by(step) {
            checked += 1;
            if !sender.delivery_status(id).await?.all_delivered() {
                not_delivered += 1;
            }
        }
        let ok = missing == 0 && duplicated == 0 && unexpected == 0 && not_delivered == 0;
        Ok(ExactlyOnce {
            submitted: self.total(),
            inbox_items,
            missing,
            duplicated,
            unexpected,
            sender_status_checked: checked,
            sender_status_not_delivered: not_delivered,
            ok,
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.rates.contains(&0) || args.duration == 0 {
        bail!("--concurrency, --duration and every rate must be at least 1");
    }
    if args.sender_instances > 1 && args.postgres.is_none() {
        bail!("--sender-instances above 1 needs --postgres: SQLite serves one instance");
    }
    let release = !cfg!(debug_assertions);
    if !release {
        eprintln!(
            "warning: a debug build benchmarks a debug tvaersd; use `cargo run --release -p tvaers-bench`"
        );
    }
    let report = run(args).await?;
    if report.exactly_once.ok {
        Ok(())
    } else {
        eprintln!("EXACTLY-ONCE CHECK FAILED: {:?}", report.exactly_once);
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<Report> {
    eprintln!("building tvaersd and starting {SENDER} -> {RECEIVER} on loopback");
    let mut sites = Sites::temporary(&[PSYCHIATRY, MUNICIPALITY])?;
    let mut databases = Vec::new();
    let mut senders = vec![SENDER.to_owned()];
    if let Some(admin_url) = &args.postgres {
        for org in [SENDER, RECEIVER] {
            let database = PgDatabase::create(admin_url).await?;
            sites.set_store(org, &database.url(), &[])?;
            databases.push(database);
        }
        for _ in 1..args.sender_instances {
            senders.push(sites.add_instance(SENDER)?);
        }
    }
    sites.start_all().await?;
    for extra in &senders[1..] {
        sites.start(extra).await?;
    }
    let mut clients = Vec::new();
    for n in 0..SENDER_CONNECTIONS.max(senders.len()) {
        clients.push(sites.client(&senders[n % senders.len()]).await?);
    }
    let follower = Follower::start(sites.site(RECEIVER).socket.clone());
    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let workload = Workload {
        clients: Arc::new(clients),
        next: Arc::new(AtomicU64::new(0)),
        run: run_id,
        padding: args.notice_size.map(|size| Arc::new(padding_for(size))),
    };
    let notice_bytes = workload.notice(0).encoded_len();
    let mut bench = Bench {
        workload,
        sites,
        follower,
        submitted: Vec::new(),
        ticks: stats::clock_ticks(),
        args,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = bench.footprint()?;

    let throughput = bench.throughput().await?;
    let mut latency = Vec::new();
    for rate in bench.args.rates.clone() {
        latency.push(bench.latency(rate).await?);
    }
    let backlog = if bench.args.skip_backlog || bench.args.backlog == 0 {
        None
    } else {
        Some(bench.backlog().await?)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_after = bench.footprint()?;
    let exactly_once = bench.exactly_once().await?;

    for org in senders.iter().map(String::as_str).chain([RECEIVER]) {
        let status = bench.sites.stop(org).await?;
        if !status.success() {
            eprintln!("warning: tvaersd for {org} exited with {status} on SIGTERM");
        }
    }

    let report = Report {
        config: ReportConfig {
            concurrency: bench.args.concurrency,
            duration_s: bench.args.duration,
            warmup_s: bench.args.warmup,
            rates: bench.args.rates.clone(),
            rate_duration_s: bench.args.rate_duration,
            backlog: backlog.as_ref().map(|b| b.notices),
            notice_bytes,
            release_build: !cfg!(debug_assertions),
            store: if databases.is_empty() {
                "sqlite"
            } else {
                "postgres"
            },
            sender_instances: u32::try_from(senders.len()).unwrap_or(u32::MAX),
        },
        idle,
        throughput,
        latency,
        backlog,
        idle_after,
        exactly_once,
    };
    if bench.args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    drop(bench);
    for database in databases {
        database.drop_now().await;
    }
    Ok(report)
}

fn print_table(r: &Report) {
    let t = &r.throughput;
    println!(
        "tvaers-bench: {SENDER} ({} instance(s)) -> {RECEIVER}, tvaersd on loopback, {} ({} build)",
        r.config.sender_instances,
        if r.config.store == "sqlite" {
            "SQLite FULL sync"
        } else {
            "PostgreSQL"
        },
        if r.config.release_build {
            "release"
        } else {
            "DEBUG"
        }
    );
    println!();
    println!("Notices of {} bytes (encoded)", r.config.notice_bytes);
    println!();
    println!(
        "Sustained throughput ({} submitters, {} s after {} s warm-up)",
        r.config.concurrency, r.config.duration_s, r.config.warmup_s
    );
    println!("  notices submitted          {:>10}", t.notices);
    println!("  submitted/s                {:>10.0}", t.submitted_per_s);
    println!(
        "  delivered/s                {:>10.0}   (last in inbox {:.2} s after start)",
        t.delivered_per_s, t.delivered_seconds
    );
    println!();
    println!(
        "Latency, ms                        {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max"
    );
    println!("  closed loop, submit-ack          {}", t.submit_ack.row());
    for l in &r.latency {
        println!(
            "  {:>5}/s open, submit-ack        {}",
            l.offered_per_s,
            l.submit_ack.row()
        );
        println!(
            "  {:>5}/s open, submit-delivered  {}",
            l.offered_per_s,
            l.submit_to_delivered.row()
        );
        println!(
            "  {:>5}/s sender created-receipt* {}",
            l.offered_per_s,
            l.sender_created_to_receipt.row()
        );
    }
    println!("  * the sender's own timestamps, every 10th notice, 1 ms resolution");
    println!();
    if let Some(b) = &r.backlog {
        println!(
            "Backlog drain ({} notices queued while the receiver was stopped)",
            b.notices
        );
        println!(
            "  submitted in               {:>10.2} s ({:.0}/s)",
            b.submit_seconds,
            b.notices as f64 / b.submit_seconds
        );
        println!(
            "  drained in                 {:>10.2} s ({:.0}/s; receiver start-up {} ms)",
            b.drain_seconds,
            b.drained_per_s,
            fmt_ms(b.receiver_startup_seconds * 1000.0)
        );
        println!();
    }
    println!(
        "Footprint                          {:>12} {:>12}",
        "sender", "receiver"
    );
    let row = |label: &str, s: f64, rcv: f64, unit: &str| {
        println!("  {label:<32} {s:>9.1} {unit:<2} {rcv:>9.1} {unit:<2}");
    };
    row(
        "RSS idle at start",
        r.idle.sender_rss_mib,
        r.idle.receiver_rss_mib,
        "MiB",
    );
    row(
        "RSS peak under load",
        t.peak.sender_rss_mib,
        t.peak.receiver_rss_mib,
        "MiB",
    );
    if let Some(b) = &r.backlog {
        row(
            "RSS peak during drain",
            b.peak.sender_rss_mib,
            b.peak.receiver_rss_mib,
            "MiB",
        );
        println!(
            "  sender RSS holding the backlog   {:>9.1} MiB",
            b.sender_rss_with_backlog_mib
        );
    }
    row(
        "RSS idle at end",
        r.idle_after.sender_rss_mib,
        r.idle_after.receiver_rss_mib,
        "MiB",
    );
    println!(
        "  {:<32} {:>9.3} s  {:>9.3} s",
        "CPU per 1,000 (throughput)", t.sender_cpu_s_per_1000, t.receiver_cpu_s_per_1000
    );
    if let Some(b) = &r.backlog {
        println!(
            "  {:<32} {:>9.3} s  {:>9.3} s",
            "CPU per 1,000 (drain)", b.sender_cpu_s_per_1000, b.receiver_cpu_s_per_1000
        );
    }
    println!();
    let e = &r.exactly_once;
    if e.ok {
        println!(
            "Exactly once: OK, all {} submitted notices are in the receiver's inbox once \
             ({} inbox items; sender reports delivered for {} sampled)",
            e.submitted, e.inbox_items, e.sender_status_checked
        );
    } else {
        println!(
            "Exactly once: FAILED!  submitted {}, inbox items {}, missing {}, duplicated {}, \
             unexpected {}, sender not delivered {} of {} sampled",
            e.submitted,
            e.inbox_items,
            e.missing,
            e.duplicated,
            e.unexpected,
            e.sender_status_not_delivered,
            e.sender_status_checked
        );
    }
}
