//! keel's response cache: never generate the same answer twice, never
//! serve a wrong one.
//!
//! - [`key`]: the exact key and the context fingerprint of a request.
//! - [`guard`]: vetoes semantic hits whose questions differ in what the
//!   answer depends on (numbers, names, negation, opposites, language).
//! - [`settings`]: what is cached, for how long, and how close a
//!   semantic hit must be.
//! - [`ResponseCache`]: lookups (exact, then semantic), fills, TTL and
//!   size eviction, invalidation; entries live in the vector store, in
//!   process or in PostgreSQL with pgvector.
//! - [`flight`]: identical requests in flight share one generation.
//! - [`replay`]: a cached answer as the chunks of a stream.

mod cache;
pub mod entry;
pub mod flight;
pub mod guard;
pub mod key;
pub mod replay;
pub mod settings;
pub mod transcript;

pub use cache::{CacheError, Hit, HitKind, Probe, ResponseCache};
pub use entry::Entry;
pub use key::{RequestKey, Scope};
pub use settings::{CacheSettings, Skip};

/// The similarity a semantic hit needs by default (cosine between
/// all-MiniLM-L6-v2 vectors). Chosen on `bench/cache/pairs_dev.jsonl`: one
/// step above the lowest threshold at which the guard keeps false hits at
/// their floor (see `bench/RESULTS.md`).
pub const DEFAULT_THRESHOLD: f32 = 0.80;
