//! `#[derive(Encrypted)]` end to end on SQLite (sync diesel, in memory).

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use jarvis_crypt::{Encrypted, Encryptor, LocalKeyProvider, SearchKey};

mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Nullable<Binary>,
            email_iv -> Nullable<Binary>,
            email_auth_tag -> Nullable<Binary>,
            email_data_key -> Nullable<Binary>,
            email_hash -> Nullable<Binary>,
            email -> Nullable<Text>,
            nickname -> Text,
        }
    }

    diesel::table! {
        api_keys (id) {
            id -> BigInt,
            service_name -> Text,
            encrypted_key -> Binary,
            key_iv -> Binary,
            key_auth_tag -> Binary,
            key_data_key -> Binary,
            key_hash -> Binary,
            encrypted_note -> Nullable<Binary>,
            note_iv -> Nullable<Binary>,
            note_auth_tag -> Nullable<Binary>,
            note_data_key -> Nullable<Binary>,
            encrypted_blob -> Binary,
            blob_iv -> Binary,
            blob_auth_tag -> Binary,
            blob_data_key -> Binary,
            encrypted_scopes -> Binary,
            scopes_iv -> Binary,
            scopes_auth_tag -> Binary,
            scopes_data_key -> Binary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_sqlite::schema::users, bind = id)]
struct User {
    id: i64,
    #[encrypted(search(normalize = "email"), migrating_from = email)]
    email: String,
    nickname: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Scopes {
    read: bool,
    names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_sqlite::schema::api_keys, bind = id)]
struct ApiKey {
    id: i64,
    service_name: String,
    #[encrypted(
        ciphertext = encrypted_key,
        iv = key_iv,
        tag = key_auth_tag,
        data_key = key_data_key,
        search(column = key_hash, bits = 8)
    )]
    key: String,
    #[encrypted]
    note: Option<String>,
    #[encrypted]
    blob: Vec<u8>,
    #[encrypted(json)]
    scopes: Scopes,
}

fn connection() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("sqlite");
    diesel::sql_query(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, encrypted_email BLOB, email_iv BLOB,
         email_auth_tag BLOB, email_data_key BLOB, email_hash BLOB, email TEXT,
         nickname TEXT NOT NULL DEFAULT '')",
    )
    .execute(&mut conn)
    .expect("users");
    diesel::sql_query(
        "CREATE TABLE api_keys (id BIGINT PRIMARY KEY, service_name TEXT NOT NULL,
         encrypted_key BLOB NOT NULL, key_iv BLOB NOT NULL, key_auth_tag BLOB NOT NULL,
         key_data_key BLOB NOT NULL, key_hash BLOB NOT NULL,
         encrypted_note BLOB, note_iv BLOB, note_auth_tag BLOB, note_data_key BLOB,
         encrypted_blob BLOB NOT NULL, blob_iv BLOB NOT NULL, blob_auth_tag BLOB NOT NULL,
         blob_data_key BLOB NOT NULL, encrypted_scopes BLOB NOT NULL, scopes_iv BLOB NOT NULL,
         scopes_auth_tag BLOB NOT NULL, scopes_data_key BLOB NOT NULL)",
    )
    .execute(&mut conn)
    .expect("api_keys");
    conn
}

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build()
}

