//! `jarvis rotate`: re-encrypt values under fresh data keys, re-wrap data keys under another
//! master key, or upgrade legacy rows, table by table in batches.
//!
//! # Modes
//!
//! | mode | what a row gets | a row is pending while |
//! |---|---|---|
//! | [`RotateMode::OlderThan`] | its values re-encrypted under fresh data keys | `COALESCE(last_rotated_at, created_at)` is before the cut-off (the run's start minus the age) |
//! | [`RotateMode::Reencrypt`] | the same, for every row | `last_rotated_at` is NULL or before the start of the run (kept in `jarvis_jobs`, so a rerun resumes the interrupted run) |
//! | [`RotateMode::ToKey`] | its data keys re-wrapped under another master key (KMS `ReEncrypt`); ciphertexts untouched | a data key is not yet under that master key |
//! | [`RotateMode::Legacy`] | its legacy values (16-byte IV, no associated data, bare KMS blob) re-encrypted in the current form, search hash included | a value is legacy |
//!
//! Re-encryption writes through [`Encryptor::with_fresh_data_key`] of the store's encryptor:
//! new data keys under the store's current master key (for "re-encrypt under another master
//! key", build the store's encryptor with that key as its provider and the old one through
//! [`EncryptorBuilder::decrypt_with`](jarvis_crypt::EncryptorBuilder::decrypt_with)). Re-wrapping
//! calls the provider once per distinct data key of the run, however many rows share it, so
//! rows that shared a data key still share one.
//!
//! Only values in the current form are re-encrypted or re-wrapped; rows holding a legacy value
//! are left to [`RotateMode::Legacy`] (counted in [`RotateReport::legacy_skipped`]), and
//! `users` rows still in plaintext to `encrypt-existing`. Every rotated row gets
//! `rotation_count + 1` and `last_rotated_at = now`.
//!
//! # One batch
//!
//! As in [`encrypt_existing`](super::encrypt_existing): one transaction; up to `batch_size`
//! pending rows `ORDER BY id`, on PostgreSQL `FOR UPDATE SKIP LOCKED` (workers and processes
//! never take the same row); the new rows are built, then **verified** before anything is
//! written: they are decrypted through a second encryptor with an empty cache (so every new
//! wrapped key is unwrapped by the key provider itself) and must give exactly the values read;
//! then one `UPDATE` per row, the rotation columns for the batch, `COMMIT`, one audit event
//! ([`Operation::Rotate`] or [`Operation::Rewrap`]) with the batch's ids.
//!
//! # Safety and resumption
//!
//! A row is written by one `UPDATE` in one transaction: at any moment it holds its old valid
//! form or its new verified one. A row that is done is no longer pending, so a rerun (after a
//! kill, a crash, a KMS outage) continues where the run stopped. The stop flag finishes the
//! current batch. Failures end the job with the first failed batch's error; committed batches
//! stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{NaiveDateTime, Utc};
use diesel::sql_types::Bool;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    AuditEvent, AuditSink, Encrypted, Encryptor, MasterKeyRef, Operation, WrappedKey,
    envelope_header,
};
use std::sync::Mutex;
use tokio::sync::OnceCell;

use super::runner::{Batches, Progress};
use crate::db::{Conn, Database, Transaction};
use crate::error::ModelError;
use crate::migrations::Backend;
use crate::models::{
    ApiKey, ApiKeyRow, EncryptedBackup, EncryptedBackupRow, OAuthToken, OAuthTokenRow, User,
    UserRow,
};
use crate::schema::{api_keys, encrypted_backups, jarvis_jobs, oauth_tokens, users};
use crate::store::Store;
use crate::with_conn;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What to do to each pending row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotateMode {
    /// Re-encrypt the values of rows last rotated (or, never rotated, created) longer ago
    /// than this (the original schedule: 90 days for active credentials).
    OlderThan(chrono::Duration),
    /// Re-encrypt every value under fresh data keys: the answer to a compromised data key.
    Reencrypt,
    /// Re-wrap every data key under this master key, without touching the ciphertexts: for
    /// retiring a master key.
    ToKey(MasterKeyRef),
    /// Rewrite legacy rows in the current form (the encryptor must allow legacy rows).
    Legacy,
}

