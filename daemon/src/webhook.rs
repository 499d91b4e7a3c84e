//! Webhooks: telling a team's own system, over HTTP, that an item arrived in
//! its inbox.
//!
//! The accept path writes one pending [`WebhookEvent`] per placement in an
//! inbox with a `[[inboxes.webhooks]]` entry, in the transaction that places
//! the item (see [`crate::store::Store::accept_inbox`]), so a restart resumes
//! sending. One task per daemon ([`spawn`]) claims due events, POSTs each as
//! JSON and records the outcome; what to record is decided by [`decide`], a
//! pure function of (event, result, now) in the style of
//! [`crate::delivery::machine`].
//!
//! By default the body carries ids, the notice kind and times only, never
//! the CPR number, names or free text: the receiving system fetches the item
//! through the local API by the `href` it is given. An inbox whose webhook
//! says `include_notice = true` gets the whole notice in the body as well
//! (`notice`, see [`crate::notice_json`]), read from the store when the
//! event is sent (`null` once retention purged it). The body is signed with
//! HMAC-SHA256 over `timestamp + "." + body` under the inbox's secret.
//! Plain `http://` only: an `https` endpoint needs a TLS-terminating proxy
//! on loopback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Millis;
use crate::config::WebhookConfig;
use crate::delivery::machine::backoff;
use crate::store::{Store, StoreError, WebhookEvent, WebhookUpdate};

/// How long a connect, and then the whole exchange, may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed event is due again after this unless its outcome is recorded
/// first: longer than a connect plus an exchange.
const LEASE_MS: Millis = 60_000;
/// Events claimed per round.
const BATCH: u32 = 32;
/// How often due retries are looked for when no new item wakes the task.
const POLL: Duration = Duration::from_secs(1);
/// Most of a response read: the status line is all that is needed.
const MAX_RESPONSE_HEAD: usize = 8192;
/// `last_error` of an event whose inbox lost its webhook entry.
pub const NO_WEBHOOK: &str = "the inbox has no webhook configured any more";

/// What went wrong setting up or sending a webhook. Never carries notice
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    BadUrl(&'static str),
    #[error("cannot read the webhook secret {path}: {source}")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook secret {0} is empty")]
    EmptySecret(PathBuf),
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("no answer from {authority} within {seconds} s")]
    Timeout { authority: String, seconds: u64 },
    #[error("exchange with {authority} failed: {source}")]
    Io {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{authority} answered with something other than HTTP/1.x")]
    BadResponse { authority: String },
    #[error("{authority} answered HTTP {status}")]
    Status { authority: String, status: u16 },
}

/// Where a webhook POSTs: parsed from `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT`, for connecting and the `Host` header.
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, WebhookError> {
        let rest = url.strip_prefix("http://").ok_or(WebhookError::BadUrl(
            "must start with `http://` (for https, put a TLS-terminating proxy on loopback)",
        ))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(WebhookError::BadUrl(
                "must name a host (and no user), e.g. `http://127.0.0.1:8080/tvaers`",
            ));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) || path.contains('#') {
            return Err(WebhookError::BadUrl(
                "the path must not hold spaces, control characters or `#`",
            ));
        }
        let has_port = match authority.rsplit_once(':') {
            Some((_, port)) if !authority.ends_with(']') => {
                port.parse::<u16>()
                    .map_err(|_| WebhookError::BadUrl("the port must be a number up to 65535"))?;
                true
            }
            _ => false,
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            authority,
            path: path.to_owned(),
        })
    }
}

/// Retry policy of webhook events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: Millis,
    pub max_ms: Millis,
}

