//! What steps call out to: models (through keel's gateway path, so limits,
//! budgets, the cache, breakers and fallbacks apply), collections, and HTTP
//! tools. `keel-server` implements [`Services`] over its own request path;
//! tests implement it with scripted answers.

use std::time::Duration;

use futures::future::BoxFuture;
use keel_core::Cost;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A chat message sent to a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// A model call made by a step, attributed to its run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCall {
    /// The run's tenant: its limits and budgets apply.
    pub tenant_id: String,
    /// The run, as the call's session.
    pub run_id: String,
    /// The workflow, as the call's workflow.
    pub workflow: String,
    /// The step's key.
    pub step: String,
    /// The model alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Completion token cap.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Whether to ask for a JSON object.
    pub json: bool,
}

/// A model's answer and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatReply {
    /// The answer's text.
    pub text: String,
    /// The model that answered (after any fallback).
    pub model: String,
    /// Prompt tokens used.
    pub prompt_tokens: u64,
    /// Completion tokens used.
    pub completion_tokens: u64,
    /// What it cost (zero for a cache hit).
    pub cost: Cost,
}

/// A collection query made by a `retrieve` step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrieveCall {
    /// The run's tenant, who owns the collection.
    pub tenant_id: String,
    /// The collection.
    pub collection: String,
    /// The query text.
    pub query: String,
    /// How many results.
    pub top_k: u32,
    /// A filter in the collections API's syntax.
    pub filter: Option<Value>,
}

/// An HTTP request made by a tool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpCall {
    /// The method.
    pub method: String,
    /// The URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Option<Value>,
    /// How long to wait.
    pub timeout: Option<Duration>,
}

/// Why a call failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// What went wrong.
    pub message: String,
    /// Whether a retry may succeed (timeouts, 429s, 5xx).
    pub retryable: bool,
    /// How long the other side asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl CallError {
    /// A failure that a retry may cure.
    pub fn retryable(message: impl Into<String>) -> CallError {
        CallError {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure no retry will cure (a bad request, a missing collection).
    pub fn permanent(message: impl Into<String>) -> CallError {
        CallError {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }
}

/// The most a model call may use, held against a run's caps before it
/// goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Prompt tokens plus the completion allowance.
    pub tokens: u64,
    /// The cost of that many tokens at the dearest deployment that may
    /// serve the call.
    pub cost: Cost,
    /// The completion allowance (the call's `max_tokens`, or a default
    /// that is then sent as its `max_tokens`).
    pub max_tokens: u32,
}

/// Everything steps call out to.
pub trait Services: Send + Sync + 'static {
    /// The worst case of a model call, for a run's token and cost caps.
    fn estimate(&self, call: &ChatCall) -> Estimate;

    /// Calls a model through the gateway path.
    fn chat(&self, call: ChatCall) -> BoxFuture<'_, Result<ChatReply, CallError>>;

    /// Queries a collection; the results as JSON.
    fn retrieve(&self, call: RetrieveCall) -> BoxFuture<'_, Result<Value, CallError>>;

    /// Calls an HTTP tool; the response body as JSON (or a string).
    fn http(&self, call: HttpCall) -> BoxFuture<'_, Result<Value, CallError>>;
}
