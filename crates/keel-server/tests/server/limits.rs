//! Limits as clients meet them: a real `App` over HTTP against the
//! simulator, in process (the three-process Redis runs are in the `keel`
//! crate's tests, which start the binary).

use keel_core::Pricing;
use keel_limits::RuleSpec;
use keel_sim::SimConfig;
use keel_store::{Store, UsageQuery};
use serde_json::{Value, json};

use crate::support::{self, ADMIN, KEY, Running};

/// Output at $20 per million tokens, input free: a call's cost is exactly
/// its completion tokens times 20 micro-dollars, whatever the prompt.
fn pricing() -> Pricing {
    Pricing::from_dollars_per_mtok(0.0, 20.0).unwrap()
}

fn rule(json: &str) -> keel_limits::Rule {
    serde_json::from_str::<RuleSpec>(json)
        .unwrap()
        .check()
        .unwrap()
}

/// keel with `rules`, the free-input price, and `default_max` completion
/// tokens held for requests without a limit.
async fn start(sim: SimConfig, rules: &[&str], default_max: u32) -> Running {
    support::start(sim, |config| {
        config.gateway.models[0].deployments[0].pricing = pricing();
        config.limits.config.rules = rules.iter().map(|r| rule(r)).collect();
        config.limits.default_max_tokens = default_max;
    })
    .await
}

/// keel with one budget `rule` and the default completion hold, over a
/// simulator that answers 100 tokens (capped by each request's max_tokens).
async fn with_budget(rule: &str) -> Running {
    let sim = SimConfig {
        completion_tokens: 100,
        ..SimConfig::default()
    };
    start(sim, &[rule], 4_096).await
}

impl Running {
    fn chat(&self, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/chat/completions", self.app.base_url()))
            .bearer_auth(KEY)
            .json(body)
    }

    /// The whole body of a streamed chat request (which must start with a
    /// 200) in `session`.
    async fn stream_text(&self, max_tokens: u32, session: &str) -> String {
        let response = self
            .chat(&ask(Some(max_tokens), true))
            .header("x-keel-session", session)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// The status of a small chat request.
    async fn small_chat(&self) -> u16 {
        let response = self.chat(&ask(Some(5), false)).send().await.unwrap();
        response.status().as_u16()
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("http://{}/admin/v1{path}", self.app.addr))
            .bearer_auth(ADMIN)
    }
}

/// Cost and requests of a session, from the ledger.
async fn spent(store_url: &str, session: &str) -> (u64, u64) {
    {
        let store = Store::connect(store_url).await.unwrap();
        let totals = store
            .usage_totals(&UsageQuery {
                session: Some(session.into()),
                ..UsageQuery::default()
            })
            .await
            .unwrap();
        (
            u64::try_from(totals.cost_micros).unwrap(),
            u64::try_from(totals.requests).unwrap(),
        )
    }
}

