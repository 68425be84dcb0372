//! Recording what became of a claimed step, and of a waiting step when a
//! person answers, in one transaction each: the step's new state, its
//! attempt's trace, the run's usage, the dependents it releases and, when
//! the step ends the run, the run's end.

use serde_json::Value;

use super::runs::{CANCEL_ATTEMPTS, CANCEL_STEPS, INSERT_DEP, INSERT_STEP, clamp};
use super::types::{AttemptTrace, RunEnd, StepUpdate};
use crate::backend::{Backend, BeginWrite, RowExt, Store, on_pool};
use crate::error::StoreError;

/// Serialises changes to one run: two dependencies of a join finishing at
/// once on two processes must not both miss that the other is done.
fn lock_run_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "SELECT status, tenant_id FROM flow_runs WHERE id = $1 FOR UPDATE",
        // SQLite's write transaction already excludes every other writer.
        Backend::Sqlite => "SELECT status, tenant_id FROM flow_runs WHERE id = $1",
    }
}

/// Tells listening processes that work is ready on the queue `$1`
/// (PostgreSQL delivers it when the transaction commits); SQLite has one
/// process, which wakes itself.
pub(crate) fn notify_sql(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Postgres => Some("SELECT pg_notify('keel_flow', $1)"),
        Backend::Sqlite => None,
    }
}

/// A pending dependent of `$2` becomes ready once every step it waits for
/// has ended, or, for a `wait: any` join, once one of them succeeded.
const RELEASE_DEPENDENTS: &str = "UPDATE flow_steps SET status = 'ready', due_ms = $3, \
     updated_ms = $3 WHERE run_id = $1 AND status = 'pending' \
     AND step_key IN (SELECT step_key FROM flow_deps WHERE run_id = $1 AND dep_key = $2) \
     AND (NOT EXISTS (SELECT 1 FROM flow_deps d JOIN flow_steps s \
          ON s.run_id = d.run_id AND s.step_key = d.dep_key \
          WHERE d.run_id = $1 AND d.step_key = flow_steps.step_key \
          AND s.status NOT IN ('succeeded', 'failed', 'skipped', 'cancelled')) \
      OR (wait_any = 1 AND EXISTS (SELECT 1 FROM flow_deps d JOIN flow_steps s \
          ON s.run_id = d.run_id AND s.step_key = d.dep_key \
          WHERE d.run_id = $1 AND d.step_key = flow_steps.step_key \
          AND s.status = 'succeeded')))";

const UPDATE_ATTEMPT: &str = "UPDATE flow_attempts SET status = $4, finished_ms = $5, \
     input = $6, output = $7, error = $8, model = $9, prompt_tokens = $10, \
     completion_tokens = $11, cost_micros = $12 \
     WHERE run_id = $1 AND step_key = $2 AND token = $3";

/// Adds an attempt's usage to its run and releases what the attempt held
/// ($5, $6: read from the attempt in the same transaction).
const SETTLE: &str = "UPDATE flow_runs SET tokens_used = tokens_used + $2, \
     cost_micros = cost_micros + $3, updated_ms = $4, \
     reserved_tokens = reserved_tokens - $5, reserved_micros = reserved_micros - $6 WHERE id = $1";

const HELD: &str = "SELECT reserved_tokens, reserved_micros FROM flow_attempts \
     WHERE run_id = $1 AND step_key = $2 AND token = $3";

const END_RUN: &str = "UPDATE flow_runs SET status = $2, output = $3, error = $4, \
     updated_ms = $5, finished_ms = $5 WHERE id = $1 AND status = 'running'";

/// The step's new columns for an update: status, due time, and what each
/// of output, error, detail, queue and input becomes (`None` keeps it).
struct StepChange {
    status: &'static str,
    attempt_status: &'static str,
    due_ms: i64,
    output: Option<String>,
    error: Option<String>,
    detail: Option<String>,
    queue: Option<String>,
    input: Option<String>,
    ends: bool,
}

