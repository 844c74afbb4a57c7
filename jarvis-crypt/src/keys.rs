//! Data keys, master keys, the wrapped-key format and the [`KeyProvider`] trait.
//!
//! # Wrapped-key format
//!
//! The data-key column of every value holds the data key wrapped by a key provider, in a
//! self-describing envelope, so rows under different providers and master keys coexist
//! during rotation and migration:
//!
//! ```text
//! offset  size  field
//! 0       3     magic: EC 4A 4B ("\xECJK")
//! 3       1     format version: 01
//! 4       1     provider: 01 = local master key, 02 = AWS KMS
//! 5       2     length n of the master key id (u16 BE, 1..=2048)
//! 7       n     master key id (UTF-8; the local key's fingerprint id, or the KMS key ARN)
//! 7+n     4     master key version (u32 BE; local key versions; 0 for AWS KMS, which
//!               rotates its key material behind one id)
//! 11+n    ...   the provider's payload (never empty)
//! ```
//!
//! The first byte, `0xEC`, is neither `0x01` (every AWS KMS ciphertext blob begins
//! `01 02 02 00`) nor printable ASCII (KMS emulators begin theirs with the key id), so a bare
//! blob of the earlier implementation (a *legacy* wrapped key) is never mistaken for an
//! envelope, nor the reverse.
//!
//! The payload of the local provider is `nonce (12) || AES-256-GCM(data key) (32) || tag
//! (16)` under the master key version, with the header above and the encryption context as
//! associated data; the payload of the AWS provider is the KMS `CiphertextBlob`.

use std::fmt;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretBox};

use crate::cipher::{self, KEY_LEN};
use crate::error::{Error, Result};
use crate::stored::WrappedKey;
use crate::vault::DataKeyId;

/// Magic prefix of the wrapped-key envelope.
pub const WRAPPED_KEY_MAGIC: [u8; 3] = [0xEC, 0x4A, 0x4B];
/// Current version of the wrapped-key envelope.
pub const WRAPPED_KEY_VERSION: u8 = 1;
/// Longest master key id the envelope accepts.
pub const MAX_KEY_ID_LEN: usize = 2048;

/// A 256-bit data key: wiped on drop, never printed, never cloned outside this crate.
///
/// It keeps its AES-GCM key schedule, so encrypting many values under one data key does not
/// expand the key again each time. Inside the crate the cache shares one key between the
/// values it encrypts; the key bytes are wiped when the last holder drops it.
pub struct DataKey(Arc<DataKeyInner>);

struct DataKeyInner {
    bytes: SecretBox<[u8; KEY_LEN]>,
    cipher: aes_gcm::Aes256Gcm,
}

impl DataKey {
    /// A data key from raw bytes (the bytes are moved into a wiped-on-drop box).
    pub fn from_bytes(bytes: SecretBox<[u8; KEY_LEN]>) -> Self {
        let cipher = cipher::new_cipher(bytes.expose_secret());
        DataKey(Arc::new(DataKeyInner { bytes, cipher }))
    }

    /// A data key from a slice; `None` when it is not 32 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let boxed = SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| key.copy_from_slice(bytes));
        Some(DataKey::from_bytes(boxed))
    }

    /// A fresh random data key, from the operating system's generator (safe across `fork`;
    /// see [`cipher`](crate::cipher#randomness)).
    ///
    /// # Panics
    ///
    /// When the operating system's generator fails, which it does not on a running Linux,
    /// macOS or BSD system; [`try_generate`](Self::try_generate) returns the error instead.
    pub fn generate() -> Self {
        match Self::try_generate() {
            Ok(key) => key,
            Err(e) => panic!("{e}"),
        }
    }

    /// A fresh random data key, from the operating system's generator; its failure is an
    /// [`Error::Io`].
    pub fn try_generate() -> Result<Self> {
        cipher::random_key().map(DataKey::from_bytes)
    }

    /// A watch that tells when every holder of this key has dropped it, i.e. when its bytes
    /// have been wiped. For tests of the cache's eviction; it gives no access to the key.
    pub fn wipe_watch(&self) -> WipeWatch {
        WipeWatch(Arc::downgrade(&self.0))
    }

    pub(crate) fn share(&self) -> DataKey {
        DataKey(Arc::clone(&self.0))
    }

    pub(crate) fn cipher(&self) -> &aes_gcm::Aes256Gcm {
        &self.0.cipher
    }
}

