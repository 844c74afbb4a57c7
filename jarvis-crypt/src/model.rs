//! The runtime side of `#[derive(Encrypted)]`: the [`Encrypted`] trait, and the helpers that
//! generated code calls through `jarvis_crypt::__private`.

use async_trait::async_trait;

use crate::envelope::Encryptor;
use crate::error::{Result, RowError};
use crate::search::SearchSpec;

/// A searchable encrypted field as `#[derive(Encrypted)]` declares it: where its ciphertext
/// and its search hash are stored, and how the hash is made.
///
/// Jobs that recompute or check search hashes (a re-hash under a new search key, `verify`)
/// read this description instead of restating each model's normalizers, so a change of
/// normalizer in the model is seen by them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SearchColumn {
    /// The table.
    pub table: &'static str,
    /// The model's field.
    pub field: &'static str,
    /// The ciphertext column (the one bound into the value's associated data).
    pub ciphertext: &'static str,
    /// The search-hash column.
    pub hash: &'static str,
    /// Normalizers and truncation.
    pub spec: SearchSpec,
}

/// A model whose fields are stored encrypted, implemented by `#[derive(Encrypted)]`.
///
/// `Row` is the generated diesel row struct (the stored form of every encrypted field, the
/// plain fields as they are).
#[async_trait]
pub trait Encrypted: Sized + Send + Sync {
    /// The generated row struct: `Queryable`, `Selectable`, `Insertable`, `AsChangeset`.
    type Row: Send;

    /// The searchable fields, in declaration order (empty for a model without search).
    const SEARCH_COLUMNS: &'static [SearchColumn] = &[];

    /// Recomputes the search-hash columns of `row` from this model's values under
    /// `encryptor`'s root search key, leaving every other column as it is: what a re-hash
    /// under a new search key (or after a change of normalizer) writes. `row` is the stored
    /// row of this model.
    ///
    /// The derive implements it; the default, for implementations by hand, does nothing for a
    /// model without [`SEARCH_COLUMNS`](Self::SEARCH_COLUMNS) and refuses (configuration
    /// error) otherwise, rather than leave hashes under the old key unnoticed.
    fn rehash_row(&self, row: &mut Self::Row, encryptor: &Encryptor) -> Result<()> {
        let _ = (row, encryptor);
        match Self::SEARCH_COLUMNS.first() {
            None => Ok(()),
            Some(column) => Err(crate::Error::Configuration(format!(
                "`{}`: this model has search hashes but does not implement `rehash_row`",
                column.table
            ))),
        }
    }

    /// The row to write: every encrypted field sealed for its table, column and row key,
    /// search hashes computed, plaintext columns of migrating fields cleared.
    async fn encrypt_row(&self, encryptor: &Encryptor) -> Result<Self::Row>;

    /// The rows to write for many models, in order, as [`encrypt_row`](Self::encrypt_row)
    /// makes each, through one [`Encryptor::batch_scope`]: the batch leases a data key from
    /// the cache once, not once per row (again only when the key reaches a cache limit
    /// during the batch). The first failure ends the batch with its error.
    async fn encrypt_rows(models: &[Self], encryptor: &Encryptor) -> Result<Vec<Self::Row>> {
        let batch = encryptor.batch_scope();
        let mut rows = Vec::with_capacity(models.len());
        for model in models {
            rows.push(model.encrypt_row(&batch).await?);
        }
        Ok(rows)
    }

    /// The model of a row read back.
    async fn decrypt_row(row: Self::Row, encryptor: &Encryptor) -> Result<Self> {
        let mut models = Self::decrypt_rows(vec![row], encryptor).await?;
        models
            .pop()
            .ok_or_else(|| crate::Error::stored("decrypting one row gave no model"))
    }

    /// The models of many rows, unwrapping each distinct data key once. All or nothing: the
    /// first row that fails fails the call (its error is the value's, without a location;
    /// the location is logged at `warn`). To show the rows that decrypt and report the others,
    /// use [`decrypt_rows_each`](Self::decrypt_rows_each).
    async fn decrypt_rows(rows: Vec<Self::Row>, encryptor: &Encryptor) -> Result<Vec<Self>>;

