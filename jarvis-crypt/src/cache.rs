//! The data-key cache: one provider call per cache window, not per value.
//!
//! **Encrypt side.** One *active* data key per (master key, purpose) serves values until the
//! first of its limits is reached: age ([`CacheLimits::max_age`]), messages
//! ([`CacheLimits::max_messages`]) and bytes ([`CacheLimits::max_bytes`]). Usage is reserved
//! under the slot's lock before the value is encrypted, so no key serves beyond a limit, even
//! under concurrency. Concurrent misses wait on the same lock while one of them calls the
//! provider (single flight): 64 concurrent encrypts on a cold cache make one call. A value
//! larger than `max_bytes` gets a data key of its own, used for that value alone.
//!
//! **Decrypt side.** Unwrapped keys are cached by (wrapped key bytes, purpose) in a bounded
//! [`moka`] cache, which coalesces concurrent loads of one key. Entries expire after
//! [`CacheLimits::unwrap_ttl`], measured on the cache's [`Clock`]; a key is wiped (zeroized)
//! when it is evicted and no value being encrypted or decrypted still holds it. Keys created
//! on the encrypt side enter the decrypt side too, so values just written read back without a
//! provider call.
//!
//! Why a hand-written encrypt side: moka expires entries by the system clock and knows
//! nothing of per-key usage limits; those are checked here against the injected clock,
//! which tests control.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::keys::{DataKey, KeyProvider, KeyPurpose, MasterKeyRef};
use crate::stored::WrappedKey;

/// A source of monotonic time, so tests can control the cache's notion of age.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time elapsed since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Limits of the data-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// How long one data key encrypts new values (default 5 minutes).
    pub max_age: Duration,
    /// How many values one data key encrypts (default 2^20). `1` gives one data key per
    /// value, as the original system did.
    pub max_messages: u64,
    /// How many plaintext bytes one data key encrypts (default 2^32).
    pub max_bytes: u64,
    /// How long an unwrapped key stays cached for decryption (default 5 minutes).
    pub unwrap_ttl: Duration,
    /// How many unwrapped keys the decrypt side holds at most (default 10,000).
    pub max_unwrapped: u64,
    /// How many distinct keys a bulk decrypt unwraps at once (default 16).
    pub unwrap_concurrency: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_age: Duration::from_secs(300),
            max_messages: 1 << 20,
            max_bytes: 1 << 32,
            unwrap_ttl: Duration::from_secs(300),
            max_unwrapped: 10_000,
            unwrap_concurrency: 16,
        }
    }
}

/// A snapshot of the cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Provider calls to generate a data key.
    pub generate_calls: u64,
    /// Provider calls to unwrap a data key.
    pub unwrap_calls: u64,
    /// Provider calls to re-wrap a data key.
    pub rewrap_calls: u64,
    /// Encrypts served by a cached data key.
    pub encrypt_hits: u64,
    /// Encrypts that needed a new data key.
    pub encrypt_misses: u64,
    /// Decrypts served by a cached unwrapped key.
    pub decrypt_hits: u64,
    /// Decrypts that needed an unwrap (several may share one provider call).
    pub decrypt_misses: u64,
    /// Data keys created (equals `generate_calls` unless a call failed).
    pub keys_created: u64,
    /// Unwrapped keys evicted from the decrypt side (expired, pushed out or cleared).
    pub evictions: u64,
}

impl CacheStats {
    /// Every provider call, of all kinds.
    pub fn provider_calls(&self) -> u64 {
        self.generate_calls + self.unwrap_calls + self.rewrap_calls
    }
}

#[derive(Debug, Default)]
struct Counters {
    generate_calls: AtomicU64,
    unwrap_calls: AtomicU64,
    rewrap_calls: AtomicU64,
    encrypt_hits: AtomicU64,
    encrypt_misses: AtomicU64,
    decrypt_hits: AtomicU64,
    decrypt_misses: AtomicU64,
    keys_created: AtomicU64,
    evictions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The data key and wrapped key that encrypt one value.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) key: DataKey,
    pub(crate) wrapped: WrappedKey,
}

struct ActiveKey {
    key: DataKey,
    wrapped: WrappedKey,
    created: Duration,
    messages: u64,
    bytes: u64,
}

impl ActiveKey {
    fn admits(&self, limits: &CacheLimits, now: Duration, len: u64) -> bool {
        now.saturating_sub(self.created) < limits.max_age
            && self.messages < limits.max_messages
            && self.bytes.saturating_add(len) <= limits.max_bytes
    }
}