impl ExposeSecret<[u8; KEY_LEN]> for DataKey {
    fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.bytes.expose_secret()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").finish_non_exhaustive()
    }
}

/// Tells whether a [`DataKey`] has been dropped everywhere and so wiped.
pub struct WipeWatch(Weak<DataKeyInner>);

impl WipeWatch {
    /// Whether the key's bytes have been wiped (no holder is left).
    pub fn is_wiped(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl fmt::Debug for WipeWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WipeWatch")
            .field("wiped", &self.is_wiped())
            .finish()
    }
}

/// Which kind of provider wrapped a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ProviderKind {
    /// [`LocalKeyProvider`](crate::LocalKeyProvider): a master key in a file or variable.
    Local,
    /// AWS KMS.
    AwsKms,
}

impl ProviderKind {
    fn code(self) -> u8 {
        match self {
            ProviderKind::Local => 1,
            ProviderKind::AwsKms => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ProviderKind::Local),
            2 => Some(ProviderKind::AwsKms),
            _ => None,
        }
    }

    /// The name used in configuration and reports: `local` or `aws-kms`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::AwsKms => "aws-kms",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A master key: which provider holds it, its id and its version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterKeyRef {
    /// The provider holding the key.
    pub provider: ProviderKind,
    /// The key's id (a fingerprint id for local keys, the key ARN for AWS KMS).
    pub key_id: String,
    /// The key's version (local keys; 0 for AWS KMS).
    pub version: u32,
}

impl fmt::Display for MasterKeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.provider {
            ProviderKind::Local => write!(f, "{}#v{}", self.key_id, self.version),
            _ => f.write_str(&self.key_id),
        }
    }
}

/// What a data key is for. It selects the encryption context that the provider binds to
/// the wrapped key (a KMS encryption context; associated data for the local provider), so a
/// key wrapped for one purpose does not unwrap for another, and so KMS audit logs
/// (CloudTrail) show what each request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyPurpose {
    /// Data keys of encrypted columns.
    Field,
    /// The data key of one encrypted backup stream.
    Backup,
    /// The root search key stored in `jarvis_keys`.
    SearchKey,
}

/// Name of the application in every encryption context.
pub const CONTEXT_APPLICATION: &str = "jarvis-crypt";

impl KeyPurpose {
    /// The purpose's value in the encryption context.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Field => "column-encryption",
            KeyPurpose::Backup => "backup",
            KeyPurpose::SearchKey => "search-key",
        }
    }

    /// The purpose whose [`as_str`](Self::as_str) is `name` (as a key vault stores it).
    pub fn from_name(name: &str) -> Option<Self> {
        [KeyPurpose::Field, KeyPurpose::Backup, KeyPurpose::SearchKey]
            .into_iter()
            .find(|purpose| purpose.as_str() == name)
    }

    /// The encryption context of this purpose: `application = jarvis-crypt` and
    /// `purpose = <as_str>`, in key order.
    pub fn encryption_context(self) -> [(&'static str, &'static str); 2] {
        [
            ("application", CONTEXT_APPLICATION),
            ("purpose", self.as_str()),
        ]
    }

    /// The context encoded canonically, for use as associated data.
    pub(crate) fn context_bytes(self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.encryption_context() {
            crate::aad::put_bytes(&mut out, k.as_bytes());
            crate::aad::put_bytes(&mut out, v.as_bytes());
        }
        out
    }
}

