//! The embedded migrations and `schema.rs` on PostgreSQL and SQLite: up, down and up again;
//! the views' aggregates; constraints, row ids and timestamps; and a comparison of each
//! migrated database's catalogue with `schema.rs`, which fails when the two drift apart.
//!
//! PostgreSQL tests each use a fresh database from `jarvis_tests::fresh_postgres_database`
//! (run them after `eval "$(scripts/services env)"`); SQLite tests use a file in a temporary
//! directory.

use std::any::type_name;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDateTime, SubsecRound, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use jarvis_models::migrations::{
    self, Backend, MigrationStatus, migration_status_blocking, revert_all_migrations_blocking,
    run_pending_migrations_blocking,
};
use jarvis_models::schema::{
    active_api_keys_summary, api_keys, encrypted_backups, encryption_audit_log,
    encryption_audit_summary, jarvis_data_keys, jarvis_job_progress, jarvis_jobs, jarvis_keys,
    jarvis_settings, oauth_tokens, oauth_tokens_summary, users,
};
use serde_json::json;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Test databases and connections
// ---------------------------------------------------------------------------------------------

type PgConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// A database of one backend for one test; the SQLite file lives as long as this value.
struct TestDatabase {
    backend: Backend,
    url: String,
    _dir: Option<TempDir>,
}

fn postgres(prefix: &str) -> TestDatabase {
    TestDatabase {
        backend: Backend::Postgres,
        url: jarvis_tests::fresh_postgres_database(prefix),
        _dir: None,
    }
}

fn sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("jarvis.db");
    TestDatabase {
        backend: Backend::Sqlite,
        url: path.to_str().expect("UTF-8 temp path").to_owned(),
        _dir: Some(dir),
    }
}

fn database(backend: Backend, prefix: &str) -> TestDatabase {
    match backend {
        Backend::Postgres => postgres(prefix),
        Backend::Sqlite => sqlite(),
    }
}

/// A synchronous diesel connection of either backend.
#[allow(
    clippy::large_enum_variant,
    reason = "one or two per test; boxing would defeat `on!`"
)]
enum Db {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

impl TestDatabase {
    fn connect(&self) -> Db {
        assert_eq!(Backend::from_url(&self.url), self.backend);
        match self.backend {
            Backend::Postgres => Db::Pg(PgConnection::establish(&self.url).expect("connect")),
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.url).expect("connect");
                conn.batch_execute("PRAGMA foreign_keys = ON")
                    .expect("enable foreign keys");
                Db::Sqlite(conn)
            }
        }
    }

    fn migrate(&self) -> Db {
        let applied = run_pending_migrations_blocking(&self.url).expect("migrations up");
        assert_eq!(applied, self.backend.embedded_migrations());
        self.connect()
    }
}

/// Runs `$body` with `$conn` bound to the connection, compiled once per backend.
macro_rules! on {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            Db::Pg($conn) => $body,
            Db::Sqlite($conn) => $body,
        }
    };
}

/// Runs a test function on PostgreSQL and on SQLite, as two tests.
macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn postgres() {
                    super::$test(jarvis_models::migrations::Backend::Postgres);
                }

                #[test]
                fn sqlite() {
                    super::$test(jarvis_models::migrations::Backend::Sqlite);
                }
            }
        )*
    };
}

