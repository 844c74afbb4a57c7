//! The key vault in the database: `jarvis_data_keys`, the wrapped data keys that values
//! reference by id (see [`jarvis_crypt::KeyVault`] for the reference form).
//!
//! [`DbKeyVault`] is jarvis-crypt's [`KeyVault`] on a pool of its own: every store is one
//! `INSERT .. ON CONFLICT (id) DO NOTHING` in autocommit, committed before the encryptor seals
//! anything under the key, never inside a transaction of the application and never waiting on
//! a connection the application holds. Every fetch is one `SELECT .. WHERE id IN (..)` for a
//! page's missing ids.
//!
//! ```no_run
//! # async fn run(url: &str, provider: std::sync::Arc<dyn jarvis_crypt::KeyProvider>)
//! #     -> Result<(), jarvis_db::ModelError> {
//! use std::sync::Arc;
//! let vault = jarvis_db::DbKeyVault::connect(url).await?;
//! let encryptor = jarvis_crypt::Encryptor::builder(provider)
//!     .key_vault(Arc::new(vault))
//!     .build();
//! # Ok(()) }
//! ```
//!
//! # SQLite
//!
//! SQLite has one writer at a time, and a repository's write transaction (`BEGIN IMMEDIATE`)
//! holds it until it commits: a vault insert made meanwhile through the vault's own
//! connection would wait for it. So the repositories and jobs lease first: they call
//! [`Encryptor::prepare_data_keys`](jarvis_crypt::Encryptor::prepare_data_keys) for the
//! values they are about to seal before their transaction opens, which stores every key the
//! transaction will need. A key stored this way and then left unused (the transaction rolled
//! back) is harmless: nothing references it.
//!
//! # Revoked keys
//!
//! A revoked key keeps its row (its id can never be given to another key) with `wrapped`,
//! `master_key_id` NULL and `revoked_at` set; [`KeyVault::fetch`] returns it as
//! [`VaultKey::revoked`], which readers report as [`jarvis_crypt::Error::UnknownDataKey`].

use std::fmt;

use async_trait::async_trait;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{DataKeyId, KeyPurpose, KeyVault, VaultKey, WrappedKey};

use crate::db::Database;
use crate::error::ModelError;
use crate::schema::jarvis_data_keys;
use crate::with_conn;

/// How many connections [`DbKeyVault::connect`] opens at most.
pub const VAULT_CONNECTIONS: usize = 2;

/// The key vault in the `jarvis_data_keys` table (see the [module docs](self)).
#[derive(Clone)]
pub struct DbKeyVault {
    db: Database,
}

impl fmt::Debug for DbKeyVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbKeyVault")
            .field("backend", &self.db.backend().name())
            .finish_non_exhaustive()
    }
}

/// A vault row as read.
type Row = (Vec<u8>, String, Option<Vec<u8>>);

impl DbKeyVault {
    /// The vault of the database of `url`, on a pool of its own ([`VAULT_CONNECTIONS`]
    /// connections), apart from the application's.
    pub async fn connect(url: &str) -> Result<Self, ModelError> {
        Ok(DbKeyVault {
            db: Database::connect(url, VAULT_CONNECTIONS).await?,
        })
    }

    /// The vault over `db`, which must be a pool of its own: a store waits for a connection
    /// of `db`, so a pool the application also holds connections of inside its transactions
    /// could leave it waiting on itself (use [`connect`](Self::connect)).
    pub fn with_pool(db: Database) -> Self {
        DbKeyVault { db }
    }

