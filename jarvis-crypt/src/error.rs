//! The one error type of the crate.
//!
//! There is a variant per failure that a caller acts on differently. No variant carries
//! plaintext, key bytes or a search key: messages name what failed, never the data.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Every failure of `jarvis-crypt`, by what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stored value does not authenticate: it was tampered with, or it is read with the
    /// wrong associated data (another table, column or row) or the wrong data key.
    #[error(
        "authentication failed: the value was tampered with or belongs to another row, column or table"
    )]
    AuthenticationFailed,

    /// A stored value has the wrong shape: a bad length, an unknown format or version.
    #[error("invalid stored form: {0}")]
    InvalidStoredForm(String),

    /// A legacy row (16-byte IV and a bare KMS blob, no associated data) was read while the
    /// configuration does not accept legacy rows.
    #[error(
        "legacy row not allowed: enable legacy rows in the configuration, or rewrite them in the current form (`rotate --legacy`)"
    )]
    LegacyNotAllowed,

    /// The master key that wrapped a data key is not known to any configured provider, or the
    /// provider reports that it does not exist.
    #[error("unknown master key `{key_id}`")]
    UnknownMasterKey {
        /// Id of the master key (never key material).
        key_id: String,
    },

    /// A value references a data key (by its id) that the key vault does not hold, or holds
    /// revoked: the vault row was deleted, or the reference was forged. Nothing else is tried
    /// in its place.
    #[error("unknown data key `{id}`: the key vault does not hold it{}", if *revoked { " (revoked)" } else { "" })]
    UnknownDataKey {
        /// The referenced id, in hex (not a secret).
        id: String,
        /// The vault holds the id, revoked (its wrapped bytes erased).
        revoked: bool,
    },

    /// The key vault could not be read or written (its database failed or could not be
    /// reached). No value was sealed under a key the vault did not store.
    #[error("the key vault is unavailable: {0}")]
    VaultUnavailable(String),

    /// The master key exists but is disabled or pending deletion.
    #[error("master key `{key_id}` is disabled or pending deletion")]
    MasterKeyDisabled {
        /// Id of the master key.
        key_id: String,
    },

    /// The key provider refused the request for lack of permission.
    #[error("access denied by the key provider: {0}")]
    AccessDenied(String),

    /// The key provider throttled the request, still after the configured retries.
    #[error("the key provider throttled the request ({attempts} attempts)")]
    Throttled {
        /// How many attempts were made.
        attempts: u32,
    },

    /// The key provider could not be reached or failed, still after the configured retries.
    #[error("the key provider is unavailable ({attempts} attempts): {message}")]
    ProviderUnavailable {
        /// How many attempts were made.
        attempts: u32,
        /// What the transport or the provider said (never request or key material).
        message: String,
    },

    /// The decrypted bytes are not of the type the field declares (not UTF-8, not the JSON
    /// of the declared type). The message never contains the bytes.
    #[error("decrypted value is not a valid {0}")]
    InvalidPlaintext(&'static str),

    /// The configuration is missing or wrong (a search key that is too short, a key file
    /// readable by others, an unparsable variable).
    #[error("configuration: {0}")]
    Configuration(String),

    /// An encrypted backup stream does not authenticate as a whole: it was cut short, changed,
    /// reordered or extended. The [`StreamFault`] says which; no plaintext of a chunk that did
    /// not authenticate is ever handed out.
    #[error("backup stream rejected: {0}")]
    StreamTampered(StreamFault),

    /// Reading or writing a stream failed (the file, pipe or socket under it).
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
}

impl Error {
    /// A short, stable name of the error's kind, for audit rows and metrics.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::AuthenticationFailed => ErrorKind::AuthenticationFailed,
            Error::InvalidStoredForm(_) => ErrorKind::InvalidStoredForm,
            Error::LegacyNotAllowed => ErrorKind::LegacyNotAllowed,
            Error::UnknownMasterKey { .. } => ErrorKind::UnknownMasterKey,
            Error::UnknownDataKey { .. } => ErrorKind::UnknownDataKey,
            Error::VaultUnavailable(_) => ErrorKind::VaultUnavailable,
            Error::MasterKeyDisabled { .. } => ErrorKind::MasterKeyDisabled,
            Error::AccessDenied(_) => ErrorKind::AccessDenied,
            Error::Throttled { .. } => ErrorKind::Throttled,
            Error::ProviderUnavailable { .. } => ErrorKind::ProviderUnavailable,
            Error::InvalidPlaintext(_) => ErrorKind::InvalidPlaintext,
            Error::Configuration(_) => ErrorKind::Configuration,
            Error::StreamTampered(_) => ErrorKind::StreamTampered,
            Error::Io(_) => ErrorKind::Io,
        }
    }

    pub(crate) fn stored(what: impl Into<String>) -> Self {
        Error::InvalidStoredForm(what.into())
    }
}

