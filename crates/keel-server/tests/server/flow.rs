//! Workflows over HTTP: register, start, external workers, people, and the
//! ledger attributing every model call to its run.

use std::time::Duration;

use keel_sim::SimConfig;
use keel_store::{Store, UsageQuery};
use serde_json::{Value, json};

use crate::support::{self, KEY, Running};

const DEFINITION: &str = "\
name: refund
agents:
  clerk: {model: m, system: 'You handle refunds for {{ input.customer }}.'}
tools:
  orders: {worker: {queue: orders}}
steps:
  - {id: draft, kind: llm, agent: clerk, prompt: 'Draft a reply to: {{ input.ticket }}'}
  - {id: lookup, kind: tool, tool: orders, args: {customer: '{{ input.customer }}'}}
  - {id: approve, kind: human, prompt: 'Refund {{ input.customer }}?', depends_on: [lookup], sla: 1h}
  - {id: reply, kind: llm, agent: clerk, depends_on: [draft, approve], prompt: 'Send: {{ steps.draft.text }}'}
";

impl Running {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.app.base_url()))
            .bearer_auth(KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn register(&self, definition: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/workflows", self.app.base_url()))
            .bearer_auth(KEY)
            .header("content-type", "application/yaml")
            .body(definition.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Reads the run until `done` holds for it (the engine works in the
    /// background); the last view either way.
    async fn run_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut view = Value::Null;
        for _ in 0..500 {
            view = self.get(&format!("/runs/{id}")).await.1;
            if done(&view) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        view
    }
}

fn step<'a>(view: &'a Value, key: &str) -> &'a Value {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap()
}

#[tokio::test]
async fn a_run_goes_through_a_worker_and_a_person_to_the_end() {
    let h = support::start(SimConfig::default(), |_| {}).await;
    let (status, registered) = h.register(DEFINITION).await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(
        (registered["name"].as_str(), registered["version"].as_i64()),
        (Some("refund"), Some(1))
    );

    let start = json!({"workflow": "refund", "input": {"ticket": "double charge", "customer": "Ada"}, "idempotency_key": "t-1"});
    let (status, run) = h.post("/runs", start.clone()).await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let (status, again) = h.post("/runs", start).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));

    // A worker long-polls the queue and takes the lookup.
    let (status, tasks) = h
        .post(
            "/tasks/claim",
            json!({"queue": "orders", "worker": "py-1", "wait_ms": 10000}),
        )
        .await;
    assert_eq!(status, 200, "{tasks}");
    let task = tasks["data"][0].clone();
    assert_eq!(
        task["input"],
        json!({"tool": "orders", "args": {"customer": "Ada"}})
    );
    let path = format!("/tasks/{id}/{}", task["step"].as_str().unwrap());
    let token = task["token"].clone();
    assert_eq!(
        h.post(&format!("{path}/heartbeat"), json!({"token": token}))
            .await
            .0,
        200
    );
    let done = json!({"token": token, "output": [{"order": 7}]});
    assert_eq!(
        h.post(&format!("{path}/complete"), done.clone()).await.0,
        200
    );
    let (status, stale) = h.post(&format!("{path}/complete"), done).await;
    assert_eq!(
        (status, stale["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    // The person is asked, answers, and the run ends.
    let view = h
        .run_until(&id, |v| step(v, "approve")["status"] == "waiting")
        .await;
    assert_eq!(step(&view, "approve")["detail"]["prompt"], "Refund Ada?");
    let (status, body) = h
        .post(
            &format!("/runs/{id}/signal"),
            json!({"step": "reply", "output": true}),
        )
        .await;
    assert_eq!(status, 409, "only a waiting step takes a signal: {body}");
    let (status, _) = h
        .post(
            &format!("/runs/{id}/signal"),
            json!({"step": "approve", "output": {"ok": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let view = h.run_until(&id, |v| v["status"] != "running").await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert!(
        view["output"]["reply"]["text"]
            .as_str()
            .unwrap()
            .starts_with("sim:")
    );

    // Both model calls went through the gateway path: traced with their
    // model and cost, and in the ledger under the run as the session.
    let models: Vec<_> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["model"].is_string())
        .collect();
    assert_eq!(models.len(), 2);
    assert!(view["cost"].as_u64().unwrap() > 0);
    let store = Store::connect(&h.store_url).await.unwrap();
    let mut totals = Default::default();
    for _ in 0..100 {
        totals = store
            .usage_totals(&UsageQuery {
                session: Some(id.clone()),
                ..UsageQuery::default()
            })
            .await
            .unwrap();
        if totals.requests == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(totals.requests, 2);
    let by_workflow = store
        .usage_totals(&UsageQuery {
            workflow: Some("refund".into()),
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_workflow.requests, 2);
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let h = support::start(SimConfig::default(), |_| {}).await;
    let bad = DEFINITION.replace("depends_on: [lookup]", "depends_on: [lokup]");
    let (status, body) = h.register(&bad).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("line 9") && message.contains("unknown step 'lokup'"),
        "{message}"
    );
    assert_eq!(body["error"]["param"], "steps[2].depends_on[0]");

    let (status, body) = h.post("/runs", json!({"workflow": "nope"})).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (404, Some("workflow"))
    );
    h.register(DEFINITION).await;
    let (status, body) = h
        .post("/runs", json!({"workflow": "refund", "input": [1]}))
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("input"))
    );
    let (status, _) = h
        .post("/runs", json!({"workflow": "refund", "inptu": {}}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = h.get("/runs/run_missing").await;
    assert_eq!(status, 404);
    let (status, body) = h.get("/runs?status=done").await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("status"))
    );
    let (status, body) = h.post("/tasks/claim", json!({"queue": ""})).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("queue"))
    );

    let (_, run) = h
        .post(
            "/runs",
            json!({"workflow": "refund", "input": {"ticket": "x", "customer": "Bo"}}),
        )
        .await;
    let id = run["id"].as_str().unwrap();
    assert_eq!(
        h.post(&format!("/runs/{id}/cancel"), json!({})).await.0,
        200
    );
    let (status, body) = h.post(&format!("/runs/{id}/cancel"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, list) = h.get("/runs?status=cancelled").await;
    assert_eq!((status, list["data"][0]["id"].as_str()), (200, Some(id)));
}

#[tokio::test]
async fn a_runs_cost_cap_holds_each_calls_worst_case_at_the_gateways_prices() {
    let h = support::start(SimConfig::default(), |_| {}).await;
    // Model m costs $2 per million output tokens: a call allowed the
    // default 4096 completion tokens may cost over $0.008; one capped at
    // 100 tokens, about $0.0002.
    let definition = "\
name: capped
limits: {max_cost_usd: 0.005}
agents:
  a: {model: m}
steps:
  - {id: short, kind: llm, agent: a, prompt: hi, max_tokens: 100}
  - {id: long, kind: llm, agent: a, prompt: hi, depends_on: [short]}
";
    assert_eq!(h.register(definition).await.0, 201);
    let (_, run) = h.post("/runs", json!({"workflow": "capped"})).await;
    let id = run["id"].as_str().unwrap();
    let view = h.run_until(id, |v| v["status"] != "running").await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(step(&view, "short")["status"], "succeeded");
    let error = view["error"].as_str().unwrap();
    assert!(
        error.contains("step 'long'") && error.contains("budget cannot cover"),
        "{error}"
    );
    assert_eq!(view["reserved_cost"], 0);
    assert!(view["cost"].as_u64().unwrap() > 0);
}
