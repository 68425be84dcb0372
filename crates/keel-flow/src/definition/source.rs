//! Reading a definition's text, YAML or JSON, into a JSON value while
//! remembering where every key and value came from.
//!
//! YAML 1.2 is a superset of JSON, so one event-driven loader serves both and
//! every later error, from a type mismatch to a dependency cycle, can name
//! the line of the field it is about. The loader refuses what would make a
//! definition ambiguous: duplicate keys, non-string keys, several documents.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::Scalar;
use saphyr_parser::{Event, Parser, ScanError, Span};
use serde_json::{Map, Number, Value};

use super::error::Problem;

/// How many nodes a definition may expand to, aliases included: enough for
/// any real workflow, small enough that an alias bomb cannot eat memory.
const MAX_NODES: usize = 100_000;

/// A line and column in the definition's text, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1.
    pub column: usize,
}

/// Where each field of a loaded definition was written, by path
/// (`steps[2].retry.max_attempts`; the root is the empty path).
#[derive(Debug, Default, Clone)]
pub(crate) struct Positions(HashMap<String, Position>);

impl Positions {
    /// The position of `path`, or of its nearest ancestor that has one.
    pub(crate) fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.0.get(path) {
                return Some(*position);
            }
            path = parent(path)?;
        }
    }
}

/// The path one level up: `a.b[2]` → `a.b` → `a` → `` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// The path of a key under a mapping at `path`.
pub(crate) fn key_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The path of an item under a sequence at `path`.
pub(crate) fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// A loaded definition: its value and where each part was written.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) value: Value,
    pub(crate) positions: Positions,
}

/// An open collection while its events arrive.
enum Frame {
    Sequence {
        path: String,
        anchor: usize,
        items: Vec<Value>,
    },
    Mapping {
        path: String,
        anchor: usize,
        entries: Map<String, Value>,
        /// The key read last, waiting for its value.
        key: Option<String>,
    },
}

/// Builds a [`Loaded`] from parser events.
struct Loader {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    positions: Positions,
    root: Option<Value>,
    nodes: usize,
}

/// Parses `text` (YAML or JSON) into a value with the position of each part.
pub(crate) fn load(text: &str) -> Result<Loaded, Problem> {
    let mut loader = Loader {
        stack: Vec::new(),
        anchors: HashMap::new(),
        positions: Positions::default(),
        root: None,
        nodes: 0,
    };
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(syntax_problem)?;
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(at(span, "", "expected one document, found a second"));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let scalar = Scalar::parse_from_cow_and_metadata(text, style, tag.as_ref())
                    .ok_or_else(|| at(span, "", "a scalar does not match its tag"))?;
                loader.scalar(scalar, anchor, span)?;
            }
            Event::SequenceStart(anchor, _) => loader.open(span, |path| Frame::Sequence {
                path,
                anchor,
                items: Vec::new(),
            })?,
            Event::MappingStart(anchor, _) => loader.open(span, |path| Frame::Mapping {
                path,
                anchor,
                entries: Map::new(),
                key: None,
            })?,
            Event::SequenceEnd | Event::MappingEnd => loader.close(span)?,
            Event::Alias(anchor) => loader.alias(anchor, span)?,
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(Loaded {
        value: loader.root.unwrap_or(Value::Null),
        positions: loader.positions,
    })
}

impl Loader {
    /// Where the next value goes, or `None` when it is a mapping's key.
    fn next_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, items, .. }) => Some(index_path(path, items.len())),
            Some(Frame::Mapping {
                path,
                key: Some(key),
                ..
            }) => Some(key_path(path, key)),
            Some(Frame::Mapping { key: None, .. }) => None,
        }
    }

    fn count(&mut self, span: Span, added: usize) -> Result<(), Problem> {
        self.nodes += added;
        if self.nodes > MAX_NODES {
            return Err(at(
                span,
                "",
                &format!("the definition expands to more than {MAX_NODES} values"),
            ));
        }
        Ok(())
    }

    fn scalar(&mut self, scalar: Scalar<'_>, anchor: usize, span: Span) -> Result<(), Problem> {
        self.count(span, 1)?;
        let Some(path) = self.next_path() else {
            return self.key(scalar_text(scalar), span);
        };
        let value = json_scalar(scalar).ok_or_else(|| at(span, &path, "numbers must be finite"))?;
        // A mapping entry keeps its key's position: that is where the
        // field is written.
        self.positions.0.entry(path).or_insert(position(span));
        self.place(value, anchor);
        Ok(())
    }

    /// Records a mapping key, refusing duplicates.
    fn key(&mut self, key: String, span: Span) -> Result<(), Problem> {
        let Some(Frame::Mapping {
            path,
            entries,
            key: slot,
            ..
        }) = self.stack.last_mut()
        else {
            return Ok(());
        };
        let path = key_path(path, &key);
        if entries.contains_key(&key) {
            return Err(at(span, &path, &format!("duplicate key '{key}'")));
        }
        // A key's own position is where "unknown field" errors point.
        self.positions.0.insert(path, position(span));
        *slot = Some(key);
        Ok(())
    }

    fn open(&mut self, span: Span, frame: impl FnOnce(String) -> Frame) -> Result<(), Problem> {
        self.count(span, 1)?;
        let Some(path) = self.next_path() else {
            return Err(at(span, "", "mapping keys must be plain strings"));
        };
        self.positions
            .0
            .entry(path.clone())
            .or_insert(position(span));
        self.stack.push(frame(path));
        Ok(())
    }

    fn close(&mut self, span: Span) -> Result<(), Problem> {
        let (value, anchor) = match self.stack.pop() {
            Some(Frame::Sequence { items, anchor, .. }) => (Value::Array(items), anchor),
            Some(Frame::Mapping {
                entries, anchor, ..
            }) => (Value::Object(entries), anchor),
            None => return Err(at(span, "", "unbalanced end of a collection")),
        };
        self.place(value, anchor);
        Ok(())
    }

    fn alias(&mut self, anchor: usize, span: Span) -> Result<(), Problem> {
        let Some(path) = self.next_path() else {
            return Err(at(span, "", "mapping keys must be plain strings"));
        };
        let value = self
            .anchors
            .get(&anchor)
            .cloned()
            .ok_or_else(|| at(span, &path, "an alias refers to an unknown anchor"))?;
        self.count(span, size(&value))?;
        self.positions.0.entry(path).or_insert(position(span));
        self.place(value, 0);
        Ok(())
    }

    /// Puts a finished value into the open collection (or makes it the root).
    fn place(&mut self, value: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Sequence { items, .. }) => items.push(value),
            Some(Frame::Mapping { entries, key, .. }) => {
                if let Some(key) = key.take() {
                    entries.insert(key, value);
                }
            }
        }
    }
}

