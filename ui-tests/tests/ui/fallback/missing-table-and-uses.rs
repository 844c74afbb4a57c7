//! No `table`: the row type and the conversions are still there, so their uses add nothing.
use jarvis_crypt::{Encrypted, Encryptor};

#[derive(Encrypted)]
#[encrypted(bind = id)]
struct User {
    id: i64,
    #[encrypted]
    email: String,
}

async fn uses(user: &User, encryptor: &Encryptor) -> jarvis_crypt::Result<User> {
    let row: UserRow = user.encrypt_row(encryptor).await?;
    User::decrypt_row(row, encryptor).await
}

fn main() {
    let _ = uses;
}
