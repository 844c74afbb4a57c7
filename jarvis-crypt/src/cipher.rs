//! AES-256-GCM, the one cipher of jarvis-crypt, and the randomness its keys and nonces take.
//!
//! # Randomness
//!
//! Every data key, nonce, root search key, local master key and backup-stream nonce prefix
//! comes straight from the operating system's generator ([`rand::rngs::OsRng`], i.e.
//! `getrandom(2)` on Linux), never from a userspace generator: the state of a userspace
//! generator (such as rand's thread generator, a ChaCha generator reseeded from the OS now
//! and then) is copied by `fork`, so a parent and its child would draw the same "random"
//! nonces and keys until the next reseed. The operating system's generator keeps no state in
//! the process to copy. The price is a system call per draw, one per value encrypted (its
//! nonce), small beside the cost of encrypting and storing the value. A failing generator is
//! an [`Error::Io`], never a silent fallback.
//!
//! # Caller-chosen nonces (`hazmat`)
//!
//! `seal_with_nonce` (with the `hazmat` cargo feature, off by default) and [`open`] are the
//! known-answer API: they take the key and the nonce from the caller and exist for
//! known-answer tests (Wycheproof) and for interoperability with data written elsewhere.
//! **A caller-chosen nonce is dangerous**: reusing a (key, nonce) pair reveals the XOR of two
//! plaintexts and lets an attacker forge tags, so sealing with one needs the feature named
//! for it. Opening is not dangerous and is always there. Applications encrypt through
//! [`Encryptor`](crate::Encryptor), which draws a fresh random 96-bit nonce for every value
//! and limits how many values one data key encrypts.
//!
//! Both functions accept 12-byte nonces (what jarvis writes) and 16-byte nonces (what the
//! earlier Node implementation wrote); any other nonce length, or a tag that is not 16
//! bytes, is an [`Error::InvalidStoredForm`]. The tag is kept apart from the ciphertext, as in
//! the stored form.
//!
//! The functions here are not generic: AES-GCM is compiled in the crate that instantiates it,
//! and instantiating it here lets this crate alone be optimised in debug builds.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::consts::U16;
use aes_gcm::{Aes256Gcm, AesGcm, Nonce as GcmNonce, Tag};

use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::error::{Error, Result};

/// Length of the nonces that jarvis writes.
pub const NONCE_LEN: usize = 12;
/// Length of the nonces of legacy rows, accepted on read.
pub const LEGACY_NONCE_LEN: usize = 16;
/// Length of a GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;

type Aes256Gcm16 = AesGcm<Aes256, U16>;

/// Encrypts `plaintext` under `key` with a caller-chosen `nonce` (12 or 16 bytes).
///
/// Returns the ciphertext (as long as the plaintext) and the 16-byte tag. For known-answer
/// tests and interoperability only, hence behind the `hazmat` feature: see the module
/// documentation.
///
/// ```
/// use jarvis_crypt::cipher;
/// let key = [7u8; 32];
/// let nonce = [1u8; 12];
/// let (ct, tag) = cipher::seal_with_nonce(&key, &nonce, b"users/email", b"a@b.com")?;
/// let pt = cipher::open(&key, &nonce, b"users/email", &ct, &tag)?;
/// assert_eq!(pt, b"a@b.com");
/// # Ok::<(), jarvis_crypt::Error>(())
/// ```
#[cfg(feature = "hazmat")]
pub fn seal_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, [u8; TAG_LEN])> {
    let mut buffer = plaintext.to_vec();
    let tag = match nonce.len() {
        NONCE_LEN => seal_in_place(&Aes256Gcm::new(key.into()), nonce, aad, &mut buffer)?,
        LEGACY_NONCE_LEN => {
            let cipher = Aes256Gcm16::new(key.into());
            let nonce = GcmNonce::<U16>::try_from(nonce).map_err(|_| nonce_length(nonce.len()))?;
            let tag = cipher
                .encrypt_inout_detached(&nonce, aad, buffer.as_mut_slice().into())
                .map_err(|_| Error::stored("plaintext too long for AES-GCM"))?;
            tag.into()
        }
        other => return Err(nonce_length(other)),
    };
    Ok((buffer, tag))
}

