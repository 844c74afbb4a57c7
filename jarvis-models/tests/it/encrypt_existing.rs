//! The plaintext-migration job (`jarvis encrypt-existing`) on PostgreSQL and SQLite: a full
//! run with several workers, dry runs, the stop flag, a job dropped mid-batch, two processes
//! at once (PostgreSQL), a key provider failing mid-job, and a provider that cannot unwrap
//! what it wraps (caught by the verification before commit).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    AuditSink, CacheLimits, DataKey, Encryptor, GeneratedDataKey, KeyProvider, KeyPurpose,
    LocalKeyProvider, MasterKeyRef, MemoryAudit, Operation, ProviderKind, WrappedKey,
};
use jarvis_models::db::{self, Database};
use jarvis_models::jobs::{
    EncryptExistingOptions, EncryptExistingReport, Progress, encrypt_existing,
};
use jarvis_models::schema::{encryption_audit_log, users};
use jarvis_models::{DbAudit, ModelError, Store, with_conn};

const MASTER: &str = "2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c";

fn local() -> LocalKeyProvider {
    LocalKeyProvider::from_hex(MASTER).expect("key")
}

/// A local provider that counts calls and fails (or hangs) on demand.
#[derive(Debug, Default)]
struct Faulty {
    inner: Option<LocalKeyProvider>,
    generates: AtomicUsize,
    unwraps: AtomicUsize,
    /// `generate_data_key` fails from this call on (0-based).
    fail_generate_from: Option<usize>,
    /// `generate_data_key` never returns from this call on, after notifying `hung`.
    hang_generate_from: Option<usize>,
    /// Every `unwrap_data_key` is refused.
    refuse_unwrap: bool,
    hung: tokio::sync::Notify,
}

impl Faulty {
    fn new() -> Self {
        Faulty {
            inner: Some(local()),
            ..Faulty::default()
        }
    }

    fn inner(&self) -> &LocalKeyProvider {
        self.inner.as_ref().expect("inner provider")
    }
}

#[async_trait]
impl KeyProvider for Faulty {
    fn kind(&self) -> ProviderKind {
        self.inner().kind()
    }
    fn master_key(&self) -> MasterKeyRef {
        self.inner().master_key()
    }
    fn can_unwrap(&self, master_key: &MasterKeyRef) -> bool {
        self.inner().can_unwrap(master_key)
    }
    async fn generate_data_key(
        &self,
        purpose: KeyPurpose,
    ) -> jarvis_crypt::Result<GeneratedDataKey> {
        let call = self.generates.fetch_add(1, Ordering::SeqCst);
        if self.hang_generate_from.is_some_and(|from| call >= from) {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        if self.fail_generate_from.is_some_and(|from| call >= from) {
            return Err(jarvis_crypt::Error::ProviderUnavailable {
                attempts: 3,
                message: "injected failure".into(),
            });
        }
        self.inner().generate_data_key(purpose).await
    }
    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
    ) -> jarvis_crypt::Result<DataKey> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        if self.refuse_unwrap {
            return Err(jarvis_crypt::Error::AccessDenied(
                "injected: kms:Decrypt not granted".into(),
            ));
        }
        self.inner().unwrap_data_key(wrapped, purpose).await
    }
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> jarvis_crypt::Result<WrappedKey> {
        self.inner().rewrap_data_key(wrapped, purpose, to).await
    }
}

struct Fixture {
    url: String,
    db: Database,
    audit: DbAudit,
    _dir: Option<tempfile::TempDir>,
}

async fn fixture(backend: &str) -> Fixture {
    let (url, dir) = match backend {
        "postgres" => (
            jarvis_tests::fresh_postgres_database("encrypt_existing"),
            None,
        ),
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = dir.path().join("jarvis.sqlite3").display().to_string();
            (url, Some(dir))
        }
    };
    db::migrate(&url).await.expect("migrate");
    let db = Database::connect(&url, 4).await.expect("connect");
    let audit = DbAudit::start(db.clone());
    Fixture {
        url,
        db,
        audit,
        _dir: dir,
    }
}

