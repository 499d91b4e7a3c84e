//! Mutual TLS with pinned certificates.
//!
//! tvaers does not use certificate authorities between organisations: each
//! daemon pins the SHA-256 fingerprint of every peer's certificate (the
//! operators compare it out of band, like an SSH host key). Adding
//! self-signed certificates as WebPKI roots would be wrong: any trusted peer
//! could then issue a certificate in another peer's name. Instead the
//! verifiers here accept exactly the pinned end-entity certificates, and the
//! fingerprint (not the certificate's names) decides which organisation is
//! on the other end.
//!
//! Both sides run TLS 1.3 only, with the ring provider; early data stays off
//! (0-RTT can be replayed) and no session tickets are issued (a resumed
//! session carries no certificate, so a revoked peer could come back).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{Millis, now_ms};

/// The ALPN protocol id of wire protocol v1.
pub const ALPN: &[u8] = b"tvaers/1";

/// The server name clients put in the handshake. Names are not checked (the
/// pinned fingerprint is), but TLS needs one.
pub const SERVER_NAME: &str = "peer.tvaers";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {message}")]
    Read {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS set-up failed: {0}")]
    Setup(#[from] rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("fingerprint must look like `sha256:` followed by 64 hex digits")]
    BadFingerprint,
}

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// Parses `sha256:<64 hex digits>` (colons between hex pairs allowed).
    pub fn parse(text: &str) -> Result<Fingerprint, TlsError> {
        let hex_part = text
            .trim()
            .strip_prefix("sha256:")
            .ok_or(TlsError::BadFingerprint)?
            .replace(':', "");
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&hex_part, &mut bytes).map_err(|_| TlsError::BadFingerprint)?;
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// This site's TLS certificate and key.
#[derive(Debug)]
pub struct Identity {
    pub certificate: CertificateDer<'static>,
    pub private_key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(certificate: &Path, private_key: &Path) -> Result<Identity, TlsError> {
        let read_err = |what, path: &Path, e: &dyn fmt::Display| TlsError::Read {
            what,
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let certificate = CertificateDer::from_pem_file(certificate)
            .map_err(|e| read_err("the TLS certificate", certificate, &e))?;
        let private_key = PrivateKeyDer::from_pem_file(private_key)
            .map_err(|e| read_err("the TLS private key", private_key, &e))?;
        Ok(Identity {
            certificate,
            private_key,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.certificate)
    }

    /// When the certificate expires (Unix ms), if it can be read.
    pub fn not_after_ms(&self) -> Option<Millis> {
        certificate_not_after_ms(&self.certificate)
    }
}

/// The end of a certificate's validity (Unix ms), if it parses.
pub fn certificate_not_after_ms(certificate: &CertificateDer<'_>) -> Option<Millis> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    parsed.validity().not_after.timestamp().checked_mul(1000)
}

/// How long a generated certificate is valid. Peers pin it, so expiry is a
/// reminder to rotate (`tvaers keys rotate-tls`), warned about 30 days
/// ahead by `tvaers status`.
pub const CERTIFICATE_VALIDITY_DAYS: i64 = 730;

/// A freshly generated self-signed certificate, in PEM.
#[derive(Debug)]
pub struct GeneratedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub fingerprint: Fingerprint,
}

/// Generates an ECDSA P-256 key and a self-signed certificate naming the
/// organisation. The name is informational; peers pin the fingerprint.
pub fn generate_certificate(org_id: &str) -> Result<GeneratedCertificate, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, org_id);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("tvaers {org_id}"));
    let today = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .date();
    let ymd = |date: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(date.year()), date.month() as u8, date.day() as u8)
    };
    params.not_before = ymd(today.yesterday().unwrap_or(today));
    params.not_after = ymd(today
        .checked_add(jiff::Span::new().days(CERTIFICATE_VALIDITY_DAYS))
        .unwrap_or(today));
    let cert = params.self_signed(&key)?;
    Ok(GeneratedCertificate {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        fingerprint: Fingerprint::of(cert.der()),
    })
}

/// One pinned certificate: whose it is and, for the previous certificate of
/// a peer that rotated, until when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub fingerprint: Fingerprint,
    pub org_id: String,
    pub valid_until_ms: Option<Millis>,
}

impl Pin {
    pub fn new(fingerprint: Fingerprint, org_id: impl Into<String>) -> Pin {
        Pin {
            fingerprint,
            org_id: org_id.into(),
            valid_until_ms: None,
        }
    }
}

