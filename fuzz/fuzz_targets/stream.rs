//! Backup streams: arbitrary bytes never panic and never yield plaintext; a real stream with
//! any edit (flipped bytes, a cut) never decrypts.
#![no_main]

use std::sync::LazyLock;

use jarvis_crypt::LocalKeyProvider;
use jarvis_crypt::stream::{self, Manifest, StreamOptions};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});
static PROVIDER: LazyLock<LocalKeyProvider> =
    LazyLock::new(|| LocalKeyProvider::from_hex(KEY).expect("key"));
static PLAINTEXT: LazyLock<Vec<u8>> = LazyLock::new(|| (0..300u16).map(|i| i as u8).collect());
/// A real stream of five 64-byte chunks.
static STREAM: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::new();
    RUNTIME
        .block_on(stream::encrypt_stream(
            &*PROVIDER,
            &Manifest::new("sqlite", "fuzz"),
            &mut &PLAINTEXT[..],
            &mut out,
            StreamOptions::default().with_chunk_size(64),
        ))
        .expect("encrypt");
    out
});

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a stream.
    let _ = RUNTIME.block_on(stream::read_header(&mut &data[..]));
    let mut out = Vec::new();
    let result = RUNTIME.block_on(stream::decrypt_stream(&*PROVIDER, &mut &data[..], &mut out));
    assert!(result.is_err() || data == STREAM.as_slice());

    // A real stream, edited: (position u16, xor) triples; a zero xor cuts the stream there.
    let mut edited = STREAM.clone();
    for edit in data.chunks_exact(3) {
        if edited.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % edited.len();
        match edit[2] {
            0 => edited.truncate(at),
            x => edited[at] ^= x,
        }
    }
    let mut out = Vec::new();
    let result = RUNTIME.block_on(stream::decrypt_stream(&*PROVIDER, &mut &edited[..], &mut out));
    if edited == *STREAM {
        result.expect("unchanged stream");
        assert_eq!(out, *PLAINTEXT);
    } else {
        assert!(result.is_err(), "an edited stream decrypted");
    }
});
