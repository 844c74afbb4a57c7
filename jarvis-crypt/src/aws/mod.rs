//! The AWS KMS key provider (cargo feature `aws-kms`).
//!
//! Data keys come from `GenerateDataKey` (`AES_256`), are unwrapped with `Decrypt` and moved
//! to another master key with `ReEncrypt`, which never lets the plaintext key leave KMS.
//!
//! # Encryption context
//!
//! Every request for data written by jarvis carries the KMS encryption context
//! `{"application": "jarvis-crypt", "purpose": P}`, where `P` is `column-encryption`,
//! `backup` or `search-key` ([`KeyPurpose`]). KMS binds it to the ciphertext blob (a blob
//! does not decrypt under another context) and writes it to CloudTrail, so every request
//! says what it was for. Legacy blobs (bare blobs of the earlier implementation, made with
//! no context) are decrypted without one, and only they.
//!
//! # Which master keys it uses
//!
//! A provider unwraps and re-wraps only under the master keys it was configured with: its own
//! key ([`AwsKms::new`]) and the keys allowed explicitly for decryption
//! ([`AwsKms::allow_decrypt_keys`]; the environment variable `KMS_DECRYPT_KEY_IDS` for
//! [`AwsKms::from_env`]), each resolved to its key ARN once, at construction. A wrapped key
//! that names any other master key is [`Error::UnknownMasterKey`] before any request is sent:
//! a row or a backup must not choose the key it is decrypted under, or whoever controls some
//! other KMS key that the application's principal may use (an insider with SQL write, a
//! cross-account grant, a policy with `kms:Decrypt` on `*`) could forge values that decrypt
//! as genuine.
//!
//! Legacy blobs name no key the provider can read, so they are decrypted with an explicit
//! `KeyId`: the configured key first, then each allowed key in order, never with none. An
//! answer that the blob is under another key (`IncorrectKeyException`, or the
//! `AccessDeniedException` that some KMS-compatible servers give instead) moves to the next
//! allowed key; the key that opened a blob is remembered for it; after the last allowed key
//! the blob is [`Error::AuthenticationFailed`]. Any other failure (throttling, a disabled key,
//! an outage) ends the attempt with its own error.
//!
//! # Configuration, retries and errors
//!
//! [`KmsConnection::from_env`] follows the standard AWS chain (`AWS_REGION`, credentials,
//! profiles) with `BehaviorVersion::latest()`; `AWS_ENDPOINT_URL_KMS` or `AWS_ENDPOINT_URL`
//! point it at another endpoint (a local KMS-compatible server in tests). Throttling,
//! timeouts, transient network failures and 5xx answers are retried by the SDK's own
//! standard retry strategy (exponential backoff with jitter), configured through
//! [`KmsOptions`]. Failures map onto [`Error`] by what the caller does next, with the
//! number of attempts made; SDK types stay out of this crate's errors.

mod setup;

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kms::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kms::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::keys::{
    DataKey, GeneratedDataKey, KeyContext, KeyEnvelope, KeyProvider, KeyPurpose, MasterKeyRef,
    ProviderKind, envelope_header,
};
use crate::stored::WrappedKey;

pub use setup::{KmsKeyState, KmsSetup, alias_for};

/// Environment variable naming the master key (id, ARN or alias).
pub const KMS_KEY_ID_VAR: &str = "KMS_KEY_ID";

/// Environment variable naming further master keys allowed for decryption (comma-separated,
/// each a key id, key ARN, alias name or alias ARN), for example the old key during a
/// rotation. Nothing else is ever unwrapped.
pub const KMS_DECRYPT_KEY_IDS_VAR: &str = "KMS_DECRYPT_KEY_IDS";

/// Most legacy blobs whose opening key [`AwsKms`] remembers (cleared when full).
const LEGACY_MEMO_LIMIT: usize = 16_384;

