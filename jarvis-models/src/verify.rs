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
//! - [`SEARCH_HASH_MISMATCH`]: the stored search hash of a searchable field (the model's
//!   [`Encrypted::SEARCH_COLUMNS`]) is not the hash of its decrypted value under the search
//!   key (missing where the value is present, or under another key or normalizer): lookups
//!   would miss the row. Checked only with a search key; [`VerifyReport::search_hashes_checked`]
//!   says whether they were.
//! - [`PLAINTEXT_NOT_CLEARED`]: a row of a table in the migrating state holds both the
//!   ciphertext and the plaintext it replaced (written by hand, or by an old application
//!   after its migration): the plaintext should have been cleared.

use std::collections::{BTreeMap, BTreeSet};

use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    Binding, ColumnHasher, Encrypted, Encryptor, ErrorKind, KeyEnvelope, MasterKeyRef,
    SearchColumn, SearchHash, SearchKey, StoredField,
};

use crate::db::Database;
use crate::error::ModelError;
use crate::models::{
    ApiKey, ApiKeyRow, EncryptedBackup, EncryptedBackupRow, OAuthToken, OAuthTokenRow, User,
    UserRow,
};
use crate::schema::{api_keys, encrypted_backups, oauth_tokens, users};
use crate::with_conn;

/// The tables `verify` knows, with their encrypted (ciphertext) columns.
pub const TABLES: [(&str, &[&str]); 4] = [
    ("users", &["encrypted_email"]),
    ("api_keys", &["encrypted_key"]),
    (
        "oauth_tokens",
        &["encrypted_access_token", "encrypted_refresh_token"],
    ),
    ("encrypted_backups", &["encrypted_data"]),
];

const PAGE: i64 = 1000;

/// The failure kind of a stored search hash that is not the hash of its decrypted value.
pub const SEARCH_HASH_MISMATCH: &str = "search_hash_mismatch";

/// The failure kind of a row holding both a ciphertext and the plaintext it replaced.
pub const PLAINTEXT_NOT_CLEARED: &str = "plaintext_not_cleared";

/// The searchable field stored in `table`.`ciphertext`, as its model describes it.
fn search_column(table: &str, ciphertext: &str) -> Option<SearchColumn> {
    [
        User::SEARCH_COLUMNS,
        ApiKey::SEARCH_COLUMNS,
        OAuthToken::SEARCH_COLUMNS,
        EncryptedBackup::SEARCH_COLUMNS,
    ]
    .into_iter()
    .flatten()
    .find(|c| c.table == table && c.ciphertext == ciphertext)
    .copied()
}

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
    table: &'static str,
    column: &'static str,
    id: i64,
    stored: Form,
    /// The plaintext column, when the row holds a value in it.
    plaintext: Option<&'static str>,
    /// The stored search hash, for a searchable field.
    hash: Option<Option<SearchHash>>,
}

/// The four columns of a value: a stored form, or none; partly NULL columns are neither.
struct Form {
    value: Option<StoredField>,
    partial: bool,
}

fn stored(
    ct: Option<jarvis_crypt::Ciphertext>,
    iv: Option<jarvis_crypt::Nonce>,
    tag: Option<jarvis_crypt::AuthTag>,
    dk: Option<jarvis_crypt::WrappedKey>,
) -> Form {
    let (value, partial) = match (ct, iv, tag, dk) {
        (Some(ciphertext), Some(nonce), Some(tag), Some(data_key)) => (
            Some(StoredField {
                ciphertext,
                nonce,
                tag,
                data_key,
            }),
            false,
        ),
        (None, None, None, None) => (None, false),
        _ => (None, true),
    };
    Form { value, partial }
}

/// Verifies every table, or only `only`, checking search hashes under the encryptor's search
/// key (not at all without one).
pub async fn verify(
    db: &Database,
    encryptor: &Encryptor,
    only: Option<&str>,
) -> Result<VerifyReport, ModelError> {
    verify_with_search_key(db, encryptor, only, None).await
}

