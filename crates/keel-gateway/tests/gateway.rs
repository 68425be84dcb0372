//! The gateway against a real `keel sim` over HTTP: routing, failover,
//! breakers, retries, timeouts, streams and both dialects.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on bad fixtures"
)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_core::ErrorCode;
use keel_core::chat::ChatRequest;
use keel_core::embeddings::EmbeddingRequest;
use keel_gateway::{
    BreakerConfig, DeploymentConfig, Gateway, GatewayConfig, ModelConfig, ModelKind,
    ProviderConfig, ProviderKind, RetryPolicy, Timeouts,
};
use keel_sim::{FaultKind, FaultRule, SimConfig, SpawnedSim};
use keel_telemetry::Metrics;
use serde_json::json;

fn fault(kind: FaultKind, prefix: &str) -> FaultRule {
    FaultRule {
        kind,
        rate: 1.0,
        model_prefix: Some(prefix.to_owned()),
    }
}

async fn sim(faults: Vec<FaultRule>) -> SpawnedSim {
    keel_sim::spawn(SimConfig {
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn provider(name: &str, kind: ProviderKind, sim: &SpawnedSim) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        kind,
        base_url: sim.base_url(),
        api_key: Some("sk-upstream".into()),
        connect_timeout: Duration::from_secs(2),
        max_idle_per_host: 8,
    }
}

fn deployment(
    name: &str,
    provider: &str,
    model: &str,
    priority: u32,
    weight: u32,
) -> DeploymentConfig {
    DeploymentConfig {
        name: Arc::from(name),
        provider: provider.into(),
        upstream_model: model.into(),
        priority,
        weight,
        pricing: keel_core::Pricing::from_dollars_per_mtok(1.0, 2.0).unwrap(),
    }
}

fn model(name: &str, deployments: Vec<DeploymentConfig>) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        kind: ModelKind::Chat,
        deployments,
        fallbacks: Vec::new(),
        timeouts: Timeouts {
            first_byte: Duration::from_secs(5),
            ..Timeouts::default()
        },
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_retry_after: Duration::from_millis(500),
        },
        breaker: BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
            success_threshold: 1,
        },
    }
}

/// Model `m`: deployment `a` serving `faulty_model` first, then `b` on
/// `backup_provider` serving a healthy model.
fn primary_and_backup(faulty_model: &str, backup_provider: &str) -> ModelConfig {
    model(
        "m",
        vec![
            deployment("a", "oa", faulty_model, 0, 1),
            deployment("b", backup_provider, "y", 1, 1),
        ],
    )
}

fn gateway(sim: &SpawnedSim, models: Vec<ModelConfig>) -> Gateway {
    let config = GatewayConfig {
        providers: vec![
            provider("oa", ProviderKind::OpenAi, sim),
            provider("an", ProviderKind::Anthropic, sim),
        ],
        models,
    };
    Gateway::new(config, Metrics::new()).unwrap()
}

fn chat(model: &str, prompt: &str, stream: bool) -> ChatRequest {
    serde_json::from_value(json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}],
    }))
    .unwrap()
}

fn tag(prompt: &str) -> String {
    keel_sim::answer_for(prompt, 1)
}

async fn stream_text(gw: &Gateway, request: &ChatRequest) -> (String, Vec<ErrorCode>, String) {
    let stream = gw.chat_stream(request).await.unwrap();
    let items: Vec<_> = stream.chunks.collect().await;
    let mut text = String::new();
    let mut errors = Vec::new();
    for item in items {
        match item {
            Ok(chunk) => {
                for c in chunk.choices {
                    text.push_str(c.delta.content.as_deref().unwrap_or_default());
                }
            }
            Err(e) => errors.push(e.code),
        }
    }
    (text, errors, stream.served.deployment.to_string())
}

#[tokio::test]
async fn serves_a_plain_completion_with_usage() {
    let sim = sim(vec![]).await;
    let gw = gateway(
        &sim,
        vec![model("m", vec![deployment("d1", "oa", "up", 0, 1)])],
    );
    let (completion, served) = gw.chat(&chat("m", "hello there", false)).await.unwrap();
    let text = completion.choices[0].message.content_text();
    assert!(text.starts_with(&tag("hello there")), "{text}");
    assert!(completion.usage.unwrap().completion_tokens > 0);
    assert_eq!(&*served.deployment, "d1");
    assert_eq!(served.attempts, 1);
    assert!(!served.failed_over);
}

