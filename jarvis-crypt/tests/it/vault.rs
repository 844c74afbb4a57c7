//! Data-key references through a key vault: values hold 20-byte references, keys are stored
//! before they are used, pages ask the vault once for the keys the cache lacks, and every way
//! a reference can fail to resolve is an error of its own kind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jarvis_crypt::{
    Binding, DataKeyId, Encryptor, Error, ErrorKind, KeyProvider, KeyVault, LocalKeyProvider,
    REFERENCE_LEN, StoredField, VaultKey,
};

/// A vault in a map, counting its queries; `fail_stores` makes every store fail as a
/// database would.
#[derive(Debug, Default)]
struct MapVault {
    keys: Mutex<HashMap<DataKeyId, VaultKey>>,
    fetches: AtomicUsize,
    fail_stores: bool,
}

impl MapVault {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DataKeyId, VaultKey>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl KeyVault for MapVault {
    async fn store(&self, key: &VaultKey) -> jarvis_crypt::Result<()> {
        if self.fail_stores {
            return Err(Error::Configuration("the vault's database is down".into()));
        }
        let mut keys = self.lock();
        match keys.get(&key.id) {
            Some(existing) if existing != key => Err(Error::Configuration(format!(
                "another key is stored under id {}",
                key.id
            ))),
            _ => {
                keys.insert(key.id, key.clone());
                Ok(())
            }
        }
    }

    async fn fetch(&self, ids: &[DataKeyId]) -> jarvis_crypt::Result<Vec<VaultKey>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let keys = self.lock();
        Ok(ids.iter().filter_map(|id| keys.get(id).cloned()).collect())
    }
}

fn encryptor(provider: &Arc<LocalKeyProvider>, vault: Option<&Arc<MapVault>>) -> Encryptor {
    let provider: Arc<dyn KeyProvider> = provider.clone();
    let builder = Encryptor::builder(provider);
    match vault {
        Some(vault) => builder.key_vault(vault.clone()).build(),
        None => builder.build(),
    }
}

async fn seal_many(encryptor: &Encryptor, n: i64) -> Vec<StoredField> {
    let mut stored = Vec::new();
    for id in 0..n {
        let binding = Binding::new("users", "encrypted_email", id);
        let value = format!("user{id}@example.com");
        stored.push(
            encryptor
                .encrypt(&binding, value.as_bytes())
                .await
                .expect("encrypt"),
        );
    }
    stored
}

async fn open_many(
    encryptor: &Encryptor,
    stored: &[StoredField],
) -> Vec<jarvis_crypt::Result<Vec<u8>>> {
    let bindings: Vec<Binding<'_>> = (0..stored.len() as i64)
        .map(|id| Binding::new("users", "encrypted_email", id))
        .collect();
    let items: Vec<(Binding<'_>, &StoredField)> = bindings.into_iter().zip(stored).collect();
    encryptor.decrypt_many(&items).await
}

fn plaintexts(results: Vec<jarvis_crypt::Result<Vec<u8>>>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| String::from_utf8(r.expect("decrypts")).expect("utf-8"))
        .collect()
}

fn expected(n: i64) -> Vec<String> {
    (0..n).map(|id| format!("user{id}@example.com")).collect()
}

#[tokio::test]
async fn values_hold_references_and_a_cold_page_asks_the_vault_once() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault::default());
    let writer = encryptor(&provider, Some(&vault));
    let stored = seal_many(&writer, 100).await;

    assert_eq!(
        vault.lock().len(),
        1,
        "one data key for the batch, in the vault"
    );
    let id = *vault.lock().keys().next().expect("a key");
    for value in &stored {
        assert_eq!(value.data_key.len(), REFERENCE_LEN);
        assert_eq!(value.data_key.data_key_id(), Some(id));
    }
    assert_eq!(
        vault.fetches.load(Ordering::SeqCst),
        0,
        "the writer's own keys are cached"
    );
    assert_eq!(plaintexts(open_many(&writer, &stored).await), expected(100));
    assert_eq!(
        vault.fetches.load(Ordering::SeqCst),
        0,
        "warm reads make no vault query"
    );

    // Another process: a cold cache, the same master key and vault.
    let reader = encryptor(&provider, Some(&vault));
    assert_eq!(plaintexts(open_many(&reader, &stored).await), expected(100));
    assert_eq!(
        vault.fetches.load(Ordering::SeqCst),
        1,
        "one query for the page"
    );
    assert_eq!(plaintexts(open_many(&reader, &stored).await), expected(100));
    assert_eq!(vault.fetches.load(Ordering::SeqCst), 1, "then none");
    let binding = Binding::new("users", "encrypted_email", 7);
    let one = reader
        .decrypt(&binding, &stored[7])
        .await
        .expect("decrypt one");
    assert_eq!(one, b"user7@example.com");
}

