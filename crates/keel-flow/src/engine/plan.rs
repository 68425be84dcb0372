//! Turning a workflow into the steps of a run: keys, dependencies, the
//! edges fallback steps add, and the final step that ends the run.

use std::collections::BTreeMap;

use keel_store::flow::{Dep, NewStep};

use crate::definition::{FailurePolicy, StepKind, Wait, Workflow};

/// The key of the step that ends every run once all others have ended.
pub(crate) const END: &str = "$end";

/// The key of a map's `index`th item.
pub(crate) fn item_key(map: &str, index: usize) -> String {
    format!("{map}[{index}]")
}

/// The map a key belongs to and its index, for item keys (`each[3]`).
pub(crate) fn split_item(key: &str) -> Option<(&str, usize)> {
    let (map, rest) = key.split_once('[')?;
    Some((map, rest.strip_suffix(']')?.parse().ok()?))
}

/// Each step's data dependencies in a run: as written, plus a failed
/// step's fallback wherever the failed step is needed (its output stands
/// in for the failed one's).
pub(crate) fn dependencies(workflow: &Workflow) -> BTreeMap<&str, Vec<&str>> {
    let fallback_of: BTreeMap<&str, &str> = workflow
        .steps
        .iter()
        .filter_map(|step| match &step.on_failure {
            FailurePolicy::FallbackStep(x) => Some((step.id.as_str(), x.as_str())),
            _ => None,
        })
        .collect();
    workflow
        .steps
        .iter()
        .map(|step| {
            let mut deps: Vec<&str> = Vec::new();
            for dep in &step.depends_on {
                deps.push(dep);
                if let Some(fallback) = fallback_of.get(dep.as_str()) {
                    deps.push(fallback);
                }
            }
            (step.id.as_str(), deps)
        })
        .collect()
}

/// The steps a new run of `workflow` starts with.
pub(crate) fn steps(workflow: &Workflow) -> Vec<NewStep> {
    let deps = dependencies(workflow);
    let mut steps: Vec<NewStep> = workflow
        .steps
        .iter()
        .map(|step| {
            let mut mine: Vec<Dep> = deps
                .get(step.id.as_str())
                .into_iter()
                .flatten()
                .map(|d| Dep::on(*d))
                .collect();
            // A fallback step waits for the steps it stands in for.
            for other in &workflow.steps {
                if matches!(&other.on_failure, FailurePolicy::FallbackStep(x) if *x == step.id) {
                    mine.push(Dep {
                        key: other.id.clone(),
                        ordering_only: true,
                    });
                }
            }
            NewStep {
                key: step.id.clone(),
                queue: String::new(),
                deps: mine,
                wait_any: matches!(&step.kind, StepKind::Join(j) if j.wait == Wait::Any),
                input: None,
            }
        })
        .collect();
    steps.push(NewStep {
        key: END.to_owned(),
        queue: String::new(),
        deps: workflow
            .steps
            .iter()
            .map(|step| Dep {
                key: step.id.clone(),
                ordering_only: true,
            })
            .collect(),
        wait_any: false,
        input: None,
    });
    steps
}

/// A map's items: each waits for the item `max_parallel` places before it,
/// so at most `max_parallel` run at once.
pub(crate) fn items(map: &str, list: &[serde_json::Value], max_parallel: u32) -> Vec<NewStep> {
    let window = usize::try_from(max_parallel.max(1)).unwrap_or(usize::MAX);
    list.iter()
        .enumerate()
        .map(|(index, item)| NewStep {
            key: item_key(map, index),
            queue: String::new(),
            deps: index
                .checked_sub(window)
                .map(|before| Dep {
                    key: item_key(map, before),
                    ordering_only: true,
                })
                .into_iter()
                .collect(),
            wait_any: false,
            input: Some(serde_json::json!({"item": item, "index": index})),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn item_keys_round_trip() {
        assert_eq!(split_item(&item_key("each", 12)), Some(("each", 12)));
        assert_eq!(split_item("each"), None);
        assert_eq!(split_item("$end"), None);
    }

    #[test]
    fn items_form_a_window_of_max_parallel() {
        let items = items("m", &[json!(1), json!(2), json!(3), json!(4), json!(5)], 2);
        let waits: Vec<Vec<&str>> = items
            .iter()
            .map(|i| i.deps.iter().map(|d| d.key.as_str()).collect())
            .collect();
        assert_eq!(
            waits,
            [vec![], vec![], vec!["m[0]"], vec!["m[1]"], vec!["m[2]"]]
        );
        assert_eq!(items[3].input, Some(json!({"item": 4, "index": 3})));
    }
}
