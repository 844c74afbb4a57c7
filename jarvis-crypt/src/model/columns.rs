//! The Rust types of stored-form columns, from their SQL types in the diesel table, for the
//! generated row struct.
//!
//! A `Binary` column holds `T`, a `Nullable<Binary>` one `Option<T>`. A column of any other
//! SQL type of diesel holds a [`Mistyped`] placeholder, which satisfies every bound of
//! diesel's derives: the mistake is then reported once, by [`binary_column`], at the user's
//! spelling of the column, instead of once per derive and per trait the row type misses.

use std::fmt;
use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, Queryable};
// The bound-value expression of diesel, at the path its own `AsExpression` derive uses.
use diesel::expression::{AsExpression, Expression, TypedExpressionType};
use diesel::internal::derives::as_expression::Bound;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{self as st, Nullable, SingleValue, SqlType};

use crate::error::{Error, Result};
use crate::stored::{AuthTag, Ciphertext, Nonce, SearchHash, StoredField, WrappedKey};

/// The SQL types a stored-form column may have.
#[diagnostic::on_unimplemented(
    message = "a stored-form column has SQL type `{Self}`, but encrypted columns must be `Binary` or `Nullable<Binary>`",
    label = "this column is not `Binary` in the diesel table",
    note = "the ciphertext, IV, tag, data-key and search-hash columns are `BYTEA` on PostgreSQL and `BLOB` on SQLite: `-> Binary` (or `-> Nullable<Binary>`) in the `table!`"
)]
pub trait BinarySqlType {}
impl BinarySqlType for st::Binary {}
impl BinarySqlType for Nullable<st::Binary> {}

/// Compiles only when `T`, the SQL type of a stored-form column, is `Binary` or
/// `Nullable<Binary>`.
pub const fn binary_column<T: BinarySqlType>() {}

/// The Rust type a column of this SQL type holds in the row struct.
#[diagnostic::on_unimplemented(
    message = "a stored-form column has SQL type `{Self}`, but encrypted columns must be `Binary` or `Nullable<Binary>`",
    label = "this column is not `Binary` in the diesel table"
)]
pub trait StoredSqlType {
    /// `T`, `Option<T>`, or [`Mistyped<T>`].
    type Wrap<T>;
}
impl StoredSqlType for st::Binary {
    type Wrap<T> = T;
}
impl StoredSqlType for Nullable<st::Binary> {
    type Wrap<T> = Option<T>;
}

macro_rules! mistyped {
    ($($ty:ty),* $(,)?) => {$(
        impl StoredSqlType for $ty {
            type Wrap<T> = Mistyped<T>;
        }
        impl StoredSqlType for Nullable<$ty> {
            type Wrap<T> = Mistyped<T>;
        }
        impl HashSqlType for $ty {
            type Filter<C: Expression<SqlType = Self>> = Mistyped<C>;
            fn filter<C: Expression<SqlType = Self>>(_: C, _: SearchHash) -> Mistyped<C> {
                Mistyped(PhantomData)
            }
        }
        impl HashSqlType for Nullable<$ty> {
            type Filter<C: Expression<SqlType = Self>> = Mistyped<C>;
            fn filter<C: Expression<SqlType = Self>>(_: C, _: SearchHash) -> Mistyped<C> {
                Mistyped(PhantomData)
            }
        }
    )*};
}
mistyped!(
    st::Bool,
    st::SmallInt,
    st::Integer,
    st::BigInt,
    st::Float,
    st::Double,
    st::Numeric,
    st::Text,
    st::Date,
    st::Time,
    st::Timestamp,
    st::Interval,
    st::Json,
    st::Jsonb,
    st::Uuid,
    st::Timestamptz,
);

/// The SQL types a search-hash column may have, and the filter of a lookup on one.
#[diagnostic::on_unimplemented(
    message = "a search-hash column has SQL type `{Self}`, but it must be `Binary` or `Nullable<Binary>`",
    label = "this column is not `Binary` in the diesel table"
)]
pub trait HashSqlType: Sized {
    /// `diesel::dsl::Eq<C, SearchHash>`, or [`Mistyped<C>`].
    type Filter<C: Expression<SqlType = Self>>;
    /// `column = hash`.
    fn filter<C: Expression<SqlType = Self>>(column: C, hash: SearchHash) -> Self::Filter<C>;
}
impl HashSqlType for st::Binary {
    type Filter<C: Expression<SqlType = Self>> = diesel::dsl::Eq<C, SearchHash>;
    fn filter<C: Expression<SqlType = Self>>(column: C, hash: SearchHash) -> Self::Filter<C> {
        diesel::ExpressionMethods::eq(column, hash)
    }
}
impl HashSqlType for Nullable<st::Binary> {
    type Filter<C: Expression<SqlType = Self>> = diesel::dsl::Eq<C, SearchHash>;
    fn filter<C: Expression<SqlType = Self>>(column: C, hash: SearchHash) -> Self::Filter<C> {
        diesel::ExpressionMethods::eq(column, hash)
    }
}

/// The filter of a lookup on the search-hash column `C`: `C = hash`, which is
/// `diesel::dsl::Eq<C, SearchHash>` for a `Binary` column.
pub type HashFilter<C> = <<C as Expression>::SqlType as HashSqlType>::Filter<C>;

/// `column = hash`.
pub fn hash_filter<C>(column: C, hash: SearchHash) -> HashFilter<C>
where
    C: Expression,
    C::SqlType: HashSqlType,
{
    <C::SqlType as HashSqlType>::filter(column, hash)
}

/// The Rust type of column `C` holding `T`: `T` or `Option<T>` by the column's nullability.
pub type StoredAs<C, T> = <<C as Expression>::SqlType as StoredSqlType>::Wrap<T>;

