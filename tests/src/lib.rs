//! A harness that runs real `tvaersd` processes on loopback, each with its
//! own directory, freshly generated keys (TLS, signing, storage
//! key-encryption key), encrypted SQLite file and config, every
//! site pinning the others' certificates. The end-to-end tests and the demo
//! (`tvaers-demo`) both use it.
//!
//! The harness finds `tvaersd` next to its own executable (the same cargo
//! target directory) and builds it with cargo first, so `cargo test` and
//! `cargo run --bin tvaers-demo` always run the current daemon code.
//! `TVAERSD_BIN` overrides the path.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tvaers_client::Client;

/// The organisations of the demo: one per sector.
pub const MUNICIPALITY: SiteSpec = SiteSpec {
    org_id: "kommune.vordingborg",
    name: "Vordingborg Kommune",
    sector: "municipality",
    pinned_by_others: true,
};
pub const PSYCHIATRY: SiteSpec = SiteSpec {
    org_id: "psykiatri.sjaelland",
    name: "Psykiatrien Region Sjælland",
    sector: "psychiatry",
    pinned_by_others: true,
};
pub const GENERAL_PRACTICE: SiteSpec = SiteSpec {
    org_id: "praksis.stege",
    name: "Lægerne i Stege",
    sector: "general-practice",
    pinned_by_others: true,
};

/// Config tables for a municipality (with [`MUNICIPALITY_ROUTES`]): always
/// working hours and no time to handle an admission, so one is overdue at
/// once, whatever the day and hour a test runs, and escalated to
/// `team-leads`.
pub const OVERDUE_AT_ONCE: &str = r#"
[[inboxes.deadlines]]
inbox = "discharge-coordinators"
kinds = ["admission"]
within_working_hours = 0
escalate_to = "team-leads"

[working_hours]
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
open = "00:00"
close = "24:00"
"#;

/// The municipality's team-inbox routing rules in the demo and the tests:
/// admissions and discharges to the discharge coordinators, no-shows to
/// housing support, corrections to both, everything else (plan changes) to
/// the caseworkers.
pub const MUNICIPALITY_ROUTES: &str = r#"
[inboxes]
default = "caseworkers"

[[inboxes.routes]]
kinds = ["admission", "discharge"]
to = ["discharge-coordinators"]

[[inboxes.routes]]
kinds = ["no-show"]
to = ["housing-support"]

[[inboxes.routes]]
kinds = ["correction"]
to = ["discharge-coordinators", "housing-support"]
"#;

/// One organisation to set up.
#[derive(Debug, Clone, Copy)]
pub struct SiteSpec {
    pub org_id: &'static str,
    pub name: &'static str,
    pub sector: &'static str,
    /// False for an outsider: it pins the others, they do not pin it.
    pub pinned_by_others: bool,
}

/// One set-up site and, while it runs, its process.
#[derive(Debug)]
pub struct Site {
    /// How the harness names it: the org id, or `ORG#N` for the N-th
    /// instance of an organisation (see [`Sites::add_instance`]).
    pub key: String,
    pub spec: SiteSpec,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub fingerprint: String,
    /// The public half of its signing key, `ed25519:…`.
    pub signing_key: String,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Delivery settings written into every site's config. Tests want quick
/// retries; the defaults (1 s up to 5 min) are for production.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub backoff_initial_ms: u64,
    pub backoff_max_seconds: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff_initial_ms: 100,
            backoff_max_seconds: 1,
        }
    }
}

/// A set of sites in one directory.
#[derive(Debug)]
pub struct Sites {
    pub root: PathBuf,
    sites: Vec<Site>,
    /// `RUST_LOG` for daemons started from now on.
    rust_log: String,
    _temp: Option<tempfile::TempDir>,
}

impl Sites {
    /// Sets up sites in a fresh temporary directory, removed on drop.
    pub fn temporary(specs: &[SiteSpec]) -> Result<Sites> {
        let temp = tempfile::Builder::new().prefix("tvaers-").tempdir()?;
        let mut sites = Sites::create(temp.path(), specs, Tuning::default())?;
        sites._temp = Some(temp);
        Ok(sites)
    }

