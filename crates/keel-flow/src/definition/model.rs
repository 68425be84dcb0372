//! A checked workflow definition: every reference resolved, every template
//! parsed, every default filled in, the steps in dependency order.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_core::Cost;
use serde_json::Value;

use crate::template::{Template, ValueTemplate};

/// A workflow that passed every check, ready to run.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The workflow's name, unique per tenant.
    pub name: String,
    /// What it is for, for people.
    pub description: Option<String>,
    /// Limits every run of it starts with.
    pub limits: RunLimits,
    /// Agents by name.
    pub agents: BTreeMap<String, Agent>,
    /// Tools by name.
    pub tools: BTreeMap<String, Tool>,
    /// The steps, each after everything it depends on.
    pub steps: Vec<Step>,
    /// The run's output; `None` gathers the outputs of the final steps.
    pub output: Option<ValueTemplate>,
}

impl Workflow {
    /// The step with id `id`.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.id == id)
    }
}

/// Limits on one run, reserved and settled like the gateway's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// How many step attempts the run may make.
    pub max_steps: u32,
    /// How many model tokens the run may use, if capped.
    pub max_tokens: Option<u64>,
    /// How much the run may spend, if capped.
    pub max_cost: Option<Cost>,
}

/// The default number of step attempts a run may make.
pub const DEFAULT_MAX_STEPS: u32 = 100;

/// An agent: a model with a role, its tools and whom it may hand off to.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The agent's name.
    pub name: String,
    /// The model alias it calls through the gateway.
    pub model: String,
    /// Its system prompt.
    pub system: Option<Template>,
    /// Tools it may call, by name.
    pub tools: Vec<String>,
    /// Agents it may hand off to, by name.
    pub handoffs: Vec<String>,
    /// Sampling temperature, if set.
    pub temperature: Option<f64>,
    /// Completion token cap, if set.
    pub max_tokens: Option<u32>,
}

/// A tool agents and `tool` steps call.
#[derive(Debug, Clone)]
pub struct Tool {
    /// The tool's name.
    pub name: String,
    /// What it does, shown to agents.
    pub description: Option<String>,
    /// JSON Schema of its arguments, shown to agents.
    pub parameters: Option<Value>,
    /// Who runs it.
    pub target: ToolTarget,
}

/// Who runs a tool.
#[derive(Debug, Clone)]
pub enum ToolTarget {
    /// keel calls an HTTP endpoint.
    Http(HttpTool),
    /// An external worker polling `/v1/tasks` on this queue.
    Worker {
        /// The queue's name.
        queue: String,
    },
}

/// An HTTP call; the step's arguments are the template context's `args`.
#[derive(Debug, Clone)]
pub struct HttpTool {
    /// The method, uppercase.
    pub method: String,
    /// The URL.
    pub url: Template,
    /// Headers, by name.
    pub headers: Vec<(String, Template)>,
    /// The JSON body; by default the arguments themselves.
    pub body: Option<ValueTemplate>,
}

/// One step of a workflow.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step's id, unique in its workflow.
    pub id: String,
    /// Steps that must finish first.
    pub depends_on: Vec<String>,
    /// A condition read when the step is ready; false skips the step (and
    /// what depends only on it).
    pub when: Option<Template>,
    /// What the step does.
    pub kind: StepKind,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// How long one attempt may take.
    pub timeout: Option<Duration>,
    /// What happens when the last attempt fails.
    pub on_failure: FailurePolicy,
}

impl Step {
    /// The kind's name, as written in definitions.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Calls an agent's model through the gateway.
    Llm(LlmStep),
    /// Queries a collection.
    Retrieve(RetrieveStep),
    /// Calls a tool.
    Tool(ToolStep),
    /// An agent picks which agent carries on.
    Handoff(HandoffStep),
    /// Waits for a person's answer.
    Human(HumanStep),
    /// Runs a step once per item of a list.
    Map(MapStep),
    /// Waits for its dependencies and gathers their outputs.
    Join(JoinStep),
}

