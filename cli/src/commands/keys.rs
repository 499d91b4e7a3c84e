//! `tvaers keys show | rotate-tls | activate-tls | generate-kek | rewrap`.
//!
//! A TLS rotation has two phases so traffic never stops: `rotate-tls`
//! makes a new certificate and a card that names it as current and the old
//! one as previous (accepted by peers until the overlap ends), but keeps
//! serving the old one; once peers have added the new card,
//! `activate-tls` switches the config to the new files, and the daemon
//! presents them from its next start.
//!
//! The storage key-encryption key (KEK) wraps the data key that encrypts
//! notices at rest. `generate-kek` writes a new one; `rewrap` has the
//! running daemon wrap the data key under it, then points the config at it,
//! after which the old KEK file can be destroyed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tvaers_daemon::Millis;
use tvaers_daemon::at_rest::{self, Kek, KekSource};
use tvaers_daemon::config::{Config, format_time, parse_time};
use tvaers_daemon::identity;
use tvaers_daemon::transport::tls::{Fingerprint, Identity};

use crate::card;
use crate::commands::card::{build, card_addresses, current_fingerprint, signing_key};
use crate::commands::{admin, load_config};
use crate::error::CliError;
use crate::output::{Output, grouped};
use crate::site_config::SiteConfig;

/// Where a staged rotation is recorded, in the config's directory.
const ROTATION_FILE: &str = "keys/tls-rotation.toml";

