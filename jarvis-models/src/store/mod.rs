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
use crate::with_conn;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The record ids an operation's result names, for its audit event.
trait RecordIds {
    fn record_ids(&self) -> Vec<i64>;
}

macro_rules! record_ids {
    ($($model:ty),*) => {$(
        impl RecordIds for $model {
            fn record_ids(&self) -> Vec<i64> {
                vec![self.id]
            }
        }
    )*};
}
record_ids!(User, ApiKey, OAuthToken, EncryptedBackup);

impl<M: RecordIds> RecordIds for Vec<M> {
    fn record_ids(&self) -> Vec<i64> {
        self.iter().flat_map(RecordIds::record_ids).collect()
    }
}

impl<M: RecordIds> RecordIds for Option<M> {
    fn record_ids(&self) -> Vec<i64> {
        self.as_ref().map(RecordIds::record_ids).unwrap_or_default()
    }
}

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
        $self.audited_record(
            Operation::Decrypt,
            stringify!($table),
            $column,
            id,
            started,
            result,
        )
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
        $self.audited($operation, stringify!($table), $column, started, result)
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

mod api_keys;
mod backups;
mod oauth_tokens;
mod users;

pub use api_keys::NewApiKey;
pub use backups::{BackupKeys, NewBackup, backup_keys};
pub use oauth_tokens::NewOAuthToken;

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

    /// `result`, after recording its audit event: the records its value names.
    fn audited<T: RecordIds>(
        &self,
        operation: Operation,
        table: &str,
        column: &str,
        started: Instant,
        result: Result<T>,
    ) -> Result<T> {
        let ids = result
            .as_ref()
            .map(RecordIds::record_ids)
            .unwrap_or_default();
        self.audit(operation, table, column, ids, started, &result);
        result
    }

    /// `result`, after recording its audit event for record `id` (failed or not).
    fn audited_record<T>(
        &self,
        operation: Operation,
        table: &str,
        column: &str,
        id: i64,
        started: Instant,
        result: Result<T>,
    ) -> Result<T> {
        self.audit(operation, table, column, [id], started, &result);
        result
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
}
