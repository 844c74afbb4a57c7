//! The long jobs: progress on standard error, Ctrl-C finishes the current batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use jarvis_models::jobs::{EncryptExistingOptions, Progress, encrypt_existing as run_job};

use crate::config::Global;

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

pub(crate) async fn encrypt_existing(
    global: &Global,
    table: String,
    column: String,
    batch_size: usize,
    dry_run: bool,
    workers: usize,
) -> Result<()> {
    let opened = global.open().await?;
    let mut options = EncryptExistingOptions::new(table, column, Arc::new(opened.audit.clone()));
    options.batch_size = batch_size;
    options.dry_run = dry_run;
    options.workers = workers;
    options.stop = Some(stop_on_ctrl_c());
    let started = std::time::Instant::now();
    let progress = move |p: Progress| {
        let rate = p.rows_done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let left = p.total.saturating_sub(p.rows_done) as f64;
        eprintln!(
            "encrypt-existing: {}/{} rows ({} batches), {:.0} rows/s, ETA {:.0} s",
            p.rows_done,
            p.total,
            p.batches,
            rate,
            left / rate.max(1e-9)
        );
    };
    let result = run_job(&opened.store, &options, &progress).await;
    opened.audit.shutdown().await;
    let report = result?;
    println!(
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
    Ok(())
}
