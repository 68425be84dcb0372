//! `GET /v1/usage` end to end: a real `App` against a real simulator,
//! requests from several users, tenants and workflows, then the trend and
//! week-over-week figures checked against the ledger they come from.

use std::time::Duration;

use keel_core::{Cost, TenantId};
use keel_sim::SimConfig;
use keel_store::{Store, UsageQuery};
use serde_json::{Value, json};

use crate::support::{self, ADMIN, KEY as T1_KEY, Running};

/// t2's only key.
const T2_KEY: &str = "sk-keel-usage-t2";

impl Running {
    /// keel with a second tenant, t2, and its key. No rules: these tests
    /// are about accounting, not admission.
    async fn start_with_t2() -> Running {
        support::start(SimConfig::default(), |config| {
            let t2 = TenantId::new("t2").unwrap();
            config.keys.push(support::key(&t2, T2_KEY));
            config.tenants.push((t2, "T2".into()));
        })
        .await
    }

    /// Creates a user of t1 and a key for them through the admin API.
    async fn user_key(&self, user: &str) -> String {
        let admin = format!("http://{}/admin/v1", self.app.addr);
        let response = self
            .client
            .post(format!("{admin}/tenants/t1/users"))
            .bearer_auth(ADMIN)
            .json(&json!({"id": user}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let created: Value = self
            .client
            .post(format!("{admin}/keys"))
            .bearer_auth(ADMIN)
            .json(&json!({"tenant": "t1", "user": user}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["secret"].as_str().unwrap().to_owned()
    }

    /// Sends one chat completion for `model` with optional attribution.
    async fn chat_as(&self, key: &str, model: &str, workflow: Option<&str>) -> u16 {
        let mut request = self
            .client
            .post(format!("{}/chat/completions", self.app.base_url()))
            .bearer_auth(key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(workflow) = workflow {
            request = request.header("x-keel-workflow", workflow);
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// `GET /v1/usage?{query}` as `key`: status and body.
    async fn usage(&self, key: &str, query: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/usage?{query}", self.app.base_url()))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Polls the trend until the ledger has written `requests` rows for the
    /// key's tenant; false if it never does.
    async fn ledger_holds(&self, key: &str, requests: i64) -> bool {
        for _ in 0..200 {
            let (_, body) = self.usage(key, "bucket=week").await;
            if sum(&body["data"], None, "requests") == requests {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }
}

/// Sums `field` over the entries of `group` (every entry when `None`),
/// across buckets: the requests may straddle a bucket edge.
fn sum(data: &Value, group: Option<Option<&str>>, field: &str) -> i64 {
    data.as_array()
        .unwrap()
        .iter()
        .filter(|e| group.is_none_or(|g| e["group"].as_str() == g))
        .map(|e| e[field].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn trend_sums_the_callers_tenant_per_user_and_week() {
    let h = Running::start_with_t2().await;
    let alice = h.user_key("alice").await;
    let bob = h.user_key("bob").await;

    assert_eq!(h.chat_as(&alice, "m", Some("triage")).await, 200);
    assert_eq!(h.chat_as(&alice, "m", None).await, 200);
    assert_eq!(h.chat_as(&alice, "no-such-model", None).await, 404);
    assert_eq!(h.chat_as(&bob, "m", Some("triage")).await, 200);
    assert_eq!(h.chat_as(T1_KEY, "m", None).await, 200);
    assert_eq!(h.chat_as(T2_KEY, "m", Some("triage")).await, 200);
    assert!(h.ledger_holds(&alice, 5).await);
    assert!(h.ledger_holds(T2_KEY, 1).await);

    let (status, body) = h.usage(&bob, "group_by=user&bucket=day").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "usage.trend");
    assert_eq!(
        (&body["bucket"], &body["group_by"]),
        (&json!("day"), &json!("user"))
    );
    let data = &body["data"];
    assert_eq!(sum(data, Some(Some("alice")), "requests"), 3);
    assert_eq!(sum(data, Some(Some("alice")), "errors"), 1);
    assert_eq!(sum(data, Some(Some("bob")), "requests"), 1);
    assert_eq!(
        sum(data, Some(None), "requests"),
        1,
        "the key without a user"
    );

    // Each user's figures are the ledger's, to the micro-dollar.
    let store = Store::connect(&h.store_url).await.unwrap();
    for user in ["alice", "bob"] {
        let ledger = store
            .usage_totals(&UsageQuery {
                user_id: Some(user.into()),
                ..UsageQuery::default()
            })
            .await
            .unwrap();
        let group = Some(Some(user));
        assert_eq!(sum(data, group, "prompt_tokens"), ledger.prompt_tokens);
        assert_eq!(
            sum(data, group, "completion_tokens"),
            ledger.completion_tokens
        );
        assert_eq!(sum(data, group, "total_tokens"), ledger.total_tokens());
        assert_eq!(sum(data, group, "cost_micros"), ledger.cost_micros);
        assert!(ledger.cost_micros > 0);
    }
    for entry in data.as_array().unwrap() {
        let start = entry["bucket_start_ms"].as_i64().unwrap();
        assert_eq!(start % 86_400_000, 0, "days start at midnight UTC: {entry}");
        assert!(
            entry["bucket_start"]
                .as_str()
                .unwrap()
                .ends_with("T00:00:00Z")
        );
        let micros = u64::try_from(entry["cost_micros"].as_i64().unwrap()).unwrap();
        assert_eq!(entry["cost_usd"], Cost(micros).dollars_exact());
    }

    // Everything happened this week, so there is no ratio to a zero week.
    let weeks = body["week_over_week"].as_array().unwrap();
    let alice_week = weeks.iter().find(|w| w["group"] == "alice").unwrap();
    assert_eq!(alice_week["this_week"]["requests"], 3);
    assert_eq!(alice_week["previous_week"]["requests"], 0);
    assert_eq!(alice_week["cost_change"], Value::Null);

    // Filters narrow within the tenant; `to` before every request empties
    // the trend.
    let (_, triage) = h.usage(&alice, "group_by=workflow&workflow=triage").await;
    assert_eq!(sum(&triage["data"], Some(Some("triage")), "requests"), 2);
    let (_, past) = h
        .usage(&alice, "from=2024-01-01T00:00:00Z&to=1704153600000")
        .await;
    assert_eq!(past["data"], json!([]));
    h.app.shutdown().await;
}

#[tokio::test]
async fn a_key_sees_only_its_own_tenant() {
    let h = Running::start_with_t2().await;
    assert_eq!(h.chat_as(T1_KEY, "m", None).await, 200);
    assert_eq!(h.chat_as(T1_KEY, "m", None).await, 200);
    assert_eq!(h.chat_as(T2_KEY, "m", None).await, 200);
    assert!(h.ledger_holds(T1_KEY, 2).await);
    assert!(h.ledger_holds(T2_KEY, 1).await);

    let (_, t2) = h.usage(T2_KEY, "group_by=tenant&bucket=hour").await;
    let groups: Vec<&str> = t2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["group"].as_str().unwrap())
        .collect();
    assert!(groups.iter().all(|g| *g == "t2"), "{t2}");
    assert_eq!(sum(&t2["data"], None, "requests"), 1);

    // There is no tenant parameter to reach another tenant with.
    let (status, body) = h.usage(T2_KEY, "tenant=t1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");

    let unauthenticated = h
        .client
        .get(format!("{}/usage", h.app.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    h.app.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_get_400s_naming_them() {
    let h = Running::start_with_t2().await;
    let cases = [
        ("bucket=month", "bucket", "hour, day, week"),
        (
            "group_by=model",
            "group_by",
            "tenant, user, workflow, session",
        ),
        ("from=last-tuesday", "from", "RFC 3339"),
        ("from=2000&to=1000", "from", "before"),
    ];
    for (query, param, hint) in cases {
        let (status, body) = h.usage(T1_KEY, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let error = &body["error"];
        assert_eq!(error["code"], "invalid_request", "{body}");
        assert_eq!(error["param"], param, "{body}");
        assert!(error["message"].as_str().unwrap().contains(hint), "{body}");
    }
    h.app.shutdown().await;
}
