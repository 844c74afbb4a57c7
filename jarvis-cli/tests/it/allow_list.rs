//! The AWS provider unwraps only under the KMS keys it was configured with (`KMS_KEY_ID` and
//! `KMS_DECRYPT_KEY_IDS`), through the binary and the repositories, against the local KMS
//! server: a value under a second KMS key copied into a row is refused before any `Decrypt`,
//! reported by `verify`, and accepted once the key is allowed; a backup stream under a key that
//! is not allowed is refused by `backup verify` and `backup restore`; the search key's
//! recorded fingerprint is checked.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use diesel::sql_query;
use diesel::sql_types::{BigInt, Binary};
use diesel_async::RunQueryDsl;
use jarvis_crypt::aws::alias_for;
use jarvis_crypt::{
    AwsKms, Binding, Encryptor, ErrorKind, KmsConnection, KmsOptions, NoAudit, SearchKey,
};
use jarvis_models::{Database, Store, with_conn};

const SALT: &str = "the search salt of the allow-list tests, long enough";

/// A unique environment name per test and run: each gets KMS keys of its own.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The binary, for the aws-kms provider, with a clean environment plus `vars`.
fn jarvis(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, &[])
        .env("AWS_ENDPOINT_URL_KMS", jarvis_tests::kms_endpoint())
        .envs(vars.iter().copied())
        .output()
        .expect("jarvis runs")
}

use jarvis_tests::binary::{self, assert_success as assert_ok, text};

async fn connection() -> KmsConnection {
    KmsConnection::from_env(KmsOptions::default())
        .await
        .expect("KMS connection (AWS_ENDPOINT_URL_KMS)")
}

/// A KMS key of its own, set up as `jarvis init` does: (environment name, key ARN).
async fn fresh_key(connection: &KmsConnection, prefix: &str) -> (String, String) {
    let env = unique(prefix);
    let arn = connection
        .ensure_key(&env, None)
        .await
        .expect("set-up")
        .key_arn;
    (env, arn)
}

