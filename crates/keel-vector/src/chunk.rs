//! Splitting long documents into overlapping chunks before embedding.
//!
//! Embedding models read a bounded number of tokens (all-MiniLM-L6-v2
//! truncates at 256), so a long text is cut into windows of at most
//! `max_words` words, each starting `max_words - overlap_words` after the
//! previous one, so a sentence cut at one boundary is whole in the next
//! chunk. A window ends early at a sentence end in its last quarter, which
//! keeps chunks readable without making them much shorter.

/// How to chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Words per chunk at most.
    pub max_words: usize,
    /// Words shared by consecutive chunks.
    pub overlap_words: usize,
}

impl Default for Chunking {
    /// 160 words stay under MiniLM's 256 tokens for ordinary English text.
    fn default() -> Self {
        Chunking {
            max_words: 160,
            overlap_words: 32,
        }
    }
}

/// Splits `text` into chunks; a short text is one chunk, an empty one none.
pub fn chunk(text: &str, how: Chunking) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let max = how.max_words.max(1);
    let overlap = how.overlap_words.min(max - 1);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < words.len() {
        let mut end = (start + max).min(words.len());
        if end < words.len() {
            // Prefer to end at a sentence in the window's last quarter.
            let earliest = start + max * 3 / 4;
            if let Some(cut) = (earliest..end).rev().find(|&i| ends_sentence(words[i - 1])) {
                end = cut;
            }
        }
        chunks.push(words[start..end].join(" "));
        if end == words.len() {
            break;
        }
        start = (end - overlap).max(start + 1);
    }
    chunks
}

fn ends_sentence(word: &str) -> bool {
    word.ends_with(['.', '!', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_chunk_and_empty_is_none() {
        assert_eq!(
            chunk("hello  world", Chunking::default()),
            vec!["hello world"]
        );
        assert!(chunk("  ", Chunking::default()).is_empty());
    }

    #[test]
    fn chunks_overlap_and_cover_every_word() {
        let text: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let chunks = chunk(
            &text.join(" "),
            Chunking {
                max_words: 30,
                overlap_words: 10,
            },
        );
        assert!(chunks.iter().all(|c| c.split(' ').count() <= 30));
        assert_eq!(chunks[0].split(' ').next_back(), Some("w29"));
        assert_eq!(chunks[1].split(' ').next(), Some("w20"), "ten words shared");
        assert_eq!(chunks.last().unwrap().split(' ').next_back(), Some("w99"));
    }

    #[test]
    fn prefers_sentence_ends_late_in_the_window() {
        let mut words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        words[26] = "end.".into();
        let chunks = chunk(
            &words.join(" "),
            Chunking {
                max_words: 30,
                overlap_words: 5,
            },
        );
        assert!(chunks[0].ends_with("end."));
        assert!(chunks[1].starts_with("w22"));
    }
}
