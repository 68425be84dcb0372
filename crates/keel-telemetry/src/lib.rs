//! keel's observability: the Prometheus metrics registry and the instruments
//! every other crate records into.
//!
//! Label values are bounded: models and deployments come from config, tenants
//! from the tenant table, error codes from keel-core's closed vocabulary. No
//! label ever carries a request id, user text or a free-form string.

pub mod metrics;

pub use metrics::{BreakerStateValue, InFlight, Metrics};
