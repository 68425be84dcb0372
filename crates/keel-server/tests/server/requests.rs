//! keel-server end to end in-process: a real `App` over HTTP against a real
//! simulator, checking what the Python suite cannot see from outside —
//! ledger rows after shutdown, draining, abandoned streams.

use std::time::Duration;

use keel_sim::SimConfig;
use keel_store::{Store, UsageQuery};
use serde_json::{Value, json};

use crate::support::{self, KEY, Running};

async fn start(sim: SimConfig) -> (Running, String) {
    let running = support::start(sim, |_| {}).await;
    let url = running.store_url.clone();
    (running, url)
}

fn body(prompt: &str, stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_flushes_the_ledger() {
    let (running, url) = start(SimConfig {
        ttft_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let app = running.app;
    let endpoint = format!("{}/chat/completions", app.base_url());

    // Requests are in flight (the sim holds each for 300 ms) when shutdown
    // starts; every one must still complete.
    let client = reqwest::Client::new();
    let mut in_flight = Vec::new();
    for i in 0..8 {
        let request = client
            .post(&endpoint)
            .bearer_auth(KEY)
            .header("x-keel-session", "drain")
            .json(&body(&format!("q{i}"), i % 2 == 0))
            .send();
        in_flight.push(tokio::spawn(async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.shutdown().await;
    for task in in_flight {
        let (status, text) = task.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("sim:"), "{text}");
    }

    let store = Store::connect(&url).await.unwrap();
    let query = UsageQuery {
        session: Some("drain".into()),
        ..UsageQuery::default()
    };
    let rows = store.usage(&query).await.unwrap();
    assert_eq!(rows.len(), 8, "every drained request has its ledger row");
    assert!(
        rows.iter()
            .all(|r| r.status == 200 && r.tenant_id == "t1" && r.cost_micros > 0)
    );
    assert_eq!(rows.iter().filter(|r| r.stream).count(), 4);
}

#[tokio::test]
async fn abandoned_streams_are_still_recorded() {
    let (running, url) = start(SimConfig {
        tokens_per_sec: 20.0,
        completion_tokens: 200,
        ..SimConfig::default()
    })
    .await;
    let app = running.app;
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", app.base_url()))
        .bearer_auth(KEY)
        .header("x-keel-session", "gone")
        .json(&body("long", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);

    // The row is written once keel notices the client left.
    let store = Store::connect(&url).await.unwrap();
    let query = UsageQuery {
        session: Some("gone".into()),
        ..UsageQuery::default()
    };
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = store.usage(&query).await.unwrap();
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 499);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_are_accounted() {
    let (running, url) = start(SimConfig::default()).await;
    let app = running.app;
    let client = reqwest::Client::new();
    let endpoint = format!("{}/chat/completions", app.base_url());
    let cases: Vec<(Vec<u8>, u16, &str, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json", None),
        (
            br#"{"model": "m"}"#.to_vec(),
            400,
            "invalid_request",
            Some("messages"),
        ),
        (
            br#"{"model": "m", "messages": "hi"}"#.to_vec(),
            400,
            "invalid_request",
            Some("messages"),
        ),
        (
            br#"{"model": "zzz", "messages": [{"role": "user", "content": "x"}]}"#.to_vec(),
            404,
            "model_not_found",
            Some("model"),
        ),
        (vec![b' '; 70 * 1024], 413, "payload_too_large", None),
    ];
    for (payload, status, code, param) in cases {
        let response = client
            .post(&endpoint)
            .bearer_auth(KEY)
            .header("x-keel-session", "bad")
            .body(payload)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
        assert_eq!(error["error"]["param"].as_str(), param, "{error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    let unauthorized = client
        .post(&endpoint)
        .json(&body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    app.shutdown().await;
    let store = Store::connect(&url).await.unwrap();
    let query = UsageQuery {
        session: Some("bad".into()),
        ..UsageQuery::default()
    };
    let totals = store.usage_totals(&query).await.unwrap();
    assert_eq!((totals.requests, totals.errors), (5, 5));
}
