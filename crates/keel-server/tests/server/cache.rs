//! The response cache through the HTTP API: hits and their headers,
//! `Cache-Control`, streamed fills and replays, tenants, identical requests
//! at once, stale answers when upstreams fail, invalidation, and what the
//! ledger and metrics record. Questions are embedded by the hashing
//! embedder, so no model is needed; the threshold is set for it.

use std::time::Duration;

use keel_cache::CacheSettings;
use keel_core::TenantId;
use keel_limits::Clock;
use keel_server::{AppConfig, CacheSetup, EmbedderKind, EmbedderSpec};
use keel_sim::{ConfigUpdate, FaultKind, FaultRule, SimConfig};
use keel_store::{Store, UsageQuery};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::support::{self, ADMIN, KEY, Running};

const KEY2: &str = "sk-keel-test-key-2";

fn with_cache(config: &mut AppConfig, clock: Clock) {
    config.retrieval.embedders.push(EmbedderSpec {
        name: "hash".into(),
        kind: EmbedderKind::Hashing { dimension: 256 },
        max_batch: 32,
    });
    config.cache = Some(CacheSetup {
        settings: CacheSettings {
            threshold: 0.5,
            ttl: Duration::from_secs(60),
            ..CacheSettings::default()
        },
        embedder: Some("hash".into()),
        stale_models: vec!["m".into()],
        clock,
        ..CacheSetup::default()
    });
    let t2 = TenantId::new("t2").unwrap();
    config.keys.push(support::key(&t2, KEY2));
    config.tenants.push((t2, "T2".into()));
}

async fn start(sim: SimConfig) -> Running {
    support::start(sim, |c| with_cache(c, Clock::system())).await
}

