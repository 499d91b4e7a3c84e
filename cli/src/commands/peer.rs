//! `tvaers peer add | list | show | remove | revoke`.
//!
//! Peers live in the site config's `[[peers]]` tables (the trust store);
//! every change is written there first, then the running daemon is asked
//! to reload them, so nothing needs a restart and nothing is lost if the
//! daemon is down.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};
use tvaers_client::{ClientError, v1};
use tvaers_daemon::config::{Config, Peer, format_time};
use tvaers_daemon::transport::tls::Fingerprint;

use crate::card::VerifiedCard;
use crate::commands::card::{describe, read_card};
use crate::commands::{load_config, now_text};
use crate::error::CliError;
use crate::output::{Output, Table, age, grouped, time};
use crate::site_config::{PeerEntry, SiteConfig};

/// How long an old certificate stays accepted after a rotation when the
/// card does not say.
const DEFAULT_OVERLAP_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Subcommand, Debug)]
pub enum PeerCommand {
    /// Trust a peer from its card: verify, compare fingerprints, store,
    /// and apply to the running daemon without a restart.
    ///
    /// A card for a known organisation with the same signing key and a new
    /// TLS fingerprint is a rotation: the old certificate stays accepted
    /// until the card's overlap end (or 7 days). A different signing key is
    /// refused unless --replace.
    Add {
        /// The peer's card file (from `tvaers card export`).
        card: PathBuf,
        /// Do not ask: the fingerprints were compared already.
        #[arg(long)]
        yes: bool,
        /// Accept a card whose signing key differs from the one stored for
        /// this organisation (it reinstalled or lost its key).
        #[arg(long)]
        replace: bool,
    },
    /// The peers in the config, with live connection and outbox figures
    /// when the daemon runs.
    List,
    /// One peer in detail.
    Show {
        /// The peer's organisation id.
        org_id: String,
    },
    /// Remove a peer from the config and the running daemon.
    Remove { org_id: String },
    /// Revoke a peer: its connections are dropped at once, its pending
    /// notices fail with "peer revoked", new connections are refused.
    /// `peer add` with its card trusts it again.
    Revoke { org_id: String },
}

pub async fn run(command: PeerCommand, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    match command {
        PeerCommand::Add { card, yes, replace } => add(&config, &card, yes, replace, out).await,
        PeerCommand::List => list(&config, out).await,
        PeerCommand::Show { org_id } => show(&config, &org_id, out).await,
        PeerCommand::Remove { org_id } => {
            let mut site = SiteConfig::load(&config.path)?;
            if !site.remove_peer(&org_id)? {
                return Err(unknown_peer(&org_id));
            }
            site.save()?;
            let reload = reload(&config).await;
            out.emit(&json!({"removed": org_id, "reload": reload.json()}), || {
                format!(
                    "Removed peer {org_id} from {}.\n{}",
                    config.path.display(),
                    reload.text()
                )
            });
            Ok(())
        }
        PeerCommand::Revoke { org_id } => {
            let mut site = SiteConfig::load(&config.path)?;
            let at = now_text();
            if !site.revoke_peer(&org_id, &at)? {
                return Err(unknown_peer(&org_id));
            }
            site.save()?;
            let reload = reload(&config).await;
            out.emit(
                &json!({"revoked": org_id, "revoked_at": at, "reload": reload.json()}),
                || {
                    format!(
                        "Revoked peer {org_id} at {at}: no connections in either direction; its \
                         pending notices fail with \"peer revoked\".\n{}",
                        reload.text()
                    )
                },
            );
            Ok(())
        }
    }
}

fn unknown_peer(org_id: &str) -> anyhow::Error {
    CliError::invalid(format!(
        "no peer {org_id} in the config; `tvaers peer list` shows the known ones"
    ))
}

/// What a peer add does to an existing entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    New,
    Same,
    Rotation,
    Replace,
}

