//! The synchronous facade (`jarvis_crypt::blocking`) with synchronous diesel: SQLite
//! (`SqliteConnection`) and PostgreSQL (`PgConnection` through an r2d2 pool), each with the
//! local provider and with AWS KMS against the local KMS server. Plain `#[test]`s: the test
//! process has no tokio runtime of its own, as a synchronous application has none.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use jarvis_crypt::blocking;
use jarvis_crypt::{
    AwsKms, CacheLimits, Encrypted, KmsConnection, KmsOptions, LocalKeyProvider, SearchKey,
};
use jarvis_tests::kms_endpoint;

type BoxError = Box<dyn Error + Send + Sync>;

mod schema {
    diesel::table! {
        patients (id) {
            id -> BigInt,
            encrypted_ssn -> Binary,
            ssn_iv -> Binary,
            ssn_auth_tag -> Binary,
            ssn_data_key -> Binary,
            ssn_hash -> Binary,
            name -> Text,
        }
    }
}

use schema::patients;

/// The README's model.
#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::blocking::schema::patients, bind = id)]
pub(crate) struct Patient {
    /// The primary key, bound into each value's associated data.
    pub id: i64,
    /// Stored encrypted, found through `ssn_hash`.
    #[encrypted(search(normalize = "trim"))]
    pub ssn: String,
    /// A plain column.
    pub name: String,
}

const SQLITE_TABLE: &str = "CREATE TABLE patients (
    id BIGINT PRIMARY KEY,
    encrypted_ssn BLOB NOT NULL, ssn_iv BLOB NOT NULL, ssn_auth_tag BLOB NOT NULL,
    ssn_data_key BLOB NOT NULL, ssn_hash BLOB NOT NULL,
    name TEXT NOT NULL
)";

const POSTGRES_TABLE: &str = "CREATE TABLE patients (
    id BIGINT PRIMARY KEY,
    encrypted_ssn BYTEA NOT NULL, ssn_iv BYTEA NOT NULL, ssn_auth_tag BYTEA NOT NULL,
    ssn_data_key BYTEA NOT NULL, ssn_hash BYTEA NOT NULL,
    name TEXT NOT NULL
)";

fn new_patient(id: i64, ssn: &str, name: &str) -> Patient {
    Patient {
        id,
        ssn: ssn.into(),
        name: name.into(),
    }
}

/// The README's "Synchronous diesel" example, on any synchronous connection.
macro_rules! readme_example {
    ($encryptor:expr, $conn:expr) => {{
        let encryptor: jarvis_crypt::Encryptor = $encryptor;
        let conn = $conn;
        let patient = new_patient(1, "123-45-6789", "Ada");
        let more = vec![
            new_patient(2, "987-65-4321", "Grace"),
            new_patient(3, "555-12-3456", "Alan"),
        ];

        let enc = jarvis_crypt::blocking::Encryptor::new(encryptor)?;
        let row: PatientRow = enc.encrypt_row(&patient)?;
        diesel::insert_into(patients::table)
            .values(&row)
            .execute(conn)?;
        let rows: Vec<PatientRow> = enc.encrypt_rows(&more)?; // one data-key lease
        diesel::insert_into(patients::table)
            .values(&rows)
            .execute(conn)?;

        let rows: Vec<PatientRow> = patients::table
            .order(patients::id)
            .select(PatientRow::as_select())
            .load(conn)?;
        let patients: Vec<Patient> = enc.decrypt_rows(rows)?;
        // Looking up by value: the filter is synchronous, `_find` (which decrypts and
        // confirms) goes through `block_on`.
        let filter = Patient::ssn_search(enc.inner(), " 987-65-4321 ")?;
        let found: Vec<PatientRow> = patients::table
            .filter(filter)
            .select(PatientRow::as_select())
            .load(conn)?;
        let found: Patient = enc.decrypt_row(found.into_iter().next().ok_or("no row")?)?;
        let confirmed: Vec<Patient> =
            enc.block_on(Patient::ssn_find(enc.inner(), "555-12-3456", |filter| {
                let rows = patients::table
                    .filter(filter)
                    .select(PatientRow::as_select())
                    .load(conn);
                std::future::ready(rows.map_err(BoxError::from))
            }))?;

        let mut expected = vec![patient];
        expected.extend(more);
        assert_eq!(patients, expected);
        assert_eq!(found, expected[1]);
        assert_eq!(confirmed, vec![expected[2].clone()]);
        // Stored encrypted: no plaintext in the ciphertext columns.
        let stored: Vec<Vec<u8>> = patients::table.select(patients::encrypted_ssn).load(conn)?;
        assert!(
            stored
                .iter()
                .all(|c| !c.windows(11).any(|w| w == b"123-45-6789"))
        );
        Ok::<_, BoxError>(enc)
    }};
}

