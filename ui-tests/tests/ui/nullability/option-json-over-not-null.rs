mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_prefs -> Binary,
            prefs_iv -> Binary,
            prefs_auth_tag -> Binary,
            prefs_data_key -> Binary,
        }
    }
}

use jarvis_crypt::Encrypted;

#[derive(serde::Serialize, serde::Deserialize)]
struct Prefs {
    dark: bool,
}

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id)]
struct User {
    id: i64,
    #[encrypted(json)]
    prefs: Option<Prefs>,
}
fn main() {}