fn ask(question: &str) -> Value {
    json!({"model": "m", "temperature": 0, "messages": [
        {"role": "system", "content": "You answer geography questions."},
        {"role": "user", "content": question},
    ]})
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn cache(&self) -> &str {
        self.headers
            .get("x-keel-cache")
            .map_or("-", |v| v.to_str().unwrap())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn content(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

async fn post(running: &Running, key: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = running
        .client
        .post(format!("{}/chat/completions", running.app.base_url()))
        .bearer_auth(key)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

fn upstream_calls(running: &Running) -> u64 {
    running.sim.sim.stats().requests_total
}

/// Waits until every answer generated so far is stored: fills run off the
/// request path, and until one is stored identical requests are answered
/// from its flight, and paraphrases miss.
async fn settled(running: &Running) {
    let cache = &running.app.state.cache.as_ref().unwrap().cache;
    for _ in 0..400 {
        if cache.flights().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fills never finished");
}

/// `body` answered once every earlier answer is stored; sent with
/// `no-store`, so that a miss does not store an answer of its own.
async fn until_cached(running: &Running, body: &Value, session: &str) -> Answer {
    settled(running).await;
    let headers = [("x-keel-session", session), ("cache-control", "no-store")];
    let answer = post(running, KEY, body, &headers).await;
    assert_ne!(
        answer.cache(),
        "miss",
        "not served from the cache: {}",
        answer.body
    );
    answer
}

#[tokio::test]
async fn repeats_and_paraphrases_are_served_from_the_cache_and_accounted() {
    let running = start(SimConfig::default()).await;
    let q = ask("What is the capital of France?");
    let first = post(&running, KEY, &q, &[("x-keel-session", "s1")]).await;
    assert_eq!(
        (first.status, first.cache()),
        (200, "miss"),
        "{}",
        first.body
    );
    assert_eq!(upstream_calls(&running), 1);

    let again = until_cached(&running, &q, "s1").await;
    assert_eq!(again.cache(), "exact");
    assert_eq!(again.json(), first.json(), "the stored answer, verbatim");
    assert!(again.header("age").is_some());
    assert!(
        again.header("x-keel-deployment").is_none(),
        "no upstream served it"
    );

    let paraphrase = ask("What is the capital city of France?");
    let semantic = until_cached(&running, &paraphrase, "s1").await;
    assert_eq!(semantic.cache(), "semantic");
    assert_eq!(semantic.content(), first.content());
    let similarity: f32 = semantic
        .header("x-keel-cache-similarity")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.5..=1.0).contains(&similarity), "{similarity}");

    // A different question is a miss, and a near miss the guard catches is
    // one too.
    for question in ["What is the capital of Spain?", "Name a river in Peru"] {
        let other = post(&running, KEY, &ask(question), &[("x-keel-session", "s2")]).await;
        assert_eq!(other.cache(), "miss", "{question}");
        assert_ne!(other.content(), first.content(), "{question}");
    }
    assert_eq!(upstream_calls(&running), 3);

    let metrics = running
        .client
        .get(format!("http://{}/metrics", running.app.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"keel_cache_lookups_total{tenant="t1",kind="exact"}"#,
        r#"keel_cache_lookups_total{tenant="t1",kind="semantic"}"#,
        r#"keel_cache_saved_cost_micros_total{tenant="t1",model="m"}"#,
        r#"keel_cache_guard_vetoes_total{reason="entities"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // Savings show per session in the usage trend (the ledger writes in
    // batches, so wait for the rows).
    let mut session = Value::Null;
    for _ in 0..200 {
        let trend: Value = running
            .client
            .get(format!("{}/usage?group_by=session", running.app.base_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        session = trend["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["group"] == "s1")
            .cloned()
            .unwrap_or(Value::Null);
        if session["cache_hits"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(session["cache_hits"], 2, "{session}");
    assert!(session["saved_cost_micros"].as_i64() > Some(0), "{session}");

    let url = running.store_url.clone();
    running.app.shutdown().await;
    let store = Store::connect(&url).await.unwrap();
    let query = UsageQuery {
        session: Some("s1".into()),
        ..UsageQuery::default()
    };
    let rows = store.usage(&query).await.unwrap();
    let misses: Vec<_> = rows
        .iter()
        .filter(|r| r.cache.as_deref() == Some("miss"))
        .collect();
    assert_eq!(misses.len(), 1);
    let miss = misses[0];
    assert!(miss.cost_micros > 0);
    let hits: Vec<_> = rows
        .iter()
        .filter(|r| matches!(r.cache.as_deref(), Some("exact" | "semantic")))
        .collect();
    assert_eq!(hits.len(), 2);
    for hit in &hits {
        assert_eq!(
            (hit.cost_micros, hit.prompt_tokens, hit.completion_tokens),
            (0, 0, 0)
        );
        assert_eq!(hit.saved_cost_micros, miss.cost_micros);
        assert_eq!(hit.saved_prompt_tokens, miss.prompt_tokens);
        assert_eq!(hit.saved_completion_tokens, miss.completion_tokens);
        assert_eq!(hit.deployment, None);
    }
    let totals = store.usage_totals(&query).await.unwrap();
    assert_eq!(totals.cache_hits, 2);
    assert_eq!(totals.saved_cost_micros, 2 * miss.cost_micros);
}

#[tokio::test]
async fn cache_control_skips_lookups_or_stores() {
    let running = start(SimConfig::default()).await;
    let q = ask("What is the capital of France?");

    let unstored = post(&running, KEY, &q, &[("cache-control", "no-store")]).await;
    assert_eq!(unstored.cache(), "miss");
    // Nothing was stored: the next one goes upstream too, and is stored.
    let stored = post(&running, KEY, &q, &[]).await;
    assert_eq!(stored.cache(), "miss");
    assert_eq!(upstream_calls(&running), 2);
    until_cached(&running, &q, "-").await;

    let fresh = post(
        &running,
        KEY,
        &q,
        &[("Cache-Control", "max-age=0, No-Cache")],
    )
    .await;
    assert_eq!((fresh.status, fresh.cache()), (200, "miss"));
    assert_eq!(upstream_calls(&running), 3, "no-cache went upstream");
}

#[tokio::test]
async fn streams_fill_the_cache_and_hits_replay_as_streams() {
    let running = start(SimConfig::default()).await;
    let mut q = ask("What is the capital of France?");
    q["stream"] = json!(true);
    let first = post(&running, KEY, &q, &[]).await;
    assert_eq!((first.status, first.cache()), (200, "miss"));
    let streamed = text_of_stream(&first.body);

    let replay = until_cached(&running, &q, "-").await;
    assert_eq!(replay.cache(), "exact");
    assert_eq!(replay.header("content-type"), Some("text/event-stream"));
    assert!(replay.body.ends_with("data: [DONE]\n\n"), "{}", replay.body);
    assert_eq!(text_of_stream(&replay.body), streamed);

    // The stream's answer serves plain requests, and usage is replayed
    // only when asked for.
    q["stream"] = json!(false);
    let plain = post(&running, KEY, &q, &[]).await;
    assert_eq!(
        (plain.cache(), plain.content()),
        ("exact", streamed.clone())
    );
    q["stream"] = json!(true);
    q["stream_options"] = json!({"include_usage": true});
    let with_usage = post(&running, KEY, &q, &[]).await;
    let events = events_of(&with_usage.body);
    assert!(events.last().unwrap()["usage"]["completion_tokens"].as_u64() > Some(0));
    assert!(
        events_of(&replay.body)
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null))
    );
    assert_eq!(upstream_calls(&running), 1);
}

fn events_of(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn text_of_stream(body: &str) -> String {
    events_of(body)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn tenants_never_see_each_others_answers() {
    let running = start(SimConfig::default()).await;
    let q = ask("What is the capital of France?");
    post(&running, KEY, &q, &[]).await;
    until_cached(&running, &q, "-").await;
    // The other tenant stores nothing (no-store), so any hit it got could
    // only be the first tenant's answer; it may still look up.
    for question in [
        "What is the capital of France?",
        "What is the capital city of France?",
    ] {
        let other = post(
            &running,
            KEY2,
            &ask(question),
            &[("cache-control", "no-store")],
        )
        .await;
        assert_eq!((other.status, other.cache()), (200, "miss"), "{question}");
    }
    assert_eq!(upstream_calls(&running), 3);
}

#[tokio::test]
async fn identical_requests_at_once_share_one_generation() {
    let running = start(SimConfig {
        ttft_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let q = ask("Summarise the plot of Hamlet");
    let answers = futures::future::join_all((0..20).map(|_| post(&running, KEY, &q, &[]))).await;
    let first = answers[0].content();
    let mut kinds: Vec<&str> = answers.iter().map(Answer::cache).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds.iter().filter(|k| **k == "miss").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 && a.content() == first)
    );
    assert_eq!(upstream_calls(&running), 1, "one generation for all twenty");
}

#[tokio::test]
async fn a_failed_route_serves_a_stale_answer_marked_stale() {
    let clock = Clock::manual(1_700_000_000_000);
    let running = support::start(SimConfig::default(), |c| with_cache(c, clock.clone())).await;
    let q = ask("What is the capital of France?");
    let first = post(&running, KEY, &q, &[]).await;
    until_cached(&running, &q, "-").await;
    clock.advance(Duration::from_secs(120));

    running
        .sim
        .sim
        .update_config(ConfigUpdate {
            faults: Some(vec![FaultRule {
                kind: FaultKind::ServerError,
                rate: 1.0,
                model_prefix: None,
            }]),
            ..ConfigUpdate::default()
        })
        .unwrap();
    let stale = post(&running, KEY, &q, &[]).await;
    assert_eq!(
        (stale.status, stale.cache()),
        (200, "stale"),
        "{}",
        stale.body
    );
    assert_eq!(stale.content(), first.content());
    assert_eq!(stale.header("age"), Some("120"));

    // Past its TTL the entry is not served while upstreams answer, nor to
    // a client that asked for a fresh answer, nor for another question.
    let refused = post(&running, KEY, &q, &[("cache-control", "no-cache")]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let unknown = post(&running, KEY, &ask("Name a river in Peru"), &[]).await;
    assert_eq!(unknown.status, 503, "{}", unknown.body);
    running
        .sim
        .sim
        .update_config(ConfigUpdate {
            faults: Some(Vec::new()),
            ..ConfigUpdate::default()
        })
        .unwrap();
    running.app.state.gateway.reset_breaker("d");
    let renewed = post(&running, KEY, &q, &[]).await;
    assert_eq!((renewed.status, renewed.cache()), (200, "miss"));
}

#[tokio::test]
async fn admins_invalidate_by_tenant_model_or_all() {
    let running = start(SimConfig::default()).await;
    let q = ask("What is the capital of France?");
    for key in [KEY, KEY2] {
        post(&running, key, &q, &[]).await;
    }
    settled(&running).await;
    let invalidate = |body: Value| {
        running
            .client
            .post(format!(
                "http://{}/admin/v1/cache/invalidate",
                running.app.addr
            ))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };

    for (body, param) in [
        (json!({}), "tenant"),
        (json!({"tenant": "t1", "all": true}), "tenant"),
        (json!({"tenant": "not a tenant!"}), "tenant"),
        (json!({"all": true, "model": "nope"}), "model"),
    ] {
        let response = invalidate(body.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let unauthorised = running
        .client
        .post(format!(
            "http://{}/admin/v1/cache/invalidate",
            running.app.addr
        ))
        .bearer_auth(KEY)
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);

    let response = invalidate(json!({"tenant": "t1", "model": "m"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["deleted"], 1, "{done}");
    assert_eq!(post(&running, KEY, &q, &[]).await.cache(), "miss");
    assert_eq!(post(&running, KEY2, &q, &[]).await.cache(), "exact");

    let response = invalidate(json!({"all": true})).await.unwrap();
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["tenants"], json!(["t1", "t2"]), "{done}");
    assert_eq!(post(&running, KEY2, &q, &[]).await.cache(), "miss");
}