impl RotateMode {
    fn name(&self) -> &'static str {
        match self {
            RotateMode::OlderThan(_) => "older-than",
            RotateMode::Reencrypt => "reencrypt",
            RotateMode::ToKey(_) => "to-key",
            RotateMode::Legacy => "legacy",
        }
    }

    fn operation(&self) -> Operation {
        match self {
            RotateMode::ToKey(_) => Operation::Rewrap,
            _ => Operation::Rotate,
        }
    }
}

/// The tables `rotate` knows, in the order it does them.
pub const TABLES: [&str; 4] = ["users", "api_keys", "oauth_tokens", "encrypted_backups"];

/// What to rotate and how.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// The mode.
    pub mode: RotateMode,
    /// Only this table (one of [`TABLES`]); all of them when `None`.
    pub table: Option<String>,
    /// Rows per batch, one transaction each (default
    /// [`DEFAULT_BATCH_SIZE`](Self::DEFAULT_BATCH_SIZE)); at least 1.
    pub batch_size: usize,
    /// Count the pending rows, write nothing.
    pub dry_run: bool,
    /// Concurrent batch loops in this process (default 1); at least 1.
    pub workers: usize,
    /// Where the per-batch audit events go.
    pub audit: Arc<dyn AuditSink>,
    /// Checked by every worker before each batch: once `true`, workers finish the batch they
    /// are in and the job returns its report with `stopped` set.
    pub stop: Option<Arc<AtomicBool>>,
}

impl RotateOptions {
    /// The default batch size.
    pub const DEFAULT_BATCH_SIZE: usize = 500;

    /// Options for `mode` on every table, with the defaults.
    pub fn new(mode: RotateMode, audit: Arc<dyn AuditSink>) -> Self {
        RotateOptions {
            mode,
            table: None,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            dry_run: false,
            workers: 1,
            audit,
            stop: None,
        }
    }

    fn tables(&self) -> Result<Vec<&'static str>> {
        match &self.table {
            None => Ok(TABLES.to_vec()),
            Some(table) => TABLES
                .iter()
                .find(|t| **t == table.as_str())
                .map(|t| vec![*t])
                .ok_or_else(|| {
                    configuration(format!(
                        "rotate: unknown table `{table}`; known: {}",
                        TABLES.join(", ")
                    ))
                }),
        }
    }

    fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(configuration("rotate: the batch size must be at least 1"));
        }
        if self.workers == 0 {
            return Err(configuration("rotate: at least one worker is needed"));
        }
        if let RotateMode::OlderThan(age) = self.mode
            && age < chrono::Duration::zero()
        {
            return Err(configuration("rotate: --older-than must not be negative"));
        }
        Ok(())
    }
}

/// What a run did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableReport {
    /// The table.
    pub table: &'static str,
    /// Rows pending when the run reached the table.
    pub rows_at_start: u64,
    /// Rows rotated and committed (0 in a dry run).
    pub rows_rotated: u64,
    /// Values (encrypted fields) rewritten.
    pub values: u64,
    /// Batches committed.
    pub batches: u64,
    /// Rows pending when the run left the table.
    pub rows_remaining: u64,
    /// Rows left alone because they hold a legacy value (modes other than `Legacy`).
    pub legacy_skipped: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RotateReport {
    /// The mode's name: `older-than`, `reencrypt`, `to-key` or `legacy`.
    pub mode: &'static str,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Per table, in the order done.
    pub tables: Vec<TableReport>,
    /// Distinct data keys re-wrapped (`to-key`): one provider call each.
    pub keys_rewrapped: u64,
    /// Keys of `jarvis_keys` (the stored search key) re-wrapped under the master key the
    /// whole database moved to (`to-key`, or `reencrypt` under a new master key).
    pub stored_keys_rewrapped: u64,
    /// Whether the stop flag ended the run before every pending row was done.
    pub stopped: bool,
    /// When the run (or, resumed, the interrupted run it continues) started: rows rotated
    /// after it are done (`reencrypt`).
    pub started_at: NaiveDateTime,
    /// Wall-clock time of the run.
    pub duration: Duration,
}

