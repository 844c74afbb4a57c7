//! `jarvis generate field` through the binary: its printed `up.sql` and `down.sql` applied
//! to real PostgreSQL and SQLite databases (and reverted, and applied again), checked by
//! `jarvis schema --check`; NOT NULL columns refused on a table with rows; bad names refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use diesel_async::SimpleAsyncConnection;
use jarvis_db::migrations::Backend;
use jarvis_db::{Database, with_conn};
use jarvis_tests::binary::{self, assert_success, stdout, text};

fn jarvis(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, vars)
        .output()
        .expect("jarvis runs")
}

/// `generate field` with `args`: its labelled sections by label.
fn generate(dir: &Path, args: &[&str]) -> BTreeMap<String, String> {
    let mut all = vec!["generate", "field"];
    all.extend_from_slice(args);
    let output = jarvis(dir, &[], &all);
    assert_success(&output, format!("{all:?}"));
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stdout(&output).lines() {
        if line.contains(" ==== ") && line.ends_with(" ====") {
            current = Some(line.to_owned());
            sections.insert(line.to_owned(), String::new());
        } else if let Some(label) = &current {
            let section = sections.get_mut(label).expect("section");
            section.push_str(line);
            section.push('\n');
        }
    }
    sections
}

/// One section by the start of its label (`PostgreSQL: up.sql`, ...), and the same text
/// printed alone with `--only`.
fn section(dir: &Path, args: &[&str], label: &str, only: &str) -> String {
    let sections = generate(dir, args);
    let text = sections
        .iter()
        .find(|(l, _)| l.contains(label))
        .map(|(_, t)| t.trim_end().to_owned())
        .unwrap_or_else(|| panic!("no section {label} in {sections:?}"));
    let mut alone = vec!["generate", "field"];
    alone.extend_from_slice(args);
    alone.extend(["--only", only]);
    let output = jarvis(dir, &[], &alone);
    assert_success(&output, format!("{alone:?}"));
    assert_eq!(stdout(&output).trim_end(), text, "--only {only}");
    text
}

fn sql(dir: &Path, args: &[&str], backend: Backend) -> (String, String) {
    let (name, up, down) = match backend {
        Backend::Postgres => ("PostgreSQL", "postgres-up", "postgres-down"),
        Backend::Sqlite => ("SQLite", "sqlite-up", "sqlite-down"),
    };
    (
        section(dir, args, &format!("{name}: up.sql"), up),
        section(dir, args, &format!("{name}: down.sql"), down),
    )
}

async fn execute(url: &str, sql: &str) -> Result<(), String> {
    let db = Database::connect(url, 1).await.expect("connect");
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| c.batch_execute(sql).await).map_err(|e| format!("{e}\nin:\n{sql}"))
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(url: &str, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    let db = Database::connect(url, 1).await.expect("connect");
    let mut conn = db.get().await.expect("conn");
    let rows: Vec<Count> = with_conn!(&mut conn, |c| diesel::sql_query(sql)
        .load(c)
        .await
        .expect(sql));
    rows[0].n
}

/// `sql` inside one transaction, as diesel runs a migration.
async fn migrate_with(url: &str, sql: &str) -> Result<(), String> {
    execute(url, &format!("BEGIN;\n{sql}\nCOMMIT;")).await
}

fn check(dir: &Path, url: &str) -> Output {
    jarvis(dir, &[("DATABASE_URL", url)], &["schema", "--check"])
}

