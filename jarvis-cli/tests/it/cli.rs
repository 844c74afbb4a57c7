//! The `jarvis` binary end to end.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use jarvis_tests::binary::{self, assert_success as assert_ok, stdout};

fn jarvis(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, env)
        .output()
        .expect("jarvis runs")
}

#[test]
fn demo_runs_with_no_configuration_and_shows_no_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = jarvis(dir.path(), &["demo"], &[]);
    assert_ok(&output, "demo");
    let out = stdout(&output);
    for expected in [
        "demo directory",
        "local master key",
        "stored           3 users",
        "lookup",
        "rotated",
        "refreshed",
        "stored form of users row",
        "email_iv 12 B",
        "email_auth_tag 16 B",
        "audit summary",
        "encrypt",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    let all = format!("{out}{}", String::from_utf8_lossy(&output.stderr));
    for secret in [
        "sk_live_demo",
        "ghp_demo",
        "ya29.demo",
        "1//demo",
        "ada@example.com",
    ] {
        assert!(!all.contains(secret), "the demo printed `{secret}`");
    }
    // The master key file's contents never appear.
    let key_line = out
        .lines()
        .find(|l| l.starts_with("local master key"))
        .expect("key line");
    let path = key_line
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("key path");
    let key_file = std::fs::read_to_string(path).expect("key file");
    let hex_key = key_file
        .lines()
        .find(|l| l.starts_with("1 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("key");
    assert!(!all.contains(hex_key));
    let mode = std::fs::metadata(path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn init_creates_a_private_key_file_once_and_prints_its_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = jarvis(dir.path(), &["init"], &[]);
    assert_ok(&first, "init");
    let id = stdout(&first).trim().to_owned();
    assert!(id.starts_with("local-"), "{id}");
    let path = dir.path().join(jarvis_crypt::DEFAULT_KEY_FILE);
    let mode = std::fs::metadata(&path)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(&path).expect("read");
    let second = jarvis(dir.path(), &["init"], &[]);
    assert_ok(&second, "init again");
    assert_eq!(stdout(&second).trim(), id, "idempotent");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn init_sets_up_a_kms_key_idempotently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = jarvis_tests::kms_endpoint();
    let env_name = format!("cli-{}", std::process::id());
    let args = ["init", "--provider", "aws-kms", "--env", &env_name];
    let vars = [("AWS_ENDPOINT_URL_KMS", endpoint.as_str())];
    let first = jarvis(dir.path(), &args, &vars);
    assert_ok(&first, "init aws-kms");
    let second = jarvis(dir.path(), &args, &vars);
    assert_ok(&second, "init aws-kms again");
    assert_eq!(stdout(&first), stdout(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("nothing changed"));
}

/// migrate, then verify and audit on a database of each backend.
fn migrate_verify_audit(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let vars = [("DATABASE_URL", url), ("JARVIS_LOCAL_MASTER_KEY", key)];
    let status = jarvis(dir.path(), &["migrate", "--status"], &vars);
    assert_ok(&status, "migrate --status");
    assert!(stdout(&status).contains("pending"));
    assert_ok(&jarvis(dir.path(), &["migrate"], &vars), "migrate");
    let status = jarvis(dir.path(), &["migrate", "--status"], &vars);
    assert!(!stdout(&status).contains("pending"), "{}", stdout(&status));

    let verify = jarvis(dir.path(), &["verify", "--json"], &vars);
    assert_ok(&verify, "verify");
    // verify only reads: it did not create a search key in jarvis_keys.
    assert_eq!(stored_keys(url), 0);
    let report: serde_json::Value = serde_json::from_str(&stdout(&verify)).expect("json");
    assert_eq!(report["clean"], true);

    let audit = jarvis(dir.path(), &["audit", "--since", "1h", "--json"], &vars);
    assert_ok(&audit, "audit");
    let _: serde_json::Value = serde_json::from_str(&stdout(&audit)).expect("json");

    // A wrong table name is refused clearly.
    let bad = jarvis(dir.path(), &["verify", "--table", "nope"], &vars);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown table"));
}

/// Rows in `jarvis_keys`.
fn stored_keys(url: &str) -> i64 {
    use diesel::QueryDsl;
    use diesel_async::RunQueryDsl;
    use jarvis_models::schema::jarvis_keys;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = jarvis_models::Database::connect(url, 1).await.expect("db");
        let mut conn = db.get().await.expect("conn");
        jarvis_models::with_conn!(&mut conn, |c| jarvis_keys::table
            .count()
            .get_result::<i64>(c)
            .await
            .expect("count"))
    })
}

#[test]
fn migrate_verify_audit_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("cli.sqlite3").display().to_string();
    migrate_verify_audit(&url);
}

#[test]
fn migrate_verify_audit_on_postgres() {
    migrate_verify_audit(&jarvis_tests::fresh_postgres_database("cli"));
}

#[test]
fn commands_that_need_a_database_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = jarvis(dir.path(), &["verify"], &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));
}

/// `jarvis demo | head -n 0`: standard output closed before the first result line. The
/// command ends quietly with the status of a process ended by `SIGPIPE`, not a panic.
#[test]
fn a_closed_standard_output_ends_the_command_without_a_panic() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jarvis"))
        .current_dir(dir.path())
        .arg("demo")
        .env_remove("DATABASE_URL")
        .env_remove("KMS_KEY_ID")
        .env_remove("JARVIS_LOCAL_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jarvis starts");
    // The reading end goes at once: the first line the command writes meets a closed pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("jarvis ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}
