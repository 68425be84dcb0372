//! The conversation side of model steps: an agent's system prompt, the
//! conversation a hand-off passes on, reading which agent a router picked,
//! and quoting answers in errors.

use serde_json::Value;

use super::kinds::{StepRun, rendering};
use crate::definition::{Agent, StepKind, Workflow};
use crate::services::{CallError, Message};

pub(crate) fn agent<'w>(workflow: &'w Workflow, name: &str) -> Result<&'w Agent, CallError> {
    workflow
        .agents
        .get(name)
        .ok_or_else(|| CallError::permanent(format!("unknown agent '{name}'")))
}

pub(crate) fn system(agent: &Agent, context: &Value) -> Result<Vec<Message>, CallError> {
    match &agent.system {
        Some(system) => Ok(vec![Message::new(
            "system",
            system.render(context).map_err(rendering("system prompt"))?,
        )]),
        None => Ok(Vec::new()),
    }
}

/// The conversation a handoff passed to `agent`, if one did.
pub(crate) fn handed_over(run: &StepRun<'_>, agent: &str) -> Vec<Message> {
    run.step
        .depends_on
        .iter()
        .filter(|d| {
            matches!(
                run.workflow.step(d).map(|s| &s.kind),
                Some(StepKind::Handoff(_))
            )
        })
        .map(|d| run.state.output(run.workflow, d))
        .filter(|output| output["agent"] == agent)
        .flat_map(|output| {
            serde_json::from_value::<Vec<Message>>(output["messages"].clone()).unwrap_or_default()
        })
        .collect()
}

/// The target an answer names: a JSON `{"agent": …}`, or the one target
/// named as a word (the first word wins when several are named).
pub(crate) fn choose<'n>(answer: &str, names: &[&'n str]) -> Option<&'n str> {
    if let Ok(value) = serde_json::from_str::<Value>(strip_fences(answer))
        && let Some(agent) = value["agent"].as_str()
    {
        return names
            .iter()
            .copied()
            .find(|n| n.eq_ignore_ascii_case(agent));
    }
    answer
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .find_map(|word| names.iter().copied().find(|n| n.eq_ignore_ascii_case(word)))
}

/// A model's JSON without a Markdown code fence around it.
pub(crate) fn strip_fences(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

/// The first 200 characters of a text, for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_reads_json_or_the_first_named_target() {
        let names = ["billing", "technical"];
        assert_eq!(
            choose("Billing. The customer wants a refund.", &names),
            Some("billing")
        );
        assert_eq!(
            choose(r#"{"agent": "technical"}"#, &names),
            Some("technical")
        );
        assert_eq!(
            choose("```json\n{\"agent\": \"billing\"}\n```", &names),
            Some("billing")
        );
        assert_eq!(choose("Sales should take this", &names), None);
        assert_eq!(choose(r#"{"agent": "sales"}"#, &names), None);
    }
}
