//! What the parts of a definition refer to: the agents, tools and
//! hand-off targets steps name, fallback steps, and the variables templates
//! read, which must be the run's input or steps upstream of the reader.

use std::collections::{BTreeSet, HashMap};

use super::check::Checker;
use super::graph::Graph;
use super::model::*;
use super::source::{index_path, key_path};
use crate::template::root;

/// What a template may read besides `input` and `run`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// Steps upstream of the reader.
    Run,
    /// Also `item` and `index`: the step inside a map.
    MapItem,
    /// `args` instead of steps: a tool's own templates.
    ToolArgs,
    /// Nothing else: an agent's system prompt.
    InputOnly,
}

/// Who is reading, and which steps are upstream of it.
pub(crate) struct Scope<'a> {
    pub(crate) graph: &'a Graph<'a>,
    pub(crate) ids: &'a [&'a str],
    pub(crate) upstream: &'a BTreeSet<usize>,
    pub(crate) reader: String,
}

pub(crate) fn references_of_agent(c: &mut Checker, workflow: &Workflow, name: &str, agent: &Agent) {
    let path = key_path("agents", name);
    for (i, tool) in agent.tools.iter().enumerate() {
        if !workflow.tools.contains_key(tool) {
            let path = index_path(&key_path(&path, "tools"), i);
            c.problem(
                &path,
                unknown("tool", tool, workflow.tools.keys().map(String::as_str)),
            );
        }
    }
    for (i, target) in agent.handoffs.iter().enumerate() {
        let path = index_path(&key_path(&path, "handoffs"), i);
        if target == name {
            c.problem(&path, "an agent cannot hand off to itself");
        } else if !workflow.agents.contains_key(target) {
            c.problem(
                &path,
                unknown("agent", target, workflow.agents.keys().map(String::as_str)),
            );
        }
    }
    if let Some(system) = &agent.system {
        let ids: [&str; 0] = [];
        let graph = Graph {
            index: HashMap::new(),
            deps: Vec::new(),
        };
        let ctx = Scope {
            graph: &graph,
            ids: &ids,
            upstream: &BTreeSet::new(),
            reader: format!("agent '{name}'"),
        };
        variables(
            c,
            &ctx,
            &key_path(&path, "system"),
            &system.variables(),
            Readable::InputOnly,
        );
    }
}

pub(crate) fn references_of_step(
    c: &mut Checker,
    workflow: &Workflow,
    ctx: &Scope<'_>,
    path: &str,
    step: &Step,
) {
    let field = |f: &str| key_path(path, f);
    let agent_known = |c: &mut Checker, agent: &str| {
        if !workflow.agents.contains_key(agent) {
            let known = workflow.agents.keys().map(String::as_str);
            c.problem(&field("agent"), unknown("agent", agent, known));
        }
    };
    match &step.kind {
        StepKind::Llm(llm) => {
            agent_known(c, &llm.agent);
            variables(
                c,
                ctx,
                &field("prompt"),
                &llm.prompt.variables(),
                Readable::Run,
            );
        }
        StepKind::Retrieve(retrieve) => {
            variables(
                c,
                ctx,
                &field("query"),
                &retrieve.query.variables(),
                Readable::Run,
            );
            if let Some(filter) = &retrieve.filter {
                variables(c, ctx, &field("filter"), &filter.variables(), Readable::Run);
            }
        }
        StepKind::Tool(tool) => {
            tool_references(c, workflow, ctx, path, &tool.tool);
            variables(
                c,
                ctx,
                &field("args"),
                &tool.args.variables(),
                Readable::Run,
            );
        }
        StepKind::Handoff(handoff) => {
            agent_known(c, &handoff.agent);
            variables(
                c,
                ctx,
                &field("prompt"),
                &handoff.prompt.variables(),
                Readable::Run,
            );
            handoff_targets(c, workflow, ctx, path, step, handoff);
        }
        StepKind::Human(human) => {
            variables(
                c,
                ctx,
                &field("prompt"),
                &human.prompt.variables(),
                Readable::Run,
            );
            if let TimeoutAction::Escalate(e) = &human.on_timeout {
                escalation_variables(c, ctx, &field("on_timeout.escalate"), e, Readable::Run);
            }
        }
        StepKind::Map(map) => {
            variables(c, ctx, &field("over"), &map.over.variables(), Readable::Run);
            references_of_map_child(c, workflow, ctx, &field("step"), &map.step);
        }
        StepKind::Join(_) => {
            if step.depends_on.is_empty() {
                c.problem(
                    &field("depends_on"),
                    "a join needs the steps it waits for in depends_on",
                );
            }
        }
    }
    if let Some(when) = &step.when {
        variables(c, ctx, &field("when"), &when.variables(), Readable::Run);
    }
    match &step.on_failure {
        FailurePolicy::FallbackStep(fallback) => {
            fallback_references(c, ctx, &field("on_failure.fallback_step"), step, fallback);
        }
        FailurePolicy::Escalate(e) => {
            escalation_variables(c, ctx, &field("on_failure.escalate"), e, Readable::Run);
        }
        FailurePolicy::Fail | FailurePolicy::Partial | FailurePolicy::FallbackModel(_) => {}
    }
}

