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
