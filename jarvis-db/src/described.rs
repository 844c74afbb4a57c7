//! SQL over any model's table, built from its [`TableDescription`]: the one place where the
//! jobs, `verify` and key usage read and write stored forms, for the seed's tables and an
//! application's alike.
//!
//! Every name in a statement comes from the description (diesel's `Column::NAME` of the
//! model's `table!`), quoted as an identifier; every value is bound. Rows are paged and
//! locked by the single-column integer primary key, read as `BIGINT`; nothing else of the
//! table is read, so columns of types this crate does not know (`uuid`, `jsonb`,
//! `timestamptz`) are no obstacle.

use chrono::NaiveDateTime;
use diesel::QueryableByName;
use diesel::backend::Backend as DieselBackend;
use diesel::deserialize::FromSql;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::row::NamedRow;
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Binary, HasSqlType, Nullable, Text, Timestamp};
use diesel_async::RunQueryDsl as _;
use jarvis_crypt::{
    AuthTag, Binding, Ciphertext, FieldDescription, Nonce, RowKey, RowKeyKind, StoredField,
    TableDescription, ValueKind, WrappedKey,
};

use crate::db::Conn;
use crate::error::ModelError;
use crate::migrations::Backend;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A bound value.
#[derive(Clone)]
pub(crate) enum Arg {
    Int(i64),
    /// A binary column's value, or NULL.
    Bytes(Option<Vec<u8>>),
    /// A timestamp (UTC).
    Timestamp(NaiveDateTime),
    /// SQL `NULL` as a literal, for a column of any type (nothing is bound).
    Null,
}

// Values are stored forms and ids, never plaintext; still, a statement's Debug shows none.
impl std::fmt::Debug for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Int(v) => write!(f, "Int({v})"),
            Arg::Bytes(v) => write!(f, "Bytes({:?} bytes)", v.as_ref().map(Vec::len)),
            Arg::Timestamp(v) => write!(f, "Timestamp({v})"),
            Arg::Null => f.write_str("Null"),
        }
    }
}

/// A statement and its bound values, with the backend's placeholders.
#[derive(Debug)]
pub(crate) struct Sql {
    backend: Backend,
    pub(crate) text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub(crate) fn new(backend: Backend) -> Self {
        Sql {
            backend,
            text: String::new(),
            args: Vec::new(),
        }
    }

    /// Appends SQL text (names from a description, keywords; never a value).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a quoted identifier (`schema.table` is quoted part by part).
    pub(crate) fn ident(&mut self, name: &str) -> &mut Self {
        self.text.push_str(&quote(name));
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub(crate) fn arg(&mut self, arg: Arg) -> &mut Self {
        if let Arg::Null = arg {
            self.text.push_str("NULL");
            return self;
        }
        self.args.push(arg);
        match self.backend {
            Backend::Postgres => {
                let n = self.args.len();
                self.text.push_str(&format!("${n}"));
            }
            Backend::Sqlite => self.text.push('?'),
        }
        self
    }

    fn boxed<'a, DB>(&'a self) -> BoxedSqlQuery<'a, DB, SqlQuery>
    where
        DB: DieselBackend
            + HasSqlType<BigInt>
            + HasSqlType<Nullable<Binary>>
            + HasSqlType<Timestamp>,
        i64: ToSql<BigInt, DB>,
        Option<Vec<u8>>: ToSql<Nullable<Binary>, DB>,
        NaiveDateTime: ToSql<Timestamp, DB>,
    {
        let mut query = diesel::sql_query(self.text.clone()).into_boxed::<DB>();
        for arg in &self.args {
            query = match arg {
                Arg::Int(v) => query.bind::<BigInt, _>(*v),
                Arg::Bytes(v) => query.bind::<Nullable<Binary>, _>(v.clone()),
                Arg::Timestamp(v) => query.bind::<Timestamp, _>(*v),
                Arg::Null => query,
            };
        }
        query
    }

    /// Runs the statement: the number of rows it changed.
    pub(crate) async fn run(&self, conn: &mut Conn) -> Result<usize> {
        Ok(match conn {
            Conn::Postgres(c) => self.boxed::<diesel::pg::Pg>().execute(&mut **c).await?,
            Conn::Sqlite(c) => {
                self.boxed::<diesel::sqlite::Sqlite>()
                    .execute(&mut **c)
                    .await?
            }
        })
    }

