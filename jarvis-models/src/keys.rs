//! Key material kept in the database, wrapped by the key provider: the root search key when
//! `ENCRYPTION_SEARCH_SALT` is not set.

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{KeyProvider, KeyPurpose, SearchKey, WrappedKey};
use secrecy::ExposeSecret;

use crate::db::Database;
use crate::error::ModelError;
use crate::schema::jarvis_keys;
use crate::with_conn;

/// The `jarvis_keys.name` of the root search key.
pub const SEARCH_KEY_NAME: &str = "search-key";

#[derive(Insertable)]
#[diesel(table_name = jarvis_keys)]
struct NewKey<'a> {
    name: &'a str,
    wrapped_key: &'a [u8],
    master_key_id: &'a str,
    created_at: chrono::NaiveDateTime,
}

/// The root search key stored in `jarvis_keys`, generated (a fresh 256-bit data key of the
/// provider, purpose `search-key`) and stored wrapped on first use. Concurrent first uses
/// agree on one key: the name is unique and the first insert wins.
pub async fn stored_search_key(
    db: &Database,
    provider: &dyn KeyProvider,
) -> Result<SearchKey, ModelError> {
    let mut conn = db.get().await?;
    let existing: Option<Vec<u8>> = with_conn!(&mut conn, |c| jarvis_keys::table
        .filter(jarvis_keys::name.eq(SEARCH_KEY_NAME))
        .select(jarvis_keys::wrapped_key)
        .first(c)
        .await
        .optional()?);
    let wrapped = match existing {
        Some(bytes) => bytes,
        None => {
            let generated = provider.generate_data_key(KeyPurpose::SearchKey).await?;
            let master_key_id = provider.master_key().key_id;
            let row = NewKey {
                name: SEARCH_KEY_NAME,
                wrapped_key: generated.wrapped.as_bytes(),
                master_key_id: &master_key_id,
                created_at: chrono::Utc::now().naive_utc(),
            };
            with_conn!(&mut conn, |c| diesel::insert_into(jarvis_keys::table)
                .values(&row)
                .on_conflict(jarvis_keys::name)
                .do_nothing()
                .execute(c)
                .await?);
            with_conn!(&mut conn, |c| jarvis_keys::table
                .filter(jarvis_keys::name.eq(SEARCH_KEY_NAME))
                .select(jarvis_keys::wrapped_key)
                .first(c)
                .await?)
        }
    };
    let key = provider
        .unwrap_data_key(&WrappedKey::new(wrapped)?, KeyPurpose::SearchKey)
        .await?;
    Ok(SearchKey::new(key.expose_secret().to_vec())?)
}

/// Re-wraps every key of `jarvis_keys` that is not yet under the master key `to` (for
/// `rotate --to-key`, so the old master key can be retired); returns how many were.
pub async fn rewrap_stored_keys(
    db: &Database,
    provider: &dyn KeyProvider,
    to: &jarvis_crypt::MasterKeyRef,
) -> Result<u64, ModelError> {
    let mut conn = db.get().await?;
    let rows: Vec<(i64, String, Vec<u8>)> = with_conn!(&mut conn, |c| jarvis_keys::table
        .select((jarvis_keys::id, jarvis_keys::name, jarvis_keys::wrapped_key))
        .load(c)
        .await?);
    let mut rewrapped = 0;
    for (id, name, bytes) in rows {
        let wrapped = WrappedKey::new(bytes)?;
        if wrapped.envelope()?.master_key() == Some(to) {
            continue;
        }
        if name != SEARCH_KEY_NAME {
            return Err(jarvis_crypt::Error::Configuration(format!(
                "jarvis_keys `{name}`: unknown key name, not re-wrapped"
            ))
            .into());
        }
        let new = provider
            .rewrap_data_key(&wrapped, KeyPurpose::SearchKey, to)
            .await?;
        with_conn!(&mut conn, |c| diesel::update(jarvis_keys::table.find(id))
            .set((
                jarvis_keys::wrapped_key.eq(new.as_bytes()),
                jarvis_keys::master_key_id.eq(&to.key_id),
            ))
            .execute(c)
            .await?);
        rewrapped += 1;
    }
    Ok(rewrapped)
}
