//! The `keel` binary's integration tests: commands as a user runs them, and
//! several `keel serve` processes sharing Redis. One binary, a module per
//! area.

mod commands;
mod crash;
mod distributed;
mod process;
mod vectors;
