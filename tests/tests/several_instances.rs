//! Several `tvaersd` instances of one organisation on one PostgreSQL
//! database: two instances of the sender (psychiatry) and two of the
//! receiver (municipality), each organisation in a database of its own.
//! One sending instance is killed with SIGKILL mid-run, one receiving
//! instance is killed and restarted; every notice must still arrive exactly
//! once, be delivered at the sender, and keep its citizen's order. And an
//! inbox stream on one receiving instance is woken for what another
//! received (PostgreSQL LISTEN/NOTIFY).
//!
//! Needs `TVAERS_TEST_POSTGRES_URL` (a database the tests may create
//! databases from); skipped with a message without it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tvaers_client::{Client, DeliveryState, Submission, v1};
use tvaers_e2e::{MUNICIPALITY, PSYCHIATRY, PgDatabase, Sites};
use tvaers_proto::validate::sample;

const TEST_URL_VAR: &str = "TVAERS_TEST_POSTGRES_URL";
const CITIZENS: usize = 40;
const PER_CITIZEN: usize = 50;
const TOTAL: usize = CITIZENS * PER_CITIZEN;

/// A valid CPR number per citizen (a real date, made-up serial).
fn cpr(citizen: usize) -> String {
    format!(
        "{:02}{:02}85{:04}",
        1 + citizen % 28,
        1 + citizen / 28,
        4000 + citizen
    )
}

/// Notice `n` (0-based) about `citizen`: its episode id carries both.
fn submission(citizen: usize, n: usize) -> Submission {
    Submission::new(sample::admission(&cpr(citizen)))
        .idempotency_key(format!("c{citizen}-n{n}"))
        .episode(format!("c{citizen}-n{n:03}"))
        .to(MUNICIPALITY.org_id)
}

