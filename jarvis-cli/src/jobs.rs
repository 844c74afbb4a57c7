//! The long jobs: progress on standard error, Ctrl-C finishes the current batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::io::IsTerminal;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use jarvis_crypt::{SearchKey, TableDescription};
use jarvis_models::jobs::{
    EncryptExistingOptions, Progress, RotateMode, RotateOptions, encrypt_existing_in,
    migrating_columns, rotate_in,
};

use crate::audit::parse_age;
use crate::config::{Global, OpenOptions};

/// A flag set by Ctrl-C: jobs stop before their next batch.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the current batch, then stopping (rerun to resume)");
            flag.store(true, Ordering::SeqCst);
        }
    });
    stop
}

/// Shows a job's progress on standard error: a progress bar (rows done, rate, ETA) on a
/// terminal, a plain line per batch otherwise (logs, CI).
struct ProgressView {
    bar: Option<ProgressBar>,
    job: &'static str,
    started: std::time::Instant,
}

impl ProgressView {
    fn new(job: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} rows, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(job);
            bar
        });
        ProgressView {
            bar,
            job,
            started: std::time::Instant::now(),
        }
    }

    fn update(&self, p: Progress) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total.max(p.rows_done));
                bar.set_position(p.rows_done);
            }
            None => {
                let rate = p.rows_done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                let left = p.total.saturating_sub(p.rows_done) as f64;
                eprintln!(
                    "{}: {}/{} rows ({} batches), {:.0} rows/s, ETA {:.0} s",
                    self.job,
                    p.rows_done,
                    p.total,
                    p.batches,
                    rate,
                    left / rate.max(1e-9)
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `encrypt-existing`: which plaintext columns, and how.
#[derive(Debug, clap::Args)]
pub(crate) struct EncryptExistingArgs {
    /// Only this table (a registered model's, for example `users`).
    #[arg(long)]
    table: Option<String>,
    /// Only this plaintext column of the table (for example `email`).
    #[arg(long, requires = "table")]
    column: Option<String>,
    /// Rows per batch (one transaction each).
    #[arg(long, default_value_t = EncryptExistingOptions::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Count what would be done; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Concurrent batch loops in this process.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// `encrypt-existing`: every selected migrating column in turn, one line each. Ctrl-C
/// finishes the current batch and skips the columns not reached.
pub(crate) async fn encrypt_existing(
    global: &Global,
    tables: &[&'static TableDescription],
    args: EncryptExistingArgs,
) -> Result<std::process::ExitCode> {
    let all = migrating_columns(tables);
    let named = |t: &str, wanted: &str| {
        tables
            .iter()
            .any(|d| d.name == t && (d.name == wanted || d.bound_name == wanted))
    };
    let selected: Vec<(String, &str)> = match (&args.table, &args.column) {
        (None, _) => all.clone(),
        (Some(table), column) => all
            .iter()
            .filter(|(t, c)| named(t, table) && column.as_deref().is_none_or(|column| column == *c))
            .cloned()
            .collect(),
    };
    if selected.is_empty() {
        let list: Vec<String> = all.iter().map(|(t, c)| format!("{t}.{c}")).collect();
        anyhow::bail!(
            "encrypt-existing: {}; supported: {}",
            match (&args.table, &args.column) {
                (Some(t), Some(c)) =>
                    format!("`{t}`.`{c}` is not a plaintext column in the migrating state"),
                (Some(t), None) =>
                    format!("table `{t}` has no plaintext column in the migrating state"),
                _ => "no registered model has a plaintext column in the migrating state".to_owned(),
            },
            if list.is_empty() {
                "none (no registered field has `migrating_from`)".to_owned()
            } else {
                list.join(", ")
            }
        );
    }
    let opened = global.open(true).await?;
    let stop = stop_on_ctrl_c();
    let mut result = Ok(());
    for (table, column) in selected {
        let mut options =
            EncryptExistingOptions::new(table, column, Arc::new(opened.audit.clone()));
        options.batch_size = args.batch_size;
        options.dry_run = args.dry_run;
        options.workers = args.workers;
        options.stop = Some(Arc::clone(&stop));
        let view = ProgressView::new("encrypt-existing");
        let run = encrypt_existing_in(&opened.store, tables, &options, &|p| view.update(p)).await;
        view.finish();
        let report = match run {
            Ok(report) => report,
            Err(error) => {
                result = Err(error);
                break;
            }
        };
        out!(
            "{} {}.{}: {} of {} rows {} in {} batches ({:.0} rows/s); {} remaining{}",
            if report.dry_run {
                "dry run"
            } else {
                "encrypted"
            },
            report.table,
            report.column,
            report.rows_encrypted,
            report.rows_at_start,
            if report.dry_run { "to do" } else { "done" },
            report.batches,
            report.rows_per_second(),
            report.rows_remaining,
            if report.stopped {
                " (stopped: rerun to resume)"
            } else {
                ""
            },
        );
        if report.stopped {
            break;
        }
    }
    opened.audit.shutdown().await;
    result?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `rotate`: the mode and its scope.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("mode")
        .required(true)
        .multiple(true)
        .args(["older_than", "to_key", "reencrypt", "legacy", "rehash"])
))]
pub(crate) struct RotateArgs {
    /// Only this table (a registered model's, for example `users`).
    #[arg(long)]
    table: Option<String>,
    /// Re-encrypt rows last rotated longer ago than this (`90d`, `12h`), by the column a
    /// model names with `rotated_at` (or, never rotated, `created_at`); a row of unknown age
    /// counts as old. Tables whose model names none are left out (refused with `--table`).
    #[arg(long, conflicts_with_all = ["to_key", "reencrypt", "legacy", "rehash"])]
    older_than: Option<String>,
    /// Re-wrap every data key under this master key (KMS ReEncrypt; no data is
    /// re-encrypted); with `--reencrypt`, write the fresh data keys under it. A KMS key
    /// id, ARN or alias, or a version of the local key (`2`).
    #[arg(long, conflicts_with_all = ["legacy", "rehash"])]
    to_key: Option<String>,
    /// Re-encrypt every value under fresh data keys: the answer to a compromised key.
    /// Resumes an unfinished run with the same tables, master key and search key.
    #[arg(long, conflicts_with = "rehash")]
    reencrypt: bool,
    /// Rewrite legacy rows (16-byte IV, bare KMS blob) in the current form, search hash
    /// included.
    #[arg(long, conflicts_with = "rehash")]
    legacy: bool,
    /// Recompute every search hash under the configured search key
    /// (ENCRYPTION_SEARCH_SALT), the new one, then record its fingerprint in place of the
    /// old one's: a deliberate change of search key or of a column's normalizers. Every
    /// table; stop the applications' lookups and writes meanwhile.
    #[arg(long, conflicts_with = "table")]
    pub(crate) rehash: bool,
    /// Rows per batch (one transaction each).
    #[arg(long, default_value_t = RotateOptions::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Concurrent batch loops in this process.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Count what would be done; write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `jarvis rotate`. `new_search_key` is the configured search key of `--rehash`: the store
/// is opened with it unchecked (the start-up check would refuse a key other than the
/// recorded one, which the job replaces) and the job gets it explicitly. Exit status 1 when
/// the run is not finished (rows left pending).
pub(crate) async fn rotate(
    global: &Global,
    tables: &[&'static TableDescription],
    args: RotateArgs,
    new_search_key: Option<SearchKey>,
) -> Result<std::process::ExitCode> {
    let target = match &args.to_key {
        Some(key) => Some(global.target_key(key).await?),
        None => None,
    };
    let modes = (
        &args.older_than,
        target,
        args.reencrypt,
        args.legacy,
        args.rehash,
    );
    // The target of --to-key is allowed for decryption for this run: re-wrapped keys are
    // verified under it.
    let (mode, write_under, decrypt_also) = match modes {
        (Some(age), None, false, false, false) => {
            (RotateMode::OlderThan(parse_age(age)?), None, None)
        }
        (None, Some((to, p)), false, false, false) => (RotateMode::ToKey(to), None, Some(p)),
        (None, target, true, false, false) => (RotateMode::Reencrypt, target.map(|(_, p)| p), None),
        (None, None, false, true, false) => (RotateMode::Legacy, None, None),
        (None, None, false, false, true) => (RotateMode::Rehash, None, None),
        _ => anyhow::bail!(
            "choose one of --older-than AGE, --to-key KEY, --reencrypt [--to-key KEY], \
             --legacy, --rehash"
        ),
    };
    let rehash_key = match (&mode, new_search_key) {
        (RotateMode::Rehash, Some(key)) => Some(Arc::new(key)),
        (RotateMode::Rehash, None) => anyhow::bail!(
            "rotate --rehash recomputes every search hash under the configured search key: \
             set ENCRYPTION_SEARCH_SALT (or --search-key-file) to the new key"
        ),
        _ => None,
    };
    let opened = global
        .open_with(OpenOptions {
            search: rehash_key.is_none(),
            allow_legacy: mode == RotateMode::Legacy,
            write_under,
            decrypt_also,
            new_search_key: rehash_key.is_some(),
        })
        .await?;
    let mut options = RotateOptions::new(mode, Arc::new(opened.audit.clone()));
    options.table = args.table;
    options.batch_size = args.batch_size;
    options.workers = args.workers;
    options.dry_run = args.dry_run;
    options.stop = Some(stop_on_ctrl_c());
    options.search_key = rehash_key;
    let view = ProgressView::new("rotate");
    let result = rotate_in(&opened.store, tables, &options, &|p| view.update(p)).await;
    view.finish();
    opened.audit.shutdown().await;
    let report = result?;
    for t in &report.tables {
        let done = if report.dry_run {
            format!("{} rows to do", t.rows_at_start)
        } else {
            format!(
                "{} of {} rows done ({} values) in {} batches",
                t.rows_rotated, t.rows_at_start, t.values, t.batches
            )
        };
        out!(
            "{} {}: {done}; {} remaining{}",
            if report.dry_run {
                "dry run"
            } else {
                report.mode
            },
            t.table,
            t.rows_remaining,
            if t.legacy_skipped > 0 {
                format!(
                    "; {} legacy rows left alone (run `jarvis rotate --legacy`)",
                    t.legacy_skipped
                )
            } else {
                String::new()
            }
        );
    }
    if matches!(options.mode, RotateMode::ToKey(_)) || report.stored_keys_rewrapped > 0 {
        out!(
            "{} data keys re-wrapped, {} stored keys re-wrapped",
            report.keys_rewrapped,
            report.stored_keys_rewrapped
        );
    }
    if let Some((old, new)) = &report.search_key_fingerprints {
        match (report.finished, report.dry_run) {
            (true, false) if old == new => out!(
                "every search hash is under the search key {} (recorded)",
                new.short()
            ),
            (true, false) => out!(
                "search key fingerprint recorded: {} (was {})",
                new.short(),
                old.short()
            ),
            _ => out!(
                "search key fingerprint still {} (the new key {} is recorded when every hash is done)",
                old.short(),
                new.short()
            ),
        }
    }
    out!(
        "{} rows in {:.1} s ({:.0} rows/s){}",
        report.rows_rotated(),
        report.duration.as_secs_f64(),
        report.rows_per_second(),
        if report.stopped {
            "; stopped: rerun to resume"
        } else {
            ""
        }
    );
    if !report.dry_run && !report.stopped && !report.finished {
        eprintln!(
            "not finished: {} rows are still pending (locked by other transactions, or written \
             meanwhile under another key); rerun",
            report.rows_remaining()
        );
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `jarvis retire-key`: refused while any row, the stored search key or a recorded backup
/// needs the key. A recorded backup needs it when its record says so (the key of its stream,
/// or of its rows), or its file's manifest does; a backup whose needs cannot be read (its
/// file gone or unreadable, or an in-row backup recorded before its rows' keys were) refuses
/// too, unless `ignore_unreadable_backups`.
pub(crate) async fn retire_key(
    global: &Global,
    tables: &[&'static TableDescription],
    key: &str,
    pending_days: i32,
    ignore_unreadable_backups: bool,
) -> Result<std::process::ExitCode> {
    if !(7..=30).contains(&pending_days) {
        anyhow::bail!("--pending-days must be between 7 and 30 (KMS's waiting period)");
    }
    if global.provider_choice() != crate::config::ProviderChoice::AwsKms {
        anyhow::bail!(
            "retire-key schedules the deletion of a KMS key: use --provider aws-kms \
             (a local key version is retired by removing it from the key file once verify \
             shows no row under it)"
        );
    }
    let connection =
        jarvis_crypt::KmsConnection::from_env(jarvis_crypt::KmsOptions::default()).await?;
    let arn = jarvis_crypt::AwsKms::new(connection.clone(), key)
        .await?
        .key_arn()
        .to_owned();
    let db = jarvis_models::Database::connect(global.database_url()?, 2).await?;
    if let Some(current) = &global.kms_key_id {
        let current_arn = jarvis_crypt::AwsKms::new(connection.clone(), current).await?;
        if current_arn.key_arn() == arn {
            anyhow::bail!("{arn} is the configured KMS_KEY_ID: new data is still written under it");
        }
    }
    let usage = jarvis_models::verify::key_usage_in(&db, tables, &arn).await?;
    // Backups recorded under another key may still hold rows under this one.
    let backups = jarvis_models::backup::backups_needing(&db, &arn).await?;
    for (name, why) in &backups.unreadable {
        if ignore_unreadable_backups {
            eprintln!("note: backup {name}: {why}; ignored (--ignore-unreadable-backups)");
        }
    }
    let unreadable_refuse = !ignore_unreadable_backups && !backups.unreadable.is_empty();
    if !usage.is_unused() || !backups.needing.is_empty() || unreadable_refuse {
        eprintln!("refused: {arn} is still needed by");
        for ((table, column), n) in &usage.columns {
            if *n > 0 {
                eprintln!("  {n} values in {table}.{column}");
            }
        }
        for (name, why) in &backups.needing {
            eprintln!("  backup {name}, {why}");
        }
        if usage.search_keys > 0 {
            eprintln!("  the search key stored in jarvis_keys");
        }
        if usage.legacy > 0 {
            eprintln!(
                "  {} legacy values, whose bare KMS blobs do not say which key they need",
                usage.legacy
            );
        }
        if unreadable_refuse {
            for (name, why) in &backups.unreadable {
                eprintln!("  possibly backup {name}: {why}");
            }
            eprintln!(
                "(a backup that is gone for good can be passed over with \
                 --ignore-unreadable-backups)"
            );
        }
        eprintln!("move them under another master key first");
        return Ok(std::process::ExitCode::from(1));
    }
    let state = connection.retire_key(&arn, pending_days).await?;
    out!("{arn}: disabled, {state}, deleted in {pending_days} days unless cancelled");
    Ok(std::process::ExitCode::SUCCESS)
}
