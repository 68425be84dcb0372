//! `POST /v1/chat/completions` and `GET /v1/models`.

use keel_sim::{answer_for, count_tokens};
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn plain_chat_has_openai_shape_and_usage() -> Result<()> {
    let sim = start().await?;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]});
    let (status, reply) = post_json(&sim, "/chat/completions", &body).await?;

    assert_eq!(status, 200);
    assert!(reply["id"].as_str().unwrap().starts_with("chatcmpl-sim-"));
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "gpt-4o-mini");
    assert!(reply["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &reply["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], answer_for("hello there", 16));
    assert_eq!(choice["finish_reason"], "stop");

    let prompt_tokens = count_tokens("be brief") + count_tokens("hello there") + 2 * 3;
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 16,
            "total_tokens": prompt_tokens + 16})
    );
    Ok(())
}

#[tokio::test]
async fn answers_are_deterministic_per_prompt() -> Result<()> {
    let sim = start().await?;
    let content = |reply: &Value| reply["choices"][0]["message"]["content"].clone();

    let (_, first) = post_json(&sim, "/chat/completions", &chat("alpha")).await?;
    let (_, again) = post_json(&sim, "/chat/completions", &chat("alpha")).await?;
    let (_, other) = post_json(&sim, "/chat/completions", &chat("beta")).await?;

    assert_eq!(content(&first), content(&again));
    let tag = |reply: &Value| content(reply).as_str().unwrap()[..12].to_owned();
    assert_ne!(tag(&first), tag(&other));
    Ok(())
}

#[tokio::test]
async fn prompt_is_last_user_message_text_parts() -> Result<()> {
    let sim = start().await?;
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": [{"type": "text", "text": "new "}, {"type": "text", "text": "one"}]},
    ]});
    let (_, reply) = post_json(&sim, "/chat/completions", &body).await?;
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        answer_for("new one", 16)
    );
    Ok(())
}

#[tokio::test]
async fn max_tokens_caps_answer_with_finish_reason_length() -> Result<()> {
    let sim = start().await?;
    let mut body = chat("cap me");
    body["max_completion_tokens"] = json!(3);
    let (_, reply) = post_json(&sim, "/chat/completions", &body).await?;

    assert_eq!(
        reply["choices"][0]["message"]["content"],
        answer_for("cap me", 3)
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    Ok(())
}

#[tokio::test]
async fn stream_sends_role_words_finish_usage_and_done() -> Result<()> {
    let sim = start().await?;
    let mut body = chat("stream me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post(&sim, "/chat/completions", &body).await?;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let received = receive(response).await;
    assert!(!received.broken);

    let data = sse_data(&received.text);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );

    // 16 word chunks follow the role chunk, then finish, then usage.
    assert_eq!(chunks.len(), 1 + 16 + 2);
    let words: String = chunks[1..17]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(words, answer_for("stream me", 16));
    assert_eq!(chunks[17]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[17]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[18]["choices"], json!([]));
    assert_eq!(chunks[18]["usage"]["completion_tokens"], 16);
    Ok(())
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() -> Result<()> {
    let sim = start().await?;
    let mut body = chat("no usage");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(2);
    let received = receive(post(&sim, "/chat/completions", &body).await?).await;

    let data = sse_data(&received.text);
    assert_eq!(data.len(), 1 + 2 + 1 + 1);
    assert!(!received.text.contains("usage"));
    assert!(data[3].contains(r#""finish_reason":"length""#));
    Ok(())
}

#[tokio::test]
async fn stream_is_paced_and_first_byte_delayed() -> Result<()> {
    let config = SimConfig {
        ttft_ms: 50,
        tokens_per_sec: 200.0,
        ..SimConfig::default()
    };
    let sim = keel_sim::spawn(config).await?;
    let mut body = chat("slow");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(5);

    let started = std::time::Instant::now();
    let response = post(&sim, "/chat/completions", &body).await?;
    assert!(started.elapsed() >= Duration::from_millis(50));
    receive(response).await;
    // Four 5 ms gaps between the five words.
    assert!(started.elapsed() >= Duration::from_millis(70));
    Ok(())
}

#[tokio::test]
async fn missing_messages_is_openai_invalid_request() -> Result<()> {
    let sim = start().await?;
    let (status, reply) = post_json(&sim, "/chat/completions", &json!({"model": "m"})).await?;

    assert_eq!(status, 400);
    assert_eq!(reply["error"]["type"], "invalid_request_error");
    assert_eq!(reply["error"]["param"], "messages");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages")
    );

    let (status, reply) = post_json(&sim, "/chat/completions", &json!({"messages": []})).await?;
    assert_eq!(
        (status, reply["error"]["param"].clone()),
        (400, json!("model"))
    );
    assert_eq!(sim.sim.stats().invalid_requests, 2);
    Ok(())
}

#[tokio::test]
async fn models_lists_fixed_models() -> Result<()> {
    let sim = start().await?;
    let list: Value = client()?
        .get(format!("{}/models", sim.base_url()))
        .send()
        .await?
        .json()
        .await?;

    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert!(data.iter().any(|m| m["id"] == "gpt-4o"));
    assert!(
        data.iter()
            .all(|m| m["object"] == "model" && m["owned_by"] == "keel-sim")
    );
    Ok(())
}
