//! Hot paths of jarvis-crypt: one 64-byte field with an unwrapped data key, search hashes,
//! and bulk decryption. `cargo bench -p jarvis-crypt --bench core`.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jarvis_crypt::{
    Binding, Encryptor, LocalKeyProvider, Normalize, SearchKey, SearchSpec, StoredField, cipher,
};

const FIELD: &[u8; 64] = b"ada.lovelace+analytical-engine@difference-engine.example.co.uk!!";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build()
}

/// Times `iters` awaited calls inside one `block_on`, so the runtime's entry cost is not
/// counted per call.
fn time_async<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

fn field(c: &mut Criterion) {
    let rt = runtime();
    let enc = encryptor();
    let place = Binding::new("users", "encrypted_email", 42i64);
    // Warm the cache: the data key is generated and unwrapped once.
    let stored = rt.block_on(enc.encrypt(&place, FIELD)).expect("encrypt");
    rt.block_on(enc.decrypt(&place, &stored)).expect("decrypt");

    let mut group = c.benchmark_group("field_64B");
    group.throughput(Throughput::Bytes(64));
    group.bench_function("encrypt_warm_cache", |b| {
        b.iter_custom(|iters| {
            time_async(&rt, iters, || async {
                black_box(
                    enc.encrypt(&place, black_box(FIELD))
                        .await
                        .expect("encrypt"),
                );
            })
        })
    });
    group.bench_function("decrypt_warm_cache", |b| {
        b.iter_custom(|iters| {
            time_async(&rt, iters, || async {
                black_box(
                    enc.decrypt(&place, black_box(&stored))
                        .await
                        .expect("decrypt"),
                );
            })
        })
    });
    let key = [7u8; 32];
    let nonce = [9u8; 12];
    let aad = place.associated_data();
    let (ct, tag) = cipher::seal_with_nonce(&key, &nonce, &aad, FIELD).expect("seal");
    group.bench_function("cipher_seal_with_key_schedule", |b| {
        b.iter(|| cipher::seal_with_nonce(&key, &nonce, &aad, black_box(FIELD)))
    });
    group.bench_function("cipher_open_with_key_schedule", |b| {
        b.iter(|| cipher::open(&key, &nonce, &aad, black_box(&ct), &tag))
    });
    group.finish();
}

fn search_hash(c: &mut Criterion) {
    let enc = encryptor();
    let spec = SearchSpec::new(Normalize::EMAIL, None).expect("spec");
    enc.search_hash("users", "email_hash", spec, "warm@up")
        .expect("hash");
    c.bench_function("search_hash_email", |b| {
        b.iter(|| {
            enc.search_hash(
                "users",
                "email_hash",
                spec,
                black_box(" Ada.Lovelace@Example.com"),
            )
            .expect("hash")
        })
    });
}

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let enc = encryptor();
    let bindings: Vec<Binding<'static>> = (0..10_000)
        .map(|i| Binding::new("users", "encrypted_email", i as i64))
        .collect();
    let stored: Vec<StoredField> = bindings
        .iter()
        .map(|b| rt.block_on(enc.encrypt(b, FIELD)).expect("encrypt"))
        .collect();
    let items: Vec<_> = bindings.iter().copied().zip(stored.iter()).collect();
    let mut group = c.benchmark_group("bulk");
    group.throughput(Throughput::Elements(10_000));
    group.sample_size(20);
    group.bench_function("decrypt_many_10000_one_key", |b| {
        b.iter(|| {
            let out = rt.block_on(enc.decrypt_many(&items));
            assert!(out.iter().all(|r| r.is_ok()));
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, field, search_hash, bulk);
criterion_main!(benches);
