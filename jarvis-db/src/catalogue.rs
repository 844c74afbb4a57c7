//! The registered models' tables against the live database: does every stored-form column
//! the derive describes exist, with the SQL type and nullability the stored form needs?
//!
//! A model's description ([`TableDescription`]) names its columns; the migrations and the
//! diesel `table!` say them again, by hand, and the three drift apart when one is edited
//! alone. [`check_schema`] reads the live catalogue (`pg_catalog` on PostgreSQL,
//! `pragma_table_info` on SQLite) and reports each difference as a [`Drift`]. What is
//! expected of each column ([`expected_columns`]):
//!
//! | column | SQL type | nullability |
//! |---|---|---|
//! | ciphertext, nonce, tag, wrapped data key | `BYTEA` (PostgreSQL), `BLOB` affinity (SQLite: `BLOB` or no declared type) | nullable for an `Option` field or one in the migrating state (`migrating_from`), else NOT NULL |
//! | search hash | as above | nullable for an `Option` field or one in the migrating state; either for another field (rows written before the hash existed may have none) |
//! | plaintext column of a migrating field | not checked | nullable (`encrypt-existing` sets it to NULL) |
//! | primary key, row key, `rotated_at`, `created_at`, `rotation_count` | not checked | not checked |
//!
//! Only the columns of the description are checked: the table's other columns (of any
//! type) are the application's business. A domain over `bytea` counts as `bytea`.

use std::collections::BTreeMap;
use std::fmt;

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Integer, Nullable, Text};
use diesel_async::RunQueryDsl as _;
use jarvis_crypt::{FieldDescription, TableDescription};

use crate::db::{Conn, Database};
use crate::described::quote;
use crate::error::ModelError;
use crate::migrations::Backend;

/// What a column is to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColumnRole {
    /// The ciphertext of the field.
    Ciphertext(&'static str),
    /// The nonce of the field.
    Iv(&'static str),
    /// The GCM tag of the field.
    Tag(&'static str),
    /// The wrapped data key of the field.
    DataKey(&'static str),
    /// The search hash of the field.
    SearchHash(&'static str),
    /// The plaintext column of a field in the migrating state.
    Plaintext(&'static str),
    /// The primary key (a column of it).
    PrimaryKey,
    /// The row key bound into the associated data, when it is not the primary key.
    RowKey,
    /// The `rotated_at` column.
    RotatedAt,
    /// The `created_at` column.
    CreatedAt,
    /// The `rotation_count` column.
    RotationCount,
}

impl ColumnRole {
    /// Whether the column holds a stored-form value or a search hash (a binary column).
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            ColumnRole::Ciphertext(_)
                | ColumnRole::Iv(_)
                | ColumnRole::Tag(_)
                | ColumnRole::DataKey(_)
                | ColumnRole::SearchHash(_)
        )
    }
}

impl fmt::Display for ColumnRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnRole::Ciphertext(field) => write!(f, "ciphertext of `{field}`"),
            ColumnRole::Iv(field) => write!(f, "nonce of `{field}`"),
            ColumnRole::Tag(field) => write!(f, "GCM tag of `{field}`"),
            ColumnRole::DataKey(field) => write!(f, "wrapped data key of `{field}`"),
            ColumnRole::SearchHash(field) => write!(f, "search hash of `{field}`"),
            ColumnRole::Plaintext(field) => write!(f, "plaintext column of `{field}`"),
            ColumnRole::PrimaryKey => f.write_str("primary key"),
            ColumnRole::RowKey => f.write_str("row key"),
            ColumnRole::RotatedAt => f.write_str("rotated_at"),
            ColumnRole::CreatedAt => f.write_str("created_at"),
            ColumnRole::RotationCount => f.write_str("rotation_count"),
        }
    }
}

/// The nullability a column must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nullability {
    /// NULL allowed.
    Nullable,
    /// NOT NULL.
    NotNull,
    /// Either: not checked.
    Any,
}

