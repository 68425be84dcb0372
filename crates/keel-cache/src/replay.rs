//! A cached answer replayed as a stream: the chunks an upstream would have
//! sent for it, so a client that asked to stream gets a proper event
//! stream from a hit (role first, the text in pieces, the finish reason
//! last, and usage when the client asked for it).

use keel_core::chat::{ChatChunk, ChatCompletion, ChunkChoice, Delta, Role, Usage};
use serde_json::{Map, Value};

/// Words per content chunk.
const WORDS_PER_CHUNK: usize = 4;

/// The chunks of `completion`, each choice in turn; with `usage`, a final
/// chunk without choices carries it, as OpenAI's `include_usage` does.
pub fn chunks(completion: &ChatCompletion, usage: Option<Usage>) -> Vec<ChatChunk> {
    let chunk = |choice: ChunkChoice| {
        let mut c = ChatChunk::new(&completion.id, &completion.model, completion.created);
        c.choices.push(choice);
        c
    };
    let mut out = Vec::new();
    for choice in &completion.choices {
        let delta = |content: Option<String>, role: Option<Role>, tool_calls| ChunkChoice {
            index: choice.index,
            delta: Delta {
                role,
                content,
                tool_calls,
                extra: Map::new(),
            },
            finish_reason: None,
            extra: Map::new(),
        };
        out.push(chunk(delta(
            Some(String::new()),
            Some(Role::Assistant),
            None,
        )));
        for piece in pieces(&choice.message.content_text()) {
            out.push(chunk(delta(Some(piece), None, None)));
        }
        if let Some(calls) = &choice.message.tool_calls {
            let indexed = calls
                .iter()
                .enumerate()
                .map(|(i, call)| with_index(call, i))
                .collect();
            out.push(chunk(delta(None, None, Some(indexed))));
        }
        let mut last = delta(None, None, None);
        last.finish_reason = choice.finish_reason.clone();
        out.push(chunk(last));
    }
    if let Some(usage) = usage {
        let mut c = ChatChunk::new(&completion.id, &completion.model, completion.created);
        c.usage = Some(usage);
        out.push(c);
    }
    out
}

/// The text cut after every few words, keeping all whitespace, so the
/// pieces join back to exactly the text.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if in_word {
                words += 1;
                in_word = false;
                if words == WORDS_PER_CHUNK {
                    out.push(std::mem::take(&mut current));
                    words = 0;
                }
            }
        } else {
            in_word = true;
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A streamed tool call carries its position.
fn with_index(call: &Value, index: usize) -> Value {
    let mut call = call.clone();
    if let Value::Object(map) = &mut call {
        map.entry("index").or_insert(Value::from(index));
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(text: &str) -> ChatCompletion {
        serde_json::from_value(serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn replayed_text_joins_back_exactly() {
        let text = "The capital of France is Paris.\n\nIt has  about two million people.";
        let chunks = chunks(&completion(text), None);
        let joined: String = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.delta.content.clone())
            .collect();
        assert_eq!(joined, text);
        assert!(chunks.len() > 3, "the text comes in pieces");
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        let last = chunks.last().map(|c| c.choices[0].finish_reason.clone());
        assert_eq!(last, Some(Some("stop".to_owned())));
        assert!(
            chunks
                .iter()
                .all(|c| c.id == "chatcmpl-1" && c.object == "chat.completion.chunk")
        );
    }

    #[test]
    fn usage_comes_last_without_choices() {
        let chunks = chunks(&completion("Paris."), Some(Usage::new(3, 9)));
        let last = chunks.last().unwrap_or_else(|| panic!("no chunks"));
        assert!(last.choices.is_empty());
        assert_eq!(last.usage.as_ref().map(|u| u.total_tokens), Some(12));
    }
}
