//! The records and requests of the workflow store.

use keel_core::Cost;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Steps are still to run.
    Running,
    /// Every step finished (or was skipped by a branch).
    Succeeded,
    /// It ended with some steps failed under a `partial` policy.
    Partial,
    /// A step failed and its policy failed the run.
    Failed,
    /// Someone cancelled it.
    Cancelled,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Its dependencies are done; it runs once due.
    Ready,
    /// A worker holds it under a lease.
    Leased,
    /// Waiting for a person's signal (until its deadline).
    Waiting,
    /// Done, with an output.
    Succeeded,
    /// Done, failed for good.
    Failed,
    /// Not run: its branch was not taken, its condition was false, or
    /// something it needs failed.
    Skipped,
    /// Its run was cancelled or failed before it ran.
    Cancelled,
}

macro_rules! names {
    ($ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The stable lowercase name, as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// The status with this stored name.
            pub fn parse(name: &str) -> Option<$ty> {
                match name { $($name => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

names!(RunStatus {
    Running = "running",
    Succeeded = "succeeded",
    Partial = "partial",
    Failed = "failed",
    Cancelled = "cancelled",
});

names!(StepStatus {
    Pending = "pending",
    Ready = "ready",
    Leased = "leased",
    Waiting = "waiting",
    Succeeded = "succeeded",
    Failed = "failed",
    Skipped = "skipped",
    Cancelled = "cancelled",
});

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        self != RunStatus::Running
    }
}

impl StepStatus {
    /// Whether the step has ended (its dependents may go on).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's version.
    pub version: i64,
    /// The run's input.
    pub input: Value,
    /// A caller's key: starting again with it returns the existing run.
    pub idempotency_key: Option<String>,
    /// How many step attempts the run may make.
    pub max_steps: u64,
    /// How many model tokens the run may use, if capped.
    pub max_tokens: Option<u64>,
    /// How much the run may spend, if capped.
    pub max_cost: Option<Cost>,
    /// Every step of the run, with its dependencies.
    pub steps: Vec<NewStep>,
}

/// A step to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    /// The step's key in its run: its id, or `map[3]` for a map's item.
    pub key: String,
    /// Empty for steps keel runs; a worker queue's name otherwise.
    pub queue: String,
    /// The steps it waits for.
    pub deps: Vec<Dep>,
    /// Whether it is ready once any dependency succeeds (a `wait: any`
    /// join) instead of once all have finished.
    pub wait_any: bool,
    /// Its input, when known at creation (a map's item).
    pub input: Option<Value>,
}

/// A dependency of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    /// The key of the step waited for.
    pub key: String,
    /// Orders the steps without passing data or skips along.
    pub ordering_only: bool,
}

impl Dep {
    /// A data dependency on `key`.
    pub fn on(key: impl Into<String>) -> Dep {
        Dep {
            key: key.into(),
            ordering_only: false,
        }
    }
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its workflow's name.
    pub workflow: String,
    /// Its workflow's version.
    pub version: i64,
    /// Where it stands.
    pub status: RunStatus,
    /// Its input.
    pub input: Value,
    /// Its output, once it ended with one.
    pub output: Option<Value>,
    /// What went wrong, when it failed.
    pub error: Option<String>,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// How many step attempts it may make.
    pub max_steps: u64,
    /// How many model tokens it may use, if capped.
    pub max_tokens: Option<u64>,
    /// How much it may spend, if capped.
    pub max_cost: Option<Cost>,
    /// How many it made.
    pub steps_used: u64,
    /// Model tokens its steps used.
    pub tokens_used: u64,
    /// What its steps cost.
    pub cost: Cost,
    /// Tokens held by model calls in flight.
    pub reserved_tokens: u64,
    /// Money held by model calls in flight.
    pub reserved_cost: Cost,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds.
    pub updated_ms: i64,
    /// Unix milliseconds, once it ended.
    pub finished_ms: Option<i64>,
}

/// A stored step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's key in its run.
    pub key: String,
    /// Where it stands.
    pub status: StepStatus,
    /// Empty, or the worker queue it waits on.
    pub queue: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it next needs attention (due, lease expiry or deadline), unix
    /// milliseconds.
    pub due_ms: i64,
    /// What it was given.
    pub input: Option<Value>,
    /// Its output.
    pub output: Option<Value>,
    /// Its last error.
    pub error: Option<String>,
    /// Kind-specific state (a human step's question and escalation).
    pub detail: Option<Value>,
    /// Unix milliseconds.
    pub updated_ms: i64,
}

/// One attempt at a step: the trace of what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The step's key.
    pub key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Who made it (a process or worker id).
    pub owner: String,
    /// `running`, `succeeded`, `failed`, `retrying`, `waiting`, `lost`.
    pub status: String,
    /// Unix milliseconds.
    pub started_ms: i64,
    /// Unix milliseconds, once over.
    pub finished_ms: Option<i64>,
    /// What it did.
    #[serde(flatten)]
    pub trace: AttemptTrace,
}

/// A step handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The run.
    pub run_id: String,
    /// The step's key.
    pub key: String,
    /// The run's tenant.
    pub tenant_id: String,
    /// Proof of the lease: only this token finishes the step.
    pub token: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Why it was claimable: `Ready` (its turn), `Leased` (the last
    /// worker's lease expired) or `Waiting` (a person's deadline passed).
    pub was: StepStatus,
    /// Its stored input.
    pub input: Option<Value>,
    /// Its stored detail.
    pub detail: Option<Value>,
    /// The run's step attempts so far, this one included.
    pub steps_used: u64,
    /// The run's limit on step attempts.
    pub max_steps: u64,
}

/// What an attempt did, for the trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptTrace {
    /// What it was given (a rendered prompt, arguments).
    pub input: Option<Value>,
    /// What it produced.
    pub output: Option<Value>,
    /// What went wrong.
    pub error: Option<String>,
    /// The model it called.
    pub model: Option<String>,
    /// Prompt tokens used.
    pub prompt_tokens: u64,
    /// Completion tokens used.
    pub completion_tokens: u64,
    /// What it cost.
    pub cost: Cost,
}

/// What becomes of a claimed step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepUpdate {
    /// Done, with this output.
    Succeeded(Value),
    /// Failed for good.
    Failed(String),
    /// Not run (branch not taken, condition false, a dependency failed).
    Skipped(String),
    /// Failed this time; ready again at `due_ms`.
    Retry {
        /// What went wrong.
        error: String,
        /// When to try again, unix milliseconds.
        due_ms: i64,
    },
    /// Waits for a signal until `deadline_ms` (a person), keeping `detail`.
    Wait {
        /// The question and escalation state.
        detail: Value,
        /// When the wait times out, unix milliseconds.
        deadline_ms: i64,
    },
    /// Handed to external workers on `queue` with `input`.
    HandOver {
        /// The worker queue.
        queue: String,
        /// The task's input.
        input: Value,
    },
    /// A map's items: the step waits for them, then runs again to gather.
    Expand(Vec<NewStep>),
}

/// How a run ends, when a step's update ends it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// The final status.
    pub status: RunStatus,
    /// The run's output.
    pub output: Option<Value>,
    /// What went wrong.
    pub error: Option<String>,
}
