//! Envelope encryption: round trips, binding to the place, tamper detection, legacy rows.

use std::sync::Arc;

use jarvis_crypt::{
    Binding, Encryptor, Error, KeyProvider, LocalKeyProvider, RowKey, StoredField, WrappedKey,
};

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::generate())).build()
}

fn place(row: i64) -> Binding<'static> {
    Binding::new("users", "encrypted_email", row)
}

const SECRET: &[u8] = b"ada.lovelace@example.com";

async fn sealed(enc: &Encryptor) -> StoredField {
    enc.encrypt(&place(7), SECRET).await.expect("encrypt")
}

fn flip(bytes: &[u8], index: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[index] ^= 0x01;
    out
}

fn assert_auth_failed(result: Result<Vec<u8>, Error>, what: &str) {
    match result {
        Err(Error::AuthenticationFailed) => {}
        Err(other) => panic!("{what}: expected authentication failure, got {other}"),
        Ok(_) => panic!("{what}: tampered value decrypted"),
    }
}

#[tokio::test]
async fn round_trips_values_of_every_size() {
    let enc = encryptor();
    for len in [0usize, 1, 15, 16, 17, 64, 4096, 1 << 20] {
        let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let stored = enc.encrypt(&place(1), &value).await.expect("encrypt");
        assert_eq!(stored.ciphertext.len(), len);
        assert_eq!(stored.nonce.len(), 12);
        assert_eq!(stored.tag.len(), 16);
        assert_eq!(
            enc.decrypt(&place(1), &stored).await.expect("decrypt"),
            value
        );
    }
}

#[tokio::test]
async fn nonces_are_fresh_for_every_value() {
    let enc = encryptor();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let stored = sealed(&enc).await;
        assert!(
            seen.insert(stored.nonce.as_bytes().to_vec()),
            "nonce repeated"
        );
    }
}

#[tokio::test]
async fn every_flipped_bit_is_an_authentication_failure() {
    let enc = encryptor();
    let stored = sealed(&enc).await;
    for i in 0..stored.ciphertext.len() {
        let mut t = stored.clone();
        t.ciphertext = flip(stored.ciphertext.as_bytes(), i)
            .try_into()
            .expect("len");
        assert_auth_failed(enc.decrypt(&place(7), &t).await, "ciphertext");
    }
    for i in 0..stored.nonce.len() {
        let mut t = stored.clone();
        t.nonce = flip(stored.nonce.as_bytes(), i).try_into().expect("len");
        assert_auth_failed(enc.decrypt(&place(7), &t).await, "nonce");
    }
    for i in 0..stored.tag.len() {
        let mut t = stored.clone();
        t.tag = flip(stored.tag.as_bytes(), i).try_into().expect("len");
        assert_auth_failed(enc.decrypt(&place(7), &t).await, "tag");
    }
}

#[tokio::test]
async fn a_flipped_bit_in_the_wrapped_key_payload_fails_authentication() {
    let enc = encryptor();
    let stored = sealed(&enc).await;
    let header_len = stored.data_key.len() - 60;
    for i in header_len..stored.data_key.len() {
        let mut t = stored.clone();
        t.data_key = WrappedKey::new(flip(stored.data_key.as_bytes(), i)).expect("shape");
        // A fresh encryptor over the same provider, so no cached unwrap hides the tamper.
        assert_auth_failed(enc.decrypt(&place(7), &t).await, "wrapped key payload");
    }
}

#[tokio::test]
async fn a_changed_wrapped_key_header_never_decrypts() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let enc = Encryptor::builder(provider.clone()).build();
    let stored = sealed(&enc).await;
    let header_len = stored.data_key.len() - 60;
    for i in 0..header_len {
        let bytes = flip(stored.data_key.as_bytes(), i);
        let Ok(wrapped) = WrappedKey::new(bytes) else {
            continue; // refused on load: an invalid stored form
        };
        let mut t = stored.clone();
        t.data_key = wrapped;
        let err = enc
            .decrypt(&place(7), &t)
            .await
            .expect_err("changed header");
        assert!(
            matches!(
                err,
                Error::AuthenticationFailed
                    | Error::InvalidStoredForm(_)
                    | Error::UnknownMasterKey { .. }
            ),
            "header byte {i}: {err}"
        );
    }
}

