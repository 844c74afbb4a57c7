// The filter of `<field>_search` is diesel's `Eq<column, SearchHash>`, as an application may
// have written it (for NOT NULL and nullable hash columns alike).
mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Binary,
            email_iv -> Binary,
            email_auth_tag -> Binary,
            email_data_key -> Binary,
            email_hash -> Binary,
            encrypted_phone -> Nullable<Binary>,
            phone_iv -> Nullable<Binary>,
            phone_auth_tag -> Nullable<Binary>,
            phone_data_key -> Nullable<Binary>,
            phone_hash -> Nullable<Binary>,
        }
    }
}

use diesel::prelude::*;
use jarvis_crypt::{Encrypted, Encryptor, SearchHash};

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id)]
pub struct User {
    pub id: i64,
    #[encrypted(search(normalize = "email"))]
    pub email: String,
    #[encrypted(search)]
    pub phone: Option<String>,
}

pub fn email_filter(
    encryptor: &Encryptor,
    email: &str,
) -> jarvis_crypt::Result<diesel::dsl::Eq<schema::users::email_hash, SearchHash>> {
    User::email_search(encryptor, email)
}

pub fn phone_filter(
    encryptor: &Encryptor,
    phone: &str,
) -> jarvis_crypt::Result<diesel::dsl::Eq<schema::users::phone_hash, SearchHash>> {
    User::phone_search(encryptor, phone)
}

pub fn load(
    conn: &mut SqliteConnection,
    encryptor: &Encryptor,
    email: &str,
) -> Result<Vec<UserRow>, Box<dyn std::error::Error>> {
    Ok(schema::users::table
        .filter(email_filter(encryptor, email)?)
        .select(UserRow::as_select())
        .load(conn)?)
}

fn main() {}
