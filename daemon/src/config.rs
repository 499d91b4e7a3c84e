//! The daemon's configuration: a TOML file turned into typed settings.
//!
//! Relative paths in the file are resolved against the file's own directory,
//! so a site directory can be moved as a whole. Every error names the key
//! (and the file) that is wrong, so an operator can fix it without reading
//! code. `config/*.toml` in the repository are commented examples.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Millis;
use crate::at_rest::KekSource;
use crate::escalation::{DeadlineRule, EscalationPolicy};
use crate::routing::{RouteRule, RoutingTable};
use crate::signing::PublicKey;
use crate::transport::tls::Fingerprint;
use crate::working_hours::{self, WorkingHours, WorkingHoursError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// Which sector an organisation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sector {
    Municipality,
    Psychiatry,
    GeneralPractice,
}

/// Every notice kind, as `Notice::kind_name` spells it.
pub const NOTICE_KINDS: [&str; 5] = [
    "admission",
    "discharge",
    "no_show",
    "plan_change",
    "correction",
];

/// How an error about an unknown notice kind says what is accepted.
pub const NOTICE_KINDS_HINT: &str = "use admission, discharge, no-show, plan-change or correction";

/// The [`NOTICE_KINDS`] name of a kind as written in the config, where
/// `no-show` and `no_show` are both accepted; `None` for an unknown kind.
pub fn notice_kind(text: &str) -> Option<&'static str> {
    let text = text.replace('-', "_");
    NOTICE_KINDS.iter().copied().find(|kind| *kind == text)
}

/// Rewrites config kinds in place to their [`NOTICE_KINDS`] names; the
/// first unknown one is the error.
pub fn normalize_notice_kinds(kinds: &mut [String]) -> Result<(), String> {
    for kind in kinds {
        *kind = notice_kind(kind).ok_or_else(|| kind.clone())?.to_owned();
    }
    Ok(())
}

impl Sector {
    /// The notice kinds an organisation of this sector may send us unless
    /// its `[[peers]]` entry says otherwise: only a hospital admits and
    /// discharges; everyone reports no-shows and plan changes and corrects
    /// what it sent.
    pub fn default_may_send(self) -> &'static [&'static str] {
        match self {
            Sector::Psychiatry => &NOTICE_KINDS,
            Sector::Municipality | Sector::GeneralPractice => {
                &["no_show", "plan_change", "correction"]
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sector::Municipality => "municipality",
            Sector::Psychiatry => "psychiatry",
            Sector::GeneralPractice => "general-practice",
        }
    }
}

/// The whole configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub site: Site,
    pub store: StoreConfig,
    /// `[store]` settings for several instances sharing the store.
    pub instances: InstancesConfig,
    /// `[storage]`: where the key-encryption key comes from. Required to
    /// run (encryption at rest is not optional); `None` only so tools can
    /// still read an older config and say what to add.
    pub storage: Option<StorageConfig>,
    pub transport: TransportConfig,
    pub api: ApiConfig,
    pub delivery: DeliveryConfig,
    pub metrics: MetricsConfig,
    pub retention: RetentionConfig,
    pub peers: Vec<Peer>,
    /// Which staff inboxes a received notice goes to (`[inboxes]`).
    pub routing: RoutingTable,
    /// Handling deadlines per inbox and kind (`[[inboxes.deadlines]]`),
    /// counted in `[working_hours]`.
    pub escalation: EscalationPolicy,
    /// Webhooks per team inbox (`[[inboxes.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[inboxes.webhooks]]` entry: where to POST an event for each item
/// placed in `inbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub inbox: String,
    /// `http://HOST[:PORT]/PATH`, checked at load.
    pub url: String,
    /// The HMAC-SHA256 key (mode 0600), read when the daemon starts.
    pub secret_file: PathBuf,
    /// Attempts before an event is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// The event body carries the whole notice, CPR number and health
    /// details included (see [`crate::notice_json`]); off by default.
    pub include_notice: bool,
}

/// Attempts a webhook event gets when its entry does not say.
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone)]
pub struct Site {
    pub org_id: String,
    pub name: String,
    pub sector: Sector,
    /// The organisation's Ed25519 signing key (PKCS#8), written by
    /// `tvaers init`.
    pub signing_key: Option<PathBuf>,
}

/// How this daemon shares outbox work with other instances of the
/// organisation (see [`crate::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancesConfig {
    /// `store.instance_id`: this instance's name in the lease table. Unset:
    /// a fixed one for SQLite (one instance only), a random one per start
    /// for PostgreSQL.
    pub instance_id: Option<String>,
    /// `store.lease_seconds`, in ms: how long an outbox lease lasts without
    /// renewal, so how long a crashed instance's notices wait.
    pub lease_ms: i64,
    /// `store.poll_ms`: how often a PostgreSQL instance looks for rows
    /// other instances stored for the shards it holds.
    pub poll_ms: u64,
}

/// Default of `store.lease_seconds`.
pub const DEFAULT_LEASE_SECONDS: u64 = 15;
/// Default of `store.poll_ms`.
pub const DEFAULT_POLL_MS: u64 = 200;

/// Default of `store.max_connections` (PostgreSQL only).
pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 8;

#[derive(Clone)]
pub enum StoreConfig {
    Sqlite {
        path: PathBuf,
    },
    /// `url` may carry a password: never log it, show
    /// [`crate::store::postgres::describe_url`] instead (as `Debug` does).
    Postgres {
        url: String,
        max_connections: u32,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            StoreConfig::Postgres {
                url,
                max_connections,
            } => f
                .debug_struct("Postgres")
                .field("url", &crate::store::postgres::describe_url(url))
                .field("max_connections", max_connections)
                .finish(),
        }
    }
}

/// Encryption at rest: the key-encryption key that wraps the store's data
/// key (see [`crate::at_rest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub kek: KekSource,
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub max_frame_bytes: u32,
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    /// The admin API (for the `tvaers` CLI), mode 0600. Defaults to
    /// `admin.sock` beside `socket`.
    pub admin_socket: PathBuf,
}

/// The optional HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// How long notice bodies are kept once finished (see
/// [`crate::retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Days after delivery (or failure) of an outbox row, or after the
    /// acknowledgement of an inbox item, that its body is purged; 0 purges
    /// it at the next run after that.
    pub body_days: u32,
}