impl Nullability {
    /// Whether a column that is (or is not) nullable satisfies this.
    pub fn accepts(self, nullable: bool) -> bool {
        match self {
            Nullability::Nullable => nullable,
            Nullability::NotNull => !nullable,
            Nullability::Any => true,
        }
    }
}

impl fmt::Display for Nullability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Nullability::Nullable => "nullable",
            Nullability::NotNull => "NOT NULL",
            Nullability::Any => "nullable or NOT NULL",
        })
    }
}

/// Whether the stored-form columns of a field are nullable: for an `Option` field, and for
/// one in the migrating state (its rows hold plaintext until `encrypt-existing` has run).
pub fn stored_form_nullable(field_nullable: bool, migrating: bool) -> bool {
    field_nullable || migrating
}

/// A column the description names, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedColumn {
    /// The column, as SQL knows it.
    pub column: String,
    /// What it is to the model (the first role, for a column with several).
    pub role: ColumnRole,
    /// Its nullability.
    pub nullability: Nullability,
}

impl ExpectedColumn {
    /// The SQL type the column must have on `backend` (`None`: not checked).
    pub fn sql_type(&self, backend: Backend) -> Option<&'static str> {
        self.role.is_binary().then_some(binary_type(backend))
    }
}

/// The binary SQL type of the stored form: `BYTEA` on PostgreSQL, `BLOB` on SQLite.
pub fn binary_type(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "BYTEA",
        Backend::Sqlite => "BLOB",
    }
}

/// The columns of one field, in the order of its stored form.
fn field_columns(f: &FieldDescription, out: &mut Vec<ExpectedColumn>) {
    let nullable = stored_form_nullable(f.nullable, f.migrating_from.is_some());
    let stored = if nullable {
        Nullability::Nullable
    } else {
        Nullability::NotNull
    };
    for (column, role) in [
        (f.ciphertext, ColumnRole::Ciphertext(f.field)),
        (f.iv, ColumnRole::Iv(f.field)),
        (f.tag, ColumnRole::Tag(f.field)),
        (f.data_key, ColumnRole::DataKey(f.field)),
    ] {
        out.push(ExpectedColumn {
            column: column.to_owned(),
            role,
            nullability: stored,
        });
    }
    if let Some(search) = &f.search {
        out.push(ExpectedColumn {
            column: search.column.to_owned(),
            role: ColumnRole::SearchHash(f.field),
            nullability: if nullable {
                Nullability::Nullable
            } else {
                Nullability::Any
            },
        });
    }
    if let Some(plain) = f.migrating_from {
        out.push(ExpectedColumn {
            column: plain.to_owned(),
            role: ColumnRole::Plaintext(f.field),
            nullability: Nullability::Nullable,
        });
    }
}

/// Every column `table`'s description names, once each: the primary key, the row key and
/// the timestamp and counter columns (existence only), then each field's stored form,
/// search hash and plaintext column.
pub fn expected_columns(table: &TableDescription) -> Vec<ExpectedColumn> {
    let mut out = Vec::new();
    for pk in &table.primary_key {
        out.push(ExpectedColumn {
            column: pk.clone(),
            role: ColumnRole::PrimaryKey,
            nullability: Nullability::Any,
        });
    }
    for (column, role) in [
        (table.row_key, ColumnRole::RowKey),
        (table.rotated_at, ColumnRole::RotatedAt),
        (table.created_at, ColumnRole::CreatedAt),
        (table.rotation_count, ColumnRole::RotationCount),
    ] {
        if let Some(column) = column {
            out.push(ExpectedColumn {
                column: column.to_owned(),
                role,
                nullability: Nullability::Any,
            });
        }
    }
    for field in &table.fields {
        field_columns(field, &mut out);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.column.clone()));
    out
}

