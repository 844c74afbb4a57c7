//! The operations command of jarvis-crypt, as a library: [`Jarvis`] builds it over the
//! models an application registers, and `main()` runs it.
//!
//! ```no_run
//! # use jarvis_models::{ApiKey, OAuthToken, User};
//! // src/bin/ops.rs of an application whose models use #[derive(Encrypted)]
//! fn main() -> std::process::ExitCode {
//!     jarvis_cli::Jarvis::new().model::<User>().model::<ApiKey>().main()
//! }
//! ```
//!
//! The stock `jarvis` binary is this builder with the seed's models (users, API keys, OAuth
//! tokens) and their migrations (`.migrations(jarvis_models::migrations::SEED)`). Every
//! command (`encrypt-existing`, `rotate`, `verify`, `retire-key`, `backup`, `schema`) reads the
//! registered models' tables through their descriptions
//! ([`EncryptedTable`]), beside the bookkeeping table of encrypted
//! backups; `migrate` applies the bookkeeping migrations and the sets the binary adds.
//!
//! The layers: `jarvis_crypt` encrypts and describes models; `jarvis_db` is the database side
//! (connections, bookkeeping tables, jobs, verification, the backup engine); `jarvis_models`
//! is the seed's application (its schema, models and repositories); this crate parses
//! arguments and prints, one file per command, and runs no SQL and no child process of its
//! own.
//!
//! Results go to standard output; logs and notes to standard error (`RUST_LOG` sets the level
//! of the jarvis crates; dependencies stay at `warn`, since database drivers log bound
//! parameters at debug level).

// `println!` panics when standard output is closed (`jarvis audit | head`): results are
// written through `out!`, which ends the process quietly instead.
macro_rules! out {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

mod audit;
mod backup;
mod config;
mod demo;
mod encrypt_existing;
mod generate;
mod init;
mod jobs;
mod migrate;
mod output;
mod retire_key;
mod rotate;
mod schema;
mod verify;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use jarvis_crypt::{EncryptedTable, TableDescription};
use jarvis_db::migrations::MigrationSet;

use crate::config::Global;

/// Column-level encryption for diesel: set-up, migrations, verification and audit.
#[derive(Debug, Parser)]
#[command(name = "jarvis", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole flow on SQLite with a local key, in a fresh directory: no configuration.
    Demo,
    /// Create the master key: the local key file, or the KMS key of an environment.
    Init(init::InitArgs),
    /// Apply pending schema migrations.
    Migrate(migrate::MigrateArgs),
    /// Encrypt the plaintext columns of fields in the migrating state
    /// (`#[encrypted(migrating_from = ...)]`) into their encrypted columns and search hashes,
    /// in verified, resumable batches (safe to kill; several workers or processes may run at
    /// once). Without `--table`, every such column of every registered model.
    EncryptExisting(encrypt_existing::EncryptExistingArgs),
    /// Re-encrypt values under fresh data keys, re-wrap data keys under another master key,
    /// upgrade legacy rows, or recompute search hashes under a new search key, in verified,
    /// resumable batches (safe to kill; several workers or processes may run at once).
    /// Re-encryption sets the columns a model names with `rotated_at` and `rotation_count`;
    /// re-wrapping and re-hashing leave them. Exit status 1 when rows are left pending.
    Rotate(rotate::RotateArgs),
    /// Decrypt every encrypted field; report rows by master key and form, and every failure.
    Verify(verify::VerifyArgs),
    /// Disable a KMS master key and schedule its deletion, refused while any row or recorded
    /// backup still needs it (or may: a backup that cannot be read).
    RetireKey(retire_key::RetireKeyArgs),
    /// Encrypted backups: create (pg_dump or an SQLite copy, streamed through the backup
    /// cipher), restore (authenticated first, then one transaction), verify, list.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// The audit summary per table and operation.
    Audit(audit::AuditArgs),
    /// Write out what a schema change needs: `generate field` prints the migration
    /// (PostgreSQL and SQLite) and `table!` lines of a new encrypted field. No database.
    Generate {
        #[command(subcommand)]
        command: generate::GenerateCommand,
    },
    /// The columns every registered model's stored form needs (names, SQL types,
    /// nullability); `--check` compares them with the live database: exit 1 on drift,
    /// naming each difference.
    Schema(schema::SchemaArgs),
}

/// The crates a bare `RUST_LOG` level applies to.
const JARVIS_TARGETS: [&str; 4] = ["jarvis", "jarvis_crypt", "jarvis_db", "jarvis_models"];