#[tokio::test]
async fn anthropic_dialect_gives_the_same_answer_as_openai() {
    let sim = sim(vec![]).await;
    let gw = gateway(
        &sim,
        vec![
            model("gpt", vec![deployment("oa-d", "oa", "gpt-x", 0, 1)]),
            model("claude", vec![deployment("an-d", "an", "claude-x", 0, 1)]),
        ],
    );
    let (a, _) = gw.chat(&chat("gpt", "same prompt", false)).await.unwrap();
    let (b, _) = gw
        .chat(&chat("claude", "same prompt", false))
        .await
        .unwrap();
    assert_eq!(
        a.choices[0].message.content_text(),
        b.choices[0].message.content_text()
    );
    assert_eq!(b.choices[0].finish_reason.as_deref(), Some("stop"));
    let (streamed, errors, _) = stream_text(&gw, &chat("claude", "same prompt", true)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        streamed.trim_end(),
        a.choices[0].message.content_text().trim_end()
    );
}

#[tokio::test]
async fn fails_over_and_opens_the_breaker() {
    let sim = sim(vec![fault(FaultKind::ServerError, "bad")]).await;
    let gw = gateway(
        &sim,
        vec![model(
            "m",
            vec![
                deployment("primary", "oa", "bad-up", 0, 1),
                deployment("backup", "oa", "good-up", 1, 1),
            ],
        )],
    );
    for _ in 0..2 {
        let (_, served) = gw.chat(&chat("m", "q", false)).await.unwrap();
        assert_eq!(&*served.deployment, "backup");
        assert_eq!(served.attempts, 2);
        assert!(served.failed_over);
    }
    let primary = gw
        .breakers()
        .into_iter()
        .find(|b| b.deployment == "primary")
        .unwrap();
    assert_eq!(primary.state, "open");

    // While open, the primary is skipped without a request reaching it.
    sim.sim.reset_stats();
    let (_, served) = gw.chat(&chat("m", "q", false)).await.unwrap();
    assert_eq!(served.attempts, 1);
    assert_eq!(sim.sim.stats().requests_by_model.get("bad-up"), None);

    assert!(gw.reset_breaker("primary"));
    assert_eq!(gw.breakers()[0].state, "closed");
}

#[tokio::test]
async fn every_deployment_failing_is_a_clear_retryable_error() {
    let sim = sim(vec![fault(FaultKind::Unavailable, "")]).await;
    let gw = gateway(
        &sim,
        vec![model(
            "m",
            vec![
                deployment("a", "oa", "x", 0, 1),
                deployment("b", "oa", "y", 0, 1),
            ],
        )],
    );
    let err = gw.chat(&chat("m", "q", false)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UpstreamUnavailable);
    assert!(err.retry_after.unwrap() >= Duration::from_secs(1));
    assert!(err.message.contains("\"m\""), "{}", err.message);
    assert!(err.attempts >= 2);

    // With both breakers now open, the next call fails fast and says why.
    let err = gw.chat(&chat("m", "q", false)).await.unwrap_err();
    assert_eq!(err.attempts, 0);
    assert!(
        err.message.contains("circuit breakers open"),
        "{}",
        err.message
    );
    assert!(err.retry_after.unwrap() >= Duration::from_secs(1));
}

#[tokio::test]
async fn long_retry_after_is_returned_to_the_client() {
    // The sim asks for 1 s; this model waits at most 500 ms inside a request.
    let sim = sim(vec![fault(FaultKind::RateLimited, "")]).await;
    let gw = gateway(
        &sim,
        vec![model("m", vec![deployment("a", "oa", "x", 0, 1)])],
    );
    let err = gw.chat(&chat("m", "q", false)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UpstreamRateLimited);
    assert_eq!(err.attempts, 1);
    assert!(err.retry_after.unwrap() >= Duration::from_secs(1));
}

#[tokio::test]
async fn rate_limited_primary_fails_over_at_once() {
    let sim = sim(vec![fault(FaultKind::RateLimited, "busy")]).await;
    let gw = gateway(&sim, vec![primary_and_backup("busy-x", "oa")]);
    let (_, served) = gw.chat(&chat("m", "q", false)).await.unwrap();
    assert_eq!(&*served.deployment, "b");
}

#[tokio::test]
async fn hung_upstream_times_out_and_fails_over() {
    let sim = sim(vec![fault(FaultKind::Hang, "hang")]).await;
    let mut m = primary_and_backup("hang-x", "oa");
    m.timeouts.first_byte = Duration::from_millis(200);
    let gw = gateway(&sim, vec![m]);
    let (_, served) = gw.chat(&chat("m", "q", false)).await.unwrap();
    assert_eq!(&*served.deployment, "b");
    assert_eq!(served.attempts, 2);
}

