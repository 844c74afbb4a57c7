//! The local key provider: a 256-bit master key held by this process.
//!
//! For development, tests and the demo; production keeps its master key in AWS KMS. The key
//! comes from a file (`JARVIS_LOCAL_KEY_FILE`) or from `JARVIS_LOCAL_MASTER_KEY`.
//!
//! # Key file
//!
//! A text file created with mode 0600. An `id` line names the master key; then one line per
//! key version, the highest version is current; `#` starts a comment:
//!
//! ```text
//! # jarvis-crypt local master key: keep secret, never commit
//! id local-3f9a0c5e7d21b486
//! 1 6b1f...64 hex digits...
//! 2 09ae...
//! ```
//!
//! [`LocalKeyProvider::rotate_file`] adds a version; data keys wrapped under older versions
//! still unwrap, and [`KeyProvider::rewrap_data_key`] moves them to the current one. Once
//! nothing is wrapped under an old version any more, its line may be removed: the id stays.
//!
//! The file is refused (a [`Error::Configuration`]) unless it is owned by the effective user
//! and neither group nor others have any access to it, and unless its folder is owned by the
//! effective user or root and writable by neither group nor others: whoever may replace the
//! file or rename something over it chooses the master key that new data keys are wrapped
//! under. Folders created for a new key file get mode 0700.
//!
//! Writers (creating the file, adding a version) hold an exclusive lock on `<file>.lock`
//! beside it, read the file under the lock, write the new content to `<file>.rotating` and
//! rename it over the file: two `jarvis init --new-version` at once add two versions, one
//! after the other, and a reader sees the old file or the new one, never a part of either.
//!
//! # The master key id
//!
//! Every wrapped data key names the master key id (and version) that wraps it, so the id of
//! a key must not change while rows use it. The id is a fingerprint of the first version's
//! key (`local-` and 16 hex digits of a SHA-256 under a fixed label), so the same key has the
//! same id wherever it is loaded, and a row wrapped under another local key is reported as an
//! unknown master key. It is computed once and kept:
//!
//! - a key file stores it in its `id` line, written when the file is created;
//! - a key file of an earlier version of jarvis-crypt has no `id` line: its id is derived
//!   from its lowest version, as it always was, and written into the file at its next write
//!   ([`LocalKeyProvider::rotate_file`], `jarvis init --new-version`). Only then may its
//!   first version be removed;
//! - `JARVIS_LOCAL_MASTER_KEY` holds 64 hex digits (version 1), or `version:hex` pairs
//!   separated by commas, optionally with an `id:<key id>` part
//!   (`id:local-3f9a0c5e7d21b486,2:09ae...`); without one the id is derived from its lowest
//!   version.
//!
//! A key id is `local-` and 16 lower-case hex digits, as the provider prints it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cipher::{self, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::keys::{
    DataKey, GeneratedDataKey, KeyContext, KeyEnvelope, KeyProvider, KeyPurpose, MasterKeyRef,
    ProviderKind, envelope_header,
};
use crate::stored::WrappedKey;

/// Environment variable naming the key file.
pub const KEY_FILE_VAR: &str = "JARVIS_LOCAL_KEY_FILE";
/// Environment variable holding the key itself, hex-encoded.
pub const MASTER_KEY_VAR: &str = "JARVIS_LOCAL_MASTER_KEY";
/// The key file used when neither variable is set.
pub const DEFAULT_KEY_FILE: &str = ".jarvis/master.key";

const KEY_ID_LABEL: &[u8] = b"jarvis-crypt local master key id v1";
const KEY_ID_PREFIX: &str = "local-";
const KEY_ID_HEX_LEN: usize = 16;
const PAYLOAD_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const FILE_HEADER: &str = "# jarvis-crypt local master key: keep secret, never commit\n";

type Versions = BTreeMap<u32, SecretBox<[u8; KEY_LEN]>>;