/// Retry and timeout settings of the KMS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsOptions {
    /// Attempts per request, the first included (default 3).
    pub max_attempts: u32,
    /// First retry backoff (default 50 ms; the SDK adds jitter and doubles it per retry).
    pub initial_backoff: Duration,
    /// Longest backoff between attempts (default 5 s).
    pub max_backoff: Duration,
    /// Time limit of one attempt (default 5 s).
    pub attempt_timeout: Duration,
    /// Time limit of a whole request, retries included (default 20 s).
    pub operation_timeout: Duration,
    /// Time limit to connect (default 3 s).
    pub connect_timeout: Duration,
    /// The SDK keeps its retry quota per partition, in process-wide state; give clients that
    /// must not drain each other's quota partitions of their own. `None`: the SDK default.
    pub retry_partition: Option<String>,
    /// An endpoint to use instead of the one the environment gives (`AWS_ENDPOINT_URL_KMS`,
    /// `AWS_ENDPOINT_URL`, or AWS's own).
    pub endpoint_url: Option<String>,
}

impl Default for KmsOptions {
    fn default() -> Self {
        KmsOptions {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(3),
            retry_partition: None,
            endpoint_url: None,
        }
    }
}

/// HTTP requests sent to KMS by one connection, by operation (every attempt counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsRequests {
    /// `GenerateDataKey` requests.
    pub generate_data_key: u64,
    /// `Decrypt` requests.
    pub decrypt: u64,
    /// `ReEncrypt` requests.
    pub re_encrypt: u64,
    /// Every other request (set-up and diagnostics).
    pub other: u64,
}

impl KmsRequests {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.generate_data_key + self.decrypt + self.re_encrypt + self.other
    }
}

#[derive(Debug, Default)]
struct RequestCounter {
    generate_data_key: AtomicU64,
    decrypt: AtomicU64,
    re_encrypt: AtomicU64,
    other: AtomicU64,
}

tokio::task_local! {
    /// Attempts made by the request in progress on this task.
    static ATTEMPTS: Cell<u32>;
}

/// Counts every attempt, by operation, and the attempts of the request in progress.
#[derive(Debug, Clone)]
struct CountingInterceptor(Arc<RequestCounter>);

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "jarvis-crypt request counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        let counter = match target.rsplit('.').next() {
            Some("GenerateDataKey") => &self.0.generate_data_key,
            Some("Decrypt") => &self.0.decrypt,
            Some("ReEncrypt") => &self.0.re_encrypt,
            _ => &self.0.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = ATTEMPTS.try_with(|n| n.set(n.get() + 1));
        Ok(())
    }
}

/// A configured KMS client: retries, timeouts and request counters.
#[derive(Clone)]
pub struct KmsConnection {
    client: aws_sdk_kms::Client,
    requests: Arc<RequestCounter>,
}

impl fmt::Debug for KmsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsConnection")
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl KmsConnection {
    /// A connection from the standard AWS configuration chain of the environment.
    pub async fn from_env(options: KmsOptions) -> Result<Self> {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        if shared.region().is_none() {
            return Err(Error::Configuration(
                "no AWS region: set AWS_REGION (or a profile's region)".into(),
            ));
        }
        Ok(Self::from_client(
            aws_sdk_kms::Client::new(&shared),
            options,
        ))
    }

    /// A connection over a client the caller built (its credentials, region and endpoint
    /// stay as they are); the retry and timeout settings of `options` replace the client's.
    pub fn from_client(client: aws_sdk_kms::Client, options: KmsOptions) -> Self {
        let requests = Arc::new(RequestCounter::default());
        let mut config = client
            .config()
            .to_builder()
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts.max(1))
                    .with_initial_backoff(options.initial_backoff)
                    .with_max_backoff(options.max_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.attempt_timeout)
                    .operation_timeout(options.operation_timeout)
                    .build(),
            )
            .interceptor(CountingInterceptor(Arc::clone(&requests)));
        if let Some(partition) = options.retry_partition {
            config = config.retry_partition(RetryPartition::new(partition));
        }
        if let Some(endpoint) = options.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        KmsConnection {
            client: aws_sdk_kms::Client::from_conf(config.build()),
            requests,
        }
    }

    /// Requests sent so far through this connection.
    pub fn requests(&self) -> KmsRequests {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KmsRequests {
            generate_data_key: load(&self.requests.generate_data_key),
            decrypt: load(&self.requests.decrypt),
            re_encrypt: load(&self.requests.re_encrypt),
            other: load(&self.requests.other),
        }
    }

    pub(crate) fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// The key id or alias's key metadata: (key id, key ARN).
    pub(crate) async fn resolve(&self, key: &str) -> Result<(String, String)> {
        let out = call(self.client.describe_key().key_id(key).send()).await?;
        let meta = out
            .key_metadata()
            .ok_or_else(|| unavailable(1, "DescribeKey answered without key metadata"))?;
        let arn = meta.arn().unwrap_or(meta.key_id()).to_owned();
        Ok((meta.key_id().to_owned(), arn))
    }
}

