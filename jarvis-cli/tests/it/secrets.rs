//! No secret reaches a log line, an audit row, an error message or the command's output: the
//! jobs run with `RUST_LOG=trace` on PostgreSQL, then everything they printed and every audit
//! row is scanned for every plaintext, the master key, the search key and every data key.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use diesel::sql_types::{Binary, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use jarvis_crypt::{
    Encryptor, KeyProvider, KeyPurpose, LocalKeyProvider, NoAudit, SearchKey, WrappedKey,
};
use jarvis_models::{Database, NewApiKey, Store, with_conn};
use secrecy::ExposeSecret;

const SALT: &str = "the search salt of the secrets test, never to be printed";

fn jarvis(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jarvis"));
    command.current_dir(dir).args(args).env("RUST_LOG", "trace");
    for var in ["KMS_KEY_ID", "JARVIS_LOCAL_MASTER_KEY"] {
        command.env_remove(var);
    }
    for (k, v) in vars {
        command.env(k, v);
    }
    command.output().expect("jarvis runs")
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Binary)]
    key: Vec<u8>,
}

/// Every way a byte string could be printed.
fn renderings(bytes: &[u8]) -> Vec<String> {
    let decimal: Vec<String> = bytes.iter().map(u8::to_string).collect();
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        decimal.join(", "),
        format!("{bytes:?}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_at_trace_level_print_and_audit_no_secret() {
    let url = jarvis_tests::fresh_postgres_database("cli_secrets");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("master.key").display().to_string();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_KEY_FILE", key_file.as_str()),
        ("ENCRYPTION_SEARCH_SALT", SALT),
    ];
    let mut transcript = String::new();
    let mut step = |args: &[&str]| {
        let output = jarvis(dir.path(), args, &vars);
        assert!(
            output.status.success(),
            "jarvis {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        transcript.push_str(&String::from_utf8_lossy(&output.stdout));
        transcript.push_str(&String::from_utf8_lossy(&output.stderr));
    };
    step(&["init"]);
    step(&["migrate"]);

    // Plaintext users to migrate, and API keys written by the application.
    let db = Database::connect(&url, 2).await.expect("db");
    let emails: Vec<String> = (0..300)
        .map(|i| format!("secret.person{i}@example.org"))
        .collect();
    {
        let mut conn = db.get().await.expect("conn");
        let values: Vec<String> = emails.iter().map(|e| format!("('{e}')")).collect();
        let sql = format!("INSERT INTO users (email) VALUES {}", values.join(", "));
        with_conn!(&mut conn, |c| sql_query(&sql)
            .execute(c)
            .await
            .expect("seed"));
    }
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_file(&key_file).expect("key file"));
    let encryptor = Encryptor::builder(provider.clone())
        .search_key(SearchKey::new(SALT.as_bytes().to_vec()).expect("salt"))
        .build();
    let store = Store::new(db.clone(), encryptor, Arc::new(NoAudit));
    let api_keys: Vec<String> = (0..5)
        .map(|i| format!("sk_live_SECRET_{i}_do_not_print"))
        .collect();
    for (i, key) in api_keys.iter().enumerate() {
        store
            .create_api_key(NewApiKey {
                service_name: format!("service-{i}"),
                key: key.clone(),
                metadata: None,
                expires_at: None,
            })
            .await
            .expect("api key");
    }

    step(&[
        "encrypt-existing",
        "--table",
        "users",
        "--column",
        "email",
        "--batch-size",
        "100",
    ]);
    step(&["rotate", "--reencrypt", "--batch-size", "100"]);
    step(&["init", "--new-version"]);
    step(&["rotate", "--to-key", "2"]);
    step(&["verify", "--json"]);
    step(&["verify"]);
    step(&["audit", "--json"]);
    // A failing command's error message too: a row damaged by hand.
    {
        let mut conn = db.get().await.expect("conn");
        with_conn!(&mut conn, |c| sql_query(
            "UPDATE api_keys SET key_auth_tag = '\\x00000000000000000000000000000000' WHERE id = 1"
        )
        .execute(c)
        .await
        .expect("damage"));
    }
    let failed = jarvis(dir.path(), &["verify"], &vars);
    assert_eq!(failed.status.code(), Some(1));
    transcript.push_str(&String::from_utf8_lossy(&failed.stdout));
    transcript.push_str(&String::from_utf8_lossy(&failed.stderr));
    let failed = jarvis(
        dir.path(),
        &["rotate", "--reencrypt", "--table", "api_keys"],
        &vars,
    );
    assert!(!failed.status.success());
    let error = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(error.contains("authentication failed"), "{error}");
    transcript.push_str(&error);

    // Every audit row, every column, as text.
    let mut conn = db.get().await.expect("conn");
    let audit: Vec<Line> = with_conn!(&mut conn, |c| sql_query(
        "SELECT row_to_json(a)::text AS line FROM encryption_audit_log a"
    )
    .load(c)
    .await
    .expect("audit rows"));
    assert!(
        audit.len() >= 8,
        "the jobs were audited: {} rows",
        audit.len()
    );
    let audit: String = audit.into_iter().map(|l| l.line + "\n").collect();

    // The secrets: plaintexts, the master key versions, the search key, every data key.
    let mut secrets: Vec<String> = emails.clone();
    secrets.extend(api_keys.iter().cloned());
    secrets.push(SALT.to_owned());
    let key_text = std::fs::read_to_string(&key_file).expect("key file");
    // Version lines; the `id` line names the key and is no secret.
    for line in key_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("id "))
    {
        let hex_key = line.split_whitespace().nth(1).expect("version line");
        secrets.push(hex_key.to_owned());
        secrets.extend(renderings(&hex::decode(hex_key).expect("hex")));
    }
    let wrapped: Vec<Key> = with_conn!(&mut conn, |c| sql_query(
        "SELECT DISTINCT email_data_key AS key FROM users WHERE email_data_key IS NOT NULL
         UNION SELECT key_data_key FROM api_keys"
    )
    .load(c)
    .await
    .expect("data keys"));
    let provider = LocalKeyProvider::from_file(&key_file).expect("key file");
    let vault = jarvis_models::DbKeyVault::connect(&url)
        .await
        .expect("vault");
    for key in wrapped {
        let wrapped = WrappedKey::new(key.key).expect("wrapped");
        // The stock jarvis writes references to its key vault: the key is the vault's.
        let data_key = match wrapped.data_key_id() {
            Some(id) => {
                let held = jarvis_crypt::KeyVault::fetch(&vault, &[id])
                    .await
                    .expect("vault")
                    .pop()
                    .and_then(|k| k.wrapped)
                    .expect("in the vault");
                provider
                    .unwrap_data_key_in(
                        &held,
                        &jarvis_crypt::KeyContext::in_vault(KeyPurpose::Field, id),
                    )
                    .await
            }
            None => provider.unwrap_data_key(&wrapped, KeyPurpose::Field).await,
        }
        .expect("unwrap");
        secrets.extend(renderings(data_key.expose_secret()));
    }
    // The scan reads real output: the jobs logged at debug level and named the public key id.
    assert!(transcript.contains("DEBUG") && transcript.contains("local-"));
    for secret in &secrets {
        assert!(
            !transcript.contains(secret.as_str()),
            "a command printed a secret"
        );
        assert!(
            !audit.contains(secret.as_str()),
            "an audit row holds a secret"
        );
    }
}
