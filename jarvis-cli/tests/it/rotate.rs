//! `jarvis rotate` through the binary: re-wrapping between two KMS keys and retiring the old
//! one, re-encryption killed midway and resumed, legacy rows reported and upgraded, rotation
//! by age and between versions of the local key.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Binary, Integer, Nullable};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    AwsKms, Encryptor, KeyProvider, KmsConnection, KmsOptions, LocalKeyProvider, NoAudit,
    SearchKey, cipher,
};
use jarvis_models::migrations::Backend;
use jarvis_models::{Database, NewApiKey, NewBackup, NewOAuthToken, Store, with_conn};

const SALT: &str = "a search salt for the rotate tests, long enough to be accepted";

/// The binary with a clean environment plus `vars`.
fn jarvis(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, vars)
}

fn run(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let output = jarvis(dir, args, vars).output().expect("jarvis runs");
    binary::assert_success(&output, format_args!("jarvis {args:?}"));
    output
}

use jarvis_tests::binary::{self, stdout};

fn verify_json(dir: &Path, vars: &[(&str, &str)]) -> serde_json::Value {
    let verify = run(dir, &["verify", "--json"], vars);
    serde_json::from_slice(&verify.stdout).expect("verify --json")
}

/// Per column of a verify report: (current, legacy, by master key).
fn columns(report: &serde_json::Value) -> Vec<(String, u64, u64, serde_json::Value)> {
    report["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                format!(
                    "{}.{}",
                    c["table"].as_str().unwrap_or(""),
                    c["column"].as_str().unwrap_or("")
                ),
                c["current"].as_u64().unwrap_or(0),
                c["legacy"].as_u64().unwrap_or(0),
                c["by_master_key"].clone(),
            )
        })
        .collect()
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

async fn execute(db: &Database, sql: &str) {
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| sql_query(sql).execute(c).await.expect(sql));
}

#[derive(QueryableByName, PartialEq, Eq, Debug, Clone, PartialOrd, Ord)]
struct Stored {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    ciphertext: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    data_key: Option<Vec<u8>>,
    #[diesel(sql_type = Integer)]
    rotation_count: i32,
}

async fn users(db: &Database) -> Vec<Stored> {
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| sql_query(
        "SELECT id, encrypted_email AS ciphertext, email_data_key AS data_key, rotation_count \
         FROM users ORDER BY id"
    )
    .load(c)
    .await
    .expect("users"))
}

/// Every distinct wrapped data key of every encrypted column.
const DISTINCT_DATA_KEYS: &str = "SELECT COUNT(*) AS n FROM (
    SELECT email_data_key AS k FROM users WHERE email_data_key IS NOT NULL
    UNION SELECT key_data_key FROM api_keys
    UNION SELECT access_token_data_key FROM oauth_tokens
    UNION SELECT refresh_token_data_key FROM oauth_tokens WHERE refresh_token_data_key IS NOT NULL
    UNION SELECT data_data_key FROM encrypted_backups WHERE data_data_key IS NOT NULL) AS keys";

fn store(db: &Database, provider: Arc<dyn KeyProvider>, search: SearchKey) -> Store {
    let encryptor = Encryptor::builder(provider).search_key(search).build();
    Store::new(db.clone(), encryptor, Arc::new(NoAudit))
}

/// Users, API keys, OAuth tokens and an inline backup.
async fn seed(store: &Store, users: usize) {
    let emails: Vec<String> = (0..users).map(|i| format!("user{i}@example.com")).collect();
    for chunk in emails.chunks(2_000) {
        store.create_users(chunk.to_vec()).await.expect("users");
    }
    for i in 0..3 {
        store
            .create_api_key(NewApiKey {
                service_name: format!("service-{i}"),
                key: format!("sk_live_rotate_{i}"),
                metadata: None,
                expires_at: None,
            })
            .await
            .expect("api key");
    }
    for i in 0..2 {
        store
            .create_oauth_token(NewOAuthToken {
                user_id: Some(1),
                provider: "google".into(),
                access_token: format!("ya29.rotate-{i}"),
                refresh_token: Some(format!("1//rotate-{i}")),
                scope: None,
                expires_at: None,
            })
            .await
            .expect("oauth token");
    }
    store
        .create_backup(NewBackup {
            backup_name: "inline".into(),
            backup_type: "full".into(),
            storage_path: None,
            data: Some(b"a small backup".to_vec()),
            size_bytes: Some(14),
            checksum: None,
            master_key_id: None,
        })
        .await
        .expect("backup");
}

async fn kms_key(connection: &KmsConnection, name: &str) -> String {
    let env = format!("{name}-{}-{}", std::process::id(), rand_suffix());
    connection
        .ensure_key(&env, None)
        .await
        .expect("kms key")
        .key_arn
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % 1_000_000
}

/// Two fresh KMS keys and a migrated database: the set-up of the tests that move a database
/// from one master key to another.
struct TwoKeys {
    endpoint: String,
    connection: KmsConnection,
    old: String,
    new: String,
    url: String,
    dir: tempfile::TempDir,
    db: Database,
}