/// Default of `retention.body_days`. A body here is a transport copy: the
/// clinical record lives in the EHR or case system that submitted or
/// acknowledged it. It is kept long enough to settle a dispute about what
/// was sent (which the stored signatures prove only while the signed bytes
/// exist), and no longer, because a copy kept is a copy that can leak.
pub const DEFAULT_RETENTION_BODY_DAYS: u32 = 30;

/// Ten years: more is not retention.
const MAX_RETENTION_BODY_DAYS: u32 = 3_650;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub ttl_seconds: u64,
    pub max_in_flight: usize,
    pub backoff_initial_ms: i64,
    pub backoff_max_ms: i64,
    pub send_timeout_ms: u64,
    /// A notice created further in the future than this is refused.
    pub max_clock_skew_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub org_id: String,
    pub name: String,
    pub sector: Option<Sector>,
    /// Where the peer listens; the first is tried first.
    pub addresses: Vec<SocketAddr>,
    /// The certificate the peer presents now.
    pub fingerprint: Fingerprint,
    /// The certificate it presented before a rotation, accepted until the
    /// overlap window ends so traffic never stops.
    pub previous_fingerprint: Option<PreviousFingerprint>,
    /// The key the peer signs its card (and notices) with.
    pub signing_key: Option<PublicKey>,
    /// Set by `tvaers peer revoke`: no connection in either direction.
    pub revoked_at_ms: Option<Millis>,
    /// Notice kinds this peer may send us (`Notice::kind_name` spelling):
    /// `may_send` in the file, else its sector's default, else (no sector
    /// known) the kinds every sector may send.
    pub may_send: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousFingerprint {
    pub fingerprint: Fingerprint,
    pub valid_until_ms: Millis,
}

impl Peer {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }

    /// The certificates this peer may connect with, each with the time it
    /// stops being accepted (`None`: until changed). A revoked peer has none.
    pub fn pins(&self) -> Vec<(Fingerprint, Option<Millis>)> {
        if self.is_revoked() {
            return Vec::new();
        }
        let mut pins = vec![(self.fingerprint, None)];
        if let Some(previous) = self.previous_fingerprint {
            pins.push((previous.fingerprint, Some(previous.valid_until_ms)));
        }
        pins
    }
}

// ---- the file format ----------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    site: FileSite,
    store: FileStore,
    storage: Option<FileStorage>,
    transport: FileTransport,
    api: FileApi,
    #[serde(default)]
    delivery: FileDelivery,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    retention: FileRetention,
    #[serde(default)]
    peers: Vec<FilePeer>,
    inboxes: Option<FileInboxes>,
    working_hours: Option<FileWorkingHours>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInboxes {
    default: Option<String>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    deadlines: Vec<FileDeadline>,
    #[serde(default)]
    webhooks: Vec<FileWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    inbox: String,
    url: String,
    secret_file: PathBuf,
    #[serde(default = "default_webhook_max_attempts")]
    max_attempts: u32,
    #[serde(default)]
    include_notice: bool,
}

fn default_webhook_max_attempts() -> u32 {
    DEFAULT_WEBHOOK_MAX_ATTEMPTS
}