/// [`verify`], checking search hashes under `search_key` when one is given (for instance the
/// key stored in `jarvis_keys`, [`load_search_key`](crate::keys::load_search_key)), else under
/// the encryptor's.
pub async fn verify_with_search_key(
    db: &Database,
    encryptor: &Encryptor,
    only: Option<&str>,
    search_key: Option<&SearchKey>,
) -> Result<VerifyReport, ModelError> {
    if let Some(table) = only
        && !TABLES.iter().any(|(t, _)| *t == table)
    {
        let known: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        return Err(jarvis_crypt::Error::Configuration(format!(
            "unknown table `{table}`; known: {}",
            known.join(", ")
        ))
        .into());
    }
    let mut hashes = match search_key {
        Some(key) => Hashes::Key(key, BTreeMap::new()),
        None if encryptor.search_key_fingerprint().is_some() => Hashes::Encryptor(encryptor),
        None => Hashes::Off,
    };
    let mut report = VerifyReport {
        search_hashes_checked: !matches!(hashes, Hashes::Off),
        ..VerifyReport::default()
    };
    for (table, columns) in TABLES {
        if only.is_some_and(|t| t != table) {
            continue;
        }
        for column in columns {
            report.columns.entry((table, column)).or_default();
        }
        let mut after = 0i64;
        loop {
            let (entries, last) = page(db, table, after).await?;
            let Some(last) = last else { break };
            after = last;
            check(encryptor, &mut hashes, entries, &mut report).await;
        }
    }
    Ok(report)
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
    /// The hash of `value` in `column`; `None` when hashes are not checked.
    fn hash(&mut self, column: &SearchColumn, value: &str) -> Option<SearchHash> {
        match self {
            Hashes::Off => None,
            Hashes::Encryptor(encryptor) => encryptor
                .search_hash(column.table, column.hash, column.spec, value)
                .ok(),
            Hashes::Key(key, hashers) => Some(
                hashers
                    .entry((column.table, column.hash))
                    .or_insert_with(|| key.column(column.table, column.hash, column.spec))
                    .hash(value),
            ),
        }
    }
}

async fn page(
    db: &Database,
    table: &'static str,
    after: i64,
) -> Result<(Vec<Entry>, Option<i64>), ModelError> {
    let mut conn = db.get().await?;
    let mut entries = Vec::new();
    let last;
    match table {
        "users" => {
            let rows: Vec<UserRow> = with_conn!(&mut conn, |c| users::table
                .filter(users::id.gt(after))
                .order(users::id)
                .limit(PAGE)
                .select(UserRow::as_select())
                .load(c)
                .await?);
            last = rows.last().map(|r| r.id);
            for r in rows {
                entries.push(Entry {
                    table,
                    column: "encrypted_email",
                    id: r.id,
                    plaintext: r.email.is_some().then_some("email"),
                    hash: Some(r.email_hash),
                    stored: stored(
                        r.encrypted_email,
                        r.email_iv,
                        r.email_auth_tag,
                        r.email_data_key,
                    ),
                });
            }
        }
        "api_keys" => {
            let rows: Vec<ApiKeyRow> = with_conn!(&mut conn, |c| api_keys::table
                .filter(api_keys::id.gt(after))
                .order(api_keys::id)
                .limit(PAGE)
                .select(ApiKeyRow::as_select())
                .load(c)
                .await?);
            last = rows.last().map(|r| r.id);
            for r in rows {
                entries.push(Entry {
                    table,
                    column: "encrypted_key",
                    id: r.id,
                    plaintext: None,
                    hash: Some(r.key_hash),
                    stored: stored(
                        Some(r.encrypted_key),
                        Some(r.key_iv),
                        Some(r.key_auth_tag),
                        Some(r.key_data_key),
                    ),
                });
            }
        }
        "oauth_tokens" => {
            let rows: Vec<OAuthTokenRow> = with_conn!(&mut conn, |c| oauth_tokens::table
                .filter(oauth_tokens::id.gt(after))
                .order(oauth_tokens::id)
                .limit(PAGE)
                .select(OAuthTokenRow::as_select())
                .load(c)
                .await?);
            last = rows.last().map(|r| r.id);
            for r in rows {
                entries.push(Entry {
                    table,
                    column: "encrypted_access_token",
                    id: r.id,
                    plaintext: None,
                    hash: None,
                    stored: stored(
                        Some(r.encrypted_access_token),
                        Some(r.access_token_iv),
                        Some(r.access_token_auth_tag),
                        Some(r.access_token_data_key),
                    ),
                });
                entries.push(Entry {
                    table,
                    column: "encrypted_refresh_token",
                    id: r.id,
                    plaintext: None,
                    hash: None,
                    stored: stored(
                        r.encrypted_refresh_token,
                        r.refresh_token_iv,
                        r.refresh_token_auth_tag,
                        r.refresh_token_data_key,
                    ),
                });
            }
        }
        _ => {
            let rows: Vec<EncryptedBackupRow> = with_conn!(&mut conn, |c| encrypted_backups::table
                .filter(encrypted_backups::id.gt(after))
                .order(encrypted_backups::id)
                .limit(PAGE)
                .select(EncryptedBackupRow::as_select())
                .load(c)
                .await?);
            last = rows.last().map(|r| r.id);
            for r in rows {
                entries.push(Entry {
                    table,
                    column: "encrypted_data",
                    id: r.id,
                    plaintext: None,
                    hash: None,
                    stored: stored(
                        r.encrypted_data,
                        r.data_iv,
                        r.data_auth_tag,
                        r.data_data_key,
                    ),
                });
            }
        }
    }
    Ok((entries, last))
}

