//! Several `keel serve` processes sharing one Redis (127.0.0.1:6379, or
//! `KEEL_TEST_REDIS_URL`) enforce one set of limits: a budget that fits ten
//! calls admits exactly ten of 200 spread over three processes, a rate limit
//! admits within 1 % of its limit, and a process killed mid-request frees
//! its concurrency slot once its lease ends. Processes whose vectors live in
//! one pgvector database share one response cache.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::path::Path;
use std::time::Duration;

use keel_sim::{SimConfig, SpawnedSim};
use serde_json::{Value, json};

use crate::process::Server;

const KEY: &str = "sk-keel-distributed-test";
const ADMIN: &str = "distributed-admin";

fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The config every process shares: one model on the simulator at $20 per
/// million output tokens (input free), one tenant, its key, and `rules`.
fn write_config(dir: &Path, sim: &SpawnedSim, prefix: &str, extra: &str) -> std::path::PathBuf {
    let config = format!(
        r#"
[store]
data_dir = "{data}"
redis_url = "{redis}"
redis_prefix = "{prefix}"

[limits]
lease_secs = 2

[[providers]]
name = "sim"
base_url = "{sim}"

[[models]]
name = "m"
[[models.deployments]]
provider = "sim"
model = "gpt-4o-mini"
output_per_mtok = 20.0

[[tenants]]
id = "t1"

[[keys]]
tenant = "t1"
secret = "{KEY}"
{extra}
"#,
        data = dir.join("data").display(),
        redis = redis_url(),
        sim = sim.base_url(),
    );
    let path = dir.join("keel.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("keel-test:{test}:{}:{nanos}", std::process::id())
}

/// Starts `n` processes on one Redis prefix, each with its own SQLite
/// store, and waits until all are ready.
async fn start(
    n: usize,
    sim: &SpawnedSim,
    test: &str,
    rules: &str,
) -> (Vec<Server>, Vec<tempfile::TempDir>) {
    let prefix = unique_prefix(test);
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), sim, &prefix, rules);
        servers.push(Server::spawn(&config, &[("KEEL_ADMIN_TOKEN", ADMIN)]));
        dirs.push(dir);
    }
    for server in &servers {
        server.ready().await;
    }
    (servers, dirs)
}

fn chat(client: &reqwest::Client, server: &Server, body: &Value) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(KEY)
        .json(body)
}