/// `RUST_LOG` with bare levels applied to the jarvis crates only: `RUST_LOG=debug` means
/// debug for jarvis and `warn` for dependencies, since database drivers log bound parameters
/// at debug level. Dependencies named explicitly (`RUST_LOG=info,tokio_postgres=debug`) keep
/// what they are given.
fn log_filter(rust_log: &str) -> String {
    let mut directives = vec!["warn".to_owned()];
    for part in rust_log.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('=') || part.contains('[') || part.contains("::") {
            directives.push(part.to_owned());
        } else if part.parse::<tracing::Level>().is_ok() || part == "off" {
            directives.extend(JARVIS_TARGETS.iter().map(|t| format!("{t}={part}")));
        } else {
            // A bare target name: that target at trace, as EnvFilter reads it.
            directives.push(part.to_owned());
        }
    }
    directives.join(",")
}

fn init_logging() {
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&rust_log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A process that set up its own logging (or runs `main` twice) keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The operations command over an application's models: register each
/// `#[derive(Encrypted)]` model with [`model`](Self::model), then run [`main`](Self::main).
#[derive(Debug, Clone)]
pub struct Jarvis {
    tables: Vec<&'static TableDescription>,
    migrations: Vec<MigrationSet>,
    problems: Vec<String>,
    /// Problems that only the commands reading the registered tables refuse (a primary key
    /// the jobs cannot page by); `migrate`, `init`, `audit` and `backup restore/verify/list`
    /// still run.
    table_problems: Vec<String>,
    /// New data keys go to the key vault (`jarvis_data_keys`), values hold references.
    key_vault: bool,
}

impl Default for Jarvis {
    fn default() -> Self {
        Jarvis {
            tables: Vec::new(),
            migrations: vec![jarvis_db::migrations::BOOKKEEPING],
            problems: Vec::new(),
            table_problems: Vec::new(),
            key_vault: false,
        }
    }
}

impl Jarvis {
    /// A command with no models registered yet, whose `migrate` applies the bookkeeping
    /// migrations ([`BOOKKEEPING`](jarvis_db::migrations::BOOKKEEPING)).
    pub fn new() -> Self {
        Jarvis::default()
    }

    /// Adds a set of migrations that `migrate` applies (and `migrate --status` lists) beside
    /// the bookkeeping ones, oldest first by version across the sets: the application's own
    /// (`MigrationSet::new("clinic", &embed_migrations!(..), &embed_migrations!(..))`), or the
    /// seed's tables ([`SEED`](jarvis_models::migrations::SEED), as the `jarvis` binary does).
    #[must_use]
    pub fn migrations(mut self, set: MigrationSet) -> Self {
        if !self.migrations.iter().any(|s| s.name() == set.name()) {
            self.migrations.push(set);
        }
        self
    }

    /// Registers model `M`: its fields in the migrating state are encrypted by
    /// `encrypt-existing`, its table is rotated, verified, counted by `retire-key` and listed
    /// in backup manifests. A model without a single-column primary key, or a second model
    /// over a table already registered, is refused when the command starts, with a message
    /// that names it (see [`problems`](Self::problems)); a model bound by a text or binary
    /// primary key is refused by the commands that page through its rows
    /// (`encrypt-existing`, `rotate`, `verify`, `retire-key`, `backup create`).
    ///
    /// A model of the seed's tables (`User`, `ApiKey`, `OAuthToken` of jarvis-models) brings
    /// the seed's migrations ([`SEED`](jarvis_models::migrations::SEED)) with it.
    #[must_use]
    pub fn model<M: EncryptedTable>(mut self) -> Self {
        let table = M::table();
        let seed = jarvis_models::models::seed_tables();
        if seed
            .iter()
            .any(|t| std::ptr::eq(*t, table) && t.name != jarvis_db::EncryptedBackup::table().name)
        {
            self = self.migrations(jarvis_models::migrations::SEED);
        }
        if let Some(problem) = table
            .binding_problems()
            .into_iter()
            .find(|p| matches!(p, jarvis_crypt::BindingProblem::CompositePrimaryKey { .. }))
        {
            self.problems.push(format!(
                "model `{}` (table `{}`): {problem}",
                table.model, table.name
            ));
        }
        if let (Some(pk), Some(kind)) = (table.single_primary_key(), table.row_key_kind)
            && table.row_key == Some(pk)
            && kind != jarvis_crypt::RowKeyKind::Int
        {
            self.table_problems.push(format!(
                "model `{}` (table `{}`): the jobs page and lock rows by an integer primary \
                 key, and `{pk}` is {}",
                table.model,
                table.name,
                match kind {
                    jarvis_crypt::RowKeyKind::Text => "text",
                    _ => "binary",
                }
            ));
        }
        if let Some(other) = self.tables.iter().find(|t| t.name == table.name) {
            self.problems.push(format!(
                "models `{}` and `{}` are both over table `{}`; register one model per table",
                other.model, table.model, table.name
            ));
        } else {
            self.tables.push(table);
        }
        self
    }

    /// Keeps data keys in the key vault, the bookkeeping table `jarvis_data_keys`
    /// ([`jarvis_db::DbKeyVault`]): the values the commands write (`encrypt-existing`,
    /// `rotate --reencrypt`, backup records) hold a 20-byte reference to their data key
    /// instead of the wrapped key itself; `rotate --to-key` re-wraps the vault's keys without
    /// rewriting a data row, and `rotate --compact` turns older inline values into references.
    /// Without it the commands write inline envelopes, and a reference they read is a
    /// configuration error.
    ///
    /// Opt in together with the application's own encryptor
    /// (`EncryptorBuilder::key_vault(Arc::new(DbKeyVault::connect(url).await?))`): an
    /// encryptor without a vault cannot read what a binary with one writes. The stock
    /// `jarvis` binary opts in.
    #[must_use]
    pub fn key_vault(mut self) -> Self {
        self.key_vault = true;
        self
    }

    /// What [`main`](Self::main) refuses, one message per problem, each naming its model: a
    /// primary key of several columns, a second model over a table (refused by every command),
    /// a primary key that is not an integer (refused by the commands that page through the
    /// registered tables). Empty when the registration is sound (an application can check it
    /// in a unit test).
    pub fn problems(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.problems.iter().map(String::as_str).collect();
        all.extend(self.table_problems.iter().map(String::as_str));
        all
    }

    /// The tables the commands work on: the registered models', then the bookkeeping table
    /// of encrypted backups.
    pub(crate) fn tables(&self) -> Vec<&'static TableDescription> {
        let backups = jarvis_db::EncryptedBackup::table();
        let mut tables = self.tables.clone();
        if !tables.iter().any(|t| t.name == backups.name) {
            tables.push(backups);
        }
        tables
    }

    /// Runs the command with `std::env::args()`: the exit code (2 for an error).
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os())
    }

    /// Runs the command with these arguments (the first names the binary in help and
    /// messages).
    pub fn main_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let name = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "jarvis".to_owned());
        init_logging();
        if !self.problems.is_empty() {
            for problem in &self.problems {
                eprintln!("error: {problem}");
            }
            return ExitCode::from(2);
        }
        // The name `--version` and the help show: the binary's, not `jarvis` (leaked once
        // per process; clap keeps command names as `&'static str`).
        let shown: &'static str = Box::leak(name.clone().into_boxed_str());
        let matches = Cli::command()
            .name(shown)
            .bin_name(name)
            .get_matches_from(args);
        let mut cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        cli.global.key_vault = self.key_vault;
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::from(2);
            }
        };
        if cli.command.reads_tables() && !self.table_problems.is_empty() {
            for problem in &self.table_problems {
                eprintln!("error: {problem}");
            }
            return ExitCode::from(2);
        }
        match runtime.block_on(run(&self, cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        }
    }
}

