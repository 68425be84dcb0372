//! keel's storage: one repository API over SQLite (embedded, the default)
//! and PostgreSQL (shared by scale-out replicas).
//!
//! [`Store`] owns a connection pool and the schema ([`Store::migrate`]) and
//! offers tenants and users, API keys, the usage ledger and its trends. The
//! gateway writes the ledger through a [`Ledger`], a bounded batching writer,
//! so a request never waits on the database. Later capabilities (runs, traces)
//! add a module each, with SQL written once per dialect only where the
//! dialects differ.

mod backend;
mod error;
pub mod flow;
mod keys;
mod ledger;
mod limits;
mod migrate;
mod tenants;
mod trend;
mod usage;

pub use backend::{Backend, Store};
pub use error::StoreError;
pub use keys::{ApiKey, CreatedKey, NewKey, generate_secret, hash_key};
pub use ledger::{Ledger, LedgerClosed, LedgerConfig, LedgerTask};
pub use limits::{StoredBlock, StoredRule};
pub use migrate::SCHEMA_VERSION;
pub use tenants::{Tenant, User};
pub use trend::{
    Bucket, Dimension, MAX_TREND_ROWS, TrendQuery, TrendRow, WeekOverWeek, change_ratio,
};
pub use usage::{DEFAULT_USAGE_LIMIT, MAX_USAGE_LIMIT, UsageQuery, UsageRecord, UsageTotals};
