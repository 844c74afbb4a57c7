//! `rotate`: re-encrypt, re-wrap, upgrade legacy rows or re-hash, over the registered tables
//! (`jarvis_db::jobs::rotate`).

use std::sync::Arc;

use anyhow::Result;
use jarvis_crypt::TableDescription;
use jarvis_db::jobs::{RotateMode, RotateOptions, rotate};

use crate::audit::parse_age;
use crate::config::{Global, OpenOptions};
use crate::jobs::{ProgressView, stop_on_ctrl_c};

/// `rotate`: the mode and its scope.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("mode")
        .required(true)
        .multiple(true)
        .args(["older_than", "to_key", "reencrypt", "legacy", "rehash", "compact"])
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
    rehash: bool,
    /// Move the data keys of values written inline into the key vault: one vault row and one
    /// provider call per distinct inline key, and each value's envelope replaced by its
    /// 20-byte reference (ciphertexts untouched). Needs a binary with the key vault.
    #[arg(long, conflicts_with_all = ["older_than", "to_key", "reencrypt", "legacy", "rehash"])]
    compact: bool,
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

/// `rotate`. With `--rehash`, the configured search key is the new one: the store is opened
/// with it unchecked (the start-up check would refuse a key other than the recorded one,
/// which the job replaces) and the job gets it explicitly. Exit status 1 when the run is not
/// finished (rows left pending).
pub(crate) async fn run(
    global: &Global,
    tables: &[&'static TableDescription],
    args: RotateArgs,
) -> Result<std::process::ExitCode> {
    let new_search_key = if args.rehash {
        global.configured_search_key()?
    } else {
        None
    };
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
        _ if args.compact => (RotateMode::Compact, None, None),
        (Some(age), None, false, false, false) => {
            (RotateMode::OlderThan(parse_age(age)?), None, None)
        }
        (None, Some((to, p)), false, false, false) => (RotateMode::ToKey(to), None, Some(p)),
        (None, target, true, false, false) => (RotateMode::Reencrypt, target.map(|(_, p)| p), None),
        (None, None, false, true, false) => (RotateMode::Legacy, None, None),
        (None, None, false, false, true) => (RotateMode::Rehash, None, None),
        _ => anyhow::bail!(
            "choose one of --older-than AGE, --to-key KEY, --reencrypt [--to-key KEY], \
             --legacy, --rehash, --compact"
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
    let result = rotate(&opened.db, &opened.encryptor, tables, &options, &|p| {
        view.update(p)
    })
    .await;
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
        if report.vault_keys_rewrapped > 0 {
            out!(
                "{} of them in the key vault (jarvis_data_keys): no data row written for them",
                report.vault_keys_rewrapped
            );
        }
    }
    if matches!(options.mode, RotateMode::Compact) {
        out!(
            "{} inline data keys moved into the key vault (jarvis_data_keys)",
            report.keys_rewrapped
        );
    }
    if report.vault_keys_revoked > 0 {
        out!(
            "{} replaced data keys revoked in the key vault (no value references them)",
            report.vault_keys_revoked
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
