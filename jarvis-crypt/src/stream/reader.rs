//! [`DecryptReader`]: opening a stream chunk by chunk, releasing only authenticated plaintext.

use super::*;

pin_project_lite::pin_project! {
    /// Decrypts a backup stream read from `R`, yielding plaintext only from chunks that
    /// authenticated.
    ///
    /// Built by [`DecryptReader::new`], which reads the header, unwraps the data key and checks
    /// the header before returning. Reading yields each chunk's plaintext once the chunk has
    /// authenticated, and the final chunk's once the end of `R` has been seen right after it;
    /// any fault is an error (see the [module docs](self)), never an early end of stream, and
    /// stays the answer to every later read. Implements [`AsyncBufRead`] too, so
    /// [`tokio::io::copy_buf`] writes chunks without copying them. Holds about two chunks of
    /// memory.
    pub struct DecryptReader<R> {
        #[pin]
        inner: R,
        state: Opener,
    }
}

pub(super) struct Opener {
    key: DataKey,
    aad: Vec<u8>,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    chunk_size: usize,
    /// The chunk being read, plus one byte of the next: seeing that byte (or the end) tells
    /// whether this chunk must be the final one.
    sealed: Vec<u8>,
    filled: usize,
    /// Authenticated plaintext of the last chunk opened, handed out from `plain_pos`.
    plain: Zeroizing<Vec<u8>>,
    plain_pos: usize,
    plain_end: usize,
    next_index: u32,
    phase: Phase,
    master_key: MasterKeyRef,
    manifest: Manifest,
    chunks: u64,
    plaintext_bytes: u64,
    stream_bytes: u64,
}

pub(super) enum Phase {
    /// Chunks are being read.
    Chunks,
    /// The final chunk authenticated and the stream ended right after it.
    Complete,
    /// A fault was found; every later read reports it.
    Failed(Error),
}

impl<R> fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.state;
        f.debug_struct("DecryptReader")
            .field("master_key", &s.master_key)
            .field("chunk_size", &s.chunk_size)
            .field("chunks", &s.chunks)
            .field("plaintext_bytes", &s.plaintext_bytes)
            .field("complete", &matches!(s.phase, Phase::Complete))
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead> DecryptReader<R> {
    /// Reads the header from `reader`, unwraps the stream's data key through `keys` and checks
    /// the header, ready to read chunk 0. (A reader that is not `Unpin` can be passed as
    /// `Box::pin(reader)`.)
    pub async fn new<K: BackupKeys + ?Sized>(mut reader: R, keys: &K) -> Result<Self>
    where
        R: Unpin,
    {
        let raw = read_raw_header(&mut reader).await?;
        let key = open_header(keys, &raw).await?;
        // Parsed once authenticated, so a changed manifest fails as a changed header.
        let manifest = raw.manifest()?;
        Ok(Self::assemble(reader, raw, manifest, key))
    }

    /// Like [`new`](Self::new), for a `reader` whose header [`read_header`] has already read
    /// (it is left at chunk 0). The header is authenticated here.
    pub async fn from_header<K: BackupKeys + ?Sized>(
        reader: R,
        header: Header,
        keys: &K,
    ) -> Result<Self> {
        let key = open_header(keys, &header.raw).await?;
        Ok(Self::assemble(reader, header.raw, header.manifest, key))
    }

    fn assemble(inner: R, raw: RawHeader, manifest: Manifest, key: DataKey) -> Self {
        let chunk_size = raw.chunk_size as usize;
        let stream_bytes = raw.encoded_len() as u64;
        DecryptReader {
            inner,
            state: Opener {
                key,
                aad: raw.bytes,
                nonce_prefix: raw.nonce_prefix,
                chunk_size,
                sealed: vec![0; chunk_size + TAG_LEN + 1],
                filled: 0,
                plain: Zeroizing::new(vec![0; chunk_size]),
                plain_pos: 0,
                plain_end: 0,
                next_index: 0,
                phase: Phase::Chunks,
                master_key: raw.master_key,
                manifest,
                chunks: 0,
                plaintext_bytes: 0,
                stream_bytes,
            },
        }
    }

    /// The master key that wraps this stream's data key.
    pub fn master_key(&self) -> &MasterKeyRef {
        &self.state.master_key
    }

    /// The stream's manifest (authenticated).
    pub fn manifest(&self) -> &Manifest {
        &self.state.manifest
    }

    /// Whether the final chunk has authenticated with nothing after it: the whole stream is
    /// genuine (its last plaintext may still be waiting to be read).
    pub fn is_complete(&self) -> bool {
        matches!(self.state.phase, Phase::Complete)
    }

    /// What has been authenticated so far.
    pub fn summary(&self) -> StreamSummary {
        let s = &self.state;
        StreamSummary {
            master_key: s.master_key.clone(),
            manifest: s.manifest.clone(),
            chunk_size: s.chunk_size as u32,
            chunks: s.chunks,
            plaintext_bytes: s.plaintext_bytes,
            stream_bytes: s.stream_bytes,
        }
    }
}

