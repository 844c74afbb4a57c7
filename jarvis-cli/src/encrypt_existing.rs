//! `encrypt-existing`: the plaintext columns of fields in the migrating state, encrypted in
//! verified, resumable batches (`jarvis_db::jobs::encrypt_existing`).

use std::sync::Arc;

use anyhow::Result;
use jarvis_crypt::TableDescription;
use jarvis_db::jobs::{EncryptExistingOptions, encrypt_existing, migrating_columns};

use crate::config::Global;
use crate::jobs::{ProgressView, stop_on_ctrl_c};

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
pub(crate) async fn run(
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
        let run = encrypt_existing(&opened.db, &opened.encryptor, tables, &options, &|p| {
            view.update(p)
        })
        .await;
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
