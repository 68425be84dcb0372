//! keel's embedders: text in, vectors out, behind one trait so a collection
//! (or keel's own `/v1/embeddings`) can choose cost against accuracy.
//!
//! - [`LocalEmbedder`]: all-MiniLM-L6-v2 on the CPU, in process (candle +
//!   tokenizers), 384 dimensions, semantic; about as good as small hosted
//!   models at no per-call cost.
//! - [`HashingEmbedder`]: feature hashing of words and word pairs; no model,
//!   microseconds per text, but lexical only: it matches shared words, not
//!   meaning ("reset password" and "recover login" look unrelated to it).
//! - Remote, OpenAI-compatible upstreams implement [`Embedder`] where the
//!   HTTP clients live (keel-server, through the gateway).
//!
//! [`Batcher`] wraps any embedder so that concurrent callers share forward
//! passes.

mod batch;
mod hashing;
mod local;

use std::future::Future;
use std::pin::Pin;

pub use batch::Batcher;
pub use hashing::HashingEmbedder;
pub use local::{LocalEmbedder, MAX_TOKENS};

/// What an embedder returns: one vector per input text, in order.
pub type EmbedFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send + 'a>>;

/// Turns texts into vectors of a fixed dimension.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// A stable name, stored with collections (`local:all-MiniLM-L6-v2`).
    fn id(&self) -> &str;
    /// The length of every vector it returns.
    fn dimension(&self) -> usize;
    /// Embeds `texts`, returning one vector per text in the same order.
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a>;
    /// Tokens the texts count as, for usage and rate limits; by default an
    /// estimate of four characters per token.
    fn count_tokens(&self, texts: &[String]) -> u64 {
        texts
            .iter()
            .map(|t| (t.chars().count() as u64).div_ceil(4))
            .sum()
    }
}

/// Why embedding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// The model could not be loaded (missing or corrupt files).
    #[error("embedding model at {path}: {message}")]
    Load {
        /// The model directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Running the model failed.
    #[error("embedding failed: {0}")]
    Model(String),
    /// A remote embedder's upstream failed.
    #[error("embedding upstream failed: {0}")]
    Upstream(String),
    /// The embedder is shutting down.
    #[error("the embedder is shut down")]
    Closed,
}

/// Scales `v` to unit length (left as is when it is all zeros).
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