/// An I/O error becomes [`Error::Io`], unless it carries an [`Error`] (as the errors of the
/// stream adapters do), which comes back out as it was.
impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(inner) => inner.clone(),
            None => Error::Io(Arc::new(err)),
        }
    }
}

/// For `AsyncRead`/`AsyncWrite` implementations: the [`Error`] travels inside the I/O error
/// (kind `InvalidData` for a value or stream that does not authenticate or parse).
impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Io(inner) => inner.kind(),
            Error::AuthenticationFailed
            | Error::InvalidStoredForm(_)
            | Error::StreamTampered(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// The kind of an [`Error`], without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::AuthenticationFailed`].
    AuthenticationFailed,
    /// See [`Error::InvalidStoredForm`].
    InvalidStoredForm,
    /// See [`Error::LegacyNotAllowed`].
    LegacyNotAllowed,
    /// See [`Error::UnknownMasterKey`].
    UnknownMasterKey,
    /// See [`Error::UnknownDataKey`].
    UnknownDataKey,
    /// See [`Error::VaultUnavailable`].
    VaultUnavailable,
    /// See [`Error::MasterKeyDisabled`].
    MasterKeyDisabled,
    /// See [`Error::AccessDenied`].
    AccessDenied,
    /// See [`Error::Throttled`].
    Throttled,
    /// See [`Error::ProviderUnavailable`].
    ProviderUnavailable,
    /// See [`Error::InvalidPlaintext`].
    InvalidPlaintext,
    /// See [`Error::Configuration`].
    Configuration,
    /// See [`Error::StreamTampered`].
    StreamTampered,
    /// See [`Error::Io`].
    Io,
}

impl ErrorKind {
    /// The snake-case name stored in audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::AuthenticationFailed => "authentication_failed",
            ErrorKind::InvalidStoredForm => "invalid_stored_form",
            ErrorKind::LegacyNotAllowed => "legacy_not_allowed",
            ErrorKind::UnknownMasterKey => "unknown_master_key",
            ErrorKind::UnknownDataKey => "unknown_data_key",
            ErrorKind::VaultUnavailable => "vault_unavailable",
            ErrorKind::MasterKeyDisabled => "master_key_disabled",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::Throttled => "throttled",
            ErrorKind::ProviderUnavailable => "provider_unavailable",
            ErrorKind::InvalidPlaintext => "invalid_plaintext",
            ErrorKind::Configuration => "configuration",
            ErrorKind::StreamTampered => "stream_tampered",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a backup stream that does not authenticate as a whole.
///
/// Carried by [`Error::StreamTampered`]. Positions count chunks from 0. No fault carries
/// plaintext or key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamFault {
    /// The stream ends inside its header.
    HeaderTruncated,
    /// The header does not authenticate under its data key: a header field (the manifest,
    /// the chunk size, the nonce prefix) or the header tag was changed.
    HeaderAuthentication,
    /// The header names another master key than its wrapped data key does.
    MasterKeyMismatch,
    /// The wrapped data key does not unwrap under the master key it names: it was damaged,
    /// or replaced by a key wrapped for another purpose.
    DataKey,
    /// The chunk at this position does not authenticate, in this place or any near it: its
    /// bytes were changed, or it comes from another stream.
    ChunkAuthentication {
        /// Position of the chunk in the stream.
        index: u64,
    },
    /// The chunk at `position` is chunk `found` of this stream: chunks were reordered,
    /// duplicated or dropped.
    ChunkOutOfOrder {
        /// Where the chunk was read.
        position: u64,
        /// Where it belongs.
        found: u64,
    },
    /// The stream ends before its final chunk: it was cut short, at a chunk boundary or
    /// inside a chunk.
    Truncated {
        /// How many complete chunks preceded the end.
        chunks: u64,
    },
    /// Bytes follow the final chunk (appended data, or a chunk after the final one).
    TrailingData {
        /// Position of the final chunk.
        after_chunk: u64,
    },
}

impl StreamFault {
    /// A short, stable name of the fault, for audit rows and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamFault::HeaderTruncated => "header_truncated",
            StreamFault::HeaderAuthentication => "header_authentication",
            StreamFault::MasterKeyMismatch => "master_key_mismatch",
            StreamFault::DataKey => "data_key",
            StreamFault::ChunkAuthentication { .. } => "chunk_authentication",
            StreamFault::ChunkOutOfOrder { .. } => "chunk_out_of_order",
            StreamFault::Truncated { .. } => "truncated",
            StreamFault::TrailingData { .. } => "trailing_data",
        }
    }
}