fn local_encryptor() -> jarvis_crypt::Encryptor {
    jarvis_crypt::Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn kms_options() -> KmsOptions {
    KmsOptions {
        endpoint_url: Some(kms_endpoint()),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(15),
        retry_partition: Some(unique("blocking")),
        ..KmsOptions::default()
    }
}

/// An AWS KMS provider (a fresh key of its own) built as a synchronous `main` builds one: on
/// a runtime of its own, dropped right after.
fn kms_on_dropped_runtime() -> Result<Arc<AwsKms>, BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    let kms = runtime.block_on(async {
        let connection = KmsConnection::from_env(kms_options()).await?;
        let arn = connection
            .ensure_key(&unique("blocking"), None)
            .await?
            .key_arn;
        AwsKms::new(connection, &arn).await
    })?;
    drop(runtime);
    Ok(Arc::new(kms))
}

fn kms_encryptor(kms: Arc<AwsKms>, limits: CacheLimits) -> jarvis_crypt::Encryptor {
    jarvis_crypt::Encryptor::builder(kms)
        .cache_limits(limits)
        .search_key(SearchKey::generate())
        .build()
}

fn sqlite() -> Result<SqliteConnection, BoxError> {
    let mut conn = SqliteConnection::establish(":memory:")?;
    diesel::sql_query(SQLITE_TABLE).execute(&mut conn)?;
    Ok(conn)
}

fn postgres_pool() -> Result<Pool<ConnectionManager<PgConnection>>, BoxError> {
    let url = jarvis_tests::fresh_postgres_database("blocking");
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    diesel::sql_query(POSTGRES_TABLE).execute(&mut pool.get()?)?;
    Ok(pool)
}

#[test]
fn readme_example_sqlite_local() -> Result<(), BoxError> {
    readme_example!(local_encryptor(), &mut sqlite()?)?;
    Ok(())
}

#[test]
fn readme_example_sqlite_aws_kms() -> Result<(), BoxError> {
    let kms = kms_on_dropped_runtime()?;
    readme_example!(
        kms_encryptor(Arc::clone(&kms), CacheLimits::default()),
        &mut sqlite()?
    )?;
    assert!(kms.connection().requests().generate_data_key >= 1);
    Ok(())
}

#[test]
fn readme_example_postgres_r2d2_local() -> Result<(), BoxError> {
    let pool = postgres_pool()?;
    readme_example!(local_encryptor(), &mut pool.get()?)?;
    Ok(())
}

#[test]
fn readme_example_postgres_r2d2_aws_kms() -> Result<(), BoxError> {
    let pool = postgres_pool()?;
    let kms = kms_on_dropped_runtime()?;
    readme_example!(
        kms_encryptor(Arc::clone(&kms), CacheLimits::default()),
        &mut pool.get()?
    )?;
    assert!(kms.connection().requests().generate_data_key >= 1);
    Ok(())
}

#[test]
fn a_batch_leases_one_data_key() -> Result<(), BoxError> {
    let enc = blocking::Encryptor::new(local_encryptor())?;
    let models: Vec<Patient> = (1..=20).map(|id| new_patient(id, "123", "n")).collect();
    let before = enc.inner().stats();
    let rows = enc.encrypt_rows(&models)?;
    let after = enc.inner().stats();
    let leases =
        (after.encrypt_hits + after.encrypt_misses) - (before.encrypt_hits + before.encrypt_misses);
    assert_eq!(leases, 1);
    assert_eq!(after.batch_encrypts - before.batch_encrypts, 19);
    assert_eq!(enc.decrypt_rows::<Patient>(rows)?, models);
    // One row at a time: a lease per row.
    for model in &models {
        enc.encrypt_row(model)?;
    }
    let last = enc.inner().stats();
    assert_eq!(
        (last.encrypt_hits + last.encrypt_misses) - (after.encrypt_hits + after.encrypt_misses),
        20
    );
    Ok(())
}

