//! The definition as written: serde types that accept any well-formed
//! document and refuse unknown fields. [`super::check`] turns them into the
//! checked [`super::Workflow`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A whole workflow definition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkflow {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default)]
    pub(crate) agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    pub(crate) tools: BTreeMap<String, RawTool>,
    pub(crate) steps: Vec<RawStep>,
    /// A value template for the run's output; by default the outputs of
    /// the steps nothing depends on.
    #[serde(default)]
    pub(crate) output: Option<Value>,
}

/// Per-run limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_steps: Option<u32>,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) max_cost_usd: Option<f64>,
}

/// An agent: a model with a role, its tools and whom it may hand off to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub(crate) model: String,
    #[serde(default)]
    pub(crate) system: Option<String>,
    #[serde(default)]
    pub(crate) tools: Vec<String>,
    #[serde(default)]
    pub(crate) handoffs: Vec<String>,
    #[serde(default)]
    pub(crate) temperature: Option<f64>,
    #[serde(default)]
    pub(crate) max_tokens: Option<u32>,
}

/// A tool: an HTTP endpoint keel calls, or a queue external workers poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTool {
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// JSON Schema of the arguments, shown to agents that may call it.
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
    #[serde(default)]
    pub(crate) http: Option<RawHttp>,
    #[serde(default)]
    pub(crate) worker: Option<RawWorker>,
}

/// An HTTP tool; `url`, header values and `body` are templates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) method: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) body: Option<Value>,
}

/// A tool run by external workers polling `/v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorker {
    pub(crate) queue: String,
}

/// The step kinds, by their `kind` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawKind {
    Llm,
    Retrieve,
    Tool,
    Handoff,
    Human,
    Map,
    Join,
}

/// One step as written: every field any kind uses, checked per kind later
/// so a misplaced field gets a message that names the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub(crate) id: String,
    pub(crate) kind: RawKind,
    #[serde(default)]
    pub(crate) depends_on: Vec<String>,
    /// A condition; when it is false the step is skipped.
    #[serde(default)]
    pub(crate) when: Option<String>,

    // llm, handoff, human
    #[serde(default)]
    pub(crate) agent: Option<String>,
    #[serde(default)]
    pub(crate) prompt: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) max_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) json: Option<bool>,

    // retrieve
    #[serde(default)]
    pub(crate) collection: Option<String>,
    #[serde(default)]
    pub(crate) query: Option<String>,
    #[serde(default)]
    pub(crate) top_k: Option<u32>,
    #[serde(default)]
    pub(crate) filter: Option<Value>,

    // tool
    #[serde(default)]
    pub(crate) tool: Option<String>,
    #[serde(default)]
    pub(crate) args: Option<Value>,

    // handoff
    #[serde(default)]
    pub(crate) targets: Option<BTreeMap<String, String>>,

    // human
    #[serde(default)]
    pub(crate) sla: Option<String>,
    #[serde(default)]
    pub(crate) on_timeout: Option<RawTimeout>,

    // map
    #[serde(default)]
    pub(crate) over: Option<String>,
    #[serde(default)]
    pub(crate) step: Option<Box<RawStep>>,
    #[serde(default)]
    pub(crate) max_parallel: Option<u32>,

    // join
    #[serde(default)]
    pub(crate) wait: Option<RawWait>,

    // policies, any kind
    #[serde(default)]
    pub(crate) retry: Option<RawRetry>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    #[serde(default)]
    pub(crate) on_failure: Option<RawFailure>,
}

/// What a join waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawWait {
    All,
    Any,
}

/// Retries of a failed attempt.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) max_attempts: u32,
    #[serde(default)]
    pub(crate) backoff: Option<String>,
    #[serde(default)]
    pub(crate) max_backoff: Option<String>,
}

/// What happens when a human step's SLA passes with no answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawTimeout {
    /// Carry on as if the human had answered this.
    Default(Value),
    /// Hand the question to someone else, with a fresh SLA.
    Escalate(RawEscalation),
    /// Fail the step (its failure policy then applies).
    Fail,
}

/// A failure policy as written: `fail`, `partial`, or a one-key mapping.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFailure {
    Fail,
    Partial,
    FallbackStep(String),
    FallbackModel(String),
    Escalate(RawEscalation),
}

/// A question for a human, with the time they have to answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEscalation {
    pub(crate) to: String,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) sla: Option<String>,
}