const DAY_MS: i64 = 24 * 3600 * 1000;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Show the TLS fingerprint, the certificate's expiry and the signing
    /// key (and a staged TLS rotation).
    Show,
    /// Start a TLS certificate rotation (phase 1 of 2).
    ///
    /// The flow: `tvaers keys rotate-tls` → send the new card to every peer
    /// → each peer runs `tvaers peer add CARD` (it then accepts the old and
    /// the new certificate until the overlap ends) → `tvaers keys
    /// activate-tls` → restart tvaersd. The old certificate keeps being
    /// served until activation, so traffic never stops.
    RotateTls {
        /// How long peers keep accepting the old certificate.
        #[arg(long, default_value_t = 7)]
        overlap_days: u32,
        /// Where to write the new card (default: CONFIG-DIR/<org>-card-<time>.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// An address peers dial (repeat); default transport.listen.
        #[arg(long = "address", value_name = "HOST:PORT")]
        addresses: Vec<String>,
    },
    /// Switch the config to the certificate from `rotate-tls` (phase 2 of
    /// 2). The daemon uses it from its next start: restart tvaersd.
    ActivateTls,
    /// Write a new storage key-encryption key (64 hex digits, mode 0600) to
    /// PATH; never overwrites. Use it with `tvaers keys rewrap`.
    GenerateKek {
        /// Where to write it, e.g. keys/storage-2026.kek.
        path: PathBuf,
    },
    /// Re-wrap the store's data key under a new key-encryption key.
    ///
    /// The running daemon unwraps the data key with its current KEK and
    /// stores it wrapped under the new one (notices are not rewritten);
    /// then the config's `[storage] key_file` is pointed at the new file.
    /// Afterwards the old KEK no longer opens the store and can be
    /// destroyed. The daemon must be running.
    Rewrap {
        /// The new KEK file (from `tvaers keys generate-kek`), mode 0600.
        #[arg(long)]
        new_key_file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// A staged or activated rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationFile {
    new_certificate: PathBuf,
    new_private_key: PathBuf,
    new_fingerprint: String,
    old_fingerprint: String,
    overlap_until: String,
    activated_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Rotation {
    pub new_certificate: PathBuf,
    pub new_private_key: PathBuf,
    pub new_fingerprint: Fingerprint,
    pub old_fingerprint: Fingerprint,
    pub overlap_until_ms: Millis,
    pub activated_at: Option<String>,
}

fn base(config: &Config) -> PathBuf {
    config.path.parent().unwrap_or(Path::new(".")).to_owned()
}

/// The rotation recorded for this site, if any.
pub fn rotation(config: &Config) -> anyhow::Result<Option<Rotation>> {
    let path = base(config).join(ROTATION_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let bad =
        |what: &str| anyhow::anyhow!("{}: {what}; remove the file to start over", path.display());
    let file: RotationFile = toml::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    Ok(Some(Rotation {
        new_certificate: base(config).join(&file.new_certificate),
        new_private_key: base(config).join(&file.new_private_key),
        new_fingerprint: Fingerprint::parse(&file.new_fingerprint)
            .map_err(|_| bad("bad new_fingerprint"))?,
        old_fingerprint: Fingerprint::parse(&file.old_fingerprint)
            .map_err(|_| bad("bad old_fingerprint"))?,
        overlap_until_ms: parse_time(&file.overlap_until)
            .ok_or_else(|| bad("bad overlap_until"))?,
        activated_at: file.activated_at,
    }))
}

fn save_rotation(config: &Config, r: &Rotation) -> anyhow::Result<()> {
    let base = base(config);
    let rel = |p: &Path| p.strip_prefix(&base).unwrap_or(p).to_owned();
    let file = RotationFile {
        new_certificate: rel(&r.new_certificate),
        new_private_key: rel(&r.new_private_key),
        new_fingerprint: r.new_fingerprint.to_string(),
        old_fingerprint: r.old_fingerprint.to_string(),
        overlap_until: format_time(r.overlap_until_ms),
        activated_at: r.activated_at.clone(),
    };
    let text = format!(
        "# A TLS rotation staged by `tvaers keys rotate-tls`; see `tvaers keys show`.\n{}",
        toml::to_string(&file)?
    );
    let path = base.join(ROTATION_FILE);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The certificate's notAfter as Unix ms.
pub fn not_after_ms(identity: &Identity) -> anyhow::Result<Millis> {
    identity
        .not_after_ms()
        .ok_or_else(|| anyhow::anyhow!("cannot read the TLS certificate's expiry"))
}

pub async fn run(command: KeysCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    if let KeysCommand::GenerateKek { path } = &command {
        return generate_kek(path, out);
    }
    let config = load_config(config_path)?;
    match command {
        KeysCommand::Show => show(&config, out),
        KeysCommand::RotateTls {
            overlap_days,
            out: card_out,
            addresses,
        } => rotate(&config, overlap_days, card_out, addresses, out),
        KeysCommand::ActivateTls => activate(&config, out),
        KeysCommand::Rewrap { new_key_file, yes } => rewrap(&config, &new_key_file, yes, out).await,
        KeysCommand::GenerateKek { path } => generate_kek(&path, out),
    }
}

fn generate_kek(path: &Path, out: Output) -> anyhow::Result<()> {
    let kek_id = at_rest::generate_kek_file(path)?;
    let value = json!({ "key_file": path, "kek_id": kek_id });
    out.emit(&value, || {
        format!(
            "New storage key-encryption key: {} (id {kek_id}, mode 0600)\n\
             Keep a copy apart from the database backups: without it the stored notices cannot \
             be read.\nTo use it for a running site: tvaers keys rewrap --new-key-file {}",
            path.display(),
            path.display()
        )
    });
    Ok(())
}

async fn rewrap(
    config: &Config,
    new_key_file: &Path,
    yes: bool,
    out: Output,
) -> anyhow::Result<()> {
    let Some(storage) = &config.storage else {
        return Err(CliError::invalid(format!(
            "{} has no [storage] section: the daemon cannot have started without one; add \
             `[storage] key_file = ...` naming the key it was set up with",
            config.path.display()
        )));
    };
    // The daemon reads the file itself, from its own working directory.
    let new_key_file = std::fs::canonicalize(new_key_file)
        .with_context(|| format!("cannot find {}", new_key_file.display()))?;
    let new = Kek::load(&KekSource::File(new_key_file.clone()))
        .map_err(|e| CliError::invalid(e.to_string()))?;
    // Check the config edit before the daemon changes anything.
    let mut site = SiteConfig::load(&config.path)?;
    site.set_storage_key_file(&new_key_file);
    site.check()?;
    if !yes {
        crate::commands::confirm(
            &format!(
                "Wrap the store's data key under {} (id {}) and point {} at it? The current \
                 key-encryption key ({}) will no longer open the store.",
                new_key_file.display(),
                new.id(),
                config.path.display(),
                storage.kek
            ),
            "check the new key file is backed up",
            "not re-wrapped: nothing was changed",
        )?;
    }
    let reply = admin(config).await?.rewrap_store_key(&new_key_file).await?;
    site.save().map_err(|e| {
        anyhow::anyhow!(
            "the data key is now wrapped under {} (id {}), but the config could not be updated \
             ({e}): set `[storage] key_file = \"{}\"` in {} by hand before the daemon restarts",
            new_key_file.display(),
            reply.new_kek_id,
            new_key_file.display(),
            config.path.display()
        )
    })?;
    let old_file = match &storage.kek {
        KekSource::File(path) => Some(path.clone()),
        KekSource::Env(_) => None,
    };
    let value = json!({
        "old_kek_id": reply.old_kek_id,
        "new_kek_id": reply.new_kek_id,
        "key_file": new_key_file,
        "old_key_file": old_file,
        "restart_required": false,
    });
    out.emit(&value, || {
        let old = match &old_file {
            Some(path) => format!(
                "The old key-encryption key file {} can now be destroyed (e.g. `shred -u {}`), \
                 with any copies of it.",
                path.display(),
                path.display()
            ),
            None => format!(
                "The old key-encryption key ({}) can now be destroyed wherever it is kept.",
                storage.kek
            ),
        };
        format!(
            "The store's data key is now wrapped under {} (id {}; was {}).\n\
             {} names it; the running daemon keeps working and uses it from its next start.\n\
             {old}\nInstances sharing this database need the new key file in their configs too.",
            new_key_file.display(),
            reply.new_kek_id,
            reply.old_kek_id,
            config.path.display(),
        )
    });
    Ok(())
}

fn show(config: &Config, out: Output) -> anyhow::Result<()> {
    let identity = Identity::load(&config.transport.certificate, &config.transport.private_key)
        .context("cannot read this site's TLS certificate")?;
    let fingerprint = identity.fingerprint();
    let not_after = not_after_ms(&identity)?;
    let public = signing_key(config)?.public_key();
    let rotation = rotation(config)?;
    let days_left = (not_after - tvaers_daemon::now_ms()) / DAY_MS;
    // The id only, never the key; a key the CLI cannot read (an environment
    // variable set only for the daemon) is not an error here.
    let storage = config.storage.as_ref().map(|storage| {
        let id = Kek::load(&storage.kek).map(|kek| kek.id().to_owned());
        (storage.kek.to_string(), id)
    });
    let value = json!({
        "certificate": config.transport.certificate,
        "tls_fingerprint": fingerprint.to_string(),
        "certificate_not_after": format_time(not_after),
        "signing_key": public.to_string(),
        "storage_key": storage.as_ref().map(|(source, id)| json!({
            "source": source,
            "kek_id": id.as_ref().ok(),
            "error": id.as_ref().err().map(ToString::to_string),
        })),
        "rotation": rotation.as_ref().map(|r| json!({
            "new_certificate": r.new_certificate,
            "new_fingerprint": r.new_fingerprint.to_string(),
            "old_fingerprint": r.old_fingerprint.to_string(),
            "overlap_until": format_time(r.overlap_until_ms),
            "activated_at": r.activated_at,
        })),
    });
    out.emit(&value, || {
        let mut text = format!(
            "TLS certificate: {}\n  fingerprint:   {}\n                 {}\n  not after:     {} \
             ({days_left} days)\nsigning key:     {}\n                 {}\n",
            config.transport.certificate.display(),
            fingerprint,
            grouped(&fingerprint.to_string()),
            format_time(not_after),
            public,
            grouped(&public.to_string()),
        );
        match &storage {
            Some((source, Ok(id))) => {
                text.push_str(&format!("storage key:     {source} (id {id})\n"));
            }
            Some((source, Err(error))) => {
                text.push_str(&format!(
                    "storage key:     {source} (cannot read it: {error})\n"
                ));
            }
            None => text.push_str(
                "storage key:     none: add [storage] key_file (see `tvaers keys generate-kek`)\n",
            ),
        }
        if days_left < 30 {
            text.push_str(
                "warning: the certificate expires within 30 days: run `tvaers keys rotate-tls`\n",
            );
        }
        if let Some(r) = &rotation {
            match &r.activated_at {
                None => text.push_str(&format!(
                    "TLS rotation staged: new fingerprint {}; once peers have added the new \
                     card, run `tvaers keys activate-tls` and restart tvaersd (peers accept the \
                     old certificate until {})\n",
                    r.new_fingerprint,
                    format_time(r.overlap_until_ms)
                )),
                Some(at) => text.push_str(&format!(
                    "TLS rotation activated at {at}; peers accept the old certificate until {}\n",
                    format_time(r.overlap_until_ms)
                )),
            }
        }
        text
    });
    Ok(())
}

fn rotate(
    config: &Config,
    overlap_days: u32,
    card_out: Option<PathBuf>,
    addresses: Vec<String>,
    out: Output,
) -> anyhow::Result<()> {
    if overlap_days == 0 {
        return Err(CliError::invalid(
            "--overlap-days must be at least 1: peers need time to add the new card",
        ));
    }
    if let Some(r) = rotation(config)?
        && r.activated_at.is_none()
    {
        return Err(anyhow::anyhow!(
            "a TLS rotation to {} is staged already; run `tvaers keys activate-tls`, or remove \
             {} to abandon it",
            r.new_fingerprint,
            base(config).join(ROTATION_FILE).display()
        ));
    }
    let addresses = card_addresses(config, addresses)?;
    let old = current_fingerprint(config)?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    // identity::generate writes fixed names, so each rotation gets its own
    // directory; the old files stay in place until activation.
    let dir = base(config).join("keys").join(format!("tls-{stamp}"));
    let keys = identity::generate(&dir, &config.site.org_id)?;
    let until = tvaers_daemon::now_ms() + i64::from(overlap_days) * DAY_MS;
    let rotation = Rotation {
        new_certificate: keys.certificate.clone(),
        new_private_key: keys.private_key.clone(),
        new_fingerprint: keys.fingerprint,
        old_fingerprint: old,
        overlap_until_ms: until,
        activated_at: None,
    };
    save_rotation(config, &rotation)?;
    let text = build(config, addresses, keys.fingerprint, Some((old, until)))?;
    let card_path = card_out
        .unwrap_or_else(|| base(config).join(format!("{}-card-{stamp}.toml", config.site.org_id)));
    card::write(&card_path, &text)?;
    let value = json!({
        "new_certificate": keys.certificate,
        "new_private_key": keys.private_key,
        "new_fingerprint": keys.fingerprint.to_string(),
        "old_fingerprint": old.to_string(),
        "overlap_until": format_time(until),
        "card": card_path,
    });
    out.emit(&value, || {
        format!(
            "New TLS certificate: {}\n  fingerprint: {}\n               {}\nNew card: {}\n\n\
             Next steps (the old certificate is still in use; nothing has changed yet):\n\
             \x20 1. send the new card to every peer; each runs `tvaers peer add CARD`\n\
             \x20    (they accept the old certificate until {})\n\
             \x20 2. tvaers keys activate-tls\n\
             \x20 3. restart tvaersd",
            keys.certificate.display(),
            keys.fingerprint,
            grouped(&keys.fingerprint.to_string()),
            card_path.display(),
            format_time(until),
        )
    });
    Ok(())
}

fn activate(config: &Config, out: Output) -> anyhow::Result<()> {
    let Some(mut rotation) = rotation(config)? else {
        return Err(CliError::invalid(
            "no TLS rotation is staged: start one with `tvaers keys rotate-tls`",
        ));
    };
    if rotation.activated_at.is_some() {
        return Err(CliError::invalid(
            "the staged TLS rotation is activated already; restart tvaersd if you have not",
        ));
    }
    // Make sure the files are still there and belong together.
    let identity = Identity::load(&rotation.new_certificate, &rotation.new_private_key)
        .context("cannot read the new TLS certificate")?;
    if identity.fingerprint() != rotation.new_fingerprint {
        return Err(anyhow::anyhow!(
            "{} does not have the fingerprint recorded by rotate-tls; start over with \
             `tvaers keys rotate-tls`",
            rotation.new_certificate.display()
        ));
    }
    let mut site = SiteConfig::load(&config.path)?;
    site.set_tls_files(&rotation.new_certificate, &rotation.new_private_key);
    site.save()?;
    rotation.activated_at = Some(crate::commands::now_text());
    save_rotation(config, &rotation)?;
    let value = json!({
        "certificate": rotation.new_certificate,
        "fingerprint": rotation.new_fingerprint.to_string(),
        "restart_required": true,
    });
    out.emit(&value, || {
        format!(
            "The config now names the new certificate {} ({}).\nRestart tvaersd to present it: \
             the running daemon keeps the old one until then.",
            rotation.new_certificate.display(),
            rotation.new_fingerprint
        )
    });
    Ok(())
}
