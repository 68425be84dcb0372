//! The `/sim` control API: runtime config, stats and reset.

use keel_sim::SimStats;
use serde_json::json;

use super::*;

fn control_url(sim: &SpawnedSim, path: &str) -> String {
    format!("http://{}/sim/{path}", sim.addr)
}

#[tokio::test]
async fn put_config_changes_faults_at_runtime() -> Result<()> {
    let sim = start().await?;
    let (status, _) = post_json(&sim, "/chat/completions", &chat("hi")).await?;
    assert_eq!(status, 200);

    let update = json!({"faults": ["503:1", {"kind": "429", "rate": 0.5, "model_prefix": "x"}]});
    let response = client()?
        .put(control_url(&sim, "config"))
        .json(&update)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let (status, _) = post_json(&sim, "/chat/completions", &chat("hi")).await?;
    assert_eq!(status, 503);

    let config: Value = client()?
        .get(control_url(&sim, "config"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        config["faults"][0],
        json!({"kind": "503", "rate": 1.0, "model_prefix": null})
    );
    assert_eq!(config["faults"][1]["model_prefix"], "x");
    assert_eq!(config["completion_tokens"], 16);
    Ok(())
}

#[tokio::test]
async fn get_config_round_trips_through_put() -> Result<()> {
    let sim = start().await?;
    let config: Value = client()?
        .get(control_url(&sim, "config"))
        .send()
        .await?
        .json()
        .await?;
    let response = client()?
        .put(control_url(&sim, "config"))
        .json(&config)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn put_config_rejects_bad_values_and_keeps_old_config() -> Result<()> {
    let sim = start().await?;
    for update in [
        json!({"faults": ["500:1.5"]}),
        json!({"faults": [{"kind": "500", "rate": -0.1}]}),
        json!({"faults": ["404:1"]}),
        json!({"tokens_per_sec": -3}),
        json!({"embedding_dim": 0}),
        json!({"listen": "127.0.0.1:1"}),
        json!({"fault": ["500:1"]}),
    ] {
        let response = client()?
            .put(control_url(&sim, "config"))
            .json(&update)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{update}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["type"], "invalid_request_error", "{update}");
    }
    assert!(sim.sim.config().faults.is_empty());
    Ok(())
}

#[tokio::test]
async fn stats_count_requests_and_reset_zeroes_them() -> Result<()> {
    let sim = start_with_faults(&["500:1:claude"]).await?;
    post(&sim, "/chat/completions", &chat("hi")).await?;
    post(&sim, "/chat/completions", &chat("hi")).await?;
    let anthropic = json!({"model": "claude", "max_tokens": 5, "messages": []});
    post(&sim, "/messages", &anthropic).await?;

    let stats: SimStats = client()?
        .get(control_url(&sim, "stats"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(stats.requests_total, 3);
    assert_eq!(stats.requests_by_model["gpt-4o"], 2);
    assert_eq!(stats.requests_by_model["claude"], 1);
    assert_eq!(stats.faults_by_kind["500"], 1);

    let response = client()?.post(control_url(&sim, "reset")).send().await?;
    assert_eq!(response.status(), 204);
    assert_eq!(sim.sim.stats().requests_total, 0);
    assert_eq!(sim.sim.stats().faults_total(), 0);
    Ok(())
}

#[tokio::test]
async fn unknown_path_is_json_404() -> Result<()> {
    let sim = start().await?;
    let response = client()?
        .get(format!("{}/nope", sim.base_url()))
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "not_found");
    Ok(())
}