/// The seed's `users` table as it was before its email was encrypted: the generated
/// migration of `email` (searchable, migrating from the plaintext `email`) makes it what the
/// model needs, which `schema --check` confirms; `down.sql` takes it back; `up.sql` again.
async fn users_email_added_to_a_plaintext_table(url: &str, backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("DATABASE_URL", url)];
    assert_success(&jarvis(dir.path(), &env, &["migrate"]), "migrate");
    let plaintext_users = match backend {
        // The email is NOT NULL before: up.sql drops that (encrypt-existing clears it).
        Backend::Postgres => {
            "ALTER TABLE users DROP COLUMN encrypted_email, DROP COLUMN email_iv,
                 DROP COLUMN email_auth_tag, DROP COLUMN email_data_key, DROP COLUMN email_hash;
             ALTER TABLE users ALTER COLUMN email SET NOT NULL;
             INSERT INTO users (email) VALUES ('a@example.com'), ('b@example.com');"
        }
        // SQLite drops no column a table CHECK names: the table is made anew.
        Backend::Sqlite => {
            "PRAGMA foreign_keys = OFF;
             DROP TABLE users;
             CREATE TABLE users (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 email TEXT,
                 created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 rotation_count INTEGER NOT NULL DEFAULT 0,
                 last_rotated_at TIMESTAMP
             );
             INSERT INTO users (email) VALUES ('a@example.com'), ('b@example.com');"
        }
    };
    execute(url, plaintext_users)
        .await
        .expect("plaintext users");
    let before = check(dir.path(), url);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    assert!(
        stdout(&before).contains("users.encrypted_email (ciphertext of `email`): column missing"),
        "{}",
        text(&before)
    );

    let args = [
        "--table",
        "users",
        "--field",
        "email",
        "--search",
        "--migrating-from",
        "email",
    ];
    let (up, down) = sql(dir.path(), &args, backend);
    migrate_with(url, &up).await.expect("up.sql");
    assert_success(&check(dir.path(), url), "schema --check after up.sql");
    // The rows are there to be encrypted, and are.
    let encrypt = jarvis(
        dir.path(),
        &[
            ("DATABASE_URL", url),
            (
                "JARVIS_LOCAL_MASTER_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            ),
            (
                "ENCRYPTION_SEARCH_SALT",
                "a search salt for the generate tests, long enough",
            ),
        ],
        &["encrypt-existing", "--table", "users"],
    );
    assert_success(&encrypt, "encrypt-existing");
    assert_eq!(
        count(
            url,
            "SELECT COUNT(*) AS n FROM users \
             WHERE encrypted_email IS NOT NULL AND email_hash IS NOT NULL AND email IS NULL"
        )
        .await,
        2
    );
    // All four or none.
    let partial = execute(
        url,
        match backend {
            Backend::Postgres => {
                "INSERT INTO users (email, encrypted_email) VALUES (NULL, decode('00', 'hex'))"
            }
            Backend::Sqlite => "INSERT INTO users (email, encrypted_email) VALUES (NULL, x'00')",
        },
    )
    .await
    .expect_err("a partial stored form");
    assert!(partial.contains("users_email_stored_form"), "{partial}");

    migrate_with(url, &down).await.expect("down.sql");
    let after = check(dir.path(), url);
    assert_eq!(after.status.code(), Some(1), "{}", text(&after));
    for column in [
        "encrypted_email",
        "email_iv",
        "email_auth_tag",
        "email_data_key",
        "email_hash",
    ] {
        assert!(
            stdout(&after).contains(&format!("users.{column} (")),
            "{column}: {}",
            text(&after)
        );
    }
    migrate_with(url, &up).await.expect("up.sql again");
    assert_success(&check(dir.path(), url), "schema --check after up.sql again");
}

