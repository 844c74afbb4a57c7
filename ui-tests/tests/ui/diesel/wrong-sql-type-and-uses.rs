mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Binary,
            email_iv -> Binary,
            email_auth_tag -> Binary,
            email_data_key -> Timestamp,
        }
    }
}

use diesel::prelude::*;
use jarvis_crypt::{Encrypted, Encryptor};

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id)]
struct User {
    id: i64,
    #[encrypted]
    email: String,
}

// Uses of the row type and the model add no errors of their own.
#[allow(dead_code)]
async fn uses(conn: &mut SqliteConnection, encryptor: &Encryptor, user: &User) {
    let row: UserRow = user.encrypt_row(encryptor).await.expect("encrypt");
    let _ = diesel::insert_into(schema::users::table)
        .values(&row)
        .execute(conn);
    let rows: Vec<UserRow> = schema::users::table
        .select(UserRow::as_select())
        .load(conn)
        .expect("load");
    let _ = User::decrypt_rows(rows, encryptor).await;
}

fn main() {}
