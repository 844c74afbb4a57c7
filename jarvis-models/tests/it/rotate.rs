//! The rotation job (`jarvis rotate`) on PostgreSQL and SQLite: what counts as done is the
//! run's progress and the values' data keys, never the application's timestamps; a run
//! under another search key starts afresh; re-wrapping leaves the rotation clock alone; and
//! re-hashing under a new search key, whole and interrupted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::NaiveDateTime;
use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    Encryptor, KeyEnvelope, KeyProvider, LocalKeyProvider, MasterKeyRef, NoAudit, SearchKey,
};
use jarvis_models::db::{self, Database};
use jarvis_models::jobs::{Progress, RotateMode, RotateOptions, RotateReport, rotate};
use jarvis_models::schema::{api_keys, jarvis_job_progress, jarvis_jobs, oauth_tokens, users};
use jarvis_models::{ModelError, NewApiKey, NewOAuthToken, Store, with_conn};

/// Two versions of one local master key: the old one (1) and the new one (2).
const MASTER: &str = "1:2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c,\
                      2:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SEARCH_A: &[u8] = b"the first search key of the rotation tests, 32+ bytes";
const SEARCH_B: &[u8] = b"the second search key of the rotation tests, 32+ bytes";

const USERS: usize = 60;
const API_KEYS: usize = 20;
const TOKENS: usize = 15;
const BATCH: usize = 10;

fn provider(version: u32) -> Arc<dyn KeyProvider> {
    Arc::new(
        LocalKeyProvider::from_hex(MASTER)
            .expect("key")
            .with_current_version(version)
            .expect("version"),
    )
}

fn search(key: &[u8]) -> SearchKey {
    SearchKey::new(key.to_vec()).expect("search key")
}

struct Fixture {
    db: Database,
    _dir: Option<tempfile::TempDir>,
}

async fn fixture(backend: &str) -> Fixture {
    let (url, dir) = match backend {
        "postgres" => (jarvis_tests::fresh_postgres_database("models_rotate"), None),
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = dir.path().join("jarvis.sqlite3").display().to_string();
            (url, Some(dir))
        }
    };
    db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 4).await.expect("connect");
    Fixture { db, _dir: dir }
}

impl Fixture {
    /// A store writing under master key version `version`, hashing with `key` (none: a store
    /// that only decrypts, as `rotate --rehash` opens it).
    fn store(&self, version: u32, key: Option<&[u8]>) -> Store {
        let mut builder = Encryptor::builder(provider(version));
        if let Some(key) = key {
            builder = builder.search_key(search(key));
        }
        Store::new(self.db.clone(), builder.build(), Arc::new(NoAudit))
    }

    /// Users, API keys and OAuth tokens written by the application under `store`.
    async fn seed(&self, store: &Store) {
        let emails: Vec<String> = (0..USERS).map(|i| format!("User{i}@Example.com")).collect();
        store.create_users(emails).await.expect("users");
        for i in 0..API_KEYS {
            store
                .create_api_key(NewApiKey {
                    service_name: format!("service-{i}"),
                    key: format!("sk_live_{i}"),
                    metadata: None,
                    expires_at: None,
                })
                .await
                .expect("api key");
        }
        for i in 0..TOKENS {
            store
                .create_oauth_token(NewOAuthToken {
                    user_id: Some(1),
                    provider: "google".into(),
                    access_token: format!("ya29.{i}"),
                    refresh_token: (i % 2 == 0).then(|| format!("1//{i}")),
                    scope: None,
                    expires_at: None,
                })
                .await
                .expect("oauth token");
        }
    }

