//! The AWS KMS provider against the local KMS-compatible server, through the real SDK.

use std::sync::Arc;
use std::time::Duration;

use jarvis_crypt::aws::alias_for;
use jarvis_crypt::{
    AwsKms, Binding, CacheLimits, Encryptor, Error, KeyEnvelope, KeyProvider, KeyPurpose,
    KmsConnection, KmsOptions, ProviderKind, StoredField, cipher,
};
use jarvis_tests::fault_proxy::{Fault, FaultProxy};
use jarvis_tests::kms_endpoint;

/// A unique name per test run, so tests never share a key or a retry partition.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn options(endpoint: String, max_attempts: u32) -> KmsOptions {
    KmsOptions {
        endpoint_url: Some(endpoint),
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(10),
        retry_partition: Some(unique("partition")),
        ..KmsOptions::default()
    }
}

async fn direct() -> KmsConnection {
    KmsConnection::from_env(options(kms_endpoint(), 3))
        .await
        .expect("KMS connection")
}

/// A fresh key of its own, set up as `jarvis init` does.
async fn fresh_key(connection: &KmsConnection) -> String {
    let env = unique("test");
    connection
        .ensure_key(&env, None)
        .await
        .expect("set-up")
        .key_arn
}

fn place(row: i64) -> Binding<'static> {
    Binding::new("api_keys", "encrypted_key", row)
}

#[tokio::test]
async fn round_trip_through_kms() {
    let connection = direct().await;
    let arn = fresh_key(&connection).await;
    let kms = Arc::new(AwsKms::new(connection, &arn).await.expect("provider"));
    let enc = Encryptor::builder(kms.clone()).build();
    let stored = enc
        .encrypt(&place(1), b"sk_live_123")
        .await
        .expect("encrypt");
    match stored.data_key.envelope().expect("envelope") {
        KeyEnvelope::Jarvis { master_key, .. } => {
            assert_eq!(master_key.provider, ProviderKind::AwsKms);
            assert_eq!(master_key.key_id, arn);
        }
        KeyEnvelope::Legacy { .. } => panic!("written as legacy"),
    }
    // A cold encryptor unwraps through KMS.
    let cold = Encryptor::builder(kms.clone()).build();
    assert_eq!(
        cold.decrypt(&place(1), &stored).await.expect("decrypt"),
        b"sk_live_123"
    );
    assert_eq!(cold.stats().unwrap_calls, 1);
    let moved = cold
        .decrypt(&place(2), &stored)
        .await
        .expect_err("other row");
    assert!(matches!(moved, Error::AuthenticationFailed));
}

#[tokio::test]
async fn set_up_is_idempotent() {
    let connection = direct().await;
    let env = unique("idem");
    let principal = "arn:aws:iam::123456789012:role/jarvis-app";
    let first = connection
        .ensure_key(&env, Some(principal))
        .await
        .expect("first");
    assert!(!first.changes.is_empty());
    assert!(first.notes.is_empty());
    let second = connection
        .ensure_key(&env, Some(principal))
        .await
        .expect("second");
    assert_eq!(second.key_id, first.key_id);
    assert_eq!(
        second.changes,
        Vec::<String>::new(),
        "a second run changes nothing"
    );

    let state = connection
        .describe_key_state(&first.alias)
        .await
        .expect("describe");
    assert_eq!(state.key_id, first.key_id);
    assert!(state.enabled);
    assert!(state.rotation_enabled);
    assert_eq!(state.aliases, vec![alias_for(&env).expect("alias")]);
    assert_eq!(
        state.policy_statements,
        ["JarvisKeyAdministration", "JarvisApplicationUse"]
    );
    let app = &state.policy["Statement"][1];
    assert_eq!(app["Principal"]["AWS"], principal);
    assert_eq!(
        app["Action"],
        serde_json::json!([
            "kms:GenerateDataKey",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:DescribeKey"
        ])
    );

    // Without a principal the set-up says who holds the key.
    let env = unique("admin-only");
    let alone = connection
        .ensure_key(&env, None)
        .await
        .expect("no principal");
    assert_eq!(alone.notes.len(), 1);
    let state = connection
        .describe_key_state(&alone.key_id)
        .await
        .expect("describe");
    assert_eq!(state.policy_statements, ["JarvisKeyAdministration"]);
}

