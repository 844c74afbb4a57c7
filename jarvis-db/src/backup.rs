//! The backup engine of `jarvis backup create|restore`: encrypted, streamed database backups
//! ([`create`], [`restore`]), and what recorded backups need of a master key
//! ([`backups_needing`]). Errors are `anyhow` errors with their context; [`rejected`] tells a
//! backup that must not be trusted or run from other failures.
//!
//! **Create.** PostgreSQL is dumped with `pg_dump --clean --if-exists --no-owner
//! --no-privileges -B` (one consistent snapshot; a forced restore replaces the objects; no
//! large objects, which a plain dump restores through `BEGIN`/`COMMIT` blocks of its own);
//! SQLite is copied online and consistently with `VACUUM INTO` into a private temporary file
//! (mode 0600 in a fresh directory of mode 0700, deleted afterwards): that file briefly holds
//! the database, plaintext columns included, on local disk. The dump is streamed through
//! [`EncryptWriter`] under a fresh data key of the configured provider
//! ([`KeyPurpose::Backup`](jarvis_crypt::KeyPurpose::Backup)) into `<file>.partial`, created
//! new (never an existing file, never through a symbolic link), while its SHA-256 is
//! computed; once complete and synced it is hard-linked to its name, which fails rather than
//! replace anything there, and the temporary name is removed. The manifest records the
//! backend, the schema version (latest applied migration) and the master keys the rows need
//! ([`master_keys_in_use_in`], read before and after the dump: a key that appears meanwhile
//! fails the backup). A row in `encrypted_backups` records the backup: name, type (`pg_dump`
//! or `sqlite`), absolute path, size, checksum, in `master_key_id` the master key that wraps
//! the stream's data key, and in `rows_master_key_ids` the manifest's list: `jarvis
//! retire-key` refuses a key that either names, for file and in-row backups alike.
//!
//! `--store-in-db` keeps a small backup (at most [`MAX_IN_DB_BYTES`] of encrypted stream) in
//! the row itself, in the encrypted field `data`: the stream is then encrypted twice, by its
//! own data key and by the row's field encryption, which binds it to that row.
//!
//! **Restore.** The stream is opened once. A first pass authenticates all of it (constant
//! memory, nothing written) and, for PostgreSQL, reads the decrypted dump as psql will
//! (`psql_dump`): a psql meta-command, top-level transaction control or a dump that ends
//! inside a statement is refused before psql is even started. The second pass rewinds the
//! same descriptor (never a file opened again by its path), checks that the header is the
//! one authenticated, and writes in one transaction; before anything is committed, the
//! SHA-256 and size of what it read must be those of the first pass. PostgreSQL: `psql -X -q
//! -v ON_ERROR_STOP=1` is fed `\restrict <a random key>` (psql's restricted mode, in which it
//! refuses every meta-command itself), `BEGIN;`, the dump through the same check (pg_dump's
//! own `\restrict`/`\unrestrict` lines dropped), then `COMMIT;`, all by this command.
//! (`psql --single-transaction` is not used: it commits at the end of its input, and the end
//! of a pipe whose writer was killed is an end of input, so a restore killed midway would
//! commit half a dump. Here the `COMMIT` is only sent after the last chunk authenticated; if
//! the second pass fails, psql is killed, its stdin still open, and the server rolls back.)
//! SQLite: the stream is decrypted into `<target>.restoring` (created new, like
//! `.partial`), synced, the target's WAL checkpointed, then renamed over the target (which is
//! the restore; a target that is a symbolic link is refused) and the stale `-wal`/`-shm`
//! removed. A non-empty target (a table in schema `public`, or an SQLite file with tables)
//! is refused without `--force`; on PostgreSQL the check is repeated inside the transaction.
//!
//! **Child processes.** `pg_dump` and `psql` run with an environment of their own: `PATH`,
//! `HOME`, the locale and libpq's connection variables (`CHILD_ENV`), nothing of jarvis's
//! secrets (search key, local master key, AWS credentials). A password in the URL goes in
//! the child's `PGPASSWORD`, never on its command line.
//!
//! **Audit.** `backup` events come from recording the backup (and a failed one is recorded
//! too); `restore` events go into the restored database, or into the catalog database of
//! `--name` when the restore fails (a refused dump as `dump_refused`). Neither the database
//! URL, nor keys, nor plaintext are printed or logged: psql's messages are reduced to their
//! error lines, a refused dump is named by its line and the kind of what was found there,
//! and the manifest's strings are printed with their control characters escaped.

mod psql_dump;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::RunQueryDsl;
use jarvis_crypt::TableDescription;
use jarvis_crypt::stream::{self, DecryptReader, EncryptWriter, Manifest, StreamOptions};
use jarvis_crypt::{
    AuditEvent, AuditSink, Error as CryptError, KeyProvider, MasterKeyRef, Operation, ProviderKind,
};

use crate::db::Conn;
use crate::migrations::{Backend, MigrationSet};
use crate::verify::master_keys_in_use_in;
use crate::{Backups, Database, DbAudit, NewBackup};
use sha2::{Digest, Sha256};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf,
};
use tokio::process::Command;

use self::psql_dump::{DumpCheck, DumpRefused};

/// The largest encrypted backup `--store-in-db` keeps in a row: 64 MiB.
pub const MAX_IN_DB_BYTES: u64 = 64 * 1024 * 1024;

