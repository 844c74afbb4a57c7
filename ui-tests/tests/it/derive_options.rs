//! `search(normalize_with = ...)` and `#[encrypted(redact_debug)]` end to end on SQLite.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use jarvis_crypt::{Encrypted, EncryptedTable, Encryptor, LocalKeyProvider, SearchKey};

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

    diesel::table! {
        secrets (id) {
            id -> BigInt,
            label -> Text,
            encrypted_token -> Binary,
            token_iv -> Binary,
            token_auth_tag -> Binary,
            token_data_key -> Binary,
            encrypted_memo -> Nullable<Binary>,
            memo_iv -> Nullable<Binary>,
            memo_auth_tag -> Nullable<Binary>,
            memo_data_key -> Nullable<Binary>,
        }
    }
}

/// An SSN written `123-45-6789`, `123 45 6789` or `123456789`: its digits.
fn ssn_digits(value: &str) -> String {
    value.chars().filter(char::is_ascii_digit).collect()
}

#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_options::schema::patients, bind = id)]
struct Patient {
    id: i64,
    #[encrypted(search(normalize = "trim", normalize_with = crate::derive_options::ssn_digits))]
    ssn: String,
    name: String,
}

#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_options::schema::secrets, bind = id, redact_debug)]
struct Secret {
    id: i64,
    label: String,
    #[encrypted]
    token: String,
    #[encrypted]
    memo: Option<String>,
}

fn connection() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("sqlite");
    diesel::sql_query(
        "CREATE TABLE patients (id BIGINT PRIMARY KEY, encrypted_ssn BLOB NOT NULL,
         ssn_iv BLOB NOT NULL, ssn_auth_tag BLOB NOT NULL, ssn_data_key BLOB NOT NULL,
         ssn_hash BLOB NOT NULL, name TEXT NOT NULL)",
    )
    .execute(&mut conn)
    .expect("patients");
    diesel::sql_query(
        "CREATE TABLE secrets (id BIGINT PRIMARY KEY, label TEXT NOT NULL,
         encrypted_token BLOB NOT NULL, token_iv BLOB NOT NULL, token_auth_tag BLOB NOT NULL,
         token_data_key BLOB NOT NULL, encrypted_memo BLOB, memo_iv BLOB, memo_auth_tag BLOB,
         memo_data_key BLOB)",
    )
    .execute(&mut conn)
    .expect("secrets");
    conn
}

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build()
}

#[tokio::test]
async fn normalize_with_finds_every_spelling_of_a_value() {
    let enc = encryptor();
    let mut conn = connection();
    for (id, ssn) in [(1, "123-45-6789"), (2, "987654321")] {
        let row = Patient {
            id,
            ssn: ssn.into(),
            name: format!("p{id}"),
        }
        .encrypt_row(&enc)
        .await
        .expect("encrypt");
        diesel::insert_into(schema::patients::table)
            .values(&row)
            .execute(&mut conn)
            .expect("insert");
    }
    for spelling in ["123-45-6789", "123456789", " 123 45 6789 "] {
        let found = Patient::ssn_find(&enc, spelling, |filter| {
            let rows = schema::patients::table
                .filter(filter)
                .select(PatientRow::as_select())
                .load(&mut conn);
            async move { rows.map_err(|e| jarvis_crypt::Error::Configuration(e.to_string())) }
        })
        .await
        .expect("find");
        assert_eq!(found.len(), 1, "{spelling}");
        assert_eq!(found[0].id, 1);
    }
    let none = Patient::ssn_find(&enc, "123-45-6780", |filter| {
        let rows = schema::patients::table
            .filter(filter)
            .select(PatientRow::as_select())
            .load(&mut conn);
        async move { rows.map_err(|e| jarvis_crypt::Error::Configuration(e.to_string())) }
    })
    .await
    .expect("find");
    assert!(none.is_empty());
}

#[tokio::test]
async fn the_description_carries_the_normalizer_to_every_hash() {
    let enc = encryptor();
    let patient = Patient {
        id: 3,
        ssn: "555-12-3456".into(),
        name: "p".into(),
    };
    let mut row = patient.encrypt_row(&enc).await.expect("encrypt");
    let stored = row.ssn_hash.clone();

    // The table description, as the lifecycle jobs and verify read it.
    let table = <Patient as EncryptedTable>::table();
    let field = &table.fields[0];
    let search = field.search.expect("searchable");
    let custom = field.normalize_with.expect("a custom normalizer");
    assert_eq!(custom.name(), "crate::derive_options::ssn_digits");
    assert_eq!(search.spec, Patient::SEARCH_COLUMNS[0].spec);
    assert_eq!(field.search_input(" 555-12-3456"), "555123456");
    let job_hash = enc
        .search_hash(
            table.bound_name,
            search.bound_column,
            search.spec,
            &field.search_input("555 12 3456"),
        )
        .expect("hash");
    assert_eq!(job_hash, stored);

    // The re-hash writes the same hash under the same key.
    row.ssn_hash = enc
        .search_hash(table.bound_name, search.bound_column, search.spec, "other")
        .expect("hash");
    patient.rehash_row(&mut row, &enc).expect("rehash");
    assert_eq!(row.ssn_hash, stored);
}

#[tokio::test]
async fn redact_debug_prints_no_plaintext_and_the_model_round_trips() {
    let enc = encryptor();
    let mut conn = connection();
    let secrets = [
        Secret {
            id: 1,
            label: "primary".into(),
            token: "tok_s3cr3t_value".into(),
            memo: Some("memo-plaintext-words".into()),
        },
        Secret {
            id: 2,
            label: "spare".into(),
            token: "tok_other_s3cr3t".into(),
            memo: None,
        },
    ];
    for secret in &secrets {
        let debug = format!("{secret:?} {secret:#?}");
        assert!(!debug.contains(&secret.token), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(!debug.contains("memo-plaintext"), "{debug}");
        assert!(debug.contains(&secret.label), "plain fields print: {debug}");
        assert!(debug.contains(&format!("id: {}", secret.id)), "{debug}");
        assert!(debug.contains("token: <redacted>"), "{debug}");
        // Whether an optional value is there is not told either.
        assert!(debug.contains("memo: <redacted>"), "{debug}");
        assert!(
            !debug.contains("None") && !debug.contains("Some"),
            "{debug}"
        );

        let row = secret.encrypt_row(&enc).await.expect("encrypt");
        diesel::insert_into(schema::secrets::table)
            .values(&row)
            .execute(&mut conn)
            .expect("insert");
    }
    let rows: Vec<SecretRow> = schema::secrets::table
        .order(schema::secrets::id)
        .select(SecretRow::as_select())
        .load(&mut conn)
        .expect("load");
    let back = Secret::decrypt_rows(rows, &enc).await.expect("decrypt");
    assert!(back == secrets, "the models round trip");
}