#[tokio::test]
async fn another_encryption_context_fails_with_its_kind() {
    let connection = direct().await;
    let arn = fresh_key(&connection).await;
    let kms = AwsKms::new(connection, &arn).await.expect("provider");
    let generated = kms.generate_data_key(KeyPurpose::Field).await.expect("gen");
    let err = kms
        .unwrap_data_key(&generated.wrapped, KeyPurpose::Backup)
        .await
        .expect_err("context is bound");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");
    kms.unwrap_data_key(&generated.wrapped, KeyPurpose::Field)
        .await
        .expect("right context");
}

#[tokio::test]
async fn an_unknown_key_is_key_not_found() {
    let connection = direct().await;
    let err = AwsKms::new(connection.clone(), "alias/jarvis-never-created-anywhere")
        .await
        .expect_err("no such key");
    assert!(matches!(err, Error::UnknownMasterKey { .. }), "{err}");
    let err = AwsKms::new(connection, "0b7f3c55-1f2e-4d6a-9c3b-000000000000")
        .await
        .expect_err("no such key");
    assert!(matches!(err, Error::UnknownMasterKey { .. }), "{err}");
}

#[tokio::test]
async fn reencrypt_moves_a_data_key_to_another_master_key() {
    let connection = direct().await;
    let first = fresh_key(&connection).await;
    let second = fresh_key(&connection).await;
    let old = Arc::new(
        AwsKms::new(connection.clone(), &first)
            .await
            .expect("provider"),
    );
    let new = Arc::new(
        AwsKms::new(connection.clone(), &second)
            .await
            .expect("provider"),
    );
    let stored = Encryptor::builder(old.clone())
        .build()
        .encrypt(&place(5), b"refresh-token")
        .await
        .expect("encrypt");
    // A provider re-wraps only from keys it is configured with: the new key's alone refuses.
    assert!(matches!(
        Encryptor::builder(new.clone())
            .build()
            .rewrap(&stored.data_key, &new.master_key())
            .await,
        Err(Error::UnknownMasterKey { .. })
    ));
    let enc = Encryptor::builder(new.clone()).decrypt_with(old).build();
    let before = connection.requests();
    let rewrapped = enc
        .rewrap(&stored.data_key, &new.master_key())
        .await
        .expect("re-encrypt");
    assert_eq!(connection.requests().re_encrypt - before.re_encrypt, 1);
    let named = rewrapped.envelope().expect("envelope");
    assert_eq!(named.master_key().expect("named").key_id, second);
    let moved = StoredField {
        data_key: rewrapped,
        ..stored
    };
    assert_eq!(
        enc.decrypt(&place(5), &moved).await.expect("decrypt"),
        b"refresh-token"
    );
}

#[tokio::test]
async fn ten_thousand_values_one_generate_and_one_decrypt() {
    let proxy = FaultProxy::start(&kms_endpoint()).await;
    let connection = KmsConnection::from_env(options(proxy.url(), 3))
        .await
        .expect("connection");
    let arn = fresh_key(&direct().await).await;
    let kms = Arc::new(
        AwsKms::new(connection.clone(), &arn)
            .await
            .expect("provider"),
    );
    let writer = Encryptor::builder(kms.clone()).build();
    let bindings: Vec<Binding<'static>> = (0..10_000).map(place).collect();
    let mut stored = Vec::with_capacity(bindings.len());
    for (i, binding) in bindings.iter().enumerate() {
        stored.push(
            writer
                .encrypt(binding, format!("key-{i}").as_bytes())
                .await
                .expect("encrypt"),
        );
    }
    assert_eq!(connection.requests().generate_data_key, 1);
    assert_eq!(proxy.seen("GenerateDataKey"), 1);

    let reader = Encryptor::builder(kms).build();
    let items: Vec<_> = bindings.iter().copied().zip(stored.iter()).collect();
    let values = reader.decrypt_many(&items).await;
    assert!(values.iter().all(Result::is_ok));
    assert_eq!(connection.requests().decrypt, 1);
    assert_eq!(proxy.seen("Decrypt"), 1);
    assert_eq!(reader.stats().unwrap_calls, 1);
}

