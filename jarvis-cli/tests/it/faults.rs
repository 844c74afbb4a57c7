//! Faults under the jobs: a KMS outage, throttling and dropped connections through the
//! fault-injecting proxy, database connections terminated mid-job, and SIGKILL at many
//! points. After each, the data is intact (every row holds its plaintext or a valid
//! ciphertext, never neither), a rerun finishes the job, and `verify` is clean.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{AwsKms, CacheLimits, Encryptor, KmsConnection, KmsOptions, NoAudit, SearchKey};
use jarvis_models::{Database, Store, with_conn};
use jarvis_tests::fault_proxy::{Fault, FaultProxy};

const SALT: &str = "a search salt for the fault tests, long enough to be accepted";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

const ENCRYPTED: &str = "SELECT COUNT(*) AS n FROM users WHERE encrypted_email IS NOT NULL";
const NEITHER: &str =
    "SELECT COUNT(*) AS n FROM users WHERE email IS NULL AND encrypted_email IS NULL";
const ROTATED: &str = "SELECT COUNT(*) AS n FROM users WHERE rotation_count > 0";

fn jarvis(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = jarvis_tests::binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, &[]);
    command
        .env("ENCRYPTION_SEARCH_SALT", SALT)
        .envs(vars.iter().copied());
    command
}

fn run(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let output = jarvis(dir, args, vars).output().expect("jarvis runs");
    jarvis_tests::binary::assert_success(&output, format_args!("jarvis {args:?}"));
    output
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(db: &Database, sql: &str) -> i64 {
    let mut conn = db.get().await.expect("conn");
    let rows: Vec<Count> = with_conn!(&mut conn, |c| sql_query(sql).load(c).await.expect(sql));
    rows[0].n
}

async fn execute(db: &Database, sql: &str) -> usize {
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| sql_query(sql).execute(c).await.expect(sql))
}

async fn seed_plaintext(db: &Database, rows: i64) {
    execute(
        db,
        &format!(
            "INSERT INTO users (email) SELECT 'user' || g || '@example.com' \
             FROM generate_series(1, {rows}) g"
        ),
    )
    .await;
}

