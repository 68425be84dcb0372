//! Fault injection: each kind, in each place it applies.

use serde_json::json;

use super::*;

fn streamed(prompt: &str) -> Value {
    let mut body = chat(prompt);
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn rate_limited_sets_retry_after_in_both_dialects() -> Result<()> {
    let sim = start_with_faults(&["429:1"]).await?;
    let response = post(&sim, "/chat/completions", &chat("hi")).await?;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let anthropic = json!({"model": "claude", "max_tokens": 5, "messages": []});
    let response = post(&sim, "/messages", &anthropic).await?;
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await?;
    assert_eq!(
        (body["type"].clone(), body["error"]["type"].clone()),
        (json!("error"), json!("rate_limit_error"))
    );
    assert_eq!(sim.sim.stats().faults_by_kind["429"], 2);
    Ok(())
}

#[tokio::test]
async fn server_error_and_unavailable_have_their_statuses() -> Result<()> {
    let sim = start_with_faults(&["500:1:gpt", "503:1"]).await?;
    let (status, body) = post_json(&sim, "/chat/completions", &chat("hi")).await?;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (500, json!("server_error"))
    );

    let anthropic = json!({"model": "claude", "max_tokens": 5, "messages": []});
    let (status, body) = post_json(&sim, "/messages", &anthropic).await?;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (503, json!("overloaded_error"))
    );

    let embedding = json!({"model": "gpt-embed", "input": "x"});
    let (status, _) = post_json(&sim, "/embeddings", &embedding).await?;
    assert_eq!(status, 500);
    Ok(())
}

#[tokio::test]
async fn malformed_sends_200_with_invalid_json() -> Result<()> {
    let sim = start_with_faults(&["malformed:1"]).await?;
    let response = post(&sim, "/chat/completions", &chat("hi")).await?;
    assert_eq!(response.status(), 200);
    let text = response.text().await?;
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let received = receive(post(&sim, "/chat/completions", &streamed("hi")).await?).await;
    assert!(received.text.contains("data: {not json\n\n"));
    Ok(())
}

#[tokio::test]
async fn cut_stream_drops_connection_without_done() -> Result<()> {
    let sim = start_with_faults(&["cut:1"]).await?;
    let response = post(&sim, "/chat/completions", &streamed("cut me")).await?;
    assert_eq!(response.status(), 200);
    let received = receive(response).await;

    assert!(received.broken, "stream ended cleanly: {}", received.text);
    assert!(!received.text.contains("[DONE]"));
    // The role chunk and about half of the 16 words arrive first.
    assert_eq!(sse_data(&received.text).len(), 1 + 8);
    Ok(())
}

#[tokio::test]
async fn faulty_anthropic_streams_break_as_configured() -> Result<()> {
    let body = json!({"model": "claude", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});

    let sim = start_with_faults(&["cut:1"]).await?;
    let received = receive(post(&sim, "/messages", &body).await?).await;
    assert!(received.broken);
    assert!(!sse_names(&received.text).contains(&"message_stop"));

    let sim = start_with_faults(&["malformed:1"]).await?;
    let received = receive(post(&sim, "/messages", &body).await?).await;
    assert!(
        received
            .text
            .contains("event: content_block_delta\ndata: {not json\n\n")
    );
    assert_eq!(sse_names(&received.text).last(), Some(&"message_stop"));
    Ok(())
}

#[tokio::test]
async fn cut_plain_sends_truncated_json() -> Result<()> {
    let sim = start_with_faults(&["cut:1"]).await?;
    let received = receive(post(&sim, "/chat/completions", &chat("cut me")).await?).await;

    assert!(received.broken);
    assert!(
        received.text.starts_with(r#"{"id":"chatcmpl-sim-"#),
        "{}",
        received.text
    );
    assert!(serde_json::from_str::<Value>(&received.text).is_err());
    Ok(())
}

#[tokio::test]
async fn hang_never_sends_headers() -> Result<()> {
    let sim = start_with_faults(&["hang:1"]).await?;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()?;
    let err = quick
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&chat("hi"))
        .send()
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err}");
    assert_eq!(sim.sim.stats().faults_by_kind["hang"], 1);
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_releases_hung_requests() -> Result<()> {
    let sim = start_with_faults(&["hang:1"]).await?;
    let url = format!("{}/chat/completions", sim.base_url());
    let request = client()?.post(url).json(&chat("hi"));
    let hung = tokio::spawn(request.send());
    while sim.sim.stats().requests_total == 0 {
        tokio::task::yield_now().await;
    }

    tokio::time::timeout(Duration::from_secs(5), sim.shutdown()).await??;
    let response = hung.await??;
    assert_eq!(response.status(), 503);
    Ok(())
}

#[tokio::test]
async fn prefix_rules_only_hit_matching_models() -> Result<()> {
    let sim = start_with_faults(&["500:1:claude"]).await?;
    let (status, _) = post_json(&sim, "/chat/completions", &chat("hi")).await?;
    assert_eq!(status, 200);

    let mut claude = chat("hi");
    claude["model"] = json!("claude-haiku");
    let (status, _) = post_json(&sim, "/chat/completions", &claude).await?;
    assert_eq!(status, 500);
    Ok(())
}

#[tokio::test]
async fn zero_rate_never_fires() -> Result<()> {
    let sim = start_with_faults(&["500:0"]).await?;
    for _ in 0..5 {
        let (status, _) = post_json(&sim, "/chat/completions", &chat("hi")).await?;
        assert_eq!(status, 200);
    }
    assert_eq!(sim.sim.stats().faults_by_kind["500"], 0);
    Ok(())
}

#[test]
fn fault_rules_parse_or_explain() {
    let rule: FaultRule = "429:1:gpt-4o".parse().unwrap();
    assert_eq!(rule.kind, keel_sim::FaultKind::RateLimited);
    assert_eq!(rule.model_prefix.as_deref(), Some("gpt-4o"));

    let err = "teapot:0.5".parse::<FaultRule>().unwrap_err().to_string();
    assert!(
        err.contains("expected one of 429, 500, 503, hang, cut, malformed"),
        "{err}"
    );
    let err = "500:2".parse::<FaultRule>().unwrap_err().to_string();
    assert!(err.contains("outside 0..=1"), "{err}");
}
