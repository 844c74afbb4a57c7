//! Search hashes ("blind indexes"): equality lookups without storing plaintext.
//!
//! A search hash is HMAC-SHA256 of the normalized value under a key of its own per column:
//!
//! ```text
//! column key  = HMAC-SHA256(root search key, "jarvis-crypt search key v1" || 0x00
//!                                            || u32 BE len || table || u32 BE len || column)
//! search hash = HMAC-SHA256(column key, normalize(value)), truncated to `bits` if asked
//! ```
//!
//! so equal values in two columns hash differently, and one column's hashes say nothing of
//! another's. Truncation to N bits (the first ceil(N/8) bytes, the unused low bits of the last
//! byte cleared) makes equal hashes less telling; a lookup through a truncated hash then finds
//! candidates that must be confirmed by decrypting, which the derive's lookup helpers do.
//!
//! # Normalizers
//!
//! `trim` (Unicode white space at both ends), `lowercase` (Unicode lower case), `nfc` (Unicode
//! normalization form C), and `email` = `trim` + `lowercase`. However they are written, they
//! apply in this order: **trim, then lowercase, then NFC**.
//!
//! # The root search key
//!
//! A secret of at least 32 bytes: `ENCRYPTION_SEARCH_SALT` taken as the raw bytes of its value
//! (the original system's variable), or a random key generated once and stored wrapped by
//! the key provider. The documentation's placeholder is refused.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};
use crate::stored::SearchHash;

/// Environment variable holding the root search key.
pub const SEARCH_KEY_VAR: &str = "ENCRYPTION_SEARCH_SALT";
/// The placeholder of the original system's documentation, refused as a key.
pub const PLACEHOLDER_SALT: &str = "your-random-salt-change-in-production";
/// Shortest root search key accepted.
pub const MIN_SEARCH_KEY_LEN: usize = 32;

const COLUMN_KEY_LABEL: &[u8] = b"jarvis-crypt search key v1";
const FINGERPRINT_LABEL: &[u8] = b"jarvis-crypt search key fingerprint v1";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `message` under `key`: the primitive search hashes are built on.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The root search key, from which every column's key is derived.
pub struct SearchKey(SecretBox<Vec<u8>>);

impl fmt::Debug for SearchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchKey").finish_non_exhaustive()
    }
}

impl SearchKey {
    /// A root key from raw bytes: at least 32 bytes, and not the documented placeholder.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        let bytes = SecretBox::new(Box::new(bytes));
        if bytes.expose_secret().as_slice() == PLACEHOLDER_SALT.as_bytes() {
            return Err(Error::Configuration(format!(
                "{SEARCH_KEY_VAR} is the documentation's placeholder; set a random secret of at least {MIN_SEARCH_KEY_LEN} bytes (for example `openssl rand -hex 32`)"
            )));
        }
        let len = bytes.expose_secret().len();
        if len < MIN_SEARCH_KEY_LEN {
            return Err(Error::Configuration(format!(
                "the search key is {len} bytes; at least {MIN_SEARCH_KEY_LEN} are required"
            )));
        }
        Ok(SearchKey(bytes))
    }

    /// `ENCRYPTION_SEARCH_SALT`'s value, as raw bytes; `Ok(None)` when it is not set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(SEARCH_KEY_VAR) {
            Ok(value) => Self::new(value.into_bytes()).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Configuration(format!(
                "{SEARCH_KEY_VAR} is not valid UTF-8"
            ))),
        }
    }

    /// A fresh random 32-byte root key, from the operating system's generator (safe across
    /// `fork`; see [`cipher`](crate::cipher#randomness)).
    ///
    /// # Panics
    ///
    /// When the operating system's generator fails, which it does not on a running Linux,
    /// macOS or BSD system.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; MIN_SEARCH_KEY_LEN];
        if let Err(e) = crate::cipher::fill_random(&mut bytes) {
            panic!("{e}");
        }
        SearchKey(SecretBox::new(Box::new(bytes)))
    }

    /// The raw root key, for storing it wrapped.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The key's fingerprint: HMAC-SHA256 of the fixed label
    /// `"jarvis-crypt search key fingerprint v1"` under the root key. It identifies the key
    /// (recorded once by an explicit step, checked at start, and part of a rotation run's
    /// parameters) without revealing anything of it or of any column key, which are derived
    /// under another label.
    pub fn fingerprint(&self) -> SearchKeyFingerprint {
        SearchKeyFingerprint(hmac_sha256(self.0.expose_secret(), FINGERPRINT_LABEL))
    }

    /// The hasher of one column.
    pub fn column(&self, table: &str, column: &str, spec: SearchSpec) -> ColumnHasher {
        let mut label = Vec::with_capacity(COLUMN_KEY_LABEL.len() + 9 + table.len() + column.len());
        label.extend_from_slice(COLUMN_KEY_LABEL);
        label.push(0);
        crate::aad::put_bytes(&mut label, table.as_bytes());
        crate::aad::put_bytes(&mut label, column.as_bytes());
        let key = hmac_sha256(self.0.expose_secret(), &label);
        // Key schedule once per column: each hash clones the prepared state.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
        let mut key = key;
        zeroize::Zeroize::zeroize(&mut key);
        ColumnHasher { mac, spec }
    }
}

