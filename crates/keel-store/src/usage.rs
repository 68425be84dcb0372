//! The usage ledger: one row per gateway request, with tokens, cost, timing
//! and outcome, attributed to tenant, user, key, session and workflow.
//!
//! Rows arrive in batches from the [`Ledger`](crate::Ledger) writer. Inserts
//! are idempotent on `request_id`, so a batch retried after an unclear
//! failure never counts a request twice.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BeginWrite, RowExt, Store, on_pool};
use crate::error::StoreError;

/// How many rows [`Store::usage`] returns when the query sets no limit.
pub const DEFAULT_USAGE_LIMIT: u32 = 100;

/// The most rows [`Store::usage`] returns; larger limits are capped.
pub const MAX_USAGE_LIMIT: u32 = 10_000;

/// One gateway request as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The request's id; the ledger's idempotency key.
    pub request_id: String,
    /// When the request arrived, unix milliseconds.
    pub ts_ms: i64,
    /// The tenant billed.
    pub tenant_id: String,
    /// The user, if the key belongs to one.
    pub user_id: Option<String>,
    /// The API key used.
    pub key_id: Option<String>,
    /// The `x-keel-session` attribution, if sent.
    pub session: Option<String>,
    /// The `x-keel-workflow` attribution, if sent.
    pub workflow: Option<String>,
    /// The model name the client asked for.
    pub model: String,
    /// The deployment that served it, if any did.
    pub deployment: Option<String>,
    /// The provider behind that deployment.
    pub provider: Option<String>,
    /// Prompt tokens billed.
    pub prompt_tokens: i64,
    /// Completion tokens billed.
    pub completion_tokens: i64,
    /// Cost in micro-dollars.
    pub cost_micros: i64,
    /// Total time from arrival to last byte, microseconds.
    pub latency_us: i64,
    /// Time spent in keel itself rather than upstream, microseconds.
    pub overhead_us: i64,
    /// Time to first token for streams, microseconds.
    pub ttft_us: Option<i64>,
    /// The HTTP status returned to the client.
    pub status: i64,
    /// keel's error code when the request failed.
    pub error_code: Option<String>,
    /// Whether the response was streamed.
    pub stream: bool,
    /// Upstream attempts made (retries and fallbacks included).
    pub attempts: i64,
    /// Cache outcome (`miss`, `exact`, `semantic`, `stale`), if the cache
    /// ran.
    pub cache: Option<String>,
    /// Prompt tokens a cache hit avoided (the stored answer's).
    pub saved_prompt_tokens: i64,
    /// Completion tokens a cache hit avoided.
    pub saved_completion_tokens: i64,
    /// Cost a cache hit avoided, micro-dollars.
    pub saved_cost_micros: i64,
}

/// Filters for reading the ledger; every field is optional and they combine
/// with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageQuery {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this user.
    pub user_id: Option<String>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this requested model.
    pub model: Option<String>,
    /// Only rows at or after this time, unix milliseconds (inclusive).
    pub since_ms: Option<i64>,
    /// Only rows before this time, unix milliseconds (exclusive).
    pub until_ms: Option<i64>,
    /// At most this many rows from [`Store::usage`]; defaults to
    /// [`DEFAULT_USAGE_LIMIT`], capped at [`MAX_USAGE_LIMIT`]. Totals ignore it.
    pub limit: Option<u32>,
}

/// Sums over the rows a [`UsageQuery`] matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Rows matched.
    pub requests: i64,
    /// Failed requests: an HTTP status of 400 or more, or an error code
    /// (a stream that failed after its 200 was sent has both 200 and a code).
    pub errors: i64,
    /// Prompt tokens summed.
    pub prompt_tokens: i64,
    /// Completion tokens summed.
    pub completion_tokens: i64,
    /// Cost summed, micro-dollars.
    pub cost_micros: i64,
    /// Requests answered from the cache.
    pub cache_hits: i64,
    /// Tokens the cache avoided (prompt and completion).
    pub saved_tokens: i64,
    /// Cost the cache avoided, micro-dollars.
    pub saved_cost_micros: i64,
}