/// A column of the live database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveColumn {
    /// Its name.
    pub name: String,
    /// Its SQL type: PostgreSQL's `format_type` (of the base type, for a domain), or SQLite's
    /// declared type (empty when none was declared).
    pub sql_type: String,
    /// Whether it accepts NULL.
    pub nullable: bool,
}

/// One difference between a description and the live database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The table, as the description names it.
    pub table: String,
    /// The column and its role (`None` for the table itself).
    pub column: Option<(String, ColumnRole)>,
    /// What differs.
    pub kind: DriftKind,
}

/// What differs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriftKind {
    /// The table does not exist.
    MissingTable,
    /// The column does not exist.
    MissingColumn,
    /// The column has another SQL type.
    Type {
        /// The type the stored form needs.
        expected: &'static str,
        /// The live column's type.
        found: String,
    },
    /// The column has another nullability.
    Nullability {
        /// What the description needs.
        expected: Nullability,
        /// Whether the live column accepts NULL.
        found_nullable: bool,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((column, role)) = &self.column else {
            return write!(f, "{}: table missing", self.table);
        };
        write!(f, "{}.{column} ({role}): ", self.table)?;
        match &self.kind {
            DriftKind::MissingTable | DriftKind::MissingColumn => f.write_str("column missing"),
            DriftKind::Type { expected, found } => {
                let found = if found.is_empty() {
                    "no declared type"
                } else {
                    found
                };
                write!(f, "type expected {expected}, found {found}")
            }
            DriftKind::Nullability {
                expected,
                found_nullable,
            } => write!(
                f,
                "expected {expected}, found {}",
                if *found_nullable {
                    "nullable"
                } else {
                    "NOT NULL"
                }
            ),
        }
    }
}

/// Whether a live SQL type is the binary type of the stored form.
fn is_binary_type(backend: Backend, sql_type: &str) -> bool {
    match backend {
        Backend::Postgres => sql_type.eq_ignore_ascii_case("bytea"),
        // SQLite's affinity rules (datatype3.html, 3.1), in their order: `INT` gives INTEGER,
        // `CHAR`/`CLOB`/`TEXT` give TEXT, then `BLOB` or no declared type gives BLOB.
        Backend::Sqlite => {
            let t = sql_type.to_ascii_uppercase();
            !t.contains("INT")
                && !["CHAR", "CLOB", "TEXT"].iter().any(|s| t.contains(s))
                && (t.contains("BLOB") || t.trim().is_empty())
        }
    }
}

/// The differences between `table`'s description and its live columns on `backend`
/// (`None`: the table does not exist).
pub fn compare(
    table: &TableDescription,
    backend: Backend,
    live: Option<&[LiveColumn]>,
) -> Vec<Drift> {
    let Some(live) = live else {
        return vec![Drift {
            table: table.name.clone(),
            column: None,
            kind: DriftKind::MissingTable,
        }];
    };
    let by_name: BTreeMap<&str, &LiveColumn> = live.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut drift = Vec::new();
    for expected in expected_columns(table) {
        let mut push = |kind| {
            drift.push(Drift {
                table: table.name.clone(),
                column: Some((expected.column.clone(), expected.role)),
                kind,
            })
        };
        let Some(found) = by_name.get(expected.column.as_str()) else {
            push(DriftKind::MissingColumn);
            continue;
        };
        if let Some(sql_type) = expected.sql_type(backend)
            && !is_binary_type(backend, &found.sql_type)
        {
            push(DriftKind::Type {
                expected: sql_type,
                found: found.sql_type.clone(),
            });
        }
        if !expected.nullability.accepts(found.nullable) {
            push(DriftKind::Nullability {
                expected: expected.nullability,
                found_nullable: found.nullable,
            });
        }
    }
    drift
}

/// One table checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    /// The table, as the description names it.
    pub table: String,
    /// The model.
    pub model: &'static str,
    /// How many columns the description names (each checked).
    pub columns: usize,
    /// The differences found (empty: the table matches).
    pub drift: Vec<Drift>,
}

