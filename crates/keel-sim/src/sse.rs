//! Server-sent event bodies: pacing word events and injecting stream faults.
//!
//! Both dialects build their whole event list up front (it is small) and hand
//! it to [`sse_response`], which paces the word events at the configured
//! token rate and applies the `cut` and `malformed` faults at the midpoint.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::time::{MissedTickBehavior, interval};

use crate::fault::FaultKind;
use crate::reply::{cut_error, to_json};

/// The events of one streamed answer.
#[derive(Debug)]
pub(crate) struct Events {
    /// Sent right after the headers.
    pub head: Vec<Bytes>,
    /// One event per answer word, paced.
    pub words: Vec<Bytes>,
    /// Sent after the last word.
    pub tail: Vec<Bytes>,
}

/// Encodes a `data:`-only event, as OpenAI streams use.
pub(crate) fn data_event(value: &impl Serialize) -> Bytes {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&to_json(value));
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// Encodes an event with an `event:` line, as Anthropic streams use.
pub(crate) fn named_event(name: &str, value: &impl Serialize) -> Bytes {
    let mut event = Vec::with_capacity(128);
    event.extend_from_slice(b"event: ");
    event.extend_from_slice(name.as_bytes());
    event.extend_from_slice(b"\ndata: ");
    event.extend_from_slice(&to_json(value));
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The time between word events at `tokens_per_sec`, or `None` to send them
/// as fast as possible.
fn word_gap(tokens_per_sec: f64) -> Option<Duration> {
    if !(tokens_per_sec.is_finite() && tokens_per_sec > 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(1.0 / tokens_per_sec)
        .ok()
        .filter(|gap| !gap.is_zero())
        .map(|gap| gap.min(Duration::from_secs(3600)))
}

/// A 200 `text/event-stream` response sending `events`.
///
/// With `fault` set to `cut`, the stream stops before the middle word and the
/// connection drops; with `malformed`, the `malformed` event is sent before
/// the middle word and the stream then completes normally.
pub(crate) fn sse_response(
    events: Events,
    tokens_per_sec: f64,
    fault: Option<FaultKind>,
    malformed: &'static str,
) -> Response {
    let Events { head, words, tail } = events;
    let gap = word_gap(tokens_per_sec);
    let midpoint = words.len() / 2;

    let body = async_stream::stream! {
        for event in head {
            yield Ok::<_, io::Error>(event);
        }

        // The first tick of an interval is immediate, so the first word goes
        // out with the head and the stream lasts (words - 1) gaps.
        let mut ticker = gap.map(|gap| {
            let mut ticker = interval(gap);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        for (index, event) in words.into_iter().enumerate() {
            if index == midpoint {
                match fault {
                    Some(FaultKind::CutStream) => {
                        // Let hyper flush what was sent before aborting.
                        tokio::task::yield_now().await;
                        yield Err(cut_error());
                        return;
                    }
                    Some(FaultKind::Malformed) => yield Ok(Bytes::from_static(malformed.as_bytes())),
                    _ => {}
                }
            }
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            yield Ok(event);
        }

        for event in tail {
            yield Ok(event);
        }
    };

    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, Body::from_stream(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_gap_follows_rate() {
        assert_eq!(word_gap(0.0), None);
        assert_eq!(word_gap(-1.0), None);
        assert_eq!(word_gap(f64::NAN), None);
        assert_eq!(word_gap(1e300), None);
        assert_eq!(word_gap(10.0), Some(Duration::from_millis(100)));
        assert_eq!(word_gap(1e-9), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn events_are_framed() {
        let event = named_event("ping", &serde_json::json!({"type": "ping"}));
        assert_eq!(&event[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        assert_eq!(&data_event(&"x")[..], b"data: \"x\"\n\n");
    }
}
