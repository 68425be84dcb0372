//! A streamed answer put back together, so a stream can fill the cache
//! like a plain response: the chunks' text joined per choice, with the
//! finish reason and usage they carried.
//!
//! Streams whose deltas call tools are not put together (their calls
//! arrive as fragments to merge); such answers are not cached from a
//! stream.

use std::collections::BTreeMap;

use keel_core::chat::{ChatChunk, ChatCompletion, Choice, Message, Role, Usage};
use serde_json::Map;

/// The parts of a stream seen so far.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    id: String,
    model: String,
    created: u64,
    choices: BTreeMap<u32, (String, Option<String>)>,
    usage: Option<Usage>,
    tool_calls: bool,
}

impl Transcript {
    /// Takes in one chunk.
    pub fn observe(&mut self, chunk: &ChatChunk) {
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
            self.model.clone_from(&chunk.model);
            self.created = chunk.created;
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.clone());
        }
        for choice in &chunk.choices {
            let (text, finish) = self.choices.entry(choice.index).or_default();
            if let Some(content) = &choice.delta.content {
                text.push_str(content);
            }
            if choice.finish_reason.is_some() {
                finish.clone_from(&choice.finish_reason);
            }
            self.tool_calls |= choice.delta.tool_calls.is_some();
        }
    }

    /// The whole answer as a plain response, unless it called tools or
    /// had no choices.
    pub fn completion(&self) -> Option<ChatCompletion> {
        if self.tool_calls || self.choices.is_empty() {
            return None;
        }
        let choices = self
            .choices
            .iter()
            .map(|(index, (text, finish))| Choice {
                index: *index,
                message: Message::text(Role::Assistant, text.clone()),
                finish_reason: finish.clone(),
                extra: Map::new(),
            })
            .collect();
        Some(ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.usage.clone(),
            extra: Map::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay;

    #[test]
    fn a_replayed_answer_reads_back_as_itself() {
        let original: ChatCompletion = serde_json::from_value(serde_json::json!({
            "id": "c", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "One two three four five six."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut t = Transcript::default();
        for chunk in replay::chunks(&original, original.usage.clone()) {
            t.observe(&chunk);
        }
        assert_eq!(t.completion(), Some(original));
    }

    #[test]
    fn streams_with_tool_calls_are_not_put_together() {
        let mut chunk = ChatChunk::new("c", "m", 1);
        chunk.choices.push(keel_core::chat::ChunkChoice {
            index: 0,
            delta: keel_core::chat::Delta {
                tool_calls: Some(vec![serde_json::json!({"index": 0})]),
                ..Default::default()
            },
            finish_reason: Some("tool_calls".to_owned()),
            extra: Map::new(),
        });
        let mut t = Transcript::default();
        t.observe(&chunk);
        assert_eq!(t.completion(), None);
    }
}