/// A master key in this process, with all its versions.
pub struct LocalKeyProvider {
    key_id: String,
    versions: Versions,
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
    /// `key_id` when it is given (stored), else the fingerprint of the lowest version.
    fn from_versions(
        versions: Versions,
        key_id: Option<String>,
        source: Option<PathBuf>,
    ) -> Result<Self> {
        let (Some((_, first_key)), Some((&current, _))) =
            (versions.first_key_value(), versions.last_key_value())
        else {
            return Err(Error::Configuration(
                "the local master key has no key".into(),
            ));
        };
        let key_id = key_id.unwrap_or_else(|| derived_key_id(first_key));
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
        Self::from_versions(versions, None, None).unwrap_or_else(|_| unreachable!())
    }

    /// Parses `JARVIS_LOCAL_MASTER_KEY`'s form: 64 hex digits, or `version:hex` pairs
    /// separated by commas, optionally with an `id:<key id>` part (see the module docs).
    pub fn from_hex(text: &str) -> Result<Self> {
        let mut versions = BTreeMap::new();
        let mut key_id = None;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once(':') {
                Some((name, id)) if name.trim() == "id" => set_key_id(&mut key_id, id)?,
                Some((v, k)) => insert_version(&mut versions, parse_version(v)?, k.trim())?,
                None => insert_version(&mut versions, 1, part)?,
            }
        }
        Self::from_versions(versions, key_id, None)
    }

    /// Loads a key file. Refuses a file that is not the effective user's, that group or
    /// others may read, or whose folder others may write (see the module docs).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        check_key_file(path)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::Configuration(format!("cannot read key file {}: {e}", path.display()))
        })?);
        let mut versions = BTreeMap::new();
        let mut key_id = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (first, rest) = line.split_once(char::is_whitespace).ok_or_else(|| {
                Error::Configuration(format!(
                    "key file {} line {}: expected `id <key id>` or `<version> <64 hex digits>`",
                    path.display(),
                    n + 1
                ))
            })?;
            if first == "id" {
                set_key_id(&mut key_id, rest)?;
            } else {
                insert_version(&mut versions, parse_version(first)?, rest.trim())?;
            }
        }
        Self::from_versions(versions, key_id, Some(path.to_owned()))
    }

    /// Creates a key file with one random key and its id (mode 0600, missing parent folders
    /// with mode 0700). Fails if the file exists.
    pub fn create_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        create_parent(path)?;
        let _lock = lock_key_file(path)?;
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::Configuration(format!(
                "key file {} exists; a key file is never overwritten",
                path.display()
            )));
        }
        write_new_key_file(path)?;
        Self::from_file(path)
    }

    /// Loads the key file, creating it first when it does not exist (under the writers'
    /// lock, so two processes starting at once create one key).
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            return Self::from_file(path);
        }
        create_parent(path)?;
        let _lock = lock_key_file(path)?;
        if std::fs::symlink_metadata(path).is_err() {
            write_new_key_file(path)?;
        }
        Self::from_file(path)
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

    /// Adds a new random version to a key file and returns it. Under the writers' lock, the
    /// file is read, written anew beside it (mode 0600) with its key id and every version,
    /// and renamed over the old one; a file without an `id` line gets one, holding the id it
    /// had (see the module docs).
    pub fn rotate_file(path: impl AsRef<Path>) -> Result<u32> {
        let path = path.as_ref();
        // Refused before the lock file is made: a missing or unsafe file is not written.
        check_key_file(path)?;
        let _lock = lock_key_file(path)?;
        let LocalKeyProvider {
            key_id,
            mut versions,
            current,
            ..
        } = Self::from_file(path)?;
        let next = current.checked_add(1).ok_or_else(|| {
            Error::Configuration("the local master key has reached its last version".into())
        })?;
        versions.insert(next, cipher::random_key()?);
        replace_key_file(path, &key_file_body(&key_id, &versions))?;
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

    fn wrap(&self, key: &DataKey, to: &MasterKeyRef, context: &KeyContext) -> Result<WrappedKey> {
        let master = self.master_key_version(to)?;
        let header = envelope_header(to)?;
        let mut aad = header.clone();
        aad.extend_from_slice(&context.context_bytes());
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
        self.generate_data_key_in(&KeyContext::new(purpose)).await
    }

    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        self.unwrap_data_key_in(wrapped, &KeyContext::new(purpose))
            .await
    }

    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        self.rewrap_data_key_in(wrapped, &KeyContext::new(purpose), to)
            .await
    }

    fn binds_data_key_ids(&self) -> bool {
        true
    }

    async fn generate_data_key_in(&self, context: &KeyContext) -> Result<GeneratedDataKey> {
        let key = DataKey::try_generate()?;
        let wrapped = self.wrap(&key, &self.master_key(), context)?;
        Ok(GeneratedDataKey { key, wrapped })
    }

    async fn unwrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
    ) -> Result<DataKey> {
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
        aad.extend_from_slice(&context.context_bytes());
        let (nonce, rest) = payload.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(KEY_LEN);
        let key = Zeroizing::new(cipher::open(master.expose_secret(), nonce, &aad, ct, tag)?);
        DataKey::try_from_slice(&key).ok_or_else(|| Error::stored("data key is not 32 bytes"))
    }

    async fn rewrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        let key = self.unwrap_data_key_in(wrapped, context).await?;
        self.wrap(&key, to, context)
    }

    async fn rebind_data_key(
        &self,
        wrapped: &WrappedKey,
        from: &KeyContext,
        into: &KeyContext,
    ) -> Result<WrappedKey> {
        let key = self.unwrap_data_key_in(wrapped, from).await?;
        let master_key = match wrapped.envelope()? {
            KeyEnvelope::Jarvis { master_key, .. } => master_key,
            KeyEnvelope::Legacy { .. } => {
                return Err(Error::stored("a legacy blob is not a local key's"));
            }
        };
        self.wrap(&key, &master_key, into)
    }
}

