//! The clinic's own operations binary, built through `jarvis_cli::Jarvis`, over its own
//! tables on SQLite and PostgreSQL (where `patients` has `timestamptz` and `jsonb` columns
//! the models do not know): verify (clean, then one tampered row named by table, id and column),
//! and an encrypted backup whose manifest lists the keys the clinic's rows need.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use crate::common::{assert_ok, text};
use clinic::schema::{patients, staff, visits};
use clinic::{Patient, Staff, Visit};
use diesel::sqlite::SqliteConnection;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jarvis_crypt::{Encrypted, Encryptor, LocalKeyProvider, SearchKey};

const SALT: &str = "clinic-test-search-key-0123456789abcdef";

fn ops(dir: &Path, url: &str, args: &[&str]) -> Output {
    common::ops_command(dir, url, args)
        .env("ENCRYPTION_SEARCH_SALT", SALT)
        .output()
        .expect("clinic-ops runs")
}

macro_rules! scenario {
    ($dir:expr, $url:expr, $conn:expr) => {{
        let dir: &tempfile::TempDir = $dir;
        let url: &str = $url;
        let ops = |args: &[&str]| ops(dir.path(), url, args);
        assert_ok(&ops(&["init"]), "init");
        assert_ok(&ops(&["migrate"]), "migrate");
        let mut conn = $conn;
        let provider = LocalKeyProvider::from_file(dir.path().join("master.key")).expect("key");
        let encryptor = Encryptor::builder(Arc::new(provider))
            .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("search key"))
            .build();
        for id in 1..=3i64 {
            let patient = Patient {
                id,
                name: format!("patient {id}"),
                ssn: format!("123-45-67{id:02}"),
                notes: (id != 2).then(|| format!("notes of {id}")),
                allergies: (id == 1).then(|| vec!["penicillin".to_owned()]),
                photo: (id == 3).then(|| vec![0xFF, 0xD8, 0xFF, 0x00]),
            };
            let row = patient.encrypt_row(&encryptor).await.expect("encrypt");
            diesel::insert_into(patients::table)
                .values(&row)
                .execute(&mut conn)
                .await
                .expect("insert patient");
            let visit = Visit {
                visit_no: id,
                patient_id: id,
                summary: format!("visit {id}"),
            };
            let row = visit.encrypt_row(&encryptor).await.expect("encrypt");
            diesel::insert_into(visits::table)
                .values(&row)
                .execute(&mut conn)
                .await
                .expect("insert visit");
        }

        let staff = Staff {
            id: 1,
            badge: "B-7".to_owned(),
            phone: "+1 555 0100".to_owned(),
        };
        let row = staff.encrypt_row(&encryptor).await.expect("encrypt");
        diesel::insert_into(staff::table)
            .values(&row)
            .execute(&mut conn)
            .await
            .expect("insert staff");

        let clean = ops(&["verify", "--json"]);
        assert_ok(&clean, "verify");
        // The weaker binding of staff (a unique badge, not the primary key) is noted.
        let notes = String::from_utf8_lossy(&clean.stderr).into_owned();
        assert!(
            notes.contains("note: `staff` (model `Staff`)") && notes.contains("`badge`"),
            "{notes}"
        );
        assert!(!notes.contains("`patients`"), "{notes}");
        let report: serde_json::Value =
            serde_json::from_slice(&clean.stdout).expect("verify --json prints JSON");
        let columns = report["columns"].as_array().expect("columns");
        let column = |table: &str, column: &str| {
            columns
                .iter()
                .find(|c| c["table"] == table && c["column"] == column)
                .unwrap_or_else(|| panic!("{table}.{column} missing from {report}"))
        };
        assert_eq!(column("patients", "encrypted_ssn")["current"], 3);
        assert_eq!(column("patients", "encrypted_notes")["current"], 2);
        assert_eq!(column("patients", "encrypted_notes")["null"], 1);
        assert_eq!(column("patients", "encrypted_allergies")["current"], 1);
        assert_eq!(column("patients", "encrypted_photo")["current"], 1);
        assert_eq!(column("visits", "encrypted_summary")["current"], 3);
        assert_eq!(column("staff", "encrypted_phone")["current"], 1);
        assert!(
            !columns.iter().any(|c| c["table"] == "users"),
            "the seed's tables are not the clinic's: {report}"
        );
        assert_eq!(report["search_hashes_checked"], true, "{report}");

        // One tampered ciphertext: exit 1, naming table, id and column.
        let mut ciphertext: Vec<u8> = patients::table
            .find(2i64)
            .select(patients::encrypted_ssn)
            .first::<Option<Vec<u8>>>(&mut conn)
            .await
            .expect("row 2")
            .expect("encrypted");
        ciphertext[0] ^= 1;
        diesel::update(patients::table.find(2i64))
            .set(patients::encrypted_ssn.eq(&ciphertext))
            .execute(&mut conn)
            .await
            .expect("tamper");
        let tampered = ops(&["verify", "--json"]);
        assert_eq!(tampered.status.code(), Some(1), "{}", text(&tampered));
        let report: serde_json::Value = serde_json::from_slice(&tampered.stdout).expect("JSON");
        let failures = report["failures"].as_array().expect("failures");
        assert_eq!(failures.len(), 1, "{report}");
        assert_eq!(failures[0]["table"], "patients");
        assert_eq!(failures[0]["id"], 2);
        assert_eq!(failures[0]["column"], "encrypted_ssn");
        assert_eq!(failures[0]["error"], "authentication_failed");
        // Nothing of a value reaches the output.
        assert!(
            !text(&tampered).contains("123-45-67"),
            "{}",
            text(&tampered)
        );

        // Undo the tampering; an encrypted backup lists the key the clinic's rows need.
        ciphertext[0] ^= 1;
        diesel::update(patients::table.find(2i64))
            .set(patients::encrypted_ssn.eq(&ciphertext))
            .execute(&mut conn)
            .await
            .expect("untamper");
        let out = dir.path().join("clinic.jbk");
        let backup = ops(&["backup", "create", "--out", &out.to_string_lossy()]);
        assert_ok(&backup, "backup create");
        let verified = ops(&["backup", "verify", "--in", &out.to_string_lossy()]);
        assert_ok(&verified, "backup verify");
        let key_id = encryptor.master_key().key_id;
        assert!(
            text(&verified).contains(&key_id),
            "the manifest names {key_id}: {}",
            text(&verified)
        );
    }};
}

