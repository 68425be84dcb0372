//! Checking one step: the fields its kind takes (and those it does not),
//! its templates and durations, its retry and failure policies, and the
//! defaults each kind gets.

use std::time::Duration;

use serde_json::Value;

use super::check::Checker;
use super::model::*;
use super::raw::*;
use super::source::key_path;
use crate::template::Template;

/// The most attempts one step may make.
const MAX_ATTEMPTS_CAP: u32 = 20;
/// The most results a `retrieve` step may ask for.
const TOP_K_CAP: u32 = 100;
/// The most items of a `map` that may run at once.
const MAX_PARALLEL_CAP: u32 = 1_000;
/// How long a person has to answer, unless the definition says.
const DEFAULT_SLA: Duration = Duration::from_secs(24 * 3600);

impl Checker {
    /// A field the step's kind needs.
    fn required<'a, T>(
        &mut self,
        path: &str,
        field: &str,
        kind: &str,
        value: &'a Option<T>,
    ) -> Option<&'a T> {
        if value.is_none() {
            self.problem(
                path,
                format!("missing field `{field}`: a {kind} step needs it"),
            );
        }
        value.as_ref()
    }

    /// A template field the step's kind needs.
    fn required_template(
        &mut self,
        path: &str,
        field: &str,
        kind: &str,
        value: &Option<String>,
    ) -> Option<Template> {
        let source = self.required(path, field, kind, value)?;
        self.template(&key_path(path, field), source)
    }

    pub(crate) fn step(&mut self, path: &str, raw: &RawStep, in_map: bool) -> Option<Step> {
        let kind_name = kind_name(raw.kind);
        self.name(&key_path(path, "id"), &raw.id, "a step id");
        self.misplaced_fields(path, raw, kind_name);
        if in_map && !raw.depends_on.is_empty() {
            self.problem(
                &key_path(path, "depends_on"),
                "the step inside a map depends on the map's own dependencies; remove depends_on",
            );
        }
        let kind = self.kind(path, raw, in_map)?;
        let retry = self.retry(path, raw)?;
        let timeout = match &raw.timeout {
            Some(text) => Some(self.duration(&key_path(path, "timeout"), text)?),
            None => default_timeout(raw.kind),
        };
        let on_failure = self.failure(path, raw)?;
        let when = match &raw.when {
            Some(text) => Some(self.template(&key_path(path, "when"), text)?),
            None => None,
        };
        Some(Step {
            id: raw.id.clone(),
            depends_on: raw.depends_on.clone(),
            when,
            kind,
            retry,
            timeout,
            on_failure,
        })
    }

    /// Fields set on a step whose kind does not use them.
    fn misplaced_fields(&mut self, path: &str, raw: &RawStep, kind: &str) {
        let set = [
            ("agent", raw.agent.is_some()),
            ("prompt", raw.prompt.is_some()),
            ("model", raw.model.is_some()),
            ("max_tokens", raw.max_tokens.is_some()),
            ("json", raw.json.is_some()),
            ("collection", raw.collection.is_some()),
            ("query", raw.query.is_some()),
            ("top_k", raw.top_k.is_some()),
            ("filter", raw.filter.is_some()),
            ("tool", raw.tool.is_some()),
            ("args", raw.args.is_some()),
            ("targets", raw.targets.is_some()),
            ("sla", raw.sla.is_some()),
            ("on_timeout", raw.on_timeout.is_some()),
            ("over", raw.over.is_some()),
            ("step", raw.step.is_some()),
            ("max_parallel", raw.max_parallel.is_some()),
            ("wait", raw.wait.is_some()),
        ];
        let allowed = fields_of(raw.kind);
        for (field, present) in set {
            if present && !allowed.contains(&field) {
                self.problem(
                    &key_path(path, field),
                    format!(
                        "`{field}` does not apply to a {kind} step (its fields: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn kind(&mut self, path: &str, raw: &RawStep, in_map: bool) -> Option<StepKind> {
        let name = kind_name(raw.kind);
        let field = |f: &str| key_path(path, f);
        Some(match raw.kind {
            RawKind::Llm => StepKind::Llm(LlmStep {
                agent: self.required(path, "agent", name, &raw.agent)?.clone(),
                prompt: self.required_template(path, "prompt", name, &raw.prompt)?,
                model: raw.model.clone(),
                max_tokens: raw.max_tokens,
                json: raw.json.unwrap_or(false),
            }),
            RawKind::Retrieve => {
                let top_k = raw.top_k.unwrap_or(5);
                if !(1..=TOP_K_CAP).contains(&top_k) {
                    self.problem(
                        &field("top_k"),
                        format!("must be between 1 and {TOP_K_CAP}, got {top_k}"),
                    );
                }
                StepKind::Retrieve(RetrieveStep {
                    collection: self
                        .required(path, "collection", name, &raw.collection)?
                        .clone(),
                    query: self.required_template(path, "query", name, &raw.query)?,
                    top_k,
                    filter: match &raw.filter {
                        Some(filter) => Some(self.value_template(&field("filter"), filter)?),
                        None => None,
                    },
                })
            }
            RawKind::Tool => StepKind::Tool(ToolStep {
                tool: self.required(path, "tool", name, &raw.tool)?.clone(),
                args: self
                    .value_template(&field("args"), raw.args.as_ref().unwrap_or(&Value::Null))?,
            }),
            RawKind::Handoff => {
                let targets = self.required(path, "targets", name, &raw.targets)?.clone();
                if targets.is_empty() {
                    self.problem(&field("targets"), "a handoff needs at least one target");
                }
                StepKind::Handoff(HandoffStep {
                    agent: self.required(path, "agent", name, &raw.agent)?.clone(),
                    prompt: self.required_template(path, "prompt", name, &raw.prompt)?,
                    targets,
                })
            }
            RawKind::Human => StepKind::Human(HumanStep {
                prompt: self.required_template(path, "prompt", name, &raw.prompt)?,
                sla: match &raw.sla {
                    Some(text) => self.duration(&field("sla"), text)?,
                    None => DEFAULT_SLA,
                },
                on_timeout: match &raw.on_timeout {
                    None | Some(RawTimeout::Fail) => TimeoutAction::Fail,
                    Some(RawTimeout::Default(value)) => TimeoutAction::Default(value.clone()),
                    Some(RawTimeout::Escalate(e)) => {
                        TimeoutAction::Escalate(self.escalation(&field("on_timeout.escalate"), e)?)
                    }
                },
            }),
            RawKind::Map => {
                if in_map {
                    self.problem(&field("kind"), "a map cannot run inside another map");
                    return None;
                }
                let max_parallel = raw.max_parallel.unwrap_or(8);
                if !(1..=MAX_PARALLEL_CAP).contains(&max_parallel) {
                    self.problem(
                        &field("max_parallel"),
                        format!("must be between 1 and {MAX_PARALLEL_CAP}, got {max_parallel}"),
                    );
                }
                let over = self.required(path, "over", name, &raw.over)?;
                let over = self.template(&field("over"), over)?;
                let child = self.required(path, "step", name, &raw.step)?;
                if matches!(child.kind, RawKind::Join | RawKind::Handoff) {
                    self.problem(
                        &field("step.kind"),
                        "the step inside a map must be an llm, retrieve, tool or human step",
                    );
                }
                StepKind::Map(MapStep {
                    over,
                    step: Box::new(self.step(&field("step"), child, true)?),
                    max_parallel,
                })
            }
            RawKind::Join => StepKind::Join(JoinStep {
                wait: match raw.wait {
                    Some(RawWait::Any) => Wait::Any,
                    Some(RawWait::All) | None => Wait::All,
                },
            }),
        })
    }

    fn retry(&mut self, path: &str, raw: &RawStep) -> Option<RetryPolicy> {
        let mut policy = default_retry(raw.kind);
        let Some(retry) = &raw.retry else {
            return Some(policy);
        };
        let path = key_path(path, "retry");
        if !(1..=MAX_ATTEMPTS_CAP).contains(&retry.max_attempts) {
            self.problem(
                &key_path(&path, "max_attempts"),
                format!(
                    "must be between 1 and {MAX_ATTEMPTS_CAP}, got {}",
                    retry.max_attempts
                ),
            );
        }
        policy.max_attempts = retry.max_attempts;
        if let Some(text) = &retry.backoff {
            policy.backoff = self.duration(&key_path(&path, "backoff"), text)?;
        }
        if let Some(text) = &retry.max_backoff {
            policy.max_backoff = self.duration(&key_path(&path, "max_backoff"), text)?;
        }
        if policy.max_backoff < policy.backoff {
            self.problem(
                &key_path(&path, "max_backoff"),
                "must not be shorter than backoff",
            );
        }
        Some(policy)
    }

    fn failure(&mut self, path: &str, raw: &RawStep) -> Option<FailurePolicy> {
        let path = key_path(path, "on_failure");
        Some(match &raw.on_failure {
            None | Some(RawFailure::Fail) => FailurePolicy::Fail,
            Some(RawFailure::Partial) => FailurePolicy::Partial,
            Some(RawFailure::FallbackStep(step)) => FailurePolicy::FallbackStep(step.clone()),
            Some(RawFailure::FallbackModel(model)) => {
                if !matches!(raw.kind, RawKind::Llm | RawKind::Handoff) {
                    self.problem(
                        &path,
                        "fallback_model applies only to llm and handoff steps",
                    );
                }
                FailurePolicy::FallbackModel(model.clone())
            }
            Some(RawFailure::Escalate(e)) => {
                FailurePolicy::Escalate(self.escalation(&key_path(&path, "escalate"), e)?)
            }
        })
    }

    fn escalation(&mut self, path: &str, raw: &RawEscalation) -> Option<Escalation> {
        if raw.to.trim().is_empty() {
            self.problem(&key_path(path, "to"), "say who the question goes to");
        }
        Some(Escalation {
            to: raw.to.clone(),
            message: match &raw.message {
                Some(text) => Some(self.template(&key_path(path, "message"), text)?),
                None => None,
            },
            sla: match &raw.sla {
                Some(text) => self.duration(&key_path(path, "sla"), text)?,
                None => DEFAULT_SLA,
            },
        })
    }
}

fn kind_name(kind: RawKind) -> &'static str {
    match kind {
        RawKind::Llm => "llm",
        RawKind::Retrieve => "retrieve",
        RawKind::Tool => "tool",
        RawKind::Handoff => "handoff",
        RawKind::Human => "human",
        RawKind::Map => "map",
        RawKind::Join => "join",
    }
}

/// The kind-specific fields each kind takes.
fn fields_of(kind: RawKind) -> &'static [&'static str] {
    match kind {
        RawKind::Llm => &["agent", "prompt", "model", "max_tokens", "json"],
        RawKind::Retrieve => &["collection", "query", "top_k", "filter"],
        RawKind::Tool => &["tool", "args"],
        RawKind::Handoff => &["agent", "prompt", "targets"],
        RawKind::Human => &["prompt", "sla", "on_timeout"],
        RawKind::Map => &["over", "step", "max_parallel"],
        RawKind::Join => &["wait"],
    }
}

/// Calls out of keel retry; waiting and gathering do not.
fn default_retry(kind: RawKind) -> RetryPolicy {
    let max_attempts = match kind {
        RawKind::Llm | RawKind::Retrieve | RawKind::Tool | RawKind::Handoff => 3,
        RawKind::Human | RawKind::Map | RawKind::Join => 1,
    };
    RetryPolicy {
        max_attempts,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
    }
}

fn default_timeout(kind: RawKind) -> Option<Duration> {
    match kind {
        RawKind::Llm | RawKind::Handoff => Some(Duration::from_secs(120)),
        RawKind::Tool => Some(Duration::from_secs(60)),
        RawKind::Retrieve => Some(Duration::from_secs(30)),
        RawKind::Human | RawKind::Map | RawKind::Join => None,
    }
}
