//! Integration tests for keel-store. Every repository test runs against
//! SQLite and PostgreSQL (see `support`).

#[macro_use]
mod support;

mod connect;
mod flow;
mod keys;
mod ledger;
mod limits;
mod migrations;
mod tenants;
mod usage;
mod usage_trend;
