//! Types every keel crate shares: the OpenAI wire schema, ids, money and the
//! closed error vocabulary.
//!
//! Nothing here does I/O. Wire types keep fields keel does not know about so
//! that requests pass through to upstreams untouched.

pub mod chat;
pub mod embeddings;
pub mod error;
pub mod ids;
pub mod money;
pub mod request;

pub use error::{ErrorBody, ErrorClass, ErrorCode, ErrorDetail};
pub use ids::{InvalidId, KeyId, RequestId, TenantId, UserId};
pub use money::{Cost, Pricing};
pub use request::{RequestError, parse_json};

/// Milliseconds since the Unix epoch, for timestamps in records.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
