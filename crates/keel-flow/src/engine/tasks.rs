//! Tasks for external workers: tool steps whose tool names a worker queue
//! wait there until a worker (any language, over `/v1/tasks`) claims them,
//! renews its lease while it works, and completes or fails them with the
//! lease's token.

use keel_store::flow::{AttemptTrace, ClaimRequest, Claimed, StepStatus, StepUpdate};
use serde::Serialize;
use serde_json::Value;

use super::failure::resolve;
use super::{Engine, millis};
use crate::error::FlowError;
use crate::services::CallError;

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// The run.
    pub run_id: String,
    /// The step's key.
    pub step: String,
    /// The lease's token: send it back to heartbeat, complete or fail.
    pub token: String,
    /// The tool's name and arguments.
    pub input: Value,
    /// This try, from 1.
    pub attempt: u32,
    /// When the lease ends unless renewed, unix milliseconds.
    pub lease_until_ms: i64,
}

/// What a worker reports about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskReport {
    /// Recorded.
    Accepted,
    /// The token no longer holds the task (its lease expired and it was
    /// handed to another worker, or the run ended): nothing was recorded.
    Stale,
}

impl Engine {
    /// Claims up to `max` tasks of `queue` for `worker`, leased for the
    /// engine's lease time.
    pub async fn claim_tasks(
        &self,
        tenant: Option<&str>,
        queue: &str,
        worker: &str,
        max: u32,
    ) -> Result<Vec<Task>, FlowError> {
        let request = ClaimRequest {
            queue: queue.to_owned(),
            owner: worker.to_owned(),
            lease_ms: millis(self.config.lease),
            batch: max.clamp(1, 100),
            per_tenant: max.clamp(1, 100),
            tenant_concurrency: None,
            tenant: tenant.map(str::to_owned),
        };
        let claimed = self.store.claim_steps(&request).await?;
        let lease_until_ms = self
            .clock
            .now_ms()
            .saturating_add(millis(self.config.lease));
        let mut tasks = Vec::with_capacity(claimed.len());
        for c in claimed {
            tasks.push(Task {
                run_id: c.run_id,
                step: c.key,
                token: c.token,
                input: c.input.unwrap_or(Value::Null),
                attempt: c.attempt.saturating_sub(1),
                lease_until_ms,
            });
        }
        Ok(tasks)
    }

    /// Renews a task's lease; `Stale` when the token lost it.
    pub async fn heartbeat_task(
        &self,
        run_id: &str,
        step: &str,
        token: &str,
    ) -> Result<TaskReport, FlowError> {
        let renewed = self
            .store
            .renew_lease(run_id, step, token, millis(self.config.lease))
            .await?;
        Ok(report(renewed))
    }

    /// Records a task's result.
    pub async fn complete_task(
        &self,
        run_id: &str,
        step: &str,
        token: &str,
        output: Value,
    ) -> Result<TaskReport, FlowError> {
        let trace = AttemptTrace {
            output: Some(output.clone()),
            ..AttemptTrace::default()
        };
        let update = StepUpdate::Succeeded(output);
        let done = self
            .store
            .finish_step(run_id, step, token, &update, &trace, None)
            .await?;
        if done {
            self.wake.notify_one();
        }
        Ok(report(done))
    }

    /// Records a task's failure; the step's retry and failure policies
    /// decide what follows, as for steps keel runs itself.
    pub async fn fail_task(
        &self,
        tenant: &str,
        run_id: &str,
        step: &str,
        token: &str,
        error: CallError,
    ) -> Result<TaskReport, FlowError> {
        let view = self.run(tenant, run_id).await?;
        let (_, workflow) = self
            .definition(tenant, &view.run.workflow, Some(view.run.version))
            .await?;
        let (Some(record), Some(definition)) = (
            view.steps.iter().find(|s| s.key == step),
            workflow.step(step),
        ) else {
            return Ok(TaskReport::Stale);
        };
        // The engine's hand-over was the step's first attempt.
        let claimed = Claimed {
            run_id: run_id.to_owned(),
            key: step.to_owned(),
            tenant_id: tenant.to_owned(),
            token: token.to_owned(),
            attempt: record.attempts.saturating_sub(1),
            was: StepStatus::Leased,
            input: record.input.clone(),
            detail: record.detail.clone(),
            steps_used: view.run.steps_used,
            max_steps: view.run.max_steps,
        };
        let resolution = resolve(
            definition,
            &claimed,
            &error,
            &Value::Null,
            self.clock.now_ms(),
        );
        let trace = AttemptTrace {
            error: Some(error.message.clone()),
            ..AttemptTrace::default()
        };
        let done = self
            .store
            .finish_step(
                run_id,
                step,
                token,
                &resolution.update,
                &trace,
                resolution.run_end.as_ref(),
            )
            .await?;
        if done {
            self.wake.notify_one();
        }
        Ok(report(done))
    }
}

fn report(done: bool) -> TaskReport {
    if done {
        TaskReport::Accepted
    } else {
        TaskReport::Stale
    }
}
