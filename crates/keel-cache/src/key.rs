//! What identifies a request to the cache: an exact key over the whole
//! normalized request, and for semantic lookups a context fingerprint over
//! everything but the final user turn, plus that turn's text.
//!
//! Both are SHA-256 digests of a canonical form: object keys sorted,
//! numbers written one way (`1` and `1.0` agree), message text trimmed with
//! line endings and trailing spaces normalized, and the fields that do not
//! change an answer left out (`stream`, `stream_options`, `user`,
//! `metadata`, `store`). `max_tokens` and `max_completion_tokens` are one
//! limit. Everything else a client sends, known to keel or not, is part of
//! the key: an unknown field may change the answer, so it must change the
//! key. The scope (tenant, and the user when the cache is per user) is
//! hashed in too, so keys never meet across scopes even in a shared table.

use keel_core::chat::{ChatRequest, Content, Message, Role};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Request fields that never change an answer.
const IGNORED: &[&str] = &["stream", "stream_options", "user", "metadata", "store"];

/// The cache's view of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// Digest of the whole normalized request (hex).
    pub exact: String,
    /// Digest of the request without its final user turn (hex): entries
    /// only answer semantically within the same context.
    pub context: String,
    /// The final user turn's normalized text, when the request ends with a
    /// plain-text user message; only such requests are looked up
    /// semantically.
    pub question: Option<String>,
}

/// Whose entries a request may see: always one tenant, and one user of it
/// when the cache is scoped per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The tenant.
    pub tenant: String,
    /// The user, when entries are private to each user.
    pub user: Option<String>,
}

impl RequestKey {
    /// The keys of `request` within `scope`.
    pub fn of(request: &ChatRequest, scope: &Scope) -> RequestKey {
        let body = canonical_body(request);
        let exact = digest("exact", scope, &body, &request.messages);

        // The context is the same request without its final user turn.
        let question = match request.messages.last() {
            Some(last) if last.role == Role::User => plain_text(last),
            _ => None,
        };
        let earlier = match question {
            Some(_) => &request.messages[..request.messages.len() - 1],
            None => &request.messages[..],
        };
        let context = digest("context", scope, &body, earlier);
        RequestKey {
            exact,
            context,
            question,
        }
    }
}

/// The request as JSON without its messages and the ignored fields, with
/// the two completion limits merged.
fn canonical_body(request: &ChatRequest) -> Map<String, Value> {
    let mut body = match serde_json::to_value(request) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    body.remove("messages");
    for field in IGNORED {
        body.remove(*field);
    }
    if let Some(limit) = body.remove("max_completion_tokens") {
        body.insert("max_tokens".to_owned(), limit);
    }
    body
}

fn digest(kind: &str, scope: &Scope, body: &Map<String, Value>, messages: &[Message]) -> String {
    let mut hasher = Sha256::new();
    let mut write = |bytes: &[u8]| hasher.update(bytes);
    write(kind.as_bytes());
    write(b"\0");
    write_str(&mut write, &scope.tenant);
    write_str(&mut write, scope.user.as_deref().unwrap_or(""));
    write_canonical(&mut write, &Value::Object(body.clone()));
    let messages: Vec<Value> = messages.iter().map(normalized_message).collect();
    write_canonical(&mut write, &Value::Array(messages));
    hex::encode(hasher.finalize())
}

/// A message as JSON with its text normalized.
fn normalized_message(message: &Message) -> Value {
    let mut value = serde_json::to_value(message).unwrap_or(Value::Null);
    if let (Some(content), Value::Object(map)) = (&message.content, &mut value) {
        let content = match content {
            Content::Text(text) => Value::String(normalize_text(text)),
            Content::Parts(parts) => Value::Array(parts.iter().map(normalized_part).collect()),
        };
        map.insert("content".to_owned(), content);
    }
    value
}

fn normalized_part(part: &Value) -> Value {
    let mut part = part.clone();
    if let Some(Value::String(text)) = part.get_mut("text") {
        *text = normalize_text(text);
    }
    part
}

/// The text of a user message that is text only (a string, or text parts).
fn plain_text(message: &Message) -> Option<String> {
    let text_only = match message.content.as_ref()? {
        Content::Text(_) => true,
        Content::Parts(parts) => parts
            .iter()
            .all(|p| p.get("type").and_then(Value::as_str) == Some("text")),
    };
    let text = normalize_text(&message.content_text());
    (text_only && !text.is_empty()).then_some(text)
}