impl Command {
    /// Whether the command pages through the registered tables' rows.
    fn reads_tables(&self) -> bool {
        match self {
            Command::EncryptExisting(_)
            | Command::Rotate(_)
            | Command::Verify(_)
            | Command::RetireKey(_) => true,
            Command::Backup { command } => command.reads_tables(),
            Command::Demo
            | Command::Init(_)
            | Command::Migrate(_)
            | Command::Audit(_)
            | Command::Generate { .. }
            | Command::Schema(_) => false,
        }
    }
}

async fn run(jarvis: &Jarvis, cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    match cli.command {
        Command::Demo => demo::run().await?,
        Command::Init(args) => init::run(global, &jarvis.migrations, args).await?,
        Command::Migrate(args) => migrate::run(global, &jarvis.migrations, args).await?,
        Command::EncryptExisting(args) => {
            return encrypt_existing::run(global, &jarvis.tables(), args).await;
        }
        Command::Rotate(args) => return rotate::run(global, &jarvis.tables(), args).await,
        Command::Verify(args) => return verify::run(global, &jarvis.tables(), args).await,
        Command::RetireKey(args) => return retire_key::run(global, &jarvis.tables(), args).await,
        Command::Backup { command } => {
            return backup::run(global, &jarvis.tables(), &jarvis.migrations, command).await;
        }
        Command::Audit(args) => audit::run(global, args).await?,
        Command::Generate { command } => generate::run(command)?,
        Command::Schema(args) => return schema::run(global, &jarvis.tables(), args).await,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn bare_levels_apply_to_jarvis_only() {
        assert_eq!(
            log_filter("debug"),
            "warn,jarvis=debug,jarvis_crypt=debug,jarvis_db=debug,jarvis_models=debug"
        );
        assert_eq!(
            log_filter("info,tokio_postgres=debug"),
            "warn,jarvis=info,jarvis_crypt=info,jarvis_db=info,jarvis_models=info,tokio_postgres=debug"
        );
    }
}