impl TwoKeys {
    /// On `url`, or on a SQLite file in the fixture's directory when `None`.
    async fn new(name: &str, url: Option<String>) -> Self {
        let endpoint = jarvis_tests::kms_endpoint();
        let connection = KmsConnection::from_env(KmsOptions::default())
            .await
            .expect("kms");
        let old = kms_key(&connection, &format!("{name}-old")).await;
        let new = kms_key(&connection, &format!("{name}-new")).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let url = url.unwrap_or_else(|| dir.path().join("jarvis.sqlite3").display().to_string());
        let vars = [
            ("DATABASE_URL", url.as_str()),
            ("AWS_ENDPOINT_URL_KMS", endpoint.as_str()),
            ("KMS_KEY_ID", old.as_str()),
        ];
        run(dir.path(), &["migrate"], &vars);
        let db = Database::connect(&url, 4).await.expect("db");
        TwoKeys {
            endpoint,
            connection,
            old,
            new,
            url,
            dir,
            db,
        }
    }

    /// The variables of a command writing under `key`, plus `extra`.
    fn vars<'a>(&'a self, key: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut vars = vec![
            ("DATABASE_URL", self.url.as_str()),
            ("AWS_ENDPOINT_URL_KMS", self.endpoint.as_str()),
            ("KMS_KEY_ID", key),
        ];
        vars.extend_from_slice(extra);
        vars
    }

    /// A provider of data keys under the old key.
    async fn old_provider(&self) -> Arc<dyn KeyProvider> {
        Arc::new(
            AwsKms::new(self.connection.clone(), &self.old)
                .await
                .expect("old key"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_key_rewraps_every_data_key_once_then_the_old_key_retires() {
    let keys = TwoKeys::new(
        "rotate",
        Some(jarvis_tests::fresh_postgres_database("cli_rotate_to_key")),
    )
    .await;
    let (dir, db, connection) = (&keys.dir, keys.db.clone(), keys.connection.clone());
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let (vars_old, vars_new) = (keys.vars(&old, &[]), keys.vars(&new, &[]));
    let provider = keys.old_provider().await;
    // The search key is generated and stored in jarvis_keys, wrapped under the old key.
    let search = jarvis_models::keys::stored_search_key(&db, provider.as_ref())
        .await
        .expect("search key");
    seed(&store(&db, provider, search), 1_200).await;
    let distinct = count(&db, DISTINCT_DATA_KEYS).await;
    let before = users(&db).await;

    // While rows need the old key, it cannot be retired.
    let refused = jarvis(dir.path(), &["retire-key", &old], &vars_new)
        .output()
        .expect("retire-key");
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));

    let rotated = run(
        dir.path(),
        &[
            "rotate",
            "--to-key",
            &new,
            "--batch-size",
            "500",
            "--workers",
            "2",
        ],
        &vars_old,
    );
    let out = stdout(&rotated);
    assert!(
        out.contains(&format!(
            "{distinct} data keys re-wrapped, 1 stored keys re-wrapped"
        )),
        "each distinct data key re-wrapped once: {out}"
    );
    assert!(
        out.contains("to-key users: 1200 of 1200 rows done"),
        "{out}"
    );

    // Ciphertexts untouched, data keys re-wrapped; no data key changed, so the rotation
    // clock `--older-than` reads is not reset.
    let after = users(&db).await;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.ciphertext, a.ciphertext);
        assert_ne!(b.data_key, a.data_key);
        assert_eq!(a.rotation_count, b.rotation_count);
    }
    // Every value decrypts, all under the new key.
    let report = verify_json(dir.path(), &vars_new);
    assert_eq!(report["clean"], true, "{report}");
    for (column, current, _, by_key) in columns(&report) {
        let keys: Vec<&String> = by_key.as_object().expect("keys").keys().collect();
        assert!(
            current == 0 || keys == vec![&new],
            "{column} under {keys:?}, not only {new}"
        );
    }
    // A second run finds nothing to do.
    let again = stdout(&run(dir.path(), &["rotate", "--to-key", &new], &vars_old));
    assert!(
        again.contains("0 data keys re-wrapped, 0 stored keys re-wrapped"),
        "{again}"
    );

    // Nothing needs the old key any more: it can be retired, and everything still reads.
    let retired = run(
        dir.path(),
        &["retire-key", &old, "--pending-days", "7"],
        &vars_new,
    );
    assert!(
        stdout(&retired).contains("PendingDeletion"),
        "{}",
        stdout(&retired)
    );
    let provider: Arc<dyn KeyProvider> = Arc::new(
        AwsKms::new(connection.clone(), &new)
            .await
            .expect("new key"),
    );
    let search = jarvis_models::keys::stored_search_key(&db, provider.as_ref())
        .await
        .expect("search key under the new master key");
    let store = store(&db, provider, search);
    let found = store
        .find_user_by_email("USER7@example.com")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.email, "user7@example.com");
    assert_eq!(verify_json(dir.path(), &vars_new)["clean"], true);
}

