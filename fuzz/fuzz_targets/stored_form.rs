//! The stored form of a field: arbitrary column bytes never panic, and a real value with any
//! byte changed never decrypts.
#![no_main]

use std::sync::{Arc, LazyLock};

use jarvis_crypt::{Binding, Encryptor, KeyEnvelope, LocalKeyProvider, StoredField};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});
static ENCRYPTOR: LazyLock<Encryptor> = LazyLock::new(|| {
    Encryptor::builder(Arc::new(LocalKeyProvider::from_hex(KEY).expect("key"))).build()
});
static VALUE: LazyLock<StoredField> = LazyLock::new(|| {
    RUNTIME
        .block_on(ENCRYPTOR.encrypt(&place(), b"ada@example.com"))
        .expect("encrypt")
});

fn place() -> Binding<'static> {
    Binding::new("users", "encrypted_email", 7i64)
}

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a wrapped key, and as the four columns of a value.
    let _ = KeyEnvelope::parse(data);
    let cut = |i: usize| data.get(i).map_or(0, |b| usize::from(*b));
    let (a, b, c) = (cut(0), cut(1), cut(2));
    let rest = data.get(3..).unwrap_or_default();
    let (ct, rest) = rest.split_at(a.min(rest.len()));
    let (iv, rest) = rest.split_at(b.min(rest.len()));
    let (tag, dk) = rest.split_at(c.min(rest.len()));
    if let Ok(stored) = StoredField::from_parts(ct.to_vec(), iv.to_vec(), tag.to_vec(), dk.to_vec()) {
        assert!(RUNTIME.block_on(ENCRYPTOR.decrypt(&place(), &stored)).is_err());
    }

    // A real value with bytes flipped: (column, position, xor) triples.
    let value = &*VALUE;
    let mut columns = [
        value.ciphertext.as_bytes().to_vec(),
        value.nonce.as_bytes().to_vec(),
        value.tag.as_bytes().to_vec(),
        value.data_key.as_bytes().to_vec(),
    ];
    for edit in data.chunks_exact(3) {
        let column = &mut columns[usize::from(edit[0] % 4)];
        let at = usize::from(edit[1]) % column.len();
        column[at] ^= edit[2];
    }
    let [ct, iv, tag, dk] = columns;
    let changed = (ct.as_slice(), iv.as_slice(), tag.as_slice(), dk.as_slice())
        != (
            value.ciphertext.as_bytes(),
            value.nonce.as_bytes(),
            value.tag.as_bytes(),
            value.data_key.as_bytes(),
        );
    if let Ok(stored) = StoredField::from_parts(ct, iv, tag, dk) {
        let result = RUNTIME.block_on(ENCRYPTOR.decrypt(&place(), &stored));
        if changed {
            assert!(result.is_err(), "a changed value decrypted");
        } else {
            assert_eq!(result.expect("unchanged"), b"ada@example.com");
        }
    }
});
