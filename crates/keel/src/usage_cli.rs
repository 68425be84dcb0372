//! `keel usage`: tokens and cost per time bucket and group, read straight
//! from the store, then each group's last seven days against the seven
//! before. The figures are those of `GET /v1/usage`, across every tenant
//! unless `--tenant` names one; `--json` prints that route's shape.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use keel_core::{Cost, TenantId};
use keel_server::routes::usage::TrendResponse;
use keel_store::{Bucket, Dimension, TrendQuery, TrendRow, UsageQuery, UsageTotals, WeekOverWeek};

use crate::admin_cli;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;

/// `keel usage` options.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The TOML config file (for the store location).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only this tenant's usage (default: every tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// Group by `tenant`, `user`, `workflow` or `session` (default: one
    /// total).
    #[arg(long)]
    by: Option<Dimension>,
    /// Bucket width: `hour`, `day` or `week` (UTC; weeks start on Monday).
    #[arg(long, default_value = "day")]
    bucket: Bucket,
    /// Where to start: a span back from now (`90m`, `24h`, `7d`, `2w`) or
    /// an RFC 3339 time (default: 24 hours, 7 days or 4 weeks of buckets).
    #[arg(long)]
    since: Option<String>,
    /// Print JSON in the shape of `GET /v1/usage` instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `keel usage`.
#[expect(clippy::print_stdout, reason = "CLI output")]
pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let tenant = args
        .tenant
        .map(TenantId::new)
        .transpose()
        .context("invalid --tenant")?;
    let now_ms = now_ms();
    let since_ms = match args.since.as_deref() {
        Some(since) => parse_since(since, now_ms)?,
        None => args.bucket.default_from_ms(now_ms),
    };
    let query = TrendQuery {
        filter: UsageQuery {
            tenant_id: tenant.map(|t| t.to_string()),
            since_ms: Some(since_ms),
            ..UsageQuery::default()
        },
        bucket: args.bucket,
        group_by: args.by,
    };

    let store = admin_cli::open(args.config.as_deref()).await?;
    let rows = store
        .usage_trend(&query)
        .await
        .context("could not read the usage trend")?;
    let weeks = store
        .usage_week_over_week(&query.filter, query.group_by, now_ms)
        .await
        .context("could not read the week-over-week usage")?;
    store.close().await;

    if args.json {
        let response = TrendResponse::new(&query, &rows, &weeks);
        let json = serde_json::to_string_pretty(&response).context("could not write JSON")?;
        println!("{json}");
    } else {
        print!("{}", trend_table(&query, &rows));
        println!();
        print!("{}", week_table(query.group_by, &weeks));
    }
    Ok(())
}

/// A span back from `now_ms` (`24h`, `7d`, `2w`, `90m`) or an RFC 3339 time,
/// as unix milliseconds.
fn parse_since(value: &str, now_ms: i64) -> anyhow::Result<i64> {
    let unit_ms = match value.chars().last() {
        Some('m') => Some(MINUTE_MS),
        Some('h') => Some(HOUR_MS),
        Some('d') => Some(DAY_MS),
        Some('w') => Some(WEEK_MS),
        _ => None,
    };
    let span = unit_ms.and_then(|unit| {
        let count: i64 = value[..value.len() - 1].parse().ok()?;
        count.checked_mul(unit).filter(|span| *span > 0)
    });
    if let Some(span) = span {
        return Ok(now_ms.saturating_sub(span));
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.timestamp_millis());
    }
    bail!(
        "invalid --since {value:?}: use a span back from now like 24h, 7d or 2w, or an RFC 3339 \
         time like 2026-12-01T00:00:00Z"
    )
}

/// The trend as an aligned table, each group's buckets together.
fn trend_table(query: &TrendQuery, rows: &[TrendRow]) -> String {
    let since = query.filter.since_ms.map_or_else(String::new, |ms| {
        format!(" since {}", label(Bucket::Hour, ms))
    });
    let mut out = format!("usage per {} (UTC){since}\n", query.bucket);
    if rows.is_empty() {
        out.push_str("no usage in this range\n");
        return out;
    }

    let mut rows: Vec<&TrendRow> = rows.iter().collect();
    rows.sort_by(|a, b| {
        group_key(&a.group)
            .cmp(&group_key(&b.group))
            .then(a.bucket_start_ms.cmp(&b.bucket_start_ms))
    });
    let mut header = vec![query.bucket.as_str()];
    header.extend(FIGURES);
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for row in rows {
        let mut line = vec![label(query.bucket, row.bucket_start_ms)];
        line.extend(figures(&row.totals));
        if query.group_by.is_some() {
            line.insert(0, group_name(&row.group));
        }
        lines.push(line);
    }
    if let Some(dimension) = query.group_by {
        header.insert(0, dimension.as_str());
    }
    let text_columns = header.len() - FIGURES.len();
    out.push_str(&table(&header, &lines, text_columns));
    out
}

/// The figures columns of [`trend_table`].
const FIGURES: [&str; 6] = [
    "requests",
    "prompt",
    "completion",
    "tokens",
    "cost",
    "errors",
];

fn figures(totals: &UsageTotals) -> [String; 6] {
    [
        totals.requests.to_string(),
        totals.prompt_tokens.to_string(),
        totals.completion_tokens.to_string(),
        totals.total_tokens().to_string(),
        dollars(totals.cost_micros),
        totals.errors.to_string(),
    ]
}

