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
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    DataKey, GeneratedDataKey, KeyEnvelope, KeyProvider, KeyPurpose, MasterKeyRef, ProviderKind,
    envelope_header,
};
use crate::stored::WrappedKey;

pub use setup::{KmsKeyState, KmsSetup, alias_for};

/// Environment variable naming the master key (id, ARN or alias).
pub const KMS_KEY_ID_VAR: &str = "KMS_KEY_ID";

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
    let (result, attempts) = ATTEMPTS
        .scope(Cell::new(0), async {
            let result = request.await;
            (result, ATTEMPTS.with(Cell::get))
        })
        .await;
    result.map_err(|err| map_error(err, attempts.max(1)))
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

/// Data keys from AWS KMS, under one master key.
#[derive(Clone)]
pub struct AwsKms {
    connection: KmsConnection,
    key_arn: String,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_arn", &self.key_arn)
            .field("connection", &self.connection)
            .finish()
    }
}

impl AwsKms {
    /// A provider of data keys under `key` (an id, ARN or alias), checked with `DescribeKey`.
    pub async fn new(connection: KmsConnection, key: &str) -> Result<Self> {
        let (_, key_arn) = connection.resolve(key).await?;
        Ok(AwsKms {
            connection,
            key_arn,
        })
    }

    /// A provider configured by the environment: `KMS_KEY_ID` and the AWS chain.
    pub async fn from_env(options: KmsOptions) -> Result<Self> {
        let key = std::env::var(KMS_KEY_ID_VAR).map_err(|_| {
            Error::Configuration(format!(
                "{KMS_KEY_ID_VAR} is not set (a key id, ARN or alias)"
            ))
        })?;
        Self::new(KmsConnection::from_env(options).await?, &key).await
    }

    /// The ARN of the master key.
    pub fn key_arn(&self) -> &str {
        &self.key_arn
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
}

fn data_key_from_blob(blob: Option<&Blob>) -> Result<DataKey> {
    let bytes = blob.ok_or_else(|| unavailable(1, "KMS answered without a plaintext key"))?;
    DataKey::try_from_slice(bytes.as_ref())
        .ok_or_else(|| Error::stored("KMS returned a data key that is not 32 bytes"))
}

fn context_of(purpose: KeyPurpose) -> std::collections::HashMap<String, String> {
    purpose
        .encryption_context()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
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
        let out = call(
            self.connection
                .client()
                .generate_data_key()
                .key_id(&self.key_arn)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(context_of(purpose)))
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

    async fn unwrap_data_key(&self, wrapped: &WrappedKey, purpose: KeyPurpose) -> Result<DataKey> {
        let request = self.connection.client().decrypt();
        let request = match wrapped.envelope()? {
            KeyEnvelope::Jarvis {
                master_key,
                payload,
                ..
            } => {
                if master_key.provider != ProviderKind::AwsKms {
                    return Err(Error::UnknownMasterKey {
                        key_id: master_key.to_string(),
                    });
                }
                request
                    .key_id(master_key.key_id)
                    .ciphertext_blob(Blob::new(payload))
                    .set_encryption_context(Some(context_of(purpose)))
            }
            // Legacy blobs were made with no encryption context.
            KeyEnvelope::Legacy { blob } => request.ciphertext_blob(Blob::new(blob)),
        };
        let out = call(request.send()).await?;
        let key = data_key_from_blob(out.plaintext())?;
        let mut plaintext = out.plaintext.map(Blob::into_inner).unwrap_or_default();
        plaintext.zeroize();
        Ok(key)
    }

    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedKey,
        purpose: KeyPurpose,
        to: &MasterKeyRef,
    ) -> Result<WrappedKey> {
        if to.provider != ProviderKind::AwsKms {
            return Err(Error::Configuration(format!(
                "the aws-kms provider cannot re-wrap a data key under {to}; decrypt and encrypt again instead"
            )));
        }
        let request = self
            .connection
            .client()
            .re_encrypt()
            .destination_key_id(&to.key_id)
            .set_destination_encryption_context(Some(context_of(purpose)));
        let request = match wrapped.envelope()? {
            KeyEnvelope::Jarvis {
                master_key,
                payload,
                ..
            } => request
                .source_key_id(master_key.key_id)
                .ciphertext_blob(Blob::new(payload))
                .set_source_encryption_context(Some(context_of(purpose))),
            KeyEnvelope::Legacy { blob } => request.ciphertext_blob(Blob::new(blob)),
        };
        let out = call(request.send()).await?;
        let blob = out
            .ciphertext_blob()
            .ok_or_else(|| unavailable(1, "KMS answered without a ciphertext blob"))?;
        self.envelope(out.key_id().unwrap_or(&to.key_id), blob.as_ref())
    }
}
