//! Wycheproof known-answer tests of the AES-256-GCM and HMAC-SHA256 primitives.

use jarvis_crypt::{Error, cipher, search};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/wycheproof/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn hex_field(test: &Value, name: &str) -> Vec<u8> {
    hex::decode(test[name].as_str().expect("hex string")).expect("valid hex")
}

fn groups(file: &Value) -> impl Iterator<Item = &Value> {
    file["testGroups"].as_array().expect("groups").iter()
}

#[test]
fn aes_256_gcm_with_96_and_128_bit_nonces() {
    let file = load("aes_gcm_test.json");
    let (mut valid, mut invalid) = (0, 0);
    for group in groups(&file).filter(|g| {
        g["keySize"] == 256 && (g["ivSize"] == 96 || g["ivSize"] == 128) && g["tagSize"] == 128
    }) {
        for test in group["tests"].as_array().expect("tests") {
            let id = &test["tcId"];
            let key: [u8; 32] = hex_field(test, "key").try_into().expect("256-bit key");
            let (iv, aad, msg, ct, tag) = (
                hex_field(test, "iv"),
                hex_field(test, "aad"),
                hex_field(test, "msg"),
                hex_field(test, "ct"),
                hex_field(test, "tag"),
            );
            match test["result"].as_str() {
                Some("valid") => {
                    let (sealed, sealed_tag) =
                        cipher::seal_with_nonce(&key, &iv, &aad, &msg).expect("seal");
                    assert_eq!(sealed, ct, "tcId {id}: ciphertext");
                    assert_eq!(sealed_tag.as_slice(), tag, "tcId {id}: tag");
                    let opened = cipher::open(&key, &iv, &aad, &ct, &tag).expect("open");
                    assert_eq!(opened, msg, "tcId {id}: plaintext");
                    valid += 1;
                }
                Some("invalid") => {
                    let err = cipher::open(&key, &iv, &aad, &ct, &tag).expect_err("refused");
                    assert!(
                        matches!(err, Error::AuthenticationFailed),
                        "tcId {id}: {err}"
                    );
                    invalid += 1;
                }
                other => panic!("tcId {id}: unexpected result {other:?}"),
            }
        }
    }
    // 66 cases with 96-bit IVs (39 valid, 27 invalid) and 19 with 128-bit IVs (all valid).
    assert_eq!((valid, invalid), (58, 27));
}

#[test]
fn other_nonce_and_tag_lengths_are_invalid_stored_forms() {
    let key = [0u8; 32];
    for len in [0, 8, 11, 13, 15, 17, 32] {
        let nonce = vec![0u8; len];
        assert!(matches!(
            cipher::seal_with_nonce(&key, &nonce, b"", b"x"),
            Err(Error::InvalidStoredForm(_))
        ));
        assert!(matches!(
            cipher::open(&key, &nonce, b"", b"x", &[0; 16]),
            Err(Error::InvalidStoredForm(_))
        ));
    }
    let (ct, tag) = cipher::seal_with_nonce(&key, &[1; 12], b"", b"x").expect("seal");
    for len in [0, 12, 15, 17] {
        let short = vec![0u8; len];
        assert!(matches!(
            cipher::open(&key, &[1; 12], b"", &ct, &short),
            Err(Error::InvalidStoredForm(_))
        ));
    }
    assert_eq!(
        cipher::open(&key, &[1; 12], b"", &ct, &tag).expect("open"),
        b"x"
    );
}

#[test]
fn hmac_sha256() {
    let file = load("hmac_sha256_test.json");
    let (mut valid, mut invalid) = (0, 0);
    for group in groups(&file) {
        let tag_bytes =
            usize::try_from(group["tagSize"].as_u64().expect("tagSize") / 8).expect("small");
        for test in group["tests"].as_array().expect("tests") {
            let id = &test["tcId"];
            let (key, msg, tag) = (
                hex_field(test, "key"),
                hex_field(test, "msg"),
                hex_field(test, "tag"),
            );
            let computed = search::hmac_sha256(&key, &msg);
            let matches = computed[..tag_bytes] == tag[..];
            match test["result"].as_str() {
                Some("valid") => {
                    assert!(matches, "tcId {id}: valid tag not reproduced");
                    valid += 1;
                }
                Some("invalid") => {
                    assert!(!matches, "tcId {id}: invalid tag accepted");
                    invalid += 1;
                }
                other => panic!("tcId {id}: unexpected result {other:?}"),
            }
        }
    }
    assert_eq!(valid + invalid, 174);
    assert!(valid > 0 && invalid > 0);
}
