mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Binary,
            email_iv -> Binary,
            email_auth_tag -> Binary,
            email_data_key -> Binary,
        }
    }
}

use jarvis_crypt::Encrypted;

#[derive(Debug, Encrypted)]
#[encrypted(table = crate::schema::users, bind = id, redact_debug)]
struct User {
    id: i64,
    #[encrypted]
    email: String,
}
fn main() {}
