//! `jarvis backup create|restore|verify|list` end to end, through the binary, on PostgreSQL
//! and SQLite: byte-identical round trips, every tampering named and refused with the target
//! untouched, a restore killed midway leaving nothing behind, non-empty targets refused, and a
//! round trip under an AWS KMS key (the local KMS server). The hardening of the security
//! review: authentic dumps with psql meta-commands or transaction control refused before
//! anything runs, NULL and bytea first columns restored, the authenticated descriptor
//! applied (not a file reopened by path), child processes without the secrets, symbolic
//! links never followed, manifest strings printed escaped, and `retire-key` counting every
//! master key a backup's rows need.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_crypt::stream::{Manifest, StreamOptions};
use jarvis_crypt::{
    Encryptor, KeyProvider, KmsConnection, KmsOptions, LocalKeyProvider, NoAudit, SearchKey,
};
use jarvis_models::{Database, NewApiKey, NewOAuthToken, Store, with_conn};
use jarvis_tests::fault_proxy::{Fault, FaultProxy};

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

use jarvis_tests::binary::{assert_success as assert_ok, text};

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

/// An event trigger that gives `public.users`, as the restore creates it, a row trigger that
/// waits for advisory lock 4242 at the 50,000th row: the restore stops midway through its
/// largest table, inside its transaction, before the rest of the dump (and its COMMIT) could
/// be written to psql.
const GATE: &str = "CREATE SCHEMA jarvis_gate; \
    CREATE FUNCTION jarvis_gate.row() RETURNS trigger LANGUAGE plpgsql AS $gate$ \
    BEGIN IF NEW.id >= 50000 THEN PERFORM pg_catalog.pg_advisory_xact_lock(4242); END IF; \
    RETURN NEW; END $gate$; \
    CREATE FUNCTION jarvis_gate.hold() RETURNS event_trigger LANGUAGE plpgsql AS $gate$ \
    BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() c \
    WHERE c.object_identity = 'public.users') THEN \
    CREATE TRIGGER jarvis_gate BEFORE INSERT ON public.users \
    FOR EACH ROW EXECUTE FUNCTION jarvis_gate.row(); END IF; END $gate$; \
    CREATE EVENT TRIGGER jarvis_gate ON ddl_command_end WHEN TAG IN ('CREATE TABLE') \
    EXECUTE FUNCTION jarvis_gate.hold();";

const UNGATE: &str = "DROP EVENT TRIGGER jarvis_gate; DROP SCHEMA jarvis_gate CASCADE;";

/// Advisory lock 4242 on the database of `url`, held by a psql session until dropped.
struct AdvisoryLock(std::process::Child);