/// Whether the error is a backup that does not authenticate, whose key is unknown, or
/// whose dump psql must not run (`backup` commands exit 1 for these).
pub fn rejected(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<DumpRefused>()
            || c.is::<BackupChanged>()
            || matches!(
                c.downcast_ref::<CryptError>(),
                Some(CryptError::StreamTampered(_) | CryptError::UnknownMasterKey { .. })
            )
    })
}

/// The kind an audit event records for a failed backup or restore.
pub fn error_kind(e: &anyhow::Error) -> &'static str {
    e.chain()
        .find_map(|c| {
            if c.is::<DumpRefused>() {
                return Some("dump_refused");
            }
            if c.is::<BackupChanged>() {
                return Some("backup_changed");
            }
            c.downcast_ref::<CryptError>().map(|e| e.kind().as_str())
        })
        .unwrap_or("backup")
}

/// `text` with every control character (ANSI escapes, newlines, C1 controls) and every
/// bidirectional override written as a `\u{..}` escape: manifest strings are chosen by
/// whoever wrote the backup, and printed on the operator's terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
            )
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

// ---- create -------------------------------------------------------------------------------

/// The manifest's name of a backend.
fn backend_tag(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    }
}

/// Where and how to create a backup.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CreateOptions {
    /// The encrypted backup file, which must not exist (default: `<name>.jvbk` in the
    /// current directory); ignored with `store_in_db`.
    pub out: Option<PathBuf>,
    /// Keep the backup in its `encrypted_backups` row (at most [`MAX_IN_DB_BYTES`]).
    pub store_in_db: bool,
    /// Unique name (default: `backup-<UTC timestamp>`).
    pub name: Option<String>,
}

/// A backup made and recorded by [`create`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Created {
    /// Its name.
    pub name: String,
    /// Its file, or `None` when it is stored in its row.
    pub path: Option<PathBuf>,
    /// Its row in `encrypted_backups`.
    pub record_id: i64,
    /// Bytes of encrypted stream.
    pub size: u64,
    /// SHA-256 of the encrypted stream, hex.
    pub checksum: String,
    /// The stream: chunks, bytes of dump, the master key of its data key.
    pub summary: stream::StreamSummary,
    /// The database's backend.
    pub backend: Backend,
    /// The master keys the rows need (as the manifest lists them).
    pub rows_master_keys: Vec<String>,
}