/// Waits until `sql` counts more than `above`, while `child` runs.
async fn wait_for_progress(db: &Database, child: &mut Child, sql: &str, above: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = count(db, sql).await;
        if n > above {
            return n;
        }
        assert!(Instant::now() < deadline, "no progress in time");
        if child.try_wait().expect("wait").is_some() {
            return count(db, sql).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn verify_clean(dir: &Path, vars: &[(&str, &str)]) {
    let verify = run(dir, &["verify", "--json"], vars);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["clean"], true, "{report}");
}

/// A fault-injecting proxy in front of the local KMS server, and the ARN of a fresh key
/// (created directly, not through the proxy).
async fn proxied_key(name: &str) -> (FaultProxy, String) {
    let proxy = FaultProxy::start(&jarvis_tests::kms_endpoint()).await;
    let connection = KmsConnection::from_env(KmsOptions::default())
        .await
        .expect("kms");
    let env = format!("{name}-{}", std::process::id());
    let key = connection
        .ensure_key(&env, None)
        .await
        .expect("key")
        .key_arn;
    (proxy, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_outage_stops_the_job_cleanly_and_a_rerun_finishes_it() {
    let (proxy, key) = proxied_key("faults-outage").await;
    let url = jarvis_tests::fresh_postgres_database("cli_kms_outage");
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = proxy.url();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("AWS_ENDPOINT_URL_KMS", endpoint.as_str()),
        ("KMS_KEY_ID", key.as_str()),
        // A data key per batch: the job calls KMS all along, as a long job does once its
        // data keys reach their limits.
        ("JARVIS_DATA_KEY_MAX_VALUES", "250"),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 2).await.expect("db");
    seed_plaintext(&db, 10_000).await;

    // An application writing through the same proxy, one KMS call per value.
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(proxy.url())
        .load()
        .await;
    let proxied =
        KmsConnection::from_client(aws_sdk_kms::Client::new(&shared), KmsOptions::default());
    let store = Store::new(
        db.clone(),
        Encryptor::builder(Arc::new(
            AwsKms::new(proxied, &key).await.expect("provider"),
        ))
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("salt"))
        .cache_limits(CacheLimits {
            max_messages: 1,
            ..CacheLimits::default()
        })
        .build(),
        Arc::new(NoAudit),
    );

    let args = [
        "encrypt-existing",
        "--table",
        "users",
        "--column",
        "email",
        "--batch-size",
        "250",
    ];
    let mut child = jarvis(dir.path(), &args, &vars)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_progress(&db, &mut child, ENCRYPTED, 0).await;
    // The outage: every KMS request fails with 503, however often the SDK retries.
    proxy.inject(
        "*",
        Fault::Error {
            status: 503,
            code: "ServiceUnavailableException",
        },
        usize::MAX,
    );
    let output = child.wait_with_output().expect("job ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key provider is unavailable"), "{stderr}");
    let encrypted = count(&db, ENCRYPTED).await;
    assert!(
        encrypted > 0 && encrypted < 10_000,
        "stopped midway: {encrypted}"
    );
    assert_eq!(encrypted % 250, 0, "only whole batches are committed");
    assert_eq!(count(&db, NEITHER).await, 0, "nothing lost");

    // Through the repositories too: a write during the outage fails and writes nothing.
    let users_before = count(&db, "SELECT COUNT(*) AS n FROM users").await;
    let error = store
        .create_user("during.outage@example.com")
        .await
        .expect_err("KMS is down");
    assert_eq!(
        error.crypto_kind(),
        Some(jarvis_crypt::ErrorKind::ProviderUnavailable),
        "{error}"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) AS n FROM users").await,
        users_before
    );

    // The outage ends; the rerun finishes the job.
    proxy.clear();
    store
        .create_user("after.outage@example.com")
        .await
        .expect("KMS is back");
    let rerun = run(dir.path(), &args, &vars);
    let out = String::from_utf8_lossy(&rerun.stdout);
    let left = 10_000 - encrypted;
    assert!(
        out.contains(&format!("{left} of {left} rows done")),
        "{out}"
    );
    assert_eq!(count(&db, ENCRYPTED).await, 10_001);
    verify_clean(dir.path(), &vars);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_latency_and_dropped_connections_are_retried() {
    let (proxy, key) = proxied_key("faults-retry").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("retry.sqlite3").display().to_string();
    let endpoint = proxy.url();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("AWS_ENDPOINT_URL_KMS", endpoint.as_str()),
        ("KMS_KEY_ID", key.as_str()),
        ("JARVIS_DATA_KEY_MAX_VALUES", "500"),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 2).await.expect("db");
    execute(
        &db,
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000)
         INSERT INTO users (email) SELECT 'user' || n || '@example.com' FROM g",
    )
    .await;
    // The faults of one request fit in the SDK's three attempts: the first GenerateDataKey
    // is throttled twice, the first Decrypt loses its connection, then gets a 500.
    proxy.inject(
        "GenerateDataKey",
        Fault::Error {
            status: 400,
            code: "ThrottlingException",
        },
        2,
    );
    proxy.inject("Decrypt", Fault::Close, 1);
    proxy.inject(
        "GenerateDataKey",
        Fault::Delay(Duration::from_millis(300)),
        3,
    );
    proxy.inject(
        "Decrypt",
        Fault::Error {
            status: 500,
            code: "KMSInternalException",
        },
        1,
    );
    let args = [
        "encrypt-existing",
        "--table",
        "users",
        "--column",
        "email",
        "--batch-size",
        "500",
    ];
    let output = run(dir.path(), &args, &vars);
    assert!(String::from_utf8_lossy(&output.stdout).contains("3000 of 3000 rows done"));
    // 6 batches: 6 data keys generated and unwrapped once each, plus the faulted attempts.
    assert!(
        proxy.seen("GenerateDataKey") >= 6 + 2,
        "{}",
        proxy.seen("GenerateDataKey")
    );
    assert!(proxy.seen("Decrypt") >= 6 + 2, "{}", proxy.seen("Decrypt"));
    assert_eq!(count(&db, NEITHER).await, 0);
    verify_clean(dir.path(), &vars);
}

