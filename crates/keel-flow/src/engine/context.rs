//! What a step sees when it runs: the template context (the run's input
//! and its steps' outputs), and whether it runs at all (a branch not taken,
//! a dependency that failed, a false condition).

use std::collections::HashMap;

use keel_store::flow::{RunRecord, StepRecord, StepStatus};
use serde_json::{Map, Value, json};

use crate::definition::{FailurePolicy, Step, StepKind, Wait, Workflow};

/// A run and its steps as stored when a step was claimed.
pub(crate) struct RunState {
    pub(crate) run: RunRecord,
    pub(crate) steps: HashMap<String, StepRecord>,
}

/// How a dependency ended, with a fallback standing in for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Succeeded,
    Failed,
    Skipped,
}

impl RunState {
    pub(crate) fn new(run: RunRecord, steps: Vec<StepRecord>) -> RunState {
        RunState {
            run,
            steps: steps.into_iter().map(|s| (s.key.clone(), s)).collect(),
        }
    }

    fn status(&self, key: &str) -> Option<StepStatus> {
        self.steps.get(key).map(|s| s.status)
    }

    /// The fallback that stood in for `id`, if it failed and has one.
    fn stand_in<'w>(&self, workflow: &'w Workflow, id: &str) -> Option<&'w str> {
        let step = workflow.step(id)?;
        match &step.on_failure {
            FailurePolicy::FallbackStep(x) if self.status(id) == Some(StepStatus::Failed) => {
                Some(x.as_str())
            }
            _ => None,
        }
    }

    fn ended(&self, workflow: &Workflow, id: &str) -> Ended {
        let key = self.stand_in(workflow, id).unwrap_or(id);
        match self.status(key) {
            Some(StepStatus::Succeeded) => Ended::Succeeded,
            Some(StepStatus::Skipped) if key == id => Ended::Skipped,
            _ => Ended::Failed,
        }
    }

    /// A step's output as later steps read it: its own, or its fallback's.
    pub(crate) fn output(&self, workflow: &Workflow, id: &str) -> Value {
        let key = self.stand_in(workflow, id).unwrap_or(id);
        match self.steps.get(key) {
            Some(step) if step.status == StepStatus::Succeeded => {
                step.output.clone().unwrap_or(Value::Null)
            }
            _ => Value::Null,
        }
    }

    /// The template context: `input`, `run` and every step's output
    /// (`null` for steps that did not succeed).
    pub(crate) fn context(&self, workflow: &Workflow) -> Value {
        let steps: Map<String, Value> = workflow
            .steps
            .iter()
            .map(|step| (step.id.clone(), self.output(workflow, &step.id)))
            .collect();
        json!({
            "input": self.run.input,
            "run": {"id": self.run.id, "workflow": self.run.workflow, "version": self.run.version},
            "steps": steps,
        })
    }

    /// Why a ready step should not run, if it should not.
    pub(crate) fn skip_reason(&self, workflow: &Workflow, step: &Step) -> Option<String> {
        // A fallback runs only in place of a step that failed.
        let stands_in_for: Vec<&Step> = workflow
            .steps
            .iter()
            .filter(|s| matches!(&s.on_failure, FailurePolicy::FallbackStep(x) if *x == step.id))
            .collect();
        if !stands_in_for.is_empty()
            && stands_in_for
                .iter()
                .all(|s| self.status(&s.id) != Some(StepStatus::Failed))
        {
            return Some("not needed: the steps it stands in for did not fail".to_owned());
        }

        for dep in &step.depends_on {
            if let Some(reason) = self.not_chosen(workflow, dep, &step.id) {
                return Some(reason);
            }
        }
        if step.depends_on.is_empty() {
            return None;
        }
        let ended: Vec<(&str, Ended)> = step
            .depends_on
            .iter()
            .map(|d| (d.as_str(), self.ended(workflow, d)))
            .collect();
        let any_join = matches!(&step.kind, StepKind::Join(j) if j.wait == Wait::Any);
        if any_join {
            return (!ended.iter().any(|(_, e)| *e == Ended::Succeeded))
                .then(|| "none of the steps it waits for succeeded".to_owned());
        }
        if let Some((failed, _)) = ended.iter().find(|(_, e)| *e == Ended::Failed) {
            return Some(format!("it needs '{failed}', which failed"));
        }
        ended
            .iter()
            .all(|(_, e)| *e == Ended::Skipped)
            .then(|| "every step it needs was skipped".to_owned())
    }

    /// When `dep` is a handoff that picked another agent than the one
    /// `step` runs for, why `step` is skipped.
    fn not_chosen(&self, workflow: &Workflow, dep: &str, step: &str) -> Option<String> {
        let StepKind::Handoff(handoff) = &workflow.step(dep)?.kind else {
            return None;
        };
        let (agent, _) = handoff.targets.iter().find(|(_, target)| *target == step)?;
        let chosen = self.output(workflow, dep);
        let chosen = chosen.get("agent").and_then(Value::as_str)?;
        (chosen != agent).then(|| format!("handoff '{dep}' chose '{chosen}', not '{agent}'"))
    }
}