impl AdvisoryLock {
    fn take(url: &str) -> AdvisoryLock {
        use std::io::Write;
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql runs");
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"SELECT pg_advisory_lock(4242);\n")
            .expect("write");
        let deadline = Instant::now() + Duration::from_secs(30);
        while psql(
            url,
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted",
        ) != "1"
        {
            assert!(
                Instant::now() < deadline,
                "the advisory lock was never granted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        AdvisoryLock(child)
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        // End of input: psql ends its session, and the server releases the lock.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Backends of the database `name` waiting for an advisory lock (the restore at the gate).
fn waiting_at_the_gate(admin: &str, name: &str) -> i64 {
    psql(
        admin,
        &format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{name}' \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
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

    // A restore killed midway: the single transaction leaves nothing. A gate in the target
    // (outside `public`) stops the restore halfway through the users' rows on an advisory
    // lock this test holds, so the restore is killed inside its transaction on every run,
    // however fast the machine. The lock is released after the kill: psql then reads what
    // was left in its pipe, reaches the end of its input inside the COPY, and ends without
    // a COMMIT.
    let target = jarvis_tests::fresh_postgres_database("backup_dst");
    let admin = jarvis_tests::postgres_admin_url();
    let name = database_name(&target);
    psql(&target, GATE);
    let holder = AdvisoryLock::take(&target);
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting_at_the_gate(&admin, &name) == 0 {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the restore ended before it reached the gate"
        );
        assert!(
            Instant::now() < deadline,
            "the restore never reached the gate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the restore was killed: {status}");
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections(&admin, &name) > 0 {
        assert!(Instant::now() < deadline, "psql never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    psql(&target, UNGATE);
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

// ---- the security review (issue 14) ---------------------------------------------------------

/// `plaintext` sealed by the real backup writer under the test's local key, as a backup of
/// `backend`, into `path`.
async fn seal(env: &Env, backend: &str, manifest: Option<Manifest>, plaintext: &[u8], path: &Path) {
    let provider = LocalKeyProvider::from_file(&env.key_file).expect("key file");
    let manifest = manifest.unwrap_or_else(|| Manifest::new(backend, "test"));
    let mut sealed = Vec::new();
    jarvis_crypt::stream::encrypt_stream(
        &provider,
        &manifest,
        &mut &plaintext[..],
        &mut sealed,
        StreamOptions::default(),
    )
    .await
    .expect("seal");
    std::fs::write(path, sealed).expect("write the backup");
}

/// What jarvis's own pg_dump invocation writes for `url`.
fn real_pg_dump(url: &str) -> String {
    let output = Command::new("pg_dump")
        .args([
            "--format=plain",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "-B",
            "--dbname",
            url,
        ])
        .output()
        .expect("pg_dump runs");
    assert!(output.status.success(), "pg_dump: {}", text(&output));
    String::from_utf8(output.stdout).expect("utf-8 dump")
}

fn table_names(url: &str) -> String {
    psql(
        url,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_catalog.pg_tables \
         WHERE schemaname = 'public'",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_commands_and_transaction_control_in_an_authentic_dump_are_refused() {
    let env = Env::new();
    let source = jarvis_tests::fresh_postgres_database("backup_inject_src");
    psql(
        &source,
        "CREATE TABLE first (id int PRIMARY KEY, note text); \
         CREATE TABLE second (id int PRIMARY KEY); \
         INSERT INTO first VALUES (1, 'one'), (2, NULL); INSERT INTO second VALUES (7);",
    );
    let dump = real_pg_dump(&source);
    // The installed pg_dump puts psql in restricted mode (`\restrict KEY`, the fix of
    // CVE-2025-8714); whoever writes the dump can leave that out, or lift it with the key
    // the dump itself shows.
    let key = dump
        .lines()
        .find_map(|l| l.strip_prefix("\\restrict "))
        .map(str::to_owned);
    let unrestricted: String = dump
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .map(|l| format!("{l}\n"))
        .collect();
    let target = jarvis_tests::fresh_postgres_database("backup_inject_dst");
    psql(
        &target,
        "CREATE TABLE keep (x int); INSERT INTO keep VALUES (42);",
    );
    let marker = env.path("owned");
    let touch = format!("touch {}", marker.display());
    let meta = "a psql meta-command (`\\!`)";
    let mut cases = vec![
        (&unrestricted, format!("\\! {touch}\n"), meta),
        (&unrestricted, format!("SELECT 1; \\! {touch}\n"), meta),
        (
            &unrestricted,
            "COMMIT;\n".to_owned(),
            "transaction control (`commit`)",
        ),
        (
            &unrestricted,
            "END;\n".to_owned(),
            "transaction control (`end`)",
        ),
        (
            &dump,
            "BEGIN;\n".to_owned(),
            "transaction control (`begin`)",
        ),
        (
            &dump,
            "CREATE TABLE sneaky (); -- stays\nROLLBACK;\n".to_owned(),
            "transaction control (`rollback`)",
        ),
    ];
    let lifted = key.map(|key| format!("\\unrestrict {key}\n\\! {touch}\n"));
    if let Some(lifted) = &lifted {
        cases.push((&dump, lifted.clone(), meta));
    }
    for (dump, injected, reason) in cases {
        // Everything before the injection (the DROPs and CREATEs) would run first.
        let at = dump.find("\nCOPY ").expect("a COPY in the dump") + 1;
        let evil = format!("{}{injected}{}", &dump[..at], &dump[at..]);
        let line = dump[..at].lines().count() + injected.lines().count();
        let file = env.path("evil.jvbk");
        seal(&env, "postgres", None, evil.as_bytes(), &file).await;
        let verified = env.jarvis(
            &["backup", "verify", "--in", &file.display().to_string()],
            None,
        );
        assert_ok(&verified, "the evil backup is authentic");
        let output = restore(&env, &file, &target, &["--force"]);
        let said = text(&output);
        assert!(
            !marker.exists(),
            "{injected:?}: the meta-command ran: {said}"
        );
        assert_eq!(table_names(&target), "keep", "{injected:?}: {said}");
        assert_eq!(psql(&target, "SELECT x FROM keep"), "42");
        assert_eq!(output.status.code(), Some(1), "{injected:?}: {said}");
        assert!(said.contains(reason), "{injected:?}: {said}");
        assert!(
            said.contains(&format!("at line {line}")),
            "{injected:?}: {said}"
        );
        assert!(said.contains("was not touched"), "{injected:?}: {said}");
    }
    assert_eq!(
        psql(
            &target,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid()"
        ),
        "0",
        "no psql left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_with_null_and_bytea_first_columns_round_trip() {
    let env = Env::new();
    let source = seeded_postgres(&env, "backup_copy_src", 20, 20).await;
    // First columns that COPY writes with a leading backslash, text that looks like psql,
    // bodies with transaction words, a non-ASCII name, a large object (not backed up).
    psql(
        &source,
        r#"CREATE TABLE null_first (a text, b int);
           INSERT INTO null_first VALUES (NULL, 1), ('\! touch /tmp/no', 2), (E'\\.', 3),
               (E'two\nlines', 4), ('\.', 5), (NULL, NULL);
           CREATE TABLE bytea_first (a bytea, b text);
           INSERT INTO bytea_first VALUES ('\x00ff5c2e0a'::bytea, 'x'), (NULL, 'y'), ('\x'::bytea, NULL);
           CREATE TABLE "café" (v text);
           INSERT INTO "café" VALUES ('é;'), (E'\\'), ('COMMIT;');
           COMMENT ON TABLE null_first IS 'has \! and COMMIT; and '' in it';
           CREATE FUNCTION sign_of(x int) RETURNS int LANGUAGE sql
               BEGIN ATOMIC SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END; END;
           CREATE PROCEDURE commits() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;
           SELECT lo_from_bytea(0, 'a large object');"#,
    );
    let dump = real_pg_dump(&source);
    assert!(dump.contains("\n\\N\t"), "a NULL first column in COPY data");
    assert!(dump.contains("\n\\\\x00ff5c2e0a\t"), "a bytea first column");
    let file = env.path("copy.jvbk");
    create_backup(&env, &source, &file, "copy");
    let target = jarvis_tests::fresh_postgres_database("backup_copy_dst");
    let output = restore(&env, &file, &target, &[]);
    assert_ok(&output, "restore");
    for sql in [
        "SELECT md5(string_agg(COALESCE(a, 'NULL') || ':' || COALESCE(b::text, 'NULL'), ',' ORDER BY b NULLS LAST, a)) FROM null_first",
        "SELECT md5(string_agg(COALESCE(encode(a, 'hex'), 'NULL') || ':' || COALESCE(b, 'NULL'), ',' ORDER BY b NULLS LAST)) FROM bytea_first",
        "SELECT string_agg(v, '|' ORDER BY v) FROM \"café\"",
        "SELECT obj_description('null_first'::regclass)",
        "SELECT sign_of(5) || ',' || sign_of(-5)",
    ] {
        assert_eq!(psql(&source, sql), psql(&target, sql), "{sql}");
    }
    assert_eq!(pg_fingerprint(&source), pg_fingerprint(&target));
    assert_eq!(
        psql(&target, "SELECT COUNT(*) FROM pg_largeobject_metadata"),
        "0",
        "large objects are not backed up"
    );
    assert_ok(
        &env.jarvis(&["verify"], Some(&target)),
        "verify of the restored database",
    );
}

/// A restore applies the very file it authenticated: the path is replaced by another
/// authentic backup while the first pass waits for KMS, and the first one is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_applies_the_file_it_authenticated_not_the_path() {
    let env = Env::new();
    let endpoint = jarvis_tests::kms_endpoint();
    let connection = KmsConnection::from_env(KmsOptions::default())
        .await
        .expect("kms");
    let key = fresh_kms_key(&connection, "fd").await;
    let mut files = Vec::new();
    for (name, users) in [("thirty", 30), ("five", 5)] {
        let db = env.path(&format!("{name}.db")).display().to_string();
        assert_ok(&env.jarvis(&["migrate"], Some(&db)), "migrate");
        seed_sqlite_users(&db, users).await;
        let file = env.path(&format!("{name}.jvbk"));
        let output = env
            .command(
                &[
                    "backup",
                    "create",
                    "--out",
                    &file.display().to_string(),
                    "--name",
                    name,
                ],
                Some(&db),
            )
            .env("AWS_ENDPOINT_URL_KMS", &endpoint)
            .env("KMS_KEY_ID", &key)
            .output()
            .expect("jarvis runs");
        assert_ok(&output, "backup create");
        files.push(file);
    }
    let (authentic, other) = (files[0].clone(), files[1].clone());

    let proxy = FaultProxy::start(&endpoint).await;
    proxy.inject("Decrypt", Fault::Delay(Duration::from_secs(3)), 1);
    let target = env.path("restored.db");
    let mut child = env
        .command(
            &[
                "backup",
                "restore",
                "--in",
                &authentic.display().to_string(),
                "--database-url",
                &target.display().to_string(),
            ],
            None,
        )
        .env("AWS_ENDPOINT_URL_KMS", proxy.url())
        .env("KMS_KEY_ID", &key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn restore");
    // Once the restore holds the file open (its first pass waits for KMS), the path gets
    // the other backup.
    let wanted = std::fs::canonicalize(&authentic).expect("path");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == wanted))
            })
            .unwrap_or(false);
        if open {
            break;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the restore ended early"
        );
        assert!(
            Instant::now() < deadline,
            "the restore never opened the backup"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::rename(&other, &authentic).expect("replace the path");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("restore");
    assert_ok(&output, "restore");
    assert!(
        proxy.seen("Decrypt") >= 2,
        "both passes unwrapped the data key"
    );
    let restored = Database::connect(&target.display().to_string(), 1)
        .await
        .expect("db");
    let mut conn = restored.get().await.expect("conn");
    let users: Count = with_conn!(&mut conn, |c| sql_query("SELECT COUNT(*) AS n FROM users")
        .get_result(c)
        .await
        .expect("count"));
    assert_eq!(users.n, 30, "the authenticated backup was restored");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// `users` plaintext users in the SQLite database `url`.
async fn seed_sqlite_users(url: &str, users: usize) {
    execute_sqlite(
        url,
        &format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {users})
             INSERT INTO users (email) SELECT 'p' || n || '@example.net' FROM g"
        ),
    )
    .await;
}

async fn execute_sqlite(url: &str, sql: &str) {
    let db = Database::connect(url, 1).await.expect("db");
    let mut conn = db.get().await.expect("conn");
    with_conn!(&mut conn, |c| sql_query(sql).execute(c).await.expect(sql));
}

/// A fresh KMS key of the local KMS server.
async fn fresh_kms_key(connection: &KmsConnection, name: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let suffix = RandomState::new().hash_one(Instant::now()) % 1_000_000;
    let env = format!("backup-{name}-{}-{suffix}", std::process::id());
    connection
        .ensure_key(&env, None)
        .await
        .expect("kms key")
        .key_arn
}

/// pg_dump and psql run with an allow-listed environment: no search key, local master key
/// or AWS secret, and the URL's password in `PGPASSWORD`, never on their command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_psql_see_none_of_the_secrets() {
    let env = Env::new();
    let plain = seeded_postgres(&env, "backup_env", 5, 5).await;
    let with_password = |url: &str| url.replacen("://postgres@", "://postgres:pw-in-the-url@", 1);
    let source = with_password(&plain);
    assert_ne!(source, plain, "{plain}");
    let target = with_password(&jarvis_tests::fresh_postgres_database("backup_env_dst"));
    let master_key = "0123456789abcdef".repeat(4);
    let secrets = [
        ("JARVIS_LOCAL_MASTER_KEY", master_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-marker"),
        ("AWS_SESSION_TOKEN", "aws-session-marker"),
    ];
    let run = |args: &[&str], path: Option<&str>| {
        let mut command = env.command(args, Some(&source));
        command.envs(secrets);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        command.output().expect("jarvis runs")
    };
    // A real backup first (under the master key of the environment).
    let file = env.path("env.jvbk").display().to_string();
    assert_ok(
        &run(&["backup", "create", "--out", &file, "--name", "env"], None),
        "backup create",
    );
    // Then a pg_dump and a psql first on PATH that write down what they were given.
    let fake = env.path("fake-bin");
    std::fs::create_dir(&fake).expect("dir");
    for program in ["pg_dump", "psql"] {
        let seen = env.path(&format!("{program}.seen"));
        let script = fake.join(program);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n{{ env; echo '--- args'; printf '%s\\n' \"$@\"; }} > '{}'\nexit 1\n",
                seen.display()
            ),
        )
        .expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").expect("PATH")
    );
    let created = run(
        &["backup", "create", "--out", "x.jvbk", "--name", "fake"],
        Some(&path),
    );
    assert!(!created.status.success());
    let restored = run(
        &[
            "backup",
            "restore",
            "--in",
            &file,
            "--database-url",
            &target,
        ],
        Some(&path),
    );
    assert!(!restored.status.success(), "{}", text(&restored));
    for program in ["pg_dump", "psql"] {
        let seen = std::fs::read_to_string(env.path(&format!("{program}.seen")))
            .unwrap_or_else(|e| panic!("{program} did not run: {e}"));
        let (environment, args) = seen.split_once("--- args").expect("two parts");
        for (name, value) in secrets.iter().chain(&[("ENCRYPTION_SEARCH_SALT", SALT)]) {
            assert!(!seen.contains(name), "{program} saw {name}:\n{seen}");
            assert!(
                !seen.contains(value),
                "{program} saw the value of {name}:\n{seen}"
            );
        }
        assert!(!seen.contains("DATABASE_URL"), "{program}:\n{seen}");
        assert!(
            environment.contains("PGPASSWORD=pw-in-the-url"),
            "{program}:\n{seen}"
        );
        assert!(!args.contains("pw-in-the-url"), "{program}:\n{seen}");
        assert!(args.contains("--dbname"), "{program}:\n{seen}");
        assert!(environment.contains("PATH="), "{program}:\n{seen}");
    }
}

/// `--out`, `<out>.partial` and `<target>.restoring` are created new: a symbolic link (or
/// any file) there is refused and what it points to is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbolic_links_at_the_output_paths_are_refused() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    let source = env.path("links.db").display().to_string();
    assert_ok(&env.jarvis(&["migrate"], Some(&source)), "migrate");
    seed_sqlite_users(&source, 10).await;
    let victim = env.path("victim.txt");
    std::fs::write(&victim, b"precious").expect("victim");
    let create = |out: &Path| {
        env.jarvis(
            &[
                "backup",
                "create",
                "--out",
                &out.display().to_string(),
                "--name",
                "links",
            ],
            Some(&source),
        )
    };

    // A dangling link at --out: nothing is created through it.
    let through = env.path("made-through-the-link.jvbk");
    let dangling = env.path("dangling.jvbk");
    symlink(&through, &dangling).expect("symlink");
    let output = create(&dangling);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("never overwrites"),
        "{}",
        text(&output)
    );
    assert!(!through.exists());
    assert!(
        std::fs::symlink_metadata(&dangling)
            .expect("link")
            .file_type()
            .is_symlink()
    );

    // A link to a file at --out.
    let linked = env.path("linked.jvbk");
    symlink(&victim, &linked).expect("symlink");
    assert!(!create(&linked).status.success());
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");

    // A link at the .partial path.
    let out = env.path("partial.jvbk");
    symlink(&victim, env.path("partial.jvbk.partial")).expect("symlink");
    let output = create(&out);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("partial.jvbk.partial exists"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(
        std::fs::symlink_metadata(&out).is_err(),
        "no backup at {}",
        out.display()
    );

    // A good backup, and a link at the .restoring path of its restore.
    let good = env.path("good.jvbk");
    assert_ok(&create(&good), "backup create");
    let target = env.path("target.db");
    symlink(&victim, env.path("target.db.restoring")).expect("symlink");
    let output = restore(&env, &good, &target.display().to_string(), &[]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("target.db.restoring exists"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(!target.exists());

    // A target that is itself a link.
    let link_target = env.path("link.db");
    symlink(&victim, &link_target).expect("symlink");
    let output = restore(
        &env,
        &good,
        &link_target.display().to_string(),
        &["--force"],
    );
    assert!(!output.status.success());
    assert!(text(&output).contains("symbolic link"), "{}", text(&output));
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
}

/// `backup verify` prints the manifest's strings with control characters escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_escapes_control_characters_of_the_manifest() {
    let env = Env::new();
    let mut manifest = Manifest::new("sqlite", "2026\r\u{1b}]0;owned\u{7}");
    manifest.extra.insert(
        "backup_name".into(),
        serde_json::Value::from(
            "evil\u{1b}[2J\u{1b}[1;1H\nkey       FAKE#v1 (rows): available\u{202e}",
        ),
    );
    manifest
        .extra
        .insert("tool\u{1b}[31m".into(), serde_json::Value::from("x\u{85}y"));
    let file = env.path("escapes.jvbk");
    seal(
        &env,
        "sqlite",
        Some(manifest),
        b"not really a database",
        &file,
    )
    .await;
    let output = env.jarvis(
        &["backup", "verify", "--in", &file.display().to_string()],
        None,
    );
    assert_ok(&output, "backup verify");
    let shown = String::from_utf8(output.stdout).expect("utf-8");
    for c in ['\u{1b}', '\r', '\u{7}', '\u{85}', '\u{202e}'] {
        assert!(!shown.contains(c), "{c:?} printed: {shown:?}");
    }
    assert!(
        !shown.lines().any(|l| l.starts_with("key       FAKE")),
        "a forged line: {shown}"
    );
    assert!(shown.contains("evil\\u{1b}[2J"), "{shown}");
    assert!(shown.contains("\\u{a}key       FAKE"), "{shown}");
    assert_eq!(
        shown.lines().filter(|l| l.starts_with("key ")).count(),
        1,
        "{shown}"
    );
}

/// Every master key a backup's rows need is recorded and counted by `retire-key`, for a
/// backup stored in its row as for one in a file, and a backup whose file is gone refuses
/// until `--ignore-unreadable-backups`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_key_counts_the_keys_a_backups_rows_need() {
    let env = Env::new();
    let endpoint = jarvis_tests::kms_endpoint();
    let connection = KmsConnection::from_env(KmsOptions::default())
        .await
        .expect("kms");
    let rows_key = fresh_kms_key(&connection, "rows").await;
    let stream_key = fresh_kms_key(&connection, "stream").await;
    let db = env.path("keys.db").display().to_string();
    let kms = |args: &[&str], key: &str| {
        env.command(args, Some(&db))
            .env("AWS_ENDPOINT_URL_KMS", &endpoint)
            .env("KMS_KEY_ID", key)
            .output()
            .expect("jarvis runs")
    };
    assert_ok(&env.jarvis(&["migrate"], Some(&db)), "migrate");
    seed_sqlite_users(&db, 25).await;
    assert_ok(
        &kms(
            &["encrypt-existing", "--table", "users", "--column", "email"],
            &rows_key,
        ),
        "encrypt-existing under the rows' key",
    );
    // In the row, under the stream key, of rows under the rows' key.
    assert_ok(
        &kms(
            &["backup", "create", "--store-in-db", "--name", "inrow"],
            &stream_key,
        ),
        "backup create --store-in-db",
    );
    // Every value moves to the stream key: only the backup still needs the rows' key.
    assert_ok(
        &kms(&["rotate", "--to-key", &stream_key], &rows_key),
        "rotate --to-key",
    );

    let refused = kms(&["retire-key", &rows_key], &stream_key);
    let why = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(
        why.contains("backup inrow, whose rows are under it (its record says)"),
        "{why}"
    );

    let list = kms(&["backup", "list"], &stream_key);
    assert_ok(&list, "backup list");
    let listed = text(&list);
    assert!(
        listed.contains(&rows_key) && listed.contains(&stream_key),
        "both keys: {listed}"
    );
    let json = kms(&["backup", "list", "--json"], &stream_key);
    let records: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(records[0]["master_key_id"], stream_key.as_str());
    assert_eq!(
        records[0]["rows_master_key_ids"],
        serde_json::json!([rows_key])
    );

    // Without that backup, a recorded backup whose file is gone is not known not to need it.
    execute_sqlite(
        &db,
        "DELETE FROM encrypted_backups WHERE backup_name = 'inrow'",
    )
    .await;
    let gone = env.path("gone.jvbk");
    assert_ok(
        &kms(
            &[
                "backup",
                "create",
                "--out",
                &gone.display().to_string(),
                "--name",
                "gone",
            ],
            &stream_key,
        ),
        "backup create",
    );
    std::fs::remove_file(&gone).expect("remove the file");
    let refused = kms(&["retire-key", &rows_key], &stream_key);
    let why = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(
        why.contains("possibly backup gone: its file cannot be read"),
        "{why}"
    );
    assert!(why.contains("--ignore-unreadable-backups"), "{why}");
    let accepted = kms(
        &[
            "retire-key",
            &rows_key,
            "--pending-days",
            "7",
            "--ignore-unreadable-backups",
        ],
        &stream_key,
    );
    assert_ok(&accepted, "retire-key --ignore-unreadable-backups");
    assert!(
        text(&accepted).contains("PendingDeletion"),
        "{}",
        text(&accepted)
    );
}

/// A database whose values reference the key vault: the backup carries `jarvis_data_keys`
/// (a table of the database), its manifest names the vault's master key, and the restored
/// copy reads and verifies through its own vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_carries_the_key_vault() {
    let env = Env::new();
    let source = env.path("vault.db");
    let source_url = source.display().to_string();
    assert_ok(&env.jarvis(&["migrate"], Some(&source_url)), "migrate");
    let vault_rows = "SELECT COUNT(*) AS n FROM jarvis_data_keys";
    {
        let db = Database::connect(&source_url, 1).await.expect("db");
        let provider: Arc<dyn KeyProvider> =
            Arc::new(LocalKeyProvider::from_file(&env.key_file).expect("key file"));
        let vault = jarvis_models::DbKeyVault::connect(&source_url)
            .await
            .expect("vault");
        let encryptor = Encryptor::builder(provider)
            .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("salt"))
            .cache_limits(jarvis_crypt::CacheLimits {
                max_messages: 100,
                ..jarvis_crypt::CacheLimits::default()
            })
            .key_vault(Arc::new(vault))
            .build();
        let store = Store::new(db.clone(), encryptor, Arc::new(NoAudit));
        let emails: Vec<String> = (0..500).map(|i| format!("vault{i}@example.net")).collect();
        let users = store.create_users(emails).await.expect("users");
        seed_extras(&store, users[0].id).await;
        let row = store.stored_user(users[0].id).await.expect("row");
        assert_eq!(
            row.email_data_key.expect("data key").as_bytes().len(),
            jarvis_crypt::REFERENCE_LEN
        );
    }
    let keys_before = sqlite_count(&source_url, vault_rows).await;
    assert!(keys_before >= 5, "{keys_before}");
    let expected = sqlite_fingerprint(&source).await;

    let file = env.path("vault.jvbk");
    create_backup(&env, &source_url, &file, "vault");
    let target = env.path("vault-restored.db");
    let target_url = target.display().to_string();
    let restored = restore(&env, &file, &target_url, &[]);
    assert_ok(&restored, "restore");
    assert!(
        text(&restored).contains("stop the application's writers"),
        "{}",
        text(&restored)
    );
    assert_eq!(sqlite_fingerprint(&target).await, expected);
    assert_eq!(sqlite_count(&target_url, vault_rows).await, keys_before);
    let verified = env.jarvis(&["verify", "--json"], Some(&target_url));
    assert_ok(&verified, "verify of the restored database");
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).expect("verify json");
    assert_eq!(report["clean"], true, "{report}");
}

async fn sqlite_count(url: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = Database::connect(url, 1).await.expect("db");
    let mut conn = db.get().await.expect("conn");
    let rows: Vec<Count> = with_conn!(&mut conn, |c| diesel::sql_query(sql)
        .load(c)
        .await
        .expect(sql));
    rows[0].n
}
