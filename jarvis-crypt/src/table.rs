//! What `#[derive(Encrypted)]` knows of a model's table, for the tools that work on any
//! model (migrating plaintext, rotation, verification, key usage): [`EncryptedTable`].
//!
//! The description is generated from the derive's attributes and the diesel `table!`: SQL
//! names come from diesel (`Column::NAME`, the rendered primary key), so a column renamed with
//! `#[sql_name]` is described by the name SQL knows, and the names bound into each value's
//! associated data (the table's name or `aad_table`, the ciphertext column's name as the
//! derive spells it) are kept apart from them. Nothing here restates a table by hand.

use std::fmt;

use crate::model::Encrypted;
use crate::search::SearchSpec;

/// A model whose table `#[derive(Encrypted)]` describes.
pub trait EncryptedTable: Encrypted {
    /// The description of the model's table and encrypted fields.
    fn table() -> &'static TableDescription;
}

/// How an encrypted field's value is encoded before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueKind {
    /// A `String`: its UTF-8 bytes.
    Text,
    /// A `Vec<u8>`: as it is.
    Bytes,
    /// A serde type (`json`): its JSON.
    Json,
}

/// How a row key is bound into the associated data (see [`RowKey`](crate::RowKey)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RowKeyKind {
    /// An integer column, bound as a 64-bit integer.
    Int,
    /// A text column.
    Text,
    /// A binary column.
    Bytes,
}

/// A field's search hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SearchDescription {
    /// The hash column, as SQL knows it.
    pub column: &'static str,
    /// The column name the hash key is derived for (the derive's spelling).
    pub bound_column: &'static str,
    /// Normalizers and truncation.
    pub spec: SearchSpec,
}

/// One encrypted field and its stored-form columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FieldDescription {
    /// The model's field.
    pub field: &'static str,
    /// How its value is encoded.
    pub kind: ValueKind,
    /// Whether the field is an `Option` (its columns are nullable).
    pub nullable: bool,
    /// The ciphertext column, as SQL knows it.
    pub ciphertext: &'static str,
    /// The nonce column.
    pub iv: &'static str,
    /// The tag column.
    pub tag: &'static str,
    /// The wrapped data-key column.
    pub data_key: &'static str,
    /// The ciphertext column's name as bound into the value's associated data.
    pub bound_column: &'static str,
    /// The search hash, if the field has one.
    pub search: Option<SearchDescription>,
    /// The plaintext column of a field in the migrating state.
    pub migrating_from: Option<&'static str>,
    /// The search hash's normalizer of the application's own (`normalize_with`), if any.
    pub normalize_with: Option<crate::CustomNormalizer>,
}

impl FieldDescription {
    /// What this field's search hash of `value` is computed over (`value` itself unless the
    /// field has a [`normalize_with`](Self::normalize_with)): pass it to
    /// [`Encryptor::search_hash`](crate::Encryptor::search_hash) with the search spec.
    pub fn search_input<'a>(&self, value: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.search {
            Some(search) => crate::search::search_input(search.spec, self.normalize_with, value),
            None => std::borrow::Cow::Borrowed(value),
        }
    }
}

/// A model's table, as the derive describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableDescription {
    /// The model's Rust name.
    pub model: &'static str,
    /// The table's SQL name (schema-qualified when diesel's is, `schema.table`).
    pub name: String,
    /// The table name bound into each value's associated data and the search keys.
    pub bound_name: &'static str,
    /// The primary key's columns, as SQL knows them (one for a single-column key).
    pub primary_key: Vec<String>,
    /// The column bound as the row key (`bind = field`), or `None` for `bind = none`.
    pub row_key: Option<&'static str>,
    /// How the row key is bound (`None` for `bind = none`).
    pub row_key_kind: Option<RowKeyKind>,
    /// The timestamp column of the time the row's values were last encrypted
    /// (`rotated_at = column`): `rotate --older-than` reads it and the jobs that give values
    /// new data keys set it. `None`: `--older-than` is refused for the table.
    pub rotated_at: Option<&'static str>,
    /// The row's creation time (`created_at = column`): the age `--older-than` reads of a
    /// row whose `rotated_at` is NULL. `None`: such a row counts as old.
    pub created_at: Option<&'static str>,
    /// An integer column the jobs increment when they give the row's values new data keys
    /// (`rotation_count = column`).
    pub rotation_count: Option<&'static str>,
    /// The encrypted fields, in declaration order.
    pub fields: Vec<FieldDescription>,
}

