//! `init`: create the master key, and record the database's root search key.

use anyhow::Result;
use jarvis_db::migrations::MigrationSet;

use crate::config::{Global, ProviderChoice};

/// `init`: the master key (the local key file, or the KMS key of an environment), and with
/// a database the record of its root search key.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// Environment name (aws-kms): the key's alias is `alias/jarvis-<env>`.
    #[arg(long, default_value = "dev")]
    env: String,
    /// The application's principal (aws-kms), granted only data-key use.
    #[arg(long)]
    principal: Option<String>,
    /// Local provider: add a new version to the key file and make it current (new data
    /// keys are wrapped under it; `rotate --to-key N` moves the old ones). The key
    /// file keeps its key id, so old versions may be removed once nothing uses them.
    #[arg(long)]
    new_version: bool,
    /// aws-kms: replace the whole key policy with jarvis's statements, dropping every
    /// other statement. Without it, jarvis's statements are merged by `Sid` and the
    /// others are kept.
    #[arg(long)]
    force_policy: bool,
}

pub(crate) async fn run(
    global: &Global,
    migrations: &[MigrationSet],
    args: InitArgs,
) -> Result<()> {
    init(
        global,
        migrations,
        &args.env,
        args.principal.as_deref(),
        args.new_version,
        args.force_policy,
    )
    .await
}

async fn init(
    global: &Global,
    migrations: &[MigrationSet],
    env: &str,
    principal: Option<&str>,
    new_version: bool,
    force_policy: bool,
) -> Result<()> {
    match global.provider_choice() {
        ProviderChoice::Local if force_policy => anyhow::bail!(
            "--force-policy is for the key policy of a KMS key (the aws-kms provider)"
        ),
        ProviderChoice::Local if new_version => {
            let path = &global.local_key_file;
            let version = jarvis_crypt::LocalKeyProvider::rotate_file(path)?;
            let provider = jarvis_crypt::LocalKeyProvider::from_file(path)?;
            eprintln!(
                "added version {version} to {}; new data keys are wrapped under it",
                path.display()
            );
            out!("{}#v{version}", provider.key_id());
        }
        ProviderChoice::AwsKms if new_version => anyhow::bail!(
            "--new-version is for the local key file; KMS rotates its key material itself \
             (automatic rotation is enabled by `jarvis init`); for a new KMS key use another --env"
        ),
        ProviderChoice::Local => {
            let path = &global.local_key_file;
            let existed = path.exists();
            let provider = jarvis_crypt::LocalKeyProvider::load_or_create(path)?;
            if existed {
                eprintln!(
                    "local master key file {} exists; nothing changed",
                    path.display()
                );
            } else {
                eprintln!(
                    "created local master key file {} (mode 0600)",
                    path.display()
                );
            }
            out!("{}", provider.key_id());
        }
        ProviderChoice::AwsKms => {
            let connection =
                jarvis_crypt::KmsConnection::from_env(jarvis_crypt::KmsOptions::default()).await?;
            let setup = if force_policy {
                connection
                    .ensure_key_replacing_policy(env, principal)
                    .await?
            } else {
                connection.ensure_key(env, principal).await?
            };
            for change in &setup.changes {
                eprintln!("changed: {change}");
            }
            if setup.changes.is_empty() {
                eprintln!("{} is set up; nothing changed", setup.alias);
            }
            for note in &setup.notes {
                eprintln!("note: {note}");
            }
            out!("{}", setup.key_id);
        }
    }
    if global.database_url.is_some() {
        init_search_key(global, migrations).await?;
    }
    Ok(())
}

/// The explicit step that records the database's root search key: `ENCRYPTION_SEARCH_SALT`'s
/// (or the search key file's) fingerprint, or a stored key created in `jarvis_keys` when none
/// is configured. Refused when another key is recorded.
async fn init_search_key(global: &Global, migrations: &[MigrationSet]) -> Result<()> {
    let url = global.database_url()?;
    let status = jarvis_db::migrations::migration_status_of(url, migrations).await?;
    if !status.pending.is_empty() {
        eprintln!(
            "note: the database schema is not up to date, so the search key is not recorded: \
             run `jarvis migrate`, then `jarvis init` again"
        );
        return Ok(());
    }
    let db = jarvis_db::Database::connect(url, 1).await?;
    let before = jarvis_db::keys::recorded_search_key_fingerprint(&db).await?;
    let (key, source) = match global.configured_search_key()? {
        Some(key) => (key, "ENCRYPTION_SEARCH_SALT"),
        None => {
            let provider = global.provider().await?;
            let key = jarvis_db::keys::stored_search_key(&db, provider.as_ref()).await?;
            (key, "stored in jarvis_keys")
        }
    };
    jarvis_db::keys::record_search_key(&db, &key).await?;
    let fingerprint = key.fingerprint();
    if before.is_none() {
        eprintln!(
            "recorded the search key ({source}), fingerprint {}",
            fingerprint.short()
        );
    } else {
        eprintln!(
            "the search key ({source}) is the one recorded, fingerprint {}",
            fingerprint.short()
        );
    }
    Ok(())
}