async fn add(
    config: &Config,
    card_path: &Path,
    yes: bool,
    replace: bool,
    out: Output,
) -> anyhow::Result<()> {
    let card = read_card(card_path)?;
    let org = card.body.org_id.clone();
    if org == config.site.org_id {
        return Err(CliError::invalid(format!(
            "{} is this site's own card; add the peer's card instead",
            card_path.display()
        )));
    }
    let existing = config.peer(&org);
    let (change, previous) = decide(existing, &card, replace, tvaers_daemon::now_ms())
        .map_err(|why| {
            CliError::refused(format!(
                "{why}. Call them; if they really have a new key, run `tvaers peer add {} --replace`",
                card_path.display()
            ))
        })?;
    let (mut value, human) = describe(&card);
    let what = match change {
        Change::New => "a new peer".to_owned(),
        Change::Same => "an update of a known peer (same keys)".to_owned(),
        Change::Rotation => format!(
            "a TLS certificate rotation of a known peer: the old certificate {} stays accepted \
             until {}",
            existing
                .map(|p| p.fingerprint.to_string())
                .unwrap_or_default(),
            previous
                .as_ref()
                .map(|(_, u)| u.as_str())
                .unwrap_or_default()
        ),
        Change::Replace => "a REPLACEMENT of a known peer's keys (--replace)".to_owned(),
    };
    let what = if existing.is_some_and(Peer::is_revoked) {
        format!("{what}; it is REVOKED now, and adding it trusts it again")
    } else {
        what
    };
    if !out.json {
        eprintln!(
            "Card {} verified: {what}.\n{human}\nCompare the TLS fingerprint and signing key \
             with {} over the phone, group by group.",
            card_path.display(),
            card.body.name,
        );
    }
    if !yes {
        confirm(&org)?;
    }

    let entry = PeerEntry {
        org_id: org.clone(),
        name: card.body.name.clone(),
        sector: Some(card.body.sector.as_str().to_owned()),
        addresses: card.body.addresses.clone(),
        fingerprint: card.fingerprint.to_string(),
        previous_fingerprint: previous,
        signing_key: Some(card.signing_key.to_string()),
        added_at: Some(now_text()),
    };
    let mut site = SiteConfig::load(&config.path)?;
    site.upsert_peer(&entry)?;
    site.save()?;
    let reload = reload(config).await;
    value["change"] = json!(format!("{change:?}").to_lowercase());
    value["config"] = json!(config.path);
    value["reload"] = reload.json();
    out.emit(&value, || {
        format!(
            "Stored peer {org} in {}.\n{}",
            config.path.display(),
            reload.text()
        )
    });
    Ok(())
}

/// What adding `card` does to the stored entry `existing`, and the
/// previous fingerprint (with its end) the entry keeps accepting. Refuses
/// (with why) a card whose signing key differs from the stored one unless
/// `replace`.
fn decide(
    existing: Option<&Peer>,
    card: &VerifiedCard,
    replace: bool,
    now: i64,
) -> Result<(Change, Option<(String, String)>), String> {
    let text = |(fp, until): (Fingerprint, i64)| (fp.to_string(), format_time(until));
    let Some(p) = existing else {
        // A new peer: accept its previous certificate too if the card has
        // one, since the peer may not have activated its new one yet.
        return Ok((Change::New, card.previous.map(text)));
    };
    let same_key = p.signing_key == Some(card.signing_key);
    let same_tls = p.fingerprint == card.fingerprint;
    // An entry written by hand may have no signing key: then only a card
    // with the pinned certificate may add one without --replace.
    if !same_key && (p.signing_key.is_some() || !same_tls) {
        if !replace {
            return Err(format!(
                "peer {} is known with signing key {} and TLS fingerprint {}, but this card has                  signing key {}: it may not come from {}",
                p.org_id,
                p.signing_key
                    .map_or_else(|| "(none)".to_owned(), |k| k.to_string()),
                p.fingerprint,
                card.signing_key,
                p.org_id
            ));
        }
        // New keys are a new identity: the old certificate is not kept.
        return Ok((Change::Replace, card.previous.map(text)));
    }
    if same_tls {
        let kept = p
            .previous_fingerprint
            .map(|prev| (prev.fingerprint, prev.valid_until_ms));
        return Ok((Change::Same, card.previous.or(kept).map(text)));
    }
    // A rotation: the certificate pinned now stays accepted until the
    // overlap the card announces for it, or for the default overlap.
    let until = match card.previous {
        Some((fp, until)) if fp == p.fingerprint => until,
        _ => now + DEFAULT_OVERLAP_MS,
    };
    Ok((Change::Rotation, Some(text((p.fingerprint, until)))))
}