/// The fingerprint of a root search key ([`SearchKey::fingerprint`]): 32 bytes, printed as
/// lower-case hex. Not a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SearchKeyFingerprint(pub [u8; 32]);

impl SearchKeyFingerprint {
    /// Parses the 64 hex digits of [`Display`](fmt::Display).
    pub fn from_hex(hex: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex.trim(), &mut out).map_err(|_| {
            Error::Configuration("a search key fingerprint is 64 hex digits".into())
        })?;
        Ok(SearchKeyFingerprint(out))
    }

    /// The first 8 bytes in hex, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for SearchKeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SearchKeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SearchKeyFingerprint({})", self.short())
    }
}

/// Which normalizers apply. Whatever the order they are given in, they apply as trim, then
/// lowercase, then NFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Normalize {
    /// Remove white space at both ends.
    pub trim: bool,
    /// Unicode lower case.
    pub lowercase: bool,
    /// Unicode normalization form C.
    pub nfc: bool,
}

impl Normalize {
    /// No normalization.
    pub const NONE: Normalize = Normalize {
        trim: false,
        lowercase: false,
        nfc: false,
    };
    /// `email`: trim and lowercase.
    pub const EMAIL: Normalize = Normalize {
        trim: true,
        lowercase: true,
        nfc: false,
    };

    /// Parses `email` or a comma-separated list of `trim`, `lowercase`, `nfc`.
    pub fn parse(list: &str) -> Result<Self> {
        let mut out = Normalize::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "email" => {
                    out.trim = true;
                    out.lowercase = true;
                }
                "trim" => out.trim = true,
                "lowercase" => out.lowercase = true,
                "nfc" => out.nfc = true,
                other => {
                    return Err(Error::Configuration(format!(
                        "unknown normalizer `{other}`, expected one of `email`, `trim`, `lowercase`, `nfc`"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Applies the normalizers in their fixed order.
    pub fn apply<'a>(&self, value: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        let mut out: Cow<'a, str> = Cow::Borrowed(value);
        if self.trim {
            out = match out {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
            };
        }
        if self.lowercase && out.chars().any(|c| c.is_uppercase()) {
            out = Cow::Owned(out.to_lowercase());
        }
        if self.nfc && !unicode_normalization::is_nfc(&out) {
            out = Cow::Owned(out.nfc().collect());
        }
        out
    }
}

/// A normalizer of the application's own (`search(normalize_with = path::to::function)` in
/// the derive): a `fn(&str) -> String` for values such as an SSN written `123-45-6789` or
/// `123456789`. It runs after the built-in normalizers, and the built-in ones run once more
/// on its output (they are idempotent, so a normalizer need not repeat them): a hash is over
/// `builtin(custom(builtin(value)))`.
///
/// It is known by its name (the path as the model spells it), which the lifecycle jobs record
/// in a re-hash run's parameters. Changing what a normalizer does changes every hash it made:
/// re-hash the column afterwards (`rotate --rehash`, see the derive's documentation).
#[derive(Clone, Copy)]
pub struct CustomNormalizer {
    name: &'static str,
    function: fn(&str) -> String,
}

impl CustomNormalizer {
    /// A normalizer named `name` (its path, for messages and run parameters).
    pub const fn new(name: &'static str, function: fn(&str) -> String) -> Self {
        CustomNormalizer { name, function }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What a search hash of `value` is computed over, for a column whose spec normalizes with
    /// `normalize`: the built-in normalizers, this one, then the built-in ones again. Pass the
    /// result to [`Encryptor::search_hash`](crate::Encryptor::search_hash) with the column's
    /// spec (which applies the built-in ones a last time, changing nothing).
    pub fn apply(&self, normalize: Normalize, value: &str) -> String {
        (self.function)(&normalize.apply(value))
    }
}

/// Equal when both the name and the function are.
impl PartialEq for CustomNormalizer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && std::ptr::fn_addr_eq(self.function, other.function)
    }
}

impl Eq for CustomNormalizer {}

impl std::hash::Hash for CustomNormalizer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl fmt::Debug for CustomNormalizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CustomNormalizer").field(&self.name).finish()
    }
}

/// What a search hash of `value` is computed over: the value itself, or a custom
/// normalizer's output ([`CustomNormalizer::apply`]).
pub fn search_input<'a>(
    spec: SearchSpec,
    custom: Option<CustomNormalizer>,
    value: &'a str,
) -> std::borrow::Cow<'a, str> {
    match custom {
        Some(custom) => std::borrow::Cow::Owned(custom.apply(spec.normalize, value)),
        None => std::borrow::Cow::Borrowed(value),
    }
}

/// How a column's search hash is made: normalizers and optional truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SearchSpec {
    /// The normalizers.
    pub normalize: Normalize,
    /// Truncate the hash to this many bits (1 to 256); `None` keeps all 256.
    pub bits: Option<u16>,
}