    /// One result per row, in order: the model, or a [`RowError`] naming the row's position
    /// and where its bad value is (table, column, row key; never the value). A listing can
    /// show 999 rows and report the bad one.
    ///
    /// `#[derive(Encrypted)]` generates it as one batch, like
    /// [`decrypt_rows`](Self::decrypt_rows): the same cost, and a bad value (or a row whose
    /// stored-form columns are partly NULL) fails its own row only. The provided default,
    /// for a hand-written implementation, decrypts each row on its own through
    /// `decrypt_rows` (the data-key cache still unwraps each distinct key once).
    async fn decrypt_rows_each(
        rows: Vec<Self::Row>,
        encryptor: &Encryptor,
    ) -> Vec<std::result::Result<Self, RowError>> {
        let mut models = Vec::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            let (result, location) =
                support::locating(Self::decrypt_rows(vec![row], encryptor)).await;
            models.push(match result.map(|mut one| one.pop()) {
                Ok(Some(model)) => Ok(model),
                Ok(None) => Err(RowError::new(
                    index,
                    location,
                    crate::Error::stored("decrypting one row gave no model"),
                )),
                Err(error) => Err(RowError::new(index, location, error)),
            });
        }
        models
    }
}

/// A model loaded without its search-hash columns: what a read selects. Hashes serve
/// lookups, which filter on them in SQL; decrypting never reads them, so a listing or a scan
/// that loads them moves 32 bytes per searchable field per row for nothing.
/// `#[derive(Encrypted)]` implements it with a generated load shape (diesel `Queryable` and
/// `Selectable` over the same table, every column of the row but the search hashes):
///
/// ```
/// use diesel::prelude::*;
/// use jarvis_crypt::{Encrypted, EncryptedLoad, Encryptor};
///
/// mod schema {
///     diesel::table! {
///         users (id) {
///             id -> BigInt,
///             encrypted_email -> Binary,
///             email_iv -> Binary,
///             email_auth_tag -> Binary,
///             email_data_key -> Binary,
///             email_hash -> Binary,
///         }
///     }
/// }
/// use schema::users;
///
/// #[derive(Encrypted)]
/// #[encrypted(table = schema::users, bind = id)]
/// pub struct User {
///     pub id: i64,
///     #[encrypted(search(normalize = "email"))]
///     pub email: String,
/// }
///
/// type UserLoad = <User as EncryptedLoad>::Load;
///
/// /// Every user, without loading a single search hash.
/// async fn every_user(
///     conn: &mut SqliteConnection,
///     encryptor: &Encryptor,
/// ) -> Result<Vec<User>, Box<dyn std::error::Error>> {
///     let rows: Vec<UserLoad> = users::table.select(UserLoad::as_select()).load(conn)?;
///     Ok(User::decrypt_loaded(rows, encryptor).await?)
/// }
/// # fn main() {}
/// ```
#[async_trait]
pub trait EncryptedLoad: Encrypted {
    /// The stored row without its search-hash columns.
    type Load: Send + 'static;

    /// The models of rows loaded as [`Self::Load`], as
    /// [`decrypt_rows`](Encrypted::decrypt_rows) makes them from whole rows: each distinct
    /// data key unwrapped once, all or nothing.
    async fn decrypt_loaded(rows: Vec<Self::Load>, encryptor: &Encryptor) -> Result<Vec<Self>>;
}

mod columns;

pub(crate) mod support {
    //! Helpers for generated code. Not a public API.

    use std::marker::PhantomData;

    use crate::aad::{Binding, RowKey};
    use crate::envelope::Encryptor;
    use crate::error::{Error, Location, Result};
    pub use crate::search::search_input;
    use crate::search::{CustomNormalizer, SearchSpec};
    use crate::stored::{SearchHash, StoredField};
    use crate::table::{
        FieldDescription, RowKeyKind, SearchDescription, TableDescription, ValueKind,
    };

