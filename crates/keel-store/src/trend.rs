//! Usage trends: the ledger summed per time bucket (hour, day or week, in
//! UTC) and per attribution group (tenant, user, workflow or session), and
//! week-over-week comparisons, so a team can watch consumption while it
//! scales up.
//!
//! The database does the grouping, with integer arithmetic on `ts_ms` that
//! SQLite and PostgreSQL evaluate alike, so one SQL text serves both; only
//! the final ordering happens here (see [`sort_rows`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::{RowExt, Store, on_pool};
use crate::error::StoreError;
use crate::usage::{Arg, Filter, UsageQuery, UsageTotals, bind_args, totals_from_row, usage_sums};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;

/// Weeks start on Monday 00:00 UTC. The Unix epoch fell on a Thursday, so
/// week buckets are counted from four days after it.
const MONDAY_OFFSET_MS: i64 = 4 * DAY_MS;

/// The most rows [`Store::usage_trend`] (and the most bucket-and-group pairs
/// [`Store::usage_week_over_week`]) may return; larger answers are refused
/// with [`StoreError::TrendTooLarge`] rather than cut short.
pub const MAX_TREND_ROWS: usize = 10_000;

/// How wide a trend bucket is. Buckets are aligned in UTC; weeks start on
/// Monday.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// One hour.
    Hour,
    /// One day, from midnight UTC.
    #[default]
    Day,
    /// One week, from Monday midnight UTC.
    Week,
}

impl Bucket {
    /// Every bucket width, narrowest first.
    pub const ALL: [Bucket; 3] = [Bucket::Hour, Bucket::Day, Bucket::Week];

    /// The bucket named `name` (`hour`, `day` or `week`).
    pub fn parse(name: &str) -> Result<Bucket, StoreError> {
        Bucket::ALL
            .into_iter()
            .find(|b| b.as_str() == name)
            .ok_or_else(|| StoreError::UnknownChoice {
                what: "bucket",
                given: name.to_owned(),
                accepted: "hour, day, week",
            })
    }

    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Week => "week",
        }
    }

    /// The bucket's width, milliseconds.
    pub fn width_ms(self) -> i64 {
        match self {
            Bucket::Hour => HOUR_MS,
            Bucket::Day => DAY_MS,
            Bucket::Week => WEEK_MS,
        }
    }

    /// Where bucket edges fall relative to the Unix epoch, milliseconds.
    fn offset_ms(self) -> i64 {
        match self {
            Bucket::Hour | Bucket::Day => 0,
            Bucket::Week => MONDAY_OFFSET_MS,
        }
    }

    /// The start of the bucket holding `ts_ms`, unix milliseconds.
    pub fn start_ms(self, ts_ms: i64) -> i64 {
        ts_ms - (ts_ms - self.offset_ms()).rem_euclid(self.width_ms())
    }

    /// Where a trend ending at `to_ms` (exclusive) starts when the caller
    /// names no start: a day of hours, a week of days, or four weeks, each
    /// counting the bucket `to_ms` falls in.
    pub fn default_from_ms(self, to_ms: i64) -> i64 {
        let buckets = match self {
            Bucket::Hour => 24,
            Bucket::Day => 7,
            Bucket::Week => 4,
        };
        let last = self.start_ms(to_ms.saturating_sub(1));
        last.saturating_sub((buckets - 1) * self.width_ms())
    }
}

impl FromStr for Bucket {
    type Err = StoreError;

    fn from_str(name: &str) -> Result<Bucket, StoreError> {
        Bucket::parse(name)
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attribution a trend is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The tenant billed.
    Tenant,
    /// The key's user.
    User,
    /// The `x-keel-workflow` attribution.
    Workflow,
    /// The `x-keel-session` attribution.
    Session,
}

impl Dimension {
    /// Every dimension.
    pub const ALL: [Dimension; 4] = [
        Dimension::Tenant,
        Dimension::User,
        Dimension::Workflow,
        Dimension::Session,
    ];

