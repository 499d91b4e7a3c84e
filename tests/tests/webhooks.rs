//! Webhooks end to end: a real HTTP server on loopback receives signed
//! events for the items routed to a team inbox; while it is down the daemon
//! retries, also across its own restart; after `max_attempts` the event is
//! dead-lettered, listed by the admin API and the CLI, and can be retried.
//! An inbox that opts in (`include_notice`) gets the whole notice; the
//! others never see a CPR number.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tvaers_client::v1;
use tvaers_e2e::{
    MUNICIPALITY, OVERDUE_AT_ONCE, PSYCHIATRY, Sites, cli_binary, cpr_leaks, free_port, http_get,
};
use tvaers_proto::validate::sample;

const CPR: &str = "0707814321";
const SECRET: &[u8] = b"a webhook secret shared with the team's system";
const WAIT: Duration = Duration::from_secs(30);

/// One request the loopback server received.
#[derive(Debug)]
struct Received {
    request_line: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server on `port`: answers every request 204 and
/// hands it to the test. Aborting the task closes the port (server down).
fn serve(
    port: u16,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Received>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0_u8; 4096];
                let head_end = loop {
                    if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at;
                    }
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "connection closed inside the request head");
                    buffer.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap().to_owned();
                let headers: HashMap<String, String> = lines
                    .map(|line| {
                        let (name, value) = line.split_once(':').unwrap();
                        (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                    })
                    .collect();
                let length: usize = headers["content-length"].parse().unwrap();
                let mut body = buffer[head_end + 4..].to_vec();
                while body.len() < length {
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "connection closed inside the body");
                    body.extend_from_slice(&chunk[..n]);
                }
                stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tx.send(Received {
                    request_line,
                    headers,
                    body,
                });
            });
        }
    });
    (task, rx)
}

/// Routes admissions and discharges to `discharge-coordinators`, with a
/// webhook to `port` there, and writes its secret (mode 0600).
fn configure(sites: &Sites, port: u16, max_attempts: u32) {
    configure_hooks(
        sites,
        &[hook("discharge-coordinators", port, max_attempts, false)],
    );
}

/// One `[[inboxes.webhooks]]` entry for `inbox`, to `port`.
fn hook(inbox: &str, port: u16, max_attempts: u32, include_notice: bool) -> String {
    format!(
        r#"
[[inboxes.webhooks]]
inbox = "{inbox}"
url = "http://127.0.0.1:{port}/tvaers/hook"
secret_file = "keys/webhook.secret"
max_attempts = {max_attempts}
include_notice = {include_notice}
"#
    )
}

/// Routes admissions and discharges to `discharge-coordinators`, the rest
/// to `caseworkers`, with the webhook entries `hooks`, and writes their
/// secret (mode 0600).
fn configure_hooks(sites: &Sites, hooks: &[String]) {
    let kommune = MUNICIPALITY.org_id;
    let secret = sites.site(kommune).dir.join("keys/webhook.secret");
    write_secret(&secret);
    let config = format!(
        r#"
[inboxes]
default = "caseworkers"

[[inboxes.routes]]
kinds = ["admission", "discharge"]
to = ["discharge-coordinators"]
{}"#,
        hooks.concat()
    );
    sites.add_config_tables(kommune, &config).unwrap();
}

fn write_secret(path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(SECRET).unwrap();
}

/// Checks the signature the way a receiving system would, and the body's
/// fields (an event of `discharge-coordinators`); returns the body.
fn verified(received: &Received) -> serde_json::Value {
    verified_in(received, "discharge-coordinators")
}

/// [`verified`], for an event of `inbox`.
fn verified_in(received: &Received, inbox: &str) -> serde_json::Value {
    let body = signed_json(received);
    let text = body.to_string();
    assert!(
        cpr_leaks(&text, &[CPR]).is_empty(),
        "CPR in the body: {text}"
    );
    default_fields(&body, inbox);
    body
}

/// Checks the request line, the timestamp and the signature the way a
/// receiving system would; returns the body.
fn signed_json(received: &Received) -> serde_json::Value {
    assert_eq!(received.request_line, "POST /tvaers/hook HTTP/1.1");
    assert_eq!(received.headers["content-type"], "application/json");
    let timestamp = &received.headers["x-tvaers-timestamp"];
    let seconds: i64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - seconds).abs() < 120,
        "timestamp {seconds}, now {now}"
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let mut signed = timestamp.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&received.body);
    let signature = received.headers["x-tvaers-signature"]
        .strip_prefix("sha256=")
        .unwrap();
    ring::hmac::verify(&key, &signed, &hex::decode(signature).unwrap())
        .expect("the signature must verify under the shared secret");
    // A wrong key does not verify: the check above can fail.
    let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
    assert!(ring::hmac::verify(&other, &signed, &hex::decode(signature).unwrap()).is_err());

    serde_json::from_slice(&received.body).unwrap()
}

