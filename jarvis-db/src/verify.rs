//! Verification: decrypt every encrypted field of every row, count rows by master key and by
//! form, check search hashes, and list every failure.
//!
//! Forms: `current` (12-byte nonce, jarvis wrapped key), `legacy` (16-byte IV, bare KMS blob;
//! counted, not decrypted, not a failure), `plaintext` (a migrating column not yet encrypted),
//! `null` (a nullable field without a value). A current value that does not decrypt is a
//! failure with its error kind.
//!
//! Two more failures, each of its own kind, name the table, row and column:
//!
//! - [`SEARCH_HASH_MISMATCH`]: the stored search hash of a searchable field (its field's
//!   `SearchDescription`) is not the hash of its decrypted value under the search
//!   key (missing where the value is present, or under another key or normalizer): lookups
//!   would miss the row. Checked only with a search key; [`VerifyReport::search_hashes_checked`]
//!   says whether they were.
//! - [`PLAINTEXT_NOT_CLEARED`]: a row of a table in the migrating state holds both the
//!   ciphertext and the plaintext it replaced (written by hand, or by an old application
//!   after its migration): the plaintext should have been cleared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use diesel::QueryDsl;
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    Binding, ColumnHasher, Encryptor, ErrorKind, FieldDescription, KeyEnvelope, MasterKeyRef,
    SearchHash, SearchKey, StoredField, TableDescription,
};

use crate::db::Database;
use crate::described::{self, Form, StoredRow};
use crate::error::ModelError;
use crate::vault::VaultLookup;
use crate::with_conn;

const PAGE: i64 = 1000;

/// The failure kind of a stored search hash that is not the hash of its decrypted value.
pub const SEARCH_HASH_MISMATCH: &str = "search_hash_mismatch";

/// The failure kind of a row holding both a ciphertext and the plaintext it replaced.
pub const PLAINTEXT_NOT_CLEARED: &str = "plaintext_not_cleared";

/// Counts of one encrypted column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnReport {
    /// Values that decrypted, by master key (`id#vN` or the KMS key ARN).
    pub by_master_key: BTreeMap<String, u64>,
    /// Values in the current form (decrypted or not).
    pub current: u64,
    /// Legacy values.
    pub legacy: u64,
    /// Rows still holding plaintext.
    pub plaintext: u64,
    /// Rows without a value.
    pub null: u64,
    /// Values that failed.
    pub failed: u64,
    /// Values whose stored search hash is not the hash of the value (when hashes are checked).
    pub search_hash_mismatches: u64,
    /// Rows holding both the ciphertext and the plaintext it replaced.
    pub plaintext_not_cleared: u64,
}

/// One value that failed to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Table.
    pub table: &'static str,
    /// Row id.
    pub id: i64,
    /// The column at fault: the ciphertext column; the search-hash column for
    /// [`SEARCH_HASH_MISMATCH`]; the plaintext column for [`PLAINTEXT_NOT_CLEARED`].
    pub column: &'static str,
    /// The error's kind ([`ErrorKind::as_str`], [`SEARCH_HASH_MISMATCH`] or
    /// [`PLAINTEXT_NOT_CLEARED`]).
    pub error_kind: &'static str,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per (table, column).
    pub columns: BTreeMap<(&'static str, &'static str), ColumnReport>,
    /// Every failure.
    pub failures: Vec<Failure>,
    /// Whether search hashes were checked: `false` without a search key, when only the values
    /// were.
    pub search_hashes_checked: bool,
}

impl VerifyReport {
    /// Whether every value verified (legacy and plaintext rows are not failures).
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One value to check.
struct Entry {
    table: &'static TableDescription,
    field: &'static FieldDescription,
    row: Arc<StoredRow>,
    index: usize,
}

impl Entry {
    fn value(&self) -> &described::StoredValue {
        &self.row.values[self.index]
    }

    /// The plaintext column, when the row holds a value in it.
    fn plaintext(&self) -> Option<&'static str> {
        self.field
            .migrating_from
            .filter(|_| self.value().plaintext.is_some())
    }
}