/// Each group's last seven days against the seven before.
fn week_table(group_by: Option<Dimension>, weeks: &[WeekOverWeek]) -> String {
    let mut out = String::from("week over week (the last 7 days against the 7 before)\n");
    if weeks.is_empty() {
        out.push_str("no usage in the last 14 days\n");
        return out;
    }

    let header = [
        group_by.map_or("", Dimension::as_str),
        "requests",
        "before",
        "change",
        "tokens",
        "before",
        "change",
        "cost",
        "before",
        "change",
    ];
    let lines: Vec<Vec<String>> = weeks
        .iter()
        .map(|w| {
            let (this, before) = (&w.this_week, &w.previous_week);
            vec![
                group_by.map_or_else(|| "all".to_owned(), |_| group_name(&w.group)),
                this.requests.to_string(),
                before.requests.to_string(),
                change(w.requests_change(), this.requests),
                this.total_tokens().to_string(),
                before.total_tokens().to_string(),
                change(w.tokens_change(), this.total_tokens()),
                dollars(this.cost_micros),
                dollars(before.cost_micros),
                change(w.cost_change(), this.cost_micros),
            ]
        })
        .collect();
    out.push_str(&table(&header, &lines, 1));
    out
}

/// `+12.5 %`; `new` when only this week has any, `-` when neither has.
fn change(ratio: Option<f64>, this_week: i64) -> String {
    match ratio {
        Some(ratio) => format!("{:+.1} %", ratio * 100.0),
        None if this_week > 0 => "new".to_owned(),
        None => "-".to_owned(),
    }
}

/// Columns padded to their widest cell: the first `text_columns` aligned
/// left, the numbers after them right.
fn table(header: &[&str], lines: &[Vec<String>], text_columns: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for line in std::iter::once(&header).chain(lines) {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, width))| {
                if i < text_columns {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// Sorts named groups by bytes, then the rows without the attribution.
fn group_key(group: &Option<String>) -> (bool, Option<&str>) {
    (group.is_none(), group.as_deref())
}

fn group_name(group: &Option<String>) -> String {
    group.clone().unwrap_or_else(|| "(none)".to_owned())
}

/// A bucket start as a reader names it: `2026-12-03 14:00` for hours, the
/// date for days and weeks.
fn label(bucket: Bucket, ms: i64) -> String {
    let format = match bucket {
        Bucket::Hour => "%Y-%m-%d %H:%M",
        Bucket::Day | Bucket::Week => "%Y-%m-%d",
    };
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format(format).to_string())
}

/// `$0.001234`, exactly.
fn dollars(micros: i64) -> String {
    // Ledger costs are never negative.
    format!(
        "${}",
        Cost(u64::try_from(micros).unwrap_or(0)).dollars_exact()
    )
}

/// The current time, unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2024-01-01 00:00:00 UTC.
    const MONDAY_MS: i64 = 1_704_067_200_000;

    fn totals(requests: i64, cost_micros: i64) -> UsageTotals {
        UsageTotals {
            requests,
            prompt_tokens: 10 * requests,
            completion_tokens: 5 * requests,
            cost_micros,
            ..UsageTotals::default()
        }
    }

    #[test]
    fn since_takes_spans_and_rfc3339_times() {
        let now = MONDAY_MS;
        assert_eq!(parse_since("24h", now).unwrap(), now - DAY_MS);
        assert_eq!(parse_since("7d", now).unwrap(), now - WEEK_MS);
        assert_eq!(parse_since("2w", now).unwrap(), now - 2 * WEEK_MS);
        assert_eq!(parse_since("90m", now).unwrap(), now - 90 * MINUTE_MS);
        assert_eq!(parse_since("2024-01-01T00:00:00Z", 0).unwrap(), MONDAY_MS);
        for bad in ["", "d", "-3d", "0h", "7y", "yesterday"] {
            let error = parse_since(bad, now).unwrap_err().to_string();
            assert!(error.contains("--since"), "{bad}: {error}");
        }
    }

    #[test]
    fn trend_table_lists_each_groups_buckets_aligned() {
        let row = |bucket, group: Option<&str>, requests| TrendRow {
            bucket_start_ms: bucket,
            group: group.map(str::to_owned),
            totals: totals(requests, 1_500 * requests),
        };
        let query = TrendQuery {
            bucket: Bucket::Day,
            group_by: Some(Dimension::User),
            ..TrendQuery::default()
        };
        let rows = [
            row(MONDAY_MS, Some("alice"), 1),
            row(MONDAY_MS, None, 1),
            row(MONDAY_MS, Some("bob"), 12),
            row(MONDAY_MS + DAY_MS, Some("alice"), 2),
        ];
        let text = trend_table(&query, &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "usage per day (UTC)");
        assert_eq!(
            lines[1..],
            [
                "user    day         requests  prompt  completion  tokens       cost  errors",
                "alice   2024-01-01         1      10           5      15  $0.001500       0",
                "alice   2024-01-02         2      20          10      30  $0.003000       0",
                "bob     2024-01-01        12     120          60     180  $0.018000       0",
                "(none)  2024-01-01         1      10           5      15  $0.001500       0",
            ]
        );
    }

    #[test]
    fn week_table_shows_signed_changes() {
        let week = |group: &str, this: UsageTotals, before: UsageTotals| WeekOverWeek {
            group: Some(group.to_owned()),
            this_week: this,
            previous_week: before,
        };
        let weeks = [
            week("alice", totals(2, 3_000), totals(1, 1_500)),
            week("bob", totals(1, 1_500), UsageTotals::default()),
            week("carol", UsageTotals::default(), totals(4, 1_000)),
        ];
        let text = week_table(Some(Dimension::User), &weeks);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].starts_with("alice") && lines[2].contains("+100.0 %"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("bob") && lines[3].contains("new"),
            "{text}"
        );
        assert!(lines[4].contains("-100.0 %"), "{text}");
        assert_eq!(change(None, 0), "-");
    }
}
