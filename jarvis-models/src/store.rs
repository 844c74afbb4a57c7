//! Repositories of the models: create, find, look up by search hash, list, update,
//! deactivate; the same code on PostgreSQL and SQLite.
//!
//! # Row ids before the first write
//!
//! A value's associated data includes its row id, so the id must be known before the row is
//! written. Every write runs in one transaction that reserves the ids first:
//!
//! - PostgreSQL: `SELECT nextval('<table>_id_seq') FROM generate_series(1, n)`: one round
//!   trip for a whole batch; ids are never handed out twice.
//! - SQLite: the transaction starts with `BEGIN IMMEDIATE`, which takes the database's write
//!   lock, then reads the largest id ever used (`sqlite_sequence`, or the table's `MAX(id)`);
//!   no other writer can take an id until the transaction ends.
//!
//! # Audit
//!
//! Each record operation records one [`AuditEvent`]; each listing one event for the batch,
//! with its record ids. Failed operations are recorded with their error kind.

use std::sync::Arc;
use std::time::Instant;

use chrono::{NaiveDateTime, Utc};
use diesel::sql_types::BigInt;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryableByName, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{AuditEvent, AuditSink, Encrypted, Encryptor, Operation};

use crate::db::{Conn, Database, Transaction};
use crate::error::ModelError;
use crate::models::{
    ApiKey, ApiKeyRow, EncryptedBackup, EncryptedBackupRow, OAuthToken, OAuthTokenRow, User,
    UserRow,
};
use crate::schema::{api_keys, encrypted_backups, oauth_tokens, users};
use crate::with_conn;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The first row of `$query`, locked for the transaction on PostgreSQL (`FOR UPDATE`), so a
/// read-modify-write never loses a concurrent update; SQLite's `BEGIN IMMEDIATE` already holds
/// the write lock.
macro_rules! first_for_update {
    ($conn:expr, $query:expr) => {
        match $conn {
            Conn::Postgres(c) => $query.for_update().first(&mut **c).await.optional()?,
            Conn::Sqlite(c) => $query.first(&mut **c).await.optional()?,
        }
    };
}

/// The model of row `$id` of `$table`, decrypted; the read is audited.
macro_rules! find_by_id {
    ($self:ident, $table:ident, $row:ty, $model:ty, $column:literal, $id:expr) => {{
        let id: i64 = $id;
        let started = Instant::now();
        let result = async {
            let mut conn = $self.db.get().await?;
            let row: $row = with_conn!(&mut conn, |c| $table::table
                .find(id)
                .select(<$row>::as_select())
                .first(c)
                .await
                .optional()?)
            .ok_or(ModelError::NotFound {
                table: stringify!($table),
                id,
            })?;
            Ok(<$model>::decrypt_row(row, &$self.encryptor).await?)
        }
        .await;
        $self.audit(
            Operation::Decrypt,
            stringify!($table),
            $column,
            [id],
            started,
            &result,
        );
        result
    }};
}

/// Creates one row of `$table`: reserves its id, builds the model from `$id` and the time
/// `$at`, encrypts it with `$enc` and inserts it, in one transaction; the write is audited.
macro_rules! create_one {
    ($self:ident, $enc:expr, $table:ident, $column:literal, $operation:expr,
     |$id:ident, $at:ident| $build:expr) => {{
        let started = Instant::now();
        let enc = $enc;
        let result = $self
            .write(move |conn| {
                Box::pin(async move {
                    let $id = Self::reserve_ids(conn, stringify!($table), 1).await?[0];
                    let $at = now();
                    let model = $build;
                    let row = model.encrypt_row(&enc).await?;
                    with_conn!(conn, |c| diesel::insert_into($table::table)
                        .values(&row)
                        .execute(c)
                        .await?);
                    Ok(model)
                })
            })
            .await;
        let ids = result.as_ref().map(|m| m.id).ok();
        $self.audit(
            $operation,
            stringify!($table),
            $column,
            ids,
            started,
            &result,
        );
        result
    }};
}

