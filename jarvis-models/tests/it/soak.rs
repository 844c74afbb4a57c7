//! A pool of connections under concurrent inserts, lookups and rotations for a fixed time:
//! no deadlock, no error, every row verifies afterwards. And a value whose plaintext is not
//! UTF-8 in a `String` field: a clear error, no panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{Binding, Encryptor, ErrorKind, LocalKeyProvider, NoAudit, SearchKey};
use jarvis_models::jobs::{Progress, RotateMode, RotateOptions, rotate};
use jarvis_models::schema::users;
use jarvis_models::{Database, DbAudit, NewApiKey, NewOAuthToken, Store, db, with_conn};

const MASTER: &str = "2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c";
const SALT: &str = "a search salt for the soak test, long enough to be accepted";

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::from_hex(MASTER).expect("key")))
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("salt"))
        .build()
}

fn no_progress(_: Progress) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_lookups_and_rotations_for_a_fixed_time() {
    let url = jarvis_tests::fresh_postgres_database("soak");
    db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 8).await.expect("connect");
    let audit = DbAudit::start(db.clone());
    let store = Store::new(db.clone(), encryptor(), Arc::new(audit.clone()));
    let api = store
        .create_api_key(NewApiKey {
            service_name: "stripe".into(),
            key: "sk_live_soak_0".into(),
            metadata: None,
            expires_at: None,
        })
        .await
        .expect("api key");
    let token = store
        .create_oauth_token(NewOAuthToken {
            user_id: None,
            provider: "google".into(),
            access_token: "ya29.soak-0".into(),
            refresh_token: Some("1//soak-0".into()),
            scope: None,
            expires_at: None,
        })
        .await
        .expect("token");

    let until = Instant::now() + Duration::from_secs(8);
    let inserted = Arc::new(AtomicU64::new(0));
    let lookups = Arc::new(AtomicU64::new(0));
    let rotations = Arc::new(AtomicU64::new(0));
    let api_updates = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 0..4u64 {
        let (store, inserted) = (store.clone(), Arc::clone(&inserted));
        tasks.push(tokio::spawn(async move {
            let mut batch = 0u64;
            while Instant::now() < until {
                let emails: Vec<String> = (0..20)
                    .map(|i| format!("w{writer}-b{batch}-{i}@example.com"))
                    .collect();
                store.create_users(emails).await.expect("insert");
                inserted.fetch_add(20, Ordering::SeqCst);
                batch += 1;
            }
        }));
    }
    for reader in 0..3u64 {
        let (store, lookups) = (store.clone(), Arc::clone(&lookups));
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                let writer = (reader + i) % 4;
                // The first batch of each writer exists once it has written anything.
                let email = format!("W{writer}-B0-{}@Example.com", i % 20);
                if let Some(user) = store.find_user_by_email(&email).await.expect("lookup") {
                    assert_eq!(user.email, email.to_lowercase());
                }
                store.list_users(50, 0).await.expect("list");
                lookups.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    {
        let (store, rotations) = (store.clone(), Arc::clone(&rotations));
        let api_updates = Arc::clone(&api_updates);
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                store
                    .update_api_key(api.id, &format!("sk_live_soak_{i}"))
                    .await
                    .expect("api key rotation");
                api_updates.fetch_add(1, Ordering::SeqCst);
                store
                    .refresh_oauth_token(token.id, &format!("ya29.soak-{i}"), None, None)
                    .await
                    .expect("token refresh");
                rotations.fetch_add(2, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    {
        let (store, rotations) = (store.clone(), Arc::clone(&rotations));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                // The rotate job's batches alongside the writers (SKIP LOCKED).
                let mut options = RotateOptions::new(
                    RotateMode::OlderThan(chrono::Duration::zero()),
                    Arc::new(NoAudit),
                );
                options.table = Some("users".into());
                options.batch_size = 100;
                options.workers = 2;
                let report = rotate(&store, &options, &no_progress)
                    .await
                    .expect("rotate");
                rotations.fetch_add(report.rows_rotated(), Ordering::SeqCst);
            }
        }));
    }
    let deadline = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks));
    for result in deadline
        .await
        .expect("no deadlock: every task ended in time")
    {
        result.expect("no task failed");
    }
    audit.shutdown().await;

    let inserted = AtomicU64::load(&inserted, Ordering::SeqCst);
    assert!(
        inserted > 0
            && AtomicU64::load(&lookups, Ordering::SeqCst) > 0
            && AtomicU64::load(&rotations, Ordering::SeqCst) > 0
    );
    let mut conn = db.get().await.expect("conn");
    let rows: i64 = with_conn!(&mut conn, |c| users::table
        .count()
        .get_result(c)
        .await
        .expect("count"));
    assert_eq!(rows as u64, inserted);
    let report = jarvis_models::verify::verify(&db, &encryptor(), None)
        .await
        .expect("verify");
    assert!(report.is_clean(), "{:?}", report.failures);
    // Every rotation of the API key was counted once, none lost to a concurrent write.
    let api_key = store.find_api_key(api.id).await.expect("api key");
    assert_eq!(
        api_key.rotation_count as u64,
        AtomicU64::load(&api_updates, Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_plaintext_that_is_not_utf8_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("utf8.sqlite3").display().to_string();
    db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 2).await.expect("connect");
    let store = Store::new(db.clone(), encryptor(), Arc::new(NoAudit));
    let user = store.create_user("valid@example.com").await.expect("user");
    // The same row, its email replaced by a correctly sealed value that is not UTF-8.
    let stored = encryptor()
        .encrypt(
            &Binding::new("users", "encrypted_email", user.id),
            &[0xFF, 0xFE, 0x00, 0xC3],
        )
        .await
        .expect("seal");
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| diesel::update(users::table.find(user.id))
        .set((
            users::encrypted_email.eq(stored.ciphertext.as_bytes()),
            users::email_iv.eq(stored.nonce.as_bytes()),
            users::email_auth_tag.eq(stored.tag.as_bytes()),
            users::email_data_key.eq(stored.data_key.as_bytes()),
        ))
        .execute(c)
        .await
        .expect("update"));
    let error = store.find_user(user.id).await.expect_err("not UTF-8");
    assert_eq!(
        error.crypto_kind(),
        Some(ErrorKind::InvalidPlaintext),
        "{error}"
    );
    assert!(!error.to_string().contains('\u{FFFD}'));
}