/// Runs one SDK request, counting its attempts, and maps its failure onto [`Error`].
pub(crate) async fn call<T, E, R>(
    request: impl Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let (result, attempts) = counted(request).await;
    result.map_err(|err| map_error(err, attempts))
}

/// Runs one SDK request, counting the attempts it made (at least 1).
async fn counted<T>(request: impl Future<Output = T>) -> (T, u32) {
    let (result, attempts) = ATTEMPTS
        .scope(Cell::new(0), async {
            let result = request.await;
            (result, ATTEMPTS.with(Cell::get))
        })
        .await;
    (result, attempts.max(1))
}

fn unavailable(attempts: u32, message: impl Into<String>) -> Error {
    Error::ProviderUnavailable {
        attempts,
        message: message.into(),
    }
}

fn map_error<E, R>(err: SdkError<E, R>, attempts: u32) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("unknown");
            let message = err.message().unwrap_or("").to_owned();
            map_code(code, message, attempts)
        }
        SdkError::TimeoutError(_) => unavailable(attempts, "request timed out"),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "timed out"
            } else if failure.is_io() {
                "connection failed"
            } else {
                "could not be sent"
            };
            unavailable(attempts, format!("request {kind}"))
        }
        SdkError::ResponseError(_) => unavailable(attempts, "unreadable response"),
        SdkError::ConstructionFailure(_) => {
            Error::Configuration("the KMS request could not be built (region, credentials?)".into())
        }
        _ => unavailable(attempts, "unknown SDK failure"),
    }
}

/// Maps a KMS error code (the `__type` of the answer) onto [`Error`].
fn map_code(code: &str, message: String, attempts: u32) -> Error {
    // Codes may come qualified (`com.amazonaws.kms#NotFoundException`).
    let code = code.rsplit('#').next().unwrap_or(code);
    match code {
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "ExpiredTokenException" => Error::AccessDenied(format!("{code}: {message}")),
        "NotFoundException" => Error::UnknownMasterKey {
            key_id: format!("{code}: {message}"),
        },
        "DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException" => {
            Error::MasterKeyDisabled {
                key_id: format!("{code}: {message}"),
            }
        }
        "InvalidCiphertextException" | "IncorrectKeyException" => Error::AuthenticationFailed,
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            Error::Throttled { attempts }
        }
        "InvalidKeyUsageException"
        | "ValidationException"
        | "InvalidArnException"
        | "InvalidGrantTokenException" => Error::Configuration(format!("{code}: {message}")),
        _ => unavailable(attempts, format!("{code}: {message}")),
    }
}

/// Data keys from AWS KMS, under one master key, unwrapped only under the keys it was
/// configured with (see the [module docs](self#which-master-keys-it-uses)).
#[derive(Clone)]
pub struct AwsKms {
    connection: KmsConnection,
    key_arn: String,
    /// Every master key it unwraps under, by ARN: `key_arn` first, then the keys allowed for
    /// decryption, in the order given, without repeats.
    allowed: Arc<[String]>,
    /// Which allowed key (index into `allowed`) opened a legacy blob, by the blob's SHA-256.
    legacy_keys: Arc<Mutex<HashMap<[u8; 32], usize>>>,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_arn", &self.key_arn)
            .field("decrypt_keys", &&self.allowed[1..])
            .field("connection", &self.connection)
            .finish()
    }
}

impl AwsKms {
    /// A provider of data keys under `key` (an id, ARN or alias), checked with `DescribeKey`.
    /// It unwraps only under that key; allow others with
    /// [`allow_decrypt_keys`](Self::allow_decrypt_keys).
    pub async fn new(connection: KmsConnection, key: &str) -> Result<Self> {
        let (_, key_arn) = connection.resolve(key).await?;
        Ok(AwsKms {
            connection,
            allowed: Arc::from(vec![key_arn.clone()]),
            key_arn,
            legacy_keys: Arc::default(),
        })
    }

