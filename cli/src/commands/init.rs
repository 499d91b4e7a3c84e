//! `tvaers init`: a new site's keys and config.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tvaers_daemon::config::Sector;
use tvaers_daemon::{at_rest, identity};

use crate::error::CliError;
use crate::org_id;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// This organisation's id: a SOR code (9 to 18 digits, but not 13) or a
    /// 13-digit GLN location number with a valid GS1 check digit.
    #[arg(long)]
    pub org_id: String,
    /// Display name, shown to peers.
    #[arg(long)]
    pub name: String,
    #[arg(long, value_parser = parse_sector)]
    /// municipality, psychiatry or general-practice.
    pub sector: Sector,
    /// UDP address peers reach this site on (QUIC), e.g. 0.0.0.0:7401.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The site directory: keys/, data/, run/ and tvaers.toml go here.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

fn parse_sector(text: &str) -> Result<Sector, String> {
    match text {
        "municipality" => Ok(Sector::Municipality),
        "psychiatry" => Ok(Sector::Psychiatry),
        "general-practice" => Ok(Sector::GeneralPractice),
        _ => Err("expected municipality, psychiatry or general-practice".into()),
    }
}

pub fn run(args: InitArgs, out: Output) -> anyhow::Result<()> {
    let kind = org_id::check(&args.org_id).map_err(|e| CliError::invalid(e.to_string()))?;
    if args.name.trim().is_empty() || args.name.chars().any(char::is_control) {
        return Err(CliError::invalid(
            "--name must not be empty or contain control characters",
        ));
    }
    let config_path = args.dir.join("tvaers.toml");
    let keys_dir = args.dir.join("keys");
    // Check everything before writing anything, so a refused init leaves
    // no half-made site behind.
    for path in [
        config_path.clone(),
        keys_dir.join("tls-cert.pem"),
        keys_dir.join("tls-key.pem"),
        keys_dir.join(identity::SIGNING_KEY_FILE),
        keys_dir.join(at_rest::KEK_FILE),
    ] {
        if path.exists() {
            return Err(anyhow::anyhow!(
                "{} exists already; `tvaers init` never overwrites keys or config. Use another \
                 --dir, or move the old site away first",
                path.display()
            ));
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let tls = identity::generate(&keys_dir, &args.org_id)?;
    let (signing_path, public) = identity::generate_signing_key(&keys_dir)?;
    let kek_path = keys_dir.join(at_rest::KEK_FILE);
    let kek_id = at_rest::generate_kek_file(&kek_path)?;
    let text = config_text(&args);
    // The config is not secret, but it names the keys; owner and group only.
    write_new(&config_path, text.as_bytes())?;

    let value = json!({
        "org_id": args.org_id,
        "org_id_kind": match kind { org_id::OrgIdKind::Sor => "sor", org_id::OrgIdKind::Gln => "gln" },
        "config": config_path,
        "certificate": tls.certificate,
        "private_key": tls.private_key,
        "signing_key": signing_path,
        "storage_key_file": kek_path,
        "storage_kek_id": kek_id,
        "tls_fingerprint": tls.fingerprint.to_string(),
        "signing_public_key": public.to_string(),
    });
    out.emit(&value, || {
        let config = config_path.display();
        format!(
            "Created site {org} ({name}) in {dir}\n\
             \x20 config:          {config}\n\
             \x20 TLS certificate: {cert}\n\
             \x20 TLS key:         {key} (mode 0600)\n\
             \x20 signing key:     {signing} (mode 0600)\n\
             \x20 storage key:     {kek} (mode 0600, id {kek_id}): encrypts the stored notices;\n\
             \x20                  back it up apart from the database, without it they cannot be read\n\
             \x20 TLS fingerprint: {fp}\n\
             \x20 signing key:     {public}\n\
             \n\
             Next steps:\n\
             \x20 1. tvaers --config {config} card export --out {org}.card.toml\n\
             \x20    (add --address HOST:PORT if peers reach you on another address than {listen})\n\
             \x20 2. send the card to each peer; add theirs with\n\
             \x20    tvaers --config {config} peer add THEIR-CARD.toml\n\
             \x20    and compare fingerprints over the phone\n\
             \x20 3. start the daemon: tvaersd --config {config} run\n\
             \x20 4. tvaers --config {config} status",
            org = args.org_id,
            name = args.name,
            dir = args.dir.display(),
            cert = tls.certificate.display(),
            key = tls.private_key.display(),
            signing = signing_path.display(),
            kek = kek_path.display(),
            fp = tls.fingerprint,
            listen = args.listen,
        )
    });
    Ok(())
}

fn write_new(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// TOML string literal (escapes quotes and backslashes).
fn quoted(text: &str) -> String {
    toml_edit::Value::from(text).to_string().trim().to_owned()
}

fn config_text(args: &InitArgs) -> String {
    format!(
        r#"# tvaers site configuration, written by `tvaers init`.
# Relative paths are resolved against this file's directory.
# Check it with: tvaersd --config tvaers.toml check

[site]
# This organisation's id: its SOR code or GLN location number, as peers
# know it.
org_id = {org_id}
name = {name}
# municipality | psychiatry | general-practice
sector = "{sector}"
# Ed25519 key (PKCS#8, mode 0600) this site signs its peer card with.
signing_key = "keys/signing-key.pk8"

[store]
# Embedded SQLite (WAL, fsync on every commit). The directory is created.
url = "sqlite://data/tvaers.db"
# Or PostgreSQL (the daemon applies its schema on start):
#   url = "postgres://tvaers@db.example:5432/tvaers"
#   max_connections = 8   # pool size, PostgreSQL only

[storage]
# Notices are stored encrypted (AES-256-GCM) under a data key kept in the
# store, wrapped by this key-encryption key: 64 hex digits, mode 0600.
# Back it up apart from the database: without it the notices cannot be read.
# Re-wrap under a new one with `tvaers keys rewrap --new-key-file FILE`.
key_file = "keys/storage.kek"
# Or take it from an environment variable instead:
#   key_env = "TVAERS_STORAGE_KEK"

[transport]
# UDP address peers reach this site on (QUIC, ALPN tvaers/1).
listen = "{listen}"
# TLS key and self-signed certificate. Peers pin the certificate's
# fingerprint (`tvaers keys show`); rotate with `tvaers keys rotate-tls`.
certificate = "keys/tls-cert.pem"
private_key = "keys/tls-key.pem"

[api]
# The local API (gRPC) for the local system; mode 0660.
socket = "run/api.sock"
# The admin API for the `tvaers` CLI (mode 0600) defaults to admin.sock
# beside the socket above:
# admin_socket = "run/admin.sock"

[delivery]
# A notice not delivered within this time fails (7 days).
ttl_seconds = 604800
# Retries back off exponentially with jitter from this...
backoff_initial_ms = 1000
# ...up to this.
backoff_max_seconds = 300

# Optional: Prometheus metrics and health probes over plain HTTP.
# [metrics]
# listen = "127.0.0.1:9464"

# Peers: one [[peers]] table per organisation this site exchanges notices
# with. Add them from their cards with `tvaers peer add CARD`; only a peer
# whose certificate fingerprint is pinned here may connect.
"#,
        org_id = quoted(&args.org_id),
        name = quoted(&args.name),
        sector = args.sector.as_str(),
        listen = args.listen,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_parses_and_names_the_keys() {
        let args = InitArgs {
            org_id: "5790000000005".into(),
            name: "Lægerne i \"Stege\"".into(),
            sector: Sector::GeneralPractice,
            listen: "127.0.0.1:7403".parse().unwrap(),
            dir: PathBuf::from("/srv/site"),
        };
        let path = PathBuf::from("/srv/site/tvaers.toml");
        let config = tvaers_daemon::config::Config::parse(&path, &config_text(&args)).unwrap();
        assert_eq!(config.site.name, "Lægerne i \"Stege\"");
        assert_eq!(
            config.site.signing_key,
            Some(PathBuf::from("/srv/site/keys/signing-key.pk8"))
        );
        assert!(config.peers.is_empty());
        assert_eq!(config.api.socket, PathBuf::from("/srv/site/run/api.sock"));
        assert_eq!(
            config.storage.unwrap().kek,
            at_rest::KekSource::File(PathBuf::from("/srv/site/keys/storage.kek"))
        );
    }
}
