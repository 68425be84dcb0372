//! Running one claimed step: load its run, decide whether it runs, do its
//! work while keeping the lease, and record the outcome with the lease's
//! token.

use std::sync::Arc;

use keel_store::flow::{AttemptTrace, Claimed, NewStep, RunEnd, RunStatus, StepStatus, StepUpdate};
use serde_json::{Map, Value};
use tracing::debug;

use super::context::RunState;
use super::failure::resolve;
use super::kinds::StepRun;
use super::{Engine, millis, plan};
use crate::definition::{FailurePolicy, Step, StepKind, Workflow};
use crate::error::FlowError;
use crate::services::CallError;

/// What a step's work came to.
pub(crate) enum Outcome {
    /// It produced this output.
    Done(Value),
    /// It failed; the failure policy decides what follows.
    Fail(CallError),
    /// It waits for a person until the deadline.
    Wait { detail: Value, deadline_ms: i64 },
    /// An external worker does the work.
    HandOver { queue: String, input: Value },
    /// A map's items run first.
    Expand(Vec<NewStep>),
}

impl Engine {
    pub(crate) async fn execute(self: &Arc<Self>, claimed: Claimed) -> Result<(), FlowError> {
        let Some(run) = self.store.run(&claimed.tenant_id, &claimed.run_id).await? else {
            return Ok(());
        };
        if run.status.is_final() {
            return Ok(());
        }
        let (_, workflow) = self
            .definition(&run.tenant_id, &run.workflow, Some(run.version))
            .await?;
        let steps = self.store.run_steps(&run.id).await?;
        let state = RunState::new(run, steps);

        let mut trace = AttemptTrace::default();
        let (update, run_end) = if claimed.steps_used > claimed.max_steps {
            let error = format!(
                "the run used all {} of its step attempts (limits.max_steps)",
                claimed.max_steps
            );
            (
                StepUpdate::Failed(error.clone()),
                Some(RunEnd {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(error),
                }),
            )
        } else if claimed.key == plan::END {
            end_run(&workflow, &state)
        } else {
            self.work(&workflow, &state, &claimed, &mut trace).await
        };

        let releases = matches!(
            update,
            StepUpdate::Succeeded(_) | StepUpdate::Failed(_) | StepUpdate::Skipped(_)
        ) || matches!(update, StepUpdate::Retry { due_ms, .. } if due_ms <= self.clock.now_ms())
            || matches!(update, StepUpdate::Expand(_));
        let recorded = self
            .store
            .finish_step(
                &claimed.run_id,
                &claimed.key,
                &claimed.token,
                &update,
                &trace,
                run_end.as_ref(),
            )
            .await?;
        if !recorded {
            debug!(run = %claimed.run_id, step = %claimed.key, "Lost the lease; result dropped");
        } else if releases {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Decides whether the step runs, runs it under a renewed lease, and
    /// turns what happened into the step's update.
    async fn work(
        &self,
        workflow: &Workflow,
        state: &RunState,
        claimed: &Claimed,
        trace: &mut AttemptTrace,
    ) -> (StepUpdate, Option<RunEnd>) {
        let Some((step, context)) = definition_of(workflow, state, claimed) else {
            let error = format!("the workflow has no step '{}'", claimed.key);
            return (StepUpdate::Failed(error), None);
        };
        let is_item = plan::split_item(&claimed.key).is_some();
        let gathering = matches!(step.kind, StepKind::Map(_))
            && state
                .steps
                .keys()
                .any(|k| k.starts_with(&format!("{}[", step.id)));
        let fresh = claimed.was == StepStatus::Ready || claimed.was == StepStatus::Leased;

        if fresh
            && !is_item
            && !gathering
            && let Some(reason) = state.skip_reason(workflow, step)
        {
            return (StepUpdate::Skipped(reason), None);
        }
        if fresh
            && !gathering
            && let Some(when) = &step.when
        {
            match when.evaluate(&context) {
                Ok(value) if !truthy(&value) => {
                    let reason = format!("its condition is false: {}", when.source());
                    return (StepUpdate::Skipped(reason), None);
                }
                Ok(_) => {}
                Err(e) => {
                    let error = CallError::permanent(format!("when: {e}"));
                    return self.failed(step, claimed, &error, &context, trace);
                }
            }
        }
        // A step escalated to a person whose deadline passed has failed.
        if claimed.was == StepStatus::Waiting && !matches!(step.kind, StepKind::Human(_)) {
            let error = CallError::permanent("no one answered the escalation in time");
            return self.failed(step, claimed, &error, &context, trace);
        }

        let run = StepRun {
            workflow,
            state,
            step,
            claimed,
            context: context.clone(),
        };
        let Some(outcome) = self
            .keeping_lease(claimed, self.run_kind(&run, trace))
            .await
        else {
            return (StepUpdate::Skipped("lost the lease".to_owned()), None);
        };
        match outcome {
            Outcome::Done(output) => {
                trace.output = Some(output.clone());
                (StepUpdate::Succeeded(output), None)
            }
            Outcome::Fail(error) => self.failed(step, claimed, &error, &context, trace),
            Outcome::Wait {
                detail,
                deadline_ms,
            } => (
                StepUpdate::Wait {
                    detail,
                    deadline_ms,
                },
                None,
            ),
            Outcome::HandOver { queue, input } => (StepUpdate::HandOver { queue, input }, None),
            Outcome::Expand(items) => (StepUpdate::Expand(items), None),
        }
    }

    fn failed(
        &self,
        step: &Step,
        claimed: &Claimed,
        error: &CallError,
        context: &Value,
        trace: &mut AttemptTrace,
    ) -> (StepUpdate, Option<RunEnd>) {
        trace.error = Some(error.message.clone());
        let resolution = resolve(step, claimed, error, context, self.clock.now_ms());
        (resolution.update, resolution.run_end)
    }

    /// Runs `work`, renewing the lease every third of its length; `None`
    /// if the lease was lost (the run was cancelled, or the step was
    /// taken over after a stall), in which case the work is dropped.
    async fn keeping_lease<T>(
        &self,
        claimed: &Claimed,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let lease = self.config.lease;
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = self
                    .store
                    .renew_lease(&claimed.run_id, &claimed.key, &claimed.token, millis(lease))
                    .await;
                if let Ok(false) = renewed {
                    return;
                }
            }
        };
        tokio::select! {
            done = work => Some(done),
            () = renew => None,
        }
    }
}