/// `rotate --reencrypt` killed once a first batch has committed, then rerun: the rerun does
/// only the rows left, every value ends under a data key of the job, and verifies.
async fn reencrypt_killed_and_resumed(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let vars = [
        ("DATABASE_URL", url),
        ("JARVIS_LOCAL_MASTER_KEY", key),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(url, 4).await.expect("db");
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_hex(key).expect("local key"));
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    seed(&store(&db, provider, search), 20_000).await;
    let old_keys: BTreeSet<Vec<u8>> = users(&db)
        .await
        .into_iter()
        .filter_map(|u| u.data_key)
        .collect();

    let args = ["rotate", "--reencrypt", "--batch-size", "200"];
    let mut child = jarvis(dir.path(), &args, &vars)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Watch the database: kill once a first batch has committed.
    let rotated = "SELECT COUNT(*) AS n FROM users WHERE rotation_count > 0";
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&db, rotated).await == 0 {
        assert!(Instant::now() < deadline, "no batch committed in time");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "job ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let done = count(&db, rotated).await;
    assert!(done > 0 && done < 20_000, "killed midway: {done}");
    assert_eq!(done % 200, 0, "only whole batches are committed");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM jarvis_jobs WHERE finished_at IS NULL"
        )
        .await,
        1,
        "the interrupted run is recorded as unfinished"
    );

    let rerun = stdout(&run(dir.path(), &args, &vars));
    let left = 20_000 - done;
    assert!(
        rerun.contains(&format!("reencrypt users: {left} of {left} rows done")),
        "the rerun resumes the interrupted run: {rerun}"
    );
    let after = users(&db).await;
    assert!(
        after.iter().all(|u| u.rotation_count == 1),
        "every row re-encrypted exactly once"
    );
    assert!(
        after
            .iter()
            .all(|u| u.data_key.as_ref().is_some_and(|k| !old_keys.contains(k))),
        "no value is left under an old data key"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM jarvis_jobs WHERE finished_at IS NULL"
        )
        .await,
        0
    );
    let report = verify_json(dir.path(), &vars);
    assert_eq!(report["clean"], true, "{report}");
    // A new run re-encrypts everything again, under new data keys.
    let again = stdout(&run(
        dir.path(),
        &["rotate", "--reencrypt", "--table", "api_keys"],
        &vars,
    ));
    assert!(
        again.contains("reencrypt api_keys: 3 of 3 rows done"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_killed_then_resumed_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("reencrypt.sqlite3").display().to_string();
    reencrypt_killed_and_resumed(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_killed_then_resumed_on_postgres() {
    reencrypt_killed_and_resumed(&jarvis_tests::fresh_postgres_database("cli_reencrypt")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_rows_are_reported_by_verify_and_upgraded_by_rotate_legacy() {
    let endpoint = jarvis_tests::kms_endpoint();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&shared);
    let connection = KmsConnection::from_client(client.clone(), KmsOptions::default());
    let arn = kms_key(&connection, "rotate-legacy").await;
    let url = jarvis_tests::fresh_postgres_database("cli_legacy");
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("AWS_ENDPOINT_URL_KMS", endpoint.as_str()),
        ("KMS_KEY_ID", arn.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 4).await.expect("db");
    let provider: Arc<dyn KeyProvider> =
        Arc::new(AwsKms::new(connection.clone(), &arn).await.expect("key"));
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    // `rotate --legacy` of the stock jarvis writes references to its key vault: the store
    // reads them through it.
    let store = vault_store(&url, &db, provider, search, 1 << 20).await;
    seed(&store, 10).await;

    // Rows as the earlier implementation wrote them: a data key from GenerateDataKey without
    // an encryption context, 16-byte IVs, no associated data, the bare blob, and search
    // hashes of another scheme.
    let out = client
        .generate_data_key()
        .key_id(&arn)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .expect("legacy data key");
    let key: [u8; 32] = out
        .plaintext()
        .expect("plaintext")
        .as_ref()
        .try_into()
        .expect("32 bytes");
    let blob = hex::encode(out.ciphertext_blob().expect("blob").as_ref());
    let legacy = |plaintext: &str, n: u8| {
        let iv = [n; 16];
        let (ct, tag) =
            cipher::seal_with_nonce(&key, &iv, b"", plaintext.as_bytes()).expect("seal");
        (hex::encode(ct), hex::encode(iv), hex::encode(tag))
    };
    for i in 0..5u8 {
        let (ct, iv, tag) = legacy(&format!("legacy{i}@example.com"), i + 1);
        execute(
            &db,
            &format!(
                "INSERT INTO users (encrypted_email, email_iv, email_auth_tag, email_data_key, email_hash) \
                 VALUES ('\\x{ct}', '\\x{iv}', '\\x{tag}', '\\x{blob}', '\\x{}')",
                hex::encode([0xAB; 32])
            ),
        )
        .await;
    }
    let (ct, iv, tag) = legacy("sk_live_legacy", 9);
    execute(
        &db,
        &format!(
            "INSERT INTO api_keys (service_name, encrypted_key, key_iv, key_auth_tag, key_data_key) \
             VALUES ('stripe', '\\x{ct}', '\\x{iv}', '\\x{tag}', '\\x{blob}')"
        ),
    )
    .await;

    // verify: legacy rows are legacy, not failures.
    let report = verify_json(dir.path(), &vars);
    assert_eq!(report["clean"], true, "{report}");
    let by_column = columns(&report);
    let legacy_of = |name: &str| {
        by_column
            .iter()
            .find(|(c, ..)| c == name)
            .map(|(_, current, legacy, _)| (*current, *legacy))
            .expect(name)
    };
    assert_eq!(legacy_of("users.encrypted_email"), (10, 5));
    assert_eq!(legacy_of("api_keys.encrypted_key"), (3, 1));
    // Other modes leave them alone and say so.
    let reencrypt = stdout(&run(
        dir.path(),
        &["rotate", "--reencrypt", "--table", "users"],
        &vars,
    ));
    assert!(
        reencrypt.contains("5 legacy rows left alone"),
        "{reencrypt}"
    );
    // The legacy rows are not found by their email yet: their hashes are of another scheme.
    assert!(
        store
            .find_user_by_email("legacy3@example.com")
            .await
            .expect("lookup")
            .is_none()
    );

    let upgraded = stdout(&run(dir.path(), &["rotate", "--legacy"], &vars));
    assert!(
        upgraded.contains("legacy users: 5 of 5 rows done"),
        "{upgraded}"
    );
    assert!(
        upgraded.contains("legacy api_keys: 1 of 1 rows done"),
        "{upgraded}"
    );
    let report = verify_json(dir.path(), &vars);
    assert_eq!(report["clean"], true, "{report}");
    let by_column = columns(&report);
    let forms = |name: &str| {
        by_column
            .iter()
            .find(|(c, ..)| c == name)
            .map(|(_, current, legacy, _)| (*current, *legacy))
            .expect(name)
    };
    assert_eq!(forms("users.encrypted_email"), (15, 0));
    assert_eq!(forms("api_keys.encrypted_key"), (4, 0));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM users WHERE length(email_iv) <> 12"
        )
        .await,
        0
    );
    // Found through the new search hash, with the current form's associated data.
    let found = store
        .find_user_by_email(" Legacy3@Example.com ")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.email, "legacy3@example.com");
    let api = store
        .find_api_key_by_key("sk_live_legacy")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(api.service_name, "stripe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_than_and_local_key_versions_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("rotate.sqlite3").display().to_string();
    let key_file = dir.path().join("master.key").display().to_string();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_KEY_FILE", key_file.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    let v1 = stdout(&run(dir.path(), &["init"], &vars)).trim().to_owned();
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 2).await.expect("db");
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_file(&key_file).expect("key file"));
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    seed(&store(&db, provider, search), 50).await;
    assert_eq!(db.backend(), Backend::Sqlite);

    // Two API keys last rotated 100 days ago, users created 120 days ago: --older-than 90d
    // takes exactly those.
    execute(
        &db,
        "UPDATE api_keys SET last_rotated_at = datetime('now', '-100 days') WHERE id <= 2",
    )
    .await;
    execute(
        &db,
        "UPDATE users SET created_at = datetime('now', '-120 days') WHERE id <= 7",
    )
    .await;
    let out = stdout(&run(dir.path(), &["rotate", "--older-than", "90d"], &vars));
    assert!(out.contains("older-than users: 7 of 7 rows done"), "{out}");
    assert!(
        out.contains("older-than api_keys: 2 of 2 rows done"),
        "{out}"
    );
    assert!(
        out.contains("older-than oauth_tokens: 0 of 0 rows done"),
        "{out}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM api_keys WHERE rotation_count = 1"
        )
        .await,
        2
    );
    let again = stdout(&run(dir.path(), &["rotate", "--older-than", "90d"], &vars));
    assert!(again.contains("0 rows in"), "nothing left: {again}");
    let bad = jarvis(dir.path(), &["rotate", "--older-than", "soon"], &vars)
        .output()
        .expect("runs");
    assert!(!bad.status.success());

    // A new version of the local key; everything moves under it.
    let v2 = stdout(&run(dir.path(), &["init", "--new-version"], &vars))
        .trim()
        .to_owned();
    assert_eq!(v2, format!("{v1}#v2"));
    let moved = stdout(&run(dir.path(), &["rotate", "--to-key", "2"], &vars));
    assert!(
        // The rows `rotate --older-than` re-encrypted reference the key vault, whose keys are
        // re-wrapped instead; the others' inline keys are re-wrapped in place.
        moved.contains("to-key users: 43 of 43 rows done")
            && moved.contains("of them in the key vault (jarvis_data_keys)"),
        "{moved}"
    );
    let report = verify_json(dir.path(), &vars);
    assert_eq!(report["clean"], true, "{report}");
    for (column, current, _, by_key) in columns(&report) {
        let keys: Vec<&String> = by_key.as_object().expect("keys").keys().collect();
        assert!(current == 0 || keys == vec![&v2], "{column}: {keys:?}");
    }
    let unknown = jarvis(dir.path(), &["rotate", "--to-key", "9"], &vars)
        .output()
        .expect("runs");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unknown master key"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_under_a_new_kms_key_is_the_compromise_procedure() {
    let keys = TwoKeys::new(
        "compromise",
        Some(jarvis_tests::fresh_postgres_database("cli_compromise")),
    )
    .await;
    let (dir, db) = (&keys.dir, keys.db.clone());
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let (vars_old, vars_new) = (keys.vars(&old, &[]), keys.vars(&new, &[]));
    let provider = keys.old_provider().await;
    let search = jarvis_models::keys::stored_search_key(&db, provider.as_ref())
        .await
        .expect("search key");
    seed(&store(&db, provider, search), 300).await;
    let before = users(&db).await;

    let out = stdout(&run(
        dir.path(),
        &["rotate", "--reencrypt", "--to-key", &new],
        &vars_old,
    ));
    assert!(
        out.contains("reencrypt users: 300 of 300 rows done"),
        "{out}"
    );
    assert!(out.contains("1 stored keys re-wrapped"), "{out}");
    let after = users(&db).await;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b.ciphertext, a.ciphertext, "re-encrypted, not re-wrapped");
        assert_ne!(b.data_key, a.data_key);
    }
    let report = verify_json(dir.path(), &vars_new);
    assert_eq!(report["clean"], true, "{report}");
    for (column, current, _, by_key) in columns(&report) {
        let keys: Vec<&String> = by_key.as_object().expect("keys").keys().collect();
        assert!(current == 0 || keys == vec![&new], "{column}: {keys:?}");
    }
    let retired = run(
        dir.path(),
        &["retire-key", &old, "--pending-days", "7"],
        &vars_new,
    );
    assert!(stdout(&retired).contains("PendingDeletion"));
    assert_eq!(verify_json(dir.path(), &vars_new)["clean"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_key_counts_backups_whose_rows_need_the_key() {
    let keys = TwoKeys::new("backup", None).await;
    let (dir, db) = (&keys.dir, keys.db.clone());
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let salt = [("ENCRYPTION_SEARCH_SALT", SALT)];
    let (vars_old, vars_new) = (keys.vars(&old, &salt), keys.vars(&new, &salt));
    let provider = keys.old_provider().await;
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    seed(&store(&db, provider, search), 20).await;

    // A backup under the new key of rows still under the old one.
    let file = dir
        .path()
        .join("before-rotation.jvbk")
        .display()
        .to_string();
    run(dir.path(), &["backup", "create", "--out", &file], &vars_new);
    run(dir.path(), &["rotate", "--to-key", &new], &vars_old);

    let refused = jarvis(dir.path(), &["retire-key", &old], &vars_new)
        .output()
        .expect("retire-key");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(why.contains("whose rows are under it"), "{why}");

    execute(
        &db,
        "DELETE FROM encrypted_backups WHERE storage_path IS NOT NULL",
    )
    .await;
    let accepted = run(
        dir.path(),
        &["retire-key", &old, "--pending-days", "7"],
        &vars_new,
    );
    assert!(stdout(&accepted).contains("PendingDeletion"));
}

const NEW_SALT: &str = "the search salt the rotate tests move to, long enough as well";

/// `rotate --rehash`: the configured search key is the new one, the recorded fingerprint the
/// old one's; every hash is recomputed, the new fingerprint recorded, a rerun does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehash_moves_the_search_hashes_to_the_configured_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("rehash.sqlite3").display().to_string();
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let old_vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", key),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    let new_vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", key),
        ("ENCRYPTION_SEARCH_SALT", NEW_SALT),
    ];
    run(dir.path(), &["migrate"], &old_vars);
    let db = Database::connect(&url, 2).await.expect("db");
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_hex(key).expect("local key"));
    let old = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    let new = SearchKey::new(NEW_SALT.as_bytes().to_vec()).expect("salt");
    let (old_short, new_short) = (old.fingerprint().short(), new.fingerprint().short());
    jarvis_models::keys::record_search_key(&db, &old)
        .await
        .expect("record the old key");
    seed(&store(&db, Arc::clone(&provider), old), 50).await;
    let with_new = store(&db, provider, new);
    // Before the re-hash, the repositories refuse the new key: it is not the recorded one.
    let refused = with_new
        .find_user_by_email("user7@example.com")
        .await
        .expect_err("the new key before the re-hash");
    assert_eq!(
        refused.crypto_kind(),
        Some(jarvis_crypt::ErrorKind::Configuration),
        "{refused}"
    );

    // The new key must be configured: it is the key the hashes move to.
    let no_key = jarvis(
        dir.path(),
        &["rotate", "--rehash"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("JARVIS_LOCAL_MASTER_KEY", key),
        ],
    )
    .output()
    .expect("runs");
    assert_eq!(no_key.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&no_key.stderr).contains("set ENCRYPTION_SEARCH_SALT"),
        "{}",
        String::from_utf8_lossy(&no_key.stderr)
    );
    // Every table at once: the search key is the database's.
    let one_table = jarvis(
        dir.path(),
        &["rotate", "--rehash", "--table", "users"],
        &new_vars,
    )
    .output()
    .expect("runs");
    assert!(!one_table.status.success());

    let out = stdout(&run(
        dir.path(),
        &["rotate", "--rehash", "--batch-size", "20", "--workers", "2"],
        &new_vars,
    ));
    assert!(
        out.contains("rehash users: 50 of 50 rows done (50 values)"),
        "{out}"
    );
    assert!(out.contains("rehash api_keys: 3 of 3 rows done"), "{out}");
    assert!(
        out.contains(&format!(
            "search key fingerprint recorded: {new_short} (was {old_short})"
        )),
        "{out}"
    );
    let found = with_new
        .find_user_by_email(" USER7@example.com")
        .await
        .expect("lookup")
        .expect("found under the new key");
    assert_eq!(found.email, "user7@example.com");
    assert!(
        with_new
            .find_api_key_by_key("sk_live_rotate_2")
            .await
            .expect("lookup")
            .is_some()
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM users WHERE rotation_count > 0"
        )
        .await,
        0,
        "no data key changed"
    );
    assert_eq!(verify_json(dir.path(), &new_vars)["clean"], true);

    let again = stdout(&run(dir.path(), &["rotate", "--rehash"], &new_vars));
    assert!(
        again.contains(&format!(
            "every search hash is under the search key {new_short} (recorded)"
        )),
        "{again}"
    );
    assert!(again.contains("0 rows in"), "{again}");
}