/// Verifies every table of `tables` (the models' descriptions,
/// [`EncryptedTable::table`](jarvis_crypt::EncryptedTable::table)), or only the one named
/// `only`, checking search hashes under `search_key` when one is given (for instance the key
/// stored in `jarvis_keys`, [`load_search_key`](crate::keys::load_search_key)), else under the
/// encryptor's, and not at all without either.
pub async fn verify_tables(
    db: &Database,
    encryptor: &Encryptor,
    tables: &[&'static TableDescription],
    only: Option<&str>,
    search_key: Option<&SearchKey>,
) -> Result<VerifyReport, ModelError> {
    let tables = select(tables, only)?;
    let mut hashes = match search_key {
        Some(key) => Hashes::Key(key, BTreeMap::new()),
        None if encryptor.search_key_fingerprint().is_some() => Hashes::Encryptor(encryptor),
        None => Hashes::Off,
    };
    let mut report = VerifyReport {
        search_hashes_checked: !matches!(hashes, Hashes::Off),
        ..VerifyReport::default()
    };
    let mut vault = VaultLookup::default();
    for table in tables {
        for field in &table.fields {
            report
                .columns
                .entry((table.name.as_str(), field.ciphertext))
                .or_default();
        }
        let mut after = i64::MIN;
        loop {
            let (entries, last) = page(db, table, after).await?;
            let Some(last) = last else { break };
            after = last;
            vault.resolve(db, stored_keys(&entries)).await?;
            check(encryptor, &mut hashes, &vault, entries, &mut report).await;
        }
    }
    Ok(report)
}

/// `tables`, or the one named `only` (refused when unknown).
fn select(
    tables: &[&'static TableDescription],
    only: Option<&str>,
) -> Result<Vec<&'static TableDescription>, ModelError> {
    let Some(only) = only else {
        return Ok(tables.to_vec());
    };
    match tables.iter().find(|t| t.name == only) {
        Some(table) => Ok(vec![*table]),
        None => {
            let known: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
            Err(jarvis_crypt::Error::Configuration(format!(
                "unknown table `{only}`; known: {}",
                known.join(", ")
            ))
            .into())
        }
    }
}

/// How search hashes are computed, if at all.
enum Hashes<'a> {
    Off,
    Encryptor(&'a Encryptor),
    /// A key of its own, with each column's hasher derived once.
    Key(
        &'a SearchKey,
        BTreeMap<(&'static str, &'static str), ColumnHasher>,
    ),
}

impl Hashes<'_> {
    /// The hash of `value` for `field` of `table`; `None` when hashes are not checked.
    fn hash(
        &mut self,
        table: &TableDescription,
        field: &FieldDescription,
        value: &str,
    ) -> Option<SearchHash> {
        let search = field.search?;
        let value = &*field.search_input(value);
        match self {
            Hashes::Off => None,
            Hashes::Encryptor(encryptor) => encryptor
                .search_hash(table.bound_name, search.bound_column, search.spec, value)
                .ok(),
            Hashes::Key(key, hashers) => Some(
                hashers
                    .entry((table.bound_name, search.bound_column))
                    .or_insert_with(|| {
                        key.column(table.bound_name, search.bound_column, search.spec)
                    })
                    .hash(value),
            ),
        }
    }
}

/// A page of `table`'s values after id `after`: the entries and the last id (`None`: the end).
async fn page(
    db: &Database,
    table: &'static TableDescription,
    after: i64,
) -> Result<(Vec<Entry>, Option<i64>), ModelError> {
    let mut conn = db.get().await?;
    let rows = described::page(&mut conn, table, after, PAGE).await?;
    let last = rows.last().map(|r| r.id);
    let mut entries = Vec::new();
    for row in rows {
        let row = Arc::new(row);
        for (index, field) in table.fields.iter().enumerate() {
            entries.push(Entry {
                table,
                field,
                row: Arc::clone(&row),
                index,
            });
        }
    }
    Ok((entries, last))
}

/// The wrapped keys (and references) of a page's stored values.
fn stored_keys(entries: &[Entry]) -> impl Iterator<Item = &[u8]> {
    entries
        .iter()
        .filter_map(|entry| entry.value().data_key.as_deref())
}

