//! A model-free embedder: signed feature hashing of words and word pairs.
//!
//! Each lowercase word adds ±1 at a position chosen by its hash (xxh3, so
//! vectors are the same on every machine and every keel version), each pair
//! of neighbouring words ±0.5, and the vector is scaled to unit length. Texts
//! that share words get a high cosine; texts that mean the same in other
//! words do not. Use it for exact-ish lookups and tests, not for semantics.

use xxhash_rust::xxh3::xxh3_64;

use crate::{EmbedFuture, Embedder, normalize};

/// The feature-hashing embedder.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimension: usize,
    id: String,
}

impl HashingEmbedder {
    /// An embedder producing `dimension`-long vectors (at least 1).
    pub fn new(dimension: usize) -> HashingEmbedder {
        let dimension = dimension.max(1);
        HashingEmbedder {
            dimension,
            id: format!("hashing:{dimension}"),
        }
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimension];
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut add = |feature: &[u8], weight: f32| {
            let h = xxh3_64(feature);
            let index = (h % self.dimension as u64) as usize;
            let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
            v[index] += sign * weight;
        };
        for word in &words {
            add(word.as_bytes(), 1.0);
        }
        for pair in words.windows(2) {
            add(format!("{} {}", pair[0], pair[1]).as_bytes(), 0.5);
        }
        normalize(&mut v);
        v
    }
}

impl Embedder for HashingEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        let vectors = texts.iter().map(|t| self.embed_one(t)).collect();
        Box::pin(async move { Ok(vectors) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn shared_words_score_high_and_vectors_are_stable() {
        let e = HashingEmbedder::new(256);
        let a = e.embed_one("Reset my password please");
        let b = e.embed_one("please reset my PASSWORD");
        let c = e.embed_one("quarterly revenue grew");
        assert_eq!(a.len(), 256);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cosine(&a, &b) > 0.7, "{}", cosine(&a, &b));
        assert!(cosine(&a, &c).abs() < 0.3, "{}", cosine(&a, &c));
        // Stable across runs and machines: a fixed hash, no random seed.
        assert_eq!(e.embed_one("x"), HashingEmbedder::new(256).embed_one("x"));
        assert!(e.embed_one("  ").iter().all(|x| *x == 0.0));
    }
}
