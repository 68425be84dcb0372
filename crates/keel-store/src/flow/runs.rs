//! Starting runs (idempotently), reading them with their steps and
//! attempts, cancelling them, and pruning finished ones.

use keel_core::Cost;
use serde_json::Value;

use super::types::*;
use crate::backend::{BeginWrite, RowExt, Store, on_pool};
use crate::error::StoreError;

const RUN_COLUMNS: &str = "id, tenant_id, workflow, version, status, input, output, error, \
     idempotency_key, max_steps, max_tokens, max_cost_micros, steps_used, tokens_used, \
     cost_micros, reserved_tokens, reserved_micros, created_ms, updated_ms, finished_ms";

const INSERT_RUN: &str = "INSERT INTO flow_runs (id, tenant_id, workflow, version, status, input, \
     idempotency_key, max_steps, max_tokens, max_cost_micros, created_ms, updated_ms) \
     VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $9, $10, $8, $8) \
     ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id";

const SELECT_BY_KEY: &str =
    "SELECT id FROM flow_runs WHERE tenant_id = $1 AND idempotency_key = $2";

pub(crate) const INSERT_STEP: &str = "INSERT INTO flow_steps (run_id, step_key, tenant_id, queue, \
     status, wait_any, due_ms, input, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7)";

pub(crate) const INSERT_DEP: &str = "INSERT INTO flow_deps (run_id, step_key, dep_key, \
     ordering_only) VALUES ($1, $2, $3, $4)";

const CANCEL_RUN: &str = "UPDATE flow_runs SET status = 'cancelled', updated_ms = $3, \
     finished_ms = $3, error = 'cancelled' WHERE id = $1 AND tenant_id = $2 AND status = 'running'";

/// Marks every unfinished step of a run cancelled; shared with run ends.
pub(crate) const CANCEL_STEPS: &str = "UPDATE flow_steps SET status = 'cancelled', \
     lease_token = NULL, updated_ms = $2 WHERE run_id = $1 \
     AND status IN ('pending', 'ready', 'leased', 'waiting')";

/// Attempts still running when their step is cancelled are over.
pub(crate) const CANCEL_ATTEMPTS: &str = "UPDATE flow_attempts SET status = 'cancelled', \
     finished_ms = $2 WHERE run_id = $1 AND status = 'running'";

const STEP_COLUMNS: &str =
    "step_key, status, queue, attempts, due_ms, input, output, error, detail, updated_ms";

const ATTEMPT_COLUMNS: &str = "step_key, attempt, owner, status, started_ms, finished_ms, input, \
     output, error, model, prompt_tokens, completion_tokens, cost_micros";

/// The most runs one listing returns.
pub const MAX_RUNS_LISTED: u32 = 1_000;

impl Store {
    /// Starts a run with all its steps, those without dependencies ready.
    ///
    /// With an idempotency key that the tenant already used, nothing is
    /// written and the existing run is returned; the flag says whether the
    /// run is new.
    pub async fn start_run(&self, run: &NewRun) -> Result<(RunRecord, bool), StoreError> {
        let id = format!("run_{}", uuid::Uuid::now_v7().simple());
        let now = self.clock_ms();
        let input = run.input.to_string();
        let notify = super::finish::notify_sql(self.backend());
        let started: Option<String> = on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let inserted = sqlx::query(INSERT_RUN)
                    .bind(&id)
                    .bind(&run.tenant_id)
                    .bind(&run.workflow)
                    .bind(run.version)
                    .bind(&input)
                    .bind(run.idempotency_key.as_deref())
                    .bind(clamp(run.max_steps))
                    .bind(now)
                    .bind(run.max_tokens.map(clamp))
                    .bind(run.max_cost.map(|c| clamp(c.micros())))
                    .fetch_optional(&mut *tx)
                    .await?;
                if inserted.is_none() {
                    // The key was used: the run it started stands.
                    let existing = sqlx::query(SELECT_BY_KEY)
                        .bind(&run.tenant_id)
                        .bind(run.idempotency_key.as_deref())
                        .fetch_one(&mut *tx)
                        .await?
                        .text("id")?;
                    tx.rollback().await?;
                    return Ok(Some(existing));
                }
                for step in &run.steps {
                    let status = if step.deps.is_empty() {
                        "ready"
                    } else {
                        "pending"
                    };
                    sqlx::query(INSERT_STEP)
                        .bind(&id)
                        .bind(&step.key)
                        .bind(&run.tenant_id)
                        .bind(&step.queue)
                        .bind(status)
                        .bind(i16::from(step.wait_any))
                        .bind(now)
                        .bind(step.input.as_ref().map(Value::to_string))
                        .execute(&mut *tx)
                        .await?;
                    for dep in &step.deps {
                        sqlx::query(INSERT_DEP)
                            .bind(&id)
                            .bind(&step.key)
                            .bind(&dep.key)
                            .bind(i16::from(dep.ordering_only))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                if let Some(sql) = notify {
                    sqlx::query(sql).bind("").execute(&mut *tx).await?;
                }
                tx.commit().await.map(|()| None)
            }
            .await
        })
        .map_err(StoreError::db("start a run"))?;

