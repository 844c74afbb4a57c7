//! `#[encrypted(redact_debug)]` end to end on SQLite.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use jarvis_crypt::{Encrypted, Encryptor, LocalKeyProvider, SearchKey};

mod schema {
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

#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::schema::secrets, bind = id, redact_debug)]
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
