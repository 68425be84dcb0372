//! `POST /v1/messages`, the Anthropic Messages API.

use keel_sim::{answer_for, count_tokens};
use serde_json::{Value, json};

use super::*;

fn message(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": "claude-sonnet-4",
        "max_tokens": max_tokens,
        "system": "be kind",
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
    })
}

#[tokio::test]
async fn plain_message_has_anthropic_shape() -> Result<()> {
    let sim = start().await?;
    let (status, reply) = post_json(&sim, "/messages", &message("hi claude", 100)).await?;

    assert_eq!(status, 200);
    assert!(reply["id"].as_str().unwrap().starts_with("msg_sim_"));
    assert_eq!(reply["type"], "message");
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["model"], "claude-sonnet-4");
    assert_eq!(
        reply["content"],
        json!([{"type": "text", "text": answer_for("hi claude", 16)}])
    );
    assert_eq!(reply["stop_reason"], "end_turn");
    assert_eq!(reply["stop_sequence"], Value::Null);

    let input_tokens = count_tokens("hi claude") + 3 + count_tokens("be kind");
    assert_eq!(
        reply["usage"],
        json!({"input_tokens": input_tokens, "output_tokens": 16})
    );
    Ok(())
}

#[tokio::test]
async fn small_max_tokens_stops_with_max_tokens() -> Result<()> {
    let sim = start().await?;
    let (_, reply) = post_json(&sim, "/messages", &message("short", 4)).await?;

    assert_eq!(reply["content"][0]["text"], answer_for("short", 4));
    assert_eq!(reply["stop_reason"], "max_tokens");
    assert_eq!(reply["usage"]["output_tokens"], 4);
    Ok(())
}

#[tokio::test]
async fn stream_follows_anthropic_event_order() -> Result<()> {
    let sim = start().await?;
    let mut body = message("stream claude", 5);
    body["stream"] = json!(true);
    let response = post(&sim, "/messages", &body).await?;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let received = receive(response).await;

    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 5]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(sse_names(&received.text), expected);

    let data: Vec<Value> = sse_data(&received.text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let names = sse_names(&received.text);
    assert!(data.iter().zip(&names).all(|(d, name)| d["type"] == *name));

    let start = &data[0]["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );

    let text: String = data[3..8]
        .iter()
        .inspect(|d| assert_eq!(d["delta"]["type"], "text_delta"))
        .map(|d| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, answer_for("stream claude", 5));

    assert_eq!(
        data[9]["delta"],
        json!({"stop_reason": "max_tokens", "stop_sequence": null})
    );
    assert_eq!(data[9]["usage"]["output_tokens"], 5);
    Ok(())
}

#[tokio::test]
async fn missing_max_tokens_is_anthropic_invalid_request() -> Result<()> {
    let sim = start().await?;
    let body = json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]});
    let (status, reply) = post_json(&sim, "/messages", &body).await?;

    assert_eq!(status, 400);
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["error"]["type"], "invalid_request_error");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    Ok(())
}

#[tokio::test]
async fn same_prompt_gets_same_answer_in_both_dialects() -> Result<()> {
    let sim = start().await?;
    let (_, anthropic) = post_json(&sim, "/messages", &message("shared", 100)).await?;
    let (_, openai) = post_json(&sim, "/chat/completions", &chat("shared")).await?;

    assert_eq!(
        anthropic["content"][0]["text"],
        openai["choices"][0]["message"]["content"]
    );
    Ok(())
}
