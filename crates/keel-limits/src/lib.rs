//! keel's cost controls: rate limits and hard spending caps per scope.
//!
//! Rules select requests by tenant, user, key, workflow, session and model
//! ([`scope`]); budgets cap spend per calendar period ([`period`]) with
//! all-or-nothing worst-case reservations ([`budget`]).
//!
//! TODO(#3): wire budgets into the gateway path, add request/token/
//! concurrency rate limits, the kill switch, the Redis backend, admin API,
//! response headers and usage trends.

pub mod budget;
pub mod period;
pub mod scope;

pub use budget::{BudgetExceeded, BudgetRule, Budgets, Reservation, ThresholdCrossed};
pub use period::Period;
pub use scope::{Attrs, Dimension, InvalidSelector, Selector};
