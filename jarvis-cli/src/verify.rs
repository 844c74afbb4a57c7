//! `jarvis verify`: decrypt everything, check search hashes, report rows by master key and
//! form, and failures.

use std::process::ExitCode;

use anyhow::Result;
use comfy_table::Table;
use jarvis_crypt::TableDescription;
use jarvis_db::verify::VerifyReport;

use crate::config::Global;

/// `verify`: which tables, and how to print.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Only this table.
    #[arg(long)]
    table: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(
    global: &Global,
    tables: &[&'static TableDescription],
    args: VerifyArgs,
) -> Result<ExitCode> {
    let (table, json) = (args.table.as_deref(), args.json);
    let opened = global.open(false).await?;
    // Search hashes are checked under the configured search key, or the one stored in
    // jarvis_keys (loaded, never created).
    let stored = match opened.encryptor.search_key_fingerprint() {
        Some(_) => None,
        None => jarvis_db::keys::load_search_key_with(&opened.db, &opened.encryptor).await?,
    };
    let report = jarvis_db::verify::verify_tables(
        &opened.db,
        &opened.encryptor,
        tables,
        table,
        stored.as_ref(),
    )
    .await?;
    opened.audit.shutdown().await;
    print(&report, json);
    // What weakens a table's binding is said beside the counts (on standard error, so the
    // JSON stays as it is), for every table verified.
    for t in tables
        .iter()
        .filter(|t| table.is_none_or(|only| t.name == only || t.bound_name == only))
    {
        for problem in t.binding_problems() {
            eprintln!("note: `{}` (model `{}`): {problem}", t.name, t.model);
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn print(report: &VerifyReport, json: bool) {
    if json {
        let columns: Vec<_> = report
            .columns
            .iter()
            .map(|((table, column), c)| {
                serde_json::json!({
                    "table": table, "column": column, "current": c.current, "legacy": c.legacy,
                    "plaintext": c.plaintext, "null": c.null, "failed": c.failed,
                    "search_hash_mismatches": c.search_hash_mismatches,
                    "plaintext_not_cleared": c.plaintext_not_cleared,
                    "by_master_key": c.by_master_key,
                })
            })
            .collect();
        let failures: Vec<_> = report
            .failures
            .iter()
            .map(|f| serde_json::json!({"table": f.table, "id": f.id, "column": f.column, "error": f.error_kind}))
            .collect();
        out!(
            "{}",
            serde_json::json!({
                "columns": columns, "failures": failures, "clean": report.is_clean(),
                "search_hashes_checked": report.search_hashes_checked,
            })
        );
        return;
    }
    let mut table = Table::new();
    table.set_header([
        "table",
        "column",
        "current",
        "legacy",
        "plaintext",
        "null",
        "failed",
        "bad hash",
        "both forms",
        "master keys",
    ]);
    for ((t, column), c) in &report.columns {
        let keys: Vec<String> = c
            .by_master_key
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        table.add_row([
            t.to_string(),
            column.to_string(),
            c.current.to_string(),
            c.legacy.to_string(),
            c.plaintext.to_string(),
            c.null.to_string(),
            c.failed.to_string(),
            c.search_hash_mismatches.to_string(),
            c.plaintext_not_cleared.to_string(),
            keys.join("\n"),
        ]);
    }
    out!("{table}");
    if !report.search_hashes_checked {
        out!(
            "search hashes not checked: no search key is configured (ENCRYPTION_SEARCH_SALT) \
             or stored in jarvis_keys"
        );
    }
    for f in &report.failures {
        out!(
            "FAILED {} id {} {}: {}",
            f.table,
            f.id,
            f.column,
            f.error_kind
        );
    }
    if report.is_clean() {
        eprintln!("every value verified");
    } else {
        eprintln!("{} values failed", report.failures.len());
    }
}