#[tokio::test]
async fn sqlite_users_email_added_to_a_plaintext_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("g.sqlite").to_string_lossy().into_owned();
    users_email_added_to_a_plaintext_table(&url, Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_users_email_added_to_a_plaintext_table() {
    let url = jarvis_tests::fresh_postgres_database("jarvis_generate_users");
    users_email_added_to_a_plaintext_table(&url, Backend::Postgres).await;
}

/// Every shape of field, on a table of the application's own: applied, reverted, applied.
/// NOT NULL columns go only onto an empty table.
async fn every_shape_applies_and_reverts(url: &str, backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    execute(
        url,
        "CREATE TABLE \"Visits\" (id BIGINT PRIMARY KEY, note TEXT);
         INSERT INTO \"Visits\" (id, note) VALUES (1, 'x');",
    )
    .await
    .expect("table");
    for args in [
        &["--field", "summary", "--nullable"][..],
        &["--field", "summary", "--nullable", "--search"],
        &["--field", "note", "--search", "--migrating-from", "note"],
        &["--field", "code", "--migrating-from", "note"],
    ] {
        let mut all = vec!["--table", "Visits"];
        all.extend_from_slice(args);
        let (up, down) = sql(dir.path(), &all, backend);
        migrate_with(url, &up).await.expect("up");
        migrate_with(url, &down).await.expect("down");
        migrate_with(url, &up).await.expect("up again");
        migrate_with(url, &down).await.expect("down again");
    }
    // NOT NULL: refused while the table has rows, on both backends; then added.
    let args = ["--table", "Visits", "--field", "summary", "--search"];
    let (up, down) = sql(dir.path(), &args, backend);
    let refused = migrate_with(url, &up)
        .await
        .expect_err("rows without a value");
    assert!(
        refused.contains("null") || refused.contains("CHECK"),
        "{refused}"
    );
    execute(url, "DELETE FROM \"Visits\"").await.expect("empty");
    migrate_with(url, &up).await.expect("up on an empty table");
    let missing = execute(url, "INSERT INTO \"Visits\" (id, note) VALUES (2, 'y')")
        .await
        .expect_err("no stored form");
    assert!(
        missing.contains("null") || missing.contains("CHECK"),
        "{missing}"
    );
    migrate_with(url, &down).await.expect("down");
}

#[tokio::test]
async fn sqlite_every_shape_applies_and_reverts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("g.sqlite").to_string_lossy().into_owned();
    every_shape_applies_and_reverts(&url, Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_every_shape_applies_and_reverts() {
    let url = jarvis_tests::fresh_postgres_database("jarvis_generate_shapes");
    every_shape_applies_and_reverts(&url, Backend::Postgres).await;
}

#[test]
fn sections_are_labelled_and_names_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sections = generate(
        dir.path(),
        &["--table", "patients", "--field", "mrn", "--nullable"],
    );
    let labels: Vec<&str> = sections.keys().map(String::as_str).collect();
    for expected in [
        "-- ==== PostgreSQL: up.sql ====",
        "-- ==== PostgreSQL: down.sql ====",
        "-- ==== SQLite: up.sql ====",
        "-- ==== SQLite: down.sql ====",
    ] {
        assert!(labels.contains(&expected), "{labels:?}");
    }
    let table = section(
        dir.path(),
        &["--table", "patients", "--field", "mrn", "--nullable"],
        "table!",
        "table",
    );
    assert!(
        table.contains("encrypted_mrn -> Nullable<Binary>,"),
        "{table}"
    );
    assert!(
        table.contains("mrn_data_key -> Nullable<Binary>,"),
        "{table}"
    );
    let model = section(
        dir.path(),
        &["--table", "patients", "--field", "mrn"],
        "model's field",
        "model",
    );
    assert!(
        model.contains("#[encrypted]\n    pub mrn: String,"),
        "{model}"
    );

    for (args, message) in [
        (
            &["--table", "patients; DROP TABLE x", "--field", "mrn"][..],
            "table `patients; DROP TABLE x` is not an SQL identifier",
        ),
        (
            &["--table", "patients", "--field", "9lives"],
            "field `9lives` is not an SQL identifier: it starts with a digit",
        ),
        (
            &[
                "--table",
                "patients",
                "--field",
                "mrn",
                "--migrating-from",
                "a-b",
            ],
            "plaintext column `a-b` is not an SQL identifier",
        ),
        (
            &["--table", "patients", "--field", &"x".repeat(60)],
            "is too long",
        ),
    ] {
        let mut all = vec!["generate", "field"];
        all.extend_from_slice(args);
        let output = jarvis(dir.path(), &[], &all);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(stdout(&output).is_empty(), "{}", text(&output));
        assert!(text(&output).contains(message), "{}", text(&output));
    }
}