#[tokio::test]
async fn the_clinics_own_ops_binary_verifies_and_backs_up_its_tables_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clinic.db");
    let url = format!("sqlite://{}", path.display());
    // The database file exists before `migrate` opens it.
    let conn = SyncConnectionWrapper::<SqliteConnection>::establish(&path.to_string_lossy())
        .await
        .expect("sqlite");
    drop(conn);
    scenario!(
        &dir,
        &url,
        SyncConnectionWrapper::<SqliteConnection>::establish(&path.to_string_lossy())
            .await
            .expect("sqlite")
    );
}

#[tokio::test]
async fn the_clinics_own_ops_binary_verifies_and_backs_up_its_tables_on_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = jarvis_tests::fresh_postgres_database("clinic");
    scenario!(
        &dir,
        &url,
        AsyncPgConnection::establish(&url).await.expect("postgres")
    );
}

#[test]
fn the_version_names_the_binary_as_invoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let version = ops(dir.path(), "sqlite://unused.db", &["--version"]);
    assert_ok(&version, "--version");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("clinic-ops {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_help_names_the_binary_as_invoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let help = ops(dir.path(), "sqlite://unused.db", &["--help"]);
    assert_ok(&help, "--help");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: clinic-ops"),
        "{}",
        text(&help)
    );
}
