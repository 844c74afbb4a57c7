//! The migration of one new encrypted field, written out: the `up.sql` and `down.sql` that
//! add (and drop) its stored-form columns on PostgreSQL and SQLite, and the lines of its
//! diesel `table!` and model.
//!
//! The columns get the derive's default names (`encrypted_<f>`, `<f>_iv`, `<f>_auth_tag`,
//! `<f>_data_key`, `<f>_hash`) and the types and nullability [`check_schema`] expects
//! (`BYTEA`/`BLOB`; see [`catalogue`](crate::catalogue)); the SQL follows the seed's own
//! migrations (`migrations/seed`):
//!
//! - Nullable columns (an `Option` field, or one in the migrating state) carry a CHECK that
//!   the stored form is all four columns or none (`<table>_<f>_stored_form`). PostgreSQL adds
//!   it as a table constraint; SQLite, which adds no table constraint to an existing table,
//!   as a column constraint of the data-key column, so that dropping that column first drops
//!   it too.
//! - A search hash gets an index (`idx_<table>_<f>_hash`), not unique: a hash may be
//!   truncated.
//! - NOT NULL columns can only be added to an empty table (its existing rows would have no
//!   value): PostgreSQL refuses the `ADD COLUMN` on a table with rows by itself; SQLite adds
//!   a NOT NULL column only with a default, so the columns get the empty default and a CHECK
//!   that refuses it (on existing rows too, since SQLite 3.37). A table with rows adds the
//!   field in the migrating state (`migrating_from`), from a plaintext column, or nullable.
//! - A field in the migrating state keeps its plaintext column, which `encrypt-existing`
//!   sets to NULL row by row: on PostgreSQL, `up.sql` drops its NOT NULL (SQLite cannot, so
//!   it must be nullable already). `down.sql` leaves it as it is.
//!
//! Identifiers are quoted in the SQL, as diesel quotes them, so a name means exactly what
//! the `table!` says (case included); they are checked first ([`GenerateError`]).
//!
//! [`check_schema`]: crate::catalogue::check_schema

use std::fmt::Write as _;

use crate::catalogue::{binary_type, stored_form_nullable};
use crate::migrations::Backend;

/// PostgreSQL truncates longer identifiers (`NAMEDATALEN` - 1), so two long names could
/// become one.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// A name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// Not an SQL identifier of the accepted form.
    #[error(
        "{what} `{name}` is not an SQL identifier: {reason} (expected ASCII letters, digits \
         and `_`, starting with a letter or `_`, at most {MAX_IDENTIFIER_LEN} bytes)"
    )]
    InvalidIdentifier {
        /// Which name (`table`, `field`, ...).
        what: &'static str,
        /// The name, with control characters escaped.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The plaintext column is one of the names the field's columns get.
    #[error(
        "the plaintext column `{column}` has the name of one of the field's new columns; \
         name the field after the plaintext column (`--field {column}`) or rename the column"
    )]
    PlaintextCollides {
        /// The plaintext column.
        column: String,
    },
}

