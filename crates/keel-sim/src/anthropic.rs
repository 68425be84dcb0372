//! The Anthropic endpoint: `POST /v1/messages`, plain and streamed.
//!
//! Answers are the same deterministic text as the OpenAI endpoint gives for
//! the same last user message, so a gateway translating between the two can
//! be checked end to end.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

use crate::error::SimError;
use crate::fault::FaultKind;
use crate::reply::{self, Dialect};
use crate::request;
use crate::sim::{Sim, Turn};
use crate::sse::{self, Events, named_event};
use crate::text::{Conversation, answer_for, content_text, count_tokens};

/// The parts of a messages request the simulator uses.
struct MessagesRequest {
    model: String,
    conversation: Conversation,
    max_tokens: u32,
    stream: bool,
}

impl MessagesRequest {
    fn parse(body: &[u8]) -> Result<MessagesRequest, SimError> {
        let object = request::parse_object(body)?;
        let model = request::required_str(&object, "model")?.to_owned();
        let max_tokens = request::positive_u32(&object, "max_tokens")?
            .ok_or_else(|| SimError::request("max_tokens", "is required"))?;
        let mut conversation = Conversation::read(request::required_array(&object, "messages")?);

        // The system prompt is outside `messages` in this API but still
        // counts as input.
        let system = object.get("system").map(content_text).unwrap_or_default();
        conversation.prompt_tokens = conversation
            .prompt_tokens
            .saturating_add(count_tokens(&system));
        Ok(MessagesRequest {
            model,
            conversation,
            max_tokens,
            stream: request::flag(&object, "stream")?,
        })
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(sim): State<Sim>, body: Bytes) -> Response {
    let request = match MessagesRequest::parse(&body) {
        Ok(request) => request,
        Err(err) => return sim.reject(Dialect::Anthropic, &err),
    };
    let turn = match sim.begin(Dialect::Anthropic, &request.model).await {
        Ok(turn) => turn,
        Err(response) => return response,
    };

    let (tokens, capped) =
        reply::completion_budget(turn.config.completion_tokens, Some(request.max_tokens));
    let answer = Answer {
        id: format!("msg_sim_{:016x}", turn.sequence),
        text: answer_for(&request.conversation.prompt, tokens),
        stop_reason: if capped { "max_tokens" } else { "end_turn" },
        usage: Usage {
            input_tokens: request.conversation.prompt_tokens,
            output_tokens: tokens,
        },
    };
    if request.stream {
        stream_reply(&request, &answer, &turn)
    } else {
        plain_reply(&request, &answer, turn.fault)
    }
}

/// A finished answer, before it is shaped into a body.
struct Answer {
    id: String,
    text: String,
    stop_reason: &'static str,
    usage: Usage,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    input_tokens: u32,
    output_tokens: u32,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [TextBlock<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: Usage,
}

fn plain_reply(request: &MessagesRequest, answer: &Answer, fault: Option<FaultKind>) -> Response {
    if fault == Some(FaultKind::Malformed) {
        return reply::malformed_json();
    }
    let body = reply::to_json(&Message {
        id: &answer.id,
        kind: "message",
        role: "assistant",
        model: &request.model,
        content: &[TextBlock {
            kind: "text",
            text: &answer.text,
        }],
        stop_reason: Some(answer.stop_reason),
        stop_sequence: None,
        usage: answer.usage,
    });
    match fault {
        Some(FaultKind::CutStream) => reply::cut_json(body),
        _ => reply::json_body(body),
    }
}

fn stream_reply(request: &MessagesRequest, answer: &Answer, turn: &Turn) -> Response {
    let start = Message {
        id: &answer.id,
        kind: "message",
        role: "assistant",
        model: &request.model,
        content: &[],
        stop_reason: None,
        stop_sequence: None,
        usage: Usage {
            input_tokens: answer.usage.input_tokens,
            output_tokens: 1,
        },
    };

    // Fixed events are built with `json!`; only the per-word deltas are hot
    // enough to deserve borrowed structs.
    let head = vec![
        named_event(
            "message_start",
            &json!({"type": "message_start", "message": start}),
        ),
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
        named_event("ping", &json!({"type": "ping"})),
    ];
    let words = answer.text.split_inclusive(' ').map(delta_event).collect();
    let tail = vec![
        named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        named_event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": answer.usage.output_tokens}}),
        ),
        named_event("message_stop", &json!({"type": "message_stop"})),
    ];
    let events = Events { head, words, tail };

    let malformed = "event: content_block_delta\ndata: {not json\n\n";
    sse::sse_response(events, turn.config.tokens_per_sec, turn.fault, malformed)
}

fn delta_event(word: &str) -> Bytes {
    #[derive(Serialize)]
    struct Delta<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        index: u32,
        delta: TextBlock<'a>,
    }

    let delta = TextBlock {
        kind: "text_delta",
        text: word,
    };
    named_event(
        "content_block_delta",
        &Delta {
            kind: "content_block_delta",
            index: 0,
            delta,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_is_required() {
        let err = MessagesRequest::parse(br#"{"model": "m", "messages": []}"#)
            .err()
            .unwrap();
        assert_eq!(err.param(), Some("max_tokens"));
    }

    #[test]
    fn system_prompt_counts_as_input() {
        let body =
            br#"{"model": "m", "max_tokens": 8, "system": [{"type": "text", "text": "abcdefgh"}],
            "messages": [{"role": "user", "content": "hi"}]}"#;
        let request = MessagesRequest::parse(body).unwrap();
        assert_eq!(request.conversation.prompt, "hi");
        assert_eq!(request.conversation.prompt_tokens, 1 + 3 + 2);
    }
}