/// A provider behind a fault proxy with `attempts` attempts per request.
async fn behind_proxy(attempts: u32) -> (FaultProxy, AwsKms) {
    let arn = fresh_key(&direct().await).await;
    let proxy = FaultProxy::start(&kms_endpoint()).await;
    let connection = KmsConnection::from_env(options(proxy.url(), attempts))
        .await
        .expect("connection");
    let kms = AwsKms::new(connection, &arn).await.expect("provider");
    (proxy, kms)
}

#[tokio::test]
async fn disabled_and_pending_deletion_keys() {
    let (proxy, kms) = behind_proxy(3).await;
    for code in ["DisabledException", "KMSInvalidStateException"] {
        proxy.inject("GenerateDataKey", Fault::Error { status: 400, code }, 1);
        let err = kms
            .generate_data_key(KeyPurpose::Field)
            .await
            .expect_err(code);
        assert!(
            matches!(err, Error::MasterKeyDisabled { .. }),
            "{code}: {err}"
        );
    }
    proxy.inject(
        "Decrypt",
        Fault::Error {
            status: 400,
            code: "AccessDeniedException",
        },
        1,
    );
    let generated = kms.generate_data_key(KeyPurpose::Field).await.expect("gen");
    let err = kms
        .unwrap_data_key(&generated.wrapped, KeyPurpose::Field)
        .await
        .expect_err("denied");
    assert!(matches!(err, Error::AccessDenied(_)), "{err}");
}

#[tokio::test]
async fn throttling_within_the_retry_limit_succeeds() {
    let (proxy, kms) = behind_proxy(3).await;
    proxy.inject(
        "GenerateDataKey",
        Fault::Error {
            status: 400,
            code: "ThrottlingException",
        },
        2,
    );
    kms.generate_data_key(KeyPurpose::Field)
        .await
        .expect("third attempt succeeds");
    assert_eq!(proxy.seen("GenerateDataKey"), 3);
    assert_eq!(kms.connection().requests().generate_data_key, 3);
}

