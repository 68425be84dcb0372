//! `keel sim`: an OpenAI- and Anthropic-compatible upstream simulator for
//! demos, load tests and chaos tests of the keel gateway.
//!
//! The simulator answers `POST /v1/chat/completions`, `POST /v1/messages`
//! and `POST /v1/embeddings` (plain and streamed) with deterministic content:
//! the answer to a prompt is [`answer_for`] of its last user message, and an
//! embedding depends only on the model and the text. Latency (time to first
//! byte, streaming pace) and faults (429, 500, 503, hangs, cut streams,
//! malformed bodies) are set by [`SimConfig`] and can be changed at runtime
//! through `PUT /sim/config`; `GET /sim/stats` reports what was served.
//!
//! It is also the baseline in latency benchmarks, so the request path logs
//! nothing above debug and takes no lock other than one read of the config.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = keel_sim::spawn(keel_sim::SimConfig::default()).await?;
//! let base_url = sim.base_url(); // http://127.0.0.1:PORT/v1
//! # Ok(()) }
//! ```

mod admin;
mod anthropic;
mod config;
mod embeddings;
mod error;
mod fault;
mod openai;
mod reply;
mod request;
mod sim;
mod spawn;
mod sse;
mod stats;
mod text;

pub use config::{ConfigUpdate, MAX_COMPLETION_TOKENS, MAX_EMBEDDING_DIM, SimConfig};
pub use error::SimError;
pub use fault::{FaultKind, FaultRule};
pub use sim::Sim;
pub use spawn::{SpawnedSim, spawn};
pub use stats::SimStats;
pub use text::{answer_for, count_tokens};
