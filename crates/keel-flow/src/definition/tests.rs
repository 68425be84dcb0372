use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../../../examples/workflows/support_triage.yaml");

/// A small valid definition the bad cases below change one thing in.
const BASE: &str = "\
name: demo
agents:
  writer: {model: gpt-4o-mini}
steps:
  - id: draft
    kind: llm
    agent: writer
    prompt: 'Write about {{ input.topic }}'
  - id: review
    kind: llm
    agent: writer
    depends_on: [draft]
    prompt: 'Review: {{ steps.draft }}'
";

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("expected the definition to be refused"),
        Err(error) => error.problems,
    }
}

/// Asserts the only problem is at `path`, on `line`, saying `says`.
fn refused(text: &str, path: &str, line: usize, says: &str) {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let problem = &problems[0];
    assert_eq!(problem.path, path, "{problem}");
    assert_eq!(problem.position.map(|p| p.line), Some(line), "{problem}");
    assert!(problem.message.contains(says), "{problem}");
}

#[test]
fn the_example_parses_with_steps_in_dependency_order() {
    let workflow = parse(EXAMPLE).unwrap();
    assert_eq!(workflow.name, "support_triage");
    assert_eq!(workflow.limits.max_steps, 40);
    assert_eq!(workflow.limits.max_cost, Some(keel_core::Cost(500_000)));
    let order: Vec<_> = workflow.steps.iter().map(|s| s.id.as_str()).collect();
    for step in &workflow.steps {
        let at = order.iter().position(|id| *id == step.id).unwrap();
        for dep in &step.depends_on {
            let dep_at = order.iter().position(|id| id == dep).unwrap();
            assert!(dep_at < at, "{dep} must come before {}", step.id);
        }
    }

    let approval = workflow.step("refund_approval").unwrap();
    let StepKind::Human(human) = &approval.kind else {
        panic!("refund_approval is a human step");
    };
    assert_eq!(human.sla, Duration::from_secs(4 * 3600));
    assert!(matches!(&human.on_timeout, TimeoutAction::Escalate(e) if e.to == "support-lead"));
    assert!(approval.when.is_some());

    // Defaults: calls out retry three times and time out; people do not.
    let diagnose = workflow.step("diagnose").unwrap();
    assert_eq!(diagnose.retry.max_attempts, 3);
    assert_eq!(diagnose.timeout, Some(Duration::from_secs(120)));
    assert_eq!(approval.retry.max_attempts, 1);
    assert_eq!(approval.timeout, None);
    assert!(matches!(
        workflow.step("route").unwrap().on_failure,
        FailurePolicy::FallbackModel(ref m) if m == "gpt-4o"
    ));
}

#[test]
fn json_definitions_parse_like_yaml() {
    let json = r#"{
        "name": "demo",
        "agents": {"writer": {"model": "gpt-4o-mini"}},
        "steps": [
            {"id": "draft", "kind": "llm", "agent": "writer", "prompt": "{{ input.topic }}"}
        ]
    }"#;
    let workflow = parse(json).unwrap();
    assert_eq!(workflow.steps[0].id, "draft");

    let bad = json.replace(r#""kind": "llm""#, r#""kind": "lmm""#);
    let problems = problems(&bad);
    assert_eq!(problems[0].path, "steps[0].kind");
    assert_eq!(problems[0].position.unwrap().line, 5);
    assert!(
        problems[0].message.contains("unknown variant `lmm`"),
        "{}",
        problems[0]
    );
}

#[test]
fn unknown_fields_point_at_the_field() {
    let text = BASE.replace("    prompt: 'Write", "    promt: 'Write");
    refused(&text, "steps[0].promt", 8, "unknown field `promt`");
}

#[test]
fn missing_fields_name_the_kind() {
    let text = BASE.replace("    prompt: 'Write about {{ input.topic }}'\n", "");
    refused(
        &text,
        "steps[0]",
        5,
        "missing field `prompt`: a llm step needs it",
    );
}

#[test]
fn fields_of_another_kind_are_refused() {
    let text = BASE.replace(
        "    agent: writer\n    prompt: 'Write",
        "    agent: writer\n    collection: kb\n    prompt: 'Write",
    );
    refused(
        &text,
        "steps[0].collection",
        8,
        "`collection` does not apply to a llm step",
    );
}

#[test]
fn cycles_are_refused_with_the_cycle_spelled_out() {
    let text = BASE.replace(
        "    agent: writer\n    prompt: 'Write",
        "    agent: writer\n    depends_on: [review]\n    prompt: 'Write",
    );
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].path, "steps[0].depends_on");
    assert_eq!(problems[0].position.unwrap().line, 8);
    assert!(
        problems[0].message.contains("draft → review → draft"),
        "{}",
        problems[0]
    );
}

#[test]
fn unknown_dependencies_list_the_known_steps() {
    let text = BASE.replace("depends_on: [draft]", "depends_on: [drfat]");
    let problems = problems(&text);
    assert_eq!(problems[0].path, "steps[1].depends_on[0]");
    assert_eq!(problems[0].position.unwrap().line, 12);
    assert!(
        problems[0]
            .message
            .contains("unknown step 'drfat' (known: draft, review)"),
        "{}",
        problems[0]
    );
}