/// A scalar as JSON; `None` for a non-finite float, which JSON cannot hold.
fn json_scalar(scalar: Scalar<'_>) -> Option<Value> {
    Some(match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(b),
        Scalar::Integer(i) => Value::Number(i.into()),
        Scalar::FloatingPoint(f) => Value::Number(Number::from_f64(f.into_inner())?),
        Scalar::String(s) => Value::String(s.into_owned()),
    })
}

/// A scalar used as a key, as text (`200:` is the key "200").
fn scalar_text(scalar: Scalar<'_>) -> String {
    match scalar {
        Scalar::Null => "null".to_owned(),
        Scalar::Boolean(b) => b.to_string(),
        Scalar::Integer(i) => i.to_string(),
        Scalar::FloatingPoint(f) => f.to_string(),
        Scalar::String(s) => Cow::into_owned(s),
    }
}

/// How many nodes a value holds.
fn size(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Object(entries) => 1 + entries.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

fn position(span: Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn at(span: Span, path: &str, message: &str) -> Problem {
    Problem::new(path, message).at(Some(position(span)))
}

fn syntax_problem(error: ScanError) -> Problem {
    let marker = error.marker();
    Problem::new("", &format!("invalid YAML or JSON: {}", error.info())).at(Some(Position {
        line: marker.line(),
        column: marker.col() + 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_load_to_the_same_value() {
        let yaml = load("name: a\nsteps:\n  - id: x\n    n: 3\n").unwrap();
        let json = load(r#"{"name": "a", "steps": [{"id": "x", "n": 3}]}"#).unwrap();
        assert_eq!(yaml.value, json.value);
        assert_eq!(yaml.value["steps"][0]["n"], 3);
    }

    #[test]
    fn positions_point_at_keys_and_values() {
        let loaded = load("name: a\nsteps:\n  - id: x\n    kind: llm\n").unwrap();
        let kind = loaded.positions.find("steps[0].kind").unwrap();
        assert_eq!((kind.line, kind.column), (4, 5));
        // A path that was never written falls back to its nearest ancestor.
        let missing = loaded.positions.find("steps[0].agent").unwrap();
        assert_eq!(missing.line, 3);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let loaded = load("a: '3'\nb: 3\nc: yes\nd: true\n").unwrap();
        assert_eq!(loaded.value["a"], "3");
        assert_eq!(loaded.value["b"], 3);
        // YAML 1.2: `yes` is a string, not a boolean.
        assert_eq!(loaded.value["c"], "yes");
        assert_eq!(loaded.value["d"], true);
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_line() {
        let problem = load("agents:\n  a: {model: m}\n  a: {model: n}\n").unwrap_err();
        assert_eq!(problem.path, "agents.a");
        assert_eq!(problem.position.unwrap().line, 3);
        assert!(problem.message.contains("duplicate key 'a'"), "{problem}");
    }

    #[test]
    fn aliases_expand_and_bombs_are_refused() {
        let loaded = load("base: &b {model: m}\nother: *b\n").unwrap();
        assert_eq!(loaded.value["other"]["model"], "m");

        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let problem = load(&bomb).unwrap_err();
        assert!(problem.message.contains("more than"), "{problem}");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let problem = load("name: a\nsteps: [\n").unwrap_err();
        assert!(problem.position.is_some());
        assert!(
            problem.message.starts_with("invalid YAML or JSON"),
            "{problem}"
        );
    }

    #[test]
    fn several_documents_are_refused() {
        let problem = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(problem.message.contains("one document"), "{problem}");
    }
}
