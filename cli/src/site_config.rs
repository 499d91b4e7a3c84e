//! Editing the site's config file in place: `[[peers]]` entries, the TLS
//! file paths and the storage key-encryption key file. Uses `toml_edit` so the operator's comments and layout
//! survive, and checks the result with the daemon's own parser before it
//! replaces the file, so the CLI can never leave a config the daemon
//! refuses.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};
use tvaers_daemon::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SiteConfigError {
    #[error(
        "cannot read the config {path}: {message}; pass --config FILE or set TVAERS_CONFIG \
         (create one with `tvaers init`)"
    )]
    Read { path: PathBuf, message: String },
    #[error("the config {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config {path}: `peers` must be a list of [[peers]] tables")]
    PeersShape { path: PathBuf },
    #[error(
        "the edited config would not be accepted by tvaersd ({0}); the file was left unchanged"
    )]
    Rejected(String),
    #[error("cannot write the config {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// One `[[peers]]` entry as the CLI writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub org_id: String,
    pub name: String,
    pub sector: Option<String>,
    pub addresses: Vec<String>,
    pub fingerprint: String,
    pub previous_fingerprint: Option<(String, String)>,
    pub signing_key: Option<String>,
    pub added_at: Option<String>,
}

/// The config file, parsed for editing.
#[derive(Debug)]
pub struct SiteConfig {
    pub path: PathBuf,
    doc: DocumentMut,
}