/// The id of a key file without an `id` line: the fingerprint of its lowest version.
fn derived_key_id(first_key: &SecretBox<[u8; KEY_LEN]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(KEY_ID_LABEL);
    hasher.update(first_key.expose_secret());
    let digest = hasher.finalize();
    format!(
        "{KEY_ID_PREFIX}{}",
        hex::encode(&digest[..KEY_ID_HEX_LEN / 2])
    )
}

fn set_key_id(key_id: &mut Option<String>, text: &str) -> Result<()> {
    let text = text.trim();
    let valid = text.strip_prefix(KEY_ID_PREFIX).is_some_and(|hex| {
        hex.len() == KEY_ID_HEX_LEN
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !valid {
        // The text is not echoed: a key written in the id's place would be printed.
        return Err(Error::Configuration(format!(
            "a local master key id is `{KEY_ID_PREFIX}` and {KEY_ID_HEX_LEN} lower-case hex digits, as the provider prints it"
        )));
    }
    if key_id.replace(text.to_owned()).is_some() {
        return Err(Error::Configuration(
            "the local master key id is given twice".into(),
        ));
    }
    Ok(())
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

/// Decodes one version's hex through a wiped buffer into the version's box.
fn insert_version(versions: &mut Versions, version: u32, hex_key: &str) -> Result<()> {
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

/// The text of a key file. The hex of each key goes through a wiped buffer, and the body is
/// allocated once at its final size, so no copy of a key is left behind in freed memory.
fn key_file_body(key_id: &str, versions: &Versions) -> Zeroizing<String> {
    // "<version> <hex>\n", the version at most 10 digits.
    let line_len = 10 + 1 + 2 * KEY_LEN + 1;
    let mut body = Zeroizing::new(String::with_capacity(
        FILE_HEADER.len() + 4 + key_id.len() + versions.len() * line_len,
    ));
    body.push_str(FILE_HEADER);
    body.push_str("id ");
    body.push_str(key_id);
    body.push('\n');
    let mut hex_key = Zeroizing::new([0u8; 2 * KEY_LEN]);
    for (version, key) in versions {
        // The lengths match, so encoding cannot fail; hex digits are ASCII.
        let _ = hex::encode_to_slice(key.expose_secret(), hex_key.as_mut_slice());
        body.push_str(&version.to_string());
        body.push(' ');
        body.push_str(std::str::from_utf8(hex_key.as_slice()).unwrap_or_default());
        body.push('\n');
    }
    body
}

/// Writes a key file with one fresh version; the caller holds the lock and has seen that
/// the file does not exist.
fn write_new_key_file(path: &Path) -> Result<()> {
    let mut versions = BTreeMap::new();
    let key = cipher::random_key()?;
    let key_id = derived_key_id(&key);
    versions.insert(1, key);
    replace_key_file(path, &key_file_body(&key_id, &versions))
}

/// `<file><suffix>` beside the key file (`master.key` -> `master.key.lock`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes `body` beside the key file and renames it over the file (the caller holds the
/// lock), then makes the rename durable.
fn replace_key_file(path: &Path, body: &str) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::Configuration(format!("cannot write key file {}: {e}", path.display()))
    };
    let tmp = sibling(path, ".rotating");
    // A leftover of a write that was cut short; the lock says no writer is using it.
    let _ = std::fs::remove_file(&tmp);
    let mut file = open_private(&tmp)?;
    file.write_all(body.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(failed)?;
    // The folder's entry must reach the disk too, or a crash could bring the old file back.
    File::open(parent_of(path))
        .and_then(|dir| dir.sync_all())
        .map_err(failed)
}

/// Creates the key file's missing folders, with mode 0700.
fn create_parent(path: &Path) -> Result<()> {
    let parent = parent_of(path);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(parent)
        .map_err(|e| Error::Configuration(format!("cannot create {}: {e}", parent.display())))
}

/// The exclusive lock of the key file's writers: an advisory lock (`flock`) on
/// `<file>.lock`, held until the returned file is dropped. The lock file holds nothing and
/// is left in place.
fn lock_key_file(path: &Path) -> Result<File> {
    check_folder(path)?;
    let lock_path = sibling(path, ".lock");
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&lock_path).map_err(|e| {
        Error::Configuration(format!(
            "cannot open lock file {}: {e}",
            lock_path.display()
        ))
    })?;
    file.lock()
        .map_err(|e| Error::Configuration(format!("cannot lock {}: {e}", lock_path.display())))?;
    Ok(file)
}

/// The checks of the module docs: the file's owner and mode, its folder's owner and mode.
#[cfg(unix)]
fn check_key_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Configuration(format!(
            "cannot read key file {}: {e} (create it with `LocalKeyProvider::create_file`, or the `init` command of the operations binary)",
            path.display()
        ))
    })?;
    check_folder(path)?;
    let user = effective_uid();
    if meta.uid() != user {
        return Err(Error::Configuration(format!(
            "key file {} belongs to user {}, not to this user ({user}): only its owner may use a master key (chown it)",
            path.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode();
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
fn check_key_file(_path: &Path) -> Result<()> {
    Ok(())
}

/// The key file's folder: owned by the effective user or root, writable by neither group
/// nor others (whoever may write the folder may rename another file over the key file).
#[cfg(unix)]
fn check_folder(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let folder = parent_of(path);
    let meta = std::fs::metadata(folder).map_err(|e| {
        Error::Configuration(format!(
            "cannot read the folder {} of key file {}: {e}",
            folder.display(),
            path.display()
        ))
    })?;
    let user = effective_uid();
    if meta.uid() != user && meta.uid() != 0 {
        return Err(Error::Configuration(format!(
            "the folder {} of key file {} belongs to user {}, neither this user ({user}) nor root: its owner could replace the key file",
            folder.display(),
            path.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 {
        return Err(Error::Configuration(format!(
            "the folder {} of key file {} has mode {:o}: group or others may write it and so replace the key file (chmod go-w)",
            folder.display(),
            path.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_folder(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates `path` (which must not exist) for writing, with mode 0600.
fn open_private(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| Error::Configuration(format!("cannot create {}: {e}", path.display())))
}