#[tokio::test]
async fn throttling_beyond_the_retry_limit_says_how_many_attempts() {
    let (proxy, kms) = behind_proxy(3).await;
    proxy.inject(
        "GenerateDataKey",
        Fault::Error {
            status: 400,
            code: "ThrottlingException",
        },
        10,
    );
    let err = kms
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect_err("throttled");
    assert!(matches!(err, Error::Throttled { attempts: 3 }), "{err}");
    assert!(err.to_string().contains("3 attempts"));
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_unavailability() {
    let (proxy, kms) = behind_proxy(2).await;
    for status in [500u16, 503] {
        let code = if status == 500 {
            "KMSInternalException"
        } else {
            "ServiceUnavailableException"
        };
        proxy.inject("GenerateDataKey", Fault::Error { status, code }, 2);
        let err = kms
            .generate_data_key(KeyPurpose::Field)
            .await
            .expect_err("5xx");
        assert!(
            matches!(err, Error::ProviderUnavailable { attempts: 2, .. }),
            "{status}: {err}"
        );
    }
    proxy.inject("GenerateDataKey", Fault::Close, 2);
    let err = kms
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect_err("closed");
    assert!(matches!(err, Error::ProviderUnavailable { .. }), "{err}");
    // One 5xx, then success: retried.
    proxy.inject(
        "GenerateDataKey",
        Fault::Error {
            status: 503,
            code: "ServiceUnavailableException",
        },
        1,
    );
    kms.generate_data_key(KeyPurpose::Field)
        .await
        .expect("retried");
}

#[tokio::test]
async fn a_failing_kms_loses_nothing_through_the_encryptor() {
    let (proxy, kms) = behind_proxy(2).await;
    let enc = Encryptor::builder(Arc::new(kms))
        .cache_limits(CacheLimits {
            max_messages: 1,
            ..CacheLimits::default()
        })
        .build();
    let ok = enc.encrypt(&place(1), b"before").await.expect("encrypt");
    proxy.inject(
        "*",
        Fault::Error {
            status: 503,
            code: "ServiceUnavailableException",
        },
        4,
    );
    let err = enc.encrypt(&place(2), b"during").await.expect_err("outage");
    assert!(matches!(err, Error::ProviderUnavailable { .. }));
    enc.cache().clear().await;
    let err = enc.decrypt(&place(1), &ok).await.expect_err("outage");
    assert!(matches!(err, Error::ProviderUnavailable { .. }));
    // After the outage everything reads back.
    assert_eq!(enc.decrypt(&place(1), &ok).await.expect("after"), b"before");
}

#[tokio::test]
async fn legacy_rows_decrypt_only_when_allowed() {
    // A row as the earlier implementation wrote it: a data key from GenerateDataKey without
    // an encryption context, a 16-byte IV, no associated data, the bare blob.
    let endpoint = kms_endpoint();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&shared);
    let connection = KmsConnection::from_client(client.clone(), options(endpoint, 3));
    let arn = fresh_key(&connection).await;
    let out = client
        .generate_data_key()
        .key_id(&arn)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .expect("legacy data key");
    let key: [u8; 32] = out
        .plaintext()
        .expect("plaintext")
        .as_ref()
        .try_into()
        .expect("32 bytes");
    let iv = [7u8; 16];
    let (ct, tag) = cipher::seal_with_nonce(&key, &iv, b"", b"legacy@example.com").expect("seal");
    let blob = out.ciphertext_blob().expect("blob").as_ref().to_vec();
    let legacy = StoredField::from_parts(ct, iv.to_vec(), tag.to_vec(), blob).expect("shape");
    assert!(legacy.is_legacy());

    let kms = Arc::new(AwsKms::new(connection, &arn).await.expect("provider"));
    let strict = Encryptor::builder(kms.clone()).build();
    assert!(matches!(
        strict.decrypt(&place(1), &legacy).await,
        Err(Error::LegacyNotAllowed)
    ));
    let lenient = Encryptor::builder(kms).allow_legacy(true).build();
    assert_eq!(
        lenient.decrypt(&place(1), &legacy).await.expect("legacy"),
        b"legacy@example.com"
    );
}

/// A data key wrapped under `arn` through KMS directly, and a value sealed under it, bound to
/// `place(row)`: what a row written under another KMS key than the provider's looks like.
async fn value_under(connection: &KmsConnection, arn: &str, row: i64) -> StoredField {
    let other = Arc::new(
        AwsKms::new(connection.clone(), arn)
            .await
            .expect("provider"),
    );
    Encryptor::builder(other)
        .build()
        .encrypt(&place(row), b"forged@example.com")
        .await
        .expect("encrypt")
}