#[tokio::test]
async fn malformed_responses_fail_over() {
    let sim = sim(vec![fault(FaultKind::Malformed, "junk")]).await;
    let gw = gateway(&sim, vec![primary_and_backup("junk-x", "oa")]);
    let (_, served) = gw.chat(&chat("m", "q", false)).await.unwrap();
    assert_eq!(&*served.deployment, "b");
}

#[tokio::test]
async fn malformed_event_mid_stream_ends_it_with_an_error() {
    // The sim sends good events, then one malformed event half-way.
    let sim = keel_sim::spawn(SimConfig {
        completion_tokens: 20,
        faults: vec![fault(FaultKind::Malformed, "")],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gw = gateway(
        &sim,
        vec![model("m", vec![deployment("a", "oa", "x", 0, 1)])],
    );
    let (text, errors, _) = stream_text(&gw, &chat("m", "q", true)).await;
    assert!(text.starts_with(&tag("q")));
    assert_eq!(errors, vec![ErrorCode::UpstreamBadResponse]);
}

#[tokio::test]
async fn stream_failing_before_first_byte_fails_over() {
    let sim = sim(vec![fault(FaultKind::ServerError, "bad")]).await;
    let gw = gateway(&sim, vec![primary_and_backup("bad-x", "an")]);
    let (text, errors, deployment) = stream_text(&gw, &chat("m", "stream me", true)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(deployment, "b");
    assert!(text.starts_with(&tag("stream me")), "{text}");
}

#[tokio::test]
async fn stream_cut_mid_way_ends_with_an_error() {
    let sim = keel_sim::spawn(SimConfig {
        completion_tokens: 40,
        faults: vec![fault(FaultKind::CutStream, "")],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    for provider in ["oa", "an"] {
        let gw = gateway(
            &sim,
            vec![model("m", vec![deployment("a", provider, "x", 0, 1)])],
        );
        let (text, errors, _) = stream_text(&gw, &chat("m", "long answer", true)).await;
        assert!(
            !text.is_empty(),
            "{provider}: some content arrived before the cut"
        );
        assert_eq!(
            errors.len(),
            1,
            "{provider}: exactly one error ends the stream"
        );
    }
}

#[tokio::test]
async fn falls_back_to_another_model() {
    let sim = sim(vec![fault(FaultKind::ServerError, "bad")]).await;
    let mut primary = model("primary", vec![deployment("p", "oa", "bad-x", 0, 1)]);
    primary.fallbacks = vec!["spare".into()];
    let gw = gateway(
        &sim,
        vec![
            primary,
            model("spare", vec![deployment("s", "an", "y", 0, 1)]),
        ],
    );
    let (_, served) = gw.chat(&chat("primary", "q", false)).await.unwrap();
    assert_eq!(served.model, "spare");
    assert_eq!(&*served.deployment, "s");
}

#[tokio::test]
async fn equal_priorities_share_traffic_by_weight() {
    let sim = sim(vec![]).await;
    let gw = gateway(
        &sim,
        vec![model(
            "m",
            vec![
                deployment("heavy", "oa", "x", 0, 3),
                deployment("light", "oa", "y", 0, 1),
            ],
        )],
    );
    let mut heavy = 0;
    for i in 0..200 {
        let (_, served) = gw.chat(&chat("m", &format!("q{i}"), false)).await.unwrap();
        heavy += usize::from(&*served.deployment == "heavy");
    }
    // Expected 150 of 200; the band is about five standard deviations.
    assert!((120..=180).contains(&heavy), "{heavy}");
}

#[tokio::test]
async fn embeddings_route_and_wrong_kinds_are_refused() {
    let sim = sim(vec![]).await;
    let mut embed = model("e", vec![deployment("ed", "oa", "emb", 0, 1)]);
    embed.kind = ModelKind::Embedding;
    let gw = gateway(
        &sim,
        vec![embed, model("c", vec![deployment("cd", "oa", "x", 0, 1)])],
    );
    let request: EmbeddingRequest =
        serde_json::from_value(json!({"model": "e", "input": ["a", "b"], "dimensions": 8}))
            .unwrap();
    let (response, _) = gw.embed(&request).await.unwrap();
    assert_eq!(response.data.len(), 2);
    assert_eq!(response.data[0]["embedding"].as_array().unwrap().len(), 8);

    let err = gw.chat(&chat("e", "q", false)).await.unwrap_err();
    assert_eq!(
        (err.code, err.param.as_deref()),
        (ErrorCode::InvalidRequest, Some("model"))
    );
    let err = gw.chat(&chat("nope", "q", false)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ModelNotFound);
}