#[tokio::test]
async fn every_field_type_round_trips() {
    let enc = encryptor();
    let mut conn = connection();
    let keys: Vec<ApiKey> = (0..4)
        .map(|i| ApiKey {
            id: i,
            service_name: format!("svc{i}"),
            key: match i {
                0 => String::new(),
                1 => "ключ-🔑-ñ".to_owned(),
                2 => "x".repeat(1 << 20),
                _ => format!("sk_live_{i}"),
            },
            note: (i % 2 == 0).then(|| format!("note {i}")),
            blob: vec![i as u8; i as usize * 3],
            scopes: Scopes {
                read: i % 2 == 1,
                names: vec![format!("scope{i}")],
            },
        })
        .collect();
    for key in &keys {
        let row = key.encrypt_row(&enc).await.expect("encrypt");
        diesel::insert_into(schema::api_keys::table)
            .values(&row)
            .execute(&mut conn)
            .expect("insert");
    }
    let rows: Vec<ApiKeyRow> = schema::api_keys::table
        .order(schema::api_keys::id)
        .select(ApiKeyRow::as_select())
        .load(&mut conn)
        .expect("load");
    let back = ApiKey::decrypt_rows(rows, &enc).await.expect("decrypt");
    assert_eq!(back, keys);
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_or_column_fails() {
    let enc = encryptor();
    let mut conn = connection();
    for (id, email) in [(1, "a@b.com"), (2, "c@d.com")] {
        let row = User {
            id,
            email: email.into(),
            nickname: "n".into(),
        }
        .encrypt_row(&enc)
        .await
        .expect("encrypt");
        diesel::insert_into(schema::users::table)
            .values(&row)
            .execute(&mut conn)
            .expect("insert");
    }
    let mut rows: Vec<UserRow> = schema::users::table
        .order(schema::users::id)
        .select(UserRow::as_select())
        .load(&mut conn)
        .expect("load");
    // Swap the stored forms of the two rows.
    let second = rows.pop().expect("row 2");
    let first = rows.pop().expect("row 1");
    let swapped = UserRow {
        encrypted_email: second.encrypted_email,
        email_iv: second.email_iv,
        email_auth_tag: second.email_auth_tag,
        email_data_key: second.email_data_key,
        ..first
    };
    let err = User::decrypt_row(swapped, &enc).await.expect_err("moved");
    assert!(
        matches!(err, jarvis_crypt::Error::AuthenticationFailed),
        "{err}"
    );
}

#[tokio::test]
async fn plaintext_rows_are_read_and_rewritten_encrypted() {
    let enc = encryptor();
    let mut conn = connection();
    diesel::sql_query("INSERT INTO users (id, email, nickname) VALUES (7, 'Old@Example.com', 'o')")
        .execute(&mut conn)
        .expect("legacy insert");
    let row: UserRow = schema::users::table
        .select(UserRow::as_select())
        .first(&mut conn)
        .expect("load");
    let user = User::decrypt_row(row, &enc).await.expect("read plaintext");
    assert_eq!(user.email, "Old@Example.com");
    let row = user.encrypt_row(&enc).await.expect("encrypt");
    diesel::update(schema::users::table.find(7))
        .set(&row)
        .execute(&mut conn)
        .expect("update");
    let (plain, cipher): (Option<String>, Option<Vec<u8>>) = schema::users::table
        .select((schema::users::email, schema::users::encrypted_email))
        .first(&mut conn)
        .expect("raw");
    assert_eq!(plain, None, "plaintext cleared");
    assert!(cipher.is_some());
    let found = User::email_find(&enc, "  old@EXAMPLE.com ", |filter| async move {
        schema::users::table
            .filter(filter)
            .select(UserRow::as_select())
            .load(&mut conn)
            .map_err(|e| jarvis_crypt::Error::Configuration(e.to_string()))
    })
    .await
    .expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 7);
}

#[tokio::test]
async fn truncated_hashes_never_return_a_wrong_row() {
    let enc = encryptor();
    let mut conn = connection();
    let mut rows = Vec::new();
    for i in 0..2000 {
        let key = ApiKey {
            id: i,
            service_name: "s".into(),
            key: format!("key-{i}"),
            note: None,
            blob: vec![],
            scopes: Scopes {
                read: true,
                names: vec![],
            },
        };
        rows.push(key.encrypt_row(&enc).await.expect("encrypt"));
    }
    diesel::insert_into(schema::api_keys::table)
        .values(&rows)
        .execute(&mut conn)
        .expect("insert");
    let candidates: i64 = schema::api_keys::table
        .filter(ApiKey::key_search(&enc, "key-1234").expect("filter"))
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert!(
        candidates > 1,
        "8-bit hashes collide among 2000 rows: {candidates}"
    );
    let found = ApiKey::key_find(&enc, "key-1234", |filter| async {
        schema::api_keys::table
            .filter(filter)
            .select(ApiKeyRow::as_select())
            .load(&mut conn)
            .map_err(|e| jarvis_crypt::Error::Configuration(e.to_string()))
    })
    .await
    .expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 1234);
}

/// The same table as `users`, with the table bound into the associated data named explicitly,
/// as a schema-qualified table would be.
#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_sqlite::schema::users, bind = id, aad_table = "accounts.users")]
struct QualifiedUser {
    id: i64,
    #[encrypted(search(normalize = "email"), migrating_from = email)]
    email: String,
    nickname: String,
}