/// The encrypt side of one (master key, purpose): the active key, and the last failed
/// provider call, shared with the callers that were waiting for it.
#[derive(Default)]
struct SlotState {
    active: tokio::sync::Mutex<Option<ActiveKey>>,
    /// Counts failed provider calls; a caller that sees it move while it waited for the lock
    /// returns `last_failure` instead of calling the provider again.
    failures: AtomicU64,
    last_failure: Mutex<Option<Error>>,
}

type Slot = Arc<SlotState>;
type UnwrapKey = (Vec<u8>, KeyPurpose);

/// A decrypt-side entry. The key sits in a shared holder that the eviction listener empties,
/// so an evicted key is dropped at once, whatever copies of the entry moka still keeps
/// internally until its next maintenance.
#[derive(Clone)]
struct Unwrapped {
    key: Arc<Mutex<Option<DataKey>>>,
    loaded: Duration,
}

impl Unwrapped {
    fn new(key: &DataKey, loaded: Duration) -> Self {
        Unwrapped {
            key: Arc::new(Mutex::new(Some(key.share()))),
            loaded,
        }
    }

    fn share(&self) -> Option<DataKey> {
        lock(&self.key).as_ref().map(DataKey::share)
    }

    fn wipe(&self) {
        lock(&self.key).take();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The data-key cache of one [`Encryptor`](crate::Encryptor). See the module docs.
pub struct DataKeyCache {
    limits: CacheLimits,
    clock: Arc<dyn Clock>,
    active: Mutex<HashMap<(MasterKeyRef, KeyPurpose), Slot>>,
    unwrapped: moka::future::Cache<UnwrapKey, Unwrapped>,
    counters: Arc<Counters>,
}

impl fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DataKeyCache {
    /// A cache with these limits on this clock.
    pub fn new(limits: CacheLimits, clock: Arc<dyn Clock>) -> Self {
        let counters = Arc::new(Counters::default());
        let evicted = Arc::clone(&counters);
        let unwrapped = moka::future::Cache::builder()
            .max_capacity(limits.max_unwrapped)
            // The system-clock TTL only bounds memory; expiry is decided on `clock`.
            .time_to_live(limits.unwrap_ttl)
            .eviction_listener(move |_key, value: Unwrapped, _cause| {
                // The cache lets go of the key; its bytes are wiped when the last value being
                // encrypted or decrypted with it is done.
                value.wipe();
                bump(&evicted.evictions);
            })
            .build();
        DataKeyCache {
            limits,
            clock,
            active: Mutex::new(HashMap::new()),
            unwrapped,
            counters,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            generate_calls: load(&c.generate_calls),
            unwrap_calls: load(&c.unwrap_calls),
            rewrap_calls: load(&c.rewrap_calls),
            encrypt_hits: load(&c.encrypt_hits),
            encrypt_misses: load(&c.encrypt_misses),
            decrypt_hits: load(&c.decrypt_hits),
            decrypt_misses: load(&c.decrypt_misses),
            keys_created: load(&c.keys_created),
            evictions: load(&c.evictions),
        }
    }

    /// Forgets every data key, on both sides: the next encrypt and decrypt call the provider.
    /// Use it when a master key is disabled or compromised.
    pub async fn clear(&self) {
        let slots: Vec<Slot> = lock(&self.active).drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            slot.active.lock().await.take();
        }
        self.unwrapped.invalidate_all();
        self.unwrapped.run_pending_tasks().await;
    }

    /// Runs the decrypt side's pending maintenance (expiry, eviction notifications) now.
    pub async fn run_pending_tasks(&self) {
        self.unwrapped.run_pending_tasks().await;
    }

    fn slot(&self, master_key: MasterKeyRef, purpose: KeyPurpose) -> Slot {
        let mut map = lock(&self.active);
        Arc::clone(map.entry((master_key, purpose)).or_default())
    }

    /// A data key to encrypt one value of `len` bytes, with its usage already counted.
    pub(crate) async fn lease(
        &self,
        provider: &dyn KeyProvider,
        purpose: KeyPurpose,
        len: usize,
    ) -> Result<Lease> {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        let slot = self.slot(provider.master_key(), purpose);
        let failures_seen = slot.failures.load(Ordering::SeqCst);
        let mut active = slot.active.lock().await;
        if let Some(current) = active.as_mut()
            && current.admits(&self.limits, self.clock.now(), len)
        {
            current.messages += 1;
            current.bytes += len;
            bump(&self.counters.encrypt_hits);
            return Ok(Lease {
                key: current.key.share(),
                wrapped: current.wrapped.clone(),
            });
        }
        bump(&self.counters.encrypt_misses);
        // The slot stays locked during the provider call: concurrent misses wait for this
        // key instead of asking for keys of their own.
        bump(&self.counters.generate_calls);
        // The call this caller waited for failed: share its error rather than queue another
        // call behind each waiter (during an outage, N waiters would wait N timeouts).
        if slot.failures.load(Ordering::SeqCst) != failures_seen
            && let Some(error) = lock(&slot.last_failure).clone()
        {
            return Err(error);
        }
        let generated = match provider.generate_data_key(purpose).await {
            Ok(generated) => generated,
            Err(error) => {
                *lock(&slot.last_failure) = Some(error.clone());
                slot.failures.fetch_add(1, Ordering::SeqCst);
                return Err(error);
            }
        };
        bump(&self.counters.keys_created);
        let now = self.clock.now();
        self.unwrapped
            .insert(
                (generated.wrapped.as_bytes().to_vec(), purpose),
                Unwrapped::new(&generated.key, now),
            )
            .await;
        let lease = Lease {
            key: generated.key.share(),
            wrapped: generated.wrapped.clone(),
        };
        *active = if len > self.limits.max_bytes {
            // Too large for the byte limit: this key serves this value alone.
            None
        } else {
            Some(ActiveKey {
                key: generated.key,
                wrapped: generated.wrapped,
                created: now,
                messages: 1,
                bytes: len,
            })
        };
        Ok(lease)
    }

    /// The unwrapped data key of `wrapped`, from the cache or the provider.
    pub(crate) async fn unwrap(
        &self,
        provider: &dyn KeyProvider,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
    ) -> Result<DataKey> {
        let cache_key = (wrapped.as_bytes().to_vec(), purpose);
        if let Some(entry) = self.unwrapped.get(&cache_key).await {
            if self.clock.now().saturating_sub(entry.loaded) < self.limits.unwrap_ttl
                && let Some(key) = entry.share()
            {
                bump(&self.counters.decrypt_hits);
                return Ok(key);
            }
            self.unwrapped.invalidate(&cache_key).await;
        }
        bump(&self.counters.decrypt_misses);
        let counters = &self.counters;
        let clock = &self.clock;
        let entry = self
            .unwrapped
            .try_get_with(cache_key, async move {
                bump(&counters.unwrap_calls);
                let key = provider.unwrap_data_key(wrapped, purpose).await?;
                Ok::<_, Error>(Unwrapped::new(&key, clock.now()))
            })
            .await
            .map_err(|e: Arc<Error>| (*e).clone())?;
        // Evicted between loading and here only under extreme pressure: ask once more.
        match entry.share() {
            Some(key) => Ok(key),
            None => {
                bump(&self.counters.unwrap_calls);
                provider.unwrap_data_key(wrapped, purpose).await
            }
        }
    }

    /// Unwraps each distinct key of `wrapped` once, at most
    /// [`CacheLimits::unwrap_concurrency`] at a time. Returns the distinct keys' results and,
    /// for each input in order, the index of its result.
    pub(crate) async fn unwrap_many<'a>(
        &self,
        provider_for: impl Fn(&WrappedKey) -> Result<&'a dyn KeyProvider>,
        wrapped: &[(&WrappedKey, KeyPurpose)],
    ) -> (Vec<Result<DataKey>>, Vec<usize>) {
        let mut distinct: HashMap<(&[u8], KeyPurpose), usize> = HashMap::new();
        let mut order = Vec::with_capacity(wrapped.len());
        let mut jobs = Vec::new();
        // Rows written together share their data key, so a page read in order is mostly runs
        // of one key: comparing with the previous value spares hashing every wrapped key.
        let mut previous: Option<((&[u8], KeyPurpose), usize)> = None;
        for (key, purpose) in wrapped {
            let this = (key.as_bytes(), *purpose);
            let index = match previous {
                Some((last, index)) if last == this => index,
                _ => {
                    let next = distinct.len();
                    *distinct.entry(this).or_insert_with(|| {
                        jobs.push((*key, *purpose));
                        next
                    })
                }
            };
            previous = Some((this, index));
            order.push(index);
        }
        let permits = tokio::sync::Semaphore::new(self.limits.unwrap_concurrency.max(1));
        let unwraps = jobs
            .iter()
            .map(|&(key, purpose)| self.unwrap_bounded(&permits, provider_for(key), key, purpose));
        (futures::future::join_all(unwraps).await, order)
    }

    async fn unwrap_bounded(
        &self,
        permits: &tokio::sync::Semaphore,
        provider: Result<&dyn KeyProvider>,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
    ) -> Result<DataKey> {
        let provider = provider?;
        // The semaphore is never closed, so acquiring cannot fail.
        let _permit = permits.acquire().await.ok();
        self.unwrap(provider, wrapped, purpose).await
    }

    /// Counts a re-wrap call made outside the cache.
    pub(crate) fn count_rewrap(&self) {
        bump(&self.counters.rewrap_calls);
    }
}
