//! The stored form of one encrypted field and its diesel column types.
//!
//! Each column of the stored form is a newtype over bytes, mapped to the SQL type `Binary`
//! (`BYTEA` on PostgreSQL, `BLOB` on SQLite) on any diesel backend. Lengths are checked when a
//! value is loaded, so a wrong length is an [`Error::InvalidStoredForm`] before any decryption
//! is attempted. `Debug` prints lengths only.
//!
//! | type | column (default) | length |
//! |---|---|---|
//! | [`Ciphertext`] | `encrypted_<field>` | any (the plaintext's length; tag not included) |
//! | [`Nonce`] | `<field>_iv` | 12 bytes (16 accepted: legacy rows) |
//! | [`AuthTag`] | `<field>_auth_tag` | 16 bytes |
//! | [`WrappedKey`] | `<field>_data_key` | 1 to 8192 bytes, an envelope, a 20-byte data-key reference or a legacy blob |
//! | [`SearchHash`] | `<field>_hash` | 1 to 32 bytes |

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Binary;

use crate::cipher::{LEGACY_NONCE_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::keys::KeyEnvelope;

/// Longest wrapped data key accepted (real KMS blobs are about 184 bytes).
pub const MAX_WRAPPED_KEY_LEN: usize = 8192;
/// Longest search hash (a full HMAC-SHA256).
pub const MAX_SEARCH_HASH_LEN: usize = 32;

macro_rules! binary_column {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
        #[diesel(sql_type = Binary)]
        pub struct $name(Vec<u8>);

        impl $name {
            /// Wraps bytes, checking the length rule of this column.
            pub fn new(bytes: Vec<u8>) -> Result<Self> {
                let check: fn(&[u8]) -> Result<()> = $check;
                check(&bytes)?;
                Ok($name(bytes))
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The raw bytes, by value.
            pub fn into_bytes(self) -> Vec<u8> {
                self.0
            }

            /// Length in bytes.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether there are no bytes.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl TryFrom<Vec<u8>> for $name {
            type Error = Error;
            fn try_from(bytes: Vec<u8>) -> Result<Self> {
                $name::new(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({} bytes)"), self.0.len())
            }
        }

        impl<DB> ToSql<Binary, DB> for $name
        where
            DB: Backend,
            [u8]: ToSql<Binary, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                <[u8] as ToSql<Binary, DB>>::to_sql(self.0.as_slice(), out)
            }
        }

        impl<DB> FromSql<Binary, DB> for $name
        where
            DB: Backend,
            Vec<u8>: FromSql<Binary, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let raw = <Vec<u8> as FromSql<Binary, DB>>::from_sql(bytes)?;
                Ok($name::new(raw)?)
            }
        }
    };
}

binary_column!(
    /// AES-256-GCM ciphertext of one value, without its tag.
    Ciphertext,
    |_| Ok(())
);

binary_column!(
    /// The nonce (IV) of one value: 12 bytes, or 16 bytes in legacy rows.
    Nonce,
    |bytes| match bytes.len() {
        NONCE_LEN | LEGACY_NONCE_LEN => Ok(()),
        len => Err(Error::stored(format!(
            "nonce is {len} bytes, expected {NONCE_LEN} (or {LEGACY_NONCE_LEN} for legacy rows)"
        ))),
    }
);

binary_column!(
    /// The 16-byte GCM authentication tag of one value.
    AuthTag,
    |bytes| match bytes.len() {
        TAG_LEN => Ok(()),
        len => Err(Error::stored(format!(
            "authentication tag is {len} bytes, expected {TAG_LEN}"
        ))),
    }
);

binary_column!(
    /// A data key wrapped by a key provider: a self-describing envelope
    /// ([`KeyEnvelope`]) or a legacy KMS blob.
    WrappedKey,
    |bytes| {
        if bytes.len() > MAX_WRAPPED_KEY_LEN {
            return Err(Error::stored(format!(
                "wrapped data key is {} bytes, at most {MAX_WRAPPED_KEY_LEN} expected",
                bytes.len()
            )));
        }
        match crate::vault::check_reference(bytes) {
            Some(reference) => reference.map(|_| ()),
            None => KeyEnvelope::check(bytes),
        }
    }
);

