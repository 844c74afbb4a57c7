//! The repositories on PostgreSQL and SQLite: every function, lookups through search hashes,
//! inactive filtering, refresh rotation, migrating rows, bulk unwraps, audit rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    AuditSink, CacheLimits, DataKey, Encryptor, GeneratedDataKey, KeyContext, KeyProvider,
    KeyPurpose, LocalKeyProvider, MasterKeyRef, ProviderKind, SearchKey, WrappedKey,
};
use jarvis_models::db::{self, Conn, Database};
use jarvis_models::schema::{encryption_audit_log, users};
use jarvis_models::{DbAudit, ModelError, NewApiKey, NewBackup, NewOAuthToken, Store, with_conn};

/// A local provider that counts unwraps.
#[derive(Debug)]
struct Counting {
    inner: LocalKeyProvider,
    unwraps: AtomicUsize,
}

#[async_trait]
impl KeyProvider for Counting {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    fn master_key(&self) -> MasterKeyRef {
        self.inner.master_key()
    }
    async fn generate_data_key(
        &self,
        purpose: KeyPurpose,
    ) -> jarvis_crypt::Result<GeneratedDataKey> {
        self.inner.generate_data_key(purpose).await
    }
    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
    ) -> jarvis_crypt::Result<DataKey> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap_data_key(wrapped, purpose).await
    }
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> jarvis_crypt::Result<WrappedKey> {
        self.inner.rewrap_data_key(wrapped, purpose, to).await
    }
    fn binds_data_key_ids(&self) -> bool {
        true
    }
    async fn generate_data_key_in(
        &self,
        context: &KeyContext,
    ) -> jarvis_crypt::Result<GeneratedDataKey> {
        self.inner.generate_data_key_in(context).await
    }
    async fn unwrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
    ) -> jarvis_crypt::Result<DataKey> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap_data_key_in(wrapped, context).await
    }
    async fn rewrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
        to: &MasterKeyRef,
    ) -> jarvis_crypt::Result<WrappedKey> {
        self.inner.rewrap_data_key_in(wrapped, context, to).await
    }
}

const MASTER: &str = "2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c";

struct Fixture {
    url: String,
    db: Database,
    store: Store,
    audit: DbAudit,
    provider: Arc<Counting>,
    _dir: Option<tempfile::TempDir>,
}

async fn fixture(backend: &str, limits: CacheLimits) -> Fixture {
    let (url, dir) = match backend {
        "postgres" => (jarvis_tests::fresh_postgres_database("store"), None),
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = dir.path().join("jarvis.sqlite3").display().to_string();
            (url, Some(dir))
        }
    };
    db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 4).await.expect("connect");
    let provider = Arc::new(Counting {
        inner: LocalKeyProvider::from_hex(MASTER).expect("key"),
        unwraps: AtomicUsize::new(0),
    });
    let search = jarvis_models::keys::stored_search_key(&db, provider.as_ref())
        .await
        .expect("search key");
    // The seed's application keeps its data keys in the key vault.
    let vault = jarvis_db::DbKeyVault::connect(&url).await.expect("vault");
    let encryptor = Encryptor::builder(provider.clone())
        .search_key(search)
        .cache_limits(limits)
        .key_vault(Arc::new(vault))
        .build();
    let audit = DbAudit::start(db.clone());
    let store = Store::new(db.clone(), encryptor, Arc::new(audit.clone()));
    Fixture {
        url,
        db,
        store,
        audit,
        provider,
        _dir: dir,
    }
}

/// Runs a test body on both backends.
macro_rules! both_backends {
    ($name:ident, |$f:ident: Fixture| async move $body:block) => {
        mod $name {
            use super::*;
            // An `async fn` owns its whole fixture (the temporary folder included) until the
            // end, where a closure would capture only the fields it uses.
            async fn run($f: Fixture) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(fixture("postgres", CacheLimits::default()).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(fixture("sqlite", CacheLimits::default()).await).await;
            }
        }
    };
}