/// A row held by another transaction is skipped (`SKIP LOCKED`): the run ends unfinished,
/// says so, exits 1, and a rerun once the row is free finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_by_the_application_leaves_the_run_unfinished() {
    let url = jarvis_tests::fresh_postgres_database("cli_rotate_locked");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff,\
               2:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", key),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 4).await.expect("db");
    let provider: Arc<dyn KeyProvider> = Arc::new(
        LocalKeyProvider::from_hex(key)
            .expect("local key")
            .with_current_version(1)
            .expect("version 1"),
    );
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    seed(&store(&db, provider, search), 40).await;

    // The application holds user 7 in an open transaction.
    let mut holder = db.get().await.expect("conn");
    with_conn!(&mut holder, |c| {
        sql_query("BEGIN").execute(c).await.expect("begin");
        sql_query("SELECT id FROM users WHERE id = 7 FOR UPDATE")
            .execute(c)
            .await
            .expect("lock")
    });
    let args = [
        "rotate",
        "--to-key",
        "2",
        "--table",
        "users",
        "--batch-size",
        "10",
    ];
    let held = jarvis(dir.path(), &args, &vars).output().expect("runs");
    let (out, err) = (
        String::from_utf8_lossy(&held.stdout),
        String::from_utf8_lossy(&held.stderr),
    );
    assert_eq!(held.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("to-key users: 39 of 40 rows done"), "{out}");
    assert!(out.contains("; 1 remaining"), "{out}");
    assert!(
        err.contains("not finished: 1 rows are still pending"),
        "{err}"
    );
    with_conn!(&mut holder, |c| sql_query("ROLLBACK")
        .execute(c)
        .await
        .expect("rollback"));
    drop(holder);

    let out = stdout(&run(dir.path(), &args, &vars));
    assert!(out.contains("to-key users: 1 of 1 rows done"), "{out}");
}

