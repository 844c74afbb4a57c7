//! `jarvis rotate`: re-encrypt values under fresh data keys, re-wrap data keys under another
//! master key, upgrade legacy rows, or recompute search hashes under a new search key, table
//! by table in batches.
//!
//! # Modes
//!
//! | mode | what a row gets | a row is pending while |
//! |---|---|---|
//! | [`RotateMode::OlderThan`] | its values re-encrypted under fresh data keys | its `rotated_at` column (NULL: its `created_at`, if the model names one) is NULL or before the cut-off (the run's start minus the age); tables without `rotated_at` are left out |
//! | [`RotateMode::Reencrypt`] | the same, for every row | any of its values is not under the writer's master key, or no committed batch of this run has done it |
//! | [`RotateMode::ToKey`] | its data keys re-wrapped under another master key (KMS `ReEncrypt`); ciphertexts untouched | a data key is not yet under that master key |
//! | [`RotateMode::Legacy`] | its legacy values (16-byte IV, no associated data, bare KMS blob) re-encrypted in the current form, search hash included | a value is legacy |
//! | [`RotateMode::Rehash`] | its search hashes recomputed under the new root search key; nothing else | no committed batch of this run has done it |
//! | [`RotateMode::Compact`] | the inline envelopes of its data keys replaced by 20-byte references to the keys' copies in the key vault (one provider call and one vault row per distinct key); ciphertexts untouched | a value's data key is an inline envelope |
//!
//! Re-encryption writes through [`Encryptor::with_fresh_data_key`] of the job's encryptor:
//! new data keys under the encryptor's current master key (for "re-encrypt under another master
//! key", build the job's encryptor with that key as its provider and the old one through
//! [`EncryptorBuilder::decrypt_with`](jarvis_crypt::EncryptorBuilder::decrypt_with)). Re-wrapping
//! calls the provider once per distinct data key of the run, however many rows share it, so
//! rows that shared a data key still share one.
//!
//! The job works on any model's table through its description
//! ([`EncryptedTable`](jarvis_crypt::EncryptedTable)): [`rotate`] takes the tables of the
//! models an application registers. It reads and writes only the described columns, by their SQL names, paging and locking by the primary key.
//!
//! Only values in the current form are re-encrypted, re-wrapped or re-hashed; rows holding a
//! legacy value are left to [`RotateMode::Legacy`] (counted in
//! [`RotateReport::legacy_skipped`]), and values still in plaintext to `encrypt-existing`.
//! Rows whose values get new data keys (`older-than`, `reencrypt`, `legacy`) get the columns
//! the model names for it set: `rotated_at = now` and `rotation_count + 1` (the seed's
//! `last_rotated_at` and `rotation_count`), which `--older-than` reads. Re-wrapping and
//! re-hashing change no data key and leave both alone.
//!
//! # What is done: the run's progress, not the rows' timestamps
//!
//! A model's `rotated_at` (the seed's `last_rotated_at`) is written by the application too (an API key replaced, a token
//! refreshed), so it cannot say whether this job has done a row. A `reencrypt` or `rehash`
//! run is recorded in `jarvis_jobs` (kind and parameters); each committed batch records the
//! ids it did in `jarvis_job_progress`, in the batch's own transaction, as ranges of
//! consecutive ids that never overlap (a row done again is in a range already). A row is
//! done by the run exactly when a committed batch of the run rewrote it. On top of that, a
//! `reencrypt` row whose values are not all under the writer's master key is pending
//! whatever the progress says: a value the application writes under the old master key in
//! the middle of a `--reencrypt --to-key NEW` run is taken up again, and the run is finished
//! (its `finished_at` set, its progress deleted) only when a final count over every table
//! finds nothing pending.
//!
//! A run's parameters are its tables, the master key it writes under and the fingerprint of
//! the search key its hashes are computed with (`rehash`: the old and the new fingerprint and
//! every search column's normalizers): a rerun with the same parameters resumes the
//! unfinished run; a rerun with other ones (another search key, say) starts a new run, which
//! does every row again.
//!
//! # One batch
//!
//! As in [`encrypt_existing`](mod@super::encrypt_existing): one transaction; up to `batch_size`
//! pending rows `ORDER BY id` after the worker's keyset cursor (the last id it did in this
//! pass), on PostgreSQL `FOR UPDATE SKIP LOCKED` (workers and processes never take the same
//! row; a row an application transaction holds is skipped, and found by the next pass), and
//! checked again by a second statement against the progress other workers committed
//! meanwhile (ids are looked for in windows of a few batch sizes, an ordered range of the
//! primary key); the new rows are built, then **verified** before anything is written: they
//! are decrypted through a second encryptor with an empty cache (so every new wrapped key is
//! unwrapped by the key provider itself) and must give exactly the values read (`rehash`: and their
//! search hashes, recomputed by a second hasher from the values decrypted, must be the ones
//! written); then one `UPDATE` per row, the rotation columns for the batch, the batch's
//! progress, `COMMIT`, one audit event ([`Operation::Rotate`], [`Operation::Rewrap`] or
//! [`Operation::Rehash`]) with the batch's ids.
//!
//! # Passes, safety and resumption
//!
//! A table is done in passes: each worker walks the table by id once; when every worker has
//! reached the end, the pending rows are counted again, and another pass starts if some
//! remain (rows skipped as locked, rows the application rewrote behind the workers) and the
//! last pass lowered their number; once every table is done, tables with pending rows again
//! get another round, on the same condition. A row is written by one `UPDATE` in one transaction: at
//! any moment it holds its old valid form or its new verified one. A rerun (after a kill, a
//! crash, a KMS outage) continues where the run stopped. The stop flag finishes the current
//! batch. Failures end the job with the first failed batch's error; committed batches stay.
//!
//! # Re-hashing
//!
//! [`RotateMode::Rehash`] is the deliberate change of root search key (or of a column's
//! normalizers). The new key is explicit: [`RotateOptions::search_key`], or the job's
//! encryptor's; the old one is the one whose fingerprint is recorded for the database
//! ([`crate::keys`]). Every search column of every table (each field's
//! [`SearchDescription`]) is recomputed from the decrypted values; when every table is done,
//! the recorded fingerprint is replaced by the new key's
//! ([`replace_search_key_fingerprint`](crate::keys::replace_search_key_fingerprint)), and from
//! then on processes with the new key pass their start-up check. A rerun after that is a
//! no-op. While it runs, lookups of applications still on the old key miss the rows already
//! re-hashed, and rows they write get hashes of the old key: stop them (or their writes and
//! lookups of searchable columns) for its duration, and run `verify` after it, which checks
//! every hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    AuditEvent, AuditSink, Encryptor, FieldDescription, MasterKeyRef, Operation, SearchDescription,
    SearchHash, SearchKey, SearchKeyFingerprint, SearchSpec, StoredField, TableDescription,
    WrappedKey, envelope_header,
};
use secrecy::zeroize::Zeroizing;
use tokio::sync::OnceCell;

use super::Context;
use super::runner::{Batches, Progress};
use crate::db::{Conn, Database, Transaction};
use crate::described::{self, Form, StoredRow, configuration, quote};
use crate::error::ModelError;
use crate::migrations::Backend;
use crate::schema::{jarvis_job_progress, jarvis_jobs};
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
    /// Recompute every search hash under the new root search key
    /// ([`RotateOptions::search_key`], or the job's encryptor's), then record its
    /// fingerprint in place of the old one: a deliberate change of search key, or of a
    /// column's normalizers. Every table at once.
    Rehash,
    /// Move the data keys of values written inline into the key vault: each distinct inline
    /// key is bound to an id by its provider (one call, KMS `ReEncrypt` under the same master
    /// key), stored in the vault once, and its values get the 20-byte reference in place of
    /// the envelope; ciphertexts untouched. The job's encryptor must have a key vault.
    Compact,
}