#[tokio::test]
async fn a_value_under_a_key_not_configured_is_refused_before_any_request() {
    let connection = direct().await;
    let configured = fresh_key(&connection).await;
    let second_env = unique("second");
    let second = connection
        .ensure_key(&second_env, None)
        .await
        .expect("set-up")
        .key_arn;
    let forged = value_under(&connection, &second, 7).await;

    // A connection of its own, so its counters see only what this provider sends.
    let own = direct().await;
    let kms = Arc::new(
        AwsKms::new(own.clone(), &configured)
            .await
            .expect("provider"),
    );
    let before = own.requests();
    let encryptor = Encryptor::builder(kms.clone()).build();
    let err = encryptor
        .decrypt(&place(7), &forged)
        .await
        .expect_err("a key that is not configured");
    assert!(
        matches!(&err, Error::UnknownMasterKey { key_id } if key_id.contains(&second)),
        "{err:?}"
    );
    // Directly through the provider, and for re-wrapping, too.
    assert!(matches!(
        kms.unwrap_data_key(&forged.data_key, KeyPurpose::Field)
            .await,
        Err(Error::UnknownMasterKey { .. })
    ));
    assert!(matches!(
        kms.rewrap_data_key(&forged.data_key, KeyPurpose::Field, &kms.master_key())
            .await,
        Err(Error::UnknownMasterKey { .. })
    ));
    let sent = own.requests();
    assert_eq!(sent.decrypt, before.decrypt, "no Decrypt was sent");
    assert_eq!(sent.re_encrypt, before.re_encrypt, "no ReEncrypt was sent");

    // Allowed explicitly (here by alias name and again by ARN: one entry), it decrypts.
    let alias = alias_for(&second_env).expect("alias");
    let allowing = AwsKms::new(own.clone(), &configured)
        .await
        .expect("provider")
        .allow_decrypt_keys([alias.as_str(), second.as_str(), configured.as_str()])
        .await
        .expect("allowed keys resolve");
    assert_eq!(
        allowing.allowed_key_arns(),
        [configured.clone(), second.clone()]
    );
    let encryptor = Encryptor::builder(Arc::new(allowing)).build();
    assert_eq!(
        encryptor
            .decrypt(&place(7), &forged)
            .await
            .expect("allowed"),
        b"forged@example.com"
    );
    // New data keys are still generated under the configured key only.
    let fresh = encryptor
        .encrypt(&place(8), b"new@example.com")
        .await
        .expect("encrypt");
    let envelope = fresh.data_key.envelope().expect("envelope");
    assert_eq!(
        envelope.master_key().map(|k| k.key_id.as_str()),
        Some(configured.as_str())
    );
}

#[tokio::test]
async fn an_allowed_key_that_does_not_resolve_fails_at_start() {
    let connection = direct().await;
    let configured = fresh_key(&connection).await;
    let err = AwsKms::new(connection, &configured)
        .await
        .expect("provider")
        .allow_decrypt_keys(["alias/jarvis-never-created-anywhere"])
        .await
        .expect_err("an unknown key");
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("KMS_DECRYPT_KEY_IDS")),
        "{err:?}"
    );
}

/// A legacy blob (GenerateDataKey without an encryption context) under `arn`, and the data
/// key's plaintext.
async fn legacy_blob(
    client: &aws_sdk_kms::Client,
    arn: &str,
) -> (jarvis_crypt::WrappedKey, Vec<u8>) {
    let out = client
        .generate_data_key()
        .key_id(arn)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .expect("legacy data key");
    let plaintext = out.plaintext().expect("plaintext").as_ref().to_vec();
    let blob = out.ciphertext_blob().expect("blob").as_ref().to_vec();
    (
        jarvis_crypt::WrappedKey::new(blob).expect("blob"),
        plaintext,
    )
}

