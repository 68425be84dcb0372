//! The OpenAI dialect: request bodies go through as sent (with the upstream's
//! model name), responses and chunks are parsed into keel's wire types.

use futures::StreamExt;
use keel_core::ErrorCode;
use keel_core::chat::{ChatChunk, ChatCompletion, ChatRequest, StreamOptions};

use super::sse::EventStream;
use super::{ChunkStream, bad_response};
use crate::error::AttemptError;

/// The upstream request body. Streams always ask for usage so keel can
/// account for them; the relay hides that chunk when the client did not ask.
pub(super) fn chat_body(
    model: &str,
    request: &ChatRequest,
    stream: bool,
) -> Result<Vec<u8>, AttemptError> {
    let mut request = request.clone();
    request.model = model.to_owned();
    if stream {
        request.stream = Some(true);
        request
            .stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
    serde_json::to_vec(&request)
        .map_err(|e| AttemptError::new(ErrorCode::Internal, format!("encode request: {e}")))
}

/// Parses a complete chat response.
pub(super) fn parse_completion(bytes: &[u8]) -> Result<ChatCompletion, AttemptError> {
    let completion: ChatCompletion =
        serde_json::from_slice(bytes).map_err(|e| bad_response("chat completion", &e))?;
    if completion.choices.is_empty() {
        return Err(AttemptError::new(
            ErrorCode::UpstreamBadResponse,
            "upstream sent a chat completion without choices",
        ));
    }
    Ok(completion)
}

/// Parses `data:` events into chunks until `[DONE]`. A stream that ends
/// without `[DONE]` was cut off and ends with an error.
pub(super) fn chunks(mut events: EventStream) -> ChunkStream {
    Box::pin(async_stream::stream! {
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            if event.data == "[DONE]" {
                return;
            }
            match serde_json::from_str::<ChatChunk>(&event.data) {
                Ok(chunk) if chunk.extra.contains_key("error") => {
                    let detail = chunk.extra["error"]
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or("no message")
                        .to_owned();
                    yield Err(AttemptError::new(
                        ErrorCode::UpstreamUnavailable,
                        format!("upstream reported an error mid-stream: {detail}"),
                    ));
                    return;
                }
                Ok(chunk) => yield Ok(chunk),
                Err(e) => {
                    yield Err(bad_response("stream chunk", &e));
                    return;
                }
            }
        }
        yield Err(AttemptError::new(
            ErrorCode::UpstreamBadResponse,
            "upstream stream ended without [DONE]",
        ));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::sse::SseEvent;

    fn run(datas: &[&str]) -> Vec<Result<ChatChunk, AttemptError>> {
        let events: Vec<_> = datas
            .iter()
            .map(|d| {
                Ok(SseEvent {
                    event: String::new(),
                    data: (*d).to_owned(),
                })
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(chunks(Box::pin(futures::stream::iter(events))).collect())
    }

    #[test]
    fn streams_always_request_usage() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "alias", "messages": [{"role": "user", "content": "x"}], "stream": true
        }))
        .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&chat_body("up-model", &req, true).unwrap()).unwrap();
        assert_eq!(body["model"], "up-model");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn done_ends_cleanly_and_cut_streams_error() {
        let chunk = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}"#;
        let ok = run(&[chunk, "[DONE]"]);
        assert_eq!(ok.len(), 1);
        assert!(ok[0].is_ok());
        let cut = run(&[chunk]);
        assert_eq!(cut.len(), 2);
        assert!(cut[1].as_ref().unwrap_err().message.contains("[DONE]"));
    }

    #[test]
    fn malformed_and_error_chunks_end_the_stream() {
        let bad = run(&["{not json", "[DONE]"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(
            bad[0].as_ref().unwrap_err().code,
            ErrorCode::UpstreamBadResponse
        );
        let err = run(&[r#"{"error":{"message":"overloaded"}}"#]);
        assert!(err[0].as_ref().unwrap_err().message.contains("overloaded"));
    }
}
