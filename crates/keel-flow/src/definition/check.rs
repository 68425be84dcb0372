//! Turning a [`RawWorkflow`] into a checked [`Workflow`]: names, limits,
//! agents, tools, templates and durations; each step is
//! [`super::check_step`]'s, and references between parts (dependencies,
//! agents, tools, template variables) are [`super::graph`]'s job.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_core::Cost;
use serde_json::Value;

use super::error::Problem;
use super::model::*;
use super::raw::*;
use super::source::{index_path, key_path};
use crate::template::{Template, ValueTemplate};

/// The most step attempts a run may be allowed.
const MAX_STEPS_CAP: u32 = 100_000;

/// Collects problems while converting; a part with a problem converts to
/// `None` so checking goes on and reports everything at once.
#[derive(Default)]
pub(crate) struct Checker {
    pub(crate) problems: Vec<Problem>,
}

impl Checker {
    pub(crate) fn problem(&mut self, path: &str, message: impl AsRef<str>) {
        self.problems.push(Problem::new(path, message.as_ref()));
    }

    pub(crate) fn workflow(&mut self, raw: &RawWorkflow) -> Option<Workflow> {
        self.name("name", &raw.name, "the workflow's name");
        let limits = self.limits(&raw.limits);
        let tools: BTreeMap<_, _> = raw
            .tools
            .iter()
            .filter_map(|(name, tool)| Some((name.clone(), self.tool(name, tool)?)))
            .collect();
        let agents: BTreeMap<_, _> = raw
            .agents
            .iter()
            .filter_map(|(name, agent)| Some((name.clone(), self.agent(name, agent)?)))
            .collect();
        let steps: Vec<_> = raw
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| self.step(&index_path("steps", i), step, false))
            .collect();
        if raw.steps.is_empty() {
            self.problem("steps", "a workflow needs at least one step");
        }
        let output = raw
            .output
            .as_ref()
            .and_then(|value| self.value_template("output", value));
        Some(Workflow {
            name: raw.name.clone(),
            description: raw.description.clone(),
            limits,
            agents,
            tools,
            steps,
            output,
        })
    }

    /// Names and ids: short, and usable in templates as `steps.<id>`.
    pub(crate) fn name(&mut self, path: &str, name: &str, what: &str) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            self.problem(
                path,
                format!(
                    "'{name}' is not a valid name for {what}: use 1 to 64 letters, digits and \
                     underscores, starting with a letter"
                ),
            );
        }
    }

    fn limits(&mut self, raw: &RawLimits) -> RunLimits {
        let max_steps = raw.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
        if !(1..=MAX_STEPS_CAP).contains(&max_steps) {
            self.problem(
                "limits.max_steps",
                format!("must be between 1 and {MAX_STEPS_CAP}, got {max_steps}"),
            );
        }
        let max_cost = raw.max_cost_usd.and_then(|usd| {
            if usd.is_finite() && usd >= 0.0 {
                Some(Cost((usd * 1_000_000.0).round() as u64))
            } else {
                self.problem(
                    "limits.max_cost_usd",
                    "must be a positive number of dollars",
                );
                None
            }
        });
        RunLimits {
            max_steps,
            max_tokens: raw.max_tokens,
            max_cost,
        }
    }

    fn agent(&mut self, name: &str, raw: &RawAgent) -> Option<Agent> {
        let path = key_path("agents", name);
        self.name(&path, name, "an agent");
        if raw.model.trim().is_empty() {
            self.problem(&key_path(&path, "model"), "an agent needs a model");
        }
        if let Some(t) = raw.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            self.problem(
                &key_path(&path, "temperature"),
                format!("must be between 0 and 2, got {t}"),
            );
        }
        let system = match &raw.system {
            Some(text) => Some(self.template(&key_path(&path, "system"), text)?),
            None => None,
        };
        Some(Agent {
            name: name.to_owned(),
            model: raw.model.clone(),
            system,
            tools: raw.tools.clone(),
            handoffs: raw.handoffs.clone(),
            temperature: raw.temperature,
            max_tokens: raw.max_tokens,
        })
    }

    fn tool(&mut self, name: &str, raw: &RawTool) -> Option<Tool> {
        let path = key_path("tools", name);
        self.name(&path, name, "a tool");
        let target = match (&raw.http, &raw.worker) {
            (Some(http), None) => ToolTarget::Http(self.http(&key_path(&path, "http"), http)?),
            (None, Some(worker)) => {
                self.name(&key_path(&path, "worker.queue"), &worker.queue, "a queue");
                ToolTarget::Worker {
                    queue: worker.queue.clone(),
                }
            }
            _ => {
                self.problem(&path, "a tool needs exactly one of `http` or `worker`");
                return None;
            }
        };
        Some(Tool {
            name: name.to_owned(),
            description: raw.description.clone(),
            parameters: raw.parameters.clone(),
            target,
        })
    }

    fn http(&mut self, path: &str, raw: &RawHttp) -> Option<HttpTool> {
        let method = raw.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
            self.problem(
                &key_path(path, "method"),
                format!("'{method}' is not one of GET, POST, PUT, PATCH, DELETE"),
            );
        }
        let url = self.template(&key_path(path, "url"), &raw.url);
        let headers: Vec<_> = raw
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let path = key_path(&key_path(path, "headers"), name);
                Some((name.clone(), self.template(&path, value)?))
            })
            .collect();
        let body = match &raw.body {
            Some(body) => Some(self.value_template(&key_path(path, "body"), body)?),
            None => None,
        };
        (headers.len() == raw.headers.len()).then_some(HttpTool {
            method,
            url: url?,
            headers,
            body,
        })
    }

    pub(crate) fn template(&mut self, path: &str, source: &str) -> Option<Template> {
        Template::parse(source)
            .map_err(|e| self.problem(path, format!("invalid template: {e}")))
            .ok()
    }

    pub(crate) fn value_template(&mut self, path: &str, value: &Value) -> Option<ValueTemplate> {
        ValueTemplate::parse(value)
            .map_err(|(inner, e)| {
                self.problem(&format!("{path}{inner}"), format!("invalid template: {e}"))
            })
            .ok()
    }

    pub(crate) fn duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            Ok(_) => {
                self.problem(path, "must be longer than zero");
                None
            }
            Err(e) => {
                self.problem(
                    path,
                    format!("'{text}' is not a duration ({e}); write it like 500ms, 30s, 5m or 2h"),
                );
                None
            }
        }
    }
}
