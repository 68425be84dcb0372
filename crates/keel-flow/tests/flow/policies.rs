//! Retries, backoff and failure policies, on the engine's clock.

use std::time::Duration;

use anyhow::{Result, ensure};
use keel_flow::CallError;
use keel_store::flow::{RunStatus, StepStatus};
use serde_json::json;

use crate::support::{Harness, TENANT};

/// One step, with the given extra lines in its definition.
fn single(policy: &str) -> String {
    format!(
        "name: single\nagents:\n  a: {{model: primary}}\nsteps:\n  - id: s\n    kind: llm\n    \
         agent: a\n    prompt: go\n{policy}"
    )
}

fn rate_limited(after_secs: u64) -> CallError {
    CallError {
        message: "429 from the provider".to_owned(),
        retryable: true,
        retry_after: Some(Duration::from_secs(after_secs)),
    }
}

#[tokio::test]
async fn retries_back_off_and_honour_retry_after() -> Result<()> {
    let h = Harness::new().await?;
    h.script.reply("s", Err(rate_limited(30)));
    h.script.reply("s", Err(CallError::retryable("503")));
    let run = h
        .start(
            &single("    retry: {max_attempts: 3, backoff: 1s}\n"),
            json!({}),
        )
        .await?;

    h.settle().await?;
    let waiting = h.step(&run, "s").await?;
    assert_eq!((waiting.status, waiting.attempts), (StepStatus::Ready, 1));
    let wait_ms = waiting.due_ms - h.engine.clock().now_ms();
    ensure!(
        wait_ms >= 29_000,
        "Retry-After 30s must hold the retry back, waited {wait_ms}ms"
    );
    assert_eq!(h.settle().await?, 0, "not due yet");

    h.advance(Duration::from_secs(31));
    h.settle().await?;
    let second = h.step(&run, "s").await?;
    assert_eq!((second.status, second.attempts), (StepStatus::Ready, 2));
    // Exponential: the second retry waits 1–2s (1s doubled, jittered).
    let wait_ms = second.due_ms - h.engine.clock().now_ms();
    ensure!((900..=2_100).contains(&wait_ms), "waited {wait_ms}ms");

    h.advance(Duration::from_secs(3));
    h.settle().await?;
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    let statuses: Vec<_> = h
        .view(&run)
        .await?
        .attempts
        .iter()
        .map(|a| a.status.clone())
        .collect();
    assert_eq!(statuses[..3], ["failed", "failed", "succeeded"]);
    Ok(())
}

#[tokio::test]
async fn a_failed_step_fails_the_run_with_what_failed_and_how_to_retry() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "name: two\nagents:\n  a: {model: m}\nsteps:\n  - {id: first, kind: llm, \
                      agent: a, prompt: x}\n  - {id: second, kind: llm, agent: a, prompt: y, \
                      depends_on: [first]}\n";
    h.script
        .reply("first", Err(CallError::permanent("400: context too long")));
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Failed);
    let error = view.run.error.unwrap();
    ensure!(
        error.contains("step 'first' failed after 1 attempt: 400: context too long"),
        "{error}"
    );
    ensure!(error.contains("start the run again"), "{error}");
    assert_eq!(h.step_status(&run, "second").await?, StepStatus::Cancelled);
    assert_eq!(
        h.script.models("first").len(),
        1,
        "permanent errors are not retried"
    );
    Ok(())
}

#[tokio::test]
async fn a_partial_policy_skips_what_needs_the_step_and_ends_partial() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: partly
agents:
  a: {model: m}
steps:
  - {id: flaky, kind: llm, agent: a, prompt: x, on_failure: partial, retry: {max_attempts: 1}}
  - {id: needs_it, kind: llm, agent: a, prompt: y, depends_on: [flaky]}
  - {id: other, kind: llm, agent: a, prompt: z}
";
    h.script
        .reply("flaky", Err(CallError::retryable("timeout")));
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Partial);
    assert_eq!(view.run.error.as_deref(), Some("steps failed: flaky"));
    assert_eq!(h.step_status(&run, "needs_it").await?, StepStatus::Skipped);
    assert_eq!(h.step_status(&run, "other").await?, StepStatus::Succeeded);
    // The partial result holds what finished.
    assert_eq!(view.run.output.unwrap()["other"]["text"], "ok other");
    Ok(())
}

#[tokio::test]
async fn a_fallback_step_stands_in_for_a_failed_one() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: fallback
agents:
  a: {model: m}
steps:
  - id: fancy
    kind: llm
    agent: a
    prompt: x
    retry: {max_attempts: 1}
    on_failure: {fallback_step: canned}
  - {id: canned, kind: llm, agent: a, prompt: sorry}
  - {id: after, kind: llm, agent: a, prompt: 'got {{ steps.fancy.text }}', depends_on: [fancy]}
";
    h.script
        .reply("fancy", Err(CallError::permanent("refused")));
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    assert_eq!(h.step_status(&run, "canned").await?, StepStatus::Succeeded);
    let after = h
        .script
        .calls
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.step == "after")
        .cloned()
        .unwrap();
    assert_eq!(after.messages.last().unwrap().content, "got ok canned");

    // When the step succeeds, its fallback is skipped.
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    assert_eq!(h.step_status(&run, "canned").await?, StepStatus::Skipped);
    Ok(())
}

