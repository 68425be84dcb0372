//! Fault rules: which failures the simulator injects, and how often.
//!
//! A rule is written `KIND:RATE[:MODEL_PREFIX]` on the command line
//! (`--fault 500:0.3`, `--fault 429:1:gpt-4o`) or as a JSON object in
//! `PUT /sim/config`. For each request the rules that match its model are
//! tried in order and the first one whose coin flip fires is injected.
//! The coin flips are drawn from a generator seeded with the config seed and
//! the request's sequence number, so a run of sequential requests is
//! reproducible.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// One kind of injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// `429`: 429 with a `retry-after: 1` header and a rate-limit error body.
    #[serde(rename = "429")]
    RateLimited,
    /// `500`: 500 with a server error body.
    #[serde(rename = "500")]
    ServerError,
    /// `503`: 503 with an overloaded error body.
    #[serde(rename = "503")]
    Unavailable,
    /// `hang`: never sends response headers (holds the request for an hour).
    #[serde(rename = "hang")]
    Hang,
    /// `cut`: streams stop after about half the chunks and the connection is
    /// dropped without a terminating event; plain responses send a truncated
    /// JSON body and then drop the connection.
    #[serde(rename = "cut")]
    CutStream,
    /// `malformed`: 200 with a body that is not valid JSON; streams carry one
    /// `data: {not json` event.
    #[serde(rename = "malformed")]
    Malformed,
}

impl FaultKind {
    /// Every kind, in the order used by [`crate::SimStats`].
    pub const ALL: [FaultKind; 6] = [
        FaultKind::RateLimited,
        FaultKind::ServerError,
        FaultKind::Unavailable,
        FaultKind::Hang,
        FaultKind::CutStream,
        FaultKind::Malformed,
    ];

    /// The name used in rules, JSON and stats (`"429"`, `"hang"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::RateLimited => "429",
            FaultKind::ServerError => "500",
            FaultKind::Unavailable => "503",
            FaultKind::Hang => "hang",
            FaultKind::CutStream => "cut",
            FaultKind::Malformed => "malformed",
        }
    }

    /// The position of this kind in [`FaultKind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kind `{s}`; expected one of 429, 500, 503, hang, cut, malformed")
            })
    }
}

/// A failure to inject into a share of requests, optionally only for some
/// models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFaultRule")]
pub struct FaultRule {
    /// What to inject.
    pub kind: FaultKind,
    /// The probability of injecting it into a matching request, in `0..=1`.
    pub rate: f64,
    /// Only requests whose model starts with this prefix match; `None`
    /// matches every model.
    pub model_prefix: Option<String>,
}

impl FaultRule {
    /// Whether this rule applies to a request for `model`.
    pub fn matches(&self, model: &str) -> bool {
        self.model_prefix
            .as_deref()
            .is_none_or(|prefix| model.starts_with(prefix))
    }

    /// Checks the rate, so rules built in code get the same checks as parsed
    /// ones.
    pub fn validate(&self) -> Result<(), SimError> {
        check_rate(self.rate).map_err(|reason| SimError::InvalidFaultRule {
            input: self.to_string(),
            reason,
        })
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.rate)?;
        if let Some(prefix) = &self.model_prefix {
            write!(f, ":{prefix}")?;
        }
        Ok(())
    }
}

impl FromStr for FaultRule {
    type Err = SimError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| SimError::InvalidFaultRule {
            input: input.to_owned(),
            reason,
        };

        // The prefix may itself contain colons (`ollama:llama3`), so split at
        // most twice.
        let mut parts = input.splitn(3, ':');
        let kind = parts.next().unwrap_or_default().parse().map_err(invalid)?;
        let rate = parts
            .next()
            .ok_or_else(|| invalid("missing rate; write KIND:RATE[:MODEL_PREFIX]".into()))?;
        let rate = rate
            .parse::<f64>()
            .map_err(|_| invalid(format!("rate `{rate}` is not a number")))?;
        check_rate(rate).map_err(invalid)?;

        let model_prefix = match parts.next() {
            Some("") => return Err(invalid("model prefix is empty; omit the colon".into())),
            prefix => prefix.map(str::to_owned),
        };
        Ok(FaultRule {
            kind,
            rate,
            model_prefix,
        })
    }
}

/// Fault rules as accepted in JSON: either the CLI string or an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawFaultRule {
    Text(String),
    Object {
        kind: FaultKind,
        rate: f64,
        #[serde(default)]
        model_prefix: Option<String>,
    },
}