#[tokio::test]
async fn aad_table_names_the_table_bound_into_the_associated_data() {
    let enc = encryptor();
    let user = QualifiedUser {
        id: 3,
        email: "q@example.com".into(),
        nickname: "q".into(),
    };
    let row = user.encrypt_row(&enc).await.expect("encrypt");
    let stored = jarvis_crypt::StoredField::from_parts(
        row.encrypted_email
            .clone()
            .expect("ciphertext")
            .as_bytes()
            .to_vec(),
        row.email_iv.clone().expect("iv").as_bytes().to_vec(),
        row.email_auth_tag.clone().expect("tag").as_bytes().to_vec(),
        row.email_data_key
            .clone()
            .expect("data key")
            .as_bytes()
            .to_vec(),
    )
    .expect("stored form");
    let bound = jarvis_crypt::Binding::new("accounts.users", "encrypted_email", 3);
    assert_eq!(
        enc.decrypt(&bound, &stored)
            .await
            .expect("bound to aad_table"),
        b"q@example.com"
    );
    // Not to the table's own name: the default binding (`users`) is another place.
    let default = jarvis_crypt::Binding::new("users", "encrypted_email", 3);
    assert!(matches!(
        enc.decrypt(&default, &stored).await,
        Err(jarvis_crypt::Error::AuthenticationFailed)
    ));
    let as_user = UserRow {
        id: row.id,
        encrypted_email: row.encrypted_email.clone(),
        email_iv: row.email_iv.clone(),
        email_auth_tag: row.email_auth_tag.clone(),
        email_data_key: row.email_data_key.clone(),
        email_hash: row.email_hash.clone(),
        email: None,
        nickname: row.nickname.clone(),
    };
    assert!(matches!(
        User::decrypt_row(as_user, &enc).await,
        Err(jarvis_crypt::Error::AuthenticationFailed)
    ));
    // The search key of the column is derived under the bound name too.
    let back = QualifiedUser::decrypt_row(row.clone(), &enc)
        .await
        .expect("decrypt");
    assert_eq!(back, user);
    assert_ne!(
        row.email_hash.map(|h| h.as_bytes().to_vec()),
        User {
            id: 3,
            email: "q@example.com".into(),
            nickname: "q".into(),
        }
        .encrypt_row(&enc)
        .await
        .expect("encrypt")
        .email_hash
        .map(|h| h.as_bytes().to_vec())
    );
}

#[test]
fn search_columns_describe_each_searchable_field() {
    assert_eq!(
        User::SEARCH_COLUMNS,
        &[jarvis_crypt::SearchColumn {
            table: "users",
            field: "email",
            ciphertext: "encrypted_email",
            hash: "email_hash",
            spec: jarvis_crypt::SearchSpec {
                normalize: jarvis_crypt::Normalize {
                    trim: true,
                    lowercase: true,
                    nfc: false,
                },
                bits: None,
            },
        }]
    );
    let [key] = ApiKey::SEARCH_COLUMNS else {
        panic!("one searchable field: {:?}", ApiKey::SEARCH_COLUMNS);
    };
    assert_eq!(
        (key.field, key.ciphertext, key.hash, key.spec.bits),
        ("key", "encrypted_key", "key_hash", Some(8))
    );
}

#[tokio::test]
async fn rehash_row_rewrites_only_the_hashes_under_another_search_key() {
    let old = encryptor();
    let mut conn = connection();
    let user = User {
        id: 3,
        email: "Someone@Example.com".into(),
        nickname: "s".into(),
    };
    let row = user.encrypt_row(&old).await.expect("encrypt");
    diesel::insert_into(schema::users::table)
        .values(&row)
        .execute(&mut conn)
        .expect("insert");
    let new = Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build();
    let mut rehashed = row.clone();
    user.rehash_row(&mut rehashed, &new).expect("rehash");
    assert_ne!(rehashed.email_hash, row.email_hash, "a hash of the new key");
    assert_eq!(rehashed.encrypted_email, row.encrypted_email);
    assert_eq!(rehashed.email_data_key, row.email_data_key);
    diesel::update(schema::users::table.find(3))
        .set(&rehashed)
        .execute(&mut conn)
        .expect("update");
    let mut find = |enc: &Encryptor| {
        schema::users::table
            .filter(User::email_search(enc, " someone@example.COM").expect("filter"))
            .count()
            .get_result::<i64>(&mut conn)
            .expect("count")
    };
    assert_eq!(find(&new), 1, "found under the new key");
    assert_eq!(find(&old), 0, "no longer under the old one");
}

mod described {
    diesel::table! {
        /// A table whose primary key is not the bound column, with a renamed column.
        patients (patient_id) {
            patient_id -> BigInt,
            mrn -> Text,
            #[sql_name = "ssn_ciphertext"]
            encrypted_ssn -> Binary,
            ssn_iv -> Binary,
            ssn_auth_tag -> Binary,
            ssn_data_key -> Binary,
            ssn_hash -> Binary,
        }
    }

