//! Repositories of the models: create, find, look up by search hash, list, update,
//! deactivate; the same code on PostgreSQL and SQLite.
//!
//! Every write runs in one transaction that reserves the row ids first (a value's associated
//! data includes its row id), and every operation records one audit event; both are
//! [`jarvis_db::repo`]'s, whose docs say how.

use std::sync::Arc;
use std::time::Instant;

use chrono::{NaiveDateTime, Utc};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{AuditSink, Encrypted, Encryptor, Operation};
use jarvis_db::repo::{Auditor, RecordIds};

use crate::db::{Conn, Database};
use crate::error::ModelError;
use crate::models::{ApiKey, ApiKeyRow, EncryptedBackup, OAuthToken, OAuthTokenRow, User, UserRow};
use crate::with_conn;

type Result<T, E = ModelError> = std::result::Result<T, E>;

macro_rules! record_ids {
    ($($model:ty),*) => {$(
        impl RecordIds for $model {
            fn record_ids(&self) -> Vec<i64> {
                vec![self.id]
            }
        }
    )*};
}
record_ids!(User, ApiKey, OAuthToken);

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
        $self.auditor().audited_record(
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
/// `$at`, encrypts it with `$enc` (whose data keys are made ready before the transaction) and
/// inserts it, in one transaction; the write is audited.
macro_rules! create_one {
    ($self:ident, $enc:expr, $model:ty, $table:ident, $column:literal, $operation:expr,
     |$id:ident, $at:ident| $build:expr) => {{
        let started = Instant::now();
        let enc = $enc;
        let values = <$model as jarvis_crypt::EncryptedTable>::table()
            .fields
            .len();
        let result = $self
            .write_sealing(&enc.clone(), values, move |conn| {
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
        $self
            .auditor()
            .audited($operation, stringify!($table), $column, started, result)
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
pub use jarvis_db::backups::{BackupKeys, NewBackup, backup_keys};
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
                match self.encryptor.search_key_fingerprint() {
                    Some(fingerprint) => {
                        crate::keys::check_search_key_fingerprint(&self.db, &fingerprint).await
                    }
                    None => Ok(()),
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

    /// The repository of the recorded backups (`encrypted_backups`), over this store's
    /// database, encryptor and audit sink.
    pub fn backups(&self) -> jarvis_db::Backups {
        jarvis_db::Backups::new(self.db.clone(), self.encryptor.clone(), self.audit.clone())
    }

    fn auditor(&self) -> Auditor<'_> {
        Auditor {
            sink: self.audit.as_ref(),
            encryptor: &self.encryptor,
        }
    }

    /// Runs `work`, which seals `values` values with `encryptor`, in a write transaction
    /// ([`jarvis_db::repo::write_sealing`]: the data keys are made ready first).
    async fn write_sealing<T, F>(&self, encryptor: &Encryptor, values: usize, work: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T>>,
    {
        jarvis_db::repo::write_sealing(&self.db, encryptor, values, work).await
    }

    /// Reserves `n` new ids of `table` ([`jarvis_db::repo::reserve_ids`]).
    async fn reserve_ids(conn: &mut Conn, table: &'static str, n: usize) -> Result<Vec<i64>> {
        jarvis_db::repo::reserve_ids(conn, table, n).await
    }
}
