//! One mistake in the attributes: the model's other uses (its row type, `encrypt_row`,
//! `decrypt_rows`, the search helpers, the table description) add no errors of their own.
mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            encrypted_email -> Binary,
            email_iv -> Binary,
            email_auth_tag -> Binary,
            email_data_key -> Binary,
            email_hash -> Binary,
        }
    }
}

use jarvis_crypt::{Encrypted, EncryptedTable, Encryptor};

#[derive(Encrypted)]
#[encrypted(table = crate::schema::users, bind = id)]
struct User {
    id: i64,
    #[encrypted(search(normalize = "shout"))]
    email: String,
}

async fn uses(user: &User, encryptor: &Encryptor) -> jarvis_crypt::Result<Vec<User>> {
    let row: UserRow = user.encrypt_row(encryptor).await?;
    let _filter = User::email_search(encryptor, "a@example.com")?;
    let _table = <User as EncryptedTable>::table();
    User::decrypt_rows(vec![row.clone()], encryptor).await
}

fn main() {
    let _ = uses;
}