async fn check(
    encryptor: &Encryptor,
    hashes: &mut Hashes<'_>,
    vault: &VaultLookup,
    entries: Vec<Entry>,
    report: &mut VerifyReport,
) {
    let mut current = Vec::new();
    for entry in entries {
        let (table, column) = (entry.table.name.as_str(), entry.field.ciphertext);
        let counts = report.columns.entry((table, column)).or_default();
        let form = entry.value().form();
        if let (Some(plaintext), Form::Stored(_)) = (entry.plaintext(), &form) {
            counts.plaintext_not_cleared += 1;
            report.failures.push(Failure {
                table,
                id: entry.row.id,
                column: plaintext,
                error_kind: PLAINTEXT_NOT_CLEARED,
            });
        }
        match form {
            Form::Invalid(e) => {
                counts.failed += 1;
                report.failures.push(Failure {
                    table,
                    id: entry.row.id,
                    column,
                    error_kind: e.kind().as_str(),
                });
            }
            Form::Empty if entry.plaintext().is_some() => counts.plaintext += 1,
            Form::Empty => counts.null += 1,
            Form::Stored(s) if s.is_legacy() => counts.legacy += 1,
            Form::Stored(s) => {
                counts.current += 1;
                current.push((entry, s));
            }
        }
    }
    let items: Vec<(Binding<'_>, &StoredField)> = current
        .iter()
        .map(|(e, stored)| (described::binding(e.table, e.field, &e.row), stored))
        .collect();
    let results = encryptor.decrypt_many(&items).await;
    for ((entry, stored), result) in current.iter().zip(results) {
        let (table, column) = (entry.table.name.as_str(), entry.field.ciphertext);
        let counts = report.columns.entry((table, column)).or_default();
        match result {
            Ok(plaintext) => {
                if let Some((column, kind)) = check_hash(hashes, entry, &plaintext) {
                    counts.search_hash_mismatches += u64::from(kind == SEARCH_HASH_MISMATCH);
                    report.failures.push(Failure {
                        table,
                        id: entry.row.id,
                        column,
                        error_kind: kind,
                    });
                }
                let key = match vault.master_key(&stored.data_key) {
                    Some(master_key) => master_key.to_string(),
                    None => "unknown".to_owned(),
                };
                *counts.by_master_key.entry(key).or_default() += 1;
            }
            Err(e) => {
                counts.failed += 1;
                report.failures.push(Failure {
                    table,
                    id: entry.row.id,
                    column,
                    error_kind: e.kind().as_str(),
                });
            }
        }
    }
}

/// The failure, if any, of a searchable value's stored hash: (column, kind).
fn check_hash(
    hashes: &mut Hashes<'_>,
    entry: &Entry,
    plaintext: &[u8],
) -> Option<(&'static str, &'static str)> {
    let search = entry.field.search?;
    let Ok(text) = std::str::from_utf8(plaintext) else {
        // A searchable field is text; a value that is not cannot have the right hash.
        return Some((entry.field.ciphertext, ErrorKind::InvalidPlaintext.as_str()));
    };
    let expected = hashes.hash(entry.table, entry.field, text)?;
    (entry.value().hash.as_deref() != Some(expected.as_bytes()))
        .then_some((search.column, SEARCH_HASH_MISMATCH))
}

/// Where a master key is still needed: wrapped-key columns and recorded backups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Values per (table, column) whose data key is wrapped under the key.
    pub columns: BTreeMap<(&'static str, &'static str), u64>,
    /// Recorded backups that need the key, by their record: the key of the stream's data key
    /// (`master_key_id`), or one of the keys their rows need (`rows_master_key_ids`). What a
    /// backup's file says is not read here (`jarvis retire-key` reads it).
    pub backups: u64,
    /// Keys in `jarvis_keys` (the stored search key) wrapped under the key.
    pub search_keys: u64,
    /// Legacy values: their bare KMS blobs do not name a key, so any KMS key may be theirs.
    pub legacy: u64,
}

impl KeyUsage {
    /// Whether nothing needs the key.
    pub fn is_unused(&self) -> bool {
        self.backups == 0
            && self.search_keys == 0
            && self.legacy == 0
            && self.columns.values().all(|n| *n == 0)
    }
}

