#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod aad;
pub mod audit;
#[cfg(feature = "aws-kms")]
pub mod aws;
pub mod blocking;
mod cache;
pub mod cipher;
mod envelope;
mod error;
mod keys;
mod local;
mod model;
pub mod search;
mod stored;
pub mod stream;
mod table;
mod vault;

pub use aad::{AAD_VERSION, Binding, RowKey};
pub use audit::{AuditEvent, AuditSink, MemoryAudit, NoAudit, Operation};
#[cfg(feature = "aws-kms")]
pub use aws::{AwsKms, KMS_DECRYPT_KEY_IDS_VAR, KmsConnection, KmsOptions, KmsRequests};
pub use cache::{CacheLimits, CacheStats, Clock, DataKeyCache, ManualClock, SystemClock};
pub use envelope::{Encryptor, EncryptorBuilder};
pub use error::{Error, ErrorKind, Location, Result, RowError};
pub use jarvis_crypt_derive::Encrypted;
pub use keys::{
    CONTEXT_APPLICATION, CONTEXT_DATA_KEY_ID, DataKey, GeneratedDataKey, KeyContext, KeyEnvelope,
    KeyProvider, KeyPurpose, MAX_KEY_ID_LEN, MasterKeyRef, ProviderKind, WRAPPED_KEY_MAGIC,
    WRAPPED_KEY_VERSION, WipeWatch, envelope_header,
};
pub use local::{DEFAULT_KEY_FILE, KEY_FILE_VAR, LocalKeyProvider, MASTER_KEY_VAR};
pub use model::{Encrypted, EncryptedLoad, SearchColumn};
pub use search::{
    ColumnHasher, CustomNormalizer, Normalize, SearchKey, SearchKeyFingerprint, SearchSpec,
};
pub use stored::{
    AuthTag, Ciphertext, MAX_SEARCH_HASH_LEN, MAX_WRAPPED_KEY_LEN, Nonce, SearchHash, StoredField,
    WrappedKey,
};
pub use stream::StreamFault;
pub use table::{
    BindingProblem, EncryptedTable, FieldDescription, RowKeyKind, SearchDescription,
    TableDescription, ValueKind,
};
pub use vault::{DATA_KEY_ID_LEN, DataKeyId, KeyVault, REFERENCE_LEN, REFERENCE_VERSION, VaultKey};

/// Re-exports for the code that `#[derive(Encrypted)]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::model::support::*;
    pub use async_trait::async_trait;
    pub use diesel;
}