/// Asks y/N on the terminal; refuses without one.
fn confirm(org: &str) -> anyhow::Result<()> {
    crate::commands::confirm(
        &format!("Do both match what {org} reads to you?"),
        "compare the fingerprints with the peer first",
        &format!("not added: {org} was not confirmed. Nothing was changed"),
    )
}

/// The outcome of asking the daemon to reload its peers.
enum Reload {
    Applied(v1::ReloadPeersResponse),
    NotRunning(String),
    Failed(String),
}

impl Reload {
    fn json(&self) -> Value {
        match self {
            Reload::Applied(r) => json!({
                "applied": true,
                "added": r.added,
                "updated": r.updated,
                "revoked": r.revoked,
                "removed": r.removed,
                "failed_items": r.failed_items,
            }),
            Reload::NotRunning(why) => {
                json!({"applied": false, "daemon_running": false, "reason": why})
            }
            Reload::Failed(why) => json!({"applied": false, "daemon_running": true, "error": why}),
        }
    }

    fn text(&self) -> String {
        match self {
            Reload::Applied(r) => {
                let mut text = "The running daemon applied it (no restart needed).".to_owned();
                if r.failed_items > 0 {
                    text.push_str(&format!(
                        " {} pending outbox item(s) failed because their peer was revoked or removed.",
                        r.failed_items
                    ));
                }
                text
            }
            Reload::NotRunning(_) => {
                "The daemon is not running: the change is stored and is used at its next start."
                    .to_owned()
            }
            Reload::Failed(why) => format!(
                "warning: the change is stored, but the running daemon did not apply it ({why}); \
                 restart tvaersd to apply it"
            ),
        }
    }
}

async fn reload(config: &Config) -> Reload {
    let client = match tvaers_client::AdminClient::connect(&config.api.admin_socket).await {
        Ok(client) => client,
        Err(e @ ClientError::DaemonNotRunning { .. }) => return Reload::NotRunning(e.to_string()),
        Err(e) => return Reload::Failed(e.to_string()),
    };
    match client.reload_peers().await {
        Ok(r) => Reload::Applied(r),
        Err(e) => Reload::Failed(e.to_string()),
    }
}

/// Live figures for the peers, when the daemon runs.
async fn live(config: &Config) -> (Option<Vec<v1::PeerStatus>>, Option<String>) {
    match tvaers_client::AdminClient::connect(&config.api.admin_socket).await {
        Ok(client) => match client.status().await {
            Ok(status) => (Some(status.peers), None),
            Err(e) => (None, Some(e.to_string())),
        },
        Err(e) => (None, Some(e.to_string())),
    }
}

fn peer_json(p: &Peer, live: Option<&v1::PeerStatus>) -> Value {
    let mut value = json!({
        "org_id": p.org_id,
        "name": p.name,
        "sector": p.sector.map(|s| s.as_str()),
        "addresses": p.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "fingerprint": p.fingerprint.to_string(),
        "previous_fingerprint": p.previous_fingerprint.map(|f| f.fingerprint.to_string()),
        "previous_fingerprint_until": p.previous_fingerprint.map(|f| format_time(f.valid_until_ms)),
        "signing_key": p.signing_key.map(|k| k.to_string()),
        "revoked_at": p.revoked_at_ms.map(format_time),
    });
    if let Some(l) = live {
        value["live"] = json!({
            "connected": l.connected,
            "last_contact": (l.last_contact_ms != 0).then(|| format_time(l.last_contact_ms)),
            "rtt_us": l.rtt_us,
            "outbox_depth": l.outbox_depth,
            "oldest_pending_age_ms": l.oldest_pending_age_ms,
            "in_flight": l.in_flight,
            "last_error": l.last_error,
        });
    }
    value
}

fn state(p: &Peer, live: Option<&v1::PeerStatus>, running: bool) -> String {
    if p.is_revoked() {
        "revoked".into()
    } else if let Some(l) = live {
        if l.connected {
            "connected"
        } else {
            "not connected"
        }
        .into()
    } else if running {
        "unknown".into()
    } else {
        "-".into()
    }
}