both_backends!(
    up_down_up,
    schema_matches_catalogue,
    schema_check_detects_drift,
    schema_round_trips_every_table,
    audit_summary_aggregates_last_24_hours,
    api_key_and_oauth_token_summaries,
    constraints_reject_malformed_rows,
    ids_can_be_reserved_before_the_first_write,
    concurrent_migration_runs_apply_each_migration_once,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The embedded migrations of each backend.
const MIGRATION_COUNT: usize = 12;

const TABLES: [&str; 10] = [
    "users",
    "api_keys",
    "oauth_tokens",
    "encrypted_backups",
    "encryption_audit_log",
    "jarvis_keys",
    "jarvis_jobs",
    "jarvis_job_progress",
    "jarvis_settings",
    "jarvis_data_keys",
];
const VIEWS: [&str; 3] = [
    "active_api_keys_summary",
    "oauth_tokens_summary",
    "encryption_audit_summary",
];
const MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";

#[derive(QueryableByName, Debug)]
struct Relation {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    kind: String,
}

#[derive(QueryableByName, Debug)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The tables and views of the database, as name → `table` or `view`.
fn relations(db: &mut Db) -> BTreeMap<String, String> {
    let rows: Vec<Relation> = match db {
        Db::Pg(conn) => diesel::sql_query(
            "SELECT table_name::text AS name, \
                    CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END AS kind \
             FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .load(conn),
        Db::Sqlite(conn) => diesel::sql_query(
            "SELECT name, type AS kind FROM sqlite_master \
             WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )
        .load(conn),
    }
    .expect("list relations");
    rows.into_iter().map(|row| (row.name, row.kind)).collect()
}

fn expected_relations() -> BTreeMap<String, String> {
    TABLES
        .iter()
        .chain([MIGRATIONS_TABLE].iter())
        .map(|name| (name.to_string(), "table".to_owned()))
        .chain(
            VIEWS
                .iter()
                .map(|name| (name.to_string(), "view".to_owned())),
        )
        .collect()
}

/// Now, in UTC, with microsecond precision (what PostgreSQL keeps), so values round-trip.
fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

fn bytes(tag: u8, len: usize) -> Vec<u8> {
    vec![tag; len]
}

/// Inserts an API key with the given plaintext columns and dummy stored-form bytes.
fn insert_api_key(
    db: &mut Db,
    service: &str,
    active: bool,
    rotations: i32,
    last_rotated_at: Option<NaiveDateTime>,
    expires_at: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
) -> i64 {
    let values = (
        api_keys::service_name.eq(service),
        api_keys::encrypted_key.eq(bytes(1, 24)),
        api_keys::key_iv.eq(bytes(2, 12)),
        api_keys::key_auth_tag.eq(bytes(3, 16)),
        api_keys::key_data_key.eq(bytes(4, 40)),
        api_keys::key_hash.eq(Some(bytes(5, 32))),
        api_keys::metadata.eq(Some(json!({"environment": "test"}))),
        api_keys::is_active.eq(active),
        api_keys::rotation_count.eq(rotations),
        api_keys::last_rotated_at.eq(last_rotated_at),
        api_keys::expires_at.eq(expires_at),
        api_keys::created_at.eq(created_at),
        api_keys::updated_at.eq(created_at),
    );
    on!(db, c => diesel::insert_into(api_keys::table)
        .values(values)
        .returning(api_keys::id)
        .get_result(c))
    .expect("insert API key")
}

/// Inserts an OAuth token; `refresh` says whether it has a refresh token.
#[allow(clippy::too_many_arguments)]
fn insert_token(
    db: &mut Db,
    user: Option<i64>,
    provider: &str,
    active: bool,
    refresh: bool,
    rotations: i32,
    last_rotated_at: Option<NaiveDateTime>,
    expires_at: Option<NaiveDateTime>,
) -> i64 {
    let refresh_bytes = |tag| refresh.then(|| bytes(tag, 16));
    let values = (
        oauth_tokens::user_id.eq(user),
        oauth_tokens::provider.eq(provider),
        oauth_tokens::encrypted_access_token.eq(bytes(1, 30)),
        oauth_tokens::access_token_iv.eq(bytes(2, 12)),
        oauth_tokens::access_token_auth_tag.eq(bytes(3, 16)),
        oauth_tokens::access_token_data_key.eq(bytes(4, 40)),
        oauth_tokens::encrypted_refresh_token.eq(refresh_bytes(5)),
        oauth_tokens::refresh_token_iv.eq(refresh_bytes(6)),
        oauth_tokens::refresh_token_auth_tag.eq(refresh_bytes(7)),
        oauth_tokens::refresh_token_data_key.eq(refresh_bytes(8)),
        oauth_tokens::scope.eq(Some("read")),
        oauth_tokens::expires_at.eq(expires_at),
        oauth_tokens::is_active.eq(active),
        oauth_tokens::rotation_count.eq(rotations),
        oauth_tokens::last_rotated_at.eq(last_rotated_at),
    );
    on!(db, c => diesel::insert_into(oauth_tokens::table)
        .values(values)
        .returning(oauth_tokens::id)
        .get_result(c))
    .expect("insert OAuth token")
}

fn insert_user(db: &mut Db, email: &str) -> i64 {
    on!(db, c => diesel::insert_into(users::table)
        .values(users::email.eq(email))
        .returning(users::id)
        .get_result(c))
    .expect("insert user")
}

#[allow(clippy::too_many_arguments)]
fn insert_audit(
    db: &mut Db,
    table: &str,
    operation: &str,
    status: &str,
    error_kind: Option<&str>,
    duration_ms: Option<f64>,
    created_at: NaiveDateTime,
) {
    let values = (
        encryption_audit_log::operation_type.eq(operation),
        encryption_audit_log::table_name.eq(table),
        encryption_audit_log::record_id.eq(Some("1")),
        encryption_audit_log::column_name.eq(Some("encrypted_email")),
        encryption_audit_log::key_id.eq(Some("local:1")),
        encryption_audit_log::status.eq(status),
        encryption_audit_log::error_kind.eq(error_kind),
        encryption_audit_log::duration_ms.eq(duration_ms),
        encryption_audit_log::context.eq(Some(json!({"count": 1}))),
        encryption_audit_log::created_at.eq(created_at),
    );
    let inserted = on!(db, c => diesel::insert_into(encryption_audit_log::table)
        .values(values)
        .execute(c))
    .expect("insert audit row");
    assert_eq!(inserted, 1);
}

type AuditSummaryRow = (String, String, i64, i64, Option<f64>, NaiveDateTime);

fn audit_summary(db: &mut Db) -> Vec<AuditSummaryRow> {
    on!(db, c => encryption_audit_summary::table
        .order((
            encryption_audit_summary::table_name,
            encryption_audit_summary::operation_type,
        ))
        .load::<AuditSummaryRow>(c))
    .expect("load encryption_audit_summary")
}

fn assert_close(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (Some(a), Some(e)) => assert!((a - e).abs() < 1e-9, "{what}: {a} != {e}"),
        (a, e) => assert_eq!(a, e, "{what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Up, down, up
// ---------------------------------------------------------------------------------------------

fn up_down_up(backend: Backend) {
    let db = database(backend, "models_up_down_up");
    let embedded = backend.embedded_migrations();
    assert_eq!(embedded.len(), MIGRATION_COUNT);

    let status = migration_status_blocking(&db.url).expect("status of an empty database");
    assert_eq!(
        status,
        MigrationStatus {
            applied: vec![],
            pending: embedded.clone(),
            unknown: vec![],
        }
    );

    let mut conn = db.migrate();
    assert_eq!(relations(&mut conn), expected_relations());
    let status = migration_status_blocking(&db.url).expect("status");
    assert!(status.is_up_to_date(), "{status:?}");
    assert_eq!(status.applied, embedded);
    assert_eq!(
        run_pending_migrations_blocking(&db.url).expect("up again"),
        vec![],
        "nothing left to apply"
    );

    // Existing applications insert users with a plaintext email only.
    let id = plain_sql_user_insert(&mut conn);
    let (email, encrypted, created_at) = on!(&mut conn, c => users::table
        .find(id)
        .select((users::email, users::encrypted_email, users::created_at))
        .first::<(Option<String>, Option<Vec<u8>>, NaiveDateTime)>(c))
    .expect("read the user back through schema.rs");
    assert_eq!(email.as_deref(), Some("a@b.com"));
    assert_eq!(encrypted, None);
    let age = now() - created_at;
    assert!(
        age > Duration::seconds(-5) && age < Duration::minutes(5),
        "created_at defaults to now in UTC, got {created_at} (age {age})"
    );
    drop(conn);

    let reverted = revert_all_migrations_blocking(&db.url).expect("migrations down");
    let mut newest_first = embedded.clone();
    newest_first.reverse();
    assert_eq!(reverted, newest_first);
    let mut conn = db.connect();
    assert_eq!(
        relations(&mut conn),
        BTreeMap::from([(MIGRATIONS_TABLE.to_owned(), "table".to_owned())]),
        "only diesel's bookkeeping table is left"
    );
    let status = migration_status_blocking(&db.url).expect("status after down");
    assert_eq!(status.pending, embedded);
    assert!(status.applied.is_empty());
    drop(conn);

    let mut conn = db.migrate();
    assert_eq!(relations(&mut conn), expected_relations());
    let id = plain_sql_user_insert(&mut conn);
    assert_eq!(id, 1, "the tables were recreated empty");
}

fn plain_sql_user_insert(conn: &mut Db) -> i64 {
    let rows: Vec<Id> = on!(conn, c => diesel::sql_query(
        "INSERT INTO users (email) VALUES ('a@b.com') RETURNING id"
    )
    .load(c))
    .expect("INSERT INTO users (email) VALUES (...) works as plain SQL");
    assert_eq!(rows.len(), 1);
    rows[0].id
}

// ---------------------------------------------------------------------------------------------
// schema.rs against the live catalogue
// ---------------------------------------------------------------------------------------------

/// A column as `schema.rs` declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DeclaredColumn {
    name: &'static str,
    /// diesel's SQL type name without its path, e.g. `BigInt`.
    sql_type: String,
    nullable: bool,
}

impl DeclaredColumn {
    fn of<C>() -> Self
    where
        C: diesel::Column + Expression,
        <C as Expression>::SqlType: 'static,
    {
        // e.g. `diesel::sql_types::Nullable<diesel::sql_types::Binary>`
        let full = type_name::<<C as Expression>::SqlType>();
        let (nullable, inner) = match full
            .strip_prefix("diesel::sql_types::Nullable<")
            .and_then(|rest| rest.strip_suffix('>'))
        {
            Some(inner) => (true, inner),
            None => (false, full),
        };
        let sql_type = inner.rsplit("::").next().unwrap_or(inner).to_owned();
        Self {
            name: C::NAME,
            sql_type,
            nullable,
        }
    }
}

/// The columns of a `table!`'s `AllColumns` tuple.
trait DeclaredColumns {
    fn declared() -> Vec<DeclaredColumn>;
}

macro_rules! impl_declared_columns {
    ($($column:ident),+) => {
        impl<$($column),+> DeclaredColumns for ($($column,)+)
        where
            $($column: diesel::Column + Expression, <$column as Expression>::SqlType: 'static,)+
        {
            fn declared() -> Vec<DeclaredColumn> {
                vec![$(DeclaredColumn::of::<$column>()),+]
            }
        }
    };
}

macro_rules! impl_declared_columns_up_to {
    ($first:ident $(, $rest:ident)*) => {
        impl_declared_columns!($first $(, $rest)*);
        impl_declared_columns_up_to!($($rest),*);
    };
    () => {};
}

impl_declared_columns_up_to!(
    C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14, C15, C16, C17, C18, C19, C20, C21,
    C22, C23, C24, C25, C26, C27, C28, C29, C30, C31, C32
);

fn declared<T>() -> Vec<DeclaredColumn>
where
    T: Table,
    T::AllColumns: DeclaredColumns,
{
    <T::AllColumns as DeclaredColumns>::declared()
}

/// Every relation of `schema.rs`: name → (is a view, columns).
fn declared_schema() -> BTreeMap<&'static str, (bool, Vec<DeclaredColumn>)> {
    macro_rules! relations {
        ($($table:ident),* ; $($view:ident),*) => {
            BTreeMap::from([
                $((stringify!($table), (false, declared::<$table::table>())),)*
                $((stringify!($view), (true, declared::<$view::table>())),)*
            ])
        };
    }
    relations!(
        users, api_keys, oauth_tokens, encrypted_backups, encryption_audit_log, jarvis_keys,
        jarvis_jobs, jarvis_job_progress, jarvis_settings, jarvis_data_keys;
        active_api_keys_summary, oauth_tokens_summary, encryption_audit_summary
    )
}

#[derive(QueryableByName, Debug)]
struct PgCatalogueColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    table_type: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Text)]
    is_nullable: String,
}

#[derive(QueryableByName, Debug)]
struct SqliteCatalogueColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    table_type: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    declared_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

/// A column as the live catalogue has it: the diesel types its SQL type may be declared as
/// (empty: not checked) and its nullability (`None`: not checked).
#[derive(Debug)]
struct LiveColumn {
    is_view: bool,
    types: BTreeSet<&'static str>,
    nullable: Option<bool>,
}

/// The diesel types a PostgreSQL `information_schema.columns.data_type` maps to.
fn postgres_type(data_type: &str) -> &'static str {
    match data_type {
        "bigint" => "BigInt",
        "integer" => "Integer",
        "text" => "Text",
        "bytea" => "Binary",
        "boolean" => "Bool",
        "timestamp without time zone" => "Timestamp",
        "double precision" => "Double",
        "json" => "Json",
        other => panic!(
            "PostgreSQL type `{other}` has no mapping to a diesel type in this test: add one \
             (and check that SQLite maps the column to the same diesel type)"
        ),
    }
}

