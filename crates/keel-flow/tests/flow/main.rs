//! The orchestrator end to end on an embedded store: every step kind and
//! policy, driven tick by tick on the engine's clock, with scripted models.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on bad fixtures"
)]

mod support;

mod kinds;
mod policies;
mod runs;
