mod schema {
    diesel::table! {
        patients (id) {
            id -> BigInt,
            encrypted_ssn -> Binary,
            ssn_iv -> Binary,
            ssn_auth_tag -> Binary,
            ssn_data_key -> Binary,
            ssn_hash -> Binary,
        }
    }
}

use jarvis_crypt::Encrypted;

#[derive(Encrypted)]
#[encrypted(table = crate::schema::patients, bind = id)]
struct Patient {
    id: i64,
    #[encrypted(search(normalize_with = "digits"))]
    ssn: String,
}
fn main() {}