/// The diesel types a SQLite declared column type maps to (empty: untyped view expression).
fn sqlite_types(declared_type: &str, primary_key: bool) -> BTreeSet<&'static str> {
    let types: &[&'static str] = match declared_type.to_ascii_uppercase().as_str() {
        // the rowid alias holds 64-bit integers
        "INTEGER" if primary_key => &["BigInt"],
        "INTEGER" => &["Integer"],
        "BIGINT" => &["BigInt"],
        // what SQLite reports for a view column computed by `CAST(.. AS INTEGER)`
        "INT" => &["Integer", "BigInt"],
        // diesel stores `Json` as text on SQLite
        "TEXT" => &["Text", "Json"],
        "BLOB" => &["Binary"],
        "BOOLEAN" => &["Bool"],
        "TIMESTAMP" => &["Timestamp"],
        "REAL" => &["Double"],
        "" => &[],
        other => panic!("SQLite declared type `{other}` has no mapping in this test: add one"),
    };
    types.iter().copied().collect()
}

fn live_schema(db: &mut Db) -> BTreeMap<String, BTreeMap<String, LiveColumn>> {
    let mut live: BTreeMap<String, BTreeMap<String, LiveColumn>> = BTreeMap::new();
    match db {
        Db::Pg(conn) => {
            let rows: Vec<PgCatalogueColumn> = diesel::sql_query(
                "SELECT c.table_name::text AS table_name, t.table_type::text AS table_type, \
                        c.column_name::text AS column_name, c.data_type::text AS data_type, \
                        c.is_nullable::text AS is_nullable \
                 FROM information_schema.columns c \
                 JOIN information_schema.tables t USING (table_schema, table_name) \
                 WHERE c.table_schema = 'public' AND c.table_name <> '__diesel_schema_migrations'",
            )
            .load(conn)
            .expect("read information_schema.columns");
            for row in rows {
                let is_view = row.table_type == "VIEW";
                live.entry(row.table_name).or_default().insert(
                    row.column_name,
                    LiveColumn {
                        is_view,
                        types: BTreeSet::from([postgres_type(&row.data_type)]),
                        // PostgreSQL reports every view column as nullable
                        nullable: (!is_view).then_some(row.is_nullable == "YES"),
                    },
                );
            }
        }
        Db::Sqlite(conn) => {
            let rows: Vec<SqliteCatalogueColumn> = diesel::sql_query(
                "SELECT m.name AS table_name, m.type AS table_type, p.name AS column_name, \
                        p.type AS declared_type, p.\"notnull\" AS not_null, p.pk AS pk \
                 FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                   AND m.name <> '__diesel_schema_migrations'",
            )
            .load(conn)
            .expect("read pragma_table_info");
            for row in rows {
                let is_view = row.table_type == "view";
                let primary_key = row.pk > 0;
                live.entry(row.table_name).or_default().insert(
                    row.column_name,
                    LiveColumn {
                        is_view,
                        types: sqlite_types(&row.declared_type, primary_key),
                        // SQLite reports view columns, and the rowid alias, as nullable
                        nullable: (!is_view).then_some(row.not_null == 0 && !primary_key),
                    },
                );
            }
        }
    }
    live
}

