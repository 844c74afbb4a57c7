//! Envelope encryption of column values: the API applications and generated code use.
//!
//! [`Encryptor::encrypt`] seals one value under a data key from the cache (which asks the key
//! provider only when its limits say so), with a fresh random 96-bit nonce and the
//! associated data of its [`Binding`]; [`Encryptor::decrypt`] reverses it, choosing the
//! provider by the master key named in the wrapped key. [`Encryptor::decrypt_many`]
//! unwraps each distinct data key of a batch once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use crate::aad::Binding;
use crate::cache::{CacheLimits, CacheStats, Clock, DataKeyCache, Lease, SystemClock};
use crate::cipher::{self, LEGACY_NONCE_LEN, NONCE_LEN};
use crate::error::{Error, Result};
use crate::keys::{
    DataKey, GeneratedDataKey, KeyContext, KeyEnvelope, KeyProvider, KeyPurpose, MasterKeyRef,
    ProviderKind,
};
use crate::search::{ColumnHasher, SearchKey, SearchSpec};
use crate::stored::{AuthTag, Ciphertext, Nonce, SearchHash, StoredField, WrappedKey};
use crate::vault::{DataKeyId, KeyVault, VaultKey};

/// Encrypts and decrypts column values. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Encryptor {
    inner: Arc<Inner>,
    /// Set on a [`batch_scope`](Encryptor::batch_scope): the lease its encrypts share.
    batch: Option<Arc<Mutex<Option<Lease>>>>,
}

struct Inner {
    provider: Arc<dyn KeyProvider>,
    others: Vec<Arc<dyn KeyProvider>>,
    cache: DataKeyCache,
    clock: Arc<dyn Clock>,
    search_key: Option<Arc<SearchKey>>,
    /// Per-column hashers, derived on first use. A list, not a map: an application has a
    /// handful of searchable columns, and a scan of borrowed names spares the two `String`
    /// allocations a map key would cost on every hash.
    hashers: RwLock<Vec<(String, String, SearchSpec, ColumnHasher)>>,
    allow_legacy: bool,
    vault: Option<Arc<dyn KeyVault>>,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("provider", &self.inner.provider)
            .field("others", &self.inner.others)
            .field("cache", &self.inner.cache)
            .field("search_key", &self.inner.search_key.as_ref().map(|_| "set"))
            .field("allow_legacy", &self.inner.allow_legacy)
            .field("vault", &self.inner.vault)
            .finish()
    }
}

/// Builds an [`Encryptor`].
#[derive(Debug)]
pub struct EncryptorBuilder {
    provider: Arc<dyn KeyProvider>,
    others: Vec<Arc<dyn KeyProvider>>,
    limits: CacheLimits,
    clock: Arc<dyn Clock>,
    search_key: Option<SearchKey>,
    allow_legacy: bool,
    vault: Option<Arc<dyn KeyVault>>,
}

