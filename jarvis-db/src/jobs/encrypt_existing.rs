//! `jarvis encrypt-existing`: encrypt the plaintext column of a field in the migrating state
//! (`#[encrypted(migrating_from = column)]`) into its encrypted columns and search hash,
//! clearing the plaintext, in batches.
//!
//! The job works on any model's table through its description
//! ([`EncryptedTable`](jarvis_crypt::EncryptedTable)): [`encrypt_existing`] takes the tables
//! of the models an application registers. A column that is not a registered field's `migrating_from` is refused with
//! a configuration error that lists the ones there are. Only the described columns are read
//! and written, by their SQL names, with every value bound.
//!
//! # One batch
//!
//! Each batch is one transaction on one pooled connection:
//!
//! 1. `BEGIN` (PostgreSQL) or `BEGIN IMMEDIATE` (SQLite: the database's write lock, so the
//!    workers of a SQLite database take turns).
//! 2. Select up to `batch_size` rows `WHERE <ciphertext> IS NULL AND <plaintext> IS NOT NULL
//!    ORDER BY <primary key>`, on PostgreSQL `FOR UPDATE SKIP LOCKED`: workers of this process
//!    and of other processes (on any machine) never take the same row, and a row an
//!    application transaction holds is skipped rather than waited for.
//! 3. Encrypt each plaintext for its place (the table, the ciphertext column and the row key
//!    the model binds) and compute its search hash. No other column is touched: the row's
//!    data did not change.
//! 4. **Verify** every new value before anything is written: it must decrypt, bound to its
//!    row, to exactly the plaintext read. Decryption goes through a second [`Encryptor`] with
//!    an empty cache
//!    ([`Encryptor::with_fresh_data_key`]; only its decrypt side is used), so the wrapped
//!    data key written into the rows is unwrapped by the key provider itself, once per
//!    distinct data key per run: a provider that can generate keys but not unwrap them (a
//!    KMS key policy granting `GenerateDataKey` but not `Decrypt`) stops the job before its
//!    first commit instead of writing rows nobody can read. Any failure or mismatch rolls the
//!    batch back and ends the job with that error.
//! 5. `UPDATE <table> SET <stored-form columns>, <search hash>, <plaintext> = NULL WHERE
//!    <primary key> = $1 AND <ciphertext> IS NULL AND <plaintext> IS NOT NULL`, one statement
//!    per row; a row that no longer matches (which the locks rule out) rolls the batch back.
//! 6. `COMMIT`, then one audit event ([`Operation::Migrate`], the table, the ciphertext
//!    column, the batch's record ids, the master key id) and a [`Progress`] call.
//!    A failed batch records an event with its error kind.
//!
//! # Safety and resumption
//!
//! Each row is written by one `UPDATE` of one transaction, so at any moment (a kill, a
//! crash, a lost connection) a row holds either its plaintext or a complete, verified
//! ciphertext, never neither. The job selects only rows still in plaintext, so a rerun
//! continues where an earlier run stopped, and a run on a finished table does nothing.
//!
//! Stopping: [`EncryptExistingOptions::stop`] is checked by every worker before each batch
//! (the CLI sets it on Ctrl-C); each worker finishes the batch it is in and the job returns
//! its report with `stopped` set. If the returned future is dropped instead, the connection
//! of a batch in progress is closed rather than returned to the pool, so the database rolls
//! that batch back and releases its locks.
//!
//! Failures (key provider, database) end the job with the error of the first failed batch
//! after the other workers have finished their current batch; batches committed before stay
//! committed, and a rerun picks up the rest. The job does not retry: the key provider retries
//! by its own configuration, and the job is cheap to rerun.
//!
//! # Workers
//!
//! [`EncryptExistingOptions::workers`] batch loops run concurrently on the calling task,
//! each taking a connection from the database's pool for each batch; more workers than the
//! pool has connections wait for one. On SQLite they serialize on the write lock (a whole
//! batch, encryption included, runs inside it, so one worker is as fast; a worker waits at
//! most the connection's `busy_timeout` for it, then fails with a database error). On
//! PostgreSQL they run in parallel, as do several processes running the job at once.
//!
//! # Counts
//!
//! "Pending" rows are those the job would encrypt: no ciphertext and a plaintext.
//! The report's `rows_remaining` counts them after the run: more than zero after a run that
//! was not stopped means rows were locked by other transactions or written in plaintext
//! meanwhile; run the job again. Rows with both a ciphertext and a plaintext email (written
//! by hand or by an old application after their migration) are not touched: which value is
//! right cannot be decided here; they are counted in `rows_conflicting`.
//!
//! A plaintext that cannot be the field's value (text that is not UTF-8) fails its batch
//! with [`jarvis_crypt::Error::InvalidPlaintext`], naming the row; nothing is written.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use jarvis_crypt::{
    AuditEvent, AuditSink, Encryptor, FieldDescription, Operation, StoredField, TableDescription,
    ValueKind,
};