/// `verify` recomputes every search hash under the configured search key, and reports a
/// row holding both a ciphertext and the plaintext it replaced; each a failure of its own
/// kind, by table, row and column. Without a search key it says the hashes were not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_search_hashes_and_plaintext_left_beside_ciphertext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("verify.sqlite3").display().to_string();
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", key),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    let no_search_key = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_MASTER_KEY", key),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(&url, 2).await.expect("db");
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_hex(key).expect("local key"));
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    seed(&store(&db, provider, search), 20).await;
    let report = verify_json(dir.path(), &vars);
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["search_hashes_checked"], true);

    // User 3 gets user 4's (valid) hash, API key 2 loses its hash, user 5 gets its
    // plaintext back beside the ciphertext.
    execute(
        &db,
        "UPDATE users SET email_hash = (SELECT email_hash FROM users WHERE id = 4) WHERE id = 3",
    )
    .await;
    execute(&db, "UPDATE api_keys SET key_hash = NULL WHERE id = 2").await;
    execute(
        &db,
        "UPDATE users SET email = 'user5@example.com' WHERE id = 5",
    )
    .await;

    let failed = jarvis(dir.path(), &["verify"], &vars)
        .output()
        .expect("verify");
    let out = stdout(&failed);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    for line in [
        "FAILED users id 3 email_hash: search_hash_mismatch",
        "FAILED api_keys id 2 key_hash: search_hash_mismatch",
        "FAILED users id 5 email: plaintext_not_cleared",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert_eq!(out.matches("FAILED").count(), 3, "{out}");
    let json = jarvis(dir.path(), &["verify", "--json"], &vars)
        .output()
        .expect("verify --json");
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let users = report["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .find(|c| c["table"] == "users")
        .expect("users")
        .clone();
    assert_eq!(users["search_hash_mismatches"], 1, "{users}");
    assert_eq!(users["plaintext_not_cleared"], 1, "{users}");
    assert_eq!(users["failed"], 0, "every value still decrypts: {users}");

    // No search key configured or stored: the values are checked, the hashes are not, and
    // verify says so.
    let unchecked = jarvis(dir.path(), &["verify"], &no_search_key)
        .output()
        .expect("verify");
    let out = stdout(&unchecked);
    assert_eq!(
        unchecked.status.code(),
        Some(1),
        "the plaintext is still found: {out}"
    );
    assert!(out.contains("search hashes not checked"), "{out}");
    assert!(!out.contains("search_hash_mismatch"), "{out}");
    execute(&db, "UPDATE users SET email = NULL WHERE id = 5").await;
    let unchecked = jarvis(dir.path(), &["verify", "--json"], &no_search_key)
        .output()
        .expect("verify");
    assert!(unchecked.status.success());
    let report: serde_json::Value = serde_json::from_slice(&unchecked.stdout).expect("json");
    assert_eq!(report["search_hashes_checked"], false, "{report}");
}

/// A store of the seed's tables whose data keys go to the key vault, `max_values` values per
/// data key.
async fn vault_store(
    url: &str,
    db: &Database,
    provider: Arc<dyn KeyProvider>,
    search: SearchKey,
    max_values: u64,
) -> Store {
    let vault = jarvis_models::DbKeyVault::connect(url)
        .await
        .expect("vault");
    let encryptor = Encryptor::builder(provider)
        .search_key(search)
        .cache_limits(jarvis_crypt::CacheLimits {
            max_messages: max_values,
            ..jarvis_crypt::CacheLimits::default()
        })
        .key_vault(Arc::new(vault))
        .build();
    Store::new(db.clone(), encryptor, Arc::new(NoAudit))
}

const VAULT_KEYS: &str = "SELECT COUNT(*) AS n FROM jarvis_data_keys";
const REFERENCES: &str = "SELECT COUNT(*) AS n FROM users WHERE length(email_data_key) = 20";

/// `rotate --to-key` over values that reference the key vault re-wraps the vault's keys, one
/// KMS call each, and writes no data row; the old key then retires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_key_rewraps_the_vault_and_writes_no_data_row() {
    let keys = TwoKeys::new(
        "vault-to-key",
        Some(jarvis_tests::fresh_postgres_database("cli_vault_to_key")),
    )
    .await;
    let (dir, db) = (&keys.dir, keys.db.clone());
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let (vars_old, vars_new) = (keys.vars(&old, &[]), keys.vars(&new, &[]));
    let provider = keys.old_provider().await;
    let search = jarvis_models::keys::stored_search_key(&db, provider.as_ref())
        .await
        .expect("search key");
    seed(
        &vault_store(&keys.url, &db, provider, search, 100).await,
        1_200,
    )
    .await;
    let vault_keys = count(&db, VAULT_KEYS).await;
    assert!(vault_keys >= 12, "{vault_keys} vault keys");
    assert_eq!(count(&db, REFERENCES).await, 1_200);
    let before = users(&db).await;

    let rotated = run(
        dir.path(),
        &["rotate", "--to-key", &new, "--batch-size", "500"],
        &vars_old,
    );
    let out = stdout(&rotated);
    assert!(
        out.contains(&format!(
            "{vault_keys} data keys re-wrapped, 1 stored keys re-wrapped"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{vault_keys} of them in the key vault")),
        "{out}"
    );
    // Every data row is byte for byte as it was.
    assert_eq!(users(&db).await, before);
    // The re-wrap is recorded, in the vault and in jarvis_jobs.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM jarvis_data_keys WHERE rewrapped_at IS NOT NULL"
        )
        .await,
        vault_keys
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM jarvis_jobs WHERE kind = 'rotate-to-key-vault' \
             AND finished_at IS NOT NULL"
        )
        .await,
        1
    );
    // verify reads the vault: every value under the new key.
    let report = verify_json(dir.path(), &vars_new);
    assert_eq!(report["clean"], true, "{report}");
    for (column, current, _, by_key) in columns(&report) {
        let keys: Vec<&String> = by_key.as_object().expect("keys").keys().collect();
        assert!(
            current == 0 || keys == vec![&new],
            "{column} under {keys:?}, not only {new}"
        );
    }
    // A second run has nothing to do.
    let again = stdout(&run(dir.path(), &["rotate", "--to-key", &new], &vars_old));
    assert!(
        again.contains("0 data keys re-wrapped, 0 stored keys re-wrapped"),
        "{again}"
    );
    // Nothing needs the old key: it retires.
    let retired = run(
        dir.path(),
        &["retire-key", &old, "--pending-days", "7"],
        &vars_new,
    );
    assert!(
        stdout(&retired).contains("PendingDeletion"),
        "{}",
        stdout(&retired)
    );
}

