//! Holding a run's budget for a model call in flight, as the gateway holds
//! its budgets: a call goes ahead only if what the run spent, what its
//! calls in flight hold, and this call's worst case fit the run's caps,
//! all checked and held in one statement. Finishing the attempt settles
//! the hold to the real usage; an attempt lost with its process gives its
//! hold back when the step is claimed again.

use keel_core::Cost;

use super::runs::clamp;
use crate::backend::{BeginWrite, Store, on_pool};
use crate::error::StoreError;

const HOLD: &str = "UPDATE flow_runs SET reserved_tokens = reserved_tokens + $2, \
     reserved_micros = reserved_micros + $3 WHERE id = $1 AND status = 'running' \
     AND (max_tokens IS NULL OR tokens_used + reserved_tokens + $2 <= max_tokens) \
     AND (max_cost_micros IS NULL OR cost_micros + reserved_micros + $3 <= max_cost_micros)";

const HOLD_ON_ATTEMPT: &str = "UPDATE flow_attempts SET reserved_tokens = reserved_tokens + $4, \
     reserved_micros = reserved_micros + $5 \
     WHERE run_id = $1 AND step_key = $2 AND token = $3 AND status = 'running'";

impl Store {
    /// Holds `tokens` and `cost` of the run's caps for the attempt leased
    /// with `token`; false (and nothing held) if the caps cannot cover it
    /// or the attempt no longer runs.
    pub async fn hold_run_budget(
        &self,
        run_id: &str,
        key: &str,
        token: &str,
        tokens: u64,
        cost: Cost,
    ) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let attempt = sqlx::query(HOLD_ON_ATTEMPT)
                    .bind(run_id)
                    .bind(key)
                    .bind(token)
                    .bind(clamp(tokens))
                    .bind(clamp(cost.micros()))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if attempt == 0 {
                    return Ok(false);
                }
                let run = sqlx::query(HOLD)
                    .bind(run_id)
                    .bind(clamp(tokens))
                    .bind(clamp(cost.micros()))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if run == 0 {
                    return Ok(false);
                }
                tx.commit().await.map(|()| true)
            }
            .await
        })
        .map_err(StoreError::db("hold a run's budget"))
    }
}
