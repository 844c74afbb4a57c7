//! A round trip on a local master key: encrypt a field bound to its row, read it back, find
//! it by search hash, and show what is stored. `cargo run -p jarvis-crypt --example demo`.

use std::sync::Arc;

use jarvis_crypt::{
    Binding, Encryptor, KeyProvider, LocalKeyProvider, Normalize, SearchKey, SearchSpec,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("jarvis-demo-{}", std::process::id()));
    let key_file = dir.join("master.key");
    let provider = Arc::new(LocalKeyProvider::create_file(&key_file)?);
    println!(
        "local master key {} in {}",
        provider.key_id(),
        key_file.display()
    );

    let encryptor = Encryptor::builder(provider.clone())
        .search_key(SearchKey::generate())
        .build();
    let email_hash = SearchSpec::new(Normalize::EMAIL, None)?;

    let emails = ["ada@example.com", "grace@example.com", "alan@example.com"];
    let mut rows = Vec::new();
    for (id, email) in (1i64..).zip(emails) {
        let place = Binding::new("users", "encrypted_email", id);
        let stored = encryptor.encrypt(&place, email.as_bytes()).await?;
        let hash = encryptor.search_hash("users", "email_hash", email_hash, email)?;
        rows.push((id, stored, hash));
    }
    let (id, stored, hash) = &rows[0];
    println!(
        "row {id}: ciphertext {} B, iv {} B, tag {} B, wrapped data key {} B, search hash {} B",
        stored.ciphertext.len(),
        stored.nonce.len(),
        stored.tag.len(),
        stored.data_key.len(),
        hash.len()
    );

    let wanted =
        encryptor.search_hash("users", "email_hash", email_hash, "  Grace@Example.COM ")?;
    let (id, stored, _) = rows
        .iter()
        .find(|(_, _, hash)| *hash == wanted)
        .ok_or("no row found")?;
    let place = Binding::new("users", "encrypted_email", *id);
    let email = String::from_utf8(encryptor.decrypt(&place, stored).await?)?;
    println!("lookup of `  Grace@Example.COM ` found row {id}: {email}");

    let elsewhere = Binding::new("users", "encrypted_email", id + 1);
    let err = encryptor
        .decrypt(&elsewhere, stored)
        .await
        .expect_err("bound to its row");
    println!("the same ciphertext read as row {}: {err}", id + 1);

    let stats = encryptor.stats();
    println!(
        "key provider calls: {} (generate {}, unwrap {}) for {} values; master key {}",
        stats.provider_calls(),
        stats.generate_calls,
        stats.unwrap_calls,
        rows.len(),
        provider.master_key()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
