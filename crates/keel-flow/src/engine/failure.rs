//! What a failed attempt leads to: another attempt after a backoff, or the
//! step's failure policy once attempts run out.

use std::time::Duration;

use keel_store::flow::{Claimed, RunEnd, RunStatus, StepStatus, StepUpdate};
use rand::Rng;
use serde_json::{Value, json};

use super::millis;
use crate::definition::{FailurePolicy, Step};
use crate::services::CallError;

/// The longest a `Retry-After` may hold a step back.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// The step's update, and the run's end when the failure ends the run.
pub(crate) struct Resolution {
    pub(crate) update: StepUpdate,
    pub(crate) run_end: Option<RunEnd>,
}

/// How long to wait before attempt `attempt + 1`: exponential from the
/// policy's backoff, capped, with jitter in its upper half so retries of
/// many steps spread out; never less than the other side asked.
pub(crate) fn backoff(step: &Step, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let policy = step.retry;
    let doublings = attempt.saturating_sub(1).min(20);
    let full = policy
        .backoff
        .saturating_mul(1_u32 << doublings)
        .min(policy.max_backoff);
    let half = full / 2;
    let jitter = rand::thread_rng().gen_range(0..=millis(half).max(0));
    let wait = half + Duration::from_millis(u64::try_from(jitter).unwrap_or(0));
    match retry_after {
        Some(asked) => wait.max(asked.min(MAX_RETRY_AFTER)),
        None => wait,
    }
}

/// The model an attempt uses: the step's own until its attempts run out,
/// then a fallback model if the policy names one.
pub(crate) fn model_for(step: &Step, attempt: u32, own: &str) -> String {
    match &step.on_failure {
        FailurePolicy::FallbackModel(model) if attempt > step.retry.max_attempts => model.clone(),
        _ => own.to_owned(),
    }
}

/// Resolves a failed attempt of `step` (claimed as `claimed`) at `now_ms`;
/// `context` renders an escalation's message.
pub(crate) fn resolve(
    step: &Step,
    claimed: &Claimed,
    error: &CallError,
    context: &Value,
    now_ms: i64,
) -> Resolution {
    let attempt = claimed.attempt;
    let escalation_expired = claimed.was == StepStatus::Waiting;
    if error.retryable && attempt < step.retry.max_attempts && !escalation_expired {
        let wait = backoff(step, attempt, error.retry_after);
        return Resolution {
            update: StepUpdate::Retry {
                error: error.message.clone(),
                due_ms: now_ms.saturating_add(millis(wait)),
            },
            run_end: None,
        };
    }

    let failed = || StepUpdate::Failed(error.message.clone());
    let fail_run = || Resolution {
        update: failed(),
        run_end: Some(RunEnd {
            status: RunStatus::Failed,
            output: None,
            error: Some(format!(
                "step '{}' failed after {attempt} attempt{}: {}; fix the cause and start the \
                 run again with the same input (a new idempotency key)",
                claimed.key,
                if attempt == 1 { "" } else { "s" },
                error.message
            )),
        }),
    };
    if escalation_expired {
        return fail_run();
    }
    match &step.on_failure {
        FailurePolicy::Fail => fail_run(),
        FailurePolicy::Partial | FailurePolicy::FallbackStep(_) => Resolution {
            update: failed(),
            run_end: None,
        },
        FailurePolicy::FallbackModel(_) if attempt <= step.retry.max_attempts => Resolution {
            // One more attempt, at once, with the fallback model.
            update: StepUpdate::Retry {
                error: error.message.clone(),
                due_ms: now_ms,
            },
            run_end: None,
        },
        FailurePolicy::FallbackModel(_) => fail_run(),
        FailurePolicy::Escalate(escalation) => Resolution {
            update: StepUpdate::Wait {
                detail: json!({
                    "assignee": escalation.to,
                    "escalated": true,
                    "error": error.message,
                    "prompt": escalation
                        .message
                        .as_ref()
                        .map(|m| m.render(context).unwrap_or_else(|_| m.source().to_owned())),
                }),
                deadline_ms: now_ms.saturating_add(millis(escalation.sla)),
            },
            run_end: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(retry: &str) -> Step {
        let text = format!(
            "name: t\nagents: {{a: {{model: m}}}}\nsteps: [{{id: s, kind: llm, agent: a, \
             prompt: x, retry: {retry}}}]"
        );
        crate::definition::parse(&text).unwrap().steps.remove(0)
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let step = step("{max_attempts: 9, backoff: 1s, max_backoff: 8s}");
        for (attempt, full) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000), (8, 8_000)] {
            for _ in 0..50 {
                let wait = millis(backoff(&step, attempt, None));
                assert!(
                    (full / 2..=full).contains(&wait),
                    "attempt {attempt}: {wait}ms"
                );
            }
        }
    }

    #[test]
    fn retry_after_wins_when_longer_but_is_capped() {
        let step = step("{max_attempts: 3, backoff: 1s}");
        let asked = Some(Duration::from_secs(40));
        assert!(backoff(&step, 1, asked) >= Duration::from_secs(40));
        let absurd = Some(Duration::from_secs(86_400));
        assert_eq!(backoff(&step, 1, absurd), MAX_RETRY_AFTER);
    }
}
