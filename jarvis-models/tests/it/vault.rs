//! The key vault (`jarvis_data_keys`, `DbKeyVault`) on PostgreSQL and SQLite: round trips,
//! references mixed with inline envelopes, a dangling reference, a vault that fails, a pool of
//! one connection inside a transaction, SQLite's one writer, a rolled-back transaction.

use std::sync::Arc;
use std::time::Duration;

use diesel::QueryDsl;
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    CacheLimits, DataKeyId, Encrypted, Encryptor, ErrorKind, KeyContext, KeyProvider, KeyPurpose,
    KeyVault, LocalKeyProvider, NoAudit, REFERENCE_LEN, SearchKey, VaultKey,
};
use jarvis_models::db::{self, Database};
use jarvis_models::models::User;
use jarvis_models::schema::{jarvis_data_keys, users};
use jarvis_models::{DbKeyVault, ModelError, Store, with_conn};

const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Fixture {
    url: String,
    db: Database,
    provider: Arc<LocalKeyProvider>,
    _dir: Option<tempfile::TempDir>,
}

async fn fixture(backend: &str, prefix: &str) -> Fixture {
    let (url, dir) = match backend {
        "postgres" => (jarvis_tests::fresh_postgres_database(prefix), None),
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = dir.path().join("vault.sqlite3").display().to_string();
            (url, Some(dir))
        }
    };
    db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 4).await.expect("connect");
    let provider = Arc::new(LocalKeyProvider::from_hex(MASTER).expect("key"));
    jarvis_models::keys::record_search_key(&db, &search_key())
        .await
        .expect("search key");
    Fixture {
        url,
        db,
        provider,
        _dir: dir,
    }
}

fn search_key() -> SearchKey {
    SearchKey::new(b"the vault tests' search key, 32 bytes or more".to_vec()).expect("key")
}

impl Fixture {
    async fn vault(&self) -> DbKeyVault {
        DbKeyVault::connect(&self.url).await.expect("vault")
    }

    /// An encryptor with the vault (`Some(limits)`), or without one (`None`).
    async fn encryptor(&self, vault: bool, limits: CacheLimits) -> Encryptor {
        let builder = Encryptor::builder(self.provider.clone())
            .search_key(search_key())
            .cache_limits(limits);
        if vault {
            builder.key_vault(Arc::new(self.vault().await)).build()
        } else {
            builder.build()
        }
    }

    fn store(&self, encryptor: Encryptor) -> Store {
        Store::new(self.db.clone(), encryptor, Arc::new(NoAudit))
    }

    async fn vault_rows(&self) -> i64 {
        let mut conn = self.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| jarvis_data_keys::table
            .count()
            .get_result(c)
            .await
            .expect("count"))
    }

    async fn user_rows(&self) -> i64 {
        let mut conn = self.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| users::table
            .count()
            .get_result(c)
            .await
            .expect("count"))
    }

    async fn sql(&self, sql: &str) {
        let mut conn = self.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| diesel::sql_query(sql)
            .execute(c)
            .await
            .expect(sql));
    }
}

macro_rules! both_backends {
    ($name:ident, |$f:ident| async move $body:block) => {
        mod $name {
            use super::*;
            async fn run($f: Fixture) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(fixture("postgres", "vault").await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(fixture("sqlite", "vault").await).await;
            }
        }
    };
}

both_backends!(vault_round_trip, |f| async move {
    let vault = f.vault().await;
    let id = DataKeyId::generate().expect("id");
    let generated = f
        .provider
        .generate_data_key_in(&KeyContext::in_vault(KeyPurpose::Field, id))
        .await
        .expect("generate");
    let key = VaultKey::new(id, KeyPurpose::Field, generated.wrapped.clone());
    vault.store(&key).await.expect("store");
    // Idempotent on the id: storing the same key again succeeds.
    vault.store(&key).await.expect("store again");
    // Another key under a stored id is refused.
    let other = f
        .provider
        .generate_data_key_in(&KeyContext::in_vault(KeyPurpose::Field, id))
        .await
        .expect("generate");
    let error = vault
        .store(&VaultKey::new(id, KeyPurpose::Field, other.wrapped))
        .await
        .expect_err("another key under the same id");
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert_eq!(f.vault_rows().await, 1);

    // Fetch: the ids it holds, in one call; an unknown id is left out.
    let unknown = DataKeyId::generate().expect("id");
    let fetched = vault.fetch(&[unknown, id]).await.expect("fetch");
    assert_eq!(fetched, vec![key.clone()]);
    assert!(vault.fetch(&[]).await.expect("fetch none").is_empty());

    // A revoked row reads as revoked: its id, no wrapped bytes.
    f.sql(&format!(
        "UPDATE jarvis_data_keys SET wrapped = NULL, master_key_id = NULL, \
         revoked_at = CURRENT_TIMESTAMP WHERE id = {}",
        match f.db.backend() {
            jarvis_models::migrations::Backend::Postgres => format!("'\\x{}'", id.to_hex()),
            jarvis_models::migrations::Backend::Sqlite => format!("X'{}'", id.to_hex()),
        }
    ))
    .await;
    let fetched = vault.fetch(&[id]).await.expect("fetch");
    assert_eq!(fetched, vec![VaultKey::revoked(id, KeyPurpose::Field)]);
    // The wrapped key unwraps only under its own id.
    let key_now = f
        .provider
        .unwrap_data_key_in(
            &generated.wrapped,
            &KeyContext::in_vault(KeyPurpose::Field, id),
        )
        .await;
    assert!(key_now.is_ok());
    let swapped = f
        .provider
        .unwrap_data_key_in(
            &generated.wrapped,
            &KeyContext::in_vault(KeyPurpose::Field, unknown),
        )
        .await
        .expect_err("another id");
    assert_eq!(swapped.kind(), ErrorKind::AuthenticationFailed);
});