impl UsageTotals {
    /// Prompt and completion tokens together.
    pub fn total_tokens(&self) -> i64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

macro_rules! usage_columns {
    () => {
        "request_id, ts_ms, tenant_id, user_id, key_id, session, workflow, model, deployment, \
         provider, prompt_tokens, completion_tokens, cost_micros, latency_us, overhead_us, \
         ttft_us, status, error_code, stream, attempts, cache, saved_prompt_tokens, \
         saved_completion_tokens, saved_cost_micros"
    };
}

/// Bound parameters per inserted row (the number of ledger columns).
const USAGE_COLUMNS: usize = 24;

/// Rows per INSERT statement. SQLite builds before 3.32 allow at most 999
/// bound parameters per statement; staying under that keeps any SQLite
/// working, and a batch simply takes several statements in one transaction.
const ROWS_PER_STATEMENT: usize = 999 / USAGE_COLUMNS;
const _: () = assert!(ROWS_PER_STATEMENT * USAGE_COLUMNS <= 999);

/// The aggregate columns [`totals_from_row`] reads. PostgreSQL sums BIGINT
/// into NUMERIC, hence the casts back.
macro_rules! usage_sums {
    () => {
        "COUNT(*) AS requests, \
         CAST(COALESCE(SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
         CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost_micros, \
         CAST(COALESCE(SUM(CASE WHEN cache IN ('exact', 'semantic', 'stale') THEN 1 ELSE 0 END), 0) AS BIGINT) AS cache_hits, \
         CAST(COALESCE(SUM(saved_prompt_tokens + saved_completion_tokens), 0) AS BIGINT) AS saved_tokens, \
         CAST(COALESCE(SUM(saved_cost_micros), 0) AS BIGINT) AS saved_cost_micros"
    };
}
pub(crate) use usage_sums;

const SELECT_TOTALS: &str = concat!("SELECT ", usage_sums!(), " FROM usage_ledger");

impl Store {
    /// Writes ledger rows in one transaction. Rows whose `request_id` is
    /// already stored are skipped, so retrying a batch is always safe.
    pub async fn insert_usage(&self, rows: &[UsageRecord]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = without_nul_chars(rows);
        let backend = self.backend();
        on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let sql = insert_sql(chunk.len(), backend);
                    let mut query = sqlx::query(&sql);
                    for row in chunk {
                        query = query
                            .bind(row.request_id.as_str())
                            .bind(row.ts_ms)
                            .bind(row.tenant_id.as_str())
                            .bind(row.user_id.as_deref())
                            .bind(row.key_id.as_deref())
                            .bind(row.session.as_deref())
                            .bind(row.workflow.as_deref())
                            .bind(row.model.as_str())
                            .bind(row.deployment.as_deref())
                            .bind(row.provider.as_deref())
                            .bind(row.prompt_tokens)
                            .bind(row.completion_tokens)
                            .bind(row.cost_micros)
                            .bind(row.latency_us)
                            .bind(row.overhead_us)
                            .bind(row.ttft_us)
                            .bind(row.status)
                            .bind(row.error_code.as_deref())
                            .bind(i16::from(row.stream))
                            .bind(row.attempts)
                            .bind(row.cache.as_deref())
                            .bind(row.saved_prompt_tokens)
                            .bind(row.saved_completion_tokens)
                            .bind(row.saved_cost_micros);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await
            }
            .await
        })
        .map_err(StoreError::db("insert usage rows"))
    }

    /// Ledger rows matching `query`, newest first.
    pub async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
        let mut filter = Filter::new(query);
        let sql = rows_sql(&mut filter, query);

        on_pool!(self, |pool| {
            let select = bind_args!(sqlx::query(&sql), &filter.args);
            let rows = select.fetch_all(pool).await;
            rows.and_then(|rows| rows.iter().map(usage_from_row).collect())
        })
        .map_err(StoreError::db("read usage rows"))
    }

    /// Sums over every ledger row matching `query` (its limit is ignored).
    pub async fn usage_totals(&self, query: &UsageQuery) -> Result<UsageTotals, StoreError> {
        let filter = Filter::new(query);
        let sql = format!("{SELECT_TOTALS}{}", filter.sql);

        on_pool!(self, |pool| {
            let select = bind_args!(sqlx::query(&sql), &filter.args);
            let row = select.fetch_one(pool).await;
            row.and_then(|row| totals_from_row(&row))
        })
        .map_err(StoreError::db("sum usage rows"))
    }

    /// Matching rows (newest first, up to the limit) and the totals over
    /// every matching row, read from one snapshot so they never disagree
    /// while the ledger is writing.
    pub async fn usage_report(
        &self,
        query: &UsageQuery,
    ) -> Result<(Vec<UsageRecord>, UsageTotals), StoreError> {
        let mut filter = Filter::new(query);
        let totals_sql = format!("{SELECT_TOTALS}{}", filter.sql);
        let totals_args = filter.args.len();
        let rows_sql = rows_sql(&mut filter, query);
        let postgres = self.backend() == Backend::Postgres;

        on_pool!(self, |pool| {
            async {
                // SQLite in WAL mode reads from one snapshot for the whole
                // transaction; PostgreSQL needs REPEATABLE READ for that.
                let mut tx = pool.begin().await?;
                if postgres {
                    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        .execute(&mut *tx)
                        .await?;
                }
                let select = bind_args!(sqlx::query(&totals_sql), &filter.args[..totals_args]);
                let totals = totals_from_row(&select.fetch_one(&mut *tx).await?)?;
                let select = bind_args!(sqlx::query(&rows_sql), &filter.args);
                let rows = select.fetch_all(&mut *tx).await?;
                let rows = rows
                    .iter()
                    .map(usage_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit().await?;
                Ok((rows, totals))
            }
            .await
        })
        .map_err(StoreError::db("read a usage report"))
    }
}

