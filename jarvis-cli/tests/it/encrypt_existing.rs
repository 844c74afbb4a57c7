//! `jarvis encrypt-existing` through the binary: killed with SIGKILL after a first batch has
//! committed, rerun, verified; concurrent workers on PostgreSQL.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_models::{Database, with_conn};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const SALT: &str = "a search salt for the encrypt-existing tests, long enough";

fn command(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jarvis"));
    command
        .current_dir(dir)
        .args(args)
        .env("DATABASE_URL", url)
        .env("JARVIS_LOCAL_MASTER_KEY", KEY)
        .env("ENCRYPTION_SEARCH_SALT", SALT)
        .env_remove("KMS_KEY_ID");
    command
}

fn run(dir: &Path, url: &str, args: &[&str]) -> Output {
    let output = command(dir, url, args).output().expect("jarvis runs");
    assert!(
        output.status.success(),
        "jarvis {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(db: &Database, sql: &str) -> i64 {
    let mut conn = db.get().await.expect("conn");
    let rows: Vec<Count> = with_conn!(&mut conn, |c| sql_query(sql).load(c).await.expect("count"));
    rows[0].n
}

async fn seed(db: &Database, rows: i64) {
    let mut conn = db.get().await.expect("conn");
    let sql = match db.backend() {
        jarvis_models::migrations::Backend::Postgres => format!(
            "INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, {rows}) g"
        ),
        jarvis_models::migrations::Backend::Sqlite => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows})
             INSERT INTO users (email) SELECT 'user' || n || '@example.com' FROM g"
        ),
    };
    with_conn!(&mut conn, |c| sql_query(&sql)
        .execute(c)
        .await
        .expect("seed"));
}

const ENCRYPTED: &str = "SELECT COUNT(*) AS n FROM users WHERE encrypted_email IS NOT NULL";
const PLAINTEXT: &str = "SELECT COUNT(*) AS n FROM users WHERE email IS NOT NULL";
const NEITHER: &str =
    "SELECT COUNT(*) AS n FROM users WHERE email IS NULL AND encrypted_email IS NULL";

async fn killed_and_rerun(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), url, &["migrate"]);
    let db = Database::connect(url, 2).await.expect("db");
    seed(&db, 50_000).await;

    let mut child: Child = command(
        dir.path(),
        url,
        &[
            "encrypt-existing",
            "--table",
            "users",
            "--column",
            "email",
            "--batch-size",
            "500",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    // Watch the database: kill once a first batch has committed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&db, ENCRYPTED).await == 0 {
        assert!(Instant::now() < deadline, "no batch committed in time");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "job ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let encrypted = count(&db, ENCRYPTED).await;
    assert!(
        encrypted > 0 && encrypted < 50_000,
        "killed midway: {encrypted}"
    );
    assert_eq!(encrypted % 500, 0, "only whole batches are committed");
    assert_eq!(count(&db, NEITHER).await, 0, "no row lost its value");

    let rerun = run(
        dir.path(),
        url,
        &[
            "encrypt-existing",
            "--table",
            "users",
            "--column",
            "email",
            "--batch-size",
            "500",
        ],
    );
    let out = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        out.contains(&format!("{} of {}", 50_000 - encrypted, 50_000 - encrypted)),
        "{out}"
    );
    assert_eq!(count(&db, PLAINTEXT).await, 0);
    assert_eq!(count(&db, ENCRYPTED).await, 50_000);

    let verify = run(dir.path(), url, &["verify", "--table", "users", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["clean"], true);
    assert_eq!(report["columns"][0]["current"], 50_000);
    assert_eq!(report["columns"][0]["plaintext"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_rerun_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("kill.sqlite3").display().to_string();
    killed_and_rerun(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_rerun_on_postgres() {
    killed_and_rerun(&jarvis_tests::fresh_postgres_database("cli_kill")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_at_once_on_postgres() {
    let url = jarvis_tests::fresh_postgres_database("cli_workers");
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), &url, &["migrate"]);
    let db = Database::connect(&url, 2).await.expect("db");
    seed(&db, 20_000).await;
    let args = [
        "encrypt-existing",
        "--table",
        "users",
        "--column",
        "email",
        "--batch-size",
        "250",
        "--workers",
        "2",
    ];
    let a = command(dir.path(), &url, &args)
        .stderr(Stdio::null())
        .output_async();
    let b = command(dir.path(), &url, &args)
        .stderr(Stdio::null())
        .output_async();
    let (a, b) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    assert!(a.status.success() && b.status.success());
    let done = |o: &Output| -> i64 {
        let out = String::from_utf8_lossy(&o.stdout);
        out.split(": ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {out}"))
    };
    assert_eq!(done(&a) + done(&b), 20_000, "every row done exactly once");
    assert_eq!(count(&db, PLAINTEXT).await, 0);
    let verify = run(dir.path(), &url, &["verify", "--table", "users", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["clean"], true);
}

/// Spawns with piped standard output.
trait SpawnPiped {
    fn output_async(&mut self) -> Child;
}

impl SpawnPiped for Command {
    fn output_async(&mut self) -> Child {
        self.stdout(Stdio::piped()).spawn().expect("spawn")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_key_is_refused_while_rows_need_the_key() {
    let endpoint = jarvis_tests::kms_endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("retire.sqlite3").display().to_string();
    let env_name = format!("retire-{}", std::process::id());
    let kms = |args: &[&str]| {
        let mut c = command(dir.path(), &url, args);
        c.env("AWS_ENDPOINT_URL_KMS", &endpoint)
            .env_remove("JARVIS_LOCAL_MASTER_KEY")
            .args(["--provider", "aws-kms"]);
        c
    };
    let init = kms(&["init", "--env", &env_name]).output().expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let key_id = String::from_utf8_lossy(&init.stdout).trim().to_owned();

    run(dir.path(), &url, &["migrate"]);
    let db = Database::connect(&url, 2).await.expect("db");
    seed(&db, 10).await;
    let job = kms(&["encrypt-existing", "--table", "users", "--column", "email"])
        .env("KMS_KEY_ID", &key_id)
        .output()
        .expect("encrypt-existing");
    assert!(
        job.status.success(),
        "{}",
        String::from_utf8_lossy(&job.stderr)
    );

    let refused = kms(&["retire-key", &key_id]).output().expect("retire-key");
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("refused") && why.contains("10 values in users.encrypted_email"),
        "{why}"
    );

    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| sql_query("DELETE FROM users")
        .execute(c)
        .await
        .expect("delete"));
    // The rows are gone, but the key vault's data key is still wrapped under the key (a
    // writer may hold it as its active key): still refused, naming the vault.
    let refused = kms(&["retire-key", &key_id]).output().expect("retire-key");
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("1 data keys of the key vault (jarvis_data_keys)"),
        "{why}"
    );
    with_conn!(&mut conn, |c| sql_query("DELETE FROM jarvis_data_keys")
        .execute(c)
        .await
        .expect("delete"));
    let accepted = kms(&["retire-key", &key_id, "--pending-days", "7"])
        .output()
        .expect("retire-key");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("PendingDeletion"));
}
