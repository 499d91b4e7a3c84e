//! The admin CLI end to end: sites set up from scratch with nothing but
//! `tvaers` commands (run as processes), real `tvaersd` processes, and the
//! trust checks on peer cards.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tvaers_e2e::{cli_binary, daemon_binary, free_port};

const CPR: &str = "0101904000";

/// One `tvaers` run: exit code, stdout, stderr.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self, what: &str) -> Run {
        assert_eq!(
            self.code, 0,
            "{what} failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn tvaers(config: Option<&Path>, args: &[&str]) -> Run {
    let mut command = Command::new(cli_binary().unwrap());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    // Never inherit an operator's TVAERS_CONFIG, and never offer a TTY.
    command.env_remove("TVAERS_CONFIG").stdin(Stdio::null());
    let Output {
        status,
        stdout,
        stderr,
    } = command.args(args).output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A site made by `tvaers init` in `root/name`.
struct Site {
    dir: PathBuf,
    config: PathBuf,
    org_id: String,
}

fn init(root: &Path, name: &str, org_id: &str, sector: &str) -> Site {
    let dir = root.join(name);
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let dir_text = dir.to_str().unwrap();
    tvaers(
        None,
        &[
            "init", "--org-id", org_id, "--name", name, "--sector", sector, "--listen", &listen,
            "--dir", dir_text,
        ],
    )
    .ok("tvaers init");
    // Quick retries for the test; the written defaults are for production.
    let config = dir.join("tvaers.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("backoff_initial_ms = 1000", "backoff_initial_ms = 100");
    std::fs::write(&config, text).unwrap();
    Site {
        config,
        dir,
        org_id: org_id.to_owned(),
    }
}

fn export(site: &Site) -> PathBuf {
    let card = site.dir.with_extension("card.toml");
    tvaers(
        Some(&site.config),
        &["card", "export", "--out", card.to_str().unwrap()],
    )
    .ok("tvaers card export");
    card
}

/// A running `tvaersd`, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(site: &Site) -> Daemon {
        let log = site.dir.join("tvaersd.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(daemon_binary().unwrap())
            .arg("--config")
            .arg(&site.config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, log };
        // Ready when the local API answers, asked the way an operator would.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tvaers(Some(&site.config), &["inbox", "list", "--limit", "1"]).code == 0 {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("tvaersd exited at start ({status}):\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "tvaersd not ready in 30 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string value of the first `"key": "..."` in a JSON document.
fn json_str(doc: &str, key: &str) -> Option<String> {
    let start = doc.find(&format!("\"{key}\": \""))? + key.len() + 5;
    let end = doc[start..].find('"')? + start;
    Some(doc[start..end].to_owned())
}

#[test]
fn two_sites_from_scratch_with_only_tvaers_commands() {
    let root = tempfile::Builder::new()
        .prefix("tvaers-cli-")
        .tempdir()
        .unwrap();
    // A municipality known by its GLN, a psychiatry by its SOR code.
    let kommune = init(root.path(), "kommune", "5790000000005", "municipality");
    let psyk = init(root.path(), "psykiatri", "265161000016006", "psychiatry");
    assert!(kommune.dir.join("keys/signing-key.pk8").exists());

    // A second init into the same directory is refused, keys untouched.
    let key_before = std::fs::read(kommune.dir.join("keys/signing-key.pk8")).unwrap();
    let again = tvaers(
        None,
        &[
            "init",
            "--org-id",
            "5790000000005",
            "--name",
            "x",
            "--sector",
            "municipality",
            "--listen",
            "127.0.0.1:1",
            "--dir",
            kommune.dir.to_str().unwrap(),
        ],
    );
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read(kommune.dir.join("keys/signing-key.pk8")).unwrap(),
        key_before
    );

    let kommune_card = export(&kommune);
    let psyk_card = export(&psyk);
    let verified =
        tvaers(None, &["card", "verify", kommune_card.to_str().unwrap()]).ok("card verify");
    assert!(
        verified.stdout.contains("5790000000005"),
        "{}",
        verified.stdout
    );

    // Without a terminal, peer add needs --yes.
    let no_tty = tvaers(
        Some(&kommune.config),
        &["peer", "add", psyk_card.to_str().unwrap()],
    );
    assert_eq!(no_tty.code, 2, "{}", no_tty.stderr);
    assert!(no_tty.stderr.contains("--yes"), "{}", no_tty.stderr);

    // Peer add both ways, before the daemons run: stored for the next start.
    let added = tvaers(
        Some(&kommune.config),
        &[
            "--json",
            "peer",
            "add",
            psyk_card.to_str().unwrap(),
            "--yes",
        ],
    )
    .ok("peer add");
    assert!(
        added.stdout.contains("\"applied\": false"),
        "{}",
        added.stdout
    );
    tvaers(
        Some(&psyk.config),
        &["peer", "add", kommune_card.to_str().unwrap(), "--yes"],
    )
    .ok("peer add");
    let listed = tvaers(Some(&kommune.config), &["peer", "list"]).ok("peer list");
    assert!(listed.stdout.contains(&psyk.org_id), "{}", listed.stdout);

    // The daemon is not running: exit 3, naming the socket and the fix.
    let down = tvaers(Some(&kommune.config), &["status"]);
    assert_eq!(down.code, 3, "{}", down.stderr);
    assert!(down.stderr.contains("admin.sock"), "{}", down.stderr);
    assert!(down.stderr.contains("tvaersd --config"), "{}", down.stderr);

    let kommune_daemon = Daemon::start(&kommune);
    let psyk_daemon = Daemon::start(&psyk);

    let sent = tvaers(
        Some(&psyk.config),
        &[
            "--json",
            "send",
            "admission",
            "--to",
            &kommune.org_id,
            "--cpr",
            CPR,
            "--episode",
            "stay-1",
            "--hospital",
            "6630011",
            "--hospital-name",
            "Psykiatrisk Sygehus Slagelse",
            "--ward",
            "6630011-S2",
            "--ward-name",
            "Afsnit S2",
            "--urgency",
            "acute",
            "--legal-basis",
            "voluntary",
            "--contact-name",
            "Mette Kjær Jensen",
            "--contact-phone",
            "+45 58 55 91 20",
            "--wait",
            "20",
        ],
    );
    assert_eq!(
        sent.code,
        0,
        "send failed:\n{}\n{}\nlogs:\n{}\n{}",
        sent.stdout,
        sent.stderr,
        psyk_daemon.log(),
        kommune_daemon.log()
    );
    let notice_id = json_str(&sent.stdout, "notice_id").unwrap();
    assert!(
        sent.stdout.contains("\"delivered\": true"),
        "{}",
        sent.stdout
    );

    let inbox = tvaers(Some(&kommune.config), &["--json", "inbox", "list"]).ok("inbox list");
    assert_eq!(
        json_str(&inbox.stdout, "notice_id"),
        Some(notice_id.clone())
    );
    assert_eq!(
        json_str(&inbox.stdout, "kind").as_deref(),
        Some("admission")
    );
    assert_eq!(json_str(&inbox.stdout, "sender"), Some(psyk.org_id.clone()));
    // The content stays hidden unless asked for.
    assert!(!inbox.stdout.contains(CPR), "{}", inbox.stdout);
    let human = tvaers(Some(&kommune.config), &["inbox", "list"]).ok("inbox list");
    assert!(!human.stdout.contains(CPR), "{}", human.stdout);
    let revealed =
        tvaers(Some(&kommune.config), &["inbox", "show", "1", "--reveal"]).ok("inbox show");
    assert!(revealed.stdout.contains(CPR), "{}", revealed.stdout);
    tvaers(Some(&kommune.config), &["inbox", "ack", "1"]).ok("inbox ack");
    let unacked = tvaers(
        Some(&kommune.config),
        &["--json", "inbox", "list", "--unacked"],
    )
    .ok("inbox list --unacked");
    assert!(!unacked.stdout.contains(&notice_id), "{}", unacked.stdout);

    // The sender's view through the admin API.
    let status = tvaers(Some(&psyk.config), &["--json", "status"]).ok("status");
    assert!(status.stdout.contains(&kommune.org_id), "{}", status.stdout);
    let outbox = tvaers(Some(&psyk.config), &["--json", "outbox", "list"]).ok("outbox list");
    assert!(outbox.stdout.contains(&notice_id), "{}", outbox.stdout);
    tvaers(Some(&psyk.config), &["outbox", "show", &notice_id]).ok("outbox show");

    // No CPR number in either daemon's log.
    for log in [kommune_daemon.log(), psyk_daemon.log()] {
        assert!(!log.contains(CPR), "a CPR number in a log:\n{log}");
    }
}

#[test]
fn tampered_cards_and_changed_keys_are_refused() {
    let root = tempfile::Builder::new()
        .prefix("tvaers-cli-")
        .tempdir()
        .unwrap();
    let kommune = init(root.path(), "kommune", "5790000000005", "municipality");
    let praksis = init(root.path(), "praksis", "123456789", "general-practice");
    // The same organisation id set up again elsewhere: new keys.
    let impostor = init(root.path(), "praksis-igen", "123456789", "general-practice");
    let card = export(&praksis);
    let text = std::fs::read_to_string(&card).unwrap();

    // An org id that is neither a SOR code nor a GLN with a valid check
    // digit is invalid input, and the error names the accepted forms.
    for bad in ["5790000000001", "12345678", "kommune.vordingborg"] {
        let dir = root.path().join(format!("bad-{bad}"));
        let run = tvaers(
            None,
            &[
                "init",
                "--org-id",
                bad,
                "--name",
                "x",
                "--sector",
                "municipality",
                "--listen",
                "127.0.0.1:1",
                "--dir",
                dir.to_str().unwrap(),
            ],
        );
        assert_eq!(run.code, 2, "{bad}: {}", run.stderr);
        assert!(
            run.stderr.contains("SOR code") && run.stderr.contains("GLN"),
            "{bad}: {}",
            run.stderr
        );
        assert!(!dir.join("keys").exists(), "{bad}: keys written anyway");
    }

    // A wildcard listen address is not something a peer can dial.
    let wildcard = root.path().join("wildcard");
    tvaers(
        None,
        &[
            "init",
            "--org-id",
            "4012345000009",
            "--name",
            "Wildcard",
            "--sector",
            "psychiatry",
            "--listen",
            "0.0.0.0:7402",
            "--dir",
            wildcard.to_str().unwrap(),
        ],
    )
    .ok("init on 0.0.0.0");
    let config = wildcard.join("tvaers.toml");
    let run = tvaers(Some(&config), &["card", "export"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--address"), "{}", run.stderr);
    let run = tvaers(
        Some(&config),
        &["card", "export", "--address", "192.0.2.10:7402"],
    )
    .ok("card export --address");
    assert!(run.stdout.contains("192.0.2.10:7402"), "{}", run.stdout);
    let config_before = std::fs::read_to_string(&kommune.config).unwrap();

    // One changed byte in any field's value is caught.
    for field in [
        "org_id",
        "name",
        "sector",
        "addresses",
        "fingerprint",
        "signing_key",
        "created_at",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{field} = ")))
            .unwrap();
        // The last character before the closing quote(s).
        let end = line.trim_end_matches([']', '"']).len() - 1;
        let old = &line[end..=end];
        let new = match old {
            "0" => "1",
            "a" => "b",
            _ => "0",
        };
        let mut edited = line.to_owned();
        edited.replace_range(end..=end, new);
        let tampered_path = root.path().join(format!("tampered-{field}.toml"));
        std::fs::write(&tampered_path, text.replacen(line, &edited, 1)).unwrap();
        let run = tvaers(
            Some(&kommune.config),
            &["peer", "add", tampered_path.to_str().unwrap(), "--yes"],
        );
        assert_eq!(run.code, 4, "{field}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("card") && run.stderr.contains("refused"),
            "{field}: {}",
            run.stderr
        );
        let verify = tvaers(None, &["card", "verify", tampered_path.to_str().unwrap()]);
        assert_eq!(verify.code, 4, "{field}: {}", verify.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(&kommune.config).unwrap(),
        config_before,
        "a refused card changed the config"
    );

    // The genuine card is accepted.
    tvaers(
        Some(&kommune.config),
        &["peer", "add", card.to_str().unwrap(), "--yes"],
    )
    .ok("peer add");
    let shown = tvaers(
        Some(&kommune.config),
        &["--json", "peer", "show", "123456789"],
    )
    .ok("peer show");
    let genuine_key = json_str(&shown.stdout, "signing_key").unwrap();

    // A card for the same org id with another signing key: refused...
    let other = export(&impostor);
    let refused = tvaers(
        Some(&kommune.config),
        &["peer", "add", other.to_str().unwrap(), "--yes"],
    );
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("--replace"), "{}", refused.stderr);
    let shown = tvaers(
        Some(&kommune.config),
        &["--json", "peer", "show", "123456789"],
    )
    .ok("peer show");
    assert_eq!(
        json_str(&shown.stdout, "signing_key"),
        Some(genuine_key.clone())
    );

    // ...unless explicitly replaced.
    tvaers(
        Some(&kommune.config),
        &["peer", "add", other.to_str().unwrap(), "--yes", "--replace"],
    )
    .ok("peer add --replace");
    let shown = tvaers(
        Some(&kommune.config),
        &["--json", "peer", "show", "123456789"],
    )
    .ok("peer show");
    let replaced_key = json_str(&shown.stdout, "signing_key").unwrap();
    assert_ne!(replaced_key, genuine_key);
    // Exactly one entry for the organisation.
    let text = std::fs::read_to_string(&kommune.config).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("[[peers]]")).count(),
        1,
        "{text}"
    );
}

/// `tvaers send admission` with every required field.
fn send_admission(from: &Site, to: &Site, wait: &str) -> Run {
    tvaers(
        Some(&from.config),
        &[
            "--json",
            "send",
            "admission",
            "--to",
            &to.org_id,
            "--cpr",
            CPR,
            "--hospital",
            "6630011",
            "--hospital-name",
            "Psykiatrisk Sygehus Slagelse",
            "--ward",
            "6630011-S2",
            "--ward-name",
            "Afsnit S2",
            "--urgency",
            "planned",
            "--legal-basis",
            "voluntary",
            "--contact-name",
            "Mette Kjær Jensen",
            "--contact-phone",
            "+45 58 55 91 20",
            "--wait",
            wait,
        ],
    )
}

/// `tvaers send no-show`: what a municipality may send a hospital.
fn send_no_show(from: &Site, to: &Site, wait: &str) -> Run {
    tvaers(
        Some(&from.config),
        &[
            "--json",
            "send",
            "no-show",
            "--to",
            &to.org_id,
            "--cpr",
            CPR,
            "--appointment-id",
            "BOST-2026-117",
            "--scheduled-at",
            "2026-11-20T09:00:00Z",
            "--unit",
            "VK-BOSTOETTE",
            "--kind",
            "did-not-attend",
            "--outreach",
            "--contact-name",
            "Lene Kristiansen",
            "--contact-phone",
            "+45 58 57 36 00",
            "--wait",
            wait,
        ],
    )
}

fn delivered(run: Run, what: &str, logs: &[&Daemon]) -> String {
    assert!(
        run.code == 0 && run.stdout.contains("\"delivered\": true"),
        "{what}: not delivered:\n{}\n{}\nlogs:\n{}",
        run.stdout,
        run.stderr,
        logs.iter()
            .map(|d| d.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    json_str(&run.stdout, "notice_id").unwrap()
}

#[test]
fn running_daemons_take_new_peers_a_tls_rotation_and_a_revocation() {
    let root = tempfile::Builder::new()
        .prefix("tvaers-cli-")
        .tempdir()
        .unwrap();
    let kommune = init(root.path(), "kommune", "5790000000005", "municipality");
    let psyk = init(root.path(), "psykiatri", "265161000016006", "psychiatry");
    let kommune_card = export(&kommune);
    let psyk_card = export(&psyk);

    // Both daemons run with no peers; adding them needs no restart.
    let kommune_daemon = Daemon::start(&kommune);
    let mut psyk_daemon = Daemon::start(&psyk);
    for (site, card) in [(&kommune, &psyk_card), (&psyk, &kommune_card)] {
        let added = tvaers(
            Some(&site.config),
            &["--json", "peer", "add", card.to_str().unwrap(), "--yes"],
        )
        .ok("peer add");
        assert!(
            added.stdout.contains("\"applied\": true"),
            "{}",
            added.stdout
        );
    }
    delivered(
        send_admission(&psyk, &kommune, "20"),
        "after peer add",
        &[&kommune_daemon, &psyk_daemon],
    );

    // Phase 1 of a TLS rotation: a new card; psychiatry still presents the
    // old certificate, which the municipality keeps accepting.
    let new_card = root.path().join("psyk-rotated.card.toml");
    tvaers(
        Some(&psyk.config),
        &[
            "keys",
            "rotate-tls",
            "--overlap-days",
            "2",
            "--out",
            new_card.to_str().unwrap(),
        ],
    )
    .ok("keys rotate-tls");
    let rotated = tvaers(
        Some(&kommune.config),
        &["--json", "peer", "add", new_card.to_str().unwrap(), "--yes"],
    )
    .ok("peer add (rotation)");
    assert!(
        rotated.stdout.contains("\"change\": \"rotation\""),
        "{}",
        rotated.stdout
    );
    assert!(
        rotated.stdout.contains("\"applied\": true"),
        "{}",
        rotated.stdout
    );
    delivered(
        send_no_show(&kommune, &psyk, "20"),
        "during the overlap, old certificate",
        &[&kommune_daemon, &psyk_daemon],
    );

    // Phase 2: switch and restart; traffic flows on the new certificate.
    tvaers(Some(&psyk.config), &["keys", "activate-tls"]).ok("keys activate-tls");
    drop(psyk_daemon);
    psyk_daemon = Daemon::start(&psyk);
    let shown = tvaers(Some(&psyk.config), &["--json", "keys", "show"]).ok("keys show");
    let new_fp = json_str(&shown.stdout, "tls_fingerprint").unwrap();
    assert!(
        std::fs::read_to_string(&new_card)
            .unwrap()
            .contains(&new_fp),
        "the rotated card names {new_fp}"
    );
    delivered(
        send_no_show(&kommune, &psyk, "20"),
        "after activation, to the rotated site",
        &[&kommune_daemon, &psyk_daemon],
    );
    delivered(
        send_admission(&psyk, &kommune, "20"),
        "after activation, from the rotated site",
        &[&kommune_daemon, &psyk_daemon],
    );

    // Revocation: the municipality stops taking psychiatry's notices.
    let revoked = tvaers(
        Some(&kommune.config),
        &["--json", "peer", "revoke", &psyk.org_id],
    )
    .ok("peer revoke");
    assert!(
        revoked.stdout.contains("\"applied\": true"),
        "{}",
        revoked.stdout
    );
    let blocked = send_admission(&psyk, &kommune, "3");
    assert_ne!(blocked.code, 0, "{}", blocked.stdout);
    if let Some(id) = json_str(&blocked.stdout, "notice_id") {
        let inbox = tvaers(Some(&kommune.config), &["--json", "inbox", "list"]).ok("inbox list");
        assert!(
            !inbox.stdout.contains(&id),
            "a revoked peer's notice arrived"
        );
    }
    let list = tvaers(Some(&kommune.config), &["peer", "list"]).ok("peer list");
    assert!(list.stdout.contains("revoked"), "{}", list.stdout);
}
