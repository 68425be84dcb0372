//! The Anthropic Messages dialect, translated to and from the OpenAI shape.
//!
//! System and developer messages become `system`; consecutive messages of one
//! role merge into one turn (Anthropic requires alternation); tool calls and
//! tool results map to `tool_use` and `tool_result` blocks. Responses and
//! stream events come back as OpenAI completions and chunks, so clients never
//! see which dialect served them.

use futures::StreamExt;
use keel_core::ErrorCode;
use keel_core::chat::{
    ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content, Delta, Message, Role,
    Usage,
};
use serde_json::{Map, Value, json};

use super::sse::EventStream;
use super::{ChunkStream, bad_response};
use crate::error::AttemptError;

/// Anthropic requires `max_tokens`; this is used when the client set none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Builds a Messages API body from an OpenAI chat request.
pub(super) fn messages_body(
    model: &str,
    request: &ChatRequest,
    stream: bool,
) -> Result<Vec<u8>, AttemptError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.push(message.content_text());
                continue;
            }
            Role::User => ("user", user_blocks(message)),
            Role::Assistant => ("assistant", assistant_blocks(message)),
            Role::Tool | Role::Function => ("user", vec![tool_result_block(message)]),
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    match &request.stop {
        Some(Value::String(s)) => _ = body.insert("stop_sequences".into(), json!([s])),
        Some(Value::Array(list)) => _ = body.insert("stop_sequences".into(), json!(list)),
        _ => {}
    }
    if let Some(tools) = &request.tools {
        body.insert(
            "tools".into(),
            Value::Array(tools.iter().map(tool_definition).collect()),
        );
    }
    if let Some(choice) = request.extra.get("tool_choice").and_then(tool_choice) {
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    serde_json::to_vec(&Value::Object(body))
        .map_err(|e| AttemptError::new(ErrorCode::Internal, format!("encode request: {e}")))
}

fn user_blocks(message: &Message) -> Vec<Value> {
    match &message.content {
        None => Vec::new(),
        Some(Content::Text(text)) => vec![json!({"type": "text", "text": text})],
        Some(Content::Parts(parts)) => parts.iter().filter_map(part_block).collect(),
    }
}

/// Maps one OpenAI content part; parts Anthropic cannot take are dropped.
fn part_block(part: &Value) -> Option<Value> {
    match part.get("type")?.as_str()? {
        "text" => Some(json!({"type": "text", "text": part.get("text")?})),
        "image_url" => {
            let url = part.pointer("/image_url/url")?.as_str()?;
            let source = match url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"))
            {
                Some((media_type, data)) => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
                None => json!({"type": "url", "url": url}),
            };
            Some(json!({"type": "image", "source": source}))
        }
        _ => None,
    }
}

fn assistant_blocks(message: &Message) -> Vec<Value> {
    let mut blocks = Vec::new();
    let text = message.content_text();
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in message.tool_calls.iter().flatten() {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    blocks
}

fn tool_result_block(message: &Message) -> Value {
    json!({
        "type": "tool_result",
        "tool_use_id": message.extra.get("tool_call_id").cloned().unwrap_or(Value::Null),
        "content": message.content_text(),
    })
}

fn tool_definition(tool: &Value) -> Value {
    let function = tool.get("function").unwrap_or(tool);
    let mut out = json!({
        "name": function.get("name").cloned().unwrap_or(Value::Null),
        "input_schema": function.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
    });
    if let Some(description) = function.get("description") {
        out["description"] = description.clone();
    }
    out
}

fn tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::Object(_) => {
            let name = choice.pointer("/function/name")?;
            Some(json!({"type": "tool", "name": name}))
        }
        _ => None,
    }
}

fn finish_reason(stop_reason: Option<&str>) -> Option<String> {
    let reason = match stop_reason? {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    };
    Some(reason.to_owned())
}