    /// The dimension named `name` (`tenant`, `user`, `workflow` or
    /// `session`).
    pub fn parse(name: &str) -> Result<Dimension, StoreError> {
        Dimension::ALL
            .into_iter()
            .find(|d| d.as_str() == name)
            .ok_or_else(|| StoreError::UnknownChoice {
                what: "group",
                given: name.to_owned(),
                accepted: "tenant, user, workflow, session",
            })
    }

    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Tenant => "tenant",
            Dimension::User => "user",
            Dimension::Workflow => "workflow",
            Dimension::Session => "session",
        }
    }

    /// The ledger column holding this attribution.
    fn column(self) -> &'static str {
        match self {
            Dimension::Tenant => "tenant_id",
            Dimension::User => "user_id",
            Dimension::Workflow => "workflow",
            Dimension::Session => "session",
        }
    }
}

impl FromStr for Dimension {
    type Err = StoreError;

    fn from_str(name: &str) -> Result<Dimension, StoreError> {
        Dimension::parse(name)
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Store::usage_trend`] sums and how it slices the sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrendQuery {
    /// Which ledger rows count (`since_ms` inclusive, `until_ms`
    /// exclusive); its `limit` is ignored.
    pub filter: UsageQuery,
    /// The width of each time bucket.
    pub bucket: Bucket,
    /// The attribution to group by; `None` sums every row together.
    pub group_by: Option<Dimension>,
}

/// The usage of one group in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrendRow {
    /// When the bucket starts, unix milliseconds (UTC).
    pub bucket_start_ms: i64,
    /// The group's value; `None` when grouping by nothing, or for rows
    /// without this attribution (requests sent without a workflow).
    pub group: Option<String>,
    /// The sums over the group's rows in the bucket.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// One group's usage in the seven days up to a moment against the seven
/// days before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeekOverWeek {
    /// The group's value, as in [`TrendRow::group`].
    pub group: Option<String>,
    /// The last seven days.
    pub this_week: UsageTotals,
    /// The seven days before those.
    pub previous_week: UsageTotals,
}

impl WeekOverWeek {
    /// The relative change in cost (`0.25` is 25 % more); `None` when the
    /// previous week cost nothing.
    pub fn cost_change(&self) -> Option<f64> {
        change_ratio(self.previous_week.cost_micros, self.this_week.cost_micros)
    }

    /// The relative change in total tokens; `None` when the previous week
    /// used none.
    pub fn tokens_change(&self) -> Option<f64> {
        change_ratio(
            self.previous_week.total_tokens(),
            self.this_week.total_tokens(),
        )
    }

    /// The relative change in requests; `None` when the previous week had
    /// none.
    pub fn requests_change(&self) -> Option<f64> {
        change_ratio(self.previous_week.requests, self.this_week.requests)
    }
}

/// `(current - previous) / previous`, or `None` when `previous` is zero and
/// no ratio exists.
pub fn change_ratio(previous: i64, current: i64) -> Option<f64> {
    (previous != 0).then(|| (current as f64 - previous as f64) / previous as f64)
}

impl Store {
    /// Sums the ledger rows `query` matches per time bucket and group,
    /// ordered by bucket start, then group (byte order, `None` last).
    /// Buckets without rows are absent.
    pub async fn usage_trend(&self, query: &TrendQuery) -> Result<Vec<TrendRow>, StoreError> {
        let bucket = query.bucket;
        self.grouped_sums(
            &query.filter,
            bucket.width_ms(),
            bucket.offset_ms(),
            query.group_by,
        )
        .await
    }

    /// Per group, the usage in the seven days ending at `now_ms`
    /// (exclusive) against the seven days before, for the rows `filter`
    /// matches; the window replaces the filter's `since_ms`/`until_ms`.
    /// Groups come in the order of [`Store::usage_trend`]; a group without
    /// rows in either week is absent.
    pub async fn usage_week_over_week(
        &self,
        filter: &UsageQuery,
        group_by: Option<Dimension>,
        now_ms: i64,
    ) -> Result<Vec<WeekOverWeek>, StoreError> {
        let window = UsageQuery {
            since_ms: Some(now_ms.saturating_sub(2 * WEEK_MS)),
            until_ms: Some(now_ms),
            ..filter.clone()
        };

        // Week-wide buckets whose edges fall on `now_ms` split the window
        // into exactly the two weeks compared.
        let offset = now_ms.rem_euclid(WEEK_MS);
        let rows = self
            .grouped_sums(&window, WEEK_MS, offset, group_by)
            .await?;

        let this_week_start = now_ms.saturating_sub(WEEK_MS);
        let mut groups: BTreeMap<GroupKey, WeekOverWeek> = BTreeMap::new();
        for row in rows {
            let entry = groups
                .entry(GroupKey(row.group.clone()))
                .or_insert_with(|| WeekOverWeek {
                    group: row.group,
                    ..WeekOverWeek::default()
                });
            if row.bucket_start_ms >= this_week_start {
                entry.this_week = row.totals;
            } else {
                entry.previous_week = row.totals;
            }
        }
        Ok(groups.into_values().collect())
    }

    /// Sums matching rows per (bucket, group), with buckets `width_ms` wide
    /// and edges at `offset_ms` plus whole widths from the epoch.
    async fn grouped_sums(
        &self,
        query: &UsageQuery,
        width_ms: i64,
        offset_ms: i64,
        group_by: Option<Dimension>,
    ) -> Result<Vec<TrendRow>, StoreError> {
        let mut filter = Filter::new(query);
        let offset = filter.bind(Arg::Int(offset_ms));
        let width = filter.bind(Arg::Int(width_ms));
        let limit = filter.bind(Arg::Int(
            i64::try_from(MAX_TREND_ROWS + 1).unwrap_or(i64::MAX),
        ));
        let sql = trend_sql(&filter.sql, &offset, &width, &limit, group_by);

        let mut rows = on_pool!(self, |pool| {
            let select = bind_args!(sqlx::query(&sql), &filter.args);
            let rows = select.fetch_all(pool).await;
            rows.and_then(|rows| rows.iter().map(trend_row).collect::<Result<Vec<_>, _>>())
        })
        .map_err(StoreError::db("sum usage per bucket"))?;

        if rows.len() > MAX_TREND_ROWS {
            return Err(StoreError::TrendTooLarge {
                max_rows: MAX_TREND_ROWS,
            });
        }
        sort_rows(&mut rows);
        Ok(rows)
    }
}

/// The grouping query. The bucket start is `ts - ((ts - offset) mod width)`
/// with the modulo made non-negative, as both databases' `%` keeps the
/// dividend's sign and rows may predate the offset. Only column names and
/// placeholders are written into the text.
fn trend_sql(
    filter: &str,
    offset: &str,
    width: &str,
    limit: &str,
    group_by: Option<Dimension>,
) -> String {
    let group = group_by.map_or("CAST(NULL AS TEXT)", Dimension::column);
    let offset = format!("CAST({offset} AS BIGINT)");
    let width = format!("CAST({width} AS BIGINT)");
    format!(
        "SELECT bucket_start_ms, grp, {sums} FROM (\
         SELECT ts_ms - (((ts_ms - {offset}) % {width}) + {width}) % {width} AS bucket_start_ms, \
         {group} AS grp, status, error_code, prompt_tokens, completion_tokens, cost_micros, \
         cache, saved_prompt_tokens, saved_completion_tokens, saved_cost_micros \
         FROM usage_ledger{filter}) AS bucketed \
         GROUP BY bucket_start_ms, grp LIMIT {limit}",
        sums = usage_sums!(),
    )
}

fn trend_row(row: &impl RowExt) -> Result<TrendRow, sqlx::Error> {
    Ok(TrendRow {
        bucket_start_ms: row.int("bucket_start_ms")?,
        group: row.opt_text("grp")?,
        totals: totals_from_row(row)?,
    })
}

/// Orders rows by bucket, then group. Done here rather than in SQL because
/// PostgreSQL sorts text by the database's collation and NULL last, SQLite
/// by bytes and NULL first; this gives one order on both.
fn sort_rows(rows: &mut [TrendRow]) {
    rows.sort_by(|a, b| {
        a.bucket_start_ms
            .cmp(&b.bucket_start_ms)
            .then_with(|| GroupKey::order(&a.group, &b.group))
    });
}

/// A group value ordered by bytes, with `None` after every named group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupKey(Option<String>);

impl GroupKey {
    fn order(a: &Option<String>, b: &Option<String>) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

impl Ord for GroupKey {
    fn cmp(&self, other: &Self) -> Ordering {
        GroupKey::order(&self.0, &other.0)
    }
}

impl PartialOrd for GroupKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2024-01-01 00:00:00 UTC.
    const MONDAY_MS: i64 = 1_704_067_200_000;

    #[test]
    fn buckets_start_on_utc_hours_days_and_mondays() {
        let ts = MONDAY_MS + 2 * DAY_MS + 5 * HOUR_MS + 17;
        assert_eq!(
            Bucket::Hour.start_ms(ts),
            MONDAY_MS + 2 * DAY_MS + 5 * HOUR_MS
        );
        assert_eq!(Bucket::Day.start_ms(ts), MONDAY_MS + 2 * DAY_MS);
        assert_eq!(Bucket::Week.start_ms(ts), MONDAY_MS);
        assert_eq!(Bucket::Week.start_ms(MONDAY_MS - 1), MONDAY_MS - WEEK_MS);
        // The epoch itself was a Thursday: its week began on Monday
        // 1969-12-29.
        assert_eq!(Bucket::Week.start_ms(0), -3 * DAY_MS);
    }

    #[test]
    fn default_range_counts_the_current_bucket() {
        let hour = MONDAY_MS + 2 * DAY_MS + 5 * HOUR_MS;
        let now = hour + 30 * 60_000;
        assert_eq!(Bucket::Day.default_from_ms(now), MONDAY_MS - 4 * DAY_MS);
        assert_eq!(Bucket::Hour.default_from_ms(now), hour - 23 * HOUR_MS);
        assert_eq!(Bucket::Week.default_from_ms(now), MONDAY_MS - 3 * WEEK_MS);
        // The end is exclusive: ending on an edge leaves that bucket out.
        assert_eq!(Bucket::Hour.default_from_ms(hour), hour - 24 * HOUR_MS);
    }

    #[test]
    fn parse_names_the_accepted_values() {
        assert_eq!(Bucket::parse("week").ok(), Some(Bucket::Week));
        assert_eq!("user".parse::<Dimension>().ok(), Some(Dimension::User));
        let error = Bucket::parse("month").err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("unknown bucket \"month\": use one of hour, day, week")
        );
        let error = Dimension::parse("model").err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("tenant, user, workflow, session")));
    }

    #[test]
    fn change_is_relative_to_the_previous_week() {
        assert_eq!(change_ratio(4, 5), Some(0.25));
        assert_eq!(change_ratio(4, 0), Some(-1.0));
        assert_eq!(change_ratio(0, 5), None);
    }

    #[test]
    fn groups_sort_by_bytes_with_none_last() {
        let row = |bucket, group: Option<&str>| TrendRow {
            bucket_start_ms: bucket,
            group: group.map(str::to_owned),
            totals: UsageTotals::default(),
        };
        let mut rows = vec![
            row(2, Some("a")),
            row(1, None),
            row(1, Some("b")),
            row(1, Some("B")),
        ];
        sort_rows(&mut rows);
        let order: Vec<_> = rows
            .iter()
            .map(|r| (r.bucket_start_ms, r.group.as_deref()))
            .collect();
        assert_eq!(
            order,
            vec![(1, Some("B")), (1, Some("b")), (1, None), (2, Some("a"))]
        );
    }

    #[test]
    fn trend_sql_writes_only_placeholders() {
        let sql = trend_sql(
            " WHERE tenant_id = $1",
            "$2",
            "$3",
            "$4",
            Some(Dimension::User),
        );
        assert!(sql.contains("user_id AS grp"));
        assert!(sql.contains("FROM usage_ledger WHERE tenant_id = $1)"));
        assert!(sql.ends_with("LIMIT $4"));
        let total = trend_sql("", "$1", "$2", "$3", None);
        assert!(total.contains("CAST(NULL AS TEXT) AS grp"));
    }
}
