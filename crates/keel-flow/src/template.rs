//! Templates in definitions: prompts, queries, tool arguments and outputs
//! that draw on the run's input and on earlier steps' outputs.
//!
//! The syntax is Jinja (minijinja): `{{ input.ticket }}`,
//! `{{ steps.classify.agent }}`, `{{ item }}` inside a `map`, with filters
//! such as `| tojson`. A string that is exactly one `{{ expression }}`
//! evaluates to the expression's value with its JSON type kept, so
//! `over: "{{ input.orders }}"` yields an array, not its text. Looking up
//! something that is not there is an error, never an empty string: a prompt
//! silently missing its context is worse than a failed step.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

/// The one environment every template renders in: strict about undefined
/// values, no auto-escaping (prompts are not HTML).
static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
});

/// Names a template may use that are not run data: minijinja's globals.
const GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "loop", "self"];

/// Why a template could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// What went wrong, from the template engine.
    pub message: String,
}

impl From<minijinja::Error> for TemplateError {
    fn from(error: minijinja::Error) -> Self {
        // The engine's own text plus its detail (which names the variable).
        let mut message = error.kind().to_string();
        if let Some(detail) = error.detail() {
            message = format!("{message}: {detail}");
        }
        TemplateError { message }
    }
}

/// A string template: text with `{{ … }}` parts, or one whole expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    /// The expression inside, when the whole string is one `{{ … }}`.
    expression: Option<String>,
}