use super::Context;
use super::runner::Batches;
pub use super::runner::Progress;
use crate::db::{Conn, Database, Transaction};
use crate::described::{self, Arg, StoredRow, configuration, quote};
use crate::error::ModelError;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What to migrate and how.
#[derive(Debug, Clone)]
pub struct EncryptExistingOptions {
    /// The table (`users`).
    pub table: String,
    /// The plaintext column (`email`).
    pub column: String,
    /// Rows per batch, one transaction each (default
    /// [`DEFAULT_BATCH_SIZE`](Self::DEFAULT_BATCH_SIZE)); at least 1.
    pub batch_size: usize,
    /// Count the pending rows and the batches they would take, write nothing (no provider
    /// calls, no audit events).
    pub dry_run: bool,
    /// Concurrent batch loops in this process (default 1); at least 1.
    pub workers: usize,
    /// Where the per-batch audit events go: normally the application's audit sink.
    pub audit: Arc<dyn AuditSink>,
    /// Checked by every worker before each batch: once `true`, workers finish the batch they
    /// are in and the job returns its report with `stopped` set.
    pub stop: Option<Arc<AtomicBool>>,
}

impl EncryptExistingOptions {
    /// The default batch size.
    pub const DEFAULT_BATCH_SIZE: usize = 500;

    /// Options for `table`.`column` with the defaults: batches of
    /// [`DEFAULT_BATCH_SIZE`](Self::DEFAULT_BATCH_SIZE), one worker, no dry run, no stop flag.
    pub fn new(
        table: impl Into<String>,
        column: impl Into<String>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        EncryptExistingOptions {
            table: table.into(),
            column: column.into(),
            batch_size: Self::DEFAULT_BATCH_SIZE,
            dry_run: false,
            workers: 1,
            audit,
            stop: None,
        }
    }

    /// The table and field the options name, among `tables`.
    fn check<'t>(&self, tables: &[&'t TableDescription]) -> Result<(&'t TableDescription, usize)> {
        let found = tables.iter().find_map(|table| {
            let same_table = table.name == self.table || table.bound_name == self.table;
            let index = table
                .fields
                .iter()
                .position(|f| f.migrating_from == Some(self.column.as_str()));
            same_table.then_some(index.map(|i| (*table, i))).flatten()
        });
        let Some(found) = found else {
            let list: Vec<String> = migrating_columns(tables)
                .into_iter()
                .map(|(table, column)| format!("{table}.{column}"))
                .collect();
            return Err(configuration(format!(
                "encrypt-existing: `{}`.`{}` is not a plaintext column in the migrating state; \
                 supported: {}",
                self.table,
                self.column,
                if list.is_empty() {
                    "none (no registered field has `migrating_from`)".to_owned()
                } else {
                    list.join(", ")
                }
            )));
        };
        if self.batch_size == 0 {
            return Err(configuration(
                "encrypt-existing: the batch size must be at least 1",
            ));
        }
        if self.workers == 0 {
            return Err(configuration(
                "encrypt-existing: at least one worker is needed",
            ));
        }
        described::primary_key(found.0)?;
        Ok(found)
    }
}

