//! `GET /v1/usage`: the caller's tenant's tokens and cost per time bucket
//! and group, with week-over-week changes, so a team can watch consumption
//! while it scales up.
//!
//! Any API key may ask, and always sees its own tenant only. The response
//! types are public so `keel usage --json` prints the same shape.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderMap, Uri};
use keel_core::{Cost, ErrorCode};
use keel_store::{
    Bucket, Dimension, StoreError, TrendQuery, TrendRow, UsageQuery, UsageTotals, WeekOverWeek,
};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The query string of `GET /v1/usage`, as sent; [`TrendParams::check`]
/// turns it into a store query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendParams {
    /// `tenant`, `user`, `workflow` or `session`; absent for one total.
    pub group_by: Option<String>,
    /// `hour`, `day` (the default) or `week`.
    pub bucket: Option<String>,
    /// The start, inclusive: unix milliseconds or RFC 3339.
    pub from: Option<String>,
    /// The end, exclusive: unix milliseconds or RFC 3339.
    pub to: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only this requested model.
    pub model: Option<String>,
}

impl TrendParams {
    /// The store query for `caller`, whose tenant it is always limited to.
    /// Without `from`, the trend starts [`Bucket::default_from_ms`] before
    /// `to` (or `now_ms`).
    pub fn check(self, caller: &Caller, now_ms: i64) -> Result<TrendQuery, ApiError> {
        let bucket = match self.bucket.as_deref() {
            Some(name) => Bucket::parse(name).map_err(|e| invalid("bucket", &e))?,
            None => Bucket::default(),
        };
        let group_by = self
            .group_by
            .as_deref()
            .map(Dimension::parse)
            .transpose()
            .map_err(|e| invalid("group_by", &e))?;
        let to_ms = self
            .to
            .as_deref()
            .map(|t| parse_time("to", t))
            .transpose()?;
        let from_ms = match self.from.as_deref() {
            Some(from) => parse_time("from", from)?,
            None => bucket.default_from_ms(to_ms.unwrap_or(now_ms)),
        };
        if to_ms.is_some_and(|to| to <= from_ms) {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "from",
                "`from` must be before `to`",
            ));
        }

        Ok(TrendQuery {
            filter: UsageQuery {
                tenant_id: Some(caller.tenant_id.to_string()),
                user_id: self.user,
                session: self.session,
                workflow: self.workflow,
                model: self.model,
                since_ms: Some(from_ms),
                until_ms: to_ms,
                ..UsageQuery::default()
            },
            bucket,
            group_by,
        })
    }
}

/// A 400 naming `param`, with the store's description of what it accepts.
fn invalid(param: &str, error: &StoreError) -> ApiError {
    ApiError::field(ErrorCode::InvalidRequest, param, error.to_string())
}

/// Unix milliseconds (all digits) or an RFC 3339 time.
fn parse_time(param: &str, value: &str) -> Result<i64, ApiError> {
    let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<i64>().ok()
    } else {
        DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    parsed.ok_or_else(|| {
        ApiError::field(
            ErrorCode::InvalidRequest,
            param,
            format!(
                "`{param}` must be unix milliseconds or an RFC 3339 time like \
                 2026-12-01T00:00:00Z, got {value:?}"
            ),
        )
    })
}

/// Serves the caller's usage trend and week-over-week changes; the weeks
/// compared end at `to` (or now).
pub async fn trend(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<TrendResponse>, ApiError> {
    let caller = state.keys.authenticate(&headers)?;
    let params: TrendParams = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let now_ms = now_ms();
    let query = params.check(&caller, now_ms)?;

    let rows = state.store.usage_trend(&query).await.map_err(store_error)?;
    let week_end_ms = query.filter.until_ms.unwrap_or(now_ms);
    let weeks = state
        .store
        .usage_week_over_week(&query.filter, query.group_by, week_end_ms)
        .await
        .map_err(store_error)?;
    Ok(Json(TrendResponse::new(&query, &rows, &weeks)))
}

/// A trend too large to answer is the caller's to narrow; anything else is
/// ours.
fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::TrendTooLarge { .. } => {
            ApiError::new(ErrorCode::InvalidRequest, error.to_string())
        }
        other => ApiError::internal("read usage", &other),
    }
}

