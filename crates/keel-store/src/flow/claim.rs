//! Claiming steps under a lease, fairly across tenants.
//!
//! A claim takes up to `batch` claimable steps of one queue, at most
//! `per_tenant` of them from any one tenant, so one tenant's flood of ready
//! steps waits its turn behind everyone else's instead of starving them;
//! and never more than a tenant's concurrency cap leased at once. On
//! PostgreSQL the candidate rows are locked with `FOR UPDATE SKIP LOCKED`,
//! so several processes claim side by side without waiting on each other or
//! taking the same step; on SQLite the write transaction serialises claims.

use sqlx::Row;

use super::runs::json;
use super::types::{Claimed, StepStatus};
use crate::backend::{Backend, BeginWrite, RowExt, Store, on_pool};
use crate::error::StoreError;

/// What to claim, for whom, and for how long.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The queue: empty for keel's own steps, a worker queue otherwise.
    pub queue: String,
    /// Who claims (a process or worker id), for the trace.
    pub owner: String,
    /// How long the lease lasts unless renewed, in milliseconds.
    pub lease_ms: i64,
    /// The most steps to claim.
    pub batch: u32,
    /// The most steps to claim from one tenant.
    pub per_tenant: u32,
    /// The most steps of one tenant leased at once on this queue.
    pub tenant_concurrency: Option<u32>,
    /// Claim only this tenant's steps (a tenant's own workers).
    pub tenant: Option<String>,
}

/// Claimable: ready and due, leased with the lease expired, or waiting
/// for a person past the deadline. `due_ms` holds each of those times.
const CLAIMABLE: &str = "queue = $1 AND status IN ('ready', 'leased', 'waiting') AND due_ms <= $2 \
     AND ($6 = '' OR tenant_id = $6)";

/// Leases held per tenant on the queue right now.
const BUSY: &str = "busy AS (SELECT tenant_id, COUNT(*) AS leased FROM flow_steps \
     WHERE queue = $1 AND status = 'leased' AND due_ms > $2 GROUP BY tenant_id)";

fn candidates_sql(backend: Backend) -> String {
    let ranked = match backend {
        // One writer at a time: rank every claimable step per tenant.
        Backend::Sqlite => format!(
            "ranked AS (SELECT run_id, step_key, tenant_id, status, due_ms, ROW_NUMBER() OVER \
             (PARTITION BY tenant_id ORDER BY due_ms, run_id, step_key) AS n \
             FROM flow_steps WHERE {CLAIMABLE})"
        ),
        // Lock up to per_tenant rows of each tenant, skipping rows another
        // process holds, then rank them.
        Backend::Postgres => format!(
            "tenants AS (SELECT DISTINCT tenant_id FROM flow_steps WHERE {CLAIMABLE}), \
             ranked AS (SELECT p.run_id, p.step_key, p.tenant_id, p.status, p.due_ms, \
             ROW_NUMBER() OVER (PARTITION BY p.tenant_id ORDER BY p.due_ms) AS n \
             FROM tenants t CROSS JOIN LATERAL (SELECT run_id, step_key, tenant_id, status, \
             due_ms FROM flow_steps f WHERE f.tenant_id = t.tenant_id AND {CLAIMABLE} \
             ORDER BY f.due_ms LIMIT $3 FOR UPDATE SKIP LOCKED) p)"
        ),
    };
    format!(
        "WITH {ranked}, {BUSY} SELECT ranked.run_id, ranked.step_key, ranked.status \
         FROM ranked LEFT JOIN busy ON busy.tenant_id = ranked.tenant_id \
         WHERE ranked.n <= $3 AND ranked.n <= $4 - COALESCE(busy.leased, 0) \
         ORDER BY ranked.n, ranked.due_ms LIMIT $5"
    )
}

const LEASE: &str = "UPDATE flow_steps SET status = 'leased', lease_token = $3, \
     lease_owner = $4, attempts = attempts + 1, due_ms = $5, updated_ms = $6 \
     WHERE run_id = $1 AND step_key = $2 RETURNING tenant_id, attempts, input, detail";