/// The provider of a dropped runtime, with a provider call at every encrypt and decrypt:
/// first call, then a call after the SDK's pooled connections have sat idle.
#[test]
fn aws_kms_from_a_dropped_runtime_first_call_and_after_idle() -> Result<(), BoxError> {
    let idle = std::env::var("JARVIS_BLOCKING_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(65);
    let kms = kms_on_dropped_runtime()?;
    let limits = CacheLimits {
        max_messages: 1,
        ..CacheLimits::default()
    };
    let enc = blocking::Encryptor::new(kms_encryptor(Arc::clone(&kms), limits))?;
    let mut conn = sqlite()?;
    let round = |conn: &mut SqliteConnection, id: i64| -> Result<(), BoxError> {
        let model = new_patient(id, "123-45-6789", "Ada");
        let row = enc.encrypt_row(&model)?;
        diesel::insert_into(patients::table)
            .values(&row)
            .execute(conn)?;
        enc.block_on(async {
            enc.inner().cache().clear().await;
            Ok::<_, jarvis_crypt::Error>(())
        })?;
        let row: PatientRow = patients::table
            .find(id)
            .select(PatientRow::as_select())
            .first(conn)?;
        assert_eq!(enc.decrypt_row::<Patient>(row)?, model);
        Ok(())
    };
    let start = kms.connection().requests();
    round(&mut conn, 1)?;
    let first = kms.connection().requests();
    assert_eq!(first.generate_data_key - start.generate_data_key, 1);
    assert_eq!(first.decrypt - start.decrypt, 1);
    std::thread::sleep(Duration::from_secs(idle));
    round(&mut conn, 2)?;
    let second = kms.connection().requests();
    assert_eq!(second.generate_data_key - first.generate_data_key, 1);
    assert_eq!(second.decrypt - first.decrypt, 1);
    Ok(())
}

/// `build` makes the provider on the facade's runtime.
#[test]
fn aws_kms_built_on_the_facade_runtime() -> Result<(), BoxError> {
    let enc = blocking::Encryptor::build(|| async {
        let connection = KmsConnection::from_env(kms_options()).await?;
        let arn = connection
            .ensure_key(&unique("blocking"), None)
            .await?
            .key_arn;
        let kms = AwsKms::new(connection, &arn).await?;
        Ok(kms_encryptor(Arc::new(kms), CacheLimits::default()))
    })?;
    let model = new_patient(7, "123-45-6789", "Ada");
    let row = enc.encrypt_row(&model)?;
    assert_eq!(enc.decrypt_row::<Patient>(row)?, model);
    let debug = format!("{enc:?}");
    assert!(!debug.contains("123-45-6789"), "{debug}");
    Ok(())
}

/// Inside a tokio runtime (a task of a current-thread runtime, a task and a `spawn_blocking`
/// thread of a multi-thread one) every call returns a configuration error at once: no panic,
/// no hang.
#[test]
fn inside_a_runtime_a_clear_error() -> Result<(), BoxError> {
    let kms = kms_on_dropped_runtime()?;
    let enc = Arc::new(blocking::Encryptor::new(kms_encryptor(
        kms,
        CacheLimits::default(),
    ))?);
    let model = new_patient(1, "123-45-6789", "Ada");
    let row = enc.encrypt_row(&model)?;
    let check = |result: jarvis_crypt::Result<PatientRow>| match result {
        Err(jarvis_crypt::Error::Configuration(message)) => {
            assert!(message.contains("inside a tokio runtime"), "{message}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            check(enc.encrypt_row(&model));
            assert!(enc.decrypt_row::<Patient>(row).is_err());
            assert!(blocking::Encryptor::new(local_encryptor()).is_err());
        });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (enc2, model2) = (Arc::clone(&enc), model.clone());
        check(
            tokio::task::spawn_blocking(move || enc2.encrypt_row(&model2))
                .await
                .expect("join"),
        );
        check(enc.encrypt_row(&model));
    });
    drop(runtime);
    // And outside again, it works.
    let row = enc.encrypt_row(&model)?;
    assert_eq!(enc.decrypt_row::<Patient>(row)?, model);
    Ok(())
}

/// An audit sink built with `build` (`DbAudit`, whose writer task runs where it is started)
/// writes its events on the facade's runtime, between calls as well.
#[test]
fn db_audit_built_on_the_facade_runtime_writes_between_calls() -> Result<(), BoxError> {
    use jarvis_crypt::{AuditEvent, AuditSink, Operation};
    use jarvis_models::{Database, DbAudit};

    let url = jarvis_tests::fresh_postgres_database("blocking_audit");
    jarvis_models::migrations::run_pending_migrations_blocking(&url)?;
    let mut sink = None;
    let slot = &mut sink;
    let enc = blocking::Encryptor::build(move || async move {
        let db = Database::connect(&url, 2)
            .await
            .map_err(|e| jarvis_crypt::Error::Configuration(e.to_string()))?;
        *slot = Some(DbAudit::start(db));
        Ok(local_encryptor())
    })?;
    let audit = sink.ok_or("no sink")?;
    let model = new_patient(1, "123-45-6789", "Ada");
    let started = std::time::Instant::now();
    let row = enc.encrypt_row(&model)?;
    audit.record(
        AuditEvent::new(Operation::Encrypt, Some("patients".to_owned()), started).records([1]),
    );
    // No facade call: the writer runs on the facade's worker thread.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while audit.written() < 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(audit.written(), 1);
    assert_eq!(enc.decrypt_row::<Patient>(row)?, model);
    enc.block_on(async {
        audit.shutdown().await;
        Ok::<_, jarvis_crypt::Error>(())
    })?;
    assert_eq!(audit.dropped(), 0);
    Ok(())
}