/// The `(table, plaintext column)` of every field of `tables` in the migrating state, in
/// their order.
pub fn migrating_columns(tables: &[&TableDescription]) -> Vec<(String, &'static str)> {
    tables
        .iter()
        .flat_map(|table| {
            table
                .fields
                .iter()
                .filter_map(|f| f.migrating_from.map(|column| (table.name.clone(), column)))
        })
        .collect()
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EncryptExistingReport {
    /// The table.
    pub table: String,
    /// The plaintext column.
    pub column: String,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Rows pending when the run started.
    pub rows_at_start: u64,
    /// Rows encrypted and committed by this run (0 in a dry run).
    pub rows_encrypted: u64,
    /// Batches committed by this run; in a dry run, the batches one worker would need.
    pub batches: u64,
    /// Rows pending when the run ended.
    pub rows_remaining: u64,
    /// Rows holding both a ciphertext and a plaintext, which the job does not touch.
    pub rows_conflicting: u64,
    /// Whether the stop flag ended the run before every pending row was done.
    pub stopped: bool,
    /// Workers used.
    pub workers: usize,
    /// Wall-clock time of the run.
    pub duration: Duration,
}

impl EncryptExistingReport {
    /// Rows encrypted per second of the run.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.rows_encrypted as f64 / secs
        } else {
            0.0
        }
    }
}

/// Encrypts the pending plaintext of `options.table`.`options.column`, the `migrating_from`
/// column of a field of one of `tables`, in batches (see the [module docs](self)), calling
/// `progress` after each committed batch.
///
/// Returns the report of the run, or the error of the first failed batch (batches committed
/// before it stay committed; run the job again to finish). Refuses a column that is not in
/// the migrating state, a table without a single-column primary key, a batch size of 0 and 0
/// workers with a configuration error ([`ModelError::Crypto`] of
/// [`jarvis_crypt::Error::Configuration`]).
pub async fn encrypt_existing(
    db: &Database,
    encryptor: &Encryptor,
    tables: &[&TableDescription],
    options: &EncryptExistingOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<EncryptExistingReport> {
    let cx = Context { db, encryptor };
    let started = Instant::now();
    let (table, index) = options.check(tables)?;
    let field = &table.fields[index];
    let before = counts(cx.database(), table, field).await?;
    let batch_size = options.batch_size as u64;
    tracing::info!(
        table = %table.name,
        column = %options.column,
        pending = before.pending,
        conflicting = before.conflicting,
        batch_size,
        workers = options.workers,
        dry_run = options.dry_run,
        "encrypt-existing: starting"
    );
    let mut report = EncryptExistingReport {
        table: options.table.clone(),
        column: options.column.clone(),
        dry_run: options.dry_run,
        rows_at_start: before.pending,
        rows_encrypted: 0,
        batches: 0,
        rows_remaining: before.pending,
        rows_conflicting: before.conflicting,
        stopped: false,
        workers: options.workers,
        duration: Duration::ZERO,
    };
    if options.dry_run {
        report.batches = before.pending.div_ceil(batch_size);
        report.duration = started.elapsed();
        return Ok(report);
    }

    let job = Job {
        cx,
        options,
        table,
        index,
        verifier: cx.encryptor().with_fresh_data_key(),
    };
    let batches = Batches::new(options.stop.as_ref(), progress, 0, before.pending);
    let result = batches
        .run(options.workers, |worker| job.batch(worker))
        .await;
    report.rows_encrypted = batches.rows_done();
    report.batches = batches.batches();
    if let Err(error) = result {
        tracing::error!(
            error = %error,
            rows_encrypted = report.rows_encrypted,
            batches = report.batches,
            "encrypt-existing: stopped by a failed batch; committed batches stay, rerun to finish"
        );
        return Err(error);
    }
    let after = counts(cx.database(), table, field).await?;
    report.rows_remaining = after.pending;
    report.rows_conflicting = after.conflicting;
    report.stopped = batches.stopped() && after.pending > 0;
    report.duration = started.elapsed();
    tracing::info!(
        rows_encrypted = report.rows_encrypted,
        batches = report.batches,
        rows_remaining = report.rows_remaining,
        stopped = report.stopped,
        seconds = report.duration.as_secs_f64(),
        "encrypt-existing: done"
    );
    Ok(report)
}

/// Rows pending, and rows with both forms.
#[derive(Debug, Clone, Copy)]
struct Counts {
    pending: u64,
    conflicting: u64,
}

/// `<ciphertext> IS [NOT] NULL AND <plaintext> IS NOT NULL`.
fn condition(field: &FieldDescription, encrypted: bool) -> String {
    let plain = field
        .migrating_from
        .map_or_else(|| "NULL".to_owned(), quote);
    format!(
        "{} IS {}NULL AND {plain} IS NOT NULL",
        quote(field.ciphertext),
        if encrypted { "NOT " } else { "" }
    )
}

async fn counts(
    db: &Database,
    table: &TableDescription,
    field: &FieldDescription,
) -> Result<Counts> {
    let mut conn = db.get().await?;
    Ok(Counts {
        pending: described::count(&mut conn, table, &condition(field, false)).await?,
        conflicting: described::count(&mut conn, table, &condition(field, true)).await?,
    })
}

/// What the batches of one run share.
struct Job<'a> {
    cx: Context<'a>,
    options: &'a EncryptExistingOptions,
    table: &'a TableDescription,
    /// The field migrated: its index in the table's fields.
    index: usize,
    /// Decrypts new values through the key provider (an empty cache of its own).
    verifier: Encryptor,
}