fn change(update: &StepUpdate, now: i64) -> StepChange {
    let base = StepChange {
        status: "",
        attempt_status: "",
        due_ms: now,
        output: None,
        error: None,
        detail: None,
        queue: None,
        input: None,
        ends: false,
    };
    match update {
        StepUpdate::Succeeded(output) => StepChange {
            status: "succeeded",
            attempt_status: "succeeded",
            output: Some(output.to_string()),
            ends: true,
            ..base
        },
        StepUpdate::Failed(error) => StepChange {
            status: "failed",
            attempt_status: "failed",
            error: Some(error.clone()),
            ends: true,
            ..base
        },
        StepUpdate::Skipped(reason) => StepChange {
            status: "skipped",
            attempt_status: "skipped",
            error: Some(reason.clone()),
            ends: true,
            ..base
        },
        StepUpdate::Retry { error, due_ms } => StepChange {
            status: "ready",
            attempt_status: "failed",
            due_ms: *due_ms,
            error: Some(error.clone()),
            ..base
        },
        StepUpdate::Wait {
            detail,
            deadline_ms,
        } => StepChange {
            status: "waiting",
            attempt_status: "waiting",
            due_ms: *deadline_ms,
            detail: Some(detail.to_string()),
            ..base
        },
        StepUpdate::HandOver { queue, input } => StepChange {
            status: "ready",
            attempt_status: "handed_over",
            queue: Some(queue.clone()),
            input: Some(input.to_string()),
            ..base
        },
        // An empty map has nothing to wait for: ready to gather at once.
        StepUpdate::Expand(children) => StepChange {
            status: if children.is_empty() {
                "ready"
            } else {
                "pending"
            },
            attempt_status: "expanded",
            ..base
        },
    }
}

const UPDATE_STEP: &str = "UPDATE flow_steps SET status = $4, due_ms = $5, \
     output = COALESCE($6, output), error = $7, detail = COALESCE($8, detail), \
     queue = COALESCE($9, queue), input = COALESCE($10, input), lease_token = NULL, \
     updated_ms = $11 WHERE run_id = $1 AND step_key = $2 AND lease_token = $3 \
     AND status = 'leased'";

impl Store {
    /// Records what became of a claimed step, if `token` still holds its
    /// lease and the run is still running; false otherwise (a stale
    /// worker), in which case nothing is written.
    pub async fn finish_step(
        &self,
        run_id: &str,
        key: &str,
        token: &str,
        update: &StepUpdate,
        trace: &AttemptTrace,
        run_end: Option<&RunEnd>,
    ) -> Result<bool, StoreError> {
        let now = self.clock_ms();
        let change = change(update, now);
        let lock = lock_run_sql(self.backend());
        let notify = notify_sql(self.backend());
        // The queue whose work this update may make ready, if any.
        let wakes: Option<&str> = match update {
            StepUpdate::HandOver { queue, .. } => Some(queue),
            StepUpdate::Retry { due_ms, .. } if *due_ms <= now => Some(""),
            StepUpdate::Expand(_) => Some(""),
            _ => None,
        };
        on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let running = sqlx::query(lock)
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(run) = running else {
                    return Ok(false);
                };
                if run.text("status")? != "running" {
                    return Ok(false);
                }
                let updated = sqlx::query(UPDATE_STEP)
                    .bind(run_id)
                    .bind(key)
                    .bind(token)
                    .bind(change.status)
                    .bind(change.due_ms)
                    .bind(&change.output)
                    .bind(&change.error)
                    .bind(&change.detail)
                    .bind(&change.queue)
                    .bind(&change.input)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Ok(false);
                }

                sqlx::query(UPDATE_ATTEMPT)
                    .bind(run_id)
                    .bind(key)
                    .bind(token)
                    .bind(change.attempt_status)
                    .bind(now)
                    .bind(trace.input.as_ref().map(Value::to_string))
                    .bind(trace.output.as_ref().map(Value::to_string))
                    .bind(trace.error.as_deref())
                    .bind(trace.model.as_deref())
                    .bind(clamp(trace.prompt_tokens))
                    .bind(clamp(trace.completion_tokens))
                    .bind(clamp(trace.cost.micros()))
                    .execute(&mut *tx)
                    .await?;
                let tokens = trace.prompt_tokens.saturating_add(trace.completion_tokens);
                let held = sqlx::query(HELD)
                    .bind(run_id)
                    .bind(key)
                    .bind(token)
                    .fetch_optional(&mut *tx)
                    .await?;
                let (held_tokens, held_micros) = match &held {
                    Some(row) => (row.int("reserved_tokens")?, row.int("reserved_micros")?),
                    None => (0, 0),
                };
                if tokens > 0 || trace.cost.micros() > 0 || held_tokens > 0 || held_micros > 0 {
                    sqlx::query(SETTLE)
                        .bind(run_id)
                        .bind(clamp(tokens))
                        .bind(clamp(trace.cost.micros()))
                        .bind(now)
                        .bind(held_tokens)
                        .bind(held_micros)
                        .execute(&mut *tx)
                        .await?;
                }