impl Fixture {
    fn backend(&self) -> &'static str {
        self.db.backend().name()
    }

    /// A store over `db` encrypting with `provider` (the search key stored in `jarvis_keys`,
    /// read through a plain local provider so that `provider`'s counters see only the job).
    async fn store_on(
        &self,
        db: &Database,
        provider: Arc<dyn KeyProvider>,
        limits: CacheLimits,
    ) -> Store {
        let search = jarvis_models::keys::stored_search_key(db, &local())
            .await
            .expect("search key");
        let encryptor = Encryptor::builder(provider)
            .search_key(search)
            .cache_limits(limits)
            .build();
        Store::new(db.clone(), encryptor, Arc::new(self.audit.clone()))
    }

    async fn store(&self, provider: Arc<dyn KeyProvider>) -> Store {
        self.store_on(&self.db, provider, CacheLimits::default())
            .await
    }

    fn options(&self, batch_size: usize, workers: usize) -> EncryptExistingOptions {
        EncryptExistingOptions {
            batch_size,
            workers,
            ..EncryptExistingOptions::new("users", "email", Arc::new(self.audit.clone()))
        }
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

/// Inserts `n` users the way existing applications did (plaintext `email`, no id given) and
/// returns every user's email by id.
async fn insert_plaintext(db: &Database, n: usize, tag: &str) -> HashMap<i64, String> {
    let mut conn = db.get().await.expect("conn");
    let emails: Vec<String> = (0..n)
        .map(|i| format!("User{i}.{tag}@Example.com"))
        .collect();
    for chunk in emails.chunks(500) {
        let values: Vec<String> = chunk.iter().map(|e| format!("('{e}')")).collect();
        let sql = format!("INSERT INTO users (email) VALUES {}", values.join(", "));
        with_conn!(&mut conn, |c| diesel::sql_query(&sql)
            .execute(c)
            .await
            .expect("plain insert"));
    }
    let rows: Vec<(i64, Option<String>)> = with_conn!(&mut conn, |c| users::table
        .select((users::id, users::email))
        .load(c)
        .await
        .expect("ids"));
    rows.into_iter()
        .filter_map(|(id, email)| Some((id, email?)))
        .filter(|(_, email)| email.ends_with(&format!(".{tag}@Example.com")))
        .collect()
}

/// Id, plaintext, ciphertext, search hash of every row, by id.
type RawRow = (i64, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);

async fn raw_rows(db: &Database) -> Vec<RawRow> {
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| users::table
        .order(users::id)
        .select((
            users::id,
            users::email,
            users::encrypted_email,
            users::email_hash
        ))
        .load(c)
        .await
        .expect("raw rows"))
}

/// Every row is either plaintext only or ciphertext (with hash) only; returns the ids of the
/// encrypted ones.
async fn each_row_in_one_form(db: &Database) -> Vec<i64> {
    let mut encrypted = Vec::new();
    for (id, plain, cipher, hash) in raw_rows(db).await {
        match (plain, cipher, hash) {
            (Some(_), None, None) => {}
            (None, Some(_), Some(_)) => encrypted.push(id),
            (plain, cipher, hash) => panic!(
                "row {id} is in neither form: plaintext {}, ciphertext {}, hash {}",
                plain.is_some(),
                cipher.is_some(),
                hash.is_some()
            ),
        }
    }
    encrypted
}

/// A reader with a cold cache decrypts every row to its original email.
async fn every_row_reads_back(f: &Fixture, expected: &HashMap<i64, String>) {
    let reader = f.store(Arc::new(local())).await;
    let users = reader.list_users(1_000_000, 0).await.expect("list");
    assert_eq!(users.len(), expected.len());
    for user in users {
        assert_eq!(
            Some(&user.email),
            expected.get(&user.id),
            "row {} reads back",
            user.id
        );
    }
}