fn references_of_map_child(
    c: &mut Checker,
    workflow: &Workflow,
    ctx: &Scope<'_>,
    path: &str,
    child: &Step,
) {
    let field = |f: &str| key_path(path, f);
    let templates = match &child.kind {
        StepKind::Llm(llm) => {
            if !workflow.agents.contains_key(&llm.agent) {
                let known = workflow.agents.keys().map(String::as_str);
                c.problem(&field("agent"), unknown("agent", &llm.agent, known));
            }
            vec![("prompt", llm.prompt.variables())]
        }
        StepKind::Retrieve(retrieve) => {
            let mut found = vec![("query", retrieve.query.variables())];
            if let Some(filter) = &retrieve.filter {
                found.push(("filter", filter.variables()));
            }
            found
        }
        StepKind::Tool(tool) => {
            tool_references(c, workflow, ctx, path, &tool.tool);
            vec![("args", tool.args.variables())]
        }
        StepKind::Human(human) => vec![("prompt", human.prompt.variables())],
        StepKind::Handoff(_) | StepKind::Map(_) | StepKind::Join(_) => Vec::new(),
    };
    for (name, found) in templates {
        variables(c, ctx, &field(name), &found, Readable::MapItem);
    }
    if let FailurePolicy::FallbackStep(_) = child.on_failure {
        c.problem(
            &field("on_failure"),
            "the step inside a map cannot have a fallback step",
        );
    }
}

fn tool_references(c: &mut Checker, workflow: &Workflow, ctx: &Scope<'_>, path: &str, name: &str) {
    let Some(tool) = workflow.tools.get(name) else {
        let known = workflow.tools.keys().map(String::as_str);
        c.problem(&key_path(path, "tool"), unknown("tool", name, known));
        return;
    };
    if let ToolTarget::Http(http) = &tool.target {
        let tool_path = key_path(&key_path("tools", name), "http");
        let mut found = http.url.variables();
        http.headers
            .iter()
            .for_each(|(_, t)| found.extend(t.variables()));
        if let Some(body) = &http.body {
            found.extend(body.variables());
        }
        variables(c, ctx, &tool_path, &found, Readable::ToolArgs);
    }
}

fn handoff_targets(
    c: &mut Checker,
    workflow: &Workflow,
    ctx: &Scope<'_>,
    path: &str,
    step: &Step,
    handoff: &HandoffStep,
) {
    let allowed = workflow
        .agents
        .get(&handoff.agent)
        .map(|a| a.handoffs.as_slice());
    for (agent, target) in &handoff.targets {
        let path = key_path(&key_path(path, "targets"), agent);
        if let Some(allowed) = allowed.filter(|allowed| !allowed.contains(agent)) {
            c.problem(
                &path,
                format!(
                    "agent '{}' may not hand off to '{agent}': add it to agents.{}.handoffs \
                     (now: {})",
                    handoff.agent,
                    handoff.agent,
                    list(allowed.iter().map(String::as_str))
                ),
            );
        }
        match workflow.step(target) {
            None => c.problem(&path, unknown("step", target, ctx.ids.iter().copied())),
            Some(target_step) if !target_step.depends_on.contains(&step.id) => c.problem(
                &path,
                format!(
                    "step '{target}' must list '{}' in its depends_on to run after the handoff",
                    step.id
                ),
            ),
            Some(_) => {}
        }
    }
}

fn fallback_references(c: &mut Checker, ctx: &Scope<'_>, path: &str, step: &Step, fallback: &str) {
    let Some(&at) = ctx.graph.index.get(fallback) else {
        c.problem(path, unknown("step", fallback, ctx.ids.iter().copied()));
        return;
    };
    if fallback == step.id {
        c.problem(path, "a step cannot be its own fallback");
        return;
    }
    // The fallback runs once the step has failed, so everything it needs
    // must already be done then: its dependencies are upstream of the step.
    let needs_more = ctx.graph.deps[at].iter().any(|d| !ctx.upstream.contains(d));
    if needs_more {
        c.problem(
            path,
            format!(
                "fallback step '{fallback}' depends on steps that are not upstream of '{}'",
                step.id
            ),
        );
    }
}

fn escalation_variables(
    c: &mut Checker,
    ctx: &Scope<'_>,
    path: &str,
    e: &Escalation,
    readable: Readable,
) {
    if let Some(message) = &e.message {
        variables(
            c,
            ctx,
            &key_path(path, "message"),
            &message.variables(),
            readable,
        );
    }
}

/// Checks each variable a template at `path` reads.
pub(crate) fn variables(
    c: &mut Checker,
    ctx: &Scope<'_>,
    path: &str,
    found: &BTreeSet<String>,
    readable: Readable,
) {
    for variable in found {
        let mut segments = variable.split('.');
        let first = root(variable);
        segments.next();
        match (first, readable) {
            ("input" | "run", _) => {}
            ("item" | "index", Readable::MapItem) => {}
            ("args", Readable::ToolArgs) => {}
            ("steps", Readable::Run | Readable::MapItem) => {
                let Some(id) = segments.next() else { continue };
                match ctx.graph.index.get(id) {
                    None => c.problem(path, unknown("step", id, ctx.ids.iter().copied())),
                    Some(at) if !ctx.upstream.contains(at) => c.problem(
                        path,
                        format!(
                            "{} reads steps.{id}, which is not upstream of it: add '{id}' to \
                             depends_on",
                            ctx.reader
                        ),
                    ),
                    Some(_) => {}
                }
            }
            _ => {
                let known = match readable {
                    Readable::Run => "input, run, steps.<id>",
                    Readable::MapItem => "input, run, steps.<id>, item, index",
                    Readable::ToolArgs => "input, run, args",
                    Readable::InputOnly => "input, run",
                };
                c.problem(
                    path,
                    format!("unknown variable `{first}`: this template can read {known}"),
                );
            }
        }
    }
}

/// "unknown step 'x' (known: a, b, c)".
pub(crate) fn unknown<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a str>) -> String {
    format!("unknown {what} '{name}' (known: {})", list(known))
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<_> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