both_backends!(
    references_and_inline_envelopes_mix_in_one_page,
    |f| async move {
        let inline = f.store(f.encryptor(false, CacheLimits::default()).await);
        let referencing = f.store(f.encryptor(true, CacheLimits::default()).await);
        let old = inline
            .create_users(vec!["a@example.com".into(), "b@example.com".into()])
            .await
            .expect("inline");
        let new = referencing
            .create_users(vec!["c@example.com".into(), "d@example.com".into()])
            .await
            .expect("references");
        for user in &old {
            let row = inline.stored_user(user.id).await.expect("row");
            let key = row.email_data_key.expect("data key");
            assert!(key.data_key_id().is_none());
            assert!(key.as_bytes().len() > REFERENCE_LEN);
        }
        for user in &new {
            let row = referencing.stored_user(user.id).await.expect("row");
            let key = row.email_data_key.expect("data key");
            assert!(key.data_key_id().is_some());
            assert_eq!(key.as_bytes().len(), REFERENCE_LEN);
        }
        assert_eq!(f.vault_rows().await, 1);

        // A cold reader with the vault reads both forms in one page, with one vault query.
        let reader = f.store(f.encryptor(true, CacheLimits::default()).await);
        let listed = reader.list_users(10, 0).await.expect("list");
        let emails: Vec<&str> = listed.iter().map(|u| u.email.as_str()).collect();
        assert_eq!(
            emails,
            [
                "a@example.com",
                "b@example.com",
                "c@example.com",
                "d@example.com"
            ]
        );
        let found = reader
            .find_user_by_email("D@example.com")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(found.id, new[1].id);

        // A reader without a vault reads the inline values and refuses the references clearly.
        let error = inline.find_user(new[0].id).await.expect_err("no vault");
        assert_eq!(error.crypto_kind(), Some(ErrorKind::Configuration));
        assert_eq!(
            inline.find_user(old[0].id).await.expect("inline").email,
            "a@example.com"
        );

        // verify counts every value under the one master key, references through the vault.
        let report = jarvis_models::verify::verify(&f.db, reader.encryptor(), None)
            .await
            .expect("verify");
        assert!(report.is_clean(), "{report:?}");
        let counts = &report.columns[&("users", "encrypted_email")];
        assert_eq!(counts.current, 4);
        assert_eq!(
            counts
                .by_master_key
                .get(&f.provider.master_key().to_string()),
            Some(&4),
            "{counts:?}"
        );
        let usage = jarvis_models::verify::key_usage(&f.db, &f.provider.master_key().key_id)
            .await
            .expect("usage");
        assert_eq!(usage.columns[&("users", "encrypted_email")], 4);
        assert_eq!(usage.columns[&jarvis_db::verify::VAULT_COLUMN], 1);
        let keys = jarvis_models::verify::master_keys_in_use(&f.db)
            .await
            .expect("keys");
        assert!(keys.contains(&f.provider.master_key()));
    }
);

