//! A field that is not an `Option` may sit on nullable stored-form columns (a table whose
//! columns become NOT NULL later): it is written as always present, and a NULL read back is
//! an error of the stored form.
mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Nullable<Binary>,
            email_iv -> Nullable<Binary>,
            email_auth_tag -> Nullable<Binary>,
            email_data_key -> Nullable<Binary>,
            email_hash -> Nullable<Binary>,
        }
    }
}

use jarvis_crypt::Encrypted;

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id)]
struct User {
    id: i64,
    #[encrypted(search)]
    email: String,
}
fn main() {}