/// The rows with every NUL character replaced by U+FFFD. PostgreSQL refuses
/// NUL in text, and one such row (a model name is client input) would fail
/// its batch on every retry and stall the ledger for good. Borrows when, as
/// almost always, there is nothing to replace.
fn without_nul_chars(rows: &[UsageRecord]) -> Cow<'_, [UsageRecord]> {
    let has_nul = |s: &str| s.contains('\0');
    let dirty = |r: &UsageRecord| {
        [&r.request_id, &r.tenant_id, &r.model]
            .into_iter()
            .any(|s| has_nul(s))
            || [
                &r.user_id,
                &r.key_id,
                &r.session,
                &r.workflow,
                &r.deployment,
                &r.provider,
                &r.error_code,
                &r.cache,
            ]
            .into_iter()
            .any(|s| s.as_deref().is_some_and(has_nul))
    };
    if !rows.iter().any(dirty) {
        return Cow::Borrowed(rows);
    }

    let clean = |s: &mut String| {
        if has_nul(s) {
            *s = s.replace('\0', "\u{FFFD}");
        }
    };
    let mut rows = rows.to_vec();
    for r in &mut rows {
        for s in [&mut r.request_id, &mut r.tenant_id, &mut r.model] {
            clean(s);
        }
        let optional = [
            &mut r.user_id,
            &mut r.key_id,
            &mut r.session,
            &mut r.workflow,
            &mut r.deployment,
            &mut r.provider,
            &mut r.error_code,
            &mut r.cache,
        ];
        for s in optional.into_iter().flatten() {
            clean(s);
        }
    }
    Cow::Owned(rows)
}

/// `INSERT … VALUES ($1, …), ($22, …) ON CONFLICT DO NOTHING` for `rows`
/// rows. Only placeholders are generated; values are always bound.
///
/// SQLite gets anonymous `?` placeholders: binding numbered ones makes the
/// driver look up every parameter's name, and SQLite's name lookup is a
/// linear scan, so a 987-parameter statement cost O(n²) — measured at over
/// a tenth of keel's CPU under load.
fn insert_sql(rows: usize, backend: Backend) -> String {
    let mut sql = String::with_capacity(64 + rows * USAGE_COLUMNS * 6);
    sql.push_str(concat!(
        "INSERT INTO usage_ledger (",
        usage_columns!(),
        ") VALUES "
    ));
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..USAGE_COLUMNS {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * USAGE_COLUMNS + column + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}

/// A value bound to a filter placeholder.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// A `WHERE` clause built from a [`UsageQuery`]: column names and numbered
/// placeholders only, with the values kept aside for binding.
#[derive(Debug, Default)]
pub(crate) struct Filter<'a> {
    /// The clause, empty or starting with ` WHERE `.
    pub(crate) sql: String,
    /// The values for its placeholders, in placeholder order.
    pub(crate) args: Vec<Arg<'a>>,
}

impl<'a> Filter<'a> {
    pub(crate) fn new(query: &'a UsageQuery) -> Self {
        let mut filter = Filter::default();
        let equals = [
            ("tenant_id", &query.tenant_id),
            ("user_id", &query.user_id),
            ("key_id", &query.key_id),
            ("session", &query.session),
            ("workflow", &query.workflow),
            ("model", &query.model),
        ];
        for (column, value) in equals {
            if let Some(value) = value {
                filter.condition(column, " = ", Arg::Text(value));
            }
        }
        if let Some(since) = query.since_ms {
            filter.condition("ts_ms", " >= ", Arg::Int(since));
        }
        if let Some(until) = query.until_ms {
            filter.condition("ts_ms", " < ", Arg::Int(until));
        }
        filter
    }

