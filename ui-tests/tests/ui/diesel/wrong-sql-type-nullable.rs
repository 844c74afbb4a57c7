mod schema {
    diesel::table! {
        patients (id) {
            id -> BigInt,
            encrypted_notes -> Nullable<Binary>,
            notes_iv -> Nullable<Text>,
            notes_auth_tag -> Nullable<Binary>,
            notes_data_key -> Nullable<Binary>,
        }
    }
}

use jarvis_crypt::Encrypted;

#[derive(Encrypted)]
#[encrypted(table = crate::schema::patients, bind = id)]
struct Patient {
    id: i64,
    #[encrypted]
    notes: Option<String>,
}

fn main() {}