fn schema_matches_catalogue(backend: Backend) {
    let db = database(backend, "models_schema_check");
    let mut conn = db.migrate();
    let problems = schema_problems(&mut conn);
    assert!(
        problems.is_empty(),
        "schema.rs and the {backend} migrations disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The differences between `schema.rs` and the live catalogue of `db`.
fn schema_problems(db: &mut Db) -> Vec<String> {
    let live = live_schema(db);
    let declared = declared_schema();

    let mut problems = Vec::new();
    let live_names: BTreeSet<&str> = live.keys().map(String::as_str).collect();
    let declared_names: BTreeSet<&str> = declared.keys().copied().collect();
    for missing in live_names.difference(&declared_names) {
        problems.push(format!(
            "`{missing}` is in the database but not in schema.rs"
        ));
    }
    for missing in declared_names.difference(&live_names) {
        problems.push(format!(
            "`{missing}` is in schema.rs but not in the database"
        ));
    }
    for (table, (is_view, columns)) in &declared {
        let Some(live_columns) = live.get(*table) else {
            continue;
        };
        for column in columns {
            let Some(live_column) = live_columns.get(column.name) else {
                problems.push(format!(
                    "`{table}.{}` is in schema.rs but not in the database",
                    column.name
                ));
                continue;
            };
            if live_column.is_view != *is_view {
                problems.push(format!(
                    "`{table}` is a {} in the database",
                    if live_column.is_view { "view" } else { "table" }
                ));
            }
            if !live_column.types.is_empty()
                && !live_column.types.contains(column.sql_type.as_str())
            {
                problems.push(format!(
                    "`{table}.{}` is `{}` in schema.rs but {:?} in the database",
                    column.name, column.sql_type, live_column.types
                ));
            }
            if let Some(nullable) = live_column.nullable
                && nullable != column.nullable
            {
                problems.push(format!(
                    "`{table}.{}` is {} in schema.rs but {} in the database",
                    column.name,
                    if column.nullable {
                        "Nullable"
                    } else {
                        "NOT NULL"
                    },
                    if nullable { "nullable" } else { "NOT NULL" },
                ));
            }
        }
        for live_column in live_columns.keys() {
            if !columns.iter().any(|column| column.name == live_column) {
                problems.push(format!(
                    "`{table}.{live_column}` is in the database but not in schema.rs"
                ));
            }
        }
    }
    problems
}

/// The comparison notices drift: columns added, dropped, retyped or made nullable by hand,
/// and a table schema.rs does not know.
fn schema_check_detects_drift(backend: Backend) {
    let db = database(backend, "models_schema_drift");
    let mut conn = db.migrate();
    let alter = match backend {
        Backend::Postgres => {
            "ALTER TABLE jarvis_keys ADD COLUMN rogue TEXT; \
             ALTER TABLE users DROP COLUMN email_hash; \
             ALTER TABLE encrypted_backups ALTER COLUMN size_bytes TYPE INTEGER; \
             ALTER TABLE jarvis_keys ALTER COLUMN master_key_id DROP NOT NULL; \
             CREATE TABLE stray (id BIGINT PRIMARY KEY)"
        }
        Backend::Sqlite => {
            "ALTER TABLE jarvis_keys ADD COLUMN rogue TEXT; \
             DROP INDEX idx_users_email_hash; \
             ALTER TABLE users DROP COLUMN email_hash; \
             ALTER TABLE api_keys ADD COLUMN rotation_total REAL; \
             CREATE TABLE stray (id INTEGER PRIMARY KEY)"
        }
    };
    on!(&mut conn, c => c.batch_execute(alter)).expect("alter the schema by hand");
    let problems = schema_problems(&mut conn).join("\n");
    for expected in [
        "`jarvis_keys.rogue` is in the database but not in schema.rs",
        "`users.email_hash` is in schema.rs but not in the database",
        "`stray` is in the database but not in schema.rs",
    ] {
        assert!(
            problems.contains(expected),
            "missing `{expected}` in:\n{problems}"
        );
    }
    match backend {
        Backend::Postgres => {
            assert!(
                problems.contains("`encrypted_backups.size_bytes` is `BigInt` in schema.rs"),
                "{problems}"
            );
            assert!(
                problems.contains("`jarvis_keys.master_key_id` is NOT NULL in schema.rs"),
                "{problems}"
            );
        }
        Backend::Sqlite => assert!(
            problems.contains("`api_keys.rotation_total` is in the database"),
            "{problems}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips through schema.rs
// ---------------------------------------------------------------------------------------------

fn schema_round_trips_every_table(backend: Backend) {
    let db = database(backend, "models_round_trip");
    let mut conn = db.migrate();
    let t = now();

    // users: a fully encrypted row (no plaintext)
    let user = on!(&mut conn, c => diesel::insert_into(users::table)
        .values((
            users::encrypted_email.eq(Some(bytes(1, 7))),
            users::email_iv.eq(Some(bytes(2, 12))),
            users::email_auth_tag.eq(Some(bytes(3, 16))),
            users::email_data_key.eq(Some(bytes(4, 40))),
            users::email_hash.eq(Some(bytes(5, 32))),
            users::created_at.eq(t),
            users::updated_at.eq(t),
        ))
        .returning(users::id)
        .get_result::<i64>(c))
    .expect("insert user");
    type UserRow = (
        i64,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        NaiveDateTime,
        NaiveDateTime,
        i32,
        Option<NaiveDateTime>,
    );
    let row = on!(&mut conn, c => users::table.find(user).first::<UserRow>(c)).expect("load user");
    assert_eq!(
        row,
        (
            user,
            None,
            Some(bytes(1, 7)),
            Some(bytes(2, 12)),
            Some(bytes(3, 16)),
            Some(bytes(4, 40)),
            Some(bytes(5, 32)),
            t,
            t,
            0,
            None
        )
    );

    // api_keys, with JSON metadata and timestamps
    let key = insert_api_key(
        &mut conn,
        "stripe",
        true,
        2,
        Some(t - Duration::days(1)),
        Some(t + Duration::days(90)),
        t,
    );
    let (metadata, last_rotated, expires, active, rotations) = on!(&mut conn, c => api_keys::table
        .find(key)
        .select((
            api_keys::metadata,
            api_keys::last_rotated_at,
            api_keys::expires_at,
            api_keys::is_active,
            api_keys::rotation_count,
        ))
        .first::<(Option<serde_json::Value>, Option<NaiveDateTime>, Option<NaiveDateTime>, bool, i32)>(c))
    .expect("load API key");
    assert_eq!(metadata, Some(json!({"environment": "test"})));
    assert_eq!(last_rotated, Some(t - Duration::days(1)));
    assert_eq!(expires, Some(t + Duration::days(90)));
    assert!(active);
    assert_eq!(rotations, 2);
    // defaults of a minimal row
    let minimal = on!(&mut conn, c => diesel::insert_into(api_keys::table)
        .values((
            api_keys::service_name.eq("github"),
            api_keys::encrypted_key.eq(bytes(1, 3)),
            api_keys::key_iv.eq(bytes(2, 12)),
            api_keys::key_auth_tag.eq(bytes(3, 16)),
            api_keys::key_data_key.eq(bytes(4, 40)),
        ))
        .returning((api_keys::is_active, api_keys::rotation_count, api_keys::metadata))
        .get_result::<(bool, i32, Option<serde_json::Value>)>(c))
    .expect("insert minimal API key");
    assert_eq!(minimal, (true, 0, None));

    // oauth_tokens with and without owner and refresh token
    let with_refresh = insert_token(
        &mut conn,
        Some(user),
        "google",
        true,
        true,
        0,
        None,
        Some(t),
    );
    let without = insert_token(&mut conn, None, "github", true, false, 0, None, None);
    let tokens = on!(&mut conn, c => oauth_tokens::table
        .order(oauth_tokens::id)
        .select((
            oauth_tokens::id,
            oauth_tokens::user_id,
            oauth_tokens::encrypted_refresh_token,
            oauth_tokens::expires_at,
        ))
        .load::<(i64, Option<i64>, Option<Vec<u8>>, Option<NaiveDateTime>)>(c))
    .expect("load tokens");
    assert_eq!(
        tokens,
        vec![
            (with_refresh, Some(user), Some(bytes(5, 16)), Some(t)),
            (without, None, None, None),
        ]
    );
    // joinable!: tokens with their owner's row
    let owners = on!(&mut conn, c => oauth_tokens::table
        .inner_join(users::table)
        .select((oauth_tokens::id, users::id))
        .load::<(i64, i64)>(c))
    .expect("join tokens and users");
    assert_eq!(owners, vec![(with_refresh, user)]);

    // encrypted_backups: inline and file-backed
    on!(&mut conn, c => diesel::insert_into(encrypted_backups::table)
        .values(vec![
            (
                encrypted_backups::backup_name.eq("backup-1"),
                encrypted_backups::backup_type.eq("full"),
                encrypted_backups::storage_path.eq(None::<String>),
                encrypted_backups::encrypted_data.eq(Some(bytes(9, 100))),
                encrypted_backups::data_iv.eq(Some(bytes(2, 12))),
                encrypted_backups::data_auth_tag.eq(Some(bytes(3, 16))),
                encrypted_backups::data_data_key.eq(Some(bytes(4, 40))),
                encrypted_backups::size_bytes.eq(Some(100_i64)),
                encrypted_backups::checksum.eq(Some("sha256:00")),
                encrypted_backups::master_key_id.eq(Some("local:1")),
            ),
            (
                encrypted_backups::backup_name.eq("backup-2"),
                encrypted_backups::backup_type.eq("full"),
                encrypted_backups::storage_path.eq(Some("/backups/backup-2.jcb".to_owned())),
                encrypted_backups::encrypted_data.eq(None),
                encrypted_backups::data_iv.eq(None),
                encrypted_backups::data_auth_tag.eq(None),
                encrypted_backups::data_data_key.eq(Some(bytes(4, 40))),
                encrypted_backups::size_bytes.eq(Some(5_000_000_000_i64)),
                encrypted_backups::checksum.eq(Some("sha256:11")),
                encrypted_backups::master_key_id.eq(Some("local:1")),
            ),
        ])
        .execute(c))
    .expect("insert backups");
    let backups = on!(&mut conn, c => encrypted_backups::table
        .order(encrypted_backups::id)
        .select((
            encrypted_backups::backup_name,
            encrypted_backups::storage_path,
            encrypted_backups::encrypted_data.is_not_null(),
            encrypted_backups::size_bytes,
        ))
        .load::<(String, Option<String>, bool, Option<i64>)>(c))
    .expect("load backups");
    assert_eq!(
        backups,
        vec![
            ("backup-1".to_owned(), None, true, Some(100)),
            (
                "backup-2".to_owned(),
                Some("/backups/backup-2.jcb".to_owned()),
                false,
                Some(5_000_000_000)
            ),
        ]
    );

    // encryption_audit_log, with JSON context and a fractional duration
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "success",
        None,
        Some(0.125),
        t,
    );
    let audit = on!(&mut conn, c => encryption_audit_log::table
        .select((
            encryption_audit_log::duration_ms,
            encryption_audit_log::context,
            encryption_audit_log::created_at,
        ))
        .first::<(Option<f64>, Option<serde_json::Value>, NaiveDateTime)>(c))
    .expect("load audit row");
    assert_eq!(audit, (Some(0.125), Some(json!({"count": 1})), t));

    // jarvis_keys: the name is unique
    let insert_key = |conn: &mut Db| {
        on!(conn, c => diesel::insert_into(jarvis_keys::table)
            .values((
                jarvis_keys::name.eq("search-key"),
                jarvis_keys::wrapped_key.eq(bytes(7, 60)),
                jarvis_keys::master_key_id.eq("local:1"),
            ))
            .execute(c))
    };
    insert_key(&mut conn).expect("insert jarvis key");
    assert!(insert_key(&mut conn).is_err(), "jarvis_keys.name is unique");
    let (name, wrapped, created_at) = on!(&mut conn, c => jarvis_keys::table
        .select((jarvis_keys::name, jarvis_keys::wrapped_key, jarvis_keys::created_at))
        .first::<(String, Vec<u8>, NaiveDateTime)>(c))
    .expect("load jarvis key");
    assert_eq!((name.as_str(), wrapped), ("search-key", bytes(7, 60)));
    assert!((now() - created_at).num_minutes().abs() < 5);

    // deleting a user deletes their tokens (SQLite: with foreign keys on)
    on!(&mut conn, c => diesel::delete(users::table.find(user)).execute(c)).expect("delete user");
    let left = on!(&mut conn, c => oauth_tokens::table
        .select(oauth_tokens::id)
        .load::<i64>(c))
    .expect("load tokens");
    assert_eq!(left, vec![without]);
}

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

fn audit_summary_aggregates_last_24_hours(backend: Backend) {
    let db = database(backend, "models_audit_summary");
    let mut conn = db.migrate();
    assert!(audit_summary(&mut conn).is_empty());

    let t = now();
    let h = Duration::hours;
    // users/encrypt: three in the window (one error), two older ones that must not count
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "success",
        None,
        Some(10.0),
        t,
    );
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "success",
        None,
        Some(20.0),
        t - h(1),
    );
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "error",
        Some("provider_unavailable"),
        Some(30.0),
        t - h(23),
    );
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "success",
        None,
        Some(1000.0),
        t - h(25),
    );
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "error",
        Some("access_denied"),
        Some(5.0),
        t - h(48),
    );
    // users/decrypt: an error without a duration does not change the average
    insert_audit(&mut conn, "users", "decrypt", "success", None, Some(1.5), t);
    insert_audit(
        &mut conn,
        "users",
        "decrypt",
        "error",
        Some("authentication_failed"),
        None,
        t - h(2),
    );
    // api_keys/decrypt: no duration at all
    insert_audit(&mut conn, "api_keys", "decrypt", "success", None, None, t);
    // oauth_tokens/rotate: only outside the window
    insert_audit(
        &mut conn,
        "oauth_tokens",
        "rotate",
        "success",
        None,
        Some(3.0),
        t - h(30),
    );
    // api_keys/encrypt: written by plain SQL with the default created_at
    on!(&mut conn, c => c.batch_execute(
        "INSERT INTO encryption_audit_log (operation_type, table_name, status, duration_ms) \
         VALUES ('encrypt', 'api_keys', 'success', 2.5)"
    ))
    .expect("plain SQL audit insert");

    let summary = audit_summary(&mut conn);
    let expected: Vec<(&str, &str, i64, i64, Option<f64>)> = vec![
        ("api_keys", "decrypt", 1, 0, None),
        ("api_keys", "encrypt", 1, 0, Some(2.5)),
        ("users", "decrypt", 2, 1, Some(1.5)),
        ("users", "encrypt", 3, 1, Some(20.0)),
    ];
    assert_eq!(
        summary.len(),
        expected.len(),
        "one row per (table, operation) in the last 24 hours: {summary:?}"
    );
    for (row, (table, operation, count, errors, average)) in summary.iter().zip(&expected) {
        assert_eq!((row.0.as_str(), row.1.as_str()), (*table, *operation));
        assert_eq!(row.2, *count, "count of {table}/{operation}");
        assert_eq!(row.3, *errors, "errors of {table}/{operation}");
        assert_close(row.4, *average, &format!("average of {table}/{operation}"));
    }
    assert_eq!(summary[3].5, t, "latest users/encrypt operation");

    // the pseudo primary key finds one row
    let row = on!(&mut conn, c => encryption_audit_summary::table
        .find(("users", "decrypt"))
        .first::<AuditSummaryRow>(c))
    .expect("find by (table_name, operation_type)");
    assert_eq!((row.2, row.3), (2, 1));
}

