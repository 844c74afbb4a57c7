//! `migrate`: apply (or list) the schema migrations: the bookkeeping set and the sets the
//! binary adds (`Jarvis::migrations`).

use anyhow::Result;
use jarvis_db::migrations::MigrationSet;

use crate::config::Global;

/// `migrate`: the pending migrations of the binary's sets.
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    /// List applied and pending migrations instead.
    #[arg(long)]
    status: bool,
}

pub(crate) async fn run(
    global: &Global,
    migrations: &[MigrationSet],
    args: MigrateArgs,
) -> Result<()> {
    let status = args.status;
    let url = global.database_url()?;
    if !status {
        jarvis_db::migrations::run_pending_migrations_of(url, migrations).await?;
    }
    let state = jarvis_db::migrations::migration_status_of(url, migrations).await?;
    for m in &state.applied {
        out!("applied  {}", m.name);
    }
    for m in &state.pending {
        out!("pending  {}", m.name);
    }
    if !status {
        eprintln!("schema is up to date ({} migrations)", state.applied.len());
    }
    Ok(())
}