/// Counts what still needs the master key `key_id` (an id or ARN as stored in wrapped keys)
/// in `tables`, the key vault, the stored search key and the recorded backups, reading the
/// envelopes only: nothing is decrypted and no provider is called. A value that references a
/// vault key counts under its column when that key is wrapped under `key_id`; the vault's live
/// keys under `key_id`, referenced or not, count under [`VAULT_COLUMN`]. Revoked keys need no
/// master key and are not counted.
pub async fn key_usage_in(
    db: &Database,
    tables: &[&'static TableDescription],
    key_id: &str,
) -> Result<KeyUsage, ModelError> {
    let mut usage = KeyUsage::default();
    each_value(db, tables, |entry, form, vault| {
        let Form::Stored(stored) = form else { return };
        if stored.is_legacy() {
            usage.legacy += 1;
        }
        if vault
            .master_key(&stored.data_key)
            .is_some_and(|master_key| master_key.key_id == key_id)
        {
            *usage
                .columns
                .entry((entry.table.name.as_str(), entry.field.ciphertext))
                .or_default() += 1;
        }
    })
    .await?;
    // The vault's live keys under the key, referenced or not: a writer may still hold one
    // as its active key.
    let vault_keys = crate::vault::live_keys_under(db, key_id).await?;
    if vault_keys > 0 {
        usage.columns.insert(VAULT_COLUMN, vault_keys);
    }
    usage.search_keys = stored_search_keys(db)
        .await?
        .iter()
        .filter(|bytes| {
            matches!(KeyEnvelope::parse(bytes),
                Ok(KeyEnvelope::Jarvis { master_key, .. }) if master_key.key_id == key_id)
        })
        .count() as u64;
    usage.backups = crate::backups::backup_keys(db)
        .await?
        .iter()
        .filter(|b| b.names(key_id))
        .count() as u64;
    Ok(usage)
}

/// The (table, column) under which [`KeyUsage::columns`] counts the key vault's live keys
/// wrapped under the master key.
pub const VAULT_COLUMN: (&str, &str) = ("jarvis_data_keys", "wrapped");

/// Calls `f` with every value of every row of `tables`, and the vault keys of its page.
async fn each_value(
    db: &Database,
    tables: &[&'static TableDescription],
    mut f: impl FnMut(&Entry, Form, &VaultLookup),
) -> Result<(), ModelError> {
    let mut vault = VaultLookup::default();
    for table in tables {
        let mut after = i64::MIN;
        loop {
            let (entries, last) = page(db, table, after).await?;
            let Some(last) = last else { break };
            after = last;
            vault.resolve(db, stored_keys(&entries)).await?;
            for entry in entries {
                let form = entry.value().form();
                f(&entry, form, &vault);
            }
        }
    }
    Ok(())
}

async fn stored_search_keys(db: &Database) -> Result<Vec<Vec<u8>>, ModelError> {
    let mut conn = db.get().await?;
    Ok(with_conn!(&mut conn, |c| crate::schema::jarvis_keys::table
        .select(crate::schema::jarvis_keys::wrapped_key)
        .load(c)
        .await?))
}

/// The master keys that the rows of `tables` need: every master key named by a wrapped data
/// key of an encrypted column, by a live key of the key vault (`jarvis_data_keys`, referenced
/// or not) or by the stored search key (`jarvis_keys`).
///
/// Like [`key_usage_in`], it reads the envelopes only: nothing is decrypted and no provider
/// is called. Legacy values (bare KMS blobs) name no key and are not counted. A backup's
/// manifest lists these keys, so that whoever restores it knows which keys it needs.
pub async fn master_keys_in_use_in(
    db: &Database,
    tables: &[&'static TableDescription],
) -> Result<BTreeSet<MasterKeyRef>, ModelError> {
    let mut keys = BTreeSet::new();
    each_value(db, tables, |_, form, vault| {
        if let Form::Stored(stored) = form
            && let Some(master_key) = vault.master_key(&stored.data_key)
        {
            keys.insert(master_key);
        }
    })
    .await?;
    keys.extend(crate::vault::master_keys(db).await?);
    for bytes in &stored_search_keys(db).await? {
        if let Ok(KeyEnvelope::Jarvis { master_key, .. }) = KeyEnvelope::parse(bytes) {
            keys.insert(master_key);
        }
    }
    Ok(keys)
}