impl Opener {
    /// Makes plaintext available (or finds the end or a fault).
    fn poll_fill<R: AsyncRead>(
        &mut self,
        mut inner: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.plain_pos < self.plain_end {
                return Poll::Ready(Ok(()));
            }
            match &self.phase {
                Phase::Chunks => {}
                Phase::Complete => return Poll::Ready(Ok(())),
                Phase::Failed(error) => return Poll::Ready(Err(error.clone().into())),
            }
            let piece = self.chunk_size + TAG_LEN;
            let mut at_end = false;
            while self.filled < piece + 1 {
                let mut buf = ReadBuf::new(&mut self.sealed[self.filled..]);
                ready!(inner.as_mut().poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                if n == 0 {
                    at_end = true;
                    break;
                }
                self.filled += n;
                self.stream_bytes += n as u64;
            }
            if let Err(fault) = self.open_chunk(at_end) {
                let error = tampered(fault);
                self.phase = Phase::Failed(error.clone());
                return Poll::Ready(Err(error.into()));
            }
        }
    }

    /// Opens the chunk in `sealed`: a non-final one when a byte follows it, the final one when
    /// the stream ends right after it.
    fn open_chunk(&mut self, at_end: bool) -> std::result::Result<(), StreamFault> {
        let piece = self.chunk_size + TAG_LEN;
        let index = self.next_index;
        if !at_end {
            if !self.try_open(index, FLAG_CHUNK) {
                return Err(self.diagnose(index, false));
            }
            self.sealed[0] = self.sealed[piece];
            self.filled = 1;
            self.plain_pos = 0;
            self.plain_end = self.chunk_size;
            // A non-final chunk at u32::MAX cannot authenticate: writers never seal one.
            self.next_index = index.wrapping_add(1);
        } else if self.filled == piece {
            if !self.try_open(index, FLAG_FINAL) {
                return Err(self.diagnose(index, true));
            }
            let Some(end) = unpad(&self.plain) else {
                // Authenticated, so written by a faulty writer holding the key.
                self.plain.fill(0);
                return Err(StreamFault::ChunkAuthentication {
                    index: index.into(),
                });
            };
            self.filled = 0;
            self.plain_pos = 0;
            self.plain_end = end;
            self.phase = Phase::Complete;
        } else {
            return Err(StreamFault::Truncated {
                chunks: index.into(),
            });
        }
        self.chunks += 1;
        self.plaintext_bytes += self.plain_end as u64;
        Ok(())
    }

    fn try_open(&mut self, index: u32, flag: u8) -> bool {
        let (ciphertext, rest) = self.sealed.split_at(self.chunk_size);
        open_into(
            &self.key,
            &nonce(&self.nonce_prefix, index, flag),
            &self.aad,
            ciphertext,
            &rest[..TAG_LEN],
            &mut self.plain,
        )
    }

    /// Why the chunk read at `index` did not open: a chunk of this stream in another place, or
    /// a changed one. Only runs on failure; bounded by [`DIAGNOSIS_BUDGET`].
    fn diagnose(&mut self, index: u32, read_as_final: bool) -> StreamFault {
        let fault = self.find_fault(index, read_as_final);
        // A trial may have opened another chunk; none of it is handed out.
        self.plain.fill(0);
        fault
    }

    fn find_fault(&mut self, index: u32, read_as_final: bool) -> StreamFault {
        let position = u64::from(index);
        if read_as_final && self.try_open(index, FLAG_CHUNK) {
            // A genuine non-final chunk with nothing after it.
            return StreamFault::Truncated {
                chunks: position + 1,
            };
        }
        if !read_as_final && self.try_open(index, FLAG_FINAL) {
            // The genuine final chunk, with bytes after it.
            return StreamFault::TrailingData {
                after_chunk: position,
            };
        }
        let piece = self.chunk_size + TAG_LEN;
        let reach = u32::try_from(DIAGNOSIS_BUDGET / (4 * piece))
            .unwrap_or(DIAGNOSIS_MAX_DISTANCE)
            .clamp(1, DIAGNOSIS_MAX_DISTANCE);
        for distance in 1..=reach {
            for candidate in [index.checked_sub(distance), index.checked_add(distance)]
                .into_iter()
                .flatten()
            {
                for flag in [FLAG_CHUNK, FLAG_FINAL] {
                    if self.try_open(candidate, flag) {
                        return StreamFault::ChunkOutOfOrder {
                            position,
                            found: candidate.into(),
                        };
                    }
                }
            }
        }
        StreamFault::ChunkAuthentication { index: position }
    }
}

/// The length of the data before the `80 00 .. 00` padding of a final chunk.
pub(super) fn unpad(chunk: &[u8]) -> Option<usize> {
    let mark = chunk.iter().rposition(|&b| b != 0)?;
    (chunk[mark] == PADDING_MARK).then_some(mark)
}

impl<R: AsyncRead> AsyncRead for DecryptReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = self.project();
        let state = this.state;
        ready!(state.poll_fill(this.inner, cx))?;
        let available = &state.plain[state.plain_pos..state.plain_end];
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        state.plain_pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead> AsyncBufRead for DecryptReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.project();
        let state = this.state;
        ready!(state.poll_fill(this.inner, cx))?;
        Poll::Ready(Ok(&state.plain[state.plain_pos..state.plain_end]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let state = self.project().state;
        state.plain_pos = (state.plain_pos + amt).min(state.plain_end);
    }
}