/// What [`check_schema`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaReport {
    /// The database's backend.
    pub backend: Backend,
    /// Every table checked, in the order given.
    pub tables: Vec<TableCheck>,
}

impl SchemaReport {
    /// Whether every table matches its description.
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(|t| t.drift.is_empty())
    }

    /// Every difference, table by table.
    pub fn drift(&self) -> impl Iterator<Item = &Drift> {
        self.tables.iter().flat_map(|t| t.drift.iter())
    }
}

#[derive(QueryableByName)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    sql_type: String,
    #[diesel(sql_type = Bool)]
    not_null: bool,
}

#[derive(QueryableByName)]
struct PgRelation {
    #[diesel(sql_type = Nullable<Text>)]
    found: Option<String>,
}

#[derive(QueryableByName)]
struct SqliteColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    sql_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
}

/// The columns of `table` (its SQL name, `schema.table` when qualified, resolved as diesel's
/// quoted name is) in the live database, or `None` when there is no such table.
pub async fn live_columns(
    db: &Database,
    table: &str,
) -> Result<Option<Vec<LiveColumn>>, ModelError> {
    let mut conn = db.get().await?;
    match &mut conn {
        Conn::Postgres(c) => {
            // `to_regclass` resolves the quoted name as a query would (search_path included).
            let name = quote(table);
            let relation: Vec<PgRelation> =
                diesel::sql_query("SELECT to_regclass($1)::text AS found")
                    .bind::<Text, _>(&name)
                    .load(&mut **c)
                    .await?;
            if relation.iter().all(|r| r.found.is_none()) {
                return Ok(None);
            }
            let rows: Vec<PgColumn> = diesel::sql_query(
                "SELECT a.attname::text AS name, \
                        pg_catalog.format_type( \
                            CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, \
                            CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END \
                        ) AS sql_type, \
                        (a.attnotnull OR (t.typtype = 'd' AND t.typnotnull)) AS not_null \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
            )
            .bind::<Text, _>(&name)
            .load(&mut **c)
            .await?;
            Ok(Some(
                rows.into_iter()
                    .map(|r| LiveColumn {
                        name: r.name,
                        sql_type: r.sql_type,
                        nullable: !r.not_null,
                    })
                    .collect(),
            ))
        }
        Conn::Sqlite(c) => {
            let (schema, name) = match table.split_once('.') {
                Some((schema, name)) => (schema, name),
                None => ("main", table),
            };
            let rows: Vec<SqliteColumn> = diesel::sql_query(
                "SELECT name, type AS sql_type, \"notnull\" AS not_null \
                 FROM pragma_table_info(?, ?) ORDER BY cid",
            )
            .bind::<Text, _>(name)
            .bind::<Text, _>(schema)
            .load(&mut **c)
            .await?;
            // Every SQLite table has a column: none means no table.
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(Some(
                rows.into_iter()
                    .map(|r| LiveColumn {
                        name: r.name,
                        sql_type: r.sql_type,
                        nullable: r.not_null == 0,
                    })
                    .collect(),
            ))
        }
    }
}

/// Every table of `tables` against the live database of `db`: its stored-form columns (names,
/// SQL types, nullability), the plaintext columns of migrating fields, and the existence of
/// its primary key, row key and the columns the jobs read.
pub async fn check_schema(
    db: &Database,
    tables: &[&TableDescription],
) -> Result<SchemaReport, ModelError> {
    let backend = db.backend();
    let mut checks = Vec::with_capacity(tables.len());
    for table in tables {
        let live = live_columns(db, &table.name).await?;
        checks.push(TableCheck {
            table: table.name.clone(),
            model: table.model,
            columns: expected_columns(table).len(),
            drift: compare(table, backend, live.as_deref()),
        });
    }
    Ok(SchemaReport {
        backend,
        tables: checks,
    })
}

