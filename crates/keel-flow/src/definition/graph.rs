//! Checks between the parts of a definition: step ids and dependencies
//! (unknown, duplicate, cyclic) and the order steps run in; what each part
//! refers to is [`super::references`]'s.

use std::collections::{BTreeSet, HashMap};

use super::check::Checker;
use super::model::*;
use super::raw::RawWorkflow;
use super::references::{
    Readable, Scope, references_of_agent, references_of_step, unknown, variables,
};
use super::source::{index_path, key_path};

/// The steps of a definition as the graph sees them.
pub(crate) struct Graph<'a> {
    /// Step id → position in `steps` (first occurrence).
    pub(crate) index: HashMap<&'a str, usize>,
    /// Each step's direct dependencies, as positions.
    pub(crate) deps: Vec<Vec<usize>>,
}

/// Runs every cross-reference check and puts `workflow.steps` in
/// dependency order.
pub(crate) fn check(c: &mut Checker, raw: &RawWorkflow, workflow: &mut Workflow) {
    let graph = graph(c, raw);
    let order = match order(&graph) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<_> = cycle.iter().map(|&i| raw.steps[i].id.as_str()).collect();
            c.problem(
                &key_path(&index_path("steps", cycle[0]), "depends_on"),
                format!(
                    "steps form a cycle (each waits on the next): {} → {}",
                    names.join(" → "),
                    names[0]
                ),
            );
            return;
        }
    };
    let upstream = upstream(&graph, &order);

    for (name, agent) in &workflow.agents {
        references_of_agent(c, workflow, name, agent);
    }
    let ids: Vec<&str> = raw.steps.iter().map(|s| s.id.as_str()).collect();
    let fallbacks = fallback_targets(workflow);
    for step in &workflow.steps {
        let Some(&at) = graph.index.get(step.id.as_str()) else {
            continue;
        };
        let path = index_path("steps", at);
        let ctx = Scope {
            graph: &graph,
            ids: &ids,
            upstream: &upstream[at],
            reader: format!("step '{}'", step.id),
        };
        references_of_step(c, workflow, &ctx, &path, step);
        if fallbacks.contains(step.id.as_str()) && graph.deps.iter().any(|d| d.contains(&at)) {
            c.problem(
                &key_path(&path, "id"),
                "a fallback step runs only in place of a failed step, so no step may depend on it",
            );
        }
    }
    if let Some(output) = &workflow.output {
        let everything: BTreeSet<usize> = (0..raw.steps.len()).collect();
        let ctx = Scope {
            graph: &graph,
            ids: &ids,
            upstream: &everything,
            reader: "the workflow's output".to_owned(),
        };
        variables(c, &ctx, "output", &output.variables(), Readable::Run);
    }

    // Dependency order: a step's position is after all of its dependencies.
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(rank, &i)| (raw.steps[i].id.as_str(), rank))
        .collect();
    workflow
        .steps
        .sort_by_key(|step| rank.get(step.id.as_str()).copied().unwrap_or(usize::MAX));
}

fn graph<'a>(c: &mut Checker, raw: &'a RawWorkflow) -> Graph<'a> {
    let mut index = HashMap::new();
    for (i, step) in raw.steps.iter().enumerate() {
        if let Some(first) = index.insert(step.id.as_str(), i) {
            index.insert(step.id.as_str(), first);
            c.problem(
                &key_path(&index_path("steps", i), "id"),
                format!(
                    "duplicate step id '{}' (first used by steps[{first}])",
                    step.id
                ),
            );
        }
    }
    let mut deps = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.iter().enumerate() {
        let mut mine = Vec::new();
        for (j, dep) in step.depends_on.iter().enumerate() {
            let path = index_path(&key_path(&index_path("steps", i), "depends_on"), j);
            match index.get(dep.as_str()) {
                _ if *dep == step.id => c.problem(&path, "a step cannot depend on itself"),
                Some(&d) if mine.contains(&d) => {
                    c.problem(&path, format!("'{dep}' is listed twice"))
                }
                Some(&d) => mine.push(d),
                None => c.problem(
                    &path,
                    unknown("step", dep, raw.steps.iter().map(|s| s.id.as_str())),
                ),
            }
        }
        deps.push(mine);
    }
    Graph { index, deps }
}

/// Kahn's algorithm; on a cycle, returns the steps of one cycle in order.
fn order(graph: &Graph<'_>) -> Result<Vec<usize>, Vec<usize>> {
    let n = graph.deps.len();
    let mut waiting: Vec<usize> = graph.deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, deps) in graph.deps.iter().enumerate() {
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut next = 0;
    while let Some(&i) = order.get(next) {
        next += 1;
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                order.push(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }

    // Every step left waits on another step left: walk dependencies from
    // one of them until a step repeats; the walk from there is a cycle.
    let mut walk = Vec::new();
    let mut at = (0..n).find(|&i| waiting[i] > 0).unwrap_or(0);
    while !walk.contains(&at) {
        walk.push(at);
        at = graph.deps[at]
            .iter()
            .copied()
            .find(|&d| waiting[d] > 0)
            .unwrap_or(at);
    }
    let start = walk.iter().position(|&i| i == at).unwrap_or(0);
    Err(walk.split_off(start))
}

/// Each step's transitive dependencies.
fn upstream(graph: &Graph<'_>, order: &[usize]) -> Vec<BTreeSet<usize>> {
    let mut upstream = vec![BTreeSet::new(); graph.deps.len()];
    for &i in order {
        let mut mine = BTreeSet::new();
        for &d in &graph.deps[i] {
            mine.insert(d);
            mine.extend(upstream[d].iter().copied());
        }
        upstream[i] = mine;
    }
    upstream
}

/// Steps named as some step's fallback.
fn fallback_targets(workflow: &Workflow) -> BTreeSet<&str> {
    workflow
        .steps
        .iter()
        .filter_map(|step| match &step.on_failure {
            FailurePolicy::FallbackStep(id) => Some(id.as_str()),
            _ => None,
        })
        .collect()
}
