//! keel-server's integration tests: a real `App` over HTTP against the
//! simulator. One binary, a module per area.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test on bad fixtures"
)]

mod cache;
mod collections;
mod flow;
mod limits;
mod requests;
mod support;
mod usage;