    /// The master key of every value of every encrypted column, counted.
    async fn master_keys(&self) -> BTreeMap<String, usize> {
        let mut conn = self.db.get().await.expect("conn");
        let mut keys: Vec<Option<Vec<u8>>> = with_conn!(&mut conn, |c| users::table
            .select(users::email_data_key)
            .load(c)
            .await
            .expect("users"));
        let api: Vec<Vec<u8>> = with_conn!(&mut conn, |c| api_keys::table
            .select(api_keys::key_data_key)
            .load(c)
            .await
            .expect("api keys"));
        let tokens: Vec<(Vec<u8>, Option<Vec<u8>>)> = with_conn!(&mut conn, |c| {
            oauth_tokens::table
                .select((
                    oauth_tokens::access_token_data_key,
                    oauth_tokens::refresh_token_data_key,
                ))
                .load(c)
                .await
                .expect("tokens")
        });
        keys.extend(api.into_iter().map(Some));
        for (access, refresh) in tokens {
            keys.push(Some(access));
            keys.push(refresh);
        }
        let mut counts = BTreeMap::new();
        for bytes in keys.into_iter().flatten() {
            let name = match KeyEnvelope::parse(&bytes).expect("envelope") {
                KeyEnvelope::Jarvis { master_key, .. } => master_key.to_string(),
                other => panic!("not a jarvis envelope: {other:?}"),
            };
            *counts.entry(name).or_default() += 1;
        }
        counts
    }

    async fn count_jobs(&self, unfinished: bool) -> i64 {
        let mut conn = self.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| {
            let query = jarvis_jobs::table.into_boxed();
            let query = if unfinished {
                query.filter(jarvis_jobs::finished_at.is_null())
            } else {
                query
            };
            query.count().get_result(c).await.expect("jobs")
        })
    }

    async fn progress_rows(&self) -> i64 {
        let mut conn = self.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| jarvis_job_progress::table
            .count()
            .get_result(c)
            .await
            .expect("progress"))
    }

    async fn api_key_clocks(&self) -> Vec<(i64, i32, Option<NaiveDateTime>)> {
        let mut conn = self.db.get().await.expect("conn");
        with_conn!(&mut conn, |c| api_keys::table
            .order(api_keys::id)
            .select((
                api_keys::id,
                api_keys::rotation_count,
                api_keys::last_rotated_at
            ))
            .load(c)
            .await
            .expect("clocks"))
    }

    /// Every user and API key found by its plaintext through `store`'s search key: the
    /// models' own lookups (hash filter, decrypt, confirm), without the repositories'
    /// start-up check, which refuses a search key other than the recorded one.
    async fn lookups_found(&self, store: &Store) -> usize {
        let encryptor = store.encryptor();
        let mut conn = self.db.get().await.expect("conn");
        let mut found = 0;
        for i in 0..USERS {
            let email = format!("  user{i}@EXAMPLE.com");
            let users = jarvis_models::User::email_find(encryptor, &email, |filter| async {
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| users::table
                    .filter(filter)
                    .select(jarvis_models::models::UserRow::as_select())
                    .load(c)
                    .await?))
            })
            .await
            .expect("lookup");
            found += users.len();
        }
        for i in 0..API_KEYS {
            let key = format!("sk_live_{i}");
            let keys = jarvis_models::ApiKey::key_find(encryptor, &key, |filter| async {
                Ok::<_, ModelError>(with_conn!(&mut conn, |c| api_keys::table
                    .filter(filter)
                    .select(jarvis_models::models::ApiKeyRow::as_select())
                    .load(c)
                    .await?))
            })
            .await
            .expect("lookup");
            found += keys.len();
        }
        found
    }
}

fn options(mode: RotateMode) -> RotateOptions {
    RotateOptions {
        batch_size: BATCH,
        ..RotateOptions::new(mode, Arc::new(NoAudit))
    }
}

fn name(key: &MasterKeyRef) -> String {
    key.to_string()
}

/// Runs `f` to completion from inside a synchronous progress callback.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Runs a test body on both backends.
macro_rules! both_backends {
    ($name:ident, |$f:ident: Fixture| async move $body:block) => {
        mod $name {
            use super::*;
            async fn run($f: Fixture) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                run(fixture("postgres").await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run(fixture("sqlite").await).await;
            }
        }
    };
}

