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
//! **Expiry without traffic.** A key past its limit is wiped even when nothing asks the cache
//! for anything: the active key at [`CacheLimits::max_age`], a decrypt-side key at
//! [`CacheLimits::unwrap_ttl`]. A sweeper thread of the cache (`jarvis-key-expiry`, one per
//! cache, started with its first key and ended when the cache is dropped or holds no key)
//! sleeps until the next key is due and drops it; keys due within a short interval of each
//! other are swept together, so a key is wiped within `min(max_age, unwrap_ttl) / 100`
//! (between 10 ms and 1 s) after its limit, once no value being encrypted or decrypted still
//! holds it. Every encrypt and decrypt also sweeps when a key is due, on the cache's clock,
//! so a [`ManualClock`] moved past a limit takes effect at the next access, and expiry
//! still happens should the thread fail to start. A thread rather than a tokio task: the
//! cache is used from runtimes of every flavour, some built without timers, and from none.
//!
//! Why a hand-written encrypt side: moka expires entries by the system clock and knows
//! nothing of per-key usage limits; those are checked here against the injected clock,
//! which tests control.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::keys::{DataKey, GeneratedDataKey, KeyProvider, KeyPurpose, MasterKeyRef};
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
    /// Encrypts of a batch ([`Encryptor::batch_scope`](crate::Encryptor::batch_scope))
    /// served by the data key the batch already leased, without a lease of their own.
    pub batch_encrypts: u64,
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
    batch_encrypts: AtomicU64,
    keys_created: AtomicU64,
    evictions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The data key and wrapped key that encrypt one value.
pub(crate) struct Lease {
    pub(crate) key: DataKey,
    pub(crate) wrapped: WrappedKey,
    /// The slot the key came from, for [`DataKeyCache::extend`].
    slot: Slot,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("wrapped", &self.wrapped)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Another handle on the same key.
    pub(crate) fn share(&self) -> Lease {
        Lease {
            key: self.key.share(),
            wrapped: self.wrapped.clone(),
            slot: Arc::clone(&self.slot),
        }
    }
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
    /// Keys made ahead of use by [`DataKeyCache::prepare`], oldest first: a lease that finds
    /// the active key spent takes the next one instead of calling the provider. Touched only
    /// under `active`'s lock (and by the sweeper, which drops the expired ones).
    prepared: Mutex<std::collections::VecDeque<Prepared>>,
    /// Counts failed provider calls; a caller that sees it move while it waited for the lock
    /// returns `last_failure` instead of calling the provider again.
    failures: AtomicU64,
    last_failure: Mutex<Option<Error>>,
}

/// A key made ahead of use, and when.
struct Prepared {
    generated: GeneratedDataKey,
    created: Duration,
}