                if let StepUpdate::Expand(children) = update {
                    let tenant_id = run.text("tenant_id")?;
                    for child in children {
                        let status = if child.deps.is_empty() {
                            "ready"
                        } else {
                            "pending"
                        };
                        sqlx::query(INSERT_STEP)
                            .bind(run_id)
                            .bind(&child.key)
                            .bind(&tenant_id)
                            .bind(&child.queue)
                            .bind(status)
                            .bind(i16::from(child.wait_any))
                            .bind(now)
                            .bind(child.input.as_ref().map(Value::to_string))
                            .execute(&mut *tx)
                            .await?;
                        for dep in &child.deps {
                            sqlx::query(INSERT_DEP)
                                .bind(run_id)
                                .bind(&child.key)
                                .bind(&dep.key)
                                .bind(i16::from(dep.ordering_only))
                                .execute(&mut *tx)
                                .await?;
                        }
                        // The map waits for each item, to gather them.
                        sqlx::query(INSERT_DEP)
                            .bind(run_id)
                            .bind(key)
                            .bind(&child.key)
                            .bind(1_i16)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let mut wakes = wakes;
                if change.ends {
                    let released = sqlx::query(RELEASE_DEPENDENTS)
                        .bind(run_id)
                        .bind(key)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if released > 0 {
                        wakes = Some("");
                    }
                }
                if let (Some(sql), Some(queue)) = (notify, wakes) {
                    sqlx::query(sql).bind(queue).execute(&mut *tx).await?;
                }
                if let Some(end) = run_end {
                    sqlx::query(END_RUN)
                        .bind(run_id)
                        .bind(end.status.as_str())
                        .bind(end.output.as_ref().map(Value::to_string))
                        .bind(end.error.as_deref())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    for sql in [CANCEL_STEPS, CANCEL_ATTEMPTS] {
                        sqlx::query(sql)
                            .bind(run_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await.map(|()| true)
            }
            .await
        })
        .map_err(StoreError::db("finish a step"))
    }

    /// Answers a step waiting for a person: it succeeds with `output` and
    /// its dependents are released. Errors if the run or step is unknown
    /// to the tenant, or the step is not waiting.
    pub async fn signal_step(
        &self,
        tenant_id: &str,
        run_id: &str,
        key: &str,
        output: &Value,
    ) -> Result<(), StoreError> {
        let now = self.clock_ms();
        let lock = lock_run_sql(self.backend());
        let notify = notify_sql(self.backend());
        let output_text = output.to_string();
        let outcome: Result<(), &'static str> = on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let run = sqlx::query(lock)
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                match run {
                    Some(run) if run.text("tenant_id")? == tenant_id => {
                        if run.text("status")? != "running" {
                            return Ok(Err("run"));
                        }
                    }
                    _ => return Ok(Err("missing")),
                }
                let updated = sqlx::query(
                    "UPDATE flow_steps SET status = 'succeeded', output = $3, due_ms = $4, \
                     updated_ms = $4 WHERE run_id = $1 AND step_key = $2 AND status = 'waiting'",
                )
                .bind(run_id)
                .bind(key)
                .bind(&output_text)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Ok(Err("step"));
                }
                sqlx::query(
                    "UPDATE flow_attempts SET status = 'succeeded', output = $3, \
                     finished_ms = $4 WHERE run_id = $1 AND step_key = $2 AND status = 'waiting'",
                )
                .bind(run_id)
                .bind(key)
                .bind(&output_text)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(RELEASE_DEPENDENTS)
                    .bind(run_id)
                    .bind(key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if let Some(sql) = notify {
                    sqlx::query(sql).bind("").execute(&mut *tx).await?;
                }
                tx.commit().await.map(|()| Ok(()))
            }
            .await
        })
        .map_err(StoreError::db("signal a step"))?;
        outcome.map_err(|what| match what {
            "missing" => StoreError::NotFound {
                what: "run",
                id: run_id.to_owned(),
            },
            "run" => StoreError::NotWaiting {
                run_id: run_id.to_owned(),
                step: key.to_owned(),
                reason: "the run has ended",
            },
            _ => StoreError::NotWaiting {
                run_id: run_id.to_owned(),
                step: key.to_owned(),
                reason: "the step is not waiting for a signal (unknown, not reached yet, or \
                         already answered)",
            },
        })
    }
}