/// `[[inboxes.webhooks]]` checked against the inboxes `routing` and
/// `escalation` fill; errors as (key, problem).
fn webhooks(
    file: Option<&FileInboxes>,
    routing: &RoutingTable,
    escalation: &EscalationPolicy,
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<Vec<WebhookConfig>, (String, String)> {
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let mut known = routing.inboxes();
    known.extend(
        escalation
            .rules()
            .iter()
            .map(|rule| rule.escalate_to.as_str()),
    );
    let mut hooks: Vec<WebhookConfig> = Vec::with_capacity(file.webhooks.len());
    for (index, hook) in file.webhooks.iter().enumerate() {
        let at =
            |field: &str, problem: String| (format!("inboxes.webhooks[{index}].{field}"), problem);
        if !known.contains(&hook.inbox.as_str()) {
            return Err(at(
                "inbox",
                format!(
                    "no route, default or escalation fills inbox {:?}",
                    hook.inbox
                ),
            ));
        }
        if hooks.iter().any(|h| h.inbox == hook.inbox) {
            return Err(at(
                "inbox",
                format!("inbox {:?} has a webhook already", hook.inbox),
            ));
        }
        crate::webhook::Target::parse(&hook.url).map_err(|e| at("url", e.to_string()))?;
        if hook.max_attempts == 0 {
            return Err(at("max_attempts", "must be at least 1".into()));
        }
        hooks.push(WebhookConfig {
            inbox: hook.inbox.clone(),
            url: hook.url.clone(),
            secret_file: resolve(&hook.secret_file),
            max_attempts: hook.max_attempts,
            include_notice: hook.include_notice,
        });
    }
    Ok(hooks)
}

/// Lists default to empty so that a missing `to` is reported by
/// `RoutingTable::new` under its key rather than as a syntax error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    from_orgs: Vec<String>,
    #[serde(default)]
    from_sectors: Vec<Sector>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    stop: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDeadline {
    inbox: String,
    #[serde(default)]
    kinds: Vec<String>,
    within_working_hours: f64,
    escalate_to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorkingHours {
    #[serde(default = "default_time_zone")]
    time_zone: String,
    #[serde(default = "default_working_days")]
    days: Vec<String>,
    #[serde(default = "default_open")]
    open: String,
    #[serde(default = "default_close")]
    close: String,
    #[serde(default)]
    holidays: Vec<String>,
}

impl Default for FileWorkingHours {
    fn default() -> Self {
        FileWorkingHours {
            time_zone: default_time_zone(),
            days: default_working_days(),
            open: default_open(),
            close: default_close(),
            holidays: Vec::new(),
        }
    }
}

fn default_time_zone() -> String {
    working_hours::DEFAULT_TIME_ZONE.to_owned()
}
fn default_working_days() -> Vec<String> {
    working_hours::DEFAULT_DAYS.map(str::to_owned).to_vec()
}
fn default_open() -> String {
    working_hours::DEFAULT_OPEN.to_owned()
}
fn default_close() -> String {
    working_hours::DEFAULT_CLOSE.to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    #[serde(default = "default_retention_body_days")]
    body_days: u32,
}

impl Default for FileRetention {
    fn default() -> Self {
        FileRetention {
            body_days: default_retention_body_days(),
        }
    }
}

fn default_retention_body_days() -> u32 {
    DEFAULT_RETENTION_BODY_DAYS
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
    /// Metrics carry no notice content, but peer names and volumes are
    /// still not for everyone: a non-loopback address must be asked for.
    #[serde(default)]
    allow_non_loopback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSite {
    org_id: String,
    name: String,
    sector: Sector,
    signing_key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    url: String,
    max_connections: Option<u32>,
    instance_id: Option<String>,
    lease_seconds: Option<u64>,
    poll_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    key_file: Option<PathBuf>,
    key_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTransport {
    listen: String,
    certificate: PathBuf,
    private_key: PathBuf,
    #[serde(default = "default_max_frame_bytes")]
    max_frame_bytes: u32,
    #[serde(default = "default_idle_timeout_ms")]
    idle_timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    socket: PathBuf,
    tcp: Option<String>,
    admin_socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDelivery {
    #[serde(default = "default_ttl_seconds")]
    ttl_seconds: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_backoff_initial_ms")]
    backoff_initial_ms: i64,
    #[serde(default = "default_backoff_max_seconds")]
    backoff_max_seconds: i64,
    #[serde(default = "default_send_timeout_ms")]
    send_timeout_ms: u64,
    #[serde(default = "default_max_clock_skew_seconds")]
    max_clock_skew_seconds: u32,
}

impl Default for FileDelivery {
    fn default() -> Self {
        FileDelivery {
            ttl_seconds: default_ttl_seconds(),
            max_in_flight: default_max_in_flight(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_seconds: default_backoff_max_seconds(),
            send_timeout_ms: default_send_timeout_ms(),
            max_clock_skew_seconds: default_max_clock_skew_seconds(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    org_id: String,
    name: String,
    sector: Option<Sector>,
    address: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    fingerprint: String,
    previous_fingerprint: Option<String>,
    previous_fingerprint_until: Option<String>,
    signing_key: Option<String>,
    revoked_at: Option<String>,
    may_send: Option<Vec<String>>,
    /// When `tvaers peer add` added it; informational.
    #[allow(dead_code)]
    added_at: Option<String>,
}

/// Parses an RFC 3339 time (`2026-11-23T15:00:00Z`) into [`Millis`].
pub fn parse_time(text: &str) -> Option<Millis> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Formats [`Millis`] as RFC 3339 UTC, the form config and cards use.
pub fn format_time(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// 64 KiB: a notice with a full plan is a few KiB; anything near this is
/// not a notice.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 * 1024;

fn default_max_frame_bytes() -> u32 {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_idle_timeout_ms() -> u64 {
    30_000
}
fn default_ttl_seconds() -> u64 {
    7 * 24 * 3600
}
fn default_max_in_flight() -> usize {
    256
}
fn default_backoff_initial_ms() -> i64 {
    1_000
}
fn default_backoff_max_seconds() -> i64 {
    300
}
fn default_send_timeout_ms() -> u64 {
    10_000
}
fn default_max_clock_skew_seconds() -> u32 {
    300
}

/// `[working_hours]` as a calendar; errors as (key, problem).
fn working_hours(file: &FileWorkingHours) -> Result<WorkingHours, (String, String)> {
    fn at(key: &'static str) -> impl Fn(WorkingHoursError) -> (String, String) {
        move |e| (format!("working_hours.{key}"), e.to_string())
    }
    let time_zone = working_hours::time_zone(&file.time_zone).map_err(at("time_zone"))?;
    let days = file
        .days
        .iter()
        .map(|day| working_hours::parse_weekday(day))
        .collect::<Result<Vec<_>, _>>()
        .map_err(at("days"))?;
    let open = working_hours::parse_clock(&file.open).map_err(at("open"))?;
    let close = working_hours::parse_clock(&file.close).map_err(at("close"))?;
    let holidays = file
        .holidays
        .iter()
        .map(|date| working_hours::parse_date(date))
        .collect::<Result<Vec<_>, _>>()
        .map_err(at("holidays"))?;
    WorkingHours::new(time_zone, days, open, close, holidays).map_err(|e| match e {
        WorkingHoursError::NoWorkingDays => at("days")(e),
        _ => at("close")(e),
    })
}

/// `[inboxes]` and `[working_hours]` as the routing table and the
/// escalation policy; errors as (key, problem). Without `[inboxes]`
/// everything goes to one inbox and nothing escalates.
fn inboxes(
    file: Option<&FileInboxes>,
    hours: &FileWorkingHours,
) -> Result<(RoutingTable, EscalationPolicy), (String, String)> {
    let hours = working_hours(hours)?;
    let Some(file) = file else {
        return Ok((
            RoutingTable::default(),
            EscalationPolicy::without_deadlines(hours),
        ));
    };
    let rules = file
        .routes
        .iter()
        .map(|r| RouteRule {
            kinds: r.kinds.clone(),
            from_orgs: r.from_orgs.clone(),
            from_sectors: r.from_sectors.clone(),
            units: r.units.clone(),
            to: r.to.clone(),
            stop: r.stop,
        })
        .collect();
    let routing = RoutingTable::new(file.default.clone(), rules)
        .map_err(|e| (e.config_key(), e.to_string()))?;
    let deadlines = file
        .deadlines
        .iter()
        .map(|d| DeadlineRule {
            inbox: d.inbox.clone(),
            kinds: d.kinds.clone(),
            within_working_hours: d.within_working_hours,
            escalate_to: d.escalate_to.clone(),
        })
        .collect();
    let escalation = EscalationPolicy::new(hours, deadlines, &routing.inboxes())
        .map_err(|e| (e.config_key(), e.to_string()))?;
    Ok((routing, escalation))
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses config text as if read from `path` (relative paths resolve
    /// against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let resolve = |p: &Path| base.join(p);

        tvaers_proto::validate::org_id("site.org_id", &file.site.org_id)
            .map_err(|e| invalid("site.org_id", e.problem.to_string()))?;
        if file.site.name.trim().is_empty() {
            return Err(invalid("site.name", "must not be empty".into()));
        }

        let store = match file.store.url.split_once(':') {
            Some(("sqlite", rest)) => {
                let rest = rest.trim_start_matches("//");
                if rest.is_empty() {
                    return Err(invalid("store.url", "sqlite URL has no file path".into()));
                }
                if file.store.max_connections.is_some() {
                    return Err(invalid(
                        "store.max_connections",
                        "applies only to a PostgreSQL store.url".into(),
                    ));
                }
                StoreConfig::Sqlite {
                    path: resolve(Path::new(rest)),
                }
            }
            Some(("postgres" | "postgresql", rest)) => {
                if !rest.starts_with("//") {
                    return Err(invalid(
                        "store.url",
                        "expected `postgres://[USER@]HOST[:PORT]/DATABASE`".into(),
                    ));
                }
                let max_connections = file
                    .store
                    .max_connections
                    .unwrap_or(DEFAULT_POSTGRES_MAX_CONNECTIONS);
                if max_connections == 0 {
                    return Err(invalid(
                        "store.max_connections",
                        "must be at least 1".into(),
                    ));
                }
                StoreConfig::Postgres {
                    url: file.store.url.clone(),
                    max_connections,
                }
            }
            _ => {
                return Err(invalid(
                    "store.url",
                    "expected `sqlite://PATH` or `postgres://[USER@]HOST[:PORT]/DATABASE`".into(),
                ));
            }
        };

        let lease_seconds = file.store.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS);
        if !(1..=3_600).contains(&lease_seconds) {
            return Err(invalid(
                "store.lease_seconds",
                "must be between 1 and 3600".into(),
            ));
        }
        let poll_ms = file.store.poll_ms.unwrap_or(DEFAULT_POLL_MS);
        if !(10..=60_000).contains(&poll_ms) {
            return Err(invalid(
                "store.poll_ms",
                "must be between 10 and 60000".into(),
            ));
        }
        if let Some(id) = &file.store.instance_id
            && (id.is_empty()
                || id.len() > 64
                || id.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "store.instance_id",
                "must be 1 to 64 characters without spaces".into(),
            ));
        }
        let instances = InstancesConfig {
            instance_id: file.store.instance_id.clone(),
            lease_ms: (lease_seconds * 1000) as i64,
            poll_ms,
        };

        let storage = match &file.storage {
            None => None,
            Some(FileStorage {
                key_file: Some(key_file),
                key_env: None,
            }) => Some(StorageConfig {
                kek: KekSource::File(resolve(key_file)),
            }),
            Some(FileStorage {
                key_file: None,
                key_env: Some(name),
            }) => {
                // Never echo the value: an operator may have pasted the key
                // itself here instead of a variable's name.
                let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !is_name {
                    return Err(invalid(
                        "storage.key_env",
                        "must be the name of an environment variable (letters, digits and `_`, \
                         not starting with a digit) that holds the key, not the key itself"
                            .into(),
                    ));
                }
                Some(StorageConfig {
                    kek: KekSource::Env(name.clone()),
                })
            }
            Some(_) => {
                return Err(invalid(
                    "storage.key_file",
                    "give exactly one of `key_file` (a file of 64 hex digits, mode 0600) or \
                     `key_env` (an environment variable holding them)"
                        .into(),
                ));
            }
        };

        let listen = file.transport.listen.parse().map_err(|_| {
            invalid(
                "transport.listen",
                "expected an address like 127.0.0.1:7401".into(),
            )
        })?;
        if file.transport.max_frame_bytes < 1024 {
            return Err(invalid(
                "transport.max_frame_bytes",
                "must be at least 1024".into(),
            ));
        }

        let tcp = match &file.api.tcp {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    invalid("api.tcp", "expected an address like 127.0.0.1:7600".into())
                })?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        "api.tcp",
                        "the local API has no authentication of its own: bind it to a loopback address".into(),
                    ));
                }
                Some(addr)
            }
        };

        let metrics_listen = match &file.metrics.listen {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    invalid(
                        "metrics.listen",
                        "expected an address like 127.0.0.1:9464".into(),
                    )
                })?;
                if !addr.ip().is_loopback() && !file.metrics.allow_non_loopback {
                    return Err(invalid(
                        "metrics.listen",
                        "not a loopback address: set metrics.allow_non_loopback = true to serve metrics beyond this host".into(),
                    ));
                }
                Some(addr)
            }
        };

        let d = &file.delivery;
        if d.ttl_seconds == 0 {
            return Err(invalid("delivery.ttl_seconds", "must be above 0".into()));
        }
        if d.max_in_flight == 0 {
            return Err(invalid("delivery.max_in_flight", "must be above 0".into()));
        }
        if d.backoff_initial_ms <= 0 || d.backoff_max_seconds * 1000 < d.backoff_initial_ms {
            return Err(invalid(
                "delivery.backoff_initial_ms",
                "must be above 0 and at most delivery.backoff_max_seconds".into(),
            ));
        }

        if file.retention.body_days > MAX_RETENTION_BODY_DAYS {
            return Err(invalid(
                "retention.body_days",
                format!("must be at most {MAX_RETENTION_BODY_DAYS} (ten years)"),
            ));
        }

        let mut peers: Vec<Peer> = Vec::with_capacity(file.peers.len());
        for (i, p) in file.peers.iter().enumerate() {
            let key = |field: &str| format!("peers[{i}].{field}");
            tvaers_proto::validate::org_id("org_id", &p.org_id)
                .map_err(|e| invalid(&key("org_id"), e.problem.to_string()))?;
            if p.org_id == file.site.org_id {
                return Err(invalid(
                    &key("org_id"),
                    "a site cannot be its own peer".into(),
                ));
            }
            if peers.iter().any(|q| q.org_id == p.org_id) {
                return Err(invalid(
                    &key("org_id"),
                    format!("peer {} is listed twice", p.org_id),
                ));
            }
            let (address_key, texts) = match (&p.address, p.addresses.is_empty()) {
                (Some(one), true) => (key("address"), vec![one.clone()]),
                (None, false) => (key("addresses"), p.addresses.clone()),
                _ => {
                    return Err(invalid(
                        &key("address"),
                        "give either `address` or a non-empty `addresses` list".into(),
                    ));
                }
            };
            let addresses = texts
                .iter()
                .map(|text| {
                    text.parse().map_err(|_| {
                        invalid(
                            &address_key,
                            "expected an address like 10.0.0.5:7401".into(),
                        )
                    })
                })
                .collect::<Result<Vec<SocketAddr>, _>>()?;
            let fingerprint = Fingerprint::parse(&p.fingerprint)
                .map_err(|e| invalid(&key("fingerprint"), e.to_string()))?;
            let time = |field: &str, text: &str| {
                parse_time(text).ok_or_else(|| {
                    invalid(
                        &key(field),
                        "expected an RFC 3339 time like 2026-12-01T00:00:00Z".into(),
                    )
                })
            };
            let previous_fingerprint =
                match (&p.previous_fingerprint, &p.previous_fingerprint_until) {
                    (None, None) => None,
                    (Some(text), Some(until)) => Some(PreviousFingerprint {
                        fingerprint: Fingerprint::parse(text)
                            .map_err(|e| invalid(&key("previous_fingerprint"), e.to_string()))?,
                        valid_until_ms: time("previous_fingerprint_until", until)?,
                    }),
                    _ => {
                        return Err(invalid(
                            &key("previous_fingerprint_until"),
                            "`previous_fingerprint` and `previous_fingerprint_until` go together"
                                .into(),
                        ));
                    }
                };
            let signing_key = p
                .signing_key
                .as_deref()
                .map(PublicKey::parse)
                .transpose()
                .map_err(|e| invalid(&key("signing_key"), e.to_string()))?;
            let revoked_at_ms = p
                .revoked_at
                .as_deref()
                .map(|text| time("revoked_at", text))
                .transpose()?;
            let may_send = match &p.may_send {
                Some(kinds) => {
                    let mut kinds = kinds.clone();
                    normalize_notice_kinds(&mut kinds).map_err(|kind| {
                        invalid(
                            &key("may_send"),
                            format!("unknown notice kind {kind:?}: {NOTICE_KINDS_HINT}"),
                        )
                    })?;
                    kinds
                }
                None => p
                    .sector
                    .unwrap_or(Sector::Municipality)
                    .default_may_send()
                    .iter()
                    .map(|kind| (*kind).to_owned())
                    .collect(),
            };
            peers.push(Peer {
                org_id: p.org_id.clone(),
                name: p.name.clone(),
                sector: p.sector,
                addresses,
                fingerprint,
                previous_fingerprint,
                signing_key,
                revoked_at_ms,
                may_send,
            });
        }

        let (routing, escalation) = inboxes(
            file.inboxes.as_ref(),
            &file.working_hours.unwrap_or_default(),
        )
        .map_err(|(key, problem)| invalid(&key, problem))?;
        let webhooks = webhooks(file.inboxes.as_ref(), &routing, &escalation, resolve)
            .map_err(|(key, problem)| invalid(&key, problem))?;

        Ok(Config {
            path: path.to_owned(),
            site: Site {
                org_id: file.site.org_id,
                name: file.site.name,
                sector: file.site.sector,
                signing_key: file.site.signing_key.as_deref().map(resolve),
            },
            store,
            instances,
            storage,
            transport: TransportConfig {
                listen,
                certificate: resolve(&file.transport.certificate),
                private_key: resolve(&file.transport.private_key),
                max_frame_bytes: file.transport.max_frame_bytes,
                idle_timeout_ms: file.transport.idle_timeout_ms,
            },
            api: ApiConfig {
                admin_socket: match &file.api.admin_socket {
                    Some(path) => resolve(path),
                    None => resolve(&file.api.socket).with_file_name("admin.sock"),
                },
                socket: resolve(&file.api.socket),
                tcp,
            },
            delivery: DeliveryConfig {
                ttl_seconds: d.ttl_seconds,
                max_in_flight: d.max_in_flight,
                backoff_initial_ms: d.backoff_initial_ms,
                backoff_max_ms: d.backoff_max_seconds * 1000,
                send_timeout_ms: d.send_timeout_ms,
                max_clock_skew_ms: i64::from(d.max_clock_skew_seconds) * 1000,
            },
            metrics: MetricsConfig {
                listen: metrics_listen,
            },
            retention: RetentionConfig {
                body_days: file.retention.body_days,
            },
            peers,
            routing,
            escalation,
            webhooks,
        })
    }

    pub fn peer(&self, org_id: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.org_id == org_id)
    }

    /// Peers notices may be exchanged with (not revoked).
    pub fn active_peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| !p.is_revoked())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[site]
