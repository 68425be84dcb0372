//! Durable workflow state: registered definitions, runs, their steps and
//! every attempt, with leases so several workers (threads, processes,
//! external tool workers) share the work safely.
//!
//! The store knows nothing of what steps do; `keel-flow` decides that. What
//! it guarantees, on both backends, is the bookkeeping a crash must not
//! break: a step is claimed under a lease with a fresh token, only the
//! holder of the current token can finish it, a finished step is never
//! handed out again, and the steps waiting on it become ready in the same
//! transaction that records its result.

mod budget;
mod claim;
mod finish;
mod listen;
mod runs;
mod types;
mod workflows;

pub use claim::ClaimRequest;
pub use listen::FlowListener;
pub use types::*;
pub use workflows::StoredWorkflow;
