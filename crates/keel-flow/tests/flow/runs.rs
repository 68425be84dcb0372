//! Starting, limiting, cancelling and refusing runs; external workers.

use std::time::Duration;

use anyhow::{Result, ensure};
use keel_flow::{CallError, FlowError, TaskReport};
use keel_store::flow::{RunStatus, StepStatus};
use serde_json::json;

use crate::support::{Harness, TENANT};

const CHAIN: &str = "\
name: chain
limits: {max_steps: 2}
agents:
  a: {model: m}
steps:
  - {id: one, kind: llm, agent: a, prompt: x}
  - {id: two, kind: llm, agent: a, prompt: y, depends_on: [one]}
  - {id: three, kind: llm, agent: a, prompt: z, depends_on: [two]}
";

#[tokio::test]
async fn an_idempotency_key_returns_the_existing_run() -> Result<()> {
    let h = Harness::new().await?;
    h.engine.register(TENANT, CHAIN).await?;
    let key = Some("ticket-9".to_owned());
    let (first, created) = h
        .engine
        .start(TENANT, "chain", None, json!({}), key.clone())
        .await?;
    ensure!(created);
    let (again, created) = h
        .engine
        .start(TENANT, "chain", None, json!({}), key)
        .await?;
    ensure!(!created);
    assert_eq!(again.id, first.id);
    Ok(())
}

#[tokio::test]
async fn a_run_stops_at_its_step_limit() -> Result<()> {
    let h = Harness::new().await?;
    let run = h.start(CHAIN, json!({})).await?;
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Failed);
    ensure!(
        view.run
            .error
            .unwrap()
            .contains("all 2 of its step attempts (limits.max_steps)")
    );
    assert_eq!(h.script.models("three").len(), 0);
    Ok(())
}

#[tokio::test]
async fn a_run_stops_before_a_call_its_budget_cannot_cover() {
    let h = Harness::new().await.unwrap();
    // Each call costs $0.0001; the third would pass $0.00025.
    let definition = CHAIN.replace("max_steps: 2", "max_steps: 10, max_cost_usd: 0.00025");
    let run = h.start(&definition, json!({})).await.unwrap();
    h.settle().await.unwrap();
    let view = h.view(&run).await.unwrap();
    assert_eq!(view.run.status, RunStatus::Failed);
    let error = view.run.error.unwrap();
    assert!(
        error.contains("step 'three'") && error.contains("budget cannot cover"),
        "{error}"
    );
    assert_eq!(h.script.models("three").len(), 0, "the call never went out");
    assert_eq!(
        (view.run.cost.micros(), view.run.reserved_cost.micros()),
        (200, 0)
    );

    // Tokens: 15 a call (completion capped to what was held), cap 40.
    let definition = CHAIN.replace("max_steps: 2", "max_steps: 10, max_tokens: 40");
    let run = h.start(&definition, json!({})).await.unwrap();
    h.settle().await.unwrap();
    let view = h.view(&run).await.unwrap();
    assert_eq!(
        (view.run.status, view.run.tokens_used),
        (RunStatus::Failed, 30)
    );
    let calls = h.script.calls.lock().unwrap();
    assert!(
        calls.iter().all(|c| c.max_tokens == Some(5)),
        "the completion is capped"
    );
}

#[tokio::test]
async fn a_cancelled_run_runs_nothing_more() -> Result<()> {
    let h = Harness::new().await?;
    let definition = CHAIN.replace("max_steps: 2", "max_steps: 10");
    let run = h.start(&definition, json!({})).await?;
    h.engine.tick().await?;
    ensure!(h.engine.cancel(TENANT, &run).await?);
    h.settle().await?;
    assert_eq!(h.status(&run).await?, RunStatus::Cancelled);
    assert_eq!(h.script.models("two").len(), 0);
    ensure!(!h.engine.cancel(TENANT, &run).await?, "already over");
    Ok(())
}

