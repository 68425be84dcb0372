//! The simulator's settings: command-line flags, JSON shape and runtime
//! updates.
//!
//! [`SimConfig`] is both the `keel sim` flag set (flattened into the CLI by
//! the `keel` binary) and the JSON served at `GET /sim/config`.
//! `PUT /sim/config` takes a [`ConfigUpdate`] so chaos tests can change faults
//! and latency while a gateway is running.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::fault::FaultRule;

/// The largest embedding size the simulator agrees to produce, so a typo in
/// `dimensions` cannot make it allocate gigabytes.
pub const MAX_EMBEDDING_DIM: usize = 65_536;

/// The longest answer the simulator agrees to produce, in tokens.
pub const MAX_COMPLETION_TOKENS: u32 = 100_000;

/// Settings of the upstream simulator.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value_t = SimConfig::default().listen)]
    pub listen: SocketAddr,

    /// Delay in milliseconds before response headers are sent (time to first
    /// byte).
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,

    /// Streaming pace in tokens per second; 0 streams as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,

    /// Tokens per answer, capped by the request's `max_tokens`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COMPLETION_TOKENS)))]
    pub completion_tokens: u32,

    /// Answer with `completion_tokens` whatever the request's `max_tokens`
    /// says, as a misbehaving upstream would (to test hard caps on streams).
    #[arg(long)]
    pub ignore_max_tokens: bool,

    /// Embedding size when a request does not ask for `dimensions`.
    #[arg(long, default_value_t = 384)]
    pub embedding_dim: usize,

    /// Fault to inject, as KIND:RATE or KIND:RATE:MODEL_PREFIX with KIND one
    /// of 429, 500, 503, hang, cut, malformed (repeatable; first firing rule
    /// wins).
    #[arg(long = "fault", value_name = "KIND:RATE[:MODEL_PREFIX]")]
    pub faults: Vec<FaultRule>,

    /// Seed for fault coin flips.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9000)),
            ttft_ms: 0,
            tokens_per_sec: 0.0,
            completion_tokens: 16,
            ignore_max_tokens: false,
            embedding_dim: 384,
            faults: Vec::new(),
            seed: 0,
        }
    }
}

impl SimConfig {
    /// Checks every value, naming the first key that is out of range.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(self.tokens_per_sec.is_finite() && self.tokens_per_sec >= 0.0) {
            return Err(SimError::config(
                "tokens_per_sec",
                format!("{} must be a finite number >= 0", self.tokens_per_sec),
            ));
        }
        if !(1..=MAX_COMPLETION_TOKENS).contains(&self.completion_tokens) {
            return Err(SimError::config(
                "completion_tokens",
                format!(
                    "{} must be within 1..={MAX_COMPLETION_TOKENS}",
                    self.completion_tokens
                ),
            ));
        }
        if !(1..=MAX_EMBEDDING_DIM).contains(&self.embedding_dim) {
            return Err(SimError::config(
                "embedding_dim",
                format!(
                    "{} must be within 1..={MAX_EMBEDDING_DIM}",
                    self.embedding_dim
                ),
            ));
        }
        self.faults.iter().try_for_each(FaultRule::validate)
    }

    /// Returns this config with `update` applied and checked.
    pub fn updated(&self, update: ConfigUpdate) -> Result<SimConfig, SimError> {
        if update.listen.is_some_and(|listen| listen != self.listen) {
            return Err(SimError::config("listen", "cannot be changed at runtime"));
        }

        let next = SimConfig {
            listen: self.listen,
            ttft_ms: update.ttft_ms.unwrap_or(self.ttft_ms),
            tokens_per_sec: update.tokens_per_sec.unwrap_or(self.tokens_per_sec),
            completion_tokens: update.completion_tokens.unwrap_or(self.completion_tokens),
            ignore_max_tokens: update.ignore_max_tokens.unwrap_or(self.ignore_max_tokens),
            embedding_dim: update.embedding_dim.unwrap_or(self.embedding_dim),
            faults: update.faults.unwrap_or_else(|| self.faults.clone()),
            seed: update.seed.unwrap_or(self.seed),
        };
        next.validate()?;
        Ok(next)
    }
}

/// A change to the running config, as sent to `PUT /sim/config`.
///
/// Every field is optional and absent fields keep their current value, so
/// `{"faults": []}` heals the simulator without touching latency. `listen`
/// is accepted so that the output of `GET /sim/config` can be sent back, but
/// it must not differ from the current address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdate {
    /// Must equal the current listen address if given.
    pub listen: Option<SocketAddr>,
    /// New time to first byte in milliseconds.
    pub ttft_ms: Option<u64>,
    /// New streaming pace; 0 is unlimited.
    pub tokens_per_sec: Option<f64>,
    /// New answer length in tokens.
    pub completion_tokens: Option<u32>,
    /// Whether to ignore requests' `max_tokens`.
    pub ignore_max_tokens: Option<bool>,
    /// New default embedding size.
    pub embedding_dim: Option<usize>,
    /// New fault rules, replacing all current ones.
    pub faults: Option<Vec<FaultRule>>,
    /// New seed for fault coin flips.
    pub seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::fault::FaultKind;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }

    #[test]
    fn cli_defaults_match_default() {
        let cli = Cli::try_parse_from(["sim"]).unwrap();
        assert_eq!(cli.sim, SimConfig::default());
    }

    #[test]
    fn cli_parses_repeated_faults() {
        let cli = Cli::try_parse_from([
            "sim",
            "--listen",
            "0.0.0.0:9100",
            "--fault",
            "500:0.3",
            "--fault",
            "429:1:gpt-4o",
            "--tokens-per-sec",
            "50",
        ])
        .unwrap();
        assert_eq!(cli.sim.listen.port(), 9100);
        assert_eq!(cli.sim.faults.len(), 2);
        assert_eq!(cli.sim.faults[1].kind, FaultKind::RateLimited);
        assert_eq!(cli.sim.tokens_per_sec, 50.0);
    }

    #[test]
    fn cli_rejects_bad_fault_with_reason() {
        let err = Cli::try_parse_from(["sim", "--fault", "500:7"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("outside 0..=1"), "{err}");
    }

    #[test]
    fn update_keeps_absent_fields() {
        let current = SimConfig {
            ttft_ms: 25,
            ..SimConfig::default()
        };
        let update = serde_json::from_str(r#"{"faults": ["500:1"]}"#).unwrap();
        let next = current.updated(update).unwrap();
        assert_eq!(next.ttft_ms, 25);
        assert_eq!(next.faults.len(), 1);
    }

    #[test]
    fn update_rejects_out_of_range_values() {
        let current = SimConfig::default();
        for (json, field) in [
            (r#"{"tokens_per_sec": -1}"#, "tokens_per_sec"),
            (r#"{"embedding_dim": 0}"#, "embedding_dim"),
            (r#"{"completion_tokens": 0}"#, "completion_tokens"),
            (r#"{"listen": "127.0.0.1:1"}"#, "listen"),
        ] {
            let update: ConfigUpdate = serde_json::from_str(json).unwrap();
            let err = current.updated(update).unwrap_err();
            assert!(err.to_string().contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn config_json_round_trips() {
        let config = SimConfig {
            faults: vec!["cut:0.5:gpt".parse().unwrap()],
            ..SimConfig::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<SimConfig>(&json).unwrap(), config);
    }
}