async fn check(
    encryptor: &Encryptor,
    hashes: &mut Hashes<'_>,
    entries: Vec<Entry>,
    report: &mut VerifyReport,
) {
    let mut current = Vec::new();
    for entry in entries {
        let counts = report
            .columns
            .entry((entry.table, entry.column))
            .or_default();
        if let (Some(plaintext), Some(_)) = (entry.plaintext, &entry.stored.value) {
            counts.plaintext_not_cleared += 1;
            report.failures.push(Failure {
                table: entry.table,
                id: entry.id,
                column: plaintext,
                error_kind: PLAINTEXT_NOT_CLEARED,
            });
        }
        if entry.stored.partial {
            counts.failed += 1;
            report.failures.push(Failure {
                table: entry.table,
                id: entry.id,
                column: entry.column,
                error_kind: "invalid_stored_form",
            });
            continue;
        }
        match &entry.stored.value {
            None if entry.plaintext.is_some() => counts.plaintext += 1,
            None => counts.null += 1,
            Some(s) if s.is_legacy() => counts.legacy += 1,
            Some(_) => {
                counts.current += 1;
                current.push(entry);
            }
        }
    }
    let items: Vec<(Binding<'_>, &StoredField)> = current
        .iter()
        .filter_map(|e| {
            let stored = e.stored.value.as_ref()?;
            Some((Binding::new(e.table, e.column, e.id), stored))
        })
        .collect();
    let results = encryptor.decrypt_many(&items).await;
    for (entry, result) in current.iter().zip(results) {
        let counts = report
            .columns
            .entry((entry.table, entry.column))
            .or_default();
        match result {
            Ok(plaintext) => {
                if let Some((column, kind)) = check_hash(hashes, entry, &plaintext) {
                    counts.search_hash_mismatches += u64::from(kind == SEARCH_HASH_MISMATCH);
                    report.failures.push(Failure {
                        table: entry.table,
                        id: entry.id,
                        column,
                        error_kind: kind,
                    });
                }
                let key = entry
                    .stored
                    .value
                    .as_ref()
                    .and_then(|s| match s.data_key.envelope() {
                        Ok(KeyEnvelope::Jarvis { master_key, .. }) => Some(master_key.to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "unknown".to_owned());
                *counts.by_master_key.entry(key).or_default() += 1;
            }
            Err(e) => {
                counts.failed += 1;
                report.failures.push(Failure {
                    table: entry.table,
                    id: entry.id,
                    column: entry.column,
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
    let stored = entry.hash.as_ref()?;
    let column = search_column(entry.table, entry.column)?;
    let Ok(text) = std::str::from_utf8(plaintext) else {
        // A searchable field is text; a value that is not cannot have the right hash.
        return Some((entry.column, ErrorKind::InvalidPlaintext.as_str()));
    };
    let expected = hashes.hash(&column, text)?;
    (stored.as_ref() != Some(&expected)).then_some((column.hash, SEARCH_HASH_MISMATCH))
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

/// Counts what still needs the master key `key_id` (an id or ARN as stored in wrapped keys),
/// reading the envelopes only: nothing is decrypted and no provider is called.
pub async fn key_usage(db: &Database, key_id: &str) -> Result<KeyUsage, ModelError> {
    let mut usage = KeyUsage::default();
    for (table, _) in TABLES {
        let mut after = 0i64;
        loop {
            let (entries, last) = page(db, table, after).await?;
            let Some(last) = last else { break };
            after = last;
            for entry in entries {
                if entry
                    .stored
                    .value
                    .as_ref()
                    .is_some_and(StoredField::is_legacy)
                {
                    usage.legacy += 1;
                }
                let needs = entry.stored.value.as_ref().is_some_and(|s| {
                    matches!(s.data_key.envelope(),
                        Ok(KeyEnvelope::Jarvis { master_key, .. }) if master_key.key_id == key_id)
                });
                if needs {
                    *usage
                        .columns
                        .entry((entry.table, entry.column))
                        .or_default() += 1;
                }
            }
        }
    }
    let mut conn = db.get().await?;
    let stored_keys: Vec<Vec<u8>> = with_conn!(&mut conn, |c| crate::schema::jarvis_keys::table
        .select(crate::schema::jarvis_keys::wrapped_key)
        .load(c)
        .await?);
    usage.search_keys = stored_keys
        .iter()
        .filter(|bytes| {
            matches!(KeyEnvelope::parse(bytes),
                Ok(KeyEnvelope::Jarvis { master_key, .. }) if master_key.key_id == key_id)
        })
        .count() as u64;
    drop(conn);
    usage.backups = crate::store::backup_keys(db)
        .await?
        .iter()
        .filter(|b| b.names(key_id))
        .count() as u64;
    Ok(usage)
}

/// The master keys that the rows of `db` need: every master key named by a wrapped data key
/// of an encrypted column ([`TABLES`]) or by the stored search key (`jarvis_keys`).
///
/// Like [`key_usage`], it reads the envelopes only: nothing is decrypted and no provider is
/// called. Legacy values (bare KMS blobs) name no key and are not counted. A backup's
/// manifest lists these keys, so that whoever restores it knows which keys it needs.
pub async fn master_keys_in_use(db: &Database) -> Result<BTreeSet<MasterKeyRef>, ModelError> {
    let mut keys = BTreeSet::new();
    for (table, _) in TABLES {
        let mut after = 0i64;
        loop {
            let (entries, last) = page(db, table, after).await?;
            let Some(last) = last else { break };
            after = last;
            for entry in entries {
                if let Some(Ok(KeyEnvelope::Jarvis { master_key, .. })) =
                    entry.stored.value.as_ref().map(|s| s.data_key.envelope())
                {
                    keys.insert(master_key);
                }
            }
        }
    }
    let mut conn = db.get().await?;
    let stored_keys: Vec<Vec<u8>> = with_conn!(&mut conn, |c| crate::schema::jarvis_keys::table
        .select(crate::schema::jarvis_keys::wrapped_key)
        .load(c)
        .await?);
    for bytes in &stored_keys {
        if let Ok(KeyEnvelope::Jarvis { master_key, .. }) = KeyEnvelope::parse(bytes) {
            keys.insert(master_key);
        }
    }
    Ok(keys)
}
