//! Load: many tasks encrypting through one shared cache. Every (data key, nonce) pair is
//! checked for repeats, every data key's usage against its limits, and the provider's calls
//! are counted at the provider.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use jarvis_crypt::{
    Binding, CacheLimits, DataKey, Encryptor, GeneratedDataKey, KeyProvider, KeyPurpose,
    LocalKeyProvider, MasterKeyRef, ProviderKind, Result, WrappedKey,
};

/// The local provider, counting the data keys it generates.
#[derive(Debug)]
struct Counting {
    inner: LocalKeyProvider,
    generated: AtomicU64,
}

#[async_trait]
impl KeyProvider for Counting {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    fn master_key(&self) -> MasterKeyRef {
        self.inner.master_key()
    }
    fn can_unwrap(&self, master_key: &MasterKeyRef) -> bool {
        self.inner.can_unwrap(master_key)
    }
    async fn generate_data_key(&self, purpose: KeyPurpose) -> Result<GeneratedDataKey> {
        self.generated.fetch_add(1, Ordering::SeqCst);
        self.inner.generate_data_key(purpose).await
    }
    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        self.inner.unwrap_data_key(wrapped, purpose).await
    }
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        self.inner.rewrap_data_key(wrapped, purpose, to).await
    }
}

/// One encrypted value, reduced to what the checks need: its data key (a hash of the
/// wrapped bytes: distinct keys have distinct wrapped bytes), its nonce, its length.
type Seen = (u64, [u8; 12], u32);

/// `tasks` tasks encrypt `per_task` values each, of `len(i)` bytes, through one encryptor.
async fn encrypt_concurrently(
    limits: CacheLimits,
    tasks: usize,
    per_task: usize,
    len: fn(usize) -> usize,
) -> (Vec<Seen>, u64, Encryptor) {
    let provider = Arc::new(Counting {
        inner: LocalKeyProvider::generate(),
        generated: AtomicU64::new(0),
    });
    let encryptor = Encryptor::builder(provider.clone())
        .cache_limits(limits)
        .build();
    let hasher = RandomState::new();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let encryptor = encryptor.clone();
            let hasher = hasher.clone();
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(per_task);
                let payload = vec![0x5Au8; 4096];
                for i in 0..per_task {
                    let id = (task * per_task + i) as i64;
                    let n = len(i);
                    let binding = Binding::new("load", "encrypted_value", id);
                    let stored = encryptor
                        .encrypt(&binding, &payload[..n])
                        .await
                        .expect("encrypt");
                    let nonce: [u8; 12] = stored.nonce.as_bytes().try_into().expect("12 bytes");
                    seen.push((hasher.hash_one(stored.data_key.as_bytes()), nonce, n as u32));
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tasks * per_task);
    for handle in handles {
        all.extend(handle.await.expect("task"));
    }
    let generated = provider.generated.load(Ordering::SeqCst);
    (all, generated, encryptor)
}

/// Per data key: (values, bytes).
fn usage(seen: &[Seen]) -> HashMap<u64, (u64, u64)> {
    let mut per_key: HashMap<u64, (u64, u64)> = HashMap::new();
    for (key, _, len) in seen {
        let entry = per_key.entry(*key).or_default();
        entry.0 += 1;
        entry.1 += u64::from(*len);
    }
    per_key
}

fn assert_no_repeated_nonce(seen: &[Seen]) {
    let mut pairs = HashSet::with_capacity(seen.len());
    for (key, nonce, _) in seen {
        assert!(
            pairs.insert((*key, *nonce)),
            "a (data key, nonce) pair repeated"
        );
    }
    assert_eq!(pairs.len(), seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_values_from_32_tasks_repeat_no_nonce_and_respect_the_message_limit() {
    const VALUES: u64 = 1_000_000;
    let limits = CacheLimits {
        max_messages: 50_000,
        ..CacheLimits::default()
    };
    let (seen, generated, encryptor) =
        encrypt_concurrently(limits, 32, (VALUES / 32) as usize, |i| 16 + i % 48).await;
    assert_eq!(seen.len() as u64, VALUES);
    assert_no_repeated_nonce(&seen);
    let per_key = usage(&seen);
    for (values, _) in per_key.values() {
        assert!(*values <= 50_000, "a data key encrypted {values} values");
    }
    // Keys are used up before the next is made: exactly VALUES / limit keys, one provider
    // call each, however the 32 tasks interleave.
    assert_eq!(per_key.len() as u64, VALUES.div_ceil(50_000));
    assert_eq!(generated, VALUES.div_ceil(50_000));
    assert_eq!(encryptor.stats().keys_created, generated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_respect_the_byte_limit() {
    // 200,000 values of 100 bytes, at most 1 MiB per data key: the byte limit binds first.
    let limits = CacheLimits {
        max_bytes: 1 << 20,
        ..CacheLimits::default()
    };
    let (seen, generated, _) = encrypt_concurrently(limits, 32, 6_250, |_| 100).await;
    assert_no_repeated_nonce(&seen);
    let per_key = usage(&seen);
    for (_, bytes) in per_key.values() {
        assert!(*bytes <= 1 << 20, "a data key encrypted {bytes} bytes");
    }
    let per_key_values = (1u64 << 20) / 100;
    assert_eq!(generated, 200_000u64.div_ceil(per_key_values));
    assert_eq!(per_key.len() as u64, generated);
}