async fn list(config: &Config, out: Output) -> anyhow::Result<()> {
    let (live, why) = live(config).await;
    let find = |org: &str| {
        live.as_ref()
            .and_then(|l| l.iter().find(|s| s.org_id == org))
    };
    let peers: Vec<Value> = config
        .peers
        .iter()
        .map(|p| peer_json(p, find(&p.org_id)))
        .collect();
    let value = json!({"peers": peers, "daemon_running": live.is_some(), "daemon_error": why});
    out.emit(&value, || {
        let mut table = Table::new(&[
            "ORG",
            "NAME",
            "ADDRESS",
            "STATE",
            "LAST CONTACT",
            "RTT",
            "OUTBOX",
            "OLDEST",
        ]);
        for p in &config.peers {
            let l = find(&p.org_id);
            table.row(vec![
                p.org_id.clone(),
                p.name.clone(),
                p.addresses
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                state(p, l, live.is_some()),
                l.map_or("-".into(), |l| time(l.last_contact_ms)),
                l.filter(|l| l.rtt_us > 0)
                    .map_or("-".into(), |l| format!("{:.1}ms", l.rtt_us as f64 / 1000.0)),
                l.map_or("-".into(), |l| l.outbox_depth.to_string()),
                l.filter(|l| l.oldest_pending_age_ms > 0)
                    .map_or("-".into(), |l| age(l.oldest_pending_age_ms)),
            ]);
        }
        let mut text = if table.is_empty() {
            "No peers yet: add one with `tvaers peer add CARD`.\n".to_owned()
        } else {
            table.render()
        };
        if live.is_none() {
            text.push_str(
                "(live figures unavailable: the daemon is not running or its admin API is not \
                 reachable; start it with `tvaersd --config FILE run`)\n",
            );
        }
        text
    });
    Ok(())
}

