//! Each kind of step, and the example workflow that uses them together.

use anyhow::{Result, ensure};
use keel_flow::TaskReport;
use keel_store::flow::{RunStatus, StepStatus};
use serde_json::json;

use crate::support::{Harness, TENANT};

const EXAMPLE: &str = include_str!("../../../../examples/workflows/support_triage.yaml");

#[tokio::test]
async fn the_support_example_hands_off_waits_for_a_person_and_answers() -> Result<()> {
    let h = Harness::new().await?;
    h.script
        .reply("route", Ok("billing: the customer was charged twice"));
    h.script
        .reply("reply", Ok("We have refunded your second charge."));
    let input = json!({"ticket": "I was charged twice", "customer": "Ada", "amount_usd": 120});
    let run = h.start(EXAMPLE, input).await?;

    // The router and the retrieval run; billing's order lookup goes to the
    // orders queue, and the technical branch is skipped.
    h.settle().await?;
    assert_eq!(h.step_status(&run, "orders").await?, StepStatus::Ready);
    let diagnose = h.step(&run, "diagnose").await?;
    assert_eq!(diagnose.status, StepStatus::Skipped);
    assert_eq!(
        diagnose.error.as_deref(),
        Some("handoff 'route' chose 'billing', not 'technical'")
    );
    let retrieval = h.script.retrievals.lock().unwrap()[0].clone();
    assert_eq!((retrieval.collection.as_str(), retrieval.top_k), ("kb", 3));

    // A worker in any language takes the lookup.
    let tasks = h
        .engine
        .claim_tasks(Some(TENANT), "orders", "w1", 10)
        .await?;
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        tasks[0].input,
        json!({"tool": "lookup_order", "args": {"customer": "Ada"}})
    );
    let orders = json!([{"order": 17, "amount_usd": 120}]);
    let report = h
        .engine
        .complete_task(&run, &tasks[0].step, &tasks[0].token, orders.clone())
        .await?;
    assert_eq!(report, TaskReport::Accepted);

    // $120 is above the threshold: a person is asked.
    h.settle().await?;
    let approval = h.step(&run, "refund_approval").await?;
    assert_eq!(approval.status, StepStatus::Waiting);
    let question = approval.detail.unwrap()["prompt"]
        .as_str()
        .unwrap()
        .to_owned();
    ensure!(question.starts_with("Refund $120 to Ada?"), "{question}");
    ensure!(question.contains("\"order\":17"), "{question}");

    h.engine
        .signal(TENANT, &run, "refund_approval", &json!({"approved": true}))
        .await?;
    h.settle().await?;
    let view = h.view(&run).await?;
    assert_eq!(
        view.run.status,
        RunStatus::Succeeded,
        "{:?}",
        view.run.error
    );
    let output = view.run.output.unwrap();
    assert_eq!(output["routed_to"], "billing");
    ensure!(
        output["answer"]
            .as_str()
            .unwrap()
            .contains("refunded your second charge")
    );

    // The reply was written by billing, with the person's decision and the
    // articles in its prompt, and every model call is in the trace.
    let calls = h.script.calls.lock().unwrap().clone();
    let reply = calls.iter().find(|c| c.step == "reply").unwrap();
    assert_eq!(reply.model, "gpt-4o");
    assert_eq!(
        reply.messages[0].content,
        "You are a billing specialist for Ada. Be precise about amounts."
    );
    ensure!(
        reply
            .messages
            .last()
            .unwrap()
            .content
            .contains(r#"{"approved":true}"#)
    );
    let traced: Vec<_> = view
        .attempts
        .iter()
        .filter(|a| a.trace.model.is_some())
        .collect();
    assert_eq!(traced.len(), 2);
    assert_eq!((view.run.tokens_used, view.run.cost.micros()), (30, 200));
    Ok(())
}

#[tokio::test]
async fn a_small_refund_skips_the_person_by_its_condition() -> Result<()> {
    let h = Harness::new().await?;
    h.script.reply("route", Ok("billing"));
    let input = json!({"ticket": "small refund", "customer": "Bo", "amount_usd": 20});
    let run = h.start(EXAMPLE, input).await?;
    h.settle().await?;
    let task = h
        .engine
        .claim_tasks(Some(TENANT), "orders", "w1", 1)
        .await?
        .remove(0);
    h.engine
        .complete_task(&run, &task.step, &task.token, json!([]))
        .await?;
    h.settle().await?;

    let approval = h.step(&run, "refund_approval").await?;
    assert_eq!(approval.status, StepStatus::Skipped);
    ensure!(approval.error.unwrap().contains("condition is false"));
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    // The reply still ran: a skipped dependency is no failure.
    assert_eq!(h.step_status(&run, "reply").await?, StepStatus::Succeeded);
    Ok(())
}