// With `--reencrypt --to-key NEW`, the application rewrites rows under the old master key
// (with a fresh `last_rotated_at` where it keeps one) between two batches of the run, after
// the run has done them: the run takes them up again and ends with every value under NEW.
both_backends!(
    application_writes_during_a_run_do_not_finish_it_under_the_old_key,
    |f: Fixture| async move {
        let app = f.store(1, Some(SEARCH_A));
        f.seed(&app).await;
        let old = name(&provider(1).master_key());
        let new = name(&provider(2).master_key());
        assert_eq!(f.master_keys().await.keys().collect::<Vec<_>>(), vec![&old]);

        let job = f.store(2, Some(SEARCH_A));
        let wrote = AtomicBool::new(false);
        let on_batch = |p: Progress| {
            // The first batch of api_keys has committed: users are all done, api keys 1..=10.
            if p.rows_done == (USERS + BATCH) as u64 && !wrote.swap(true, Ordering::SeqCst) {
                block_on(async {
                    for id in 1..=3 {
                        app.update_api_key(id, &format!("sk_live_replaced_{id}"))
                            .await
                            .expect("application update");
                    }
                    app.update_user_email(2, "Moved@Example.com")
                        .await
                        .expect("application update");
                });
            }
        };
        let report = rotate(&job, &options(RotateMode::Reencrypt), &on_batch)
            .await
            .expect("rotate");
        assert!(
            AtomicBool::load(&wrote, Ordering::SeqCst),
            "the application wrote mid-run"
        );
        assert!(report.finished, "{report:?}");
        assert_eq!(report.rows_remaining(), 0);
        // The application's writes were real: fresh clocks, old master key, after the job had
        // done the rows.
        let clocks = f.api_key_clocks().await;
        assert!(clocks[..3].iter().all(|(_, n, at)| *n >= 1 && at.is_some()));
        // Read back from the envelopes: nothing is left under the old master key.
        let keys = f.master_keys().await;
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            vec![&new],
            "every value under the new master key: {keys:?}"
        );
        let users = report
            .tables
            .iter()
            .find(|t| t.table == "users")
            .expect("users");
        assert_eq!(
            users.rows_rotated,
            USERS as u64 + 1,
            "the rewritten user was done again"
        );
        assert_eq!(f.count_jobs(true).await, 0, "the run is finished");
        assert_eq!(
            f.progress_rows().await,
            0,
            "a finished run's progress is deleted"
        );
        let found = job
            .find_user_by_email("moved@example.com")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(found.id, 2);
    }
);

// A run interrupted, then resumed with another search key: a new run, which does every row
// (the interrupted run's rows included) with the new key's hashes.
both_backends!(
    a_run_under_another_search_key_starts_afresh,
    |f: Fixture| async move {
        let app = f.store(1, Some(SEARCH_A));
        f.seed(&app).await;
        let stop = Arc::new(AtomicBool::new(false));
        let first = {
            let mut options = options(RotateMode::Reencrypt);
            options.stop = Some(Arc::clone(&stop));
            let flag = Arc::clone(&stop);
            rotate(&f.store(1, Some(SEARCH_A)), &options, &move |_| {
                flag.store(true, Ordering::SeqCst)
            })
            .await
            .expect("first run")
        };
        assert!(first.stopped && !first.finished, "{first:?}");
        assert_eq!(first.rows_rotated(), BATCH as u64);
        assert_eq!(f.count_jobs(true).await, 1);

        let with_b = f.store(1, Some(SEARCH_B));
        let second = rotate(&with_b, &options(RotateMode::Reencrypt), &|_| {})
            .await
            .expect("second run");
        assert!(second.finished, "{second:?}");
        assert_ne!(
            second.started_at, first.started_at,
            "not the interrupted run"
        );
        assert_eq!(
            second.rows_rotated(),
            (USERS + API_KEYS + TOKENS) as u64,
            "every row, the first run's batch included"
        );
        assert_eq!(f.count_jobs(false).await, 2);
        assert_eq!(
            f.count_jobs(true).await,
            1,
            "the run under the other key stays open"
        );
        assert_eq!(f.lookups_found(&with_b).await, USERS + API_KEYS);

        // The same parameters resume: stopped again, then continued by the same run.
        stop.store(false, Ordering::SeqCst);
        let mut options = options(RotateMode::Reencrypt);
        options.stop = Some(Arc::clone(&stop));
        let flag = Arc::clone(&stop);
        let stopped = rotate(&with_b, &options, &move |_| {
            flag.store(true, Ordering::SeqCst)
        })
        .await
        .expect("third run");
        let resumed = rotate(&with_b, &self::options(RotateMode::Reencrypt), &|_| {})
            .await
            .expect("resumed");
        assert_eq!(resumed.started_at, stopped.started_at, "the same run");
        assert_eq!(
            resumed.rows_rotated() + stopped.rows_rotated(),
            (USERS + API_KEYS + TOKENS) as u64,
            "each row once"
        );
    }
);

