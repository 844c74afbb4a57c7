//! The models of the original system, with their encrypted fields.
//!
//! Every encrypted field is bound to its row id (`bind = id`): the repositories know each row's
//! id before the first write (see [`crate::store`]). `Debug` output of a model never shows an
//! encrypted field's value.

use std::fmt;

use chrono::NaiveDateTime;
use jarvis_crypt::Encrypted;

pub use jarvis_db::models::{EncryptedBackup, EncryptedBackupRow};

/// `[redacted]` when a value is present, `None` otherwise: what `Debug` shows of secrets.
struct Redacted<'a, T>(&'a Option<T>);

impl<T> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "[redacted]"
        } else {
            "None"
        })
    }
}

const REDACTED: &str = "[redacted]";

/// A user. The email is encrypted and found through its normalized search hash; the table is
/// still in the migrating state, so rows holding only a plaintext `email` read as well and
/// are written back encrypted.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(
    table = crate::schema::users,
    bind = id,
    rotated_at = last_rotated_at,
    created_at = created_at,
    rotation_count = rotation_count
)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// The email address.
    #[encrypted(search(normalize = "email"), migrating_from = email)]
    pub email: String,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last update (UTC).
    pub updated_at: NaiveDateTime,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &REDACTED)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// An API key of a third-party service: the key encrypted and searchable, its metadata plain
/// JSON as in the original system.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(
    table = crate::schema::api_keys,
    bind = id,
    rotated_at = last_rotated_at,
    created_at = created_at,
    rotation_count = rotation_count
)]
pub struct ApiKey {
    /// Row id.
    pub id: i64,
    /// The service the key is for.
    pub service_name: String,
    /// The key itself.
    #[encrypted(
        ciphertext = encrypted_key,
        iv = key_iv,
        tag = key_auth_tag,
        data_key = key_data_key,
        search(column = key_hash, normalize = "trim")
    )]
    pub key: String,
    /// Plaintext metadata.
    pub metadata: Option<serde_json::Value>,
    /// Whether the key is in use.
    pub is_active: bool,
    /// How often the key was rotated.
    pub rotation_count: i32,
    /// Last rotation (UTC).
    pub last_rotated_at: Option<NaiveDateTime>,
    /// Expiry (UTC).
    pub expires_at: Option<NaiveDateTime>,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last update (UTC).
    pub updated_at: NaiveDateTime,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("service_name", &self.service_name)
            .field("key", &REDACTED)
            .field("is_active", &self.is_active)
            .field("rotation_count", &self.rotation_count)
            .finish_non_exhaustive()
    }
}

/// OAuth tokens of a user at a provider: access and refresh token encrypted.
#[derive(Clone, PartialEq, Eq, Encrypted)]
#[encrypted(
    table = crate::schema::oauth_tokens,
    bind = id,
    rotated_at = last_rotated_at,
    created_at = created_at,
    rotation_count = rotation_count
)]
pub struct OAuthToken {
    /// Row id.
    pub id: i64,
    /// Owning user.
    pub user_id: Option<i64>,
    /// The OAuth provider.
    pub provider: String,
    /// The access token.
    #[encrypted]
    pub access_token: String,
    /// The refresh token, if the provider gave one.
    #[encrypted]
    pub refresh_token: Option<String>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// Expiry of the access token (UTC).
    pub expires_at: Option<NaiveDateTime>,
    /// Whether the token is in use.
    pub is_active: bool,
    /// How often the tokens were replaced.
    pub rotation_count: i32,
    /// Last replacement (UTC).
    pub last_rotated_at: Option<NaiveDateTime>,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last update (UTC).
    pub updated_at: NaiveDateTime,
}

impl fmt::Debug for OAuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthToken")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("access_token", &REDACTED)
            .field("refresh_token", &Redacted(&self.refresh_token))
            .field("is_active", &self.is_active)
            .field("rotation_count", &self.rotation_count)
            .finish_non_exhaustive()
    }
}

/// The descriptions of the seed's models, in the order the jobs do them: users, API keys,
/// OAuth tokens, then the bookkeeping table of encrypted backups.
pub fn seed_tables() -> Vec<&'static jarvis_crypt::TableDescription> {
    use jarvis_crypt::EncryptedTable;
    vec![
        User::table(),
        ApiKey::table(),
        OAuthToken::table(),
        EncryptedBackup::table(),
    ]
}