#[tokio::test]
async fn a_ciphertext_moved_elsewhere_does_not_decrypt() {
    let enc = encryptor();
    let stored = sealed(&enc).await;
    let elsewhere = [
        Binding::new("users", "encrypted_email", 8i64),
        Binding::new("users", "encrypted_name", 7i64),
        Binding::new("admins", "encrypted_email", 7i64),
        Binding::new("users", "encrypted_email", "7"),
        Binding::new("users", "encrypted_email", RowKey::None),
    ];
    for binding in elsewhere {
        assert_auth_failed(
            enc.decrypt(&binding, &stored).await,
            &format!("{binding:?}"),
        );
    }
    assert_eq!(enc.decrypt(&place(7), &stored).await.expect("home"), SECRET);
}

#[tokio::test]
async fn truncated_tags_and_nonces_are_invalid_stored_forms() {
    let enc = encryptor();
    let stored = sealed(&enc).await;
    let err = StoredField::from_parts(
        stored.ciphertext.as_bytes().to_vec(),
        stored.nonce.as_bytes()[..11].to_vec(),
        stored.tag.as_bytes().to_vec(),
        stored.data_key.as_bytes().to_vec(),
    )
    .expect_err("short nonce");
    assert!(matches!(err, Error::InvalidStoredForm(_)));
    let err = StoredField::from_parts(
        stored.ciphertext.as_bytes().to_vec(),
        stored.nonce.as_bytes().to_vec(),
        stored.tag.as_bytes()[..12].to_vec(),
        stored.data_key.as_bytes().to_vec(),
    )
    .expect_err("short tag");
    assert!(matches!(err, Error::InvalidStoredForm(_)));
}

#[tokio::test]
async fn a_value_under_an_unknown_master_key_says_so() {
    let stored = sealed(&encryptor()).await;
    let other = encryptor();
    let err = other
        .decrypt(&place(7), &stored)
        .await
        .expect_err("other key");
    assert!(matches!(err, Error::UnknownMasterKey { .. }), "{err}");
}

#[tokio::test]
async fn legacy_rows_are_refused_unless_allowed() {
    // A legacy row: 16-byte IV and a bare KMS blob. Without the option it is refused before
    // any provider is asked.
    let enc = encryptor();
    let legacy = StoredField::from_parts(
        vec![1; 10],
        vec![2; 16],
        vec![3; 16],
        [&[1u8, 2, 2, 0][..], &[7; 180]].concat(),
    )
    .expect("legacy shape");
    assert!(legacy.is_legacy());
    assert!(matches!(
        enc.decrypt(&place(1), &legacy).await,
        Err(Error::LegacyNotAllowed)
    ));
    // Allowed, it still needs the aws-kms provider to unwrap the blob.
    let enc = Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .allow_legacy(true)
        .build();
    assert!(matches!(
        enc.decrypt(&place(1), &legacy).await,
        Err(Error::UnknownMasterKey { .. })
    ));
    // A 16-byte IV with a current wrapped key is not a legacy row: never read without AAD.
    let current = sealed(&enc).await;
    let mixed = StoredField::from_parts(
        current.ciphertext.as_bytes().to_vec(),
        vec![0; 16],
        current.tag.as_bytes().to_vec(),
        current.data_key.as_bytes().to_vec(),
    )
    .expect("shape");
    assert!(!mixed.is_legacy());
    assert!(matches!(
        enc.decrypt(&place(7), &mixed).await,
        Err(Error::InvalidStoredForm(_))
    ));
}

#[tokio::test]
async fn rewrap_keeps_values_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    LocalKeyProvider::create_file(&path).expect("create");
    let v1 = Arc::new(LocalKeyProvider::from_file(&path).expect("load"));
    let stored = sealed(&Encryptor::builder(v1).build()).await;
    LocalKeyProvider::rotate_file(&path).expect("rotate");
    let v2 = Arc::new(LocalKeyProvider::from_file(&path).expect("load"));
    let enc = Encryptor::builder(v2.clone()).build();
    let rewrapped = enc
        .rewrap(&stored.data_key, &v2.master_key())
        .await
        .expect("rewrap");
    assert_ne!(rewrapped, stored.data_key);
    assert_eq!(
        rewrapped
            .envelope()
            .expect("envelope")
            .master_key()
            .expect("named")
            .version,
        2
    );
    let moved = StoredField {
        data_key: rewrapped,
        ..stored
    };
    assert_eq!(
        enc.decrypt(&place(7), &moved).await.expect("decrypt"),
        SECRET
    );
}
