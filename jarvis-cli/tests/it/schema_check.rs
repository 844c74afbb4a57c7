//! `jarvis schema --check` through the binary, on PostgreSQL and SQLite: clean after
//! `migrate`, and every difference named (exit 1) after the test alters the seed's tables:
//! a column dropped, a type changed, NOT NULL dropped or added, a table dropped.

use std::path::Path;
use std::process::Output;

use diesel_async::SimpleAsyncConnection;
use jarvis_db::migrations::Backend;
use jarvis_db::{Database, with_conn};
use jarvis_tests::binary::{self, assert_success, stdout, text};

fn jarvis(dir: &Path, url: &str, args: &[&str]) -> Output {
    binary::command(
        env!("CARGO_BIN_EXE_jarvis"),
        dir,
        args,
        &[("DATABASE_URL", url)],
    )
    .output()
    .expect("jarvis runs")
}

async fn execute(url: &str, sql: &str) {
    let db = Database::connect(url, 1).await.expect("connect");
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| c
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}")));
}

fn sqlite_url(dir: &Path) -> String {
    dir.join("jarvis.sqlite").to_string_lossy().into_owned()
}

fn postgres_url() -> String {
    jarvis_tests::fresh_postgres_database("jarvis_schema_check")
}

/// The DRIFT lines of a check, sorted.
fn drift_lines(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> = stdout(output)
        .lines()
        .filter(|l| l.starts_with("DRIFT"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn assert_clean(dir: &Path, url: &str) {
    let output = jarvis(dir, url, &["schema", "--check"]);
    assert_success(&output, "schema --check");
    let out = stdout(&output);
    for table in ["users", "api_keys", "oauth_tokens", "encrypted_backups"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(&format!(" {table} (model"))),
            "{table} not reported ok:\n{}",
            text(&output)
        );
    }
    assert!(!out.contains("DRIFT"), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("matches the registered models"),
        "{}",
        text(&output)
    );
}

async fn clean_after_migrate_and_drift_named(url: &str, backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_success(&jarvis(dir.path(), url, &["migrate"]), "migrate");
    assert_clean(dir.path(), url);

    let (alter, type_found) = match backend {
        Backend::Postgres => (
            "DROP INDEX idx_users_email_hash;
             ALTER TABLE users DROP COLUMN email_hash;
             ALTER TABLE users ALTER COLUMN email_iv SET NOT NULL;
             ALTER TABLE users ALTER COLUMN email SET NOT NULL;
             ALTER TABLE api_keys ALTER COLUMN key_iv TYPE TEXT USING encode(key_iv, 'hex');
             ALTER TABLE oauth_tokens ALTER COLUMN access_token_data_key DROP NOT NULL;",
            "type expected BYTEA, found text",
        ),
        // SQLite changes a column's type or nullability only by dropping and adding it.
        Backend::Sqlite => (
            "DROP INDEX idx_users_email_hash;
             ALTER TABLE users DROP COLUMN email_hash;
             ALTER TABLE api_keys DROP COLUMN key_iv;
             ALTER TABLE api_keys ADD COLUMN key_iv TEXT NOT NULL DEFAULT '';
             ALTER TABLE oauth_tokens DROP COLUMN access_token_data_key;
             ALTER TABLE oauth_tokens ADD COLUMN access_token_data_key BLOB;",
            "type expected BLOB, found TEXT",
        ),
    };
    execute(url, alter).await;
    let output = jarvis(dir.path(), url, &["schema", "--check"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let mut expected = vec![
        "DRIFT  users.email_hash (search hash of `email`): column missing".to_owned(),
        format!("DRIFT  api_keys.key_iv (nonce of `key`): {type_found}"),
        "DRIFT  oauth_tokens.access_token_data_key (wrapped data key of `access_token`): \
         expected NOT NULL, found nullable"
            .to_owned(),
    ];
    if backend == Backend::Postgres {
        expected.extend([
            "DRIFT  users.email_iv (nonce of `email`): expected nullable, found NOT NULL"
                .to_owned(),
            "DRIFT  users.email (plaintext column of `email`): expected nullable, found NOT NULL"
                .to_owned(),
        ]);
    }
    expected.sort();
    assert_eq!(drift_lines(&output), expected, "{}", text(&output));
    // The table left alone is still reported matching.
    assert!(
        stdout(&output)
            .lines()
            .any(|l| l.starts_with("ok") && l.contains(" encrypted_backups (model")),
        "{}",
        text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{} differences", expected.len())),
        "{stderr}"
    );

    // One table at a time.
    let only = jarvis(dir.path(), url, &["schema", "--check", "--table", "users"]);
    assert_eq!(only.status.code(), Some(1), "{}", text(&only));
    assert!(drift_lines(&only).iter().all(|l| l.contains(" users.")));
    let fine = jarvis(
        dir.path(),
        url,
        &["schema", "--check", "--table", "encrypted_backups"],
    );
    assert_success(&fine, "schema --check --table encrypted_backups");

    // A table gone.
    execute(
        url,
        "DROP VIEW oauth_tokens_summary; DROP TABLE oauth_tokens;",
    )
    .await;
    let output = jarvis(
        dir.path(),
        url,
        &["schema", "--check", "--table", "oauth_tokens"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(drift_lines(&output), ["DRIFT  oauth_tokens: table missing"]);
}

#[tokio::test]
async fn sqlite_clean_after_migrate_and_drift_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = sqlite_url(dir.path());
    clean_after_migrate_and_drift_named(&url, Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_clean_after_migrate_and_drift_named() {
    let url = postgres_url();
    clean_after_migrate_and_drift_named(&url, Backend::Postgres).await;
}

#[test]
fn errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No database configured.
    let output = binary::command(
        env!("CARGO_BIN_EXE_jarvis"),
        dir.path(),
        &["schema", "--check"],
        &[],
    )
    .output()
    .expect("jarvis runs");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("no database"), "{}", text(&output));
    // A server that does not answer.
    let output = jarvis(
        dir.path(),
        "postgres://postgres@127.0.0.1:1/none",
        &["schema", "--check"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(stdout(&output).is_empty(), "{}", text(&output));
    // A table no model is over.
    let url = sqlite_url(dir.path());
    let output = jarvis(dir.path(), &url, &["schema", "--check", "--table", "nope"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("no registered table `nope`"),
        "{}",
        text(&output)
    );
}

#[test]
fn schema_lists_what_each_column_needs_without_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = binary::command(
        env!("CARGO_BIN_EXE_jarvis"),
        dir.path(),
        &["schema", "--table", "api_keys"],
        &[],
    )
    .output()
    .expect("jarvis runs");
    assert_success(&output, "schema");
    let out = stdout(&output);
    let row = |column: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {column} ")))
            .unwrap_or_else(|| panic!("no row for {column}:\n{out}"))
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert_eq!(
        row("key_iv"),
        "api_keys | key_iv | nonce of `key` | BYTEA | BLOB | NOT NULL"
    );
    assert_eq!(
        row("key_hash"),
        "api_keys | key_hash | search hash of `key` | BYTEA | BLOB | nullable or NOT NULL"
    );
    assert_eq!(row("id"), "api_keys | id | primary key | - | - | -");
    assert!(!out.contains("users"), "{out}");
}
