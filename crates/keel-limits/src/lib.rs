//! keel's cost controls: rate limits and hard spending caps per scope.
//!
//! Rules ([`rule`]) select requests by tenant, user, key, workflow, session
//! and model ([`scope`]) and limit requests or tokens per interval, requests
//! in flight, or spend per calendar period ([`period`]). [`Limits`] checks a
//! request against every rule that covers it and the kill switch, charging
//! all of them or none, in process or in Redis ([`limits`] has the budget
//! bound). Prompt tokens are counted before the call with the model's
//! tokenizer ([`tokens`]).

pub mod clock;
pub mod decision;
pub mod limits;
mod local;
pub mod period;
pub mod rule;
pub mod scope;
mod shared;
pub mod tokens;

pub use clock::Clock;
pub use decision::{
    BudgetExceeded, Charge, Quota, Quotas, RateKind, Refusal, ThresholdCrossed, fmt_interval,
};
pub use limits::{
    Admission, Block, LimitEvent, Limits, LimitsConfig, LimitsError, Plan, RuleSource,
};
pub use period::Period;
pub use rule::{FailMode, Limit, Rule, RuleError, RuleSpec};
pub use scope::{Attrs, Dimension, InvalidSelector, Selector};
pub use shared::RedisSettings;
pub use tokens::Tokenizer;
