//! Pooled connections to PostgreSQL or SQLite, chosen by the database URL.
//!
//! PostgreSQL goes through diesel-async's `AsyncPgConnection` (tokio-postgres); SQLite
//! through `SyncConnectionWrapper<SqliteConnection>`, which runs each query on a blocking
//! thread. Both are pooled with deadpool. The same repository code runs on both: each query
//! is written once inside [`with_conn!`](crate::with_conn), which builds it for the backend
//! of the connection at hand.
//!
//! SQLite connections are set up with `busy_timeout` (writers wait for each other instead of
//! failing), `foreign_keys = ON` and WAL journaling (readers do not block the writer).

use std::fmt;

use diesel::sqlite::SqliteConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use futures::FutureExt;

use crate::error::ModelError;
use crate::migrations::{self, Backend, MigrationStatus};

/// An async SQLite connection.
pub type AsyncSqliteConnection = SyncConnectionWrapper<SqliteConnection>;

/// A pool of connections to one database.
#[derive(Clone)]
pub enum Database {
    /// PostgreSQL.
    Postgres(Pool<AsyncPgConnection>),
    /// SQLite.
    Sqlite(Pool<AsyncSqliteConnection>),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("Database")
            .field("backend", &self.backend().name())
            .finish_non_exhaustive()
    }
}

/// A pooled connection.
// A connection lives for one repository call; boxing the larger one would only add a
// pointer chase to every query.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    /// PostgreSQL.
    Postgres(Object<AsyncPgConnection>),
    /// SQLite.
    Sqlite(Object<AsyncSqliteConnection>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Postgres(_) => "Conn::Postgres",
            Conn::Sqlite(_) => "Conn::Sqlite",
        })
    }
}

/// The SQLite file of a `sqlite://` URL or a bare path.
fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
}

impl Database {
    /// A pool of at most `max_connections` connections to the database of `url`
    /// (`postgres://...`, or a SQLite path or `sqlite://path`). Connects once to check.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, ModelError> {
        let db = match Backend::from_url(url) {
            Backend::Postgres => {
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
                let pool = Pool::builder(manager)
                    .max_size(max_connections.max(1))
                    .build();
                Database::Postgres(pool.map_err(pool_error)?)
            }
            Backend::Sqlite => {
                let mut config = ManagerConfig::<AsyncSqliteConnection>::default();
                config.custom_setup = Box::new(|url| setup_sqlite(url.to_owned()).boxed());
                let manager =
                    AsyncDieselConnectionManager::<AsyncSqliteConnection>::new_with_config(
                        sqlite_path(url),
                        config,
                    );
                let pool = Pool::builder(manager)
                    .max_size(max_connections.max(1))
                    .build();
                Database::Sqlite(pool.map_err(pool_error)?)
            }
        };
        drop(db.get().await?);
        Ok(db)
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Database::Postgres(_) => Backend::Postgres,
            Database::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// A connection from the pool.
    pub async fn get(&self) -> Result<Conn, ModelError> {
        Ok(match self {
            Database::Postgres(pool) => Conn::Postgres(pool.get().await.map_err(pool_error)?),
            Database::Sqlite(pool) => Conn::Sqlite(pool.get().await.map_err(pool_error)?),
        })
    }
}

/// A transaction on a pooled connection. Committed or rolled back, the connection returns to
/// the pool; dropped while open (the future cancelled) or after a failed `COMMIT`/`ROLLBACK`,
/// it is taken out of the pool and closed, so the database rolls back and releases its locks
/// instead of a later user inheriting an open transaction.
pub(crate) struct Transaction {
    conn: Option<Conn>,
}

impl Transaction {
    pub(crate) async fn begin(db: &Database) -> Result<Self, ModelError> {
        let conn = db.get().await?;
        let begin = match &conn {
            Conn::Postgres(_) => "BEGIN",
            Conn::Sqlite(_) => "BEGIN IMMEDIATE",
        };
        let mut tx = Transaction { conn: Some(conn) };
        tx.run_sql(begin).await?;
        Ok(tx)
    }

