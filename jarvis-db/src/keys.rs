//! Key material kept in the database, wrapped by the key provider: the root search key when
//! `ENCRYPTION_SEARCH_SALT` is not set; and the identity of the root search key.
//!
//! # The search key's identity
//!
//! A wrong or regenerated root search key would make every lookup find nothing, silently. So
//! the database records the key's fingerprint ([`SearchKey::fingerprint`], in
//! `jarvis_settings`, name [`SEARCH_KEY_FINGERPRINT`]), and every process checks its key
//! against it at start ([`check_search_key`]): the `jarvis` CLI, the repositories
//! (jarvis-models' `Store`, before their first search hash) and an application that calls it.
//! A mismatch is a [`jarvis_crypt::Error::Configuration`] naming both fingerprints' prefixes.
//!
//! The fingerprint is recorded, and a stored root key created, only by an explicit step:
//! `jarvis init`, [`record_search_key`], or [`stored_search_key`] (which creates the stored
//! key when there is none). Jobs and repositories load the stored key with
//! [`load_search_key`], which never creates one. A deliberate change of search key goes
//! through [`replace_search_key_fingerprint`], which knows the old and the new fingerprint.

use diesel::{ExpressionMethods, Insertable, OptionalExtension, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{KeyProvider, KeyPurpose, SearchKey, SearchKeyFingerprint, WrappedKey};
use secrecy::ExposeSecret;

use crate::db::Database;
use crate::error::ModelError;
use crate::schema::{jarvis_keys, jarvis_settings};
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

/// The `jarvis_settings.name` of the root search key's fingerprint.
pub const SEARCH_KEY_FINGERPRINT: &str = "search-key-fingerprint";

/// The fingerprint recorded for the database's root search key, if any.
pub async fn recorded_search_key_fingerprint(
    db: &Database,
) -> Result<Option<SearchKeyFingerprint>, ModelError> {
    let mut conn = db.get().await?;
    let value: Option<String> = with_conn!(&mut conn, |c| jarvis_settings::table
        .find(SEARCH_KEY_FINGERPRINT)
        .select(jarvis_settings::value)
        .first(c)
        .await
        .optional()?);
    Ok(value
        .map(|hex| SearchKeyFingerprint::from_hex(&hex))
        .transpose()?)
}

/// Checks the search-key fingerprint `given` against the one recorded for the database: a
/// configuration error when another is recorded ([`jarvis_crypt::Error::Configuration`]);
/// `Ok` when it matches or none is recorded (nothing to check).
pub async fn check_search_key_fingerprint(
    db: &Database,
    given: &SearchKeyFingerprint,
) -> Result<(), ModelError> {
    match recorded_search_key_fingerprint(db).await? {
        Some(recorded) if &recorded != given => Err(mismatch(&recorded, given)),
        _ => Ok(()),
    }
}

fn mismatch(recorded: &SearchKeyFingerprint, given: &SearchKeyFingerprint) -> ModelError {
    jarvis_crypt::Error::Configuration(format!(
        "the search key (fingerprint {}) is not the one recorded for this database \
         (fingerprint {}): lookups would find nothing; set ENCRYPTION_SEARCH_SALT to the \
         database's search key, or change it deliberately with `jarvis rotate --rehash`",
        given.short(),
        recorded.short()
    ))
    .into()
}

/// Checks `key` against the fingerprint recorded for the database: `Ok(true)` when it
/// matches, `Ok(false)` when none is recorded (nothing to check; `jarvis init` records it),
/// and a configuration error when another key is recorded. Call it at start.
pub async fn check_search_key(db: &Database, key: &SearchKey) -> Result<bool, ModelError> {
    match recorded_search_key_fingerprint(db).await? {
        None => Ok(false),
        Some(recorded) if recorded == key.fingerprint() => Ok(true),
        Some(recorded) => Err(mismatch(&recorded, &key.fingerprint())),
    }
}

/// Records `key`'s fingerprint as the database's search key (the explicit step): `Ok(true)`
/// when it was recorded now, `Ok(false)` when it was already, and a configuration error
/// when another key is recorded (concurrent first records agree: the first insert wins).
pub async fn record_search_key(db: &Database, key: &SearchKey) -> Result<bool, ModelError> {
    let fingerprint = key.fingerprint();
    let mut conn = db.get().await?;
    let inserted = with_conn!(&mut conn, |c| diesel::insert_into(jarvis_settings::table)
        .values((
            jarvis_settings::name.eq(SEARCH_KEY_FINGERPRINT),
            jarvis_settings::value.eq(fingerprint.to_string()),
            jarvis_settings::updated_at.eq(chrono::Utc::now().naive_utc()),
        ))
        .on_conflict(jarvis_settings::name)
        .do_nothing()
        .execute(c)
        .await?);
    drop(conn);
    if inserted == 1 {
        return Ok(true);
    }
    check_search_key(db, key).await.map(|_| false)
}

/// Replaces the recorded fingerprint `old` by `new`, for a deliberate change of search key
/// once every search hash has been recomputed under the new key. Refused (configuration
/// error) when the recorded fingerprint is not `old`.
pub async fn replace_search_key_fingerprint(
    db: &Database,
    old: &SearchKeyFingerprint,
    new: &SearchKeyFingerprint,
) -> Result<(), ModelError> {
    let mut conn = db.get().await?;
    let updated = with_conn!(&mut conn, |c| diesel::update(
        jarvis_settings::table
            .find(SEARCH_KEY_FINGERPRINT)
            .filter(jarvis_settings::value.eq(old.to_string()))
    )
    .set((
        jarvis_settings::value.eq(new.to_string()),
        jarvis_settings::updated_at.eq(chrono::Utc::now().naive_utc()),
    ))
    .execute(c)
    .await?);
    drop(conn);
    if updated == 1 {
        return Ok(());
    }
    match recorded_search_key_fingerprint(db).await? {
        Some(recorded) if recorded == *new => Ok(()),
        Some(recorded) => Err(mismatch(&recorded, old)),
        None => Err(jarvis_crypt::Error::Configuration(
            "no search key fingerprint is recorded for this database: record one with `jarvis init`"
                .into(),
        )
        .into()),
    }
}

/// The root search key stored wrapped in `jarvis_keys`, if there is one; never creates one
/// (what jobs and repositories use). Checked against the recorded fingerprint.
pub async fn load_search_key(
    db: &Database,
    provider: &dyn KeyProvider,
) -> Result<Option<SearchKey>, ModelError> {
    let Some(wrapped) = stored_wrapped_search_key(db).await? else {
        return Ok(None);
    };
    let key = unwrap_search_key(provider, wrapped).await?;
    check_search_key(db, &key).await?;
    Ok(Some(key))
}

/// [`load_search_key`] through whichever of `encryptor`'s providers holds the stored key's
/// master key (during a rotation, the old or the new one).
pub async fn load_search_key_with(
    db: &Database,
    encryptor: &jarvis_crypt::Encryptor,
) -> Result<Option<SearchKey>, ModelError> {
    let Some(wrapped) = stored_wrapped_search_key(db).await? else {
        return Ok(None);
    };
    let key = encryptor
        .unwrap_key(&WrappedKey::new(wrapped)?, KeyPurpose::SearchKey)
        .await?;
    let key = SearchKey::new(key.expose_secret().to_vec())?;
    check_search_key(db, &key).await?;
    Ok(Some(key))
}

async fn stored_wrapped_search_key(db: &Database) -> Result<Option<Vec<u8>>, ModelError> {
    let mut conn = db.get().await?;
    let existing: Option<Vec<u8>> = with_conn!(&mut conn, |c| jarvis_keys::table
        .filter(jarvis_keys::name.eq(SEARCH_KEY_NAME))
        .select(jarvis_keys::wrapped_key)
        .first(c)
        .await
        .optional()?);
    Ok(existing)
}

async fn unwrap_search_key(
    provider: &dyn KeyProvider,
    wrapped: Vec<u8>,
) -> Result<SearchKey, ModelError> {
    let key = provider
        .unwrap_data_key(&WrappedKey::new(wrapped)?, KeyPurpose::SearchKey)
        .await?;
    Ok(SearchKey::new(key.expose_secret().to_vec())?)
}

/// The root search key stored in `jarvis_keys`, generated (a fresh 256-bit data key of the
/// provider, purpose `search-key`) and stored wrapped when there is none, and its fingerprint
/// recorded: an explicit step (`jarvis init` calls it), never a side effect of a job.
/// Concurrent first uses agree on one key: the name is unique and the first insert wins. A
/// stored key whose fingerprint is not the recorded one is a configuration error.
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
    drop(conn);
    let key = unwrap_search_key(provider, wrapped).await?;
    record_search_key(db, &key).await?;
    Ok(key)
}

