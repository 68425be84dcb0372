//! What is wrong with a definition, and where.

use std::fmt;

use super::source::Position;

/// One thing wrong with a definition: the field it is about, where that
/// field was written, and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path (`steps[2].depends_on[0]`); empty for the whole
    /// definition.
    pub path: String,
    /// Where the field (or its nearest written ancestor) is in the text.
    pub position: Option<Position>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: &str, message: &str) -> Problem {
        Problem {
            path: path.to_owned(),
            position: None,
            message: message.to_owned(),
        }
    }

    pub(crate) fn at(mut self, position: Option<Position>) -> Problem {
        self.position = position;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(Position { line, column }) = self.position {
            write!(f, "line {line} column {column}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A definition that was refused, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    /// The problems, in the order of the text where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid workflow definition: ")?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
