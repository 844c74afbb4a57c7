//! `jarvis demo`: the whole flow on SQLite with a local master key, in a fresh directory.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use jarvis_crypt::{Encryptor, KeyEnvelope, KeyVault, LocalKeyProvider};
use jarvis_models::{Database, DbAudit, NewApiKey, NewOAuthToken, Store};

pub(crate) async fn run() -> Result<()> {
    let started = Instant::now();
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let dir = std::env::temp_dir().join(format!("jarvis-demo-{stamp}-{}", std::process::id()));
    // Private (0700): the master key file may live only in a folder others cannot write.
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let key_file = dir.join("master.key");
    let database = dir.join("jarvis.sqlite3");
    let url = database.display().to_string();
    out!("demo directory   {}", dir.display());

    let provider = Arc::new(LocalKeyProvider::create_file(&key_file)?);
    out!(
        "local master key {} ({}, mode 0600)",
        provider.key_id(),
        key_file.display()
    );

    jarvis_models::migrations::run_pending_migrations(&url).await?;
    let db = Database::connect(&url, 4).await?;
    out!("database         {url} (migrations applied)");

    let search_key = jarvis_db::keys::stored_search_key(&db, provider.as_ref()).await?;
    out!("search key       generated, stored wrapped in jarvis_keys");
    // Data keys in the key vault (jarvis_data_keys): each value holds a 20-byte reference.
    let vault = jarvis_db::DbKeyVault::connect(&url).await?;
    let encryptor = Encryptor::builder(provider.clone())
        .search_key(search_key)
        .key_vault(Arc::new(vault.clone()))
        .build();
    let audit = DbAudit::start(db.clone());
    let store = Store::new(db.clone(), encryptor.clone(), Arc::new(audit.clone()));

    let users = store
        .create_users(vec![
            "ada@example.com".into(),
            "Grace.Hopper@Example.com".into(),
            "alan@example.com".into(),
        ])
        .await?;
    out!(
        "stored           {} users (email encrypted + search hash)",
        users.len()
    );
    let stripe = store
        .create_api_key(NewApiKey {
            service_name: "stripe".into(),
            key: "sk_live_demo_4eC39HqLyjWDarjtT1zdp7dc".into(),
            metadata: Some(serde_json::json!({"environment": "demo"})),
            expires_at: None,
        })
        .await?;
    store
        .create_api_key(NewApiKey {
            service_name: "github".into(),
            key: "ghp_demo_16C7e42F292c6912E7710c838347Ae178B4a".into(),
            metadata: None,
            expires_at: None,
        })
        .await?;
    out!("stored           2 API keys");
    let token = store
        .create_oauth_token(NewOAuthToken {
            user_id: Some(users[1].id),
            provider: "google".into(),
            access_token: "ya29.demo-access-token".into(),
            refresh_token: Some("1//demo-refresh-token".into()),
            scope: Some("email profile".into()),
            expires_at: Some(chrono::Utc::now().naive_utc() + chrono::Duration::hours(1)),
        })
        .await?;
    out!("stored           OAuth tokens for user {}", users[1].id);

    let query = "  grace.hopper@EXAMPLE.com ";
    let found = store
        .find_user_by_email(query)
        .await?
        .context("the demo user was not found")?;
    out!(
        "lookup           {query:?} -> user {} (through email_hash; no plaintext in SQL)",
        found.id
    );
    let listed = store.list_users(100, 0).await?;
    out!("decrypted        {} users in one bulk read", listed.len());

    let rotated = store
        .update_api_key(stripe.id, "sk_live_demo_rotated_51HxJk2eZvKYlo2C")
        .await?;
    out!(
        "rotated          API key {} (rotation_count {})",
        rotated.id,
        rotated.rotation_count
    );
    let refreshed = store
        .refresh_oauth_token(
            token.id,
            "ya29.demo-new-access",
            Some("1//demo-new-refresh"),
            None,
        )
        .await?;
    out!(
        "refreshed        OAuth token {} under a fresh data key (rotation_count {})",
        refreshed.id,
        refreshed.rotation_count
    );

    let row = store.stored_user(found.id).await?;
    out!("stored form of users row {}:", row.id);
    fn len<T: AsRef<[u8]>>(column: &Option<T>) -> usize {
        column.as_ref().map_or(0, |v| v.as_ref().len())
    }
    out!(
        "  encrypted_email {} B, email_iv {} B, email_auth_tag {} B, email_data_key {} B, email_hash {} B, email (plaintext) {}",
        len(&row.encrypted_email),
        len(&row.email_iv),
        len(&row.email_auth_tag),
        len(&row.email_data_key),
        len(&row.email_hash),
        if row.email.is_some() {
            "present"
        } else {
            "NULL"
        },
    );
    let wrapped = match row.email_data_key.as_ref().and_then(|k| k.data_key_id()) {
        Some(id) => {
            let held = vault.fetch(&[id]).await?;
            out!("  email_data_key is a reference to data key {id} of jarvis_data_keys");
            held.into_iter().find_map(|key| key.wrapped)
        }
        None => row.email_data_key.clone(),
    };
    if let Some(Ok(KeyEnvelope::Jarvis { master_key, .. })) = wrapped.as_ref().map(|k| k.envelope())
    {
        out!("  data key wrapped under {master_key}");
    }

    let stats = encryptor.stats();
    out!(
        "key provider     {} calls (generate {}, unwrap {}) for every value above",
        stats.provider_calls(),
        stats.generate_calls,
        stats.unwrap_calls
    );

    audit.flush().await;
    out!("audit summary (last 24 hours):");
    let lines = crate::audit::summary(&db, chrono::Duration::hours(24)).await?;
    crate::audit::print(&lines, false);
    audit.shutdown().await;
    out!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