impl SiteConfig {
    pub fn load(path: &Path) -> Result<SiteConfig, SiteConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| SiteConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        SiteConfig::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<SiteConfig, SiteConfigError> {
        let doc = text
            .parse::<DocumentMut>()
            .map_err(|e| SiteConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(SiteConfig {
            path: path.to_owned(),
            doc,
        })
    }

    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Checks the edited text with the daemon's parser.
    pub fn check(&self) -> Result<Config, SiteConfigError> {
        Config::parse(&self.path, &self.text())
            .map_err(|e| SiteConfigError::Rejected(e.to_string()))
    }

    /// Checks, then replaces the file atomically (write beside it, fsync,
    /// rename), keeping its permissions.
    pub fn save(&self) -> Result<Config, SiteConfigError> {
        let config = self.check()?;
        let write_err = |message: String| SiteConfigError::Write {
            path: self.path.clone(),
            message,
        };
        let mode = std::fs::metadata(&self.path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o640);
        let tmp = self.path.with_extension("toml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| write_err(e.to_string()))?;
        file.write_all(self.text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| write_err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| write_err(e.to_string()))?;
        Ok(config)
    }

    fn peers_mut(&mut self) -> Result<&mut ArrayOfTables, SiteConfigError> {
        let path = self.path.clone();
        let item = self
            .doc
            .entry("peers")
            .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
        item.as_array_of_tables_mut()
            .ok_or(SiteConfigError::PeersShape { path })
    }

    fn peer_index(&mut self, org_id: &str) -> Result<Option<usize>, SiteConfigError> {
        Ok(self
            .peers_mut()?
            .iter()
            .position(|t| t.get("org_id").and_then(Item::as_str) == Some(org_id)))
    }

    /// Adds the peer, or updates its entry in place (keeping comments in
    /// and around it). Returns true when it was new.
    pub fn upsert_peer(&mut self, peer: &PeerEntry) -> Result<bool, SiteConfigError> {
        let index = self.peer_index(&peer.org_id)?;
        let (table, new) = match index {
            Some(i) => match self.peers_mut()?.get_mut(i) {
                Some(table) => (table, false),
                None => {
                    return Err(SiteConfigError::PeersShape {
                        path: self.path.clone(),
                    });
                }
            },
            None => {
                let mut table = Table::new();
                // Comments at the end of the file (e.g. the "Peers:" note
                // `tvaers init` writes) belong above the peers, not below
                // the new one.
                let trailing = self.doc.trailing().as_str().unwrap_or_default().to_owned();
                let prefix = format!("\n{}", trailing.trim_start_matches('\n'));
                self.doc.set_trailing("");
                table.decor_mut().set_prefix(prefix);
                let peers = self.peers_mut()?;
                peers.push(table);
                let last = peers.len() - 1;
                match peers.get_mut(last) {
                    Some(table) => (table, true),
                    None => {
                        return Err(SiteConfigError::PeersShape {
                            path: self.path.clone(),
                        });
                    }
                }
            }
        };
        fill_peer(table, peer, new);
        Ok(new)
    }

    /// Sets `revoked_at` on a peer. False when there is no such peer.
    pub fn revoke_peer(&mut self, org_id: &str, at: &str) -> Result<bool, SiteConfigError> {
        let Some(i) = self.peer_index(org_id)? else {
            return Ok(false);
        };
        if let Some(table) = self.peers_mut()?.get_mut(i) {
            table["revoked_at"] = value(at);
        }
        Ok(true)
    }

    /// Removes a peer's entry. False when there is no such peer.
    pub fn remove_peer(&mut self, org_id: &str) -> Result<bool, SiteConfigError> {
        let Some(i) = self.peer_index(org_id)? else {
            return Ok(false);
        };
        self.peers_mut()?.remove(i);
        Ok(true)
    }

    /// Points `transport.certificate` and `transport.private_key` at new
    /// files (written relative to the config's directory when possible).
    pub fn set_tls_files(&mut self, certificate: &Path, private_key: &Path) {
        let base = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let rel = |p: &Path| {
            p.strip_prefix(&base)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        };
        let transport = &mut self.doc["transport"];
        set_keep_decor(transport, "certificate", &rel(certificate));
        set_keep_decor(transport, "private_key", &rel(private_key));
    }

    /// Points `[storage] key_file` at a new key-encryption key file
    /// (relative to the config's directory when possible), replacing a
    /// `key_env` if that was used.
    pub fn set_storage_key_file(&mut self, key_file: &Path) {
        let base = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let rel = key_file
            .strip_prefix(&base)
            .unwrap_or(key_file)
            .to_string_lossy()
            .into_owned();
        let storage = self
            .doc
            .entry("storage")
            .or_insert(Item::Table(Table::new()));
        if let Some(table) = storage.as_table_like_mut() {
            table.remove("key_env");
        }
        set_keep_decor(storage, "key_file", &rel);
    }
}

/// Sets a string value, keeping the comment after the old value.
fn set_keep_decor(table: &mut Item, key: &str, text: &str) {
    let slot = &mut table[key];
    let decor = slot.as_value().map(|v| v.decor().clone());
    *slot = value(text);
    if let (Some(decor), Some(v)) = (decor, slot.as_value_mut()) {
        *v.decor_mut() = decor;
    }
}

fn fill_peer(table: &mut Table, peer: &PeerEntry, new: bool) {
    let mut set = |key: &str, text: Option<&str>| match text {
        Some(text) => set_keep_decor_in(table, key, text),
        None => {
            table.remove(key);
        }
    };
    set("org_id", Some(&peer.org_id));
    set("name", Some(&peer.name));
    set("sector", peer.sector.as_deref());
    // The daemon takes either `address` or `addresses`, not both.
    if let [one] = peer.addresses.as_slice() {
        set("address", Some(one));
        table.remove("addresses");
    } else {
        table.remove("address");
        let array: Array = peer.addresses.iter().map(String::as_str).collect();
        table["addresses"] = value(array);
    }
    let mut set = |key: &str, text: Option<&str>| match text {
        Some(text) => set_keep_decor_in(table, key, text),
        None => {
            table.remove(key);
        }
    };
    set("fingerprint", Some(&peer.fingerprint));
    set(
        "previous_fingerprint",
        peer.previous_fingerprint.as_ref().map(|(f, _)| f.as_str()),
    );
    set(
        "previous_fingerprint_until",
        peer.previous_fingerprint.as_ref().map(|(_, u)| u.as_str()),
    );
    set("signing_key", peer.signing_key.as_deref());
    // Re-adding a revoked peer's card is how an operator un-revokes it.
    table.remove("revoked_at");
    if let Some(at) = &peer.added_at
        && (new || !table.contains_key("added_at"))
    {
        set_keep_decor_in(table, "added_at", at);
    }
}

fn set_keep_decor_in(table: &mut Table, key: &str, text: &str) {
    let decor = table
        .get(key)
        .and_then(Item::as_value)
        .map(|v| v.decor().clone());
    table[key] = value(text);
    if let (Some(decor), Some(v)) = (decor, table.get_mut(key).and_then(Item::as_value_mut)) {
        *v.decor_mut() = decor;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"# Site config, hand-edited.
[site]
org_id = "5790000000005"
name = "Vordingborg Kommune"
sector = "municipality"

[store]
url = "sqlite://data/tvaers.db"

[transport]
listen = "127.0.0.1:7401"
certificate = "keys/tls-cert.pem"  # the current certificate
private_key = "keys/tls-key.pem"

[api]
socket = "run/api.sock"

# Our psychiatry peer: call Mette before changing this.
[[peers]]
org_id = "123456789"
name = "Psykiatrien"
address = "10.0.0.2:7402"   # VPN address
fingerprint = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
"#;

    fn fp(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry(org: &str) -> PeerEntry {
        PeerEntry {
            org_id: org.into(),
            name: "Lægerne i Stege".into(),
            sector: Some("general-practice".into()),
            addresses: vec!["10.0.0.3:7403".into(), "10.0.0.4:7403".into()],
            fingerprint: fp('3'),
            previous_fingerprint: None,
            signing_key: Some(format!("ed25519:{}", "4".repeat(64))),
            added_at: Some("2026-11-23T12:00:00Z".into()),
        }
    }

    fn path() -> &'static Path {
        Path::new("/etc/tvaers/tvaers.toml")
    }

    #[test]
    fn add_update_revoke_remove_keep_comments_and_parse() {
        let mut c = SiteConfig::parse(path(), CONFIG).unwrap();
        assert!(c.upsert_peer(&entry("987654321")).unwrap());
        let config = c.check().unwrap();
        assert_eq!(config.peers.len(), 2);
        let added = config.peer("987654321").unwrap();
        assert_eq!(added.addresses.len(), 2);
        assert_eq!(added.fingerprint.to_string(), fp('3'));
        assert!(added.signing_key.is_some());
        assert!(c.text().contains("# Our psychiatry peer: call Mette"));
        assert!(c.text().contains("# VPN address"));

        // Update the existing peer: rotation to a new fingerprint.
        let mut update = entry("123456789");
        update.name = "Psykiatrien Region Sjælland".into();
        update.addresses = vec!["10.0.0.2:7402".into()];
        update.fingerprint = fp('5');
        update.previous_fingerprint = Some((fp('1'), "2026-12-01T00:00:00Z".into()));
        assert!(!c.upsert_peer(&update).unwrap());
        let config = c.check().unwrap();
        let peer = config.peer("123456789").unwrap();
        assert_eq!(peer.name, "Psykiatrien Region Sjælland");
        assert_eq!(peer.pins().len(), 2);
        assert_eq!(peer.fingerprint.to_string(), fp('5'));
        assert!(c.text().contains("# VPN address"), "{}", c.text());
        assert!(c.text().contains("# Our psychiatry peer: call Mette"));
        assert_eq!(c.text().matches("[[peers]]").count(), 2);

        // Revoke.
        assert!(c.revoke_peer("123456789", "2026-11-23T13:00:00Z").unwrap());
        assert!(!c.revoke_peer("000000000", "2026-11-23T13:00:00Z").unwrap());
        let config = c.check().unwrap();
        assert!(config.peer("123456789").unwrap().is_revoked());
        assert_eq!(config.active_peers().count(), 1);

        // Remove.
        assert!(c.remove_peer("987654321").unwrap());
        assert!(!c.remove_peer("987654321").unwrap());
        let config = c.check().unwrap();
        assert_eq!(config.peers.len(), 1);
        assert!(c.text().starts_with("# Site config, hand-edited."));
        assert!(c.text().contains("# the current certificate"));
    }

    #[test]
    fn tls_files_are_switched_and_saved_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tvaers.toml");
        std::fs::write(&file, CONFIG).unwrap();
        let mut c = SiteConfig::load(&file).unwrap();
        c.set_tls_files(
            &dir.path().join("keys/tls-1/tls-cert.pem"),
            &dir.path().join("keys/tls-1/tls-key.pem"),
        );
        let config = c.save().unwrap();
        assert_eq!(
            config.transport.certificate,
            dir.path().join("keys/tls-1/tls-cert.pem")
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("certificate = \"keys/tls-1/tls-cert.pem\"  # the current certificate"),
            "{text}"
        );
    }

    #[test]
    fn the_storage_key_file_is_set_and_replaces_an_environment_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tvaers.toml");
        let with_env = CONFIG.replace(
            "[transport]",
            "[storage]\nkey_env = \"TVAERS_STORAGE_KEK\"  # set by systemd\n\n[transport]",
        );
        for text in [CONFIG.to_owned(), with_env] {
            std::fs::write(&file, &text).unwrap();
            let mut c = SiteConfig::load(&file).unwrap();
            c.set_storage_key_file(&dir.path().join("keys/storage-2.kek"));
            let config = c.save().unwrap();
            assert_eq!(
                config.storage.unwrap().kek,
                tvaers_daemon::at_rest::KekSource::File(dir.path().join("keys/storage-2.kek"))
            );
            let saved = std::fs::read_to_string(&file).unwrap();
            assert!(
                saved.contains("key_file = \"keys/storage-2.kek\""),
                "{saved}"
            );
            assert!(!saved.contains("key_env"), "{saved}");
            assert!(saved.contains("# Our psychiatry peer"), "{saved}");
        }
    }

    #[test]
    fn an_edit_the_daemon_would_refuse_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tvaers.toml");
        std::fs::write(&file, CONFIG).unwrap();
        let mut c = SiteConfig::load(&file).unwrap();
        let mut bad = entry("987654321");
        bad.addresses = vec!["nowhere".into()];
        c.upsert_peer(&bad).unwrap();
        let err = c.save().unwrap_err();
        assert!(err.to_string().contains("peers[1].address"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CONFIG);
    }
}
