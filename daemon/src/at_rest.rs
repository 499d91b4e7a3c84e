//! The keys of encryption at rest: the key-encryption key (KEK) the operator
//! keeps outside the database, the data key it wraps, and the sealing of
//! notice bodies under the data key (AES-256-GCM, ring).
//!
//! The data key is generated the first time a store is opened and kept in
//! the store itself (table `store_keys`), wrapped under the KEK, so several
//! instances sharing one PostgreSQL database agree on one data key and a
//! backup carries it; without the KEK a backup is unreadable. A KEK is known
//! by its id, a short SHA-256 digest of it, so a start-up with the wrong KEK
//! names both ids instead of failing to decrypt later. Re-wrapping (a new
//! KEK) rewrites only the wrapped data key, never the notices.
//!
//! Sealed format: a version byte, a 96-bit random nonce, then ciphertext and
//! tag. The additional authenticated data names what the bytes are (the row
//! they belong to, or the stored key's name), so ciphertexts cannot be moved
//! between rows. Nothing here logs or formats key bytes; `Debug` shows ids.

use crate::audit::AuditKeys;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::identity::{self, IdentityError};
use crate::store::{Store, StoreError, StoredKey};

/// The name of the data key in `store_keys`.
pub const DATA_KEY_NAME: &str = "data";

/// First byte of everything sealed here; a later format takes another.
const SEALED_VERSION: u8 = 1;

/// Bytes of a key (data key and KEK alike).
pub const KEY_LEN: usize = 32;

/// Where the key-encryption key comes from (`[storage]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    /// A file holding 64 hex digits, mode 0600.
    File(PathBuf),
    /// An environment variable holding 64 hex digits.
    Env(String),
}

impl std::fmt::Display for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekSource::File(path) => write!(f, "key file {}", path.display()),
            KekSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error("cannot read the storage key-encryption key from {source_name}: {message}")]
    KekUnreadable {
        source_name: String,
        message: String,
    },
    #[error(
        "the {source_name} does not hold a key-encryption key: expected 64 hex digits (create one with `tvaers keys generate-kek PATH`)"
    )]
    KekMalformed { source_name: String },
    #[error(transparent)]
    KeyFile(#[from] IdentityError),
    #[error(
        "the data key is wrapped under key-encryption key {stored}, but the {source_name} holds {given}: start with the key-encryption key this store was set up (or last re-wrapped) with; if it is lost, the stored notices cannot be decrypted"
    )]
    KekMismatch {
        stored: String,
        given: String,
        source_name: String,
    },
    #[error(
        "the stored data key does not decrypt under key-encryption key {kek_id} although the ids match: the store_keys row was altered"
    )]
    Unwrap { kek_id: String },
    #[error("the new key-encryption key is the current one ({0}); nothing to re-wrap")]
    SameKek(String),
    #[error(
        "the data key in the store changed while re-wrapping (another instance?); run the re-wrap again"
    )]
    Raced,
    #[error("cannot generate random bytes for a key or nonce")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AtRestError {
    /// True when the operator's configuration (a key, its file) is at fault
    /// rather than the running system.
    pub fn is_configuration(&self) -> bool {
        !matches!(
            self,
            AtRestError::Store(_) | AtRestError::Random | AtRestError::Raced
        )
    }
}

/// A key-encryption key, loaded.
pub struct Kek {
    key: LessSafeKey,
    id: String,
    source: KekSource,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// Reads the KEK from its source. A file must be readable by its owner
    /// only. Errors never contain what the file or variable holds.
    pub fn load(source: &KekSource) -> Result<Kek, AtRestError> {
        let unreadable = |message: String| AtRestError::KekUnreadable {
            source_name: source.to_string(),
            message,
        };
        let text = match source {
            KekSource::File(path) => {
                identity::check_owner_only(path)?;
                std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?
            }
            KekSource::Env(name) => std::env::var(name)
                .map_err(|_| unreadable("it is not set, or not valid UTF-8".to_owned()))?,
        };
        Kek::parse(&text, source.clone())
    }