    /// Runs the query, loading rows of `U`.
    pub(crate) async fn fetch<U>(&self, conn: &mut Conn) -> Result<Vec<U>>
    where
        U: QueryableByName<diesel::pg::Pg>
            + QueryableByName<diesel::sqlite::Sqlite>
            + Send
            + 'static,
    {
        Ok(match conn {
            Conn::Postgres(c) => self.boxed::<diesel::pg::Pg>().load(&mut **c).await?,
            Conn::Sqlite(c) => {
                self.boxed::<diesel::sqlite::Sqlite>()
                    .load(&mut **c)
                    .await?
            }
        })
    }
}

/// `name` quoted as an SQL identifier, part by part for `schema.table`.
pub(crate) fn quote(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The table's primary-key column, refused when the jobs cannot page by it.
pub(crate) fn primary_key(table: &TableDescription) -> Result<&str> {
    table.single_primary_key().ok_or_else(|| {
        configuration(format!(
            "`{}` (model `{}`) has a composite primary key ({}); the jobs page and lock rows by \
             a single-column key",
            table.name,
            table.model,
            table.primary_key.join(", ")
        ))
    })
}

pub(crate) fn configuration(message: impl Into<String>) -> ModelError {
    jarvis_crypt::Error::Configuration(message.into()).into()
}

/// The stored form of one value as read: its four columns (any of them NULL), the search
/// hash and the plaintext of a migrating field.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredValue {
    pub(crate) ciphertext: Option<Vec<u8>>,
    pub(crate) iv: Option<Vec<u8>>,
    pub(crate) tag: Option<Vec<u8>>,
    pub(crate) data_key: Option<Vec<u8>>,
    pub(crate) hash: Option<Vec<u8>>,
    /// The plaintext column's value (text for text and JSON fields, bytes for bytes).
    pub(crate) plaintext: Option<Vec<u8>>,
}

/// The four stored-form columns of a value, or none of them; a value with some columns
/// NULL is neither.
#[derive(Debug)]
pub(crate) enum Form {
    Empty,
    Stored(StoredField),
    /// Some columns NULL, or a column of a wrong length.
    Invalid(jarvis_crypt::Error),
}

impl StoredValue {
    pub(crate) fn form(&self) -> Form {
        match (&self.ciphertext, &self.iv, &self.tag, &self.data_key) {
            (None, None, None, None) => Form::Empty,
            (Some(ct), Some(iv), Some(tag), Some(dk)) => {
                let parts = (|| {
                    Ok::<_, jarvis_crypt::Error>(StoredField {
                        ciphertext: Ciphertext::new(ct.clone())?,
                        nonce: Nonce::new(iv.clone())?,
                        tag: AuthTag::new(tag.clone())?,
                        data_key: WrappedKey::new(dk.clone())?,
                    })
                })();
                match parts {
                    Ok(stored) => Form::Stored(stored),
                    Err(e) => Form::Invalid(e),
                }
            }
            _ => Form::Invalid(jarvis_crypt::Error::InvalidStoredForm(
                "some of the value's stored-form columns are NULL".into(),
            )),
        }
    }
}

/// A row of a described table: its id, its row key and one value per encrypted field (in the
/// description's order).
#[derive(Debug, Clone)]
pub(crate) struct StoredRow {
    pub(crate) id: i64,
    pub(crate) row_key: OwnedKey,
    pub(crate) values: Vec<StoredValue>,
}

/// An owned row key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnedKey {
    None,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl OwnedKey {
    pub(crate) fn borrow(&self) -> RowKey<'_> {
        match self {
            OwnedKey::None => RowKey::None,
            OwnedKey::Int(v) => RowKey::Int(*v),
            OwnedKey::Text(v) => RowKey::Text(v),
            OwnedKey::Bytes(v) => RowKey::Bytes(v),
        }
    }
}

/// The place a field's values are bound to in the row.
pub(crate) fn binding<'a>(
    table: &'a TableDescription,
    field: &'a FieldDescription,
    row: &'a StoredRow,
) -> Binding<'a> {
    Binding {
        table: table.bound_name,
        column: field.bound_column,
        row: row.row_key.borrow(),
    }
}

/// The columns of one field in a query, aliased `f{i}_ct`, `f{i}_iv`, ...
const PARTS: [&str; 6] = ["ct", "iv", "tag", "dk", "hash", "plain"];

