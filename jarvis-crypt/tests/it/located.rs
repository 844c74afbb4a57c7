//! Errors that say where: a bad value among good ones is found by table, column and row key,
//! the other rows of the batch still decrypt, and the all-or-nothing call fails as before.

use std::sync::Arc;

use jarvis_crypt::{AuthTag, Encrypted, Encryptor, Error, ErrorKind, LocalKeyProvider};

mod schema {
    diesel::table! {
        patients (id) {
            id -> BigInt,
            encrypted_ssn -> Binary,
            ssn_iv -> Binary,
            ssn_auth_tag -> Binary,
            ssn_data_key -> Binary,
            encrypted_notes -> Nullable<Binary>,
            notes_iv -> Nullable<Binary>,
            notes_auth_tag -> Nullable<Binary>,
            notes_data_key -> Nullable<Binary>,
        }
    }
}

#[derive(Encrypted, Clone, PartialEq)]
#[encrypted(table = crate::located::schema::patients, bind = id)]
struct Patient {
    id: i64,
    #[encrypted]
    ssn: String,
    #[encrypted]
    notes: Option<String>,
}

fn encryptor() -> Encryptor {
    Encryptor::builder(Arc::new(LocalKeyProvider::generate())).build()
}

fn patients(n: i64) -> Vec<Patient> {
    (1..=n)
        .map(|id| Patient {
            id,
            ssn: format!("123-45-{id:04}"),
            notes: (id % 2 == 0).then(|| format!("note {id}")),
        })
        .collect()
}

async fn rows(encryptor: &Encryptor, models: &[Patient]) -> Vec<PatientRow> {
    let mut rows = Vec::new();
    for model in models {
        rows.push(model.encrypt_row(encryptor).await.expect("encrypt"));
    }
    rows
}

fn flip_tag(tag: &AuthTag) -> AuthTag {
    let mut bytes = tag.as_ref().to_vec();
    bytes[0] ^= 1;
    AuthTag::new(bytes).expect("16 bytes")
}

#[tokio::test]
async fn one_tampered_row_of_a_thousand_is_located_and_the_others_read() {
    let encryptor = encryptor();
    let models = patients(1000);
    let mut rows = rows(&encryptor, &models).await;
    rows[737].notes_auth_tag = rows[737].notes_auth_tag.as_ref().map(flip_tag);
    assert!(rows[737].notes_auth_tag.is_some(), "row 738 has notes");

    let results = Patient::decrypt_rows_each(rows.clone(), &encryptor).await;
    assert_eq!(results.len(), 1000);
    for (i, result) in results.iter().enumerate() {
        if i == 737 {
            let error = result.as_ref().err().expect("the tampered row fails");
            assert_eq!(error.index(), 737);
            assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
            assert!(matches!(error.error(), Error::AuthenticationFailed));
            let location = error.location().expect("a location");
            assert_eq!(location.table, "patients");
            assert_eq!(location.column, "encrypted_notes");
            assert_eq!(location.row_key.as_deref(), Some("738"));
            let message = error.to_string();
            assert!(
                message.contains("table `patients`, column `encrypted_notes`, row 738"),
                "{message}"
            );
            assert!(!message.contains("note 738"), "{message}");
        } else {
            let Ok(model) = result else {
                panic!("row {i} decrypts");
            };
            assert!(*model == models[i], "row {i} round-trips");
        }
    }

    // The all-or-nothing call fails with the bare error, as it always has.
    let error = Patient::decrypt_rows(rows, &encryptor)
        .await
        .err()
        .expect("all or nothing");
    assert!(matches!(error, Error::AuthenticationFailed));
}

#[tokio::test]
async fn a_row_with_partly_null_columns_is_reported_by_field() {
    let encryptor = encryptor();
    let mut rows = rows(&encryptor, &patients(2)).await;
    rows[1].notes_iv = None;
    let results = Patient::decrypt_rows_each(rows, &encryptor).await;
    assert!(results[0].is_ok());
    let error = results[1].as_ref().err().expect("partly NULL");
    assert_eq!(error.index(), 1);
    assert_eq!(error.kind(), ErrorKind::InvalidStoredForm);
    assert!(error.to_string().contains("notes"), "{error}");
    let location = error.location().expect("a location");
    assert_eq!(
        (
            location.table.as_str(),
            location.column.as_str(),
            location.row_key.as_deref()
        ),
        ("patients", "encrypted_notes", Some("2"))
    );
}

#[tokio::test]
async fn bad_rows_of_both_kinds_fail_alone_in_one_batch() {
    let encryptor = encryptor();
    let models = patients(6);
    let mut rows = rows(&encryptor, &models).await;
    rows[1].notes_data_key = None;
    rows[4].ssn_auth_tag = flip_tag(&rows[4].ssn_auth_tag);
    let results = Patient::decrypt_rows_each(rows, &encryptor).await;
    let failed: Vec<(usize, ErrorKind, String)> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| {
            let location = e.location().expect("a location");
            (e.index(), e.kind(), location.column.clone())
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (
                1,
                ErrorKind::InvalidStoredForm,
                "encrypted_notes".to_owned()
            ),
            (
                4,
                ErrorKind::AuthenticationFailed,
                "encrypted_ssn".to_owned()
            ),
        ]
    );
    for i in [0, 2, 3, 5] {
        let Ok(model) = &results[i] else {
            panic!("row {i} decrypts");
        };
        assert!(*model == models[i], "row {i} round-trips");
    }
}

#[tokio::test]
async fn a_value_moved_to_another_row_is_located_at_the_row_it_was_read_from() {
    let encryptor = encryptor();
    let mut rows = rows(&encryptor, &patients(3)).await;
    let (ciphertext, iv, tag, key) = (
        rows[0].encrypted_ssn.clone(),
        rows[0].ssn_iv.clone(),
        rows[0].ssn_auth_tag.clone(),
        rows[0].ssn_data_key.clone(),
    );
    rows[2].encrypted_ssn = ciphertext;
    rows[2].ssn_iv = iv;
    rows[2].ssn_auth_tag = tag;
    rows[2].ssn_data_key = key;
    let results = Patient::decrypt_rows_each(rows, &encryptor).await;
    let error = results[2].as_ref().err().expect("moved value");
    let location = error.location().expect("a location");
    assert_eq!(
        (location.column.as_str(), location.row_key.as_deref()),
        ("encrypted_ssn", Some("3"))
    );
    assert!(results[0].is_ok() && results[1].is_ok());
}