/// The repositories over `db` with the aws-kms provider of `key` (allowing `also`), on a
/// connection of their own, whose request counters the caller reads.
async fn store(db: &Database, key: &str, also: &[&str]) -> (Store, KmsConnection) {
    let own = connection().await;
    let kms = AwsKms::new(own.clone(), key)
        .await
        .expect("provider")
        .allow_decrypt_keys(also.iter().copied())
        .await
        .expect("allowed keys");
    let encryptor = Encryptor::builder(Arc::new(kms))
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("salt"))
        .build();
    (Store::new(db.clone(), encryptor, Arc::new(NoAudit)), own)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_under_another_kms_key_is_refused_until_that_key_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("app.db").display().to_string();
    let kms = connection().await;
    let (configured_env, configured) = fresh_key(&kms, "allow-a").await;
    let (_, second) = fresh_key(&kms, "allow-b").await;
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("KMS_KEY_ID", configured.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    assert_ok(&jarvis(dir.path(), &["migrate"], &vars), "migrate");
    assert_ok(
        &jarvis(dir.path(), &["init", "--env", &configured_env], &vars),
        "init records the search key",
    );

    let db = Database::connect(&url, 2).await.expect("db");
    let (writer, _) = store(&db, &configured, &[]).await;
    let user = writer.create_user("ada@example.net").await.expect("create");
    let other = writer
        .create_user("grace@example.net")
        .await
        .expect("create");

    // The same plaintext, bound to the same table, column and row, under the second key: only
    // the master key differs. Copied into the row by SQL, as an insider could.
    let forger = Encryptor::builder(Arc::new(
        AwsKms::new(kms.clone(), &second).await.expect("second"),
    ))
    .build();
    let forged = forger
        .encrypt(
            &Binding::new("users", "encrypted_email", user.id),
            b"ada@example.net",
        )
        .await
        .expect("forge");
    {
        let mut conn = db.get().await.expect("conn");
        with_conn!(&mut conn, |c| sql_query(
            "UPDATE users SET encrypted_email = ?, email_iv = ?, email_auth_tag = ?, \
             email_data_key = ? WHERE id = ?"
        )
        .bind::<Binary, _>(forged.ciphertext.as_bytes().to_vec())
        .bind::<Binary, _>(forged.nonce.as_bytes().to_vec())
        .bind::<Binary, _>(forged.tag.as_bytes().to_vec())
        .bind::<Binary, _>(forged.data_key.as_bytes().to_vec())
        .bind::<BigInt, _>(user.id)
        .execute(c)
        .await
        .expect("copy the forged value in"));
    }

    // The repositories refuse it, without sending a single Decrypt.
    let (reader, own) = store(&db, &configured, &[]).await;
    let before = own.requests().decrypt;
    let err = reader.find_user(user.id).await.expect_err("forged");
    assert_eq!(
        err.crypto_kind(),
        Some(ErrorKind::UnknownMasterKey),
        "{err}"
    );
    let err = reader
        .find_user_by_email("ada@example.net")
        .await
        .expect_err("forged, found by its hash");
    assert_eq!(
        err.crypto_kind(),
        Some(ErrorKind::UnknownMasterKey),
        "{err}"
    );
    assert_eq!(
        own.requests().decrypt,
        before,
        "no Decrypt request was sent"
    );
    // The genuine row still decrypts.
    assert_eq!(
        reader.find_user(other.id).await.expect("genuine").email,
        "grace@example.net"
    );

    // verify: a failure under users.encrypted_email, not counted under the second key.
    let verify = jarvis(dir.path(), &["verify", "--json"], &vars);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0]["table"], "users");
    assert_eq!(failures[0]["id"], user.id);
    assert_eq!(failures[0]["column"], "encrypted_email");
    assert_eq!(failures[0]["error"], "unknown_master_key");
    let email = report["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .find(|c| c["table"] == "users" && c["column"] == "encrypted_email")
        .expect("users.encrypted_email")
        .clone();
    assert!(email["by_master_key"].get(&second).is_none(), "{email}");
    assert_eq!(email["by_master_key"][&configured], 1, "{email}");

    // Allowed by KMS_DECRYPT_KEY_IDS (by its ARN; an alias works as well), it is accepted.
    let allowing = [
        ("DATABASE_URL", url.as_str()),
        ("KMS_KEY_ID", configured.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
        ("KMS_DECRYPT_KEY_IDS", second.as_str()),
    ];
    let verify = jarvis(dir.path(), &["verify", "--json"], &allowing);
    assert_ok(&verify, "verify with the second key allowed");
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["clean"], true, "{report}");
    let (allowed, _) = store(&db, &configured, &[second.as_str()]).await;
    assert_eq!(
        allowed.find_user(user.id).await.expect("allowed").email,
        "ada@example.net"
    );

    // An entry of KMS_DECRYPT_KEY_IDS that does not resolve fails at start.
    let unknown = [
        ("DATABASE_URL", url.as_str()),
        ("KMS_KEY_ID", configured.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
        ("KMS_DECRYPT_KEY_IDS", "alias/jarvis-never-created-anywhere"),
    ];
    let verify = jarvis(dir.path(), &["verify"], &unknown);
    assert!(!verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains("KMS_DECRYPT_KEY_IDS"),
        "{}",
        text(&verify)
    );
    assert!(
        !text(&verify).contains("FAILED"),
        "nothing was verified: {}",
        text(&verify)
    );

    // rotate --to-key moves the value to the configured key while the second is allowed;
    // afterwards the configured key alone reads everything.
    assert_ok(
        &jarvis(dir.path(), &["rotate", "--to-key", &configured], &allowing),
        "rotate --to-key with the second key allowed",
    );
    assert_ok(
        &jarvis(dir.path(), &["verify"], &vars),
        "verify with the configured key alone",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_a_key_not_allowed_is_refused_by_verify_and_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source.db").display().to_string();
    let kms = connection().await;
    let (_, configured) = fresh_key(&kms, "backup-a").await;
    let (second_env, second) = fresh_key(&kms, "backup-b").await;
    let under_second = [
        ("DATABASE_URL", source.as_str()),
        ("KMS_KEY_ID", second.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    assert_ok(&jarvis(dir.path(), &["migrate"], &under_second), "migrate");
    let db = Database::connect(&source, 2).await.expect("db");
    let (writer, _) = store(&db, &second, &[]).await;
    writer.create_user("ada@example.net").await.expect("create");
    let file = dir.path().join("second.jvbk").display().to_string();
    assert_ok(
        &jarvis(
            dir.path(),
            &["backup", "create", "--out", &file, "--name", "second"],
            &under_second,
        ),
        "backup create under the second key",
    );

    let configured_only = [
        ("KMS_KEY_ID", configured.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    let verified = jarvis(
        dir.path(),
        &["backup", "verify", "--in", &file],
        &configured_only,
    );
    assert_eq!(verified.status.code(), Some(1), "{}", text(&verified));
    assert!(
        text(&verified).contains("unknown master key") && text(&verified).contains(&second),
        "{}",
        text(&verified)
    );

    let target = dir.path().join("target.db");
    let target_url = target.display().to_string();
    let restored = jarvis(
        dir.path(),
        &[
            "backup",
            "restore",
            "--in",
            &file,
            "--database-url",
            &target_url,
        ],
        &configured_only,
    );
    assert_eq!(restored.status.code(), Some(1), "{}", text(&restored));
    assert!(
        text(&restored).contains("unknown master key"),
        "{}",
        text(&restored)
    );
    assert!(!target.exists(), "the target was not written");

    // With the second key allowed (by its alias), both accept the stream.
    let alias = alias_for(&second_env).expect("alias");
    let allowing = [
        ("KMS_KEY_ID", configured.as_str()),
        ("KMS_DECRYPT_KEY_IDS", alias.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    assert_ok(
        &jarvis(dir.path(), &["backup", "verify", "--in", &file], &allowing),
        "backup verify with the second key allowed",
    );
    assert_ok(
        &jarvis(
            dir.path(),
            &[
                "backup",
                "restore",
                "--in",
                &file,
                "--database-url",
                &target_url,
            ],
            &allowing,
        ),
        "backup restore with the second key allowed",
    );
    assert!(target.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_key_is_checked_against_the_recorded_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("master.key").display().to_string();
    let url = dir.path().join("app.db").display().to_string();
    let local = |salt: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jarvis"));
        command.current_dir(dir.path()).args(args);
        for var in [
            "KMS_KEY_ID",
            "ENCRYPTION_SEARCH_SALT",
            "JARVIS_LOCAL_MASTER_KEY",
            "RUST_LOG",
        ] {
            command.env_remove(var);
        }
        command
            .env("DATABASE_URL", &url)
            .env("JARVIS_LOCAL_KEY_FILE", &key_file);
        if let Some(salt) = salt {
            command.env("ENCRYPTION_SEARCH_SALT", salt);
        }
        command.output().expect("jarvis runs")
    };
    assert_ok(&local(None, &["init"]), "init without a database schema");
    assert_ok(&local(None, &["migrate"]), "migrate");
    let db = Database::connect(&url, 1).await.expect("db");
    {
        let mut conn = db.get().await.expect("conn");
        with_conn!(&mut conn, |c| sql_query(
            "INSERT INTO users (email) VALUES ('ada@example.net')"
        )
        .execute(c)
        .await
        .expect("seed"));
    }
    // No search key: a job that needs one refuses, and creates none.
    let job = local(
        None,
        &["encrypt-existing", "--table", "users", "--column", "email"],
    );
    assert!(!job.status.success(), "{}", text(&job));
    assert!(text(&job).contains("jarvis init"), "{}", text(&job));
    assert_eq!(
        jarvis_models::keys::recorded_search_key_fingerprint(&db)
            .await
            .expect("read"),
        None
    );

    // init records it; the same key passes, another is a clear configuration error.
    let init = local(Some(SALT), &["init"]);
    assert_ok(&init, "init records the search key");
    assert!(
        text(&init).contains("recorded the search key"),
        "{}",
        text(&init)
    );
    let fingerprint = SearchKey::new(SALT.as_bytes().to_vec())
        .expect("salt")
        .fingerprint();
    assert_eq!(
        jarvis_models::keys::recorded_search_key_fingerprint(&db)
            .await
            .expect("read"),
        Some(fingerprint)
    );
    let other = "another search salt, just as long as the first one";
    let job = local(
        Some(other),
        &["encrypt-existing", "--table", "users", "--column", "email"],
    );
    assert!(!job.status.success(), "{}", text(&job));
    assert!(
        text(&job).contains("not the one recorded") && text(&job).contains(&fingerprint.short()),
        "{}",
        text(&job)
    );
    assert!(!text(&job).contains(other), "the key is never printed");
    let again = local(Some(other), &["init"]);
    assert!(
        !again.status.success(),
        "init does not replace a recorded key"
    );
    assert_ok(
        &local(
            Some(SALT),
            &["encrypt-existing", "--table", "users", "--column", "email"],
        ),
        "encrypt-existing with the recorded key",
    );

    // The repositories check it too, before their first search hash.
    let provider: Arc<dyn jarvis_crypt::KeyProvider> = Arc::new(
        jarvis_crypt::LocalKeyProvider::from_file(Path::new(&key_file)).expect("key file"),
    );
    let wrong = Store::new(
        db.clone(),
        Encryptor::builder(provider.clone())
            .search_key(SearchKey::new(other.as_bytes().to_vec()).expect("key"))
            .build(),
        Arc::new(NoAudit),
    );
    let err = wrong
        .find_user_by_email("ada@example.net")
        .await
        .expect_err("a wrong search key");
    assert_eq!(err.crypto_kind(), Some(ErrorKind::Configuration), "{err}");
    assert!(wrong.create_user("b@example.net").await.is_err());
    // The stock jarvis keeps its data keys in the key vault: so does the reader.
    let vault = jarvis_models::DbKeyVault::connect(&url)
        .await
        .expect("vault");
    let right = Store::new(
        db.clone(),
        Encryptor::builder(provider)
            .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("key"))
            .key_vault(Arc::new(vault))
            .build(),
        Arc::new(NoAudit),
    );
    right.check_search_key().await.expect("the recorded key");
    assert!(
        right
            .find_user_by_email("ada@example.net")
            .await
            .expect("lookup")
            .is_some()
    );
}