/// `SELECT` list reading `table`'s id, row key and every field's stored form.
fn select_list(table: &TableDescription, backend: Backend) -> Result<String> {
    let pk = quote(primary_key(table)?);
    let null_bytes = match backend {
        Backend::Postgres => "CAST(NULL AS BYTEA)",
        Backend::Sqlite => "CAST(NULL AS BLOB)",
    };
    let mut list = format!(
        "CAST({pk} AS BIGINT) AS id, CAST({} AS BIGINT) AS n_fields",
        table.fields.len()
    );
    let row_key = match (table.row_key, table.row_key_kind) {
        (Some(column), Some(RowKeyKind::Int)) => {
            format!("CAST({} AS BIGINT) AS rk_int", quote(column))
        }
        (Some(column), Some(RowKeyKind::Text)) => {
            format!("CAST({} AS TEXT) AS rk_text", quote(column))
        }
        (Some(column), _) => format!("{} AS rk_bytes", quote(column)),
        (None, _) => "0 AS rk_none".to_owned(),
    };
    list.push_str(", ");
    list.push_str(&row_key);
    for (i, f) in table.fields.iter().enumerate() {
        let hash = f.search.map(|s| quote(s.column));
        let plain = f.migrating_from.map(|p| match f.kind {
            ValueKind::Bytes => quote(p),
            _ => format!("CAST({} AS TEXT)", quote(p)),
        });
        let columns = [
            Some(quote(f.ciphertext)),
            Some(quote(f.iv)),
            Some(quote(f.tag)),
            Some(quote(f.data_key)),
            hash,
            plain,
        ];
        for (part, column) in PARTS.iter().zip(columns) {
            let column = column.unwrap_or_else(|| null_bytes.to_owned());
            list.push_str(&format!(", {column} AS f{i}_{part}"));
        }
    }
    Ok(list)
}

/// A page of rows: `WHERE <condition>`, ordered by id, at most `limit`; locked (`FOR UPDATE
/// SKIP LOCKED`) on PostgreSQL when `lock` is set. `condition` is built by the caller with
/// the same [`Sql`], so its values are bound.
pub(crate) async fn load_rows(
    conn: &mut Conn,
    table: &TableDescription,
    condition: impl FnOnce(&mut Sql) -> Result<()>,
    limit: i64,
    lock: bool,
) -> Result<Vec<StoredRow>> {
    let backend = backend_of(conn);
    let mut sql = Sql::new(backend);
    sql.push("SELECT ")
        .push(&select_list(table, backend)?)
        .push(" FROM ")
        .ident(&table.name)
        .push(" WHERE ");
    condition(&mut sql)?;
    sql.push(" ORDER BY ")
        .ident(primary_key(table)?)
        .push(" LIMIT ")
        .arg(Arg::Int(limit));
    if lock && backend == Backend::Postgres {
        sql.push(" FOR UPDATE SKIP LOCKED");
    }
    let rows: Vec<DynRow> = sql.fetch(conn).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Rows with ids after `after`, a page of `limit`, unlocked.
pub(crate) async fn page(
    conn: &mut Conn,
    table: &TableDescription,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredRow>> {
    let pk = primary_key(table)?;
    load_rows(
        conn,
        table,
        |sql| {
            sql.ident(pk).push(" > ").arg(Arg::Int(after));
            Ok(())
        },
        limit,
        false,
    )
    .await
}

pub(crate) fn backend_of(conn: &Conn) -> Backend {
    match conn {
        Conn::Postgres(_) => Backend::Postgres,
        Conn::Sqlite(_) => Backend::Sqlite,
    }
}

/// A row of [`select_list`], read by its aliases.
struct DynRow(StoredRow);

impl<DB> QueryableByName<DB> for DynRow
where
    DB: DieselBackend,
    i64: FromSql<BigInt, DB>,
    Option<Vec<u8>>: FromSql<Nullable<Binary>, DB>,
    Option<String>: FromSql<Nullable<Text>, DB>,
    Option<i64>: FromSql<Nullable<BigInt>, DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        let id = NamedRow::get::<BigInt, i64>(row, "id")?;
        let n_fields = NamedRow::get::<BigInt, i64>(row, "n_fields")?;
        let row_key = if let Ok(v) = NamedRow::get::<Nullable<BigInt>, Option<i64>>(row, "rk_int") {
            v.map_or(OwnedKey::None, OwnedKey::Int)
        } else if let Ok(v) = NamedRow::get::<Nullable<Text>, Option<String>>(row, "rk_text") {
            v.map_or(OwnedKey::None, OwnedKey::Text)
        } else if let Ok(v) = NamedRow::get::<Nullable<Binary>, Option<Vec<u8>>>(row, "rk_bytes") {
            v.map_or(OwnedKey::None, OwnedKey::Bytes)
        } else {
            OwnedKey::None
        };
        let mut values = Vec::new();
        for i in 0..n_fields {
            let get = |part: &str| {
                NamedRow::get::<Nullable<Binary>, Option<Vec<u8>>>(row, &format!("f{i}_{part}"))
            };
            values.push(StoredValue {
                ciphertext: get("ct")?,
                iv: get("iv")?,
                tag: get("tag")?,
                data_key: get("dk")?,
                hash: get("hash")?,
                plaintext: get("plain")?,
            });
        }
        Ok(DynRow(StoredRow {
            id,
            row_key,
            values,
        }))
    }
}