/// Dumps the database of `backups` (`url` is its URL: `pg_dump` connects by it), streams the
/// dump encrypted under a fresh data key of `provider` into a new file (or the record's
/// row), and records it in `encrypted_backups` (see the [module docs](self)). `tables` are
/// the registered models' tables, whose master keys the manifest lists; `migrations` the
/// database's migration sets, whose newest applied migration the manifest names as its
/// schema.
pub async fn create(
    backups: &Backups,
    tables: &[&'static TableDescription],
    migrations: &[MigrationSet],
    provider: &dyn KeyProvider,
    url: &str,
    options: CreateOptions,
) -> Result<Created> {
    let CreateOptions {
        out,
        store_in_db,
        name,
    } = options;
    let db = backups.database();
    let backend = db.backend();
    let name = name
        .unwrap_or_else(|| format!("backup-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
    if name.trim().is_empty() || name.len() > 200 {
        bail!("a backup name is 1 to 200 characters");
    }
    if backups.find_by_name(&name).await?.is_some() {
        bail!("a backup named `{name}` is already recorded; choose another --name");
    }
    let status = crate::migrations::migration_status_of(url, migrations).await?;
    let schema_version = status
        .applied
        .last()
        .map(|m| m.name.clone())
        .context("the database has no jarvis schema: run `migrate` first")?;
    let keys_before = master_keys_in_use_in(db, tables).await?;
    let backup_type = match backend {
        Backend::Postgres => "pg_dump",
        Backend::Sqlite => "sqlite",
    };
    let mut manifest = Manifest::new(backend_tag(backend), schema_version);
    manifest.master_key_ids = keys_before.iter().map(ToString::to_string).collect();
    manifest
        .extra
        .insert("backup_name".into(), serde_json::Value::from(name.clone()));
    manifest
        .extra
        .insert("backup_type".into(), serde_json::Value::from(backup_type));
    manifest.extra.insert(
        "tool".into(),
        serde_json::Value::from(format!("jarvis {}", env!("CARGO_PKG_VERSION"))),
    );
    let (path, data, written) = if store_in_db {
        let sink = Hashing::new(Vec::new(), Some(MAX_IN_DB_BYTES));
        let (sink, summary) = encrypt_dump(sink, provider, &manifest, db, url).await?;
        let (bytes, checksum, size) = sink.finish();
        (None, Some(bytes), (summary, checksum, size))
    } else {
        let path =
            std::path::absolute(out.unwrap_or_else(|| PathBuf::from(format!("{name}.jvbk"))))
                .context("cannot make the --out path absolute")?;
        // Checked again, without a race, when the finished file takes this name.
        if std::fs::symlink_metadata(&path).is_ok() {
            bail!(
                "{} exists; a backup never overwrites a file (nor writes through a symbolic \
                 link)",
                path.display()
            );
        }
        let partial = with_suffix(&path, ".partial");
        let file = create_new_private(&partial).await?;
        let outcome = encrypt_dump(Hashing::new(file, None), provider, &manifest, db, url).await;
        let (sink, summary) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        let (file, checksum, size) = sink.finish();
        file.sync_all().await?;
        let placed = link_into_place(&file, &partial, &path).await;
        drop(file);
        if let Err(e) = placed {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        sync_parent(&path);
        (Some(path), None, (summary, checksum, size))
    };
    let (summary, checksum, size) = written;

    let keys_after = master_keys_in_use_in(db, tables).await?;
    let new_keys: Vec<String> = keys_after
        .difference(&keys_before)
        .map(ToString::to_string)
        .collect();
    if !new_keys.is_empty() {
        if let Some(path) = &path {
            let _ = tokio::fs::remove_file(path).await;
        }
        bail!(
            "rows came under other master keys while the backup ran (a rotation?): {}; \
             its manifest would not list them, so it was discarded: run `jarvis backup create` again",
            new_keys.join(", ")
        );
    }

    // The record lists the keys the rows need, as the manifest does: `retire-key` reads them
    // there for file and in-row backups alike.
    let record = backups
        .create_with_master_keys(
            NewBackup {
                backup_name: name.clone(),
                backup_type: backup_type.to_owned(),
                storage_path: path.as_ref().map(|p| p.display().to_string()),
                data,
                size_bytes: Some(i64::try_from(size)?),
                checksum: Some(checksum.clone()),
                master_key_id: Some(summary.master_key.key_id.clone()),
            },
            manifest.master_key_ids.clone(),
        )
        .await
        .with_context(|| match &path {
            Some(p) => format!(
                "the backup file {} was written but not recorded",
                p.display()
            ),
            None => "the backup was not recorded".to_owned(),
        })?;
    Ok(Created {
        name,
        path,
        record_id: record.id,
        size,
        checksum,
        summary,
        backend,
        rows_master_keys: manifest.master_key_ids,
    })
}

/// Dumps the database into a stream encrypted onto `sink`; returns the sink and the summary.
async fn encrypt_dump<W: AsyncWrite + Unpin + Send>(
    sink: Hashing<W>,
    provider: &dyn KeyProvider,
    manifest: &Manifest,
    db: &Database,
    url: &str,
) -> Result<(Hashing<W>, stream::StreamSummary)> {
    let mut encrypt =
        EncryptWriter::new(sink, provider, manifest, StreamOptions::default()).await?;
    let dumped = match db.backend() {
        Backend::Postgres => pg_dump(url, &mut encrypt).await,
        Backend::Sqlite => sqlite_copy(db, &mut encrypt).await,
    };
    if let Err(e) = dumped {
        if encrypt.get_ref().exceeded {
            bail!(
                "the backup is larger than {} MiB, the limit of --store-in-db: write it to a \
                 file with --out",
                MAX_IN_DB_BYTES / (1024 * 1024)
            );
        }
        return Err(e);
    }
    let (sink, summary) = encrypt
        .finish()
        .await
        .map_err(|e| anyhow!(e).context("cannot write the backup"))?;
    if sink.exceeded {
        bail!("the backup is larger than the limit of --store-in-db: use --out");
    }
    Ok((sink, summary))
}

async fn pg_dump<W: AsyncWrite + Unpin + ?Sized>(url: &str, writer: &mut W) -> Result<()> {
    let mut command = pg_command("pg_dump");
    command.args([
        "--format=plain",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        // Large objects would come as `BEGIN; lo_open...; COMMIT;` blocks, which the
        // restore refuses (its one transaction); the jarvis tables have none. (`-B` is
        // `--no-blobs` before PostgreSQL 16 and `--no-large-objects` after.)
        "-B",
    ]);
    pg_connection(&mut command, url)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .context("cannot run pg_dump (install the PostgreSQL client tools)")?;
    let mut stdout = child.stdout.take().context("pg_dump has no stdout")?;
    let stderr = collect(child.stderr.take());
    let copied = tokio::io::copy(&mut stdout, writer).await;
    drop(stdout);
    if copied.is_err() {
        let _ = child.start_kill();
    }
    let status = child.wait().await?;
    let messages = stderr.await.unwrap_or_default();
    copied.context("cannot write the backup")?;
    if !status.success() {
        bail!("pg_dump failed ({status}): {}", error_lines(&messages));
    }
    Ok(())
}

async fn sqlite_copy<W: AsyncWrite + Unpin + ?Sized>(db: &Database, writer: &mut W) -> Result<()> {
    // A directory of mode 0700 of our own; the copy holds plaintext columns until deleted.
    let dir = tempfile::Builder::new()
        .prefix("jarvis-backup-")
        .tempdir()
        .context("cannot create a private temporary directory")?;
    let snapshot = dir.path().join("snapshot.sqlite");
    // VACUUM INTO accepts an existing empty file: create it 0600 first.
    drop(create_new_private(&snapshot).await?);
    let target = snapshot
        .to_str()
        .context("the temporary directory's path is not UTF-8")?
        .to_owned();
    let mut conn = db.get().await?;
    match &mut conn {
        Conn::Sqlite(c) => {
            diesel::sql_query("VACUUM INTO ?")
                .bind::<Text, _>(target)
                .execute(&mut **c)
                .await
                .context("VACUUM INTO (the online copy of the SQLite database) failed")?;
        }
        Conn::Postgres(_) => bail!("not an SQLite database"),
    }
    drop(conn);
    let mut file = tokio::fs::File::open(&snapshot).await?;
    tokio::io::copy(&mut file, writer)
        .await
        .context("cannot write the backup")?;
    drop(file);
    dir.close().context("cannot delete the temporary copy")?;
    Ok(())
}

// ---- restore ------------------------------------------------------------------------------

/// Where the encrypted stream is read from.
enum Source {
    File(PathBuf),
    Bytes(Arc<[u8]>),
}

/// An opened stream: readable, and rewindable for the second pass of a restore.
trait Stream: AsyncRead + AsyncSeek + Unpin + Send {}
impl<T: AsyncRead + AsyncSeek + Unpin + Send> Stream for T {}

impl Source {
    /// Opens the stream once: a restore authenticates and then applies this same
    /// descriptor, rewound, never a file opened again by its path.
    async fn open(&self) -> Result<Box<dyn Stream>> {
        Ok(match self {
            Source::File(path) => Box::new(
                tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            Source::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
        })
    }
}

/// A buffered reader over an opened stream that hashes what it reads.
type StreamReader<'a> = HashingReader<tokio::io::BufReader<&'a mut dyn Stream>>;

/// A [`StreamReader`] from the stream's current position.
fn hashing_reader(stream: &mut dyn Stream) -> StreamReader<'_> {
    HashingReader::new(tokio::io::BufReader::with_capacity(256 * 1024, stream))
}

/// What the first pass of a restore authenticated: the stream's summary, and the SHA-256
/// of its header and of the whole stream, which the second pass must see again.
struct Authenticated {
    summary: stream::StreamSummary,
    header_sha256: String,
    sha256: String,
    size: u64,
}

/// The first pass: the header and every chunk authenticated (and, for a PostgreSQL dump,
/// the plaintext checked as psql will read it), nothing written.
async fn authenticate(
    provider: &dyn KeyProvider,
    stream: &mut dyn Stream,
    check_dump: Option<Backend>,
) -> Result<Authenticated> {
    let mut reader = hashing_reader(stream);
    let header = stream::read_header(&mut reader)
        .await
        .context("the backup does not authenticate; the target database was not touched")?;
    let header_sha256 = reader.digest();
    // The claimed backend decides whether the plaintext is a psql script; the authenticated
    // manifest is compared with the target afterwards.
    let mut dump = (check_dump == Some(Backend::Postgres)
        && header.manifest().backend == backend_tag(Backend::Postgres))
    .then(DumpCheck::new);
    let checked: Result<stream::StreamSummary> = async {
        let mut decrypt = DecryptReader::from_header(&mut reader, header, provider)
            .await
            .context("the backup does not authenticate; the target database was not touched")?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut forwarded = Vec::new();
        loop {
            let n = decrypt
                .read(&mut buf)
                .await
                .map_err(CryptError::from)
                .context("the backup does not authenticate; the target database was not touched")?;
            if n == 0 {
                break;
            }
            if let Some(dump) = &mut dump {
                dump.feed(&buf[..n], &mut forwarded)
                    .context(REFUSED_UNTOUCHED)?;
                forwarded.clear();
            }
        }
        if let Some(dump) = &mut dump {
            dump.finish(&mut forwarded).context(REFUSED_UNTOUCHED)?;
        }
        Ok(decrypt.summary())
    }
    .await;
    let summary = checked?;
    let (sha256, size) = reader.finish();
    Ok(Authenticated {
        summary,
        header_sha256,
        sha256,
        size,
    })
}

/// What a dump refused by [`DumpCheck`] before psql started says.
const REFUSED_UNTOUCHED: &str =
    "nothing of it was executed and the target database was not touched";

/// The second pass begins: the stream rewound and its header read again, which must be
/// the one the first pass authenticated. Read the rest through `reader`, then compare with
/// [`same_bytes`] before anything is committed.
async fn rewind<'a>(
    stream: &'a mut dyn Stream,
    first: &Authenticated,
) -> Result<(StreamReader<'a>, stream::Header)> {
    stream
        .seek(io::SeekFrom::Start(0))
        .await
        .context("cannot rewind the backup")?;
    let mut reader = hashing_reader(stream);
    let header = stream::read_header(&mut reader).await?;
    if reader.digest() != first.header_sha256 {
        return Err(anyhow!(BackupChanged).context("the target database was not touched"));
    }
    Ok((reader, header))
}

/// The stream changed between the two passes of a restore: what the second pass read is
/// not what the first authenticated (the file was rewritten in place meanwhile).
#[derive(Debug, thiserror::Error)]
#[error(
    "the backup changed while it was being restored (its bytes are not those that were \
     authenticated)"
)]
struct BackupChanged;

/// Whether the second pass read exactly the bytes of the first.
fn same_bytes<R>(reader: HashingReader<R>, first: &Authenticated) -> bool {
    let (sha256, size) = reader.finish();
    sha256 == first.sha256 && size == first.size
}

/// The recorded backup of `--name`, in its catalog database.
struct Recorded {
    id: i64,
    size: Option<i64>,
    checksum: Option<String>,
    audit: DbAudit,
}

/// What [`restore`] restores.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RestoreSource {
    /// An encrypted backup file.
    File(PathBuf),
    /// A backup recorded in `encrypted_backups` of the database at `catalog_url`, by name:
    /// its file, or its bytes stored in the row. Its size and SHA-256 must match the record.
    Recorded {
        /// The backup's name.
        name: String,
        /// The database that recorded it.
        catalog_url: String,
    },
}