    pub(crate) fn conn(&mut self) -> Result<&mut Conn, ModelError> {
        self.conn
            .as_mut()
            .ok_or_else(|| ModelError::Pool("the transaction has ended".into()))
    }

    async fn run_sql(&mut self, sql: &'static str) -> Result<(), ModelError> {
        let conn = self.conn()?;
        crate::with_conn!(conn, |c| diesel::sql_query(sql).execute(c).await?);
        Ok(())
    }

    pub(crate) async fn commit(mut self) -> Result<(), ModelError> {
        self.run_sql("COMMIT").await?;
        drop(self.conn.take());
        Ok(())
    }

    pub(crate) async fn rollback(mut self) {
        match self.run_sql("ROLLBACK").await {
            Ok(()) => drop(self.conn.take()),
            Err(error) => tracing::warn!(
                error = %error,
                "ROLLBACK failed; closing the connection"
            ),
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        match self.conn.take() {
            Some(Conn::Postgres(pooled)) => drop(Object::take(pooled)),
            Some(Conn::Sqlite(pooled)) => drop(Object::take(pooled)),
            None => {}
        }
    }
}

/// Applies the pending migrations of `sets` to the database of `url` and returns its status
/// over them.
pub async fn migrate_sets(
    url: &str,
    sets: &[migrations::MigrationSet],
) -> Result<MigrationStatus, ModelError> {
    migrations::run_pending_migrations_of(url, sets).await?;
    Ok(migrations::migration_status_of(url, sets).await?)
}

fn pool_error(e: impl std::error::Error) -> ModelError {
    // deadpool's message carries the backend's error, never the URL.
    ModelError::Pool(e.to_string())
}

async fn setup_sqlite(path: String) -> diesel::ConnectionResult<AsyncSqliteConnection> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    tokio::task::spawn_blocking(move || {
        let mut conn = SqliteConnection::establish(&path)?;
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;",
        )
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(SyncConnectionWrapper::new(conn))
    })
    .await
    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?
}

/// Runs `$body` with `$conn` bound to the connection of either backend, so one query text
/// serves both. `$conn` is a `&mut` to the backend's connection type.
#[macro_export]
macro_rules! with_conn {
    ($conn_expr:expr, |$conn:ident| $body:expr) => {
        match $conn_expr {
            $crate::db::Conn::Postgres(pooled) => {
                let $conn: &mut ::diesel_async::AsyncPgConnection = &mut *pooled;
                $body
            }
            $crate::db::Conn::Sqlite(pooled) => {
                let $conn: &mut $crate::db::AsyncSqliteConnection = &mut *pooled;
                $body
            }
        }
    };
}

/// Inserts `$rows` (a slice or `Vec` of insertable rows) into `$table` on either backend:
/// one statement per thousand rows on PostgreSQL; one per row on SQLite, where diesel-async
/// has no multi-row insert (inside the caller's transaction, so still all or nothing).
#[macro_export]
macro_rules! insert_all {
    ($conn_expr:expr, $table:path, $rows:expr) => {{
        let rows = &$rows[..];
        match $conn_expr {
            $crate::db::Conn::Postgres(pooled) => {
                let c: &mut ::diesel_async::AsyncPgConnection = &mut *pooled;
                for chunk in rows.chunks(1000) {
                    ::diesel_async::RunQueryDsl::execute(
                        ::diesel::insert_into($table).values(chunk),
                        c,
                    )
                    .await?;
                }
            }
            $crate::db::Conn::Sqlite(pooled) => {
                let c: &mut $crate::db::AsyncSqliteConnection = &mut *pooled;
                for row in rows {
                    ::diesel_async::RunQueryDsl::execute(
                        ::diesel::insert_into($table).values(row),
                        &mut *c,
                    )
                    .await?;
                }
            }
        }
    }};
}
