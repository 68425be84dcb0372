//! Deterministic answer text and the simulator's token arithmetic.
//!
//! Answers are derived from a SHA-256 of the prompt, so a test can tell from
//! the `sim:` tag which prompt an answer belongs to, and the same prompt gets
//! the same answer in every run. A "token" here is a whitespace-separated
//! word of the answer; prompt sizes use the [`count_tokens`] approximation.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The vocabulary answers are drawn from.
const WORDS: [&str; 32] = [
    "the",
    "river",
    "keeps",
    "a",
    "steady",
    "course",
    "through",
    "quiet",
    "valleys",
    "while",
    "light",
    "falls",
    "on",
    "old",
    "stone",
    "bridges",
    "and",
    "every",
    "traveller",
    "counts",
    "small",
    "boats",
    "drifting",
    "toward",
    "harbour",
    "under",
    "amber",
    "clouds",
    "at",
    "dusk",
    "with",
    "patience",
];

/// Returns the simulator's answer to `prompt`, `tokens` words long.
///
/// The first word is `sim:` followed by the first 8 hex digits of
/// `sha256(prompt)`; the rest are drawn from a fixed vocabulary by a
/// generator seeded with the same hash. Words are separated by single
/// spaces. `tokens == 0` gives an empty string.
pub fn answer_for(prompt: &str, tokens: u32) -> String {
    if tokens == 0 {
        return String::new();
    }

    let hash: [u8; 32] = Sha256::digest(prompt.as_bytes()).into();
    // Preallocate for typical answers only; a huge `tokens` grows as it goes.
    let mut answer = String::with_capacity(12 + tokens.min(4096) as usize * 8);
    answer.push_str("sim:");
    for byte in &hash[..4] {
        answer.push(hex_digit(byte >> 4));
        answer.push(hex_digit(byte & 0x0f));
    }

    let mut rng = StdRng::from_seed(hash);
    for _ in 1..tokens {
        answer.push(' ');
        answer.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    answer
}

/// Approximates the token count of `text` as one token per four characters,
/// rounded up: `ceil(chars / 4)`, so any non-empty text is at least 1.
pub fn count_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The text of a chat message `content`: a string, or the concatenated
/// `text` of an array of `{"type": "text", "text": …}` parts. Other part
/// types (images, tool results) contribute nothing.
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// What the simulator needs from a conversation: the prompt to answer and
/// its size.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Conversation {
    /// The text of the last message with role `user`.
    pub prompt: String,
    /// [`count_tokens`] of every message's text plus 3 per message.
    pub prompt_tokens: u32,
}

impl Conversation {
    /// Reads a `messages` array of `{role, content}` objects.
    pub(crate) fn read(messages: &[Value]) -> Conversation {
        let mut conversation = Conversation::default();
        for message in messages {
            let text = message.get("content").map(content_text).unwrap_or_default();
            let tokens = count_tokens(&text).saturating_add(3);
            conversation.prompt_tokens = conversation.prompt_tokens.saturating_add(tokens);
            if message.get("role").and_then(Value::as_str) == Some("user") {
                conversation.prompt = text;
            }
        }
        conversation
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn same_prompt_gives_same_answer() {
        assert_eq!(answer_for("hello", 16), answer_for("hello", 16));
    }

    #[test]
    fn tag_is_prefix_of_prompt_hash() {
        // sha256("hello") = 2cf24dba5fb0a30e…
        let answer = answer_for("hello", 5);
        assert!(answer.starts_with("sim:2cf24dba "), "{answer}");
        assert_ne!(answer_for("hello", 5), answer_for("hello!", 5));
    }

    #[test]
    fn answer_has_requested_word_count() {
        for tokens in [1, 2, 16, 100] {
            let answer = answer_for("q", tokens);
            assert_eq!(answer.split(' ').count(), tokens as usize);
        }
        assert_eq!(answer_for("q", 0), "");
    }

    #[test]
    fn shorter_answer_is_prefix_of_longer() {
        assert!(answer_for("q", 16).starts_with(&answer_for("q", 4)));
    }

    #[test]
    fn counts_a_token_per_four_chars_rounded_up() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("a"), 1);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        assert_eq!(count_tokens("ééééé"), 2);
    }

    #[test]
    fn reads_last_user_message_and_counts_all() {
        let messages = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [
                {"type": "text", "text": "second "},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "part"}
            ]},
        ]);
        let conversation = Conversation::read(messages.as_array().unwrap());
        assert_eq!(conversation.prompt, "second part");
        // 2 + 2 + 1 + 3 tokens of text, plus 3 per message.
        assert_eq!(conversation.prompt_tokens, 8 + 12);
    }
}