/// Restores a backup into the database at `target_url` (see the [module docs](self)): the
/// whole stream is authenticated first (`authenticated` is called then, with its summary),
/// then written in one transaction (PostgreSQL) or renamed over the target (SQLite). A
/// non-empty target is refused unless `force`. Returns the label of what was restored (the
/// file's path, or "backup `name`"). The restore is audited in the restored database, or, when
/// it fails, in the catalog database of a recorded backup.
pub async fn restore(
    provider: Arc<dyn KeyProvider>,
    source: RestoreSource,
    target_url: &str,
    force: bool,
    authenticated: &(dyn Fn(&stream::StreamSummary) + Sync),
) -> Result<String> {
    let started = Instant::now();
    let (source, label, recorded) = match source {
        RestoreSource::File(path) => {
            let label = path.display().to_string();
            (Source::File(path), label, None)
        }
        RestoreSource::Recorded { name, catalog_url } => {
            let db = Database::connect(&catalog_url, 2).await?;
            let audit = DbAudit::start(db.clone());
            // The record's stored bytes may reference the catalog's key vault.
            let vault = crate::vault::DbKeyVault::connect(&catalog_url).await?;
            let encryptor = jarvis_crypt::Encryptor::builder(provider.clone())
                .key_vault(Arc::new(vault))
                .build();
            let backups = Backups::new(db, encryptor, Arc::new(audit.clone()));
            let record = backups
                .find_by_name(&name)
                .await?
                .with_context(|| format!("no backup named `{name}` is recorded"))?;
            let source = match (record.data, record.storage_path) {
                (Some(bytes), _) => Source::Bytes(bytes.into()),
                (None, Some(path)) => Source::File(PathBuf::from(path)),
                (None, None) => bail!("backup `{name}` has neither a file nor stored bytes"),
            };
            let recorded = Recorded {
                id: record.id,
                size: record.size_bytes,
                checksum: record.checksum,
                audit,
            };
            (source, format!("backup `{name}`"), Some(recorded))
        }
    };
    let result = restore_from(
        provider.as_ref(),
        &source,
        target_url,
        recorded.as_ref(),
        force,
        authenticated,
    )
    .await
    .with_context(|| format!("restore of {label} failed"));
    let key = match &result {
        Ok(key) => key.key_id.clone(),
        Err(_) => provider.master_key().key_id,
    };
    let mut event = AuditEvent::new(Operation::Restore, "encrypted_backups".to_owned(), started)
        .key(key)
        .records(recorded.as_ref().map(|r| r.id));
    if let Err(e) = &result {
        event = event.failed(error_kind(e));
    }
    match (&result, &recorded) {
        (Ok(_), _) => {
            // The restored database has the audit table now.
            let db = Database::connect(target_url, 1).await?;
            let audit = DbAudit::start(db);
            audit.record(event);
            audit.shutdown().await;
        }
        (Err(_), Some(r)) => r.audit.record(event),
        (Err(_), None) => tracing::debug!("the failed restore is not audited: no catalog database"),
    }
    if let Some(r) = &recorded {
        r.audit.shutdown().await;
    }
    result?;
    Ok(label)
}