binary_column!(
    /// A search hash (blind index) of a normalized value: HMAC-SHA256, possibly truncated.
    SearchHash,
    |bytes| match bytes.len() {
        1..=MAX_SEARCH_HASH_LEN => Ok(()),
        len => Err(Error::stored(format!(
            "search hash is {len} bytes, expected 1 to {MAX_SEARCH_HASH_LEN}"
        ))),
    }
);

impl WrappedKey {
    /// The parsed envelope (checked when the value was built, so this only fails for
    /// values built before a format change).
    pub fn envelope(&self) -> Result<KeyEnvelope<'_>> {
        KeyEnvelope::parse(&self.0)
    }

    /// The reference to the key vault's data key `id`, as stored in a `<field>_data_key`
    /// column by an encryptor with a [`KeyVault`](crate::KeyVault).
    pub fn reference(id: crate::DataKeyId) -> WrappedKey {
        WrappedKey(crate::vault::reference_bytes(id))
    }

    /// The id this value references, when it is a data-key reference rather than a wrapped
    /// key.
    pub fn data_key_id(&self) -> Option<crate::DataKeyId> {
        crate::vault::check_reference(&self.0).and_then(Result::ok)
    }

    /// Whether this is a bare KMS blob of the earlier implementation.
    pub fn is_legacy(&self) -> bool {
        matches!(self.envelope(), Ok(KeyEnvelope::Legacy { .. }))
    }
}

/// The stored form of one encrypted value: its four columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredField {
    /// Ciphertext without the tag.
    pub ciphertext: Ciphertext,
    /// The nonce.
    pub nonce: Nonce,
    /// The GCM tag.
    pub tag: AuthTag,
    /// The wrapped data key.
    pub data_key: WrappedKey,
}

impl StoredField {
    /// Builds a stored form from raw column bytes, checking every length.
    pub fn from_parts(
        ciphertext: Vec<u8>,
        nonce: Vec<u8>,
        tag: Vec<u8>,
        data_key: Vec<u8>,
    ) -> Result<Self> {
        Ok(StoredField {
            ciphertext: Ciphertext::new(ciphertext)?,
            nonce: Nonce::new(nonce)?,
            tag: AuthTag::new(tag)?,
            data_key: WrappedKey::new(data_key)?,
        })
    }

    /// Whether this is a legacy row: a 16-byte nonce and a bare KMS blob. Only then may a
    /// value be read without associated data.
    pub fn is_legacy(&self) -> bool {
        self.nonce.len() == LEGACY_NONCE_LEN && self.data_key.is_legacy()
    }

    /// Total bytes of the four columns.
    pub fn stored_len(&self) -> usize {
        self.ciphertext.len() + self.nonce.len() + self.tag.len() + self.data_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        assert!(Nonce::new(vec![0; 12]).is_ok());
        assert!(Nonce::new(vec![0; 16]).is_ok());
        assert!(matches!(
            Nonce::new(vec![0; 11]),
            Err(Error::InvalidStoredForm(_))
        ));
        assert!(matches!(
            AuthTag::new(vec![0; 15]),
            Err(Error::InvalidStoredForm(_))
        ));
        assert!(matches!(
            SearchHash::new(vec![]),
            Err(Error::InvalidStoredForm(_))
        ));
        assert!(matches!(
            SearchHash::new(vec![0; 33]),
            Err(Error::InvalidStoredForm(_))
        ));
        assert!(matches!(
            WrappedKey::new(vec![]),
            Err(Error::InvalidStoredForm(_))
        ));
        assert!(matches!(
            WrappedKey::new(vec![1; MAX_WRAPPED_KEY_LEN + 1]),
            Err(Error::InvalidStoredForm(_))
        ));
    }

    #[test]
    fn debug_shows_lengths_only() {
        let tag = AuthTag::new(vec![0xAB; 16]).unwrap();
        assert_eq!(format!("{tag:?}"), "AuthTag(16 bytes)");
    }
}
