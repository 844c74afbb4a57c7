//! The repository of the users: created in batches, found by id or by email (through the search hash, or the
//! plaintext of a row not yet migrated), listed, scanned, updated.

use super::*;
use crate::schema::users;
use diesel::sql_types::BigInt;
use jarvis_crypt::EncryptedLoad;

/// A users row as reads load it: every stored-form column but the search hash, which only
/// lookups filter on.
type UserLoad = <User as EncryptedLoad>::Load;

impl Store {
    /// Creates users, one per email, in one transaction.
    ///
    /// The rows go to the database in one statement per batch on PostgreSQL (each column
    /// bound as one array, `INSERT .. SELECT * FROM UNNEST(..)`: nine parameters whatever the
    /// batch size, and a statement prepared once); on SQLite all rows are inserted in one task
    /// on the connection's blocking thread, with one prepared single-row statement (through
    /// diesel-async each row's statement was a thread hand-off of its own).
    pub async fn create_users(&self, emails: Vec<String>) -> Result<Vec<User>> {
        self.check_search_key().await?;
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let result = self
            .write_sealing(&self.encryptor, emails.len(), move |conn| {
                Box::pin(async move {
                    let ids = Self::reserve_ids(conn, "users", emails.len()).await?;
                    let at = now();
                    let users: Vec<User> = ids
                        .into_iter()
                        .zip(emails)
                        .map(|(id, email)| User {
                            id,
                            email,
                            created_at: at,
                            updated_at: at,
                        })
                        .collect();
                    let mut rows = Vec::with_capacity(users.len());
                    for user in &users {
                        rows.push(user.encrypt_row(&enc).await?);
                    }
                    match conn {
                        Conn::Postgres(c) => {
                            use diesel::sql_types::{Array, Binary, Nullable, Text, Timestamp};
                            let n = rows.len();
                            let mut id = Vec::with_capacity(n);
                            let mut email = Vec::with_capacity(n);
                            let mut ciphertext = Vec::with_capacity(n);
                            let mut iv = Vec::with_capacity(n);
                            let mut tag = Vec::with_capacity(n);
                            let mut data_key = Vec::with_capacity(n);
                            let mut hash = Vec::with_capacity(n);
                            let mut created_at = Vec::with_capacity(n);
                            let mut updated_at = Vec::with_capacity(n);
                            for row in rows {
                                let UserRow {
                                    id: row_id,
                                    email: row_email,
                                    encrypted_email,
                                    email_iv,
                                    email_auth_tag,
                                    email_data_key,
                                    email_hash,
                                    created_at: row_created_at,
                                    updated_at: row_updated_at,
                                } = row;
                                id.push(row_id);
                                email.push(row_email);
                                ciphertext.push(encrypted_email);
                                iv.push(email_iv);
                                tag.push(email_auth_tag);
                                data_key.push(email_data_key);
                                hash.push(email_hash);
                                created_at.push(row_created_at);
                                updated_at.push(row_updated_at);
                            }
                            diesel::sql_query(
                                "INSERT INTO users (id, email, encrypted_email, email_iv, \
                                 email_auth_tag, email_data_key, email_hash, created_at, \
                                 updated_at) \
                                 SELECT * FROM UNNEST($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            )
                            .bind::<Array<BigInt>, _>(id)
                            .bind::<Array<Nullable<Text>>, _>(email)
                            .bind::<Array<Nullable<Binary>>, _>(ciphertext)
                            .bind::<Array<Nullable<Binary>>, _>(iv)
                            .bind::<Array<Nullable<Binary>>, _>(tag)
                            .bind::<Array<Nullable<Binary>>, _>(data_key)
                            .bind::<Array<Nullable<Binary>>, _>(hash)
                            .bind::<Array<Timestamp>, _>(created_at)
                            .bind::<Array<Timestamp>, _>(updated_at)
                            .execute(&mut **c)
                            .await?;
                        }
                        Conn::Sqlite(c) => {
                            // One prepared single-row statement, run for every row on the
                            // blocking thread: diesel's own batch insert would open a
                            // transaction of its own inside this one.
                            c.spawn_blocking(move |c| {
                                for row in &rows {
                                    diesel::RunQueryDsl::execute(
                                        diesel::insert_into(users::table).values(row),
                                        c,
                                    )?;
                                }
                                Ok(())
                            })
                            .await?;
                        }
                    }
                    Ok(users)
                })
            })
            .await;
        self.auditor().audited(
            Operation::Encrypt,
            "users",
            "encrypted_email",
            started,
            result,
        )
    }

    /// Creates one user.
    pub async fn create_user(&self, email: &str) -> Result<User> {
        let mut users = self.create_users(vec![email.to_owned()]).await?;
        users.pop().ok_or(ModelError::NotFound {
            table: "users",
            id: 0,
        })
    }

    /// The user `id`.
    pub async fn find_user(&self, id: i64) -> Result<User> {
        find_by_id!(self, users, UserRow, User, "encrypted_email", id)
    }

    /// The stored form of user `id` as the database holds it (ciphertext, nonce, tag, wrapped
    /// data key, search hash, and the plaintext of a row not yet migrated), not decrypted and
    /// not audited: for showing what is stored.
    pub async fn stored_user(&self, id: i64) -> Result<UserRow> {
        let mut conn = self.db.get().await?;
        with_conn!(&mut conn, |c| users::table
            .find(id)
            .select(UserRow::as_select())
            .first(c)
            .await
            .optional()?)
        .ok_or(ModelError::NotFound { table: "users", id })
    }

    /// The user with this email (normalized: trimmed, lower case), through its search hash;
    /// rows not yet migrated (plaintext only) are matched on their plaintext column.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.check_search_key().await?;
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let found = User::email_find(&self.encryptor, email, |filter| async {
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| users::table
                    .filter(filter)
                    .select(UserRow::as_select())
                    .load(c)
                    .await?))
            })
            .await?;
            if let Some(user) = found.into_iter().next() {
                return Ok(Some(user));
            }
            let normalized = jarvis_crypt::Normalize::EMAIL.apply(email).into_owned();
            let rows: Vec<UserRow> = with_conn!(&mut conn, |c| users::table
                .filter(users::encrypted_email.is_null())
                .filter(
                    diesel::dsl::sql::<diesel::sql_types::Bool>("LOWER(TRIM(email)) = ")
                        .bind::<diesel::sql_types::Text, _>(normalized.clone()),
                )
                .select(UserRow::as_select())
                .load(c)
                .await?);
            let users = User::decrypt_rows(rows, &self.encryptor).await?;
            Ok(users
                .into_iter()
                .find(|u| jarvis_crypt::Normalize::EMAIL.apply(&u.email) == normalized))
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "users",
            "encrypted_email",
            started,
            result,
        )
    }

    /// Users by id, decrypted in bulk (one unwrap per distinct data key).
    pub async fn list_users(&self, limit: i64, offset: i64) -> Result<Vec<User>> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.db.get().await?;
            let rows: Vec<UserLoad> = with_conn!(&mut conn, |c| users::table
                .order(users::id)
                .limit(limit)
                .offset(offset)
                .select(UserLoad::as_select())
                .load(c)
                .await?);
            Ok(User::decrypt_loaded(rows, &self.encryptor).await?)
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "users",
            "encrypted_email",
            started,
            result,
        )
    }

    /// Up to `limit` users with ids greater than `after_id`, by id, decrypted in bulk (one
    /// unwrap per distinct data key): a keyset page. Unlike [`Self::list_users`]'s `OFFSET`,
    /// whose cost grows with the offset, each page is one index range scan; pass the last id
    /// of a page (or `0` to start) to read the next.
    pub async fn scan_users(&self, after_id: i64, limit: i64) -> Result<Vec<User>> {
        let started = Instant::now();
        // Rows are decrypted in chunks as they arrive: while one chunk is decrypted, the
        // database sends the next (the connection is driven by a task of its own).
        const CHUNK: usize = 256;
        let result = async {
            use futures::TryStreamExt;
            let mut conn = self.db.get().await?;
            let mut users = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(10_000));
            with_conn!(&mut conn, |c| {
                let mut chunks = std::pin::pin!(
                    users::table
                        .filter(users::id.gt(after_id))
                        .order(users::id)
                        .limit(limit)
                        .select(UserLoad::as_select())
                        .load_stream::<UserLoad>(c)
                        .await?
                        .try_chunks(CHUNK)
                );
                while let Some(rows) = chunks.try_next().await.map_err(|e| e.1)? {
                    users.extend(User::decrypt_loaded(rows, &self.encryptor).await?);
                }
            });
            Ok(users)
        }
        .await;
        self.auditor().audited(
            Operation::Decrypt,
            "users",
            "encrypted_email",
            started,
            result,
        )
    }

    /// Changes a user's email (encrypted under the current data key; clears any plaintext).
    pub async fn update_user_email(&self, id: i64, email: &str) -> Result<User> {
        self.check_search_key().await?;
        let started = Instant::now();
        let enc = self.encryptor.clone();
        let email = email.to_owned();
        let result = self
            .write_sealing(&self.encryptor, 1, move |conn| {
                Box::pin(async move {
                    let row: UserRow =
                        first_for_update!(conn, users::table.find(id).select(UserRow::as_select()))
                            .ok_or(ModelError::NotFound { table: "users", id })?;
                    let mut user = User::decrypt_row(row, &enc).await?;
                    user.email = email;
                    user.updated_at = now();
                    let row = user.encrypt_row(&enc).await?;
                    with_conn!(conn, |c| diesel::update(users::table.find(id))
                        .set(&row)
                        .execute(c)
                        .await?);
                    Ok(user)
                })
            })
            .await;
        self.auditor().audited_record(
            Operation::Encrypt,
            "users",
            "encrypted_email",
            id,
            started,
            result,
        )
    }
}