#[cfg(test)]
mod tests {
    use jarvis_crypt::EncryptedTable;

    use super::*;

    mod schema {
        diesel::table! {
            patients (id) {
                id -> BigInt,
                ssn -> Nullable<Text>,
                encrypted_ssn -> Nullable<Binary>,
                ssn_iv -> Nullable<Binary>,
                ssn_auth_tag -> Nullable<Binary>,
                ssn_data_key -> Nullable<Binary>,
                ssn_hash -> Nullable<Binary>,
                encrypted_phone -> Binary,
                phone_iv -> Binary,
                phone_auth_tag -> Binary,
                phone_data_key -> Binary,
                phone_hash -> Nullable<Binary>,
                encrypted_notes -> Nullable<Binary>,
                notes_iv -> Nullable<Binary>,
                notes_auth_tag -> Nullable<Binary>,
                notes_data_key -> Nullable<Binary>,
                keys_rotated_at -> Nullable<Timestamp>,
            }
        }
    }

    #[derive(jarvis_crypt::Encrypted)]
    #[encrypted(table = schema::patients, bind = id, rotated_at = keys_rotated_at)]
    #[allow(dead_code)]
    struct Patient {
        id: i64,
        #[encrypted(search, migrating_from = ssn)]
        ssn: String,
        #[encrypted(search)]
        phone: String,
        #[encrypted]
        notes: Option<String>,
    }

