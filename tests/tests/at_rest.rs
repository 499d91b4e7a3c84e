//! Encryption at rest and key hygiene, end to end: the raw bytes of every
//! site's SQLite files (database, WAL, shared memory) hold no CPR number,
//! while the daemons run and after they stop; a re-wrap moves the store to
//! a new key-encryption key, after which the old one is refused by name; and
//! `tvaersd` will not start with a key file others can read.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tvaers_client::{Submission, v1};
use tvaers_e2e::{GENERAL_PRACTICE, MUNICIPALITY, PSYCHIATRY, Sites, cli_binary};
use tvaers_proto::validate::sample;

const DELIVERY: Duration = Duration::from_secs(30);

/// One CPR per notice, so a leak points at the notice kind it came from.
const CPRS: [&str; 5] = [
    "0707814321",
    "1203925678",
    "2502731234",
    "3110604567",
    "1508990123",
];

fn dashed(cpr: &str) -> String {
    format!("{}-{}", &cpr[..6], &cpr[6..])
}

fn submission(key: &str, notice: v1::Notice, to: &[&str]) -> Submission {
    to.iter()
        .fold(Submission::new(notice).idempotency_key(key), |s, r| {
            s.to(*r)
        })
}

/// Every file in a site's data directory, by name, with its bytes.
fn data_files(sites: &Sites, org: &str) -> Vec<(String, Vec<u8>)> {
    let dir = sites.site(org).dir.join("data");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Asserts no CPR appears in any data file of any site, and that `visible`
/// (a non-secret id) does appear in some file of `visible_in`, so a test
/// that reads the wrong files or nothing at all fails.
fn assert_files_hold_no_cpr(sites: &Sites, visible_in: &str, visible: &str) -> Vec<String> {
    let mut names = Vec::new();
    for org in sites.org_ids() {
        let files = data_files(sites, org);
        assert!(!files.is_empty(), "{org} has no data files");
        for (name, bytes) in &files {
            names.push(format!("{org}/{name}"));
            for cpr in CPRS {
                assert!(
                    !contains(bytes, cpr) && !contains(bytes, &dashed(cpr)),
                    "a CPR number appears in {org}/data/{name}"
                );
            }
        }
        if org == visible_in {
            assert!(
                files.iter().any(|(_, bytes)| contains(bytes, visible)),
                "{visible} not found in the files of {org}: the check reads the wrong bytes"
            );
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_files_hold_no_cpr_while_running_and_after_stopping() {
    let mut sites = Sites::temporary(&[MUNICIPALITY, PSYCHIATRY, GENERAL_PRACTICE]).unwrap();
    sites.start_all().await.unwrap();
    let (kommune, psyk, gp) = (
        MUNICIPALITY.org_id,
        PSYCHIATRY.org_id,
        GENERAL_PRACTICE.org_id,
    );
    let psychiatry = sites.client(psyk).await.unwrap();
    let municipality = sites.client(kommune).await.unwrap();
    let practice = sites.client(gp).await.unwrap();

    // Every kind, each with its own CPR, to several peers.
    let admission = psychiatry
        .submit(submission("a", sample::admission(CPRS[0]), &[kommune, gp]))
        .await
        .unwrap();
    let mut sent = vec![(&psychiatry, admission.notice_id.clone())];
    for (client, key, notice, to) in [
        (
            &psychiatry,
            "d",
            sample::discharge(CPRS[1]),
            vec![kommune, gp],
        ),
        (&municipality, "n", sample::no_show(CPRS[2]), vec![psyk, gp]),
        (
            &practice,
            "p",
            sample::plan_change(CPRS[3], gp),
            vec![psyk, kommune],
        ),
        (
            &psychiatry,
            "c",
            sample::correction(CPRS[4], &admission.notice_id),
            vec![kommune, gp],
        ),
    ] {
        let submitted = client.submit(submission(key, notice, &to)).await.unwrap();
        sent.push((client, submitted.notice_id));
    }
    for (client, id) in &sent {
        let status = client.wait_delivered(id, DELIVERY).await.unwrap();
        assert!(status.all_delivered(), "{status:?}");
    }

    // The inboxes read back in clear through the API: the encryption is
    // transparent to the local system.
    let mut seen = Vec::new();
    for org in [kommune, psyk, gp] {
        let items = sites
            .client(org)
            .await
            .unwrap()
            .list_inbox(0, 100)
            .await
            .unwrap();
        for item in items {
            let notice = item.envelope.unwrap().notice.unwrap();
            seen.push(notice.citizen_cpr);
        }
    }
    for cpr in CPRS {
        assert_eq!(
            seen.iter().filter(|c| *c == cpr).count(),
            2,
            "each notice reaches its two recipients"
        );
    }

    // While running: the WAL holds the recent writes.
    let names = assert_files_hold_no_cpr(&sites, psyk, &admission.notice_id);
    assert!(
        names.iter().any(|name| name.ends_with("tvaers.db-wal")),
        "the stores run in WAL mode, so a WAL must be there to inspect: {names:?}"
    );
    assert_files_hold_no_cpr(&sites, kommune, psyk);

    for org in [kommune, psyk, gp] {
        assert!(sites.stop(org).await.unwrap().success());
    }
    // After a clean stop the WAL is checkpointed into the database file.
    assert_files_hold_no_cpr(&sites, psyk, &admission.notice_id);
    assert_files_hold_no_cpr(&sites, kommune, psyk);
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tvaers(config: &Path, args: &[&str]) -> Run {
    let output = Command::new(cli_binary().unwrap())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TVAERS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_moves_the_store_to_a_new_kek_and_the_old_one_is_refused_by_id() {
    let mut sites = Sites::temporary(&[PSYCHIATRY, MUNICIPALITY]).unwrap();
    sites.start_all().await.unwrap();
    let (kommune, psyk) = (MUNICIPALITY.org_id, PSYCHIATRY.org_id);
    let psychiatry = sites.client(psyk).await.unwrap();
    let submitted = psychiatry
        .submit(submission("a", sample::admission(CPRS[0]), &[kommune]))
        .await
        .unwrap();
    let status = psychiatry
        .wait_delivered(&submitted.notice_id, DELIVERY)
        .await
        .unwrap();
    assert!(status.all_delivered(), "{status:?}");

    let site = sites.site(kommune);
    let config = site.config.clone();
    let new_key = site.dir.join("keys/storage-2.kek");
    let generated = tvaers(
        &config,
        &["--json", "keys", "generate-kek", new_key.to_str().unwrap()],
    );
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    assert_eq!(
        std::fs::metadata(&new_key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Without a terminal it asks for --yes and changes nothing.
    let refused = tvaers(
        &config,
        &[
            "keys",
            "rewrap",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);

    let rewrapped = tvaers(
        &config,
        &[
            "--json",
            "keys",
            "rewrap",
            "--new-key-file",
            new_key.to_str().unwrap(),
            "--yes",
        ],
    );
    assert_eq!(rewrapped.code, 0, "{}", rewrapped.stderr);
    let reply: serde_json::Value = serde_json::from_str(&rewrapped.stdout).unwrap();
    let old_id = reply["old_kek_id"].as_str().unwrap().to_owned();
    let new_id = reply["new_kek_id"].as_str().unwrap().to_owned();
    assert_ne!(old_id, new_id);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("key_file = \"keys/storage-2.kek\""), "{text}");
    let shown = tvaers(&config, &["--json", "keys", "show"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["storage_key"]["kek_id"], new_id.as_str());
    // The key material is in no output and no log line.
    let new_hex = std::fs::read_to_string(&new_key).unwrap();
    let old_hex = std::fs::read_to_string(site.dir.join("keys/storage.kek")).unwrap();
    for secret in [new_hex.trim(), old_hex.trim()] {
        assert!(!rewrapped.stdout.contains(secret) && !rewrapped.stderr.contains(secret));
        assert!(!sites.all_logs().contains(secret));
    }

    // Restarted with the new KEK, it reads the notice stored before.
    assert!(sites.stop(kommune).await.unwrap().success());
    sites.start(kommune).await.unwrap();
    let items = sites
        .client(kommune)
        .await
        .unwrap()
        .list_inbox(0, 10)
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    let notice = items[0].envelope.as_ref().unwrap().notice.as_ref().unwrap();
    assert_eq!(notice.citizen_cpr, CPRS[0]);
    assert!(sites.stop(kommune).await.unwrap().success());

    // The old KEK no longer opens the store, and the error names both ids.
    sites
        .edit_config(kommune, |text| {
            text.replace("keys/storage-2.kek", "keys/storage.kek")
        })
        .unwrap();
    let error = sites.start(kommune).await.unwrap_err().to_string();
    assert!(error.contains("exit status: 2"), "{error}");
    assert!(
        error.contains(&format!(
            "the data key is wrapped under key-encryption key {new_id}, but the key file"
        )),
        "{error}"
    );
    assert!(error.contains(&old_id), "{error}");
    assert!(!error.contains(old_hex.trim()) && !error.contains(new_hex.trim()));
}

#[tokio::test(flavor = "multi_thread")]
async fn tvaersd_refuses_key_files_others_can_read_and_names_the_fix() {
    let mut sites = Sites::temporary(&[PSYCHIATRY]).unwrap();
    let org = PSYCHIATRY.org_id;
    let keys = sites.site(org).dir.join("keys");
    for (file, mode) in [
        ("tls-key.pem", 0o644),
        ("signing-key.pk8", 0o640),
        ("storage.kek", 0o604),
    ] {
        let path = keys.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let error = sites.start(org).await.unwrap_err().to_string();
        assert!(error.contains("exit status: 2"), "{error}");
        assert!(
            error.contains(&format!("chmod 600 {}", path.display())),
            "{error}"
        );
        assert!(
            error.contains("readable or writable by group or others"),
            "{error}"
        );
        let contents = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&contents);
        for line in text
            .lines()
            .filter(|l| l.len() > 16 && !l.starts_with("-----"))
        {
            assert!(!error.contains(line.trim()), "key material in the error");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Fixed, it starts.
    sites.start(org).await.unwrap();
    assert!(sites.stop(org).await.unwrap().success());
}

/// `tvaersd check` with the KEK in an environment variable, without it, and
/// with no `[storage]` at all: the last two are configuration errors that
/// say what to do.
#[test]
fn the_kek_may_come_from_the_environment_and_is_required() {
    let sites = Sites::temporary(&[PSYCHIATRY]).unwrap();
    let site = sites.site(PSYCHIATRY.org_id);
    let kek_file = site.dir.join("keys/storage.kek");
    let hex_text = std::fs::read_to_string(&kek_file).unwrap();
    let check = |env: Option<&str>| {
        let mut command = Command::new(tvaers_e2e::daemon_binary().unwrap());
        command
            .arg("--config")
            .arg(&site.config)
            .arg("check")
            .env_remove("TVAERS_TEST_STORAGE_KEK");
        if let Some(value) = env {
            command.env("TVAERS_TEST_STORAGE_KEK", value);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (code, from_file) = check(None);
    assert_eq!(code, Some(0), "{from_file}");
    let id = from_file
        .lines()
        .find_map(|l| l.strip_prefix("storage key-encryption key: "))
        .unwrap()
        .to_owned();

    sites
        .edit_config(PSYCHIATRY.org_id, |text| {
            text.replace(
                "key_file = \"keys/storage.kek\"",
                "key_env = \"TVAERS_TEST_STORAGE_KEK\"",
            )
        })
        .unwrap();
    let (code, output) = check(Some(hex_text.trim()));
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains(&id), "{output}");
    assert!(!output.contains(hex_text.trim()));
    let (code, output) = check(None);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("TVAERS_TEST_STORAGE_KEK"), "{output}");
    let (code, output) = check(Some("not a key"));
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("64 hex digits"), "{output}");

    sites
        .edit_config(PSYCHIATRY.org_id, |text| {
            text.replace("[storage]\nkey_env = \"TVAERS_TEST_STORAGE_KEK\"\n", "")
        })
        .unwrap();
    let (code, output) = check(None);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("tvaers keys generate-kek") && output.contains("[storage]"),
        "{output}"
    );
}