/// Encrypts `plaintext` under `key` with a fresh random 12-byte nonce from the operating
/// system's generator; returns the nonce, the ciphertext and the tag.
pub(crate) fn seal_random(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>, [u8; TAG_LEN])> {
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let mut buffer = plaintext.to_vec();
    let tag = seal_in_place(&Aes256Gcm::new(key.into()), &nonce, aad, &mut buffer)?;
    Ok((nonce, buffer, tag))
}

/// Fills `buf` from the operating system's generator (see the module documentation).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    OsRng.try_fill_bytes(buf).map_err(|e| {
        Error::from(std::io::Error::other(format!(
            "the operating system's random generator failed: {e}"
        )))
    })
}

/// `N` bytes from the operating system's generator. Not for keys, which go straight into
/// their wiped-on-drop box: see [`random_key`].
pub(crate) fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// A fresh random 256-bit key, drawn straight into its wiped-on-drop box.
pub(crate) fn random_key() -> Result<secrecy::SecretBox<[u8; KEY_LEN]>> {
    let mut drawn = Ok(());
    let key = secrecy::SecretBox::init_with_mut(|bytes: &mut [u8; KEY_LEN]| {
        drawn = fill_random(bytes);
    });
    drawn.map(|()| key)
}

/// Decrypts and authenticates `ciphertext` with its separate 16-byte `tag`.
///
/// A nonce of another length than 12 or 16 bytes, or a tag that is not 16 bytes, gives
/// [`Error::InvalidStoredForm`]; a value that does not authenticate gives
/// [`Error::AuthenticationFailed`] and no plaintext.
pub fn open(
    key: &[u8; KEY_LEN],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Vec<u8>> {
    match nonce.len() {
        NONCE_LEN => open_with(&Aes256Gcm::new(key.into()), nonce, aad, ciphertext, tag),
        LEGACY_NONCE_LEN => open_legacy(key, nonce, aad, ciphertext, tag),
        other => Err(nonce_length(other)),
    }
}

/// Seals in place with a prepared cipher and a 12-byte nonce.
pub(crate) fn seal_in_place(
    cipher: &Aes256Gcm,
    nonce: &[u8],
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let nonce = GcmNonce::<aes_gcm::aes::cipher::consts::U12>::try_from(nonce)
        .map_err(|_| nonce_length(nonce.len()))?;
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad, buffer.into())
        .map_err(|_| Error::stored("plaintext too long for AES-GCM"))?;
    Ok(tag.into())
}

/// Opens with a prepared cipher and a 12-byte nonce.
pub(crate) fn open_with(
    cipher: &Aes256Gcm,
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Vec<u8>> {
    let nonce = GcmNonce::<aes_gcm::aes::cipher::consts::U12>::try_from(nonce)
        .map_err(|_| nonce_length(nonce.len()))?;
    let tag = parse_tag(tag)?;
    let mut buffer = ciphertext.to_vec();
    match cipher.decrypt_inout_detached(&nonce, aad, buffer.as_mut_slice().into(), &tag) {
        Ok(()) => Ok(buffer),
        Err(_) => Err(Error::AuthenticationFailed),
    }
}

/// Opens a value with a 16-byte nonce (legacy rows).
pub(crate) fn open_legacy(
    key: &[u8; KEY_LEN],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<Vec<u8>> {
    let nonce = GcmNonce::<U16>::try_from(nonce).map_err(|_| nonce_length(nonce.len()))?;
    let tag = parse_tag(tag)?;
    let cipher = Aes256Gcm16::new(key.into());
    let mut buffer = ciphertext.to_vec();
    match cipher.decrypt_inout_detached(&nonce, aad, buffer.as_mut_slice().into(), &tag) {
        Ok(()) => Ok(buffer),
        Err(_) => Err(Error::AuthenticationFailed),
    }
}

fn parse_tag(tag: &[u8]) -> Result<Tag> {
    Tag::try_from(tag).map_err(|_| {
        Error::stored(format!(
            "authentication tag is {} bytes, expected {TAG_LEN}",
            tag.len()
        ))
    })
}

fn nonce_length(len: usize) -> Error {
    Error::stored(format!(
        "nonce is {len} bytes, expected {NONCE_LEN} (or {LEGACY_NONCE_LEN} for legacy rows)"
    ))
}

/// A prepared AES-256-GCM instance for a data key (key schedule done once).
pub(crate) fn new_cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}