    /// A field of a table description.
    #[allow(clippy::too_many_arguments)]
    pub fn describe_field(
        field: &'static str,
        kind: ValueKind,
        nullable: bool,
        [ciphertext, iv, tag, data_key]: [&'static str; 4],
        bound_column: &'static str,
        search: Option<SearchDescription>,
        migrating_from: Option<&'static str>,
        normalize_with: Option<CustomNormalizer>,
    ) -> FieldDescription {
        FieldDescription {
            normalize_with,
            field,
            kind,
            nullable,
            ciphertext,
            iv,
            tag,
            data_key,
            bound_column,
            search,
            migrating_from,
        }
    }

    /// A table description: the SQL name and primary key of `T` as diesel renders them
    /// (`default_name`, the `table!` module's name, when they cannot be rendered).
    pub fn describe_table<T>(
        model: &'static str,
        default_name: &'static str,
        bound_name: &'static str,
        row_key: Option<(&'static str, RowKeyKind)>,
        [rotated_at, created_at, rotation_count]: [Option<&'static str>; 3],
        fields: Vec<FieldDescription>,
    ) -> TableDescription
    where
        T: diesel::Table + Default,
        T::PrimaryKey: diesel::query_builder::QueryFragment<diesel::pg::Pg>,
    {
        use diesel::query_builder::{QueryBuilder, QueryFragment};
        let mut builder = diesel::pg::PgQueryBuilder::default();
        let rendered = T::default()
            .primary_key()
            .to_sql(&mut builder, &diesel::pg::Pg)
            .ok()
            .and_then(|()| crate::table::parse_columns(&builder.finish()));
        let (name, primary_key) = match rendered {
            Some(columns) if !columns.is_empty() => (
                columns[0].0.clone(),
                columns.into_iter().map(|(_, column)| column).collect(),
            ),
            _ => (default_name.to_owned(), Vec::new()),
        };
        TableDescription {
            model,
            name,
            bound_name,
            primary_key,
            row_key: row_key.map(|(column, _)| column),
            row_key_kind: row_key.map(|(_, kind)| kind),
            rotated_at,
            created_at,
            rotation_count,
            fields,
        }
    }

    /// How a field's value becomes bytes and back.
    pub trait Codec {
        /// The field's (non-null) type.
        type Value;
        /// To plaintext bytes.
        fn encode(value: &Self::Value) -> Result<Vec<u8>>;
        /// From plaintext bytes.
        fn decode(bytes: Vec<u8>) -> Result<Self::Value>;
    }

    /// UTF-8 text.
    #[derive(Debug)]
    pub struct Text;
    impl Codec for Text {
        type Value = String;
        fn encode(value: &String) -> Result<Vec<u8>> {
            Ok(value.as_bytes().to_vec())
        }
        fn decode(bytes: Vec<u8>) -> Result<String> {
            String::from_utf8(bytes).map_err(|_| Error::InvalidPlaintext("UTF-8 string"))
        }
    }

    /// Raw bytes.
    #[derive(Debug)]
    pub struct Bytes;
    impl Codec for Bytes {
        type Value = Vec<u8>;
        fn encode(value: &Vec<u8>) -> Result<Vec<u8>> {
            Ok(value.clone())
        }
        fn decode(bytes: Vec<u8>) -> Result<Vec<u8>> {
            Ok(bytes)
        }
    }

    /// Any serde type, as JSON.
    #[derive(Debug)]
    pub struct Json<T>(PhantomData<T>);
    impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec for Json<T> {
        type Value = T;
        fn encode(value: &T) -> Result<Vec<u8>> {
            // The serde error could quote the value: say only what failed.
            serde_json::to_vec(value)
                .map_err(|_| Error::InvalidPlaintext("serializable JSON value"))
        }
        fn decode(bytes: Vec<u8>) -> Result<T> {
            serde_json::from_slice(&bytes)
                .map_err(|_| Error::InvalidPlaintext("JSON value of the field's type"))
        }
    }

    /// An owned row key.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum OwnedRowKey {
        /// `bind = none`.
        None,
        /// Integer key.
        Int(i64),
        /// Text key.
        Text(String),
        /// Binary key.
        Bytes(Vec<u8>),
    }

    impl OwnedRowKey {
        fn borrow(&self) -> RowKey<'_> {
            match self {
                OwnedRowKey::None => RowKey::None,
                OwnedRowKey::Int(id) => RowKey::Int(*id),
                OwnedRowKey::Text(id) => RowKey::Text(id),
                OwnedRowKey::Bytes(id) => RowKey::Bytes(id),
            }
        }
    }

    /// Field types that can be a row key (`bind = field`).
    pub trait BindKey {
        /// The form of the key in the associated data.
        const KIND: RowKeyKind;
        /// The key.
        fn row_key(&self) -> OwnedRowKey;
    }
    macro_rules! int_keys {
        ($($t:ty),*) => {$(
            impl BindKey for $t {
                const KIND: RowKeyKind = RowKeyKind::Int;
                fn row_key(&self) -> OwnedRowKey {
                    OwnedRowKey::Int(i64::from(*self))
                }
            }
        )*};
    }
    int_keys!(i16, i32, i64, u8, u16, u32);
    impl BindKey for String {
        const KIND: RowKeyKind = RowKeyKind::Text;
        fn row_key(&self) -> OwnedRowKey {
            OwnedRowKey::Text(self.clone())
        }
    }
    impl BindKey for Vec<u8> {
        const KIND: RowKeyKind = RowKeyKind::Bytes;
        fn row_key(&self) -> OwnedRowKey {
            OwnedRowKey::Bytes(self.clone())
        }
    }

    /// Seals a value (if any) for its place.
    pub async fn seal<C: Codec>(
        encryptor: &Encryptor,
        table: &str,
        column: &str,
        key: &OwnedRowKey,
        value: Option<&C::Value>,
    ) -> Result<Option<StoredField>> {
        let Some(value) = value else { return Ok(None) };
        let bytes = zeroize::Zeroizing::new(C::encode(value)?);
        let binding = Binding::new(table, column, key.borrow());
        encryptor.encrypt(&binding, &bytes).await.map(Some)
    }

    /// The search hash of a text value (if any).
    pub fn search_hash(
        encryptor: &Encryptor,
        table: &str,
        column: &str,
        (spec, custom): (SearchSpec, Option<CustomNormalizer>),
        value: Option<&str>,
    ) -> Result<Option<SearchHash>> {
        value
            .map(|v| encryptor.search_hash(table, column, spec, &search_input(spec, custom, v)))
            .transpose()
    }

    /// Keeps the candidates whose field, normalized, equals the value normalized: a lookup
    /// through a truncated search hash never returns a wrong row.
    pub fn confirm<M>(
        candidates: Vec<M>,
        (spec, custom): (SearchSpec, Option<CustomNormalizer>),
        value: &str,
        field: impl Fn(&M) -> Option<&str>,
    ) -> Vec<M> {
        let normal = |v: &str| {
            spec.normalize
                .apply(&search_input(spec, custom, v))
                .into_owned()
        };
        let wanted = normal(value);
        candidates
            .into_iter()
            .filter(|m| field(m).is_some_and(|v| normal(v) == wanted))
            .collect()
    }

    pub use super::columns::{
        BinarySqlType, Columns, HashColumn, HashFilter, HashSqlType, Mistyped, StoredAs,
        StoredColumn, StoredSqlType, binary_column, hash_filter,
    };

    /// Where the value of `column` in the row of `key` is.
    pub fn locate(table: &'static str, column: &'static str, key: &OwnedRowKey) -> Location {
        Location::of(&Binding::new(table, column, key.borrow()))
    }

    /// A row of `decrypt_rows_each` whose stored form does not stage: the value's location
    /// and the error.
    pub fn staging_failed<T>(
        table: &'static str,
        column: &'static str,
        key: &OwnedRowKey,
        error: Error,
    ) -> std::result::Result<T, (Location, Error)> {
        Err((locate(table, column, key), error))
    }

    /// A row of `decrypt_rows_each` whose value does not decrypt: its [`RowError`].
    pub fn row_failed<T>(
        index: usize,
        table: &'static str,
        column: &'static str,
        key: &OwnedRowKey,
        error: Error,
    ) -> std::result::Result<T, crate::RowError> {
        Err(crate::RowError::new(
            index,
            Some(locate(table, column, key)),
            error,
        ))
    }

    /// The value of a NOT NULL field.
    pub fn required<V>(value: Option<V>, field: &'static str) -> Result<V> {
        value.ok_or_else(|| Error::stored(format!("`{field}` has no value in the row")))
    }

    /// Decrypts the stored forms of many rows at once.
    #[derive(Debug, Default)]
    pub struct Batch {
        places: Vec<(&'static str, &'static str, OwnedRowKey, StoredField)>,
        results: Vec<Option<Result<Vec<u8>>>>,
    }

    impl Batch {
        /// An empty batch.
        pub fn new() -> Self {
            Self::default()
        }

        /// Adds a stored form (if any); returns its ticket.
        pub fn push(
            &mut self,
            table: &'static str,
            column: &'static str,
            key: &OwnedRowKey,
            stored: Option<StoredField>,
        ) -> Option<usize> {
            let stored = stored?;
            self.places.push((table, column, key.clone(), stored));
            Some(self.places.len() - 1)
        }

        /// Decrypts everything added.
        pub async fn run(&mut self, encryptor: &Encryptor) {
            let items: Vec<(Binding<'_>, &StoredField)> = self
                .places
                .iter()
                .map(|(table, column, key, stored)| {
                    (Binding::new(table, column, key.borrow()), stored)
                })
                .collect();
            self.results = encryptor
                .decrypt_many(&items)
                .await
                .into_iter()
                .map(Some)
                .collect();
        }

        /// The plaintext of a ticket, decoded. A failure is logged (at `warn`) with the
        /// value's location, which [`locating`] also hands to its caller.
        pub fn take<C: Codec>(&mut self, ticket: Option<usize>) -> Result<Option<C::Value>> {
            let Some(ticket) = ticket else {
                return Ok(None);
            };
            let result = self
                .results
                .get_mut(ticket)
                .and_then(Option::take)
                .ok_or_else(|| Error::stored("batch ticket used twice"))
                .and_then(|r| r)
                .and_then(C::decode);
            match result {
                Ok(value) => Ok(Some(value)),
                Err(error) => {
                    if let Some((table, column, key, _)) = self.places.get(ticket) {
                        failed_at(
                            Location::of(&Binding::new(table, column, key.borrow())),
                            &error,
                        );
                    }
                    Err(error)
                }
            }
        }
    }

    tokio::task_local! {
        /// Where the first value that failed in the scope of [`locating`] is.
        static FAILED_AT: std::cell::RefCell<Option<Location>>;
    }

    /// Records (and logs) the location of a value that failed to decrypt.
    fn failed_at(location: Location, error: &Error) {
        tracing::warn!(
            table = %location.table,
            column = %location.column,
            row_key = location.row_key.as_deref().unwrap_or("none"),
            kind = error.kind().as_str(),
            "a stored value failed to decrypt"
        );
        let _ = FAILED_AT.try_with(|cell| {
            cell.borrow_mut().get_or_insert(location);
        });
    }

    /// Runs `work`, returning its output and the location of the first value that failed to
    /// decrypt in it (if any).
    pub(crate) async fn locating<F: std::future::Future>(work: F) -> (F::Output, Option<Location>) {
        FAILED_AT
            .scope(std::cell::RefCell::new(None), async move {
                let output = work.await;
                let location = FAILED_AT.with(|cell| cell.borrow_mut().take());
                (output, location)
            })
            .await
    }

    use diesel::sql_types::Nullable;

    /// The SQL type of a column.
    pub type SqlTypeOf<C> = <C as diesel::Expression>::SqlType;

    /// The SQL types of the four stored-form columns of an `Option` field: all nullable.
    #[diagnostic::on_unimplemented(
        message = "an `Option` field needs nullable stored-form columns, but its columns have SQL types `{Self}`",
        label = "this field is an `Option`: its ciphertext, IV, tag and data-key columns must be `Nullable<Binary>`",
        note = "a `None` is stored as NULL in every stored-form column: make them nullable in the `table!` (and the database), or the field not an `Option`"
    )]
    pub trait OptionFieldColumns {}
    // Nullable of any SQL type: a nullable column of the wrong type is `binary_column`'s error
    // alone.
    #[diagnostic::do_not_recommend]
    impl<C, I, A, D> OptionFieldColumns for (Nullable<C>, Nullable<I>, Nullable<A>, Nullable<D>) {}