/// The current time, unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The body of `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendResponse {
    /// Always `usage.trend`.
    pub object: &'static str,
    /// The bucket width.
    pub bucket: Bucket,
    /// The grouping, `null` for one total.
    pub group_by: Option<Dimension>,
    /// The start of the range summed, unix milliseconds.
    pub from_ms: Option<i64>,
    /// The end of the range summed (exclusive), if one was given.
    pub to_ms: Option<i64>,
    /// Usage per bucket and group, by bucket then group.
    pub data: Vec<TrendEntry>,
    /// Per group, the last seven days against the seven before.
    pub week_over_week: Vec<WeekOverWeekEntry>,
}

impl TrendResponse {
    /// Shapes store results for the wire.
    pub fn new(query: &TrendQuery, rows: &[TrendRow], weeks: &[WeekOverWeek]) -> TrendResponse {
        TrendResponse {
            object: "usage.trend",
            bucket: query.bucket,
            group_by: query.group_by,
            from_ms: query.filter.since_ms,
            to_ms: query.filter.until_ms,
            data: rows.iter().map(TrendEntry::new).collect(),
            week_over_week: weeks.iter().map(WeekOverWeekEntry::new).collect(),
        }
    }
}

/// One group's usage in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrendEntry {
    /// When the bucket starts, RFC 3339 in UTC.
    pub bucket_start: String,
    /// When the bucket starts, unix milliseconds.
    pub bucket_start_ms: i64,
    /// The group's value; `null` for one total or for requests without the
    /// attribution grouped by.
    pub group: Option<String>,
    /// The sums.
    #[serde(flatten)]
    pub usage: UsageFigures,
}

impl TrendEntry {
    fn new(row: &TrendRow) -> TrendEntry {
        TrendEntry {
            bucket_start: rfc3339(row.bucket_start_ms),
            bucket_start_ms: row.bucket_start_ms,
            group: row.group.clone(),
            usage: UsageFigures::new(&row.totals),
        }
    }
}

/// Requests, tokens and cost over some ledger rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageFigures {
    /// Requests made.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Prompt and completion tokens together.
    pub total_tokens: i64,
    /// Cost in dollars, an exact six-place decimal string.
    pub cost_usd: String,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// Failed requests.
    pub errors: i64,
    /// Requests answered from the response cache.
    pub cache_hits: i64,
    /// Tokens the cache saved (prompt and completion).
    pub saved_tokens: i64,
    /// Cost the cache saved, in dollars (exact decimal string).
    pub saved_usd: String,
    /// Cost the cache saved, in micro-dollars.
    pub saved_cost_micros: i64,
}

impl UsageFigures {
    /// The figures of store totals.
    pub fn new(totals: &UsageTotals) -> UsageFigures {
        UsageFigures {
            requests: totals.requests,
            prompt_tokens: totals.prompt_tokens,
            completion_tokens: totals.completion_tokens,
            total_tokens: totals.total_tokens(),
            cost_usd: cost(totals.cost_micros).dollars_exact(),
            cost_micros: totals.cost_micros,
            errors: totals.errors,
            cache_hits: totals.cache_hits,
            saved_tokens: totals.saved_tokens,
            saved_usd: cost(totals.saved_cost_micros).dollars_exact(),
            saved_cost_micros: totals.saved_cost_micros,
        }
    }
}