#[tokio::test]
async fn a_fallback_model_gets_one_more_attempt() -> Result<()> {
    let h = Harness::new().await?;
    for _ in 0..2 {
        h.script.reply("s", Err(CallError::retryable("500")));
    }
    let policy =
        "    retry: {max_attempts: 2, backoff: 1s}\n    on_failure: {fallback_model: backup}\n";
    let run = h.start(&single(policy), json!({})).await?;
    for _ in 0..3 {
        h.settle().await?;
        h.advance(Duration::from_secs(5));
    }
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    assert_eq!(h.script.models("s"), ["primary", "primary", "backup"]);
    Ok(())
}

#[tokio::test]
async fn an_escalated_failure_waits_for_a_person_who_supplies_the_output() -> Result<()> {
    let h = Harness::new().await?;
    h.script
        .reply("s", Err(CallError::permanent("unsafe request")));
    let policy =
        "    on_failure: {escalate: {to: ops, message: 'please handle {{ input.id }}', sla: 1h}}\n";
    let run = h.start(&single(policy), json!({"id": 7})).await?;
    h.settle().await?;
    let step = h.step(&run, "s").await?;
    assert_eq!(step.status, StepStatus::Waiting);
    let detail = step.detail.unwrap();
    assert_eq!(
        (detail["assignee"].clone(), detail["prompt"].clone()),
        (json!("ops"), json!("please handle 7"))
    );
    assert_eq!(detail["error"], "unsafe request");

    h.engine
        .signal(TENANT, &run, "s", &json!({"text": "handled by ops"}))
        .await?;
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Succeeded);
    assert_eq!(view.run.output.unwrap()["s"]["text"], "handled by ops");

    // Unanswered past its SLA, the escalation fails the run.
    h.script
        .reply("s", Err(CallError::permanent("unsafe request")));
    let run = h.start(&single(policy), json!({"id": 8})).await?;
    h.settle().await?;
    h.advance(Duration::from_secs(3601));
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Failed);
    ensure!(
        view.run
            .error
            .unwrap()
            .contains("no one answered the escalation in time")
    );
    Ok(())
}

#[tokio::test]
async fn a_human_step_escalates_after_its_sla_then_fails() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: approve
steps:
  - id: ok
    kind: human
    prompt: 'Approve {{ input.what }}?'
    sla: 1h
    on_timeout: {escalate: {to: lead, sla: 30m}}
";
    let run = h.start(definition, json!({"what": "the refund"})).await?;
    h.settle().await?;
    let asked = h.step(&run, "ok").await?.detail.unwrap();
    assert_eq!(
        (asked["prompt"].clone(), asked["assignee"].clone()),
        (json!("Approve the refund?"), json!(null))
    );

    h.advance(Duration::from_secs(59 * 60));
    assert_eq!(h.settle().await?, 0, "still within the SLA");
    h.advance(Duration::from_secs(2 * 60));
    h.settle().await?;
    let escalated = h.step(&run, "ok").await?;
    assert_eq!(escalated.status, StepStatus::Waiting);
    assert_eq!(escalated.detail.unwrap()["assignee"], "lead");

    h.advance(Duration::from_secs(31 * 60));
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Failed);
    ensure!(
        view.run
            .error
            .unwrap()
            .contains("nor from lead after escalation")
    );
    Ok(())
}

#[tokio::test]
async fn a_human_step_may_default_when_no_one_answers() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: approve
steps:
  - {id: ok, kind: human, prompt: 'Approve?', sla: 10m, on_timeout: {default: {approved: false}}}
";
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    h.advance(Duration::from_secs(601));
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Succeeded);
    assert_eq!(view.run.output.unwrap()["ok"], json!({"approved": false}));
    Ok(())
}

#[tokio::test]
async fn an_agent_that_picks_no_valid_target_is_asked_again() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: route
agents:
  triage: {model: m, handoffs: [billing, tech]}
  billing: {model: m}
  tech: {model: m}
steps:
  - {id: route, kind: handoff, agent: triage, prompt: x, targets: {billing: pay, tech: fix}, retry: {max_attempts: 2, backoff: 1s}}
  - {id: pay, kind: llm, agent: billing, prompt: pay, depends_on: [route]}
  - {id: fix, kind: llm, agent: tech, prompt: fix, depends_on: [route]}
";
    h.script.reply("route", Ok("I think sales should take it"));
    h.script.reply("route", Ok("tech"));
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    let route = h.step(&run, "route").await?;
    ensure!(
        route
            .error
            .unwrap()
            .contains("had to pick one of billing, tech")
    );
    h.advance(Duration::from_secs(2));
    h.settle().await?;
    assert_eq!(h.step_status(&run, "fix").await?, StepStatus::Succeeded);
    assert_eq!(h.step_status(&run, "pay").await?, StepStatus::Skipped);
    // The specialist continues the conversation the router had.
    let fix = h
        .script
        .calls
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.step == "fix")
        .cloned()
        .unwrap();
    let roles: Vec<_> = fix.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(fix.messages[1].content, "tech");
    Ok(())
}