/// Marks row `$id` of `$table` inactive.
macro_rules! deactivate {
    ($self:ident, $table:ident, $id:expr) => {{
        let id: i64 = $id;
        let mut conn = $self.db.get().await?;
        let changed = with_conn!(&mut conn, |c| diesel::update($table::table.find(id))
            .set(($table::is_active.eq(false), $table::updated_at.eq(now())))
            .execute(c)
            .await?);
        if changed == 0 {
            return Err(ModelError::NotFound {
                table: stringify!($table),
                id,
            });
        }
        Ok(())
    }};
}

/// A new API key.
#[derive(Clone)]
pub struct NewApiKey {
    /// The service it is for.
    pub service_name: String,
    /// The key.
    pub key: String,
    /// Plaintext metadata.
    pub metadata: Option<serde_json::Value>,
    /// Expiry (UTC).
    pub expires_at: Option<NaiveDateTime>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("service_name", &self.service_name)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// New OAuth tokens.
#[derive(Clone)]
pub struct NewOAuthToken {
    /// Owning user.
    pub user_id: Option<i64>,
    /// The provider.
    pub provider: String,
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// Expiry of the access token (UTC).
    pub expires_at: Option<NaiveDateTime>,
}

impl std::fmt::Debug for NewOAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOAuthToken")
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("access_token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A new backup record.
#[derive(Clone)]
pub struct NewBackup {
    /// Unique name.
    pub backup_name: String,
    /// Kind.
    pub backup_type: String,
    /// Path of the encrypted file, when not stored in the row.
    pub storage_path: Option<String>,
    /// The backup bytes, when stored in the row (encrypted there).
    pub data: Option<Vec<u8>>,
    /// Size of the encrypted backup.
    pub size_bytes: Option<i64>,
    /// SHA-256 of the encrypted backup, hex.
    pub checksum: Option<String>,
    /// The master key its data key is wrapped under.
    pub master_key_id: Option<String>,
}

impl std::fmt::Debug for NewBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewBackup")
            .field("backup_name", &self.backup_name)
            .field("backup_type", &self.backup_type)
            .field("storage_path", &self.storage_path)
            .finish_non_exhaustive()
    }
}

/// The master keys one recorded backup needs, as its row says (read without decrypting
/// anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKeys {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub backup_name: String,
    /// Where its file is, when it is not stored in the row.
    pub storage_path: Option<String>,
    /// Whether the backup itself is stored in the row.
    pub in_row: bool,
    /// The master key that wraps the stream's own data key (`master_key_id`).
    pub stream_master_key_id: Option<String>,
    /// The master keys the backup's rows need (`rows_master_key_ids`, the manifest's list),
    /// or `None` when the record does not say (recorded before migration 10, or the column
    /// does not parse).
    pub rows_master_key_ids: Option<Vec<String>>,
}

impl BackupKeys {
    /// Whether the record names the master key `key_id` (a KMS key ARN, or a local key id,
    /// which names all of its versions) as needed, for the stream or for the rows.
    pub fn names(&self, key_id: &str) -> bool {
        self.stream_master_key_id.as_deref() == Some(key_id)
            || self
                .rows_master_key_ids
                .iter()
                .flatten()
                .any(|entry| names_master_key(entry, key_id))
    }
}

