//! The whole key lifecycle of the clinic's own tables, through its own operations binary
//! (`clinic-ops`, built with `jarvis_cli::Jarvis`), on SQLite and PostgreSQL:
//!
//! - `encrypt-existing` on 20,000 plaintext SSNs, killed with SIGKILL once the first batch is
//!   committed (seen in the database), then run again to the end;
//! - `rotate` in its four modes, with legacy rows the test writes itself under the local KMS
//!   server (16-byte IV, no associated data, a bare KMS blob);
//! - `retire-key` refused while rows need the key, accepted after `rotate --to-key`;
//! - `backup create`, `restore` into a fresh database, and `verify` of what came back.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{assert_ok, text};
use clinic::schema::{patients, visits};
use clinic::{Patient, Visit};
use diesel::sqlite::SqliteConnection;
use diesel::{QueryDsl, QueryableByName, SelectableHelper};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jarvis_crypt::cipher;
use jarvis_crypt::{
    AwsKms, Encrypted, Encryptor, KeyProvider, KmsConnection, KmsOptions, LocalKeyProvider,
    SearchKey,
};

const SALT: &str = "clinic-lifecycle-search-key-0123456789abcdef";
const ROWS: i64 = 20_000;
const BATCH: i64 = 500;

/// The database of one test: its URL and a connection of the test's own.
enum Db {
    Postgres(Box<AsyncPgConnection>),
    Sqlite(SyncConnectionWrapper<SqliteConnection>),
}

macro_rules! with_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            Db::Postgres($c) => {
                let $c = &mut **$c;
                $body
            }
            Db::Sqlite($c) => $body,
        }
    };
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

impl Db {
    async fn connect(url: &str) -> Db {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(path)
                .await
                .expect("sqlite");
            conn.batch_execute("PRAGMA busy_timeout = 20000")
                .await
                .expect("busy timeout");
            Db::Sqlite(conn)
        } else {
            Db::Postgres(Box::new(
                AsyncPgConnection::establish(url).await.expect("postgres"),
            ))
        }
    }

    async fn run(&mut self, sql: &str) {
        with_db!(self, |c| c.batch_execute(sql).await.expect(sql));
    }

    async fn count(&mut self, sql: &str) -> i64 {
        let query = format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM patients WHERE {sql}");
        let rows: Vec<Count> = with_db!(self, |c| diesel::sql_query(&query)
            .load(c)
            .await
            .expect(&query));
        rows[0].n
    }

    /// A binary literal.
    fn blob(&self, bytes: &[u8]) -> String {
        match self {
            Db::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
            Db::Sqlite(_) => format!("x'{}'", hex::encode(bytes)),
        }
    }

    /// A timestamp `days` ago.
    fn days_ago(&self, days: i64) -> String {
        match self {
            Db::Postgres(_) => format!("now() - interval '{days} days'"),
            Db::Sqlite(_) => format!("datetime('now', '-{days} days')"),
        }
    }

    async fn insert_patient(&mut self, row: &<Patient as Encrypted>::Row) {
        with_db!(self, |c| diesel::insert_into(patients::table)
            .values(row)
            .execute(c)
            .await
            .expect("insert patient"));
    }

    async fn insert_visit(&mut self, row: &<Visit as Encrypted>::Row) {
        with_db!(self, |c| diesel::insert_into(visits::table)
            .values(row)
            .execute(c)
            .await
            .expect("insert visit"));
    }

    async fn patient(&mut self, id: i64) -> <Patient as Encrypted>::Row {
        with_db!(self, |c| patients::table
            .find(id)
            .select(<Patient as Encrypted>::Row::as_select())
            .first(c)
            .await
            .expect("patient"))
    }

    /// The patients found by their SSN's search hash (candidates decrypted and confirmed).
    async fn find_by_ssn(&mut self, encryptor: &Encryptor, ssn: &str) -> Vec<Patient> {
        let filter = Patient::ssn_search(encryptor, ssn).expect("search hash");
        let rows: Vec<<Patient as Encrypted>::Row> = with_db!(self, |c| patients::table
            .filter(filter)
            .select(<Patient as Encrypted>::Row::as_select())
            .load(c)
            .await
            .expect("lookup"));
        Patient::decrypt_rows(rows, encryptor)
            .await
            .expect("decrypt")
    }
}

/// One test's clinic: a directory, a database and the variables of `clinic-ops`.
struct Clinic {
    dir: tempfile::TempDir,
    url: String,
    vars: Vec<(String, String)>,
}