/// The fields of every body: ids, kind and times only, of `inbox`.
fn default_fields(body: &serde_json::Value, inbox: &str) {
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "cursor",
            "event",
            "href",
            "inbox",
            "kind",
            "notice_id",
            "received_at_ms",
            "sender"
        ],
        "only ids, kind and times: {body}"
    );
    assert_eq!(body["event"], "inbox.item");
    assert_eq!(body["inbox"], inbox);
    assert_eq!(body["sender"], PSYCHIATRY.org_id);
    assert_eq!(
        body["href"],
        format!("tvaers:inbox/{inbox}/{}", body["cursor"])
    );
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no webhook request within 30 s")
        .unwrap()
}

async fn send(sites: &Sites, key: &str, notice: v1::Notice) -> String {
    sites
        .deliver(PSYCHIATRY.org_id, MUNICIPALITY.org_id, key, notice, WAIT)
        .await
        .unwrap()
}

async fn events(sites: &Sites, state: &str) -> Vec<v1::WebhookEventRow> {
    sites
        .admin(MUNICIPALITY.org_id)
        .await
        .unwrap()
        .list_webhooks(v1::ListWebhooksRequest {
            state: state.into(),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Polls the admin API until `done` holds for the events.
async fn wait_for(sites: &Sites, what: &str, done: impl Fn(&[v1::WebhookEventRow]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = events(sites, "").await;
        if done(&events) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_events_arrive_and_retries_survive_a_restart() {
    let kommune = MUNICIPALITY.org_id;
    let port = free_port().unwrap();
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    configure(&sites, port, 1000);
    let (server, mut requests) = serve(port);
    sites.start_all().await.unwrap();

    let admission = send(&sites, "w-1", sample::admission(CPR)).await;
    let body = verified(&next(&mut requests).await);
    assert_eq!(body["notice_id"], admission.as_str());
    assert_eq!(body["kind"], "admission");
    let staff = sites.client(kommune).await.unwrap();
    let items = staff
        .list_team_inbox("discharge-coordinators", 0, 10)
        .await
        .unwrap();
    assert_eq!(body["cursor"], items[0].cursor);
    wait_for(&sites, "the first event delivered", |events| {
        events.len() == 1 && events[0].state == "delivered" && events[0].attempts == 1
    })
    .await;

    // The server goes down: the next event is retried, not lost.
    server.abort();
    let _ = server.await;
    let discharge = send(&sites, "w-2", sample::discharge(CPR)).await;
    wait_for(&sites, "the second event retried", |events| {
        events.iter().any(|e| {
            e.notice_id == discharge
                && e.state == "pending"
                && e.attempts >= 2
                && !e.last_error.is_empty()
        })
    })
    .await;

    // The daemon restarts while the server is still down; once the server
    // is back, the event queued before the restart arrives.
    sites.stop(kommune).await.unwrap();
    let (_server, mut requests) = serve(port);
    sites.start(kommune).await.unwrap();
    let body = verified(&next(&mut requests).await);
    assert_eq!(body["notice_id"], discharge.as_str());
    assert_eq!(body["kind"], "discharge");
    wait_for(&sites, "both events delivered", |events| {
        events.len() == 2 && events.iter().all(|e| e.state == "delivered")
    })
    .await;
    // Only items routed to the inbox with the webhook make events.
    send(&sites, "w-3", sample::plan_change(CPR, kommune)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events(&sites, "").await.len(), 2);
    assert!(
        cpr_leaks(&sites.all_logs(), &[CPR]).is_empty(),
        "a log holds the CPR number"
    );
}

fn cli(config: &Path, args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new(cli_binary().unwrap())
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .env_remove("TVAERS_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tvaers {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_dead_lettered_after_max_attempts_and_can_be_retried() {
    let kommune = MUNICIPALITY.org_id;
    // Nobody listens on this port until the retry below.
    let port = free_port().unwrap();
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    configure(&sites, port, 2);
    let metrics = sites.enable_metrics(kommune).unwrap();
    sites.start_all().await.unwrap();

    let admission = send(&sites, "d-1", sample::admission(CPR)).await;
    wait_for(&sites, "the event dead after 2 attempts", |events| {
        events.len() == 1 && events[0].state == "dead"
    })
    .await;
    let dead = events(&sites, "dead").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].notice_id, admission);
    assert!(
        dead[0].last_error.contains("cannot connect"),
        "{}",
        dead[0].last_error
    );
    // It stays dead: no further attempts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(events(&sites, "dead").await[0].attempts, 2);
    assert!(events(&sites, "pending").await.is_empty());
    let (status, text) = http_get(metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        r#"tvaers_webhook_events{inbox="discharge-coordinators",state="dead"} 1"#,
        r#"tvaers_webhook_events{inbox="discharge-coordinators",state="pending"} 0"#,
        r#"tvaers_webhook_events{inbox="discharge-coordinators",state="delivered"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    let config = sites.site(kommune).config.clone();
    let listed = tokio::task::spawn_blocking({
        let config = config.clone();
        move || cli(&config, &["webhooks", "list", "--state", "dead"])
    })
    .await
    .unwrap();
    let listed = listed["events"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], dead[0].id);
    assert_eq!(listed[0]["state"], "dead");
    assert_eq!(listed[0]["notice_id"], admission.as_str());

    // The operator fixes the receiver and retries the event.
    let (_server, mut requests) = serve(port);
    let id = dead[0].id.to_string();
    let retried = tokio::task::spawn_blocking(move || cli(&config, &["webhooks", "retry", &id]))
        .await
        .unwrap();
    assert_eq!(retried["reopened"], true);
    let body = verified(&next(&mut requests).await);
    assert_eq!(body["notice_id"], admission.as_str());
    wait_for(&sites, "the retried event delivered", |events| {
        events.len() == 1 && events[0].state == "delivered" && events[0].attempts == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inbox_may_opt_in_to_the_full_notice() {
    let kommune = MUNICIPALITY.org_id;
    let port = free_port().unwrap();
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    configure_hooks(
        &sites,
        &[
            hook("discharge-coordinators", port, 5, true),
            hook("caseworkers", port, 5, false),
        ],
    );
    let (_server, mut requests) = serve(port);
    sites.start_all().await.unwrap();

    let notice = sample::admission(CPR);
    let Some(v1::notice::Payload::Admission(sent)) = notice.payload.clone() else {
        panic!("the sample is an admission");
    };
    let admission = send(&sites, "n-1", notice).await;
    let mut body = signed_json(&next(&mut requests).await);
    let included = body.as_object_mut().unwrap().remove("notice").unwrap();
    // Besides the notice, the usual fields.
    default_fields(&body, "discharge-coordinators");
    assert_eq!(body["notice_id"], admission.as_str());
    assert_eq!(included["citizen_cpr"], CPR);
    assert_eq!(included["kind"], "admission");
    let received = &included["admission"];
    assert_eq!(received["admitted_at_ms"], sent.admitted_at_ms);
    assert_eq!(received["ward"]["code"], sent.ward.unwrap().code.as_str());
    assert_eq!(
        received["ward_contact"]["name"],
        sent.ward_contact.unwrap().name.as_str()
    );
    assert_eq!(
        received["urgency"],
        v1::AdmissionUrgency::try_from(sent.urgency)
            .unwrap()
            .as_str_name()
    );

    // The default inbox's webhook did not opt in: no CPR number, no notice.
    send(&sites, "n-2", sample::plan_change(CPR, kommune)).await;
    let body = verified_in(&next(&mut requests).await, "caseworkers");
    assert!(body.get("notice").is_none(), "{body}");
    assert!(
        cpr_leaks(&sites.all_logs(), &[CPR]).is_empty(),
        "a log holds the CPR number"
    );
}

/// An escalation inbox with a webhook is told of each item escalated into
/// it, like of an item routed there.
#[tokio::test(flavor = "multi_thread")]
async fn an_escalated_item_reaches_the_escalation_inbox_s_webhook() {
    let kommune = MUNICIPALITY.org_id;
    let port = free_port().unwrap();
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY]).unwrap();
    configure_hooks(&sites, &[hook("team-leads", port, 5, false)]);
    sites.add_config_tables(kommune, OVERDUE_AT_ONCE).unwrap();
    let (_server, mut requests) = serve(port);
    sites.start_all().await.unwrap();

    let admission = send(&sites, "n-1", sample::admission(CPR)).await;
    let body = verified_in(&next(&mut requests).await, "team-leads");
    assert_eq!(body["notice_id"], admission.as_str());
    assert_eq!(body["kind"], "admission");
    // One event, of the escalation inbox only, marked delivered.
    wait_for(&sites, "the event is delivered", |rows| {
        rows.len() == 1 && rows[0].inbox == "team-leads" && rows[0].state == "delivered"
    })
    .await;
}
