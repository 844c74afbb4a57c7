//! `retire-key`: disable a KMS master key and schedule its deletion, refused while anything
//! still needs it.

use anyhow::Result;
use jarvis_crypt::TableDescription;

use crate::config::Global;

/// `retire-key`: which key, and how long KMS waits.
#[derive(Debug, clap::Args)]
pub(crate) struct RetireKeyArgs {
    /// The key: id, ARN or alias.
    key: String,
    /// Days before KMS deletes the key (7 to 30); the deletion can be cancelled meanwhile.
    #[arg(long, default_value_t = 30)]
    pending_days: i32,
    /// Retire the key even though some recorded backups cannot be read (a file gone, or
    /// a record that does not list its rows' keys): what they need beyond what their
    /// records say is then not known. Keys their records name still refuse.
    #[arg(long)]
    ignore_unreadable_backups: bool,
}

pub(crate) async fn run(
    global: &Global,
    tables: &[&'static TableDescription],
    args: RetireKeyArgs,
) -> Result<std::process::ExitCode> {
    retire_key(
        global,
        tables,
        &args.key,
        args.pending_days,
        args.ignore_unreadable_backups,
    )
    .await
}

/// `jarvis retire-key`: refused while any row, the stored search key or a recorded backup
/// needs the key. A recorded backup needs it when its record says so (the key of its stream,
/// or of its rows), or its file's manifest does; a backup whose needs cannot be read (its
/// file gone or unreadable, or an in-row backup recorded before its rows' keys were) refuses
/// too, unless `ignore_unreadable_backups`.
async fn retire_key(
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
    let db = jarvis_db::Database::connect(global.database_url()?, 2).await?;
    if let Some(current) = &global.kms_key_id {
        let current_arn = jarvis_crypt::AwsKms::new(connection.clone(), current).await?;
        if current_arn.key_arn() == arn {
            anyhow::bail!("{arn} is the configured KMS_KEY_ID: new data is still written under it");
        }
    }
    let usage = jarvis_db::verify::key_usage_in(&db, tables, &arn).await?;
    // Backups recorded under another key may still hold rows under this one.
    let backups = jarvis_db::backup::backups_needing(&db, &arn).await?;
    for (name, why) in &backups.unreadable {
        if ignore_unreadable_backups {
            eprintln!("note: backup {name}: {why}; ignored (--ignore-unreadable-backups)");
        }
    }
    let unreadable_refuse = !ignore_unreadable_backups && !backups.unreadable.is_empty();
    if !usage.is_unused() || !backups.needing.is_empty() || unreadable_refuse {
        eprintln!("refused: {arn} is still needed by");
        for (&(table, column), n) in &usage.columns {
            if *n > 0 && (table, column) == jarvis_db::verify::VAULT_COLUMN {
                eprintln!(
                    "  {n} data keys of the key vault ({table}), referenced by values or held \
                     by a writer (`rotate --to-key` re-wraps them)"
                );
            } else if *n > 0 {
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