#[test]
fn duplicate_ids_and_self_dependencies_are_refused() {
    let text = BASE.replace("id: review", "id: draft");
    let duplicate = problems(&text);
    assert!(
        duplicate
            .iter()
            .any(|p| p.path == "steps[1].id" && p.message.contains("duplicate step id 'draft'"))
    );

    let text = BASE.replace("depends_on: [draft]", "depends_on: [review]");
    let found = problems(&text);
    assert!(found.iter().any(|p| p.path == "steps[1].depends_on[0]"
        && p.position.unwrap().line == 12
        && p.message.contains("cannot depend on itself")));
}

#[test]
fn unknown_agents_and_tools_are_refused() {
    let text = BASE.replace(
        "    agent: writer\n    depends_on",
        "    agent: editor\n    depends_on",
    );
    refused(
        &text,
        "steps[1].agent",
        11,
        "unknown agent 'editor' (known: writer)",
    );

    let text = format!("{BASE}  - id: call\n    kind: tool\n    tool: search\n");
    refused(
        &text,
        "steps[2].tool",
        16,
        "unknown tool 'search' (known: none)",
    );
}

#[test]
fn bad_templates_are_refused_where_they_are_written() {
    let text = BASE.replace("{{ input.topic }}", "{{ input.topic ");
    refused(&text, "steps[0].prompt", 8, "invalid template");
}

#[test]
fn templates_may_read_only_upstream_steps() {
    let text = BASE.replace("{{ input.topic }}", "{{ steps.review }}");
    refused(
        &text,
        "steps[0].prompt",
        8,
        "reads steps.review, which is not upstream of it",
    );

    let text = BASE.replace("{{ input.topic }}", "{{ inputs.topic }}");
    refused(&text, "steps[0].prompt", 8, "unknown variable `inputs`");

    let text = BASE.replace("{{ input.topic }}", "{{ steps.nothing }}");
    refused(&text, "steps[0].prompt", 8, "unknown step 'nothing'");
}

#[test]
fn handoff_targets_must_be_allowed_agents_with_gated_steps() {
    let text = "\
name: h
agents:
  triage: {model: m, handoffs: [billing]}
  billing: {model: m}
  sales: {model: m}
steps:
  - id: route
    kind: handoff
    agent: triage
    prompt: '{{ input.ticket }}'
    targets: {billing: refund, sales: pitch}
  - id: refund
    kind: llm
    agent: billing
    depends_on: [route]
    prompt: refund
  - id: pitch
    kind: llm
    agent: sales
    prompt: pitch
";
    let problems = problems(text);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems.iter().all(|p| p.path == "steps[0].targets.sales"));
    assert!(problems[0].position.is_some());
    let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("may not hand off to 'sales'"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("must list 'route' in its depends_on"))
    );
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let text = BASE
        .replace("model: gpt-4o-mini", "model: gpt-4o-mini, temperature: 9")
        .replace(
            "depends_on: [draft]",
            "depends_on: [draft]\n    timeout: soon",
        );
    let problems = problems(&text);
    let lines: Vec<_> = problems.iter().map(|p| p.position.unwrap().line).collect();
    assert_eq!(lines, [3, 13], "{problems:#?}");
    assert!(problems[1].message.contains("'soon' is not a duration"));

    let error = parse(&text).unwrap_err().to_string();
    assert!(
        error.starts_with("invalid workflow definition: line 3 column"),
        "{error}"
    );
}

#[test]
fn fallback_steps_must_be_dormant_and_ready_in_time() {
    let text = format!(
        "{BASE}    on_failure: {{fallback_step: canned}}\n  - id: canned\n    kind: llm\n    \
         agent: writer\n    depends_on: [review]\n    prompt: sorry\n"
    );
    let problems = problems(&text);
    let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("not upstream of 'review'")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("no step may depend on it"))
            || problems.len() == 1
    );

    let ok = format!(
        "{BASE}    on_failure: {{fallback_step: canned}}\n  - id: canned\n    kind: llm\n    \
         agent: writer\n    depends_on: [draft]\n    prompt: sorry\n"
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn map_steps_read_their_item() {
    let text = "\
name: m
agents:
  writer: {model: m}
steps:
  - id: each
    kind: map
    over: '{{ input.orders }}'
    step:
      id: summarise
      kind: llm
      agent: writer
      prompt: 'Order {{ index }}: {{ item.id }}'
";
    let workflow = parse(text).unwrap();
    let StepKind::Map(map) = &workflow.steps[0].kind else {
        panic!("a map step");
    };
    assert_eq!(map.max_parallel, 8);
    assert_eq!(map.step.id, "summarise");

    let outside = text.replace("over: '{{ input.orders }}'", "over: '{{ item }}'");
    refused(&outside, "steps[0].over", 7, "unknown variable `item`");
}