/// No plaintext left, every row decrypts, lookups by email work.
async fn fully_encrypted(f: &Fixture, expected: &HashMap<i64, String>) {
    let encrypted = each_row_in_one_form(&f.db).await;
    assert_eq!(encrypted.len(), expected.len(), "every row encrypted");
    every_row_reads_back(f, expected).await;
    let reader = f.store(Arc::new(local())).await;
    let mut ids: Vec<i64> = expected.keys().copied().collect();
    ids.sort_unstable();
    for id in [ids[0], ids[ids.len() / 2], ids[ids.len() - 1]] {
        let email = expected[&id].to_lowercase();
        let found = reader
            .find_user_by_email(&format!("  {email} "))
            .await
            .expect("lookup")
            .expect("found by email");
        assert_eq!(found.id, id);
    }
}

/// `migrate` rows of the audit log: status and record ids.
async fn migrate_audit_rows(f: &Fixture) -> Vec<(String, Vec<i64>)> {
    f.audit.flush().await;
    let mut conn = f.db.get().await.expect("conn");
    let rows: Vec<(String, Option<String>, Option<serde_json::Value>)> =
        with_conn!(&mut conn, |c| encryption_audit_log::table
            .filter(encryption_audit_log::operation_type.eq("migrate"))
            .filter(encryption_audit_log::table_name.eq("users"))
            .filter(encryption_audit_log::column_name.eq("encrypted_email"))
            .order(encryption_audit_log::id)
            .select((
                encryption_audit_log::status,
                encryption_audit_log::record_id,
                encryption_audit_log::context,
            ))
            .load(c)
            .await
            .expect("audit rows"));
    rows.into_iter()
        .map(|(status, record_id, context)| {
            let ids = match (record_id, context) {
                (Some(id), _) => vec![id.parse().expect("id")],
                (None, Some(context)) => {
                    let ids: Vec<i64> = context["record_ids"]
                        .as_array()
                        .expect("record_ids")
                        .iter()
                        .map(|id| id.as_str().expect("id").parse().expect("id"))
                        .collect();
                    assert_eq!(context["count"].as_u64(), Some(ids.len() as u64));
                    ids
                }
                (None, None) => Vec::new(),
            };
            (status, ids)
        })
        .collect()
}

fn no_progress(_: Progress) {}