/// What a provider binds to a wrapped data key: its [`KeyPurpose`] and, for a key kept in a
/// [`KeyVault`](crate::KeyVault), its [`DataKeyId`] (so a vault row cannot be swapped for
/// another id's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct KeyContext {
    /// What the key is for.
    pub purpose: KeyPurpose,
    /// The key's id in the vault (`None`: an inline envelope).
    pub data_key_id: Option<DataKeyId>,
}

/// Name of the data key's id in the encryption context of a key kept in a vault.
pub const CONTEXT_DATA_KEY_ID: &str = "data_key_id";

impl KeyContext {
    /// The context of a key of `purpose` stored inline.
    pub fn new(purpose: KeyPurpose) -> Self {
        KeyContext {
            purpose,
            data_key_id: None,
        }
    }

    /// The context of a key of `purpose` kept in a vault under `id`.
    pub fn in_vault(purpose: KeyPurpose, id: DataKeyId) -> Self {
        KeyContext {
            purpose,
            data_key_id: Some(id),
        }
    }

    /// The encryption context: the purpose's (see [`KeyPurpose::encryption_context`]) and,
    /// for a key in a vault, `data_key_id = <hex>`.
    pub fn encryption_context(&self) -> Vec<(&'static str, String)> {
        let mut context: Vec<(&'static str, String)> = self
            .purpose
            .encryption_context()
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        if let Some(id) = self.data_key_id {
            context.push((CONTEXT_DATA_KEY_ID, id.to_hex()));
        }
        context
    }

    /// The context encoded canonically, for use as associated data: the purpose's bytes as
    /// before, then the id's pair.
    pub(crate) fn context_bytes(&self) -> Vec<u8> {
        let mut out = self.purpose.context_bytes();
        if let Some(id) = self.data_key_id {
            crate::aad::put_bytes(&mut out, CONTEXT_DATA_KEY_ID.as_bytes());
            crate::aad::put_bytes(&mut out, id.to_hex().as_bytes());
        }
        out
    }
}

fn ids_not_bound(provider: &(impl KeyProvider + ?Sized)) -> Error {
    Error::Configuration(format!(
        "the {} key provider does not bind data-key ids: build the encryptor without a key vault",
        provider.kind()
    ))
}

/// A data key just generated: the plaintext key and the same key wrapped by its provider.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// The plaintext data key.
    pub key: DataKey,
    /// The wrapped data key, as stored.
    pub wrapped: WrappedKey,
}

/// A parsed wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEnvelope<'a> {
    /// The self-describing envelope that jarvis writes.
    Jarvis {
        /// The master key that wrapped the data key.
        master_key: MasterKeyRef,
        /// The header bytes (bound as associated data by the local provider).
        header: &'a [u8],
        /// The provider's payload.
        payload: &'a [u8],
    },
    /// A bare AWS KMS ciphertext blob, written by the earlier implementation.
    Legacy {
        /// The blob.
        blob: &'a [u8],
    },
}

/// The fields of a parsed envelope, borrowed.
enum Split<'a> {
    Legacy,
    Jarvis {
        provider: ProviderKind,
        key_id: &'a str,
        version: u32,
        header_len: usize,
    },
}