#[tokio::test]
async fn a_map_runs_its_items_in_a_window_and_gathers_them_in_order() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: summarise
agents:
  writer: {model: m}
steps:
  - id: each
    kind: map
    over: '{{ input.orders }}'
    max_parallel: 2
    step:
      id: summary
      kind: llm
      agent: writer
      prompt: 'Order {{ index }}: {{ item.id }}'
  - id: total
    kind: join
    depends_on: [each]
";
    let run = h
        .start(
            definition,
            json!({"orders": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}),
        )
        .await?;
    h.engine.tick().await?; // the map expands
    h.engine.tick().await?; // two items at once, not three
    let running = h.view(&run).await?.steps;
    let done: Vec<_> = running
        .iter()
        .filter(|s| s.key.starts_with("each[") && s.status == StepStatus::Succeeded)
        .map(|s| s.key.as_str())
        .collect();
    assert_eq!(done, ["each[0]", "each[1]"]);
    // Item 2 waited for item 0 to end: released now, not run beside it.
    assert_eq!(h.step_status(&run, "each[2]").await?, StepStatus::Ready);

    h.settle().await?;
    let each = h.step(&run, "each").await?;
    let texts: Vec<_> = each
        .output
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [
            json!("ok each[0]"),
            json!("ok each[1]"),
            json!("ok each[2]")
        ]
    );
    let prompts: Vec<_> = h
        .script
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.messages.last().unwrap().content.clone())
        .collect();
    assert_eq!(prompts, ["Order 0: a", "Order 1: b", "Order 2: c"]);
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    Ok(())
}

#[tokio::test]
async fn an_empty_map_succeeds_with_an_empty_list() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: none
agents:
  writer: {model: m}
steps:
  - id: each
    kind: map
    over: '{{ input.orders }}'
    step: {id: s, kind: llm, agent: writer, prompt: x}
";
    let run = h.start(definition, json!({"orders": []})).await?;
    h.settle().await?;
    assert_eq!(h.step(&run, "each").await?.output, Some(json!([])));
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    Ok(())
}

#[tokio::test]
async fn http_tools_render_their_request_from_the_arguments() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: notify
tools:
  hook:
    http:
      url: 'https://hooks.example/{{ args.channel }}'
      headers: {x-run: '{{ run.id }}'}
steps:
  - id: send
    kind: tool
    tool: hook
    args: {channel: ops, text: '{{ input.message }}'}
";
    let run = h.start(definition, json!({"message": "deployed"})).await?;
    h.settle().await?;
    let request = h.script.requests.lock().unwrap()[0].clone();
    assert_eq!(request.method, "POST");
    assert_eq!(request.url, "https://hooks.example/ops");
    assert_eq!(request.headers, [("x-run".to_owned(), run.clone())]);
    assert_eq!(
        request.body,
        Some(json!({"channel": "ops", "text": "deployed"}))
    );
    assert_eq!(h.status(&run).await?, RunStatus::Succeeded);
    Ok(())
}

#[tokio::test]
async fn a_join_waits_for_all_and_gathers_by_id() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: both
agents:
  a: {model: m}
steps:
  - {id: one, kind: llm, agent: a, prompt: one}
  - {id: two, kind: llm, agent: a, prompt: two}
  - {id: both, kind: join, depends_on: [one, two]}
";
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    let both = h.step(&run, "both").await?.output.unwrap();
    assert_eq!(both["one"]["text"], "ok one");
    assert_eq!(both["two"]["text"], "ok two");
    // With no output template, the run's output is its final steps'.
    assert_eq!(h.view(&run).await?.run.output.unwrap()["both"], both);
    Ok(())
}

#[tokio::test]
async fn json_answers_are_parsed_into_the_output() -> Result<()> {
    let h = Harness::new().await?;
    let definition = "\
name: extract
agents:
  a: {model: m}
steps:
  - {id: fields, kind: llm, agent: a, prompt: x, json: true}
";
    h.script
        .reply("fields", Ok("```json\n{\"amount\": 120}\n```"));
    let run = h.start(definition, json!({})).await?;
    h.settle().await?;
    assert_eq!(
        h.step(&run, "fields").await?.output,
        Some(json!({"amount": 120}))
    );
    Ok(())
}
