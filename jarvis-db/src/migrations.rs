//! Embedded diesel migrations, in sets, and functions that apply, revert and list them on
//! either backend.
//!
//! A [`MigrationSet`] is one `embed_migrations!` per backend. This crate ships
//! [`BOOKKEEPING`] (`migrations/bookkeeping`): the tables the jobs and tools need in any
//! application's database: `jarvis_keys`, `jarvis_settings`, `jarvis_jobs`,
//! `jarvis_job_progress`, `encryption_audit_log` with its view `encryption_audit_summary`,
//! and `encrypted_backups`. An application runs it beside its own migrations
//! ([`run_bookkeeping_migrations`], or `migrate` of its operations binary), and may hand its
//! own migrations to the same functions as a set of its own (`*_of`), which is what an
//! operations binary's `migrate` does. The seed's tables are jarvis-models' set `SEED`.
//!
//! Sets share diesel's `__diesel_schema_migrations`, which records versions only: no two sets
//! applied to one database may share a version. [`migration_status_of`] reports the versions
//! a database has applied that are in none of the sets it was given as `unknown`.
//!
//! The backend is chosen by the database URL ([`Backend::from_url`]): `postgres://` or
//! `postgresql://` is PostgreSQL, anything else a SQLite database (a path, `:memory:`, a
//! `file:` URI or `sqlite://path`).
//!
//! The `async` functions ([`run_pending_migrations_of`], [`migration_status_of`]) open a connection of their own and run diesel's synchronous
//! migration harness on tokio's blocking pool (`spawn_blocking`); they need a tokio runtime.
//! The `*_blocking` variants do the same work on the calling thread and must not be called
//! from inside an async task (use the `async` ones there).
//!
//! - PostgreSQL connects through `diesel-async` (tokio-postgres, no TLS, no libpq) wrapped in
//!   an `AsyncConnectionWrapper`. Applying and reverting hold a session-level advisory lock
//!   ([`POSTGRES_MIGRATION_LOCK`]), so that several processes starting at once apply each
//!   migration once. Each migration runs in its own transaction.
//! - SQLite uses diesel's `SqliteConnection`; applying and reverting run in one
//!   `BEGIN IMMEDIATE` transaction (each migration in a savepoint), which serialises
//!   concurrent runners and leaves the database unchanged when a migration fails. A busy
//!   database is waited for ([`SQLITE_BUSY_TIMEOUT_MS`]).
//!
//! Errors never contain the database URL, which may carry a password.

use std::error::Error as StdError;
use std::fmt;

use diesel::Connection;
use diesel::backend::Backend as DieselBackend;
use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationSource, MigrationVersion};
use diesel::pg::Pg;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// The bookkeeping tables every application's database needs (see the [module docs](self)).
pub const BOOKKEEPING: MigrationSet = MigrationSet::new(
    "bookkeeping",
    &embed_migrations!("../migrations/bookkeeping/postgres"),
    &embed_migrations!("../migrations/bookkeeping/sqlite"),
);

/// What [`Backend::migrations`] embeds: every migration of `migrations/postgres` and
/// `migrations/sqlite` (both sets, linked there) when jarvis-models is built, as before the
/// split into sets; the bookkeeping set alone otherwise.
#[cfg(feature = "seed-migrations")]
const COMBINED: (EmbeddedMigrations, EmbeddedMigrations) = (
    embed_migrations!("../migrations/postgres"),
    embed_migrations!("../migrations/sqlite"),
);
#[cfg(not(feature = "seed-migrations"))]
const COMBINED: (EmbeddedMigrations, EmbeddedMigrations) = (
    embed_migrations!("../migrations/bookkeeping/postgres"),
    embed_migrations!("../migrations/bookkeeping/sqlite"),
);

/// A set of embedded migrations for both backends, with versions of its own (no two sets
/// applied to one database may share a version: diesel records versions only).
#[derive(Clone, Copy)]
pub struct MigrationSet {
    name: &'static str,
    postgres: &'static EmbeddedMigrations,
    sqlite: &'static EmbeddedMigrations,
}

impl MigrationSet {
    /// A set named `name` of `embed_migrations!` for each backend.
    pub const fn new(
        name: &'static str,
        postgres: &'static EmbeddedMigrations,
        sqlite: &'static EmbeddedMigrations,
    ) -> Self {
        MigrationSet {
            name,
            postgres,
            sqlite,
        }
    }