    /// A KEK from the text its file or variable holds (64 hex digits).
    pub fn parse(text: &str, source: KekSource) -> Result<Kek, AtRestError> {
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| AtRestError::KekMalformed {
            source_name: source.to_string(),
        })?;
        Ok(Kek::from_bytes(&bytes, source))
    }

    fn from_bytes(bytes: &[u8; KEY_LEN], source: KekSource) -> Kek {
        Kek {
            key: aead_key(bytes),
            id: kek_id(bytes),
            source,
        }
    }

    /// The short id this KEK is known by (not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn source(&self) -> &KekSource {
        &self.source
    }
}

/// A new KEK as the 64 hex digits (and newline) its file holds.
pub fn generate_kek_text() -> Result<String, AtRestError> {
    let bytes = random_key()?;
    Ok(format!("{}\n", hex::encode(bytes)))
}

/// The id of a KEK: the first 8 bytes of SHA-256 over a label and the key,
/// in hex. Enough to tell keys apart, useless for finding one.
fn kek_id(bytes: &[u8; KEY_LEN]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"tvaers-kek-id-v1\0");
    context.update(bytes);
    hex::encode(&context.finish().as_ref()[..8])
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-256-GCM takes any 32 bytes; the length is fixed by the type.
    match UnboundKey::new(&AES_256_GCM, bytes) {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable!("AES-256-GCM accepts every 32-byte key"),
    }
}

fn random_key() -> Result<[u8; KEY_LEN], AtRestError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AtRestError::Random)?;
    Ok(bytes)
}

/// What a sealed value is bound to: its parts, each length-prefixed so no
/// two different lists give the same bytes.
fn aad(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn seal_with(
    key: &LessSafeKey,
    rng: &SystemRandom,
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, AtRestError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| AtRestError::Random)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
    out.push(SEALED_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let mut body = out.split_off(1 + NONCE_LEN);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| AtRestError::Random)?;
    out.append(&mut body);
    Ok(out)
}

/// `None` when the bytes are not sealed by this key for this `aad`.
fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (&version, rest) = sealed.split_first()?;
    if version != SEALED_VERSION || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = body.to_vec();
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()?
        .len();
    body.truncate(plain_len);
    Some(body)
}

/// The data key of one store, unwrapped, and what is derived from it.
pub struct Keyring {
    data: LessSafeKey,
    /// Kept to re-wrap under a new KEK and to compare with the stored copy.
    data_bytes: [u8; KEY_LEN],
    kek: Kek,
    audit: AuditKeys,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("kek", &self.kek)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Unwraps the store's data key with `kek`, generating and storing it
    /// first when the store has none. Two instances starting at once on one
    /// database end with the same key: the store keeps the first one written.
    pub async fn open(store: &dyn Store, kek: Kek) -> Result<Keyring, AtRestError> {
        let stored = match store.load_store_key(DATA_KEY_NAME).await? {
            Some(stored) => stored,
            None => {
                let fresh = random_key()?;
                let now = crate::now_ms();
                let wrapped = wrap(&kek, &fresh)?;
                store
                    .create_store_key(
                        DATA_KEY_NAME,
                        StoredKey {
                            wrapped,
                            kek_id: kek.id.clone(),
                            created_at_ms: now,
                            updated_at_ms: now,
                        },
                    )
                    .await?
            }
        };
        let data_bytes = unwrap(&kek, &stored)?;
        Ok(Keyring::from_data_key(data_bytes, kek))
    }

    fn from_data_key(data_bytes: [u8; KEY_LEN], kek: Kek) -> Keyring {
        Keyring {
            data: aead_key(&data_bytes),
            audit: AuditKeys::derive(&data_bytes),
            data_bytes,
            kek,
            rng: SystemRandom::new(),
        }
    }

    /// The id of the KEK the data key was unwrapped with.
    pub fn kek_id(&self) -> &str {
        self.kek.id()
    }