both_backends!(
    a_dangling_reference_is_an_error_of_its_own,
    |f| async move {
        let writer = f.store(f.encryptor(true, CacheLimits::default()).await);
        let ada = writer.create_user("ada@example.com").await.expect("create");
        let before = writer.stored_user(ada.id).await.expect("row");
        // The vault row deleted by hand.
        f.sql("DELETE FROM jarvis_data_keys").await;

        let reader = f.store(f.encryptor(true, CacheLimits::default()).await);
        let error = reader.find_user(ada.id).await.expect_err("dangling");
        match &error {
            ModelError::Crypto(jarvis_crypt::Error::UnknownDataKey { id, revoked }) => {
                assert_eq!(
                    Some(id.as_str()),
                    before
                        .email_data_key
                        .as_ref()
                        .and_then(|k| k.data_key_id())
                        .map(|id| id.to_hex())
                        .as_deref()
                );
                assert!(!revoked);
            }
            other => panic!("expected UnknownDataKey, got {other:?}"),
        }
        let error = reader.list_users(10, 0).await.expect_err("dangling");
        assert_eq!(error.crypto_kind(), Some(ErrorKind::UnknownDataKey));
        // The data is untouched.
        let after = reader.stored_user(ada.id).await.expect("row");
        assert_eq!(after.email_data_key, before.email_data_key);
        assert_eq!(after.encrypted_email, before.encrypted_email);
        assert_eq!(after.email_auth_tag, before.email_auth_tag);

        // verify names the table, the column and the row.
        let report = jarvis_models::verify::verify(&f.db, reader.encryptor(), None)
            .await
            .expect("verify");
        assert_eq!(
            report.failures,
            vec![jarvis_db::verify::Failure {
                table: "users",
                id: ada.id,
                column: "encrypted_email",
                error_kind: "unknown_data_key",
            }]
        );
    }
);

both_backends!(
    a_failing_vault_insert_leaves_no_value_behind,
    |f| async move {
        let store = f.store(f.encryptor(true, CacheLimits::default()).await);
        f.sql("ALTER TABLE jarvis_data_keys RENAME TO jarvis_data_keys_away")
            .await;
        let error = store
            .create_users(vec!["a@example.com".into(), "b@example.com".into()])
            .await
            .expect_err("the vault fails");
        assert_eq!(error.crypto_kind(), Some(ErrorKind::VaultUnavailable));
        let message = error.to_string();
        assert!(!message.contains("a@example.com"), "{message}");
        assert_eq!(
            f.user_rows().await,
            0,
            "a row was written under a missing key"
        );

        f.sql("ALTER TABLE jarvis_data_keys_away RENAME TO jarvis_data_keys")
            .await;
        let users = store
            .create_users(vec!["a@example.com".into()])
            .await
            .expect("the vault is back");
        assert_eq!(f.user_rows().await, 1);
        assert_eq!(f.vault_rows().await, 1);
        let report = jarvis_models::verify::verify(&f.db, store.encryptor(), None)
            .await
            .expect("verify");
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            store.find_user(users[0].id).await.expect("find").email,
            "a@example.com"
        );
    }
);

/// A row of `users` for `email`, sealed inside the caller's transaction on `conn`.
async fn insert_user(
    conn: &mut jarvis_models::db::Conn,
    encryptor: &Encryptor,
    email: &str,
) -> Result<User, ModelError> {
    let id = jarvis_db::repo::reserve_ids(conn, "users", 1).await?[0];
    let at = chrono::Utc::now().naive_utc();
    let user = User {
        id,
        email: email.to_owned(),
        created_at: at,
        updated_at: at,
    };
    let row = user.encrypt_row(encryptor).await?;
    with_conn!(conn, |c| diesel::insert_into(users::table)
        .values(&row)
        .execute(c)
        .await?);
    Ok(user)
}

/// The application's pool has one connection, held by its transaction while the encrypt in
/// it needs a new data key: the vault writes through its own pool, so nothing waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_inside_a_transaction_that_needs_a_new_key() {
    let f = fixture("postgres", "vault_pool_one").await;
    let app = Database::connect(&f.url, 1).await.expect("pool of one");
    let encryptor = f.encryptor(true, CacheLimits::default()).await;
    let enc = encryptor.clone();
    let written = tokio::time::timeout(
        Duration::from_secs(30),
        jarvis_db::repo::write(&app, move |conn| {
            Box::pin(async move { insert_user(conn, &enc, "ada@example.com").await })
        }),
    )
    .await
    .expect("no deadlock")
    .expect("written");
    assert_eq!(encryptor.stats().generate_calls, 1);
    assert_eq!(f.vault_rows().await, 1);
    let store = Store::new(app, encryptor, Arc::new(NoAudit));
    assert_eq!(
        store.find_user(written.id).await.expect("find").email,
        "ada@example.com"
    );
}

