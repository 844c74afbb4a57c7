//! A synchronous facade over [`Encryptor`](crate::Encryptor), for diesel applications
//! without an async runtime of their own (`SqliteConnection`, `PgConnection`, r2d2 pools).
//!
//! Every call of the async API needs an executor, and the AWS KMS provider needs a tokio one:
//! its SDK spawns connection tasks and timers on the runtime it runs in.
//! [`futures::executor::block_on`] around each call happens to work with the local provider
//! and fails with AWS KMS. [`Encryptor`] owns a tokio runtime with one worker thread
//! (`jarvis-blocking`) instead: a call runs its future on the calling thread inside that
//! runtime's context, so whatever the future spawns (the SDK's connections, DNS lookups,
//! retry timers) lives on the facade's runtime, and the worker thread keeps driving it between
//! calls, as it drives anything started on it by [`Encryptor::build`] (an audit sink such as
//! `jarvis_db::audit::DbAudit`, which spawns its writer where it is created).
//!
//! **Where the provider is built.** A provider built on another runtime keeps working: the
//! AWS SDK's connection pool drops the connections whose task ended with their runtime and
//! connects again on the facade's. Still, what a provider or sink spawns while it is built
//! stays on the runtime it was built on and ends when that runtime is dropped; build them
//! with [`Encryptor::build`], on the facade's runtime, rather than on a runtime of your own.
//!
//! **Inside a runtime.** The facade refuses to be called from inside a tokio runtime (a task,
//! or a thread of `spawn_blocking`) with [`Error::Configuration`]: blocking a runtime's thread
//! on work that may need that very runtime (connections a provider opened there, an audit
//! sink's writer) can hang it. Async code uses [`Encryptor::inner`], the async API.
//!
//! ```no_run
//! # #[derive(Debug, jarvis_crypt::Encrypted)]
//! # #[encrypted(table = schema::patients, bind = id)]
//! # pub struct Patient {
//! #     pub id: i64,
//! #     #[encrypted(search(normalize = "trim"))]
//! #     pub ssn: String,
//! #     pub name: String,
//! # }
//! # mod schema {
//! #     diesel::table! {
//! #         patients (id) {
//! #             id -> BigInt,
//! #             encrypted_ssn -> Binary, ssn_iv -> Binary, ssn_auth_tag -> Binary,
//! #             ssn_data_key -> Binary, ssn_hash -> Binary,
//! #             name -> Text,
//! #         }
//! #     }
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::sync::Arc;
//! use jarvis_crypt::{LocalKeyProvider, SearchKey};
//!
//! let enc = jarvis_crypt::blocking::Encryptor::build(|| async {
//!     let provider = LocalKeyProvider::from_env()?;
//!     Ok(jarvis_crypt::Encryptor::builder(Arc::new(provider))
//!         .search_key(SearchKey::from_env()?.expect("ENCRYPTION_SEARCH_SALT"))
//!         .build())
//! })?;
//! let patient = Patient { id: 1, ssn: "123-45-6789".into(), name: "Ada".into() };
//! let row: PatientRow = enc.encrypt_row(&patient)?;
//! let rows: Vec<PatientRow> = enc.encrypt_rows(std::slice::from_ref(&patient))?;
//! let patients: Vec<Patient> = enc.decrypt_rows(rows)?;
//! let filter = Patient::ssn_search(enc.inner(), "123-45-6789")?; // patients::table.filter(filter)
//! # let _ = (row, patients, filter);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::Encrypted;

/// The name of the facade's worker thread.
pub const THREAD_NAME: &str = "jarvis-blocking";

/// How long dropping the facade waits for its runtime's threads to end.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A synchronous [`crate::Encryptor`]: each call blocks the calling thread until the async
/// call it wraps is done, on a tokio runtime the facade owns. See the [module docs](self).
///
/// Cheap to share by reference across threads (`Send + Sync`); dropping it shuts its runtime
/// down and ends its thread.
pub struct Encryptor {
    inner: crate::Encryptor,
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Encryptor")
            .field("inner", &self.inner)
            .field("runtime", &THREAD_NAME)
            .finish()
    }
}

