//! Workflow definitions: parsing YAML or JSON, checking every part, and
//! errors that point at the line and field to fix.
//!
//! A definition names agents (a model, a system prompt, tools, whom they may
//! hand off to), tools (HTTP endpoints or external worker queues) and steps
//! with their dependencies. [`parse`] returns a checked [`Workflow`] or a
//! [`DefinitionError`] listing every problem found, each with its path
//! (`steps[2].depends_on[0]`) and line.

mod check;
mod check_step;
mod error;
mod graph;
mod model;
mod raw;
mod references;
mod source;

pub use error::{DefinitionError, Problem};
pub use model::*;
pub use source::Position;

/// The largest definition accepted, in bytes.
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;

/// Parses and checks a definition written in YAML or JSON.
pub fn parse(text: &str) -> Result<Workflow, DefinitionError> {
    if text.len() > MAX_DEFINITION_BYTES {
        return Err(DefinitionError {
            problems: vec![Problem::new(
                "",
                &format!(
                    "the definition is {} bytes; the limit is {MAX_DEFINITION_BYTES}",
                    text.len()
                ),
            )],
        });
    }
    let loaded = source::load(text).map_err(|problem| DefinitionError {
        problems: vec![problem],
    })?;
    let raw: raw::RawWorkflow =
        serde_path_to_error::deserialize(&loaded.value).map_err(|error| {
            let (path, message) = shape_problem(&error);
            DefinitionError {
                problems: vec![Problem::new(&path, &message).at(loaded.positions.find(&path))],
            }
        })?;

    let mut checker = check::Checker::default();
    let workflow = checker.workflow(&raw).map(|mut workflow| {
        graph::check(&mut checker, &raw, &mut workflow);
        workflow
    });
    match workflow {
        Some(workflow) if checker.problems.is_empty() => Ok(workflow),
        _ => {
            let mut problems: Vec<Problem> = checker
                .problems
                .into_iter()
                .map(|p| {
                    let position = loaded.positions.find(&p.path);
                    p.at(position)
                })
                .collect();
            problems.sort_by_key(|p| p.position.map(|at| (at.line, at.column)));
            Err(DefinitionError { problems })
        }
    }
}

/// The path and message of a value that does not fit the definition's
/// shape. An unknown field's path is its mapping's; point at the field.
fn shape_problem(error: &serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let mut path = error.path().to_string();
    if path == "." {
        path.clear();
    }
    let message = error.inner().to_string();
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        && !path.ends_with(field)
    {
        path = source::key_path(&path, field);
    }
    (path, message)
}

#[cfg(test)]
mod tests;