/// One group's last seven days against the seven before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeekOverWeekEntry {
    /// The group's value, as in [`TrendEntry::group`].
    pub group: Option<String>,
    /// The last seven days.
    pub this_week: UsageFigures,
    /// The seven days before.
    pub previous_week: UsageFigures,
    /// Relative change in cost (`0.25` is 25 % more); `null` when the
    /// previous week cost nothing.
    pub cost_change: Option<f64>,
    /// Relative change in total tokens; `null` when the previous week had
    /// none.
    pub tokens_change: Option<f64>,
    /// Relative change in requests; `null` when the previous week had none.
    pub requests_change: Option<f64>,
}

impl WeekOverWeekEntry {
    fn new(week: &WeekOverWeek) -> WeekOverWeekEntry {
        WeekOverWeekEntry {
            group: week.group.clone(),
            this_week: UsageFigures::new(&week.this_week),
            previous_week: UsageFigures::new(&week.previous_week),
            cost_change: week.cost_change(),
            tokens_change: week.tokens_change(),
            requests_change: week.requests_change(),
        }
    }
}

/// A ledger sum as money; ledger costs are never negative.
fn cost(micros: i64) -> Cost {
    Cost(u64::try_from(micros).unwrap_or(0))
}

/// `2026-12-03T00:00:00Z`.
fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use keel_core::{KeyId, TenantId};

    use super::*;

    fn caller() -> Caller {
        Caller {
            key_id: KeyId::new("key_1").unwrap(),
            tenant_id: TenantId::new("acme").unwrap(),
            user_id: None,
        }
    }

    fn refused(params: TrendParams) -> Option<String> {
        params.check(&caller(), 0).err().and_then(|e| e.param)
    }

    #[test]
    fn forces_the_callers_tenant_and_reads_both_time_forms() {
        let params = TrendParams {
            bucket: Some("hour".into()),
            group_by: Some("user".into()),
            from: Some("2024-01-01T00:00:00Z".into()),
            to: Some("1704070800000".into()),
            ..TrendParams::default()
        };
        let query = params.check(&caller(), 0).unwrap();
        assert_eq!(query.filter.tenant_id.as_deref(), Some("acme"));
        assert_eq!(query.filter.since_ms, Some(1_704_067_200_000));
        assert_eq!(query.filter.until_ms, Some(1_704_070_800_000));
        assert_eq!(
            (query.bucket, query.group_by),
            (Bucket::Hour, Some(Dimension::User))
        );
    }

    #[test]
    fn defaults_to_a_week_of_days() {
        let now = 1_704_067_200_000 + 5;
        let query = TrendParams::default().check(&caller(), now).unwrap();
        assert_eq!(query.bucket, Bucket::Day);
        assert_eq!(query.group_by, None);
        assert_eq!(
            query.filter.since_ms,
            Some(1_704_067_200_000 - 6 * 86_400_000)
        );
        assert_eq!(query.filter.until_ms, None);
    }

    #[test]
    fn names_the_parameter_at_fault() {
        let bucket = TrendParams {
            bucket: Some("month".into()),
            ..TrendParams::default()
        };
        assert_eq!(refused(bucket).as_deref(), Some("bucket"));
        let group = TrendParams {
            group_by: Some("model".into()),
            ..TrendParams::default()
        };
        assert_eq!(refused(group).as_deref(), Some("group_by"));
        let to = TrendParams {
            to: Some("yesterday".into()),
            ..TrendParams::default()
        };
        assert_eq!(refused(to).as_deref(), Some("to"));
        let backwards = TrendParams {
            from: Some("20".into()),
            to: Some("10".into()),
            ..TrendParams::default()
        };
        assert_eq!(refused(backwards).as_deref(), Some("from"));
    }

    #[test]
    fn formats_money_exactly_and_times_in_utc() {
        let totals = UsageTotals {
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_micros: 1_234,
            ..UsageTotals::default()
        };
        let figures = UsageFigures::new(&totals);
        assert_eq!(figures.cost_usd, "0.001234");
        assert_eq!(figures.total_tokens, 7);
        assert_eq!(rfc3339(1_704_067_200_000), "2024-01-01T00:00:00Z");
    }
}
