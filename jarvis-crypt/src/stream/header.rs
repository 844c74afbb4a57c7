//! The header of a backup stream: its encoding, parsing and authentication.

use super::*;

/// The parsed header of a backup stream.
///
/// From [`read_header`] it is not authenticated: it tells what the stream claims to be. A
/// [`DecryptReader`] built from it checks it before the first chunk.
#[derive(Clone)]
pub struct Header {
    pub(super) raw: RawHeader,
    pub(super) manifest: Manifest,
}

impl Header {
    /// The format version.
    pub fn version(&self) -> u8 {
        STREAM_VERSION
    }

    /// The master key that wraps the stream's data key.
    pub fn master_key(&self) -> &MasterKeyRef {
        &self.raw.master_key
    }

    /// The stream's wrapped data key.
    pub fn wrapped_key(&self) -> &WrappedKey {
        &self.raw.wrapped_key
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.raw.chunk_size
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Length of the header on disk, its tag included: the offset of chunk 0.
    pub fn encoded_len(&self) -> usize {
        self.raw.encoded_len()
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("version", &STREAM_VERSION)
            .field("master_key", &self.raw.master_key)
            .field("wrapped_key", &self.raw.wrapped_key)
            .field("chunk_size", &self.raw.chunk_size)
            .field("manifest", &self.manifest)
            .field("encoded_len", &self.encoded_len())
            .finish()
    }
}

/// The header as read, before its manifest is parsed.
#[derive(Clone)]
pub(super) struct RawHeader {
    pub(super) master_key: MasterKeyRef,
    pub(super) wrapped_key: WrappedKey,
    pub(super) chunk_size: u32,
    pub(super) nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub(super) manifest: Range<usize>,
    /// The header's bytes without the tag: the associated data of every chunk.
    pub(super) bytes: Vec<u8>,
    pub(super) tag: [u8; TAG_LEN],
}

impl RawHeader {
    pub(super) fn encoded_len(&self) -> usize {
        self.bytes.len() + TAG_LEN
    }

    pub(super) fn manifest(&self) -> Result<Manifest> {
        Manifest::from_json(&self.bytes[self.manifest.clone()])
    }
}

pub(super) fn provider_code(kind: ProviderKind) -> u8 {
    match kind {
        ProviderKind::Local => 1,
        ProviderKind::AwsKms => 2,
    }
}

pub(super) fn provider_from_code(code: u8) -> Option<ProviderKind> {
    match code {
        1 => Some(ProviderKind::Local),
        2 => Some(ProviderKind::AwsKms),
        _ => None,
    }
}

pub(super) fn nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, flag: u8) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..NONCE_LEN - 1].copy_from_slice(&index.to_be_bytes());
    nonce[NONCE_LEN - 1] = flag;
    nonce
}

/// Opens `ciphertext` into `out` (same length). `out` holds the plaintext only when this
/// returns `true`. Out of place, so a failed attempt leaves the ciphertext as it was for the
/// next one (`cipher::open_with` would allocate a copy per chunk).
pub(super) fn open_into(
    key: &DataKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    out: &mut [u8],
) -> bool {
    let Ok(nonce) = aes_gcm::Nonce::<aes_gcm::aes::cipher::consts::U12>::try_from(&nonce[..])
    else {
        return false;
    };
    let Ok(tag) = aes_gcm::Tag::try_from(tag) else {
        return false;
    };
    let Ok(buffer) = InOutBuf::new(ciphertext, out) else {
        return false;
    };
    key.cipher()
        .decrypt_inout_detached(&nonce, aad, buffer, &tag)
        .is_ok()
}

pub(super) fn encode_header(
    master_key: &MasterKeyRef,
    wrapped_key: &WrappedKey,
    chunk_size: u32,
    nonce_prefix: &[u8; NONCE_PREFIX_LEN],
    manifest: &[u8],
) -> Result<Vec<u8>> {
    let id = master_key.key_id.as_bytes();
    let id_len = u16::try_from(id.len())
        .ok()
        .filter(|&n| n >= 1 && usize::from(n) <= MAX_KEY_ID_LEN)
        .ok_or_else(|| Error::Configuration("master key id must be 1 to 2048 bytes long".into()))?;
    let wrapped_len = u16::try_from(wrapped_key.len())
        .map_err(|_| Error::stored("wrapped data key too long for a backup header"))?;
    let manifest_len = u32::try_from(manifest.len())
        .map_err(|_| Error::Configuration("backup manifest too long".into()))?;
    let mut out = Vec::with_capacity(29 + id.len() + wrapped_key.len() + manifest.len());
    out.extend_from_slice(&STREAM_MAGIC);
    out.push(STREAM_VERSION);
    out.push(provider_code(master_key.provider));
    out.extend_from_slice(&id_len.to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&master_key.version.to_be_bytes());
    out.extend_from_slice(&wrapped_len.to_be_bytes());
    out.extend_from_slice(wrapped_key.as_bytes());
    out.extend_from_slice(&chunk_size.to_be_bytes());
    out.extend_from_slice(nonce_prefix);
    out.extend_from_slice(&manifest_len.to_be_bytes());
    out.extend_from_slice(manifest);
    Ok(out)
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
pub(super) async fn fill<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Reads `N` header bytes, appending them to `header`.
pub(super) async fn take<const N: usize, R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    header: &mut Vec<u8>,
) -> Result<[u8; N]> {
    let mut field = [0u8; N];
    if fill(reader, &mut field).await? < N {
        return Err(tampered(StreamFault::HeaderTruncated));
    }
    header.extend_from_slice(&field);
    Ok(field)
}