/// Something about a model's binding that weakens it or that the jobs refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingProblem {
    /// The bound row key is not the table's primary key (a unique column, say): values can
    /// follow a changed or re-used key.
    RowKeyNotPrimaryKey {
        /// The bound column.
        row_key: &'static str,
        /// The primary key's columns.
        primary_key: Vec<String>,
    },
    /// The primary key has several columns; the jobs page and lock by one.
    CompositePrimaryKey {
        /// The primary key's columns.
        primary_key: Vec<String>,
    },
}

impl fmt::Display for BindingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingProblem::RowKeyNotPrimaryKey {
                row_key,
                primary_key,
            } => write!(
                f,
                "the row key bound into the associated data (`{row_key}`) is not the primary \
                 key (`{}`): a value can follow a changed or re-used `{row_key}` to another row",
                primary_key.join(", ")
            ),
            BindingProblem::CompositePrimaryKey { primary_key } => write!(
                f,
                "the primary key has several columns (`{}`); the jobs need a single-column key",
                primary_key.join(", ")
            ),
        }
    }
}

impl TableDescription {
    /// The single primary-key column, or `None` for a composite key.
    pub fn single_primary_key(&self) -> Option<&str> {
        match self.primary_key.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// What weakens the model's binding, or what the jobs refuse (see [`BindingProblem`]).
    pub fn binding_problems(&self) -> Vec<BindingProblem> {
        let mut problems = Vec::new();
        if self.primary_key.len() > 1 {
            problems.push(BindingProblem::CompositePrimaryKey {
                primary_key: self.primary_key.clone(),
            });
        }
        if let Some(row_key) = self.row_key
            && self.primary_key.as_slice() != [row_key]
        {
            problems.push(BindingProblem::RowKeyNotPrimaryKey {
                row_key,
                primary_key: self.primary_key.clone(),
            });
        }
        problems
    }
}

/// Splits diesel's rendering of a column list (`"t"."a", "s"."t"."b"`, identifiers quoted with
/// `"` and doubled inside) into (table, column) pairs.
pub(crate) fn parse_columns(sql: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut parts: Vec<String> = Vec::new();
    let mut chars = sql.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next()? != '"' {
            return None;
        }
        let mut ident = String::new();
        loop {
            match chars.next()? {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    ident.push('"');
                }
                '"' => break,
                c => ident.push(c),
            }
        }
        parts.push(ident);
        match chars.next() {
            Some('.') => continue,
            end => {
                let column = parts.pop()?;
                if parts.is_empty() {
                    return None;
                }
                out.push((parts.join("."), column));
                parts.clear();
                match end {
                    None => return Some(out),
                    Some(',') => continue,
                    Some(_) => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_columns;

    #[test]
    fn column_lists_parse() {
        assert_eq!(
            parse_columns(r#""users"."id""#),
            Some(vec![("users".into(), "id".into())])
        );
        assert_eq!(
            parse_columns(r#""billing"."invoices"."a", "billing"."invoices"."b""#),
            Some(vec![
                ("billing.invoices".into(), "a".into()),
                ("billing.invoices".into(), "b".into())
            ])
        );
        assert_eq!(
            parse_columns(r#""we""ird"."c""#),
            Some(vec![("we\"ird".into(), "c".into())])
        );
        for bad in ["", "users.id", r#""id""#, r#""t"."c" x"#, r#""t"."c"#] {
            assert_eq!(parse_columns(bad), None, "{bad}");
        }
    }
}