impl<'a> KeyEnvelope<'a> {
    /// Parses wrapped-key bytes. Bytes that start with the magic prefix must be a valid
    /// envelope; anything else is a legacy blob.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        Ok(match Self::split(bytes)? {
            Split::Legacy => KeyEnvelope::Legacy { blob: bytes },
            Split::Jarvis {
                provider,
                key_id,
                version,
                header_len,
            } => KeyEnvelope::Jarvis {
                master_key: MasterKeyRef {
                    provider,
                    key_id: key_id.to_owned(),
                    version,
                },
                header: &bytes[..header_len],
                payload: &bytes[header_len..],
            },
        })
    }

    /// Checks that `bytes` parse, without building the master key reference (which
    /// allocates): what loading a `WrappedKey` column runs for every row.
    pub(crate) fn check(bytes: &[u8]) -> Result<()> {
        Self::split(bytes).map(|_| ())
    }

    fn split(bytes: &[u8]) -> Result<Split<'_>> {
        if bytes.is_empty() {
            return Err(Error::stored("wrapped data key is empty"));
        }
        if bytes[0] != WRAPPED_KEY_MAGIC[0] {
            return Ok(Split::Legacy);
        }
        let short = || Error::stored("wrapped data key envelope is truncated");
        if !bytes.starts_with(&WRAPPED_KEY_MAGIC) {
            return Err(if bytes.len() < WRAPPED_KEY_MAGIC.len() {
                short()
            } else {
                Error::stored("wrapped data key has an unknown format")
            });
        }
        let version = *bytes.get(3).ok_or_else(short)?;
        if version != WRAPPED_KEY_VERSION {
            return Err(Error::stored(format!(
                "wrapped data key envelope version {version} is not supported"
            )));
        }
        let provider_code = *bytes.get(4).ok_or_else(short)?;
        let provider = ProviderKind::from_code(provider_code)
            .ok_or_else(|| Error::stored(format!("unknown key provider code {provider_code}")))?;
        let id_len = usize::from(u16::from_be_bytes(
            bytes
                .get(5..7)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?,
        ));
        if id_len == 0 || id_len > MAX_KEY_ID_LEN {
            return Err(Error::stored("master key id length out of range"));
        }
        let id = bytes.get(7..7 + id_len).ok_or_else(short)?;
        let key_id =
            std::str::from_utf8(id).map_err(|_| Error::stored("master key id is not UTF-8"))?;
        let version_bytes: [u8; 4] = bytes
            .get(7 + id_len..11 + id_len)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?;
        let header_len = 11 + id_len;
        if bytes.len() <= header_len {
            return Err(short());
        }
        Ok(Split::Jarvis {
            provider,
            key_id,
            version: u32::from_be_bytes(version_bytes),
            header_len,
        })
    }

    /// The master key named by the envelope (`None` for a legacy blob, which names none
    /// the library can read).
    pub fn master_key(&self) -> Option<&MasterKeyRef> {
        match self {
            KeyEnvelope::Jarvis { master_key, .. } => Some(master_key),
            KeyEnvelope::Legacy { .. } => None,
        }
    }
}

/// Encodes the envelope header for `master_key`.
pub fn envelope_header(master_key: &MasterKeyRef) -> Result<Vec<u8>> {
    let id = master_key.key_id.as_bytes();
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN {
        return Err(Error::Configuration(
            "master key id must be 1 to 2048 bytes long".into(),
        ));
    }
    let mut out = Vec::with_capacity(11 + id.len());
    out.extend_from_slice(&WRAPPED_KEY_MAGIC);
    out.push(WRAPPED_KEY_VERSION);
    out.push(master_key.provider.code());
    // Fits: checked against MAX_KEY_ID_LEN above.
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&master_key.version.to_be_bytes());
    Ok(out)
}

