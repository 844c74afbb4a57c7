//! The local key provider: key files, permissions, versions.

use std::os::unix::fs::PermissionsExt;

use jarvis_crypt::{Error, KeyEnvelope, KeyProvider, KeyPurpose, LocalKeyProvider};

#[tokio::test]
async fn key_file_is_created_private_and_reloads_to_the_same_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys/master.key");
    let created = LocalKeyProvider::create_file(&path).expect("create");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let loaded = LocalKeyProvider::from_file(&path).expect("load");
    assert_eq!(created.key_id(), loaded.key_id());
    let generated = created
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("gen");
    let unwrapped = loaded
        .unwrap_data_key(&generated.wrapped, KeyPurpose::Field)
        .await
        .expect("unwrap");
    use secrecy::ExposeSecret;
    assert_eq!(unwrapped.expose_secret(), generated.key.expose_secret());
    assert!(
        LocalKeyProvider::create_file(&path).is_err(),
        "never overwrites"
    );
}

#[test]
fn key_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    LocalKeyProvider::create_file(&path).expect("create");
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = LocalKeyProvider::from_file(&path).expect_err("refused");
        assert!(matches!(err, Error::Configuration(_)), "{mode:o}: {err}");
        assert!(err.to_string().contains("chmod 600"));
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    LocalKeyProvider::from_file(&path).expect("0400 is private");
}

#[tokio::test]
async fn a_data_key_wrapped_under_version_1_unwraps_after_version_2_becomes_current() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let v1 = LocalKeyProvider::create_file(&path).expect("create");
    let old = v1.generate_data_key(KeyPurpose::Field).await.expect("gen");
    assert_eq!(LocalKeyProvider::rotate_file(&path).expect("rotate"), 2);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "rotation keeps the file private");

    let v2 = LocalKeyProvider::from_file(&path).expect("load");
    assert_eq!(v2.current_version(), 2);
    assert_eq!(v2.versions().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(v2.key_id(), v1.key_id(), "the id survives rotation");
    let new = v2.generate_data_key(KeyPurpose::Field).await.expect("gen");
    let version = |w: &jarvis_crypt::WrappedKey| match w.envelope().expect("envelope") {
        KeyEnvelope::Jarvis { master_key, .. } => master_key.version,
        KeyEnvelope::Legacy { .. } => panic!("legacy"),
    };
    assert_eq!(version(&old.wrapped), 1);
    assert_eq!(version(&new.wrapped), 2);
    v2.unwrap_data_key(&old.wrapped, KeyPurpose::Field)
        .await
        .expect("old key still unwraps");
    // Version 1 alone cannot unwrap what version 2 wrapped.
    let err = v1
        .unwrap_data_key(&new.wrapped, KeyPurpose::Field)
        .await
        .expect_err("unknown version");
    assert!(matches!(err, Error::UnknownMasterKey { .. }));
}

#[tokio::test]
async fn a_key_wrapped_for_one_purpose_does_not_unwrap_for_another() {
    let provider = LocalKeyProvider::generate();
    let generated = provider
        .generate_data_key(KeyPurpose::Backup)
        .await
        .expect("gen");
    let err = provider
        .unwrap_data_key(&generated.wrapped, KeyPurpose::Field)
        .await
        .expect_err("purpose is bound");
    assert!(matches!(err, Error::AuthenticationFailed));
}

#[test]
fn hex_keys_from_the_environment_form() {
    let one = "11".repeat(32);
    let p = LocalKeyProvider::from_hex(&one).expect("one version");
    assert_eq!(p.current_version(), 1);
    let p = LocalKeyProvider::from_hex(&format!("1:{one}, 2:{}", "22".repeat(32))).expect("two");
    assert_eq!(p.versions().collect::<Vec<_>>(), [1, 2]);
    for bad in [
        "",
        "xyz",
        &"11".repeat(31),
        &format!("0:{one}"),
        &format!("1:{one},1:{one}"),
    ] {
        assert!(
            matches!(
                LocalKeyProvider::from_hex(bad),
                Err(Error::Configuration(_))
            ),
            "{bad}"
        );
    }
    // The error never repeats the key.
    let err = LocalKeyProvider::from_hex(&format!("{}zz", "ab".repeat(31))).expect_err("bad");
    assert!(!err.to_string().contains("abab"));
}