    diesel::table! {
        /// A composite primary key.
        visits (patient_id, seq) {
            patient_id -> BigInt,
            seq -> Integer,
            encrypted_notes -> Nullable<Binary>,
            notes_iv -> Nullable<Binary>,
            notes_auth_tag -> Nullable<Binary>,
            notes_data_key -> Nullable<Binary>,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_sqlite::described::patients, bind = mrn)]
struct Patient {
    patient_id: i64,
    mrn: String,
    #[encrypted(search(normalize = "trim", bits = 12))]
    ssn: String,
}

#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_sqlite::described::visits, bind = none)]
struct Visit {
    patient_id: i64,
    seq: i32,
    #[encrypted(json)]
    notes: Option<Scopes>,
}

#[test]
fn the_derive_describes_each_table() {
    use jarvis_crypt::{
        BindingProblem, EncryptedTable, Normalize, SearchDescription, SearchSpec, ValueKind,
    };
    let users = User::table();
    assert_eq!(users.model, "User");
    assert_eq!(users.name, "users");
    assert_eq!(users.bound_name, "users");
    assert_eq!(users.primary_key, ["id"]);
    assert_eq!(users.single_primary_key(), Some("id"));
    assert_eq!(users.row_key, Some("id"));
    assert!(users.binding_problems().is_empty());
    let [email] = users.fields.as_slice() else {
        panic!("one encrypted field: {users:?}")
    };
    assert_eq!(email.field, "email");
    assert_eq!(email.kind, ValueKind::Text);
    assert!(!email.nullable);
    assert_eq!(
        (email.ciphertext, email.iv, email.tag, email.data_key),
        (
            "encrypted_email",
            "email_iv",
            "email_auth_tag",
            "email_data_key"
        )
    );
    assert_eq!(email.bound_column, "encrypted_email");
    assert_eq!(email.migrating_from, Some("email"));
    assert_eq!(
        email.search,
        Some(SearchDescription {
            column: "email_hash",
            bound_column: "email_hash",
            spec: SearchSpec::new(Normalize::EMAIL, None).expect("spec"),
        })
    );

    // aad_table: the bound name differs from the SQL name.
    let qualified = QualifiedUser::table();
    assert_eq!(
        (qualified.name.as_str(), qualified.bound_name),
        ("users", "accounts.users")
    );

    // Several fields, kinds and nullability, original column names.
    let api_keys = ApiKey::table();
    let kinds: Vec<_> = api_keys
        .fields
        .iter()
        .map(|f| (f.field, f.kind, f.nullable, f.ciphertext))
        .collect();
    assert_eq!(
        kinds,
        [
            ("key", ValueKind::Text, false, "encrypted_key"),
            ("note", ValueKind::Text, true, "encrypted_note"),
            ("blob", ValueKind::Bytes, false, "encrypted_blob"),
            ("scopes", ValueKind::Json, false, "encrypted_scopes"),
        ]
    );
    assert_eq!(
        api_keys.fields[0].search.map(|s| (s.column, s.spec.bits)),
        Some(("key_hash", Some(8)))
    );

    // A renamed column is described by its SQL name, bound by the derive's spelling; a bound
    // column that is not the primary key is reported.
    let patients = Patient::table();
    assert_eq!(patients.primary_key, ["patient_id"]);
    assert_eq!(patients.fields[0].ciphertext, "ssn_ciphertext");
    assert_eq!(patients.fields[0].bound_column, "encrypted_ssn");
    assert_eq!(
        patients.binding_problems(),
        [BindingProblem::RowKeyNotPrimaryKey {
            row_key: "mrn",
            primary_key: vec!["patient_id".into()],
        }]
    );
    assert!(
        patients.binding_problems()[0]
            .to_string()
            .contains("`mrn`) is not the primary key (`patient_id`)")
    );

    // A composite primary key is described as such; bind = none has no row key.
    let visits = Visit::table();
    assert_eq!(visits.primary_key, ["patient_id", "seq"]);
    assert_eq!(visits.single_primary_key(), None);
    assert_eq!(visits.row_key, None);
    assert_eq!(
        visits.binding_problems(),
        [BindingProblem::CompositePrimaryKey {
            primary_key: vec!["patient_id".into(), "seq".into()],
        }]
    );
    assert_eq!(
        (visits.fields[0].kind, visits.fields[0].nullable),
        (ValueKind::Json, true)
    );
}
