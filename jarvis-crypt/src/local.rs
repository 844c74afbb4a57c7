//! The local key provider: a 256-bit master key held by this process.
//!
//! For development, tests and the demo; production keeps its master key in AWS KMS. The key
//! comes from a file (`JARVIS_LOCAL_KEY_FILE`) or from `JARVIS_LOCAL_MASTER_KEY`.
//!
//! # Key file
//!
//! A text file created with mode 0600; a file that group or others can read is refused.
//! One line per key version, the highest version is current; `#` starts a comment:
//!
//! ```text
//! # jarvis-crypt local master key
//! 1 6b1f...64 hex digits...
//! 2 09ae...
//! ```
//!
//! [`LocalKeyProvider::rotate_file`] appends a version; data keys wrapped under older versions
//! still unwrap, and [`KeyProvider::rewrap_data_key`] moves them to the current one.
//! `JARVIS_LOCAL_MASTER_KEY` holds 64 hex digits (version 1), or `version:hex` pairs
//! separated by commas.
//!
//! The master key id is a fingerprint of the lowest version's key (`local-` and 16 hex
//! digits of a SHA-256 under a fixed label), so the same key has the same id wherever it is
//! loaded, and a row wrapped under another local key is reported as an unknown master key.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cipher::{self, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::keys::{
    DataKey, GeneratedDataKey, KeyEnvelope, KeyProvider, KeyPurpose, MasterKeyRef, ProviderKind,
    envelope_header,
};
use crate::stored::WrappedKey;

/// Environment variable naming the key file.
pub const KEY_FILE_VAR: &str = "JARVIS_LOCAL_KEY_FILE";
/// Environment variable holding the key itself, hex-encoded.
pub const MASTER_KEY_VAR: &str = "JARVIS_LOCAL_MASTER_KEY";
/// The key file used when neither variable is set.
pub const DEFAULT_KEY_FILE: &str = ".jarvis/master.key";