both_backends!(
    encrypts_5000_rows_with_4_workers_then_does_nothing,
    |f: Fixture| async move {
        let expected = insert_plaintext(&f.db, 5_000, "big").await;
        assert_eq!(expected.len(), 5_000);
        let store = f.store(Arc::new(local())).await;
        let options = f.options(300, 4);
        let seen = Mutex::new(Vec::<Progress>::new());
        let record = |p: Progress| seen.lock().expect("lock").push(p);
        let started = Instant::now();
        let report = encrypt_existing(&store, &options, &record)
            .await
            .expect("encrypt-existing");
        let elapsed = started.elapsed();
        eprintln!(
            "{}: encrypt-existing of 5,000 rows, batches of 300, 4 workers: {} batches in \
             {:.3} s = {:.0} rows/s (report: {:.0} rows/s)",
            f.backend(),
            report.batches,
            elapsed.as_secs_f64(),
            5_000.0 / elapsed.as_secs_f64(),
            report.rows_per_second()
        );
        assert_eq!(report.rows_at_start, 5_000);
        assert_eq!(report.rows_encrypted, 5_000);
        assert_eq!(report.rows_remaining, 0);
        assert_eq!(report.rows_conflicting, 0);
        assert!(!report.stopped && !report.dry_run);
        assert_eq!(report.workers, 4);
        // 17 full batches at least; on PostgreSQL concurrent `SKIP LOCKED` scans can split one.
        assert!(report.batches >= 17, "{} batches", report.batches);
        if f.backend() == "SQLite" {
            assert_eq!(report.batches, 17);
        }

        let seen = seen.into_inner().expect("lock");
        assert_eq!(seen.len() as u64, report.batches);
        assert!(seen.windows(2).all(|w| w[0].rows_done < w[1].rows_done));
        assert!(seen.iter().all(|p| p.total == 5_000 && p.batch_rows <= 300));
        let last = seen.last().expect("progress");
        assert_eq!((last.rows_done, last.batches), (5_000, report.batches));
        assert!(seen.iter().all(|p| p.worker < 4));

        fully_encrypted(&f, &expected).await;

        // One audit row per batch, with its record ids: together every row once.
        let audit = migrate_audit_rows(&f).await;
        assert_eq!(audit.len() as u64, report.batches);
        assert!(audit.iter().all(|(status, _)| status == "success"));
        let mut ids: Vec<i64> = audit.iter().flat_map(|(_, ids)| ids.clone()).collect();
        ids.sort_unstable();
        let mut all: Vec<i64> = expected.keys().copied().collect();
        all.sort_unstable();
        assert_eq!(ids, all);

        // A second run finds nothing to do, writes nothing and audits nothing.
        let before = raw_rows(&f.db).await;
        let again = encrypt_existing(&store, &options, &no_progress)
            .await
            .expect("second run");
        assert_eq!(
            (
                again.rows_at_start,
                again.rows_encrypted,
                again.batches,
                again.rows_remaining
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(raw_rows(&f.db).await, before);
        assert_eq!(migrate_audit_rows(&f).await.len(), audit.len());
    }
);

both_backends!(
    a_dry_run_counts_and_writes_nothing,
    |f: Fixture| async move {
        let expected = insert_plaintext(&f.db, 1_000, "dry").await;
        let provider = Arc::new(Faulty::new());
        let store = f.store(provider.clone()).await;
        let before = raw_rows(&f.db).await;
        let options = EncryptExistingOptions {
            dry_run: true,
            ..f.options(300, 2)
        };
        let report = encrypt_existing(&store, &options, &|_| panic!("no progress in a dry run"))
            .await
            .expect("dry run");
        assert!(report.dry_run);
        assert_eq!(report.rows_at_start, 1_000);
        assert_eq!(report.batches, 4);
        assert_eq!(report.rows_encrypted, 0);
        assert_eq!(report.rows_remaining, 1_000);
        assert_eq!(raw_rows(&f.db).await, before);
        assert_eq!(AtomicUsize::load(&provider.generates, Ordering::SeqCst), 0);
        assert!(migrate_audit_rows(&f).await.is_empty());
        every_row_reads_back(&f, &expected).await;
    }
);

both_backends!(
    unsupported_columns_and_settings_are_refused,
    |f: Fixture| async move {
        let store = f.store(Arc::new(local())).await;
        for (table, column) in [
            ("users", "name"),
            ("api_keys", "key"),
            ("accounts", "email"),
        ] {
            let options = EncryptExistingOptions::new(table, column, Arc::new(MemoryAudit::new()));
            let err = encrypt_existing(&store, &options, &no_progress)
                .await
                .expect_err("unsupported");
            assert_eq!(err.kind(), "configuration");
            let message = err.to_string();
            assert!(
                message.contains("supported: users.email") && message.contains(table),
                "{message}"
            );
        }
        for options in [f.options(0, 1), f.options(10, 0)] {
            let err = encrypt_existing(&store, &options, &no_progress)
                .await
                .expect_err("invalid");
            assert!(matches!(
                err,
                ModelError::Crypto(jarvis_crypt::Error::Configuration(_))
            ));
        }
    }
);

both_backends!(
    the_stop_flag_ends_after_the_batch_and_a_rerun_finishes,
    |f: Fixture| async move {
        let expected = insert_plaintext(&f.db, 1_000, "stop").await;
        let store = f.store(Arc::new(local())).await;
        let stop = Arc::new(AtomicBool::new(false));
        let options = EncryptExistingOptions {
            stop: Some(stop.clone()),
            ..f.options(300, 1)
        };
        // As the CLI's Ctrl-C handler would, once the first batch has committed.
        let report = encrypt_existing(&store, &options, &|_| stop.store(true, Ordering::SeqCst))
            .await
            .expect("first batch");
        assert!(report.stopped);
        assert_eq!(
            (report.rows_encrypted, report.batches, report.rows_remaining),
            (300, 1, 700)
        );
        let mut ids: Vec<i64> = expected.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(each_row_in_one_form(&f.db).await, ids[..300].to_vec());
        every_row_reads_back(&f, &expected).await;

        let rest = encrypt_existing(&store, &f.options(300, 1), &no_progress)
            .await
            .expect("rerun");
        assert!(!rest.stopped);
        assert_eq!(
            (rest.rows_at_start, rest.rows_encrypted, rest.rows_remaining),
            (700, 700, 0)
        );
        fully_encrypted(&f, &expected).await;
    }
);

both_backends!(
    a_job_dropped_mid_batch_rolls_back_and_releases_its_locks,
    |f: Fixture| async move {
        let expected = insert_plaintext(&f.db, 1_000, "drop").await;
        // 100 values per data key: a batch of 300 asks for 3 keys; the 4th call (in the
        // second batch, inside its transaction, rows locked) never returns.
        let provider = Arc::new(Faulty {
            hang_generate_from: Some(3),
            ..Faulty::new()
        });
        let limits = CacheLimits {
            max_messages: 100,
            ..CacheLimits::default()
        };
        let store = f.store_on(&f.db, provider.clone(), limits).await;
        let options = f.options(300, 1);
        tokio::select! {
            result = encrypt_existing(&store, &options, &no_progress) => {
                panic!("the job should hang in the provider: {result:?}")
            }
            () = provider.hung.notified() => {}
        }
        // The job's future is dropped here, its second batch open.
        let mut ids: Vec<i64> = expected.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(each_row_in_one_form(&f.db).await, ids[..300].to_vec());

        // Another process (its own pool) finishes: the dropped batch's connection was closed,
        // not returned to the pool with its transaction, locks and (on SQLite) write lock
        // held. The server may take a moment to notice the closed connection.
        let other_db = Database::connect(&f.url, 4).await.expect("connect");
        let other = f
            .store_on(&other_db, Arc::new(local()), CacheLimits::default())
            .await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut done = 300;
        loop {
            let report: EncryptExistingReport =
                encrypt_existing(&other, &f.options(300, 2), &no_progress)
                    .await
                    .expect("rerun");
            done += report.rows_encrypted;
            if report.rows_remaining == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "rows stay locked: {report:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(done, 1_000);
        fully_encrypted(&f, &expected).await;
    }
);

both_backends!(
    a_provider_failure_mid_job_stops_with_a_resumable_state,
    |f: Fixture| async move {
        let expected = insert_plaintext(&f.db, 2_000, "kms").await;
        // 100 values per data key, 3 keys per batch of 300: the 6th call fails, in the
        // second batch (or a concurrent one).
        let provider = Arc::new(Faulty {
            fail_generate_from: Some(5),
            ..Faulty::new()
        });
        let limits = CacheLimits {
            max_messages: 100,
            ..CacheLimits::default()
        };
        let store = f.store_on(&f.db, provider.clone(), limits).await;
        let audit = MemoryAudit::new();
        let options = EncryptExistingOptions {
            audit: Arc::new(audit.clone()) as Arc<dyn AuditSink>,
            ..f.options(300, 2)
        };
        let err = encrypt_existing(&store, &options, &no_progress)
            .await
            .expect_err("the provider fails");
        assert_eq!(err.kind(), "provider_unavailable");
        let events = audit.events();
        assert!(events.iter().all(|e| e.operation == Operation::Migrate));
        assert!(
            events
                .iter()
                .any(|e| e.error == Some("provider_unavailable"))
        );
        let committed: usize = events
            .iter()
            .filter(|e| e.error.is_none())
            .map(|e| e.record_ids.len())
            .sum();

        let encrypted = each_row_in_one_form(&f.db).await;
        assert_eq!(encrypted.len(), committed);
        assert!(
            (300..2_000).contains(&encrypted.len()),
            "{} rows",
            encrypted.len()
        );
        every_row_reads_back(&f, &expected).await;

        let working = f.store(Arc::new(local())).await;
        let report = encrypt_existing(&working, &f.options(300, 2), &no_progress)
            .await
            .expect("rerun");
        assert_eq!(report.rows_encrypted as usize, 2_000 - committed);
        assert_eq!(report.rows_remaining, 0);
        fully_encrypted(&f, &expected).await;
    }
);

both_backends!(
    a_batch_that_does_not_verify_is_not_committed,
    |f: Fixture| async move {
        let expected = insert_plaintext(&f.db, 1_000, "verify").await;
        // Wraps fine, cannot unwrap (a KMS key policy granting GenerateDataKey but not
        // Decrypt): without verification through the provider, the job would write rows
        // nobody can read.
        let provider = Arc::new(Faulty {
            refuse_unwrap: true,
            ..Faulty::new()
        });
        let store = f.store(provider.clone()).await;
        let audit = MemoryAudit::new();
        let options = EncryptExistingOptions {
            audit: Arc::new(audit.clone()) as Arc<dyn AuditSink>,
            ..f.options(300, 1)
        };
        let err = encrypt_existing(&store, &options, &|_| panic!("nothing committed"))
            .await
            .expect_err("verification fails");
        assert_eq!(err.kind(), "access_denied");
        assert!(AtomicUsize::load(&provider.generates, Ordering::SeqCst) >= 1);
        assert!(AtomicUsize::load(&provider.unwraps, Ordering::SeqCst) >= 1);
        assert!(each_row_in_one_form(&f.db).await.is_empty());
        let events = audit.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].error, Some("access_denied"));
        assert_eq!(events[0].record_ids.len(), 300);

        let working = f.store(Arc::new(local())).await;
        let report = encrypt_existing(&working, &f.options(300, 1), &no_progress)
            .await
            .expect("rerun");
        assert_eq!(report.rows_encrypted, 1_000);
        fully_encrypted(&f, &expected).await;
    }
);

/// Two processes (two pools, two stores) migrating one PostgreSQL table at once: `FOR UPDATE
/// SKIP LOCKED` hands every row to exactly one batch of one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_at_once_on_postgres_encrypt_each_row_once() {
    let f = fixture("postgres").await;
    let expected = insert_plaintext(&f.db, 10_000, "two").await;
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let db = Database::connect(&f.url, 4).await.expect("connect");
        let store = f
            .store_on(&db, Arc::new(local()), CacheLimits::default())
            .await;
        let audit = MemoryAudit::new();
        let options = EncryptExistingOptions {
            audit: Arc::new(audit.clone()) as Arc<dyn AuditSink>,
            ..f.options(300, 2)
        };
        // Spawned: the job's future is `Send`, as the CLI needs.
        let job = tokio::spawn(async move {
            encrypt_existing(&store, &options, &no_progress)
                .await
                .map(|report| (report, audit))
        });
        jobs.push(job);
    }
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut selected = 0;
    for job in jobs {
        let (report, audit) = job.await.expect("join").expect("encrypt-existing");
        eprintln!(
            "PostgreSQL, one of two processes: {} rows in {} batches, {:.0} rows/s",
            report.rows_encrypted,
            report.batches,
            report.rows_per_second()
        );
        assert!(report.rows_encrypted > 0, "both processes did some work");
        total += report.rows_encrypted;
        for event in audit.events() {
            assert_eq!(event.error, None);
            selected += event.record_ids.len();
            seen.extend(event.record_ids);
        }
    }
    assert_eq!(total, 10_000);
    // Every row was taken by exactly one batch (no id in two batches).
    assert_eq!(selected, 10_000);
    assert_eq!(seen.len(), 10_000);
    fully_encrypted(&f, &expected).await;
}