    /// This provider, also allowed to unwrap (and re-wrap from) data keys under `keys`: key
    /// ids, key ARNs, alias names or alias ARNs, each resolved to its key ARN now with
    /// `DescribeKey`. A key that does not resolve is an error (not a key silently left out);
    /// naming the provider's own key, or a key twice, is harmless. New data keys are still
    /// generated under the provider's own key only.
    pub async fn allow_decrypt_keys<I, S>(self, keys: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut allowed = self.allowed.to_vec();
        for key in keys {
            let key = key.as_ref().trim();
            if key.is_empty() {
                continue;
            }
            let (_, arn) = self
                .connection
                .resolve(key)
                .await
                .map_err(|err| match err {
                    Error::UnknownMasterKey { .. } => Error::Configuration(format!(
                        "{KMS_DECRYPT_KEY_IDS_VAR}: the KMS key `{key}` does not exist"
                    )),
                    other => other,
                })?;
            if !allowed.contains(&arn) {
                allowed.push(arn);
            }
        }
        Ok(AwsKms {
            allowed: Arc::from(allowed),
            legacy_keys: Arc::default(),
            ..self
        })
    }

    /// A provider configured by the environment: `KMS_KEY_ID`, the keys of
    /// `KMS_DECRYPT_KEY_IDS` allowed for decryption, and the AWS chain.
    pub async fn from_env(options: KmsOptions) -> Result<Self> {
        let key = std::env::var(KMS_KEY_ID_VAR).map_err(|_| {
            Error::Configuration(format!(
                "{KMS_KEY_ID_VAR} is not set (a key id, ARN or alias)"
            ))
        })?;
        let provider = Self::new(KmsConnection::from_env(options).await?, &key).await?;
        match std::env::var(KMS_DECRYPT_KEY_IDS_VAR) {
            Ok(list) => provider.allow_decrypt_keys(list.split(',')).await,
            Err(std::env::VarError::NotPresent) => Ok(provider),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Configuration(format!(
                "{KMS_DECRYPT_KEY_IDS_VAR} is not valid UTF-8"
            ))),
        }
    }

    /// The ARN of the master key.
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// The ARNs of every master key this provider unwraps under: its own first, then the keys
    /// allowed for decryption.
    pub fn allowed_key_arns(&self) -> &[String] {
        &self.allowed
    }

    /// The connection (request counters, set-up functions).
    pub fn connection(&self) -> &KmsConnection {
        &self.connection
    }

    fn envelope(&self, key_arn: &str, blob: &[u8]) -> Result<WrappedKey> {
        let mut bytes = envelope_header(&MasterKeyRef {
            provider: ProviderKind::AwsKms,
            key_id: key_arn.to_owned(),
            version: 0,
        })?;
        bytes.extend_from_slice(blob);
        WrappedKey::new(bytes)
    }

    fn allows(&self, key_arn: &str) -> bool {
        self.allowed.iter().any(|allowed| allowed == key_arn)
    }

    /// The allowed key named by an envelope, or `UnknownMasterKey` (before any request).
    fn allowed_source<'k>(&self, master_key: &'k MasterKeyRef) -> Result<&'k str> {
        if master_key.provider == ProviderKind::AwsKms && self.allows(&master_key.key_id) {
            Ok(&master_key.key_id)
        } else {
            Err(Error::UnknownMasterKey {
                key_id: master_key.to_string(),
            })
        }
    }

    /// The allowed keys in the order a legacy blob tries them: the one that opened it before
    /// first, then the configured order.
    fn legacy_order(&self, digest: &[u8; 32]) -> Vec<usize> {
        let remembered = self
            .legacy_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .copied();
        let mut order: Vec<usize> = remembered.into_iter().collect();
        order.extend((0..self.allowed.len()).filter(|i| Some(*i) != remembered));
        order
    }

    fn remember_legacy(&self, digest: [u8; 32], index: usize) {
        let mut memo = self
            .legacy_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if memo.len() >= LEGACY_MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(digest, index);
    }

    /// Runs `attempt` with each allowed key in the order for the legacy `blob` until one
    /// opens it (see the module docs).
    async fn with_legacy_key<T, F, Fut>(&self, blob: &[u8], mut attempt: F) -> Result<T>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, KmsFailure>>,
    {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(blob).into();
        for index in self.legacy_order(&digest) {
            match attempt(self.allowed[index].clone()).await {
                Ok(value) => {
                    self.remember_legacy(digest, index);
                    return Ok(value);
                }
                Err(KmsFailure::OtherKey) => continue,
                Err(KmsFailure::Error(err)) => return Err(err),
            }
        }
        Err(Error::AuthenticationFailed)
    }
}