impl fmt::Display for StreamFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamFault::HeaderTruncated => f.write_str("the stream ends inside its header"),
            StreamFault::HeaderAuthentication => f.write_str(
                "the header does not authenticate: a header field (manifest, chunk size, nonce prefix) was changed",
            ),
            StreamFault::MasterKeyMismatch => {
                f.write_str("the header names another master key than its wrapped data key")
            }
            StreamFault::DataKey => f.write_str(
                "the wrapped data key does not unwrap: it was damaged or replaced",
            ),
            StreamFault::ChunkAuthentication { index } => write!(
                f,
                "chunk {index} does not authenticate: it was changed or comes from another stream"
            ),
            StreamFault::ChunkOutOfOrder { position, found } => write!(
                f,
                "the chunk at position {position} is chunk {found}: chunks were reordered, duplicated or dropped"
            ),
            StreamFault::Truncated { chunks } => write!(
                f,
                "the stream ends after {chunks} complete chunks, before its final chunk: it was cut short"
            ),
            StreamFault::TrailingData { after_chunk } => {
                write!(f, "data follows the final chunk (chunk {after_chunk})")
            }
        }
    }
}

/// Where a stored value is: its table, ciphertext column and row key, as bound into its
/// associated data. Never the value.
///
/// Carried by [`RowError`] (the per-row results of
/// [`Encrypted::decrypt_rows_each`](crate::Encrypted::decrypt_rows_each)) and logged, at
/// `warn`, when a value fails to decrypt. A row key is the row's identifier, stored in the
/// clear beside the value; bind a primary key (an id, a UUID), never a column that is itself
/// sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The table, as bound (its SQL name, or the model's `aad_table`).
    pub table: String,
    /// The ciphertext column (for example `encrypted_email`).
    pub column: String,
    /// The row key, shown as it reads in SQL: an integer, a text, or the hex of a binary key
    /// (`None` for a model bound with `bind = none`).
    pub row_key: Option<String>,
}

impl Location {
    /// The location of a value bound to `binding`.
    pub fn of(binding: &crate::Binding<'_>) -> Self {
        use crate::RowKey;
        let row_key = match binding.row {
            RowKey::None => None,
            RowKey::Int(id) => Some(id.to_string()),
            RowKey::Text(id) => Some(format!("{id:?}")),
            RowKey::Bytes(id) => Some(format!("x'{}'", hex::encode(id))),
        };
        Location {
            table: binding.table.to_owned(),
            column: binding.column.to_owned(),
            row_key,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table `{}`, column `{}`", self.table, self.column)?;
        match &self.row_key {
            Some(key) => write!(f, ", row {key}"),
            None => f.write_str(" (no row key)"),
        }
    }
}

/// The [`Error`] of one row of a batch, with where its bad value is: one bad row out of a
/// thousand can be found, and the others still read (see
/// [`Encrypted::decrypt_rows_each`](crate::Encrypted::decrypt_rows_each)).
#[derive(Debug, Clone, thiserror::Error)]
#[error("row {index} of the batch: {error}{}", location.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
pub struct RowError {
    index: usize,
    location: Option<Location>,
    #[source]
    error: Error,
}

impl RowError {
    /// `error`, of the row at `index` of a batch, whose bad value is at `location` (when known).
    pub fn new(index: usize, location: Option<Location>, error: Error) -> Self {
        RowError {
            index,
            location,
            error,
        }
    }

    /// The row's position in the batch, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Where the bad value is: known for every value that reached decryption (it failed to
    /// authenticate, its data key did not unwrap, its plaintext is not of the field's type);
    /// not for a row whose stored-form columns are partly NULL, which the error names by
    /// field.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The error, as an all-or-nothing call would have returned it.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The error, without its location.
    pub fn into_error(self) -> Error {
        self.error
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }
}

impl From<RowError> for Error {
    fn from(err: RowError) -> Self {
        err.error
    }
}

impl Error {
    /// The jarvis-crypt error in `error` or in its chain of [`source`](std::error::Error::source)s,
    /// if any: for example the [`Error::InvalidStoredForm`] of a stored-form column of the
    /// wrong length, which diesel reports while loading a row as its own
    /// `DeserializationError`.
    ///
    /// ```
    /// use jarvis_crypt::{Error, ErrorKind, Nonce};
    ///
    /// // What diesel returns when a row's IV column holds 8 bytes.
    /// let loading = Nonce::new(vec![0; 8]).map_err(|e| {
    ///     diesel::result::Error::DeserializationError(Box::new(e))
    /// });
    /// let diesel_error = loading.unwrap_err();
    /// let error = Error::find_in(&diesel_error).expect("a jarvis-crypt error");
    /// assert_eq!(error.kind(), ErrorKind::InvalidStoredForm);
    /// ```
    pub fn find_in<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e Error> {
        let mut next = Some(error);
        while let Some(current) = next {
            if let Some(found) = current.downcast_ref::<Error>() {
                return Some(found);
            }
            if let Some(found) = current.downcast_ref::<RowError>() {
                return Some(&found.error);
            }
            if let Some(diesel::result::Error::DeserializationError(inner)) =
                current.downcast_ref::<diesel::result::Error>()
                && let Some(found) = inner.downcast_ref::<Error>()
            {
                return Some(found);
            }
            next = current.source();
        }
        None
    }
}
