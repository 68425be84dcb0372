//! The OpenAI endpoints: `GET /v1/models` and `POST /v1/chat/completions`,
//! plain and streamed.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use crate::error::SimError;
use crate::fault::FaultKind;
use crate::reply::{self, Dialect};
use crate::request::{self, Object};
use crate::sim::{Sim, Turn};
use crate::sse::{self, Events};
use crate::text::{Conversation, answer_for};

/// The models `GET /v1/models` lists; requests may name any model.
pub(crate) const MODELS: [&str; 5] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4",
    "text-embedding-3-small",
    "sim-echo",
];

/// A fixed `created` time for listed models (2024-01-01), so the list is
/// byte-for-byte stable.
const MODELS_CREATED: u64 = 1_704_067_200;

/// `GET /v1/models`.
pub(crate) async fn models() -> Response {
    #[derive(Serialize)]
    struct Model {
        id: &'static str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    #[derive(Serialize)]
    struct List {
        object: &'static str,
        data: Vec<Model>,
    }

    let data = MODELS
        .iter()
        .map(|&id| Model {
            id,
            object: "model",
            created: MODELS_CREATED,
            owned_by: "keel-sim",
        })
        .collect();
    reply::json_body(reply::to_json(&List {
        object: "list",
        data,
    }))
}

/// The parts of a chat request the simulator uses.
struct ChatRequest {
    model: String,
    conversation: Conversation,
    max_tokens: Option<u32>,
    stream: bool,
    include_usage: bool,
}

impl ChatRequest {
    fn parse(body: &[u8]) -> Result<ChatRequest, SimError> {
        let object = request::parse_object(body)?;
        let model = request::required_str(&object, "model")?.to_owned();
        let conversation = Conversation::read(request::required_array(&object, "messages")?);

        // `max_completion_tokens` is the newer name; it wins if both are set.
        let max_tokens = match request::positive_u32(&object, "max_completion_tokens")? {
            Some(limit) => Some(limit),
            None => request::positive_u32(&object, "max_tokens")?,
        };
        Ok(ChatRequest {
            model,
            conversation,
            max_tokens,
            stream: request::flag(&object, "stream")?,
            include_usage: include_usage(&object),
        })
    }
}

fn include_usage(object: &Object) -> bool {
    object
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(sim): State<Sim>, body: Bytes) -> Response {
    let request = match ChatRequest::parse(&body) {
        Ok(request) => request,
        Err(err) => return sim.reject(Dialect::OpenAi, &err),
    };
    let turn = match sim.begin(Dialect::OpenAi, &request.model).await {
        Ok(turn) => turn,
        Err(response) => return response,
    };

    let (tokens, capped) = reply::completion_budget(
        turn.config.completion_tokens,
        request
            .max_tokens
            .filter(|_| !turn.config.ignore_max_tokens),
    );
    let answer = Answer {
        id: format!("chatcmpl-sim-{:016x}", turn.sequence),
        created: reply::unix_now(),
        content: answer_for(&request.conversation.prompt, tokens),
        finish_reason: if capped { "length" } else { "stop" },
        usage: Usage::new(request.conversation.prompt_tokens, tokens),
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
    created: u64,
    content: String,
    finish_reason: &'static str,
    usage: Usage,
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl Usage {
    fn new(prompt_tokens: u32, completion_tokens: u32) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

fn plain_reply(request: &ChatRequest, answer: &Answer, fault: Option<FaultKind>) -> Response {
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Message<'a>,
        logprobs: Option<()>,
        finish_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Completion<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [Choice<'a>; 1],
        usage: Usage,
    }

    if fault == Some(FaultKind::Malformed) {
        return reply::malformed_json();
    }
    let body = reply::to_json(&Completion {
        id: &answer.id,
        object: "chat.completion",
        created: answer.created,
        model: &request.model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &answer.content,
            },
            logprobs: None,
            finish_reason: answer.finish_reason,
        }],
        usage: answer.usage,
    });
    match fault {
        Some(FaultKind::CutStream) => reply::cut_json(body),
        _ => reply::json_body(body),
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

fn stream_reply(request: &ChatRequest, answer: &Answer, turn: &Turn) -> Response {
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        sse::data_event(&Chunk {
            id: &answer.id,
            object: "chat.completion.chunk",
            created: answer.created,
            model: &request.model,
            choices: &choices,
            usage: None,
        })
    };

    let head = vec![chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    )];
    let words = answer
        .content
        .split_inclusive(' ')
        .map(|word| {
            chunk(
                Delta {
                    role: None,
                    content: Some(word),
                },
                None,
            )
        })
        .collect();
    let mut tail = vec![chunk(Delta::default(), Some(answer.finish_reason))];
    if request.include_usage {
        tail.push(sse::data_event(&Chunk {
            id: &answer.id,
            object: "chat.completion.chunk",
            created: answer.created,
            model: &request.model,
            choices: &[],
            usage: Some(answer.usage),
        }));
    }
    tail.push(Bytes::from_static(b"data: [DONE]\n\n"));

    let events = Events { head, words, tail };
    sse::sse_response(
        events,
        turn.config.tokens_per_sec,
        turn.fault,
        "data: {not json\n\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let body =
            br#"{"model": "m", "messages": [], "max_tokens": 9, "max_completion_tokens": 3}"#;
        assert_eq!(ChatRequest::parse(body).unwrap().max_tokens, Some(3));
    }

    #[test]
    fn missing_model_or_messages_is_refused() {
        let no_model = ChatRequest::parse(br#"{"messages": []}"#).err().unwrap();
        assert_eq!(no_model.param(), Some("model"));
        let bad_messages = ChatRequest::parse(br#"{"model": "m", "messages": "hi"}"#)
            .err()
            .unwrap();
        assert_eq!(bad_messages.param(), Some("messages"));
    }

    #[test]
    fn include_usage_needs_stream_options() {
        let body = br#"{"model": "m", "messages": [], "stream": true,
            "stream_options": {"include_usage": true}}"#;
        let request = ChatRequest::parse(body).unwrap();
        assert!(request.stream && request.include_usage);
    }
}