impl Drop for Encryptor {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Waiting is not allowed inside a runtime: the thread ends on its own.
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    refuse_inside_runtime("blocking::Encryptor::new")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name(THREAD_NAME)
        .enable_all()
        .build()
        .map_err(|e| Error::Configuration(format!("cannot start the facade's runtime: {e}")))
}

fn refuse_inside_runtime(call: &str) -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Configuration(format!(
            "`{call}` was called from inside a tokio runtime, whose thread it would block: \
             in async code use the async API (`blocking::Encryptor::inner`, or a \
             `jarvis_crypt::Encryptor`)"
        )));
    }
    Ok(())
}

impl Encryptor {
    /// A facade over `encryptor`, with a runtime of its own.
    ///
    /// Any encryptor is accepted, whatever runtime its provider was built on (see the
    /// [module docs](self)); [`build`](Self::build) builds one on the facade's runtime, the
    /// place for providers and audit sinks that spawn tasks. Refused
    /// ([`Error::Configuration`]) inside a tokio runtime.
    pub fn new(encryptor: crate::Encryptor) -> Result<Self> {
        Ok(Encryptor {
            inner: encryptor,
            runtime: Some(runtime()?),
        })
    }

    /// A facade over the encryptor that `make` builds, run on the facade's own runtime: what
    /// the provider and an audit sink spawn while they are built (the AWS SDK's connections,
    /// `DbAudit`'s writer) lives on that runtime and keeps running between calls.
    ///
    /// With AWS KMS, `AwsKms::from_env(KmsOptions::default()).await?` in place of the local
    /// provider:
    ///
    /// ```no_run
    /// # fn main() -> jarvis_crypt::Result<()> {
    /// let enc = jarvis_crypt::blocking::Encryptor::build(|| async {
    ///     let provider = jarvis_crypt::LocalKeyProvider::from_env()?;
    ///     Ok(jarvis_crypt::Encryptor::builder(std::sync::Arc::new(provider)).build())
    /// })?;
    /// # let _ = enc;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build<F, Fut>(make: F) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<crate::Encryptor>>,
    {
        let runtime = runtime()?;
        let encryptor = {
            let _context = runtime.enter();
            futures::executor::block_on(make())?
        };
        Ok(Encryptor {
            inner: encryptor,
            runtime: Some(runtime),
        })
    }

    /// The wrapped async encryptor: for the synchronous parts of the API (the search filters,
    /// `Patient::ssn_search(enc.inner(), value)`), for [`block_on`](Self::block_on) and for
    /// async code.
    pub fn inner(&self) -> &crate::Encryptor {
        &self.inner
    }