#[tokio::test]
async fn legacy_blobs_are_tried_under_each_allowed_key_and_remembered() {
    use secrecy::ExposeSecret;
    let endpoint = kms_endpoint();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = aws_sdk_kms::Client::new(&shared);
    let setup = KmsConnection::from_client(client.clone(), options(endpoint.clone(), 3));
    let configured = fresh_key(&setup).await;
    let second = fresh_key(&setup).await;
    let foreign = fresh_key(&setup).await;
    let (under_second, key) = legacy_blob(&client, &second).await;
    let (under_foreign, _) = legacy_blob(&client, &foreign).await;

    let own = KmsConnection::from_client(client.clone(), options(endpoint, 3));
    let only = AwsKms::new(own.clone(), &configured)
        .await
        .expect("provider");
    // Under the configured key alone, a blob of another key opens under no allowed key.
    assert!(matches!(
        only.unwrap_data_key(&under_second, KeyPurpose::Field).await,
        Err(Error::AuthenticationFailed)
    ));

    let kms = only
        .allow_decrypt_keys([second.as_str()])
        .await
        .expect("allowed");
    let before = own.requests().decrypt;
    let unwrapped = kms
        .unwrap_data_key(&under_second, KeyPurpose::Field)
        .await
        .expect("the second allowed key opens it");
    assert_eq!(unwrapped.expose_secret().as_slice(), key.as_slice());
    assert_eq!(
        own.requests().decrypt - before,
        2,
        "the configured key first, then the second"
    );
    // The key that opened it is remembered: one request the next time.
    let before = own.requests().decrypt;
    kms.unwrap_data_key(&under_second, KeyPurpose::Field)
        .await
        .expect("again");
    assert_eq!(own.requests().decrypt - before, 1);

    // A blob under a key that is not allowed: every allowed key tried, then refused.
    let before = own.requests().decrypt;
    assert!(matches!(
        kms.unwrap_data_key(&under_foreign, KeyPurpose::Field).await,
        Err(Error::AuthenticationFailed)
    ));
    assert_eq!(own.requests().decrypt - before, 2);
    // Re-wrapping a legacy blob follows the same rule.
    let moved = kms
        .rewrap_data_key(&under_second, KeyPurpose::Field, &kms.master_key())
        .await
        .expect("re-wrapped from the second key");
    assert_eq!(
        moved
            .envelope()
            .expect("envelope")
            .master_key()
            .map(|k| k.key_id.clone()),
        Some(configured.clone())
    );
    assert!(matches!(
        kms.rewrap_data_key(&under_foreign, KeyPurpose::Field, &kms.master_key())
            .await,
        Err(Error::AuthenticationFailed)
    ));
}

/// The data key's vault id is part of the KMS encryption context: the key unwraps with its
/// own id only, and without one it does not unwrap at all.
#[tokio::test]
async fn a_vault_key_id_is_bound_into_the_encryption_context() {
    use jarvis_crypt::{DataKeyId, KeyContext};
    let connection = direct().await;
    let arn = fresh_key(&connection).await;
    let kms = AwsKms::new(connection, &arn).await.expect("provider");
    assert!(kms.binds_data_key_ids());
    let id = DataKeyId::from_bytes([3; 16]);
    let context = KeyContext::in_vault(KeyPurpose::Field, id);
    let generated = kms.generate_data_key_in(&context).await.expect("generate");
    kms.unwrap_data_key_in(&generated.wrapped, &context)
        .await
        .expect("its own id");
    let other = KeyContext::in_vault(KeyPurpose::Field, DataKeyId::from_bytes([4; 16]));
    let err = kms
        .unwrap_data_key_in(&generated.wrapped, &other)
        .await
        .expect_err("another id");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");
    let err = kms
        .unwrap_data_key(&generated.wrapped, KeyPurpose::Field)
        .await
        .expect_err("no id");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");
}

/// `rotate --compact`'s one call per inline key: the same data key, bound to an id by one
/// `ReEncrypt` under the same KMS key (source context without the id, destination with it).
#[tokio::test]
async fn an_inline_key_is_rebound_to_a_vault_id_in_one_call() {
    use jarvis_crypt::{DataKeyId, KeyContext};
    use secrecy::ExposeSecret;
    let connection = direct().await;
    let arn = fresh_key(&connection).await;
    let kms = AwsKms::new(connection, &arn).await.expect("provider");
    let inline = kms
        .generate_data_key(KeyPurpose::Field)
        .await
        .expect("generate");
    let id = DataKeyId::from_bytes([5; 16]);
    let into = KeyContext::in_vault(KeyPurpose::Field, id);
    let bound = kms
        .rebind_data_key(&inline.wrapped, &KeyContext::new(KeyPurpose::Field), &into)
        .await
        .expect("rebind");
    assert_ne!(bound, inline.wrapped);
    assert_eq!(
        bound.envelope().expect("envelope").master_key(),
        inline.wrapped.envelope().expect("envelope").master_key()
    );
    let key = kms.unwrap_data_key_in(&bound, &into).await.expect("unwrap");
    assert_eq!(key.expose_secret(), inline.key.expose_secret());
    let err = kms
        .unwrap_data_key(&bound, KeyPurpose::Field)
        .await
        .expect_err("bound to the id");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");
}
