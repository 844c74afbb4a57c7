mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Nullable<Binary>,
            email_iv -> Nullable<Binary>,
            email_auth_tag -> Nullable<Binary>,
            email_data_key -> Nullable<Binary>,
            email_hash -> Binary,
        }
    }
}

use jarvis_crypt::Encrypted;

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id)]
struct User {
    id: i64,
    #[encrypted(search(normalize = "email"))]
    email: Option<String>,
}
fn main() {}