/// The key file without the lines of `version`.
fn remove_version(path: &std::path::Path, version: u32) {
    let text = std::fs::read_to_string(path).expect("read");
    let prefix = format!("{version} ");
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with(&prefix))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(kept, text, "version {version} was in the file");
    std::fs::write(path, kept).expect("write");
}

fn version_of(wrapped: &jarvis_crypt::WrappedKey) -> (String, u32) {
    match wrapped.envelope().expect("envelope") {
        KeyEnvelope::Jarvis { master_key, .. } => (master_key.key_id, master_key.version),
        KeyEnvelope::Legacy { .. } => panic!("legacy"),
    }
}

#[tokio::test]
async fn the_key_id_survives_removing_the_first_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let v1 = LocalKeyProvider::create_file(&path).expect("create");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains(&format!("\nid {}\n", v1.key_id())),
        "a new file stores its id: {}",
        text.lines().next().unwrap_or("")
    );
    let old = v1.generate_data_key(KeyPurpose::Field).await.expect("gen");
    LocalKeyProvider::rotate_file(&path).expect("rotate");
    let v2 = LocalKeyProvider::from_file(&path).expect("load");
    let new = v2.generate_data_key(KeyPurpose::Field).await.expect("gen");
    assert_eq!(version_of(&new.wrapped), (v1.key_id().to_owned(), 2));

    // The documented procedure: once nothing uses version 1, its line goes.
    remove_version(&path, 1);
    let only_v2 = LocalKeyProvider::from_file(&path).expect("load without version 1");
    assert_eq!(
        only_v2.key_id(),
        v1.key_id(),
        "the id is stored, not derived"
    );
    assert_eq!(only_v2.versions().collect::<Vec<_>>(), [2]);
    use secrecy::ExposeSecret;
    let unwrapped = only_v2
        .unwrap_data_key(&new.wrapped, KeyPurpose::Field)
        .await
        .expect("version 2 still unwraps");
    assert_eq!(unwrapped.expose_secret(), new.key.expose_secret());
    let gone = only_v2
        .unwrap_data_key(&old.wrapped, KeyPurpose::Field)
        .await
        .expect_err("version 1 is gone");
    assert!(matches!(gone, Error::UnknownMasterKey { .. }), "{gone}");
    // Later versions keep the same id.
    assert_eq!(LocalKeyProvider::rotate_file(&path).expect("rotate"), 3);
    let v3 = LocalKeyProvider::from_file(&path).expect("load");
    assert_eq!(v3.key_id(), v1.key_id());
    assert_eq!(v3.versions().collect::<Vec<_>>(), [2, 3]);
}

/// A key file as jarvis-crypt wrote it before the id was stored: its id is derived from the
/// lowest version, as it always was, and written into the file at the next rotation.
#[tokio::test]
async fn a_key_file_of_the_earlier_format_keeps_its_id_and_gets_it_stored() {
    const V1: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    // SHA-256("jarvis-crypt local master key id v1" || key), first 8 bytes.
    const ID: &str = "local-25db5136b4653ec0";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    std::fs::write(
        &path,
        format!("# jarvis-crypt local master key: keep secret, never commit\n1 {V1}\n"),
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let old = LocalKeyProvider::from_file(&path).expect("an old file loads");
    assert_eq!(old.key_id(), ID);
    assert_eq!(
        LocalKeyProvider::from_hex(V1).expect("hex").key_id(),
        ID,
        "the variable without an id derives it the same way"
    );
    let before = old.generate_data_key(KeyPurpose::Field).await.expect("gen");

    assert_eq!(LocalKeyProvider::rotate_file(&path).expect("rotate"), 2);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(&format!("\nid {ID}\n")), "the id is written");
    assert!(text.contains(&format!("\n1 {V1}\n")), "version 1 is kept");
    let rotated = LocalKeyProvider::from_file(&path).expect("load");
    assert_eq!(rotated.key_id(), ID);
    rotated
        .unwrap_data_key(&before.wrapped, KeyPurpose::Field)
        .await
        .expect("the old rows still unwrap");
    let after = rotated
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("gen");
    remove_version(&path, 1);
    let only_v2 = LocalKeyProvider::from_file(&path).expect("load");
    assert_eq!(only_v2.key_id(), ID);
    only_v2
        .unwrap_data_key(&after.wrapped, KeyPurpose::Field)
        .await
        .expect("unwraps without version 1");
}