fn api_key_and_oauth_token_summaries(backend: Backend) {
    let db = database(backend, "models_summaries");
    let mut conn = db.migrate();
    let t = now();
    let d = Duration::days;

    insert_api_key(
        &mut conn,
        "stripe",
        true,
        2,
        Some(t - d(10)),
        None,
        t - d(100),
    );
    insert_api_key(
        &mut conn,
        "stripe",
        true,
        1,
        None,
        Some(t - d(1)),
        t - d(50),
    );
    insert_api_key(&mut conn, "stripe", false, 5, Some(t), None, t);
    insert_api_key(
        &mut conn,
        "github",
        true,
        0,
        None,
        Some(t + d(30)),
        t - d(1),
    );
    insert_api_key(&mut conn, "retired", false, 0, None, None, t - d(1));

    type KeySummaryRow = (
        String,
        i64,
        i64,
        i64,
        Option<NaiveDateTime>,
        NaiveDateTime,
        NaiveDateTime,
    );
    let keys = on!(&mut conn, c => active_api_keys_summary::table
        .order(active_api_keys_summary::service_name)
        .load::<KeySummaryRow>(c))
    .expect("load active_api_keys_summary");
    assert_eq!(
        keys,
        vec![
            ("github".to_owned(), 1, 0, 0, None, t - d(1), t - d(1)),
            // two active keys, one expired; 2 + 1 rotations; the second key's material is
            // the oldest (never rotated, created 50 days ago)
            (
                "stripe".to_owned(),
                2,
                1,
                3,
                Some(t - d(10)),
                t - d(50),
                t - d(50)
            ),
        ]
    );

    let alice = insert_user(&mut conn, "alice@example.com");
    let bob = insert_user(&mut conn, "bob@example.com");
    let hour = Duration::hours(1);
    insert_token(
        &mut conn,
        Some(alice),
        "google",
        true,
        true,
        1,
        Some(t - hour),
        Some(t + hour),
    );
    insert_token(
        &mut conn,
        Some(alice),
        "google",
        true,
        false,
        0,
        None,
        Some(t - hour),
    );
    insert_token(
        &mut conn,
        Some(bob),
        "google",
        false,
        true,
        3,
        Some(t - d(2)),
        None,
    );
    insert_token(&mut conn, None, "github", true, false, 0, None, None);

    type TokenSummaryRow = (String, i64, i64, i64, i64, i64, Option<NaiveDateTime>);
    let tokens = on!(&mut conn, c => oauth_tokens_summary::table
        .order(oauth_tokens_summary::provider)
        .load::<TokenSummaryRow>(c))
    .expect("load oauth_tokens_summary");
    assert_eq!(
        tokens,
        vec![
            ("github".to_owned(), 1, 1, 0, 0, 0, None),
            // 3 tokens, 2 active, 1 active and expired, 1 active with a refresh token
            ("google".to_owned(), 3, 2, 1, 1, 4, Some(t - hour)),
        ]
    );
}

