//! An organisation's signing key (Ed25519, ring) and the public keys of its
//! peers.
//!
//! The TLS certificate proves which organisation is on a connection; the
//! signing key is what an organisation signs durable statements with: its
//! peer card, and (issue 5) every envelope and receipt. It is kept apart from
//! the TLS key so a TLS certificate can be rotated without changing the
//! identity peers verify signatures against.
//!
//! On disk the private key is PKCS#8 (DER), mode 0600; public keys are
//! written `ed25519:` followed by 64 hex digits.

use std::fmt;
use std::path::Path;

use prost::Message;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use tvaers_proto::v1;

/// Why a signed message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the signature does not match the signer's key")]
    BadSignature,
    #[error("the signed bytes do not decode")]
    Malformed,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read the signing key {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not an Ed25519 PKCS#8 key")]
    NotAKey { path: String },
    #[error("cannot generate a signing key")]
    Generate,
    #[error("public key must look like `ed25519:` followed by 64 hex digits")]
    BadPublicKey,
    #[error("the signature does not match the signed bytes and public key {0}")]
    BadSignature(PublicKey),
}

/// This organisation's private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key as PKCS#8 DER, the form it is stored in.
    pub fn generate_pkcs8() -> Result<Vec<u8>, SigningError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| SigningError::Generate)
    }

    pub fn from_pkcs8(der: &[u8]) -> Option<SigningKey> {
        Ed25519KeyPair::from_pkcs8(der)
            .ok()
            .map(|pair| SigningKey { pair })
    }

    pub fn load(path: &Path) -> Result<SigningKey, SigningError> {
        let der = std::fs::read(path).map_err(|e| SigningError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        SigningKey::from_pkcs8(&der).ok_or_else(|| SigningError::NotAKey {
            path: path.display().to_string(),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }

    /// Encodes and signs an envelope: the stored and transmitted form.
    pub fn seal_envelope(&self, envelope: &v1::Envelope) -> Vec<u8> {
        let bytes = envelope.encode_to_vec();
        v1::SignedEnvelope {
            signature: self.sign(&bytes).to_vec(),
            envelope: bytes,
        }
        .encode_to_vec()
    }

    /// Encodes and signs a receipt.
    pub fn sign_receipt(&self, receipt: &v1::Receipt) -> v1::SignedReceipt {
        let bytes = receipt.encode_to_vec();
        v1::SignedReceipt {
            signature: self.sign(&bytes).to_vec(),
            receipt: bytes,
        }
    }
}

/// A peer's Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, SigningError> {
        let hex_part = text
            .trim()
            .strip_prefix("ed25519:")
            .ok_or(SigningError::BadPublicKey)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| SigningError::BadPublicKey)?;
        Ok(PublicKey(bytes))
    }

    pub fn verify(&self, message: &[u8], signature_bytes: &[u8]) -> Result<(), SigningError> {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, signature_bytes)
            .map_err(|_| SigningError::BadSignature(*self))
    }

    /// Checks a signed envelope and returns it decoded.
    pub fn open_envelope(&self, signed: &v1::SignedEnvelope) -> Result<v1::Envelope, OpenError> {
        self.verify(&signed.envelope, &signed.signature)
            .map_err(|_| OpenError::BadSignature)?;
        v1::Envelope::decode(signed.envelope.as_slice()).map_err(|_| OpenError::Malformed)
    }

    /// Checks a signed receipt and returns it decoded.
    pub fn open_receipt(&self, signed: &v1::SignedReceipt) -> Result<v1::Receipt, OpenError> {
        self.verify(&signed.receipt, &signed.signature)
            .map_err(|_| OpenError::BadSignature)?;
        v1::Receipt::decode(signed.receipt.as_slice()).map_err(|_| OpenError::Malformed)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_changed_bytes() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let public = PublicKey::parse(&key.public_key().to_string()).unwrap();
        let signature = key.sign(b"card");
        public.verify(b"card", &signature).unwrap();
        assert!(public.verify(b"cart", &signature).is_err());
        let other = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        assert!(other.public_key().verify(b"card", &signature).is_err());
        assert!(PublicKey::parse("ed25519:abcd").is_err());
        assert!(PublicKey::parse(&public.to_string().replace("ed25519", "rsa")).is_err());
    }
}