    /// The set's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The set's migrations for `backend`.
    pub fn for_backend(&self, backend: Backend) -> &'static EmbeddedMigrations {
        match backend {
            Backend::Postgres => self.postgres,
            Backend::Sqlite => self.sqlite,
        }
    }
}

impl fmt::Debug for MigrationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationSet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Several sets' migrations of one backend as one diesel source, oldest first.
#[derive(Clone)]
struct Combined(Vec<&'static EmbeddedMigrations>);

impl Combined {
    fn of(sets: &[MigrationSet], backend: Backend) -> Self {
        Combined(sets.iter().map(|set| set.for_backend(backend)).collect())
    }
}

impl<DB: DieselBackend> MigrationSource<DB> for Combined {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<DB>>>> {
        let mut all = Vec::new();
        for set in &self.0 {
            all.extend(MigrationSource::<DB>::migrations(*set)?);
        }
        all.sort_by_key(|m| m.name().version().to_string());
        Ok(all)
    }
}

/// Key of the PostgreSQL session-level advisory lock held while migrations are applied or
/// reverted (`pg_advisory_lock(key)`); the bytes spell `jarvismg`.
pub const POSTGRES_MIGRATION_LOCK: i64 = 0x6a61_7276_6973_6d67;

/// How long a SQLite migration waits for a database locked by another connection, in
/// milliseconds (`PRAGMA busy_timeout`).
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// A database backend supported by jarvis-models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL (`postgres://` or `postgresql://` URLs).
    Postgres,
    /// SQLite (every other URL: a path, `:memory:`, a `file:` URI or `sqlite://path`).
    Sqlite,
}