// Re-wrapping under another master key changes no data key: the clock `--older-than` reads
// (`last_rotated_at`, `rotation_count`) stays as it was.
both_backends!(
    to_key_leaves_the_rotation_clock_alone,
    |f: Fixture| async move {
        let app = f.store(1, Some(SEARCH_A));
        f.seed(&app).await;
        app.update_api_key(1, "sk_live_replaced")
            .await
            .expect("rotated by the application");
        {
            let mut conn = f.db.get().await.expect("conn");
            let long_ago = chrono::Utc::now().naive_utc() - chrono::Duration::days(100);
            with_conn!(&mut conn, |c| diesel::update(
                api_keys::table.filter(api_keys::id.le(2))
            )
            .set(api_keys::last_rotated_at.eq(long_ago))
            .execute(c)
            .await
            .expect("age"));
        }
        let before = f.api_key_clocks().await;
        async fn due(store: &Store) -> u64 {
            let mut options = options(RotateMode::OlderThan(chrono::Duration::days(90)));
            options.table = Some("api_keys".into());
            options.dry_run = true;
            rotate(store, &options, &|_| {})
                .await
                .expect("dry run")
                .rows_remaining()
        }
        assert_eq!(due(&app).await, 2);

        let to = provider(2).master_key();
        let job = f.store(2, Some(SEARCH_A));
        let report = rotate(&job, &options(RotateMode::ToKey(to.clone())), &|_| {})
            .await
            .expect("to-key");
        assert!(report.finished);
        assert_eq!(report.rows_rotated(), (USERS + API_KEYS + TOKENS) as u64);
        assert_eq!(
            f.master_keys().await.keys().collect::<Vec<_>>(),
            vec![&name(&to)]
        );
        assert_eq!(
            f.api_key_clocks().await,
            before,
            "rotation columns untouched"
        );
        assert_eq!(due(&job).await, 2, "still due for re-encryption by age");
    }
);

// `rehash`: rows written under search key A, the fingerprint of A recorded; a re-hash to B
// finds every row through B, records B, and a rerun has nothing to do.
both_backends!(
    rehash_moves_every_search_hash_to_the_new_key,
    |f: Fixture| async move {
        jarvis_models::keys::record_search_key(&f.db, &search(SEARCH_A))
            .await
            .expect("record A");
        let app = f.store(1, Some(SEARCH_A));
        f.seed(&app).await;
        let with_b = f.store(1, Some(SEARCH_B));
        assert_eq!(f.lookups_found(&with_b).await, 0);
        let clocks = f.api_key_clocks().await;
        let keys = f.master_keys().await;

        let mut options = options(RotateMode::Rehash);
        options.search_key = Some(Arc::new(search(SEARCH_B)));
        options.workers = 2;
        let job = f.store(1, None);
        let report = rotate(&job, &options, &|_| {}).await.expect("rehash");
        assert!(report.finished, "{report:?}");
        let tables: Vec<(&str, u64, u64)> = report
            .tables
            .iter()
            .map(|t| (t.table, t.rows_rotated, t.values))
            .collect();
        assert_eq!(
            tables,
            vec![
                ("users", USERS as u64, USERS as u64),
                ("api_keys", API_KEYS as u64, API_KEYS as u64)
            ]
        );
        assert_eq!(
            report.search_key_fingerprints,
            Some((
                search(SEARCH_A).fingerprint(),
                search(SEARCH_B).fingerprint()
            ))
        );
        assert_eq!(f.lookups_found(&with_b).await, USERS + API_KEYS);
        assert_eq!(f.lookups_found(&app).await, 0, "nothing is left under A");
        assert_eq!(
            jarvis_models::keys::recorded_search_key_fingerprint(&f.db)
                .await
                .expect("recorded"),
            Some(search(SEARCH_B).fingerprint())
        );
        jarvis_models::keys::check_search_key(&f.db, &search(SEARCH_B))
            .await
            .expect("B passes the start-up check");
        assert!(
            jarvis_models::keys::check_search_key(&f.db, &search(SEARCH_A))
                .await
                .is_err()
        );
        assert_eq!(f.api_key_clocks().await, clocks, "no data key changed");
        assert_eq!(f.master_keys().await, keys);

        // A rerun has nothing to do, and records no run.
        let again = rotate(&job, &options, &|_| {}).await.expect("rerun");
        assert!(again.finished);
        assert_eq!(again.rows_rotated(), 0);
        assert_eq!(f.count_jobs(false).await, 1);
        assert_eq!(f.lookups_found(&with_b).await, USERS + API_KEYS);
    }
);

