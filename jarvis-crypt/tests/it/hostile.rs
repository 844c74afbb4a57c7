//! Hostile input: arbitrary bytes in every column of the stored form give an error of the
//! right kind, never a panic and never plaintext; oversized and unusual values round-trip.

use std::sync::Arc;

use jarvis_crypt::{
    AuthTag, Binding, Ciphertext, Encryptor, Error, KeyEnvelope, LocalKeyProvider, MasterKeyRef,
    Nonce, ProviderKind, SearchHash, StoredField, WrappedKey, envelope_header,
};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn place() -> Binding<'static> {
    Binding::new("users", "encrypted_email", 7i64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any bytes parse as an envelope, a legacy blob, or fail as an invalid stored form.
    #[test]
    fn wrapped_key_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        match KeyEnvelope::parse(&bytes) {
            Ok(KeyEnvelope::Jarvis { master_key, header, payload }) => {
                prop_assert_eq!(envelope_header(&master_key).expect("header"), header.to_vec());
                prop_assert!(!payload.is_empty());
            }
            Ok(KeyEnvelope::Legacy { blob }) => prop_assert_eq!(blob, &bytes[..]),
            Err(e) => {
                let invalid = matches!(e, Error::InvalidStoredForm(_));
                prop_assert!(invalid, "unexpected error {}", e);
            }
        }
        // The column types agree with the parser.
        let _ = WrappedKey::new(bytes.clone());
        let _ = SearchHash::new(bytes.clone());
    }

    /// Envelopes that start right (magic, version) but carry junk are refused, not misread.
    #[test]
    fn damaged_envelopes_are_invalid(tail in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut bytes = vec![0xEC, 0x4A, 0x4B, 0x01];
        bytes.extend_from_slice(&tail);
        if let Ok(envelope) = KeyEnvelope::parse(&bytes) {
            let is_envelope = matches!(envelope, KeyEnvelope::Jarvis { .. });
            prop_assert!(is_envelope, "magic-prefixed bytes read as a legacy blob");
        }
    }

    /// Wrong lengths in any column are an invalid stored form.
    #[test]
    fn column_lengths_are_checked(
        nonce in proptest::collection::vec(any::<u8>(), 0..40),
        tag in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        match Nonce::new(nonce.clone()) {
            Ok(_) => prop_assert!(nonce.len() == 12 || nonce.len() == 16),
            Err(e) => {
                let invalid = matches!(e, Error::InvalidStoredForm(_));
                prop_assert!(invalid);
            }
        }
        match AuthTag::new(tag.clone()) {
            Ok(_) => prop_assert_eq!(tag.len(), 16),
            Err(e) => {
                let invalid = matches!(e, Error::InvalidStoredForm(_));
                prop_assert!(invalid);
            }
        }
    }
}

/// A provider, an encryptor and one real stored value to damage.
fn fixture() -> (Encryptor, StoredField, tokio::runtime::Runtime) {
    let rt = runtime();
    let encryptor = Encryptor::builder(Arc::new(LocalKeyProvider::generate())).build();
    let stored = rt
        .block_on(encryptor.encrypt(&place(), b"ada@example.com"))
        .expect("encrypt");
    (encryptor, stored, rt)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A real value with random bytes in place of one column never decrypts and never panics;
    /// the error names the failure, never the plaintext.
    #[test]
    fn random_columns_fail_cleanly(
        column in 0usize..4,
        junk in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let (encryptor, stored, rt) = fixture();
        let (mut ct, mut iv, mut tag, mut dk) = (
            stored.ciphertext.as_bytes().to_vec(),
            stored.nonce.as_bytes().to_vec(),
            stored.tag.as_bytes().to_vec(),
            stored.data_key.as_bytes().to_vec(),
        );
        match column {
            0 => ct = junk,
            1 => iv = junk,
            2 => tag = junk,
            _ => {
                // Keep the envelope header (so the local provider is asked) or not.
                if junk.first().is_some_and(|b| b % 2 == 0) {
                    let header_len = dk.len() - 60;
                    dk.truncate(header_len);
                    dk.extend_from_slice(&junk);
                } else {
                    dk = junk;
                }
            }
        }
        let original = (
            stored.ciphertext.as_bytes().to_vec(),
            stored.nonce.as_bytes().to_vec(),
            stored.tag.as_bytes().to_vec(),
            stored.data_key.as_bytes().to_vec(),
        );
        prop_assume!((ct.clone(), iv.clone(), tag.clone(), dk.clone()) != original);
        let Ok(damaged) = StoredField::from_parts(ct, iv, tag, dk) else {
            return Ok(());
        };
        let err = rt.block_on(encryptor.decrypt(&place(), &damaged)).expect_err("damaged");
        let expected = matches!(
            err,
            Error::AuthenticationFailed
                | Error::InvalidStoredForm(_)
                | Error::UnknownMasterKey { .. }
                | Error::LegacyNotAllowed
        );
        prop_assert!(expected, "unexpected error {:?}", err);
        let text = format!("{err} {err:?}");
        prop_assert!(!text.contains("ada@example.com"));
    }
}

#[test]
fn oversized_and_unusual_values_round_trip() {
    let (encryptor, _, rt) = fixture();
    let big = vec![0xA5u8; 16 << 20];
    for value in [
        &big[..],
        b"",
        b"\0\0\0nul\0bytes\0",
        &[0xFF, 0xFE, 0xC3, 0x28][..],
    ] {
        let stored = rt
            .block_on(encryptor.encrypt(&place(), value))
            .expect("encrypt");
        assert_eq!(stored.ciphertext.len(), value.len());
        let back = rt
            .block_on(encryptor.decrypt(&place(), &stored))
            .expect("decrypt");
        assert_eq!(back, value);
    }
}

#[test]
fn a_wrapped_key_of_another_provider_is_an_unknown_master_key() {
    let (encryptor, stored, rt) = fixture();
    // The same envelope naming an AWS KMS key: no configured provider holds it.
    let kms = MasterKeyRef {
        provider: ProviderKind::AwsKms,
        key_id: "arn:aws:kms:us-east-1:111122223333:key/never".into(),
        version: 0,
    };
    let mut dk = envelope_header(&kms).expect("header");
    dk.extend_from_slice(&[1u8; 60]);
    let foreign = StoredField {
        data_key: WrappedKey::new(dk).expect("envelope"),
        ..stored.clone()
    };
    let err = rt
        .block_on(encryptor.decrypt(&place(), &foreign))
        .expect_err("foreign");
    assert!(matches!(err, Error::UnknownMasterKey { .. }), "{err:?}");
    // Another local key's envelope: unknown as well.
    let other = Encryptor::builder(Arc::new(LocalKeyProvider::generate())).build();
    let err = rt
        .block_on(other.decrypt(&place(), &stored))
        .expect_err("other key");
    assert!(matches!(err, Error::UnknownMasterKey { .. }), "{err:?}");
    // A ciphertext column of the wrong value: authentication fails.
    let swapped = StoredField {
        ciphertext: Ciphertext::new(vec![0; stored.ciphertext.len()]).expect("ct"),
        ..stored
    };
    assert!(matches!(
        rt.block_on(encryptor.decrypt(&place(), &swapped)),
        Err(Error::AuthenticationFailed)
    ));
}
