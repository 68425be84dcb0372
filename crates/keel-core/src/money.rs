//! Money and prices as integers.
//!
//! Costs are integer micro-dollars (1 USD = 1,000,000 micros) so sums over
//! millions of ledger rows are exact and budgets compare without rounding
//! drift. Prices are quoted the way providers publish them, per million
//! tokens, and stored as micro-dollars per million tokens.

use serde::{Deserialize, Serialize};

/// An amount of money in micro-dollars.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cost(pub u64);

impl Cost {
    /// Zero cost.
    pub const ZERO: Cost = Cost(0);

    /// The amount in micro-dollars.
    pub fn micros(self) -> u64 {
        self.0
    }

    /// The amount in dollars, for display only.
    pub fn dollars(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    /// The amount in dollars as an exact decimal with six places
    /// (`"0.001234"`), for JSON and tables where a float could round.
    pub fn dollars_exact(self) -> String {
        format!("{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }

    /// Adds two costs, saturating instead of wrapping.
    pub fn saturating_add(self, other: Cost) -> Cost {
        Cost(self.0.saturating_add(other.0))
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${:.6}", self.dollars())
    }
}

/// The price of one model deployment, per million tokens in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    /// Micro-dollars per million prompt (input) tokens.
    pub input_per_mtok_micros: u64,
    /// Micro-dollars per million completion (output) tokens.
    pub output_per_mtok_micros: u64,
}

impl Pricing {
    /// Builds a price from dollars per million tokens, as price lists quote
    /// them; refuses negative or non-finite numbers.
    pub fn from_dollars_per_mtok(input: f64, output: f64) -> Option<Pricing> {
        let to_micros = |d: f64| {
            (0.0..1e9)
                .contains(&d)
                .then(|| (d * 1_000_000.0).round() as u64)
        };
        Some(Pricing {
            input_per_mtok_micros: to_micros(input)?,
            output_per_mtok_micros: to_micros(output)?,
        })
    }

    /// The cost of a call, rounded up to the next micro-dollar so that many
    /// tiny calls are never free.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Cost {
        let scaled = u128::from(prompt_tokens) * u128::from(self.input_per_mtok_micros)
            + u128::from(completion_tokens) * u128::from(self.output_per_mtok_micros);
        let micros = scaled.div_ceil(1_000_000);
        Cost(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_per_million_tokens_exactly() {
        let p = Pricing::from_dollars_per_mtok(0.15, 0.60).unwrap();
        assert_eq!(p.cost(1_000_000, 0), Cost(150_000));
        assert_eq!(p.cost(1_000, 500), Cost(150 + 300));
    }

    #[test]
    fn rounds_tiny_calls_up() {
        let p = Pricing::from_dollars_per_mtok(0.15, 0.0).unwrap();
        assert_eq!(p.cost(1, 0), Cost(1));
        assert_eq!(p.cost(0, 0), Cost::ZERO);
    }

    #[test]
    fn formats_dollars_exactly() {
        assert_eq!(Cost(1_234).dollars_exact(), "0.001234");
        assert_eq!(Cost(12_000_001).dollars_exact(), "12.000001");
        assert_eq!(Cost(u64::MAX).dollars_exact(), "18446744073709.551615");
    }

    #[test]
    fn refuses_negative_prices() {
        assert!(Pricing::from_dollars_per_mtok(-1.0, 0.0).is_none());
        assert!(Pricing::from_dollars_per_mtok(f64::NAN, 0.0).is_none());
    }
}