fn check_identifier(what: &'static str, name: &str) -> Result<(), GenerateError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('.') {
        Some("a schema-qualified name is not supported")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("it has a character other than an ASCII letter, digit or `_`")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it starts with a digit")
    } else if name.len() > MAX_IDENTIFIER_LEN {
        Some("it is too long")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(GenerateError::InvalidIdentifier {
            what,
            name: name.escape_debug().to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A new encrypted field: its table, its name and how it is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewField {
    table: String,
    field: String,
    search: bool,
    nullable: bool,
    migrating_from: Option<String>,
}

impl NewField {
    /// Field `field` of table `table` (unqualified names): NOT NULL, without search hash.
    pub fn new(table: impl Into<String>, field: impl Into<String>) -> Self {
        NewField {
            table: table.into(),
            field: field.into(),
            search: false,
            nullable: false,
            migrating_from: None,
        }
    }

    /// With a search hash (`#[encrypted(search)]`) and its index.
    #[must_use]
    pub fn search(mut self, search: bool) -> Self {
        self.search = search;
        self
    }

    /// An `Option` field: nullable columns.
    #[must_use]
    pub fn nullable(mut self, nullable: bool) -> Self {
        self.nullable = nullable;
        self
    }

    /// In the migrating state, from the plaintext column `column`
    /// (`#[encrypted(migrating_from = column)]`): nullable columns.
    #[must_use]
    pub fn migrating_from(mut self, column: Option<String>) -> Self {
        self.migrating_from = column;
        self
    }

    fn stored_nullable(&self) -> bool {
        stored_form_nullable(self.nullable, self.migrating_from.is_some())
    }
}

/// One migration's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSql {
    /// `up.sql`.
    pub up: String,
    /// `down.sql`.
    pub down: String,
}

/// What [`field_migration`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMigration {
    /// The migration for PostgreSQL.
    pub postgres: MigrationSql,
    /// The migration for SQLite.
    pub sqlite: MigrationSql,
    /// The columns' lines of the diesel `table!`, with doc comments.
    pub table_lines: String,
    /// The model's field with its `#[encrypted(...)]` attribute.
    pub model_field: String,
    /// The names the columns get: ciphertext, nonce, tag, data key, then the search hash.
    pub columns: Vec<String>,
}

impl FieldMigration {
    /// The migration for `backend`.
    pub fn sql(&self, backend: Backend) -> &MigrationSql {
        match backend {
            Backend::Postgres => &self.postgres,
            Backend::Sqlite => &self.sqlite,
        }
    }
}

/// `name` quoted as an identifier (the names are checked: no quote inside).
fn q(name: &str) -> String {
    format!("\"{name}\"")
}

/// The default names of the field's columns.
struct Names {
    ciphertext: String,
    iv: String,
    tag: String,
    data_key: String,
    hash: Option<String>,
    constraint: String,
    index: String,
}

impl Names {
    fn of(f: &NewField) -> Self {
        let field = &f.field;
        Names {
            ciphertext: format!("encrypted_{field}"),
            iv: format!("{field}_iv"),
            tag: format!("{field}_auth_tag"),
            data_key: format!("{field}_data_key"),
            hash: f.search.then(|| format!("{field}_hash")),
            constraint: format!("{}_{field}_stored_form", f.table),
            index: format!("idx_{}_{field}_hash", f.table),
        }
    }

    fn stored(&self) -> [&str; 4] {
        [&self.ciphertext, &self.iv, &self.tag, &self.data_key]
    }

    fn all_columns(&self) -> Vec<String> {
        let mut all: Vec<String> = self.stored().iter().map(|s| s.to_string()).collect();
        all.extend(self.hash.clone());
        all
    }
}

/// The all-or-none CHECK of the stored form, as the seed's migrations write it.
fn all_or_none(n: &Names) -> String {
    let ct = q(&n.ciphertext);
    format!(
        "CHECK (\n    ({ct} IS NULL) = ({} IS NULL)\n    AND ({ct} IS NULL) = ({} IS NULL)\n    \
         AND ({ct} IS NULL) = ({} IS NULL)\n)",
        q(&n.iv),
        q(&n.tag),
        q(&n.data_key)
    )
}

fn header(f: &NewField, out: &mut String) {
    let what = if f.search {
        "ciphertext, nonce, GCM tag and wrapped data key, and its search hash"
    } else {
        "ciphertext, nonce, GCM tag and wrapped data key"
    };
    let _ = writeln!(
        out,
        "-- The stored form of `{}.{}`, encrypted with #[derive(Encrypted)]:\n-- {what}.",
        f.table, f.field
    );
    if let Some(plain) = &f.migrating_from {
        let _ = writeln!(
            out,
            "-- In the migrating state: the columns are nullable until `encrypt-existing` has \
             encrypted\n-- the plaintext column `{plain}`; a later migration then drops \
             `{plain}` and makes them\n-- NOT NULL."
        );
    } else if !f.nullable {
        let _ = writeln!(
            out,
            "-- NOT NULL: for an empty table only (rows already there would have no value). \
             A table with\n-- rows adds the field from its plaintext column (migrating_from) \
             or as an Option field."
        );
    }
}

fn up_sql(f: &NewField, n: &Names, backend: Backend) -> String {
    let table = q(&f.table);
    let ty = binary_type(backend);
    let nullable = f.stored_nullable();
    let mut out = String::new();
    header(f, &mut out);
    let not_null = |column: &str, checked: bool| match backend {
        Backend::Postgres => " NOT NULL".to_owned(),
        // The empty default is refused by the CHECK (the ciphertext of an empty value is
        // empty, so that column has none; the nonce's CHECK refuses rows all the same).
        Backend::Sqlite if checked => {
            format!(" NOT NULL DEFAULT x'' CHECK (length({}) > 0)", q(column))
        }
        Backend::Sqlite => " NOT NULL DEFAULT x''".to_owned(),
    };
    if !nullable && backend == Backend::Sqlite {
        out.push_str(
            "-- SQLite adds a NOT NULL column only with a default: the empty default, which the \
             CHECKs\n-- refuse, so the migration fails on a table that has rows.\n",
        );
    }
    for column in n.stored() {
        let mut constraint = if nullable {
            String::new()
        } else {
            not_null(column, column != n.ciphertext)
        };
        if nullable && backend == Backend::Sqlite && column == n.data_key {
            out.push_str(
                "-- the stored form is all four columns or none (a constraint of this column: \
                 SQLite adds\n-- no table constraint to an existing table)\n",
            );
            constraint = format!(" CONSTRAINT {} {}", q(&n.constraint), all_or_none(n));
        }
        let _ = writeln!(
            out,
            "ALTER TABLE {table} ADD COLUMN {} {ty}{constraint};",
            q(column)
        );
    }
    if let Some(hash) = &n.hash {
        out.push_str(
            "-- search hash of the normalized value (blind index); not unique: it may be \
             truncated\n",
        );
        let constraint = if nullable {
            String::new()
        } else {
            not_null(hash, true)
        };
        let _ = writeln!(
            out,
            "ALTER TABLE {table} ADD COLUMN {} {ty}{constraint};",
            q(hash)
        );
    }
    if nullable && backend == Backend::Postgres {
        let _ = writeln!(
            out,
            "-- the stored form is all four columns or none\n\
             ALTER TABLE {table} ADD CONSTRAINT {} {};",
            q(&n.constraint),
            all_or_none(n)
        );
    }
    if let Some(plain) = &f.migrating_from {
        match backend {
            Backend::Postgres => {
                let _ = writeln!(
                    out,
                    "-- `encrypt-existing` sets the plaintext column to NULL as it encrypts each \
                     row\nALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL;",
                    q(plain)
                );
            }
            Backend::Sqlite => {
                let _ = writeln!(
                    out,
                    "-- `encrypt-existing` sets the plaintext column `{plain}` to NULL as it \
                     encrypts each row:\n-- it must be nullable (SQLite cannot drop a NOT NULL \
                     in place)"
                );
            }
        }
    }
    if let Some(hash) = &n.hash {
        let _ = writeln!(
            out,
            "CREATE INDEX {} ON {table} ({});",
            q(&n.index),
            q(hash)
        );
    }
    out
}

fn down_sql(f: &NewField, n: &Names, backend: Backend) -> String {
    let table = q(&f.table);
    let nullable = f.stored_nullable();
    let mut out = String::new();
    if let Some(plain) = &f.migrating_from {
        let _ = writeln!(
            out,
            "-- Reverting after `encrypt-existing` has run loses the values it encrypted: their \
             plaintext\n-- column `{plain}` is NULL by then."
        );
    }
    if n.hash.is_some() {
        let _ = writeln!(out, "DROP INDEX {};", q(&n.index));
    }
    if nullable && backend == Backend::Postgres {
        let _ = writeln!(
            out,
            "ALTER TABLE {table} DROP CONSTRAINT {};",
            q(&n.constraint)
        );
    }
    // On SQLite the data-key column goes before the columns its CHECK names.
    let mut columns: Vec<&str> = n.hash.iter().map(String::as_str).collect();
    columns.extend([
        n.data_key.as_str(),
        n.tag.as_str(),
        n.iv.as_str(),
        n.ciphertext.as_str(),
    ]);
    for column in columns {
        let _ = writeln!(out, "ALTER TABLE {table} DROP COLUMN {};", q(column));
    }
    out
}

fn table_lines(f: &NewField, n: &Names) -> String {
    let ty = if f.stored_nullable() {
        "Nullable<Binary>"
    } else {
        "Binary"
    };
    let field = &f.field;
    let mut out = String::new();
    let mut line = |doc: String, column: &str| {
        let _ = writeln!(out, "        /// {doc}\n        {column} -> {ty},");
    };
    line(format!("Ciphertext of `{field}`."), &n.ciphertext);
    line(format!("Nonce of `{}`.", n.ciphertext), &n.iv);
    line(format!("GCM tag of `{}`.", n.ciphertext), &n.tag);
    line(
        format!("Wrapped data key of `{}`.", n.ciphertext),
        &n.data_key,
    );
    if let Some(hash) = &n.hash {
        line(format!("Search hash of `{field}`."), hash);
    }
    if let Some(plain) = &f.migrating_from {
        let _ = writeln!(
            out,
            "        // `{plain}` stays, as `Nullable<..>`, until the migration is done"
        );
    }
    out
}

fn model_field(f: &NewField) -> String {
    let mut args = Vec::new();
    if f.search {
        args.push("search".to_owned());
    }
    if let Some(plain) = &f.migrating_from {
        args.push(format!("migrating_from = {plain}"));
    }
    let attribute = if args.is_empty() {
        "#[encrypted]".to_owned()
    } else {
        format!("#[encrypted({})]", args.join(", "))
    };
    let ty = if f.nullable {
        "Option<String>"
    } else {
        "String"
    };
    format!(
        "    // or Vec<u8>, or a serde type with `#[encrypted(json)]`\n    {attribute}\n    pub {}: {ty},\n",
        f.field
    )
}

/// The migration of the new field `f` on both backends, its `table!` lines and its model
/// field; refused when a name is not an identifier of the accepted form or a derived name
/// (`encrypted_<f>`, `idx_<table>_<f>_hash`, ...) would be too long.
pub fn field_migration(f: &NewField) -> Result<FieldMigration, GenerateError> {
    check_identifier("table", &f.table)?;
    check_identifier("field", &f.field)?;
    if let Some(plain) = &f.migrating_from {
        check_identifier("plaintext column", plain)?;
    }
    let n = Names::of(f);
    for name in n.all_columns() {
        check_identifier("column", &name)?;
    }
    if n.hash.is_some() {
        check_identifier("index", &n.index)?;
    }
    if f.stored_nullable() {
        check_identifier("constraint", &n.constraint)?;
    }
    if let Some(plain) = &f.migrating_from
        && n.all_columns().iter().any(|c| c == plain)
    {
        return Err(GenerateError::PlaintextCollides {
            column: plain.clone(),
        });
    }
    let sql = |backend| MigrationSql {
        up: up_sql(f, &n, backend),
        down: down_sql(f, &n, backend),
    };
    Ok(FieldMigration {
        postgres: sql(Backend::Postgres),
        sqlite: sql(Backend::Sqlite),
        table_lines: table_lines(f, &n),
        model_field: model_field(f),
        columns: n.all_columns(),
    })
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    use super::*;

    fn sqlite() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").expect("sqlite");
        conn.batch_execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT NOT NULL)")
            .expect("create");
        conn
    }

    fn exec(conn: &mut SqliteConnection, sql: &str) -> Result<(), String> {
        // Inside a transaction, as diesel runs a migration.
        conn.transaction(|c| c.batch_execute(sql))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_checked() {
        for (table, field, expected) in [
            (
                "patients",
                "",
                "field `` is not an SQL identifier: it is empty",
            ),
            (
                "billing.invoices",
                "x",
                "table `billing.invoices` is not an SQL identifier: a schema-qualified",
            ),
            (
                "patients",
                "ssn\"; DROP",
                "field `ssn\\\"; DROP` is not an SQL identifier: it has a character",
            ),
            (
                "patients",
                "1st",
                "field `1st` is not an SQL identifier: it starts with a digit",
            ),
            ("patients", "é", "it has a character other than"),
            ("patients", "new\nline", "field `new\\nline`"),
        ] {
            let error = field_migration(&NewField::new(table, field))
                .expect_err(field)
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
        // A derived name past PostgreSQL's limit.
        let long = "f".repeat(54);
        let error = field_migration(&NewField::new("t", &long)).expect_err("long");
        assert!(
            matches!(&error, GenerateError::InvalidIdentifier { what: "column", name, .. } if name == &format!("encrypted_{long}")),
            "{error}"
        );
        assert!(field_migration(&NewField::new("t", "f".repeat(53))).is_ok());
        // The index of the search hash, named after table and field, too.
        let error = field_migration(&NewField::new("t".repeat(40), "f".repeat(20)).search(true))
            .expect_err("long index");
        assert!(
            matches!(
                &error,
                GenerateError::InvalidIdentifier { what: "index", .. }
            ),
            "{error}"
        );
        let error = field_migration(
            &NewField::new("patients", "mrn").migrating_from(Some("mrn_iv".into())),
        )
        .expect_err("collides");
        assert!(matches!(error, GenerateError::PlaintextCollides { .. }));
    }

    #[test]
    fn the_seeds_users_email_is_written_as_its_migration_writes_it() {
        let m = field_migration(
            &NewField::new("users", "email")
                .search(true)
                .migrating_from(Some("email".into())),
        )
        .expect("generate");
        let up = &m.postgres.up;
        for expected in [
            "ALTER TABLE \"users\" ADD COLUMN \"encrypted_email\" BYTEA;\n",
            "ALTER TABLE \"users\" ADD COLUMN \"email_iv\" BYTEA;\n",
            "ALTER TABLE \"users\" ADD COLUMN \"email_auth_tag\" BYTEA;\n",
            "ALTER TABLE \"users\" ADD COLUMN \"email_data_key\" BYTEA;\n",
            "ALTER TABLE \"users\" ADD COLUMN \"email_hash\" BYTEA;\n",
            "ALTER TABLE \"users\" ADD CONSTRAINT \"users_email_stored_form\" CHECK (\n    \
             (\"encrypted_email\" IS NULL) = (\"email_iv\" IS NULL)\n    \
             AND (\"encrypted_email\" IS NULL) = (\"email_auth_tag\" IS NULL)\n    \
             AND (\"encrypted_email\" IS NULL) = (\"email_data_key\" IS NULL)\n);\n",
            "ALTER TABLE \"users\" ALTER COLUMN \"email\" DROP NOT NULL;\n",
            "CREATE INDEX \"idx_users_email_hash\" ON \"users\" (\"email_hash\");\n",
        ] {
            assert!(up.contains(expected), "missing {expected:?} in\n{up}");
        }
        assert_eq!(
            m.columns,
            [
                "encrypted_email",
                "email_iv",
                "email_auth_tag",
                "email_data_key",
                "email_hash"
            ]
        );
        assert!(
            m.table_lines
                .contains("        encrypted_email -> Nullable<Binary>,\n")
        );
        assert!(
            m.model_field
                .contains("#[encrypted(search, migrating_from = email)]\n    pub email: String,")
        );
        let down = &m.postgres.down;
        assert!(down.starts_with("-- Reverting after `encrypt-existing`"));
        assert!(down.contains("DROP INDEX \"idx_users_email_hash\";\n"));
        assert!(
            down.contains("ALTER TABLE \"users\" DROP CONSTRAINT \"users_email_stored_form\";\n")
        );
        let sqlite = &m.sqlite.up;
        assert!(sqlite.contains(
            "ALTER TABLE \"users\" ADD COLUMN \"email_data_key\" BLOB CONSTRAINT \"users_email_stored_form\" CHECK ("
        ));
        assert!(!sqlite.contains("DROP NOT NULL"));
    }

    #[test]
    fn not_null_columns() {
        let m = field_migration(&NewField::new("patients", "phone").search(true)).expect("gen");
        assert!(
            m.postgres
                .up
                .contains("ADD COLUMN \"phone_iv\" BYTEA NOT NULL;\n")
        );
        assert!(
            m.postgres
                .up
                .contains("ADD COLUMN \"phone_hash\" BYTEA NOT NULL;\n")
        );
        assert!(!m.postgres.up.contains("CONSTRAINT"));
        assert!(!m.postgres.down.contains("CONSTRAINT"));
        assert!(m.table_lines.contains("        phone_iv -> Binary,\n"));
        assert!(
            m.model_field
                .contains("#[encrypted(search)]\n    pub phone: String,")
        );
        let optional =
            field_migration(&NewField::new("patients", "notes").nullable(true)).expect("gen");
        assert!(
            optional
                .model_field
                .contains("#[encrypted]\n    pub notes: Option<String>,")
        );
        assert!(
            optional
                .table_lines
                .contains("notes_iv -> Nullable<Binary>,")
        );
        assert!(!optional.postgres.up.contains("INDEX"));
    }

    #[test]
    fn sqlite_applies_and_reverts_every_shape() {
        for field in [
            NewField::new("patients", "ssn"),
            NewField::new("patients", "ssn").search(true),
            NewField::new("patients", "ssn").nullable(true),
            NewField::new("patients", "ssn").search(true).nullable(true),
            NewField::new("patients", "ssn")
                .search(true)
                .migrating_from(Some("mrn".into())),
        ] {
            let m = field_migration(&field).expect("gen");
            let mut conn = sqlite();
            exec(&mut conn, &m.sqlite.up)
                .unwrap_or_else(|e| panic!("{field:?}: {e}\n{}", m.sqlite.up));
            exec(&mut conn, &m.sqlite.down)
                .unwrap_or_else(|e| panic!("{field:?}: {e}\n{}", m.sqlite.down));
            exec(&mut conn, &m.sqlite.up).expect("again");
        }
    }

    #[test]
    fn sqlite_not_null_fails_on_a_table_with_rows_and_refuses_missing_values() {
        let m = field_migration(&NewField::new("patients", "ssn").search(true)).expect("gen");
        let mut conn = sqlite();
        exec(&mut conn, "INSERT INTO patients (id, mrn) VALUES (1, 'a')").expect("row");
        let error = exec(&mut conn, &m.sqlite.up).expect_err("rows");
        assert!(error.contains("CHECK constraint failed"), "{error}");
        exec(&mut conn, "DELETE FROM patients").expect("delete");
        exec(&mut conn, &m.sqlite.up).expect("empty table");
        // An insert without the stored form is refused, as NOT NULL would.
        let error = exec(&mut conn, "INSERT INTO patients (id, mrn) VALUES (2, 'b')")
            .expect_err("no value");
        assert!(error.contains("CHECK constraint failed"), "{error}");
        exec(
            &mut conn,
            "INSERT INTO patients (id, mrn, encrypted_ssn, ssn_iv, ssn_auth_tag, ssn_data_key, ssn_hash) \
             VALUES (3, 'c', x'', x'00', x'00', x'00', x'00')",
        )
        .expect("a stored form (even of an empty value)");
    }

    #[test]
    fn sqlite_nullable_stored_form_is_all_or_none() {
        let m = field_migration(&NewField::new("patients", "ssn").nullable(true)).expect("gen");
        let mut conn = sqlite();
        exec(&mut conn, "INSERT INTO patients (id, mrn) VALUES (1, 'a')").expect("row");
        exec(&mut conn, &m.sqlite.up).expect("rows keep NULLs");
        let error = exec(
            &mut conn,
            "INSERT INTO patients (id, mrn, encrypted_ssn) VALUES (2, 'b', x'00')",
        )
        .expect_err("partial");
        assert!(error.contains("patients_ssn_stored_form"), "{error}");
    }
}