impl EncryptorBuilder {
    /// Keep new data keys in `vault` and write 20-byte references to them (see
    /// [`KeyVault`]); read references through it. Without a vault the encryptor writes inline
    /// envelopes, and a reference it reads is a configuration error. Through a provider that
    /// does not bind data-key ids ([`KeyProvider::binds_data_key_ids`]) it keeps writing
    /// inline envelopes.
    pub fn key_vault(mut self, vault: Arc<dyn KeyVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Another provider for decrypting and re-wrapping values under its master keys (during
    /// a migration from one provider or master key to another).
    pub fn decrypt_with(mut self, provider: Arc<dyn KeyProvider>) -> Self {
        self.others.push(provider);
        self
    }

    /// The data-key cache's limits.
    pub fn cache_limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The clock of the data-key cache (tests use a [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The root search key; without one, search hashes cannot be computed.
    pub fn search_key(mut self, key: SearchKey) -> Self {
        self.search_key = Some(key);
        self
    }

    /// Accept legacy rows (16-byte IV, bare KMS blob, no associated data). Off by default.
    pub fn allow_legacy(mut self, allow: bool) -> Self {
        self.allow_legacy = allow;
        self
    }

    /// The encryptor.
    pub fn build(self) -> Encryptor {
        Encryptor {
            inner: Arc::new(Inner {
                provider: self.provider,
                others: self.others,
                cache: DataKeyCache::new(self.limits, Arc::clone(&self.clock)),
                clock: self.clock,
                search_key: self.search_key.map(Arc::new),
                hashers: RwLock::new(Vec::new()),
                allow_legacy: self.allow_legacy,
                vault: self.vault,
            }),
            batch: None,
        }
    }
}

impl Encryptor {
    /// A builder whose provider generates every new data key.
    pub fn builder(provider: Arc<dyn KeyProvider>) -> EncryptorBuilder {
        EncryptorBuilder {
            provider,
            others: Vec::new(),
            limits: CacheLimits::default(),
            clock: Arc::new(SystemClock::default()),
            search_key: None,
            allow_legacy: false,
            vault: None,
        }
    }

    /// An encryptor like this one (providers, search key, settings) whose first encrypt
    /// generates a fresh data key, shared by its later encrypts within the cache limits. For
    /// values that must not share a data key with anything written before, such as OAuth
    /// tokens on refresh.
    pub fn with_fresh_data_key(&self) -> Encryptor {
        let inner = &self.inner;
        Encryptor {
            inner: Arc::new(Inner {
                provider: Arc::clone(&inner.provider),
                others: inner.others.clone(),
                cache: DataKeyCache::new(*inner.cache.limits(), Arc::clone(&inner.clock)),
                clock: Arc::clone(&inner.clock),
                search_key: inner.search_key.clone(),
                hashers: RwLock::new(Vec::new()),
                allow_legacy: inner.allow_legacy,
                vault: inner.vault.clone(),
            }),
            batch: None,
        }
    }

    /// An encryptor like this one (same providers, cache and search key) for one batch of
    /// writes: its first encrypt leases a data key from the cache as [`encrypt`] does, and
    /// its later encrypts reuse that lease, counting their usage against the key's limits,
    /// instead of leasing per value. When the key reaches a limit (or the cache drops it),
    /// the next encrypt leases again. [`Encrypted::encrypt_rows`](crate::Encrypted::encrypt_rows)
    /// encrypts its rows through one; drop it when the batch is written.
    ///
    /// [`encrypt`]: Encryptor::encrypt
    pub fn batch_scope(&self) -> Encryptor {
        Encryptor {
            inner: Arc::clone(&self.inner),
            batch: Some(Arc::default()),
        }
    }

    /// The provider of new data keys.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.inner.provider
    }

    /// The master key new data keys are wrapped under.
    pub fn master_key(&self) -> MasterKeyRef {
        self.inner.provider.master_key()
    }

    /// The fingerprint of the root search key ([`SearchKey::fingerprint`]), `None` without
    /// one: what an application compares with the fingerprint recorded for its database at
    /// start (`jarvis_db::keys::check_search_key`).
    pub fn search_key_fingerprint(&self) -> Option<crate::SearchKeyFingerprint> {
        self.inner.search_key.as_ref().map(|key| key.fingerprint())
    }

    /// The data-key cache.
    pub fn cache(&self) -> &DataKeyCache {
        &self.inner.cache
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// Whether legacy rows are accepted.
    pub fn allows_legacy(&self) -> bool {
        self.inner.allow_legacy
    }

    /// Encrypts one value for its place.
    pub async fn encrypt(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<StoredField> {
        let held = self.batch.as_ref().and_then(|batch| {
            batch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map(Lease::share)
        });
        let extended = match &held {
            Some(held) => self.inner.cache.extend(held, plaintext.len()).await,
            None => None,
        };
        let lease = match extended {
            Some(lease) => lease,
            None => {
                let lease = self
                    .inner
                    .cache
                    .lease(
                        self.inner.provider.master_key(),
                        KeyPurpose::Field,
                        plaintext.len(),
                        || self.generate(KeyPurpose::Field),
                    )
                    .await?;
                if let Some(batch) = &self.batch {
                    *batch
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(lease.share());
                }
                lease
            }
        };
        seal(&lease.key, lease.wrapped, binding, plaintext)
    }

    /// Makes ready, ahead of use, the data keys that the next `values` encrypts will need,
    /// so that they find them in the cache: with a key vault, each new key is stored in the
    /// vault now rather than during the encrypt. Call it before a write transaction that
    /// seals `values` values (the repositories and jobs of jarvis-db do): on SQLite, whose
    /// one writer the transaction holds, a vault insert made inside it would wait for the
    /// transaction itself. Counts the active key (when at least half its age, at most a
    /// minute, is still ahead) and keys made ahead earlier; makes at most
    /// `ceil(missing / max_messages)` keys, and holds at most 1,024 ready per master key.
    /// Byte limits are not foreseen (a value beyond `max_bytes` still gets a key of its own
    /// when it is sealed). Returns how many keys it made; without a vault it makes none, since
    /// a key made during the encrypt waits on nothing the transaction holds.
    pub async fn prepare_data_keys(&self, values: usize) -> Result<usize> {
        if values == 0 || !self.writes_references() {
            return Ok(0);
        }
        self.inner
            .cache
            .prepare(
                self.inner.provider.master_key(),
                KeyPurpose::Field,
                u64::try_from(values).unwrap_or(u64::MAX),
                || self.generate(KeyPurpose::Field),
            )
            .await
    }

    /// Whether new values get 20-byte references to keys in a vault (a vault is configured
    /// and the provider binds data-key ids), rather than inline envelopes.
    pub fn writes_references(&self) -> bool {
        self.inner.vault.is_some() && self.inner.provider.binds_data_key_ids()
    }

    /// The key vault, if the encryptor has one.
    pub fn key_vault(&self) -> Option<&Arc<dyn KeyVault>> {
        self.inner.vault.as_ref()
    }

    /// Decrypts one value read from its place.
    pub async fn decrypt(&self, binding: &Binding<'_>, stored: &StoredField) -> Result<Vec<u8>> {
        self.check_form(stored)?;
        let resolver = VaultResolver::on_demand(self);
        let provider = self.provider_or_vault(&stored.data_key, &resolver)?;
        let key = self
            .inner
            .cache
            .unwrap(provider, &stored.data_key, KeyPurpose::Field)
            .await?;
        open(&key, binding, stored)
    }

    /// Decrypts many values, unwrapping each distinct data key once (concurrently, within the
    /// cache's bound). Results follow the input order; one bad value fails alone.
    pub async fn decrypt_many(
        &self,
        items: &[(Binding<'_>, &StoredField)],
    ) -> Vec<Result<Vec<u8>>> {
        // Forms are checked first: a value refused by its form (a legacy row while legacy
        // rows are off) never reaches the provider.
        let forms: Vec<Result<()>> = items.iter().map(|(_, s)| self.check_form(s)).collect();
        let wrapped: Vec<(&WrappedKey, KeyPurpose)> = items
            .iter()
            .zip(&forms)
            .filter(|(_, form)| form.is_ok())
            .map(|((_, stored), _)| (&stored.data_key, KeyPurpose::Field))
            .collect();
        // The vault's keys this page references and the cache lacks: one query.
        let resolver = self.resolver_for_page(&wrapped).await;
        let (keys, order) = self
            .inner
            .cache
            .unwrap_many(|w| self.provider_or_vault(w, &resolver), &wrapped)
            .await;
        let mut order = order.into_iter();
        // One associated-data buffer for the whole batch, rewritten per value.
        let mut aad = Vec::new();
        items
            .iter()
            .zip(forms)
            .map(|((binding, stored), form)| {
                form?;
                let key = order
                    .next()
                    .and_then(|i| keys.get(i))
                    .ok_or_else(|| Error::stored("bulk unwrap lost a key"))?
                    .as_ref()
                    .map_err(Clone::clone)?;
                binding.write_associated_data(&mut aad);
                open_with_aad(key, &aad, stored)
            })
            .collect()
    }

    /// Re-wraps a data key under `to` (a master key of the primary or another provider of the
    /// same kind), without touching the values encrypted under it.
    pub async fn rewrap(&self, wrapped: &WrappedKey, to: &MasterKeyRef) -> Result<WrappedKey> {
        if wrapped.is_legacy() {
            // A legacy row keeps its 16-byte IV and no associated data: with a current wrapped
            // key it would read as neither form. Legacy rows are re-encrypted, not re-wrapped.
            return Err(Error::Configuration(
                "a legacy row's data key cannot be re-wrapped: re-encrypt the value instead".into(),
            ));
        }
        let provider = self.provider_for(wrapped)?;
        self.inner.cache.count_rewrap();
        provider
            .rewrap_data_key(wrapped, KeyPurpose::Field, to)
            .await
    }

    /// Re-wraps a key of the vault under `to`, through the provider that holds its current
    /// master key, binding its id and purpose as when it was generated: what re-wrapping a
    /// master key does to the vault (`rotate --to-key`), whose references in the data rows
    /// stay as they are. A revoked key is [`Error::UnknownDataKey`].
    pub async fn rewrap_vault_key(&self, key: &VaultKey, to: &MasterKeyRef) -> Result<WrappedKey> {
        let wrapped = key.wrapped.as_ref().ok_or_else(|| Error::UnknownDataKey {
            id: key.id.to_hex(),
            revoked: true,
        })?;
        let provider = self.provider_for(wrapped)?;
        self.inner.cache.count_rewrap();
        provider
            .rewrap_data_key_in(wrapped, &KeyContext::in_vault(key.purpose, key.id), to)
            .await
    }

    /// The key vault's form of a data key written inline: the same data key, under the same
    /// master key, bound to `id` by its provider (one call), ready to be stored in the vault
    /// and referenced in place of the inline envelope. What `rotate --compact` does once per
    /// distinct inline key; the values sealed under it stay as they are.
    pub async fn bind_inline_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        id: DataKeyId,
    ) -> Result<VaultKey> {
        let provider = self.provider_for(wrapped)?;
        self.inner.cache.count_rewrap();
        let bound = provider
            .rebind_data_key(
                wrapped,
                &KeyContext::new(purpose),
                &KeyContext::in_vault(purpose, id),
            )
            .await?;
        Ok(VaultKey::new(id, purpose, bound))
    }

    /// Re-wraps a key wrapped for `purpose` (a stored search key, say) under `to`, through the
    /// provider that holds its current master key: the primary one or one added with
    /// [`decrypt_with`](EncryptorBuilder::decrypt_with). A key under a master key none of them
    /// holds is [`Error::UnknownMasterKey`].
    pub async fn rewrap_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        let provider = self.provider_for(wrapped)?;
        provider.rewrap_data_key(wrapped, purpose, to).await
    }

    /// Unwraps the data key of an encrypted backup stream ([`crate::stream`]) through the
    /// provider that holds its master key (the primary one or one added with
    /// [`decrypt_with`](EncryptorBuilder::decrypt_with)). Backup data keys bypass the data-key
    /// cache: each stream has a key of its own, used once.
    pub async fn unwrap_backup_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        self.unwrap_key(wrapped, KeyPurpose::Backup).await
    }

    /// Unwraps a key wrapped for `purpose` (a backup stream's, a stored search key) through
    /// the provider that holds its master key, bypassing the data-key cache. A key under a
    /// master key none of the providers holds is [`Error::UnknownMasterKey`].
    pub async fn unwrap_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        let provider = self.provider_for(wrapped)?;
        provider.unwrap_data_key(wrapped, purpose).await
    }

    /// The search hash of `value` for a column, under the root search key.
    pub fn search_hash(
        &self,
        table: &str,
        column: &str,
        spec: SearchSpec,
        value: &str,
    ) -> Result<SearchHash> {
        let this_column = |(t, c, s, _): &&(String, String, SearchSpec, ColumnHasher)| {
            t == table && c == column && *s == spec
        };
        if let Some((.., hasher)) = self
            .inner
            .hashers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(this_column)
        {
            return Ok(hasher.hash(value));
        }
        let root = self.inner.search_key.as_ref().ok_or_else(|| {
            Error::Configuration(
                "no search key: set ENCRYPTION_SEARCH_SALT or build the encryptor with one \
                 (`EncryptorBuilder::search_key`)"
                    .into(),
            )
        })?;
        let hasher = root.column(table, column, spec);
        let hash = hasher.hash(value);
        let mut hashers = self
            .inner
            .hashers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another caller may have derived it meanwhile: keep one entry per column.
        if !hashers.iter().any(|entry| this_column(&entry)) {
            hashers.push((table.to_owned(), column.to_owned(), spec, hasher));
        }
        Ok(hash)
    }

    fn check_form(&self, stored: &StoredField) -> Result<()> {
        // The answer of `WrappedKey::is_legacy` (non-empty, first byte not the envelope magic)
        // without parsing the envelope, which allocates its key id: this runs per value.
        let legacy_key = stored
            .data_key
            .as_bytes()
            .first()
            .is_some_and(|&b| b != crate::keys::WRAPPED_KEY_MAGIC[0]);
        match (stored.nonce.len(), legacy_key) {
            (NONCE_LEN, false) => Ok(()),
            (LEGACY_NONCE_LEN, true) if self.inner.allow_legacy => Ok(()),
            (LEGACY_NONCE_LEN, true) => Err(Error::LegacyNotAllowed),
            (NONCE_LEN, true) => Err(Error::stored(
                "a 12-byte nonce with a bare KMS blob is neither a current nor a legacy row",
            )),
            _ => Err(Error::stored(
                "a 16-byte nonce with a jarvis wrapped key is neither a current nor a legacy row",
            )),
        }
    }

    /// A new data key for `purpose`: with a vault (and a provider that binds ids), stored in
    /// the vault, committed, before anything is sealed under it, and handed out as its
    /// reference; otherwise the provider's inline envelope.
    async fn generate(&self, purpose: KeyPurpose) -> Result<GeneratedDataKey> {
        let provider = self.inner.provider.as_ref();
        let Some(vault) = self
            .inner
            .vault
            .as_ref()
            .filter(|_| provider.binds_data_key_ids())
        else {
            return provider.generate_data_key(purpose).await;
        };
        let id = DataKeyId::generate()?;
        let generated = provider
            .generate_data_key_in(&KeyContext::in_vault(purpose, id))
            .await?;
        vault
            .store(&VaultKey::new(id, purpose, generated.wrapped))
            .await?;
        Ok(GeneratedDataKey {
            key: generated.key,
            wrapped: WrappedKey::reference(id),
        })
    }

    /// The vault's keys that `wrapped` references and the cache lacks, fetched in one query.
    async fn resolver_for_page(&self, wrapped: &[(&WrappedKey, KeyPurpose)]) -> VaultResolver<'_> {
        let mut resolver = VaultResolver::on_demand(self);
        let Some(vault) = &self.inner.vault else {
            return resolver;
        };
        // A page is mostly runs of one key: each distinct reference is looked up in the cache
        // once (the lookup copies its key), not once per value.
        let mut referenced: Vec<(DataKeyId, KeyPurpose, &WrappedKey)> = Vec::new();
        let mut previous: Option<&[u8]> = None;
        for (w, purpose) in wrapped {
            if previous == Some(w.as_bytes()) {
                continue;
            }
            previous = Some(w.as_bytes());
            if let Some(id) = w.data_key_id() {
                referenced.push((id, *purpose, *w));
            }
        }
        referenced.sort_unstable_by_key(|(id, ..)| *id);
        referenced.dedup_by_key(|(id, ..)| *id);
        let ids: Vec<DataKeyId> = referenced
            .into_iter()
            .filter(|(_, purpose, w)| !self.inner.cache.holds(w.as_bytes(), *purpose))
            .map(|(id, ..)| id)
            .collect();
        if ids.is_empty() {
            return resolver;
        }
        resolver.prefetched = Some(
            vault
                .fetch(&ids)
                .await
                .map(|keys| keys.into_iter().map(|k| (k.id, k)).collect()),
        );
        resolver
    }

    /// The provider for `wrapped`, or for a reference the resolver that unwraps it through
    /// the vault.
    fn provider_or_vault<'a>(
        &'a self,
        wrapped: &WrappedKey,
        resolver: &'a VaultResolver<'a>,
    ) -> Result<&'a dyn KeyProvider> {
        if wrapped.data_key_id().is_some() {
            if self.inner.vault.is_none() {
                return Err(no_vault());
            }
            return Ok(resolver);
        }
        self.provider_for(wrapped)
    }

