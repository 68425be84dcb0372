//! Relaying an upstream stream to the client as server-sent events.
//!
//! Chunks are re-encoded as `data:` events. keel always asks upstreams for
//! usage; when the client did not, the usage chunk is kept for accounting and
//! not sent. A stream that ends cleanly gets `data: [DONE]`; one that fails
//! after bytes went out gets an error event and no `[DONE]`, so a client can
//! never mistake a cut answer for a whole one. The ledger row is written
//! when the stream ends, fails, or the client goes away.

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use keel_core::ErrorCode;
use keel_core::chat::{ChatChunk, ChatRequest};
use keel_gateway::{ChatStream, Served};
use tokio::time::Instant;

use crate::accounting::{Outcome, RequestContext};
use crate::routes::chat::estimate_usage;
use crate::state::AppState;

/// Status recorded for streams the client abandoned (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Builds the streaming response.
pub fn sse_response(
    state: AppState,
    ctx: RequestContext,
    request: ChatRequest,
    stream: ChatStream,
) -> Response {
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let ChatStream { served, mut chunks } = stream;
    let mut tally = Tally::new(state, ctx, request, served);

    let body = async_stream::stream! {
        while let Some(item) = chunks.next().await {
            match item {
                Ok(mut chunk) => {
                    tally.observe(&chunk);
                    if !include_usage {
                        if chunk.choices.is_empty() && chunk.usage.is_some() {
                            continue;
                        }
                        chunk.usage = None;
                    }
                    yield Ok::<Bytes, Infallible>(encode(&chunk));
                }
                Err(e) => {
                    let body = keel_core::ErrorBody::new(e.code, e.message.clone(), None);
                    let json = serde_json::to_string(&body).unwrap_or_default();
                    yield Ok(Bytes::from(format!("data: {json}\n\n")));
                    tally.finish(Some(e.code)).await;
                    return;
                }
            }
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        tally.finish(None).await;
    };

    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// One chunk as an SSE event.
pub fn encode(chunk: &ChatChunk) -> Bytes {
    let json = serde_json::to_string(chunk).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

/// What a stream has produced so far, for accounting.
struct Tally {
    state: AppState,
    ctx: RequestContext,
    request: ChatRequest,
    served: Served,
    text: String,
    usage: Option<(u64, u64)>,
    ttft: Option<std::time::Duration>,
    finished: bool,
}

impl Tally {
    fn new(state: AppState, ctx: RequestContext, request: ChatRequest, served: Served) -> Tally {
        Tally {
            state,
            ctx,
            request,
            served,
            text: String::new(),
            usage: None,
            ttft: None,
            finished: false,
        }
    }

    fn observe(&mut self, chunk: &ChatChunk) {
        if let Some(u) = &chunk.usage {
            self.usage = Some((u.prompt_tokens, u.completion_tokens));
        }
        for choice in &chunk.choices {
            if let Some(content) = &choice.delta.content {
                if self.ttft.is_none() && !content.is_empty() {
                    self.ttft = Some(self.ctx.started.elapsed());
                }
                self.text.push_str(content);
            }
        }
    }

    fn outcome(&self, error: Option<ErrorCode>, status: u16) -> Outcome {
        let (prompt_tokens, completion_tokens) = self
            .usage
            .unwrap_or_else(|| estimate_usage(&self.request, &self.text));
        Outcome {
            model: self.request.model.clone(),
            served: Some(self.served.clone()),
            prompt_tokens,
            completion_tokens,
            status,
            error,
            stream: true,
            ttft: Some(self.ttft.unwrap_or_else(|| self.ctx.started.elapsed())),
        }
    }

    async fn finish(&mut self, error: Option<ErrorCode>) {
        self.finished = true;
        let outcome = self.outcome(error, 200);
        self.ctx.finish(&self.state, outcome).await;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The client went away mid-stream: what was generated so far was
        // still paid for, so it is still recorded.
        let outcome = self.outcome(None, CLIENT_CLOSED);
        let (state, ctx) = (self.state.clone(), self.ctx.clone());
        let started = Instant::now();
        tokio::spawn(async move {
            ctx.finish(&state, outcome).await;
            tracing::debug!(request_id = %ctx.request_id, waited_us = started.elapsed().as_micros() as u64, "Recorded abandoned stream");
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use keel_core::chat::{ChunkChoice, Delta};
    use keel_gateway::provider::sse;
    use proptest::prelude::*;
    use serde_json::Map;

    use super::*;

    fn chunk(content: &str) -> ChatChunk {
        let mut chunk = ChatChunk::new("c1", "m", 1);
        let delta = Delta {
            content: Some(content.to_owned()),
            ..Delta::default()
        };
        chunk.choices.push(ChunkChoice {
            index: 0,
            delta,
            finish_reason: None,
            extra: Map::new(),
        });
        chunk
    }

    proptest! {
        // Whatever the text (newlines, "data:", "[DONE]", unicode), a relayed
        // chunk decodes back to itself however the bytes are split.
        #[test]
        fn relayed_chunks_decode_to_themselves(
            contents in prop::collection::vec(any::<String>(), 1..6),
            split in 1usize..64,
        ) {
            let bytes: Vec<u8> = contents.iter().flat_map(|c| encode(&chunk(c)).to_vec()).collect();
            let pieces: Vec<Result<Vec<u8>, String>> = bytes.chunks(split).map(|p| Ok(p.to_vec())).collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let decoded: Vec<String> = rt.block_on(async {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                sse::decode(futures::stream::iter(pieces), Duration::from_secs(60), deadline)
                    .map(|e| e.unwrap().data)
                    .collect()
                    .await
            });
            prop_assert_eq!(decoded.len(), contents.len());
            for (data, content) in decoded.iter().zip(&contents) {
                let back: ChatChunk = serde_json::from_str(data).unwrap();
                prop_assert_eq!(back, chunk(content));
            }
        }
    }
}
