//! `jarvis audit`: the audit summary per table and operation.

use anyhow::{Context, Result, bail};
use comfy_table::Table;
use jarvis_db::Database;
use jarvis_db::audit::SummaryLine;

use crate::config::Global;

/// `24h`, `7d`, `30m`, `45s` as a duration.
pub(crate) fn parse_age(text: &str) -> Result<chrono::Duration> {
    let text = text.trim();
    let Some((split, unit)) = text.char_indices().last() else {
        bail!("expected a number and a unit (s, m, h, d), such as `24h`");
    };
    let n: i64 = text[..split]
        .parse()
        .with_context(|| format!("`{text}`: expected a number and a unit (s, m, h, d)"))?;
    let age = match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => bail!("`{text}`: the unit must be s, m, h or d"),
    };
    age.filter(|a| *a >= chrono::Duration::zero() && *a <= chrono::Duration::days(365_000))
        .with_context(|| format!("`{text}` is out of range"))
}

/// The summary of the audit log since `since` ago.
pub(crate) async fn summary(db: &Database, since: chrono::Duration) -> Result<Vec<SummaryLine>> {
    let cutoff = chrono::Utc::now()
        .naive_utc()
        .checked_sub_signed(since)
        .context("--since reaches before the calendar's start")?;
    Ok(jarvis_db::audit::summary(db, cutoff).await?)
}

/// Prints the summary as a table, or as JSON.
pub(crate) fn print(lines: &[SummaryLine], json: bool) {
    if json {
        let out: Vec<_> = lines
            .iter()
            .map(|l| {
                serde_json::json!({
                    "table": l.table_name,
                    "operation": l.operation_type,
                    "count": l.operation_count,
                    "errors": l.error_count,
                    "avg_duration_ms": l.avg_duration_ms,
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(out));
        return;
    }
    let mut table = Table::new();
    table.set_header(["table", "operation", "count", "errors", "avg ms"]);
    for l in lines {
        table.add_row([
            l.table_name.clone(),
            l.operation_type.clone(),
            l.operation_count.to_string(),
            l.error_count.to_string(),
            l.avg_duration_ms
                .map_or("-".to_owned(), |d| format!("{d:.3}")),
        ]);
    }
    out!("{table}");
}

/// `audit`: how far back, and how to print.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// How far back: `24h`, `7d`, `30m`.
    #[arg(long, default_value = "24h")]
    since: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(global: &Global, args: AuditArgs) -> Result<()> {
    let (since, json) = (parse_age(&args.since)?, args.json);
    let db = Database::connect(global.database_url()?, 2).await?;
    print(&summary(&db, since).await?, json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_age;

    #[test]
    fn ages_parse_and_bad_ones_are_errors() {
        assert_eq!(parse_age("24h").expect("24h"), chrono::Duration::hours(24));
        assert_eq!(parse_age("7d").expect("7d"), chrono::Duration::days(7));
        for bad in ["", "h", "5é", "-1h", "99999999999999d", "12x"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