impl Clinic {
    /// A fresh database of the backend (`sqlite` or `postgres`), migrated by `clinic-ops`:
    /// the bookkeeping tables and the clinic's.
    async fn new(backend: &str, vars: &[(&str, &str)]) -> (Clinic, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = fresh_database(backend, &dir, "clinic");
        let mut clinic = Clinic {
            dir,
            url,
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        clinic.set("ENCRYPTION_SEARCH_SALT", SALT);
        // The bookkeeping tables, then the clinic's own migrations.
        let migrated = clinic.ops(&["migrate"]);
        assert_ok(&migrated, "migrate");
        let listed = String::from_utf8_lossy(&migrated.stdout).into_owned();
        assert!(
            listed.contains("applied  2026-12-03-100001_create_clinic")
                && listed.contains("applied  2026-12-02-000011_job_progress")
                && !listed.contains("create_users"),
            "{listed}"
        );
        let db = Db::connect(&clinic.url).await;
        (clinic, db)
    }

    fn set(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_owned(), value.to_owned()));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = common::ops_command(self.dir.path(), &self.url, args);
        for (key, value) in &self.vars {
            command.env(key, value);
        }
        command
    }

    fn ops(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("clinic-ops runs")
    }

    /// `verify --json`, which must exit 0.
    fn verify(&self) -> serde_json::Value {
        let out = self.ops(&["verify", "--json"]);
        assert_ok(&out, "verify");
        serde_json::from_slice(&out.stdout).expect("verify --json prints JSON")
    }
}

fn fresh_database(backend: &str, dir: &tempfile::TempDir, name: &str) -> String {
    match backend {
        "sqlite" => {
            let path: PathBuf = dir.path().join(format!("{name}.db"));
            // The file exists before `migrate` opens it.
            std::fs::File::create(&path).expect("sqlite file");
            format!("sqlite://{}", path.display())
        }
        _ => jarvis_tests::fresh_postgres_database(name),
    }
}

/// A column of a verify report.
fn column<'a>(report: &'a serde_json::Value, table: &str, column: &str) -> &'a serde_json::Value {
    report["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .find(|c| c["table"] == table && c["column"] == column)
        .unwrap_or_else(|| panic!("{table}.{column} missing from {report}"))
}

fn local_encryptor(dir: &Path) -> Encryptor {
    let provider = LocalKeyProvider::from_file(dir.join("master.key")).expect("key file");
    Encryptor::builder(Arc::new(provider))
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("search key"))
        .build()
}

// ---- encrypt-existing, killed and rerun ------------------------------------------------------

