//! `jarvis backup create|restore|verify|list` end to end, through the binary, on PostgreSQL
//! and SQLite: byte-identical round trips, every tampering named and refused with the target
//! untouched, a restore killed midway leaving nothing behind, non-empty targets refused, and a
//! round trip under an AWS KMS key (the local KMS server).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{Encryptor, KeyProvider, LocalKeyProvider, NoAudit, SearchKey};
use jarvis_models::{Database, NewApiKey, NewOAuthToken, Store, with_conn};

const SALT: &str = "the search salt of the backup tests, 32 bytes or more";

struct Env {
    dir: tempfile::TempDir,
    key_file: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("master.key").display().to_string();
        let env = Env { dir, key_file };
        let init = env.jarvis(&["init"], None);
        assert_ok(&init, "init");
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str], database_url: Option<&str>) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jarvis"));
        command.current_dir(self.dir.path()).args(args);
        for var in ["DATABASE_URL", "KMS_KEY_ID", "JARVIS_LOCAL_MASTER_KEY"] {
            command.env_remove(var);
        }
        command
            .env("JARVIS_LOCAL_KEY_FILE", &self.key_file)
            .env("ENCRYPTION_SEARCH_SALT", SALT);
        if let Some(url) = database_url {
            command.env("DATABASE_URL", url);
        }
        command
    }

    fn jarvis(&self, args: &[&str], database_url: Option<&str>) -> Output {
        self.command(args, database_url)
            .output()
            .expect("jarvis runs")
    }

    fn store(&self, db: &Database) -> Store {
        let provider: Arc<dyn KeyProvider> =
            Arc::new(LocalKeyProvider::from_file(&self.key_file).expect("key file"));
        let encryptor = Encryptor::builder(provider)
            .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("salt"))
            .build();
        Store::new(db.clone(), encryptor, Arc::new(NoAudit))
    }

    fn key_id(&self) -> String {
        LocalKeyProvider::from_file(&self.key_file)
            .expect("key file")
            .key_id()
            .to_owned()
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_ok(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed: {}", text(output));
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(output.status.success(), "{sql}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn public_tables(url: &str) -> i64 {
    psql(
        url,
        "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
    )
    .parse()
    .expect("count")
}

/// Row counts and a digest of every column of the project's tables, in id order.
fn pg_fingerprint(url: &str) -> Vec<String> {
    let columns: [(&str, &[&str]); 4] = [
        (
            "users",
            &[
                "email",
                "encrypted_email",
                "email_iv",
                "email_auth_tag",
                "email_data_key",
                "email_hash",
            ],
        ),
        (
            "api_keys",
            &[
                "encrypted_key",
                "key_iv",
                "key_auth_tag",
                "key_data_key",
                "key_hash",
            ],
        ),
        (
            "oauth_tokens",
            &[
                "encrypted_access_token",
                "access_token_data_key",
                "encrypted_refresh_token",
                "refresh_token_data_key",
            ],
        ),
        ("jarvis_keys", &["wrapped_key"]),
    ];
    let mut out = Vec::new();
    for (table, cols) in columns {
        out.push(format!(
            "{table}: {}",
            psql(url, &format!("SELECT COUNT(*) FROM {table}"))
        ));
        for col in cols {
            let sql = format!(
                "SELECT md5(string_agg(COALESCE({col}::text, 'NULL'), ',' ORDER BY id)) FROM {table}"
            );
            out.push(format!("{table}.{col}: {}", psql(url, &sql)));
        }
    }
    out
}

async fn seed_extras(store: &Store, user_id: i64) {
    for i in 0..3 {
        store
            .create_api_key(NewApiKey {
                service_name: format!("service-{i}"),
                key: format!("sk_backup_test_{i}"),
                metadata: None,
                expires_at: None,
            })
            .await
            .expect("api key");
        store
            .create_oauth_token(NewOAuthToken {
                user_id: Some(user_id),
                provider: "github".to_owned(),
                access_token: format!("gho_backup_{i}"),
                refresh_token: (i % 2 == 0).then(|| format!("ghr_backup_{i}")),
                scope: Some("repo".to_owned()),
                expires_at: None,
            })
            .await
            .expect("oauth token");
    }
}

/// A PostgreSQL database with the schema, `plain` plaintext users, `encrypted` encrypted
/// users, API keys and OAuth tokens.
async fn seeded_postgres(env: &Env, prefix: &str, plain: usize, encrypted: usize) -> String {
    let url = jarvis_tests::fresh_postgres_database(prefix);
    assert_ok(&env.jarvis(&["migrate"], Some(&url)), "migrate");
    psql(
        &url,
        &format!(
            "INSERT INTO users (email) SELECT 'person' || g || '@example.org' \
             FROM generate_series(1, {plain}) g"
        ),
    );
    let db = Database::connect(&url, 2).await.expect("db");
    let store = env.store(&db);
    let emails: Vec<String> = (0..encrypted)
        .map(|i| format!("secret{i}@example.com"))
        .collect();
    let users = store.create_users(emails).await.expect("users");
    seed_extras(&store, users[0].id).await;
    url
}

fn create_backup(env: &Env, url: &str, file: &Path, name: &str) -> String {
    let file = file.display().to_string();
    let output = env.jarvis(
        &["backup", "create", "--out", &file, "--name", name],
        Some(url),
    );
    assert_ok(&output, "backup create");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn restore(env: &Env, input: &Path, target: &str, extra: &[&str]) -> Output {
    let input = input.display().to_string();
    let mut args = vec![
        "backup",
        "restore",
        "--in",
        &input,
        "--database-url",
        target,
    ];
    args.extend_from_slice(extra);
    env.jarvis(&args, None)
}

/// Postgres backends in a transaction on the database `name`, other than the asking one.
fn open_transactions(admin: &str, name: &str) -> i64 {
    psql(
        admin,
        &format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{name}' \
             AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
        ),
    )
    .parse()
    .expect("count")
}

fn connections(admin: &str, name: &str) -> i64 {
    psql(
        admin,
        &format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{name}' \
             AND pid <> pg_backend_pid()"
        ),
    )
    .parse()
    .expect("count")
}

fn database_name(url: &str) -> String {
    url.rsplit('/').next().expect("name").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_round_trip_of_100k_rows_survives_a_killed_restore() {
    let started = Instant::now();
    let env = Env::new();
    let source = seeded_postgres(&env, "backup_src", 90_000, 10_000).await;
    let file = env.path("full.jvbk");
    let created = create_backup(&env, &source, &file, "full");
    assert!(created.contains("name      full"), "{created}");
    assert!(created.contains(&format!("path      {}", file.display())));
    let size = std::fs::metadata(&file).expect("file").len();
    assert!(
        created.contains(&format!("size      {size} bytes")),
        "{created}"
    );
    let sha = created
        .lines()
        .find_map(|l| l.strip_prefix("sha256    "))
        .expect("sha line")
        .to_owned();
    assert_eq!(sha.len(), 64);
    eprintln!("seeded and backed up in {:?}", started.elapsed());

    // The record, the manifest's keys, the audit.
    let list = env.jarvis(&["backup", "list", "--json"], Some(&source));
    assert_ok(&list, "backup list");
    let records: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let record = &records[0];
    assert_eq!(record["name"], "full");
    assert_eq!(record["type"], "pg_dump");
    assert_eq!(record["size_bytes"], size);
    assert_eq!(record["checksum"], sha.as_str());
    assert_eq!(record["master_key_id"], env.key_id().as_str());
    assert_eq!(record["storage_path"], file.display().to_string());
    let verify = env.jarvis(
        &["backup", "verify", "--in", &file.display().to_string()],
        None,
    );
    assert_ok(&verify, "backup verify");
    let verify_text = text(&verify);
    assert!(verify_text.contains("backend   postgres"), "{verify_text}");
    assert!(
        verify_text.contains(&format!(
            "key       {}#v1 (stream+rows): available",
            env.key_id()
        )),
        "{verify_text}"
    );
    assert_eq!(
        psql(
            &source,
            "SELECT COUNT(*) FROM encryption_audit_log WHERE operation_type = 'backup' AND status = 'success'"
        ),
        "1"
    );

    // A restore killed midway: the single transaction leaves nothing.
    let target = jarvis_tests::fresh_postgres_database("backup_dst");
    let admin = jarvis_tests::postgres_admin_url();
    let name = database_name(&target);
    let input = file.display().to_string();
    let mut child = env
        .command(
            &[
                "backup",
                "restore",
                "--in",
                &input,
                "--database-url",
                &target,
            ],
            None,
        )
        .spawn()
        .expect("spawn restore");
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_transactions(&admin, &name) == 0 {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the restore ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the restore never began writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections(&admin, &name) > 0 {
        assert!(Instant::now() < deadline, "psql never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(public_tables(&target), 0, "a killed restore left objects");

    // The rerun succeeds; everything is byte-identical and verifies.
    let output = restore(&env, &file, &target, &[]);
    assert_ok(&output, "backup restore");
    assert_eq!(pg_fingerprint(&source), pg_fingerprint(&target));
    assert_eq!(psql(&target, "SELECT COUNT(*) FROM users"), "100000");
    let verified = env.jarvis(&["verify", "--json"], Some(&target));
    assert_ok(&verified, "verify of the restored database");
    assert_eq!(
        psql(
            &target,
            "SELECT COUNT(*) FROM encryption_audit_log WHERE operation_type = 'restore' AND status = 'success'"
        ),
        "1"
    );

    // Over a non-empty database: refused, then forced.
    let again = restore(&env, &file, &target, &[]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("the target database is not empty"),
        "{}",
        text(&again)
    );
    let forced = restore(&env, &file, &target, &["--force"]);
    assert_ok(&forced, "forced restore");
    assert_eq!(pg_fingerprint(&source), pg_fingerprint(&target));
    eprintln!("whole test in {:?}", started.elapsed());
}

/// Tampered copies of `file`: (what, expected message, bytes).
async fn tamperings(file: &Path) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let bytes = std::fs::read(file).expect("backup");
    let (start, chunk) = layout(&bytes).await;
    let chunks = (bytes.len() - start) / chunk;
    assert!(
        chunks >= 3,
        "the test needs at least 3 chunks, got {chunks}"
    );
    let mut flipped = bytes.clone();
    flipped[start + chunk + 100] ^= 0x04;
    let dropped = bytes[..bytes.len() - chunk].to_vec();
    let mut swapped = bytes[..start].to_vec();
    swapped.extend_from_slice(&bytes[start + chunk..start + 2 * chunk]);
    swapped.extend_from_slice(&bytes[start..start + chunk]);
    swapped.extend_from_slice(&bytes[start + 2 * chunk..]);
    let mut header_changed = bytes.clone();
    let at = find(&bytes[..start], b"\"created_at\":\"").expect("created_at") + 14;
    // A digit of the year: still a valid manifest, a different header.
    header_changed[at + 3] = if bytes[at + 3] == b'9' { b'8' } else { b'9' };
    vec![
        ("flipped bit", "chunk 1 does not authenticate", flipped),
        ("dropped last chunk", "it was cut short", dropped),
        ("swapped chunks", "chunks were reordered", swapped),
        (
            "changed manifest",
            "the header does not authenticate",
            header_changed,
        ),
    ]
}

/// (offset of chunk 0, bytes per chunk on disk) of a backup.
async fn layout(bytes: &[u8]) -> (usize, usize) {
    let header = jarvis_crypt::stream::read_header(&mut &bytes[..])
        .await
        .expect("header");
    (header.encoded_len(), header.chunk_size() as usize + 16)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampering_is_named_and_leaves_the_target_untouched() {
    let env = Env::new();
    let source = seeded_postgres(&env, "backup_tamper", 5_000, 20).await;
    let file = env.path("small.jvbk");
    create_backup(&env, &source, &file, "small");
    let target = jarvis_tests::fresh_postgres_database("backup_tamper_dst");

    // SQLite target too: its file must stay byte for byte as it was.
    let sqlite_src = env.path("src.db").display().to_string();
    assert_ok(&env.jarvis(&["migrate"], Some(&sqlite_src)), "migrate");
    let db = Database::connect(&sqlite_src, 1).await.expect("db");
    let store = env.store(&db);
    let emails: Vec<String> = (0..1500).map(|i| format!("s{i}@example.net")).collect();
    store.create_users(emails).await.expect("users");
    drop(store);
    drop(db);
    let sqlite_file = env.path("sqlite.jvbk");
    create_backup(&env, &sqlite_src, &sqlite_file, "sqlite");
    let sqlite_target = env.path("target.db");
    std::fs::write(&sqlite_target, b"").expect("empty target");

    for (backup, is_pg) in [(&file, true), (&sqlite_file, false)] {
        for (what, message, bytes) in tamperings(backup).await {
            let bad = env.path("tampered.jvbk");
            std::fs::write(&bad, &bytes).expect("write");
            let bad_arg = bad.display().to_string();
            let verify = env.jarvis(&["backup", "verify", "--in", &bad_arg], None);
            assert_eq!(verify.status.code(), Some(1), "{what}: {}", text(&verify));
            assert!(text(&verify).contains(message), "{what}: {}", text(&verify));
            let target_url = if is_pg {
                target.clone()
            } else {
                sqlite_target.display().to_string()
            };
            let output = restore(&env, &bad, &target_url, &[]);
            assert_eq!(output.status.code(), Some(1), "{what}: {}", text(&output));
            assert!(text(&output).contains(message), "{what}: {}", text(&output));
            assert!(
                text(&output).contains("was not touched"),
                "{}",
                text(&output)
            );
            if is_pg {
                assert_eq!(public_tables(&target), 0, "{what}");
            } else {
                assert_eq!(std::fs::read(&sqlite_target).expect("target"), b"");
                assert!(!env.path("target.db.restoring").exists());
            }
        }
    }
    // The untouched backup restores.
    assert_ok(&restore(&env, &file, &target, &[]), "restore");
    assert_eq!(pg_fingerprint(&source), pg_fingerprint(&target));
}

#[derive(QueryableByName)]
struct Digest {
    #[diesel(sql_type = Text)]
    d: String,
}

/// Every column of users and api_keys of an SQLite database, hex, in id order.
async fn sqlite_fingerprint(path: &Path) -> String {
    let db = Database::connect(&path.display().to_string(), 1)
        .await
        .expect("db");
    let mut conn = db.get().await.expect("conn");
    let sql = "SELECT (SELECT COUNT(*) FROM users) || ':' || \
               (SELECT COALESCE(group_concat(hex(encrypted_email) || hex(email_iv) \
                || hex(email_auth_tag) || hex(email_data_key) || hex(email_hash) \
                || COALESCE(email, ''), ','), '') \
                FROM (SELECT * FROM users ORDER BY id)) || ':' || \
               (SELECT COALESCE(group_concat(hex(encrypted_key) || hex(key_data_key), ','), '') \
                FROM (SELECT * FROM api_keys ORDER BY id)) || ':' || \
               (SELECT COUNT(*) FROM __diesel_schema_migrations) AS d";
    let digest: Digest = with_conn!(&mut conn, |c| sql_query(sql)
        .get_result(c)
        .await
        .expect("fingerprint"));
    digest.d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_in_a_file_and_in_the_database() {
    let env = Env::new();
    let source = env.path("app.db");
    let source_url = source.display().to_string();
    assert_ok(&env.jarvis(&["migrate"], Some(&source_url)), "migrate");
    {
        let db = Database::connect(&source_url, 1).await.expect("db");
        let store = env.store(&db);
        let emails: Vec<String> = (0..500).map(|i| format!("lite{i}@example.net")).collect();
        let users = store.create_users(emails).await.expect("users");
        seed_extras(&store, users[0].id).await;
    }
    let expected = sqlite_fingerprint(&source).await;
    assert!(expected.starts_with("500:"), "{expected}");

    // In a file.
    let file = env.path("lite.jvbk");
    create_backup(&env, &source_url, &file, "lite");
    let target = env.path("restored.db");
    let target_url = target.display().to_string();
    assert_ok(&restore(&env, &file, &target_url, &[]), "restore");
    assert_eq!(sqlite_fingerprint(&target).await, expected);
    assert_ok(
        &env.jarvis(&["verify"], Some(&target_url)),
        "verify of the restored database",
    );
    // Over a non-empty database: refused and unchanged; then forced.
    let before = std::fs::read(&target).expect("target");
    let refused = restore(&env, &file, &target_url, &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("the target database is not empty"));
    assert_eq!(std::fs::read(&target).expect("target"), before);
    assert_ok(&restore(&env, &file, &target_url, &["--force"]), "forced");
    assert_eq!(sqlite_fingerprint(&target).await, expected);

    // In the database itself: restored by name.
    let output = env.jarvis(
        &["backup", "create", "--store-in-db", "--name", "inline"],
        Some(&source_url),
    );
    assert_ok(&output, "create --store-in-db");
    assert!(text(&output).contains("stored in encrypted_backups"));
    let inline_target = env.path("inline.db").display().to_string();
    let output = env.jarvis(
        &[
            "backup",
            "restore",
            "--name",
            "inline",
            "--database-url",
            &inline_target,
        ],
        Some(&source_url),
    );
    assert_ok(&output, "restore --name");
    let restored = sqlite_fingerprint(Path::new(&inline_target)).await;
    // The inline backup was made after the file backup's record: one more backup row, same
    // users and keys.
    assert_eq!(restored, expected);

    // Both recorded, under the key that wraps their data keys.
    let list = env.jarvis(&["backup", "list"], Some(&source_url));
    assert_ok(&list, "list");
    let listed = text(&list);
    for expected in [
        "lite",
        "inline",
        "sqlite",
        "(in the database)",
        env.key_id().as_str(),
    ] {
        assert!(listed.contains(expected), "missing {expected}: {listed}");
    }
    let duplicate = env.jarvis(
        &["backup", "create", "--store-in-db", "--name", "inline"],
        Some(&source_url),
    );
    assert!(!duplicate.status.success());
    assert!(text(&duplicate).contains("already recorded"));
}

/// A SQLite database whose rows are under an AWS KMS key (the local KMS server), backed up
/// with `KMS_KEY_ID` set: the stream's data key is wrapped by KMS too. `backup verify` finds
/// the key through KMS and reports it missing with only the local provider; the restored copy
/// is identical and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_under_a_kms_key() {
    let env = Env::new();
    let endpoint = jarvis_tests::kms_endpoint();
    let source = env.path("kms.db");
    let source_url = source.display().to_string();
    let kms = |args: &[&str], url: Option<&str>, key_id: Option<&str>| {
        let mut command = env.command(args, url);
        command
            .env("AWS_ENDPOINT_URL_KMS", &endpoint)
            .args(["--provider", "aws-kms"]);
        if let Some(key_id) = key_id {
            command.env("KMS_KEY_ID", key_id);
        }
        command.output().expect("jarvis runs")
    };
    let env_name = format!("backup-{}", std::process::id());
    let init = kms(&["init", "--env", &env_name], None, None);
    assert_ok(&init, "init --provider aws-kms");
    let key_id = String::from_utf8_lossy(&init.stdout).trim().to_owned();

    assert_ok(&env.jarvis(&["migrate"], Some(&source_url)), "migrate");
    {
        let db = Database::connect(&source_url, 1).await.expect("db");
        let mut conn = db.get().await.expect("conn");
        with_conn!(&mut conn, |c| sql_query(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 300)
             INSERT INTO users (email) SELECT 'cloud' || n || '@example.net' FROM g"
        )
        .execute(c)
        .await
        .expect("seed"));
    }
    assert_ok(
        &kms(
            &["encrypt-existing", "--table", "users", "--column", "email"],
            Some(&source_url),
            Some(&key_id),
        ),
        "encrypt-existing under the KMS key",
    );
    let expected = sqlite_fingerprint(&source).await;
    assert!(expected.starts_with("300:"), "{expected}");

    let file = env.path("kms.jvbk").display().to_string();
    let created = kms(
        &["backup", "create", "--out", &file, "--name", "kms"],
        Some(&source_url),
        Some(&key_id),
    );
    assert_ok(&created, "backup create under the KMS key");

    let verified = kms(&["backup", "verify", "--in", &file], None, Some(&key_id));
    assert_ok(&verified, "backup verify through KMS");
    assert!(text(&verified).contains(&key_id), "{}", text(&verified));
    // With the local provider alone, the stream's key (and the rows') cannot be unwrapped.
    let local_only = env.jarvis(&["backup", "verify", "--in", &file], None);
    assert_eq!(local_only.status.code(), Some(1), "{}", text(&local_only));
    let said = text(&local_only);
    assert!(
        said.contains("REJECTED: unknown master key") && said.contains(&key_id),
        "{said}"
    );

    let target = env.path("kms-restored.db");
    let target_url = target.display().to_string();
    let input = file.clone();
    let restored = kms(
        &[
            "backup",
            "restore",
            "--in",
            &input,
            "--database-url",
            &target_url,
        ],
        None,
        Some(&key_id),
    );
    assert_ok(&restored, "restore under the KMS key");
    assert_eq!(sqlite_fingerprint(&target).await, expected);
    assert_ok(
        &kms(&["verify"], Some(&target_url), Some(&key_id)),
        "verify of the restored database",
    );
}