both_backends!(users_round_trip_and_lookup, |f: Fixture| async move {
    let ada = f
        .store
        .create_user("Ada@Example.com")
        .await
        .expect("create");
    let grace = f
        .store
        .create_user("grace@example.com")
        .await
        .expect("create");
    assert_ne!(ada.id, grace.id);
    assert_eq!(
        f.store.find_user(ada.id).await.expect("find").email,
        "Ada@Example.com"
    );
    let found = f
        .store
        .find_user_by_email("  ADA@example.com ")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.id, ada.id);
    assert!(
        f.store
            .find_user_by_email("nobody@example.com")
            .await
            .expect("lookup")
            .is_none()
    );
    let updated = f
        .store
        .update_user_email(ada.id, "ada@lovelace.org")
        .await
        .expect("update");
    assert_eq!(updated.email, "ada@lovelace.org");
    assert!(
        f.store
            .find_user_by_email("Ada@Example.com")
            .await
            .expect("lookup")
            .is_none()
    );
    assert_eq!(
        f.store
            .find_user_by_email("ada@lovelace.org")
            .await
            .expect("lookup")
            .map(|u| u.id),
        Some(ada.id)
    );
    let listed = f.store.list_users(10, 0).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(matches!(
        f.store.find_user(999_999).await,
        Err(ModelError::NotFound { .. })
    ));
});

both_backends!(
    plaintext_rows_are_read_and_rewritten_encrypted,
    |f: Fixture| async move {
        // As existing applications insert users.
        let mut conn = f.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| diesel::sql_query(
            "INSERT INTO users (email) VALUES ('Legacy@Example.com')"
        )
        .execute(c)
        .await
        .expect("plain insert"));
        let id: i64 = with_conn!(&mut conn, |c| users::table
            .select(users::id)
            .first(c)
            .await
            .expect("id"));
        let user = f.store.find_user(id).await.expect("read plaintext row");
        assert_eq!(user.email, "Legacy@Example.com");
        f.store
            .update_user_email(id, &user.email)
            .await
            .expect("rewrite");
        let (plain, cipher): (Option<String>, Option<Vec<u8>>) =
            with_conn!(&mut conn, |c| users::table
                .find(id)
                .select((users::email, users::encrypted_email))
                .first(c)
                .await
                .expect("raw"));
        assert_eq!(plain, None);
        assert!(cipher.is_some());
        assert_eq!(
            f.store
                .find_user_by_email("legacy@example.com")
                .await
                .expect("lookup")
                .map(|u| u.id),
            Some(id)
        );
    }
);

both_backends!(
    api_keys_lookup_rotation_and_inactive_filtering,
    |f: Fixture| async move {
        let new = |service: &str, key: &str| NewApiKey {
            service_name: service.into(),
            key: key.into(),
            metadata: Some(serde_json::json!({"env": "test"})),
            expires_at: None,
        };
        let stripe = f
            .store
            .create_api_key(new("stripe", "sk_live_1"))
            .await
            .expect("create");
        let github = f
            .store
            .create_api_key(new("github", "ghp_2"))
            .await
            .expect("create");
        assert_eq!(
            f.store
                .find_api_key_by_key("sk_live_1")
                .await
                .expect("lookup")
                .map(|k| k.id),
            Some(stripe.id)
        );
        let rotated = f
            .store
            .update_api_key(stripe.id, "sk_live_3")
            .await
            .expect("rotate");
        assert_eq!(rotated.rotation_count, 1);
        assert!(rotated.last_rotated_at.is_some());
        assert!(
            f.store
                .find_api_key_by_key("sk_live_1")
                .await
                .expect("lookup")
                .is_none()
        );
        assert_eq!(
            f.store.find_api_key(stripe.id).await.expect("find").key,
            "sk_live_3"
        );
        f.store
            .deactivate_api_key(github.id)
            .await
            .expect("deactivate");
        assert!(
            f.store
                .find_api_key_by_key("ghp_2")
                .await
                .expect("lookup")
                .is_none()
        );
        assert_eq!(f.store.list_api_keys(true).await.expect("list").len(), 1);
        let all = f.store.list_api_keys(false).await.expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].metadata, Some(serde_json::json!({"env": "test"})));
    }
);