/// `SELECT COUNT(*)` of `table`'s rows matching `predicate` (SQL built from the description).
pub(crate) async fn count(
    conn: &mut Conn,
    table: &TableDescription,
    predicate: &str,
) -> Result<u64> {
    let mut sql = Sql::new(backend_of(conn));
    sql.push("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM ")
        .ident(&table.name)
        .push(" WHERE ")
        .push(predicate);
    let rows: Vec<Count> = sql.fetch(conn).await?;
    Ok(rows
        .into_iter()
        .next()
        .map_or(0, |c| u64::try_from(c.n).unwrap_or(0)))
}

/// The ids of `table`'s rows matching `predicate`.
pub(crate) async fn ids(
    conn: &mut Conn,
    table: &TableDescription,
    predicate: &str,
) -> Result<Vec<i64>> {
    let pk = quote(primary_key(table)?);
    let mut sql = Sql::new(backend_of(conn));
    sql.push(&format!("SELECT CAST({pk} AS BIGINT) AS id FROM "))
        .ident(&table.name)
        .push(" WHERE ")
        .push(predicate);
    let rows: Vec<Id> = sql.fetch(conn).await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// The last of the next `size` ids after `after` (`None`: from the first), `None` at the end
/// of the table.
pub(crate) async fn window_end(
    conn: &mut Conn,
    table: &TableDescription,
    after: Option<i64>,
    size: i64,
) -> Result<Option<i64>> {
    let pk = quote(primary_key(table)?);
    let mut sql = Sql::new(backend_of(conn));
    sql.push(&format!(
        "SELECT CAST(MAX(w.id) AS BIGINT) AS id FROM (SELECT {pk} AS id FROM "
    ))
    .ident(&table.name);
    if let Some(after) = after {
        sql.push(&format!(" WHERE {pk} > ")).arg(Arg::Int(after));
    }
    sql.push(&format!(" ORDER BY {pk} LIMIT "))
        .arg(Arg::Int(size))
        .push(") w");
    let rows: Vec<MaybeId> = sql.fetch(conn).await?;
    Ok(rows.into_iter().next().and_then(|r| r.id))
}

/// A row's id and the values of its columns.
type RowValues = (i64, Vec<Arg>);

/// Bound values per statement of [`update_rows`], under both backends' limits (SQLite's
/// 32,766 variables, PostgreSQL's 65,535 parameters).
const MAX_PARAMETERS: usize = 30_000;

/// Writes many rows of `table` in few statements: `UPDATE table SET <column> = v.<column>
/// ... FROM (VALUES (<id>, <values>), ...) AS v WHERE <pk> = v.<id> [AND guard]`, one per
/// distinct list of columns (rows written in one statement have the same columns) and per
/// [`MAX_PARAMETERS`]. An [`Arg::Null`] is written as `column = NULL`. Returns the number of
/// rows changed; the caller compares it with the rows it gave.
pub(crate) async fn update_rows(
    conn: &mut Conn,
    table: &TableDescription,
    rows: Vec<(i64, Vec<(&str, Arg)>)>,
    guard: Option<&str>,
) -> Result<usize> {
    let pk = primary_key(table)?;
    let backend = backend_of(conn);
    // Rows by the columns they write, in first-seen order.
    let mut groups: Vec<(Vec<&str>, Vec<RowValues>)> = Vec::new();
    for (id, sets) in rows {
        let columns: Vec<&str> = sets.iter().map(|(c, _)| *c).collect();
        let values: Vec<Arg> = sets.into_iter().map(|(_, a)| a).collect();
        match groups.iter_mut().find(|(c, _)| *c == columns) {
            Some((_, group)) => group.push((id, values)),
            None => groups.push((columns, vec![(id, values)])),
        }
    }
    let mut changed = 0;
    for (columns, group) in groups {
        // Columns set to a literal NULL are written by the SET alone, never bound.
        let bound: Vec<usize> = (0..columns.len())
            .filter(|i| !matches!(group[0].1[*i], Arg::Null))
            .collect();
        let per_statement = (MAX_PARAMETERS / (bound.len() + 1)).max(1);
        for chunk in group.chunks(per_statement) {
            let mut sql = Sql::new(backend);
            sql.push("UPDATE ").ident(&table.name).push(" SET ");
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.ident(column).push(" = ");
                match bound.iter().position(|b| *b == i) {
                    Some(position) => sql.push(&format!("v.column{}", position + 2)),
                    None => sql.push("NULL"),
                };
            }
            sql.push(" FROM (VALUES ");
            for (r, (id, values)) in chunk.iter().enumerate() {
                sql.push(if r == 0 { "(" } else { ", (" });
                typed(&mut sql, Arg::Int(*id));
                for i in &bound {
                    sql.push(", ");
                    typed(&mut sql, values[*i].clone());
                }
                sql.push(")");
            }
            sql.push(") AS v");
            if backend == Backend::Postgres {
                let names: Vec<String> = (1..=bound.len() + 1)
                    .map(|n| format!("column{n}"))
                    .collect();
                sql.push(&format!("({})", names.join(", ")));
            }
            sql.push(" WHERE ")
                .ident(&table.name)
                .push(".")
                .ident(pk)
                .push(" = v.column1");
            if let Some(guard) = guard {
                sql.push(" AND (").push(guard).push(")");
            }
            changed += sql.run(conn).await?;
        }
    }
    Ok(changed)
}