/// Authenticates the whole stream, then restores it from the same descriptor; returns the
/// stream's master key.
async fn restore_from(
    provider: &dyn KeyProvider,
    source: &Source,
    target_url: &str,
    recorded: Option<&Recorded>,
    force: bool,
    authenticated: &(dyn Fn(&stream::StreamSummary) + Sync),
) -> Result<MasterKeyRef> {
    let backend = Backend::from_url(target_url);
    if backend == Backend::Sqlite {
        // The restored file replaces the target's name: never a symbolic link's.
        let target = Path::new(sqlite_path(target_url));
        if std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{} is a symbolic link: restore to the file it points to, by its own path; \
                 the target database was not touched",
                target.display()
            );
        }
    }
    let tables = existing_tables(target_url).await?;
    if tables > 0 && !force {
        bail!(
            "the target database is not empty ({tables} tables); pass --force to replace the \
             objects of the backup"
        );
    }
    let mut stream = source.open().await?;
    // Pass 1: every chunk (and a dump as psql will read it), nothing written.
    let first = authenticate(provider, &mut *stream, Some(backend)).await?;
    if let Some(r) = recorded
        && (r
            .size
            .is_some_and(|s| u64::try_from(s).ok() != Some(first.size))
            || r.checksum.as_ref().is_some_and(|c| *c != first.sha256))
    {
        bail!(
            "the backup's bytes do not match its record (size or SHA-256): it was replaced; \
             the target database was not touched"
        );
    }
    let summary = &first.summary;
    let expected = backend_tag(backend);
    if summary.manifest.backend != expected {
        bail!(
            "the backup is of a {} database, the target is {}",
            printable(&summary.manifest.backend),
            backend.name()
        );
    }
    authenticated(summary);
    // Pass 2: the same descriptor, rewound.
    match backend {
        Backend::Postgres => {
            psql_restore(provider, &mut *stream, &first, target_url, force).await?
        }
        Backend::Sqlite => sqlite_restore(provider, &mut *stream, &first, target_url).await?,
    }
    Ok(first.summary.master_key)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Tables of the target: in schema `public` (PostgreSQL), or of an existing SQLite file.
