mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Binary,
            email_iv -> Binary,
            email_auth_tag -> Binary,
            email_data_key -> Binary,
            email_hash -> Integer,
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