/// SQLite: the repository's `BEGIN IMMEDIATE` holds the one writer, so every key its
/// transaction needs is stored before it opens (one key per value here: five keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keys_are_stored_before_begin_immediate() {
    let f = fixture("sqlite", "vault").await;
    let one_per_value = CacheLimits {
        max_messages: 1,
        ..CacheLimits::default()
    };
    let store = f.store(f.encryptor(true, one_per_value).await);
    let emails: Vec<String> = (0..5).map(|i| format!("u{i}@example.com")).collect();
    // Were a key stored inside the transaction, its insert would wait for the transaction's
    // own write lock until the busy timeout (10 s) and fail.
    let users = tokio::time::timeout(Duration::from_secs(8), store.create_users(emails))
        .await
        .expect("no wait on the transaction's own lock")
        .expect("created");
    assert_eq!(users.len(), 5);
    assert_eq!(f.vault_rows().await, 5);
    assert_eq!(store.encryptor().stats().generate_calls, 5);

    // The same under a transaction of the application's own: prepared first, then sealed
    // inside `BEGIN IMMEDIATE` without a vault write.
    let encryptor = store.encryptor().clone();
    assert_eq!(encryptor.prepare_data_keys(2).await.expect("prepare"), 2);
    let enc = encryptor.clone();
    tokio::time::timeout(
        Duration::from_secs(8),
        jarvis_db::repo::write(&f.db, move |conn| {
            Box::pin(async move {
                insert_user(conn, &enc, "x@example.com").await?;
                insert_user(conn, &enc, "y@example.com").await
            })
        }),
    )
    .await
    .expect("no wait")
    .expect("written");
    assert_eq!(encryptor.stats().generate_calls, 7);
    assert_eq!(f.vault_rows().await, 7);
    let report = jarvis_models::verify::verify(&f.db, &encryptor, None)
        .await
        .expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

both_backends!(
    a_rolled_back_transaction_leaves_a_harmless_key,
    |f| async move {
        let encryptor = f.encryptor(true, CacheLimits::default()).await;
        let enc = encryptor.clone();
        encryptor.prepare_data_keys(1).await.expect("prepare");
        let rolled_back = jarvis_db::repo::write(&f.db, move |conn| {
            Box::pin(async move {
                insert_user(conn, &enc, "gone@example.com").await?;
                Err::<(), _>(ModelError::NotFound {
                    table: "users",
                    id: 0,
                })
            })
        })
        .await;
        assert!(rolled_back.is_err());
        assert_eq!(f.user_rows().await, 0);
        assert_eq!(f.vault_rows().await, 1, "the key stays, unreferenced");

        // Another transaction uses the same (cached) key and commits.
        let store = f.store(encryptor.clone());
        let ada = store.create_user("ada@example.com").await.expect("create");
        assert_eq!(encryptor.stats().generate_calls, 1);
        assert_eq!(f.vault_rows().await, 1);
        let report = jarvis_models::verify::verify(&f.db, &encryptor, None)
            .await
            .expect("verify");
        assert!(report.is_clean(), "{report:?}");
        let reader = f.store(f.encryptor(true, CacheLimits::default()).await);
        assert_eq!(
            reader.find_user(ada.id).await.expect("find").email,
            "ada@example.com"
        );
    }
);

both_backends!(
    revocation_keeps_the_keys_that_backup_records_reference,
    |f| async move {
        use jarvis_crypt::EncryptedTable;
        // One key for the backup record, another for the user (one value per key).
        let one_per_value = CacheLimits {
            max_messages: 1,
            ..CacheLimits::default()
        };
        let store = f.store(f.encryptor(true, one_per_value).await);
        store
            .create_backup(jarvis_models::NewBackup {
                backup_name: "in-row".into(),
                backup_type: "full".into(),
                storage_path: None,
                data: Some(b"a small backup".to_vec()),
                size_bytes: Some(14),
                checksum: None,
                master_key_id: None,
            })
            .await
            .expect("backup");
        store.create_user("ada@example.com").await.expect("user");
        assert_eq!(f.vault_rows().await, 2);
        f.sql("DELETE FROM users").await;

        // Revocation over the users table alone still sees the backup record's reference.
        let later = chrono::Utc::now().naive_utc() + chrono::Duration::hours(1);
        let revoked = jarvis_db::vault::revoke_unreferenced_keys(&f.db, &[User::table()], later)
            .await
            .expect("revoke");
        assert_eq!(revoked, 1, "the user's key alone");
        let reader = f.store(f.encryptor(true, CacheLimits::default()).await);
        let backup = reader
            .find_backup_by_name("in-row")
            .await
            .expect("read")
            .expect("recorded");
        assert_eq!(backup.data.as_deref(), Some(&b"a small backup"[..]));
        // Keys created after the cut-off are never revoked.
        let earlier = chrono::Utc::now().naive_utc() - chrono::Duration::hours(1);
        f.sql("DELETE FROM encrypted_backups").await;
        let revoked = jarvis_db::vault::revoke_unreferenced_keys(&f.db, &[User::table()], earlier)
            .await
            .expect("revoke");
        assert_eq!(revoked, 0);
    }
);
