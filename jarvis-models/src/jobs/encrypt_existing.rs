//! `jarvis encrypt-existing`: encrypt the plaintext column of a table in the migrating state
//! into its encrypted columns and search hash, clearing the plaintext, in batches.
//!
//! Today one column is in the migrating state: `users.email` ([`SUPPORTED`]); anything else is
//! refused with a configuration error that lists what is supported.
//!
//! # One batch
//!
//! Each batch is one transaction on one pooled connection:
//!
//! 1. `BEGIN` (PostgreSQL) or `BEGIN IMMEDIATE` (SQLite: the database's write lock, so the
//!    workers of a SQLite database take turns).
//! 2. Select up to `batch_size` rows `WHERE encrypted_email IS NULL AND email IS NOT NULL
//!    ORDER BY id`, on PostgreSQL `FOR UPDATE SKIP LOCKED`: workers of this process and of
//!    other processes (on any machine) never take the same row, and a row an application
//!    transaction holds is skipped rather than waited for.
//! 3. Build the [`User`] of each row from its plaintext and encrypt it with
//!    [`Encrypted::encrypt_row`] (ciphertext columns and search hash set, plaintext `NULL`).
//!    `created_at` and `updated_at` are kept: the user's data did not change.
//! 4. **Verify** every new row before anything is written: its plaintext column must be
//!    `NULL`, its ciphertext and search hash present, and it must decrypt (through
//!    [`User::decrypt_rows`], with the row's own id as associated data) to exactly the
//!    plaintext read. Decryption goes through a second [`Encryptor`] with an empty cache
//!    ([`Encryptor::with_fresh_data_key`]; only its decrypt side is used), so the wrapped
//!    data key written into the rows is unwrapped by the key provider itself, once per
//!    distinct data key per run: a provider that can generate keys but not unwrap them (a
//!    KMS key policy granting `GenerateDataKey` but not `Decrypt`) stops the job before its
//!    first commit instead of writing rows nobody can read. Any failure or mismatch rolls the
//!    batch back and ends the job with that error.
//! 5. `UPDATE users SET <all stored-form columns, email = NULL> WHERE id = $1 AND
//!    encrypted_email IS NULL AND email IS NOT NULL`, one statement per row; a row that no
//!    longer matches (which the locks rule out) rolls the batch back too.
//! 6. `COMMIT`, then one audit event ([`Operation::Migrate`], table `users`, column
//!    `encrypted_email`, the batch's record ids, the master key id) and a [`Progress`] call.
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
//! each taking a connection from the store's pool for each batch; more workers than the
//! pool has connections wait for one. On SQLite they serialize on the write lock (a whole
//! batch, encryption included, runs inside it, so one worker is as fast; a worker waits at
//! most the connection's `busy_timeout` for it, then fails with a database error). On
//! PostgreSQL they run in parallel, as do several processes running the job at once.
//!
//! # Counts
//!
//! "Pending" rows are those the job would encrypt: no ciphertext and a plaintext email.
//! The report's `rows_remaining` counts them after the run: more than zero after a run that
//! was not stopped means rows were locked by other transactions or written in plaintext
//! meanwhile; run the job again. Rows with both a ciphertext and a plaintext email (written
//! by hand or by an old application after their migration) are not touched: which value is
//! right cannot be decided here; they are counted in `rows_conflicting`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{AuditEvent, AuditSink, Encrypted, Encryptor, Operation};

use super::runner::Batches;
pub use super::runner::Progress;
use crate::db::{Conn, Database, Transaction};
use crate::error::ModelError;
use crate::models::{User, UserRow};
use crate::schema::users;
use crate::store::Store;
use crate::with_conn;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The `(table, plaintext column)` pairs the job can migrate: the columns in the migrating
/// state.
pub const SUPPORTED: &[(&str, &str)] = &[("users", "email")];

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
    /// Where the per-batch audit events go: normally the sink the [`Store`] was built with.
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

    fn check(&self) -> Result<()> {
        let supported = SUPPORTED
            .iter()
            .any(|(table, column)| *table == self.table && *column == self.column);
        if !supported {
            let list: Vec<String> = SUPPORTED
                .iter()
                .map(|(table, column)| format!("{table}.{column}"))
                .collect();
            return Err(configuration(format!(
                "encrypt-existing: `{}`.`{}` is not a plaintext column in the migrating state; \
                 supported: {}",
                self.table,
                self.column,
                list.join(", ")
            )));
        }
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
        Ok(())
    }
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