// An interrupted re-hash keeps the old fingerprint recorded, and a rerun resumes it: the
// rows done are not done again.
both_backends!(an_interrupted_rehash_resumes, |f: Fixture| async move {
    jarvis_models::keys::record_search_key(&f.db, &search(SEARCH_A))
        .await
        .expect("record A");
    let app = f.store(1, Some(SEARCH_A));
    f.seed(&app).await;
    let with_b = f.store(1, Some(SEARCH_B));
    let job = f.store(1, None);
    let stop = Arc::new(AtomicBool::new(false));
    let batches = AtomicUsize::new(0);
    let mut options = options(RotateMode::Rehash);
    options.search_key = Some(Arc::new(search(SEARCH_B)));
    options.stop = Some(Arc::clone(&stop));
    let interrupted = rotate(&job, &options, &|_| {
        if batches.fetch_add(1, Ordering::SeqCst) == 2 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .await
    .expect("interrupted");
    assert!(interrupted.stopped && !interrupted.finished);
    assert_eq!(interrupted.rows_rotated(), 3 * BATCH as u64);
    assert_eq!(f.lookups_found(&with_b).await, 3 * BATCH);
    assert_eq!(
        jarvis_models::keys::recorded_search_key_fingerprint(&f.db)
            .await
            .expect("recorded"),
        Some(search(SEARCH_A).fingerprint()),
        "the old key stays recorded until every hash is done"
    );

    stop.store(false, Ordering::SeqCst);
    let resumed = rotate(&job, &options, &|_| {}).await.expect("resumed");
    assert!(resumed.finished, "{resumed:?}");
    assert_eq!(resumed.started_at, interrupted.started_at, "the same run");
    assert_eq!(
        resumed.rows_rotated(),
        (USERS + API_KEYS - 3 * BATCH) as u64,
        "only the rows left"
    );
    assert_eq!(f.lookups_found(&with_b).await, USERS + API_KEYS);
    assert_eq!(
        jarvis_models::keys::recorded_search_key_fingerprint(&f.db)
            .await
            .expect("recorded"),
        Some(search(SEARCH_B).fingerprint())
    );
    assert_eq!(f.count_jobs(true).await, 0);
});

// What `rehash` refuses: no recorded fingerprint (nothing says which key the hashes are
// under), no new key, a single table.
both_backends!(rehash_refuses_what_it_cannot_do, |f: Fixture| async move {
    let configuration = |result: Result<RotateReport, ModelError>| match result {
        Err(ModelError::Crypto(jarvis_crypt::Error::Configuration(message))) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let mut options = options(RotateMode::Rehash);
    options.search_key = Some(Arc::new(search(SEARCH_B)));
    let message = configuration(rotate(&f.store(1, None), &options, &|_| {}).await);
    assert!(
        message.contains("no search key fingerprint is recorded"),
        "{message}"
    );

    jarvis_models::keys::record_search_key(&f.db, &search(SEARCH_A))
        .await
        .expect("record A");
    options.search_key = None;
    let message = configuration(rotate(&f.store(1, None), &options, &|_| {}).await);
    assert!(message.contains("needs the new search key"), "{message}");

    options.search_key = Some(Arc::new(search(SEARCH_B)));
    options.table = Some("users".into());
    let message = configuration(rotate(&f.store(1, None), &options, &|_| {}).await);
    assert!(message.contains("every table"), "{message}");
    assert_eq!(f.count_jobs(false).await, 0);
});