    fn provider_for(&self, wrapped: &WrappedKey) -> Result<&dyn KeyProvider> {
        if wrapped.data_key_id().is_some() {
            return Err(match self.inner.vault {
                None => no_vault(),
                Some(_) => Error::Configuration(
                    "a data-key reference has no wrapped key of its own: use the key vault's"
                        .into(),
                ),
            });
        }
        let providers = std::iter::once(&self.inner.provider).chain(self.inner.others.iter());
        match wrapped.envelope()? {
            KeyEnvelope::Jarvis { master_key, .. } => providers
                .map(|p| p.as_ref())
                .find(|p| p.can_unwrap(&master_key))
                .ok_or_else(|| Error::UnknownMasterKey {
                    key_id: master_key.to_string(),
                }),
            KeyEnvelope::Legacy { .. } => providers
                .map(|p| p.as_ref())
                .find(|p| p.kind() == ProviderKind::AwsKms)
                .ok_or_else(|| Error::UnknownMasterKey {
                    key_id: "a bare AWS KMS blob (legacy row): configure the aws-kms provider"
                        .into(),
                }),
        }
    }
}

fn no_vault() -> Error {
    Error::Configuration(
        "a value references a data key in a key vault, but this encryptor has none: build it with `EncryptorBuilder::key_vault`".into(),
    )
}

