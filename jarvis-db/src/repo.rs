//! What every repository over encrypted models needs, written once: write transactions,
//! row ids reserved before the first write, and one audit event per operation.
//!
//! # Row ids before the first write
//!
//! A value's associated data includes its row id, so the id must be known before the row is
//! written. A write runs in one transaction ([`write()`]) that reserves the ids first
//! ([`reserve_ids`]):
//!
//! - PostgreSQL: `SELECT nextval('<table>_id_seq') FROM generate_series(1, n)`: one round
//!   trip for a whole batch; ids are never handed out twice.
//! - SQLite: the transaction starts with `BEGIN IMMEDIATE`, which takes the database's write
//!   lock, then reads the largest id ever used (`sqlite_sequence`, or the table's `MAX(id)`);
//!   no other writer can take an id until the transaction ends.
//!
//! # Audit
//!
//! Each record operation records one [`AuditEvent`] ([`Auditor::audited`]); each listing one event
//! for the batch, with its record ids ([`RecordIds`]). Failed operations are recorded with
//! their error kind.

use std::time::Instant;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use jarvis_crypt::{AuditEvent, AuditSink, Encryptor, Operation};

use crate::db::{Conn, Database, Transaction};
use crate::error::ModelError;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The record ids an operation's result names, for its audit event.
pub trait RecordIds {
    /// The ids, in the result's order.
    fn record_ids(&self) -> Vec<i64>;
}

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

impl RecordIds for crate::models::EncryptedBackup {
    fn record_ids(&self) -> Vec<i64> {
        vec![self.id]
    }
}

/// Who records an operation's audit event: the sink, and the encryptor whose master key the
/// event names.
#[derive(Clone, Copy)]
pub struct Auditor<'a> {
    /// The audit sink.
    pub sink: &'a dyn AuditSink,
    /// The encryptor of the operation.
    pub encryptor: &'a Encryptor,
}

impl std::fmt::Debug for Auditor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").finish_non_exhaustive()
    }
}

impl Auditor<'_> {
    /// `result`, after recording its audit event: the records its value names.
    pub fn audited<T: RecordIds>(
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
        self.record(operation, table, column, ids, started, &result);
        result
    }

    /// `result`, after recording its audit event for record `id` (failed or not).
    pub fn audited_record<T>(
        &self,
        operation: Operation,
        table: &str,
        column: &str,
        id: i64,
        started: Instant,
        result: Result<T>,
    ) -> Result<T> {
        self.record(operation, table, column, [id], started, &result);
        result
    }

    fn record<T>(
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
        self.sink.record(event);
    }
}

/// Runs `work` in a write transaction (`BEGIN IMMEDIATE` on SQLite), committing on success.
/// If the caller's future is dropped midway, the connection is closed, not pooled, so the
/// database rolls the transaction back.
pub async fn write<T, F>(db: &Database, work: F) -> Result<T>
where
    F: for<'c> FnOnce(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T>>,
{
    let mut tx = Transaction::begin(db).await?;
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

/// [`write()`] of work that seals `values` values with `encryptor`: their data keys are made
/// ready first, outside the transaction ([`Encryptor::prepare_data_keys`]), so that with a
/// key vault no vault insert happens while the transaction holds its locks (on SQLite, the
/// database's one writer: the insert would wait for the transaction itself).
pub async fn write_sealing<T, F>(
    db: &Database,
    encryptor: &Encryptor,
    values: usize,
    work: F,
) -> Result<T>
where
    F: for<'c> FnOnce(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T>>,
{
    encryptor.prepare_data_keys(values).await?;
    write(db, work).await
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Reserves `n` new ids of `table` (whose key is `id`, with the sequence `<table>_id_seq` on
/// PostgreSQL), inside a write transaction.
pub async fn reserve_ids(conn: &mut Conn, table: &'static str, n: usize) -> Result<Vec<i64>> {
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
