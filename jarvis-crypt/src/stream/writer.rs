//! [`EncryptWriter`]: sealing a stream chunk by chunk.

use super::*;

pin_project_lite::pin_project! {
    /// Encrypts everything written to it into a backup stream on `W`.
    ///
    /// The header goes out with the first write or flush. Each full chunk is sealed and written
    /// as the next write or a flush comes; `flush` never seals a partial chunk.
    /// [`shutdown`](tokio::io::AsyncWriteExt::shutdown) (or [`finish`](Self::finish), which
    /// leaves `W` open) seals the final chunk: a stream dropped before that is truncated, and
    /// reading it fails. Holds about two chunks of memory.
    pub struct EncryptWriter<W> {
        #[pin]
        inner: W,
        state: Sealer,
    }
}

pub(super) struct Sealer {
    key: DataKey,
    aad: Vec<u8>,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    chunk_size: usize,
    /// Plaintext of the chunk being filled; sealed in place.
    plain: Zeroizing<Vec<u8>>,
    /// Bytes sealed but not yet written (the header first), from `out_pos` on.
    out: Zeroizing<Vec<u8>>,
    out_pos: usize,
    next_index: u32,
    finished: bool,
    master_key: MasterKeyRef,
    manifest: Manifest,
    chunks: u64,
    plaintext_bytes: u64,
    stream_bytes: u64,
}

impl<W> fmt::Debug for EncryptWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.state;
        f.debug_struct("EncryptWriter")
            .field("master_key", &s.master_key)
            .field("chunk_size", &s.chunk_size)
            .field("chunks", &s.chunks)
            .field("plaintext_bytes", &s.plaintext_bytes)
            .field("stream_bytes", &s.stream_bytes)
            .field("finished", &s.finished)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite> EncryptWriter<W> {
    /// Starts a stream on `writer` under a fresh data key from `provider`
    /// ([`KeyProvider::generate_data_key`] for [`KeyPurpose::Backup`]), with its manifest.
    ///
    /// Fails with [`Error::Configuration`] for a chunk size out of range or a manifest that is
    /// too long or has a `created_at` that is not RFC 3339.
    pub async fn new(
        writer: W,
        provider: &dyn KeyProvider,
        manifest: &Manifest,
        options: StreamOptions,
    ) -> Result<Self> {
        let chunk_size = options.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::Configuration(format!(
                "backup chunk size {chunk_size} out of range ({MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})"
            )));
        }
        let manifest_json = manifest.to_json()?;
        let generated = provider.generate_data_key(KeyPurpose::Backup).await?;
        let master_key = match generated.wrapped.envelope()? {
            KeyEnvelope::Jarvis { master_key, .. } => master_key,
            KeyEnvelope::Legacy { .. } => {
                return Err(Error::stored(
                    "the provider returned a data key outside the jarvis envelope",
                ));
            }
        };
        let nonce_prefix: [u8; NONCE_PREFIX_LEN] = cipher::random_array()?;
        let header = encode_header(
            &master_key,
            &generated.wrapped,
            chunk_size,
            &nonce_prefix,
            &manifest_json,
        )?;
        let key = generated.key;
        let header_tag = cipher::seal_in_place(
            key.cipher(),
            &nonce(&nonce_prefix, 0, FLAG_HEADER),
            &header,
            &mut [],
        )?;
        let chunk_size = chunk_size as usize;
        let mut out = Zeroizing::new(Vec::with_capacity(
            (chunk_size + TAG_LEN).max(header.len() + TAG_LEN),
        ));
        out.extend_from_slice(&header);
        out.extend_from_slice(&header_tag);
        Ok(EncryptWriter {
            inner: writer,
            state: Sealer {
                key,
                aad: header,
                nonce_prefix,
                chunk_size,
                plain: Zeroizing::new(Vec::with_capacity(chunk_size + TAG_LEN)),
                out,
                out_pos: 0,
                next_index: 0,
                finished: false,
                master_key,
                manifest: manifest.clone(),
                chunks: 0,
                plaintext_bytes: 0,
                stream_bytes: 0,
            },
        })
    }

    /// The master key that wraps this stream's data key.
    pub fn master_key(&self) -> &MasterKeyRef {
        &self.state.master_key
    }

    /// What has been written so far (complete once the stream is finished).
    pub fn summary(&self) -> StreamSummary {
        self.state.summary()
    }

    /// The writer underneath.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Seals the final chunk, writes everything and flushes `W`, leaving it open (unlike
    /// `shutdown`). Returns `W` and what was written.
    pub async fn finish(mut self) -> Result<(W, StreamSummary)>
    where
        W: Unpin,
    {
        std::future::poll_fn(|cx| Pin::new(&mut self).poll_finish(cx)).await?;
        let summary = self.state.summary();
        Ok((self.inner, summary))
    }

    fn poll_finish(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let state = this.state;
        loop {
            ready!(state.poll_drain(this.inner.as_mut(), cx))?;
            if state.finished {
                break;
            }
            let last = state.plain.len() < state.chunk_size;
            state.seal(last)?;
        }
        this.inner.poll_flush(cx)
    }
}

impl Sealer {
    fn summary(&self) -> StreamSummary {
        StreamSummary {
            master_key: self.master_key.clone(),
            manifest: self.manifest.clone(),
            chunk_size: self.chunk_size as u32,
            chunks: self.chunks,
            plaintext_bytes: self.plaintext_bytes,
            stream_bytes: self.stream_bytes,
        }
    }

    /// Writes what is sealed and not yet written.
    fn poll_drain<W: AsyncWrite>(
        &mut self,
        mut inner: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(inner.as_mut().poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
            self.stream_bytes += n as u64;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals the chunk in `plain` (full unless `last`) into `out`, which must be drained.
    fn seal(&mut self, last: bool) -> Result<()> {
        let index = self.next_index;
        if !last && index == u32::MAX {
            return Err(Error::Configuration(
                "backup stream too long: at most 2^32 chunks (use a larger chunk size)".into(),
            ));
        }
        let flag = if last {
            self.plain.push(PADDING_MARK);
            self.plain.resize(self.chunk_size, 0);
            FLAG_FINAL
        } else {
            FLAG_CHUNK
        };
        let tag = cipher::seal_in_place(
            self.key.cipher(),
            &nonce(&self.nonce_prefix, index, flag),
            &self.aad,
            &mut self.plain,
        )?;
        self.plain.extend_from_slice(&tag);
        std::mem::swap(&mut *self.plain, &mut *self.out);
        self.plain.clear();
        self.out_pos = 0;
        self.chunks += 1;
        if last {
            self.finished = true;
        } else {
            self.next_index = index + 1;
        }
        Ok(())
    }
}

pub(super) fn finished_error() -> io::Error {
    io::Error::other("the backup stream is finished: nothing can be written after its final chunk")
}

impl<W: AsyncWrite> AsyncWrite for EncryptWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let state = this.state;
        if state.finished {
            return Poll::Ready(Err(finished_error()));
        }
        loop {
            ready!(state.poll_drain(this.inner.as_mut(), cx))?;
            if state.plain.len() == state.chunk_size {
                state.seal(false)?;
                continue;
            }
            let n = buf.len().min(state.chunk_size - state.plain.len());
            state.plain.extend_from_slice(&buf[..n]);
            state.plaintext_bytes += n as u64;
            return Poll::Ready(Ok(n));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let state = this.state;
        loop {
            ready!(state.poll_drain(this.inner.as_mut(), cx))?;
            if state.finished || state.plain.len() < state.chunk_size {
                break;
            }
            state.seal(false)?;
        }
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_finish(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}