/// A bound value with its type spelled out on PostgreSQL (a `VALUES` list has no column
/// types of its own).
fn typed(sql: &mut Sql, arg: Arg) {
    let cast = match (&arg, sql.backend) {
        (_, Backend::Sqlite) | (Arg::Null, _) => None,
        (Arg::Int(_), _) => Some("BIGINT"),
        (Arg::Bytes(_), _) => Some("BYTEA"),
        (Arg::Timestamp(_), _) => Some("TIMESTAMP"),
    };
    match cast {
        Some(cast) => {
            sql.push("CAST(").arg(arg).push(&format!(" AS {cast})"));
        }
        None => {
            sql.arg(arg);
        }
    }
}

/// The assignments writing one value's stored form (all NULL for `None`) and, for a
/// searchable field, its hash.
pub(crate) fn value_sets(
    field: &FieldDescription,
    stored: Option<&StoredField>,
    hash: Option<Option<&[u8]>>,
) -> Vec<(&'static str, Arg)> {
    let bytes = |f: fn(&StoredField) -> &[u8]| Arg::Bytes(stored.map(|s| f(s).to_vec()));
    let mut sets = vec![
        (field.ciphertext, bytes(|s| s.ciphertext.as_bytes())),
        (field.iv, bytes(|s| s.nonce.as_bytes())),
        (field.tag, bytes(|s| s.tag.as_bytes())),
        (field.data_key, bytes(|s| s.data_key.as_bytes())),
    ];
    if let (Some(search), Some(hash)) = (field.search, hash) {
        sets.push((search.column, Arg::Bytes(hash.map(<[u8]>::to_vec))));
    }
    sets
}

/// Records that the jobs gave rows `ids` new data keys: `rotated_at = at` and
/// `rotation_count + 1`, for the columns the description names (nothing otherwise).
pub(crate) async fn mark_rotated(
    conn: &mut Conn,
    table: &TableDescription,
    ids: &[i64],
    at: NaiveDateTime,
) -> Result<usize> {
    if ids.is_empty() || (table.rotated_at.is_none() && table.rotation_count.is_none()) {
        return Ok(0);
    }
    let pk = primary_key(table)?;
    let mut sql = Sql::new(backend_of(conn));
    sql.push("UPDATE ").ident(&table.name).push(" SET ");
    if let Some(at_column) = table.rotated_at {
        sql.ident(at_column).push(" = ").arg(Arg::Timestamp(at));
    }
    if let Some(count) = table.rotation_count {
        if table.rotated_at.is_some() {
            sql.push(", ");
        }
        let count = quote(count);
        sql.push(&format!("{count} = {count} + 1"));
    }
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    sql.push(" WHERE ")
        .ident(pk)
        .push(&format!(" IN ({})", list.join(",")));
    sql.run(conn).await
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct MaybeId {
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<i64>,
}
