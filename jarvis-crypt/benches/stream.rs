//! Throughput of the streaming backup cipher on 16 MiB in memory, beside raw AES-256-GCM on
//! 64 KiB chunks (the stream's default chunk size): what the stream adds to the cipher. `cargo bench -p jarvis-crypt --bench stream`.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jarvis_crypt::LocalKeyProvider;
use jarvis_crypt::cipher;
use jarvis_crypt::stream::{self, DEFAULT_CHUNK_SIZE, Manifest, StreamOptions};

const STREAM_BYTES: usize = 16 << 20;
const CHUNK: usize = DEFAULT_CHUNK_SIZE as usize;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn streams(c: &mut Criterion) {
    let rt = runtime();
    let provider = LocalKeyProvider::generate();
    let manifest = Manifest::new("postgres", "bench");
    let plaintext = pseudo_random(STREAM_BYTES);
    let mut encrypted = Vec::new();
    rt.block_on(stream::encrypt_stream(
        &provider,
        &manifest,
        &mut &plaintext[..],
        &mut encrypted,
        StreamOptions::default(),
    ))
    .expect("encrypt");

    let mut group = c.benchmark_group("stream_16MiB");
    group.throughput(Throughput::Bytes(STREAM_BYTES as u64));
    group.sample_size(30);
    let mut out = Vec::with_capacity(encrypted.len());
    group.bench_function("encrypt", |b| {
        b.iter(|| {
            out.clear();
            rt.block_on(stream::encrypt_stream(
                &provider,
                &manifest,
                &mut black_box(&plaintext[..]),
                &mut out,
                StreamOptions::default(),
            ))
            .expect("encrypt");
            black_box(out.len())
        })
    });
    group.bench_function("decrypt", |b| {
        b.iter(|| {
            out.clear();
            rt.block_on(stream::decrypt_stream(
                &provider,
                &mut black_box(&encrypted[..]),
                &mut out,
            ))
            .expect("decrypt");
            black_box(out.len())
        })
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            rt.block_on(stream::verify_stream(
                &provider,
                &mut black_box(&encrypted[..]),
            ))
            .expect("verify")
        })
    });
    group.finish();
}

fn raw_chunks(c: &mut Criterion) {
    let key = [7u8; 32];
    let aes = Aes256Gcm::new(&key.into());
    let nonce = Nonce::from([1u8; 12]);
    // About the size of a stream header, the associated data of every chunk.
    let aad = [3u8; 200];
    let mut chunk = pseudo_random(CHUNK);

    let mut group = c.benchmark_group("aes_gcm_64KiB");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("seal_in_place", |b| {
        b.iter(|| {
            black_box(
                aes.encrypt_inout_detached(&nonce, &aad, chunk.as_mut_slice().into())
                    .expect("seal"),
            )
        })
    });
    let (ciphertext, tag) = cipher::seal_with_nonce(&key, &[1u8; 12], &aad, &chunk).expect("seal");
    let tag = Tag::try_from(&tag[..]).expect("tag");
    let mut opened = vec![0u8; CHUNK];
    // What the stream's reader does per chunk: open out of place, no allocation.
    group.bench_function("open_out_of_place", |b| {
        b.iter(|| {
            let buffer = InOutBuf::new(black_box(&ciphertext[..]), &mut opened[..]).expect("len");
            aes.decrypt_inout_detached(&nonce, &aad, buffer, &tag)
                .expect("open")
        })
    });
    group.bench_function("open_with_copy", |b| {
        b.iter(|| {
            cipher::open(&key, &[1u8; 12], &aad, black_box(&ciphertext), &tag[..]).expect("open")
        })
    });
    group.finish();
}

criterion_group!(benches, streams, raw_chunks);
criterion_main!(benches);