impl RotateReport {
    /// Rows rotated by the run, all tables.
    pub fn rows_rotated(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_rotated).sum()
    }

    /// Rows still pending, all tables.
    pub fn rows_remaining(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_remaining).sum()
    }

    /// Legacy rows left alone, all tables.
    pub fn legacy_skipped(&self) -> u64 {
        self.tables.iter().map(|t| t.legacy_skipped).sum()
    }

    /// Rows rotated per second of the run.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.rows_rotated() as f64 / secs
        } else {
            0.0
        }
    }
}

/// Rotates the pending rows of the chosen tables (see the [module docs](self)), calling
/// `progress` after each committed batch.
pub async fn rotate(
    store: &Store,
    options: &RotateOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RotateReport> {
    let started = Instant::now();
    options.check()?;
    let tables = options.tables()?;
    let db = store.database();
    if options.mode == RotateMode::Legacy && !store.encryptor().allows_legacy() {
        return Err(configuration(
            "rotate --legacy needs an encryptor that accepts legacy rows (allow_legacy)",
        ));
    }
    let now = now();
    let started_at = match &options.mode {
        RotateMode::Reencrypt if !options.dry_run => {
            resume_or_start(db, &reencrypt_parameters(store, &tables), now).await?
        }
        _ => now,
    };
    let predicates: Vec<Predicate> = tables
        .iter()
        .map(|t| Predicate::new(db.backend(), t, &options.mode, started_at))
        .collect::<Result<_>>()?;
    let mut report = RotateReport {
        mode: options.mode.name(),
        dry_run: options.dry_run,
        tables: Vec::new(),
        keys_rewrapped: 0,
        stored_keys_rewrapped: 0,
        stopped: false,
        started_at,
        duration: Duration::ZERO,
    };
    let mut total = 0;
    for (table, predicate) in tables.iter().zip(&predicates) {
        let pending = count(db, table, &predicate.pending).await?;
        let legacy_skipped = match &predicate.skipped {
            Some(skipped) => count(db, table, skipped).await?,
            None => 0,
        };
        total += pending;
        report.tables.push(TableReport {
            table,
            rows_at_start: pending,
            rows_remaining: pending,
            legacy_skipped,
            ..TableReport::default()
        });
    }
    tracing::info!(
        mode = report.mode,
        tables = ?tables,
        pending = total,
        batch_size = options.batch_size,
        workers = options.workers,
        dry_run = options.dry_run,
        "rotate: starting"
    );
    if options.dry_run {
        report.duration = started.elapsed();
        return Ok(report);
    }

    let job = Job {
        store,
        options,
        verifier: store.encryptor().with_fresh_data_key(),
        writer: store.encryptor().with_fresh_data_key(),
        rewrapped: Mutex::default(),
    };
    let mut done = 0;
    for (index, predicate) in predicates.iter().enumerate() {
        let table = report.tables[index].table;
        let batches = Batches::new(options.stop.as_ref(), progress, done, total);
        let values = std::sync::atomic::AtomicU64::new(0);
        let result = batches
            .run(options.workers, |_| job.batch(table, predicate, &values))
            .await;
        let entry = &mut report.tables[index];
        entry.rows_rotated = batches.rows_done();
        entry.batches = batches.batches();
        entry.values = values.into_inner();
        done += entry.rows_rotated;
        report.keys_rewrapped = job.keys_rewrapped();
        if let Err(error) = result {
            tracing::error!(
                error = %error,
                table,
                rows_rotated = done,
                "rotate: stopped by a failed batch; committed batches stay, rerun to finish"
            );
            return Err(error);
        }
        entry.rows_remaining = count(db, table, &predicate.pending).await?;
        if batches.stopped() {
            report.stopped = true;
            // The tables not reached keep their counts as pending.
            break;
        }
    }
    report.stopped = report.stopped && report.rows_remaining() > 0;
    // The stored search key goes along when the whole database moves to a master key.
    let moved_to = match &options.mode {
        RotateMode::ToKey(to) => Some(to.clone()),
        RotateMode::Reencrypt => Some(store.encryptor().master_key()),
        _ => None,
    };
    if let Some(to) = moved_to
        && !report.stopped
        && options.table.is_none()
    {
        report.stored_keys_rewrapped =
            crate::keys::rewrap_stored_keys_with(db, store.encryptor(), &to).await?;
    }
    if options.mode == RotateMode::Reencrypt && !report.stopped && report.rows_remaining() == 0 {
        finish(db, &reencrypt_parameters(store, &tables), started_at).await?;
    }
    report.duration = started.elapsed();
    tracing::info!(
        rows_rotated = report.rows_rotated(),
        keys_rewrapped = report.keys_rewrapped,
        rows_remaining = report.rows_remaining(),
        stopped = report.stopped,
        seconds = report.duration.as_secs_f64(),
        "rotate: done"
    );
    Ok(report)
}

fn configuration(message: impl Into<String>) -> ModelError {
    ModelError::Crypto(jarvis_crypt::Error::Configuration(message.into()))
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

// ---- the run's start, for `reencrypt` -------------------------------------------------------

const REENCRYPT_JOB: &str = "rotate-reencrypt";

/// A re-encryption run is the same run when it covers the same tables and writes under the
/// same master key.
fn reencrypt_parameters(store: &Store, tables: &[&str]) -> String {
    format!(
        "tables={};master_key={}",
        tables.join(","),
        store.encryptor().master_key()
    )
}

/// The start of the unfinished run with these parameters, or of a new one.
async fn resume_or_start(
    db: &Database,
    parameters: &str,
    now: NaiveDateTime,
) -> Result<NaiveDateTime> {
    let mut conn = db.get().await?;
    let unfinished: Option<NaiveDateTime> = with_conn!(&mut conn, |c| jarvis_jobs::table
        .filter(jarvis_jobs::kind.eq(REENCRYPT_JOB))
        .filter(jarvis_jobs::parameters.eq(parameters))
        .filter(jarvis_jobs::finished_at.is_null())
        .order(jarvis_jobs::started_at.asc())
        .select(jarvis_jobs::started_at)
        .first(c)
        .await
        .optional()?);
    if let Some(started_at) = unfinished {
        tracing::info!(%started_at, "rotate: resuming the unfinished re-encryption run");
        return Ok(started_at);
    }
    with_conn!(&mut conn, |c| diesel::insert_into(jarvis_jobs::table)
        .values((
            jarvis_jobs::kind.eq(REENCRYPT_JOB),
            jarvis_jobs::parameters.eq(parameters),
            jarvis_jobs::started_at.eq(now),
        ))
        .execute(c)
        .await?);
    Ok(now)
}

async fn finish(db: &Database, parameters: &str, started_at: NaiveDateTime) -> Result<()> {
    let mut conn = db.get().await?;
    with_conn!(&mut conn, |c| diesel::update(
        jarvis_jobs::table
            .filter(jarvis_jobs::kind.eq(REENCRYPT_JOB))
            .filter(jarvis_jobs::parameters.eq(parameters))
            .filter(jarvis_jobs::started_at.eq(started_at))
            .filter(jarvis_jobs::finished_at.is_null())
    )
    .set(jarvis_jobs::finished_at.eq(now()))
    .execute(c)
    .await?);
    Ok(())
}

// ---- which rows are pending -----------------------------------------------------------------

/// The stored-form columns of one encrypted field.
#[derive(Debug, Clone, Copy)]
struct Field {
    ciphertext: &'static str,
    iv: &'static str,
    data_key: &'static str,
}

/// SQL conditions over a table's columns, written for one backend. Everything interpolated
/// is a column name of this module, a hex literal or a formatted timestamp: no input text.
#[derive(Debug)]
struct Predicate {
    /// The rows the mode still has to do.
    pending: String,
    /// The rows the mode leaves alone and reports (legacy rows).
    skipped: Option<String>,
}

impl Predicate {
    fn new(
        backend: Backend,
        table: &str,
        mode: &RotateMode,
        started_at: NaiveDateTime,
    ) -> Result<Self> {
        let fields = fields_of(table);
        let any = |f: &dyn Fn(&Field) -> String| {
            let parts: Vec<String> = fields.iter().map(f).collect();
            format!("({})", parts.join(" OR "))
        };
        let legacy = any(&|f| format!("COALESCE(length({}), 0) = 16", f.iv));
        let current = any(&|f| format!("COALESCE(length({}), 0) = 12", f.iv));
        let timestamp = |at: NaiveDateTime| {
            let text = at.format("%Y-%m-%d %H:%M:%S%.6f");
            match backend {
                Backend::Postgres => format!("TIMESTAMP '{text}'"),
                Backend::Sqlite => format!("'{text}'"),
            }
        };
        let reencrypt = |rotated_before: String| Predicate {
            pending: format!("{current} AND NOT {legacy} AND {rotated_before}"),
            skipped: Some(legacy.clone()),
        };
        Ok(match mode {
            RotateMode::Legacy => Predicate {
                pending: legacy.clone(),
                skipped: None,
            },
            RotateMode::OlderThan(age) => {
                let cutoff = started_at
                    .checked_sub_signed(*age)
                    .ok_or_else(|| configuration("rotate: --older-than is too far back"))?;
                reencrypt(format!(
                    "COALESCE(last_rotated_at, created_at) < {}",
                    timestamp(cutoff)
                ))
            }
            RotateMode::Reencrypt => reencrypt(format!(
                "(last_rotated_at IS NULL OR last_rotated_at < {})",
                timestamp(started_at)
            )),
            RotateMode::ToKey(to) => {
                let header = envelope_header(to)?;
                let literal = match backend {
                    Backend::Postgres => format!("'\\x{}'::bytea", hex(&header)),
                    Backend::Sqlite => format!("x'{}'", hex(&header)),
                };
                let n = header.len();
                let not_under = any(&|f| {
                    format!(
                        "(COALESCE(length({iv}), 0) = 12 AND substr({dk}, 1, {n}) <> {literal})",
                        iv = f.iv,
                        dk = f.data_key
                    )
                });
                Predicate {
                    pending: format!("{not_under} AND NOT {legacy}"),
                    skipped: Some(legacy.clone()),
                }
            }
        })
    }
}

/// Distinct data keys re-wrapped at once by one batch.
const REWRAP_CONCURRENCY: usize = 16;

/// Whether `key` is wrapped under `to` already.
fn is_under(key: &WrappedKey, to: &MasterKeyRef) -> Result<bool> {
    Ok(key.envelope()?.master_key() == Some(to))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fields_of(table: &str) -> &'static [Field] {
    match table {
        "users" => <User as RotateTable>::FIELDS,
        "api_keys" => <ApiKey as RotateTable>::FIELDS,
        "oauth_tokens" => <OAuthToken as RotateTable>::FIELDS,
        _ => <EncryptedBackup as RotateTable>::FIELDS,
    }
}

async fn count(db: &Database, table: &str, predicate: &str) -> Result<u64> {
    let mut conn = db.get().await?;
    let n = match table {
        "users" => User::count(&mut conn, predicate).await?,
        "api_keys" => ApiKey::count(&mut conn, predicate).await?,
        "oauth_tokens" => OAuthToken::count(&mut conn, predicate).await?,
        _ => EncryptedBackup::count(&mut conn, predicate).await?,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---- the tables -----------------------------------------------------------------------------

/// What the job needs of a model's table beyond [`Encrypted`].
#[async_trait]
trait RotateTable: Encrypted + Clone + PartialEq + 'static
where
    Self::Row: Clone + Sync,
{
    /// The stored-form columns of each encrypted field.
    const FIELDS: &'static [Field];
    /// Rows matching `predicate`, by id, locked on PostgreSQL (`FOR UPDATE SKIP LOCKED`).
    async fn pending(conn: &mut Conn, predicate: &str, limit: i64) -> Result<Vec<Self::Row>>;
    /// Rows matching `predicate`.
    async fn count(conn: &mut Conn, predicate: &str) -> Result<i64>;
    /// Writes a row's columns; the number of rows changed.
    async fn update(conn: &mut Conn, row: &Self::Row) -> Result<usize>;
    /// Counts a rotation of rows `ids`.
    async fn mark_rotated(conn: &mut Conn, ids: &[i64], at: NaiveDateTime) -> Result<usize>;
    /// The row's id.
    fn id(row: &Self::Row) -> i64;
    /// The row's wrapped data keys (of the values it has).
    fn data_keys_mut(row: &mut Self::Row) -> Vec<&mut WrappedKey>;
}

/// A data-key column's value, NOT NULL or nullable.
trait KeySlot {
    fn slot(&mut self) -> Option<&mut WrappedKey>;
}
impl KeySlot for WrappedKey {
    fn slot(&mut self) -> Option<&mut WrappedKey> {
        Some(self)
    }
}
impl KeySlot for Option<WrappedKey> {
    fn slot(&mut self) -> Option<&mut WrappedKey> {
        self.as_mut()
    }
}

macro_rules! rotate_table {
    ($model:ty, $row:ty, $table:ident, [$(($ct:ident, $iv:ident, $dk:ident)),+ $(,)?]) => {
        #[async_trait]
        impl RotateTable for $model {
            const FIELDS: &'static [Field] = &[$(Field {
                ciphertext: stringify!($ct),
                iv: stringify!($iv),
                data_key: stringify!($dk),
            }),+];

            async fn pending(conn: &mut Conn, predicate: &str, limit: i64) -> Result<Vec<$row>> {
                macro_rules! query {
                    () => {
                        $table::table
                            .filter(diesel::dsl::sql::<Bool>(predicate))
                            .order($table::id)
                            .limit(limit)
                            .select(<$row>::as_select())
                    };
                }
                Ok(match conn {
                    Conn::Postgres(c) => {
                        query!().for_update().skip_locked().load(&mut **c).await?
                    }
                    Conn::Sqlite(c) => query!().load(&mut **c).await?,
                })
            }

            async fn count(conn: &mut Conn, predicate: &str) -> Result<i64> {
                Ok(with_conn!(conn, |c| $table::table
                    .filter(diesel::dsl::sql::<Bool>(predicate))
                    .count()
                    .get_result(c)
                    .await?))
            }

            async fn update(conn: &mut Conn, row: &$row) -> Result<usize> {
                Ok(with_conn!(conn, |c| diesel::update($table::table.find(row.id))
                    .set(row)
                    .execute(c)
                    .await?))
            }

            async fn mark_rotated(
                conn: &mut Conn,
                ids: &[i64],
                at: NaiveDateTime,
            ) -> Result<usize> {
                Ok(with_conn!(conn, |c| diesel::update(
                    $table::table.filter($table::id.eq_any(ids))
                )
                .set((
                    $table::rotation_count.eq($table::rotation_count + 1),
                    $table::last_rotated_at.eq(at),
                ))
                .execute(c)
                .await?))
            }

            fn id(row: &$row) -> i64 {
                row.id
            }

            fn data_keys_mut(row: &mut $row) -> Vec<&mut WrappedKey> {
                let mut keys = Vec::new();
                $(keys.extend(KeySlot::slot(&mut row.$dk));)+
                keys
            }
        }
    };
}

rotate_table!(
    User,
    UserRow,
    users,
    [(encrypted_email, email_iv, email_data_key)]
);
rotate_table!(
    ApiKey,
    ApiKeyRow,
    api_keys,
    [(encrypted_key, key_iv, key_data_key)]
);
rotate_table!(
    OAuthToken,
    OAuthTokenRow,
    oauth_tokens,
    [
        (
            encrypted_access_token,
            access_token_iv,
            access_token_data_key
        ),
        (
            encrypted_refresh_token,
            refresh_token_iv,
            refresh_token_data_key
        ),
    ]
);
rotate_table!(
    EncryptedBackup,
    EncryptedBackupRow,
    encrypted_backups,
    [(encrypted_data, data_iv, data_data_key)]
);

// ---- the batches ----------------------------------------------------------------------------

/// What the batches of one run share.
struct Job<'a> {
    store: &'a Store,
    options: &'a RotateOptions,
    /// Decrypts new rows through the key provider (an empty cache of its own).
    verifier: Encryptor,
    /// Encrypts re-encrypted values: fresh data keys of this run.
    writer: Encryptor,
    /// Re-wrapped data keys of this run, by their old bytes: each is re-wrapped once.
    rewrapped: Mutex<HashMap<Vec<u8>, Arc<OnceCell<WrappedKey>>>>,
}