    /// The audit log's keys (its MAC chain and citizen references), derived
    /// from the data key with HKDF-SHA256: every instance sharing a store
    /// extends the same chain and references a citizen alike, the keys
    /// survive a KEK re-wrap, and a database file alone does not give them.
    pub fn audit_keys(&self) -> AuditKeys {
        self.audit.clone()
    }

    /// Encrypts `plain` bound to the row named by `row`.
    pub fn seal(&self, row: &[&[u8]], plain: &[u8]) -> Result<Vec<u8>, AtRestError> {
        seal_with(&self.data, &self.rng, &aad(row), plain)
    }

    /// Decrypts what [`Keyring::seal`] made for the same `row`; `None` when
    /// it was not (altered, moved from another row, or another key).
    pub fn open_sealed(&self, row: &[&[u8]], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.data, &aad(row), sealed)
    }

    /// Wraps the data key under `new` and swaps it in the store, if the
    /// stored copy is still the one this keyring was opened with. Returns
    /// the new KEK's id. The running daemon keeps its data key; the new KEK
    /// is needed from the next start.
    pub async fn rewrap(&self, store: &dyn Store, new: &Kek) -> Result<String, AtRestError> {
        if new.id == self.kek.id {
            return Err(AtRestError::SameKek(new.id.clone()));
        }
        let stored = store
            .load_store_key(DATA_KEY_NAME)
            .await?
            .ok_or(AtRestError::Raced)?;
        if stored.kek_id != self.kek.id || unwrap(&self.kek, &stored)? != self.data_bytes {
            return Err(AtRestError::Raced);
        }
        let replacement = StoredKey {
            wrapped: wrap(new, &self.data_bytes)?,
            kek_id: new.id.clone(),
            created_at_ms: stored.created_at_ms,
            updated_at_ms: crate::now_ms(),
        };
        if store
            .replace_store_key(DATA_KEY_NAME, &stored, replacement)
            .await?
        {
            Ok(new.id.clone())
        } else {
            Err(AtRestError::Raced)
        }
    }
}

fn wrap(kek: &Kek, data_key: &[u8; KEY_LEN]) -> Result<Vec<u8>, AtRestError> {
    seal_with(
        &kek.key,
        &SystemRandom::new(),
        &aad(&[b"store_keys", DATA_KEY_NAME.as_bytes()]),
        data_key,
    )
}

fn unwrap(kek: &Kek, stored: &StoredKey) -> Result<[u8; KEY_LEN], AtRestError> {
    if stored.kek_id != kek.id {
        return Err(AtRestError::KekMismatch {
            stored: stored.kek_id.clone(),
            given: kek.id.clone(),
            source_name: kek.source.to_string(),
        });
    }
    let unwrap_error = || AtRestError::Unwrap {
        kek_id: kek.id.clone(),
    };
    let plain = open_with(
        &kek.key,
        &aad(&[b"store_keys", DATA_KEY_NAME.as_bytes()]),
        &stored.wrapped,
    )
    .ok_or_else(unwrap_error)?;
    <[u8; KEY_LEN]>::try_from(plain.as_slice()).map_err(|_| unwrap_error())
}

/// The KEK file of a new site, beside its other keys.
pub const KEK_FILE: &str = "storage.kek";