org_id = "kommune-vordingborg"
name = "Vordingborg Kommune"
sector = "municipality"

[store]
url = "sqlite://data/tvaers.db"

[storage]
key_file = "keys/storage.kek"

[transport]
listen = "127.0.0.1:7401"
certificate = "keys/tls-cert.pem"
private_key = "keys/tls-key.pem"

[api]
socket = "run/api.sock"

[[peers]]
org_id = "psyk-sjaelland"
name = "Psykiatrien Region Sjælland"
address = "127.0.0.1:7402"
fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn parses_and_resolves_paths_against_the_file() {
        let c = Config::parse(Path::new("/etc/tvaers/site.toml"), GOOD).unwrap();
        assert_eq!(c.site.sector, Sector::Municipality);
        assert_eq!(c.api.socket, PathBuf::from("/etc/tvaers/run/api.sock"));
        match &c.store {
            StoreConfig::Sqlite { path } => {
                assert_eq!(path, &PathBuf::from("/etc/tvaers/data/tvaers.db"))
            }
            other => panic!("expected SQLite, got {other:?}"),
        }
        assert_eq!(c.delivery.ttl_seconds, 7 * 24 * 3600);
        assert_eq!(c.peers.len(), 1);
        assert!(c.peer("psyk-sjaelland").is_some());
        assert_eq!(
            c.api.admin_socket,
            PathBuf::from("/etc/tvaers/run/admin.sock")
        );
        assert_eq!(
            c.storage,
            Some(StorageConfig {
                kek: KekSource::File(PathBuf::from("/etc/tvaers/keys/storage.kek"))
            })
        );
    }

    #[test]
    fn storage_takes_one_key_source() {
        let env = GOOD.replace(
            "key_file = \"keys/storage.kek\"",
            "key_env = \"TVAERS_STORAGE_KEK\"",
        );
        let c = Config::parse(Path::new("x.toml"), &env).unwrap();
        assert_eq!(
            c.storage.unwrap().kek,
            KekSource::Env("TVAERS_STORAGE_KEK".into())
        );
        for bad in [
            GOOD.replace(
                "key_file = \"keys/storage.kek\"",
                "key_file = \"k\"\nkey_env = \"V\"",
            ),
            GOOD.replace("key_file = \"keys/storage.kek\"", ""),
        ] {
            let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
            assert!(err.to_string().contains("storage.key_file"), "{err}");
        }
        let pasted = "0123456789abcdef".repeat(4);
        let bad = GOOD.replace(
            "key_file = \"keys/storage.kek\"",
            &format!("key_env = \"{pasted}\""),
        );
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("storage.key_env"), "{err}");
        assert!(!err.to_string().contains(&pasted), "{err}");
        let missing = GOOD.replace("[storage]\nkey_file = \"keys/storage.kek\"\n", "");
        assert_eq!(
            Config::parse(Path::new("x.toml"), &missing)
                .unwrap()
                .storage,
            None
        );
    }

    #[test]
    fn peer_rotation_revocation_and_several_addresses() {
        let good = GOOD.replace(
            "address = \"127.0.0.1:7402\"",
            "addresses = [\"127.0.0.1:7402\", \"127.0.0.1:7412\"]\n\
             previous_fingerprint = \"sha256:1111111111111111111111111111111111111111111111111111111111111111\"\n\
             previous_fingerprint_until = \"2026-12-01T00:00:00Z\"\n\
             signing_key = \"ed25519:2222222222222222222222222222222222222222222222222222222222222222\"",
        );
        let c = Config::parse(Path::new("x.toml"), &good).unwrap();
        let peer = &c.peers[0];
        assert_eq!(peer.addresses.len(), 2);
        let pins = peer.pins();
        assert_eq!(pins.len(), 2);
        assert_eq!(pins[1].1, parse_time("2026-12-01T00:00:00Z"));
        assert!(peer.signing_key.is_some());
        assert_eq!(c.active_peers().count(), 1);

        let revoked = good.replace(
            "signing_key =",
            "revoked_at = \"2026-11-23T10:00:00Z\"\nsigning_key =",
        );
        let c = Config::parse(Path::new("x.toml"), &revoked).unwrap();
        assert!(c.peers[0].pins().is_empty());
        assert_eq!(c.active_peers().count(), 0);

        let bad = good.replace("previous_fingerprint_until = \"2026-12-01T00:00:00Z\"", "");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(
            err.to_string().contains("previous_fingerprint_until"),
            "{err}"
        );
        let bad = good.replace("2026-12-01T00:00:00Z", "next week");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(
            err.to_string().contains("previous_fingerprint_until"),
            "{err}"
        );
        let bad = good.replace("ed25519:22", "ed25519:zz");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("peers[0].signing_key"), "{err}");
        let bad = good.replace("addresses = [", "address = \"127.0.0.1:1\"\naddresses = [");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("peers[0].address"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let bad = GOOD.replace("127.0.0.1:7402", "not-an-address");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("peers[0].address"), "{err}");

        let bad = GOOD.replace("sha256:00", "sha1:00");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("peers[0].fingerprint"), "{err}");

        let bad = GOOD.replace("kommune-vordingborg", "bad id!");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("site.org_id"), "{err}");

        let metrics = format!("{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n");
        let err = Config::parse(Path::new("/etc/t.toml"), &metrics).unwrap_err();
        assert!(err.to_string().contains("metrics.listen"), "{err}");
        let allowed = metrics.replace("[metrics]", "[metrics]\nallow_non_loopback = true");
        let config = Config::parse(Path::new("/etc/t.toml"), &allowed).unwrap();
        assert_eq!(config.metrics.listen, Some("0.0.0.0:9464".parse().unwrap()));

        let bad = GOOD.replace("[api]", "[api]\ntcp = \"0.0.0.0:7600\"");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("api.tcp"), "{err}");

        let bad = GOOD.replace("[store]", "[store]\nbogus = 1");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn retention_body_days_defaults_and_bounds() {
        let config = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!(config.retention.body_days, DEFAULT_RETENTION_BODY_DAYS);
        let set = format!("{GOOD}\n[retention]\nbody_days = 0\n");
        let config = Config::parse(Path::new("x.toml"), &set).unwrap();
        assert_eq!(config.retention.body_days, 0);
        let bad = format!("{GOOD}\n[retention]\nbody_days = 4000\n");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("retention.body_days"), "{err}");
        let bad = format!("{GOOD}\n[retention]\nbody_dayz = 3\n");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("body_dayz"), "{err}");
    }

    #[test]
    fn instance_settings_have_defaults_and_bounds() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!(
            c.instances,
            InstancesConfig {
                instance_id: None,
                lease_ms: 15_000,
                poll_ms: DEFAULT_POLL_MS,
            }
        );
        let set = GOOD.replace(
            "[store]",
            "[store]\ninstance_id = \"gw-1\"\nlease_seconds = 3\npoll_ms = 50",
        );
        let c = Config::parse(Path::new("x.toml"), &set).unwrap();
        assert_eq!(c.instances.instance_id.as_deref(), Some("gw-1"));
        assert_eq!((c.instances.lease_ms, c.instances.poll_ms), (3_000, 50));
        for (bad, key) in [
            ("lease_seconds = 0", "store.lease_seconds"),
            ("poll_ms = 1", "store.poll_ms"),
            ("instance_id = \"a b\"", "store.instance_id"),
        ] {
            let text = GOOD.replace("[store]", &format!("[store]\n{bad}"));
            let err = Config::parse(Path::new("x.toml"), &text).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn postgres_store_urls() {
        let url = "postgres://tvaers:s3cret@db.example:5432/tvaers";
        let good = GOOD.replace("sqlite://data/tvaers.db", url);
        let c = Config::parse(Path::new("x.toml"), &good).unwrap();
        match &c.store {
            StoreConfig::Postgres {
                url: parsed,
                max_connections,
            } => {
                assert_eq!(parsed, url);
                assert_eq!(*max_connections, DEFAULT_POSTGRES_MAX_CONNECTIONS);
            }
            other => panic!("expected PostgreSQL, got {other:?}"),
        }
        // Debug output (e.g. in a log line) never shows the password.
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("db.example"), "{debug}");

        let good = GOOD.replace(
            "url = \"sqlite://data/tvaers.db\"",
            "url = \"postgresql://postgres@127.0.0.1/test\"\nmax_connections = 3",
        );
        let c = Config::parse(Path::new("x.toml"), &good).unwrap();
        assert!(matches!(
            c.store,
            StoreConfig::Postgres {
                max_connections: 3,
                ..
            }
        ));

        let bad = good.replace("max_connections = 3", "max_connections = 0");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("store.max_connections"), "{err}");

        let bad = GOOD.replace("[store]", "[store]\nmax_connections = 3");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("store.max_connections"), "{err}");

        for url in ["mysql://db/tvaers", "postgres:tvaers"] {
            let bad = GOOD.replace("sqlite://data/tvaers.db", url);
            let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
            assert!(err.to_string().contains("store.url"), "{err}");
        }
    }

    #[test]
    fn notice_kinds_a_peer_may_send_default_by_sector() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        // No sector given: only what every sector may send.
        assert_eq!(
            c.peers[0].may_send,
            ["no_show", "plan_change", "correction"]
        );
        let psychiatry = GOOD.replace(
            "name = \"Psykiatrien Region Sjælland\"",
            "name = \"Psykiatrien Region Sjælland\"\nsector = \"psychiatry\"",
        );
        let c = Config::parse(Path::new("x.toml"), &psychiatry).unwrap();
        assert_eq!(c.peers[0].may_send, NOTICE_KINDS);
        let narrowed = psychiatry.replace(
            "sector = \"psychiatry\"",
            "sector = \"psychiatry\"\nmay_send = [\"discharge\", \"no-show\"]",
        );
        let c = Config::parse(Path::new("x.toml"), &narrowed).unwrap();
        assert_eq!(c.peers[0].may_send, ["discharge", "no_show"]);
        let bad = narrowed.replace("\"no-show\"", "\"gossip\"");
        let err = Config::parse(Path::new("x.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("peers[0].may_send"), "{err}");
        assert_eq!(c.delivery.max_clock_skew_ms, 300_000);
    }

    #[test]
    fn without_inboxes_everything_goes_to_main_and_nothing_escalates() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!(c.routing, crate::routing::RoutingTable::default());
        assert_eq!(c.routing.inboxes(), ["main"]);
        assert!(c.escalation.rules().is_empty());
        assert_eq!(
            c.escalation.working_hours().time_zone().iana_name(),
            Some("Europe/Copenhagen")
        );
    }

    const INBOXES: &str = r#"
