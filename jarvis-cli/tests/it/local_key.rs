//! The local master key file through the binary: its id survives the documented rotation
//! procedure (a new version, `rotate --to-key`, the old version removed), for a file created
//! today and for one in the earlier format without an `id` line; concurrent
//! `init --new-version` runs lose no version.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use jarvis_crypt::{Encryptor, KeyProvider, LocalKeyProvider, NoAudit};
use jarvis_models::{Database, NewApiKey, Store};

/// The binary with a clean environment plus `vars`.
fn jarvis(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    jarvis_tests::binary::command(env!("CARGO_BIN_EXE_jarvis"), dir, args, vars)
}

fn run(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> String {
    let output = jarvis(dir, args, vars).output().expect("jarvis runs");
    assert_ok(&output, args);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_ok(output: &Output, args: &[&str]) {
    jarvis_tests::binary::assert_success(output, format_args!("jarvis {args:?}"));
}

/// The versions of a key file, in file order.
fn versions_in(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .expect("key file")
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Removes the lines of version 1, as SECURITY.md's procedure says.
fn remove_version_1(path: &Path) {
    let text = std::fs::read_to_string(path).expect("key file");
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with("1 "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(kept, text);
    std::fs::write(path, kept).expect("write key file");
}

async fn store(db: &Database, key_file: &Path) -> Store {
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyProvider::from_file(key_file).expect("key file"));
    // The root search key, stored wrapped under the local master key.
    let search = jarvis_models::keys::stored_search_key(db, provider.as_ref())
        .await
        .expect("search key");
    let encryptor = Encryptor::builder(provider).search_key(search).build();
    Store::new(db.clone(), encryptor, Arc::new(NoAudit))
}

/// The procedure of SECURITY.md on a database of users and an API key under version 1 of
/// the key `id` in `key_file`: after it, everything decrypts and is found under version 2
/// alone.
async fn new_version_rotate_and_remove_the_old_one(dir: &Path, key_file: &Path, id: &str) {
    let url = dir.join("jarvis.sqlite3").display().to_string();
    let file = key_file.display().to_string();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JARVIS_LOCAL_KEY_FILE", file.as_str()),
    ];
    run(dir, &["migrate"], &vars);
    let db = Database::connect(&url, 2).await.expect("db");
    let before = store(&db, key_file).await;
    let emails: Vec<String> = (0..30).map(|i| format!("user{i}@example.com")).collect();
    before.create_users(emails).await.expect("users");
    before
        .create_api_key(NewApiKey {
            service_name: "stripe".into(),
            key: "sk_live_local_key".into(),
            metadata: None,
            expires_at: None,
        })
        .await
        .expect("api key");
    drop(before);

    let v2 = run(dir, &["init", "--new-version"], &vars);
    assert_eq!(v2.trim(), format!("{id}#v2"));
    let text = std::fs::read_to_string(key_file).expect("key file");
    assert!(
        text.contains(&format!("\nid {id}\n")),
        "the id is in the file"
    );
    let moved = run(dir, &["rotate", "--to-key", "2"], &vars);
    assert!(
        moved.contains("to-key users: 30 of 30 rows done"),
        "{moved}"
    );

    remove_version_1(key_file);
    assert_eq!(versions_in(key_file), [2]);
    assert_eq!(run(dir, &["init"], &vars).trim(), id, "the same key id");

    let report: serde_json::Value =
        serde_json::from_str(&run(dir, &["verify", "--json"], &vars)).expect("verify --json");
    assert_eq!(report["clean"], true, "{report}");
    let mut seen = 0;
    for column in report["columns"].as_array().expect("columns") {
        for (key, rows) in column["by_master_key"].as_object().expect("keys") {
            assert_eq!(key, &format!("{id}#v2"), "{column}");
            seen += rows.as_u64().unwrap_or(0);
        }
    }
    assert!(seen >= 31, "{report}");

    // Lookups: the stored search key and the rows unwrap under version 2 alone.
    let after = store(&db, key_file).await;
    let user = after
        .find_user_by_email(" User7@Example.com ")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(user.email, "user7@example.com");
    let api = after
        .find_api_key_by_key("sk_live_local_key")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(api.service_name, "stripe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_id_survives_removing_the_old_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("keys").join("master.key");
    let file = key_file.display().to_string();
    let id = run(dir.path(), &["init"], &[("JARVIS_LOCAL_KEY_FILE", &file)]);
    let id = id.trim();
    assert!(id.starts_with("local-"), "{id}");
    let text = std::fs::read_to_string(&key_file).expect("key file");
    assert!(
        text.contains(&format!("\nid {id}\n")),
        "a new key file stores its id"
    );
    new_version_rotate_and_remove_the_old_one(dir.path(), &key_file, id).await;
}

/// A key file written before the id was stored: `1 <hex>` lines only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_of_the_earlier_format_goes_through_the_same_procedure() {
    // SHA-256("jarvis-crypt local master key id v1" || key), first 8 bytes: the id every
    // earlier version of jarvis-crypt gave this key.
    const ID: &str = "local-78f0875631d2fd07";
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("master.key");
    let old_format = format!(
        "# jarvis-crypt local master key: keep secret, never commit\n1 {}\n",
        "11".repeat(32)
    );
    std::fs::write(&key_file, &old_format).expect("write");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = key_file.display().to_string();
    let id = run(dir.path(), &["init"], &[("JARVIS_LOCAL_KEY_FILE", &file)]);
    assert_eq!(id.trim(), ID, "an old file keeps its derived id");
    assert_eq!(
        std::fs::read_to_string(&key_file).expect("read"),
        old_format,
        "init leaves an existing file as it is"
    );
    new_version_rotate_and_remove_the_old_one(dir.path(), &key_file, ID).await;
}

#[test]
fn concurrent_new_versions_lose_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("master.key");
    let file = key_file.display().to_string();
    let vars = [("JARVIS_LOCAL_KEY_FILE", file.as_str())];
    let id = run(dir.path(), &["init"], &vars);
    let id = id.trim();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            jarvis(dir.path(), &["init", "--new-version"], &vars)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut printed: Vec<String> = runs
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("wait");
            assert_ok(&output, &["init", "--new-version"]);
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        })
        .collect();
    printed.sort();
    let expected: Vec<String> = (2..=7).map(|v| format!("{id}#v{v}")).collect();
    assert_eq!(printed, expected, "each run added its own version");
    let mut versions = versions_in(&key_file);
    versions.sort_unstable();
    assert_eq!(versions, (1..=7).collect::<Vec<u32>>());
    let loaded = LocalKeyProvider::from_file(&key_file).expect("load");
    assert_eq!(loaded.key_id(), id);
    assert_eq!(loaded.current_version(), 7);
}