fn usage_of(value: Option<&Value>) -> (u64, u64) {
    let count = |key: &str| {
        value
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (count("input_tokens"), count("output_tokens"))
}

fn now_secs() -> u64 {
    u64::try_from(keel_core::now_unix_ms() / 1000).unwrap_or(0)
}

/// Parses a complete Messages response into an OpenAI completion.
pub(super) fn parse_message(bytes: &[u8]) -> Result<ChatCompletion, AttemptError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad_response("message", &e))?;
    let blocks = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            AttemptError::new(
                ErrorCode::UpstreamBadResponse,
                "upstream message has no content list",
            )
        })?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": block.get("input").map(Value::to_string).unwrap_or_default(),
                },
            })),
            _ => {}
        }
    }
    let (input, output) = usage_of(value.get("usage"));
    let message = Message {
        role: Role::Assistant,
        content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
        tool_calls: (!calls.is_empty()).then_some(calls),
        extra: Map::new(),
    };
    Ok(ChatCompletion {
        id: value
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        object: "chat.completion".into(),
        created: now_secs(),
        model: value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: finish_reason(value.get("stop_reason").and_then(Value::as_str)),
            extra: Map::new(),
        }],
        usage: Some(Usage::new(input, output)),
        extra: Map::new(),
    })
}

/// What the translator remembers across stream events.
struct StreamState {
    id: String,
    model: String,
    created: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Anthropic block index of each tool call, by OpenAI tool-call index.
    tool_blocks: Vec<u64>,
}

impl StreamState {
    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatChunk {
        let mut chunk = ChatChunk::new(self.id.clone(), self.model.clone(), self.created);
        chunk.choices.push(ChunkChoice {
            index: 0,
            delta,
            finish_reason,
            extra: Map::new(),
        });
        chunk
    }

    /// Translates one event: `Ok(None)` for events with nothing to relay.
    fn translate(&mut self, event: &str, data: &Value) -> Result<Option<ChatChunk>, AttemptError> {
        let chunk = match event {
            "message_start" => {
                let message = data.get("message");
                let text = |k: &str| message.and_then(|m| m.get(k)).and_then(Value::as_str);
                self.id = text("id").unwrap_or_default().to_owned();
                self.model = text("model").unwrap_or_default().to_owned();
                (self.input_tokens, self.output_tokens) =
                    usage_of(message.and_then(|m| m.get("usage")));
                let delta = Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                };
                self.chunk(delta, None)
            }
            "content_block_start" => {
                let block = data.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) != Some("tool_use") {
                    return Ok(None);
                }
                let index = self.tool_blocks.len();
                self.tool_blocks
                    .push(data.get("index").and_then(Value::as_u64).unwrap_or(0));
                let call = json!({
                    "index": index,
                    "id": block.and_then(|b| b.get("id")),
                    "type": "function",
                    "function": {"name": block.and_then(|b| b.get("name")), "arguments": ""},
                });
                self.chunk(
                    Delta {
                        tool_calls: Some(vec![call]),
                        ..Delta::default()
                    },
                    None,
                )
            }
            "content_block_delta" => {
                let delta = data.get("delta");
                let field = |k: &str| delta.and_then(|d| d.get(k)).and_then(Value::as_str);
                match field("type") {
                    Some("text_delta") => {
                        let content = Some(field("text").unwrap_or_default().to_owned());
                        self.chunk(
                            Delta {
                                content,
                                ..Delta::default()
                            },
                            None,
                        )
                    }
                    Some("input_json_delta") => {
                        let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let Some(index) = self.tool_blocks.iter().position(|b| *b == block) else {
                            return Ok(None);
                        };
                        let call = json!({
                            "index": index,
                            "function": {"arguments": field("partial_json").unwrap_or_default()},
                        });
                        self.chunk(
                            Delta {
                                tool_calls: Some(vec![call]),
                                ..Delta::default()
                            },
                            None,
                        )
                    }
                    _ => return Ok(None),
                }
            }
            "message_delta" => {
                let (_, output) = usage_of(data.get("usage"));
                self.output_tokens = self.output_tokens.max(output);
                let reason = data.pointer("/delta/stop_reason").and_then(Value::as_str);
                self.chunk(
                    Delta::default(),
                    finish_reason(reason).or_else(|| Some("stop".into())),
                )
            }
            "message_stop" => {
                let mut chunk = ChatChunk::new(self.id.clone(), self.model.clone(), self.created);
                chunk.usage = Some(Usage::new(self.input_tokens, self.output_tokens));
                chunk
            }
            "error" => {
                let detail = data.pointer("/error/message").and_then(Value::as_str);
                return Err(AttemptError::new(
                    ErrorCode::UpstreamUnavailable,
                    format!(
                        "upstream reported an error mid-stream: {}",
                        detail.unwrap_or("no message")
                    ),
                ));
            }
            _ => return Ok(None),
        };
        Ok(Some(chunk))
    }
}

