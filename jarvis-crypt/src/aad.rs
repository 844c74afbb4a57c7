//! Associated data: what binds a ciphertext to its place.
//!
//! Every value is sealed with associated data that names its table, its ciphertext column and
//! its row key, so a ciphertext copied to another row, column or table no longer
//! authenticates. The encoding is canonical and length-prefixed, so no two places share
//! an encoding:
//!
//! ```text
//! u8      format version (1)
//! u32 BE  length of the table name,  then the table name (UTF-8)
//! u32 BE  length of the column name, then the column name (UTF-8)
//! u8      row-key tag: 0 = none, 1 = integer, 2 = text, 3 = bytes
//!         integer: i64 BE (8 bytes); text and bytes: u32 BE length, then the bytes
//! ```
//!
//! `none` is the weaker binding of models that do not know their row key before the first
//! write (`#[encrypted(bind = none)]`): such a value can be moved between rows of one column
//! unnoticed.

use std::fmt;

/// Version byte at the head of the encoding.
pub const AAD_VERSION: u8 = 1;

/// The row key bound into the associated data.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKey<'a> {
    /// No row key: the weaker binding (table and column only).
    None,
    /// An integer primary key.
    Int(i64),
    /// A text primary key.
    Text(&'a str),
    /// A binary primary key (a UUID, for example).
    Bytes(&'a [u8]),
}

impl fmt::Debug for RowKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowKey::None => f.write_str("None"),
            RowKey::Int(id) => write!(f, "Int({id})"),
            RowKey::Text(id) => write!(f, "Text({id:?})"),
            RowKey::Bytes(id) => write!(f, "Bytes({} bytes)", id.len()),
        }
    }
}

impl From<i64> for RowKey<'_> {
    fn from(id: i64) -> Self {
        RowKey::Int(id)
    }
}

impl From<i32> for RowKey<'_> {
    fn from(id: i32) -> Self {
        RowKey::Int(id.into())
    }
}

impl<'a> From<&'a str> for RowKey<'a> {
    fn from(id: &'a str) -> Self {
        RowKey::Text(id)
    }
}

impl<'a> From<&'a String> for RowKey<'a> {
    fn from(id: &'a String) -> Self {
        RowKey::Text(id)
    }
}

impl<'a> From<&'a [u8]> for RowKey<'a> {
    fn from(id: &'a [u8]) -> Self {
        RowKey::Bytes(id)
    }
}

/// The place of one encrypted value: table, ciphertext column and row key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding<'a> {
    /// Table name, as in SQL.
    pub table: &'a str,
    /// Name of the ciphertext column (for example `encrypted_email`).
    pub column: &'a str,
    /// The row's key.
    pub row: RowKey<'a>,
}

impl<'a> Binding<'a> {
    /// A binding of `table`, `column` and `row`.
    pub fn new(table: &'a str, column: &'a str, row: impl Into<RowKey<'a>>) -> Self {
        Binding {
            table,
            column,
            row: row.into(),
        }
    }

    /// The canonical associated-data encoding of this place (see the module docs).
    pub fn associated_data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_associated_data(&mut out);
        out
    }

    /// Writes [`associated_data`](Self::associated_data) into `out`, replacing what it held
    /// (a bulk decrypt reuses one buffer).
    pub fn write_associated_data(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(1 + 8 + self.table.len() + self.column.len() + 13);
        out.push(AAD_VERSION);
        put_bytes(out, self.table.as_bytes());
        put_bytes(out, self.column.as_bytes());
        match self.row {
            RowKey::None => out.push(0),
            RowKey::Int(id) => {
                out.push(1);
                out.extend_from_slice(&id.to_be_bytes());
            }
            RowKey::Text(id) => {
                out.push(2);
                put_bytes(out, id.as_bytes());
            }
            RowKey::Bytes(id) => {
                out.push(3);
                put_bytes(out, id);
            }
        }
    }
}

/// Appends `bytes` with a u32 big-endian length prefix.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Names and keys longer than 4 GiB cannot occur in SQL; saturating keeps this total.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_length_prefixed_and_distinct() {
        let a = Binding::new("users", "encrypted_email", 1i64).associated_data();
        assert_eq!(
            a,
            [
                &[1u8][..],
                &[0, 0, 0, 5],
                b"users",
                &[0, 0, 0, 15],
                b"encrypted_email",
                &[1, 0, 0, 0, 0, 0, 0, 0, 1],
            ]
            .concat()
        );
        // Shifting a byte between table and column changes the encoding.
        let b = Binding::new("user", "sencrypted_email", 1i64).associated_data();
        assert_ne!(a, b);
        let c = Binding::new("users", "encrypted_email", "1").associated_data();
        assert_ne!(a, c);
        let d = Binding::new("users", "encrypted_email", RowKey::None).associated_data();
        assert_ne!(a, d);
    }
}
