//! Server-sent events from an upstream response, with time limits.
//!
//! Decoding itself is `eventsource-stream`'s; keel adds the idle timeout
//! between events and the overall deadline, and turns both into attempt
//! errors so a stalled upstream never hangs a client.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use keel_core::ErrorCode;
use tokio::time::Instant;

use crate::error::AttemptError;

/// One event: its `event:` name (empty when absent) and `data:` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event name.
    pub event: String,
    /// The data lines joined by newlines.
    pub data: String,
}

/// A stream of decoded events that ends after the first error.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent, AttemptError>> + Send>>;

/// Decodes a response body as server-sent events.
pub(crate) fn events(response: super::Response, idle: Duration, deadline: Instant) -> EventStream {
    decode(
        http_body_util::BodyDataStream::new(response.into_body()),
        idle,
        deadline,
    )
}

/// Decodes any byte stream as server-sent events (split out for tests).
pub fn decode<S, B, E>(bytes: S, idle: Duration, deadline: Instant) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut inner = Box::pin(bytes.eventsource());
    Box::pin(async_stream::stream! {
        loop {
            let wake = deadline.min(Instant::now() + idle);
            match tokio::time::timeout_at(wake, inner.next()).await {
                Err(_) => {
                    yield Err(AttemptError::new(
                        ErrorCode::UpstreamTimeout,
                        "upstream stream stalled past its idle or total timeout",
                    ));
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    yield Err(AttemptError::new(
                        ErrorCode::UpstreamBadResponse,
                        format!("upstream stream broke off: {e}"),
                    ));
                    break;
                }
                Ok(Some(Ok(event))) => yield Ok(SseEvent { event: event.event, data: event.data }),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(chunks: Vec<Vec<u8>>) -> Vec<Result<SseEvent, AttemptError>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let bytes = futures::stream::iter(chunks.into_iter().map(Ok::<_, String>));
            let far = Instant::now() + Duration::from_secs(60);
            decode(bytes, Duration::from_secs(60), far).collect().await
        })
    }

    proptest! {
        // However the network splits the bytes, the same events come out.
        #[test]
        fn chunk_boundaries_do_not_change_events(
            datas in proptest::collection::vec("[a-z0-9 {}:\"]{0,40}", 1..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let text: String = datas.iter().map(|d| format!("event: e\ndata: {d}\n\n")).collect();
            let bytes = text.into_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(bytes[last..cut].to_vec());
                last = cut;
            }
            let events: Vec<_> = collect(chunks).into_iter().map(|e| e.unwrap().data).collect();
            prop_assert_eq!(events, datas);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_stream_times_out() {
        let bytes = futures::stream::iter([Ok::<_, String>(b"data: a\n\n".to_vec())])
            .chain(futures::stream::pending());
        let far = Instant::now() + Duration::from_secs(600);
        let events: Vec<_> = decode(bytes, Duration::from_secs(5), far).collect().await;
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].as_ref().unwrap_err().code,
            ErrorCode::UpstreamTimeout
        );
    }
}