/// Submits until accepted: to `preferred` while it runs, else (or on
/// error, e.g. it was just killed) to `fallback`, with the same key, so a
/// notice stored just before the kill is answered as a duplicate.
async fn submit(
    preferred: &Client,
    fallback: &Client,
    preferred_dead: &AtomicBool,
    s: Submission,
) -> String {
    if !preferred_dead.load(Ordering::SeqCst)
        && let Ok(done) = preferred.submit(s.clone()).await
    {
        return done.notice_id;
    }
    for _ in 0..100 {
        match fallback.submit(s.clone()).await {
            Ok(done) => return done.notice_id,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the surviving instance refused a submit for 5 s");
}

/// Adds a second instance of the municipality (on its already shared
/// store) and lists both in psychiatry's peer entry. Returns its key.
fn second_receiving_instance(sites: &mut Sites) -> String {
    let (psy, mun) = (PSYCHIATRY.org_id, MUNICIPALITY.org_id);
    let mun2 = sites.add_instance(mun).unwrap();
    let (one, two) = (sites.peer_address(mun), sites.peer_address(&mun2));
    sites
        .edit_config(psy, |text| {
            text.replacen(
                &format!("address = \"{one}\""),
                &format!("addresses = [\"{one}\", \"{two}\"]"),
                1,
            )
        })
        .unwrap();
    mun2
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sending_and_two_receiving_instances_deliver_everything_once_in_order() {
    let Ok(admin_url) = std::env::var(TEST_URL_VAR) else {
        eprintln!("skipping the several-instances test: {TEST_URL_VAR} is not set");
        return;
    };
    let started = Instant::now();
    let (psy, mun) = (PSYCHIATRY.org_id, MUNICIPALITY.org_id);
    let sender_db = PgDatabase::create(&admin_url).await.unwrap();
    let receiver_db = PgDatabase::create(&admin_url).await.unwrap();
    let mut sites = Sites::temporary(&[PSYCHIATRY, MUNICIPALITY]).unwrap();
    // Short leases, so the killed sender's shards are taken over quickly.
    let instance_settings = ["lease_seconds = 2", "poll_ms = 100"];
    sites
        .set_store(psy, &sender_db.url(), &instance_settings)
        .unwrap();
    sites
        .set_store(mun, &receiver_db.url(), &instance_settings)
        .unwrap();
    let mun2 = second_receiving_instance(&mut sites);
    let psy2 = sites.add_instance(psy).unwrap();
    for key in [mun, mun2.as_str(), psy, psy2.as_str()] {
        sites.start(key).await.unwrap();
    }

    // The second sending instance takes its share of the shards within a
    // few lease rounds; start once it has, so both send.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sites.log(&psy2).contains("outbox shards rebalanced") {
        assert!(
            Instant::now() < deadline,
            "the second instance took no shards"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each instance's status shows both instances and who holds which of
    // the 32 shards.
    let mut holders = Vec::new();
    for key in [psy, psy2.as_str()] {
        let admin = sites.admin(key).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = admin.status().await.unwrap();
            let shards: usize = status.instances.iter().map(|i| i.shards.len()).sum();
            let mine = status
                .instances
                .iter()
                .find(|i| i.instance_id == status.instance_id)
                .map_or(0, |i| i.shards.len());
            // Between a release and the claim a shard is briefly free.
            if status.instances.len() == 2 && shards == 32 && mine > 0 {
                break status;
            }
            assert!(Instant::now() < deadline, "{status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        holders.push(status.instance_id);
    }
    assert_ne!(holders[0], holders[1], "two instances, two ids");

    let senders = Arc::new((
        sites.client(psy).await.unwrap(),
        sites.client(&psy2).await.unwrap(),
    ));
    let psy2_dead = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));
    // One task per citizen, submitting its notices in order (each after
    // the previous was acknowledged), alternately to the two instances.
    let mut tasks = Vec::new();
    for citizen in 0..CITIZENS {
        let (senders, dead, count) = (senders.clone(), psy2_dead.clone(), submitted.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(PER_CITIZEN);
            for n in 0..PER_CITIZEN {
                let s = submission(citizen, n);
                let id = if (citizen + n) % 2 == 0 {
                    submit(&senders.0, &senders.0, &AtomicBool::new(false), s).await
                } else {
                    submit(&senders.1, &senders.0, &dead, s).await
                };
                ids.push(id);
                count.fetch_add(1, Ordering::SeqCst);
            }
            ids
        }));
    }
    let wait_for = |target: usize| {
        let submitted = submitted.clone();
        async move {
            while submitted.load(Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(TOTAL / 3).await;
    psy2_dead.store(true, Ordering::SeqCst);
    sites.kill(&psy2).unwrap();
    wait_for(TOTAL / 2).await;
    sites.kill(&mun2).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sites.start(&mun2).await.unwrap();
    let mut ids: HashSet<String> = HashSet::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    assert_eq!(ids.len(), TOTAL, "every submit got its own notice id");

    // Wait until the receiver holds them all (read through either
    // instance: they share the database).
    let receiver = sites.client(&mun2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    let items = loop {
        let items = all_items(&receiver).await;
        if items.len() >= TOTAL || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Exactly once.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for item in &items {
        *copies.entry(item.notice_id.as_str()).or_default() += 1;
    }
    let missing = ids
        .iter()
        .filter(|id| !copies.contains_key(id.as_str()))
        .count();
    let doubled = copies.values().filter(|&&n| n > 1).count();
    assert_eq!(
        (missing, doubled, items.len()),
        (0, 0, TOTAL),
        "missing or doubled notices in the receiver's inbox\n{}",
        sites.all_logs()
    );

    // Per-citizen order: inbox (cursor) order is submission order.
    let mut per_citizen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in &items {
        let episode = &item
            .envelope
            .as_ref()
            .unwrap()
            .notice
            .as_ref()
            .unwrap()
            .episode_id;
        let (citizen, n) = episode.split_once('-').unwrap();
        per_citizen
            .entry(citizen.to_owned())
            .or_default()
            .push(n.to_owned());
    }
    assert_eq!(per_citizen.len(), CITIZENS);
    for (citizen, order) in &per_citizen {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            order, &sorted,
            "citizen {citizen}'s notices arrived out of order"
        );
    }

    // Delivered at the sender, as the surviving instance reports it.
    let survivor = &senders.0;
    for id in &ids {
        let status = survivor
            .wait_delivered(id, Duration::from_secs(15))
            .await
            .unwrap();
        assert!(
            status
                .recipients
                .iter()
                .all(|r| r.state == DeliveryState::Delivered),
            "{status:?}"
        );
    }
    eprintln!("2+2 instances: {TOTAL} notices in {:?}", started.elapsed());
    // The first instance took every shard, gave half up to the second and
    // took them back after the kill.
    let rebalances = |key: &str| sites.log(key).matches("outbox shards rebalanced").count();
    assert!(
        rebalances(psy) >= 3,
        "the first instance did not give up and take back shards"
    );
    let cprs: Vec<String> = (0..CITIZENS).map(cpr).collect();
    let cprs: Vec<&str> = cprs.iter().map(String::as_str).collect();
    let leaks = tvaers_e2e::cpr_leaks(&sites.all_logs(), &cprs);
    assert!(
        leaks.is_empty(),
        "a CPR number appears in the logs: {leaks:?}"
    );

    drop(senders);
    drop(receiver);
    drop(sites);
    sender_db.drop_now().await;
    receiver_db.drop_now().await;
}

/// Every inbox item, in cursor order.
async fn all_items(client: &Client) -> Vec<v1::InboxItem> {
    let mut items: Vec<v1::InboxItem> = Vec::new();
    loop {
        let after = items.last().map_or(0, |item| item.cursor);
        let page = client.list_inbox(after, 500).await.unwrap();
        if page.is_empty() {
            return items;
        }
        items.extend(page);
    }
}

/// An inbox stream opened on one receiving instance sees, at once, the
/// notices another instance of its organisation received: the sender only
/// knows the other instance's address, so nothing reaches this one's own
/// receive path, and only the database's notifications can wake it.
#[tokio::test(flavor = "multi_thread")]
async fn an_inbox_stream_on_one_instance_sees_what_another_received() {
    use tvaers_client::StreamExt;
    let Ok(admin_url) = std::env::var(TEST_URL_VAR) else {
        eprintln!("skipping the several-instances stream test: {TEST_URL_VAR} is not set");
        return;
    };
    let (psy, mun) = (PSYCHIATRY.org_id, MUNICIPALITY.org_id);
    let receiver_db = PgDatabase::create(&admin_url).await.unwrap();
    let mut sites = Sites::temporary(&[PSYCHIATRY, MUNICIPALITY]).unwrap();
    sites.set_store(mun, &receiver_db.url(), &[]).unwrap();
    let mun2 = sites.add_instance(mun).unwrap();
    for key in [mun, mun2.as_str(), psy] {
        sites.start(key).await.unwrap();
    }

    let watcher = sites.client(&mun2).await.unwrap();
    let mut stream = watcher.inbox_stream(0);
    // The first poll opens the stream; nothing is there yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );
    let sender = sites.client(psy).await.unwrap();
    let mut sent = Vec::new();
    for n in 0..5 {
        let id = sender.submit(submission(n, 0)).await.unwrap().notice_id;
        sent.push(id);
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the other instance's item reaches this stream within 10 s")
            .expect("the stream stays open")
            .unwrap();
        assert_eq!(item.notice_id, sent[n]);
    }
    // All went through the first instance's receive path (whose log line
    // may follow the commit that woke the stream by a moment).
    let accepted = |key: &str| sites.log(key).matches("accepted a notice").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted(mun) < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted(mun), sent.len(), "{}", sites.log(mun));
    assert_eq!(accepted(&mun2), 0);

    drop(stream);
    drop(watcher);
    drop(sender);
    drop(sites);
    receiver_db.drop_now().await;
}

/// One sending instance with both receiving instances in its peer entry
/// connects to both and spreads its notices over them.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_spreads_its_notices_over_the_receiving_instances() {
    let Ok(admin_url) = std::env::var(TEST_URL_VAR) else {
        eprintln!("skipping the load-spreading test: {TEST_URL_VAR} is not set");
        return;
    };
    let (psy, mun) = (PSYCHIATRY.org_id, MUNICIPALITY.org_id);
    let receiver_db = PgDatabase::create(&admin_url).await.unwrap();
    let mut sites = Sites::temporary(&[PSYCHIATRY, MUNICIPALITY]).unwrap();
    sites.set_store(mun, &receiver_db.url(), &[]).unwrap();
    let mun2 = second_receiving_instance(&mut sites);
    for key in [mun, mun2.as_str(), psy] {
        sites.start(key).await.unwrap();
    }

    let sender = sites.client(psy).await.unwrap();
    let accepted = |key: &str| sites.log(key).matches("accepted a notice").count();
    // The first notice brings the connections up.
    let first = sender.submit(submission(0, 0)).await.unwrap().notice_id;
    assert!(
        sender
            .wait_delivered(&first, Duration::from_secs(15))
            .await
            .unwrap()
            .all_delivered()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while accepted(mun) == 0 || accepted(&mun2) == 0 {
        assert!(
            Instant::now() < deadline,
            "only one receiving instance got notices: {} and {}",
            accepted(mun),
            accepted(&mun2)
        );
        n += 1;
        let id = sender.submit(submission(n, 0)).await.unwrap().notice_id;
        assert!(
            sender
                .wait_delivered(&id, Duration::from_secs(15))
                .await
                .unwrap()
                .all_delivered()
        );
    }
    assert!(
        n < 10,
        "both instances were in use within a few notices ({n})"
    );
    // Every notice is in the shared inbox once.
    let inbox = all_items(&sites.client(mun).await.unwrap()).await;
    assert_eq!(inbox.len(), n + 1);

    drop(sender);
    drop(sites);
    receiver_db.drop_now().await;
}