/// The window is in UTC whatever the PostgreSQL session's time zone, and so is the default
/// `created_at`.
#[test]
fn postgres_views_and_defaults_ignore_the_session_time_zone() {
    let db = postgres("models_time_zone");
    let mut conn = db.migrate();
    let t = now();
    insert_audit(
        &mut conn,
        "users",
        "encrypt",
        "success",
        None,
        Some(1.0),
        t - Duration::hours(23),
    );
    insert_audit(
        &mut conn,
        "users",
        "decrypt",
        "success",
        None,
        Some(1.0),
        t - Duration::hours(25),
    );
    for zone in ["Pacific/Kiritimati", "Pacific/Honolulu", "UTC"] {
        on!(&mut conn, c => c.batch_execute(&format!("SET TIME ZONE '{zone}'"))).expect("set zone");
        let summary = audit_summary(&mut conn);
        let groups: Vec<(&str, &str, i64)> = summary
            .iter()
            .map(|row| (row.0.as_str(), row.1.as_str(), row.2))
            .collect();
        assert_eq!(
            groups,
            vec![("users", "encrypt", 1)],
            "session time zone {zone}"
        );

        let id = plain_sql_user_insert(&mut conn);
        let created_at = on!(&mut conn, c => users::table
            .find(id)
            .select(users::created_at)
            .first::<NaiveDateTime>(c))
        .expect("read created_at");
        assert!(
            (now() - created_at).num_minutes().abs() < 5,
            "default created_at {created_at} is UTC in time zone {zone}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Constraints, ids, concurrency
// ---------------------------------------------------------------------------------------------

fn constraints_reject_malformed_rows(backend: Backend) {
    let db = database(backend, "models_constraints");
    let mut conn = db.migrate();
    let mut rejects = |sql: &str| {
        let result = on!(&mut conn, c => c.batch_execute(sql));
        assert!(result.is_err(), "{backend} accepted: {sql}");
    };
    rejects(
        "INSERT INTO encryption_audit_log (operation_type, table_name, status) \
         VALUES ('encrypt', 'users', 'ok')",
    );
    rejects(
        "INSERT INTO encryption_audit_log (operation_type, table_name, status, error_kind) \
         VALUES ('encrypt', 'users', 'success', 'access_denied')",
    );
    rejects(
        "INSERT INTO encryption_audit_log (operation_type, table_name, status, context) \
         VALUES ('encrypt', 'users', 'success', 'not json')",
    );
    // a partial stored form
    rejects("INSERT INTO users (encrypted_email, email_iv) VALUES (x'01', x'02')");
    rejects(
        "INSERT INTO oauth_tokens (provider, encrypted_access_token, access_token_iv, \
         access_token_auth_tag, access_token_data_key, encrypted_refresh_token) \
         VALUES ('google', x'01', x'02', x'03', x'04', x'05')",
    );
    rejects("INSERT INTO api_keys (service_name) VALUES ('stripe')");
    rejects(
        "INSERT INTO encrypted_backups (backup_name, backup_type, size_bytes) \
         VALUES ('b', 'full', -1)",
    );
    // the master keys of a backup's rows: a JSON array, or NULL
    for keys in ["'not json'", "'{\"k\": 1}'", "'\"k\"'"] {
        rejects(&format!(
            "INSERT INTO encrypted_backups (backup_name, backup_type, rows_master_key_ids) \
             VALUES ('b', 'full', {keys})"
        ));
    }
    if backend == Backend::Sqlite {
        // timestamps in another form than diesel's would compare wrongly in the views
        rejects("INSERT INTO users (email, created_at) VALUES ('a@b.c', '2026-01-01T00:00:00')");
        rejects("INSERT INTO users (email, created_at) VALUES ('a@b.c', '2026-01-01 00:00:00Z')");
        rejects("INSERT INTO users (email, created_at) VALUES ('a@b.c', 1767225600)");
        rejects(
            "INSERT INTO api_keys (service_name, encrypted_key, key_iv, key_auth_tag, \
                 key_data_key, is_active) VALUES ('s', x'01', x'02', x'03', x'04', 2)",
        );
        on!(&mut conn, c => c.batch_execute(
            "INSERT INTO users (email, created_at, updated_at) \
             VALUES ('a@b.c', '2026-01-01 00:00:00.123456', '2026-01-01 00:00:00')"
        ))
        .expect("diesel's form is accepted");
    }
}

#[derive(QueryableByName, Debug)]
struct SequenceName {
    #[diesel(sql_type = Nullable<Text>)]
    sequence: Option<String>,
}

fn ids_can_be_reserved_before_the_first_write(backend: Backend) {
    let db = database(backend, "models_ids");
    let mut conn = db.migrate();
    match &mut conn {
        Db::Pg(c) => {
            // every table's id is backed by `<table>_id_seq` (jarvis_settings is keyed by
            // name, jarvis_data_keys by the data key's random id)
            for table in TABLES
                .into_iter()
                .filter(|t| !["jarvis_settings", "jarvis_data_keys"].contains(t))
            {
                let rows: Vec<SequenceName> = diesel::sql_query(format!(
                    "SELECT pg_get_serial_sequence('{table}', 'id') AS sequence"
                ))
                .load(c)
                .expect("pg_get_serial_sequence");
                assert_eq!(
                    rows[0].sequence.as_deref(),
                    Some(format!("public.{table}_id_seq").as_str())
                );
            }
            // reserve a batch of ids, then write rows under them
            let reserved: Vec<Id> = diesel::sql_query(
                "SELECT nextval('users_id_seq') AS id FROM generate_series(1, 3)",
            )
            .load(c)
            .expect("reserve ids");
            let reserved: Vec<i64> = reserved.into_iter().map(|row| row.id).collect();
            assert_eq!(reserved, vec![1, 2, 3]);
            for id in reserved.iter().rev() {
                diesel::insert_into(users::table)
                    .values((users::id.eq(id), users::email.eq("x@y.z")))
                    .execute(c)
                    .expect("insert under a reserved id");
            }
        }
        Db::Sqlite(c) => {
            // reserve a batch of ids from sqlite_sequence, then write rows under them
            c.immediate_transaction(|c| {
                c.batch_execute(
                    "INSERT OR IGNORE INTO sqlite_sequence (name, seq) VALUES ('users', 0); \
                     UPDATE sqlite_sequence SET seq = seq + 3 WHERE name = 'users'",
                )?;
                let rows: Vec<Id> =
                    diesel::sql_query("SELECT seq AS id FROM sqlite_sequence WHERE name = 'users'")
                        .load(c)?;
                assert_eq!(rows[0].id, 3);
                for id in (1..=3_i64).rev() {
                    diesel::insert_into(users::table)
                        .values((users::id.eq(id), users::email.eq("x@y.z")))
                        .execute(c)?;
                }
                diesel::QueryResult::Ok(())
            })
            .expect("reserve ids and insert under them");
        }
    }
    // plain inserts continue after the reserved ids
    let next = plain_sql_user_insert(&mut conn);
    assert_eq!(next, 4);
    // ids are 64-bit on both backends
    let big = 5_000_000_000_i64;
    on!(&mut conn, c => diesel::insert_into(users::table)
        .values((users::id.eq(big), users::email.eq("big@y.z")))
        .execute(c))
    .expect("insert a 64-bit id");
    if backend == Backend::Postgres {
        on!(&mut conn, c => c.batch_execute(&format!("SELECT setval('users_id_seq', {big})")))
            .expect("advance the sequence past an explicit id");
    }
    assert_eq!(plain_sql_user_insert(&mut conn), big + 1);
    // a deleted id is not handed out again
    on!(&mut conn, c => diesel::delete(users::table.find(big + 1)).execute(c)).expect("delete");
    assert_eq!(plain_sql_user_insert(&mut conn), big + 2);
}

fn concurrent_migration_runs_apply_each_migration_once(backend: Backend) {
    let db = database(backend, "models_concurrent");
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || run_pending_migrations_blocking(&url))
        })
        .collect();
    let mut applied = Vec::new();
    for runner in runners {
        applied.extend(
            runner
                .join()
                .expect("runner thread")
                .expect("concurrent migration run"),
        );
    }
    applied.sort();
    assert_eq!(applied, backend.embedded_migrations());
    let mut conn = db.connect();
    assert_eq!(relations(&mut conn), expected_relations());
}