impl SearchSpec {
    /// A spec; `bits` must be within 1 to 256.
    pub fn new(normalize: Normalize, bits: Option<u16>) -> Result<Self> {
        if let Some(bits) = bits
            && !(1..=256).contains(&bits)
        {
            return Err(Error::Configuration(format!(
                "search hash bits must be between 1 and 256, not {bits}"
            )));
        }
        Ok(SearchSpec { normalize, bits })
    }

    /// Whether equal hashes may come from different values, so candidates must be confirmed.
    pub fn is_truncated(&self) -> bool {
        self.bits.is_some_and(|b| b < 256)
    }
}

/// Computes one column's search hashes.
///
/// It holds the column's HMAC key schedule (the key's inner and outer pads), a secret: like
/// the other secrets of the crate it is not `Clone`, prints nothing of itself in `Debug`, and
/// its state is wiped when it is dropped (the `zeroize` feature of `hmac` and `sha2`). Derive
/// it again with [`SearchKey::column`] where another one is needed.
pub struct ColumnHasher {
    mac: HmacSha256,
    spec: SearchSpec,
}

impl fmt::Debug for ColumnHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnHasher")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl ColumnHasher {
    /// The search hash of `value` after normalization.
    pub fn hash(&self, value: &str) -> SearchHash {
        let normalized = self.spec.normalize.apply(value);
        self.hash_bytes(normalized.as_bytes())
    }

    /// The search hash of bytes, without normalization.
    pub fn hash_bytes(&self, value: &[u8]) -> SearchHash {
        let mut mac = self.mac.clone();
        mac.update(value);
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let bytes = match self.spec.bits {
            // `new` refuses 0; a spec built field by field with `Some(0)` keeps the full hash.
            Some(bits) if (1..256).contains(&bits) => {
                let bits = usize::from(bits);
                let mut out = full[..bits.div_ceil(8)].to_vec();
                let spare = out.len() * 8 - bits;
                if let Some(last) = out.last_mut() {
                    *last &= 0xFFu8 << spare;
                }
                out
            }
            _ => full.to_vec(),
        };
        // 1 to 32 bytes by construction.
        SearchHash::new(bytes).unwrap_or_else(|_| unreachable!())
    }

    /// The spec of this column.
    pub fn spec(&self) -> SearchSpec {
        self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SearchKey {
        SearchKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn digits(value: &str) -> String {
        value.chars().filter(char::is_ascii_digit).collect()
    }

    #[test]
    fn a_custom_normalizer_runs_between_the_built_in_ones() {
        let k = key();
        let spec = SearchSpec::new(Normalize::EMAIL, None).unwrap();
        let custom = Some(CustomNormalizer::new("digits", digits));
        let hash = |v: &str| {
            k.column("p", "ssn_hash", spec)
                .hash(&search_input(spec, custom, v))
        };
        assert_eq!(search_input(spec, custom, " 123-45-6789 "), "123456789");
        assert_eq!(hash("123-45-6789"), hash("123456789"));
        assert_ne!(
            hash("123-45-6789"),
            k.column("p", "ssn_hash", spec).hash("123-45-6789")
        );
        assert_eq!(search_input(spec, None, "x"), "x");
        assert_eq!(format!("{custom:?}"), "Some(CustomNormalizer(\"digits\"))");
    }

    #[test]
    fn refuses_short_and_placeholder_keys() {
        assert!(matches!(
            SearchKey::new(vec![1; 31]),
            Err(Error::Configuration(_))
        ));
        assert!(matches!(
            SearchKey::new(PLACEHOLDER_SALT.as_bytes().to_vec()),
            Err(Error::Configuration(_))
        ));
    }

    #[test]
    fn normalizers_apply_in_fixed_order() {
        let n = Normalize::parse("nfc, lowercase,trim").unwrap();
        assert_eq!(
            n,
            Normalize {
                trim: true,
                lowercase: true,
                nfc: true
            }
        );
        assert_eq!(n.apply("  Cafe\u{0301}@X.COM \n"), "caf\u{e9}@x.com");
        assert_eq!(Normalize::parse("email").unwrap(), Normalize::EMAIL);
        assert!(Normalize::parse("upper").is_err());
    }

    #[test]
    fn columns_have_their_own_keys() {
        let k = key();
        let spec = SearchSpec::new(Normalize::EMAIL, None).unwrap();
        let a = k.column("users", "email_hash", spec).hash("a@b.com");
        let b = k.column("users", "other_hash", spec).hash("a@b.com");
        let c = k.column("users", "email_hash", spec).hash(" A@B.com ");
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn truncation_keeps_leading_bits() {
        let k = key();
        let full = k.column("t", "c", SearchSpec::default()).hash("x");
        let short = k
            .column(
                "t",
                "c",
                SearchSpec::new(Normalize::NONE, Some(12)).unwrap(),
            )
            .hash("x");
        assert_eq!(short.len(), 2);
        assert_eq!(short.as_bytes()[0], full.as_bytes()[0]);
        assert_eq!(short.as_bytes()[1], full.as_bytes()[1] & 0xF0);
        assert!(SearchSpec::new(Normalize::NONE, Some(0)).is_err());
        assert!(SearchSpec::new(Normalize::NONE, Some(257)).is_err());
    }
}