/// The definition a claimed key runs and its template context: a step's
/// own, or for a map's item its map's item step with `item` and `index`.
fn definition_of<'w>(
    workflow: &'w Workflow,
    state: &RunState,
    claimed: &Claimed,
) -> Option<(&'w Step, Value)> {
    let mut context = state.context(workflow);
    if let Some((map, _)) = plan::split_item(&claimed.key) {
        let StepKind::Map(map) = &workflow.step(map)?.kind else {
            return None;
        };
        let input = claimed.input.clone().unwrap_or(Value::Null);
        context["item"] = input["item"].clone();
        context["index"] = input["index"].clone();
        return Some((&map.step, context));
    }
    Some((workflow.step(&claimed.key)?, context))
}

/// Jinja's truth: false, null, zero, and empty strings, lists and objects
/// are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty() && s != "false" && s != "False",
        Value::Array(items) => !items.is_empty(),
        Value::Object(entries) => !entries.is_empty(),
    }
}

/// The final step: the run succeeded, or is partial when a step failed
/// under a `partial` policy; its output is the workflow's `output`, or the
/// outputs of the steps nothing depends on.
fn end_run(workflow: &Workflow, state: &RunState) -> (StepUpdate, Option<RunEnd>) {
    let failed: Vec<&str> = workflow
        .steps
        .iter()
        .filter(|s| {
            state
                .steps
                .get(&s.id)
                .is_some_and(|r| r.status == StepStatus::Failed)
        })
        .filter(|s| {
            // A failure a fallback made good is no failure of the run.
            !matches!(&s.on_failure, FailurePolicy::FallbackStep(x)
                if state.steps.get(x).is_some_and(|r| r.status == StepStatus::Succeeded))
        })
        .map(|s| s.id.as_str())
        .collect();
    let context = state.context(workflow);
    let output = match &workflow.output {
        Some(template) => template.evaluate(&context),
        None => Ok(sinks(workflow, state)),
    };
    let (status, output, error) = match (output, failed.is_empty()) {
        (Ok(output), true) => (RunStatus::Succeeded, Some(output), None),
        (Ok(output), false) => (
            RunStatus::Partial,
            Some(output),
            Some(format!("steps failed: {}", failed.join(", "))),
        ),
        (Err(e), _) => (
            RunStatus::Failed,
            None,
            Some(format!("the workflow's output: {e}")),
        ),
    };
    let update = StepUpdate::Succeeded(output.clone().unwrap_or(Value::Null));
    (
        update,
        Some(RunEnd {
            status,
            output,
            error,
        }),
    )
}

/// The outputs of the steps no other step depends on (fallbacks aside).
fn sinks(workflow: &Workflow, state: &RunState) -> Value {
    let needed: Vec<&str> = workflow
        .steps
        .iter()
        .flat_map(|s| s.depends_on.iter().map(String::as_str))
        .collect();
    let fallbacks: Vec<&str> = workflow
        .steps
        .iter()
        .filter_map(|s| match &s.on_failure {
            FailurePolicy::FallbackStep(x) => Some(x.as_str()),
            _ => None,
        })
        .collect();
    let outputs: Map<String, Value> = workflow
        .steps
        .iter()
        .filter(|s| !needed.contains(&s.id.as_str()) && !fallbacks.contains(&s.id.as_str()))
        .filter(|s| {
            let own = state.steps.get(&s.id).map(|r| r.status);
            own == Some(StepStatus::Succeeded) || own == Some(StepStatus::Failed)
        })
        .map(|s| (s.id.clone(), state.output(workflow, &s.id)))
        .collect();
    Value::Object(outputs)
}