/// The most keys one slot holds ready ([`DataKeyCache::prepare`]).
pub(crate) const MAX_PREPARED_KEYS: usize = 1024;

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

    fn is_held(&self) -> bool {
        lock(&self.key).is_some()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The data-key cache of one [`Encryptor`](crate::Encryptor). See the module docs.
pub struct DataKeyCache {
    shared: Arc<Shared>,
    sweeper: Arc<SweepControl>,
}

/// What the sweeper thread reaches through a [`Weak`]: it never keeps the cache alive.
struct Shared {
    limits: CacheLimits,
    clock: Arc<dyn Clock>,
    active: Mutex<HashMap<(MasterKeyRef, KeyPurpose), Slot>>,
    unwrapped: moka::future::Cache<UnwrapKey, Unwrapped>,
    counters: Arc<Counters>,
    /// When (nanoseconds on `clock`) a cached key is next due to be wiped; `u64::MAX` when
    /// none is known. Accesses sweep once it has passed.
    due: AtomicU64,
    /// The shortest pause between two sweeps.
    interval: Duration,
}

/// Wakes and stops the sweeper thread. Held by the cache and by the thread.
#[derive(Default)]
struct SweepControl {
    state: Mutex<SweepState>,
    wake: Condvar,
}

#[derive(Default)]
struct SweepState {
    /// A sweeper thread is running.
    running: bool,
    /// The cache is dropped: the thread ends.
    closed: bool,
    /// When the thread wakes next (on the cache's clock); `None` while it sweeps.
    wake_at: Option<Duration>,
    /// `wake_at` was moved earlier, or a deadline arrived during a sweep.
    kicked: bool,
}

/// The longest single wait of the sweeper; it then looks at the clock again.
const MAX_SWEEPER_WAIT: Duration = Duration::from_secs(3600);

impl fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("limits", &self.shared.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for DataKeyCache {
    fn drop(&mut self) {
        lock(&self.sweeper.state).closed = true;
        self.sweeper.wake.notify_all();
    }
}

fn nanos(at: Duration) -> u64 {
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Shared {
    /// Wipes every key past its limit at `now`; returns when the next one is due.
    async fn sweep(&self, now: Duration) -> Option<Duration> {
        // Deadlines noted while this runs lower it again (`fetch_min`).
        self.due.store(u64::MAX, Ordering::SeqCst);
        // Entries past moka's own (system-clock) expiry are invisible to `iter`: its
        // maintenance evicts them, and the eviction listener wipes them.
        self.unwrapped.run_pending_tasks().await;
        let mut next = None;
        let slots: Vec<Slot> = lock(&self.active).values().map(Arc::clone).collect();
        for slot in slots {
            {
                let mut prepared = lock(&slot.prepared);
                prepared.retain(|p| now < p.created.saturating_add(self.limits.max_age));
                if let Some(first) = prepared.front() {
                    next = earliest(
                        next,
                        Some(first.created.saturating_add(self.limits.max_age)),
                    );
                }
            }
            let deadline = match slot.active.try_lock() {
                Ok(mut active) => match active.as_ref() {
                    Some(key) => {
                        let deadline = key.created.saturating_add(self.limits.max_age);
                        if now >= deadline {
                            active.take();
                            continue;
                        }
                        deadline
                    }
                    None => continue,
                },
                // An encrypt holds the slot (perhaps waiting for the provider): look again.
                Err(_) => now.saturating_add(self.interval),
            };
            next = earliest(next, Some(deadline));
        }
        for (_, entry) in self.unwrapped.iter() {
            if !entry.is_held() {
                continue;
            }
            let deadline = entry.loaded.saturating_add(self.limits.unwrap_ttl);
            if now >= deadline {
                // Wiped in place; moka drops the emptied entry at its own expiry, and a
                // lookup that finds it empty unwraps again.
                entry.wipe();
            } else {
                next = earliest(next, Some(deadline));
            }
        }
        if let Some(next) = next {
            let at = next.max(now.saturating_add(self.interval));
            self.due.fetch_min(nanos(at), Ordering::SeqCst);
        }
        next
    }

    /// Sweeps when a key is due at `now` (every encrypt and decrypt calls it).
    async fn sweep_if_due(&self, now: Duration) {
        if nanos(now) >= self.due.load(Ordering::Relaxed) {
            self.sweep(now).await;
        }
    }
}

/// The sweeper thread: sleeps until the next key is due, sweeps, and ends when the cache is
/// dropped or holds no key.
fn sweeper(shared: &Weak<Shared>, control: &SweepControl) {
    let mut state = lock(&control.state);
    loop {
        // Wait for the next deadline.
        let now = loop {
            let (Some(cache), Some(wake_at), false) =
                (shared.upgrade(), state.wake_at, state.closed)
            else {
                state.running = false;
                return;
            };
            let now = cache.clock.now();
            drop(cache);
            state.kicked = false;
            if now >= wake_at {
                break now;
            }
            let wait = (wake_at - now).min(MAX_SWEEPER_WAIT);
            state = control
                .wake
                .wait_timeout(state, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        };
        state.wake_at = None;
        drop(state);
        let next = match shared.upgrade() {
            // Not in a runtime: the cache's futures wait on nothing but the cache itself.
            Some(cache) => futures::executor::block_on(cache.sweep(now))
                .map(|next| next.max(now.saturating_add(cache.interval))),
            None => None,
        };
        state = lock(&control.state);
        // A key that arrived during the sweep left its deadline in `wake_at`.
        let arrived = if state.kicked { state.wake_at } else { None };
        state.wake_at = earliest(next, arrived);
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
        let interval = (limits.max_age.min(limits.unwrap_ttl) / 100)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        DataKeyCache {
            shared: Arc::new(Shared {
                limits,
                clock,
                active: Mutex::new(HashMap::new()),
                unwrapped,
                counters,
                due: AtomicU64::new(u64::MAX),
                interval,
            }),
            sweeper: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &CacheLimits {
        &self.shared.limits
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            generate_calls: load(&c.generate_calls),
            unwrap_calls: load(&c.unwrap_calls),
            rewrap_calls: load(&c.rewrap_calls),
            encrypt_hits: load(&c.encrypt_hits),
            encrypt_misses: load(&c.encrypt_misses),
            decrypt_hits: load(&c.decrypt_hits),
            decrypt_misses: load(&c.decrypt_misses),
            batch_encrypts: load(&c.batch_encrypts),
            keys_created: load(&c.keys_created),
            evictions: load(&c.evictions),
        }
    }

    /// Forgets every data key, on both sides: the next encrypt and decrypt call the provider.
    /// Use it when a master key is disabled or compromised.
    pub async fn clear(&self) {
        let slots: Vec<Slot> = lock(&self.shared.active)
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            let mut active = slot.active.lock().await;
            active.take();
            lock(&slot.prepared).clear();
        }
        self.shared.unwrapped.invalidate_all();
        self.shared.unwrapped.run_pending_tasks().await;
    }

    /// Runs the pending maintenance now: keys past their limits on the cache's clock are
    /// wiped, and the decrypt side's expiry and eviction notifications run.
    pub async fn run_pending_tasks(&self) {
        self.shared.sweep(self.shared.clock.now()).await;
    }

    fn slot(&self, master_key: MasterKeyRef, purpose: KeyPurpose) -> Slot {
        let mut map = lock(&self.shared.active);
        Arc::clone(map.entry((master_key, purpose)).or_default())
    }

    /// Makes sure something wipes a key due at `deadline`: the sweeper thread, started if
    /// it is not running, and the sweeps of accesses.
    fn schedule(&self, deadline: Duration) {
        self.shared.due.fetch_min(nanos(deadline), Ordering::SeqCst);
        let mut state = lock(&self.sweeper.state);
        if state.closed {
            return;
        }
        if state.running {
            if state.wake_at.is_none_or(|at| deadline < at) {
                state.wake_at = Some(deadline);
                state.kicked = true;
                self.sweeper.wake.notify_one();
            }
            return;
        }
        state.running = true;
        state.wake_at = Some(deadline);
        drop(state);
        let shared = Arc::downgrade(&self.shared);
        let control = Arc::clone(&self.sweeper);
        let started = std::thread::Builder::new()
            .name("jarvis-key-expiry".into())
            .stack_size(256 * 1024)
            .spawn(move || sweeper(&shared, &control));
        if let Err(e) = started {
            lock(&self.sweeper.state).running = false;
            tracing::warn!(
                error = %e,
                "cannot start the data-key expiry thread; expired keys are wiped at the next cache access"
            );
        }
    }

    /// A data key to encrypt one value of `len` bytes, with its usage already counted.
    /// `generate` makes a new key when the active one is spent: the provider's, or (with a key
    /// vault) one already stored in the vault, whose `wrapped` is its reference.
    pub(crate) async fn lease<G, F>(
        &self,
        master_key: MasterKeyRef,
        purpose: KeyPurpose,
        len: usize,
        generate: G,
    ) -> Result<Lease>
    where
        G: FnOnce() -> F,
        F: Future<Output = Result<GeneratedDataKey>>,
    {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        let shared = &*self.shared;
        shared.sweep_if_due(shared.clock.now()).await;
        let slot = self.slot(master_key, purpose);
        let failures_seen = slot.failures.load(Ordering::SeqCst);
        let mut active = slot.active.lock().await;
        if let Some(current) = active.as_mut()
            && current.admits(&shared.limits, shared.clock.now(), len)
        {
            current.messages += 1;
            current.bytes += len;
            bump(&self.shared.counters.encrypt_hits);
            return Ok(Lease {
                key: current.key.share(),
                wrapped: current.wrapped.clone(),
                slot: Arc::clone(&slot),
            });
        }
        bump(&self.shared.counters.encrypt_misses);
        // The slot stays locked during the provider call: concurrent misses wait for this
        // key instead of asking for keys of their own.
        // The call this caller waited for failed: share its error rather than queue another
        // call behind each waiter (during an outage, N waiters would wait N timeouts).
        let ready = {
            let now = shared.clock.now();
            let mut prepared = lock(&slot.prepared);
            prepared.retain(|p| now < p.created.saturating_add(shared.limits.max_age));
            prepared.pop_front()
        };
        let (generated, now) = match ready {
            // Made ahead (and counted then): no provider call, no vault write now.
            Some(ready) => (ready.generated, ready.created),
            None => {
                bump(&self.shared.counters.generate_calls);
                if slot.failures.load(Ordering::SeqCst) != failures_seen
                    && let Some(error) = lock(&slot.last_failure).clone()
                {
                    return Err(error);
                }
                let generated = match generate().await {
                    Ok(generated) => generated,
                    Err(error) => {
                        *lock(&slot.last_failure) = Some(error.clone());
                        slot.failures.fetch_add(1, Ordering::SeqCst);
                        return Err(error);
                    }
                };
                bump(&self.shared.counters.keys_created);
                let now = shared.clock.now();
                shared
                    .unwrapped
                    .insert(
                        (generated.wrapped.as_bytes().to_vec(), purpose),
                        Unwrapped::new(&generated.key, now),
                    )
                    .await;
                (generated, now)
            }
        };
        let lease = Lease {
            key: generated.key.share(),
            wrapped: generated.wrapped.clone(),
            slot: Arc::clone(&slot),
        };
        let unwrap_deadline = now.saturating_add(shared.limits.unwrap_ttl);
        if len > shared.limits.max_bytes {
            // Too large for the byte limit: this key serves this value alone.
            *active = None;
            self.schedule(unwrap_deadline);
        } else {
            *active = Some(ActiveKey {
                key: generated.key,
                wrapped: generated.wrapped,
                created: now,
                messages: 1,
                bytes: len,
            });
            self.schedule(unwrap_deadline.min(now.saturating_add(shared.limits.max_age)));
        }
        Ok(lease)
    }

    /// Makes the keys ready that the next `values` encrypts of (master key, purpose) need,
    /// beyond what the active key (with at least half its age, at most a minute, still
    /// ahead) and the keys already made ahead admit: `ceil(missing / max_messages)` calls of
    /// `generate`, at most [`MAX_PREPARED_KEYS`] keys held ready. Byte limits are not
    /// foreseen. Returns how many keys it made.
    pub(crate) async fn prepare<G, F>(
        &self,
        master_key: MasterKeyRef,
        purpose: KeyPurpose,
        values: u64,
        generate: G,
    ) -> Result<usize>
    where
        G: Fn() -> F,
        F: Future<Output = Result<GeneratedDataKey>>,
    {
        let shared = &*self.shared;
        let limits = &shared.limits;
        let per_key = limits.max_messages.max(1);
        let slot = self.slot(master_key, purpose);
        // Leases wait while keys are made, as they wait for a provider call.
        let active = slot.active.lock().await;
        let now = shared.clock.now();
        let margin = (limits.max_age / 2).min(Duration::from_secs(60));
        let mut capacity = match active.as_ref() {
            Some(key) if key.admits(limits, now.saturating_add(margin), 0) => {
                per_key.saturating_sub(key.messages)
            }
            _ => 0,
        };
        let held = {
            let mut prepared = lock(&slot.prepared);
            prepared
                .retain(|p| now.saturating_add(margin) < p.created.saturating_add(limits.max_age));
            prepared.len()
        };
        capacity = capacity.saturating_add(per_key.saturating_mul(held as u64));
        let missing = values.saturating_sub(capacity);
        let wanted = usize::try_from(missing.div_ceil(per_key)).unwrap_or(usize::MAX);
        let make = wanted.min(MAX_PREPARED_KEYS.saturating_sub(held));
        for _ in 0..make {
            bump(&shared.counters.generate_calls);
            let generated = generate().await?;
            bump(&shared.counters.keys_created);
            let created = shared.clock.now();
            shared
                .unwrapped
                .insert(
                    (generated.wrapped.as_bytes().to_vec(), purpose),
                    Unwrapped::new(&generated.key, created),
                )
                .await;
            self.schedule(created.saturating_add(limits.unwrap_ttl.min(limits.max_age)));
            lock(&slot.prepared).push_back(Prepared { generated, created });
        }
        drop(active);
        Ok(make)
    }

    /// The key of `held` for one more value of `len` bytes, its usage counted, if that key is
    /// still its slot's active key and its limits admit the value; `None` otherwise (the
    /// caller leases again). What the later encrypts of a batch use: no sweep, no slot
    /// lookup, never a provider call.
    pub(crate) async fn extend(&self, held: &Lease, len: usize) -> Option<Lease> {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        let shared = &*self.shared;
        let mut active = held.slot.active.lock().await;
        let current = active.as_mut()?;
        if current.wrapped != held.wrapped
            || !current.admits(&shared.limits, shared.clock.now(), len)
        {
            return None;
        }
        current.messages += 1;
        current.bytes += len;
        bump(&shared.counters.batch_encrypts);
        Some(held.share())
    }

    /// The unwrapped data key of `wrapped`, from the cache or the provider.
    pub(crate) async fn unwrap(
        &self,
        provider: &dyn KeyProvider,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
    ) -> Result<DataKey> {
        let shared = &*self.shared;
        let now = shared.clock.now();
        shared.sweep_if_due(now).await;
        let cache_key = (wrapped.as_bytes().to_vec(), purpose);
        if let Some(entry) = shared.unwrapped.get(&cache_key).await {
            if now.saturating_sub(entry.loaded) < shared.limits.unwrap_ttl
                && let Some(key) = entry.share()
            {
                bump(&shared.counters.decrypt_hits);
                return Ok(key);
            }
            shared.unwrapped.invalidate(&cache_key).await;
        }
        bump(&shared.counters.decrypt_misses);
        let counters = &shared.counters;
        let clock = &shared.clock;
        let entry = shared
            .unwrapped
            .try_get_with(cache_key, async move {
                bump(&counters.unwrap_calls);
                let key = provider.unwrap_data_key(wrapped, purpose).await?;
                Ok::<_, Error>(Unwrapped::new(&key, clock.now()))
            })
            .await
            .map_err(|e: Arc<Error>| (*e).clone())?;
        self.schedule(entry.loaded.saturating_add(shared.limits.unwrap_ttl));
        // Evicted (or swept) between loading and here only under extreme pressure: ask once
        // more.
        match entry.share() {
            Some(key) => Ok(key),
            None => {
                bump(&shared.counters.unwrap_calls);
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
        let permits = tokio::sync::Semaphore::new(self.shared.limits.unwrap_concurrency.max(1));
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

    /// Whether the unwrapped key of `wrapped` is cached: what a page read checks before it
    /// asks the key vault for the keys it lacks. An entry past its time to live still counts;
    /// its unwrap then asks the vault for that key alone.
    pub(crate) fn holds(&self, wrapped: &[u8], purpose: KeyPurpose) -> bool {
        self.shared
            .unwrapped
            .contains_key(&(wrapped.to_vec(), purpose))
    }

    /// Counts a re-wrap call made outside the cache.
    pub(crate) fn count_rewrap(&self) {
        bump(&self.shared.counters.rewrap_calls);
    }
}
