//! `jarvis backup create|restore|verify|list`: the commands over the backup engine of
//! `jarvis_db::backup` (which dumps, encrypts, authenticates and restores; see its docs).
//! This file parses the arguments and prints; `verify` reads a file and asks the key
//! provider, `list` reads the records through the store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use comfy_table::Table;
use jarvis_crypt::stream::{self, DecryptReader};
use jarvis_crypt::{
    AuditEvent, AuditSink, Error as CryptError, KeyProvider, KmsConnection, KmsOptions,
    MasterKeyRef, Operation, ProviderKind, TableDescription,
};
use jarvis_db::backup::{
    CreateOptions, RestoreSource, error_kind, parse_master_key, printable, rejected,
};
use jarvis_db::migrations::MigrationSet;

use crate::config::Global;

/// `jarvis backup ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Dump the database (pg_dump, or an online SQLite copy), encrypt it as a stream under a
    /// fresh data key, write it to a file (or the database) and record it in
    /// `encrypted_backups`. Prints its name, path, size and SHA-256.
    Create {
        /// The encrypted backup file (must not exist) [default: `<name>.jvbk` here].
        #[arg(long, value_name = "FILE", conflicts_with = "store_in_db")]
        out: Option<PathBuf>,
        /// Keep the backup in its `encrypted_backups` row instead of a file (at most 64 MiB
        /// encrypted; the row's field encryption adds a second layer bound to the row).
        #[arg(long)]
        store_in_db: bool,
        /// Unique name of the backup [default: `backup-<UTC timestamp>`].
        #[arg(long)]
        name: Option<String>,
    },
    /// Restore a backup into the database of `--database-url`: the whole backup is
    /// authenticated first, then written in one transaction (all or nothing). A PostgreSQL
    /// dump holding a psql meta-command or top-level transaction control is refused before
    /// anything runs.
    #[command(group(
        clap::ArgGroup::new("source").required(true).args(["input", "name"])
    ))]
    Restore {
        /// The encrypted backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// A recorded backup, by name (its file, or its bytes stored in the row).
        #[arg(long)]
        name: Option<String>,
        /// With `--name`: the database whose `encrypted_backups` records the backup
        /// [default: the `DATABASE_URL` environment variable]. The restore's target is
        /// `--database-url`.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        catalog_url: Option<String>,
        /// Restore over a non-empty database, replacing the objects of the backup.
        #[arg(long)]
        force: bool,
    },
    /// Authenticate every chunk and the manifest of a backup file, print the manifest and
    /// whether the configured provider has every master key it needs (no database needed).
    /// Exit 1 if the backup is damaged or a key is missing.
    Verify {
        /// The encrypted backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
    /// The recorded backups, newest first, with the master key of each stream and the
    /// master keys its rows need.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

impl BackupCommand {
    /// Whether the command pages through the registered tables' rows (`create`, for the
    /// master keys its manifest lists).
    pub(crate) fn reads_tables(&self) -> bool {
        matches!(self, BackupCommand::Create { .. })
    }
}

/// Runs a `jarvis backup` command. A backup that does not authenticate exits 1.
pub(crate) async fn run(
    global: &Global,
    tables: &[&'static TableDescription],
    migrations: &[MigrationSet],
    command: BackupCommand,
) -> Result<ExitCode> {
    let result = match command {
        BackupCommand::Create {
            out,
            store_in_db,
            name,
        } => create(global, tables, migrations, out, store_in_db, name).await,
        BackupCommand::Restore {
            input,
            name,
            catalog_url,
            force,
        } => restore(global, input, name, catalog_url, force).await,
        BackupCommand::Verify { input } => verify(global, &input).await,
        BackupCommand::List { json } => list(global, json).await,
    };
    match result {
        Err(e) if rejected(&e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(1))
        }
        other => other,
    }
}

async fn create(
    global: &Global,
    tables: &[&'static TableDescription],
    migrations: &[MigrationSet],
    out: Option<PathBuf>,
    store_in_db: bool,
    name: Option<String>,
) -> Result<ExitCode> {
    let started = Instant::now();
    let url = global.database_url()?.to_owned();
    let opened = global.open(false).await?;
    let result = async {
        let provider = global.provider().await?;
        let mut options = CreateOptions::default();
        options.out = out;
        options.store_in_db = store_in_db;
        options.name = name;
        let provider = provider.as_ref();
        jarvis_db::backup::create(&opened.backups, tables, migrations, provider, &url, options)
            .await
    }
    .await;
    if let Err(e) = &result {
        opened.audit.record(
            AuditEvent::new(Operation::Backup, "encrypted_backups".to_owned(), started)
                .key(opened.encryptor.master_key().key_id)
                .failed(error_kind(e)),
        );
    }
    opened.audit.shutdown().await;
    let created = result?;
    out!("name      {}", created.name);
    match &created.path {
        Some(p) => out!("path      {}", p.display()),
        None => out!(
            "path      (stored in encrypted_backups, row {})",
            created.record_id
        ),
    }
    out!("size      {} bytes", created.size);
    out!("sha256    {}", created.checksum);
    eprintln!(
        "backed up {} bytes of {} dump ({} chunks) under master key {} in {:.1}s; \
         the rows need {} master key(s)",
        created.summary.plaintext_bytes,
        created.backend.name(),
        created.summary.chunks,
        created.summary.master_key,
        started.elapsed().as_secs_f64(),
        created.rows_master_keys.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn restore(
    global: &Global,
    input: Option<PathBuf>,
    name: Option<String>,
    catalog_url: Option<String>,
    force: bool,
) -> Result<ExitCode> {
    let started = Instant::now();
    let target_url = global
        .database_url()
        .context("restore needs its target: --database-url URL")?
        .to_owned();
    let provider = global.provider().await?;
    let source = match (input, name) {
        (Some(path), _) => RestoreSource::File(path),
        (None, Some(name)) => RestoreSource::Recorded {
            name,
            catalog_url: catalog_url.context(
                "--name looks the backup up in the database that recorded it: set --catalog-url \
                 (or DATABASE_URL)",
            )?,
        },
        (None, None) => anyhow::bail!("restore needs --in FILE or --name NAME"),
    };
    let label = jarvis_db::backup::restore(provider, source, &target_url, force, &|summary| {
        eprintln!(
            "authenticated {} chunks ({} bytes of dump, schema {}); restoring",
            summary.chunks,
            summary.plaintext_bytes,
            printable(&summary.manifest.schema_version)
        );
    })
    .await?;
    out!(
        "restored {label} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "note: the restored key vault (jarvis_data_keys) holds the data keys of the backup's \
         time; stop the application's writers for a restore (one that kept running may hold \
         a newer data key than the backup), restart them after it, then run `verify`"
    );
    Ok(ExitCode::SUCCESS)
}

async fn verify(global: &Global, input: &Path) -> Result<ExitCode> {
    let mut file = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("cannot open {}", input.display()))?;
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, &mut file);
    let header = stream::read_header(&mut reader)
        .await
        .context("not a readable backup")?;
    let provider = global.provider().await;
    let verified = match &provider {
        Ok(provider) => async {
            let mut decrypt =
                DecryptReader::from_header(&mut reader, header.clone(), provider.as_ref()).await?;
            tokio::io::copy_buf(&mut decrypt, &mut tokio::io::sink())
                .await
                .map_err(CryptError::from)?;
            Ok(decrypt.summary())
        }
        .await
        .map_err(|e: CryptError| anyhow::Error::from(e)),
        Err(e) => Err(anyhow!("no key provider: {e:#}")),
    };
    let manifest = match &verified {
        Ok(summary) => {
            out!(
                "backup    authentic: {} chunks of {} bytes, {} bytes of dump, {} bytes in all",
                summary.chunks,
                summary.chunk_size,
                summary.plaintext_bytes,
                summary.stream_bytes
            );
            &summary.manifest
        }
        Err(e) => {
            out!("backup    REJECTED: {}", printable(&format!("{e:#}")));
            out!("          (the manifest below is as stored, not authenticated)");
            header.manifest()
        }
    };
    // Every string of the manifest is the backup writer's: printed with its control
    // characters escaped.
    out!("backend   {}", printable(&manifest.backend));
    out!("schema    {}", printable(&manifest.schema_version));
    out!("created   {}", printable(&manifest.created_at));
    for (key, value) in &manifest.extra {
        let value = value.as_str().map_or(value.to_string(), str::to_owned);
        out!("{:<9} {}", printable(key), printable(&value));
    }
    let mut needed: Vec<(&str, MasterKeyRef)> = vec![("stream", header.master_key().clone())];
    let mut seen = BTreeSet::from([header.master_key().clone()]);
    for id in &manifest.master_key_ids {
        let key = parse_master_key(id);
        if seen.insert(key.clone()) {
            needed.push(("rows", key));
        }
    }
    if needed.len() == 1 && !manifest.master_key_ids.is_empty() {
        needed[0].0 = "stream+rows";
    }
    let mut missing = 0;
    for (role, key) in &needed {
        let status = match &provider {
            Ok(provider) => key_status(provider.as_ref(), key).await,
            Err(_) => Err("no key provider is configured".to_owned()),
        };
        let shown = printable(&key.to_string()).into_owned();
        match status {
            Ok(note) => out!(
                "key       {shown} ({role}): available, {}",
                printable(&note)
            ),
            Err(why) => {
                missing += 1;
                out!("key       {shown} ({role}): MISSING: {}", printable(&why));
            }
        }
    }
    Ok(if verified.is_err() || missing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether the configured provider has `key`: `Ok(note)` or `Err(why not)`.
async fn key_status(provider: &dyn KeyProvider, key: &MasterKeyRef) -> Result<String, String> {
    if provider.kind() != key.provider {
        return Err(format!(
            "it is a {} key and the configured provider is {}",
            key.provider,
            provider.kind()
        ));
    }
    match key.provider {
        ProviderKind::AwsKms => {
            let connection = KmsConnection::from_env(KmsOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            match connection.describe_key_state(&key.key_id).await {
                Ok(state) if state.enabled => Ok(format!("KMS state {}", state.key_state)),
                Ok(state) => Err(format!("KMS state {}", state.key_state)),
                Err(e) => Err(e.to_string()),
            }
        }
        _ if provider.can_unwrap(key) => Ok("in the configured key".to_owned()),
        _ => Err("the configured local key has no such key or version".to_owned()),
    }
}

async fn list(global: &Global, json: bool) -> Result<ExitCode> {
    let opened = global.open(false).await?;
    let backups = opened.backups.list().await;
    let keys = opened.backups.keys().await;
    opened.audit.shutdown().await;
    let backups = backups?;
    // The master keys each backup's rows need, by row id.
    let rows_keys: std::collections::BTreeMap<i64, Option<Vec<String>>> = keys?
        .into_iter()
        .map(|k| (k.id, k.rows_master_key_ids))
        .collect();
    let place = |b: &jarvis_db::EncryptedBackup| match (&b.storage_path, &b.data) {
        (_, Some(_)) => "(in the database)".to_owned(),
        (Some(p), None) => p.clone(),
        (None, None) => "-".to_owned(),
    };
    if json {
        let out: Vec<_> = backups
            .iter()
            .map(|b| {
                serde_json::json!({
                    "id": b.id,
                    "name": b.backup_name,
                    "type": b.backup_type,
                    "created_at": b.created_at.and_utc().to_rfc3339(),
                    "storage_path": b.storage_path,
                    "in_database": b.data.is_some(),
                    "size_bytes": b.size_bytes,
                    "checksum": b.checksum,
                    "master_key_id": b.master_key_id,
                    "rows_master_key_ids": rows_keys.get(&b.id).cloned().flatten(),
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(out));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.set_header([
        "name",
        "type",
        "created (UTC)",
        "size",
        "where",
        "master key",
        "rows' master keys",
        "sha256",
    ]);
    for b in &backups {
        let rows = match rows_keys.get(&b.id).and_then(Option::as_ref) {
            Some(keys) if keys.is_empty() => "-".to_owned(),
            Some(keys) => keys.join("\n"),
            None => "(not recorded)".to_owned(),
        };
        table.add_row([
            printable(&b.backup_name).into_owned(),
            printable(&b.backup_type).into_owned(),
            b.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            b.size_bytes.map_or("-".to_owned(), |s| s.to_string()),
            printable(&place(b)).into_owned(),
            printable(b.master_key_id.as_deref().unwrap_or("-")).into_owned(),
            printable(&rows).into_owned(),
            b.checksum.as_deref().map_or("-".to_owned(), |c| {
                printable(&c.chars().take(16).collect::<String>()).into_owned()
            }),
        ]);
    }
    out!("{table}");
    Ok(ExitCode::SUCCESS)
}