async fn encrypt_existing_killed_and_rerun(backend: &str) {
    let (clinic, mut db) = Clinic::new(backend, &[]).await;
    assert_ok(&clinic.ops(&["init"]), "init");
    // 20,000 patients from before encryption: their SSN in the plaintext column alone.
    db.run(&match db {
        Db::Postgres(_) => format!(
            "INSERT INTO patients (name, ssn) SELECT 'patient ' || g, lpad(g::text, 9, '0') \
             FROM generate_series(1, {ROWS}) g"
        ),
        Db::Sqlite(_) => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {ROWS}) \
             INSERT INTO patients (name, ssn) SELECT 'patient ' || n, printf('%09d', n) FROM g"
        ),
    })
    .await;
    let dry = clinic.ops(&["encrypt-existing", "--dry-run"]);
    assert_ok(&dry, "dry run");
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains(&format!(
            "dry run patients.ssn: 0 of {ROWS} rows to do in {} batches",
            ROWS / 500
        )),
        "{}",
        text(&dry)
    );

    let encrypted = "encrypted_ssn IS NOT NULL AND ssn IS NULL";
    let plaintext = "encrypted_ssn IS NULL AND ssn IS NOT NULL";
    let mut child = clinic
        .command(&[
            "encrypt-existing",
            "--table",
            "patients",
            "--column",
            "ssn",
            "--batch-size",
            &BATCH.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn encrypt-existing");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if db.count(encrypted).await > 0 {
            break;
        }
        assert!(
            child.try_wait().expect("child").is_none(),
            "encrypt-existing ended before a batch was seen"
        );
        assert!(Instant::now() < deadline, "no batch committed in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGKILL: no handler runs, the batch in progress is the database's to roll back.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let done = db.count(encrypted).await;
    let left = db.count(plaintext).await;
    assert!((BATCH..ROWS).contains(&done), "killed midway: {done} done");
    assert_eq!(done % BATCH, 0, "only whole batches are committed");
    assert_eq!(done + left, ROWS, "every row holds one form");
    assert_eq!(db.count("encrypted_ssn IS NULL AND ssn IS NULL").await, 0);
    assert_eq!(
        db.count("encrypted_ssn IS NOT NULL AND ssn IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        db.count("encrypted_ssn IS NOT NULL AND (ssn_iv IS NULL OR ssn_auth_tag IS NULL OR ssn_data_key IS NULL OR ssn_hash IS NULL)")
            .await,
        0
    );

    // Rerun without --table: every migrating column of every registered model.
    let rerun = clinic.ops(&["encrypt-existing", "--batch-size", "2000"]);
    assert_ok(&rerun, "rerun");
    let out = String::from_utf8_lossy(&rerun.stdout).into_owned();
    assert!(
        out.contains(&format!(
            "encrypted patients.ssn: {left} of {left} rows done"
        )) && out.contains("0 remaining"),
        "{out}"
    );
    assert_eq!(db.count(encrypted).await, ROWS);
    let again = clinic.ops(&["encrypt-existing"]);
    assert_ok(&again, "a finished table");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("0 of 0 rows done"),
        "{}",
        text(&again)
    );

    let report = clinic.verify();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(
        column(&report, "patients", "encrypted_ssn")["current"],
        ROWS
    );
    // Rows from both runs decrypt, bound to their ids, and are found by their SSN.
    let encryptor = local_encryptor(clinic.dir.path());
    for id in [1, done, done + 1, ROWS] {
        let found = db.find_by_ssn(&encryptor, &format!("{id:09}")).await;
        assert_eq!(found.len(), 1, "patient {id}");
        assert_eq!(found[0].id, id);
        assert_eq!(found[0].name, format!("patient {id}"));
    }

    // --rehash: every SSN hash recomputed under a new search key, whose fingerprint is then
    // the recorded one; lookups under the old key find nothing.
    assert_ok(&clinic.ops(&["init"]), "init records the search key");
    let mut rehashing = Clinic {
        dir: tempfile::tempdir().expect("tempdir"),
        url: clinic.url.clone(),
        vars: clinic.vars.clone(),
    };
    std::fs::copy(
        clinic.dir.path().join("master.key"),
        rehashing.dir.path().join("master.key"),
    )
    .expect("key file");
    const NEW_SALT: &str = "clinic-lifecycle-new-search-key-abcdef0123456789";
    rehashing.set("ENCRYPTION_SEARCH_SALT", NEW_SALT);
    let rehash = rehashing.ops(&["rotate", "--rehash"]);
    assert_ok(&rehash, "rotate --rehash");
    let out = String::from_utf8_lossy(&rehash.stdout).into_owned();
    assert!(
        out.contains(&format!("rehash patients: {ROWS} of {ROWS} rows done"))
            && out.contains("search key fingerprint recorded"),
        "{out}"
    );
    let provider = LocalKeyProvider::from_file(clinic.dir.path().join("master.key")).expect("key");
    let renewed = Encryptor::builder(Arc::new(provider))
        .search_key(SearchKey::new(NEW_SALT.as_bytes().to_vec()).expect("search key"))
        .build();
    let found = db.find_by_ssn(&renewed, "000000042").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 42);
    assert!(db.find_by_ssn(&encryptor, "000000042").await.is_empty());
    let report = rehashing.verify();
    assert_eq!(report["clean"], true, "{report}");

    // A column that is not migrating is refused, with the ones that are.
    let refused = clinic.ops(&[
        "encrypt-existing",
        "--table",
        "patients",
        "--column",
        "notes",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("supported: patients.ssn"),
        "{}",
        text(&refused)
    );
}

#[tokio::test]
async fn encrypt_existing_killed_and_rerun_on_sqlite() {
    encrypt_existing_killed_and_rerun("sqlite").await;
}

#[tokio::test]
async fn encrypt_existing_killed_and_rerun_on_postgres() {
    encrypt_existing_killed_and_rerun("postgres").await;
}

// ---- rotate, retire-key, backup under KMS ----------------------------------------------------

/// A KMS key of its own for this test (an alias `alias/jarvis-<env>`), made by `clinic-ops
/// init`: its ARN.
fn kms_key(clinic: &Clinic, name: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let env = format!(
        "clinic-{name}-{}-{}",
        std::process::id(),
        RandomState::new().hash_one(Instant::now()) % 1_000_000
    );
    let out = clinic.ops(&["--provider", "aws-kms", "init", "--env", &env]);
    assert_ok(&out, "init aws-kms");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn lifecycle_under_kms(backend: &str) {
    let endpoint = jarvis_tests::kms_endpoint();
    let (mut clinic, mut db) = Clinic::new(backend, &[("AWS_ENDPOINT_URL_KMS", &endpoint)]).await;
    let old = kms_key(&clinic, "old");
    let new = kms_key(&clinic, "new");
    clinic.set("KMS_KEY_ID", &old);

    // 30 patients and 5 visits written by the application under the old key.
    let connection = KmsConnection::from_env(KmsOptions::default())
        .await
        .expect("kms");
    let provider: Arc<dyn KeyProvider> = Arc::new(
        AwsKms::new(connection.clone(), &old)
            .await
            .expect("old key"),
    );
    let encryptor = Encryptor::builder(Arc::clone(&provider))
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("search key"))
        .build();
    for id in 1..=30i64 {
        let patient = Patient {
            id,
            name: format!("patient {id}"),
            ssn: format!("{id:09}"),
            notes: (id % 3 != 0).then(|| format!("notes of {id}")),
            allergies: (id % 5 == 0).then(|| vec!["penicillin".to_owned(), "latex".to_owned()]),
            photo: (id % 7 == 0).then(|| vec![0xFF, 0xD8, id as u8]),
        };
        db.insert_patient(&patient.encrypt_row(&encryptor).await.expect("encrypt"))
            .await;
    }
    for id in 1..=5i64 {
        let visit = Visit {
            visit_no: id,
            patient_id: id,
            summary: format!("visit {id}"),
        };
        db.insert_visit(&visit.encrypt_row(&encryptor).await.expect("encrypt"))
            .await;
    }

    // Five patients as an earlier system wrote them: a data key from GenerateDataKey without
    // an encryption context, 16-byte IVs, no associated data, the bare blob, and a search
    // hash of another scheme.
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&shared);
    let generated = client
        .generate_data_key()
        .key_id(&old)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .expect("legacy data key");
    let key: [u8; 32] = generated
        .plaintext()
        .expect("plaintext")
        .as_ref()
        .try_into()
        .expect("32 bytes");
    let blob = generated.ciphertext_blob().expect("blob").as_ref().to_vec();
    for id in 31..=35i64 {
        let iv = [id as u8; 16];
        let ssn = format!("{id:09}");
        let (ct, tag) = cipher::seal_with_nonce(&key, &iv, b"", ssn.as_bytes()).expect("seal");
        let sql = format!(
            "INSERT INTO patients (id, name, encrypted_ssn, ssn_iv, ssn_auth_tag, ssn_data_key, \
             ssn_hash) VALUES ({id}, 'patient {id}', {}, {}, {}, {}, {})",
            db.blob(&ct),
            db.blob(&iv),
            db.blob(&tag),
            db.blob(&blob),
            db.blob(&[0xAB; 32])
        );
        db.run(&sql).await;
    }
    let report = clinic.verify();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(column(&report, "patients", "encrypted_ssn")["current"], 30);
    assert_eq!(column(&report, "patients", "encrypted_ssn")["legacy"], 5);
    assert!(db.find_by_ssn(&encryptor, "000000033").await.is_empty());

    // --legacy: the legacy rows in the current form, search hash included.
    let legacy = clinic.ops(&["rotate", "--legacy"]);
    assert_ok(&legacy, "rotate --legacy");
    assert!(
        String::from_utf8_lossy(&legacy.stdout).contains("legacy patients: 5 of 5 rows done"),
        "{}",
        text(&legacy)
    );
    let report = clinic.verify();
    assert_eq!(column(&report, "patients", "encrypted_ssn")["current"], 35);
    assert_eq!(column(&report, "patients", "encrypted_ssn")["legacy"], 0);
    let found = db.find_by_ssn(&encryptor, "000000033").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 33);

    // --older-than: the age is `keys_rotated_at` (the model's `rotated_at`); visits name none
    // and are left out, or refused when asked for.
    db.run(&format!(
        "UPDATE patients SET keys_rotated_at = {}",
        db.days_ago(1)
    ))
    .await;
    db.run(&format!(
        "UPDATE patients SET keys_rotated_at = {} WHERE id IN (2, 4, 6, 8, 10, 31, 32)",
        db.days_ago(100)
    ))
    .await;
    let before = db.patient(2).await;
    let older = clinic.ops(&["rotate", "--older-than", "90d"]);
    assert_ok(&older, "rotate --older-than");
    let out = String::from_utf8_lossy(&older.stdout).into_owned();
    assert!(
        out.contains("older-than patients: 7 of 7 rows done"),
        "{}",
        text(&older)
    );
    assert!(!out.contains("visits"), "{out}");
    let after = db.patient(2).await;
    assert_ne!(before.ssn_data_key, after.ssn_data_key, "a fresh data key");
    assert_ne!(before.encrypted_ssn, after.encrypted_ssn);
    assert_eq!(before.ssn_hash, after.ssn_hash, "same value, same hash");
    assert_eq!(
        db.count(&format!("keys_rotated_at < {}", db.days_ago(90)))
            .await,
        0,
        "the rotated rows are stamped"
    );
    let again = clinic.ops(&["rotate", "--older-than", "90d", "--table", "patients"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("older-than patients: 0 of 0 rows done"),
        "{}",
        text(&again)
    );
    let visits_refused = clinic.ops(&["rotate", "--older-than", "90d", "--table", "visits"]);
    assert_eq!(
        visits_refused.status.code(),
        Some(2),
        "{}",
        text(&visits_refused)
    );
    assert!(
        text(&visits_refused).contains("rotated_at"),
        "{}",
        text(&visits_refused)
    );

    // --reencrypt: every value under a fresh data key.
    let before = db.patient(5).await;
    let reencrypt = clinic.ops(&["rotate", "--reencrypt"]);
    assert_ok(&reencrypt, "rotate --reencrypt");
    let out = String::from_utf8_lossy(&reencrypt.stdout).into_owned();
    assert!(
        out.contains("reencrypt patients: 35 of 35 rows done"),
        "{out}"
    );
    assert!(out.contains("reencrypt visits: 5 of 5 rows done"), "{out}");
    let after = db.patient(5).await;
    assert_ne!(before.ssn_data_key, after.ssn_data_key);
    assert_ne!(before.allergies_data_key, after.allergies_data_key);
    let decrypted = Patient::decrypt_rows(vec![after], &encryptor)
        .await
        .expect("decrypt");
    assert_eq!(decrypted[0].ssn, "000000005");
    assert_eq!(
        decrypted[0].allergies.as_deref(),
        Some(&["penicillin".to_owned(), "latex".to_owned()][..])
    );

    // retire-key: refused while the clinic's rows need the old key.
    clinic.set("KMS_KEY_ID", &new);
    let refused = clinic.ops(&["retire-key", &old]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let why = text(&refused);
    assert!(why.contains("values in patients.encrypted_ssn"), "{why}");
    assert!(why.contains("values in visits.encrypted_summary"), "{why}");

    // --to-key: every data key re-wrapped under the new key, ciphertexts untouched.
    clinic.set("KMS_KEY_ID", &old);
    let before = db.patient(7).await;
    let to_key = clinic.ops(&["rotate", "--to-key", &new]);
    assert_ok(&to_key, "rotate --to-key");
    let out = String::from_utf8_lossy(&to_key.stdout).into_owned();
    assert!(out.contains("to-key patients: 35 of 35 rows done"), "{out}");
    assert!(out.contains("data keys re-wrapped"), "{out}");
    let after = db.patient(7).await;
    assert_eq!(before.encrypted_ssn, after.encrypted_ssn);
    assert_ne!(before.ssn_data_key, after.ssn_data_key);

    clinic.set("KMS_KEY_ID", &new);
    let report = clinic.verify();
    assert_eq!(report["clean"], true, "{report}");
    let retired = clinic.ops(&["retire-key", &old, "--pending-days", "7"]);
    assert_ok(&retired, "retire-key after --to-key");
    assert!(text(&retired).contains("disabled"), "{}", text(&retired));

    // An encrypted backup, restored into a fresh database, verifies.
    let file = clinic.dir.path().join("clinic.jvbk");
    let file = file.to_string_lossy().into_owned();
    assert_ok(
        &clinic.ops(&["backup", "create", "--out", &file]),
        "backup create",
    );
    let target = fresh_database(backend, &clinic.dir, "restored");
    assert_ok(
        &clinic.ops(&[
            "backup",
            "restore",
            "--in",
            &file,
            "--database-url",
            &target,
        ]),
        "backup restore",
    );
    let restored = Clinic {
        dir: tempfile::tempdir().expect("tempdir"),
        url: target.clone(),
        vars: clinic.vars.clone(),
    };
    let report = restored.verify();
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(column(&report, "patients", "encrypted_ssn")["current"], 35);
    assert_eq!(column(&report, "visits", "encrypted_summary")["current"], 5);
    let mut restored_db = Db::connect(&target).await;
    let new_provider: Arc<dyn KeyProvider> =
        Arc::new(AwsKms::new(connection, &new).await.expect("new key"));
    let reader = Encryptor::builder(new_provider)
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("search key"))
        .build();
    let found = restored_db.find_by_ssn(&reader, "000000011").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].notes.as_deref(), Some("notes of 11"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_under_kms_on_sqlite() {
    lifecycle_under_kms("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_under_kms_on_postgres() {
    lifecycle_under_kms("postgres").await;
}
