//! No secret reaches the `Debug` or `Display` output of a public type.

use std::sync::Arc;

use jarvis_crypt::{
    Binding, DataKey, Encryptor, KeyProvider, KeyPurpose, LocalKeyProvider, SearchKey, SearchSpec,
};
use secrecy::ExposeSecret;

fn hex_and_raw(bytes: &[u8]) -> Vec<String> {
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        format!("{bytes:?}"),
        String::from_utf8_lossy(bytes).into_owned(),
    ]
}

fn assert_absent(haystack: &str, secret: &[u8], what: &str) {
    for form in hex_and_raw(secret) {
        if form.len() >= 8 {
            assert!(
                !haystack.contains(&form),
                "{what} leaks a secret: {haystack}"
            );
        }
    }
}

#[tokio::test]
async fn debug_output_has_no_key_material_or_plaintext() {
    let master_hex = "5a".repeat(16) + &"c3".repeat(16);
    let master = hex::decode(&master_hex).expect("hex");
    let provider = Arc::new(LocalKeyProvider::from_hex(&master_hex).expect("key"));
    let salt = b"a search salt that is long enough, surely".to_vec();
    let enc = Encryptor::builder(provider.clone())
        .search_key(SearchKey::new(salt.clone()).expect("salt"))
        .build();
    let plaintext = b"correct horse battery staple";
    let binding = Binding::new("users", "encrypted_email", 1i64);
    let stored = enc.encrypt(&binding, plaintext).await.expect("encrypt");
    let hash = enc
        .search_hash("users", "email_hash", SearchSpec::default(), "x")
        .expect("hash");
    let generated = provider
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("gen");
    let data_key_bytes = generated.key.expose_secret().to_vec();
    let loose = DataKey::try_from_slice(&[0x42; 32]).expect("key");
    let search_key = SearchKey::new(salt.clone()).expect("salt");
    let hasher = search_key.column("users", "email_hash", SearchSpec::default());

    let outputs = [
        format!("{provider:?}"),
        format!("{enc:?}"),
        format!("{stored:?}"),
        format!("{hash:?}"),
        format!("{generated:?}"),
        format!("{loose:?}"),
        format!("{search_key:?}"),
        format!("{hasher:?}"),
        format!("{:?}", enc.cache()),
    ];
    for out in &outputs {
        assert_absent(out, &master, "master key");
        assert_absent(out, &salt, "search key");
        assert_absent(out, plaintext, "plaintext");
        assert_absent(out, &data_key_bytes, "data key");
        assert_absent(out, &[0x42; 32], "data key");
        assert_absent(out, stored.ciphertext.as_bytes(), "ciphertext");
    }
    assert_eq!(format!("{:?}", stored.tag), "AuthTag(16 bytes)");
}

#[tokio::test]
async fn errors_carry_no_secrets() {
    let master_hex = "ab".repeat(32);
    let err = LocalKeyProvider::from_hex(&format!("{master_hex}00")).expect_err("too long");
    assert!(!format!("{err} {err:?}").contains(&master_hex));
    let err = SearchKey::new(b"short secret".to_vec()).expect_err("short");
    assert!(!format!("{err} {err:?}").contains("short secret"));
    let enc = Encryptor::builder(Arc::new(LocalKeyProvider::generate())).build();
    let stored = enc
        .encrypt(&Binding::new("t", "c", 1i64), b"the plaintext")
        .await
        .expect("encrypt");
    let err = enc
        .decrypt(&Binding::new("t", "c", 2i64), &stored)
        .await
        .expect_err("moved");
    assert!(!format!("{err} {err:?}").contains("the plaintext"));
}
