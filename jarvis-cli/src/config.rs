//! Global options and what they build: the key provider, the encryptor, the database.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use jarvis_crypt::{
    AwsKms, CacheLimits, Encryptor, KeyProvider, KmsConnection, KmsOptions, LocalKeyProvider,
    MasterKeyRef, SearchKey,
};
use jarvis_db::{Backups, Database, DbAudit, DbKeyVault};

/// Which key provider holds the master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProviderChoice {
    /// A local master key (file or `JARVIS_LOCAL_MASTER_KEY`): development and the demo.
    Local,
    /// AWS KMS.
    AwsKms,
}

/// Options every command accepts, before or after the subcommand.
#[derive(Args)]
pub(crate) struct Global {
    /// Database: `postgres://...`, or a SQLite path or `sqlite://path`.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    /// Key provider [default: `aws-kms` when a KMS key id is set, else `local`].
    #[arg(long, global = true, value_enum)]
    pub(crate) provider: Option<ProviderChoice>,

    /// Local master key file (mode 0600).
    #[arg(
        long,
        global = true,
        env = "JARVIS_LOCAL_KEY_FILE",
        default_value = jarvis_crypt::DEFAULT_KEY_FILE
    )]
    pub(crate) local_key_file: PathBuf,

    /// AWS KMS master key: id, ARN or alias.
    #[arg(long, global = true, env = "KMS_KEY_ID")]
    pub(crate) kms_key_id: Option<String>,

    /// Further KMS keys allowed for decryption (comma-separated ids, ARNs or aliases), e.g.
    /// the old key during a rotation; no other key is ever unwrapped.
    #[arg(
        long,
        global = true,
        env = "KMS_DECRYPT_KEY_IDS",
        value_delimiter = ','
    )]
    pub(crate) kms_decrypt_key_ids: Vec<String>,

    /// A file holding the root search key (its raw bytes, one trailing newline ignored), when
    /// `ENCRYPTION_SEARCH_SALT` is not set. There is no flag for the key itself: a command
    /// line is visible to other users of the machine.
    #[arg(long, global = true, env = "JARVIS_SEARCH_KEY_FILE")]
    pub(crate) search_key_file: Option<PathBuf>,

    /// Values one data key encrypts before the next is generated [default: 1048576]; `1`
    /// gives every value a data key of its own, as the original system did (one KMS call per
    /// value).
    #[arg(long, global = true, env = "JARVIS_DATA_KEY_MAX_VALUES", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) data_key_max_values: Option<u64>,

    /// The binary keeps data keys in the key vault (`Jarvis::key_vault`): not an option of the
    /// command line, a choice of the application that builds it.
    #[arg(skip)]
    pub(crate) key_vault: bool,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL (it may carry a password) nor the search key.
        f.debug_struct("Global")
            .field("provider", &self.provider)
            .field("local_key_file", &self.local_key_file)
            .field("kms_key_id", &self.kms_key_id)
            .field("kms_decrypt_key_ids", &self.kms_decrypt_key_ids)
            .field("search_key_file", &self.search_key_file)
            .field("key_vault", &self.key_vault)
            .finish_non_exhaustive()
    }
}

impl Global {
    pub(crate) fn provider_choice(&self) -> ProviderChoice {
        self.provider.unwrap_or(if self.kms_key_id.is_some() {
            ProviderChoice::AwsKms
        } else {
            ProviderChoice::Local
        })
    }

    pub(crate) fn database_url(&self) -> Result<&str> {
        self.database_url
            .as_deref()
            .context("no database: set DATABASE_URL or --database-url")
    }

    /// The configured key provider. The AWS provider unwraps only under `KMS_KEY_ID` and
    /// the keys of `KMS_DECRYPT_KEY_IDS`.
    pub(crate) async fn provider(&self) -> Result<Arc<dyn KeyProvider>> {
        Ok(match self.provider_choice() {
            ProviderChoice::Local => Arc::new(self.local_provider()?),
            ProviderChoice::AwsKms => Arc::new(self.aws_provider(&[]).await?),
        })
    }