/// Whether a manifest's entry (`<id>#v<N>` or a KMS key ARN) is of the master key `key_id`.
pub(crate) fn names_master_key(entry: &str, key_id: &str) -> bool {
    if entry == key_id {
        return true;
    }
    entry.rsplit_once("#v").is_some_and(|(id, version)| {
        id == key_id && !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The master keys of every recorded backup, newest first: its stream's key and the keys
/// its rows need, from the plain columns of `encrypted_backups`.
pub async fn backup_keys(db: &Database) -> Result<Vec<BackupKeys>> {
    type Record = (
        i64,
        String,
        Option<String>,
        bool,
        Option<String>,
        Option<String>,
    );
    let mut conn = db.get().await?;
    let rows: Vec<Record> = with_conn!(&mut conn, |c| encrypted_backups::table
        .order(encrypted_backups::id.desc())
        .select((
            encrypted_backups::id,
            encrypted_backups::backup_name,
            encrypted_backups::storage_path,
            encrypted_backups::encrypted_data.is_not_null(),
            encrypted_backups::master_key_id,
            encrypted_backups::rows_master_key_ids,
        ))
        .load(c)
        .await?);
    Ok(rows
        .into_iter()
        .map(
            |(id, backup_name, storage_path, in_row, stream, rows)| BackupKeys {
                id,
                backup_name,
                storage_path,
                in_row,
                stream_master_key_id: stream,
                rows_master_key_ids: rows.and_then(|text| serde_json::from_str(&text).ok()),
            },
        )
        .collect())
}

/// The repositories over one database, one encryptor and one audit sink.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    encryptor: Encryptor,
    audit: Arc<dyn AuditSink>,
    /// Set once the encryptor's search key has matched the recorded fingerprint.
    search_key_checked: Arc<tokio::sync::OnceCell<()>>,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

impl Store {
    /// Repositories over `db`, encrypting with `encryptor`, auditing into `audit`.
    pub fn new(db: Database, encryptor: Encryptor, audit: Arc<dyn AuditSink>) -> Self {
        Store {
            db,
            encryptor,
            audit,
            search_key_checked: Arc::default(),
        }
    }

    /// Checks the encryptor's root search key against the fingerprint recorded for the
    /// database ([`keys::check_search_key`](crate::keys::check_search_key)): a configuration
    /// error when another key is recorded. The repositories run it (once) before their first
    /// search hash, so a wrong search key fails loudly instead of finding nothing; an
    /// application may call it at start. Without a search key, or with no fingerprint
    /// recorded, there is nothing to check.
    pub async fn check_search_key(&self) -> Result<()> {
        self.search_key_checked
            .get_or_try_init(|| async {
                let Some(fingerprint) = self.encryptor.search_key_fingerprint() else {
                    return Ok(());
                };
                match crate::keys::recorded_search_key_fingerprint(&self.db).await? {
                    Some(recorded) if recorded != fingerprint => {
                        Err(crate::keys::mismatch(&recorded, &fingerprint))
                    }
                    _ => Ok(()),
                }
            })
            .await
            .map(|_| ())
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The encryptor.
    pub fn encryptor(&self) -> &Encryptor {
        &self.encryptor
    }

    fn audit<T>(
        &self,
        operation: Operation,
        table: &str,
        column: &str,
        ids: impl IntoIterator<Item = i64>,
        started: Instant,
        result: &Result<T>,
    ) {
        let mut event = AuditEvent::new(operation, table.to_owned(), started)
            .column(column)
            .records(ids)
            .key(self.encryptor.master_key().key_id);
        if let Err(e) = result {
            event = event.failed(e.kind());
        }
        self.audit.record(event);
    }

    // ---- transactions and ids -------------------------------------------------------------

    /// Runs `work` in a write transaction (`BEGIN IMMEDIATE` on SQLite), committing on success.
    /// If the caller's future is dropped midway, the connection is closed, not pooled, so the
    /// database rolls the transaction back.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T>>,
    {
        let mut tx = Transaction::begin(&self.db).await?;
        let result = work(tx.conn()?).await;
        match result {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Reserves `n` new ids of `table`, inside a write transaction.
    async fn reserve_ids(conn: &mut Conn, table: &'static str, n: usize) -> Result<Vec<i64>> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        match conn {
            Conn::Postgres(c) => {
                let ids: Vec<Id> = diesel::sql_query(format!(
                    "SELECT nextval('{table}_id_seq') AS id FROM generate_series(1, $1)"
                ))
                .bind::<BigInt, _>(n)
                .load(&mut **c)
                .await?;
                Ok(ids.into_iter().map(|row| row.id).collect())
            }
            Conn::Sqlite(c) => {
                let top: Vec<Id> = diesel::sql_query(format!(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),
                                COALESCE((SELECT MAX(id) FROM {table}), 0)) AS id"
                ))
                .load(&mut **c)
                .await?;
                let first = <[Id]>::first(&top).map_or(0, |row| row.id) + 1;
                Ok((first..first + n).collect())
            }
        }
    }

    // ---- users ----------------------------------------------------------------------------

    /// Creates users, one per email, in one transaction.
    ///
    /// The rows go to the database in one statement per batch on PostgreSQL (each column
    /// bound as one array, `INSERT .. SELECT * FROM UNNEST(..)`: nine parameters whatever the
    /// batch size, and a statement prepared once); on SQLite all rows are inserted in one task
    /// on the connection's blocking thread, with one prepared single-row statement (through
    /// diesel-async each row's statement was a thread hand-off of its own).
    pub async fn create_users(&self, emails: Vec<String>) -> Result<Vec<User>> {
        self.check_search_key().await?;
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let result = self
            .write(move |conn| {
                Box::pin(async move {
                    let ids = Self::reserve_ids(conn, "users", emails.len()).await?;
                    let at = now();
                    let users: Vec<User> = ids
                        .into_iter()
                        .zip(emails)
                        .map(|(id, email)| User {
                            id,
                            email,
                            created_at: at,
                            updated_at: at,
                        })
                        .collect();
                    let mut rows = Vec::with_capacity(users.len());
                    for user in &users {
                        rows.push(user.encrypt_row(&enc).await?);
                    }
                    match conn {
                        Conn::Postgres(c) => {
                            use diesel::sql_types::{Array, Binary, Nullable, Text, Timestamp};
                            let n = rows.len();
                            let mut id = Vec::with_capacity(n);
                            let mut email = Vec::with_capacity(n);
                            let mut ciphertext = Vec::with_capacity(n);
                            let mut iv = Vec::with_capacity(n);
                            let mut tag = Vec::with_capacity(n);
                            let mut data_key = Vec::with_capacity(n);
                            let mut hash = Vec::with_capacity(n);
                            let mut created_at = Vec::with_capacity(n);
                            let mut updated_at = Vec::with_capacity(n);
                            for row in rows {
                                let UserRow {
                                    id: row_id,
                                    email: row_email,
                                    encrypted_email,
                                    email_iv,
                                    email_auth_tag,
                                    email_data_key,
                                    email_hash,
                                    created_at: row_created_at,
                                    updated_at: row_updated_at,
                                } = row;
                                id.push(row_id);
                                email.push(row_email);
                                ciphertext.push(encrypted_email);
                                iv.push(email_iv);
                                tag.push(email_auth_tag);
                                data_key.push(email_data_key);
                                hash.push(email_hash);
                                created_at.push(row_created_at);
                                updated_at.push(row_updated_at);
                            }
                            diesel::sql_query(
                                "INSERT INTO users (id, email, encrypted_email, email_iv, \
                                 email_auth_tag, email_data_key, email_hash, created_at, \
                                 updated_at) \
                                 SELECT * FROM UNNEST($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            )
                            .bind::<Array<BigInt>, _>(id)
                            .bind::<Array<Nullable<Text>>, _>(email)
                            .bind::<Array<Nullable<Binary>>, _>(ciphertext)
                            .bind::<Array<Nullable<Binary>>, _>(iv)
                            .bind::<Array<Nullable<Binary>>, _>(tag)
                            .bind::<Array<Nullable<Binary>>, _>(data_key)
                            .bind::<Array<Nullable<Binary>>, _>(hash)
                            .bind::<Array<Timestamp>, _>(created_at)
                            .bind::<Array<Timestamp>, _>(updated_at)
                            .execute(&mut **c)
                            .await?;
                        }
                        Conn::Sqlite(c) => {
                            // One prepared single-row statement, run for every row on the
                            // blocking thread: diesel's own batch insert would open a
                            // transaction of its own inside this one.
                            c.spawn_blocking(move |c| {
                                for row in &rows {
                                    diesel::RunQueryDsl::execute(
                                        diesel::insert_into(users::table).values(row),
                                        c,
                                    )?;
                                }
                                Ok(())
                            })
                            .await?;
                        }
                    }
                    Ok(users)
                })
            })
            .await;
        let ids = result
            .as_ref()
            .map(|u| u.iter().map(|u| u.id).collect::<Vec<_>>())
            .unwrap_or_default();
        self.audit(
            Operation::Encrypt,
            "users",
            "encrypted_email",
            ids,
            started,
            &result,
        );
        result
    }

    /// Creates one user.
    pub async fn create_user(&self, email: &str) -> Result<User> {
        let mut users = self.create_users(vec![email.to_owned()]).await?;
        users.pop().ok_or(ModelError::NotFound {
            table: "users",
            id: 0,
        })
    }

    /// The user `id`.
    pub async fn find_user(&self, id: i64) -> Result<User> {
        find_by_id!(self, users, UserRow, User, "encrypted_email", id)
    }

    /// The stored form of user `id` as the database holds it (ciphertext, nonce, tag, wrapped
    /// data key, search hash, and the plaintext of a row not yet migrated), not decrypted and
    /// not audited: for showing what is stored.
    pub async fn stored_user(&self, id: i64) -> Result<UserRow> {
        let mut conn = self.db.get().await?;
        with_conn!(&mut conn, |c| users::table
            .find(id)
            .select(UserRow::as_select())
            .first(c)
            .await
            .optional()?)
        .ok_or(ModelError::NotFound { table: "users", id })
    }

    /// The user with this email (normalized: trimmed, lower case), through its search hash;
    /// rows not yet migrated (plaintext only) are matched on their plaintext column.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.check_search_key().await?;
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let found = User::email_find(&self.encryptor, email, |filter| async {
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| users::table
                    .filter(filter)
                    .select(UserRow::as_select())
                    .load(c)
                    .await?))
            })
            .await?;
            if let Some(user) = found.into_iter().next() {
                return Ok(Some(user));
            }
            let normalized = jarvis_crypt::Normalize::EMAIL.apply(email).into_owned();
            let rows: Vec<UserRow> = with_conn!(&mut conn, |c| users::table
                .filter(users::encrypted_email.is_null())
                .filter(
                    diesel::dsl::sql::<diesel::sql_types::Bool>("LOWER(TRIM(email)) = ")
                        .bind::<diesel::sql_types::Text, _>(normalized.clone()),
                )
                .select(UserRow::as_select())
                .load(c)
                .await?);
            let users = User::decrypt_rows(rows, &self.encryptor).await?;
            Ok(users
                .into_iter()
                .find(|u| jarvis_crypt::Normalize::EMAIL.apply(&u.email) == normalized))
        }
        .await;
        let ids = result.as_ref().ok().and_then(|u| u.as_ref()).map(|u| u.id);
        self.audit(
            Operation::Decrypt,
            "users",
            "encrypted_email",
            ids,
            started,
            &result,
        );
        result
    }

    /// Users by id, decrypted in bulk (one unwrap per distinct data key).
    pub async fn list_users(&self, limit: i64, offset: i64) -> Result<Vec<User>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<UserRow> = with_conn!(&mut conn, |c| users::table
                .order(users::id)
                .limit(limit)
                .offset(offset)
                .select(UserRow::as_select())
                .load(c)
                .await?);
            Ok(User::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        let ids = result
            .as_ref()
            .map(|u| u.iter().map(|u| u.id).collect::<Vec<_>>())
            .unwrap_or_default();
        self.audit(
            Operation::Decrypt,
            "users",
            "encrypted_email",
            ids,
            started,
            &result,
        );
        result
    }

    /// Up to `limit` users with ids greater than `after_id`, by id, decrypted in bulk (one
    /// unwrap per distinct data key): a keyset page. Unlike [`Self::list_users`]'s `OFFSET`,
    /// whose cost grows with the offset, each page is one index range scan; pass the last id
    /// of a page (or `0` to start) to read the next.
    pub async fn scan_users(&self, after_id: i64, limit: i64) -> Result<Vec<User>> {
        let started = Instant::now();
        // Rows are decrypted in chunks as they arrive: while one chunk is decrypted, the
        // database sends the next (the connection is driven by a task of its own).
        const CHUNK: usize = 256;
        let result = async {
            use futures::TryStreamExt;
            let mut conn = self.db.get().await?;
            let mut users = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(10_000));
            with_conn!(&mut conn, |c| {
                let mut chunks = std::pin::pin!(
                    users::table
                        .filter(users::id.gt(after_id))
                        .order(users::id)
                        .limit(limit)
                        .select(UserRow::as_select())
                        .load_stream::<UserRow>(c)
                        .await?
                        .try_chunks(CHUNK)
                );
                while let Some(rows) = chunks.try_next().await.map_err(|e| e.1)? {
                    users.extend(User::decrypt_rows(rows, &self.encryptor).await?);
                }
            });
            Ok(users)
        }
        .await;
        let ids = result
            .as_ref()
            .map(|u| u.iter().map(|u| u.id).collect::<Vec<_>>())
            .unwrap_or_default();
        self.audit(
            Operation::Decrypt,
            "users",
            "encrypted_email",
            ids,
            started,
            &result,
        );
        result
    }

    /// Changes a user's email (encrypted under the current data key; clears any plaintext).
    pub async fn update_user_email(&self, id: i64, email: &str) -> Result<User> {
        self.check_search_key().await?;
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let email = email.to_owned();
        let result = self
            .write(move |conn| {
                Box::pin(async move {
                    let row: UserRow =
                        first_for_update!(conn, users::table.find(id).select(UserRow::as_select()))
                            .ok_or(ModelError::NotFound { table: "users", id })?;
                    let mut user = User::decrypt_row(row, &enc).await?;
                    user.email = email;
                    user.updated_at = now();
                    let row = user.encrypt_row(&enc).await?;
                    with_conn!(conn, |c| diesel::update(users::table.find(id))
                        .set(&row)
                        .execute(c)
                        .await?);
                    Ok(user)
                })
            })
            .await;
        self.audit(
            Operation::Encrypt,
            "users",
            "encrypted_email",
            [id],
            started,
            &result,
        );
        result
    }

    // ---- API keys -------------------------------------------------------------------------

    /// Creates an API key.
    pub async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey> {
        self.check_search_key().await?;
        create_one!(
            self,
            self.encryptor.clone(),
            api_keys,
            "encrypted_key",
            Operation::Encrypt,
            |id, at| ApiKey {
                id,
                service_name: new.service_name,
                key: new.key,
                metadata: new.metadata,
                is_active: true,
                rotation_count: 0,
                last_rotated_at: None,
                expires_at: new.expires_at,
                created_at: at,
                updated_at: at,
            }
        )
    }

    /// The API key `id`, active or not.
    pub async fn find_api_key(&self, id: i64) -> Result<ApiKey> {
        find_by_id!(self, api_keys, ApiKeyRow, ApiKey, "encrypted_key", id)
    }

    /// The active API key whose key is `key`, through its search hash.
    pub async fn find_api_key_by_key(&self, key: &str) -> Result<Option<ApiKey>> {
        self.check_search_key().await?;
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let found = ApiKey::key_find(&self.encryptor, key, |filter| async move {
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| api_keys::table
                    .filter(filter)
                    .filter(api_keys::is_active.eq(true))
                    .select(ApiKeyRow::as_select())
                    .load(c)
                    .await?))
            })
            .await?;
            Ok(found.into_iter().next())
        }
        .await;
        let ids = result.as_ref().ok().and_then(|k| k.as_ref()).map(|k| k.id);
        self.audit(
            Operation::Decrypt,
            "api_keys",
            "encrypted_key",
            ids,
            started,
            &result,
        );
        result
    }

    /// API keys, all or only the active ones, decrypted in bulk.
    pub async fn list_api_keys(&self, active_only: bool) -> Result<Vec<ApiKey>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<ApiKeyRow> = with_conn!(&mut conn, |c| {
                let mut query = api_keys::table.order(api_keys::id).into_boxed();
                if active_only {
                    query = query.filter(api_keys::is_active.eq(true));
                }
                query.select(ApiKeyRow::as_select()).load(c).await?
            });
            Ok(ApiKey::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        let ids = result
            .as_ref()
            .map(|k| k.iter().map(|k| k.id).collect::<Vec<_>>())
            .unwrap_or_default();
        self.audit(
            Operation::Decrypt,
            "api_keys",
            "encrypted_key",
            ids,
            started,
            &result,
        );
        result
    }

    /// Replaces an API key's key (re-encrypted), counting the rotation.
    pub async fn update_api_key(&self, id: i64, key: &str) -> Result<ApiKey> {
        self.check_search_key().await?;
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let key = key.to_owned();
        let result = self
            .write(move |conn| {
                Box::pin(async move {
                    let row: ApiKeyRow = first_for_update!(
                        conn,
                        api_keys::table.find(id).select(ApiKeyRow::as_select())
                    )
                    .ok_or(ModelError::NotFound {
                        table: "api_keys",
                        id,
                    })?;
                    let mut api_key = ApiKey::decrypt_row(row, &enc).await?;
                    let at = now();
                    api_key.key = key;
                    api_key.rotation_count += 1;
                    api_key.last_rotated_at = Some(at);
                    api_key.updated_at = at;
                    let row = api_key.encrypt_row(&enc).await?;
                    with_conn!(conn, |c| diesel::update(api_keys::table.find(id))
                        .set(&row)
                        .execute(c)
                        .await?);
                    Ok(api_key)
                })
            })
            .await;
        self.audit(
            Operation::Rotate,
            "api_keys",
            "encrypted_key",
            [id],
            started,
            &result,
        );
        result
    }

    /// Marks an API key inactive.
    pub async fn deactivate_api_key(&self, id: i64) -> Result<()> {
        deactivate!(self, api_keys, id)
    }

    // ---- OAuth tokens ---------------------------------------------------------------------

    /// Stores OAuth tokens; both tokens share a fresh data key of their own.
    pub async fn create_oauth_token(&self, new: NewOAuthToken) -> Result<OAuthToken> {
        create_one!(
            self,
            self.encryptor.with_fresh_data_key(),
            oauth_tokens,
            "encrypted_access_token",
            Operation::Encrypt,
            |id, at| OAuthToken {
                id,
                user_id: new.user_id,
                provider: new.provider,
                access_token: new.access_token,
                refresh_token: new.refresh_token,
                scope: new.scope,
                expires_at: new.expires_at,
                is_active: true,
                rotation_count: 0,
                last_rotated_at: None,
                created_at: at,
                updated_at: at,
            }
        )
    }

    /// The OAuth token `id`.
    pub async fn find_oauth_token(&self, id: i64) -> Result<OAuthToken> {
        find_by_id!(
            self,
            oauth_tokens,
            OAuthTokenRow,
            OAuthToken,
            "encrypted_access_token",
            id
        )
    }

    /// A user's OAuth tokens, all or only the active ones, decrypted in bulk.
    pub async fn list_oauth_tokens(
        &self,
        user_id: i64,
        active_only: bool,
    ) -> Result<Vec<OAuthToken>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<OAuthTokenRow> = with_conn!(&mut conn, |c| {
                let mut query = oauth_tokens::table
                    .filter(oauth_tokens::user_id.eq(user_id))
                    .order(oauth_tokens::id)
                    .into_boxed();
                if active_only {
                    query = query.filter(oauth_tokens::is_active.eq(true));
                }
                query.select(OAuthTokenRow::as_select()).load(c).await?
            });
            Ok(OAuthToken::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        let ids = result
            .as_ref()
            .map(|t| t.iter().map(|t| t.id).collect::<Vec<_>>())
            .unwrap_or_default();
        self.audit(
            Operation::Decrypt,
            "oauth_tokens",
            "encrypted_access_token",
            ids,
            started,
            &result,
        );
        result
    }

    /// Replaces both tokens after a refresh, under a fresh data key, and counts the rotation.
    pub async fn refresh_oauth_token(
        &self,
        id: i64,
        access_token: &str,
        refresh_token: Option<&str>,
        expires_at: Option<NaiveDateTime>,
    ) -> Result<OAuthToken> {
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let fresh = self.encryptor.with_fresh_data_key();
        let access_token = access_token.to_owned();
        let refresh_token = refresh_token.map(str::to_owned);
        let result = self
            .write(move |conn| {
                Box::pin(async move {
                    let row: OAuthTokenRow = first_for_update!(
                        conn,
                        oauth_tokens::table
                            .find(id)
                            .select(OAuthTokenRow::as_select())
                    )
                    .ok_or(ModelError::NotFound {
                        table: "oauth_tokens",
                        id,
                    })?;
                    let mut token = OAuthToken::decrypt_row(row, &enc).await?;
                    let at = now();
                    token.access_token = access_token;
                    token.refresh_token = refresh_token;
                    token.expires_at = expires_at;
                    token.rotation_count += 1;
                    token.last_rotated_at = Some(at);
                    token.updated_at = at;
                    let row = token.encrypt_row(&fresh).await?;
                    with_conn!(conn, |c| diesel::update(oauth_tokens::table.find(id))
                        .set(&row)
                        .execute(c)
                        .await?);
                    Ok(token)
                })
            })
            .await;
        self.audit(
            Operation::Rotate,
            "oauth_tokens",
            "encrypted_access_token",
            [id],
            started,
            &result,
        );
        result
    }

    /// Marks OAuth tokens inactive.
    pub async fn deactivate_oauth_token(&self, id: i64) -> Result<()> {
        deactivate!(self, oauth_tokens, id)
    }

    // ---- backups --------------------------------------------------------------------------

    /// Records a backup (its bytes encrypted in the row when given), as one whose rows need
    /// no master key but `master_key_id`: what this method always meant. A backup of rows
    /// under other master keys is recorded with
    /// [`create_backup_with_master_keys`](Self::create_backup_with_master_keys), so that
    /// key usage (and `jarvis retire-key`) counts them.
    pub async fn create_backup(&self, new: NewBackup) -> Result<EncryptedBackup> {
        self.create_backup_with_master_keys(new, Vec::new()).await
    }

    /// Records a backup whose rows need the master keys `rows_master_key_ids` (its
    /// manifest's `master_key_ids`: `<id>#v<N>` or KMS key ARNs), in the same row and
    /// transaction; see [`BackupKeys`].
    pub async fn create_backup_with_master_keys(
        &self,
        new: NewBackup,
        rows_master_key_ids: Vec<String>,
    ) -> Result<EncryptedBackup> {
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let keys = serde_json::Value::from(rows_master_key_ids).to_string();
        let result = self
            .write(move |conn| {
                Box::pin(async move {
                    let id = Self::reserve_ids(conn, "encrypted_backups", 1).await?[0];
                    let at = now();
                    let model = EncryptedBackup {
                        id,
                        backup_name: new.backup_name,
                        backup_type: new.backup_type,
                        storage_path: new.storage_path,
                        data: new.data,
                        size_bytes: new.size_bytes,
                        checksum: new.checksum,
                        master_key_id: new.master_key_id,
                        created_at: at,
                        updated_at: at,
                    };
                    let row = model.encrypt_row(&enc).await?;
                    with_conn!(conn, |c| diesel::insert_into(encrypted_backups::table)
                        .values((
                            &row,
                            encrypted_backups::rows_master_key_ids.eq(Some(keys.as_str())),
                        ))
                        .execute(c)
                        .await?);
                    Ok(model)
                })
            })
            .await;
        let ids = result.as_ref().map(|m| m.id).ok();
        self.audit(
            Operation::Backup,
            "encrypted_backups",
            "encrypted_data",
            ids,
            started,
            &result,
        );
        result
    }

    /// The master keys of every recorded backup, newest first (see [`backup_keys`]).
    pub async fn backup_keys(&self) -> Result<Vec<BackupKeys>> {
        backup_keys(&self.db).await
    }

    /// The recorded backup named `name`, decrypted (its in-row bytes included); the read is
    /// audited.
    pub async fn find_backup_by_name(&self, name: &str) -> Result<Option<EncryptedBackup>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let row: Option<EncryptedBackupRow> =
                with_conn!(&mut conn, |c| encrypted_backups::table
                    .filter(encrypted_backups::backup_name.eq(name))
                    .select(EncryptedBackupRow::as_select())
                    .first(c)
                    .await
                    .optional()?);
            match row {
                Some(row) => Ok(Some(
                    EncryptedBackup::decrypt_row(row, &self.encryptor).await?,
                )),
                None => Ok(None),
            }
        }
        .await;
        let ids = result.as_ref().ok().and_then(|b| b.as_ref().map(|b| b.id));
        self.audit(
            Operation::Decrypt,
            "encrypted_backups",
            "encrypted_data",
            ids,
            started,
            &result,
        );
        result
    }

    /// Every recorded backup, newest first, decrypted.
    pub async fn list_backups(&self) -> Result<Vec<EncryptedBackup>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<EncryptedBackupRow> = with_conn!(&mut conn, |c| encrypted_backups::table
                .order(encrypted_backups::id.desc())
                .select(EncryptedBackupRow::as_select())
                .load(c)
                .await?);
            Ok(EncryptedBackup::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        let ids = result
            .as_ref()
            .map(|b| b.iter().map(|b| b.id).collect::<Vec<_>>())
            .unwrap_or_default();
        self.audit(
            Operation::Decrypt,
            "encrypted_backups",
            "encrypted_data",
            ids,
            started,
            &result,
        );
        result
    }
}