// ---------------------------------------------------------------------------------------------
// The async API
// ---------------------------------------------------------------------------------------------

async fn async_up_down(db: TestDatabase) {
    let applied = migrations::run_pending_migrations(&db.url)
        .await
        .expect("async up");
    assert_eq!(applied.len(), MIGRATION_COUNT);
    let status = migrations::migration_status(&db.url)
        .await
        .expect("async status");
    assert!(status.is_up_to_date());
    let reverted = migrations::revert_all_migrations(&db.url)
        .await
        .expect("async down");
    assert_eq!(reverted.len(), MIGRATION_COUNT);
    let status = migrations::migration_status(&db.url)
        .await
        .expect("async status");
    assert_eq!(status.pending.len(), MIGRATION_COUNT);
}

#[tokio::test]
async fn async_api_postgres_current_thread_runtime() {
    async_up_down(postgres("models_async")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api_postgres_multi_thread_runtime() {
    async_up_down(postgres("models_async_mt")).await;
}

#[tokio::test]
async fn async_api_sqlite() {
    async_up_down(sqlite()).await;
}

#[tokio::test]
async fn sqlite_url_forms() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("url.db");
    let url = format!("sqlite://{}", path.display());
    assert_eq!(Backend::from_url(&url), Backend::Sqlite);
    migrations::run_pending_migrations(&url)
        .await
        .expect("migrate a sqlite:// URL");
    assert!(path.exists(), "sqlite://path names the file at path");
    let status = migrations::migration_status(path.to_str().expect("UTF-8"))
        .await
        .expect("status through the plain path");
    assert!(status.is_up_to_date());
}

#[tokio::test]
async fn connection_errors_do_not_show_the_url() {
    let url = "postgresql://jarvis:correct-horse-battery@127.0.0.1:1/jarvis";
    let error = migrations::run_pending_migrations(url)
        .await
        .expect_err("nothing listens on port 1");
    let mut shown = format!("{error} {error:?}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        shown.push_str(&cause.to_string());
        source = cause.source();
    }
    assert!(!shown.contains("correct-horse"), "{shown}");
    assert!(!shown.contains(url), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Upgrading a database migrated before the split into two sets
// ---------------------------------------------------------------------------------------------

/// The migrations as they were released before the split into the bookkeeping and seed sets
/// (one set of eleven, `migrations/{postgres,sqlite}` then): a frozen copy, never edited.
const RELEASED_POSTGRES: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("tests/fixtures/released/migrations/postgres");
const RELEASED_SQLITE: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("tests/fixtures/released/migrations/sqlite");

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CatalogueEntry {
    #[diesel(sql_type = Text)]
    entry: String,
}

/// Every table's and view's columns in order (type, nullability, default), every index and,
/// on PostgreSQL, every constraint: what an upgrade must leave exactly as it was.
fn catalogue(db: &mut Db) -> Vec<String> {
    let queries: &[&str] = match db {
        Db::Pg(_) => &[
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
                 || ' ' || COALESCE(column_default, '-') || ' #' || ordinal_position AS entry \
             FROM information_schema.columns WHERE table_schema = 'public'",
            "SELECT 'index ' || indexname || ': ' || indexdef AS entry FROM pg_indexes \
             WHERE schemaname = 'public'",
            "SELECT 'constraint ' || conrelid::regclass::text || '.' || conname || ': ' \
                 || pg_get_constraintdef(oid) AS entry \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
            "SELECT 'view ' || viewname || ': ' || definition AS entry FROM pg_views \
             WHERE schemaname = 'public'",
        ],
        Db::Sqlite(_) => &[
            "SELECT m.name || '.' || p.name || ' ' || p.type || ' ' || p.\"notnull\" || ' ' \
                 || COALESCE(p.dflt_value, '-') || ' ' || p.pk || ' #' || p.cid AS entry \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            "SELECT 'index ' || name || ' on ' || tbl_name || ': ' || COALESCE(sql, '-') AS entry \
             FROM sqlite_master WHERE type = 'index'",
            "SELECT 'view ' || name || ': ' || sql AS entry FROM sqlite_master WHERE type = 'view'",
        ],
    };
    let mut entries = Vec::new();
    for query in queries {
        let rows: Vec<CatalogueEntry> =
            on!(db, conn => diesel::sql_query(*query).load(conn)).expect("read the catalogue");
        entries.extend(rows.into_iter().map(|r| r.entry));
    }
    entries.sort();
    entries
}

fn apply_released(db: &TestDatabase) {
    use diesel_migrations::MigrationHarness;
    let applied = match db.connect() {
        Db::Pg(mut conn) => conn
            .run_pending_migrations(RELEASED_POSTGRES)
            .map(|v| v.len()),
        Db::Sqlite(mut conn) => conn
            .run_pending_migrations(RELEASED_SQLITE)
            .map(|v| v.len()),
    }
    .expect("the released migrations");
    assert_eq!(applied, RELEASED_COUNT);
}

/// How many migrations the released set has.
const RELEASED_COUNT: usize = 11;

async fn upgrade_from_the_released_set(backend: Backend) {
    use std::sync::Arc;

    use jarvis_crypt::{Encryptor, LocalKeyProvider, NoAudit, SearchKey};

    let released = database(backend, "models_upgrade");
    let fresh = database(backend, "models_upgrade_fresh");
    let url = released.url.clone();
    tokio::task::spawn_blocking({
        let released = TestDatabase {
            backend,
            url: url.clone(),
            _dir: None,
        };
        move || apply_released(&released)
    })
    .await
    .expect("released set applied");

    // Rows written by the seed's repositories under the released schema.
    let db = jarvis_models::Database::connect(&url, 2).await.expect("db");
    let encryptor = Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build();
    let store = jarvis_models::Store::new(db.clone(), encryptor, Arc::new(NoAudit));
    let ada = store.create_user("ada@example.com").await.expect("user");
    let before = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            catalogue(
                &mut TestDatabase {
                    backend,
                    url,
                    _dir: None,
                }
                .connect(),
            )
        }
    })
    .await
    .expect("catalogue");

    // The upgrade applies what came after the release (the key vault), and nothing again:
    // both sets' released versions are there.
    let applied = migrations::run_pending_migrations(&url)
        .await
        .expect("upgrade");
    let names: Vec<&str> = applied.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["2026-12-07-000012_data_keys"],
        "applied again or missing"
    );
    let status = migrations::migration_status(&url).await.expect("status");
    assert!(
        status.is_up_to_date() && status.unknown.is_empty(),
        "{status:?}"
    );
    let bookkeeping = migrations::migration_status_of(&url, &[migrations::BOOKKEEPING])
        .await
        .expect("status");
    assert!(bookkeeping.is_up_to_date(), "{bookkeeping:?}");
    assert_eq!(bookkeeping.unknown.len(), 3, "the seed's tables' three");

    let (after, upgraded_problems, new) = tokio::task::spawn_blocking({
        let url = url.clone();
        let fresh_url = fresh.url.clone();
        move || {
            let mut upgraded = TestDatabase {
                backend,
                url,
                _dir: None,
            }
            .connect();
            let after = catalogue(&mut upgraded);
            let problems = schema_problems(&mut upgraded);
            run_pending_migrations_blocking(&fresh_url).expect("the new sets on a fresh database");
            let new = catalogue(
                &mut TestDatabase {
                    backend,
                    url: fresh_url,
                    _dir: None,
                }
                .connect(),
            );
            (after, problems, new)
        }
    })
    .await
    .expect("catalogues");
    // The upgrade added the key vault and changed nothing else.
    assert!(
        before.iter().all(|entry| after.contains(entry)),
        "the upgrade changed the released schema"
    );
    let added: Vec<_> = after.iter().filter(|e| !before.contains(e)).collect();
    assert!(!added.is_empty());
    assert!(
        added.iter().all(|e| e.contains("jarvis_data_keys")),
        "{added:?}"
    );
    assert!(upgraded_problems.is_empty(), "{upgraded_problems:?}");
    // The two sets build what the released set built.
    assert_eq!(
        after, new,
        "the new sets build another schema than the released one"
    );

    // The rows are intact and verify clean.
    let report = jarvis_models::verify::verify(&db, store.encryptor(), None)
        .await
        .expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        store.find_user(ada.id).await.expect("ada").email,
        "ada@example.com"
    );
    // Dropped before the SQLite file goes.
    drop(store);
    drop(db);
    drop(released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_released_set_upgrades_on_postgres() {
    upgrade_from_the_released_set(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_released_set_upgrades_on_sqlite() {
    upgrade_from_the_released_set(Backend::Sqlite).await;
}

/// An application's database gets the bookkeeping tables alone.
#[tokio::test]
async fn the_bookkeeping_set_alone_has_no_seed_tables() {
    let db = sqlite();
    let applied = migrations::run_bookkeeping_migrations(&db.url)
        .await
        .expect("bookkeeping");
    assert_eq!(
        applied,
        Backend::Sqlite.embedded_migrations_of(&[migrations::BOOKKEEPING])
    );
    let url = db.url.clone();
    let relations = tokio::task::spawn_blocking(move || {
        relations(
            &mut TestDatabase {
                backend: Backend::Sqlite,
                url,
                _dir: None,
            }
            .connect(),
        )
    })
    .await
    .expect("relations");
    for table in [
        "jarvis_keys",
        "jarvis_settings",
        "jarvis_data_keys",
        "jarvis_jobs",
        "jarvis_job_progress",
        "encryption_audit_log",
        "encryption_audit_summary",
        "encrypted_backups",
    ] {
        assert!(relations.contains_key(table), "{table}: {relations:?}");
    }
    for seed in [
        "users",
        "api_keys",
        "oauth_tokens",
        "active_api_keys_summary",
    ] {
        assert!(!relations.contains_key(seed), "{seed}: {relations:?}");
    }
}
