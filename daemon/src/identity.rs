//! A site's keys on disk: generating the TLS key and certificate and the
//! Ed25519 signing key for a new site, writing them with owner-only
//! permissions, and refusing key files others could read.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::signing::{PublicKey, SigningError, SigningKey};
use crate::transport::tls::{self, Fingerprint, TlsError};

/// File name of the signing key inside a site's key directory.
pub const SIGNING_KEY_FILE: &str = "signing-key.pk8";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} exists already; refusing to overwrite a key (move it away first)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is readable or writable by group or others (mode {mode:04o}); a private key must be readable by its owner only: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot read {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// Where [`generate`] put the files.
#[derive(Debug, Clone)]
pub struct SiteKeys {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub fingerprint: Fingerprint,
}

/// Generates a TLS key and self-signed certificate for `org_id` into `dir`
/// (`tls-cert.pem`, `tls-key.pem`, both mode 0600). Never overwrites.
pub fn generate(dir: &Path, org_id: &str) -> Result<SiteKeys, IdentityError> {
    let certificate = dir.join("tls-cert.pem");
    let private_key = dir.join("tls-key.pem");
    for path in [&certificate, &private_key] {
        if path.exists() {
            return Err(IdentityError::Exists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let generated = tls::generate_certificate(org_id)?;
    write_private(&private_key, generated.private_key_pem.as_bytes())?;
    write_private(&certificate, generated.certificate_pem.as_bytes())?;
    Ok(SiteKeys {
        certificate,
        private_key,
        fingerprint: generated.fingerprint,
    })
}

/// Generates the organisation's Ed25519 signing key into
/// `dir/signing-key.pk8` (PKCS#8, mode 0600). Never overwrites.
pub fn generate_signing_key(dir: &Path) -> Result<(PathBuf, PublicKey), IdentityError> {
    let path = dir.join(SIGNING_KEY_FILE);
    if path.exists() {
        return Err(IdentityError::Exists(path));
    }
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let der = SigningKey::generate_pkcs8()?;
    let public = SigningKey::from_pkcs8(&der)
        .ok_or(SigningError::Generate)?
        .public_key();
    write_private(&path, &der)?;
    Ok((path, public))
}

/// Fails unless the private key file at `path` is accessible to its owner
/// only (no group or other bits), so a key another account could have read
/// is never used.
pub fn check_owner_only(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| IdentityError::Stat {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Writes a new file readable by its owner only; fails if it exists.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_owner_only_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(dir.path(), "org-a").unwrap();
        let mode = std::fs::metadata(&keys.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = tls::Identity::load(&keys.certificate, &keys.private_key).unwrap();
        assert_eq!(loaded.fingerprint(), keys.fingerprint);
        assert!(matches!(
            generate(dir.path(), "org-a"),
            Err(IdentityError::Exists(_))
        ));

        let (path, public) = generate_signing_key(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SigningKey::load(&path).unwrap().public_key(), public);
        assert!(matches!(
            generate_signing_key(dir.path()),
            Err(IdentityError::Exists(_))
        ));
    }

    #[test]
    fn key_files_others_can_read_or_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = generate_signing_key(dir.path()).unwrap();
        check_owner_only(&path).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = check_owner_only(&path).unwrap_err().to_string();
            assert!(
                error.contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
            assert!(error.contains(&format!("{mode:04o}")), "{error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        check_owner_only(&path).unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            check_owner_only(&missing),
            Err(IdentityError::Stat { .. })
        ));
    }
}