async fn existing_tables(url: &str) -> Result<i64> {
    let sql = match Backend::from_url(url) {
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = 'public'"
        }
        Backend::Sqlite => {
            let path = Path::new(sqlite_path(url));
            if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
                return Ok(0);
            }
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
    };
    let db = Database::connect(url, 1)
        .await
        .context("cannot connect to the target database")?;
    let mut conn = db.get().await?;
    let count: Count =
        crate::with_conn!(&mut conn, |c| diesel::sql_query(sql).get_result(c).await?);
    Ok(count.n)
}

enum Feed {
    /// The restore must not commit: the stream failed to decrypt or changed since it was
    /// authenticated, or the dump was refused.
    Stop(anyhow::Error),
    /// psql stopped reading.
    Psql(io::Error),
}

/// psql's input before the dump: restricted mode under a key of this restore (so psql
/// itself refuses any meta-command), one transaction, and the settings the dump check
/// assumes; on a target that must be empty, the check repeated inside the transaction.
fn psql_preamble(force: bool) -> String {
    use rand::Rng;
    let key: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let mut preamble = format!(
        "\\restrict {key}\nBEGIN;\nSET client_min_messages = warning;\n\
         SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n"
    );
    if !force {
        preamble.push_str(
            "DO $jarvis$ BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_tables \
             WHERE schemaname = 'public') THEN RAISE EXCEPTION \
             'jarvis: the target database is not empty'; END IF; END $jarvis$;\n",
        );
    }
    preamble
}

async fn psql_restore(
    provider: &dyn KeyProvider,
    stream: &mut dyn Stream,
    first: &Authenticated,
    url: &str,
    force: bool,
) -> Result<()> {
    let (mut reader, header) = rewind(stream, first).await?;
    let mut command = pg_command("psql");
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse"]);
    pg_connection(&mut command, url)?;
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .context("cannot run psql (install the PostgreSQL client tools)")?;
    let mut stdin = child.stdin.take().context("psql has no stdin")?;
    let stderr = collect(child.stderr.take());
    let fed: Result<(), Feed> = async {
        stdin
            .write_all(psql_preamble(force).as_bytes())
            .await
            .map_err(Feed::Psql)?;
        let mut decrypt = DecryptReader::from_header(&mut reader, header, provider)
            .await
            .map_err(|e| Feed::Stop(e.into()))?;
        let mut dump = DumpCheck::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut lines = Vec::with_capacity(buf.len());
        loop {
            let n = decrypt
                .read(&mut buf)
                .await
                .map_err(|e| Feed::Stop(CryptError::from(e).into()))?;
            if n == 0 {
                break;
            }
            dump.feed(&buf[..n], &mut lines)
                .map_err(|e| Feed::Stop(e.into()))?;
            stdin.write_all(&lines).await.map_err(Feed::Psql)?;
            lines.clear();
        }
        dump.finish(&mut lines).map_err(|e| Feed::Stop(e.into()))?;
        stdin.write_all(&lines).await.map_err(Feed::Psql)?;
        drop(decrypt);
        if !same_bytes(reader, first) {
            return Err(Feed::Stop(anyhow!(BackupChanged)));
        }
        // Only now, every chunk authenticated and the same as in the first pass, does the
        // transaction commit.
        stdin.write_all(b"\nCOMMIT;\n").await.map_err(Feed::Psql)?;
        stdin.flush().await.map_err(Feed::Psql)
    }
    .await;
    match fed {
        Err(Feed::Stop(e)) => {
            // Killed with its stdin still open: no end of input, no COMMIT; it rolls back.
            let _ = child.start_kill();
            let _ = child.wait().await;
            drop(stdin);
            Err(e.context(
                "the restore stopped before its COMMIT; psql was killed and its transaction \
                 rolled back",
            ))
        }
        Err(Feed::Psql(e)) => {
            drop(stdin);
            let status = child.wait().await?;
            let messages = stderr.await.unwrap_or_default();
            bail!(
                "psql stopped ({status}, {e}); the transaction rolled back: {}",
                psql_errors(&messages)
            )
        }
        Ok(()) => {
            drop(stdin);
            let status = child.wait().await?;
            let messages = stderr.await.unwrap_or_default();
            if !status.success() {
                bail!(
                    "psql failed ({status}); the transaction rolled back: {}",
                    psql_errors(&messages)
                );
            }
            Ok(())
        }
    }
}

/// psql's error lines, and a clear word when psql is too old for restricted mode.
fn psql_errors(messages: &str) -> String {
    if messages.contains("invalid command \\restrict") {
        return "this psql does not know `\\restrict` (the fix of CVE-2025-8714 in the \
                PostgreSQL client tools 13.22, 14.19, 15.14, 16.10, 17.6 and later): upgrade \
                them; nothing of the dump was executed"
            .to_owned();
    }
    error_lines(messages)
}

#[derive(QueryableByName)]
struct Checkpoint {
    #[diesel(sql_type = Integer)]
    busy: i32,
}