impl RotateMode {
    fn name(&self) -> &'static str {
        match self {
            RotateMode::OlderThan(_) => "older-than",
            RotateMode::Reencrypt => "reencrypt",
            RotateMode::ToKey(_) => "to-key",
            RotateMode::Legacy => "legacy",
            RotateMode::Rehash => "rehash",
            RotateMode::Compact => "compact",
        }
    }

    fn operation(&self) -> Operation {
        match self {
            RotateMode::ToKey(_) | RotateMode::Compact => Operation::Rewrap,
            RotateMode::Rehash => Operation::Rehash,
            _ => Operation::Rotate,
        }
    }

    /// Whether the mode gives values new data keys (and so counts a rotation).
    fn changes_data_keys(&self) -> bool {
        matches!(
            self,
            RotateMode::OlderThan(_) | RotateMode::Reencrypt | RotateMode::Legacy
        )
    }
}

/// What to rotate and how.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// The mode.
    pub mode: RotateMode,
    /// Only this table (one of the job's tables); all of them when `None`. Not with
    /// [`RotateMode::Rehash`], which does every table.
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
    /// The new root search key of [`RotateMode::Rehash`]; `None`: the job's encryptor's.
    /// Other modes compute search hashes with the job's encryptor and ignore it.
    pub search_key: Option<Arc<SearchKey>>,
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
            search_key: None,
        }
    }

    /// The tables of `all` the options select, in their order.
    fn tables(&self, all: &[&'static TableDescription]) -> Result<Vec<&'static TableDescription>> {
        match &self.table {
            None if self.mode == RotateMode::Rehash => Ok(all
                .iter()
                .copied()
                .filter(|t| searchable(t).next().is_some())
                .collect()),
            None if matches!(self.mode, RotateMode::OlderThan(_)) => {
                // Tables whose age is not described are left out, and said so; `--table`
                // names one explicitly and is refused for it (by its predicate).
                let (dated, undated): (Vec<_>, Vec<_>) =
                    all.iter().copied().partition(|t| t.rotated_at.is_some());
                for table in &undated {
                    tracing::warn!(
                        table = %table.name,
                        model = table.model,
                        "rotate --older-than: left out, its model names no `rotated_at` column"
                    );
                }
                if dated.is_empty() && !undated.is_empty() {
                    return Err(configuration(
                        "rotate --older-than: no registered model names a `rotated_at` column \
                         (`#[encrypted(rotated_at = column)]`), so no row's age is known; \
                         rotate with --reencrypt",
                    ));
                }
                Ok(dated)
            }
            None => Ok(all.to_vec()),
            Some(_) if self.mode == RotateMode::Rehash => Err(configuration(
                "rotate --rehash does every table: the search key changes for all of them at once",
            )),
            Some(table) => all
                .iter()
                .find(|t| t.name == *table || t.bound_name == table.as_str())
                .map(|t| vec![*t])
                .ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
                    configuration(format!(
                        "rotate: unknown table `{table}`; known: {}",
                        known.join(", ")
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
    /// Rows rotated and committed (0 in a dry run); a row the application rewrote under
    /// another master key meanwhile counts again when it is done again.
    pub rows_rotated: u64,
    /// Values (encrypted fields; `rehash`: search hashes) rewritten.
    pub values: u64,
    /// Batches committed.
    pub batches: u64,
    /// Rows pending when the run ended.
    pub rows_remaining: u64,
    /// Rows left alone because they hold a legacy value (modes other than `Legacy`).
    pub legacy_skipped: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RotateReport {
    /// The mode's name: `older-than`, `reencrypt`, `to-key`, `legacy` or `rehash`.
    pub mode: &'static str,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Per table, in the order done.
    pub tables: Vec<TableReport>,
    /// Distinct data keys re-wrapped (`to-key`), the vault's included: one provider call each.
    pub keys_rewrapped: u64,
    /// Keys of the key vault (`jarvis_data_keys`) re-wrapped (`to-key`): one provider call
    /// each, and no data row written for the values that reference them.
    pub vault_keys_rewrapped: u64,
    /// Keys of the key vault revoked by a finished `reencrypt` run over every table: keys
    /// created [`REVOKE_GRACE`](crate::vault::REVOKE_GRACE) or more before the run began that
    /// no value references any more (see
    /// [`revoke_unreferenced_keys`](crate::vault::revoke_unreferenced_keys)).
    pub vault_keys_revoked: u64,
    /// Keys of `jarvis_keys` (the stored search key) re-wrapped under the master key the
    /// whole database moved to (`to-key`, or `reencrypt` under a new master key).
    pub stored_keys_rewrapped: u64,
    /// Whether the stop flag ended the run before every pending row was done.
    pub stopped: bool,
    /// When the run (or, resumed, the interrupted run it continues) started.
    pub started_at: NaiveDateTime,
    /// Wall-clock time of the run.
    pub duration: Duration,
    /// Whether the run is finished: nothing is left pending (for `reencrypt` and `rehash`,
    /// its record in `jarvis_jobs` is closed). `false` after a stop, or when rows remain
    /// (locked by other transactions, or rewritten by the application meanwhile): rerun.
    pub finished: bool,
    /// `rehash`: the fingerprint recorded for the database when the run began (the old
    /// key's) and the new key's, recorded once the run finished.
    pub search_key_fingerprints: Option<(SearchKeyFingerprint, SearchKeyFingerprint)>,
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

/// Rotates the pending rows of the chosen tables among `tables` (the descriptions of
/// registered models, see [`EncryptedTable`](jarvis_crypt::EncryptedTable)), as the
/// [module docs](self) say, calling `progress` after each committed batch.
pub async fn rotate(
    db: &Database,
    encryptor: &Encryptor,
    tables: &[&'static TableDescription],
    options: &RotateOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RotateReport> {
    let cx = Context { db, encryptor };
    let started = Instant::now();
    options.check()?;
    let tables = options.tables(tables)?;
    for table in &tables {
        described::primary_key(table)?;
    }
    if options.mode == RotateMode::Compact && !cx.encryptor().writes_references() {
        return Err(configuration(
            "rotate --compact needs an encryptor with a key vault (EncryptorBuilder::key_vault, \
             Jarvis::key_vault) and a provider that binds data-key ids",
        ));
    }
    if options.mode == RotateMode::Legacy && !cx.encryptor().allows_legacy() {
        return Err(configuration(
            "rotate --legacy needs an encryptor that accepts legacy rows (allow_legacy)",
        ));
    }
    let hashers = match options.mode {
        RotateMode::Rehash => Some(Hashers::new(cx, options).await?),
        _ => None,
    };
    let writer = cx.encryptor().with_fresh_data_key();
    let now = now();
    let run = match (&options.mode, &hashers) {
        (RotateMode::Reencrypt, _) => {
            let parameters = reencrypt_parameters(&writer, &tables);
            Some(RunSpec::new(REENCRYPT_JOB, parameters, None))
        }
        (RotateMode::Rehash, Some(h)) => Some(h.run_spec(&tables)),
        _ => None,
    };
    let run = match &run {
        Some(spec) => match spec.open(db, now, options.dry_run).await? {
            Opened::Run(run) => Some(run),
            Opened::NotStarted => None,
            Opened::AlreadyDone => {
                return Ok(already_done(
                    options,
                    &tables,
                    hashers.as_ref(),
                    now,
                    started,
                ));
            }
        },
        None => None,
    };
    let started_at = run.as_ref().map_or(now, |r| r.started_at);
    let target = writer.master_key();
    let predicates: Vec<Predicate> = tables
        .iter()
        .map(|t| {
            Predicate::new(
                db.backend(),
                t,
                &options.mode,
                started_at,
                run.as_ref().map(|r| r.id),
                &target,
            )
        })
        .collect::<Result<_>>()?;
    let mut report = RotateReport {
        mode: options.mode.name(),
        dry_run: options.dry_run,
        tables: Vec::new(),
        keys_rewrapped: 0,
        vault_keys_rewrapped: 0,
        vault_keys_revoked: 0,
        stored_keys_rewrapped: 0,
        stopped: false,
        started_at,
        duration: Duration::ZERO,
        finished: false,
        search_key_fingerprints: hashers.as_ref().map(|h| (h.old, h.new)),
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
            table: table.name.as_str(),
            rows_at_start: pending,
            rows_remaining: pending,
            legacy_skipped,
            ..TableReport::default()
        });
    }
    tracing::info!(
        mode = report.mode,
        tables = ?tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        pending = total,
        batch_size = options.batch_size,
        workers = options.workers,
        dry_run = options.dry_run,
        run = run.as_ref().map(|r| r.id),
        "rotate: starting"
    );
    if options.dry_run {
        report.duration = started.elapsed();
        return Ok(report);
    }
    if let RotateMode::ToKey(to) = &options.mode {
        // The vault first: one re-wrap per key, however many rows reference it, and no data
        // row written.
        report.vault_keys_rewrapped =
            crate::vault::rewrap_vault_keys(db, cx.encryptor(), to).await?;
        report.keys_rewrapped += report.vault_keys_rewrapped;
    }

    let job = Job {
        cx,
        options,
        verifier: cx.encryptor().with_fresh_data_key(),
        writer,
        hashers,
        run: run.as_ref().map(|r| r.id),
        rewrapped: Mutex::default(),
    };
    if options.mode == RotateMode::Compact {
        // Every distinct inline key's vault copy is stored before the batches, outside their
        // transactions (on SQLite, the vault's insert would wait for a batch's write lock).
        for table in &tables {
            job.compact_keys_of(table).await?;
        }
    }
    let mut done = 0;
    // Rounds over the tables: a table done earlier may have pending rows again once the
    // others are done (values the application wrote under another master key since), so the
    // pending rows of every table are counted after each round, and the tables that have
    // some get another round while rounds lower their number.
    let mut round: Vec<usize> = (0..tables.len()).collect();
    let mut before_round = u64::MAX;
    'rounds: loop {
        let mut rows_this_round = 0;
        for &index in &round {
            let table = tables[index];
            let predicate = &predicates[index];
            let values = AtomicU64::new(0);
            let mut previous = report.tables[index].rows_remaining;
            let outcome = loop {
                // One pass: each worker walks the table by id once, from its own cursor.
                let cursors: Vec<Mutex<Option<i64>>> =
                    (0..options.workers).map(|_| Mutex::new(None)).collect();
                let batches = Batches::new(options.stop.as_ref(), progress, done, total);
                let result = batches
                    .run(options.workers, |worker| {
                        job.batch(table, predicate, &cursors[worker], &values)
                    })
                    .await;
                let entry = &mut report.tables[index];
                entry.rows_rotated += batches.rows_done();
                entry.batches += batches.batches();
                done += batches.rows_done();
                rows_this_round += batches.rows_done();
                report.keys_rewrapped = report.vault_keys_rewrapped + job.keys_rewrapped();
                if let Err(error) = result {
                    break Err(error);
                }
                let remaining = count(db, table, &predicate.pending).await?;
                report.tables[index].rows_remaining = remaining;
                if batches.stopped() {
                    break Ok(true);
                }
                // Rows left behind the workers: skipped as locked, or rewritten meanwhile.
                // Another pass while passes make headway.
                if remaining == 0 || batches.rows_done() == 0 || remaining >= previous {
                    break Ok(false);
                }
                tracing::info!(table = %table.name, remaining, "rotate: rows left behind; another pass");
                previous = remaining;
            };
            report.tables[index].values += values.into_inner();
            match outcome {
                Err(error) => {
                    tracing::error!(
                        error = %error,
                        table = %table.name,
                        rows_rotated = done,
                        "rotate: stopped by a failed batch; committed batches stay, rerun to finish"
                    );
                    return Err(error);
                }
                // The tables not reached keep their counts as pending.
                Ok(true) => {
                    report.stopped = true;
                    break 'rounds;
                }
                Ok(false) => {}
            }
        }
        for ((entry, table), predicate) in report.tables.iter_mut().zip(&tables).zip(&predicates) {
            entry.rows_remaining = count(db, table, &predicate.pending).await?;
        }
        let remaining = report.rows_remaining();
        if remaining == 0 || rows_this_round == 0 || remaining >= before_round {
            break;
        }
        before_round = remaining;
        round = (0..tables.len())
            .filter(|i| report.tables[*i].rows_remaining > 0)
            .collect();
        tracing::info!(
            remaining,
            "rotate: tables done earlier have pending rows again; another round"
        );
    }
    report.stopped = report.stopped && report.rows_remaining() > 0;
    report.finished = !report.stopped && report.rows_remaining() == 0;
    // The stored search key goes along when the whole database moves to a master key.
    let moved_to = match &options.mode {
        RotateMode::ToKey(to) => Some(to.clone()),
        RotateMode::Reencrypt => Some(target.clone()),
        _ => None,
    };
    if let Some(to) = moved_to
        && !report.stopped
        && options.table.is_none()
    {
        report.stored_keys_rewrapped =
            crate::keys::rewrap_stored_keys_with(db, cx.encryptor(), &to).await?;
    }
    if report.finished
        && let Some(run) = &run
    {
        if let Some(hashers) = &job.hashers
            && hashers.old != hashers.new
        {
            crate::keys::replace_search_key_fingerprint(db, &hashers.old, &hashers.new).await?;
            tracing::info!(
                old = %hashers.old.short(),
                new = %hashers.new.short(),
                "rotate: every search hash is under the new search key; its fingerprint is recorded"
            );
        }
        if options.mode == RotateMode::Reencrypt && options.table.is_none() {
            // Every value is under a fresh data key now: the keys it replaced are revoked
            // once nothing references them.
            let grace = crate::vault::REVOKE_GRACE.max(cx.encryptor().cache().limits().max_age * 2);
            let before = run.started_at - chrono::Duration::from_std(grace).unwrap_or_default();
            report.vault_keys_revoked =
                crate::vault::revoke_unreferenced_keys(db, &tables, before).await?;
        }
        run.finish(db).await?;
    }
    report.duration = started.elapsed();
    tracing::info!(
        rows_rotated = report.rows_rotated(),
        keys_rewrapped = report.keys_rewrapped,
        rows_remaining = report.rows_remaining(),
        stopped = report.stopped,
        finished = report.finished,
        seconds = report.duration.as_secs_f64(),
        "rotate: done"
    );
    Ok(report)
}

/// The report of a `rehash` whose work is done already: the database's hashes are under
/// the configured key with the current normalizers.
fn already_done(
    options: &RotateOptions,
    tables: &[&'static TableDescription],
    hashers: Option<&Hashers>,
    now: NaiveDateTime,
    started: Instant,
) -> RotateReport {
    tracing::info!("rotate: every search hash is under this search key already; nothing to do");
    RotateReport {
        mode: options.mode.name(),
        dry_run: options.dry_run,
        tables: tables
            .iter()
            .map(|table| TableReport {
                table: table.name.as_str(),
                ..TableReport::default()
            })
            .collect(),
        keys_rewrapped: 0,
        vault_keys_rewrapped: 0,
        vault_keys_revoked: 0,
        stored_keys_rewrapped: 0,
        stopped: false,
        started_at: now,
        duration: started.elapsed(),
        finished: true,
        search_key_fingerprints: hashers.map(|h| (h.old, h.new)),
    }
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

/// The tables' names, comma-separated.
fn names(tables: &[&TableDescription]) -> String {
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    names.join(",")
}

// ---- runs: `jarvis_jobs` and their progress ----------------------------------------------

const REENCRYPT_JOB: &str = "rotate-reencrypt";
const REHASH_JOB: &str = "rotate-rehash";

/// A re-encryption run is the same run when it covers the same tables, writes under the
/// same master key and computes search hashes with the same search key.
fn reencrypt_parameters(writer: &Encryptor, tables: &[&TableDescription]) -> String {
    let search_key = writer
        .search_key_fingerprint()
        .map_or_else(|| "none".to_owned(), |f| f.to_string());
    format!(
        "tables={};master_key={};search_key={search_key}",
        names(tables),
        writer.master_key()
    )
}

/// The run a job would continue or start: its kind and parameters.
struct RunSpec {
    kind: &'static str,
    parameters: String,
    /// `rehash` with the same old and new key: the prefix of the parameters of a finished
    /// run that left the hashes as this run would (then there is nothing to do).
    done_if_finished: Option<String>,
}

/// A run in `jarvis_jobs`.
struct Run {
    id: i64,
    started_at: NaiveDateTime,
    kind: &'static str,
    parameters: String,
}

enum Opened {
    Run(Run),
    /// A dry run without an unfinished run to count against.
    NotStarted,
    /// A finished run left the database as this one would.
    AlreadyDone,
}

impl RunSpec {
    fn new(kind: &'static str, parameters: String, done_if_finished: Option<String>) -> Self {
        RunSpec {
            kind,
            parameters,
            done_if_finished,
        }
    }

    /// The unfinished run with these parameters (the oldest, when processes started several
    /// at once), or a new one; a dry run never starts one.
    async fn open(&self, db: &Database, now: NaiveDateTime, dry_run: bool) -> Result<Opened> {
        if let Some(run) = self.unfinished(db).await? {
            tracing::info!(run = run.id, started_at = %run.started_at, "rotate: resuming the unfinished run");
            return Ok(Opened::Run(run));
        }
        if let Some(prefix) = &self.done_if_finished {
            let mut conn = db.get().await?;
            let finished: Vec<String> = with_conn!(&mut conn, |c| jarvis_jobs::table
                .filter(jarvis_jobs::kind.eq(self.kind))
                .filter(jarvis_jobs::finished_at.is_not_null())
                .select(jarvis_jobs::parameters)
                .load(c)
                .await?);
            if finished.iter().any(|p| p.starts_with(prefix.as_str())) {
                return Ok(Opened::AlreadyDone);
            }
        }
        if dry_run {
            return Ok(Opened::NotStarted);
        }
        let mut conn = db.get().await?;
        with_conn!(&mut conn, |c| diesel::insert_into(jarvis_jobs::table)
            .values((
                jarvis_jobs::kind.eq(self.kind),
                jarvis_jobs::parameters.eq(&self.parameters),
                jarvis_jobs::started_at.eq(now),
            ))
            .execute(c)
            .await?);
        drop(conn);
        // Processes that started at once converge on the oldest of their runs.
        let run = self.unfinished(db).await?.ok_or_else(|| {
            configuration("rotate: the run just recorded in jarvis_jobs is not there")
        })?;
        Ok(Opened::Run(run))
    }

    async fn unfinished(&self, db: &Database) -> Result<Option<Run>> {
        let mut conn = db.get().await?;
        let found: Option<(i64, NaiveDateTime)> = with_conn!(&mut conn, |c| jarvis_jobs::table
            .filter(jarvis_jobs::kind.eq(self.kind))
            .filter(jarvis_jobs::parameters.eq(&self.parameters))
            .filter(jarvis_jobs::finished_at.is_null())
            .order((jarvis_jobs::started_at.asc(), jarvis_jobs::id.asc()))
            .select((jarvis_jobs::id, jarvis_jobs::started_at))
            .first(c)
            .await
            .optional()?);
        Ok(found.map(|(id, started_at)| Run {
            id,
            started_at,
            kind: self.kind,
            parameters: self.parameters.clone(),
        }))
    }
}

impl Run {
    /// Closes every unfinished run with these parameters (a duplicate started by a process at
    /// the same moment has nothing left either) and deletes their progress.
    async fn finish(&self, db: &Database) -> Result<()> {
        let mut conn = db.get().await?;
        let ids: Vec<i64> = with_conn!(&mut conn, |c| jarvis_jobs::table
            .filter(jarvis_jobs::kind.eq(self.kind))
            .filter(jarvis_jobs::parameters.eq(&self.parameters))
            .filter(jarvis_jobs::finished_at.is_null())
            .select(jarvis_jobs::id)
            .load(c)
            .await?);
        with_conn!(&mut conn, |c| diesel::update(
            jarvis_jobs::table.filter(jarvis_jobs::id.eq_any(&ids))
        )
        .set(jarvis_jobs::finished_at.eq(now()))
        .execute(c)
        .await?);
        with_conn!(&mut conn, |c| diesel::delete(
            jarvis_job_progress::table.filter(jarvis_job_progress::job_id.eq_any(&ids))
        )
        .execute(c)
        .await?);
        tracing::info!(run = self.id, "rotate: run finished");
        Ok(())
    }
}

/// Records, inside the batch's transaction, that run `job` did rows `ids` of `table`: one
/// range per run of consecutive ids.
async fn record_progress(conn: &mut Conn, job: i64, table: &str, ids: &[i64]) -> Result<()> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for id in sorted {
        match ranges.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => ranges.push((id, id)),
        }
    }
    for (first, last) in ranges {
        with_conn!(&mut *conn, |c| diesel::insert_into(
            jarvis_job_progress::table
        )
        .values((
            jarvis_job_progress::job_id.eq(job),
            jarvis_job_progress::table_name.eq(table),
            jarvis_job_progress::first_id.eq(first),
            jarvis_job_progress::last_id.eq(last),
        ))
        .execute(c)
        .await?);
    }
    Ok(())
}

// ---- re-hashing -----------------------------------------------------------------------------

/// The search keys of a `rehash` run: the new one twice (a hasher that writes and one that
/// checks, each deriving its column keys itself) and the fingerprints of the old and new.
struct Hashers {
    hasher: Encryptor,
    checker: Encryptor,
    old: SearchKeyFingerprint,
    new: SearchKeyFingerprint,
}

impl Hashers {
    async fn new(cx: Context<'_>, options: &RotateOptions) -> Result<Self> {
        let (hasher, checker) = match &options.search_key {
            Some(key) => {
                let of = |key: &SearchKey| -> Result<Encryptor> {
                    Ok(Encryptor::builder(Arc::clone(cx.encryptor().provider()))
                        .search_key(SearchKey::new(key.expose_secret().to_vec())?)
                        .build())
                };
                (of(key)?, of(key)?)
            }
            None => (
                cx.encryptor().with_fresh_data_key(),
                cx.encryptor().with_fresh_data_key(),
            ),
        };
        let new = hasher.search_key_fingerprint().ok_or_else(|| {
            configuration(
                "rotate --rehash needs the new search key (ENCRYPTION_SEARCH_SALT, or \
                 RotateOptions::search_key)",
            )
        })?;
        let old = crate::keys::recorded_search_key_fingerprint(cx.database())
            .await?
            .ok_or_else(|| {
                configuration(
                    "rotate --rehash: no search key fingerprint is recorded for this database, \
                     so nothing says which key its hashes are under; record the current key's \
                     first (`jarvis init`, or jarvis_models::keys::record_search_key)",
                )
            })?;
        Ok(Hashers {
            hasher,
            checker,
            old,
            new,
        })
    }

    /// The parameters: the tables, the new key, every search column's normalizers, then the
    /// old key. A finished run with the same beginning (`rehash` again, once the new key is
    /// recorded) left nothing to do.
    fn run_spec(&self, tables: &[&TableDescription]) -> RunSpec {
        let hashes: Vec<String> = tables
            .iter()
            .flat_map(|t| {
                searchable(t).map(|(f, s)| {
                    format!(
                        "{}.{}:{}",
                        t.name,
                        s.column,
                        spec_name(s.spec, f.normalize_with)
                    )
                })
            })
            .collect();
        let state = format!(
            "tables={};search_key_to={};hashes={};",
            names(tables),
            self.new,
            hashes.join(",")
        );
        let parameters = format!("{state}search_key_from={}", self.old);
        let done = (self.old == self.new).then_some(state);
        RunSpec::new(REHASH_JOB, parameters, done)
    }
}

/// A search spec as text: its normalizers and width, e.g. `trim+lowercase/256`, with a
/// normalizer of the application's own by its name (renaming it starts a new run).
fn spec_name(spec: SearchSpec, custom: Option<jarvis_crypt::CustomNormalizer>) -> String {
    let n = spec.normalize;
    let mut names: Vec<&str> = [(n.trim, "trim"), (n.lowercase, "lowercase"), (n.nfc, "nfc")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    names.extend(custom.map(|custom| custom.name()));
    let names = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join("+")
    };
    format!("{names}/{}", spec.bits.unwrap_or(256))
}

// ---- which rows are pending -----------------------------------------------------------------

/// A batch looks for pending rows in windows of this many batch sizes of ids...
const WINDOW_BATCHES: i64 = 4;
/// ...and at least this many.
const MIN_WINDOW: i64 = 256;

/// SQL conditions over a table's columns, written for one backend. Everything interpolated
/// is a quoted name from the table's description, a quoted string literal of its name, a hex
/// literal, an integer or a formatted timestamp: no input text.
#[derive(Debug)]
struct Predicate {
    /// The rows the mode still has to do.
    pending: String,
    /// The rows the mode leaves alone and reports (legacy rows).
    skipped: Option<String>,
    /// The rows no committed batch of the run has done (`reencrypt`, `rehash`).
    not_done: Option<String>,
    /// The quoted primary-key column.
    pk: String,
}

impl Predicate {
    fn new(
        backend: Backend,
        table: &TableDescription,
        mode: &RotateMode,
        started_at: NaiveDateTime,
        run: Option<i64>,
        writer: &MasterKeyRef,
    ) -> Result<Self> {
        let pk = quote(described::primary_key(table)?);
        let any = |f: &dyn Fn(&FieldDescription) -> String| {
            let parts: Vec<String> = table.fields.iter().map(f).collect();
            format!("({})", parts.join(" OR "))
        };
        let legacy = any(&|f| format!("COALESCE(length({}), 0) = 16", quote(f.iv)));
        let current = any(&|f| format!("COALESCE(length({}), 0) = 12", quote(f.iv)));
        let timestamp = |at: NaiveDateTime| {
            let text = at.format("%Y-%m-%d %H:%M:%S%.6f");
            match backend {
                Backend::Postgres => format!("TIMESTAMP '{text}'"),
                Backend::Sqlite => format!("'{text}'"),
            }
        };
        let reference =
            |f: &FieldDescription| crate::vault::is_reference(backend, &quote(f.data_key));
        // A current value whose data key is not under `to`: an inline envelope whose header
        // names another master key or, with `vault`, a reference to a vault key whose does
        // (a revoked or missing key counts as not under it).
        let not_under = |to: &MasterKeyRef, vault: bool| -> Result<String> {
            let header = envelope_header(to)?;
            let literal = crate::vault::bytes_literal(backend, &header);
            let n = header.len();
            Ok(any(&|f| {
                let dk = quote(f.data_key);
                let inline = format!(
                    "(NOT {reference} AND substr({dk}, 1, {n}) <> {literal})",
                    reference = reference(f)
                );
                let referenced = if vault {
                    format!(
                        " OR ({reference} AND NOT EXISTS (SELECT 1 FROM jarvis_data_keys k \
                         WHERE k.id = substr({dk}, 5, 16) AND substr(k.wrapped, 1, {n}) = {literal}))",
                        reference = reference(f)
                    )
                } else {
                    String::new()
                };
                format!(
                    "(COALESCE(length({iv}), 0) = 12 AND ({inline}{referenced}))",
                    iv = quote(f.iv)
                )
            }))
        };
        // Not done by the run: the range with the greatest first id at or before the row's
        // does not reach it (one index probe; no range: not done).
        let not_done = match run {
            Some(job) => {
                let row_id = format!("{}.{pk}", quote(&table.name));
                format!(
                    "NOT COALESCE((SELECT p.last_id >= {row_id} FROM jarvis_job_progress p \
                     WHERE p.job_id = {job} AND p.table_name = '{name}' AND p.first_id <= {row_id} \
                     ORDER BY p.first_id DESC LIMIT 1), FALSE)",
                    name = table.name.replace('\'', "''")
                )
            }
            // A dry run with nothing recorded yet: a new run would do every row.
            None => "TRUE".to_owned(),
        };
        let in_current_form = |condition: String| Predicate {
            pending: format!("{current} AND NOT {legacy} AND {condition}"),
            skipped: Some(legacy.clone()),
            not_done: None,
            pk: pk.clone(),
        };
        Ok(match mode {
            RotateMode::Legacy => Predicate {
                pending: legacy.clone(),
                skipped: None,
                not_done: None,
                pk: pk.clone(),
            },
            RotateMode::OlderThan(age) => {
                let cutoff = started_at
                    .checked_sub_signed(*age)
                    .ok_or_else(|| configuration("rotate: --older-than is too far back"))?;
                let Some(rotated_at) = table.rotated_at else {
                    return Err(configuration(format!(
                        "rotate --older-than: model `{}` names no column of the time its values \
                         were last encrypted, so the age of `{}`'s rows is not known; add \
                         `#[encrypted(rotated_at = column)]` (a timestamp column the jobs set), \
                         or rotate the table with --reencrypt",
                        table.model, table.name
                    )));
                };
                let age = match table.created_at {
                    Some(created) => format!("COALESCE({}, {})", quote(rotated_at), quote(created)),
                    None => quote(rotated_at),
                };
                // A row whose age is not known (NULL) counts as old.
                in_current_form(format!("({age} IS NULL OR {age} < {})", timestamp(cutoff)))
            }
            RotateMode::Reencrypt => Predicate {
                not_done: Some(not_done.clone()),
                ..in_current_form(format!("({} OR {not_done})", not_under(writer, true)?))
            },
            RotateMode::Rehash => Predicate {
                not_done: Some(not_done.clone()),
                ..in_current_form(not_done)
            },
            RotateMode::Compact => Predicate {
                pending: format!(
                    "{} AND NOT {legacy}",
                    any(&|f| format!(
                        "(COALESCE(length({iv}), 0) = 12 AND NOT {reference})",
                        iv = quote(f.iv),
                        reference = reference(f)
                    ))
                ),
                skipped: Some(legacy.clone()),
                not_done: None,
                pk: pk.clone(),
            },
            // References are not pending: their keys are re-wrapped in the vault.
            RotateMode::ToKey(to) => Predicate {
                pending: format!("{} AND NOT {legacy}", not_under(to, false)?),
                skipped: Some(legacy.clone()),
                not_done: None,
                pk: pk.clone(),
            },
        })
    }

    /// The pending rows after a worker's keyset cursor, up to `last` (a window of ids: a
    /// bounded range of the primary key, which the planner scans in order, where the whole
    /// rest of the table would be sorted to find the first pending rows).
    fn window(&self, cursor: Option<i64>, last: i64) -> String {
        let pk = &self.pk;
        match cursor {
            None => format!("{} AND {pk} <= {last}", self.pending),
            Some(cursor) => format!("{} AND {pk} > {cursor} AND {pk} <= {last}", self.pending),
        }
    }

    /// `<pk> IN (ids) AND condition`.
    fn among(&self, ids: &[i64], condition: &str) -> String {
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        format!("{} IN ({}) AND {condition}", self.pk, list.join(","))
    }
}

/// What the id of an inline key's vault copy is derived from, with its envelope's bytes.
const COMPACT_ID_LABEL: &[u8] = b"jarvis-crypt compact v1\0";

/// Distinct data keys re-wrapped at once by one batch.
const REWRAP_CONCURRENCY: usize = 16;

/// Whether `key` is wrapped under `to` already.
fn is_under(key: &WrappedKey, to: &MasterKeyRef) -> Result<bool> {
    Ok(key.envelope()?.master_key() == Some(to))
}

/// The searchable fields of `table`.
fn searchable(
    table: &TableDescription,
) -> impl Iterator<Item = (&FieldDescription, SearchDescription)> {
    table
        .fields
        .iter()
        .filter_map(|f| f.search.map(|search| (f, search)))
}

async fn count(db: &Database, table: &TableDescription, predicate: &str) -> Result<u64> {
    let mut conn = db.get().await?;
    described::count(&mut conn, table, predicate).await
}

// ---- the batches ----------------------------------------------------------------------------

/// What the batches of one run share.
struct Job<'a> {
    cx: Context<'a>,
    options: &'a RotateOptions,
    /// Decrypts new values through the key provider (an empty cache of its own).
    verifier: Encryptor,
    /// Encrypts re-encrypted values: fresh data keys of this run.
    writer: Encryptor,
    /// `rehash`: the new search key.
    hashers: Option<Hashers>,
    /// The run in `jarvis_jobs` whose progress the batches record (`reencrypt`, `rehash`).
    run: Option<i64>,
    /// Re-wrapped data keys of this run, by their old bytes: each is re-wrapped once.
    rewrapped: Mutex<HashMap<Vec<u8>, Arc<OnceCell<WrappedKey>>>>,
}

/// One value of a batch: where it is, what it held and what it gets.
struct Value {
    /// Index of the row in the batch.
    row: usize,
    /// Index of the field in the description.
    field: usize,
    old: StoredField,
    plaintext: Zeroizing<Vec<u8>>,
    new: Option<StoredField>,
    /// The new search hash, for a searchable field whose hash the mode writes.
    hash: Option<SearchHash>,
}

impl Job<'_> {
    /// One batch of `table` after the worker's `cursor`, audited: the number of rows rotated
    /// (0: nothing pending after the cursor). Moves the cursor past the batch.
    async fn batch(
        &self,
        table: &'static TableDescription,
        predicate: &Predicate,
        cursor: &Mutex<Option<i64>>,
        values: &AtomicU64,
    ) -> Result<u64> {
        let started = Instant::now();
        let mut ids = Vec::new();
        let mut position = *cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = self.run(table, predicate, &mut position, &mut ids).await;
        if !ids.is_empty() || result.is_err() {
            self.options
                .audit
                .record(self.event(table, &ids, started, &result));
        }
        match result {
            Ok((rows, n)) => {
                let mut at = cursor
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *at = (*at).max(position);
                values.fetch_add(n, Ordering::SeqCst);
                tracing::debug!(table = %table.name, rows, values = n, "rotate: batch committed");
                Ok(rows)
            }
            Err(error) => {
                tracing::warn!(table = %table.name, rows = ids.len(), error = %error, "rotate: batch rolled back");
                Err(error)
            }
        }
    }

    /// The audit event of one batch.
    fn event(
        &self,
        table: &TableDescription,
        ids: &[i64],
        started: Instant,
        result: &Result<(u64, u64)>,
    ) -> AuditEvent {
        let ciphertexts = || table.fields.iter().map(|f| f.ciphertext).collect();
        let (columns, key): (Vec<&str>, String) = match (&self.options.mode, &self.hashers) {
            (RotateMode::Rehash, Some(hashers)) => (
                searchable(table).map(|(_, s)| s.column).collect(),
                format!("search-key:{}", hashers.new.short()),
            ),
            (RotateMode::ToKey(to), _) => (ciphertexts(), to.key_id.clone()),
            _ => (ciphertexts(), self.writer.master_key().key_id),
        };
        let mut event = AuditEvent::new(self.options.mode.operation(), table.name.clone(), started)
            .column(columns.join(","))
            .records(ids.iter().copied())
            .key(key);
        if let Err(error) = result {
            event = event.failed(error.kind());
        }
        event
    }

    /// One batch in one transaction: (rows, values) rotated.
    async fn run(
        &self,
        table: &'static TableDescription,
        predicate: &Predicate,
        position: &mut Option<i64>,
        ids: &mut Vec<i64>,
    ) -> Result<(u64, u64)> {
        if !matches!(
            self.options.mode,
            RotateMode::ToKey(_) | RotateMode::Rehash | RotateMode::Compact
        ) {
            // The batch's new data keys are stored in the key vault (if any) before its
            // transaction takes the rows' locks (on SQLite, the database's one writer).
            let values = self.options.batch_size.saturating_mul(table.fields.len());
            self.writer.prepare_data_keys(values).await?;
        }
        let mut tx = Transaction::begin(self.cx.database()).await?;
        match self
            .rotate_batch(tx.conn()?, table, predicate, position, ids)
            .await
        {
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

    /// One batch inside the open transaction: the first pending rows after `position`,
    /// window by window; `position` ends after the last id the batch looked at (rows skipped
    /// as locked in between are left to the next pass).
    async fn rotate_batch(
        &self,
        conn: &mut Conn,
        table: &'static TableDescription,
        predicate: &Predicate,
        position: &mut Option<i64>,
        ids: &mut Vec<i64>,
    ) -> Result<(u64, u64)> {
        let limit = i64::try_from(self.options.batch_size).unwrap_or(i64::MAX);
        let window = limit.saturating_mul(WINDOW_BATCHES).max(MIN_WINDOW);
        let rows = loop {
            let Some(last) = described::window_end(conn, table, *position, window).await? else {
                return Ok((0, 0));
            };
            let condition = predicate.window(*position, last);
            let mut rows = described::load_rows(
                conn,
                table,
                |sql| {
                    sql.push(&condition);
                    Ok(())
                },
                limit,
                true,
            )
            .await?;
            *position = Some(match rows.iter().map(|r| r.id).max() {
                // A full batch: pending rows may follow within the window.
                Some(max) if rows.len() >= self.options.batch_size => max,
                _ => last,
            });
            if predicate.not_done.is_some() && !rows.is_empty() {
                // A row another worker rewrote and committed after this statement's snapshot
                // is re-checked by PostgreSQL against its new version before it is locked,
                // but the run's progress is read as of the snapshot: a row that worker has
                // just done (and recorded) would pass. A new statement sees its commit.
                let batch: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let still: std::collections::HashSet<i64> =
                    described::ids(conn, table, &predicate.among(&batch, &predicate.pending))
                        .await?
                        .into_iter()
                        .collect();
                rows.retain(|row| still.contains(&row.id));
            }
            if !rows.is_empty() {
                break rows;
            }
        };
        ids.extend(rows.iter().map(|r| r.id));
        let mut values = self.decrypt(table, &rows).await?;
        match (&self.options.mode, &self.hashers) {
            (RotateMode::ToKey(to), _) => self.rewrap_values(&mut values, to).await?,
            (RotateMode::Compact, _) => self.compact_values(&mut values).await?,
            (RotateMode::Rehash, Some(hashers)) => {
                for value in &mut values {
                    value.hash =
                        hash_of(&hashers.hasher, table, &table.fields[value.field], value)?;
                }
            }
            _ => {
                for value in &mut values {
                    let field = &table.fields[value.field];
                    let binding = described::binding(table, field, &rows[value.row]);
                    value.new = Some(self.writer.encrypt(&binding, &value.plaintext).await?);
                    value.hash = hash_of(&self.writer, table, field, value)?;
                }
            }
        }
        self.verify(table, &rows, &values).await?;
        let mut written = 0;
        let mut updates = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let mut sets = Vec::new();
            for value in values.iter().filter(|v| v.row == index) {
                let field = &table.fields[value.field];
                let stored = value.new.as_ref().unwrap_or(&value.old);
                // Only a searchable field has a hash, and only the modes that write it set one.
                let hash = value.hash.as_ref().map(|h| Some(h.as_bytes()));
                let mut field_sets = described::value_sets(field, Some(stored), hash);
                if value.new.is_none() {
                    // Re-hashing writes the hash alone.
                    field_sets
                        .retain(|(column, _)| Some(*column) == field.search.map(|s| s.column));
                }
                written += u64::from(!field_sets.is_empty());
                sets.extend(field_sets);
            }
            if !sets.is_empty() {
                updates.push((row.id, sets));
            }
        }
        let expected = updates.len();
        if described::update_rows(conn, table, updates, None).await? != expected {
            // The locks rule this out; roll back rather than guess.
            return Err(ModelError::NotFound {
                table: table.bound_name,
                id: <[StoredRow]>::first(&rows).map_or(0, |r| r.id),
            });
        }
        if self.options.mode.changes_data_keys() {
            described::mark_rotated(conn, table, ids, now()).await?;
        }
        if let (Some(job), Some(not_done)) = (self.run, predicate.not_done.as_deref()) {
            // Only the rows the run had not done yet: a row done again (rewritten by the
            // application under another master key meanwhile) is in a range already, and
            // ranges that never overlap keep "the range at or before the row" exact.
            let new = described::ids(conn, table, &predicate.among(ids, not_done)).await?;
            record_progress(conn, job, &table.name, &new).await?;
        }
        Ok((rows.len() as u64, written))
    }

    /// Every value of the batch's rows, decrypted by the job's encryptor (its data keys
    /// unwrapped once each); a value that does not decrypt fails the batch.
    async fn decrypt(&self, table: &TableDescription, rows: &[StoredRow]) -> Result<Vec<Value>> {
        let mut found = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            for (f, value) in row.values.iter().enumerate() {
                match value.form() {
                    Form::Empty => {}
                    Form::Stored(stored) => found.push((r, f, stored)),
                    Form::Invalid(error) => {
                        tracing::error!(
                            table = %table.name,
                            id = row.id,
                            column = table.fields[f].ciphertext,
                            "rotate: a value's stored form is invalid"
                        );
                        return Err(error.into());
                    }
                }
            }
        }
        let items: Vec<_> = found
            .iter()
            .map(|(r, f, stored)| {
                (
                    described::binding(table, &table.fields[*f], &rows[*r]),
                    stored,
                )
            })
            .collect();
        let plaintexts = self.cx.encryptor().decrypt_many(&items).await;
        drop(items);
        found
            .into_iter()
            .zip(plaintexts)
            .map(|((row, field, old), plaintext)| {
                Ok(Value {
                    row,
                    field,
                    old,
                    plaintext: Zeroizing::new(plaintext?),
                    new: None,
                    hash: None,
                })
            })
            .collect()
    }

    /// Every data key of the batch's values re-wrapped under `to`: each distinct key of the
    /// batch once (up to [`REWRAP_CONCURRENCY`] at a time), and once per run.
    async fn rewrap_values(&self, values: &mut [Value], to: &MasterKeyRef) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let mut distinct: HashMap<Vec<u8>, WrappedKey> = HashMap::new();
        for value in values.iter() {
            let key = &value.old.data_key;
            if !is_under(key, to)? {
                distinct
                    .entry(key.as_bytes().to_vec())
                    .or_insert_with(|| key.clone());
            }
        }
        let new: HashMap<Vec<u8>, WrappedKey> = futures::stream::iter(distinct)
            .map(|(bytes, key)| async move {
                Ok::<_, ModelError>((bytes, self.rewrap(&key, to).await?))
            })
            .buffer_unordered(REWRAP_CONCURRENCY)
            .try_collect()
            .await?;
        for value in values.iter_mut() {
            if let Some(rewrapped) = new.get(value.old.data_key.as_bytes()) {
                let mut stored = value.old.clone();
                stored.data_key = rewrapped.clone();
                value.new = Some(stored);
            }
        }
        Ok(())
    }

    /// Gives the inline data keys of `values` their references in the key vault, once per
    /// distinct key of the run ([`compacted`](Self::compacted)).
    async fn compact_values(&self, values: &mut [Value]) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let mut distinct: HashMap<Vec<u8>, WrappedKey> = HashMap::new();
        for value in values.iter() {
            let key = &value.old.data_key;
            if key.data_key_id().is_none() && !key.is_legacy() {
                distinct
                    .entry(key.as_bytes().to_vec())
                    .or_insert_with(|| key.clone());
            }
        }
        let new: HashMap<Vec<u8>, WrappedKey> = futures::stream::iter(distinct)
            .map(|(bytes, key)| async move {
                let cell = self.cell(&key);
                let reference = cell.get_or_try_init(|| self.compacted(&key)).await?;
                Ok::<_, ModelError>((bytes, reference.clone()))
            })
            .buffer_unordered(REWRAP_CONCURRENCY)
            .try_collect()
            .await?;
        for value in values.iter_mut() {
            if let Some(reference) = new.get(value.old.data_key.as_bytes()) {
                let mut stored = value.old.clone();
                stored.data_key = reference.clone();
                value.new = Some(stored);
            }
        }
        Ok(())
    }

    /// Stores the vault copy of every distinct inline data key of `table`'s current values,
    /// one statement per column to find them; the batches then only reference them.
    async fn compact_keys_of(&self, table: &'static TableDescription) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        #[derive(diesel::QueryableByName)]
        struct Key {
            #[diesel(sql_type = diesel::sql_types::Binary)]
            key: Vec<u8>,
        }
        let mut keys = Vec::new();
        {
            let mut conn = self.cx.database().get().await?;
            for field in &table.fields {
                let dk = quote(field.data_key);
                let sql = format!(
                    "SELECT DISTINCT {dk} AS key FROM {table} \
                     WHERE length({iv}) = 12 AND NOT {reference}",
                    iv = quote(field.iv),
                    table = quote(&table.name),
                    reference = crate::vault::is_reference(self.cx.database().backend(), &dk),
                );
                let found: Vec<Key> =
                    with_conn!(&mut conn, |c| diesel::sql_query(&sql).load(c).await?);
                keys.extend(found.into_iter().map(|k| k.key));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        futures::stream::iter(keys)
            .map(|bytes| async move {
                let key = WrappedKey::new(bytes)?;
                if key.data_key_id().is_some() || key.is_legacy() {
                    return Ok(());
                }
                self.cell(&key)
                    .get_or_try_init(|| self.compacted(&key))
                    .await?;
                Ok::<_, ModelError>(())
            })
            .buffer_unordered(REWRAP_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The reference to the vault's copy of the inline key `key`, stored first if the vault
    /// does not hold it. Its id is derived from the inline envelope's bytes, so a rerun (after
    /// a kill) and concurrent workers find the copy already stored instead of making another.
    async fn compacted(&self, key: &WrappedKey) -> jarvis_crypt::Result<WrappedKey> {
        use sha2::Digest;
        let encryptor = self.cx.encryptor();
        let vault = encryptor.key_vault().ok_or_else(|| {
            jarvis_crypt::Error::Configuration("rotate --compact needs a key vault".into())
        })?;
        let digest = sha2::Sha256::new()
            .chain_update(COMPACT_ID_LABEL)
            .chain_update(key.as_bytes())
            .finalize();
        let mut id = [0u8; jarvis_crypt::DATA_KEY_ID_LEN];
        id.copy_from_slice(&digest[..jarvis_crypt::DATA_KEY_ID_LEN]);
        let id = jarvis_crypt::DataKeyId::from_bytes(id);
        let held = |keys: Vec<jarvis_crypt::VaultKey>| -> jarvis_crypt::Result<bool> {
            match keys.into_iter().next() {
                Some(found) if found.wrapped.is_some() => Ok(true),
                Some(_) => Err(jarvis_crypt::Error::UnknownDataKey {
                    id: id.to_hex(),
                    revoked: true,
                }),
                None => Ok(false),
            }
        };
        if !held(vault.fetch(&[id]).await?)? {
            let bound = encryptor
                .bind_inline_key(key, jarvis_crypt::KeyPurpose::Field, id)
                .await?;
            if let Err(error) = vault.store(&bound).await {
                // Another worker stored its own binding of the same key first: use it.
                if !held(vault.fetch(&[id]).await?)? {
                    return Err(error);
                }
            }
        }
        Ok(WrappedKey::reference(id))
    }

    /// The run's memo of one data key's new form.
    fn cell(&self, key: &WrappedKey) -> Arc<tokio::sync::OnceCell<WrappedKey>> {
        let mut cells = self
            .rewrapped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(cells.entry(key.as_bytes().to_vec()).or_default())
    }

    /// `key` re-wrapped under `to`, by the provider once per run: concurrent callers asking
    /// for the same key wait for the first answer.
    async fn rewrap(&self, key: &WrappedKey, to: &MasterKeyRef) -> Result<WrappedKey> {
        let cell = self.cell(key);
        let new = cell
            .get_or_try_init(|| self.cx.encryptor().rewrap(key, to))
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

    /// The new values decrypt, through the key provider, to exactly the values read; after a
    /// re-hash, their search hashes are those a second hasher computes from them.
    async fn verify(
        &self,
        table: &TableDescription,
        rows: &[StoredRow],
        values: &[Value],
    ) -> Result<()> {
        let items: Vec<_> = values
            .iter()
            .filter_map(|v| {
                let stored = v.new.as_ref()?;
                Some((
                    described::binding(table, &table.fields[v.field], &rows[v.row]),
                    stored,
                ))
            })
            .collect();
        let back = self.verifier.decrypt_many(&items).await;
        let changed = values.iter().filter(|v| v.new.is_some());
        for (value, back) in changed.zip(back) {
            let back = Zeroizing::new(back.inspect_err(|error| {
                tracing::error!(error = %error, "rotate: verification could not decrypt a new value");
            })?);
            if back.as_slice() != value.plaintext.as_slice() {
                return Err(verification_failed(
                    "a rotated value does not decrypt to its plaintext",
                ));
            }
        }
        if let Some(hashers) = &self.hashers {
            for value in values {
                let field = &table.fields[value.field];
                if hash_of(&hashers.checker, table, field, value)? != value.hash {
                    return Err(verification_failed(
                        "a re-hashed value's search hash is not the hash of its value",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The search hash of a value's plaintext under `encryptor`'s search key, for a searchable
/// field (`None` otherwise).
fn hash_of(
    encryptor: &Encryptor,
    table: &TableDescription,
    field: &FieldDescription,
    value: &Value,
) -> Result<Option<SearchHash>> {
    let Some(search) = field.search else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&value.plaintext).map_err(|_| {
        jarvis_crypt::Error::InvalidPlaintext("a searchable value is not UTF-8 text")
    })?;
    Ok(Some(encryptor.search_hash(
        table.bound_name,
        search.bound_column,
        search.spec,
        &field.search_input(text),
    )?))
}

fn verification_failed(what: &str) -> ModelError {
    tracing::error!("rotate: verification failed ({what}); the batch was rolled back");
    ModelError::Crypto(jarvis_crypt::Error::InvalidStoredForm(format!(
        "rotate: {what}; the batch was rolled back"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names() {
        let spec = |trim, lowercase, nfc, bits| SearchSpec {
            normalize: jarvis_crypt::Normalize {
                trim,
                lowercase,
                nfc,
            },
            bits,
        };
        assert_eq!(
            spec_name(spec(true, true, false, None), None),
            "trim+lowercase/256"
        );
        assert_eq!(
            spec_name(spec(false, false, false, Some(16)), None),
            "none/16"
        );
        assert_eq!(
            spec_name(spec(true, false, true, None), None),
            "trim+nfc/256"
        );
        fn digits(value: &str) -> String {
            value.chars().filter(char::is_ascii_digit).collect()
        }
        let custom = jarvis_crypt::CustomNormalizer::new("crate::digits", digits);
        assert_eq!(
            spec_name(spec(true, false, false, None), Some(custom)),
            "trim+crate::digits/256"
        );
    }
}