    /// Compiles only when the four columns `T` of an `Option` field are nullable.
    pub const fn option_field_columns<T: OptionFieldColumns>() {}

    /// The SQL types of the four stored-form columns of a `migrating_from` field: all
    /// nullable.
    #[diagnostic::on_unimplemented(
        message = "a `migrating_from` field needs nullable stored-form columns, but its columns have SQL types `{Self}`",
        label = "rows not yet encrypted have NULL in the ciphertext, IV, tag and data-key columns: they must be `Nullable<Binary>`",
        note = "make the stored-form columns nullable while the table is being migrated; when every row is encrypted, remove `migrating_from` and make them NOT NULL"
    )]
    pub trait MigratingFieldColumns {}
    #[diagnostic::do_not_recommend]
    impl<C, I, A, D> MigratingFieldColumns for (Nullable<C>, Nullable<I>, Nullable<A>, Nullable<D>) {}

    /// Compiles only when the four columns `T` of a `migrating_from` field are nullable.
    pub const fn migrating_field_columns<T: MigratingFieldColumns>() {}

    /// The SQL type of the search-hash column of an `Option` field: nullable.
    #[diagnostic::on_unimplemented(
        message = "the search-hash column of an `Option` field must be nullable, but it has SQL type `{Self}`",
        label = "a `None` has no search hash: this field's hash column must be `Nullable<Binary>`",
        note = "a search-hash column follows its field's nullability: make it nullable in the `table!` (and the database), or the field not an `Option`"
    )]
    pub trait OptionFieldHash {}
    #[diagnostic::do_not_recommend]
    impl<T> OptionFieldHash for Nullable<T> {}

    /// Compiles only when the search-hash column `T` of an `Option` field is nullable.
    pub const fn option_field_hash<T: OptionFieldHash>() {}

    /// What a `redact_debug` model's `Debug` prints for an encrypted field: `<redacted>`,
    /// whatever the value (or its absence).
    pub struct Redacted;
    impl std::fmt::Debug for Redacted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("<redacted>")
        }
    }
}