fn ask(max_tokens: Option<u32>, stream: bool) -> Value {
    let mut body = json!({
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": "How much is too much?"}],
    });
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_requests_get_exactly_what_the_budget_fits() {
    // Each call answers exactly its max_tokens (50) at 20 µ$ a token: 1,000
    // µ$ worst case and real cost alike. A $0.01 budget fits ten.
    let h =
        with_budget(r#"{"id":"daily","scope":"tenant=t1","budget_usd":0.01,"period":"day"}"#).await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let request = h
                .chat(&ask(Some(50), false))
                .header("x-keel-session", "race");
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                let body: Value = response.json().await.unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let (status, retry_after, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            402 => {
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("daily") && message.contains("tenant=t1"),
                    "{message}"
                );
                assert!(retry_after.is_some(), "402 says when the window resets");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(ok, 10);
    h.app.shutdown().await;
    let (spent, requests) = spent(&h.store_url, "race").await;
    assert_eq!(requests, 200);
    assert_eq!(spent, 10_000, "spend is exactly the cap, never above it");
}

#[tokio::test]
async fn accepted_and_refused_requests_carry_rate_limit_headers() {
    let h = start(
        SimConfig::default(),
        &[
            r#"{"id":"rpm","scope":"tenant=t1","requests":3,"per":"1m"}"#,
            r#"{"id":"tpm","scope":"tenant=t1","tokens":100000,"per":"1m"}"#,
        ],
        4_096,
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let response = h.chat(&ask(Some(10), false)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(headers["x-ratelimit-remaining-requests"], remaining);
        assert_eq!(headers["x-ratelimit-limit-tokens"], "100000");
        assert!(headers.contains_key("x-ratelimit-remaining-tokens"));
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
    }
    let response = h.chat(&ask(Some(10), true)).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("rpm"));
    h.app.shutdown().await;
}

#[tokio::test]
async fn requests_without_max_tokens_hold_and_send_the_default() {
    let sim = SimConfig {
        completion_tokens: 100,
        ..SimConfig::default()
    };
    // 20 default tokens at 20 µ$ = 400 µ$ worst case per call.
    let h = start(
        sim,
        &[r#"{"id":"b","scope":"tenant=t1,session=*","budget_usd":0.0005,"period":"day"}"#],
        20,
    )
    .await;
    let response = h
        .chat(&ask(None, false))
        .header("x-keel-session", "capped")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 20, "{body}");
    // 100 µ$ are left: a second call's 400 µ$ worst case does not fit,
    // even though it might have been short.
    let response = h
        .chat(&ask(None, false))
        .header("x-keel-session", "capped")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    // Another session has a budget of its own.
    let response = h
        .chat(&ask(None, false))
        .header("x-keel-session", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    h.app.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_would_pass_its_cap_is_cut_with_an_error_event() {
    // The upstream ignores max_tokens and answers 400 tokens (8,000 µ$);
    // the budget is 3,000 µ$.
    let sim = SimConfig {
        completion_tokens: 400,
        ignore_max_tokens: true,
        ..SimConfig::default()
    };
    let h = start(
        sim,
        &[r#"{"id":"b","scope":"tenant=t1","budget_usd":0.003,"period":"day"}"#],
        4_096,
    )
    .await;
    let text = h.stream_text(50, "cut").await;
    assert!(!text.contains("[DONE]"), "a cut stream never ends cleanly");
    let last = text.lines().rfind(|l| l.starts_with("data: ")).unwrap();
    let event: Value = serde_json::from_str(&last["data: ".len()..]).unwrap();
    assert_eq!(event["error"]["code"], "budget_exceeded", "{event}");
    h.app.shutdown().await;
    let (spent, _) = spent(&h.store_url, "cut").await;
    assert!(spent <= 3_000, "spent {spent} µ$ of a 3,000 µ$ cap");
    assert!(spent > 1_000, "the stream ran past its first hold: {spent}");
}

#[tokio::test]
async fn a_stream_that_outgrows_its_first_hold_extends_it_and_ends_cleanly() {
    // keel counts the sim's answer with o200k, which finds a few more
    // tokens than the 50 the sim produced (its `sim:` tag splits into
    // several), so the stream passes its 1,000 µ$ hold and extends it into
    // the 300 µ$ of slack; then it ends with [DONE].
    let h =
        with_budget(r#"{"id":"b","scope":"tenant=t1","budget_usd":0.0013,"period":"day"}"#).await;
    let text = h.stream_text(50, "extend").await;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("budget_exceeded"), "{text}");
    h.app.shutdown().await;
    let (spent, _) = spent(&h.store_url, "extend").await;
    assert!(spent <= 1_300, "spent {spent}");
}

#[tokio::test]
async fn rules_and_blocks_change_at_runtime_through_the_admin_api() {
    let h = start(
        SimConfig::default(),
        &[r#"{"id":"from-config","scope":"tenant=t1","concurrency":100}"#],
        4_096,
    )
    .await;
    let post = |path: &str, body: Value| h.admin(reqwest::Method::POST, path).json(&body);

    // A bad rule is refused naming the field, and nothing changes.
    let response = post(
        "/limits/rules",
        json!({"id": "x", "scope": "tenant=t1", "requests": 1, "per": "1 fortnight"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "per", "{body}");
    let response = post(
        "/limits/rules",
        json!({"id": "x", "scope": "team=a", "requests": 1, "per": "1m"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let response = post(
        "/limits/rules",
        json!({"id": "x", "scope": "tenant=t1", "requests": -1, "per": "1m"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    // Config rules are changed in the config file.
    let response = h
        .admin(reqwest::Method::DELETE, "/limits/rules/from-config")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // A new rule holds from the next request on.
    let response = post(
        "/limits/rules",
        json!({"id": "one-per-hour", "scope": "tenant=t1", "requests": 1, "per": "1h"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(h.small_chat().await, 200);
    assert_eq!(h.small_chat().await, 429);
    let response = post(
        "/limits/rules",
        json!({"id": "one-per-hour", "scope": "tenant=t1", "requests": 1, "per": "1h"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 409, "POST does not replace");

    // Raising it lets requests through again; the one already made counts.
    let response = h
        .admin(reqwest::Method::PUT, "/limits/rules/one-per-hour")
        .json(&json!({"scope": "tenant=t1", "requests": 3, "per": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h.small_chat().await, 200);
    let listed: Value = h
        .admin(reqwest::Method::GET, "/limits/rules")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sources: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["config", "api"]);
    let response = h
        .admin(reqwest::Method::DELETE, "/limits/rules/one-per-hour")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h.small_chat().await, 200);

    // The kill switch.
    let response = post(
        "/blocks",
        json!({"scope": "tenant=t1", "reason": "runaway agent"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let response = h.chat(&ask(Some(5), false)).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("runaway agent")
    );
    let response = post("/blocks", json!({"scope": "tenant=*", "reason": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "blocks name exact scopes");
    let response = h
        .admin(reqwest::Method::DELETE, "/blocks/tenant%3Dt1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h.small_chat().await, 200);
    h.app.shutdown().await;
}

#[tokio::test]
async fn threshold_events_and_accounts_are_visible_to_admins() {
    // Each call costs 1,000 µ$ of a 2,000 µ$ budget: the first crosses 50 %.
    let h = with_budget(
        r#"{"id":"b","scope":"tenant=t1","budget_usd":0.002,"period":"month","thresholds":[50,100]}"#,
    )
    .await;
    assert_eq!(
        h.chat(&ask(Some(50), false)).send().await.unwrap().status(),
        200
    );
    let events: Value = h
        .admin(reqwest::Method::GET, "/limits/events")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["data"][0]["percent"], 50, "{events}");
    assert_eq!(events["data"][0]["rule"], "b", "{events}");
    let account: Value = h
        .admin(
            reqwest::Method::GET,
            "/limits/accounts?rule=b&scope=tenant%3Dt1",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["spent_micros"], 1_000, "{account}");
    assert_eq!(account["held_micros"], 0, "{account}");
    let metrics = h
        .client
        .get(format!("http://{}/metrics", h.app.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keel_budget_threshold_crossings_total{rule=\"b\",percent=\"50\"} 1"),
        "{metrics}"
    );
    h.app.shutdown().await;
}
