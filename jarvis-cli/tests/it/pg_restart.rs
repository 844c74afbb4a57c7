//! A PostgreSQL restart during `encrypt-existing` and `rotate`: the jobs stop or carry on
//! cleanly, a rerun finishes them, and every row verifies. The server restarted is a private
//! one this test starts itself (`initdb` in a temporary directory, its own port, run as the
//! `postgres` user since PostgreSQL refuses to run as root), never the shared one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_models::{Database, with_conn};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const SALT: &str = "a search salt for the restart tests, long enough to be accepted";

/// A PostgreSQL server of the test's own; stopped (immediately) when dropped.
struct PrivateServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Runs a PostgreSQL program as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> Command {
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn checked(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivateServer {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // The postgres user must be able to reach and own its data directory.
        std::fs::create_dir(&data).expect("data dir");
        checked(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres"]).arg(dir.path());
                c
            },
            "chown",
        );
        checked(
            {
                let mut c = Command::new("chmod");
                c.args(["755"]).arg(dir.path());
                c
            },
            "chmod",
        );
        checked(
            {
                let mut c = as_postgres(&bin.join("initdb"));
                c.args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data);
                c
            },
            "initdb",
        );
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("addr").port()
        };
        let server = PrivateServer {
            bin,
            data,
            port,
            _dir: dir,
        };
        server.pg_ctl(&["start", "-w", "-t", "60"]);
        server
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off",
            self.port
        );
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.args(args)
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.data.join("server.log"))
            .stdout(Stdio::null());
        checked(c, &format!("pg_ctl {args:?}"));
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }
}

fn jarvis(dir: &Path, args: &[&str], url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jarvis"));
    command
        .current_dir(dir)
        .args(args)
        .env("DATABASE_URL", url)
        .env("JARVIS_LOCAL_MASTER_KEY", KEY)
        .env("ENCRYPTION_SEARCH_SALT", SALT)
        .env_remove("KMS_KEY_ID")
        .env_remove("JARVIS_DATA_KEY_MAX_VALUES");
    command
}

fn run(dir: &Path, args: &[&str], url: &str) -> Output {
    let output = jarvis(dir, args, url).output().expect("jarvis runs");
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

/// `sql`'s count, on a connection of its own (the server may have restarted since).
async fn count(url: &str, sql: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let db = Database::connect(url, 1).await.ok()?;
            let mut conn = db.get().await.ok()?;
            let rows: Vec<Count> = with_conn!(&mut conn, |c| sql_query(sql).load(c).await.ok()?);
            Some(rows[0].n)
        };
        if let Some(n) = attempt.await {
            return n;
        }
        assert!(Instant::now() < deadline, "the server did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_during_the_jobs_loses_nothing() {
    let server = PrivateServer::start();
    let mut create = as_postgres(&server.bin.join("createdb"));
    create.args([
        "-h",
        "127.0.0.1",
        "-p",
        &server.port.to_string(),
        "-U",
        "postgres",
        "jarvis",
    ]);
    checked(create, "createdb");
    let url = server.url("jarvis");
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), &["migrate"], &url);
    {
        let db = Database::connect(&url, 1).await.expect("db");
        let mut conn = db.get().await.expect("conn");
        with_conn!(&mut conn, |c| sql_query(
            "INSERT INTO users (email) SELECT 'user' || g || '@example.com' \
             FROM generate_series(1, 20000) g"
        )
        .execute(c)
        .await
        .expect("seed"));
    }
    let jobs = [
        (
            vec![
                "encrypt-existing",
                "--table",
                "users",
                "--column",
                "email",
                "--batch-size",
                "200",
            ],
            "SELECT COUNT(*) AS n FROM users WHERE encrypted_email IS NOT NULL",
        ),
        (
            vec!["rotate", "--reencrypt", "--batch-size", "200"],
            "SELECT COUNT(*) AS n FROM users WHERE rotation_count > 0",
        ),
    ];
    for (args, progress) in jobs {
        let mut child = jarvis(dir.path(), &args, &url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(&url, progress).await == 0 {
            assert!(Instant::now() < deadline, "no batch committed in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the job is still running"
        );
        server.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
        let output = child.wait_with_output().expect("job ends");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("database") || stderr.contains("connection"),
                "a clear error: {stderr}"
            );
        }
        let neither =
            "SELECT COUNT(*) AS n FROM users WHERE email IS NULL AND encrypted_email IS NULL";
        assert_eq!(count(&url, neither).await, 0, "no row lost its value");
        assert_eq!(
            count(&url, progress).await % 200,
            0,
            "only whole batches committed"
        );
        run(dir.path(), &args, &url);
        assert_eq!(count(&url, progress).await, 20_000);
    }
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) AS n FROM users WHERE rotation_count <> 1"
        )
        .await,
        0
    );
    let verify = run(dir.path(), &["verify", "--json"], &url);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["clean"], true, "{report}");
}