/// What a stored-form column of the wrong SQL type holds in the row struct. It stands in for
/// every trait diesel's derives ask of a field so that the program fails to compile with one
/// error, [`binary_column`]'s; it holds no value and is never built by working code.
pub struct Mistyped<T>(PhantomData<T>);

impl<T> fmt::Debug for Mistyped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mistyped")
    }
}

impl<T> Clone for Mistyped<T> {
    fn clone(&self) -> Self {
        Mistyped(PhantomData)
    }
}

const MISTYPED: &str = "a stored-form column is not `Binary` in the diesel table";

impl<T, ST, DB: Backend> FromSql<ST, DB> for Mistyped<T> {
    fn from_sql(_bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        Err(MISTYPED.into())
    }
}

impl<T, ST, DB> Queryable<ST, DB> for Mistyped<T>
where
    ST: SingleValue,
    DB: Backend,
{
    type Row = Self;

    fn build(row: Self) -> deserialize::Result<Self> {
        Ok(row)
    }
}

impl<T, ST, DB: Backend> ToSql<ST, DB> for Mistyped<T> {
    fn to_sql<'b>(&'b self, _out: &mut Output<'b, '_, DB>) -> serialize::Result {
        Err(MISTYPED.into())
    }
}

impl<T, ST> AsExpression<ST> for Mistyped<T>
where
    ST: SqlType + TypedExpressionType,
{
    type Expression = Bound<ST, Self>;

    fn as_expression(self) -> Self::Expression {
        Bound::new(self)
    }
}

impl<T, ST> AsExpression<ST> for &Mistyped<T>
where
    ST: SqlType + TypedExpressionType,
{
    type Expression = Bound<ST, Self>;

    fn as_expression(self) -> Self::Expression {
        Bound::new(self)
    }
}

/// One stored-form column holding a `T`: `T` (NOT NULL), `Option<T>` (nullable) or
/// [`Mistyped<T>`].
pub trait StoredColumn<T>: Sized {
    /// The column for a value (`None`: NULL); `None` when the column cannot hold it.
    fn from_value(value: Option<T>) -> Option<Self>;
    /// The column's value (`None`: NULL).
    fn into_value(self) -> Option<T>;
}
impl<T> StoredColumn<T> for T {
    fn from_value(value: Option<T>) -> Option<Self> {
        value
    }
    fn into_value(self) -> Option<T> {
        Some(self)
    }
}
impl<T> StoredColumn<T> for Option<T> {
    fn from_value(value: Option<T>) -> Option<Self> {
        Some(value)
    }
    fn into_value(self) -> Option<T> {
        self
    }
}
impl<T> StoredColumn<T> for Mistyped<T> {
    fn from_value(_value: Option<T>) -> Option<Self> {
        None
    }
    fn into_value(self) -> Option<T> {
        None
    }
}

/// The four columns of a stored form, each NOT NULL or nullable.
pub trait Columns: Sized {
    /// Columns from a stored form (`None`: NULL columns, refused when NOT NULL).
    fn from_stored(stored: Option<StoredField>, field: &'static str) -> Result<Self>;
    /// The stored form of the columns (`None` when all are NULL).
    fn into_stored(self, field: &'static str) -> Result<Option<StoredField>>;
}

impl<C, I, A, D> Columns for (C, I, A, D)
where
    C: StoredColumn<Ciphertext>,
    I: StoredColumn<Nonce>,
    A: StoredColumn<AuthTag>,
    D: StoredColumn<WrappedKey>,
{
    fn from_stored(stored: Option<StoredField>, field: &'static str) -> Result<Self> {
        let (ciphertext, nonce, tag, data_key) = match stored {
            Some(s) => (
                Some(s.ciphertext),
                Some(s.nonce),
                Some(s.tag),
                Some(s.data_key),
            ),
            None => (None, None, None, None),
        };
        match (
            C::from_value(ciphertext),
            I::from_value(nonce),
            A::from_value(tag),
            D::from_value(data_key),
        ) {
            (Some(c), Some(i), Some(a), Some(d)) => Ok((c, i, a, d)),
            _ => Err(Error::Configuration(format!(
                "`{field}` is NULL but its columns are NOT NULL"
            ))),
        }
    }

    fn into_stored(self, field: &'static str) -> Result<Option<StoredField>> {
        match (
            self.0.into_value(),
            self.1.into_value(),
            self.2.into_value(),
            self.3.into_value(),
        ) {
            (Some(ciphertext), Some(nonce), Some(tag), Some(data_key)) => Ok(Some(StoredField {
                ciphertext,
                nonce,
                tag,
                data_key,
            })),
            (None, None, None, None) => Ok(None),
            _ => Err(Error::stored(format!(
                "the columns of `{field}` are partly NULL"
            ))),
        }
    }
}

/// A search-hash column, NOT NULL or nullable.
pub trait HashColumn: Sized {
    /// The column's value for a hash (`None`: the field is NULL).
    fn from_hash(hash: Option<SearchHash>, field: &'static str) -> Result<Self>;
}
impl HashColumn for SearchHash {
    fn from_hash(hash: Option<SearchHash>, field: &'static str) -> Result<Self> {
        hash.ok_or_else(|| {
            Error::Configuration(format!("`{field}` is NULL but its hash column is NOT NULL"))
        })
    }
}
impl HashColumn for Option<SearchHash> {
    fn from_hash(hash: Option<SearchHash>, _field: &'static str) -> Result<Self> {
        Ok(hash)
    }
}
impl HashColumn for Mistyped<SearchHash> {
    fn from_hash(_hash: Option<SearchHash>, field: &'static str) -> Result<Self> {
        Err(Error::Configuration(format!(
            "the search-hash column of `{field}` is not `Binary`"
        )))
    }
}
