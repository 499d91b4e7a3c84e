//! `tvaers card export | verify`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use tvaers_daemon::config::{Config, format_time};
use tvaers_daemon::signing::SigningKey;
use tvaers_daemon::transport::tls::{Fingerprint, Identity};

use crate::card::{self, CardBody, CardError, VerifiedCard};
use crate::commands::{keys, load_config, now_text};
use crate::error::CliError;
use crate::output::{Output, grouped};

#[derive(Subcommand, Debug)]
pub enum CardCommand {
    /// Write this site's signed peer card (to stdout, or --out FILE).
    ///
    /// The card carries the org id, name, sector, the addresses peers dial,
    /// the TLS fingerprint (and, during a TLS rotation, the previous one
    /// with the end of the overlap), the signing public key and the time.
    Export {
        /// Write the card here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// An address peers dial (repeat for several). Default:
        /// transport.listen, unless that is a wildcard like 0.0.0.0.
        #[arg(long = "address", value_name = "HOST:PORT")]
        addresses: Vec<String>,
    },
    /// Check a card's signature and fields, and print it.
    Verify {
        /// The card file.
        file: PathBuf,
    },
}

pub fn run(command: CardCommand, config: &Path, out: Output) -> anyhow::Result<()> {
    match command {
        CardCommand::Export {
            out: file,
            addresses,
        } => {
            let config = load_config(config)?;
            let addresses = card_addresses(&config, addresses)?;
            let current = current_fingerprint(&config)?;
            let (fingerprint, previous) = match keys::rotation(&config)? {
                Some(r) if r.overlap_until_ms > tvaers_daemon::now_ms() => {
                    if r.activated_at.is_some() {
                        (current, Some((r.old_fingerprint, r.overlap_until_ms)))
                    } else {
                        (r.new_fingerprint, Some((current, r.overlap_until_ms)))
                    }
                }
                _ => (current, None),
            };
            let text = build(&config, addresses, fingerprint, previous)?;
            let verified = card::verify(&text)?;
            match &file {
                Some(path) => {
                    card::write(path, &text)?;
                    let (value, human) = describe(&verified);
                    let mut value = value;
                    value["file"] = json!(path);
                    out.emit(&value, || {
                        format!(
                            "Wrote the card of {} to {}\n{human}\nSend the file to the peer; \
                             they add it with `tvaers peer add {}`.",
                            verified.body.org_id,
                            path.display(),
                            path.display()
                        )
                    });
                }
                None => {
                    if out.json {
                        out.emit(&describe(&verified).0, String::new);
                    } else {
                        print!("{text}");
                    }
                }
            }
            Ok(())
        }
        CardCommand::Verify { file } => {
            let verified = read_card(&file)?;
            let (value, human) = describe(&verified);
            out.emit(&value, || {
                format!(
                    "The card's signature is valid.\n{human}\nA card is self-signed: trust it \
                     only after comparing the fingerprints with the organisation over the phone."
                )
            });
            Ok(())
        }
    }
}

/// Reads a card; a bad card is refused (exit 4), an unreadable file is
/// invalid input (exit 2).
pub fn read_card(file: &Path) -> anyhow::Result<VerifiedCard> {
    card::read(file).map_err(|e| match e {
        CardError::Read { .. } => CliError::invalid(e.to_string()),
        CardError::BadSignature(_) => {
            CliError::refused(format!("{e} (card {} refused)", file.display()))
        }
        _ => CliError::refused(format!("{e} (card {} refused)", file.display())),
    })
}

/// The addresses a card names: given ones, or the listen address if a peer
/// could dial it.
pub fn card_addresses(config: &Config, given: Vec<String>) -> anyhow::Result<Vec<String>> {
    if given.is_empty() {
        let listen = config.transport.listen;
        if listen.ip().is_unspecified() {
            return Err(CliError::invalid(format!(
                "transport.listen is {listen}, which a peer cannot dial; pass the address peers \
                 reach this site on with --address HOST:PORT (repeat for several)"
            )));
        }
        return Ok(vec![listen.to_string()]);
    }
    for a in &given {
        let addr: std::net::SocketAddr = a.parse().map_err(|_| {
            CliError::invalid(format!(
                "--address {a}: expected an address like 10.0.0.5:7401"
            ))
        })?;
        if addr.ip().is_unspecified() {
            return Err(CliError::invalid(format!(
                "--address {a}: a peer cannot dial a wildcard address"
            )));
        }
    }
    Ok(given)
}

/// The fingerprint of the certificate the config names now.
pub fn current_fingerprint(config: &Config) -> anyhow::Result<Fingerprint> {
    Ok(
        Identity::load(&config.transport.certificate, &config.transport.private_key)
            .context("cannot read this site's TLS certificate")?
            .fingerprint(),
    )
}

/// This site's signing key.
pub fn signing_key(config: &Config) -> anyhow::Result<SigningKey> {
    let path = config.site.signing_key.as_ref().ok_or_else(|| {
        CliError::invalid(format!(
            "{} has no site.signing_key; a site made with `tvaers init` has one. Create a key \
             and point site.signing_key at it",
            config.path.display()
        ))
    })?;
    Ok(SigningKey::load(path)?)
}

/// Builds and signs a card of this site.
pub fn build(
    config: &Config,
    addresses: Vec<String>,
    fingerprint: Fingerprint,
    previous: Option<(Fingerprint, i64)>,
) -> anyhow::Result<String> {
    let key = signing_key(config)?;
    let body = CardBody {
        org_id: config.site.org_id.clone(),
        name: config.site.name.clone(),
        sector: config.site.sector,
        addresses,
        fingerprint: fingerprint.to_string(),
        previous_fingerprint: previous.map(|(f, _)| f.to_string()),
        previous_fingerprint_until: previous.map(|(_, until)| format_time(until)),
        signing_key: key.public_key().to_string(),
        created_at: now_text(),
    };
    Ok(body.sign(&key))
}

/// A card as JSON and as text for people, with the fingerprints grouped
/// for reading aloud.
pub fn describe(card: &VerifiedCard) -> (Value, String) {
    let b = &card.body;
    let value = json!({
        "org_id": b.org_id,
        "name": b.name,
        "sector": b.sector.as_str(),
        "addresses": b.addresses,
        "fingerprint": b.fingerprint,
        "previous_fingerprint": b.previous_fingerprint,
        "previous_fingerprint_until": b.previous_fingerprint_until,
        "signing_key": b.signing_key,
        "created_at": b.created_at,
    });
    let mut text = format!(
        "  organisation:    {} ({}, {})\n  addresses:       {}\n  created:         {}\n  \
         TLS fingerprint: {}\n  signing key:     {}\n",
        b.org_id,
        b.name,
        b.sector.as_str(),
        b.addresses.join(", "),
        b.created_at,
        grouped(&b.fingerprint),
        grouped(&b.signing_key),
    );
    if let (Some(prev), Some(until)) = (&b.previous_fingerprint, &b.previous_fingerprint_until) {
        text.push_str(&format!(
            "  previous TLS fingerprint (accepted until {until}): {}\n",
            grouped(prev)
        ));
    }
    (value, text)
}