impl Job<'_> {
    /// One batch of `table`, audited: the number of rows rotated (0: nothing pending).
    async fn batch(
        &self,
        table: &'static str,
        predicate: &Predicate,
        values: &std::sync::atomic::AtomicU64,
    ) -> Result<u64> {
        let started = Instant::now();
        let mut ids = Vec::new();
        let result = match table {
            "users" => self.run::<User>(predicate, &mut ids).await,
            "api_keys" => self.run::<ApiKey>(predicate, &mut ids).await,
            "oauth_tokens" => self.run::<OAuthToken>(predicate, &mut ids).await,
            _ => self.run::<EncryptedBackup>(predicate, &mut ids).await,
        };
        if !ids.is_empty() || result.is_err() {
            let columns: Vec<&str> = fields_of(table).iter().map(|f| f.ciphertext).collect();
            let key = match &self.options.mode {
                RotateMode::ToKey(to) => to.key_id.clone(),
                _ => self.writer.master_key().key_id,
            };
            let mut event =
                AuditEvent::new(self.options.mode.operation(), table.to_owned(), started)
                    .column(columns.join(","))
                    .records(ids.iter().copied())
                    .key(key);
            if let Err(error) = &result {
                event = event.failed(error.kind());
            }
            self.options.audit.record(event);
        }
        match result {
            Ok((rows, n)) => {
                values.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                tracing::debug!(table, rows, values = n, "rotate: batch committed");
                Ok(rows)
            }
            Err(error) => {
                tracing::warn!(table, rows = ids.len(), error = %error, "rotate: batch rolled back");
                Err(error)
            }
        }
    }

    /// One batch in one transaction: (rows, values) rotated.
    async fn run<M>(&self, predicate: &Predicate, ids: &mut Vec<i64>) -> Result<(u64, u64)>
    where
        M: RotateTable,
        M::Row: Clone + Sync,
    {
        let mut tx = Transaction::begin(self.store.database()).await?;
        match self.rotate_batch::<M>(tx.conn()?, predicate, ids).await {
            Ok(counts) => {
                tx.commit().await?;
                Ok(counts)
            }
            Err(error) => {
                tx.rollback().await;
                Err(error)
            }
        }
    }

    async fn rotate_batch<M>(
        &self,
        conn: &mut Conn,
        predicate: &Predicate,
        ids: &mut Vec<i64>,
    ) -> Result<(u64, u64)>
    where
        M: RotateTable,
        M::Row: Clone + Sync,
    {
        let limit = i64::try_from(self.options.batch_size).unwrap_or(i64::MAX);
        let rows = M::pending(conn, &predicate.pending, limit).await?;
        ids.extend(rows.iter().map(M::id));
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let models = M::decrypt_rows(rows.clone(), self.store.encryptor()).await?;
        let (new_rows, values) = match &self.options.mode {
            RotateMode::ToKey(to) => self.rewrap_rows::<M>(rows, to).await?,
            _ => {
                let mut new_rows = Vec::with_capacity(models.len());
                for model in &models {
                    new_rows.push(model.encrypt_row(&self.writer).await?);
                }
                let values = new_rows
                    .iter_mut()
                    .map(|row| M::data_keys_mut(row).len() as u64)
                    .sum();
                (new_rows, values)
            }
        };
        self.verify::<M>(&models, &new_rows).await?;
        for row in &new_rows {
            if M::update(conn, row).await? != 1 {
                // The locks rule this out; roll back rather than guess.
                return Err(ModelError::NotFound {
                    table: "rotated row",
                    id: M::id(row),
                });
            }
        }
        M::mark_rotated(conn, ids, now()).await?;
        Ok((new_rows.len() as u64, values))
    }

    /// The rows with every data key re-wrapped under `to`: each distinct key of the batch
    /// once (up to [`REWRAP_CONCURRENCY`] at a time), and once per run.
    async fn rewrap_rows<M>(
        &self,
        mut rows: Vec<M::Row>,
        to: &MasterKeyRef,
    ) -> Result<(Vec<M::Row>, u64)>
    where
        M: RotateTable,
        M::Row: Clone + Sync,
    {
        use futures::{StreamExt, TryStreamExt};
        let mut distinct: HashMap<Vec<u8>, WrappedKey> = HashMap::new();
        for row in &mut rows {
            for key in M::data_keys_mut(row) {
                if !is_under(key, to)? {
                    distinct
                        .entry(key.as_bytes().to_vec())
                        .or_insert_with(|| key.clone());
                }
            }
        }
        let new: HashMap<Vec<u8>, WrappedKey> = futures::stream::iter(distinct)
            .map(|(bytes, key)| async move {
                Ok::<_, ModelError>((bytes, self.rewrap(&key, to).await?))
            })
            .buffer_unordered(REWRAP_CONCURRENCY)
            .try_collect()
            .await?;
        let mut values = 0;
        for row in &mut rows {
            for key in M::data_keys_mut(row) {
                if let Some(rewrapped) = new.get(key.as_bytes()) {
                    *key = rewrapped.clone();
                    values += 1;
                }
            }
        }
        Ok((rows, values))
    }

    /// `key` re-wrapped under `to`, by the provider once per run: concurrent callers asking
    /// for the same key wait for the first answer.
    async fn rewrap(&self, key: &WrappedKey, to: &MasterKeyRef) -> Result<WrappedKey> {
        let cell = {
            let mut cells = self
                .rewrapped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(cells.entry(key.as_bytes().to_vec()).or_default())
        };
        let new = cell
            .get_or_try_init(|| self.store.encryptor().rewrap(key, to))
            .await?;
        Ok(new.clone())
    }

    /// Data keys re-wrapped so far by this run.
    fn keys_rewrapped(&self) -> u64 {
        self.rewrapped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|cell| cell.initialized())
            .count() as u64
    }

    /// The new rows decrypt, through the key provider, to exactly the models read.
    async fn verify<M>(&self, models: &[M], new_rows: &[M::Row]) -> Result<()>
    where
        M: RotateTable,
        M::Row: Clone + Sync,
    {
        let back = M::decrypt_rows(new_rows.to_vec(), &self.verifier)
            .await
            .inspect_err(|error| {
                tracing::error!(error = %error, "rotate: verification could not decrypt a new row");
            })?;
        if back.len() != models.len() || back.iter().zip(models).any(|(a, b)| a != b) {
            tracing::error!("rotate: verification failed; the batch was rolled back");
            return Err(ModelError::Crypto(jarvis_crypt::Error::InvalidStoredForm(
                "rotate: a rotated row does not decrypt to its values; the batch was rolled back"
                    .into(),
            )));
        }
        Ok(())
    }
}