/// Sends `n` requests, `concurrency` at a time, round-robin over the
/// servers; returns how many were admitted and the statuses of the rest.
async fn fire(servers: &[Server], n: usize, concurrency: usize, body: Value) -> (usize, Vec<u16>) {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|i| {
            let request = chat(&client, &servers[i % servers.len()], &body);
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.into_iter().filter(|s| *s != 200).collect();
    (ok, refused)
}

async fn account(server: &Server, rule: &str) -> Value {
    reqwest::Client::new()
        .get(format!(
            "{}/admin/v1/limits/accounts?rule={rule}&scope=tenant%3Dt1",
            server.base
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_never_overspend_one_budget() {
    // Every call answers exactly its 50 max tokens: 1,000 µ$ held and spent.
    let sim = keel_sim::spawn(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        completion_tokens: 100,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let rules = r#"
[[limits.rules]]
id = "daily"
scope = "tenant=t1"
budget_usd = 0.01
period = "day"
"#;
    let (servers, _dirs) = start(3, &sim, "budget", rules).await;
    let body = json!({"model": "m", "max_tokens": 50,
        "messages": [{"role": "user", "content": "spend"}]});
    let (ok, refused) = fire(&servers, 200, 200, body).await;
    assert_eq!(ok, 10, "exactly the affordable requests succeed");
    assert!(refused.iter().all(|s| *s == 402), "{refused:?}");

    // Settlements land just after the responses.
    let mut last = Value::Null;
    for _ in 0..100 {
        last = account(&servers[1], "daily").await;
        if last["held_micros"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last["spent_micros"], 10_000, "{last}");
    assert_eq!(last["held_micros"], 0, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_admit_within_one_percent_of_a_rate_limit() {
    let sim = keel_sim::spawn(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let rules = r#"
[[limits.rules]]
id = "hourly"
scope = "tenant=t1"
requests = 300
per = "1h"
"#;
    let (servers, _dirs) = start(3, &sim, "rate", rules).await;
    let body = json!({"model": "m", "max_tokens": 5,
        "messages": [{"role": "user", "content": "count me"}]});
    let (ok, refused) = fire(&servers, 600, 32, body).await;
    assert!((297..=303).contains(&ok), "admitted {ok} of a limit of 300");
    assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_frees_its_slot_when_its_lease_ends() {
    // Answers take 10 s: long enough to kill the process mid-answer.
    let sim = keel_sim::spawn(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        completion_tokens: 100,
        tokens_per_sec: 10.0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let rules = r#"
[[limits.rules]]
id = "one-at-a-time"
scope = "tenant=t1"
concurrency = 1
"#;
    let (mut servers, _dirs) = start(2, &sim, "lease", rules).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "take your time"}]});
    let streaming = chat(&client, &servers[0], &body).send().await.unwrap();
    assert_eq!(streaming.status(), 200);
    let quick = json!({"model": "m", "max_tokens": 1,
        "messages": [{"role": "user", "content": "me too"}]});
    let busy = chat(&client, &servers[1], &quick).send().await.unwrap();
    assert_eq!(busy.status(), 429, "the slot is taken");

    // Kill the holder without a chance to release anything.
    let killed = servers.remove(0);
    drop(killed);
    drop(streaming);
    let still_busy = chat(&client, &servers[0], &quick).send().await.unwrap();
    assert_eq!(still_busy.status(), 429, "held until the lease ends");
    // The lease is 2 s; the slot must come free after it, without anyone
    // releasing it. (Real processes cannot share a paused clock; the
    // lease arithmetic itself is tested on a hand-advanced clock in
    // keel-limits.)
    let mut status = 429;
    for _ in 0..100 {
        status = chat(&client, &servers[0], &quick)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the lease freed the slot");
}

/// Two processes whose response cache lives in one pgvector database: an
/// answer one generates, the other serves (repeated and paraphrased), and
/// an invalidation through one holds for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_response_cache_on_pgvector() {
    let sim = keel_sim::spawn(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let vectors = keel_vector::testing::scratch_database("keel_cli_cache")
        .await
        .expect("a pgvector server (scripts/pgvector.sh starts one)");
    let shared = format!(
        r#"
[[embedders]]
name = "hash"
kind = "hashing"
dimension = 256
[vectors]
url = "{vectors}"
[cache]
embedder = "hash"
threshold = 0.5
"#
    );
    let (servers, _dirs) = start(2, &sim, "cache", &shared).await;
    let client = reqwest::Client::new();
    let ask = |server: &Server, question: &str, control: &str| {
        chat(
            &client,
            server,
            &json!({"model": "m", "temperature": 0,
                    "messages": [{"role": "user", "content": question}]}),
        )
        .header("cache-control", control)
        .send()
    };
    let kind = |r: &reqwest::Response| {
        r.headers()
            .get("x-keel-cache")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let question = "What is the capital of France?";
    let first = ask(&servers[0], question, "").await.unwrap();
    assert_eq!(kind(&first).as_deref(), Some("miss"));
    let generated: Value = first.json().await.unwrap();

    // The fill is stored off the request path: poll the other process
    // (no-store, so its misses store nothing of their own).
    let mut served = None;
    for _ in 0..200 {
        let r = ask(&servers[1], question, "no-store").await.unwrap();
        if kind(&r).as_deref() == Some("exact") {
            served = Some(r.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        served.as_ref(),
        Some(&generated),
        "the other process serves it"
    );
    let paraphrase = ask(
        &servers[1],
        "What is the capital city of France?",
        "no-store",
    )
    .await
    .unwrap();
    assert_eq!(kind(&paraphrase).as_deref(), Some("semantic"));

    let invalidated = client
        .post(format!("{}/admin/v1/cache/invalidate", servers[0].base))
        .bearer_auth(ADMIN)
        .json(&json!({"tenant": "t1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalidated.status(), 200);
    let after = ask(&servers[1], question, "no-store").await.unwrap();
    assert_eq!(kind(&after).as_deref(), Some("miss"), "gone for both");
}