both_backends!(
    oauth_refresh_uses_a_fresh_data_key,
    |f: Fixture| async move {
        let user = f
            .store
            .create_user("owner@example.com")
            .await
            .expect("user");
        let token = f
            .store
            .create_oauth_token(NewOAuthToken {
                user_id: Some(user.id),
                provider: "google".into(),
                access_token: "ya29.access".into(),
                refresh_token: Some("1//refresh".into()),
                scope: Some("email".into()),
                expires_at: None,
            })
            .await
            .expect("create");
        let data_key = |id: i64| {
            let db = f.db.clone();
            async move {
                let mut conn = db.get().await.expect("conn");
                use jarvis_models::schema::oauth_tokens;
                let keys: (Vec<u8>, Option<Vec<u8>>) =
                    with_conn!(&mut conn, |c| oauth_tokens::table
                        .find(id)
                        .select((
                            oauth_tokens::access_token_data_key,
                            oauth_tokens::refresh_token_data_key
                        ))
                        .first(c)
                        .await
                        .expect("raw"));
                keys
            }
        };
        let (before, before_refresh) = data_key(token.id).await;
        assert_eq!(
            Some(before.clone()),
            before_refresh,
            "both tokens share one data key"
        );
        let refreshed = f
            .store
            .refresh_oauth_token(token.id, "ya29.new", Some("1//new"), None)
            .await
            .expect("refresh");
        assert_eq!(refreshed.rotation_count, 1);
        let (after, after_refresh) = data_key(token.id).await;
        assert_ne!(before, after, "a fresh data key on refresh");
        assert_eq!(Some(after), after_refresh);
        let found = f.store.find_oauth_token(token.id).await.expect("find");
        assert_eq!(found.access_token, "ya29.new");
        assert_eq!(found.refresh_token.as_deref(), Some("1//new"));
        f.store
            .deactivate_oauth_token(token.id)
            .await
            .expect("deactivate");
        assert!(
            f.store
                .list_oauth_tokens(user.id, true)
                .await
                .expect("list")
                .is_empty()
        );
        assert_eq!(
            f.store
                .list_oauth_tokens(user.id, false)
                .await
                .expect("list")
                .len(),
            1
        );
    }
);

both_backends!(backups_are_recorded, |f: Fixture| async move {
    let backup = f
        .store
        .create_backup(NewBackup {
            backup_name: "nightly".into(),
            backup_type: "sqlite".into(),
            storage_path: None,
            data: Some(b"SQLite format 3\0...".to_vec()),
            size_bytes: Some(19),
            checksum: Some("00".repeat(32)),
            master_key_id: Some(f.store.encryptor().master_key().key_id),
        })
        .await
        .expect("record");
    let listed = f.store.list_backups().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, backup.id);
    assert_eq!(
        listed[0].data.as_deref(),
        Some(&b"SQLite format 3\0..."[..])
    );
});

both_backends!(
    backups_record_the_master_keys_of_their_rows,
    |f: Fixture| async move {
        let new = |name: &str| NewBackup {
            backup_name: name.into(),
            backup_type: "pg_dump".into(),
            storage_path: Some(format!("/backups/{name}.jvbk")),
            data: None,
            size_bytes: Some(1),
            checksum: None,
            master_key_id: Some("arn:aws:kms:us-east-1:111122223333:key/stream".into()),
        };
        let rows_key = "arn:aws:kms:us-east-1:111122223333:key/rows";
        let with_keys = f
            .store
            .create_backup_with_master_keys(new("with"), vec![rows_key.into(), "local-1#v2".into()])
            .await
            .expect("record");
        let without = f.store.create_backup(new("without")).await.expect("record");
        let keys = f.store.backup_keys().await.expect("keys");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].id, without.id, "newest first");
        assert_eq!(keys[0].rows_master_key_ids, Some(Vec::new()));
        assert_eq!(keys[1].id, with_keys.id);
        assert_eq!(
            keys[1].rows_master_key_ids,
            Some(vec![rows_key.to_owned(), "local-1#v2".to_owned()])
        );
        assert!(!keys[1].in_row);
        // A local key id names every version of it; a key id is not a prefix match.
        assert!(keys[1].names(rows_key) && keys[1].names("local-1"));
        assert!(!keys[1].names("local") && !keys[0].names(rows_key));
        for (key, backups) in [
            (rows_key, 1),
            ("local-1", 1),
            ("arn:aws:kms:us-east-1:111122223333:key/stream", 2),
            ("arn:aws:kms:us-east-1:111122223333:key/other", 0),
        ] {
            let usage = jarvis_models::verify::key_usage(&f.db, key)
                .await
                .expect("usage");
            assert_eq!(usage.backups, backups, "{key}");
        }
    }
);