    /// The vault's own pool.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

fn unavailable(error: ModelError) -> jarvis_crypt::Error {
    match error {
        ModelError::Crypto(error) => error,
        other => jarvis_crypt::Error::VaultUnavailable(other.to_string()),
    }
}

/// The key of a vault row; a row that does not parse is an invalid stored form naming its id.
pub(crate) fn vault_key(row: Row) -> jarvis_crypt::Result<VaultKey> {
    let (id, purpose, wrapped) = row;
    let id = DataKeyId::try_from_slice(&id).ok_or_else(|| {
        jarvis_crypt::Error::InvalidStoredForm(format!(
            "jarvis_data_keys: an id of {} bytes, expected 16",
            id.len()
        ))
    })?;
    let purpose = KeyPurpose::from_name(&purpose).ok_or_else(|| {
        jarvis_crypt::Error::InvalidStoredForm(format!(
            "jarvis_data_keys {id}: unknown purpose `{purpose}`"
        ))
    })?;
    Ok(match wrapped {
        Some(bytes) => VaultKey::new(id, purpose, WrappedKey::new(bytes)?),
        None => VaultKey::revoked(id, purpose),
    })
}

#[async_trait]
impl KeyVault for DbKeyVault {
    async fn store(&self, key: &VaultKey) -> jarvis_crypt::Result<()> {
        let Some(wrapped) = &key.wrapped else {
            return Err(jarvis_crypt::Error::Configuration(format!(
                "data key {}: a revoked key is not stored, it is revoked in place",
                key.id
            )));
        };
        let master_key_id = wrapped
            .envelope()?
            .master_key()
            .map(|m| m.key_id.clone())
            .unwrap_or_default();
        let result: Result<Option<Row>, ModelError> = async {
            let mut conn = self.db.get().await?;
            let inserted = with_conn!(&mut conn, |c| diesel::insert_into(jarvis_data_keys::table)
                .values((
                    jarvis_data_keys::id.eq(key.id.as_bytes().as_slice()),
                    jarvis_data_keys::purpose.eq(key.purpose.as_str()),
                    jarvis_data_keys::wrapped.eq(wrapped.as_bytes()),
                    jarvis_data_keys::master_key_id.eq(&master_key_id),
                    jarvis_data_keys::created_at.eq(chrono::Utc::now().naive_utc()),
                ))
                .on_conflict(jarvis_data_keys::id)
                .do_nothing()
                .execute(c)
                .await?);
            if inserted == 1 {
                return Ok(None);
            }
            let row: Row = with_conn!(&mut conn, |c| jarvis_data_keys::table
                .find(key.id.as_bytes().as_slice())
                .select((
                    jarvis_data_keys::id,
                    jarvis_data_keys::purpose,
                    jarvis_data_keys::wrapped,
                ))
                .first(c)
                .await?);
            Ok(Some(row))
        }
        .await;
        match result.map_err(unavailable)? {
            None => Ok(()),
            // Stored before (a retry): the same key is success, another key an error.
            Some(row) if vault_key(row.clone()).ok().as_ref() == Some(key) => Ok(()),
            Some(_) => Err(jarvis_crypt::Error::Configuration(format!(
                "the key vault already holds another key under id {}",
                key.id
            ))),
        }
    }

    async fn fetch(&self, ids: &[DataKeyId]) -> jarvis_crypt::Result<Vec<VaultKey>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(ids.len());
        // Bound parameters stay under SQLite's limit (32,766) and PostgreSQL's (65,535).
        for chunk in ids.chunks(10_000) {
            let bytes: Vec<&[u8]> = chunk.iter().map(|id| id.as_bytes().as_slice()).collect();
            let rows: Vec<Row> = async {
                let mut conn = self.db.get().await?;
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| jarvis_data_keys::table
                    .filter(jarvis_data_keys::id.eq_any(&bytes))
                    .select((
                        jarvis_data_keys::id,
                        jarvis_data_keys::purpose,
                        jarvis_data_keys::wrapped,
                    ))
                    .load(c)
                    .await?))
            }
            .await
            .map_err(unavailable)?;
            for row in rows {
                keys.push(vault_key(row)?);
            }
        }
        Ok(keys)
    }
}