/// `rotate --reencrypt --to-key NEW` gives every value a fresh data key under NEW and revokes
/// the keys it replaced once nothing references them: a replayed old value then reads as a
/// revoked key, and `retire-key OLD` is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_revokes_the_replaced_keys_and_the_old_key_retires() {
    let keys = TwoKeys::new(
        "vault-revoke",
        Some(jarvis_tests::fresh_postgres_database("cli_vault_revoke")),
    )
    .await;
    let (dir, db) = (&keys.dir, keys.db.clone());
    let (old, new) = (keys.old.clone(), keys.new.clone());
    let vars_old = keys.vars(&old, &[]);
    let vars_new = keys.vars(&new, &[]);
    let provider = keys.old_provider().await;
    let search = jarvis_models::keys::stored_search_key(&db, provider.as_ref())
        .await
        .expect("search key");
    seed(
        &vault_store(&keys.url, &db, provider, search, 100).await,
        300,
    )
    .await;
    let old_keys = count(&db, VAULT_KEYS).await;
    // The replaced keys are older than the writers' cache window.
    execute(
        &db,
        "UPDATE jarvis_data_keys SET created_at = created_at - INTERVAL '1 hour'",
    )
    .await;
    let replayed = users(&db).await.into_iter().next().expect("a user");

    // While the old key wraps live vault keys, it cannot be retired.
    let refused = jarvis(dir.path(), &["retire-key", &old], &vars_new)
        .output()
        .expect("retire-key");
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));

    let out = stdout(&run(
        dir.path(),
        &["rotate", "--reencrypt", "--to-key", &new],
        &vars_old,
    ));
    assert!(
        out.contains(&format!(
            "{old_keys} replaced data keys revoked in the key vault"
        )),
        "{out}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM jarvis_data_keys WHERE revoked_at IS NOT NULL \
             AND wrapped IS NULL AND master_key_id IS NULL"
        )
        .await,
        old_keys
    );
    assert_eq!(count(&db, REFERENCES).await, 300);
    let report = verify_json(dir.path(), &vars_new);
    assert_eq!(report["clean"], true, "{report}");

    // A value written back by hand under a revoked key does not read.
    execute(
        &db,
        &format!(
            "UPDATE users SET encrypted_email = '\\x{}', email_data_key = '\\x{}' WHERE id = {}",
            hex(replayed.ciphertext.as_deref().expect("ciphertext")),
            hex(replayed.data_key.as_deref().expect("data key")),
            replayed.id
        ),
    )
    .await;
    let verified = jarvis(dir.path(), &["verify", "--json"], &vars_new)
        .output()
        .expect("verify");
    assert_eq!(verified.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).expect("json");
    assert_eq!(report["clean"], false, "{report}");
    assert!(report.to_string().contains("unknown_data_key"), "{report}");

    // Revoked keys need no master key: the old one retires.
    let retired = run(
        dir.path(),
        &["retire-key", &old, "--pending-days", "7"],
        &vars_new,
    );
    assert!(
        stdout(&retired).contains("PendingDeletion"),
        "{}",
        stdout(&retired)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `rotate --compact` over 20,000 inline values under 20 data keys, killed with SIGKILL once a
/// first batch has committed, then rerun: one vault row per distinct inline key (never a
/// second one for a key the killed run stored), every value a reference, the ciphertexts
/// untouched, and `verify` clean.
async fn compact_killed_and_resumed(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let vars = [
        ("DATABASE_URL", url),
        ("JARVIS_LOCAL_MASTER_KEY", key),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    run(dir.path(), &["migrate"], &vars);
    let db = Database::connect(url, 4).await.expect("db");
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_hex(key).expect("local key"));
    let search = SearchKey::new(SALT.as_bytes().to_vec()).expect("salt");
    let encryptor = Encryptor::builder(provider)
        .search_key(search)
        .cache_limits(jarvis_crypt::CacheLimits {
            max_messages: 1_000,
            ..jarvis_crypt::CacheLimits::default()
        })
        .build();
    seed(
        &Store::new(db.clone(), encryptor, Arc::new(NoAudit)),
        20_000,
    )
    .await;
    let inline_keys = count(&db, DISTINCT_DATA_KEYS).await;
    assert!(inline_keys >= 20, "{inline_keys}");
    let before = users(&db).await;

    let args = ["rotate", "--compact", "--batch-size", "200"];
    let mut child = jarvis(dir.path(), &args, &vars)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&db, REFERENCES).await == 0 {
        assert!(Instant::now() < deadline, "no batch committed in time");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "job ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let done = count(&db, REFERENCES).await;
    assert!(done > 0 && done < 20_000, "killed midway: {done}");
    assert_eq!(done % 200, 0, "only whole batches are committed");

    let rerun = stdout(&run(dir.path(), &args, &vars));
    assert!(rerun.contains("0 remaining"), "{rerun}");
    assert_eq!(count(&db, REFERENCES).await, 20_000);
    // One vault row per distinct inline key, however many rows shared it or runs met it.
    assert_eq!(count(&db, VAULT_KEYS).await, inline_keys);
    assert_eq!(count(&db, DISTINCT_DATA_KEYS).await, inline_keys);
    let after = users(&db).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.ciphertext, a.ciphertext);
        assert_eq!(a.data_key.as_ref().map(Vec::len), Some(20));
        assert_eq!(a.rotation_count, b.rotation_count);
    }
    let report = verify_json(dir.path(), &vars);
    assert_eq!(report["clean"], true, "{report}");
    // A third run has nothing to do.
    let again = stdout(&run(dir.path(), &args, &vars));
    assert!(
        again.contains("0 inline data keys moved into the key vault"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_killed_then_resumed_on_postgres() {
    compact_killed_and_resumed(&jarvis_tests::fresh_postgres_database("cli_compact")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_killed_then_resumed_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("compact.sqlite3").display().to_string();
    compact_killed_and_resumed(&url).await;
}
