//! Workflow runs survive `kill -9`: 100 runs are started, the process
//! running them is killed mid-way, and after a restart (SQLite) or on the
//! processes left (PostgreSQL, three sharing one database) every run
//! finishes, no step that had finished ran again, and nothing is lost.
//! Also `keel run` driving a server as a user would.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_sim::{SimConfig, SpawnedSim};
use serde_json::{Value, json};

use crate::process::Server;

const KEY: &str = "sk-keel-flow-crash";
const RUNS: usize = 100;

const WORKFLOW: &str = "\
name: crash
agents:
  a: {model: m}
steps:
  - {id: first, kind: llm, agent: a, prompt: 'first {{ input.n }}'}
  - {id: left, kind: llm, agent: a, prompt: 'left {{ steps.first.text }}', depends_on: [first]}
  - {id: right, kind: llm, agent: a, prompt: 'right {{ input.n }}', depends_on: [first]}
  - {id: both, kind: join, depends_on: [left, right]}
";

/// A config on the simulator, with short leases so a dead process's steps
/// are taken over quickly, on `store_url` (SQLite under `dir` if `None`).
fn write_config(dir: &Path, sim: &SpawnedSim, store_url: Option<&str>) -> PathBuf {
    let workflow = dir.join("crash.yaml");
    std::fs::write(&workflow, WORKFLOW).unwrap();
    let url = store_url
        .map(|u| format!("url = \"{u}\""))
        .unwrap_or_default();
    let config = format!(
        r#"
[store]
data_dir = "{data}"
{url}

[flow]
lease_ms = 1500
poll_interval_ms = 50
batch = 16
[[flow.workflows]]
tenant = "t1"
file = "{workflow}"

[cache]
enabled = false

[[providers]]
name = "sim"
base_url = "{sim}"

[[models]]
name = "m"
[[models.deployments]]
provider = "sim"
model = "gpt-4o-mini"

[[tenants]]
id = "t1"

[[keys]]
tenant = "t1"
secret = "{KEY}"
"#,
        data = dir.join("data").display(),
        workflow = workflow.display(),
        sim = sim.base_url(),
    );
    let path = dir.join("keel.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A simulator slow enough (200 ms to the first token) that runs are
/// still going when the process dies.
async fn slow_sim() -> SpawnedSim {
    keel_sim::spawn(SimConfig {
        ttft_ms: 200,
        completion_tokens: 8,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Starts the runs (idempotency keys `run-0` …) through `server`; their ids.
async fn start_runs(client: &reqwest::Client, server: &Server, expect: u16) -> Vec<String> {
    let mut ids = Vec::with_capacity(RUNS);
    for n in 0..RUNS {
        let body =
            json!({"workflow": "crash", "input": {"n": n}, "idempotency_key": format!("run-{n}")});
        let (status, run) = call(
            client,
            reqwest::Method::POST,
            format!("{}/v1/runs", server.base),
            Some(body),
        )
        .await;
        assert_eq!(status, expect, "{run}");
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// How many of the tenant's runs have `status`.
async fn count(client: &reqwest::Client, server: &Server, status: &str) -> usize {
    let url = format!("{}/v1/runs?status={status}&limit=1000", server.base);
    let (_, list) = call(client, reqwest::Method::GET, url, None).await;
    list["data"].as_array().map_or(0, Vec::len)
}

/// Waits until `at_least` runs succeeded (bounded; times nothing).
async fn wait_for(client: &reqwest::Client, server: &Server, at_least: usize) -> usize {
    for _ in 0..3000 {
        let done = count(client, server, "succeeded").await;
        if done >= at_least {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {at_least} runs succeeded in time");
}

/// Waits until the simulator has answered `calls` model calls: a third
/// of the 300 the runs make is mid-way through every run's steps.
async fn wait_for_calls(sim: &SpawnedSim, calls: u64) -> u64 {
    for _ in 0..3000 {
        let made = sim.sim.stats().requests_total;
        if made >= calls {
            return made;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {calls} model calls were made in time");
}

/// Every run succeeded with its output; in every step, no attempt came
/// after the one that succeeded; returns how many attempts the kill lost.
async fn check_runs(client: &reqwest::Client, server: &Server, ids: &[String]) -> usize {
    let mut lost = 0;
    for id in ids {
        let (_, view) = call(
            client,
            reqwest::Method::GET,
            format!("{}/v1/runs/{id}", server.base),
            None,
        )
        .await;
        assert_eq!(view["status"], "succeeded", "{view}");
        assert!(view["output"]["both"]["left"]["text"].is_string(), "{view}");
        for step in view["steps"].as_array().unwrap() {
            let key = step["key"].as_str().unwrap();
            let attempts: Vec<&Value> = view["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["key"] == key)
                .collect();
            let succeeded: Vec<_> = attempts
                .iter()
                .filter(|a| a["status"] == "succeeded")
                .collect();
            assert_eq!(succeeded.len(), 1, "run {id} step {key}: {attempts:?}");
            let at = succeeded[0]["attempt"].as_u64().unwrap();
            assert!(
                attempts
                    .iter()
                    .all(|a| a["attempt"].as_u64().unwrap() <= at),
                "run {id} step {key} ran again after it finished: {attempts:?}"
            );
            lost += attempts.iter().filter(|a| a["status"] == "lost").count();
        }
    }
    lost
}

#[tokio::test]
async fn runs_survive_kill_9_on_sqlite() {
    let sim = slow_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, None);
    let client = reqwest::Client::new();

    let mut server = Server::spawn(&config, &[]);
    server.ready().await;
    let ids = start_runs(&client, &server, 201).await;
    let calls = wait_for_calls(&sim, 100).await;
    server.kill();
    assert!(
        calls < 300,
        "the kill must land mid-way, but {calls} calls were made"
    );

    let server = Server::spawn(&config, &[]);
    server.ready().await;
    // Starting again with the same keys finds the same runs: none lost,
    // none doubled.
    assert_eq!(start_runs(&client, &server, 200).await, ids);
    wait_for(&client, &server, RUNS).await;
    assert_eq!(count(&client, &server, "running").await, 0);
    let lost = check_runs(&client, &server, &ids).await;
    assert!(lost > 0, "some steps were mid-way when the process died");
}

#[tokio::test]
async fn runs_survive_kill_9_of_one_of_three_processes_on_postgres() {
    let sim = slow_sim().await;
    let url = keel_vector::testing::scratch_database("keel_cli_flow_crash")
        .await
        .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<Server> = dirs
        .iter()
        .map(|dir| Server::spawn(&write_config(dir.path(), &sim, Some(&url)), &[]))
        .collect();
    for server in &servers {
        server.ready().await;
    }
    let client = reqwest::Client::new();
    let ids = start_runs(&client, &servers[1], 201).await;
    let calls = wait_for_calls(&sim, 100).await;
    servers[0].kill();
    assert!(
        calls < 300,
        "the kill must land mid-way, but {calls} calls were made"
    );

    wait_for(&client, &servers[1], RUNS).await;
    assert_eq!(count(&client, &servers[2], "running").await, 0);
    let lost = check_runs(&client, &servers[2], &ids).await;
    assert!(lost > 0, "some steps were mid-way when the process died");
}

// Multi-threaded: the CLI runs as a blocking child process while the
// simulator answers on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_run_registers_starts_follows_and_answers() {
    let sim = keel_sim::spawn(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, None);
    let server = Server::spawn(&config, &[]);
    server.ready().await;
    let approval = dir.path().join("approval.yaml");
    std::fs::write(
        &approval,
        "name: approval\nsteps:\n  - {id: ok, kind: human, prompt: 'Ship {{ input.what }}?'}\n",
    )
    .unwrap();
    let keel = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("run")
            .args(args)
            .env("KEEL_URL", &server.base)
            .env("KEEL_API_KEY", KEY)
            .env_remove("KEEL_LOG")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), out, err)
    };

    let (ok, out, err) = keel(&["register", approval.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "registered approval version 1\n");
    let (ok, out, err) = keel(&["start", "approval", "--input", r#"{"what": "v2"}"#]);
    assert!(ok, "{err}");
    let id = out.trim().to_owned();

    // The person is asked; `status` shows the question.
    let mut status = String::new();
    for _ in 0..500 {
        status = keel(&["status", &id]).1;
        if status.contains("asks: Ship v2?") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(status.contains("ok                   waiting"), "{status}");
    let (ok, _, err) = keel(&["signal", &id, "ok", "--output", r#"{"approved": true}"#]);
    assert!(ok, "{err}");
    let (ok, out, err) = keel(&["start", "crash", "--input", r#"{"n": 1}"#, "--wait"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(": succeeded"), "{out}");
    let (_, list, _) = keel(&["list", "--status", "succeeded"]);
    assert!(list.contains(&id), "{list}");

    let (ok, _, err) = keel(&["start", "nothing"]);
    assert!(
        !ok && err.contains("workflow \"nothing\" is not registered"),
        "{err}"
    );
    let (ok, _, err) = keel(&["start", "crash", "--input", "[1]"]);
    assert!(
        !ok && err.contains("--input must be a JSON object"),
        "{err}"
    );
}