/// A failed attempt on a legacy blob: under another key (try the next allowed one), or an
/// error that ends the attempt.
enum KmsFailure {
    OtherKey,
    Error(Error),
}

/// Checks that KMS says the key `requested` did the decryption (when it says which key did):
/// a blob under another key is never accepted, even from a server that ignores `KeyId`.
fn answered_by(answered: Option<&str>, requested: &str) -> Result<(), KmsFailure> {
    match answered {
        Some(key) if key != requested => Err(KmsFailure::OtherKey),
        _ => Ok(()),
    }
}

/// [`call`] for an attempt on a legacy blob with an explicit key.
async fn call_legacy<T, E, R>(
    request: impl Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, KmsFailure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let (result, attempts) = counted(request).await;
    result.map_err(|err| {
        let code = match &err {
            SdkError::ServiceError(service) => service.err().code().map(|c| {
                let c = c.rsplit('#').next().unwrap_or(c);
                c == "IncorrectKeyException" || c == "AccessDeniedException"
            }),
            _ => None,
        };
        if code == Some(true) {
            KmsFailure::OtherKey
        } else {
            KmsFailure::Error(map_error(err, attempts))
        }
    })
}

fn data_key_from_blob(blob: Option<&Blob>) -> Result<DataKey> {
    let bytes = blob.ok_or_else(|| unavailable(1, "KMS answered without a plaintext key"))?;
    DataKey::try_from_slice(bytes.as_ref())
        .ok_or_else(|| Error::stored("KMS returned a data key that is not 32 bytes"))
}

