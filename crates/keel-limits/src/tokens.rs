//! Counting prompt tokens before a call, with the model's own tokenizer
//! where it is public.
//!
//! OpenAI models are counted exactly with their BPE (`o200k_base` for the
//! GPT-4o, GPT-4.1, GPT-5 and o-series families, `cl100k_base` for GPT-4 and
//! GPT-3.5), plus the per-message framing their chat format adds. Models
//! whose tokenizer is not public (Claude, most hosted open models) are
//! estimated from characters, deliberately on the high side (3 characters a
//! token, where English averages about 4), because a hold that is too small
//! is what could let spend pass a cap.

use keel_core::chat::{ChatRequest, Content};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens a chat message's framing adds (`<|start|>role ... <|end|>`).
const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;
/// Tokens held per image: the most a high-detail image can cost on
/// GPT-4o (85 base + 8 tiles of 170).
const PER_IMAGE: u64 = 1_445;

/// How prompt tokens are counted for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// OpenAI's o200k_base (GPT-4o, GPT-4.1, GPT-5, o1, o3, o4).
    O200kBase,
    /// OpenAI's cl100k_base (GPT-4, GPT-3.5, text-embedding-3).
    Cl100kBase,
    /// Characters divided by three, rounded up.
    Estimate,
}

impl Tokenizer {
    /// Parses `o200k_base`, `cl100k_base` or `estimate`.
    pub fn parse(name: &str) -> Option<Tokenizer> {
        match name {
            "o200k_base" => Some(Tokenizer::O200kBase),
            "cl100k_base" => Some(Tokenizer::Cl100kBase),
            "estimate" => Some(Tokenizer::Estimate),
            _ => None,
        }
    }

    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Tokenizer::O200kBase => "o200k_base",
            Tokenizer::Cl100kBase => "cl100k_base",
            Tokenizer::Estimate => "estimate",
        }
    }

    /// The tokenizer an upstream model name implies.
    pub fn for_model(upstream_model: &str) -> Tokenizer {
        let m = upstream_model.to_ascii_lowercase();
        let m = m.rsplit('/').next().unwrap_or(&m);
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| m.starts_with(p));
        if starts(&[
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4",
            "chatgpt-4o",
        ]) {
            Tokenizer::O200kBase
        } else if starts(&[
            "gpt-4",
            "gpt-3.5",
            "gpt-35",
            "text-embedding-3",
            "text-embedding-ada",
        ]) {
            Tokenizer::Cl100kBase
        } else {
            Tokenizer::Estimate
        }
    }

    /// Loads the BPE tables now (about 100 ms for o200k) so the first
    /// request does not pay for it.
    pub fn warm_up(self) {
        self.count("warm up");
    }

    /// Tokens in `text`.
    pub fn count(self, text: &str) -> u64 {
        let n = match self {
            Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton().count_ordinary(text),
            Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton().count_ordinary(text),
            Tokenizer::Estimate => text.chars().count().div_ceil(3),
        };
        n as u64
    }

    /// Prompt tokens of a chat request: every message's text, role and
    /// framing, images at their most, tool definitions as JSON.
    pub fn count_chat(self, request: &ChatRequest) -> u64 {
        let mut total = REPLY_PRIMING;
        for message in &request.messages {
            total += PER_MESSAGE;
            match &message.content {
                Some(Content::Text(text)) => total += self.count(text),
                Some(Content::Parts(parts)) => {
                    for part in parts {
                        total += self.count_part(part);
                    }
                }
                None => {}
            }
            if let Some(calls) = &message.tool_calls {
                for call in calls {
                    total += self.count(&call.to_string());
                }
            }
            for (key, value) in &message.extra {
                if key == "name" || key == "tool_call_id" {
                    total += 1 + self.count(value.as_str().unwrap_or_default());
                }
            }
        }
        if let Some(tools) = &request.tools {
            for tool in tools {
                total += self.count(&tool.to_string());
            }
        }
        total
    }

    fn count_part(self, part: &Value) -> u64 {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => self.count(part.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("image_url" | "input_image" | "image") => PER_IMAGE,
            _ => self.count(&part.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_tokenizer_from_the_model_name() {
        assert_eq!(Tokenizer::for_model("gpt-4o-mini"), Tokenizer::O200kBase);
        assert_eq!(Tokenizer::for_model("openai/o3-mini"), Tokenizer::O200kBase);
        assert_eq!(Tokenizer::for_model("gpt-4-turbo"), Tokenizer::Cl100kBase);
        assert_eq!(
            Tokenizer::for_model("claude-3-5-haiku-latest"),
            Tokenizer::Estimate
        );
    }

    #[test]
    fn counts_with_the_real_bpe() {
        // Known counts: "hello world" is two tokens in both encodings.
        assert_eq!(Tokenizer::O200kBase.count("hello world"), 2);
        assert_eq!(Tokenizer::Cl100kBase.count("hello world"), 2);
        assert_eq!(Tokenizer::Estimate.count("hello world"), 4);
    }

    #[test]
    fn chat_framing_and_images_are_held() {
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "hello world"},
                {"role": "user", "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image_url", "image_url": {"url": "data:x"}}
                ]}
            ]
        }))
        .unwrap();
        let n = Tokenizer::O200kBase.count_chat(&request);
        assert_eq!(n, REPLY_PRIMING + 2 * PER_MESSAGE + 2 + 2 + PER_IMAGE);
    }
}
