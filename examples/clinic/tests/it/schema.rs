//! `clinic-ops schema --check` over the clinic's own tables (a row key that is not the
//! primary key, a primary key not named `id`, PostgreSQL-only column types beside the stored
//! forms): clean after `migrate`, a domain over `bytea` accepted, a renamed row key named.

use crate::common;

use std::path::Path;
use std::process::Output;

use crate::common::{assert_ok, text};
use diesel_async::SimpleAsyncConnection;
use jarvis_db::{Database, with_conn};

fn ops(dir: &Path, url: &str, args: &[&str]) -> Output {
    common::ops_command(dir, url, args)
        .output()
        .expect("clinic-ops runs")
}

async fn execute(url: &str, sql: &str) {
    let db = Database::connect(url, 1).await.expect("connect");
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| c
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}")));
}

async fn scenario(url: &str, postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_ok(&ops(dir.path(), url, &["migrate"]), "migrate");
    let clean = ops(dir.path(), url, &["schema", "--check"]);
    assert_ok(&clean, "schema --check");
    let out = String::from_utf8_lossy(&clean.stdout).into_owned();
    for line in [
        "ok     patients (model `Patient`, 20 columns)",
        "ok     visits (model `Visit`, 5 columns)",
        "ok     staff (model `Staff`, 6 columns)",
    ] {
        assert!(out.contains(line), "missing `{line}`:\n{}", text(&clean));
    }
    if postgres {
        execute(
            url,
            "CREATE DOMAIN stored_bytes AS bytea NOT NULL;
             ALTER TABLE visits ALTER COLUMN summary_iv TYPE stored_bytes;",
        )
        .await;
        assert_ok(&ops(dir.path(), url, &["schema", "--check"]), "a domain");
    }
    execute(url, "ALTER TABLE staff RENAME COLUMN badge TO badge_no").await;
    let drift = ops(dir.path(), url, &["schema", "--check"]);
    assert_eq!(drift.status.code(), Some(1), "{}", text(&drift));
    let drift_lines: Vec<String> = String::from_utf8_lossy(&drift.stdout)
        .lines()
        .filter(|l| l.starts_with("DRIFT"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        drift_lines,
        ["DRIFT  staff.badge (row key): column missing"],
        "{}",
        text(&drift)
    );
}

#[tokio::test]
async fn sqlite_schema_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir
        .path()
        .join("clinic.sqlite")
        .to_string_lossy()
        .into_owned();
    scenario(&url, false).await;
}

#[tokio::test]
async fn postgres_schema_check() {
    let url = jarvis_tests::fresh_postgres_database("clinic_schema_check");
    scenario(&url, true).await;
}