/// Encrypts the pending plaintext of `options.table`.`options.column` in batches (see the
/// [module docs](self)), calling `progress` after each committed batch.
///
/// Returns the report of the run, or the error of the first failed batch (batches committed
/// before it stay committed; run the job again to finish). Refuses unsupported columns, a
/// batch size of 0 and 0 workers with a configuration error ([`ModelError::Crypto`] of
/// [`jarvis_crypt::Error::Configuration`]).
pub async fn encrypt_existing(
    store: &Store,
    options: &EncryptExistingOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<EncryptExistingReport> {
    let started = Instant::now();
    options.check()?;
    let before = counts(store.database()).await?;
    let batch_size = options.batch_size as u64;
    tracing::info!(
        table = %options.table,
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
        store,
        options,
        verifier: store.encryptor().with_fresh_data_key(),
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
    let after = counts(store.database()).await?;
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

fn configuration(message: impl Into<String>) -> ModelError {
    ModelError::Crypto(jarvis_crypt::Error::Configuration(message.into()))
}

/// Rows pending, and rows with both forms.
#[derive(Debug, Clone, Copy)]
struct Counts {
    pending: u64,
    conflicting: u64,
}

async fn counts(db: &Database) -> Result<Counts> {
    let mut conn = db.get().await?;
    let pending: i64 = with_conn!(&mut conn, |c| users::table
        .filter(users::encrypted_email.is_null())
        .filter(users::email.is_not_null())
        .count()
        .get_result(c)
        .await?);
    let conflicting: i64 = with_conn!(&mut conn, |c| users::table
        .filter(users::encrypted_email.is_not_null())
        .filter(users::email.is_not_null())
        .count()
        .get_result(c)
        .await?);
    Ok(Counts {
        pending: u64::try_from(pending).unwrap_or(0),
        conflicting: u64::try_from(conflicting).unwrap_or(0),
    })
}

/// What the batches of one run share.
struct Job<'a> {
    store: &'a Store,
    options: &'a EncryptExistingOptions,
    /// Decrypts new rows through the key provider (an empty cache of its own).
    verifier: Encryptor,
}

impl Job<'_> {
    /// One batch, audited: the number of rows encrypted (0: nothing pending).
    async fn batch(&self, worker: usize) -> Result<u64> {
        let started = Instant::now();
        let mut ids = Vec::new();
        let result = self.batch_in_transaction(&mut ids).await;
        if !ids.is_empty() || result.is_err() {
            let mut event = AuditEvent::new(Operation::Migrate, "users".to_owned(), started)
                .column("encrypted_email")
                .records(ids.iter().copied())
                .key(self.store.encryptor().master_key().key_id);
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
        let mut tx = Transaction::begin(self.store.database()).await?;
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
        macro_rules! pending {
            () => {
                users::table
                    .filter(users::encrypted_email.is_null())
                    .filter(users::email.is_not_null())
                    .order(users::id)
                    .limit(limit)
                    .select(UserRow::as_select())
            };
        }
        let rows: Vec<UserRow> = match &mut *conn {
            Conn::Postgres(c) => pending!().for_update().skip_locked().load(&mut **c).await?,
            Conn::Sqlite(c) => pending!().load(&mut **c).await?,
        };
        ids.extend(rows.iter().map(|row| row.id));
        if rows.is_empty() {
            return Ok(0);
        }
        let plain = rows
            .into_iter()
            .map(plaintext_user)
            .collect::<Result<Vec<User>>>()?;
        let encryptor = self.store.encryptor();
        let mut new_rows = Vec::with_capacity(plain.len());
        for user in &plain {
            new_rows.push(user.encrypt_row(encryptor).await?);
        }
        self.verify(&plain, &new_rows).await?;
        for row in &new_rows {
            let target = users::table
                .find(row.id)
                .filter(users::encrypted_email.is_null())
                .filter(users::email.is_not_null());
            let updated = with_conn!(&mut *conn, |c| diesel::update(target)
                .set(row)
                .execute(c)
                .await?);
            if updated != 1 {
                // The locks rule this out; roll back rather than guess.
                tracing::error!(
                    id = row.id,
                    "encrypt-existing: a row changed during its batch"
                );
                return Err(ModelError::NotFound {
                    table: "users",
                    id: row.id,
                });
            }
        }
        Ok(new_rows.len() as u64)
    }

    /// Checks that every new row holds only the encrypted form and decrypts, through the
    /// key provider, to the plaintext it was made from.
    async fn verify(&self, plain: &[User], rows: &[UserRow]) -> Result<()> {
        for (user, row) in plain.iter().zip(rows) {
            if row.id != user.id
                || row.email.is_some()
                || row.encrypted_email.is_none()
                || row.email_hash.is_none()
            {
                return Err(verification_failed(user.id));
            }
        }
        let decrypted = User::decrypt_rows(rows.to_vec(), &self.verifier)
            .await
            .inspect_err(|error| {
                tracing::error!(
                    error = %error,
                    "encrypt-existing: verification could not decrypt a new row"
                );
            })?;
        if decrypted.len() != plain.len() {
            return Err(verification_failed(plain.first().map_or(0, |u| u.id)));
        }
        for (user, back) in plain.iter().zip(&decrypted) {
            if back.id != user.id || back.email != user.email {
                return Err(verification_failed(user.id));
            }
        }
        Ok(())
    }
}

/// The model of a pending row, from its plaintext column.
fn plaintext_user(row: UserRow) -> Result<User> {
    let Some(email) = row.email else {
        return Err(ModelError::Crypto(jarvis_crypt::Error::InvalidStoredForm(
            format!(
                "users {}: selected as pending without a plaintext email",
                row.id
            ),
        )));
    };
    Ok(User {
        id: row.id,
        email,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn verification_failed(id: i64) -> ModelError {
    tracing::error!(id, "encrypt-existing: verification failed");
    ModelError::Crypto(jarvis_crypt::Error::InvalidStoredForm(format!(
        "encrypt-existing: the new stored form of users {id} does not decrypt to its \
         plaintext; the batch was rolled back"
    )))
}
