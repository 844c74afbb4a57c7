//! `#[derive(Encrypted)]` end to end on PostgreSQL (diesel-async, a database of its own).

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jarvis_crypt::{Encrypted, Encryptor, Error, LocalKeyProvider, SearchKey};

mod schema {
    diesel::table! {
        people (id) {
            id -> BigInt,
            encrypted_email -> Nullable<Binary>,
            email_iv -> Nullable<Binary>,
            email_auth_tag -> Nullable<Binary>,
            email_data_key -> Nullable<Binary>,
            email_hash -> Nullable<Binary>,
            email -> Nullable<Text>,
            encrypted_note -> Nullable<Binary>,
            note_iv -> Nullable<Binary>,
            note_auth_tag -> Nullable<Binary>,
            note_data_key -> Nullable<Binary>,
            encrypted_avatar -> Binary,
            avatar_iv -> Binary,
            avatar_auth_tag -> Binary,
            avatar_data_key -> Binary,
            encrypted_prefs -> Nullable<Binary>,
            prefs_iv -> Nullable<Binary>,
            prefs_auth_tag -> Nullable<Binary>,
            prefs_data_key -> Nullable<Binary>,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Prefs {
    theme: String,
    beta: bool,
}

#[derive(Debug, Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::derive_postgres::schema::people, bind = id)]
struct Person {
    id: i64,
    #[encrypted(search(normalize = "email", bits = 8), migrating_from = email)]
    email: String,
    #[encrypted]
    note: Option<String>,
    #[encrypted]
    avatar: Vec<u8>,
    #[encrypted(json)]
    prefs: Option<Prefs>,
}

async fn connect() -> AsyncPgConnection {
    let url = jarvis_tests::fresh_postgres_database("derive");
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    diesel::sql_query(
        "CREATE TABLE people (id BIGSERIAL PRIMARY KEY, encrypted_email BYTEA, email_iv BYTEA,
         email_auth_tag BYTEA, email_data_key BYTEA, email_hash BYTEA, email TEXT,
         encrypted_note BYTEA, note_iv BYTEA, note_auth_tag BYTEA, note_data_key BYTEA,
         encrypted_avatar BYTEA NOT NULL, avatar_iv BYTEA NOT NULL, avatar_auth_tag BYTEA NOT NULL,
         avatar_data_key BYTEA NOT NULL, encrypted_prefs BYTEA, prefs_iv BYTEA,
         prefs_auth_tag BYTEA, prefs_data_key BYTEA)",
    )
    .execute(&mut conn)
    .await
    .expect("create table");
    conn
}

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::generate()))
        .search_key(SearchKey::generate())
        .build()
}

fn person(id: i64) -> Person {
    Person {
        id,
        email: match id % 4 {
            0 => String::new(),
            1 => format!("Ünïcødé-{id}@Example.com"),
            2 => format!("{}@example.com", "x".repeat(1 << 20)),
            _ => format!("user{id}@example.com"),
        },
        note: (id % 2 == 0).then(|| format!("note {id}")),
        avatar: vec![id as u8; (id as usize) % 5],
        prefs: (id % 3 != 0).then(|| Prefs {
            theme: "dark".into(),
            beta: id % 2 == 1,
        }),
    }
}

async fn load_all(conn: &mut AsyncPgConnection) -> Vec<PersonRow> {
    schema::people::table
        .order(schema::people::id)
        .select(PersonRow::as_select())
        .load(conn)
        .await
        .expect("load")
}

#[tokio::test]
async fn every_field_type_round_trips() {
    let enc = encryptor();
    let mut conn = connect().await;
    let people: Vec<Person> = (1..=12).map(person).collect();
    for p in &people {
        let row = p.encrypt_row(&enc).await.expect("encrypt");
        diesel::insert_into(schema::people::table)
            .values(&row)
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let back = Person::decrypt_rows(load_all(&mut conn).await, &enc)
        .await
        .expect("decrypt");
    assert_eq!(back, people);
}

#[tokio::test]
async fn moved_ciphertexts_fail_and_plaintext_rows_migrate() {
    let enc = encryptor();
    let mut conn = connect().await;
    for id in [1, 2] {
        let row = person(id).encrypt_row(&enc).await.expect("encrypt");
        diesel::insert_into(schema::people::table)
            .values(&row)
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let rows = load_all(&mut conn).await;
    // Row 2's email stored form copied into row 1, and the avatar's into the note columns.
    let mut moved = rows[0].clone();
    moved.encrypted_email = rows[1].encrypted_email.clone();
    moved.email_iv = rows[1].email_iv.clone();
    moved.email_auth_tag = rows[1].email_auth_tag.clone();
    moved.email_data_key = rows[1].email_data_key.clone();
    let err = Person::decrypt_row(moved, &enc)
        .await
        .expect_err("moved row");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");
    let mut column = rows[0].clone();
    column.encrypted_note = Some(rows[0].encrypted_avatar.clone());
    column.note_iv = Some(rows[0].avatar_iv.clone());
    column.note_auth_tag = Some(rows[0].avatar_auth_tag.clone());
    column.note_data_key = Some(rows[0].avatar_data_key.clone());
    let err = Person::decrypt_row(column, &enc)
        .await
        .expect_err("moved column");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");

    // A row written as existing applications do, with only the plaintext email (its
    // avatar copied from row 1, where it is bound).
    diesel::sql_query(
        "INSERT INTO people (id, email, encrypted_avatar, avatar_iv, avatar_auth_tag, avatar_data_key)
         SELECT 3, 'Legacy@Example.com', encrypted_avatar, avatar_iv, avatar_auth_tag, avatar_data_key
         FROM people WHERE id = 1",
    )
    .execute(&mut conn)
    .await
    .expect("plaintext insert");
    let row3 = load_all(&mut conn)
        .await
        .into_iter()
        .find(|r| r.id == 3)
        .expect("row 3");
    assert_eq!(row3.email.as_deref(), Some("Legacy@Example.com"));
    assert!(row3.encrypted_email.is_none());
    // The avatar does not decrypt for row 3: the whole row is refused, nothing is guessed.
    let err = Person::decrypt_row(row3, &enc)
        .await
        .expect_err("avatar bound to row 1");
    assert!(matches!(err, Error::AuthenticationFailed), "{err}");
}

#[tokio::test]
async fn truncated_search_finds_exactly_the_right_row_among_thousands() {
    let enc = encryptor();
    let mut conn = connect().await;
    let mut rows = Vec::new();
    for id in 1..=3000 {
        let p = Person {
            id,
            email: format!("user{id}@example.com"),
            note: None,
            avatar: vec![],
            prefs: None,
        };
        rows.push(p.encrypt_row(&enc).await.expect("encrypt"));
    }
    for chunk in rows.chunks(500) {
        diesel::insert_into(schema::people::table)
            .values(chunk)
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let candidates: i64 = schema::people::table
        .filter(Person::email_search(&enc, "USER2024@example.com ").expect("filter"))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert!(
        candidates > 1,
        "8-bit hashes collide: {candidates} candidates"
    );
    let found = Person::email_find(&enc, " USER2024@example.com", |filter| async {
        schema::people::table
            .filter(filter)
            .select(PersonRow::as_select())
            .load(&mut conn)
            .await
            .map_err(|e| Error::Configuration(e.to_string()))
    })
    .await
    .expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 2024);
}