async fn sqlite_restore(
    provider: &dyn KeyProvider,
    stream: &mut dyn Stream,
    first: &Authenticated,
    url: &str,
) -> Result<()> {
    let target = PathBuf::from(sqlite_path(url));
    let restoring = with_suffix(&target, ".restoring");
    let (mut reader, header) = rewind(stream, first).await?;
    let mut file = create_new_private(&restoring).await?;
    let written: Result<()> = async {
        let mut decrypt = DecryptReader::from_header(&mut reader, header, provider).await?;
        tokio::io::copy_buf(&mut decrypt, &mut file)
            .await
            .map_err(CryptError::from)?;
        drop(decrypt);
        if !same_bytes(reader, first) {
            return Err(BackupChanged.into());
        }
        file.sync_all().await?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&restoring).await;
        return Err(e.context(
            "the restore stopped before the target was replaced; the target database was not \
             touched",
        ));
    }
    if std::fs::metadata(&target).is_ok_and(|m| m.len() > 0) {
        // Whatever the WAL holds goes into the old file, so no stale WAL is left to replay.
        let db = Database::connect(url, 1).await?;
        let mut conn = db.get().await?;
        let checkpoint: Checkpoint = crate::with_conn!(&mut conn, |c| diesel::sql_query(
            "PRAGMA wal_checkpoint(TRUNCATE)"
        )
        .get_result(c)
        .await?);
        drop(conn);
        drop(db);
        if checkpoint.busy != 0 {
            let _ = tokio::fs::remove_file(&restoring).await;
            bail!("the target database is in use; stop its users and restore again");
        }
    }
    // Replacing the target is the restore itself (an empty target, or --force); the name
    // was checked not to be a symbolic link above.
    tokio::fs::rename(&restoring, &target).await?;
    for suffix in ["-wal", "-shm"] {
        match tokio::fs::remove_file(with_suffix(&target, suffix)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    sync_parent(&target);
    Ok(())
}

// ---- verify and list ----------------------------------------------------------------------

/// A master key as the manifest lists it: `id#vN` (local) or a KMS key ARN.
pub fn parse_master_key(text: &str) -> MasterKeyRef {
    if let Some((id, version)) = text.rsplit_once("#v")
        && let Ok(version) = version.parse()
    {
        return MasterKeyRef {
            provider: ProviderKind::Local,
            key_id: id.to_owned(),
            version,
        };
    }
    MasterKeyRef {
        provider: ProviderKind::AwsKms,
        key_id: text.to_owned(),
        version: 0,
    }
}

// ---- helpers ------------------------------------------------------------------------------

/// The SQLite file of a `sqlite://` URL or a bare path.
fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path`, mode 0600, as a new file: never an existing file, and never through a
/// symbolic link (`O_CREAT | O_EXCL` fails on any existing name, a dangling link included,
/// and does not follow it).
async fn create_new_private(path: &Path) -> Result<tokio::fs::File> {
    match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
    {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
            "{} exists (a symbolic link, or the file of an interrupted run?); it was not \
             touched: remove it and try again",
            path.display()
        ),
        Err(e) => Err(anyhow!(e).context(format!("cannot create {}", path.display()))),
    }
}

/// Gives the finished file `partial` (open as `file`) its name `path` without ever
/// replacing anything of that name: a hard link fails on any existing name, a symbolic link
/// included; then the temporary name goes. `partial` must still be the file written.
async fn link_into_place(file: &tokio::fs::File, partial: &Path, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let written = file.metadata().await?;
    let named = tokio::fs::symlink_metadata(partial).await?;
    if (named.dev(), named.ino()) != (written.dev(), written.ino()) {
        bail!(
            "{} was replaced while the backup was written; nothing was put at {}",
            partial.display(),
            path.display()
        );
    }
    match tokio::fs::hard_link(partial, path).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
            "{} exists (it appeared while the backup ran); a backup never overwrites a file",
            path.display()
        ),
        Err(e) => {
            return Err(anyhow!(e).context(format!(
                "cannot name the backup {} (its file system needs hard links)",
                path.display()
            )));
        }
    }
    tokio::fs::remove_file(partial).await?;
    Ok(())
}

/// Makes a rename durable: syncs the directory holding `path` (best effort).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
}

/// The environment `pg_dump` and `psql` inherit, by name: the search path, home and locale,
/// and libpq's connection variables. Everything else (the search key, the local master key,
/// AWS credentials, `DATABASE_URL`...) stays with jarvis. Left out on purpose:
/// `PGOPTIONS` and `PGCLIENTENCODING`, which would change how the session reads a dump.
const CHILD_ENV: [&str; 40] = [
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_COLLATE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_MONETARY",
    "TZ",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLNEGOTIATION",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCERTMODE",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGTARGETSESSIONATTRS",
    "KRB5CCNAME",
];

/// `pg_dump` or `psql` with an environment of [`CHILD_ENV`] only.
fn pg_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for name in CHILD_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// Points a `pg_dump`/`psql` command at the database of `url` without putting a password
/// on its command line: one in the URL (as its user info or a `password` parameter) goes in
/// the child's `PGPASSWORD`.
fn pg_connection(command: &mut Command, url: &str) -> Result<()> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| anyhow!("the PostgreSQL URL does not parse: {e}"))?;
    let mut password = match parsed.password() {
        Some(password) => Some(
            percent_encoding::percent_decode_str(password)
                .decode_utf8()
                .context("the PostgreSQL URL's password is not UTF-8")?
                .into_owned(),
        ),
        None => None,
    };
    if password.is_some() {
        parsed
            .set_password(None)
            .map_err(|()| anyhow!("the PostgreSQL URL has no host"))?;
    }
    if parsed.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            if k == "password" {
                password = Some(v);
            } else {
                query.append_pair(&k, &v);
            }
        }
        let query = query.finish();
        parsed.set_query((!query.is_empty()).then_some(query.as_str()));
    }
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.arg("--dbname").arg(parsed.as_str());
    Ok(())
}

/// Reads a child's stderr in the background (so it never blocks on a full pipe).
fn collect<R: AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut text).await;
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// The error lines of pg_dump's or psql's messages; their DETAIL and CONTEXT lines, which
/// can quote row data, are left out.
fn error_lines(messages: &str) -> String {
    let lines: Vec<&str> = messages
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                || l.contains("FATAL")
                || l.contains("error:")
                || l.contains("invalid command")
                || l.contains("restricted")
        })
        .take(5)
        .collect();
    if lines.is_empty() {
        "(no error message)".to_owned()
    } else {
        lines.join("; ")
    }
}

/// A writer that counts and hashes what goes through, optionally refusing more than a limit.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    limit: Option<u64>,
    exceeded: bool,
}

impl<W> Hashing<W> {
    fn new(inner: W, limit: Option<u64>) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            limit,
            exceeded: false,
        }
    }

    /// The writer, the SHA-256 (hex) and the byte count.
    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(&self.hasher.finalize()[..]),
            self.bytes,
        )
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Hashing<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this
            .limit
            .is_some_and(|limit| this.bytes + buf.len() as u64 > limit)
        {
            this.exceeded = true;
            return Poll::Ready(Err(io::Error::other("the backup exceeds the size limit")));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.hasher.update(&buf[..n]);
        this.bytes += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A reader that counts and hashes what goes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The SHA-256 (hex) of what went through so far.
    fn digest(&self) -> String {
        hex::encode(&self.hasher.clone().finalize()[..])
    }

    fn finish(self) -> (String, u64) {
        (hex::encode(&self.hasher.finalize()[..]), self.bytes)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        this.hasher.update(new);
        this.bytes += new.len() as u64;
        Poll::Ready(Ok(()))
    }
}

/// What the recorded backups say about one master key (see [`backups_needing`]).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BackupNeeds {
    /// Backups that need the key: (name, why).
    pub needing: Vec<(String, &'static str)>,
    /// Backups whose needs cannot be fully known: (name, why).
    pub unreadable: Vec<(String, String)>,
}

/// What the recorded backups need of the master key `key_id` (a KMS key ARN, or a local key
/// id), read without any key: each record's own list (the stream's key and its rows' keys),
/// and for a backup in a file the manifest of the file too. A file that cannot be read, and
/// a backup stored in its row whose record has no list (made before migration 10), are
/// unreadable: their needs beyond what their record says are not known.
pub async fn backups_needing(db: &Database, key_id: &str) -> Result<BackupNeeds> {
    let mut needs = BackupNeeds::default();
    for backup in crate::backups::backup_keys(db).await? {
        let name = printable(&backup.backup_name).into_owned();
        let mut why = None;
        if backup.stream_master_key_id.as_deref() == Some(key_id) {
            why = Some("whose stream's data key is wrapped under it");
        } else if backup.names(key_id) {
            why = Some("whose rows are under it (its record says)");
        }
        match (&backup.storage_path, backup.in_row) {
            (Some(path), false) => {
                let header = match tokio::fs::File::open(path).await {
                    Ok(mut file) => stream::read_header(&mut file)
                        .await
                        .map_err(|e| format!("its file is not a readable backup ({e})")),
                    Err(e) => Err(format!("its file cannot be read ({e})")),
                };
                match header {
                    Ok(header) => {
                        let listed = header
                            .manifest()
                            .master_key_ids
                            .iter()
                            .any(|id| parse_master_key(id).key_id == key_id);
                        if why.is_none() && header.master_key().key_id == key_id {
                            why = Some("whose stream's data key is wrapped under it");
                        } else if why.is_none() && listed {
                            why = Some("whose rows are under it (its manifest says)");
                        }
                    }
                    Err(e) => needs
                        .unreadable
                        .push((name.clone(), printable(&e).into_owned())),
                }
            }
            _ if backup.rows_master_key_ids.is_none() => needs.unreadable.push((
                name.clone(),
                "its record does not list the master keys of its rows (recorded before \
                 jarvis recorded them)"
                    .to_owned(),
            )),
            _ => {}
        }
        if let Some(why) = why {
            needs.needing.push((name, why));
        }
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_parse_back() {
        let local = parse_master_key("local-abc#v2");
        assert_eq!(local.provider, ProviderKind::Local);
        assert_eq!((local.key_id.as_str(), local.version), ("local-abc", 2));
        assert_eq!(local.to_string(), "local-abc#v2");
        let kms = parse_master_key("arn:aws:kms:us-east-1:123456789012:key/k");
        assert_eq!(kms.provider, ProviderKind::AwsKms);
        assert_eq!(kms.version, 0);
    }

    #[test]
    fn psql_messages_keep_error_lines_only() {
        let text = "psql:<stdin>:9: ERROR:  duplicate key value\nDETAIL:  Key (email)=(a@b) exists.\nCONTEXT:  COPY users, line 1: \"x\"\n";
        let shown = error_lines(text);
        assert!(shown.contains("duplicate key"));
        assert!(!shown.contains("a@b") && !shown.contains("COPY users"));
    }
}