[inboxes]
default = "front-desk"

[[inboxes.routes]]
kinds = ["admission", "discharge"]
to = ["discharge-coordinators"]

[[inboxes.routes]]
kinds = ["no-show"]
from_sectors = ["psychiatry"]
units = ["6630011-S2"]
to = ["housing-support", "housing-support"]
stop = true

[[inboxes.routes]]
from_orgs = ["psyk-sjaelland"]
to = ["psychiatry-liaison"]

[[inboxes.deadlines]]
inbox = "discharge-coordinators"
kinds = ["admission"]
within_working_hours = 4
escalate_to = "team-leads"

[[inboxes.deadlines]]
inbox = "housing-support"
within_working_hours = 1.5
escalate_to = "team-leads"

[working_hours]
days = ["mon", "tue", "wed", "thu"]
open = "07:30"
close = "15:00"
holidays = ["2026-12-24"]
"#;

    #[test]
    fn inboxes_routes_deadlines_and_working_hours() {
        use crate::routing::NoticeFacts;
        let text = format!("{GOOD}{INBOXES}");
        let c = Config::parse(Path::new("x.toml"), &text).unwrap();
        let facts = NoticeFacts {
            kind: "no_show",
            sender_org: "psyk-sjaelland",
            sender_sector: Some(Sector::Psychiatry),
            units: &["6630011-S2"],
        };
        assert_eq!(c.routing.route(&facts), ["housing-support"]);
        let admission = NoticeFacts {
            kind: "admission",
            ..facts
        };
        assert_eq!(
            c.routing.route(&admission),
            ["discharge-coordinators", "psychiatry-liaison"]
        );
        let gp = NoticeFacts {
            sender_org: "praksis.stege",
            sender_sector: Some(Sector::GeneralPractice),
            ..facts
        };
        assert_eq!(c.routing.route(&gp), ["front-desk"]);

        let rule = c
            .escalation
            .rule_for("discharge-coordinators", "admission")
            .unwrap();
        assert_eq!(rule.working_ms(), 4 * 3_600_000);
        assert_eq!(
            c.escalation
                .rule_for("housing-support", "plan_change")
                .unwrap()
                .working_ms(),
            90 * 60_000
        );
        assert!(
            c.escalation
                .rule_for("discharge-coordinators", "discharge")
                .is_none()
        );
        // Thursday 2026-12-24 is a holiday and Friday no working day:
        // Wednesday 14:00 + 4 h = 1 h on Wednesday, 3 h on Monday from 07:30.
        let hours = c.escalation.working_hours();
        let wednesday = parse_time("2026-12-23T13:00:00Z").unwrap();
        assert_eq!(
            format_time(hours.deadline(wednesday, 4 * 3_600_000)),
            "2026-12-28T09:30:00Z"
        );
    }

    #[test]
    fn webhooks_are_read_per_inbox_and_checked() {
        let hooks = r#"
[inboxes]
default = "caseworkers"

[[inboxes.routes]]
kinds = ["admission"]
to = ["discharge-coordinators"]

[[inboxes.webhooks]]
inbox = "discharge-coordinators"
url = "http://127.0.0.1:8080/tvaers"
secret_file = "keys/webhook.secret"

[[inboxes.webhooks]]
inbox = "caseworkers"
url = "http://127.0.0.1:8081/"
secret_file = "/etc/tvaers/cw.secret"
max_attempts = 2
include_notice = true
"#;
        let c = Config::parse(Path::new("/etc/site/x.toml"), &format!("{GOOD}{hooks}")).unwrap();
        assert_eq!(
            c.webhooks,
            [
                WebhookConfig {
                    inbox: "discharge-coordinators".into(),
                    url: "http://127.0.0.1:8080/tvaers".into(),
                    secret_file: PathBuf::from("/etc/site/keys/webhook.secret"),
                    max_attempts: DEFAULT_WEBHOOK_MAX_ATTEMPTS,
                    include_notice: false,
                },
                WebhookConfig {
                    inbox: "caseworkers".into(),
                    url: "http://127.0.0.1:8081/".into(),
                    secret_file: PathBuf::from("/etc/tvaers/cw.secret"),
                    max_attempts: 2,
                    include_notice: true,
                },
            ]
        );
        assert!(
            Config::parse(Path::new("x.toml"), GOOD)
                .unwrap()
                .webhooks
                .is_empty()
        );

        for (from, to, key) in [
            (
                "inbox = \"caseworkers\"",
                "inbox = \"nobody\"",
                "inboxes.webhooks[1].inbox",
            ),
            (
                "inbox = \"caseworkers\"",
                "inbox = \"discharge-coordinators\"",
                "inboxes.webhooks[1].inbox",
            ),
            (
                "http://127.0.0.1:8081/",
                "https://127.0.0.1:8081/",
                "inboxes.webhooks[1].url",
            ),
            (
                "max_attempts = 2",
                "max_attempts = 0",
                "inboxes.webhooks[1].max_attempts",
            ),
        ] {
            let bad = format!("{GOOD}{}", hooks.replace(from, to));
            let e = Config::parse(Path::new("x.toml"), &bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("key `{key}`")), "{key}: {e}");
        }
        let unknown = format!(
            "{GOOD}{}",
            hooks.replace("max_attempts = 2", "include_body = true")
        );
        assert!(Config::parse(Path::new("x.toml"), &unknown).is_err());

        // An inbox only escalations fill may have a webhook too.
        let escalation_only = format!(
            "{GOOD}{}",
            hooks.replace("inbox = \"caseworkers\"", "inbox = \"team-leads\"")
        );
        assert!(Config::parse(Path::new("x.toml"), &escalation_only).is_err());
        let with_deadline = format!(
            "{escalation_only}
[[inboxes.deadlines]]
inbox = \"discharge-coordinators\"
within_working_hours = 4
escalate_to = \"team-leads\"
"
        );
        let c = Config::parse(Path::new("x.toml"), &with_deadline).unwrap();
        assert_eq!(c.webhooks[1].inbox, "team-leads");
    }

    #[test]
    fn inbox_errors_name_the_key_and_the_kind() {
        let with = |inboxes: &str| format!("{GOOD}{inboxes}");
        let err = |text: String| {
            Config::parse(Path::new("x.toml"), &text)
                .unwrap_err()
                .to_string()
        };

        // No default, and no-shows are routed only from psychiatry.
        let unrouted = r#"
[[inboxes.routes]]
kinds = ["admission", "discharge", "plan-change", "correction"]
to = ["coordinators"]
[[inboxes.routes]]
kinds = ["no-show"]
from_sectors = ["psychiatry"]
to = ["housing-support"]
"#;
        let e = err(with(unrouted));
        assert!(e.contains("key `inboxes`"), "{e}");
        assert!(
            e.contains("notice kind no_show would reach no inbox"),
            "{e}"
        );
        let fixed = with(&format!("[inboxes]\ndefault = \"main\"\n{unrouted}"));
        Config::parse(Path::new("x.toml"), &fixed).unwrap();

        let e = err(with("[inboxes]\n"));
        assert!(
            e.contains("notice kinds admission, discharge, no_show, plan_change, correction"),
            "{e}"
        );

        for (inboxes, key) in [
            (r#"inboxes.default = "Front Desk""#, "inboxes.default"),
            (
                r#"inboxes = { default = "a", routes = [{ kinds = ["admission"] }] }"#,
                "inboxes.routes[0].to",
            ),
            (
                r#"inboxes = { default = "a", routes = [{ kinds = ["gossip"], to = ["b"] }] }"#,
                "inboxes.routes[0].kinds",
            ),
            (
                r#"inboxes = { default = "a", deadlines = [{ inbox = "b", within_working_hours = 1, escalate_to = "c" }] }"#,
                "inboxes.deadlines[0].inbox",
            ),
            (
                r#"inboxes = { default = "a", deadlines = [{ inbox = "a", within_working_hours = -1, escalate_to = "c" }] }"#,
                "inboxes.deadlines[0].within_working_hours",
            ),
            (
                r#"working_hours.time_zone = "Mars/Olympus""#,
                "working_hours.time_zone",
            ),
            (r#"working_hours.days = ["monday"]"#, "working_hours.days"),
            (r#"working_hours.days = []"#, "working_hours.days"),
            (r#"working_hours.open = "8""#, "working_hours.open"),
            (r#"working_hours.close = "07:00""#, "working_hours.close"),
            (
                r#"working_hours.holidays = ["24/12"]"#,
                "working_hours.holidays",
            ),
        ] {
            // Dotted keys at the top level: before GOOD's first table.
            let e = err(format!("{inboxes}\n{GOOD}"));
            assert!(e.contains(&format!("key `{key}`")), "{key}: {e}");
        }
        // Unknown keys and sectors are refused by the parser, naming them.
        let e = err(with(
            "[[inboxes.routes]]\nto = [\"b\"]\nsector = \"psychiatry\"\n",
        ));
        assert!(e.contains("sector"), "{e}");
        let e = err(with(
            "[[inboxes.routes]]\nto = [\"b\"]\nfrom_sectors = [\"dentistry\"]\n",
        ));
        assert!(e.contains("dentistry"), "{e}");
    }

    #[test]
    fn the_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for (file, sector) in [
            ("municipality.toml", Sector::Municipality),
            ("psychiatry.toml", Sector::Psychiatry),
            ("general-practice.toml", Sector::GeneralPractice),
        ] {
            let config = Config::load(&dir.join(file)).unwrap();
            assert_eq!(config.site.sector, sector, "{file}");
            assert_eq!(config.peers.len(), 2, "{file}");
            assert!(config.storage.is_some(), "{file}");
            let route = |kind: &str, sender: &str| {
                let peer = config.peer(sender).unwrap();
                config.routing.route(&crate::routing::NoticeFacts {
                    kind,
                    sender_org: sender,
                    sender_sector: peer.sector,
                    units: &[],
                })
            };
            match sector {
                Sector::Municipality => {
                    let hospital = "psykiatri.sjaelland";
                    assert_eq!(route("admission", hospital), ["discharge-coordinators"]);
                    assert_eq!(route("discharge", hospital), ["discharge-coordinators"]);
                    assert_eq!(route("no_show", "praksis.stege"), ["housing-support"]);
                    assert_eq!(route("plan_change", hospital), ["caseworkers"]);
                    assert_eq!(route("correction", hospital).len(), 3);
                    assert!(
                        config
                            .escalation
                            .rule_for("discharge-coordinators", "admission")
                            .is_some()
                    );
                }
                Sector::Psychiatry => {
                    assert_eq!(route("no_show", "kommune.vordingborg"), ["outreach-team"]);
                    assert_eq!(
                        route("plan_change", "kommune.vordingborg"),
                        ["ward-coordinators"]
                    );
                    assert!(
                        config
                            .escalation
                            .rule_for("outreach-team", "no_show")
                            .is_some()
                    );
                }
                Sector::GeneralPractice => {
                    for kind in NOTICE_KINDS {
                        assert_eq!(route(kind, "psykiatri.sjaelland"), ["clinic"]);
                    }
                }
            }
        }
    }
}