impl Job<'_> {
    fn field(&self) -> &FieldDescription {
        &self.table.fields[self.index]
    }

    /// One batch, audited: the number of rows encrypted (0: nothing pending).
    async fn batch(&self, worker: usize) -> Result<u64> {
        let started = Instant::now();
        let mut ids = Vec::new();
        let result = self.batch_in_transaction(&mut ids).await;
        if !ids.is_empty() || result.is_err() {
            let mut event = AuditEvent::new(Operation::Migrate, self.table.name.clone(), started)
                .column(self.field().ciphertext)
                .records(ids.iter().copied())
                .key(self.cx.encryptor().master_key().key_id);
            if let Err(error) = &result {
                event = event.failed(error.kind());
            }
            self.options.audit.record(event);
        }
        match &result {
            Ok(rows) => tracing::debug!(worker, rows, "encrypt-existing: batch committed"),
            Err(error) => tracing::warn!(
                worker,
                rows = ids.len(),
                error = %error,
                "encrypt-existing: batch rolled back"
            ),
        }
        result
    }

    async fn batch_in_transaction(&self, ids: &mut Vec<i64>) -> Result<u64> {
        // The batch's data keys are stored in the key vault (if any) before its transaction
        // takes the rows' locks (on SQLite, the database's one writer).
        self.cx
            .encryptor()
            .prepare_data_keys(self.options.batch_size)
            .await?;
        let mut tx = Transaction::begin(self.cx.database()).await?;
        match self.encrypt_batch(tx.conn()?, ids).await {
            Ok(rows) => {
                tx.commit().await?;
                Ok(rows)
            }
            Err(error) => {
                tx.rollback().await;
                Err(error)
            }
        }
    }

    /// Selects, encrypts, verifies and updates one batch inside the open transaction; `ids`
    /// receives the selected rows' ids.
    async fn encrypt_batch(&self, conn: &mut Conn, ids: &mut Vec<i64>) -> Result<u64> {
        let limit = i64::try_from(self.options.batch_size).unwrap_or(i64::MAX);
        let field = self.field();
        let pending = condition(field, false);
        let rows = described::load_rows(
            conn,
            self.table,
            |sql| {
                sql.push(&pending);
                Ok(())
            },
            limit,
            true,
        )
        .await?;
        ids.extend(rows.iter().map(|row| row.id));
        if rows.is_empty() {
            return Ok(0);
        }
        let encryptor = self.cx.encryptor();
        let mut new = Vec::with_capacity(rows.len());
        for row in &rows {
            let plaintext = self.plaintext(row)?;
            let binding = described::binding(self.table, field, row);
            let stored = encryptor.encrypt(&binding, plaintext).await?;
            let hash = match field.search {
                Some(search) => Some(encryptor.search_hash(
                    self.table.bound_name,
                    search.bound_column,
                    search.spec,
                    &field.search_input(text(plaintext, row.id)?),
                )?),
                None => None,
            };
            new.push((stored, hash));
        }
        self.verify(&rows, &new).await?;
        let plain_column = field.migrating_from.unwrap_or_default();
        let updates = rows
            .iter()
            .zip(&new)
            .map(|(row, (stored, hash))| {
                let mut sets = described::value_sets(
                    field,
                    Some(stored),
                    Some(hash.as_ref().map(|h| h.as_bytes())),
                );
                sets.push((plain_column, Arg::Null));
                (row.id, sets)
            })
            .collect();
        let updated = described::update_rows(conn, self.table, updates, Some(&pending)).await?;
        if updated != new.len() {
            // The locks rule this out; roll back rather than guess.
            tracing::error!(
                rows = new.len(),
                updated,
                "encrypt-existing: rows changed during their batch"
            );
            return Err(ModelError::NotFound {
                table: self.table.bound_name,
                id: rows.first().map_or(0, |r| r.id),
            });
        }
        Ok(new.len() as u64)
    }

    /// The plaintext of a pending row, as the field's value.
    fn plaintext<'r>(&self, row: &'r StoredRow) -> Result<&'r [u8]> {
        let value = row.values[self.index].plaintext.as_deref().ok_or_else(|| {
            ModelError::Crypto(jarvis_crypt::Error::InvalidStoredForm(format!(
                "{} {}: selected as pending without a plaintext",
                self.table.name, row.id
            )))
        })?;
        if self.field().kind == ValueKind::Text {
            text(value, row.id)?;
        }
        Ok(value)
    }

    /// Checks that every new value decrypts, bound to its row and through the key provider,
    /// to the plaintext it was made from.
    async fn verify(
        &self,
        rows: &[StoredRow],
        new: &[(StoredField, Option<jarvis_crypt::SearchHash>)],
    ) -> Result<()> {
        let field = self.field();
        let items: Vec<_> = rows
            .iter()
            .zip(new)
            .map(|(row, (stored, _))| (described::binding(self.table, field, row), stored))
            .collect();
        let decrypted = self.verifier.decrypt_many(&items).await;
        for (row, back) in rows.iter().zip(decrypted) {
            let back = back.inspect_err(|error| {
                tracing::error!(
                    error = %error,
                    "encrypt-existing: verification could not decrypt a new value"
                );
            })?;
            if Some(back.as_slice()) != row.values[self.index].plaintext.as_deref() {
                return Err(self.verification_failed(row.id));
            }
        }
        Ok(())
    }

    fn verification_failed(&self, id: i64) -> ModelError {
        tracing::error!(id, "encrypt-existing: verification failed");
        ModelError::Crypto(jarvis_crypt::Error::InvalidStoredForm(format!(
            "encrypt-existing: the new stored form of {} {id} does not decrypt to its \
             plaintext; the batch was rolled back",
            self.table.name
        )))
    }
}

/// A text field's plaintext as text.
fn text(value: &[u8], id: i64) -> Result<&str> {
    std::str::from_utf8(value).map_err(|_| {
        tracing::error!(id, "encrypt-existing: a plaintext is not UTF-8 text");
        ModelError::Crypto(jarvis_crypt::Error::InvalidPlaintext(
            "a plaintext of a text field is not UTF-8",
        ))
    })
}