/// Terminates every other connection to the test database.
const TERMINATE: &str = "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_stop_the_jobs_cleanly() {
    let url = jarvis_tests::fresh_postgres_database("cli_terminate");
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", KEY),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 1).await.expect("db");
    seed_plaintext(&db, 20_000).await;

    for (args, progress) in [
        (
            vec![
                "encrypt-existing",
                "--table",
                "users",
                "--column",
                "email",
                "--batch-size",
                "200",
                "--workers",
                "2",
            ],
            ENCRYPTED,
        ),
        (
            vec![
                "rotate",
                "--reencrypt",
                "--batch-size",
                "200",
                "--workers",
                "2",
            ],
            ROTATED,
        ),
    ] {
        let mut child = jarvis(dir.path(), &args, &vars)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let done = wait_for_progress(&db, &mut child, progress, 0).await;
        assert!(done < 20_000, "the job is still running");
        let mut conn = db.get().await.expect("conn");
        let killed: Vec<Count> = with_conn!(&mut conn, |c| sql_query(TERMINATE)
            .load(c)
            .await
            .expect("terminate"));
        drop(conn);
        assert!(killed[0].n >= 1, "the job's connections were terminated");
        let output = child.wait_with_output().expect("job ends");
        // The job stopped with a clear error, or its pool reconnected and it finished.
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("database") || stderr.contains("connection"),
                "{stderr}"
            );
        }
        assert_eq!(count(&db, NEITHER).await, 0, "no row lost its value");
        // The rerun finishes the job.
        run(dir.path(), &args, &vars);
    }
    assert_eq!(count(&db, ENCRYPTED).await, 20_000);
    assert_eq!(count(&db, ROTATED).await, 20_000);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM users WHERE rotation_count <> 1"
        )
        .await,
        0,
        "every row re-encrypted exactly once"
    );
    verify_clean(dir.path(), &vars);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_many_points_loses_no_row() {
    let url = jarvis_tests::fresh_postgres_database("cli_many_kills");
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", KEY),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 1).await.expect("db");
    const ROWS: i64 = 12_000;
    seed_plaintext(&db, ROWS).await;

    let mut kills = 0;
    for (args, progress) in [
        (
            vec![
                "encrypt-existing",
                "--table",
                "users",
                "--column",
                "email",
                "--batch-size",
                "100",
            ],
            ENCRYPTED,
        ),
        (
            vec!["rotate", "--reencrypt", "--batch-size", "100"],
            ROTATED,
        ),
    ] {
        let mut seen = count(&db, progress).await;
        for _ in 0..12 {
            let mut child = jarvis(dir.path(), &args, &vars)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            // Kill once the job has committed more than before: after observed progress.
            let now = wait_for_progress(&db, &mut child, progress, seen).await;
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            kills += 1;
            let after = count(&db, progress).await;
            assert!(after >= now && after > seen, "progress kept");
            assert_eq!(after % 100, 0, "only whole batches are committed");
            assert_eq!(count(&db, NEITHER).await, 0, "no row lost its value");
            assert_eq!(
                count(
                    &db,
                    "SELECT COUNT(*) AS n FROM users WHERE rotation_count > 1"
                )
                .await,
                0,
                "no row re-encrypted twice by the resumed runs"
            );
            seen = after;
            if seen == ROWS {
                break;
            }
        }
        run(dir.path(), &args, &vars);
        assert_eq!(count(&db, progress).await, ROWS);
    }
    assert!(kills >= 20, "{kills} kills");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM users WHERE rotation_count <> 1"
        )
        .await,
        0
    );
    verify_clean(dir.path(), &vars);
}