/// Re-wraps every key of `jarvis_keys` that is not yet under the master key `to` (for
/// `rotate --to-key`, so the old master key can be retired); returns how many were. The
/// provider must hold the keys' current master key; [`rewrap_stored_keys_with`] picks among
/// an encryptor's providers.
pub async fn rewrap_stored_keys(
    db: &Database,
    provider: &dyn KeyProvider,
    to: &jarvis_crypt::MasterKeyRef,
) -> Result<u64, ModelError> {
    rewrap_stored(db, to, |wrapped| async move {
        provider
            .rewrap_data_key(&wrapped, KeyPurpose::SearchKey, to)
            .await
    })
    .await
}

/// [`rewrap_stored_keys`] through whichever of `encryptor`'s providers holds each key's
/// current master key (during a rotation, the old key's provider re-wraps under the new).
pub async fn rewrap_stored_keys_with(
    db: &Database,
    encryptor: &jarvis_crypt::Encryptor,
    to: &jarvis_crypt::MasterKeyRef,
) -> Result<u64, ModelError> {
    rewrap_stored(db, to, |wrapped| async move {
        encryptor
            .rewrap_key(&wrapped, KeyPurpose::SearchKey, to)
            .await
    })
    .await
}

async fn rewrap_stored<F, Fut>(
    db: &Database,
    to: &jarvis_crypt::MasterKeyRef,
    rewrap: F,
) -> Result<u64, ModelError>
where
    F: Fn(WrappedKey) -> Fut,
    Fut: Future<Output = jarvis_crypt::Result<WrappedKey>>,
{
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
        let new = rewrap(wrapped).await?;
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