/// Translates Messages stream events into OpenAI chunks. The stream must end
/// with `message_stop`; anything else was cut off and ends with an error.
pub(super) fn chunks(mut events: EventStream) -> ChunkStream {
    Box::pin(async_stream::stream! {
        let mut state = StreamState {
            id: String::new(),
            model: String::new(),
            created: now_secs(),
            input_tokens: 0,
            output_tokens: 0,
            tool_blocks: Vec::new(),
        };
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            let data: Value = match serde_json::from_str(&event.data) {
                Ok(data) => data,
                Err(e) => {
                    yield Err(bad_response("stream event", &e));
                    return;
                }
            };
            let name = if event.event.is_empty() {
                data.get("type").and_then(Value::as_str).unwrap_or_default().to_owned()
            } else {
                event.event
            };
            match state.translate(&name, &data) {
                Ok(Some(chunk)) => yield Ok(chunk),
                Ok(None) => {}
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
            if name == "message_stop" {
                return;
            }
        }
        yield Err(AttemptError::new(
            ErrorCode::UpstreamBadResponse,
            "upstream stream ended without message_stop",
        ));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::sse::SseEvent;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn moves_system_out_and_merges_turns() {
        let req = request(json!({
            "model": "alias", "max_tokens": 50, "stop": "END",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "42"}
            ]
        }));
        let body: Value =
            serde_json::from_slice(&messages_body("claude", &req, false).unwrap()).unwrap();
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["content"].as_array().unwrap().len(), 2);
        assert_eq!(messages[1]["content"][0]["input"], json!({"x": 1}));
        assert_eq!(messages[2]["content"][0]["tool_use_id"], "t1");
    }

    #[test]
    fn defaults_max_tokens() {
        let req = request(json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}));
        let body: Value = serde_json::from_slice(&messages_body("c", &req, true).unwrap()).unwrap();
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn parses_text_and_tool_use() {
        let completion = parse_message(
            json!({
                "id": "msg_1", "model": "claude", "stop_reason": "tool_use",
                "content": [{"type": "text", "text": "hi"},
                            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
                "usage": {"input_tokens": 7, "output_tokens": 3}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let choice = &completion.choices[0];
        assert_eq!(choice.message.content_text(), "hi");
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            choice.message.tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(completion.usage.unwrap().total_tokens, 10);
    }

    fn stream_of(events: &[(&str, Value)]) -> Vec<Result<ChatChunk, AttemptError>> {
        let events: Vec<_> = events
            .iter()
            .map(|(e, d)| {
                Ok(SseEvent {
                    event: (*e).to_owned(),
                    data: d.to_string(),
                })
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(chunks(Box::pin(futures::stream::iter(events))).collect())
    }

    #[test]
    fn translates_a_text_stream_with_usage() {
        let out = stream_of(&[
            (
                "message_start",
                json!({"message": {"id": "m", "model": "c", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({})),
            (
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ),
            (
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            ),
            ("content_block_stop", json!({"index": 0})),
            (
                "message_delta",
                json!({"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
            ),
            ("message_stop", json!({})),
        ]);
        let chunks: Vec<ChatChunk> = out.into_iter().map(Result::unwrap).collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c.choices.first()?.delta.content.clone())
            .collect();
        assert_eq!(text, "Hello");
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        let last = chunks.last().unwrap();
        assert_eq!(last.usage.as_ref().unwrap().prompt_tokens, 5);
        assert_eq!(last.usage.as_ref().unwrap().completion_tokens, 2);
        assert!(
            chunks.iter().any(
                |c| c.choices.first().and_then(|x| x.finish_reason.as_deref()) == Some("stop")
            )
        );
    }

    #[test]
    fn cut_or_failing_streams_end_with_errors() {
        let cut = stream_of(&[("message_start", json!({"message": {}}))]);
        assert!(
            cut.last()
                .unwrap()
                .as_ref()
                .unwrap_err()
                .message
                .contains("message_stop")
        );
        let failed = stream_of(&[("error", json!({"error": {"message": "overloaded"}}))]);
        assert!(
            failed[0]
                .as_ref()
                .unwrap_err()
                .message
                .contains("overloaded")
        );
    }
}