    /// Appends `column op $N` to the clause.
    fn condition(&mut self, column: &'static str, op: &'static str, arg: Arg<'a>) {
        self.sql.push_str(if self.args.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        self.sql.push_str(column);
        self.sql.push_str(op);
        let placeholder = self.bind(arg);
        self.sql.push_str(&placeholder);
    }

    /// Records a value and returns its placeholder (`$N`).
    pub(crate) fn bind(&mut self, arg: Arg<'a>) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }
}

/// Binds filter values in order; a macro because the query type differs per
/// driver.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Text(text) => query.bind(text),
                Arg::Int(int) => query.bind(int),
            };
        }
        query
    }};
}
pub(crate) use bind_args;

/// `SELECT … ORDER BY … LIMIT $n` for the filter, binding the limit.
fn rows_sql(filter: &mut Filter<'_>, query: &UsageQuery) -> String {
    let limit = query
        .limit
        .unwrap_or(DEFAULT_USAGE_LIMIT)
        .min(MAX_USAGE_LIMIT);
    let limit_placeholder = filter.bind(Arg::Int(i64::from(limit)));
    format!(
        "SELECT {} FROM usage_ledger{} ORDER BY ts_ms DESC, request_id DESC LIMIT {}",
        usage_columns!(),
        filter.sql,
        limit_placeholder
    )
}

/// Reads the [`usage_sums`] columns of a row (totals or a trend row).
pub(crate) fn totals_from_row(row: &impl RowExt) -> Result<UsageTotals, sqlx::Error> {
    Ok(UsageTotals {
        requests: row.int("requests")?,
        errors: row.int("errors")?,
        prompt_tokens: row.int("prompt_tokens")?,
        completion_tokens: row.int("completion_tokens")?,
        cost_micros: row.int("cost_micros")?,
        cache_hits: row.int("cache_hits")?,
        saved_tokens: row.int("saved_tokens")?,
        saved_cost_micros: row.int("saved_cost_micros")?,
    })
}

fn usage_from_row(row: &impl RowExt) -> Result<UsageRecord, sqlx::Error> {
    Ok(UsageRecord {
        request_id: row.text("request_id")?,
        ts_ms: row.int("ts_ms")?,
        tenant_id: row.text("tenant_id")?,
        user_id: row.opt_text("user_id")?,
        key_id: row.opt_text("key_id")?,
        session: row.opt_text("session")?,
        workflow: row.opt_text("workflow")?,
        model: row.text("model")?,
        deployment: row.opt_text("deployment")?,
        provider: row.opt_text("provider")?,
        prompt_tokens: row.int("prompt_tokens")?,
        completion_tokens: row.int("completion_tokens")?,
        cost_micros: row.int("cost_micros")?,
        latency_us: row.int("latency_us")?,
        overhead_us: row.int("overhead_us")?,
        ttft_us: row.opt_int("ttft_us")?,
        status: row.int("status")?,
        error_code: row.opt_text("error_code")?,
        stream: row.flag("stream")?,
        attempts: row.int("attempts")?,
        cache: row.opt_text("cache")?,
        saved_prompt_tokens: row.int("saved_prompt_tokens")?,
        saved_completion_tokens: row.int("saved_completion_tokens")?,
        saved_cost_micros: row.int("saved_cost_micros")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_placeholder_once() {
        let sql = insert_sql(2, Backend::Sqlite);
        assert_eq!(sql.matches('?').count(), 2 * USAGE_COLUMNS);
        assert!(!sql.contains('$'));
        let sql = insert_sql(2, Backend::Postgres);
        assert!(sql.contains("($1, $2, "));
        let second_row = format!(", (${}, ", USAGE_COLUMNS + 1);
        assert!(sql.contains(&second_row));
        assert!(sql.contains(&format!("${})", 2 * USAGE_COLUMNS)));
        assert!(!sql.contains(&format!("${}", 2 * USAGE_COLUMNS + 1)));
    }

    #[test]
    fn column_list_matches_the_column_count() {
        assert_eq!(usage_columns!().split(',').count(), USAGE_COLUMNS);
    }

    #[test]
    fn filter_binds_values_and_writes_only_placeholders() {
        let query = UsageQuery {
            tenant_id: Some("acme'; DROP TABLE usage_ledger; --".into()),
            model: Some("gpt".into()),
            since_ms: Some(5),
            ..UsageQuery::default()
        };
        let filter = Filter::new(&query);
        assert_eq!(
            filter.sql,
            " WHERE tenant_id = $1 AND model = $2 AND ts_ms >= $3"
        );
        assert_eq!(filter.args.len(), 3);
        assert!(Filter::new(&UsageQuery::default()).sql.is_empty());
    }
}
