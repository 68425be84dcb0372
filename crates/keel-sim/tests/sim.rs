//! Integration tests of keel-sim: real HTTP requests with reqwest against a
//! simulator started with `keel_sim::spawn`.
//!
//! Shared helpers live here; each endpoint family has a module under
//! `tests/sim/`.

#[path = "sim/anthropic.rs"]
mod anthropic;
#[path = "sim/control.rs"]
mod control;
#[path = "sim/embeddings.rs"]
mod embeddings;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/openai.rs"]
mod openai;

use std::time::Duration;

use anyhow::{Context, Result};
use keel_sim::{FaultRule, SimConfig, SpawnedSim};
use serde_json::{Value, json};

/// Starts a simulator with default settings plus `faults`.
async fn start_with_faults(faults: &[&str]) -> Result<SpawnedSim> {
    let faults = faults
        .iter()
        .map(|rule| rule.parse::<FaultRule>())
        .collect::<Result<_, _>>()?;
    Ok(keel_sim::spawn(SimConfig {
        faults,
        ..SimConfig::default()
    })
    .await?)
}

/// Starts a simulator with default settings.
async fn start() -> Result<SpawnedSim> {
    start_with_faults(&[]).await
}

/// A client that gives up quickly, so a broken simulator fails tests fast.
fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// POSTs `body` as JSON to `path` under the `/v1` base URL.
async fn post(sim: &SpawnedSim, path: &str, body: &Value) -> Result<reqwest::Response> {
    let url = format!("{}{path}", sim.base_url());
    Ok(client()?
        .post(url)
        .header("authorization", "Bearer sk-anything")
        .json(body)
        .send()
        .await?)
}

/// POSTs and decodes a JSON answer, returning its status too.
async fn post_json(sim: &SpawnedSim, path: &str, body: &Value) -> Result<(u16, Value)> {
    let response = post(sim, path, body).await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.context("body is not JSON")?))
}

/// A chat request with one user message.
fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
}

/// A streamed body read chunk by chunk: the text received and whether the
/// connection broke before the body ended.
struct Received {
    text: String,
    broken: bool,
}

async fn receive(mut response: reqwest::Response) -> Received {
    let mut bytes = Vec::new();
    let broken = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    Received {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        broken,
    }
}

/// The `data:` payloads of a server-sent event stream, in order.
fn sse_data(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .collect()
}

/// The `event:` names of a server-sent event stream, in order.
fn sse_names(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("event: ")))
        .collect()
}
