//! The streaming backup cipher: round trips, the documented layout, one test per kind of
//! tampering (each with its own fault), arbitrary input, secrets in messages, and a 1 GiB
//! stream in constant memory (in a child process).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use jarvis_crypt::stream::{
    self, DEFAULT_CHUNK_SIZE, DecryptReader, EncryptWriter, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
    Manifest, STREAM_MAGIC, StreamOptions,
};
use jarvis_crypt::{
    DataKey, Encryptor, Error, ErrorKind, GeneratedDataKey, KeyProvider, KeyPurpose,
    LocalKeyProvider, MasterKeyRef, ProviderKind, StreamFault, WrappedKey, cipher,
};
use proptest::prelude::*;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Chunk size of most tamper tests: small, so streams of several chunks stay small.
const SMALL: u32 = 64;
const PIECE: usize = SMALL as usize + 16;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn manifest() -> Manifest {
    let mut manifest = Manifest::new("sqlite", "2024-06-01-000000");
    manifest.master_key_ids = vec!["local-0123456789abcdef".into()];
    manifest
        .extra
        .insert("tables".into(), serde_json::json!(["users", "api_keys"]));
    manifest
}

async fn seal_with(provider: &dyn KeyProvider, plaintext: &[u8], chunk: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = stream::encrypt_stream(
        provider,
        &manifest(),
        &mut &plaintext[..],
        &mut out,
        StreamOptions::default().with_chunk_size(chunk),
    )
    .await
    .expect("encrypt");
    assert_eq!(summary.stream_bytes, out.len() as u64);
    out
}

async fn open_with<K: stream::BackupKeys + ?Sized>(
    keys: &K,
    bytes: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    stream::decrypt_stream(keys, &mut &bytes[..], &mut out).await?;
    Ok(out)
}

#[track_caller]
fn fault<T>(result: Result<T, Error>) -> StreamFault {
    match result {
        Err(Error::StreamTampered(fault)) => fault,
        Err(other) => panic!("expected a stream fault, got {other:?}"),
        Ok(_) => panic!("a tampered stream decrypted"),
    }
}

/// Offsets of the header fields, read as the module documentation lays them out.
#[derive(Debug)]
struct Layout {
    id: std::ops::Range<usize>,
    key_version: usize,
    wrapped: std::ops::Range<usize>,
    chunk_size: usize,
    prefix: usize,
    manifest_len: usize,
    manifest: std::ops::Range<usize>,
    tag: usize,
    /// Offset of chunk 0.
    chunks: usize,
}

fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn layout(bytes: &[u8]) -> Layout {
    let n = be16(bytes, 6);
    let w = be16(bytes, 12 + n);
    let m = be32(bytes, 25 + n + w) as usize;
    Layout {
        id: 8..8 + n,
        key_version: 8 + n,
        wrapped: 14 + n..14 + n + w,
        chunk_size: 14 + n + w,
        prefix: 18 + n + w,
        manifest_len: 25 + n + w,
        manifest: 29 + n + w..29 + n + w + m,
        tag: 29 + n + w + m,
        chunks: 45 + n + w + m,
    }
}

fn chunk_range(bytes: &[u8], index: usize, piece: usize) -> std::ops::Range<usize> {
    let start = layout(bytes).chunks + index * piece;
    start..start + piece
}