fn context_of(context: &KeyContext) -> std::collections::HashMap<String, String> {
    context
        .encryption_context()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[async_trait]
impl KeyProvider for AwsKms {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn master_key(&self) -> MasterKeyRef {
        MasterKeyRef {
            provider: ProviderKind::AwsKms,
            key_id: self.key_arn.clone(),
            version: 0,
        }
    }

    async fn generate_data_key(&self, purpose: KeyPurpose) -> Result<GeneratedDataKey> {
        self.generate_data_key_in(&KeyContext::new(purpose)).await
    }

    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        self.unwrap_data_key_in(wrapped, &KeyContext::new(purpose))
            .await
    }

    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        self.rewrap_data_key_in(wrapped, &KeyContext::new(purpose), to)
            .await
    }

    fn binds_data_key_ids(&self) -> bool {
        true
    }

    async fn generate_data_key_in(&self, context: &KeyContext) -> Result<GeneratedDataKey> {
        let out = call(
            self.connection
                .client()
                .generate_data_key()
                .key_id(&self.key_arn)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(context_of(context)))
                .send(),
        )
        .await?;
        let key = data_key_from_blob(out.plaintext())?;
        let blob = out
            .ciphertext_blob()
            .ok_or_else(|| unavailable(1, "KMS answered without a ciphertext blob"))?;
        let key_arn = out.key_id().unwrap_or(&self.key_arn);
        let wrapped = self.envelope(key_arn, blob.as_ref())?;
        // The SDK's copy of the plaintext key is dropped with the output; wipe ours first.
        let mut plaintext = out.plaintext.map(Blob::into_inner).unwrap_or_default();
        plaintext.zeroize();
        Ok(GeneratedDataKey { key, wrapped })
    }

    fn can_unwrap(&self, master_key: &MasterKeyRef) -> bool {
        master_key.provider == ProviderKind::AwsKms && self.allows(&master_key.key_id)
    }

    async fn unwrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
    ) -> Result<DataKey> {
        let client = self.connection.client();
        let out = match wrapped.envelope()? {
            KeyEnvelope::Jarvis {
                master_key,
                payload,
                ..
            } => {
                let key_arn = self.allowed_source(&master_key)?;
                let out = call(
                    client
                        .decrypt()
                        .key_id(key_arn)
                        .ciphertext_blob(Blob::new(payload))
                        .set_encryption_context(Some(context_of(context)))
                        .send(),
                )
                .await?;
                answered_by(out.key_id(), key_arn).map_err(|_| Error::AuthenticationFailed)?;
                out
            }
            // Legacy blobs were made with no encryption context; they are tried under each
            // allowed key, never with none.
            KeyEnvelope::Legacy { blob } => {
                self.with_legacy_key(blob, |key_arn| async move {
                    let out = call_legacy(
                        client
                            .decrypt()
                            .key_id(&key_arn)
                            .ciphertext_blob(Blob::new(blob))
                            .send(),
                    )
                    .await?;
                    answered_by(out.key_id(), &key_arn)?;
                    Ok(out)
                })
                .await?
            }
        };
        let key = data_key_from_blob(out.plaintext())?;
        let mut plaintext = out.plaintext.map(Blob::into_inner).unwrap_or_default();
        plaintext.zeroize();
        Ok(key)
    }

    /// Re-wraps under `to`, which the caller chose (the operator's `rotate --to-key`); the
    /// source must be one of the provider's allowed keys.
    async fn rewrap_data_key_in(
        &self,
        wrapped: &WrappedKey,
        context: &KeyContext,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        self.reencrypt(wrapped, context, context, to).await
    }

    /// One `ReEncrypt` under the key's own master key, from the source context to the
    /// destination context.
    async fn rebind_data_key(
        &self,
        wrapped: &WrappedKey,
        from: &KeyContext,
        into: &KeyContext,
    ) -> Result<WrappedKey> {
        let master_key = match wrapped.envelope()? {
            KeyEnvelope::Jarvis { master_key, .. } => master_key,
            KeyEnvelope::Legacy { .. } => {
                return Err(Error::Configuration(
                    "a legacy row's data key is not rebound: re-encrypt the value instead".into(),
                ));
            }
        };
        self.reencrypt(wrapped, from, into, &master_key).await
    }
}

impl AwsKms {
    /// `ReEncrypt` of `wrapped` (source context `from`) under `to` (destination context
    /// `into`); the source must be one of the provider's allowed keys.
    async fn reencrypt(
        &self,
        wrapped: &WrappedKey,
        from: &KeyContext,
        into: &KeyContext,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        if to.provider != ProviderKind::AwsKms {
            return Err(Error::Configuration(format!(
                "the aws-kms provider cannot re-wrap a data key under {to}; decrypt and encrypt again instead"
            )));
        }
        let client = self.connection.client();
        let request = || {
            client
                .re_encrypt()
                .destination_key_id(&to.key_id)
                .set_destination_encryption_context(Some(context_of(into)))
        };
        let out = match wrapped.envelope()? {
            KeyEnvelope::Jarvis {
                master_key,
                payload,
                ..
            } => {
                let key_arn = self.allowed_source(&master_key)?;
                let out = call(
                    request()
                        .source_key_id(key_arn)
                        .ciphertext_blob(Blob::new(payload))
                        .set_source_encryption_context(Some(context_of(from)))
                        .send(),
                )
                .await?;
                answered_by(out.source_key_id(), key_arn)
                    .map_err(|_| Error::AuthenticationFailed)?;
                out
            }
            KeyEnvelope::Legacy { blob } => {
                // KMS answers which key decrypted the blob; a server that does not check
                // `SourceKeyId` is held to it by that answer.
                self.with_legacy_key(blob, |key_arn| async move {
                    let out = call_legacy(
                        request()
                            .source_key_id(&key_arn)
                            .ciphertext_blob(Blob::new(blob))
                            .send(),
                    )
                    .await?;
                    answered_by(out.source_key_id(), &key_arn)?;
                    Ok(out)
                })
                .await?
            }
        };
        let blob = out
            .ciphertext_blob()
            .ok_or_else(|| unavailable(1, "KMS answered without a ciphertext blob"))?;
        self.envelope(out.key_id().unwrap_or(&to.key_id), blob.as_ref())
    }
}