/// Unwraps the data keys that values reference: the vault's wrapped key (prefetched for a
/// page, or fetched alone), through the provider that holds its master key, with the id bound.
/// A [`KeyProvider`] so that the data-key cache unwraps (and coalesces) references as it does
/// inline envelopes.
struct VaultResolver<'a> {
    encryptor: &'a Encryptor,
    /// The page's keys, when fetched for it (`Err`: the vault query failed).
    prefetched: Option<Result<HashMap<DataKeyId, VaultKey>>>,
}

impl<'a> VaultResolver<'a> {
    fn on_demand(encryptor: &'a Encryptor) -> Self {
        VaultResolver {
            encryptor,
            prefetched: None,
        }
    }

    async fn entry(&self, id: DataKeyId) -> Result<VaultKey> {
        let found = match &self.prefetched {
            Some(Ok(keys)) => keys.get(&id).cloned(),
            Some(Err(error)) => return Err(error.clone()),
            None => {
                let vault = self.encryptor.inner.vault.as_ref().ok_or_else(no_vault)?;
                vault.fetch(&[id]).await?.into_iter().find(|k| k.id == id)
            }
        };
        found.ok_or_else(|| Error::UnknownDataKey {
            id: id.to_hex(),
            revoked: false,
        })
    }
}

impl fmt::Debug for VaultResolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultResolver").finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyProvider for VaultResolver<'_> {
    fn kind(&self) -> ProviderKind {
        self.encryptor.inner.provider.kind()
    }

    fn master_key(&self) -> MasterKeyRef {
        self.encryptor.inner.provider.master_key()
    }

    async fn generate_data_key(&self, _purpose: KeyPurpose) -> Result<GeneratedDataKey> {
        Err(Error::Configuration(
            "the key vault resolves references; it does not generate keys".into(),
        ))
    }

    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        let id = wrapped
            .data_key_id()
            .ok_or_else(|| Error::stored("not a data-key reference"))?;
        let entry = self.entry(id).await?;
        let inline = entry.wrapped.ok_or_else(|| Error::UnknownDataKey {
            id: id.to_hex(),
            revoked: true,
        })?;
        let provider = self.encryptor.provider_for(&inline)?;
        provider
            .unwrap_data_key_in(&inline, &KeyContext::in_vault(purpose, id))
            .await
    }

    async fn rewrap_data_key(
        &self,
        _wrapped: &WrappedKey,
        _purpose: KeyPurpose,
        _to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        Err(Error::Configuration(
            "a data-key reference is re-wrapped in the key vault, not in its value".into(),
        ))
    }
}