/// What to record after attempt number `event.attempts + 1` of `event`
/// ended with `result` at `now`: delivered; dead once `max_attempts`
/// attempts have failed; otherwise retried after `min(initial · 2ⁿ, max)`
/// (n = failures before this one), drawn from `[delay/2, delay]` ("equal
/// jitter") with `rng`.
pub fn decide(
    event: &WebhookEvent,
    result: Result<(), String>,
    now: Millis,
    max_attempts: u32,
    policy: Backoff,
    rng: &mut fastrand::Rng,
) -> WebhookUpdate {
    let attempts = event.attempts.saturating_add(1);
    match result {
        Ok(()) => WebhookUpdate::Delivered {
            id: event.id,
            attempts,
            at_ms: now,
        },
        Err(error) if attempts >= max_attempts => WebhookUpdate::Dead {
            id: event.id,
            attempts,
            error,
            at_ms: now,
        },
        Err(error) => {
            let delay = backoff(policy.initial_ms, policy.max_ms, attempts - 1);
            let delay = if delay <= 0 {
                0
            } else {
                rng.i64(delay / 2..=delay)
            };
            WebhookUpdate::Retry {
                id: event.id,
                attempts,
                next_attempt_at_ms: now.saturating_add(delay),
                error,
                at_ms: now,
            }
        }
    }
}

/// The JSON body for `event`: ids, kind and times; the notice only when
/// `notice` is given (an opted-in inbox: the notice as JSON, or `null` when
/// purged).
pub fn body(event: &WebhookEvent, notice: Option<serde_json::Value>) -> Vec<u8> {
    let mut body = serde_json::json!({
        "event": "inbox.item",
        "inbox": event.inbox,
        "cursor": event.cursor,
        "notice_id": event.notice_id,
        "sender": event.sender,
        "kind": event.kind,
        "received_at_ms": event.received_at_ms,
        "href": format!("tvaers:inbox/{}/{}", event.inbox, event.cursor),
    });
    if let Some(notice) = notice {
        body["notice"] = notice;
    }
    body.to_string().into_bytes()
}

/// The notice of the item at `cursor` as JSON, for an opted-in webhook;
/// `null` when its body was purged (or the item is gone).
async fn notice_of(store: &dyn Store, cursor: u64) -> Result<serde_json::Value, StoreError> {
    let notice = crate::store::inbox_item(store, cursor)
        .await?
        .and_then(|record| tvaers_proto::open_envelope(&record.envelope))
        .and_then(|envelope| envelope.notice);
    Ok(notice.map_or(serde_json::Value::Null, |n| crate::notice_json::notice(&n)))
}

/// `sha256=` + hex HMAC-SHA256 of `timestamp + "." + body` under `key`.
pub fn signature(key: &ring::hmac::Key, timestamp: i64, body: &[u8]) -> String {
    let mut context = ring::hmac::Context::with_key(key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex::encode(context.sign().as_ref()))
}

/// Reads a webhook secret: the file's bytes, surrounding whitespace
/// trimmed. Its mode (owner-only) is checked with the other key files by
/// [`crate::daemon::check_key_files`].
pub fn load_secret(path: &Path) -> Result<ring::hmac::Key, WebhookError> {
    let bytes = std::fs::read(path).map_err(|source| WebhookError::Secret {
        path: path.to_owned(),
        source,
    })?;
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        return Err(WebhookError::EmptySecret(path.to_owned()));
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
}

/// One configured webhook, ready to send.
#[derive(Debug)]
pub struct Hook {
    pub target: Target,
    pub key: ring::hmac::Key,
    pub max_attempts: u32,
    /// Put the whole notice in the body (CPR number and health details).
    pub include_notice: bool,
}

impl Hook {
    pub fn load(config: &WebhookConfig) -> Result<Hook, WebhookError> {
        Ok(Hook {
            target: Target::parse(&config.url)?,
            key: load_secret(&config.secret_file)?,
            max_attempts: config.max_attempts,
            include_notice: config.include_notice,
        })
    }
}

/// POSTs `body` to `target`, signed with `key` for `timestamp`; Ok on 2xx.
pub async fn send(
    target: &Target,
    key: &ring::hmac::Key,
    timestamp: i64,
    body: &[u8],
) -> Result<(), WebhookError> {
    let authority = &target.authority;
    let mut stream = tokio::time::timeout(
        SEND_TIMEOUT,
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    .map_err(|_| WebhookError::Timeout {
        authority: authority.clone(),
        seconds: SEND_TIMEOUT.as_secs(),
    })?
    .map_err(|e| WebhookError::Connect {
        authority: authority.clone(),
        reason: e.to_string(),
    })?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nUser-Agent: tvaersd\r\nConnection: close\r\n\
         X-Tvaers-Timestamp: {timestamp}\r\nX-Tvaers-Signature: {signature}\r\n\r\n",
        path = target.path,
        length = body.len(),
        signature = signature(key, timestamp, body),
    );
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        let mut response = Vec::with_capacity(256);
        let mut chunk = [0_u8; 1024];
        while !response.contains(&b'\n') && response.len() < MAX_RESPONSE_HEAD {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..read]);
        }
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(SEND_TIMEOUT, exchange)
        .await
        .map_err(|_| WebhookError::Timeout {
            authority: authority.clone(),
            seconds: SEND_TIMEOUT.as_secs(),
        })?
        .map_err(|source| WebhookError::Io {
            authority: authority.clone(),
            source,
        })?;
    let status = status_code(&response).ok_or_else(|| WebhookError::BadResponse {
        authority: authority.clone(),
    })?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(WebhookError::Status {
            authority: authority.clone(),
            status,
        })
    }
}

