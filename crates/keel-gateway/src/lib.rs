//! keel's gateway: upstream providers, routing, retries, circuit breakers
//! and fallbacks.
//!
//! [`Gateway`] takes OpenAI-shaped requests and returns OpenAI-shaped
//! responses whichever provider served them. It knows nothing of tenants,
//! keys or budgets; the server applies those around it.

pub mod breaker;
pub mod config;
pub mod error;
pub mod gateway;
pub mod provider;
mod route;

pub use breaker::{Breaker, BreakerSnapshot};
pub use config::{
    BreakerConfig, DeploymentConfig, GatewayConfig, ModelConfig, ModelKind, ProviderConfig,
    ProviderKind, RetryPolicy, Timeouts,
};
pub use error::{AttemptError, GatewayError};
pub use gateway::{BuildError, ChatStream, Gateway, LimitProfile, Served};