    /// Sets up sites under `root`: keys, configs pinning each other.
    pub fn create(root: &Path, specs: &[SiteSpec], tuning: Tuning) -> Result<Sites> {
        std::fs::create_dir_all(root)?;
        let mut sites = Vec::new();
        for spec in specs {
            let dir = root.join(spec.org_id);
            let keys = tvaers_daemon::identity::generate(&dir.join("keys"), spec.org_id)?;
            let (_, signing_key) =
                tvaers_daemon::identity::generate_signing_key(&dir.join("keys"))?;
            tvaers_daemon::at_rest::generate_kek_file(
                &dir.join("keys").join(tvaers_daemon::at_rest::KEK_FILE),
            )?;
            sites.push(Site {
                key: spec.org_id.to_owned(),
                spec: *spec,
                config: dir.join("tvaers.toml"),
                socket: dir.join("run/api.sock"),
                log: dir.join("tvaersd.log"),
                dir,
                port: free_port()?,
                fingerprint: keys.fingerprint.to_string(),
                signing_key: signing_key.to_string(),
                child: None,
            });
        }
        for site in &sites {
            std::fs::write(&site.config, config_text(site, &sites, tuning))?;
        }
        Ok(Sites {
            root: root.to_owned(),
            sites,
            rust_log: "info".to_owned(),
            _temp: None,
        })
    }

    /// Sets the `RUST_LOG` filter of daemons started from now on (default
    /// `info`), e.g. `trace` to check that even the most verbose output of
    /// the daemon and its dependencies holds no CPR number.
    pub fn set_rust_log(&mut self, filter: &str) {
        filter.clone_into(&mut self.rust_log);
    }

    /// Adds a line to a site's `[api]` table (before it starts).
    pub fn add_api_setting(&self, org_id: &str, line: &str) -> Result<()> {
        let config = &self.site(org_id).config;
        let text = std::fs::read_to_string(config)?;
        let text = text.replacen("[api]\n", &format!("[api]\n{line}\n"), 1);
        std::fs::write(config, text)?;
        Ok(())
    }

