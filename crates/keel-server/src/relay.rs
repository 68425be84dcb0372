//! Relaying an upstream stream to the client as server-sent events.
//!
//! Chunks are re-encoded as `data:` events. keel always asks upstreams for
//! usage; when the client did not, the usage chunk is kept for accounting and
//! not sent. A stream that ends cleanly gets `data: [DONE]`; one that fails
//! after bytes went out gets an error event and no `[DONE]`, so a client can
//! never mistake a cut answer for a whole one. The ledger row is written
//! when the stream ends, fails, or the client goes away.
//!
//! When a budget covers the stream, its running cost (completion tokens
//! counted as they arrive, at the serving deployment's price) is kept within
//! its hold: a stream about to pass it asks for more, and if a budget cannot
//! give it, the stream is stopped with a `budget_exceeded` error event.

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use keel_core::chat::{ChatChunk, ChatRequest};
use keel_core::{Cost, ErrorCode};
use keel_gateway::{ChatStream, Served};
use keel_limits::{Admission, Refusal, Tokenizer};
use tokio::time::Instant;

use crate::accounting::{CacheUse, Outcome, RequestContext};
use crate::caching::{self, Pass};
use crate::limiting::{self, Limited};
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
    limited: Option<Limited>,
    pass: Option<Pass>,
) -> Response {
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let ChatStream { served, mut chunks } = stream;
    let mut tally = Tally::new(state, ctx, request, served, limited, pass);

    let body = async_stream::stream! {
        while let Some(item) = chunks.next().await {
            match item {
                Ok(mut chunk) => {
                    tally.observe(&chunk);
                    let send = include_usage || !(chunk.choices.is_empty() && chunk.usage.is_some());
                    if send {
                        if !include_usage {
                            chunk.usage = None;
                        }
                        yield Ok::<Bytes, Infallible>(encode(&chunk));
                    }
                    if let Err(refusal) = tally.keep_within_hold().await {
                        let code = refusal.code();
                        let body = keel_core::ErrorBody::new(code, refusal.to_string(), None);
                        let json = serde_json::to_string(&body).unwrap_or_default();
                        yield Ok(Bytes::from(format!("data: {json}\n\n")));
                        tally.finish(Some(code)).await;
                        return;
                    }
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

    event_stream(Body::from_stream(body))
}

/// A response carrying server-sent events.
pub fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
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
    limit: Option<StreamLimit>,
    /// The cache's pass and the answer put back together for it.
    cache: Option<(Pass, keel_cache::transcript::Transcript)>,
}

/// A limited stream's admission and running token count.
struct StreamLimit {
    admission: Option<Admission>,
    /// Whether completion tokens are counted as they arrive (a budget
    /// covers the stream).
    counting: bool,
    tokenizer: Tokenizer,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// The most tokens one chunk has carried: what the hold must still
    /// cover before the next chunk arrives.
    largest_chunk: u64,
    /// Whether the answer is complete (a finish reason or the usage chunk
    /// arrived): no more tokens will come, so none need covering.
    complete: bool,
    /// Text after the last whitespace, not counted yet. Counting at word
    /// boundaries matches how BPE splits text (" word" is one token); chunks
    /// counted one by one would count "word " as two.
    pending: String,
}

/// Completion tokens a stream's hold grows by beyond what it already used,
/// each time it runs out.
const EXTEND_STEP_TOKENS: u64 = 64;

impl Tally {
    fn new(
        state: AppState,
        ctx: RequestContext,
        request: ChatRequest,
        served: Served,
        limited: Option<Limited>,
        pass: Option<Pass>,
    ) -> Tally {
        let limit = limited.map(|l| StreamLimit {
            prompt_tokens: l.prompt_tokens,
            counting: l.admission.has_budget(),
            admission: Some(l.admission),
            tokenizer: l.model.tokenizer,
            completion_tokens: 0,
            largest_chunk: 1,
            complete: false,
            pending: String::new(),
        });
        Tally {
            state,
            ctx,
            request,
            served,
            text: String::new(),
            usage: None,
            ttft: None,
            finished: false,
            limit,
            cache: pass.map(|p| (p, Default::default())),
        }
    }

    fn observe(&mut self, chunk: &ChatChunk) {
        if let Some((_, transcript)) = &mut self.cache {
            transcript.observe(chunk);
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some((u.prompt_tokens, u.completion_tokens));
        }
        let mut tokens = 0;
        for choice in &chunk.choices {
            if let Some(content) = &choice.delta.content {
                if self.ttft.is_none() && !content.is_empty() {
                    self.ttft = Some(self.ctx.started.elapsed());
                }
                self.text.push_str(content);
                if let Some(limit) = self.limit.as_mut().filter(|l| l.counting) {
                    limit.pending.push_str(content);
                    if let Some(cut) = limit.pending.rfind(char::is_whitespace).filter(|&c| c > 0) {
                        let words: String = limit.pending.drain(..cut).collect();
                        tokens += limit.tokenizer.count(&words);
                    }
                }
            }
            if let (Some(calls), Some(limit)) = (
                &choice.delta.tool_calls,
                self.limit.as_ref().filter(|l| l.counting),
            ) {
                for call in calls {
                    tokens += limit.tokenizer.count(&call.to_string());
                }
            }
        }
        if let Some(limit) = &mut self.limit {
            limit.completion_tokens += tokens;
            limit.largest_chunk = limit.largest_chunk.max(tokens);
            limit.complete |=
                chunk.usage.is_some() || chunk.choices.iter().any(|c| c.finish_reason.is_some());
        }
    }

    /// Keeps the stream's budget hold ahead of its running cost by the
    /// largest chunk seen, growing it as needed, or says which budget cannot
    /// cover the next chunk — the stream then stops before it arrives.
    async fn keep_within_hold(&mut self) -> Result<(), Refusal> {
        let Some(limit) = &mut self.limit else {
            return Ok(());
        };
        let Some(admission) = &mut limit.admission else {
            return Ok(());
        };
        if !admission.has_budget() || limit.complete {
            return Ok(());
        }
        let pricing = self.served.pricing;
        let tail = limit.tokenizer.count(&limit.pending);
        let ahead = limit.completion_tokens + tail + limit.largest_chunk;
        let running = pricing.cost(limit.prompt_tokens, ahead);
        let held = admission.held().cost;
        if running <= held {
            return Ok(());
        }
        // Ask for a step beyond what is needed now, so a long stream does
        // not extend on every chunk; near the cap, ask for just what is
        // needed.
        let needed = running.micros() - held.micros();
        let step = pricing.cost(0, EXTEND_STEP_TOKENS).micros();
        match admission.extend(Cost(needed + step)).await {
            Ok(()) => Ok(()),
            Err(_) if step > 0 => admission.extend(Cost(needed)).await,
            Err(refusal) => Err(refusal),
        }
    }

    /// Settles the admission with what the stream used.
    async fn settle(&mut self, outcome: &Outcome, cost: Cost) {
        if let Some(admission) = self.limit.as_mut().and_then(|l| l.admission.take()) {
            let tokens = outcome.prompt_tokens + outcome.completion_tokens;
            limiting::settle(&self.state, admission, tokens, cost).await;
        }
    }

    fn outcome(&self, error: Option<ErrorCode>, status: u16) -> Outcome {
        // Without the upstream's count (a stream that was cut or failed),
        // the model's tokenizer counts better than an estimate.
        let counted = self.limit.as_ref().filter(|l| l.counting).map(|l| {
            let tail = l.tokenizer.count(&l.pending);
            (l.prompt_tokens, l.completion_tokens + tail)
        });
        let (prompt_tokens, completion_tokens) = self
            .usage
            .or(counted)
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
            cache: self.cache.as_ref().map(|_| CacheUse::miss()),
        }
    }

    async fn finish(&mut self, error: Option<ErrorCode>) {
        self.finished = true;
        let outcome = self.outcome(error, 200);
        let (cost, _) = self.ctx.finish(&self.state, outcome.clone()).await;
        self.settle(&outcome, cost).await;
        // A whole answer fills the cache like a plain response would; a
        // failed or cut one ends its flight empty.
        if let Some((pass, transcript)) = self.cache.take()
            && error.is_none()
            && let Some(completion) = transcript.completion()
        {
            let tokens = (outcome.prompt_tokens, outcome.completion_tokens);
            caching::fill(&self.state, Some(pass), &completion, cost, tokens);
        }
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
        let admission = self.limit.as_mut().and_then(|l| l.admission.take());
        let started = Instant::now();
        tokio::spawn(async move {
            let (cost, _) = ctx.finish(&state, outcome.clone()).await;
            if let Some(admission) = admission {
                let tokens = outcome.prompt_tokens + outcome.completion_tokens;
                limiting::settle(&state, admission, tokens, cost).await;
            }
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