const KEY_ID_LABEL: &[u8] = b"jarvis-crypt local master key id v1";
const PAYLOAD_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// A master key in this process, with all its versions.
pub struct LocalKeyProvider {
    key_id: String,
    versions: BTreeMap<u32, SecretBox<[u8; KEY_LEN]>>,
    current: u32,
    source: Option<PathBuf>,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("key_id", &self.key_id)
            .field("versions", &self.versions.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl LocalKeyProvider {
    fn from_versions(
        versions: BTreeMap<u32, SecretBox<[u8; KEY_LEN]>>,
        source: Option<PathBuf>,
    ) -> Result<Self> {
        let (Some((_, first_key)), Some((&current, _))) =
            (versions.first_key_value(), versions.last_key_value())
        else {
            return Err(Error::Configuration(
                "the local master key has no key".into(),
            ));
        };
        let mut hasher = Sha256::new();
        hasher.update(KEY_ID_LABEL);
        hasher.update(first_key.expose_secret());
        let digest = hasher.finalize();
        let key_id = format!("local-{}", hex::encode(&digest[..8]));
        Ok(LocalKeyProvider {
            key_id,
            versions,
            current,
            source,
        })
    }

    /// A provider with one fresh random key (version 1), held in memory only.
    ///
    /// # Panics
    ///
    /// When the operating system's random generator fails, which it does not on a running
    /// Linux, macOS or BSD system.
    pub fn generate() -> Self {
        let key = match cipher::random_key() {
            Ok(key) => key,
            Err(e) => panic!("{e}"),
        };
        let mut versions = BTreeMap::new();
        versions.insert(1, key);
        // One version is present, so this cannot fail.
        Self::from_versions(versions, None).unwrap_or_else(|_| unreachable!())
    }

    /// Parses `JARVIS_LOCAL_MASTER_KEY`'s form: 64 hex digits, or `version:hex` pairs
    /// separated by commas.
    pub fn from_hex(text: &str) -> Result<Self> {
        let mut versions = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (version, hex_key) = match part.split_once(':') {
                Some((v, k)) => (parse_version(v)?, k),
                None => (1, part),
            };
            insert_version(&mut versions, version, hex_key.trim())?;
        }
        Self::from_versions(versions, None)
    }

    /// Loads a key file. Refuses a file that group or others may read.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        check_permissions(path)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::Configuration(format!("cannot read key file {}: {e}", path.display()))
        })?);
        let mut versions = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (version, hex_key) = line.split_once(char::is_whitespace).ok_or_else(|| {
                Error::Configuration(format!(
                    "key file {} line {}: expected `<version> <64 hex digits>`",
                    path.display(),
                    n + 1
                ))
            })?;
            insert_version(&mut versions, parse_version(version)?, hex_key.trim())?;
        }
        Self::from_versions(versions, Some(path.to_owned()))
    }

    /// Creates a key file with one random key (mode 0600, parent folders as needed). Fails if
    /// the file exists.
    pub fn create_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Configuration(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let key = cipher::random_key()?;
        let mut file = open_private(path, true)?;
        let body = Zeroizing::new(format!(
            "# jarvis-crypt local master key: keep secret, never commit\n1 {}\n",
            hex::encode(key.expose_secret())
        ));
        file.write_all(body.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::Configuration(format!("cannot write {}: {e}", path.display())))?;
        Self::from_file(path)
    }

    /// Loads the key file, creating it first when it does not exist.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            Self::from_file(path)
        } else {
            Self::create_file(path)
        }
    }

    /// Reads the configuration of the environment: `JARVIS_LOCAL_MASTER_KEY` if set, else
    /// the file of `JARVIS_LOCAL_KEY_FILE` (default [`DEFAULT_KEY_FILE`]), which must exist.
    pub fn from_env() -> Result<Self> {
        if let Ok(hex_key) = std::env::var(MASTER_KEY_VAR) {
            let hex_key = Zeroizing::new(hex_key);
            return Self::from_hex(&hex_key);
        }
        let path = std::env::var_os(KEY_FILE_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
        Self::from_file(path)
    }

    /// Appends a new random version to a key file and returns it. The file is replaced
    /// atomically (written beside it, then renamed), keeping mode 0600.
    pub fn rotate_file(path: impl AsRef<Path>) -> Result<u32> {
        let path = path.as_ref();
        let current = Self::from_file(path)?;
        let next = current.current.checked_add(1).ok_or_else(|| {
            Error::Configuration("the local master key has reached its last version".into())
        })?;
        let mut body = Zeroizing::new(String::from(
            "# jarvis-crypt local master key: keep secret, never commit\n",
        ));
        for (version, key) in current.versions.iter() {
            body.push_str(&format!("{version} {}\n", hex::encode(key.expose_secret())));
        }
        let key = cipher::random_key()?;
        body.push_str(&format!("{next} {}\n", hex::encode(key.expose_secret())));
        let tmp = path.with_extension("rotating");
        let _ = std::fs::remove_file(&tmp);
        let mut file = open_private(&tmp, true)?;
        file.write_all(body.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::Configuration(format!("cannot write {}: {e}", path.display())))?;
        Ok(next)
    }

    /// The master key id (a fingerprint, not key material).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The current (highest) version.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The loaded versions, lowest first.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.versions.keys().copied()
    }

    /// `version` becomes current: new data keys are wrapped under it. Every loaded version
    /// still unwraps. For tests and for rolling back a rotation.
    pub fn with_current_version(mut self, version: u32) -> Result<Self> {
        if !self.versions.contains_key(&version) {
            return Err(Error::UnknownMasterKey {
                key_id: format!("{}#v{version}", self.key_id),
            });
        }
        self.current = version;
        Ok(self)
    }

    fn master_key_version(&self, master_key: &MasterKeyRef) -> Result<&SecretBox<[u8; KEY_LEN]>> {
        if master_key.provider != ProviderKind::Local || master_key.key_id != self.key_id {
            return Err(Error::UnknownMasterKey {
                key_id: master_key.to_string(),
            });
        }
        self.versions
            .get(&master_key.version)
            .ok_or_else(|| Error::UnknownMasterKey {
                key_id: master_key.to_string(),
            })
    }

    fn wrap(&self, key: &DataKey, to: &MasterKeyRef, purpose: KeyPurpose) -> Result<WrappedKey> {
        let master = self.master_key_version(to)?;
        let header = envelope_header(to)?;
        let mut aad = header.clone();
        aad.extend_from_slice(&purpose.context_bytes());
        let (nonce, ct, tag) =
            cipher::seal_random(master.expose_secret(), &aad, key.expose_secret())?;
        let ct = Zeroizing::new(ct);
        let mut out = header;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        WrappedKey::new(out)
    }
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    fn master_key(&self) -> MasterKeyRef {
        MasterKeyRef {
            provider: ProviderKind::Local,
            key_id: self.key_id.clone(),
            version: self.current,
        }
    }

    fn can_unwrap(&self, master_key: &MasterKeyRef) -> bool {
        self.master_key_version(master_key).is_ok()
    }

    async fn generate_data_key(&self, purpose: KeyPurpose) -> Result<GeneratedDataKey> {
        let key = DataKey::try_generate()?;
        let wrapped = self.wrap(&key, &self.master_key(), purpose)?;
        Ok(GeneratedDataKey { key, wrapped })
    }

    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        let (master_key, header, payload) = match wrapped.envelope()? {
            KeyEnvelope::Jarvis {
                master_key,
                header,
                payload,
            } => (master_key, header, payload),
            KeyEnvelope::Legacy { .. } => {
                return Err(Error::UnknownMasterKey {
                    key_id: "a bare AWS KMS blob (legacy row): needs the aws-kms provider".into(),
                });
            }
        };
        let master = self.master_key_version(&master_key)?;
        if payload.len() != PAYLOAD_LEN {
            return Err(Error::stored(format!(
                "local wrapped key payload is {} bytes, expected {PAYLOAD_LEN}",
                payload.len()
            )));
        }
        let mut aad = header.to_vec();
        aad.extend_from_slice(&purpose.context_bytes());
        let (nonce, rest) = payload.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(KEY_LEN);
        let key = Zeroizing::new(cipher::open(master.expose_secret(), nonce, &aad, ct, tag)?);
        DataKey::try_from_slice(&key).ok_or_else(|| Error::stored("data key is not 32 bytes"))
    }

    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        let key = self.unwrap_data_key(wrapped, purpose).await?;
        self.wrap(&key, to, purpose)
    }
}

fn parse_version(text: &str) -> Result<u32> {
    match text.trim().parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        // The text is not echoed: a key written in the version's place would be printed.
        _ => Err(Error::Configuration(
            "a local master key version is not a positive integer (expected `<version> <64 hex digits>`)".into(),
        )),
    }
}

fn insert_version(
    versions: &mut BTreeMap<u32, SecretBox<[u8; KEY_LEN]>>,
    version: u32,
    hex_key: &str,
) -> Result<()> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(hex_key, bytes.as_mut_slice()).map_err(|_| {
        Error::Configuration(format!(
            "local master key version {version} is not 64 hex digits (a 256-bit key)"
        ))
    })?;
    let key = SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| k.copy_from_slice(bytes.as_slice()));
    if versions.insert(version, key).is_some() {
        return Err(Error::Configuration(format!(
            "local master key version {version} is given twice"
        )));
    }
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Configuration(format!(
            "cannot read key file {}: {e} (create it with `jarvis init`)",
            path.display()
        ))
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Configuration(format!(
            "key file {} has mode {:o}: group and others must have no access (chmod 600)",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<()> {
    Ok(())
}

fn open_private(path: &Path, create_new: bool) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| Error::Configuration(format!("cannot create {}: {e}", path.display())))
}