/// Trims the text and each line's end, and writes line ends as `\n`:
/// differences no reader would call a different question. Inner spacing
/// is kept, since it can matter (indented code).
pub fn normalize_text(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `value` with sorted keys, numbers as their `f64` value and every
/// string length-prefixed, so no two different values write the same bytes.
fn write_canonical(write: &mut impl FnMut(&[u8]), value: &Value) {
    match value {
        Value::Null => write(b"n"),
        Value::Bool(b) => write(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            write(b"#");
            match n.as_f64() {
                Some(f) => write(&f.to_bits().to_le_bytes()),
                None => write_str(write, &n.to_string()),
            }
        }
        Value::String(s) => {
            write(b"s");
            write_str(write, s);
        }
        Value::Array(items) => {
            write(b"[");
            write(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| write_canonical(write, item));
        }
        Value::Object(map) => {
            write(b"{");
            write(&(map.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                write_str(write, key);
                write_canonical(write, &map[key]);
            }
        }
    }
}

fn write_str(write: &mut impl FnMut(&[u8]), s: &str) {
    write(&(s.len() as u64).to_le_bytes());
    write(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn scope() -> Scope {
        Scope {
            tenant: "acme".to_owned(),
            user: None,
        }
    }

    fn key(json: &str) -> RequestKey {
        RequestKey::of(&request(json), &scope())
    }

    #[test]
    fn exact_key_ignores_field_order_whitespace_and_transport_fields() {
        let a = key(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi there"}]}"#,
        );
        let b = key(
            r#"{ "messages" : [ {"content":"  Hi there \r\n", "role":"user"} ],
                "temperature": 0.0, "model": "m", "stream": true, "user": "u-1",
                "stream_options": {"include_usage": true} }"#,
        );
        assert_eq!(a.exact, b.exact);
        assert_eq!(a.context, b.context);
        assert_eq!(a.question.as_deref(), Some("Hi there"));
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_exact_key() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#;
        let variants = [
            r#"{"model":"m2","messages":[{"role":"user","content":"Hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi!"}]}"#,
            r#"{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"Hi"}]}"#,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#,
            r#"{"model":"m","seed":7,"messages":[{"role":"user","content":"Hi"}]}"#,
            r#"{"model":"m","tools":[{"type":"function"}],"messages":[{"role":"user","content":"Hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"Hi"}]}"#,
        ];
        let base = key(base);
        for v in variants {
            assert_ne!(key(v).exact, base.exact, "{v}");
        }
    }

    #[test]
    fn both_completion_limits_are_one_limit() {
        let a = key(r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"Hi"}]}"#);
        let b = key(
            r#"{"model":"m","max_completion_tokens":9,"messages":[{"role":"user","content":"Hi"}]}"#,
        );
        assert_eq!(a.exact, b.exact);
    }

    #[test]
    fn context_covers_every_earlier_turn_and_the_system_prompt() {
        let a = key(
            r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"Q1"}]}"#,
        );
        let same_context = key(
            r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"Q2"}]}"#,
        );
        let other_system = key(
            r#"{"model":"m","messages":[{"role":"system","content":"T"},{"role":"user","content":"Q1"}]}"#,
        );
        let other_turns = key(
            r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"A"},
                {"role":"assistant","content":"B"},{"role":"user","content":"Q1"}]}"#,
        );
        assert_eq!(a.context, same_context.context);
        assert_ne!(a.exact, same_context.exact);
        assert_ne!(a.context, other_system.context);
        assert_ne!(a.context, other_turns.context);
    }

    #[test]
    fn scopes_never_share_keys() {
        let r = request(r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#);
        let acme = RequestKey::of(&r, &scope());
        let other = RequestKey::of(
            &r,
            &Scope {
                tenant: "other".to_owned(),
                user: None,
            },
        );
        let user = RequestKey::of(
            &r,
            &Scope {
                tenant: "acme".to_owned(),
                user: Some("bob".to_owned()),
            },
        );
        assert_ne!(acme.exact, other.exact);
        assert_ne!(acme.context, other.context);
        assert_ne!(acme.exact, user.exact);
        assert_ne!(acme.context, user.context);
    }

    #[test]
    fn only_a_final_plain_text_user_turn_is_a_question() {
        let tool_last = key(r#"{"model":"m","messages":[{"role":"user","content":"Hi"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c"}]},
                {"role":"tool","tool_call_id":"c","content":"42"}]}"#);
        assert_eq!(tool_last.question, None);
        let image = key(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},
                {"type":"image_url","image_url":{"url":"data:x"}}]}]}"#,
        );
        assert_eq!(image.question, None);
        let parts = key(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":" Hi "}]}]}"#,
        );
        assert_eq!(parts.question.as_deref(), Some("Hi"));
    }

    #[test]
    fn strings_cannot_run_into_each_other() {
        let a = key(r#"{"model":"ab","messages":[{"role":"user","content":"c"}]}"#);
        let b = key(r#"{"model":"a","messages":[{"role":"user","content":"bc"}]}"#);
        assert_ne!(a.exact, b.exact);
    }
}
