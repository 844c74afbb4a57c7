//! `generate field`: the migration (PostgreSQL and SQLite) and the `table!` and model lines
//! of a new encrypted field, printed; no database needed. The text comes from
//! `jarvis_db::generate`.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use jarvis_db::generate::{FieldMigration, NewField};

/// `generate`: what to write out.
#[derive(Debug, Subcommand)]
pub(crate) enum GenerateCommand {
    /// The `up.sql` and `down.sql` (PostgreSQL and SQLite) that add a new encrypted field's
    /// stored-form columns (`encrypted_<f>`, `<f>_iv`, `<f>_auth_tag`, `<f>_data_key`, and
    /// `<f>_hash` with `--search`), its `table!` lines and its model field, in labelled
    /// sections (or one section, as a file's content, with `--only`).
    Field(FieldArgs),
}

/// `generate field`: the table, the field and how it is declared.
#[derive(Debug, clap::Args)]
pub(crate) struct FieldArgs {
    /// The table (its SQL name, unqualified).
    #[arg(long)]
    table: String,
    /// The model's field; the columns are named after it.
    #[arg(long)]
    field: String,
    /// With a search hash column and its index (`#[encrypted(search)]`).
    #[arg(long)]
    search: bool,
    /// An `Option` field: nullable columns, all four or none (CHECK).
    #[arg(long)]
    nullable: bool,
    /// In the migrating state, from this plaintext column (`#[encrypted(migrating_from =
    /// COLUMN)]`): nullable columns until `encrypt-existing` has run.
    #[arg(long, value_name = "COLUMN")]
    migrating_from: Option<String>,
    /// Print only this section, without labels.
    #[arg(long, value_enum, value_name = "SECTION")]
    only: Option<Section>,
}

/// A section of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// PostgreSQL `up.sql`.
    PostgresUp,
    /// PostgreSQL `down.sql`.
    PostgresDown,
    /// SQLite `up.sql`.
    SqliteUp,
    /// SQLite `down.sql`.
    SqliteDown,
    /// The lines of the diesel `table!`.
    Table,
    /// The model's field.
    Model,
}

impl Section {
    const ALL: [Section; 6] = [
        Section::PostgresUp,
        Section::PostgresDown,
        Section::SqliteUp,
        Section::SqliteDown,
        Section::Table,
        Section::Model,
    ];

    fn label(self) -> &'static str {
        match self {
            Section::PostgresUp => "-- ==== PostgreSQL: up.sql ====",
            Section::PostgresDown => "-- ==== PostgreSQL: down.sql ====",
            Section::SqliteUp => "-- ==== SQLite: up.sql ====",
            Section::SqliteDown => "-- ==== SQLite: down.sql ====",
            Section::Table => {
                "// ==== diesel table! lines (the table's `table!`, e.g. src/schema.rs) ===="
            }
            Section::Model => "// ==== the model's field (#[derive(Encrypted)]) ====",
        }
    }

    fn text(self, m: &FieldMigration) -> &str {
        match self {
            Section::PostgresUp => &m.postgres.up,
            Section::PostgresDown => &m.postgres.down,
            Section::SqliteUp => &m.sqlite.up,
            Section::SqliteDown => &m.sqlite.down,
            Section::Table => &m.table_lines,
            Section::Model => &m.model_field,
        }
    }
}

pub(crate) fn run(command: GenerateCommand) -> Result<()> {
    let GenerateCommand::Field(args) = command;
    let field = NewField::new(args.table, args.field)
        .search(args.search)
        .nullable(args.nullable)
        .migrating_from(args.migrating_from);
    let migration = jarvis_db::generate::field_migration(&field)?;
    if let Some(section) = args.only {
        out!("{}", section.text(&migration).trim_end());
        return Ok(());
    }
    for (i, section) in Section::ALL.into_iter().enumerate() {
        if i > 0 {
            out!();
        }
        out!("{}", section.label());
        out!("{}", section.text(&migration).trim_end());
    }
    eprintln!(
        "note: a diesel `table!` holds at most 32 columns with diesel's default features, and \
         each encrypted field takes {}: enable diesel's `64-column-tables` (or \
         `128-column-tables`) feature for a wider table",
        migration.columns.len()
    );
    Ok(())
}