/// What a lost attempt held goes back to its run.
const RELEASE_LOST: &str = "UPDATE flow_runs SET \
     reserved_tokens = reserved_tokens - COALESCE((SELECT SUM(reserved_tokens) FROM flow_attempts \
       WHERE run_id = $1 AND step_key = $2 AND status = 'running'), 0), \
     reserved_micros = reserved_micros - COALESCE((SELECT SUM(reserved_micros) FROM flow_attempts \
       WHERE run_id = $1 AND step_key = $2 AND status = 'running'), 0) \
     WHERE id = $1";

const LOSE_ATTEMPTS: &str = "UPDATE flow_attempts SET status = 'lost', finished_ms = $3 \
     WHERE run_id = $1 AND step_key = $2 AND status = 'running'";

const INSERT_ATTEMPT: &str = "INSERT INTO flow_attempts (run_id, step_key, attempt, token, \
     owner, status, started_ms) VALUES ($1, $2, $3, $4, $5, 'running', $6)";

const COUNT_STEP: &str = "UPDATE flow_runs SET steps_used = steps_used + 1, updated_ms = $2 \
     WHERE id = $1 RETURNING steps_used, max_steps";

impl Store {
    /// Claims up to `request.batch` claimable steps of a queue, each under
    /// a new lease with a fresh token, and opens an attempt for each.
    pub async fn claim_steps(&self, request: &ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock_ms();
        let sql = candidates_sql(self.backend());
        let cap = request.tenant_concurrency.map_or(i64::MAX, i64::from);
        on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let candidates: Vec<(String, String, String)> = sqlx::query(&sql)
                    .bind(&request.queue)
                    .bind(now)
                    .bind(i64::from(request.per_tenant.max(1)))
                    .bind(cap)
                    .bind(i64::from(request.batch))
                    .bind(request.tenant.as_deref().unwrap_or(""))
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok((
                            row.text("run_id")?,
                            row.text("step_key")?,
                            row.text("status")?,
                        ))
                    })
                    .collect::<Result<_, sqlx::Error>>()?;

                let mut claimed = Vec::with_capacity(candidates.len());
                for (run_id, key, was) in candidates {
                    let token = uuid::Uuid::new_v4().simple().to_string();
                    let row = sqlx::query(LEASE)
                        .bind(&run_id)
                        .bind(&key)
                        .bind(&token)
                        .bind(&request.owner)
                        .bind(now.saturating_add(request.lease_ms))
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                    let attempt: i64 = row.try_get("attempts")?;
                    let tenant_id = row.text("tenant_id")?;
                    let input = json(&row, "input")?;
                    let detail = json(&row, "detail")?;
                    if was == "leased" {
                        sqlx::query(RELEASE_LOST)
                            .bind(&run_id)
                            .bind(&key)
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query(LOSE_ATTEMPTS)
                        .bind(&run_id)
                        .bind(&key)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(INSERT_ATTEMPT)
                        .bind(&run_id)
                        .bind(&key)
                        .bind(attempt)
                        .bind(&token)
                        .bind(&request.owner)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let counts = sqlx::query(COUNT_STEP)
                        .bind(&run_id)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                    claimed.push(Claimed {
                        run_id,
                        key,
                        tenant_id,
                        token,
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        was: StepStatus::parse(&was).unwrap_or(StepStatus::Ready),
                        input,
                        detail,
                        steps_used: u64::try_from(counts.int("steps_used")?).unwrap_or(0),
                        max_steps: u64::try_from(counts.int("max_steps")?).unwrap_or(0),
                    });
                }
                tx.commit().await.map(|()| claimed)
            }
            .await
        })
        .map_err(StoreError::db("claim steps"))
    }

    /// Extends a lease by `lease_ms` from now; false if the token no
    /// longer holds it (it expired and someone else claimed the step, or
    /// the run was cancelled).
    pub async fn renew_lease(
        &self,
        run_id: &str,
        key: &str,
        token: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = self.clock_ms();
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE flow_steps SET due_ms = $4, updated_ms = $5 WHERE run_id = $1 \
                 AND step_key = $2 AND lease_token = $3 AND status = 'leased'",
            )
            .bind(run_id)
            .bind(key)
            .bind(token)
            .bind(now.saturating_add(lease_ms))
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::db("renew a lease"))
    }
}
