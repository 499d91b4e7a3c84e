//! The peer card: what one organisation hands another so they can trust
//! each other, like an SSH host key with a name attached.
//!
//! A card is a TOML file. Its body (org id, name, sector, addresses, TLS
//! fingerprint, an optional previous fingerprint during a rotation, the
//! signing public key, creation time) is signed with the organisation's
//! Ed25519 signing key over [`CardBody::signed_bytes`]: a fixed prefix and
//! the body as JSON with a fixed field order. Changing any field breaks the
//! signature. A card is self-signed, so the signature proves only that the
//! card is whole and was made by whoever holds the signing key; trust comes
//! from comparing the fingerprints out of band (read them over the phone).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tvaers_daemon::Millis;
use tvaers_daemon::config::{Sector, parse_time};
use tvaers_daemon::signing::{PublicKey, SigningKey};
use tvaers_daemon::transport::tls::Fingerprint;

/// Domain separation: a card signature can never be mistaken for a
/// signature over anything else the key signs.
const SIGNED_PREFIX: &[u8] = b"tvaers-card-v1\n";

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("cannot read the card {path}: {message}")]
    Read { path: String, message: String },
    #[error("the card is not a valid tvaers card: {0}")]
    Format(String),
    #[error("the card field `{field}` is not valid: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error(
        "the card's signature does not match its contents: it was changed after it was signed, \
         or not made by the holder of signing key {0}. Ask the peer for a fresh card"
    )]
    BadSignature(PublicKey),
    #[error("cannot write the card {path}: {message}")]
    Write { path: String, message: String },
}

/// The signed part of a card. Field order here is the signed order: do not
/// reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardBody {
    pub org_id: String,
    pub name: String,
    pub sector: Sector,
    pub addresses: Vec<String>,
    /// The TLS certificate the organisation presents (or will present,
    /// after a rotation is activated).
    pub fingerprint: String,
    /// During a TLS rotation: the certificate presented until the switch,
    /// and when peers should stop accepting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_fingerprint_until: Option<String>,
    pub signing_key: String,
    pub created_at: String,
}

/// A card as stored in a file: the body and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardFile {
    org_id: String,
    name: String,
    sector: Sector,
    addresses: Vec<String>,
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_fingerprint_until: Option<String>,
    signing_key: String,
    created_at: String,
    signature: String,
}

/// A card whose signature and fields have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCard {
    pub body: CardBody,
    pub addresses: Vec<SocketAddr>,
    pub fingerprint: Fingerprint,
    pub previous: Option<(Fingerprint, Millis)>,
    pub signing_key: PublicKey,
    pub created_at_ms: Millis,
}

impl CardBody {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNED_PREFIX.to_vec();
        // Serialising plain strings and vectors cannot fail.
        bytes.extend(serde_json::to_vec(self).unwrap_or_default());
        bytes
    }

    /// Signs the body; the key must be the one named in `signing_key`.
    pub fn sign(self, key: &SigningKey) -> String {
        let signature = hex::encode(key.sign(&self.signed_bytes()));
        let file = CardFile {
            org_id: self.org_id,
            name: self.name,
            sector: self.sector,
            addresses: self.addresses,
            fingerprint: self.fingerprint,
            previous_fingerprint: self.previous_fingerprint,
            previous_fingerprint_until: self.previous_fingerprint_until,
            signing_key: self.signing_key,
            created_at: self.created_at,
            signature,
        };
        let toml = toml::to_string(&file).unwrap_or_default();
        format!(
            "# tvaers peer card of {org}. Give it to a peer organisation; it adds it with\n\
             #   tvaers peer add FILE\n\
             # and compares the fingerprints below with you over the phone.\n\
             # Any change to this file breaks the signature.\n{toml}",
            org = file.org_id
        )
    }
}