fn flip(bytes: &[u8], at: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= mask;
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- round trips ---------------------------------------------------------------------------

#[tokio::test]
async fn round_trips_at_chunk_boundaries() {
    let provider = LocalKeyProvider::generate();
    for chunk in [SMALL, DEFAULT_CHUNK_SIZE] {
        let c = chunk as usize;
        for len in [0, 1, c - 1, c, c + 1, 3 * c, 3 * c + 17] {
            let plaintext = pseudo_random(len, len as u64 + 7);
            let mut sealed = Vec::new();
            let written = stream::encrypt_stream(
                &provider,
                &manifest(),
                &mut &plaintext[..],
                &mut sealed,
                StreamOptions::default().with_chunk_size(chunk),
            )
            .await
            .expect("encrypt");
            let header = stream::read_header(&mut &sealed[..]).await.expect("header");
            assert_eq!(written.chunks, (len / c + 1) as u64, "{chunk}/{len}");
            assert_eq!(written.plaintext_bytes, len as u64);
            assert_eq!(
                sealed.len() as u64,
                stream::stream_len(header.encoded_len(), chunk, len as u64),
                "{chunk}/{len}"
            );

            let mut opened = Vec::new();
            let read = stream::decrypt_stream(&provider, &mut &sealed[..], &mut opened)
                .await
                .expect("decrypt");
            assert_eq!(opened, plaintext, "{chunk}/{len}");
            assert_eq!(read, written);
        }
    }
}

#[tokio::test]
async fn layout_matches_the_module_documentation() {
    let master_hex = "11".repeat(32);
    let provider = LocalKeyProvider::from_hex(&master_hex).expect("key");
    let plaintext = pseudo_random(150, 3);
    let bytes = seal_with(&provider, &plaintext, SMALL).await;
    let at = layout(&bytes);

    assert_eq!(bytes[..4], STREAM_MAGIC);
    assert_eq!(&bytes[..4], b"JVBK");
    assert_eq!(bytes[4], 1, "format version");
    assert_eq!(bytes[5], 1, "local provider");
    assert_eq!(&bytes[at.id.clone()], provider.key_id().as_bytes());
    assert_eq!(be32(&bytes, at.key_version), 1);
    let wrapped = WrappedKey::new(bytes[at.wrapped.clone()].to_vec()).expect("envelope");
    assert_eq!(
        wrapped.envelope().expect("envelope").master_key(),
        Some(&provider.master_key())
    );
    assert_eq!(be32(&bytes, at.chunk_size), SMALL);
    assert_eq!(be32(&bytes, at.manifest_len) as usize, at.manifest.len());
    let parsed: Manifest = serde_json::from_slice(&bytes[at.manifest.clone()]).expect("json");
    assert_eq!(parsed, manifest());
    // Two full chunks and the final one (22 bytes and padding).
    assert_eq!(bytes.len(), at.chunks + 3 * PIECE);

    // The header tag and the chunks open with the data key, as documented.
    let key = provider
        .unwrap_data_key(&wrapped, KeyPurpose::Backup)
        .await
        .expect("unwrap");
    let key = key.expose_secret();
    let nonce = |index: u32, flag: u8| {
        let mut n = bytes[at.prefix..at.prefix + 7].to_vec();
        n.extend_from_slice(&index.to_be_bytes());
        n.push(flag);
        n
    };
    let header = &bytes[..at.tag];
    let (_, header_tag) = cipher::seal_with_nonce(key, &nonce(0, 2), header, b"").expect("tag");
    assert_eq!(header_tag, bytes[at.tag..at.chunks]);
    let mut opened = Vec::new();
    for index in 0..3 {
        let chunk = &bytes[chunk_range(&bytes, index, PIECE)];
        let flag = u8::from(index == 2);
        let (ct, tag) = chunk.split_at(SMALL as usize);
        opened
            .extend(cipher::open(key, &nonce(index as u32, flag), header, ct, tag).expect("chunk"));
    }
    let mut padded = plaintext.clone();
    padded.push(0x80);
    padded.resize(3 * SMALL as usize, 0);
    assert_eq!(opened, padded);
}

#[tokio::test]
async fn read_header_needs_no_key() {
    let provider = LocalKeyProvider::generate();
    let bytes = seal_with(&provider, b"dump", SMALL).await;
    let mut reader = &bytes[..];
    let header = stream::read_header(&mut reader).await.expect("header");
    assert_eq!(header.version(), 1);
    assert_eq!(header.master_key(), &provider.master_key());
    assert_eq!(header.chunk_size(), SMALL);
    assert_eq!(header.manifest(), &manifest());
    assert_eq!(reader.len(), bytes.len() - header.encoded_len());

    // The reader is left at chunk 0: decryption goes on from there.
    let mut decrypt = DecryptReader::from_header(reader, header, &provider)
        .await
        .expect("open");
    let mut plaintext = Vec::new();
    decrypt.read_to_end(&mut plaintext).await.expect("read");
    assert_eq!(plaintext, b"dump");
    assert!(decrypt.is_complete());
}

#[tokio::test]
async fn every_stream_has_a_fresh_backup_data_key() {
    #[derive(Debug)]
    struct Recording(LocalKeyProvider, Mutex<Vec<KeyPurpose>>);

    #[async_trait]
    impl KeyProvider for Recording {
        fn kind(&self) -> ProviderKind {
            self.0.kind()
        }
        fn master_key(&self) -> MasterKeyRef {
            self.0.master_key()
        }
        fn can_unwrap(&self, master_key: &MasterKeyRef) -> bool {
            self.0.can_unwrap(master_key)
        }
        async fn generate_data_key(
            &self,
            purpose: KeyPurpose,
        ) -> jarvis_crypt::Result<GeneratedDataKey> {
            self.1.lock().expect("lock").push(purpose);
            self.0.generate_data_key(purpose).await
        }
        async fn unwrap_data_key(
            &self,
            wrapped: &WrappedKey,
            purpose: KeyPurpose,
        ) -> jarvis_crypt::Result<DataKey> {
            self.0.unwrap_data_key(wrapped, purpose).await
        }
        async fn rewrap_data_key(
            &self,
            wrapped: &WrappedKey,
            purpose: KeyPurpose,
            to: &MasterKeyRef,
        ) -> jarvis_crypt::Result<WrappedKey> {
            self.0.rewrap_data_key(wrapped, purpose, to).await
        }
    }

    let provider = Recording(LocalKeyProvider::generate(), Mutex::new(Vec::new()));
    let a = seal_with(&provider, b"same dump", SMALL).await;
    let b = seal_with(&provider, b"same dump", SMALL).await;
    assert_eq!(
        *provider.1.lock().expect("lock"),
        [KeyPurpose::Backup, KeyPurpose::Backup]
    );
    let (la, lb) = (layout(&a), layout(&b));
    assert_ne!(a[la.wrapped.clone()], b[lb.wrapped.clone()]);
    assert_ne!(a[la.prefix..la.prefix + 7], b[lb.prefix..lb.prefix + 7]);
    assert_ne!(a[la.chunks..], b[lb.chunks..]);
    assert_eq!(open_with(&provider, &a).await.expect("a"), b"same dump");
}

#[tokio::test]
async fn flush_never_seals_a_partial_chunk_and_finish_ends_the_stream() {
    let provider = LocalKeyProvider::generate();
    let mut writer = EncryptWriter::new(
        Vec::new(),
        &provider,
        &manifest(),
        StreamOptions::default().with_chunk_size(SMALL),
    )
    .await
    .expect("writer");
    writer.write_all(&[5; 100]).await.expect("write");
    writer.flush().await.expect("flush");
    let header_len = layout(writer.get_ref()).chunks;
    // The first chunk is full and sealed; the 36 bytes after it wait for more.
    assert_eq!(writer.get_ref().len(), header_len + PIECE);
    writer.write_all(&[5; 28]).await.expect("write");
    writer.flush().await.expect("flush");
    assert_eq!(writer.get_ref().len(), header_len + 2 * PIECE);
    let summary = writer.summary();
    assert_eq!((summary.chunks, summary.plaintext_bytes), (2, 128));

    writer.shutdown().await.expect("shutdown");
    assert_eq!(writer.get_ref().len(), header_len + 3 * PIECE);
    assert!(writer.write(b"more").await.is_err(), "write after the end");
    let bytes = writer.get_ref().clone();
    assert_eq!(open_with(&provider, &bytes).await.expect("open"), [5; 128]);
}

#[tokio::test]
async fn options_and_manifest_are_checked() {
    let provider = LocalKeyProvider::generate();
    for chunk in [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1] {
        let result = EncryptWriter::new(
            Vec::new(),
            &provider,
            &manifest(),
            StreamOptions::new().with_chunk_size(chunk),
        )
        .await;
        assert!(matches!(result, Err(Error::Configuration(_))), "{chunk}");
    }
    let mut bad_date = manifest();
    bad_date.created_at = "yesterday".into();
    let result = EncryptWriter::new(Vec::new(), &provider, &bad_date, StreamOptions::new()).await;
    assert!(matches!(result, Err(Error::Configuration(_))));
    let mut huge = manifest();
    huge.extra.insert("notes".into(), "x".repeat(70_000).into());
    let result = EncryptWriter::new(Vec::new(), &provider, &huge, StreamOptions::new()).await;
    assert!(matches!(result, Err(Error::Configuration(_))));
}

/// Accepts at most `max` bytes per call and answers every other call with `Pending`.
struct Trickle<T> {
    inner: T,
    max: usize,
    ready: bool,
}

impl<T> Trickle<T> {
    fn new(inner: T, max: usize) -> Self {
        Trickle {
            inner,
            max,
            ready: false,
        }
    }

    fn pending(&mut self, cx: &mut Context<'_>) -> bool {
        self.ready = !self.ready;
        if self.ready {
            cx.waker().wake_by_ref();
        }
        self.ready
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Trickle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending(cx) {
            return Poll::Pending;
        }
        let n = buf.len().min(self.max);
        Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Trickle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pending(cx) {
            return Poll::Pending;
        }
        let mut tmp = vec![0u8; self.max.min(buf.remaining())];
        let mut part = ReadBuf::new(&mut tmp);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        Poll::Ready(Ok(()))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trips_through_any_io_pattern(
        plaintext in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk in MIN_CHUNK_SIZE..300,
        write_max in 1usize..400,
        read_max in 1usize..400,
    ) {
        let provider = LocalKeyProvider::generate();
        runtime().block_on(async {
            let mut writer = EncryptWriter::new(
                Trickle::new(Vec::new(), write_max),
                &provider,
                &manifest(),
                StreamOptions::default().with_chunk_size(chunk),
            ).await.expect("writer");
            for part in plaintext.chunks(write_max.max(1) * 2 + 1) {
                writer.write_all(part).await.expect("write");
            }
            writer.shutdown().await.expect("shutdown");
            let sealed = writer.get_ref().inner.clone();
            prop_assert_eq!(writer.summary().stream_bytes, sealed.len() as u64);

            let mut reader = DecryptReader::new(Trickle::new(&sealed[..], read_max), &provider)
                .await
                .expect("reader");
            let mut opened = Vec::new();
            let mut buf = vec![0u8; read_max];
            loop {
                let n = reader.read(&mut buf).await.expect("read");
                if n == 0 { break; }
                opened.extend_from_slice(&buf[..n]);
            }
            prop_assert_eq!(&opened, &plaintext);
            prop_assert!(reader.is_complete());
            Ok(())
        })?;
    }
}

// ---- tampering: one fault per kind ---------------------------------------------------------

/// Six chunks of 64 bytes: five full ones and the final one with 20 bytes of data.
const TAMPER_LEN: usize = 5 * SMALL as usize + 20;

async fn tamper_fixture() -> (LocalKeyProvider, Vec<u8>, Vec<u8>) {
    let provider = LocalKeyProvider::generate();
    let plaintext = pseudo_random(TAMPER_LEN, 11);
    let bytes = seal_with(&provider, &plaintext, SMALL).await;
    assert_eq!(bytes.len(), layout(&bytes).chunks + 6 * PIECE);
    (provider, plaintext, bytes)
}

#[tokio::test]
async fn a_flipped_bit_in_any_chunk_names_that_chunk() {
    let (provider, _, bytes) = tamper_fixture().await;
    for index in 0..6 {
        let range = chunk_range(&bytes, index, PIECE);
        // In the ciphertext, and in the tag.
        for at in [range.start, range.start + 40, range.end - 16, range.end - 1] {
            for mask in [0x01, 0x80] {
                let result = open_with(&provider, &flip(&bytes, at, mask)).await;
                assert_eq!(
                    fault(result),
                    StreamFault::ChunkAuthentication {
                        index: index as u64
                    },
                    "chunk {index}, byte {at}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_flipped_bit_anywhere_fails() {
    let (provider, _, bytes) = tamper_fixture().await;
    let at = layout(&bytes);
    for offset in 0..bytes.len() {
        for bit in 0..8 {
            let result = open_with(&provider, &flip(&bytes, offset, 1 << bit)).await;
            if offset >= at.chunks {
                let index = ((offset - at.chunks) / PIECE) as u64;
                assert_eq!(
                    fault(result),
                    StreamFault::ChunkAuthentication { index },
                    "byte {offset}"
                );
            } else {
                match result {
                    Err(Error::InvalidStoredForm(_))
                    | Err(Error::StreamTampered(
                        StreamFault::HeaderTruncated
                        | StreamFault::HeaderAuthentication
                        | StreamFault::MasterKeyMismatch
                        | StreamFault::DataKey,
                    )) => {}
                    other => panic!("header byte {offset} bit {bit}: {other:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn each_changed_header_field_has_its_fault() {
    let (provider, _, bytes) = tamper_fixture().await;
    let at = layout(&bytes);
    let header_auth = StreamFault::HeaderAuthentication;

    let not_a_stream = open_with(&provider, &flip(&bytes, 0, 0x20)).await;
    assert!(matches!(not_a_stream, Err(Error::InvalidStoredForm(_))));
    let version = open_with(&provider, &flip(&bytes, 4, 0x02)).await;
    assert!(matches!(version, Err(Error::InvalidStoredForm(m)) if m.contains("version 3")));
    let provider_code = open_with(&provider, &flip(&bytes, 5, 0x04)).await;
    assert!(matches!(provider_code, Err(Error::InvalidStoredForm(_))));

    // The master key named by the header no longer matches its wrapped key's.
    let id = open_with(&provider, &flip(&bytes, at.id.start + 3, 0x01)).await;
    assert_eq!(fault(id), StreamFault::MasterKeyMismatch);
    let version = open_with(&provider, &flip(&bytes, at.key_version + 3, 0x01)).await;
    assert_eq!(fault(version), StreamFault::MasterKeyMismatch);

    // The wrapped key's payload (after its 11 + n byte envelope header).
    let payload = at.wrapped.start + 11 + at.id.len() + 20;
    assert_eq!(
        fault(open_with(&provider, &flip(&bytes, payload, 0x01)).await),
        StreamFault::DataKey
    );

    // Chunk size (still in range), nonce prefix, manifest, header tag.
    let chunk_size = flip(&bytes, at.chunk_size + 3, 0x80);
    assert_eq!(be32(&chunk_size, at.chunk_size), 192);
    assert_eq!(fault(open_with(&provider, &chunk_size).await), header_auth);
    for offset in [at.prefix, at.prefix + 6, at.tag, at.tag + 15] {
        let result = open_with(&provider, &flip(&bytes, offset, 0x01)).await;
        assert_eq!(fault(result), header_auth, "byte {offset}");
    }
    let json = String::from_utf8(bytes[at.manifest.clone()].to_vec()).expect("utf-8");
    let backend = at.manifest.start + json.find("sqlite").expect("backend");
    let mut renamed = bytes.clone();
    renamed[backend..backend + 6].copy_from_slice(b"mysql8");
    assert_eq!(fault(open_with(&provider, &renamed).await), header_auth);

    // A whole new manifest of another length, its length field rewritten to match.
    let mut forged_manifest = manifest();
    forged_manifest.master_key_ids.clear();
    let forged_json = serde_json::to_vec(&forged_manifest).expect("json");
    let mut forged = bytes[..at.manifest_len].to_vec();
    forged.extend_from_slice(&(forged_json.len() as u32).to_be_bytes());
    forged.extend_from_slice(&forged_json);
    forged.extend_from_slice(&bytes[at.tag..]);
    let header = stream::read_header(&mut &forged[..]).await.expect("parses");
    assert!(header.manifest().master_key_ids.is_empty());
    assert_eq!(fault(open_with(&provider, &forged).await), header_auth);
}

#[tokio::test]
async fn a_data_key_wrapped_for_another_purpose_is_refused() {
    // A forger holding a field data key (and so able to tag a header with it) still cannot
    // pass it off as a backup's: the provider binds the purpose to the wrapped key.
    let (provider, _, bytes) = tamper_fixture().await;
    let at = layout(&bytes);
    let field = provider
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("field key");
    let mut forged = bytes[..at.wrapped.start - 2].to_vec();
    forged.extend_from_slice(&(field.wrapped.len() as u16).to_be_bytes());
    forged.extend_from_slice(field.wrapped.as_bytes());
    forged.extend_from_slice(&bytes[at.wrapped.end..at.tag]);
    let forged_at = layout(&forged);
    let mut nonce = forged[forged_at.prefix..forged_at.prefix + 7].to_vec();
    nonce.extend_from_slice(&[0, 0, 0, 0, 2]);
    let (_, tag) =
        cipher::seal_with_nonce(field.key.expose_secret(), &nonce, &forged, b"").expect("tag");
    forged.extend_from_slice(&tag);
    forged.extend_from_slice(&bytes[at.chunks..]);
    assert_eq!(
        fault(open_with(&provider, &forged).await),
        StreamFault::DataKey
    );
}

#[tokio::test]
async fn truncation_anywhere_is_reported_as_truncation() {
    let (provider, _, bytes) = tamper_fixture().await;
    let at = layout(&bytes);
    // The final chunk dropped, and more.
    for dropped in 1..=6 {
        let cut = &bytes[..bytes.len() - dropped * PIECE];
        assert_eq!(
            fault(open_with(&provider, cut).await),
            StreamFault::Truncated {
                chunks: (6 - dropped) as u64
            },
            "{dropped} chunks dropped"
        );
    }
    // Cut inside a chunk, the final one included.
    for index in 0..6 {
        let range = chunk_range(&bytes, index, PIECE);
        for keep in [1, 15, 16, 17, PIECE - 1] {
            let cut = &bytes[..range.start + keep];
            assert_eq!(
                fault(open_with(&provider, cut).await),
                StreamFault::Truncated {
                    chunks: index as u64
                },
                "chunk {index}, {keep} bytes kept"
            );
        }
    }
    // Cut inside the header (after the magic: before it the bytes are just too few).
    for keep in (0..at.chunks).step_by(7).chain([at.chunks - 1]) {
        assert_eq!(
            fault(open_with(&provider, &bytes[..keep]).await),
            StreamFault::HeaderTruncated,
            "{keep} header bytes kept"
        );
    }
}

#[tokio::test]
async fn reordered_duplicated_and_dropped_chunks_are_named() {
    let (provider, _, bytes) = tamper_fixture().await;
    let at = layout(&bytes);
    let chunk = |i: usize| bytes[chunk_range(&bytes, i, PIECE)].to_vec();
    let assemble = |order: &[usize]| {
        let mut out = bytes[..at.chunks].to_vec();
        for &i in order {
            out.extend(chunk(i));
        }
        out
    };
    let cases: [(&[usize], StreamFault); 6] = [
        (
            &[0, 2, 1, 3, 4, 5],
            StreamFault::ChunkOutOfOrder {
                position: 1,
                found: 2,
            },
        ),
        (
            &[0, 1, 1, 2, 3, 4, 5],
            StreamFault::ChunkOutOfOrder {
                position: 2,
                found: 1,
            },
        ),
        (
            &[0, 1, 3, 4, 5],
            StreamFault::ChunkOutOfOrder {
                position: 2,
                found: 3,
            },
        ),
        (
            &[5, 1, 2, 3, 4, 0],
            StreamFault::ChunkOutOfOrder {
                position: 0,
                found: 5,
            },
        ),
        // The final chunk moved forward, the chunk before it now last.
        (
            &[0, 1, 2, 3, 5, 4],
            StreamFault::ChunkOutOfOrder {
                position: 4,
                found: 5,
            },
        ),
        // The final chunk replaced by a copy of the one before it.
        (
            &[0, 1, 2, 3, 4, 4],
            StreamFault::ChunkOutOfOrder {
                position: 5,
                found: 4,
            },
        ),
    ];
    for (order, expected) in cases {
        let result = open_with(&provider, &assemble(order)).await;
        assert_eq!(fault(result), expected, "{order:?}");
    }
}

#[tokio::test]
async fn anything_after_the_final_chunk_is_trailing_data() {
    let (provider, _, bytes) = tamper_fixture().await;
    let at = layout(&bytes);
    let final_chunk = bytes[chunk_range(&bytes, 5, PIECE)].to_vec();
    let other_chunk = bytes[chunk_range(&bytes, 2, PIECE)].to_vec();
    let tails: [Vec<u8>; 6] = [
        vec![0],
        vec![0xAB; 15],
        pseudo_random(PIECE, 5),
        pseudo_random(3 * PIECE + 7, 6),
        final_chunk,
        other_chunk,
    ];
    for tail in tails {
        let mut extended = bytes.clone();
        extended.extend_from_slice(&tail);
        assert_eq!(
            fault(open_with(&provider, &extended).await),
            StreamFault::TrailingData { after_chunk: 5 },
            "{} bytes appended",
            tail.len()
        );
    }
    // A whole second stream appended is trailing data too.
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    assert_eq!(
        fault(open_with(&provider, &two).await),
        StreamFault::TrailingData { after_chunk: 5 }
    );
    assert!(at.chunks > 0);
}

#[tokio::test]
async fn chunks_and_headers_of_other_streams_do_not_fit() {
    let provider = LocalKeyProvider::generate();
    let plaintext = pseudo_random(TAMPER_LEN, 11);
    let a = seal_with(&provider, &plaintext, SMALL).await;
    let b = seal_with(&provider, &plaintext, SMALL).await;
    let (la, lb) = (layout(&a), layout(&b));

    // Chunk 3 of another stream of the same key and plaintext.
    let mut spliced = a.clone();
    let range = chunk_range(&a, 3, PIECE);
    spliced[range.clone()].copy_from_slice(&b[chunk_range(&b, 3, PIECE)]);
    assert_eq!(
        fault(open_with(&provider, &spliced).await),
        StreamFault::ChunkAuthentication { index: 3 }
    );
    // Another stream's (genuine) header on these chunks.
    let mut rehead = b[..lb.chunks].to_vec();
    rehead.extend_from_slice(&a[la.chunks..]);
    assert_eq!(
        fault(open_with(&provider, &rehead).await),
        StreamFault::ChunkAuthentication { index: 0 }
    );
}

#[tokio::test]
async fn a_stream_under_an_unknown_master_key_names_the_key() {
    let old = Arc::new(LocalKeyProvider::generate());
    let new = Arc::new(LocalKeyProvider::generate());
    let bytes = seal_with(old.as_ref(), b"dump", SMALL).await;

    match open_with(new.as_ref(), &bytes).await {
        Err(Error::UnknownMasterKey { key_id }) => assert!(key_id.contains(old.key_id())),
        other => panic!("expected an unknown master key, got {other:?}"),
    }
    let only_new = Encryptor::builder(new.clone()).build();
    assert!(matches!(
        open_with(&only_new, &bytes).await,
        Err(Error::UnknownMasterKey { .. })
    ));
    // An encryptor that still decrypts under the old key opens it, through any provider type.
    let migrating = Encryptor::builder(new.clone())
        .decrypt_with(old.clone())
        .build();
    assert_eq!(open_with(&migrating, &bytes).await.expect("open"), b"dump");
    let as_dyn: Arc<dyn KeyProvider> = old.clone();
    assert_eq!(open_with(&*as_dyn, &bytes).await.expect("open"), b"dump");
    // The field cache is not involved.
    let stats = migrating.stats();
    assert_eq!((stats.unwrap_calls, stats.decrypt_misses), (0, 0));
}

#[tokio::test]
async fn the_reader_releases_only_authenticated_plaintext_and_never_a_false_end() {
    let (provider, plaintext, bytes) = tamper_fixture().await;
    let c = SMALL as usize;

    async fn read_until_error(provider: &LocalKeyProvider, bytes: &[u8]) -> (Vec<u8>, Error) {
        let mut reader = DecryptReader::new(bytes, provider).await.expect("header");
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => panic!("a damaged stream ended cleanly"),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    // The fault stays the answer.
                    let again = reader.read(&mut buf).await.expect_err("sticky");
                    assert_eq!(again.to_string(), e.to_string());
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                    assert!(!reader.is_complete());
                    return (out, Error::from(e));
                }
            }
        }
    }

    let damaged = flip(&bytes, chunk_range(&bytes, 2, PIECE).start + 5, 0x10);
    let (out, error) = read_until_error(&provider, &damaged).await;
    assert_eq!(out, plaintext[..2 * c]);
    assert!(matches!(
        error,
        Error::StreamTampered(StreamFault::ChunkAuthentication { index: 2 })
    ));

    let cut = &bytes[..bytes.len() - PIECE];
    let (out, error) = read_until_error(&provider, cut).await;
    assert_eq!(out, plaintext[..4 * c]);
    assert!(matches!(
        error,
        Error::StreamTampered(StreamFault::Truncated { chunks: 5 })
    ));

    // Trailing data is found before the final chunk's plaintext goes out.
    let mut extended = bytes.clone();
    extended.push(0);
    let (out, error) = read_until_error(&provider, &extended).await;
    assert_eq!(out, plaintext[..5 * c]);
    assert!(matches!(
        error,
        Error::StreamTampered(StreamFault::TrailingData { .. })
    ));
}

#[tokio::test]
async fn verify_checks_everything_and_writes_nothing() {
    let (provider, plaintext, bytes) = tamper_fixture().await;
    let summary = stream::verify_stream(&provider, &mut &bytes[..])
        .await
        .expect("verify");
    assert_eq!(summary.plaintext_bytes, plaintext.len() as u64);
    assert_eq!(summary.chunks, 6);
    assert_eq!(summary.stream_bytes, bytes.len() as u64);
    assert_eq!(summary.manifest, manifest());
    assert_eq!(summary.master_key, provider.master_key());
    let damaged = flip(&bytes, bytes.len() - 1, 0x01);
    assert_eq!(
        fault(stream::verify_stream(&provider, &mut &damaged[..]).await),
        StreamFault::ChunkAuthentication { index: 5 }
    );
}

// ---- arbitrary input -------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_are_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        prefixed in any::<bool>(),
    ) {
        let provider = LocalKeyProvider::generate();
        let mut input = if prefixed { b"JVBK\x01\x01".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        runtime().block_on(async {
            let _ = stream::read_header(&mut &input[..]).await;
            prop_assert!(open_with(&provider, &input).await.is_err());
            Ok(())
        })?;
    }
}

fn fixed_stream() -> &'static (LocalKeyProvider, Vec<u8>) {
    static FIXED: std::sync::OnceLock<(LocalKeyProvider, Vec<u8>)> = std::sync::OnceLock::new();
    FIXED.get_or_init(|| {
        let provider = LocalKeyProvider::generate();
        let bytes = runtime().block_on(seal_with(&provider, &pseudo_random(300, 9), SMALL));
        (provider, bytes)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn damaged_streams_never_decrypt(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
        insert in proptest::collection::vec(any::<u8>(), 1..40),
        at in any::<prop::sample::Index>(),
    ) {
        let (provider, bytes) = fixed_stream();
        runtime().block_on(async {
            let mut flipped = bytes.clone();
            for (index, mask) in &edits {
                flipped[index.index(bytes.len())] ^= mask;
            }
            // Two edits on one byte can cancel out; anything else must fail.
            if flipped != *bytes {
                prop_assert!(open_with(provider, &flipped).await.is_err());
            }
            let cut = cut.index(bytes.len());
            prop_assert!(open_with(provider, &bytes[..cut]).await.is_err());
            let mut inserted = bytes.clone();
            let at = at.index(bytes.len() + 1);
            inserted.splice(at..at, insert.iter().copied());
            prop_assert!(open_with(provider, &inserted).await.is_err());
            Ok(())
        })?;
    }
}

// ---- secrets ---------------------------------------------------------------------------------

#[tokio::test]
async fn errors_and_debug_output_carry_no_key_or_plaintext() {
    let master_hex = "5a".repeat(16) + &"c3".repeat(16);
    let provider = LocalKeyProvider::from_hex(&master_hex).expect("key");
    let plaintext = b"TOP-SECRET-ROW-CONTENT ".repeat(10);
    let bytes = seal_with(&provider, &plaintext, SMALL).await;
    let at = layout(&bytes);
    let wrapped = WrappedKey::new(bytes[at.wrapped.clone()].to_vec()).expect("wrapped");
    let data_key = provider
        .unwrap_data_key(&wrapped, KeyPurpose::Backup)
        .await
        .expect("unwrap");
    let secrets: Vec<Vec<u8>> = vec![
        hex::decode(&master_hex).expect("hex"),
        data_key.expose_secret().to_vec(),
        b"TOP-SECRET".to_vec(),
    ];

    let mut shown = Vec::new();
    let mut swapped = bytes[..at.chunks].to_vec();
    swapped.extend_from_slice(&bytes[at.chunks + PIECE..at.chunks + 2 * PIECE]);
    swapped.extend_from_slice(&bytes[at.chunks..at.chunks + PIECE]);
    swapped.extend_from_slice(&bytes[at.chunks + 2 * PIECE..]);
    let mut extended = bytes.clone();
    extended.extend_from_slice(b"TOP-SECRET");
    let inputs = [
        flip(&bytes, at.chunks + 3, 1),
        flip(&bytes, at.tag, 1),
        flip(&bytes, at.wrapped.end - 3, 1),
        bytes[..bytes.len() - 10].to_vec(),
        swapped,
        extended,
    ];
    for input in &inputs {
        let error = open_with(&provider, input).await.expect_err("tampered");
        assert_eq!(error.kind(), ErrorKind::StreamTampered);
        assert_eq!(error.kind().as_str(), "stream_tampered");
        shown.push(format!("{error} {error:?}"));
        let io: std::io::Error = error.into();
        shown.push(format!("{io} {io:?}"));
    }
    let stranger = LocalKeyProvider::generate();
    let error = open_with(&stranger, &bytes).await.expect_err("unknown key");
    shown.push(format!("{error} {error:?}"));

    let header = stream::read_header(&mut &bytes[..]).await.expect("header");
    shown.push(format!("{header:?}"));
    let reader = DecryptReader::new(&bytes[..], &provider)
        .await
        .expect("reader");
    shown.push(format!("{reader:?} {:?}", reader.summary()));
    let writer = EncryptWriter::new(Vec::new(), &provider, &manifest(), StreamOptions::new())
        .await
        .expect("writer");
    shown.push(format!("{writer:?}"));

    for text in &shown {
        for secret in &secrets {
            for form in [
                hex::encode(secret),
                hex::encode_upper(secret),
                format!("{secret:?}"),
                String::from_utf8_lossy(secret).into_owned(),
            ] {
                assert!(!text.contains(&form), "leaks a secret: {text}");
            }
        }
    }
}

#[test]
fn fault_names_are_stable() {
    let names = [
        (StreamFault::HeaderTruncated, "header_truncated"),
        (StreamFault::HeaderAuthentication, "header_authentication"),
        (StreamFault::MasterKeyMismatch, "master_key_mismatch"),
        (StreamFault::DataKey, "data_key"),
        (
            StreamFault::ChunkAuthentication { index: 1 },
            "chunk_authentication",
        ),
        (
            StreamFault::ChunkOutOfOrder {
                position: 1,
                found: 2,
            },
            "chunk_out_of_order",
        ),
        (StreamFault::Truncated { chunks: 1 }, "truncated"),
        (
            StreamFault::TrailingData { after_chunk: 1 },
            "trailing_data",
        ),
    ];
    for (fault, name) in names {
        assert_eq!(fault.as_str(), name);
    }
    assert_eq!(ErrorKind::Io.as_str(), "io");
    let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed");
    let error = Error::from(io);
    assert_eq!(error.kind(), ErrorKind::Io);
    assert_eq!(
        std::io::Error::from(error).kind(),
        std::io::ErrorKind::BrokenPipe
    );
}

// ---- 1 GiB in constant memory --------------------------------------------------------------

const CHILD_VAR: &str = "JARVIS_STREAM_CHILD";
const GIB: u64 = 1 << 30;
const MEMORY_LIMIT_KIB: u64 = 64 * 1024;

/// The parent runs this test again as a child process (so that the peak memory measured is the
/// stream's alone, not the rest of the test suite's), then checks what the child reports.
#[test]
fn one_gib_stream_in_constant_memory() {
    if std::env::var_os(CHILD_VAR).is_some() {
        return memory_child();
    }
    let started = std::time::Instant::now();
    // The test's name in its binary: `stream::one_gib_stream_in_constant_memory`.
    let name = module_path!()
        .split_once("::")
        .map_or("", |(_, module)| module)
        .to_owned()
        + "::one_gib_stream_in_constant_memory";
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &name, "--nocapture", "--test-threads", "1"])
        .env(CHILD_VAR, "1")
        .output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|line| {
                // libtest may print its "test ... " on the same line, before the report.
                let marker = format!("jarvis-stream-child {name}=");
                line.find(&marker).map(|at| &line[at + marker.len()..])
            })
            .unwrap_or_else(|| panic!("child did not report {name}: {stdout}"))
            .to_owned()
    };
    let hwm: u64 = field("vm_hwm_kib").parse().expect("number");
    assert_eq!(field("plaintext_bytes"), GIB.to_string());
    assert_eq!(field("written_sha256"), field("decrypted_sha256"));
    assert!(
        hwm < MEMORY_LIMIT_KIB,
        "peak resident memory {hwm} KiB, limit {MEMORY_LIMIT_KIB} KiB"
    );
    eprintln!(
        "1 GiB stream: peak RSS {hwm} KiB, encrypt {} ms, decrypt {} ms, child total {:?}",
        field("encrypt_ms"),
        field("decrypt_ms"),
        started.elapsed()
    );
}

fn memory_child() {
    runtime().block_on(async {
        let provider = LocalKeyProvider::generate();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.jvbk");

        let started = std::time::Instant::now();
        let file = tokio::fs::File::create(&path).await.expect("create");
        let mut writer = EncryptWriter::new(file, &provider, &manifest(), StreamOptions::new())
            .await
            .expect("writer");
        let mut written = Sha256::new();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut block = vec![0u8; 256 * 1024];
        for _ in 0..GIB / block.len() as u64 {
            for word in block.chunks_exact_mut(8) {
                // splitmix64: fast, and a different plaintext in every chunk.
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            written.update(&block);
            writer.write_all(&block).await.expect("write");
        }
        writer.shutdown().await.expect("shutdown");
        let summary = writer.summary();
        drop(writer);
        let encrypt_ms = started.elapsed().as_millis();

        let started = std::time::Instant::now();
        let file = tokio::fs::File::open(&path).await.expect("open");
        let mut reader = DecryptReader::new(file, &provider).await.expect("reader");
        let mut decrypted = Sha256::new();
        let mut plaintext_bytes = 0u64;
        loop {
            let buf = reader.fill_buf().await.expect("read");
            if buf.is_empty() {
                break;
            }
            decrypted.update(buf);
            let n = buf.len();
            plaintext_bytes += n as u64;
            reader.consume(n);
        }
        assert!(reader.is_complete());
        assert_eq!(summary.plaintext_bytes, plaintext_bytes);
        let decrypt_ms = started.elapsed().as_millis();

        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .expect("VmHWM")
            .trim()
            .to_owned();
        println!("jarvis-stream-child vm_hwm_kib={hwm}");
        println!("jarvis-stream-child plaintext_bytes={plaintext_bytes}");
        println!(
            "jarvis-stream-child written_sha256={}",
            hex::encode(written.finalize())
        );
        println!(
            "jarvis-stream-child decrypted_sha256={}",
            hex::encode(decrypted.finalize())
        );
        println!("jarvis-stream-child encrypt_ms={encrypt_ms}");
        println!("jarvis-stream-child decrypt_ms={decrypt_ms}");
    });
}