/// Reads `len` header bytes (a length already checked against its bound), appending them.
pub(super) async fn take_vec<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    header: &mut Vec<u8>,
    len: usize,
) -> Result<Range<usize>> {
    let start = header.len();
    header.resize(start + len, 0);
    if fill(reader, &mut header[start..]).await? < len {
        return Err(tampered(StreamFault::HeaderTruncated));
    }
    Ok(start..start + len)
}

pub(super) async fn read_raw_header<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
) -> Result<RawHeader> {
    let mut bytes = Vec::with_capacity(512);

    let mut magic = [0u8; 4];
    let got = fill(reader, &mut magic).await?;
    if magic[..got] != STREAM_MAGIC[..got] {
        return Err(Error::stored(
            "not a jarvis backup stream (it does not start with `JVBK`)",
        ));
    }
    if got < magic.len() {
        return Err(tampered(StreamFault::HeaderTruncated));
    }
    bytes.extend_from_slice(&magic);

    let [version] = take::<1, _>(reader, &mut bytes).await?;
    if version != STREAM_VERSION {
        return Err(Error::stored(format!(
            "backup stream format version {version} is not supported (this build reads {STREAM_VERSION})"
        )));
    }
    let [code] = take::<1, _>(reader, &mut bytes).await?;
    let provider = provider_from_code(code)
        .ok_or_else(|| Error::stored(format!("backup stream: unknown key provider code {code}")))?;

    let id_len = usize::from(u16::from_be_bytes(take(reader, &mut bytes).await?));
    if id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return Err(Error::stored(
            "backup stream: master key id length out of range",
        ));
    }
    let id = take_vec(reader, &mut bytes, id_len).await?;
    let key_id = std::str::from_utf8(&bytes[id])
        .map_err(|_| Error::stored("backup stream: master key id is not UTF-8"))?
        .to_owned();
    let key_version = u32::from_be_bytes(take(reader, &mut bytes).await?);
    let master_key = MasterKeyRef {
        provider,
        key_id,
        version: key_version,
    };

    let wrapped_len = usize::from(u16::from_be_bytes(take(reader, &mut bytes).await?));
    if wrapped_len == 0 || wrapped_len > MAX_WRAPPED_KEY_LEN {
        return Err(Error::stored(
            "backup stream: wrapped data key length out of range",
        ));
    }
    let wrapped = take_vec(reader, &mut bytes, wrapped_len).await?;
    let wrapped_key = WrappedKey::new(bytes[wrapped].to_vec())?;
    match wrapped_key.envelope()? {
        KeyEnvelope::Jarvis {
            master_key: ref named,
            ..
        } if *named == master_key => {}
        KeyEnvelope::Jarvis { .. } => return Err(tampered(StreamFault::MasterKeyMismatch)),
        KeyEnvelope::Legacy { .. } => {
            return Err(Error::stored(
                "backup stream: the data key is not in the jarvis wrapped-key envelope",
            ));
        }
    }

    let chunk_size = u32::from_be_bytes(take(reader, &mut bytes).await?);
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(Error::stored(format!(
            "backup stream: chunk size {chunk_size} out of range ({MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})"
        )));
    }
    let nonce_prefix = take::<NONCE_PREFIX_LEN, _>(reader, &mut bytes).await?;

    let manifest_len = u32::from_be_bytes(take(reader, &mut bytes).await?);
    let manifest_len = usize::try_from(manifest_len)
        .ok()
        .filter(|n| (MIN_MANIFEST_LEN..=MAX_MANIFEST_LEN).contains(n))
        .ok_or_else(|| Error::stored("backup stream: manifest length out of range"))?;
    let manifest = take_vec(reader, &mut bytes, manifest_len).await?;

    let mut tag = [0u8; TAG_LEN];
    if fill(reader, &mut tag).await? < TAG_LEN {
        return Err(tampered(StreamFault::HeaderTruncated));
    }
    Ok(RawHeader {
        master_key,
        wrapped_key,
        chunk_size,
        nonce_prefix,
        manifest,
        bytes,
        tag,
    })
}

/// Reads the header of a backup stream: its master key, chunk size and manifest, without any
/// key and **without authenticating it** (use [`verify_stream`] for that).
///
/// Reads exactly the header's bytes, so the reader is left at chunk 0 and can go on into
/// [`DecryptReader::from_header`].
pub async fn read_header<R: AsyncRead + Unpin + ?Sized>(reader: &mut R) -> Result<Header> {
    let raw = read_raw_header(reader).await?;
    let manifest = raw.manifest()?;
    Ok(Header { raw, manifest })
}

/// Unwraps the data key and checks the header tag.
pub(super) async fn open_header<K: BackupKeys + ?Sized>(
    keys: &K,
    raw: &RawHeader,
) -> Result<DataKey> {
    let key = keys
        .unwrap_backup_key(&raw.wrapped_key)
        .await
        .map_err(|e| match e {
            Error::AuthenticationFailed => tampered(StreamFault::DataKey),
            other => other,
        })?;
    let header_nonce = nonce(&raw.nonce_prefix, 0, FLAG_HEADER);
    if !open_into(&key, &header_nonce, &raw.bytes, &[], &raw.tag, &mut []) {
        return Err(tampered(StreamFault::HeaderAuthentication));
    }
    Ok(key)
}