        let (id, created) = match started {
            Some(existing) => (existing, false),
            None => (id, true),
        };
        let record = self
            .run(&run.tenant_id, &id)
            .await?
            .ok_or(StoreError::NotFound {
                what: "run",
                id: id.clone(),
            })?;
        Ok((record, created))
    }

    /// A run of a tenant.
    pub async fn run(&self, tenant_id: &str, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM flow_runs WHERE id = $1 AND tenant_id = $2");
        on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(run_from_row).transpose())
        })
        .map_err(StoreError::db("read a run"))
    }

    /// A tenant's runs, newest first, optionally of one status.
    pub async fn runs(
        &self,
        tenant_id: &str,
        status: Option<RunStatus>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM flow_runs WHERE tenant_id = $1 \
             AND ($2 = '' OR status = $2) ORDER BY created_ms DESC, id DESC LIMIT $3"
        );
        on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(tenant_id)
                .bind(status.map_or("", RunStatus::as_str))
                .bind(i64::from(limit.min(MAX_RUNS_LISTED)))
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(run_from_row).collect())
        })
        .map_err(StoreError::db("list runs"))
    }

    /// How many of a tenant's runs have `status`.
    pub async fn count_runs(&self, tenant_id: &str, status: RunStatus) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("SELECT COUNT(*) AS n FROM flow_runs WHERE tenant_id = $1 AND status = $2")
                .bind(tenant_id)
                .bind(status.as_str())
                .fetch_one(pool)
                .await
                .and_then(|row| row.int("n"))
        })
        .map(count)
        .map_err(StoreError::db("count runs"))
    }

    /// Every step of a run, by key.
    pub async fn run_steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let sql =
            format!("SELECT {STEP_COLUMNS} FROM flow_steps WHERE run_id = $1 ORDER BY step_key");
        on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(run_id)
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(step_from_row).collect())
        })
        .map_err(StoreError::db("read a run's steps"))
    }

    /// Every attempt of a run's steps, in the order they started.
    pub async fn run_attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM flow_attempts WHERE run_id = $1 \
             ORDER BY started_ms, step_key, attempt"
        );
        on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(run_id)
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(attempt_from_row).collect())
        })
        .map_err(StoreError::db("read a run's attempts"))
    }

    /// Cancels a running run and its unfinished steps; a worker holding
    /// one of them can no longer finish it. False if the run was not
    /// running (or is not the tenant's).
    pub async fn cancel_run(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let now = self.clock_ms();
        on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let cancelled = sqlx::query(CANCEL_RUN)
                    .bind(id)
                    .bind(tenant_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if cancelled {
                    for sql in [CANCEL_STEPS, CANCEL_ATTEMPTS] {
                        sqlx::query(sql)
                            .bind(id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await.map(|()| cancelled)
            }
            .await
        })
        .map_err(StoreError::db("cancel a run"))
    }

    /// Deletes runs that ended before `finished_before_ms`, with their
    /// steps and attempts; returns how many runs went.
    pub async fn prune_runs(&self, finished_before_ms: i64) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("DELETE FROM flow_runs WHERE finished_ms IS NOT NULL AND finished_ms < $1")
                .bind(finished_before_ms)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(StoreError::db("prune finished runs"))
    }
}

/// Counts are stored as BIGINT.
pub(crate) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A nullable JSON text column.
pub(crate) fn json(row: &impl RowExt, column: &str) -> Result<Option<Value>, sqlx::Error> {
    row.opt_text(column)?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn status<T>(parse: fn(&str) -> Option<T>, text: &str) -> Result<T, sqlx::Error> {
    parse(text).ok_or_else(|| sqlx::Error::Decode(format!("unknown status {text:?}").into()))
}

fn run_from_row(row: &impl RowExt) -> Result<RunRecord, sqlx::Error> {
    Ok(RunRecord {
        id: row.text("id")?,
        tenant_id: row.text("tenant_id")?,
        workflow: row.text("workflow")?,
        version: row.int("version")?,
        status: status(RunStatus::parse, &row.text("status")?)?,
        input: json(row, "input")?.unwrap_or(Value::Null),
        output: json(row, "output")?,
        error: row.opt_text("error")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        max_steps: count(row.int("max_steps")?),
        max_tokens: row.opt_int("max_tokens")?.map(count),
        max_cost: row.opt_int("max_cost_micros")?.map(|c| Cost(count(c))),
        steps_used: count(row.int("steps_used")?),
        tokens_used: count(row.int("tokens_used")?),
        cost: Cost(count(row.int("cost_micros")?)),
        reserved_tokens: count(row.int("reserved_tokens")?),
        reserved_cost: Cost(count(row.int("reserved_micros")?)),
        created_ms: row.int("created_ms")?,
        updated_ms: row.int("updated_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
    })
}

fn step_from_row(row: &impl RowExt) -> Result<StepRecord, sqlx::Error> {
    Ok(StepRecord {
        key: row.text("step_key")?,
        status: status(StepStatus::parse, &row.text("status")?)?,
        queue: row.text("queue")?,
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
        due_ms: row.int("due_ms")?,
        input: json(row, "input")?,
        output: json(row, "output")?,
        error: row.opt_text("error")?,
        detail: json(row, "detail")?,
        updated_ms: row.int("updated_ms")?,
    })
}

fn attempt_from_row(row: &impl RowExt) -> Result<AttemptRecord, sqlx::Error> {
    Ok(AttemptRecord {
        key: row.text("step_key")?,
        attempt: u32::try_from(row.int("attempt")?).unwrap_or(u32::MAX),
        owner: row.text("owner")?,
        status: row.text("status")?,
        started_ms: row.int("started_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
        trace: AttemptTrace {
            input: json(row, "input")?,
            output: json(row, "output")?,
            error: row.opt_text("error")?,
            model: row.opt_text("model")?,
            prompt_tokens: count(row.int("prompt_tokens")?),
            completion_tokens: count(row.int("completion_tokens")?),
            cost: Cost(count(row.int("cost_micros")?)),
        },
    })
}