/// The status code of an HTTP/1.x status line at the start of `response`.
fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Sends due webhook events until `shutdown`, waking when `newest_cursor`
/// moves (a new item) and every [`POLL`] for retries. A round in progress at
/// shutdown records the outcomes it has; await the handle before closing
/// the store.
pub fn spawn(
    store: Arc<dyn Store>,
    hooks: HashMap<String, Hook>,
    policy: Backoff,
    mut newest_cursor: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if hooks.is_empty() {
            // Nothing to send to: no claiming transaction every second.
            // Events of an inbox whose webhook was removed wait for it.
            return;
        }
        let mut rng = fastrand::Rng::new();
        loop {
            newest_cursor.borrow_and_update();
            let now = crate::now_ms();
            let claimed = match store
                .claim_webhooks(now, now.saturating_add(LEASE_MS), BATCH)
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "webhooks: cannot claim due events; trying again");
                    Vec::new()
                }
            };
            let full = claimed.len() == BATCH as usize;
            let mut updates = Vec::with_capacity(claimed.len());
            for event in &claimed {
                let result = match hooks.get(&event.inbox) {
                    Some(hook) => {
                        let notice = if hook.include_notice {
                            notice_of(store.as_ref(), event.cursor).await.map(Some)
                        } else {
                            Ok(None)
                        };
                        match notice {
                            Ok(notice) => {
                                let body = body(event, notice);
                                let sent =
                                    send(&hook.target, &hook.key, crate::now_ms() / 1000, &body);
                                // At shutdown a send in progress is dropped: its
                                // event stays claimed and is sent again after the
                                // lease.
                                tokio::select! {
                                    sent = sent => sent.map_err(|e| e.to_string()),
                                    () = shutdown.cancelled() => break,
                                }
                            }
                            // Counts as a failed attempt: retried with backoff.
                            Err(error) => {
                                Err(format!("cannot read the notice to include: {error}"))
                            }
                        }
                    }
                    None => Err(NO_WEBHOOK.to_owned()),
                };
                // An event of an inbox whose webhook was removed is given up at
                // once, with a reason an operator can act on (add it back, retry).
                let max_attempts = hooks.get(&event.inbox).map_or(1, |hook| hook.max_attempts);
                if let Err(error) = &result {
                    tracing::info!(
                        id = event.id,
                        inbox = %event.inbox,
                        cursor = event.cursor,
                        attempt = event.attempts + 1,
                        %error,
                        "webhooks: send failed"
                    );
                }
                updates.push(decide(
                    event,
                    result,
                    crate::now_ms(),
                    max_attempts,
                    policy,
                    &mut rng,
                ));
            }
            if !updates.is_empty()
                && let Err(error) = store.update_webhooks(updates).await
            {
                // The events stay claimed until their lease runs out, then are
                // sent again: at least once.
                tracing::warn!(%error, "webhooks: cannot record send outcomes");
            }
            if shutdown.is_cancelled() {
                return;
            }
            if full {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = newest_cursor.changed() => if changed.is_err() {
                    // No more new items can arrive; retries still run.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(POLL) => {}
                    }
                },
                () = tokio::time::sleep(POLL) => {}
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::WebhookState;

    fn event(attempts: u32) -> WebhookEvent {
        WebhookEvent {
            id: 7,
            inbox: "discharge-coordinators".into(),
            cursor: 42,
            notice_id: "n-1".into(),
            sender: "psyk.region".into(),
            kind: "admission".into(),
            received_at_ms: 1_000,
            state: WebhookState::Pending,
            attempts,
            next_attempt_at_ms: 1_000,
            last_error: None,
            created_at_ms: 1_000,
            updated_at_ms: 1_000,
        }
    }

    const POLICY: Backoff = Backoff {
        initial_ms: 1_000,
        max_ms: 60_000,
    };

    #[test]
    fn success_is_delivered_with_the_attempt_counted() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            decide(&event(3), Ok(()), 5_000, 8, POLICY, &mut rng),
            WebhookUpdate::Delivered {
                id: 7,
                attempts: 4,
                at_ms: 5_000
            }
        );
    }

    #[test]
    fn failures_back_off_doubling_with_bounded_jitter_up_to_the_cap() {
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut now = 10_000;
            let mut current = event(0);
            for n in 0..7_u32 {
                let update = decide(&current, Err("down".into()), now, 8, POLICY, &mut rng);
                let WebhookUpdate::Retry {
                    attempts,
                    next_attempt_at_ms,
                    ..
                } = update
                else {
                    panic!("attempt {} should retry, got {update:?}", n + 1);
                };
                assert_eq!(attempts, n + 1);
                let full = (1_000_i64 << n).min(60_000);
                let delay = next_attempt_at_ms - now;
                assert!(
                    (full / 2..=full).contains(&delay),
                    "seed {seed} attempt {}: delay {delay} outside [{}, {full}]",
                    n + 1,
                    full / 2
                );
                current.attempts = attempts;
                now = next_attempt_at_ms;
            }
        }
    }

    #[test]
    fn the_last_allowed_failure_is_dead_with_its_error() {
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(
            decide(
                &event(7),
                Err("HTTP 500".into()),
                9_000,
                8,
                POLICY,
                &mut rng
            ),
            WebhookUpdate::Dead {
                id: 7,
                attempts: 8,
                error: "HTTP 500".into(),
                at_ms: 9_000
            }
        );
        assert!(matches!(
            decide(&event(0), Err("x".into()), 9_000, 1, POLICY, &mut rng),
            WebhookUpdate::Dead { attempts: 1, .. }
        ));
        assert!(matches!(
            decide(&event(0), Err("x".into()), 9_000, 2, POLICY, &mut rng),
            WebhookUpdate::Retry { attempts: 1, .. }
        ));
    }

    #[test]
    fn the_body_names_ids_and_kind_only() {
        let body: serde_json::Value = serde_json::from_slice(&body(&event(0), None)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "event": "inbox.item",
                "inbox": "discharge-coordinators",
                "cursor": 42,
                "notice_id": "n-1",
                "sender": "psyk.region",
                "kind": "admission",
                "received_at_ms": 1000,
                "href": "tvaers:inbox/discharge-coordinators/42",
            })
        );
    }

    #[test]
    fn an_opted_in_body_adds_the_notice_and_nothing_else() {
        let notice = serde_json::json!({"kind": "admission", "citizen_cpr": "0707814321"});
        let with: serde_json::Value =
            serde_json::from_slice(&body(&event(0), Some(notice.clone()))).unwrap();
        let mut without: serde_json::Value =
            serde_json::from_slice(&body(&event(0), None)).unwrap();
        assert_eq!(with["notice"], notice);
        without["notice"] = notice;
        assert_eq!(with, without);
    }

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let body = b" do ya want for nothing?";
        let expected = ring::hmac::sign(&key, b"1700000000. do ya want for nothing?");
        assert_eq!(
            signature(&key, 1_700_000_000, body),
            format!("sha256={}", hex::encode(expected.as_ref()))
        );
    }

    #[test]
    fn targets_parse_http_urls_only() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/tvaers").unwrap(),
            Target {
                authority: "127.0.0.1:8080".into(),
                path: "/tvaers".into()
            }
        );
        assert_eq!(
            Target::parse("http://hooks.local").unwrap(),
            Target {
                authority: "hooks.local:80".into(),
                path: "/".into()
            }
        );
        for bad in [
            "https://x/",
            "ftp://x",
            "http:///p",
            "http://u@x/",
            "http://x:99999/",
            "http://x/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500 Oops\r\n"), Some(500));
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