impl Template {
    /// Parses `source`, refusing bad syntax.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let expression = whole_expression(source).map(str::to_owned);
        match &expression {
            Some(expression) => drop(ENVIRONMENT.compile_expression(expression)?),
            None => drop(ENVIRONMENT.template_from_str(source)?),
        }
        Ok(Template {
            source: source.to_owned(),
            expression,
        })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every variable path the template reads (`input.ticket`,
    /// `steps.draft.text`), as far as plain attribute lookups go.
    pub fn variables(&self) -> BTreeSet<String> {
        let found = match &self.expression {
            Some(expression) => ENVIRONMENT
                .compile_expression(expression)
                .map(|e| e.undeclared_variables(true)),
            None => ENVIRONMENT
                .template_from_str(&self.source)
                .map(|t| t.undeclared_variables(true)),
        };
        found
            .unwrap_or_default()
            .into_iter()
            .filter(|name| !GLOBALS.contains(&root(name)))
            .collect()
    }

    /// Renders the template to text against `context`.
    pub fn render(&self, context: &Value) -> Result<String, TemplateError> {
        match self.evaluate(context)? {
            Value::String(text) => Ok(text),
            other => Ok(other.to_string()),
        }
    }

    /// Evaluates the template against `context`: a whole expression keeps
    /// its JSON type; anything else renders to a string.
    pub fn evaluate(&self, context: &Value) -> Result<Value, TemplateError> {
        if let Some(expression) = &self.expression {
            let value = ENVIRONMENT.compile_expression(expression)?.eval(context)?;
            return serde_json::to_value(&value).map_err(|e| TemplateError {
                message: format!("the value cannot be written as JSON: {e}"),
            });
        }
        Ok(Value::String(
            ENVIRONMENT.render_str(&self.source, context)?,
        ))
    }
}

/// The first segment of a variable path: `steps` of `steps.draft.text`.
pub(crate) fn root(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// The expression of a string that is exactly one `{{ … }}`.
fn whole_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    // `{{ a }} and {{ b }}` also starts and ends with braces.
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

/// A JSON value whose strings are templates: tool arguments, filters, a
/// run's output.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTemplate {
    /// A number, boolean or null, kept as written.
    Literal(Value),
    /// A string template.
    Text(Template),
    /// An array of templates.
    Array(Vec<ValueTemplate>),
    /// An object whose values are templates (keys are plain).
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    /// Parses every string in `value`; an error names the path under
    /// `value` (`.headers.authorization`, `[2]`) of the bad template.
    pub fn parse(value: &Value) -> Result<ValueTemplate, (String, TemplateError)> {
        Ok(match value {
            Value::String(text) => {
                ValueTemplate::Text(Template::parse(text).map_err(|e| (String::new(), e))?)
            }
            Value::Array(items) => ValueTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        ValueTemplate::parse(item).map_err(|(path, e)| (format!("[{i}]{path}"), e))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(entries) => ValueTemplate::Object(
                entries
                    .iter()
                    .map(|(key, item)| {
                        let parsed = ValueTemplate::parse(item)
                            .map_err(|(path, e)| (format!(".{key}{path}"), e))?;
                        Ok((key.clone(), parsed))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            literal => ValueTemplate::Literal(literal.clone()),
        })
    }

    /// Every variable path any template inside reads.
    pub fn variables(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        self.collect_variables(&mut found);
        found
    }

    fn collect_variables(&self, found: &mut BTreeSet<String>) {
        match self {
            ValueTemplate::Literal(_) => {}
            ValueTemplate::Text(template) => found.extend(template.variables()),
            ValueTemplate::Array(items) => items.iter().for_each(|i| i.collect_variables(found)),
            ValueTemplate::Object(entries) => {
                entries.iter().for_each(|(_, i)| i.collect_variables(found));
            }
        }
    }

    /// Evaluates every template inside against `context`.
    pub fn evaluate(&self, context: &Value) -> Result<Value, TemplateError> {
        Ok(match self {
            ValueTemplate::Literal(value) => value.clone(),
            ValueTemplate::Text(template) => template.evaluate(context)?,
            ValueTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| item.evaluate(context))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTemplate::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, item)| Ok((key.clone(), item.evaluate(context)?)))
                    .collect::<Result<Map<_, _>, TemplateError>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_text_against_input_and_steps() {
        let template =
            Template::parse("Ticket: {{ input.ticket }} ({{ steps.triage.agent }})").unwrap();
        let context =
            json!({"input": {"ticket": "refund"}, "steps": {"triage": {"agent": "billing"}}});
        assert_eq!(
            template.render(&context).unwrap(),
            "Ticket: refund (billing)"
        );
    }

    #[test]
    fn a_whole_expression_keeps_its_type() {
        let template = Template::parse("{{ input.orders }}").unwrap();
        let context = json!({"input": {"orders": [1, 2, 3]}});
        assert_eq!(template.evaluate(&context).unwrap(), json!([1, 2, 3]));

        let two = Template::parse("{{ input.a }} and {{ input.b }}").unwrap();
        let context = json!({"input": {"a": 1, "b": 2}});
        assert_eq!(two.evaluate(&context).unwrap(), json!("1 and 2"));
    }

    #[test]
    fn a_missing_value_is_an_error_not_an_empty_string() {
        let template = Template::parse("Hello {{ input.name }}").unwrap();
        let error = template.render(&json!({"input": {}})).unwrap_err();
        assert!(error.message.contains("undefined"), "{error}");
    }

    #[test]
    fn bad_syntax_is_refused() {
        assert!(Template::parse("{{ input.name ").is_err());
        assert!(Template::parse("{% if %}").is_err());
    }

    #[test]
    fn variables_lists_nested_paths_without_globals() {
        let template =
            Template::parse("{% for i in range(3) %}{{ steps.draft.text }}{% endfor %}{{ input }}")
                .unwrap();
        let variables: Vec<_> = template.variables().into_iter().collect();
        assert_eq!(variables, ["input", "steps.draft.text"]);
    }

    #[test]
    fn value_templates_evaluate_in_place_and_name_bad_paths() {
        let value = json!({"order": "{{ input.id }}", "n": 2, "tags": ["a", "{{ item }}"]});
        let template = ValueTemplate::parse(&value).unwrap();
        let out = template
            .evaluate(&json!({"input": {"id": 7}, "item": "b"}))
            .unwrap();
        assert_eq!(out, json!({"order": 7, "n": 2, "tags": ["a", "b"]}));

        let (path, _) = ValueTemplate::parse(&json!({"h": {"x": ["ok", "{{ bad"]}})).unwrap_err();
        assert_eq!(path, ".h.x[1]");
    }

    #[test]
    fn tojson_is_available() {
        let template = Template::parse("{{ input | tojson }}").unwrap();
        let out = template.render(&json!({"input": {"a": 1}})).unwrap();
        assert_eq!(out, r#"{"a":1}"#);
    }
}