/// What the bookkeeping reads of the vault's keys (verify, key usage, backup manifests, the
/// jobs): each referenced id's master key, `None` for a revoked key; an id missing from the
/// map is not in the vault. Fetched per page, for the ids the lookup has not seen yet; no key
/// is unwrapped.
#[derive(Debug, Default)]
pub(crate) struct VaultLookup {
    seen: std::collections::HashMap<DataKeyId, Option<jarvis_crypt::MasterKeyRef>>,
    missing: std::collections::HashSet<DataKeyId>,
}

impl VaultLookup {
    /// Looks up the ids that the `<field>_data_key` bytes of `wrapped` reference and it has
    /// not seen, in one query per 10,000.
    pub(crate) async fn resolve<'a>(
        &mut self,
        db: &Database,
        wrapped: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ModelError> {
        let mut ids: Vec<DataKeyId> = wrapped
            .into_iter()
            .filter_map(DataKeyId::from_reference)
            .filter(|id| !self.seen.contains_key(id) && !self.missing.contains(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(10_000) {
            let bytes: Vec<&[u8]> = chunk.iter().map(|id| id.as_bytes().as_slice()).collect();
            let mut conn = db.get().await?;
            let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                with_conn!(&mut conn, |c| jarvis_data_keys::table
                    .filter(jarvis_data_keys::id.eq_any(&bytes))
                    .select((jarvis_data_keys::id, jarvis_data_keys::wrapped))
                    .load(c)
                    .await?);
            for (id, wrapped) in rows {
                let Some(id) = DataKeyId::try_from_slice(&id) else {
                    continue;
                };
                self.seen.insert(id, master_key_of(wrapped.as_deref()));
            }
            for id in chunk {
                if !self.seen.contains_key(id) {
                    self.missing.insert(*id);
                }
            }
        }
        Ok(())
    }

    /// The master key of the key `wrapped` names: its own envelope's, or for a reference the
    /// vault row's. `None` for a revoked or missing key, or a legacy blob.
    pub(crate) fn master_key(&self, wrapped: &WrappedKey) -> Option<jarvis_crypt::MasterKeyRef> {
        match wrapped.data_key_id() {
            Some(id) => self.seen.get(&id).cloned().flatten(),
            None => master_key_of(Some(wrapped.as_bytes())),
        }
    }
}

/// The master key a wrapped key's envelope names.
fn master_key_of(wrapped: Option<&[u8]>) -> Option<jarvis_crypt::MasterKeyRef> {
    match jarvis_crypt::KeyEnvelope::parse(wrapped?) {
        Ok(jarvis_crypt::KeyEnvelope::Jarvis { master_key, .. }) => Some(master_key),
        _ => None,
    }
}

/// How many of the vault's live (not revoked) keys are wrapped under the master key `key_id`:
/// what `retire-key` refuses while any is, referenced or not (an application may hold one as
/// its active key, and write values under it, until the cache lets it go).
pub async fn live_keys_under(db: &Database, key_id: &str) -> Result<u64, ModelError> {
    let mut conn = db.get().await?;
    let count: i64 = with_conn!(&mut conn, |c| jarvis_data_keys::table
        .filter(jarvis_data_keys::master_key_id.eq(key_id))
        .count()
        .get_result(c)
        .await?);
    Ok(u64::try_from(count).unwrap_or_default())
}

/// The master keys that the vault's live keys are wrapped under.
pub async fn master_keys(
    db: &Database,
) -> Result<std::collections::BTreeSet<jarvis_crypt::MasterKeyRef>, ModelError> {
    let mut keys = std::collections::BTreeSet::new();
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows = live_keys_after(db, &after).await?;
        let Some((last, ..)) = rows.last() else { break };
        after = last.clone();
        keys.extend(
            rows.iter()
                .filter_map(|(_, _, w)| master_key_of(w.as_deref())),
        );
    }
    Ok(keys)
}

/// The job kind recorded in `jarvis_jobs` for a re-wrap of the vault (`rotate --to-key`).
pub const REWRAP_JOB: &str = "rotate-to-key-vault";

/// Re-wraps every live key of the vault that is not yet under the master key `to`, through
/// whichever of `encryptor`'s providers holds its current master key (KMS `ReEncrypt`, one call
/// per key, 16 at a time), each written back in one statement (`wrapped`, `master_key_id`,
/// `rewrapped_at`) that applies only if the row still holds what was read. No data row is
/// touched: values hold references, and their keys stay the same. The run is recorded in
/// `jarvis_jobs` (kind [`REWRAP_JOB`], parameters naming `to` and the count). Returns how many
/// keys were re-wrapped; a rerun after a failure re-wraps what is left.
pub async fn rewrap_vault_keys(
    db: &Database,
    encryptor: &jarvis_crypt::Encryptor,
    to: &jarvis_crypt::MasterKeyRef,
) -> Result<u64, ModelError> {
    use futures::{StreamExt, TryStreamExt};
    let started_at = chrono::Utc::now().naive_utc();
    let mut rewrapped = 0u64;
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows = live_keys_after(db, &after).await?;
        let Some((last, ..)) = rows.last() else { break };
        after = last.clone();
        let pending: Vec<VaultKey> = rows
            .into_iter()
            .map(vault_key)
            .collect::<jarvis_crypt::Result<Vec<_>>>()?
            .into_iter()
            .filter(|key| {
                !key.wrapped
                    .as_ref()
                    .is_some_and(|w| matches!(w.envelope(), Ok(e) if e.master_key() == Some(to)))
            })
            .collect();
        let done: Vec<u64> = futures::stream::iter(pending)
            .map(|key| async move {
                let new = encryptor.rewrap_vault_key(&key, to).await?;
                let old = key.wrapped.as_ref().map(WrappedKey::as_bytes);
                let mut conn = db.get().await?;
                let updated = with_conn!(&mut conn, |c| diesel::update(
                    jarvis_data_keys::table
                        .find(key.id.as_bytes().as_slice())
                        .filter(jarvis_data_keys::wrapped.eq(old))
                )
                .set((
                    jarvis_data_keys::wrapped.eq(new.as_bytes()),
                    jarvis_data_keys::master_key_id.eq(&to.key_id),
                    jarvis_data_keys::rewrapped_at.eq(chrono::Utc::now().naive_utc()),
                ))
                .execute(c)
                .await?);
                Ok::<_, ModelError>(updated as u64)
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        rewrapped += done.iter().sum::<u64>();
    }
    let parameters = format!("to={to};keys_rewrapped={rewrapped}");
    let mut conn = db.get().await?;
    with_conn!(&mut conn, |c| diesel::insert_into(
        crate::schema::jarvis_jobs::table
    )
    .values((
        crate::schema::jarvis_jobs::kind.eq(REWRAP_JOB),
        crate::schema::jarvis_jobs::parameters.eq(&parameters),
        crate::schema::jarvis_jobs::started_at.eq(started_at),
        crate::schema::jarvis_jobs::finished_at.eq(Some(chrono::Utc::now().naive_utc())),
    ))
    .execute(c)
    .await?);
    Ok(rewrapped)
}

/// How long before a `rotate --reencrypt` run began a vault key must have been created for
/// the run to revoke it (at least; twice the job's own `max_age` when that is longer): a
/// writer may hold a key as its active key for its cache's `max_age` (5 minutes by default)
/// after creating it, and write values under it meanwhile. Writers whose `max_age` is longer
/// than this must be stopped or restarted before the run.
pub const REVOKE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(diesel::QueryableByName)]
struct ReferencedId {
    #[diesel(sql_type = diesel::sql_types::Binary)]
    id: Vec<u8>,
}

/// Revokes every live key of the vault created before `before` that no value of `tables`
/// (and of `encrypted_backups`, whose records may reference the vault whatever the tables
/// given) references: its wrapped bytes and master key erased, `revoked_at` set, its id kept, so
/// nobody with write access to the database can make a value reference it again and have it
/// read. What a finished `rotate --reencrypt` does to the keys it replaced (the answer to a
/// compromised data key). Returns how many keys were revoked.
pub async fn revoke_unreferenced_keys(
    db: &Database,
    tables: &[&'static jarvis_crypt::TableDescription],
    before: chrono::NaiveDateTime,
) -> Result<u64, ModelError> {
    use crate::described::quote;
    use jarvis_crypt::EncryptedTable;
    let backups = crate::models::EncryptedBackup::table();
    let mut tables = tables.to_vec();
    if !tables.iter().any(|t| t.name == backups.name) {
        tables.push(backups);
    }
    let mut referenced = std::collections::HashSet::new();
    let mut conn = db.get().await?;
    for table in &tables {
        for field in &table.fields {
            let dk = quote(field.data_key);
            let sql = format!(
                "SELECT DISTINCT substr({dk}, 5, 16) AS id FROM {table} WHERE {reference}",
                table = quote(&table.name),
                reference = is_reference(db.backend(), &dk),
            );
            let ids: Vec<ReferencedId> =
                with_conn!(&mut conn, |c| diesel::sql_query(&sql).load(c).await?);
            referenced.extend(ids.into_iter().map(|row| row.id));
        }
    }
    let candidates: Vec<Vec<u8>> = with_conn!(&mut conn, |c| jarvis_data_keys::table
        .filter(jarvis_data_keys::wrapped.is_not_null())
        .filter(jarvis_data_keys::created_at.lt(before))
        .select(jarvis_data_keys::id)
        .load(c)
        .await?);
    let unreferenced: Vec<Vec<u8>> = candidates
        .into_iter()
        .filter(|id| !referenced.contains(id))
        .collect();
    let mut revoked = 0;
    let now = chrono::Utc::now().naive_utc();
    for chunk in unreferenced.chunks(1000) {
        let updated = with_conn!(&mut conn, |c| diesel::update(
            jarvis_data_keys::table
                .filter(jarvis_data_keys::id.eq_any(chunk))
                .filter(jarvis_data_keys::created_at.lt(before))
        )
        .set((
            jarvis_data_keys::wrapped.eq(None::<Vec<u8>>),
            jarvis_data_keys::master_key_id.eq(None::<String>),
            jarvis_data_keys::revoked_at.eq(Some(now)),
        ))
        .execute(c)
        .await?);
        revoked += updated as u64;
    }
    if revoked > 0 {
        tracing::info!(revoked, "key vault: replaced data keys revoked");
    }
    Ok(revoked)
}

/// `bytes` as a SQL literal of `backend`.
pub(crate) fn bytes_literal(backend: crate::migrations::Backend, bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    match backend {
        crate::migrations::Backend::Postgres => format!("'\\x{hex}'::bytea"),
        crate::migrations::Backend::Sqlite => format!("x'{hex}'"),
    }
}

/// SQL: the data-key column `dk` (quoted) holds a 20-byte reference to a vault key.
pub(crate) fn is_reference(backend: crate::migrations::Backend, dk: &str) -> String {
    let mut prefix = jarvis_crypt::WRAPPED_KEY_MAGIC.to_vec();
    prefix.push(jarvis_crypt::REFERENCE_VERSION);
    format!(
        "(length({dk}) = {len} AND substr({dk}, 1, 4) = {prefix})",
        len = jarvis_crypt::REFERENCE_LEN,
        prefix = bytes_literal(backend, &prefix)
    )
}

/// Up to 1,000 live keys of the vault with ids after `after`, by id: the pages of the jobs
/// that walk the whole vault.
async fn live_keys_after(db: &Database, after: &[u8]) -> Result<Vec<Row>, ModelError> {
    let mut conn = db.get().await?;
    Ok(with_conn!(&mut conn, |c| jarvis_data_keys::table
        .filter(jarvis_data_keys::id.gt(after))
        .filter(jarvis_data_keys::wrapped.is_not_null())
        .order(jarvis_data_keys::id)
        .select((
            jarvis_data_keys::id,
            jarvis_data_keys::purpose,
            jarvis_data_keys::wrapped,
        ))
        .limit(1000)
        .load(c)
        .await?))
}