#[tokio::test]
async fn the_variable_takes_an_explicit_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let v1 = LocalKeyProvider::create_file(&path).expect("create");
    LocalKeyProvider::rotate_file(&path).expect("rotate");
    let file = LocalKeyProvider::from_file(&path).expect("load");
    let wrapped = file
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("gen")
        .wrapped;
    let v2_hex = std::fs::read_to_string(&path)
        .expect("read")
        .lines()
        .find_map(|line| line.strip_prefix("2 ").map(str::to_owned))
        .expect("version 2");

    // Version 2 alone, as the variable: without the id it is another key.
    let derived = LocalKeyProvider::from_hex(&format!("2:{v2_hex}")).expect("hex");
    assert_ne!(derived.key_id(), v1.key_id());
    let with_id =
        LocalKeyProvider::from_hex(&format!("id:{}, 2:{v2_hex}", v1.key_id())).expect("with id");
    assert_eq!(with_id.key_id(), v1.key_id());
    assert_eq!(with_id.current_version(), 2);
    with_id
        .unwrap_data_key(&wrapped, KeyPurpose::Field)
        .await
        .expect("unwraps under the stored id");

    let key = "11".repeat(32);
    for bad in [
        format!("id:{},1:{key}", "local-XYZ"),
        format!("id:local-0123456789ABCDEF,1:{key}"),
        format!("id:local-0123456789abcde,1:{key}"),
        format!("id:{key},1:{key}"),
        format!("id:local-0123456789abcdef,id:local-0123456789abcdef,1:{key}"),
        "id:local-0123456789abcdef".to_owned(),
    ] {
        let err = LocalKeyProvider::from_hex(&bad).expect_err("refused");
        assert!(matches!(err, Error::Configuration(_)), "{bad}: {err}");
        assert!(
            !err.to_string().contains(&key),
            "the error never repeats a key"
        );
    }
    // In the file, too.
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("\nid local-", "\nid LOCAL-")).expect("write");
    assert!(matches!(
        LocalKeyProvider::from_file(&path),
        Err(Error::Configuration(_))
    ));
}

#[test]
fn key_files_in_folders_others_may_write_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("keys");
    let path = folder.join("master.key");
    LocalKeyProvider::create_file(&path).expect("create");
    let mode = std::fs::metadata(&folder)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "a created folder is private");
    for mode in [0o770, 0o730, 0o707, 0o777, 0o1777] {
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = LocalKeyProvider::from_file(&path).expect_err("refused");
        assert!(matches!(err, Error::Configuration(_)), "{mode:o}: {err}");
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        assert!(
            LocalKeyProvider::rotate_file(&path).is_err(),
            "{mode:o}: no rotation either"
        );
    }
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    LocalKeyProvider::from_file(&path).expect("a folder others may only read is fine");
}

#[test]
fn key_files_of_another_user_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let me = rustix::process::geteuid();
    if me.is_root() {
        // Root gives the file to `nobody`.
        LocalKeyProvider::create_file(&path).expect("create");
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
    } else {
        // Another user cannot be given a file: point at one that root owns (the check reads
        // the file the path leads to).
        let rooted = ["/etc/hostname", "/etc/passwd", "/etc/hosts"]
            .into_iter()
            .find(|p| {
                std::fs::metadata(p)
                    .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
                    .unwrap_or(false)
            })
            .expect("a file owned by root");
        std::os::unix::fs::symlink(rooted, &path).expect("symlink");
    }
    let err = LocalKeyProvider::from_file(&path).expect_err("refused");
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    assert!(err.to_string().contains("not to this user"), "{err}");
    assert!(LocalKeyProvider::rotate_file(&path).is_err());
}

#[test]
fn concurrent_rotations_lose_no_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let first = LocalKeyProvider::create_file(&path).expect("create");
    let writers = 8;
    let start = std::sync::Barrier::new(writers);
    let versions: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    LocalKeyProvider::rotate_file(&path)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("rotate"))
            .collect()
    });
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (2..=9).collect::<Vec<u32>>(), "{versions:?}");
    let loaded = LocalKeyProvider::from_file(&path).expect("load");
    assert_eq!(
        loaded.versions().collect::<Vec<_>>(),
        (1..=9).collect::<Vec<u32>>()
    );
    assert_eq!(loaded.key_id(), first.key_id());
}