    /// Turns on a site's metrics listener (before it starts) on a free
    /// loopback port and returns its address.
    pub fn enable_metrics(&self, org_id: &str) -> Result<std::net::SocketAddr> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = &self.site(org_id).config;
        let mut text = std::fs::read_to_string(config)?;
        text.push_str(&format!("\n[metrics]\nlisten = \"{addr}\"\n"));
        std::fs::write(config, text)?;
        Ok(addr)
    }

    /// A site by key: its org id, or `ORG#N` for a further instance.
    pub fn site(&self, org_id: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.key == org_id)
            .unwrap_or_else(|| panic!("no site {org_id} in this set"))
    }

    fn site_mut(&mut self, org_id: &str) -> &mut Site {
        self.sites
            .iter_mut()
            .find(|s| s.key == org_id)
            .unwrap_or_else(|| panic!("no site {org_id} in this set"))
    }

    /// The organisations (first instances only).
    pub fn org_ids(&self) -> Vec<&'static str> {
        self.sites
            .iter()
            .filter(|s| s.key == s.spec.org_id)
            .map(|s| s.spec.org_id)
            .collect()
    }

    /// Points a site's `[store]` at `url` (e.g. a PostgreSQL database) and
    /// adds `settings` lines to that table (before it starts, and before
    /// [`Sites::add_instance`] copies its config).
    pub fn set_store(&self, org_id: &str, url: &str, settings: &[&str]) -> Result<()> {
        self.edit_config(org_id, |text| {
            let mut table = format!("[store]\nurl = \"{url}\"\n");
            for line in settings {
                table.push_str(line);
                table.push('\n');
            }
            text.replacen("[store]\nurl = \"sqlite://data/tvaers.db\"\n", &table, 1)
        })
    }

    /// The address a site's daemon listens on for peers.
    pub fn peer_address(&self, key: &str) -> String {
        format!("127.0.0.1:{}", self.site(key).port)
    }

    /// Sets up another instance of organisation `org_id`: the same keys
    /// (linked), the same config (store, peers) but its own listen port,
    /// sockets and log, in a directory of its own. Returns its key,
    /// `ORG#N`. With a shared (PostgreSQL) store the instances share the
    /// database too; start it with [`Sites::start`].
    pub fn add_instance(&mut self, org_id: &str) -> Result<String> {
        let n = self
            .sites
            .iter()
            .filter(|s| s.spec.org_id == org_id)
            .count()
            + 1;
        let key = format!("{org_id}#{n}");
        let first = self.site(org_id);
        let dir = self.root.join(format!("{org_id}-{n}"));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink(first.dir.join("keys"), dir.join("keys"))?;
        let port = free_port()?;
        let text = std::fs::read_to_string(&first.config)?.replacen(
            &format!("listen = \"127.0.0.1:{}\"", first.port),
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
        let config = dir.join("tvaers.toml");
        std::fs::write(&config, text)?;
        let site = Site {
            key: key.clone(),
            spec: first.spec,
            socket: dir.join("run/api.sock"),
            log: dir.join("tvaersd.log"),
            config,
            dir,
            port,
            fingerprint: first.fingerprint.clone(),
            signing_key: first.signing_key.clone(),
            child: None,
        };
        self.sites.push(site);
        Ok(key)
    }

    /// Starts a site's daemon and waits until its local API answers.
    pub async fn start(&mut self, org_id: &str) -> Result<()> {
        let binary = daemon_binary()?;
        let rust_log = self.rust_log.clone();
        let site = self.site_mut(org_id);
        if site.child.is_some() {
            bail!("{org_id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&site.log)?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&site.config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start tvaersd for {org_id}"))?;
        site.child = Some(child);
        let socket = site.socket.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = Client::connect(&socket).await {
                // The socket can exist a moment before the server answers.
                if client.list_inbox(0, 1).await.is_ok() {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .site_mut(org_id)
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.site_mut(org_id).child = None;
                bail!(
                    "tvaersd for {org_id} exited at start-up ({status}); log:\n{}",
                    self.log(org_id)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tvaersd for {org_id} did not become ready in 30 s; log:\n{}",
                    self.log(org_id)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn start_all(&mut self) -> Result<()> {
        for org in self.org_ids() {
            self.start(org).await?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub async fn stop(&mut self, org_id: &str) -> Result<ExitStatus> {
        let site = self.site_mut(org_id);
        let mut child = site
            .child
            .take()
            .ok_or_else(|| anyhow!("{org_id} is not running"))?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("cannot signal tvaersd for {org_id}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("tvaersd for {org_id} did not stop within 20 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills a site's daemon with SIGKILL: no chance to clean up.
    pub fn kill(&mut self, org_id: &str) -> Result<()> {
        let site = self.site_mut(org_id);
        let mut child = site
            .child
            .take()
            .ok_or_else(|| anyhow!("{org_id} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    pub fn is_running(&mut self, org_id: &str) -> bool {
        let site = self.site_mut(org_id);
        matches!(site.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The process id of a site's running daemon (for `/proc` figures).
    pub fn pid(&self, org_id: &str) -> Option<u32> {
        self.site(org_id).child.as_ref().map(Child::id)
    }

    pub async fn client(&self, org_id: &str) -> Result<Client> {
        Ok(Client::connect(&self.site(org_id).socket).await?)
    }

    /// Submits `notice` at `from` to `to` under idempotency key `key` and
    /// waits up to `within` until it is delivered; returns its notice id.
    pub async fn deliver(
        &self,
        from: &str,
        to: &str,
        key: &str,
        notice: tvaers_client::v1::Notice,
        within: Duration,
    ) -> Result<String> {
        let sender = self.client(from).await?;
        let submitted = sender
            .submit(
                tvaers_client::Submission::new(notice)
                    .idempotency_key(key)
                    .to(to),
            )
            .await?;
        let status = sender.wait_delivered(&submitted.notice_id, within).await?;
        if !status.all_delivered() {
            bail!("notice {key} was not delivered: {status:?}");
        }
        Ok(submitted.notice_id)
    }

    /// A client of the site's admin API (`run/admin.sock`).
    pub async fn admin(&self, org_id: &str) -> Result<tvaers_client::AdminClient> {
        let socket = self.site(org_id).dir.join("run/admin.sock");
        Ok(tvaers_client::AdminClient::connect(socket).await?)
    }

    /// Rewrites a site's config file with `edit` (e.g. to revoke a peer
    /// before asking the daemon to reload).
    pub fn edit_config(&self, org_id: &str, edit: impl FnOnce(String) -> String) -> Result<()> {
        let path = &self.site(org_id).config;
        let text = std::fs::read_to_string(path)?;
        std::fs::write(path, edit(text))?;
        Ok(())
    }

    /// Adds TOML tables (e.g. `[inboxes]`) to a site's config, before its
    /// first `[[peers]]` array of tables, where a table must go.
    pub fn add_config_tables(&self, org_id: &str, tables: &str) -> Result<()> {
        self.edit_config(org_id, |text| {
            text.replacen("\n[[peers]]", &format!("{tables}\n[[peers]]"), 1)
        })
    }

    /// Everything the site's daemon has logged so far.
    pub fn log(&self, org_id: &str) -> String {
        std::fs::read_to_string(&self.site(org_id).log).unwrap_or_default()
    }

    /// All logs, for failure messages and CPR checks.
    pub fn all_logs(&self) -> String {
        self.sites
            .iter()
            .map(|s| format!("==== {} ====\n{}", s.key, self.log(&s.key)))
            .collect()
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        for site in &mut self.sites {
            if let Some(mut child) = site.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn config_text(site: &Site, all: &[Site], tuning: Tuning) -> String {
    let mut text = format!(
        r#"# Generated by the tvaers harness.
[site]
org_id = "{org}"
name = "{name}"
sector = "{sector}"
signing_key = "keys/signing-key.pk8"

[store]
url = "sqlite://data/tvaers.db"

[storage]
key_file = "keys/storage.kek"

[transport]
listen = "127.0.0.1:{port}"
certificate = "keys/tls-cert.pem"
private_key = "keys/tls-key.pem"

[api]
socket = "run/api.sock"

[delivery]
backoff_initial_ms = {initial}
backoff_max_seconds = {max}
send_timeout_ms = 2000
"#,
        org = site.spec.org_id,
        name = site.spec.name,
        sector = site.spec.sector,
        port = site.port,
        initial = tuning.backoff_initial_ms,
        max = tuning.backoff_max_seconds,
    );
    for peer in all {
        let pinned = peer.spec.pinned_by_others || !site.spec.pinned_by_others;
        if peer.spec.org_id == site.spec.org_id || !pinned {
            continue;
        }
        text.push_str(&format!(
            r#"
[[peers]]
org_id = "{org}"
name = "{name}"
sector = "{sector}"
address = "127.0.0.1:{port}"
fingerprint = "{fingerprint}"
signing_key = "{signing_key}"
"#,
            org = peer.spec.org_id,
            name = peer.spec.name,
            sector = peer.spec.sector,
            port = peer.port,
            fingerprint = peer.fingerprint,
            signing_key = peer.signing_key,
        ));
    }
    text
}

/// A PostgreSQL database of its own (for one organisation's instances),
/// created from an admin URL such as `TVAERS_TEST_POSTGRES_URL` and dropped
/// with [`PgDatabase::drop_now`].
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// Creates a fresh database on the server `admin_url` points at.
    pub async fn create(admin_url: &str) -> Result<PgDatabase> {
        use sqlx::Connection;
        let name = format!("tvaers_e2e_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .context("cannot connect to the PostgreSQL admin URL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .context("cannot create a database")?;
        conn.close().await?;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            name,
        })
    }

    /// The URL of this database: the admin URL with its database replaced.
    pub fn url(&self) -> String {
        let base = self
            .admin_url
            .rsplit_once('/')
            .map_or(self.admin_url.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
    }

    /// Drops the database (after its daemons stopped); a failure is only
    /// reported.
    pub async fn drop_now(self) {
        use sqlx::Connection;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = match sqlx::PgConnection::connect(&self.admin_url).await {
            Ok(mut conn) => {
                let result = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
                result.is_ok()
            }
            Err(_) => false,
        };
        if !dropped {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Where any of `cprs` appears in `text`, plain (`0707814321`) or dashed
/// (`070781-4321`): one entry per line holding one, with its line number and
/// the line with the number masked, so a failure report does not print it
/// again. Empty when there is none.
pub fn cpr_leaks(text: &str, cprs: &[&str]) -> Vec<String> {
    let forms: Vec<String> = cprs
        .iter()
        .flat_map(|cpr| {
            let dashed = match (cpr.get(..6), cpr.get(6..)) {
                (Some(date), Some(serial)) => format!("{date}-{serial}"),
                _ => (*cpr).to_owned(),
            };
            [(*cpr).to_owned(), dashed]
        })
        .collect();
    text.lines()
        .enumerate()
        .filter(|(_, line)| forms.iter().any(|form| line.contains(form.as_str())))
        .map(|(number, line)| {
            let masked = forms.iter().fold(line.to_owned(), |line, form| {
                line.replace(form.as_str(), "##########")
            });
            format!("line {}: {masked}", number + 1)
        })
        .collect()
}

/// A plain HTTP/1.1 GET (for the metrics listener): the status code and
/// the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in the response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no status code in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A loopback port free for both UDP and TCP, for a daemon to bind later.
///
/// Ports come from below Linux's ephemeral range (32768 and up), each at
/// most once per test process: a port the kernel hands out for a `:0` bind
/// is released before the daemon binds it, and another test could be given
/// the same one meanwhile. The process id spreads concurrent test binaries.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = u16::try_from(std::process::id() % 100).unwrap_or(0) * 120;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = FIRST + offset;
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {FIRST} and {}", FIRST + SPAN)
}

/// The `tvaersd` binary of this build, built first if needed.
pub fn daemon_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            find_or_build_binary("tvaers-daemon", "tvaersd", "TVAERSD_BIN")
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The `tvaers` admin CLI binary of this build, built first if needed
/// (like [`daemon_binary`]). `TVAERS_BIN` overrides the path.
pub fn cli_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            find_or_build_binary("tvaers-cli", "tvaers", "TVAERS_BIN").map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Finds or builds binary `bin` of workspace package `package` in the
/// cargo target directory this executable runs from; `env_override` names
/// a variable that points at a prebuilt binary instead.
pub fn find_or_build_binary(package: &str, bin: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_override) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/tvaers-demo or target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .ancestors()
        .skip(1)
        .find(|dir| dir.file_name().is_some_and(|n| n != "deps"))
        .ok_or_else(|| {
            anyhow!(
                "cannot locate the cargo target directory from {}",
                exe.display()
            )
        })?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.arg("--target-dir").arg(target_dir);
    }
    // Cargo gives test processes variables such as CARGO_MANIFEST_DIR; some
    // build scripts track them, so passing them on would rebuild the whole
    // dependency tree here and again in the next outer build.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_crate = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
            "CARGO_TARGET_TMPDIR",
        ];
        if per_crate.iter().any(|prefix| name.starts_with(prefix)) {
            build.env_remove(name.as_ref());
        }
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .with_context(|| format!("cannot run cargo to build {bin}"))?;
    if !status.success() {
        bail!("building {bin} failed ({status})");
    }
    let binary = profile_dir.join(bin);
    if !binary.exists() {
        bail!("{bin} was built but is not at {}", binary.display());
    }
    Ok(binary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpr_leaks_finds_plain_and_dashed_numbers_and_masks_them() {
        let text = "start\nciti 0707814321 here\nclean\nalso 070781-4321\n";
        let leaks = cpr_leaks(text, &["0707814321", "1203925678"]);
        assert_eq!(
            leaks,
            ["line 2: citi ########## here", "line 4: also ##########"]
        );
        assert!(cpr_leaks("0707814320 070781 4321", &["0707814321"]).is_empty());
    }
}