    /// The configured AWS provider, also allowed to decrypt under `extra` (the target of
    /// `rotate --to-key`, for that run).
    pub(crate) async fn aws_provider(&self, extra: &[&str]) -> Result<AwsKms> {
        let Some(key) = &self.kms_key_id else {
            bail!("the aws-kms provider needs a key: set KMS_KEY_ID or --kms-key-id");
        };
        let connection = KmsConnection::from_env(KmsOptions::default()).await?;
        let allowed = self
            .kms_decrypt_key_ids
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied());
        Ok(AwsKms::new(connection, key)
            .await?
            .allow_decrypt_keys(allowed)
            .await?)
    }

    /// The root search key of the environment (`ENCRYPTION_SEARCH_SALT`, else the file of
    /// `--search-key-file`), if configured.
    pub(crate) fn configured_search_key(&self) -> Result<Option<SearchKey>> {
        if let Some(key) = SearchKey::from_env()? {
            return Ok(Some(key));
        }
        let Some(path) = &self.search_key_file else {
            return Ok(None);
        };
        let mut bytes = zeroize::Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading the search key file {}", path.display()))?,
        );
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Ok(Some(SearchKey::new(bytes.to_vec())?))
    }

    /// The database, the encryptor and the store, with the diesel audit sink. Commands that
    /// only decrypt (`verify`) pass `search = false`: they neither need the search key nor
    /// create one in `jarvis_keys`.
    pub(crate) async fn open(&self, search: bool) -> Result<Opened> {
        self.open_with(OpenOptions {
            search,
            ..OpenOptions::default()
        })
        .await
    }

    /// [`open`](Self::open) with more choices: legacy rows accepted, or new data keys
    /// generated under another master key (the configured one still decrypts).
    pub(crate) async fn open_with(&self, options: OpenOptions) -> Result<Opened> {
        let url = self.database_url()?;
        let db = Database::connect(url, 8).await?;
        let configured = self.provider().await?;
        // New data keys under the target of `--reencrypt --to-key` if any, else the configured
        // key; the configured provider (and the target of `--to-key`) decrypt.
        let providers = |builder: jarvis_crypt::EncryptorBuilder| {
            let builder = match options.write_under {
                Some(_) => builder.decrypt_with(configured.clone()),
                None => builder,
            };
            match &options.decrypt_also {
                Some(also) => builder.decrypt_with(also.clone()),
                None => builder,
            }
        };
        let primary = options
            .write_under
            .clone()
            .unwrap_or_else(|| configured.clone());
        let search_key = match self.configured_search_key()? {
            Some(key) => {
                if !options.new_search_key {
                    jarvis_db::keys::check_search_key(&db, &key).await?;
                }
                Some(key)
            }
            // The search key stays wrapped in jarvis_keys, unwrapped by whichever of this
            // run's providers holds its master key; it is created only by `jarvis init`,
            // never by a job.
            None if options.search => {
                let probe = providers(Encryptor::builder(primary.clone())).build();
                Some(
                    jarvis_db::keys::load_search_key_with(&db, &probe)
                        .await?
                        .context(
                            "no search key: set ENCRYPTION_SEARCH_SALT (or --search-key-file), \
                             or run `jarvis init` with DATABASE_URL set to create one stored \
                             in jarvis_keys",
                        )?,
                )
            }
            None => None,
        };
        let mut builder = providers(Encryptor::builder(primary));
        if let Some(key) = search_key {
            builder = builder.search_key(key);
        }
        if let Some(max_messages) = self.data_key_max_values {
            builder = builder.cache_limits(CacheLimits {
                max_messages,
                ..CacheLimits::default()
            });
        }
        if self.key_vault {
            builder = builder.key_vault(Arc::new(DbKeyVault::connect(url).await?));
        }
        let encryptor = builder.allow_legacy(options.allow_legacy).build();
        let audit = DbAudit::start(db.clone());
        let backups = Backups::new(db.clone(), encryptor.clone(), Arc::new(audit.clone()));
        Ok(Opened {
            db,
            encryptor,
            audit,
            backups,
        })
    }

    /// The master key `key` names, and a provider that writes under it: for `aws-kms` a key
    /// id, ARN or alias; for `local` a version of the local key (`2`, `v2` or `<id>#v2`).
    pub(crate) async fn target_key(
        &self,
        key: &str,
    ) -> Result<(MasterKeyRef, Arc<dyn KeyProvider>)> {
        let provider: Arc<dyn KeyProvider> = match self.provider_choice() {
            ProviderChoice::AwsKms => {
                let connection = KmsConnection::from_env(KmsOptions::default()).await?;
                Arc::new(AwsKms::new(connection, key).await?)
            }
            ProviderChoice::Local => {
                let local = self.local_provider()?;
                let version = key
                    .strip_prefix(local.key_id())
                    .and_then(|rest| rest.strip_prefix('#'))
                    .unwrap_or(key);
                let version: u32 = version
                    .strip_prefix('v')
                    .unwrap_or(version)
                    .parse()
                    .ok()
                    .filter(|v| *v > 0)
                    .with_context(|| {
                        format!(
                            "--to-key with the local provider is a version of the local key, \
                             such as `2`, `v2` or `{}#v2`",
                            local.key_id()
                        )
                    })?;
                Arc::new(local.with_current_version(version)?)
            }
        };
        Ok((provider.master_key(), provider))
    }

    fn local_provider(&self) -> Result<LocalKeyProvider> {
        Ok(
            if std::env::var_os(jarvis_crypt::MASTER_KEY_VAR).is_some() {
                LocalKeyProvider::from_env()?
            } else {
                LocalKeyProvider::from_file(&self.local_key_file)?
            },
        )
    }
}

/// Choices of [`Global::open_with`].
#[derive(Default)]
pub(crate) struct OpenOptions {
    /// The search key is needed (taken from `jarvis_keys`, created there on first use, when
    /// `ENCRYPTION_SEARCH_SALT` is not set).
    pub(crate) search: bool,
    /// Legacy rows are accepted.
    pub(crate) allow_legacy: bool,
    /// New data keys come from this provider; the configured one still decrypts.
    pub(crate) write_under: Option<Arc<dyn KeyProvider>>,
    /// A further provider that decrypts (the target of `rotate --to-key`, for that run).
    pub(crate) decrypt_also: Option<Arc<dyn KeyProvider>>,
    /// The configured search key is a new one (`rotate --rehash`): not checked against the
    /// recorded fingerprint, which the job replaces.
    pub(crate) new_search_key: bool,
}

/// An opened database with its encryptor, audit sink and backup records.
pub(crate) struct Opened {
    pub(crate) db: Database,
    pub(crate) encryptor: Encryptor,
    pub(crate) audit: DbAudit,
    pub(crate) backups: Backups,
}