/// The pinned peers: fingerprint → organisation id. Shared between the
/// handshake verifiers and the connection acceptor, and replaceable while
/// the daemon runs (`tvaers peer add` / `revoke` take effect without a
/// restart). Expiry is checked at each lookup, so an overlap window ends on
/// time without a reload.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    pinned: Arc<RwLock<HashMap<Fingerprint, Pin>>>,
}

impl TrustStore {
    pub fn new(pins: impl IntoIterator<Item = Pin>) -> TrustStore {
        let store = TrustStore::default();
        store.replace(pins);
        store
    }

    /// The organisation a certificate belongs to, if it is pinned and its
    /// overlap window (if any) has not ended.
    pub fn organisation(&self, fingerprint: &Fingerprint) -> Option<String> {
        self.organisation_at(fingerprint, now_ms())
    }

    pub fn organisation_at(&self, fingerprint: &Fingerprint, now: Millis) -> Option<String> {
        let pinned = self
            .pinned
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pin = pinned.get(fingerprint)?;
        match pin.valid_until_ms {
            Some(until) if now >= until => None,
            _ => Some(pin.org_id.clone()),
        }
    }

    pub fn replace(&self, pins: impl IntoIterator<Item = Pin>) {
        *self
            .pinned
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            pins.into_iter().map(|pin| (pin.fingerprint, pin)).collect();
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Accepts a client certificate only when its fingerprint is pinned.
#[derive(Debug)]
struct PinnedClients {
    trust: TrustStore,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if self.trust.organisation(&fingerprint).is_some() {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(%fingerprint, reason = "UNKNOWN_PEER", "refused a peer: its certificate is not pinned");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts the server certificate only when it is pinned for the peer we
/// meant to reach (during a rotation, its old or its new certificate).
#[derive(Debug)]
struct PinnedServer {
    trust: TrustStore,
    expected_org: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if self.trust.organisation(&fingerprint).as_deref() == Some(self.expected_org.as_str()) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(%fingerprint, peer = %self.expected_org, "the peer presented a certificate that is not pinned for it");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// rustls server settings: TLS 1.3, pinned client certificates required,
/// no early data, no session tickets.
pub fn server_config(
    identity: &Identity,
    trust: TrustStore,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(PinnedClients {
        trust,
        algorithms: algorithms(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![identity.certificate.clone()],
            identity.private_key.clone_key(),
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// rustls client settings for reaching one peer whose certificate is pinned.
pub fn client_config(
    identity: &Identity,
    trust: TrustStore,
    peer_org: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedServer {
        trust,
        expected_org: peer_org.to_owned(),
        algorithms: algorithms(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![identity.certificate.clone()],
            identity.private_key.clone_key(),
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_through_text() {
        let generated = generate_certificate("org-a").unwrap();
        let text = generated.fingerprint.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(Fingerprint::parse(&text).unwrap(), generated.fingerprint);
        assert!(Fingerprint::parse("sha256:abcd").is_err());
        assert!(Fingerprint::parse(&text.replace("sha256:", "md5:")).is_err());

        let der = CertificateDer::from_pem_slice(generated.certificate_pem.as_bytes()).unwrap();
        let days_left = (certificate_not_after_ms(&der).unwrap() - now_ms()) / 86_400_000;
        assert!(
            (CERTIFICATE_VALIDITY_DAYS - 2..=CERTIFICATE_VALIDITY_DAYS).contains(&days_left),
            "{days_left}"
        );
    }

    #[test]
    fn trust_store_maps_pinned_fingerprints_only() {
        let a = generate_certificate("org-a").unwrap().fingerprint;
        let b = generate_certificate("org-b").unwrap().fingerprint;
        let trust = TrustStore::new([Pin::new(a, "org-a")]);
        assert_eq!(trust.organisation(&a).as_deref(), Some("org-a"));
        assert_eq!(trust.organisation(&b), None);
        trust.replace([Pin::new(b, "org-b")]);
        assert_eq!(trust.organisation(&a), None);
    }

    #[test]
    fn a_previous_certificate_is_accepted_until_its_window_ends() {
        let new = generate_certificate("org-a").unwrap().fingerprint;
        let old = generate_certificate("org-a").unwrap().fingerprint;
        let trust = TrustStore::new([
            Pin::new(new, "org-a"),
            Pin {
                valid_until_ms: Some(1_000),
                ..Pin::new(old, "org-a")
            },
        ]);
        assert_eq!(trust.organisation_at(&old, 999).as_deref(), Some("org-a"));
        assert_eq!(trust.organisation_at(&old, 1_000), None);
        assert_eq!(
            trust.organisation_at(&new, 1_000_000).as_deref(),
            Some("org-a")
        );
    }
}