/// 10,000 users under 2 data keys: a cold listing makes exactly 2 unwrap calls.
async fn listing_unwraps_each_data_key_once(backend: &str) {
    let f = fixture(
        backend,
        CacheLimits {
            max_messages: 5_000,
            ..CacheLimits::default()
        },
    )
    .await;
    let emails: Vec<String> = (0..10_000)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    f.store.create_users(emails).await.expect("create");
    // A cold reader over the same master key, database and key vault.
    let vault = jarvis_db::DbKeyVault::connect(&f.url).await.expect("vault");
    let reader = Encryptor::builder(f.provider.clone())
        .key_vault(Arc::new(vault))
        .build();
    let store = Store::new(f.db.clone(), reader, Arc::new(jarvis_crypt::NoAudit));
    let before = AtomicUsize::load(&f.provider.unwraps, Ordering::SeqCst);
    let users = store.list_users(20_000, 0).await.expect("list");
    assert_eq!(users.len(), 10_000);
    assert_eq!(users[1234].email, "user1234@example.com");
    assert_eq!(
        AtomicUsize::load(&f.provider.unwraps, Ordering::SeqCst) - before,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_unwraps_each_data_key_once_postgres() {
    listing_unwraps_each_data_key_once("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_unwraps_each_data_key_once_sqlite() {
    listing_unwraps_each_data_key_once("sqlite").await;
}

both_backends!(
    audit_rows_cover_operations_and_failures_without_secrets,
    |f: Fixture| async move {
        let secret_email = "very-secret-person@example.com";
        let secret_key = "sk_live_TOPSECRET_0123456789";
        let user = f.store.create_user(secret_email).await.expect("user");
        f.store
            .create_api_key(NewApiKey {
                service_name: "stripe".into(),
                key: secret_key.into(),
                metadata: None,
                expires_at: None,
            })
            .await
            .expect("key");
        f.store
            .find_user_by_email(secret_email)
            .await
            .expect("lookup");
        f.store.list_users(10, 0).await.expect("list");
        // A failure: row 1's email moved onto another row.
        let other = f
            .store
            .create_user("other@example.com")
            .await
            .expect("user");
        let mut conn = f.db.get().await.expect("conn");
        let moved: StoredColumns = with_conn!(&mut conn, |c| users::table
            .find(user.id)
            .select((
                users::encrypted_email,
                users::email_iv,
                users::email_auth_tag,
                users::email_data_key
            ))
            .first(c)
            .await
            .expect("raw"));
        with_conn!(&mut conn, |c| diesel::update(users::table.find(other.id))
            .set((
                users::encrypted_email.eq(moved.0),
                users::email_iv.eq(moved.1),
                users::email_auth_tag.eq(moved.2),
                users::email_data_key.eq(moved.3),
            ))
            .execute(c)
            .await
            .expect("move"));
        let err = f
            .store
            .find_user(other.id)
            .await
            .expect_err("moved ciphertext");
        assert_eq!(err.kind(), "authentication_failed");
        f.audit.flush().await;

        let rows: Vec<AuditLine> = with_conn!(&mut conn, |c| encryption_audit_log::table
            .order(encryption_audit_log::id)
            .select((
                encryption_audit_log::operation_type,
                encryption_audit_log::table_name,
                encryption_audit_log::record_id,
                encryption_audit_log::status,
                encryption_audit_log::error_kind,
            ))
            .load(c)
            .await
            .expect("audit rows"));
        assert!(
            rows.iter()
                .any(|r| r.0 == "encrypt" && r.1 == "users" && r.3 == "success")
        );
        assert!(rows.iter().any(|r| r.0 == "encrypt" && r.1 == "api_keys"));
        assert!(rows.iter().any(|r| r.0 == "decrypt" && r.1 == "users"));
        assert!(rows.iter().any(|r| r.3 == "error"
            && r.4.as_deref() == Some("authentication_failed")
            && r.2 == Some(other.id.to_string())));
        // Scan every audit row, whole, for the plaintexts.
        let dump: Vec<String> = with_conn!(&mut conn, |c| {
            diesel::sql_query(
        "SELECT operation_type || '|' || table_name || '|' || COALESCE(record_id, '') || '|' ||
                COALESCE(column_name, '') || '|' || COALESCE(key_id, '') || '|' || status || '|' ||
                COALESCE(error_kind, '') || '|' || COALESCE(CAST(context AS TEXT), '') AS line
         FROM encryption_audit_log"
    )
    .load::<Line>(c)
    .await
    .expect("dump")
        })
        .into_iter()
        .map(|l| l.line)
        .collect();
        assert!(!dump.is_empty());
        for line in &dump {
            for secret in [secret_email, secret_key, "very-secret", "TOPSECRET", MASTER] {
                assert!(!line.contains(secret), "audit row leaks a secret: {line}");
            }
        }
        drop(conn);
        // Shutdown writes what is queued; later events are counted as dropped.
        f.store.find_user(user.id).await.expect("find");
        f.audit.shutdown().await;
        let written = f.audit.written();
        f.store
            .find_user(user.id)
            .await
            .expect("find after shutdown");
        assert_eq!(f.audit.written(), written);
        assert_eq!(f.audit.dropped(), 1);
    }
);

/// The four stored-form columns of a nullable field, raw.
type StoredColumns = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);
/// Operation, table, record id, status, error kind of an audit row.
type AuditLine = (String, String, Option<String>, String, Option<String>);

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

#[tokio::test]
async fn the_stored_search_key_is_one_key_for_everyone() {
    let f = fixture("sqlite", CacheLimits::default()).await;
    let a = jarvis_models::keys::stored_search_key(&f.db, f.provider.as_ref())
        .await
        .expect("key");
    let b = jarvis_models::keys::stored_search_key(&f.db, f.provider.as_ref())
        .await
        .expect("key");
    assert_eq!(a.expose_secret(), b.expose_secret());
    assert!(!matches!(
        f.db.get().await.expect("conn"),
        Conn::Postgres(_)
    ));
    let _ = SearchKey::generate();
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_audit_channel_drops_and_counts_and_shutdown_loses_nothing_queued() {
    let f = fixture("sqlite", CacheLimits::default()).await;
    let audit = DbAudit::with_capacity(f.db.clone(), 8);
    // The writer cannot run while this task does not yield: the ninth event finds the
    // channel full.
    for i in 0..20 {
        audit.record(
            jarvis_crypt::AuditEvent::new(
                jarvis_crypt::Operation::Verify,
                "users".to_owned(),
                std::time::Instant::now(),
            )
            .records([i]),
        );
    }
    assert_eq!(audit.dropped(), 12);
    audit.shutdown().await;
    assert_eq!(audit.written(), 8);
    let mut conn = f.db.get().await.expect("conn");
    let verify_rows: i64 = with_conn!(&mut conn, |c| encryption_audit_log::table
        .filter(encryption_audit_log::operation_type.eq("verify"))
        .count()
        .get_result(c)
        .await
        .expect("count"));
    assert_eq!(verify_rows, 8);
}

/// Reads load every stored-form column but the search hash (the derive's load shape);
/// lookups still filter on it.
#[test]
fn reads_do_not_load_the_search_hash() {
    use diesel::SelectableHelper;
    use jarvis_crypt::EncryptedLoad;
    use jarvis_models::User;
    use jarvis_models::models::UserRow;
    type UserLoad = <User as EncryptedLoad>::Load;
    let load =
        diesel::debug_query::<diesel::pg::Pg, _>(&users::table.select(UserLoad::as_select()))
            .to_string();
    for column in [
        "encrypted_email",
        "email_iv",
        "email_auth_tag",
        "email_data_key",
        "\"email\"",
    ] {
        assert!(load.contains(column), "{column}: {load}");
    }
    assert!(!load.contains("email_hash"), "{load}");
    let row = diesel::debug_query::<diesel::pg::Pg, _>(&users::table.select(UserRow::as_select()))
        .to_string();
    assert!(row.contains("email_hash"), "{row}");
}
