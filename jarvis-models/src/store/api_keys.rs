//! The repository of API keys of third-party services: created, found by id or by key (search hash), listed,
//! replaced (a counted rotation), deactivated.

use super::*;
use crate::schema::api_keys;

/// A new API key.
#[derive(Clone)]
pub struct NewApiKey {
    /// The service it is for.
    pub service_name: String,
    /// The key.
    pub key: String,
    /// Plaintext metadata.
    pub metadata: Option<serde_json::Value>,
    /// Expiry (UTC).
    pub expires_at: Option<NaiveDateTime>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("service_name", &self.service_name)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates an API key.
    pub async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey> {
        self.check_search_key().await?;
        create_one!(
            self,
            self.encryptor.clone(),
            ApiKey,
            api_keys,
            "encrypted_key",
            Operation::Encrypt,
            |id, at| ApiKey {
                id,
                service_name: new.service_name,
                key: new.key,
                metadata: new.metadata,
                is_active: true,
                rotation_count: 0,
                last_rotated_at: None,
                expires_at: new.expires_at,
                created_at: at,
                updated_at: at,
            }
        )
    }

    /// The API key `id`, active or not.
    pub async fn find_api_key(&self, id: i64) -> Result<ApiKey> {
        find_by_id!(self, api_keys, ApiKeyRow, ApiKey, "encrypted_key", id)
    }

    /// The active API key whose key is `key`, through its search hash.
    pub async fn find_api_key_by_key(&self, key: &str) -> Result<Option<ApiKey>> {
        self.check_search_key().await?;
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let found = ApiKey::key_find(&self.encryptor, key, |filter| async move {
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| api_keys::table
                    .filter(filter)
                    .filter(api_keys::is_active.eq(true))
                    .select(ApiKeyRow::as_select())
                    .load(c)
                    .await?))
            })
            .await?;
            Ok(found.into_iter().next())
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "api_keys",
            "encrypted_key",
            started,
            result,
        )
    }

    /// API keys, all or only the active ones, decrypted in bulk.
    pub async fn list_api_keys(&self, active_only: bool) -> Result<Vec<ApiKey>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<ApiKeyRow> = with_conn!(&mut conn, |c| {
                let mut query = api_keys::table.order(api_keys::id).into_boxed();
                if active_only {
                    query = query.filter(api_keys::is_active.eq(true));
                }
                query.select(ApiKeyRow::as_select()).load(c).await?
            });
            Ok(ApiKey::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "api_keys",
            "encrypted_key",
            started,
            result,
        )
    }

    /// Replaces an API key's key (re-encrypted), counting the rotation.
    pub async fn update_api_key(&self, id: i64, key: &str) -> Result<ApiKey> {
        self.check_search_key().await?;
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let key = key.to_owned();
        let values = <ApiKey as jarvis_crypt::EncryptedTable>::table()
            .fields
            .len();
        let result = self
            .write_sealing(&self.encryptor, values, move |conn| {
                Box::pin(async move {
                    let row: ApiKeyRow = first_for_update!(
                        conn,
                        api_keys::table.find(id).select(ApiKeyRow::as_select())
                    )
                    .ok_or(ModelError::NotFound {
                        table: "api_keys",
                        id,
                    })?;
                    let mut api_key = ApiKey::decrypt_row(row, &enc).await?;
                    let at = now();
                    api_key.key = key;
                    api_key.rotation_count += 1;
                    api_key.last_rotated_at = Some(at);
                    api_key.updated_at = at;
                    let row = api_key.encrypt_row(&enc).await?;
                    with_conn!(conn, |c| diesel::update(api_keys::table.find(id))
                        .set(&row)
                        .execute(c)
                        .await?);
                    Ok(api_key)
                })
            })
            .await;
        self.auditor().audited_record(
            Operation::Rotate,
            "api_keys",
            "encrypted_key",
            id,
            started,
            result,
        )
    }

    /// Marks an API key inactive.
    pub async fn deactivate_api_key(&self, id: i64) -> Result<()> {
        deactivate!(self, api_keys, id)
    }
}
