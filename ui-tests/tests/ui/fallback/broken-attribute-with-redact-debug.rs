//! A mistake in a field's attribute of a `redact_debug` model: its `Debug` is still there.
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

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id, redact_debug)]
struct User {
    id: i64,
    #[encrypted(colour = blue)]
    email: String,
}

fn main() {
    let user = User { id: 1, email: String::new() };
    println!("{user:?}");
}