#[tokio::test]
async fn inline_envelopes_and_references_mix_in_one_page() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault::default());
    let inline = seal_many(&encryptor(&provider, None), 10).await;
    let referenced = seal_many(&encryptor(&provider, Some(&vault)), 10).await;
    assert!(inline.iter().all(|v| v.data_key.data_key_id().is_none()));
    let mixed: Vec<StoredField> = inline
        .iter()
        .zip(&referenced)
        .enumerate()
        .map(|(i, (a, b))| if i % 2 == 0 { a.clone() } else { b.clone() })
        .collect();
    let reader = encryptor(&provider, Some(&vault));
    assert_eq!(plaintexts(open_many(&reader, &mixed).await), expected(10));
}

#[tokio::test]
async fn a_reference_the_vault_lacks_is_an_unknown_data_key() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault::default());
    let stored = seal_many(&encryptor(&provider, Some(&vault)), 3).await;
    vault.lock().clear();
    let reader = encryptor(&provider, Some(&vault));
    for result in open_many(&reader, &stored).await {
        let error = result.expect_err("dangling reference");
        assert_eq!(error.kind(), ErrorKind::UnknownDataKey);
        assert!(matches!(
            error,
            Error::UnknownDataKey { revoked: false, .. }
        ));
    }
}

#[tokio::test]
async fn a_revoked_key_is_refused_as_revoked() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault::default());
    let stored = seal_many(&encryptor(&provider, Some(&vault)), 2).await;
    {
        let mut keys = vault.lock();
        let (id, key) = keys.iter_mut().next().expect("a key");
        *key = VaultKey::revoked(*id, key.purpose);
    }
    let reader = encryptor(&provider, Some(&vault));
    let error = open_many(&reader, &stored)
        .await
        .remove(0)
        .expect_err("revoked");
    assert!(
        matches!(error, Error::UnknownDataKey { revoked: true, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_vault_row_moved_to_another_id_does_not_unwrap() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault::default());
    let writer = encryptor(&provider, Some(&vault));
    let first = seal_many(&writer, 1).await;
    let second = seal_many(&writer.with_fresh_data_key(), 1).await;
    let (a, b) = (
        first[0].data_key.data_key_id().expect("reference"),
        second[0].data_key.data_key_id().expect("reference"),
    );
    assert_ne!(a, b);
    {
        // Someone with SQL write access gives id `a` the wrapped key of id `b`.
        let mut keys = vault.lock();
        let wrapped_b = keys[&b].wrapped.clone().expect("wrapped");
        let purpose = keys[&a].purpose;
        keys.insert(a, VaultKey::new(a, purpose, wrapped_b));
    }
    let reader = encryptor(&provider, Some(&vault));
    let error = open_many(&reader, &first)
        .await
        .remove(0)
        .expect_err("swapped row");
    assert_eq!(error.kind(), ErrorKind::AuthenticationFailed, "{error}");
}

#[tokio::test]
async fn a_reference_read_without_a_vault_is_a_configuration_error() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault::default());
    let stored = seal_many(&encryptor(&provider, Some(&vault)), 1).await;
    let error = open_many(&encryptor(&provider, None), &stored)
        .await
        .remove(0)
        .expect_err("no vault");
    assert_eq!(error.kind(), ErrorKind::Configuration);
    assert!(error.to_string().contains("key_vault"), "{error}");
}

#[tokio::test]
async fn a_failing_vault_store_seals_nothing() {
    let provider = Arc::new(LocalKeyProvider::generate());
    let vault = Arc::new(MapVault {
        fail_stores: true,
        ..MapVault::default()
    });
    let writer = encryptor(&provider, Some(&vault));
    let binding = Binding::new("users", "encrypted_email", 1);
    let error = writer
        .encrypt(&binding, b"a@example.com")
        .await
        .expect_err("the key is not stored, so nothing is sealed under it");
    assert!(error.to_string().contains("database is down"), "{error}");
    assert!(vault.lock().is_empty());
}

#[test]
fn a_reference_of_the_wrong_length_is_an_invalid_stored_form() {
    let mut bytes =
        jarvis_crypt::WrappedKey::reference(DataKeyId::from_bytes([7; 16])).into_bytes();
    bytes.push(0);
    assert!(matches!(
        jarvis_crypt::WrappedKey::new(bytes),
        Err(Error::InvalidStoredForm(_))
    ));
}
