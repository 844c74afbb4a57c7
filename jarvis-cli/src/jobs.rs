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
    let opened = global.open(true).await?;
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

pub(crate) async fn retire_key(
    global: &Global,
    key: &str,
    pending_days: i32,
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
    let usage = jarvis_models::verify::key_usage(&db, &arn).await?;
    if !usage.is_unused() {
        eprintln!("refused: {arn} is still needed by");
        for ((table, column), n) in &usage.columns {
            if *n > 0 {
                eprintln!("  {n} values in {table}.{column}");
            }
        }
        if usage.backups > 0 {
            eprintln!("  {} recorded backups", usage.backups);
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
        eprintln!("move them under another master key first");
        return Ok(std::process::ExitCode::from(1));
    }
    let state = connection.retire_key(&arn, pending_days).await?;
    println!("{arn}: disabled, {state}, deleted in {pending_days} days unless cancelled");
    Ok(std::process::ExitCode::SUCCESS)
}
