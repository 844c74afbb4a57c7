//! `schema`: the columns every registered model's stored form needs, and with `--check`
//! the live database compared with them (`jarvis_db::catalogue`).

use std::process::ExitCode;

use anyhow::{Result, bail};
use comfy_table::Table;
use jarvis_crypt::TableDescription;
use jarvis_db::catalogue::{self, ExpectedColumn};
use jarvis_db::migrations::Backend;

use crate::config::Global;

/// `schema`: list or check.
#[derive(Debug, clap::Args)]
pub(crate) struct SchemaArgs {
    /// Compare with the database of `DATABASE_URL` / `--database-url`: every stored-form
    /// column's name, SQL type and nullability, the plaintext columns of migrating fields,
    /// and the primary key, row key and timestamp columns; exit 1 naming each difference.
    #[arg(long)]
    check: bool,
    /// Only this table.
    #[arg(long)]
    table: Option<String>,
}

pub(crate) async fn run(
    global: &Global,
    tables: &[&'static TableDescription],
    args: SchemaArgs,
) -> Result<ExitCode> {
    let selected: Vec<&TableDescription> = tables
        .iter()
        .copied()
        .filter(|t| {
            args.table
                .as_deref()
                .is_none_or(|only| t.name == only || t.bound_name == only)
        })
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "no registered table `{}` (registered: {})",
            args.table.as_deref().unwrap_or_default(),
            names.join(", ")
        );
    }
    if !args.check {
        print_expected(&selected);
        return Ok(ExitCode::SUCCESS);
    }
    let db = jarvis_db::Database::connect(global.database_url()?, 1).await?;
    let report = catalogue::check_schema(&db, &selected).await?;
    for table in &report.tables {
        if table.drift.is_empty() {
            out!(
                "ok     {} (model `{}`, {} columns)",
                table.table,
                table.model,
                table.columns
            );
        }
        for drift in &table.drift {
            out!("DRIFT  {drift}");
        }
    }
    let differences = report.drift().count();
    if differences == 0 {
        eprintln!(
            "the {} database matches the registered models ({} tables)",
            report.backend.name(),
            report.tables.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{differences} differences between the registered models and the {} database",
            report.backend.name()
        );
        Ok(ExitCode::from(1))
    }
}

fn print_expected(tables: &[&TableDescription]) {
    let mut out = Table::new();
    out.set_header([
        "table",
        "column",
        "role",
        "PostgreSQL",
        "SQLite",
        "nullability",
    ]);
    for table in tables {
        for column in catalogue::expected_columns(table) {
            let ty = |backend| {
                ExpectedColumn::sql_type(&column, backend)
                    .unwrap_or("-")
                    .to_owned()
            };
            out.add_row([
                table.name.clone(),
                column.column.clone(),
                column.role.to_string(),
                ty(Backend::Postgres),
                ty(Backend::Sqlite),
                match column.nullability {
                    catalogue::Nullability::Any if !column.role.is_binary() => "-".to_owned(),
                    other => other.to_string(),
                },
            ]);
        }
    }
    out!("{out}");
}