#[tokio::test]
async fn bad_definitions_and_inputs_are_refused() -> Result<()> {
    let h = Harness::new().await?;
    let bad = CHAIN.replace("depends_on: [one]", "depends_on: [three]");
    let Err(FlowError::Definition(error)) = h.engine.register(TENANT, &bad).await else {
        anyhow::bail!("a cycle must be refused");
    };
    ensure!(error.to_string().contains("cycle"), "{error}");

    let unknown = h
        .engine
        .start(TENANT, "nothing", None, json!({}), None)
        .await;
    ensure!(matches!(unknown, Err(FlowError::UnknownWorkflow { .. })));
    h.engine.register(TENANT, CHAIN).await?;
    let list = h
        .engine
        .start(TENANT, "chain", None, json!([1]), None)
        .await;
    ensure!(matches!(list, Err(FlowError::InvalidInput { .. })));
    // Another tenant cannot see the run.
    let run = h.start(CHAIN, json!({})).await?;
    ensure!(matches!(
        h.engine.run("other", &run).await,
        Err(FlowError::UnknownRun { .. })
    ));
    Ok(())
}

const WORKER: &str = "\
name: lookup
tools:
  orders: {worker: {queue: orders}}
steps:
  - {id: find, kind: tool, tool: orders, args: {id: '{{ input.id }}'}, retry: {max_attempts: 2, backoff: 1s}}
";

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_complete_the_task() -> Result<()> {
    let h = Harness::new().await?;
    let run = h.start(WORKER, json!({"id": 3})).await?;
    h.settle().await?;
    let slow = h
        .engine
        .claim_tasks(Some(TENANT), "orders", "slow", 1)
        .await?
        .remove(0);
    assert_eq!(slow.input["args"], json!({"id": 3}));
    assert_eq!(slow.attempt, 1);

    // The slow worker stops heartbeating; its lease runs out.
    h.advance(Duration::from_secs(31));
    let fast = h
        .engine
        .claim_tasks(Some(TENANT), "orders", "fast", 1)
        .await?
        .remove(0);
    assert_eq!(fast.attempt, 2);
    assert_eq!(
        h.engine
            .heartbeat_task(&run, &slow.step, &slow.token)
            .await?,
        TaskReport::Stale
    );
    assert_eq!(
        h.engine
            .complete_task(&run, &slow.step, &slow.token, json!("late"))
            .await?,
        TaskReport::Stale
    );
    assert_eq!(
        h.engine
            .heartbeat_task(&run, &fast.step, &fast.token)
            .await?,
        TaskReport::Accepted
    );
    assert_eq!(
        h.engine
            .complete_task(&run, &fast.step, &fast.token, json!({"found": true}))
            .await?,
        TaskReport::Accepted
    );
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Succeeded);
    assert_eq!(view.run.output.unwrap()["find"], json!({"found": true}));
    // Other tenants' workers do not see the task.
    ensure!(
        h.engine
            .claim_tasks(Some("other"), "orders", "w", 5)
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_task_is_retried_then_fails_the_run() -> Result<()> {
    let h = Harness::new().await?;
    let run = h.start(WORKER, json!({"id": 4})).await?;
    h.settle().await?;
    for attempt in 1..=2 {
        h.advance(Duration::from_secs(5));
        let task = h
            .engine
            .claim_tasks(Some(TENANT), "orders", "w", 1)
            .await?
            .remove(0);
        assert_eq!(task.attempt, attempt);
        let error = CallError::retryable("orders service down");
        let report = h
            .engine
            .fail_task(TENANT, &run, &task.step, &task.token, error)
            .await?;
        assert_eq!(report, TaskReport::Accepted);
    }
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(view.run.status, RunStatus::Failed);
    ensure!(view.run.error.unwrap().contains("orders service down"));
    assert_eq!(h.step_status(&run, "find").await?, StepStatus::Failed);
    Ok(())
}