impl Backend {
    /// The backend a database URL designates: PostgreSQL for the schemes `postgres://` and
    /// `postgresql://` (case-insensitive), SQLite otherwise.
    pub fn from_url(database_url: &str) -> Self {
        let url = database_url.trim_start();
        let is_postgres = ["postgres://", "postgresql://"].iter().any(|scheme| {
            url.get(..scheme.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
        });
        if is_postgres {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    /// The backend's name, `PostgreSQL` or `SQLite`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Sqlite => "SQLite",
        }
    }

    /// The embedded migrations this build applies without naming a set: every migration of
    /// both jarvis sets (bookkeeping and the seed's, `migrations/postgres` or
    /// `migrations/sqlite`) when jarvis-models is part of the build (it turns on this
    /// crate's feature `seed-migrations`), as before the split into sets; the bookkeeping set
    /// alone otherwise. New code names its sets: [`MigrationSet::for_backend`].
    pub fn migrations(self) -> EmbeddedMigrations {
        match self {
            Self::Postgres => COMBINED.0,
            Self::Sqlite => COMBINED.1,
        }
    }

    /// The migrations of [`migrations`](Self::migrations), oldest first. New code names its
    /// sets: [`embedded_migrations_of`](Self::embedded_migrations_of).
    pub fn embedded_migrations(self) -> Vec<MigrationInfo> {
        let source = self.migrations();
        let listed = match self {
            Self::Postgres => embedded::<Pg, _>(&source),
            Self::Sqlite => embedded::<Sqlite, _>(&source),
        };
        // Listing embedded migrations cannot fail: their names were checked at compile time.
        listed.unwrap_or_default()
    }

    /// The embedded migrations of `sets` for this backend, oldest first.
    pub fn embedded_migrations_of(self, sets: &[MigrationSet]) -> Vec<MigrationInfo> {
        let source = Combined::of(sets, self);
        let listed = match self {
            Self::Postgres => embedded::<Pg, _>(&source),
            Self::Sqlite => embedded::<Sqlite, _>(&source),
        };
        // Listing embedded migrations cannot fail: their names were checked at compile time.
        listed.unwrap_or_default()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One migration: its version (the digits of its directory's date prefix, e.g.
/// `20261128000001`, as recorded in `__diesel_schema_migrations`) and its full name (the
/// directory name, e.g. `2026-11-28-000001_create_users`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MigrationInfo {
    /// The version recorded in `__diesel_schema_migrations`.
    pub version: String,
    /// The migration's directory name.
    pub name: String,
}

impl fmt::Display for MigrationInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Which embedded migrations a database has applied and which are pending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Embedded migrations the database has applied, oldest first.
    pub applied: Vec<MigrationInfo>,
    /// Embedded migrations not applied yet, oldest first.
    pub pending: Vec<MigrationInfo>,
    /// Versions the database has applied that this build does not embed (applied by a newer
    /// build), oldest first.
    pub unknown: Vec<String>,
}

impl MigrationStatus {
    /// Whether every embedded migration is applied.
    pub fn is_up_to_date(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A failure to apply, revert or list migrations. Never contains the database URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The database could not be opened. `reason` is the driver's message, with the URL and
    /// its password removed.
    #[error("cannot connect to the {backend} database: {reason}")]
    Connect {
        /// The backend of the database URL.
        backend: Backend,
        /// Why, as the driver says it.
        reason: String,
    },
    /// A migration, or the bookkeeping around it, failed.
    #[error("{operation} failed on the {backend} database")]
    Migration {
        /// The backend of the database URL.
        backend: Backend,
        /// What was being done: applying, reverting or listing migrations.
        operation: &'static str,
        /// The error diesel reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The blocking task running the migrations panicked or was cancelled.
    #[error("the migration task did not complete")]
    Task(#[source] tokio::task::JoinError),
}

type BoxError = Box<dyn StdError + Send + Sync>;

const APPLY: &str = "applying migrations";
const REVERT: &str = "reverting migrations";
const LIST: &str = "listing migrations";

/// Applies the pending bookkeeping migrations ([`BOOKKEEPING`]) alone: what an application
/// runs beside its own migrations.
pub async fn run_bookkeeping_migrations(
    database_url: &str,
) -> Result<Vec<MigrationInfo>, MigrationError> {
    run_pending_migrations_of(database_url, &[BOOKKEEPING]).await
}

/// Applies every pending migration of `sets`, oldest first (by version, across the sets).
pub async fn run_pending_migrations_of(
    database_url: &str,
    sets: &[MigrationSet],
) -> Result<Vec<MigrationInfo>, MigrationError> {
    let url = database_url.to_owned();
    let sets = sets.to_vec();
    in_blocking_task(move || run_pending_migrations_of_blocking(&url, &sets)).await
}

/// Reverts every applied migration of `sets`, newest first, and returns the migrations
/// reverted. This drops their tables and every row in them.
pub async fn revert_all_migrations_of(
    database_url: &str,
    sets: &[MigrationSet],
) -> Result<Vec<MigrationInfo>, MigrationError> {
    let url = database_url.to_owned();
    let sets = sets.to_vec();
    in_blocking_task(move || revert_all_migrations_of_blocking(&url, &sets)).await
}

/// Lists the applied and pending migrations of `sets`; versions the database has applied
/// that are in none of them are `unknown` (an application's own, or a newer build's).
pub async fn migration_status_of(
    database_url: &str,
    sets: &[MigrationSet],
) -> Result<MigrationStatus, MigrationError> {
    let url = database_url.to_owned();
    let sets = sets.to_vec();
    in_blocking_task(move || migration_status_of_blocking(&url, &sets)).await
}

/// [`run_pending_migrations_of`] on the calling thread. Do not call it from an async task.
pub fn run_pending_migrations_of_blocking(
    database_url: &str,
    sets: &[MigrationSet],
) -> Result<Vec<MigrationInfo>, MigrationError> {
    apply_or_revert(database_url, sets, Direction::Up)
}

/// Reverts every applied migration of `sets` on the calling thread, newest first.
pub fn revert_all_migrations_of_blocking(
    database_url: &str,
    sets: &[MigrationSet],
) -> Result<Vec<MigrationInfo>, MigrationError> {
    apply_or_revert(database_url, sets, Direction::Down)
}

/// Applying (every pending migration, oldest first) or reverting (every applied one, newest
/// first).
#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

fn apply_or_revert(
    database_url: &str,
    sets: &[MigrationSet],
    direction: Direction,
) -> Result<Vec<MigrationInfo>, MigrationError> {
    fn run<DB: DieselBackend>(
        conn: &mut impl MigrationHarness<DB>,
        source: &Combined,
        direction: Direction,
    ) -> Result<Vec<MigrationInfo>, BoxError> {
        let versions = match direction {
            Direction::Up => conn.run_pending_migrations(source.clone())?,
            Direction::Down => conn.revert_all_migrations(source.clone())?,
        };
        describe::<DB>(source, versions)
    }
    let backend = Backend::from_url(database_url);
    let source = Combined::of(sets, backend);
    let operation = match direction {
        Direction::Up => APPLY,
        Direction::Down => REVERT,
    };
    match backend {
        Backend::Postgres => with_postgres(database_url, operation, true, |conn| {
            run::<Pg>(conn, &source, direction)
        }),
        Backend::Sqlite => with_sqlite(database_url, operation, true, |conn| {
            run::<Sqlite>(conn, &source, direction)
        }),
    }
}

/// [`migration_status_of`] on the calling thread. Do not call it from an async task.
pub fn migration_status_of_blocking(
    database_url: &str,
    sets: &[MigrationSet],
) -> Result<MigrationStatus, MigrationError> {
    let backend = Backend::from_url(database_url);
    let source = Combined::of(sets, backend);
    match backend {
        Backend::Postgres => with_postgres(database_url, LIST, false, |conn| {
            status::<Pg, _>(conn, &source)
        }),
        Backend::Sqlite => with_sqlite(database_url, LIST, false, |conn| {
            status::<Sqlite, _>(conn, &source)
        }),
    }
}

/// Runs `work` on tokio's blocking pool.
async fn in_blocking_task<T, F>(work: F) -> Result<T, MigrationError>
where
    F: FnOnce() -> Result<T, MigrationError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(MigrationError::Task)?
}

type PgSyncConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Opens a PostgreSQL connection and runs `work` on it, under the migration advisory lock
/// when `exclusive`.
fn with_postgres<T>(
    database_url: &str,
    operation: &'static str,
    exclusive: bool,
    work: impl FnOnce(&mut PgSyncConnection) -> Result<T, BoxError>,
) -> Result<T, MigrationError> {
    let backend = Backend::Postgres;
    let mut conn =
        PgSyncConnection::establish(database_url).map_err(|error| MigrationError::Connect {
            backend,
            reason: redact(&error.to_string(), database_url),
        })?;
    let failed = |source: BoxError| MigrationError::Migration {
        backend,
        operation,
        source,
    };
    if !exclusive {
        return work(&mut conn).map_err(failed);
    }
    conn.batch_execute(&format!(
        "SELECT pg_advisory_lock({POSTGRES_MIGRATION_LOCK})"
    ))
    .map_err(|error| failed(error.into()))?;
    let result = work(&mut conn);
    // Closing the connection releases the lock anyway; unlocking is for tidiness.
    let unlocked = conn.batch_execute(&format!(
        "SELECT pg_advisory_unlock({POSTGRES_MIGRATION_LOCK})"
    ));
    let value = result.map_err(failed)?;
    unlocked.map_err(|error| failed(error.into()))?;
    Ok(value)
}

/// Opens a SQLite connection and runs `work` on it, inside one `BEGIN IMMEDIATE`
/// transaction when `exclusive`.
fn with_sqlite<T>(
    database_url: &str,
    operation: &'static str,
    exclusive: bool,
    work: impl FnOnce(&mut SqliteConnection) -> Result<T, BoxError>,
) -> Result<T, MigrationError> {
    let backend = Backend::Sqlite;
    let mut conn =
        SqliteConnection::establish(database_url).map_err(|error| MigrationError::Connect {
            backend,
            reason: redact(&error.to_string(), database_url),
        })?;
    let failed = |source: BoxError| MigrationError::Migration {
        backend,
        operation,
        source,
    };
    conn.batch_execute(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
        .map_err(|error| failed(error.into()))?;
    if !exclusive {
        return work(&mut conn).map_err(failed);
    }
    conn.immediate_transaction(|conn| work(conn).map_err(TransactionError::Work))
        .map_err(|error| match error {
            TransactionError::Work(source) => failed(source),
            TransactionError::Diesel(error) => failed(error.into()),
        })
}

/// The error of the closure run in a SQLite transaction: the work's own, or diesel's from
/// beginning or ending the transaction.
#[derive(Debug)]
enum TransactionError {
    Work(BoxError),
    Diesel(diesel::result::Error),
}

impl From<diesel::result::Error> for TransactionError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Diesel(error)
    }
}

/// The embedded migrations of `source`, oldest first.
fn embedded<DB: DieselBackend, S: MigrationSource<DB>>(
    source: &S,
) -> Result<Vec<MigrationInfo>, BoxError> {
    let mut infos: Vec<MigrationInfo> = MigrationSource::<DB>::migrations(source)?
        .iter()
        .map(|migration| MigrationInfo {
            version: migration.name().version().to_string(),
            name: migration.name().to_string(),
        })
        .collect();
    infos.sort();
    Ok(infos)
}

/// Names the migrations `versions` of `source`, in the given order.
fn describe<DB: DieselBackend>(
    source: &Combined,
    versions: Vec<MigrationVersion<'_>>,
) -> Result<Vec<MigrationInfo>, BoxError> {
    let known = embedded::<DB, _>(source)?;
    Ok(versions
        .into_iter()
        .map(|version| {
            let version = version.to_string();
            known
                .iter()
                .find(|info| info.version == version)
                .cloned()
                .unwrap_or_else(|| MigrationInfo {
                    name: version.clone(),
                    version,
                })
        })
        .collect())
}

/// The applied, pending and unknown migrations of the database behind `conn`.
fn status<DB, C>(conn: &mut C, source: &Combined) -> Result<MigrationStatus, BoxError>
where
    DB: DieselBackend,
    C: MigrationHarness<DB>,
{
    let mut applied_versions: Vec<String> = conn
        .applied_migrations()?
        .into_iter()
        .map(|version| version.to_string())
        .collect();
    applied_versions.sort();
    let mut status = MigrationStatus::default();
    for info in embedded::<DB, _>(source)? {
        if applied_versions.contains(&info.version) {
            status.applied.push(info);
        } else {
            status.pending.push(info);
        }
    }
    status.unknown = applied_versions
        .into_iter()
        .filter(|version| !status.applied.iter().any(|info| &info.version == version))
        .collect();
    Ok(status)
}

/// `message` with the database URL, and the password in it, replaced by `***`.
fn redact(message: &str, database_url: &str) -> String {
    let mut redacted = message.to_owned();
    if !database_url.is_empty() {
        redacted = redacted.replace(database_url, "***");
    }
    if let Some(password) = url_password(database_url) {
        redacted = redacted.replace(password, "***");
    }
    redacted
}

/// The password of a `scheme://user:password@host/...` URL, if it has a non-empty one.
fn url_password(database_url: &str) -> Option<&str> {
    let (_, rest) = database_url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::from_url("postgres://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("postgresql://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("PostgreSQL://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::from_url("sqlite://jarvis.db"), Backend::Sqlite);
        assert_eq!(Backend::from_url("jarvis.db"), Backend::Sqlite);
        assert_eq!(Backend::from_url(":memory:"), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("file:jarvis.db?mode=rwc"),
            Backend::Sqlite
        );
        assert_eq!(Backend::from_url("postgres"), Backend::Sqlite);
    }

    #[test]
    fn embedded_migrations_match_between_backends() {
        let postgres = Backend::Postgres.embedded_migrations_of(&[BOOKKEEPING]);
        let sqlite = Backend::Sqlite.embedded_migrations_of(&[BOOKKEEPING]);
        assert!(!postgres.is_empty());
        assert_eq!(postgres, sqlite, "both backends have the same migrations");
        assert_eq!(
            postgres[0].name,
            "2026-11-28-000004_create_encrypted_backups"
        );
        assert_eq!(postgres[0].version, "20261128000004");
    }

    #[test]
    fn redaction_removes_url_and_password() {
        let url = "postgres://jarvis:s3cr%21t@db.example:5432/jarvis";
        assert_eq!(url_password(url), Some("s3cr%21t"));
        let message = format!("could not open {url}; password s3cr%21t rejected");
        let redacted = redact(&message, url);
        assert!(!redacted.contains("s3cr"), "{redacted}");
        assert_eq!(url_password("postgres://jarvis@db/jarvis"), None);
        assert_eq!(url_password("jarvis.db"), None);
        assert_eq!(url_password("postgres://:@db/x"), None);
    }

    #[test]
    fn errors_do_not_show_the_url() {
        let url = "postgres://jarvis:hunter2hunter2@127.0.0.1:1/jarvis";
        let error = run_pending_migrations_of_blocking(url, &[BOOKKEEPING])
            .expect_err("nothing listens on port 1");
        let shown = format!("{error} / {error:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(matches!(
            error,
            MigrationError::Connect {
                backend: Backend::Postgres,
                ..
            }
        ));
    }
}
