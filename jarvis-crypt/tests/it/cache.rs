//! The data-key cache: limits on a controlled clock, single flight, bulk unwrap, wiping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jarvis_crypt::{
    Binding, CacheLimits, DataKey, Encryptor, GeneratedDataKey, KeyProvider, KeyPurpose,
    LocalKeyProvider, ManualClock, MasterKeyRef, ProviderKind, Result, StoredField, WipeWatch,
    WrappedKey,
};

/// A real local provider that counts its calls, keeps a watch on every key it hands out,
/// and can take time to answer (so concurrent callers really overlap).
#[derive(Debug)]
struct Recording {
    inner: LocalKeyProvider,
    delay: Duration,
    generated: AtomicUsize,
    unwrapped: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    handed_out: Mutex<Vec<WipeWatch>>,
    failing: std::sync::atomic::AtomicBool,
}

impl Recording {
    fn new(delay: Duration) -> Arc<Self> {
        Self::with_key(LocalKeyProvider::generate(), delay)
    }

    fn with_key(inner: LocalKeyProvider, delay: Duration) -> Arc<Self> {
        Arc::new(Recording {
            inner,
            delay,
            generated: AtomicUsize::new(0),
            unwrapped: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            handed_out: Mutex::new(Vec::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn slow(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn record(&self, key: &DataKey) {
        self.handed_out.lock().expect("lock").push(key.wipe_watch());
    }

    fn wiped(&self) -> (usize, usize) {
        let watches = self.handed_out.lock().expect("lock");
        (
            watches.iter().filter(|w| w.is_wiped()).count(),
            watches.len(),
        )
    }
}

#[async_trait]
impl KeyProvider for Recording {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    fn master_key(&self) -> MasterKeyRef {
        self.inner.master_key()
    }
    async fn generate_data_key(&self, purpose: KeyPurpose) -> Result<GeneratedDataKey> {
        self.generated.fetch_add(1, Ordering::SeqCst);
        self.slow().await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(jarvis_crypt::Error::ProviderUnavailable {
                attempts: 3,
                message: "injected outage".into(),
            });
        }
        let generated = self.inner.generate_data_key(purpose).await?;
        self.record(&generated.key);
        Ok(generated)
    }
    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        self.unwrapped.fetch_add(1, Ordering::SeqCst);
        self.slow().await;
        let key = self.inner.unwrap_data_key(wrapped, purpose).await?;
        self.record(&key);
        Ok(key)
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

fn place(row: i64) -> Binding<'static> {
    Binding::new("users", "encrypted_email", row)
}

fn setup(limits: CacheLimits) -> (Arc<Recording>, Arc<ManualClock>, Encryptor) {
    let provider = Recording::new(Duration::from_millis(2));
    let clock = Arc::new(ManualClock::new());
    let enc = Encryptor::builder(provider.clone())
        .cache_limits(limits)
        .clock(clock.clone())
        .build();
    (provider, clock, enc)
}

async fn key_of(enc: &Encryptor, len: usize) -> WrappedKey {
    enc.encrypt(&place(1), &vec![b'x'; len])
        .await
        .expect("encrypt")
        .data_key
}

#[tokio::test]
async fn age_limit() {
    let limits = CacheLimits {
        max_age: Duration::from_secs(60),
        ..CacheLimits::default()
    };
    let (provider, clock, enc) = setup(limits);
    let first = key_of(&enc, 10).await;
    clock.advance(Duration::from_secs(59));
    assert_eq!(key_of(&enc, 10).await, first, "reused within its age");
    clock.advance(Duration::from_secs(1));
    let second = key_of(&enc, 10).await;
    assert_ne!(second, first, "never used at its max age");
    assert_eq!(provider.generated.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn message_limit() {
    let limits = CacheLimits {
        max_messages: 3,
        ..CacheLimits::default()
    };
    let (provider, _clock, enc) = setup(limits);
    let mut keys = Vec::new();
    for _ in 0..7 {
        keys.push(key_of(&enc, 1).await);
    }
    assert!(keys[..3].iter().all(|k| *k == keys[0]));
    assert!(keys[3..6].iter().all(|k| *k == keys[3]));
    assert_ne!(keys[0], keys[3]);
    assert_ne!(keys[3], keys[6]);
    assert_eq!(provider.generated.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn byte_limit() {
    let limits = CacheLimits {
        max_bytes: 100,
        ..CacheLimits::default()
    };
    let (provider, _clock, enc) = setup(limits);
    let a = key_of(&enc, 60).await;
    let b = key_of(&enc, 40).await; // exactly 100: still within
    let c = key_of(&enc, 1).await; // 101: a new key
    assert_eq!(a, b);
    assert_ne!(b, c);
    // A value larger than the limit gets a key of its own, which serves nothing else.
    let big = key_of(&enc, 101).await;
    assert_ne!(big, c);
    let after = key_of(&enc, 1).await;
    assert_ne!(after, big);
    assert_eq!(provider.generated.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn limits_together_first_one_wins() {
    let limits = CacheLimits {
        max_age: Duration::from_secs(10),
        max_messages: 5,
        max_bytes: 50,
        ..CacheLimits::default()
    };
    let (provider, clock, enc) = setup(limits);
    // Bytes run out first (4 x 12 = 48, the fifth would make 60).
    let k1 = key_of(&enc, 12).await;
    for _ in 0..3 {
        assert_eq!(key_of(&enc, 12).await, k1);
    }
    let k2 = key_of(&enc, 12).await;
    assert_ne!(k1, k2);
    // Then messages (5 x 1 byte after the 12 already counted).
    for _ in 0..4 {
        assert_eq!(key_of(&enc, 1).await, k2);
    }
    let k3 = key_of(&enc, 1).await;
    assert_ne!(k2, k3);
    // Then age.
    clock.advance(Duration::from_secs(10));
    let k4 = key_of(&enc, 1).await;
    assert_ne!(k3, k4);
    assert_eq!(provider.generated.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_make_one_provider_call() {
    let (provider, _clock, enc) = setup(CacheLimits::default());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let enc = enc.clone();
            tokio::spawn(async move { enc.encrypt(&place(i), b"value").await })
        })
        .collect();
    let mut keys = std::collections::HashSet::new();
    for task in tasks {
        keys.insert(task.await.expect("join").expect("encrypt").data_key);
    }
    assert_eq!(provider.generated.load(Ordering::SeqCst), 1);
    assert_eq!(keys.len(), 1);
    assert_eq!(enc.stats().generate_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_encrypts_with_a_message_limit_of_100() {
    let limits = CacheLimits {
        max_messages: 100,
        ..CacheLimits::default()
    };
    let (provider, _clock, enc) = setup(limits);
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let enc = enc.clone();
            tokio::spawn(async move { enc.encrypt(&place(i), b"value").await })
        })
        .collect();
    let mut uses: std::collections::HashMap<WrappedKey, usize> = Default::default();
    for task in tasks {
        let stored = task.await.expect("join").expect("encrypt");
        *uses.entry(stored.data_key).or_default() += 1;
    }
    assert_eq!(provider.generated.load(Ordering::SeqCst), 10);
    assert_eq!(uses.len(), 10);
    assert!(uses.values().all(|&n| n == 100), "{uses:?}");
    let stats = enc.stats();
    assert_eq!(
        (stats.keys_created, stats.encrypt_misses, stats.encrypt_hits),
        (10, 10, 990)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_decrypt_unwraps_each_distinct_key_once_concurrently() {
    let limits = CacheLimits {
        max_messages: 3334,
        ..CacheLimits::default()
    };
    let master = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";
    let local = || LocalKeyProvider::from_hex(master).expect("key");
    let writer = Recording::with_key(local(), Duration::from_millis(1));
    let enc = Encryptor::builder(writer.clone())
        .cache_limits(limits)
        .build();
    let mut stored: Vec<StoredField> = Vec::new();
    for i in 0..10_000 {
        stored.push(
            enc.encrypt(&place(i), format!("user{i}@example.com").as_bytes())
                .await
                .expect("encrypt"),
        );
    }
    let distinct: std::collections::HashSet<_> = stored.iter().map(|s| &s.data_key).collect();
    assert_eq!(distinct.len(), 3);

    // A reader with a cold cache over the same master key.
    let reader = Recording::with_key(local(), Duration::from_millis(50));
    let enc = Encryptor::builder(reader.clone()).build();
    let bindings: Vec<Binding<'static>> = (0..10_000).map(place).collect();
    let items: Vec<_> = bindings.iter().copied().zip(stored.iter()).collect();
    let values = enc.decrypt_many(&items).await;
    for (i, value) in values.into_iter().enumerate() {
        assert_eq!(
            value.expect("decrypt"),
            format!("user{i}@example.com").as_bytes()
        );
    }
    assert_eq!(reader.unwrapped.load(Ordering::SeqCst), 3);
    assert_eq!(enc.stats().unwrap_calls, 3);
    assert_eq!(
        reader.max_in_flight.load(Ordering::SeqCst),
        3,
        "unwraps overlap"
    );

    // Interleaved keys (no runs), with two bad values among them: every good value still
    // opens under its own key, each bad one fails alone, and no key is unwrapped again.
    let order: Vec<usize> = (0..10_000).map(|i| (i * 7919) % 10_000).collect();
    let mut shuffled: Vec<StoredField> = order.iter().map(|&i| stored[i].clone()).collect();
    let mut tag = shuffled[17].tag.as_bytes().to_vec();
    tag[0] ^= 1;
    shuffled[17].tag = jarvis_crypt::AuthTag::new(tag).expect("tag");
    let foreign = Encryptor::builder(Arc::new(LocalKeyProvider::generate())).build();
    shuffled[4242] = foreign
        .encrypt(&place(order[4242] as i64), b"elsewhere")
        .await
        .expect("encrypt");
    let bindings: Vec<Binding<'static>> = order.iter().map(|&i| place(i as i64)).collect();
    let items: Vec<_> = bindings.iter().copied().zip(shuffled.iter()).collect();
    let values = enc.decrypt_many(&items).await;
    for (k, value) in values.into_iter().enumerate() {
        match k {
            17 => assert!(
                matches!(value, Err(jarvis_crypt::Error::AuthenticationFailed)),
                "{value:?}"
            ),
            4242 => assert!(
                matches!(value, Err(jarvis_crypt::Error::UnknownMasterKey { .. })),
                "{value:?}"
            ),
            _ => assert_eq!(
                value.expect("decrypt"),
                format!("user{}@example.com", order[k]).as_bytes()
            ),
        }
    }
    // The three keys came from the cache; the one new call is the foreign key's (refused).
    assert_eq!(reader.unwrapped.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn eviction_and_clear_wipe_keys() {
    let limits = CacheLimits {
        max_messages: 1,
        max_unwrapped: 2,
        ..CacheLimits::default()
    };
    let (provider, _clock, enc) = setup(limits);
    // Eight keys, one per value; the decrypt side holds at most two of them.
    for i in 0..8 {
        enc.encrypt(&place(i), b"v").await.expect("encrypt");
    }
    enc.cache().run_pending_tasks().await;
    let (wiped, total) = provider.wiped();
    assert_eq!(total, 8);
    // At least six of the eight were evicted; each is wiped, except the newest, which the
    // encrypt side still holds as its active key if it was the one evicted.
    let evictions = enc.stats().evictions;
    assert!(evictions >= 6, "{evictions} evictions");
    assert!(
        wiped + 1 >= evictions as usize,
        "evicted keys are wiped: {wiped} of {total}"
    );
    enc.cache().clear().await;
    assert_eq!(provider.wiped(), (8, 8), "clear wipes every key");
}

#[tokio::test]
async fn expiry_on_the_clock_wipes_and_reloads() {
    let (provider, clock, enc) = setup(CacheLimits::default());
    let stored = enc.encrypt(&place(1), b"v").await.expect("encrypt");
    enc.decrypt(&place(1), &stored).await.expect("decrypt");
    assert_eq!(
        provider.unwrapped.load(Ordering::SeqCst),
        0,
        "written key is cached"
    );
    clock.advance(Duration::from_secs(301));
    enc.decrypt(&place(1), &stored).await.expect("decrypt");
    assert_eq!(
        provider.unwrapped.load(Ordering::SeqCst),
        1,
        "expired on the clock"
    );
}

#[tokio::test]
async fn clear_forces_provider_calls() {
    let (provider, _clock, enc) = setup(CacheLimits::default());
    let stored = enc.encrypt(&place(1), b"v").await.expect("encrypt");
    enc.encrypt(&place(2), b"v").await.expect("encrypt");
    enc.decrypt(&place(1), &stored).await.expect("decrypt");
    assert_eq!(provider.generated.load(Ordering::SeqCst), 1);
    assert_eq!(provider.unwrapped.load(Ordering::SeqCst), 0);
    enc.cache().clear().await;
    enc.encrypt(&place(3), b"v").await.expect("encrypt");
    enc.decrypt(&place(1), &stored).await.expect("decrypt");
    assert_eq!(provider.generated.load(Ordering::SeqCst), 2);
    assert_eq!(provider.unwrapped.load(Ordering::SeqCst), 1);
    let stats = enc.stats();
    assert_eq!(stats.provider_calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_call_is_shared_with_the_callers_waiting_for_it() {
    let (provider, _clock, enc) = setup(CacheLimits::default());
    provider.failing.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let enc = enc.clone();
            tokio::spawn(async move { enc.encrypt(&place(i), b"value").await })
        })
        .collect();
    for task in tasks {
        let err = task.await.expect("join").expect_err("outage");
        assert!(
            matches!(err, jarvis_crypt::Error::ProviderUnavailable { .. }),
            "{err}"
        );
    }
    // The callers that queued behind the failing call got its error; they did not each call
    // the provider in turn (without sharing, that is 32 calls; typically it is 1).
    let calls = provider.generated.load(Ordering::SeqCst);
    assert!(
        calls < 4,
        "{calls} provider calls for 32 concurrent encrypts"
    );
    // After the outage, the next encrypt calls the provider again and succeeds.
    provider.failing.store(false, Ordering::SeqCst);
    enc.encrypt(&place(1), b"value").await.expect("recovered");
    assert_eq!(provider.generated.load(Ordering::SeqCst), calls + 1);
}

#[tokio::test]
async fn an_expired_active_key_is_wiped_at_the_next_access_of_any_kind() {
    let limits = CacheLimits {
        max_age: Duration::from_secs(60),
        unwrap_ttl: Duration::from_secs(60),
        ..CacheLimits::default()
    };
    let (provider, clock, enc) = setup(limits);
    let stored = enc.encrypt(&place(1), b"v").await.expect("encrypt");
    clock.advance(Duration::from_secs(30));
    enc.decrypt(&place(1), &stored).await.expect("decrypt");
    assert_eq!(provider.wiped(), (0, 1), "held within its age");

    clock.advance(Duration::from_secs(31));
    // A decrypt: nothing asks for a new data key, yet the active one is past its age.
    enc.decrypt(&place(1), &stored).await.expect("decrypt");
    let watches = provider.handed_out.lock().expect("lock");
    assert!(
        watches[0].is_wiped(),
        "the key past its age is wiped on both sides"
    );
    assert_eq!(watches.len(), 2, "the decrypt unwrapped it again");
}

#[tokio::test]
async fn run_pending_tasks_wipes_keys_past_their_limits() {
    let limits = CacheLimits {
        max_age: Duration::from_secs(60),
        unwrap_ttl: Duration::from_secs(60),
        ..CacheLimits::default()
    };
    let (provider, clock, enc) = setup(limits);
    enc.encrypt(&place(1), b"v").await.expect("encrypt");
    enc.cache().run_pending_tasks().await;
    assert_eq!(provider.wiped(), (0, 1));
    clock.advance(Duration::from_secs(60));
    enc.cache().run_pending_tasks().await;
    assert_eq!(provider.wiped(), (1, 1));
}

/// On the real clock, with no access at all after the encrypt: the cache's own sweeper wipes
/// the key once it is past its age.
#[tokio::test]
async fn an_idle_cache_wipes_its_key_at_its_age_limit() {
    let provider = Recording::new(Duration::ZERO);
    let limits = CacheLimits {
        max_age: Duration::from_millis(300),
        unwrap_ttl: Duration::from_millis(300),
        ..CacheLimits::default()
    };
    let enc = Encryptor::builder(provider.clone())
        .cache_limits(limits)
        .build();
    let started = std::time::Instant::now();
    enc.encrypt(&place(1), b"v").await.expect("encrypt");
    assert_eq!(provider.wiped(), (0, 1), "held while fresh");
    while provider.wiped() != (1, 1) && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(provider.wiped(), (1, 1), "wiped without any cache access");
    assert!(
        elapsed >= Duration::from_millis(300),
        "never before its age: {elapsed:?}"
    );
    // The cache still works afterwards: a fresh key.
    enc.encrypt(&place(2), b"v").await.expect("encrypt");
    assert_eq!(provider.generated.load(Ordering::SeqCst), 2);
    drop(enc);
}