fn seal(
    key: &DataKey,
    wrapped: WrappedKey,
    binding: &Binding<'_>,
    plaintext: &[u8],
) -> Result<StoredField> {
    let nonce: [u8; NONCE_LEN] = cipher::random_array()?;
    let mut buffer = plaintext.to_vec();
    let tag = cipher::seal_in_place(
        key.cipher(),
        &nonce,
        &binding.associated_data(),
        &mut buffer,
    )?;
    Ok(StoredField {
        ciphertext: Ciphertext::new(buffer)?,
        nonce: Nonce::new(nonce.to_vec())?,
        tag: AuthTag::new(tag.to_vec())?,
        data_key: wrapped,
    })
}

fn open(key: &DataKey, binding: &Binding<'_>, stored: &StoredField) -> Result<Vec<u8>> {
    open_with_aad(key, &binding.associated_data(), stored)
}

/// [`open`] with the value's associated data already built.
fn open_with_aad(key: &DataKey, aad: &[u8], stored: &StoredField) -> Result<Vec<u8>> {
    use secrecy::ExposeSecret;
    if stored.nonce.len() == LEGACY_NONCE_LEN {
        // Legacy rows were written without associated data (checked by `check_form`).
        return cipher::open_legacy(
            key.expose_secret(),
            stored.nonce.as_bytes(),
            &[],
            stored.ciphertext.as_bytes(),
            stored.tag.as_bytes(),
        );
    }
    cipher::open_with(
        key.cipher(),
        stored.nonce.as_bytes(),
        aad,
        stored.ciphertext.as_bytes(),
        stored.tag.as_bytes(),
    )
}