impl StepKind {
    /// The kind's name, as written in definitions.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Llm(_) => "llm",
            StepKind::Retrieve(_) => "retrieve",
            StepKind::Tool(_) => "tool",
            StepKind::Handoff(_) => "handoff",
            StepKind::Human(_) => "human",
            StepKind::Map(_) => "map",
            StepKind::Join(_) => "join",
        }
    }
}

/// An `llm` step.
#[derive(Debug, Clone)]
pub struct LlmStep {
    /// The agent whose model and system prompt are used.
    pub agent: String,
    /// The user message.
    pub prompt: Template,
    /// A model alias used instead of the agent's.
    pub model: Option<String>,
    /// Completion token cap, overriding the agent's.
    pub max_tokens: Option<u32>,
    /// Whether the answer must be a JSON object (parsed into the output).
    pub json: bool,
}

/// A `retrieve` step.
#[derive(Debug, Clone)]
pub struct RetrieveStep {
    /// The collection, owned by the run's tenant.
    pub collection: String,
    /// The query text.
    pub query: Template,
    /// How many results to return.
    pub top_k: u32,
    /// A filter in the collections API's syntax.
    pub filter: Option<ValueTemplate>,
}

/// A `tool` step.
#[derive(Debug, Clone)]
pub struct ToolStep {
    /// The tool's name.
    pub tool: String,
    /// The arguments.
    pub args: ValueTemplate,
}

/// A `handoff` step: the agent answers with one of `targets`' agents, and
/// only that agent's step runs; the others are skipped.
#[derive(Debug, Clone)]
pub struct HandoffStep {
    /// The deciding agent.
    pub agent: String,
    /// What it decides about.
    pub prompt: Template,
    /// Target agent → the step that runs when it is picked.
    pub targets: BTreeMap<String, String>,
}

/// A `human` step: its output is the answer a person signals.
#[derive(Debug, Clone)]
pub struct HumanStep {
    /// The question.
    pub prompt: Template,
    /// How long they have to answer.
    pub sla: Duration,
    /// What happens when they do not.
    pub on_timeout: TimeoutAction,
}

/// What happens when a human step's SLA passes.
#[derive(Debug, Clone)]
pub enum TimeoutAction {
    /// Carry on with this answer.
    Default(Value),
    /// Ask someone else, with a fresh SLA.
    Escalate(Escalation),
    /// Fail the step.
    Fail,
}

/// A `map` step: runs `step` once per item of `over`; its output is the
/// list of their outputs, in order.
#[derive(Debug, Clone)]
pub struct MapStep {
    /// An expression that yields the list.
    pub over: Template,
    /// The step run for each item (`{{ item }}`, `{{ index }}`).
    pub step: Box<Step>,
    /// How many items run at once.
    pub max_parallel: u32,
}

/// A `join` step: its output is an object of its dependencies' outputs.
#[derive(Debug, Clone, Copy)]
pub struct JoinStep {
    /// Whether it waits for all dependencies or the first to succeed.
    pub wait: Wait,
}

/// What a join waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Every dependency finished.
    All,
    /// The first dependency that succeeds.
    Any,
}

/// How a step's failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles per retry, with jitter.
    pub backoff: Duration,
    /// The longest wait between attempts (a `Retry-After` may ask longer).
    pub max_backoff: Duration,
}

/// What happens when a step's last attempt fails.
#[derive(Debug, Clone)]
pub enum FailurePolicy {
    /// The run fails, with the step's error and how to retry.
    Fail,
    /// The run carries on without the step: what needs it is skipped and
    /// the run ends `partial` with what did finish.
    Partial,
    /// This step runs in its place; its output stands in for the failed one.
    FallbackStep(String),
    /// One more attempt with this model (for `llm` and `handoff` steps).
    FallbackModel(String),
    /// A person provides the step's output.
    Escalate(Escalation),
}

/// A question handed to a person.
#[derive(Debug, Clone)]
pub struct Escalation {
    /// Who (a team or person, as the signalling side knows them).
    pub to: String,
    /// What to tell them.
    pub message: Option<Template>,
    /// How long they have.
    pub sla: Duration,
}