/// Something that holds master keys: it generates data keys, unwraps them, and re-wraps
/// them under another master key.
///
/// Object-safe (`Arc<dyn KeyProvider>`), `Send + Sync`. Implementations write wrapped keys in
/// the envelope format of this module, bind the purpose's encryption context, and map their
/// failures onto [`Error`] without leaking SDK types.
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The kind of this provider.
    fn kind(&self) -> ProviderKind;

    /// The master key that new data keys are generated under.
    fn master_key(&self) -> MasterKeyRef;

    /// Whether this provider can unwrap data keys wrapped under `master_key`.
    fn can_unwrap(&self, master_key: &MasterKeyRef) -> bool {
        master_key.provider == self.kind()
    }

    /// Generates a fresh data key under the current master key.
    async fn generate_data_key(&self, purpose: KeyPurpose) -> Result<GeneratedDataKey>;

    /// Unwraps a data key. A key wrapped for another purpose, under an unknown master key or
    /// tampered with fails; the plaintext key never leaves the provider in an error.
    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey>;

    /// Re-wraps a data key under the master key `to`, leaving the data key itself unchanged
    /// (the ciphertexts under it stay valid).
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey>;

    /// Whether this provider binds a data key's vault id to its wrapped key (the `_in`
    /// methods below). An encryptor with a [`KeyVault`](crate::KeyVault) writes references
    /// only through a provider that does; through another it keeps writing inline envelopes.
    /// `false` unless a provider says otherwise.
    fn binds_data_key_ids(&self) -> bool {
        false
    }

    /// [`generate_data_key`](Self::generate_data_key) with the whole context bound. The
    /// default serves contexts without an id and refuses the others.
    async fn generate_data_key_in(&self, context: &KeyContext) -> Result<GeneratedDataKey> {
        match context.data_key_id {
            None => self.generate_data_key(context.purpose).await,
            Some(_) => Err(ids_not_bound(self)),
        }
    }

    /// [`unwrap_data_key`](Self::unwrap_data_key) with the whole context bound. The default
    /// serves contexts without an id and refuses the others.
    async fn unwrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
    ) -> Result<DataKey> {
        match context.data_key_id {
            None => self.unwrap_data_key(wrapped, context.purpose).await,
            Some(_) => Err(ids_not_bound(self)),
        }
    }

    /// [`rewrap_data_key`](Self::rewrap_data_key) with the whole context bound (the same
    /// before and after). The default serves contexts without an id and refuses the others.
    async fn rewrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        match context.data_key_id {
            None => self.rewrap_data_key(wrapped, context.purpose, to).await,
            Some(_) => Err(ids_not_bound(self)),
        }
    }

    /// The same data key under the same master key, bound to the context `into` instead of
    /// `from` (a key written inline, bound to its purpose alone, given an id to live in the key
    /// vault: `rotate --compact`). One provider call where the provider can (KMS `ReEncrypt`
    /// with a source and a destination encryption context). The default refuses: a provider
    /// that does not bind ids keeps its inline envelopes.
    async fn rebind_data_key(
        &self,
        wrapped: &WrappedKey,
        from: &KeyContext,
        into: &KeyContext,
    ) -> Result<WrappedKey> {
        let _ = (wrapped, from, into);
        Err(ids_not_bound(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MasterKeyRef {
        MasterKeyRef {
            provider: ProviderKind::Local,
            key_id: "local-0123456789abcdef".into(),
            version: 3,
        }
    }

    #[test]
    fn envelope_round_trips() {
        let mut bytes = envelope_header(&sample()).unwrap();
        bytes.extend_from_slice(&[9; 60]);
        match KeyEnvelope::parse(&bytes).unwrap() {
            KeyEnvelope::Jarvis {
                master_key,
                payload,
                header,
            } => {
                assert_eq!(master_key, sample());
                assert_eq!(payload, &[9; 60]);
                assert_eq!(header.len(), 11 + "local-0123456789abcdef".len());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn kms_blobs_are_legacy() {
        let aws = [1u8, 2, 2, 0, 0x78, 0x1f];
        assert!(matches!(
            KeyEnvelope::parse(&aws),
            Ok(KeyEnvelope::Legacy { .. })
        ));
        let moto = b"2f6b1c3e-5d1c-4c5e-9f0e-0123456789ab\x00\x01rest";
        assert!(matches!(
            KeyEnvelope::parse(moto),
            Ok(KeyEnvelope::Legacy { .. })
        ));
    }

    #[test]
    fn truncated_envelopes_are_invalid() {
        let mut bytes = envelope_header(&sample()).unwrap();
        bytes.push(1);
        for len in 1..bytes.len() {
            let err = KeyEnvelope::parse(&bytes[..len]).unwrap_err();
            assert!(matches!(err, Error::InvalidStoredForm(_)), "{len}: {err}");
        }
        bytes[3] = 9;
        assert!(matches!(
            KeyEnvelope::parse(&bytes),
            Err(Error::InvalidStoredForm(_))
        ));
    }
}
