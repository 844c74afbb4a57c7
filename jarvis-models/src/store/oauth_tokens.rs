//! The repository of OAuth tokens: created, found, listed, refreshed (a counted rotation), deactivated.

use super::*;
use crate::schema::oauth_tokens;

/// New OAuth tokens.
#[derive(Clone)]
pub struct NewOAuthToken {
    /// Owning user.
    pub user_id: Option<i64>,
    /// The provider.
    pub provider: String,
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// Expiry of the access token (UTC).
    pub expires_at: Option<NaiveDateTime>,
}

impl std::fmt::Debug for NewOAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOAuthToken")
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("access_token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores OAuth tokens; both tokens share a fresh data key of their own.
    pub async fn create_oauth_token(&self, new: NewOAuthToken) -> Result<OAuthToken> {
        create_one!(
            self,
            self.encryptor.with_fresh_data_key(),
            OAuthToken,
            oauth_tokens,
            "encrypted_access_token",
            Operation::Encrypt,
            |id, at| OAuthToken {
                id,
                user_id: new.user_id,
                provider: new.provider,
                access_token: new.access_token,
                refresh_token: new.refresh_token,
                scope: new.scope,
                expires_at: new.expires_at,
                is_active: true,
                rotation_count: 0,
                last_rotated_at: None,
                created_at: at,
                updated_at: at,
            }
        )
    }

    /// The OAuth token `id`.
    pub async fn find_oauth_token(&self, id: i64) -> Result<OAuthToken> {
        find_by_id!(
            self,
            oauth_tokens,
            OAuthTokenRow,
            OAuthToken,
            "encrypted_access_token",
            id
        )
    }

    /// A user's OAuth tokens, all or only the active ones, decrypted in bulk.
    pub async fn list_oauth_tokens(
        &self,
        user_id: i64,
        active_only: bool,
    ) -> Result<Vec<OAuthToken>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<OAuthTokenRow> = with_conn!(&mut conn, |c| {
                let mut query = oauth_tokens::table
                    .filter(oauth_tokens::user_id.eq(user_id))
                    .order(oauth_tokens::id)
                    .into_boxed();
                if active_only {
                    query = query.filter(oauth_tokens::is_active.eq(true));
                }
                query.select(OAuthTokenRow::as_select()).load(c).await?
            });
            Ok(OAuthToken::decrypt_rows(rows, &self.encryptor).await?)
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "oauth_tokens",
            "encrypted_access_token",
            started,
            result,
        )
    }

    /// Replaces both tokens after a refresh, under a fresh data key, and counts the rotation.
    pub async fn refresh_oauth_token(
        &self,
        id: i64,
        access_token: &str,
        refresh_token: Option<&str>,
        expires_at: Option<NaiveDateTime>,
    ) -> Result<OAuthToken> {
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let fresh = self.encryptor.with_fresh_data_key();
        let access_token = access_token.to_owned();
        let refresh_token = refresh_token.map(str::to_owned);
        let values = <OAuthToken as jarvis_crypt::EncryptedTable>::table()
            .fields
            .len();
        let result = self
            .write_sealing(&fresh.clone(), values, move |conn| {
                Box::pin(async move {
                    let row: OAuthTokenRow = first_for_update!(
                        conn,
                        oauth_tokens::table
                            .find(id)
                            .select(OAuthTokenRow::as_select())
                    )
                    .ok_or(ModelError::NotFound {
                        table: "oauth_tokens",
                        id,
                    })?;
                    let mut token = OAuthToken::decrypt_row(row, &enc).await?;
                    let at = now();
                    token.access_token = access_token;
                    token.refresh_token = refresh_token;
                    token.expires_at = expires_at;
                    token.rotation_count += 1;
                    token.last_rotated_at = Some(at);
                    token.updated_at = at;
                    let row = token.encrypt_row(&fresh).await?;
                    with_conn!(conn, |c| diesel::update(oauth_tokens::table.find(id))
                        .set(&row)
                        .execute(c)
                        .await?);
                    Ok(token)
                })
            })
            .await;
        self.auditor().audited_record(
            Operation::Rotate,
            "oauth_tokens",
            "encrypted_access_token",
            id,
            started,
            result,
        )
    }

    /// Marks OAuth tokens inactive.
    pub async fn deactivate_oauth_token(&self, id: i64) -> Result<()> {
        deactivate!(self, oauth_tokens, id)
    }
}