    impl fmt::Debug for Patient {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Patient").finish_non_exhaustive()
        }
    }

    fn column(name: &str, sql_type: &str, nullable: bool) -> LiveColumn {
        LiveColumn {
            name: name.into(),
            sql_type: sql_type.into(),
            nullable,
        }
    }

    /// The live table as the migration would make it on `backend`.
    fn matching(backend: Backend) -> Vec<LiveColumn> {
        let binary = binary_type(backend).to_ascii_lowercase();
        let mut live = vec![
            column("id", "bigint", false),
            column("ssn", "text", true),
            column("keys_rotated_at", "timestamp with time zone", true),
            column("unrelated", "uuid", false),
        ];
        for (name, nullable) in [
            ("encrypted_ssn", true),
            ("ssn_iv", true),
            ("ssn_auth_tag", true),
            ("ssn_data_key", true),
            ("ssn_hash", true),
            ("encrypted_phone", false),
            ("phone_iv", false),
            ("phone_auth_tag", false),
            ("phone_data_key", false),
            ("phone_hash", false),
            ("encrypted_notes", true),
            ("notes_iv", true),
            ("notes_auth_tag", true),
            ("notes_data_key", true),
        ] {
            live.push(column(name, &binary, nullable));
        }
        live
    }

    #[test]
    fn expected_columns_follow_the_description() {
        let expected = expected_columns(Patient::table());
        let names: Vec<&str> = expected.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "keys_rotated_at",
                "encrypted_ssn",
                "ssn_iv",
                "ssn_auth_tag",
                "ssn_data_key",
                "ssn_hash",
                "ssn",
                "encrypted_phone",
                "phone_iv",
                "phone_auth_tag",
                "phone_data_key",
                "phone_hash",
                "encrypted_notes",
                "notes_iv",
                "notes_auth_tag",
                "notes_data_key",
            ]
        );
        let get = |name: &str| {
            expected
                .iter()
                .find(|c| c.column == name)
                .expect("column")
                .clone()
        };
        // `id` is both primary key and row key: listed once, as the primary key.
        assert_eq!(get("id").role, ColumnRole::PrimaryKey);
        assert_eq!(get("ssn_iv").nullability, Nullability::Nullable);
        assert_eq!(get("ssn").role, ColumnRole::Plaintext("ssn"));
        assert_eq!(get("phone_iv").nullability, Nullability::NotNull);
        assert_eq!(get("phone_hash").nullability, Nullability::Any);
        assert_eq!(get("notes_data_key").nullability, Nullability::Nullable);
        assert_eq!(get("phone_iv").sql_type(Backend::Postgres), Some("BYTEA"));
        assert_eq!(get("phone_iv").sql_type(Backend::Sqlite), Some("BLOB"));
        assert_eq!(get("keys_rotated_at").sql_type(Backend::Postgres), None);
    }

    #[test]
    fn a_matching_table_has_no_drift() {
        for backend in [Backend::Postgres, Backend::Sqlite] {
            let live = matching(backend);
            assert_eq!(compare(Patient::table(), backend, Some(&live)), []);
        }
        // A nullable hash of a NOT NULL field is accepted (rows from before the hash).
        let mut live = matching(Backend::Postgres);
        live.iter_mut()
            .filter(|c| c.name == "phone_hash")
            .for_each(|c| c.nullable = true);
        assert_eq!(
            compare(Patient::table(), Backend::Postgres, Some(&live)),
            []
        );
        // SQLite: BLOB affinity, whatever the spelling.
        let mut live = matching(Backend::Sqlite);
        live.iter_mut()
            .filter(|c| c.name == "phone_iv")
            .for_each(|c| c.sql_type = String::new());
        live.iter_mut()
            .filter(|c| c.name == "notes_iv")
            .for_each(|c| c.sql_type = "Blob".into());
        assert_eq!(compare(Patient::table(), Backend::Sqlite, Some(&live)), []);
    }

    #[test]
    fn every_difference_is_named() {
        let mut live = matching(Backend::Postgres);
        live.retain(|c| c.name != "notes_auth_tag");
        for c in &mut live {
            match c.name.as_str() {
                "phone_iv" => c.sql_type = "text".into(),
                "phone_data_key" => c.nullable = true,
                "ssn_hash" => c.nullable = false,
                "ssn" => c.nullable = false,
                _ => {}
            }
        }
        let drift = compare(Patient::table(), Backend::Postgres, Some(&live));
        let lines: Vec<String> = drift.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "patients.ssn_hash (search hash of `ssn`): expected nullable, found NOT NULL",
                "patients.ssn (plaintext column of `ssn`): expected nullable, found NOT NULL",
                "patients.phone_iv (nonce of `phone`): type expected BYTEA, found text",
                "patients.phone_data_key (wrapped data key of `phone`): expected NOT NULL, found nullable",
                "patients.notes_auth_tag (GCM tag of `notes`): column missing",
            ]
        );
        // The primary key and `rotated_at` must exist.
        let mut live = matching(Backend::Sqlite);
        live.retain(|c| c.name != "id" && c.name != "keys_rotated_at");
        live.iter_mut()
            .filter(|c| c.name == "encrypted_phone")
            .for_each(|c| c.sql_type = "TEXT".into());
        let lines: Vec<String> = compare(Patient::table(), Backend::Sqlite, Some(&live))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "patients.id (primary key): column missing",
                "patients.keys_rotated_at (rotated_at): column missing",
                "patients.encrypted_phone (ciphertext of `phone`): type expected BLOB, found TEXT",
            ]
        );
        assert_eq!(
            compare(Patient::table(), Backend::Sqlite, None)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["patients: table missing"]
        );
    }

    #[test]
    fn sqlite_affinity_decides_what_is_binary() {
        for binary in ["BLOB", "blob", "", "LONGBLOB"] {
            assert!(is_binary_type(Backend::Sqlite, binary), "{binary}");
        }
        for other in ["TEXT", "INTEGER", "BLOBINT", "VARCHAR(10)", "REAL", "BYTEA"] {
            assert!(!is_binary_type(Backend::Sqlite, other), "{other}");
        }
        assert!(is_binary_type(Backend::Postgres, "bytea"));
        assert!(!is_binary_type(Backend::Postgres, "text"));
    }
}