/// Writes a new KEK file (mode 0600); never overwrites. Returns its id.
pub fn generate_kek_file(path: &Path) -> Result<String, AtRestError> {
    if path.exists() {
        return Err(IdentityError::Exists(path.to_owned()).into());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    let text = generate_kek_text()?;
    identity::write_private(path, text.as_bytes())?;
    Ok(Kek::load(&KekSource::File(path.to_owned()))?.id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use std::os::unix::fs::PermissionsExt;

    fn kek_file(dir: &Path, name: &str) -> Kek {
        let path = dir.join(name);
        generate_kek_file(&path).unwrap();
        Kek::load(&KekSource::File(path)).unwrap()
    }

    #[tokio::test]
    async fn data_key_is_created_once_and_unwrapped_with_the_same_kek() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let first = Keyring::open(&store, kek_file(dir.path(), "a.kek"))
            .await
            .unwrap();
        let sealed = first.seal(&[b"row", b"1"], b"secret body").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let again = Keyring::open(
            &store,
            Kek::load(&KekSource::File(dir.path().join("a.kek"))).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            again.open_sealed(&[b"row", b"1"], &sealed).as_deref(),
            Some(&b"secret body"[..])
        );
        // Bound to its row and to its bytes.
        assert_eq!(again.open_sealed(&[b"row", b"2"], &sealed), None);
        assert_eq!(again.open_sealed(&[b"row1"], &sealed), None);
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(again.open_sealed(&[b"row", b"1"], &flipped), None);
        // Same derived audit key on every open.
        assert_eq!(
            first.audit_keys().citizens.reference("0101904000"),
            again.audit_keys().citizens.reference("0101904000")
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_wrong_kek_is_named_by_id_and_a_rewrap_moves_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let old = kek_file(dir.path(), "old.kek");
        let old_id = old.id().to_owned();
        let keyring = Keyring::open(&store, old).await.unwrap();
        let sealed = keyring.seal(&[b"r"], b"body").unwrap();

        let other = kek_file(dir.path(), "other.kek");
        let other_id = other.id().to_owned();
        let error = Keyring::open(&store, other).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, AtRestError::KekMismatch { .. }), "{text}");
        assert!(text.contains(&old_id) && text.contains(&other_id), "{text}");
        assert!(text.contains("other.kek"), "{text}");

        let new = kek_file(dir.path(), "new.kek");
        let new_id = keyring.rewrap(&store, &new).await.unwrap();
        assert_eq!(new_id, new.id());
        assert!(matches!(
            keyring.rewrap(&store, &new).await,
            Err(AtRestError::Raced)
        ));
        let reopened = Keyring::open(&store, new).await.unwrap();
        assert_eq!(
            reopened.open_sealed(&[b"r"], &sealed).as_deref(),
            Some(&b"body"[..])
        );
        let old = Kek::load(&KekSource::File(dir.path().join("old.kek"))).unwrap();
        assert!(matches!(
            Keyring::open(&store, old).await,
            Err(AtRestError::KekMismatch { .. })
        ));
        store.close().await;
    }

    #[tokio::test]
    async fn debug_output_shows_ids_not_key_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.kek");
        generate_kek_file(&path).unwrap();
        let hex_text = std::fs::read_to_string(&path).unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let keyring = Keyring::open(&store, Kek::load(&KekSource::File(path)).unwrap())
            .await
            .unwrap();
        let debug = format!("{keyring:?}");
        assert!(debug.contains(keyring.kek_id()), "{debug}");
        assert!(!debug.contains(hex_text.trim()), "{debug}");
        assert!(!debug.contains(&hex::encode(keyring.data_bytes)), "{debug}");
        store.close().await;
    }

    #[test]
    fn kek_sources_are_checked_without_echoing_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.kek");
        let id = generate_kek_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            generate_kek_file(&path),
            Err(AtRestError::KeyFile(IdentityError::Exists(_)))
        ));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = Kek::load(&KekSource::File(path.clone())).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");

        let bad = dir.path().join("bad.kek");
        identity::write_private(&bad, b"not-hex-secret-material").unwrap();
        let error = Kek::load(&KekSource::File(bad)).unwrap_err().to_string();
        assert!(error.contains("64 hex digits"), "{error}");
        assert!(!error.contains("secret-material"), "{error}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let from_env = Kek::parse(&text, KekSource::Env("SOME_VAR".into())).unwrap();
        assert_eq!(from_env.id(), id);
        let error = Kek::load(&KekSource::Env("TVAERS_TEST_KEK_UNSET_VAR".into())).unwrap_err();
        assert!(
            error.to_string().contains("TVAERS_TEST_KEK_UNSET_VAR"),
            "{error}"
        );
    }
}