impl TryFrom<RawFaultRule> for FaultRule {
    type Error = SimError;

    fn try_from(raw: RawFaultRule) -> Result<Self, Self::Error> {
        let rule = match raw {
            RawFaultRule::Text(text) => return text.parse(),
            RawFaultRule::Object {
                kind,
                rate,
                model_prefix,
            } => FaultRule {
                kind,
                rate,
                model_prefix,
            },
        };
        rule.validate()?;
        Ok(rule)
    }
}

fn check_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("rate {rate} is outside 0..=1"))
    }
}

/// Picks the fault to inject into request number `sequence` for `model`, if
/// any.
///
/// Each matching rule gets its own draw, so with `500:0.5` and `429:0.5` a
/// request fails with 500 half the time and with 429 a quarter of the time.
pub(crate) fn pick(
    rules: &[FaultRule],
    model: &str,
    seed: u64,
    sequence: u64,
) -> Option<FaultKind> {
    // Nothing to draw for the common benchmark case of no rules.
    if rules.is_empty() {
        return None;
    }

    let mut rng = StdRng::seed_from_u64(seed ^ sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rules
        .iter()
        .filter(|rule| rule.matches(model))
        .find(|rule| rng.r#gen::<f64>() < rule.rate)
        .map(|rule| rule.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> FaultRule {
        text.parse().unwrap()
    }

    #[test]
    fn parses_kind_rate_and_prefix() {
        assert_eq!(
            rule("429:1:gpt-4o"),
            FaultRule {
                kind: FaultKind::RateLimited,
                rate: 1.0,
                model_prefix: Some("gpt-4o".into()),
            }
        );
        assert_eq!(rule("500:0.3").model_prefix, None);
        assert_eq!(rule("hang:0").kind, FaultKind::Hang);
        assert_eq!(
            rule("cut:1:ollama:llama3").model_prefix.as_deref(),
            Some("ollama:llama3")
        );
    }

    #[test]
    fn rejects_bad_rules_with_a_reason() {
        for (input, reason) in [
            ("404:0.5", "unknown kind `404`"),
            ("500", "missing rate"),
            ("500:lots", "rate `lots` is not a number"),
            ("500:1.5", "outside 0..=1"),
            ("500:-0.1", "outside 0..=1"),
            ("500:NaN", "outside 0..=1"),
            ("500:0.5:", "model prefix is empty"),
        ] {
            let err = input.parse::<FaultRule>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input}: {err}");
            assert!(err.contains(input), "{input}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["429:1:gpt-4o", "malformed:0.25"] {
            assert_eq!(rule(text).to_string(), text);
        }
    }

    #[test]
    fn deserializes_strings_and_objects_and_checks_rates() {
        let rules: Vec<FaultRule> =
            serde_json::from_str(r#"["503:1", {"kind": "cut", "rate": 0.5}]"#).unwrap();
        assert_eq!(rules[0].kind, FaultKind::Unavailable);
        assert_eq!(rules[1].kind, FaultKind::CutStream);

        let bad = serde_json::from_str::<FaultRule>(r#"{"kind": "500", "rate": 2}"#);
        assert!(bad.unwrap_err().to_string().contains("outside 0..=1"));
    }

    #[test]
    fn prefix_limits_matching_models() {
        let only_gpt = rule("500:1:gpt-");
        assert!(only_gpt.matches("gpt-4o"));
        assert!(!only_gpt.matches("claude-sonnet"));
        assert!(rule("500:1").matches("anything"));
    }

    #[test]
    fn pick_fires_first_matching_rule() {
        let rules = [rule("429:1:claude"), rule("500:1"), rule("503:1")];
        assert_eq!(pick(&rules, "claude-3", 0, 7), Some(FaultKind::RateLimited));
        assert_eq!(pick(&rules, "gpt-4o", 0, 7), Some(FaultKind::ServerError));
        assert_eq!(pick(&[rule("500:0")], "gpt-4o", 0, 7), None);
        assert_eq!(pick(&[], "gpt-4o", 0, 7), None);
    }

    #[test]
    fn pick_is_reproducible_and_follows_the_rate() {
        let rules = [rule("500:0.3")];
        let draws = |seed| {
            (0..1000)
                .filter(|n| pick(&rules, "m", seed, *n).is_some())
                .count()
        };
        assert_eq!(draws(1), draws(1));
        assert!((200..400).contains(&draws(1)), "{}", draws(1));
    }
}