    /// Runs `future` to completion on the calling thread, inside the facade's runtime: for
    /// the async calls the facade has no method for, such as a model's `<field>_find`. The
    /// future may borrow (a diesel connection, say); its error type takes a
    /// [`jarvis_crypt::Error`](Error), which is what a call inside a tokio runtime returns
    /// ([`Error::Configuration`]) without running the future.
    ///
    /// A future whose output is not a `Result` goes through
    /// `async { Ok::<_, jarvis_crypt::Error>(future.await) }`.
    pub fn block_on<T, E, F>(&self, future: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        refuse_inside_runtime("blocking::Encryptor::block_on")?;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Configuration("the facade's runtime is shut down".into()))?;
        let _context = runtime.enter();
        futures::executor::block_on(future)
    }

    /// [`Encrypted::encrypt_row`]: the row to write for `model`.
    pub fn encrypt_row<M: Encrypted>(&self, model: &M) -> Result<M::Row> {
        self.block_on(model.encrypt_row(&self.inner))
    }

    /// [`Encrypted::encrypt_rows`]: the rows to write for `models`, one data-key lease for
    /// the batch.
    pub fn encrypt_rows<M: Encrypted>(&self, models: &[M]) -> Result<Vec<M::Row>> {
        self.block_on(M::encrypt_rows(models, &self.inner))
    }

    /// [`Encrypted::decrypt_row`]: the model of a row read back.
    pub fn decrypt_row<M: Encrypted>(&self, row: M::Row) -> Result<M> {
        self.block_on(M::decrypt_row(row, &self.inner))
    }

    /// [`Encrypted::decrypt_rows`]: the models of many rows, each distinct data key
    /// unwrapped once.
    pub fn decrypt_rows<M: Encrypted>(&self, rows: Vec<M::Row>) -> Result<Vec<M>> {
        self.block_on(M::decrypt_rows(rows, &self.inner))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Binding, CacheLimits, LocalKeyProvider, StoredField};

    fn encryptor(limits: CacheLimits) -> crate::Encryptor {
        crate::Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
            .cache_limits(limits)
            .build()
    }

    fn seal_ten(enc: &Encryptor, through: &crate::Encryptor) -> Vec<StoredField> {
        (0..10_i64)
            .map(|id| {
                let binding = Binding::new("patients", "encrypted_ssn", id);
                enc.block_on(through.encrypt(&binding, b"123-45-6789"))
                    .expect("encrypt")
            })
            .collect()
    }

    #[test]
    fn a_batch_leases_once_and_reads_back() {
        let enc = Encryptor::new(encryptor(CacheLimits::default())).expect("facade");
        let batch = enc.inner().batch_scope();
        let stored = seal_ten(&enc, &batch);
        let stats = enc.inner().stats();
        assert_eq!(
            (
                stats.encrypt_misses,
                stats.encrypt_hits,
                stats.batch_encrypts
            ),
            (1, 0, 9)
        );
        assert_eq!(stats.generate_calls, 1);
        for (id, field) in (0..10_i64).zip(&stored) {
            let binding = Binding::new("patients", "encrypted_ssn", id);
            let plain = enc.block_on(enc.inner().decrypt(&binding, field));
            assert_eq!(plain.expect("decrypt"), b"123-45-6789");
        }
        // Without a batch scope, each value leases.
        seal_ten(&enc, enc.inner());
        let stats = enc.inner().stats();
        assert_eq!((stats.encrypt_hits, stats.batch_encrypts), (10, 9));
    }

    #[test]
    fn a_batch_respects_the_key_limits() {
        let limits = CacheLimits {
            max_messages: 4,
            ..CacheLimits::default()
        };
        let enc = Encryptor::new(encryptor(limits)).expect("facade");
        let stored = seal_ten(&enc, &enc.inner().batch_scope());
        let stats = enc.inner().stats();
        // Keys of 4, 4 and 2 values.
        assert_eq!((stats.encrypt_misses, stats.batch_encrypts), (3, 7));
        assert_eq!(stats.generate_calls, 3);
        let keys: std::collections::HashSet<Vec<u8>> = stored
            .iter()
            .map(|s| s.data_key.as_bytes().to_vec())
            .collect();
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn refused_inside_a_runtime_without_panic() {
        let outside = Encryptor::new(encryptor(CacheLimits::default())).expect("facade");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let err = Encryptor::new(encryptor(CacheLimits::default())).expect_err("refused");
            assert!(matches!(err, Error::Configuration(_)), "{err}");
            let binding = Binding::new("patients", "encrypted_ssn", 1_i64);
            let err = outside
                .block_on(outside.inner().encrypt(&binding, b"x"))
                .expect_err("refused");
            assert!(err.to_string().contains("inside a tokio runtime"), "{err}");
        });
    }

    #[test]
    fn debug_shows_no_secret_and_drop_ends_the_thread() {
        let enc = Encryptor::new(encryptor(CacheLimits::default())).expect("facade");
        let binding = Binding::new("patients", "encrypted_ssn", 1_i64);
        enc.block_on(enc.inner().encrypt(&binding, b"123-45-6789"))
            .expect("encrypt");
        let debug = format!("{enc:?}");
        assert!(debug.starts_with("blocking::Encryptor"), "{debug}");
        assert!(!debug.contains("123-45-6789"), "{debug}");
        // The worker thread's id, from a task running on it.
        let worker = enc
            .block_on(async {
                tokio::spawn(async { std::fs::read_link("/proc/thread-self") })
                    .await
                    .map_err(|e| Error::Configuration(e.to_string()))
            })
            .expect("task")
            .expect("/proc/thread-self");
        let tid = worker.file_name().expect("tid").to_owned();
        let task = std::path::Path::new("/proc/self/task").join(&tid);
        let name = std::fs::read_to_string(task.join("comm")).expect("comm");
        assert_eq!(name.trim(), THREAD_NAME);
        drop(enc);
        assert!(!task.exists(), "the runtime's thread outlived the facade");
    }
}
