mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Binary,
            email_iv -> Binary,
            email_auth_tag -> Binary,
            email_data_key -> Binary,
            email_hash -> Binary,
            name -> Text,
            age -> Integer,
        }
    }
}

use jarvis_crypt::Encrypted;
use schema::users;

#[derive(Encrypted)]
#[encrypted(table = users, bind = none)]
struct User {
    id: i64,
    #[encrypted(search(normalize = "trim, nfc", bits = 12))]
    email: String,
    name: String,
    age: i32,
}
fn main() {}