/// Parses and verifies a card's text: every field is checked and the
/// signature must match the signing key the card names.
pub fn verify(text: &str) -> Result<VerifiedCard, CardError> {
    let file: CardFile = toml::from_str(text).map_err(|e| CardError::Format(e.to_string()))?;
    let field = |field: &'static str, problem: String| CardError::Field { field, problem };
    let signing_key =
        PublicKey::parse(&file.signing_key).map_err(|e| field("signing_key", e.to_string()))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(file.signature.trim(), &mut signature)
        .map_err(|_| field("signature", "expected 128 hex digits".into()))?;
    let body = CardBody {
        org_id: file.org_id,
        name: file.name,
        sector: file.sector,
        addresses: file.addresses,
        fingerprint: file.fingerprint,
        previous_fingerprint: file.previous_fingerprint,
        previous_fingerprint_until: file.previous_fingerprint_until,
        signing_key: file.signing_key,
        created_at: file.created_at,
    };
    signing_key
        .verify(&body.signed_bytes(), &signature)
        .map_err(|_| CardError::BadSignature(signing_key))?;

    // A correctly signed card can still carry nonsense; check it before it
    // reaches the config, where the daemon would refuse to start.
    tvaers_proto::validate::org_id("org_id", &body.org_id)
        .map_err(|e| field("org_id", e.problem.to_string()))?;
    if body.name.trim().is_empty() {
        return Err(field("name", "must not be empty".into()));
    }
    if body.addresses.is_empty() {
        return Err(field("addresses", "must list at least one address".into()));
    }
    let addresses = body
        .addresses
        .iter()
        .map(|a| {
            a.parse::<SocketAddr>().map_err(|_| {
                field(
                    "addresses",
                    format!("`{a}` is not an address like 10.0.0.5:7401"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fingerprint =
        Fingerprint::parse(&body.fingerprint).map_err(|e| field("fingerprint", e.to_string()))?;
    let previous = match (&body.previous_fingerprint, &body.previous_fingerprint_until) {
        (None, None) => None,
        (Some(fp), Some(until)) => Some((
            Fingerprint::parse(fp).map_err(|e| field("previous_fingerprint", e.to_string()))?,
            parse_time(until).ok_or_else(|| {
                field(
                    "previous_fingerprint_until",
                    "expected an RFC 3339 time".into(),
                )
            })?,
        )),
        _ => {
            return Err(field(
                "previous_fingerprint_until",
                "goes together with previous_fingerprint".into(),
            ));
        }
    };
    let created_at_ms = parse_time(&body.created_at)
        .ok_or_else(|| field("created_at", "expected an RFC 3339 time".into()))?;
    Ok(VerifiedCard {
        body,
        addresses,
        fingerprint,
        previous,
        signing_key,
        created_at_ms,
    })
}

/// Reads and verifies a card file.
pub fn read(path: &Path) -> Result<VerifiedCard, CardError> {
    let text = std::fs::read_to_string(path).map_err(|e| CardError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    verify(&text)
}

/// Writes a card file (not secret: ordinary permissions). Refuses to
/// overwrite nothing: a card may be re-exported at will.
pub fn write(path: &Path, text: &str) -> Result<(), CardError> {
    std::fs::write(path, text).map_err(|e| CardError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    fn body(key: &SigningKey) -> CardBody {
        CardBody {
            org_id: "5790000000005".into(),
            name: "Vordingborg Kommune".into(),
            sector: Sector::Municipality,
            addresses: vec!["10.0.0.5:7401".into(), "10.0.0.6:7401".into()],
            fingerprint: format!("sha256:{}", "ab".repeat(32)),
            previous_fingerprint: Some(format!("sha256:{}", "cd".repeat(32))),
            previous_fingerprint_until: Some("2026-12-01T00:00:00Z".into()),
            signing_key: key.public_key().to_string(),
            created_at: "2026-11-23T12:00:00Z".into(),
        }
    }

    #[test]
    fn a_signed_card_verifies() {
        let key = key();
        let text = body(&key).sign(&key);
        let card = verify(&text).unwrap();
        assert_eq!(card.body, body(&key));
        assert_eq!(card.addresses.len(), 2);
        assert_eq!(card.signing_key, key.public_key());
        assert!(card.previous.is_some());
    }

    /// Changing any one field (including the order of addresses) breaks
    /// the signature.
    #[test]
    fn changing_any_field_breaks_the_signature() {
        let key = key();
        let original = body(&key);
        let text = original.clone().sign(&key);
        let edits: Vec<(&str, String, String)> = vec![
            ("org_id", "5790000000005".into(), "5790000000012".into()),
            (
                "name",
                "Vordingborg Kommune".into(),
                "Vordingborg Kommunf".into(),
            ),
            ("sector", "\"municipality\"".into(), "\"psychiatry\"".into()),
            ("addresses", "10.0.0.5:7401".into(), "10.0.0.7:7401".into()),
            (
                "fingerprint",
                "ab".repeat(32),
                format!("ac{}", "ab".repeat(31)),
            ),
            (
                "previous_fingerprint",
                "cd".repeat(32),
                format!("ce{}", "cd".repeat(31)),
            ),
            (
                "previous_fingerprint_until",
                "2026-12-01".into(),
                "2027-12-01".into(),
            ),
            ("created_at", "2026-11-23T12".into(), "2026-11-24T12".into()),
        ];
        for (name, from, to) in edits {
            // Edit the field's own line (the header comment names the org
            // too, and comments are not signed).
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} = ")))
                .unwrap();
            assert!(line.contains(&from), "{name}: {from} not in {line}");
            let tampered = text.replacen(line, &line.replacen(&from, &to, 1), 1);
            assert_ne!(tampered, text);
            let err = verify(&tampered).unwrap_err();
            assert!(matches!(err, CardError::BadSignature(_)), "{name}: {err}");
        }
        // Reordered addresses.
        let swapped = text.replacen(
            "\"10.0.0.5:7401\", \"10.0.0.6:7401\"",
            "\"10.0.0.6:7401\", \"10.0.0.5:7401\"",
            1,
        );
        assert_ne!(swapped, text);
        assert!(matches!(verify(&swapped), Err(CardError::BadSignature(_))));
        // Dropping the optional rotation fields.
        let dropped: String = text
            .lines()
            .filter(|l| !l.starts_with("previous_fingerprint"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(verify(&dropped), Err(CardError::BadSignature(_))));
        // Another key, re-signing: the card then names the wrong key.
        let other = key_other();
        let mut forged = original.clone();
        forged.name = "Evil".into();
        let forged_text = forged.sign(&other);
        assert!(matches!(
            verify(&forged_text),
            Err(CardError::BadSignature(_))
        ));
        // The signing key itself.
        let mut hex_key = original.signing_key.clone();
        let last = hex_key.pop().unwrap();
        hex_key.push(if last == '0' { '1' } else { '0' });
        let swapped_key = text.replacen(&original.signing_key, &hex_key, 1);
        assert!(verify(&swapped_key).is_err());
        // The signature.
        let sig_line = text.lines().find(|l| l.starts_with("signature")).unwrap();
        let mut bad = sig_line.to_owned();
        let pos = bad.len() - 2;
        let c = if &bad[pos..pos + 1] == "0" { "1" } else { "0" };
        bad.replace_range(pos..pos + 1, c);
        assert!(matches!(
            verify(&text.replacen(sig_line, &bad, 1)),
            Err(CardError::BadSignature(_))
        ));
    }

    fn key_other() -> SigningKey {
        key()
    }

    #[test]
    fn unknown_fields_and_malformed_values_are_refused() {
        let key = key();
        let text = body(&key).sign(&key);
        let extra = format!("{text}\nextra = 1\n");
        assert!(matches!(verify(&extra), Err(CardError::Format(_))));
        assert!(matches!(verify("not toml ["), Err(CardError::Format(_))));

        let mut bad = body(&key);
        bad.addresses = vec!["somewhere".into()];
        let err = verify(&bad.sign(&key)).unwrap_err();
        assert!(err.to_string().contains("addresses"), "{err}");
        let mut bad = body(&key);
        bad.previous_fingerprint_until = None;
        let err = verify(&bad.sign(&key)).unwrap_err();
        assert!(
            err.to_string().contains("previous_fingerprint_until"),
            "{err}"
        );
    }
}
