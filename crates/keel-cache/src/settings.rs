//! What the cache does: which lookups run, how close a semantic hit must
//! be, how long entries live, and which requests and responses may be
//! stored at all.

use std::time::Duration;

use keel_core::chat::{ChatCompletion, ChatRequest};

/// Cache settings, checked by the binary's config loader.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Serve identical requests from the cache.
    pub exact: bool,
    /// Serve paraphrased requests from the cache.
    pub semantic: bool,
    /// The cosine similarity a semantic hit needs.
    pub threshold: f32,
    /// Run the guard on semantic hits (see [`crate::guard`]).
    pub guard: bool,
    /// How long an entry is served after it was stored.
    pub ttl: Duration,
    /// How long past its TTL an entry may still be served when every
    /// upstream of a model that allows it fails (zero: never).
    pub stale_ttl: Duration,
    /// Entries kept per tenant; the oldest go first beyond it.
    pub max_entries: u64,
    /// Requests with a higher `temperature` are not cached (an absent
    /// temperature counts as the providers' default, 1).
    pub max_temperature: f64,
    /// Store responses that call tools.
    pub tool_calls: bool,
    /// Keep each user's entries apart from the rest of the tenant's.
    pub per_user: bool,
    /// Stored entries a semantic lookup compares, best first.
    pub candidates: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            exact: true,
            semantic: true,
            threshold: crate::DEFAULT_THRESHOLD,
            guard: true,
            ttl: Duration::from_secs(24 * 3600),
            stale_ttl: Duration::from_secs(7 * 24 * 3600),
            max_entries: 100_000,
            max_temperature: 1.0,
            tool_calls: false,
            per_user: false,
            candidates: 4,
        }
    }
}

/// Why a request or response is kept out of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The request's temperature is above `max_temperature`.
    Temperature,
    /// The response calls tools and `tool_calls` is off.
    ToolCalls,
    /// The response did not finish (cut by a length limit, a content
    /// filter, or an error).
    Incomplete,
    /// The response has no choices.
    Empty,
}

impl CacheSettings {
    /// Whether a request may be answered from, and stored in, the cache.
    pub fn request_allowed(&self, request: &ChatRequest) -> Result<(), Skip> {
        if request.temperature.unwrap_or(1.0) > self.max_temperature {
            return Err(Skip::Temperature);
        }
        Ok(())
    }

    /// Whether a response may be stored: complete, successful, and without
    /// tool calls unless those are allowed.
    pub fn response_allowed(&self, response: &ChatCompletion) -> Result<(), Skip> {
        if response.choices.is_empty() {
            return Err(Skip::Empty);
        }
        for choice in &response.choices {
            let calls = choice
                .message
                .tool_calls
                .as_ref()
                .is_some_and(|c| !c.is_empty());
            match choice.finish_reason.as_deref() {
                Some("stop") if !calls => {}
                Some("tool_calls") | Some("function_call") | Some("stop")
                    if calls && self.tool_calls => {}
                Some("tool_calls") | Some("function_call") => return Err(Skip::ToolCalls),
                _ if calls => return Err(Skip::ToolCalls),
                _ => return Err(Skip::Incomplete),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(finish: &str, tool_calls: bool) -> ChatCompletion {
        let message = if tool_calls {
            serde_json::json!({"role": "assistant", "content": null,
                               "tool_calls": [{"id": "c", "type": "function"}]})
        } else {
            serde_json::json!({"role": "assistant", "content": "Paris."})
        };
        serde_json::from_value(serde_json::json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}]
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_complete_answers_are_stored() {
        let s = CacheSettings::default();
        assert_eq!(s.response_allowed(&completion("stop", false)), Ok(()));
        assert_eq!(
            s.response_allowed(&completion("length", false)),
            Err(Skip::Incomplete)
        );
        assert_eq!(
            s.response_allowed(&completion("content_filter", false)),
            Err(Skip::Incomplete)
        );
    }

    #[test]
    fn tool_calls_are_stored_only_when_allowed() {
        let mut s = CacheSettings::default();
        assert_eq!(
            s.response_allowed(&completion("tool_calls", true)),
            Err(Skip::ToolCalls)
        );
        s.tool_calls = true;
        assert_eq!(s.response_allowed(&completion("tool_calls", true)), Ok(()));
    }

    #[test]
    fn hot_requests_are_not_cached() {
        let s = CacheSettings::default();
        let mut r: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.request_allowed(&r), Ok(()));
        r.temperature = Some(1.5);
        assert_eq!(s.request_allowed(&r), Err(Skip::Temperature));
    }
}