async fn show(config: &Config, org_id: &str, out: Output) -> anyhow::Result<()> {
    let peer = config.peer(org_id).ok_or_else(|| unknown_peer(org_id))?;
    let (live, _) = live(config).await;
    let l = live
        .as_ref()
        .and_then(|l| l.iter().find(|s| s.org_id == org_id));
    let value = peer_json(peer, l);
    out.emit(&value, || {
        let mut text = format!(
            "{} ({})\n  sector:          {}\n  addresses:       {}\n  TLS fingerprint: {}\n  \
             signing key:     {}\n",
            peer.org_id,
            peer.name,
            peer.sector.map_or("-", |s| s.as_str()),
            peer.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            grouped(&peer.fingerprint.to_string()),
            peer.signing_key
                .map_or("-".into(), |k| grouped(&k.to_string())),
        );
        if let Some(prev) = peer.previous_fingerprint {
            text.push_str(&format!(
                "  previous TLS fingerprint, accepted until {}: {}\n",
                format_time(prev.valid_until_ms),
                grouped(&prev.fingerprint.to_string())
            ));
        }
        if let Some(at) = peer.revoked_at_ms {
            text.push_str(&format!("  REVOKED at {}\n", format_time(at)));
        }
        text.push_str(&format!(
            "  state:           {}\n",
            state(peer, l, live.is_some())
        ));
        if let Some(l) = l {
            text.push_str(&format!(
                "  last contact:    {}\n  outbox:          {} pending, {} in flight, oldest {}\n",
                time(l.last_contact_ms),
                l.outbox_depth,
                l.in_flight,
                age(l.oldest_pending_age_ms)
            ));
            if !l.last_error.is_empty() {
                text.push_str(&format!("  last error:      {}\n", l.last_error));
            }
        }
        text
    });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::card::{self, CardBody};
    use std::path::Path;
    use tvaers_daemon::config::{PreviousFingerprint, Sector, parse_time};
    use tvaers_daemon::signing::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    fn fp(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn card(key: &SigningKey, tls: char, previous: Option<(char, &str)>) -> VerifiedCard {
        let body = CardBody {
            org_id: "123456789".into(),
            name: "Psykiatrien".into(),
            sector: Sector::Psychiatry,
            addresses: vec!["10.0.0.2:7402".into()],
            fingerprint: fp(tls),
            previous_fingerprint: previous.map(|(c, _)| fp(c)),
            previous_fingerprint_until: previous.map(|(_, u)| u.to_owned()),
            signing_key: key.public_key().to_string(),
            created_at: "2026-11-23T12:00:00Z".into(),
        };
        card::verify(&body.sign(key)).unwrap()
    }

    /// A stored peer, read the way the daemon reads it (so new config
    /// fields get their defaults).
    fn stored(key: Option<&SigningKey>, tls: char) -> Peer {
        let key_line = key
            .map(|k| format!("signing_key = \"{}\"\n", k.public_key()))
            .unwrap_or_default();
        let text = format!(
            "[site]\norg_id = \"5790000000005\"\nname = \"K\"\nsector = \"municipality\"\n\
             [store]\nurl = \"sqlite://x.db\"\n[transport]\nlisten = \"127.0.0.1:1\"\n\
             certificate = \"c.pem\"\nprivate_key = \"k.pem\"\n[api]\nsocket = \"a.sock\"\n\
             [[peers]]\norg_id = \"123456789\"\nname = \"Psykiatrien\"\n\
             sector = \"psychiatry\"\naddress = \"10.0.0.2:7402\"\nfingerprint = \"{}\"\n{key_line}",
            fp(tls)
        );
        Config::parse(Path::new("/x/tvaers.toml"), &text)
            .unwrap()
            .peers
            .remove(0)
    }

    const NOW: i64 = 1_795_435_200_000; // 2026-11-23T12:00:00Z

    #[test]
    fn new_same_and_rotation() {
        let k = key();
        let (change, prev) = decide(None, &card(&k, '1', None), false, NOW).unwrap();
        assert_eq!((change, prev), (Change::New, None));

        let peer = stored(Some(&k), '1');
        let (change, prev) = decide(Some(&peer), &card(&k, '1', None), false, NOW).unwrap();
        assert_eq!((change, prev), (Change::Same, None));

        // Rotation announced by the card: its overlap end is used.
        let rotated = card(&k, '2', Some(('1', "2026-12-01T00:00:00Z")));
        let (change, prev) = decide(Some(&peer), &rotated, false, NOW).unwrap();
        assert_eq!(change, Change::Rotation);
        assert_eq!(prev, Some((fp('1'), "2026-12-01T00:00:00Z".to_owned())));

        // A new fingerprint without an announced overlap: 7 days from now.
        let (change, prev) = decide(Some(&peer), &card(&k, '3', None), false, NOW).unwrap();
        assert_eq!(change, Change::Rotation);
        let until = parse_time(&prev.unwrap().1).unwrap();
        assert_eq!(until, NOW + DEFAULT_OVERLAP_MS);

        // Re-adding the same card keeps a running overlap.
        let mut mid = stored(Some(&k), '2');
        mid.previous_fingerprint = Some(PreviousFingerprint {
            fingerprint: Fingerprint::parse(&fp('1')).unwrap(),
            valid_until_ms: NOW + 1000,
        });
        let (change, prev) = decide(Some(&mid), &card(&k, '2', None), false, NOW).unwrap();
        assert_eq!(change, Change::Same);
        assert_eq!(prev.unwrap().0, fp('1'));
    }

    #[test]
    fn another_signing_key_needs_replace() {
        let k = key();
        let other = key();
        let peer = stored(Some(&k), '1');
        for tls in ['1', '2'] {
            let why = decide(Some(&peer), &card(&other, tls, None), false, NOW).unwrap_err();
            assert!(why.contains("may not come from"), "{why}");
            let (change, prev) = decide(Some(&peer), &card(&other, tls, None), true, NOW).unwrap();
            assert_eq!((change, prev), (Change::Replace, None));
        }
        // A hand-written entry without a key: the pinned certificate may
        // bring its key, another certificate needs --replace.
        let bare = stored(None, '1');
        assert_eq!(
            decide(Some(&bare), &card(&k, '1', None), false, NOW)
                .unwrap()
                .0,
            Change::Same
        );
        assert!(decide(Some(&bare), &card(&k, '2', None), false, NOW).is_err());
    }
}
