//! Limit rules: what a rule says (as written in config or sent to the admin
//! API) and the checked form keel enforces.
//!
//! A rule names a scope and exactly one limit:
//!
//! ```toml
//! [[limits.rules]]
//! id = "acme-users-rpm"
//! scope = "tenant=acme,user=*"
//! requests = 600
//! per = "1m"
//!
//! [[limits.rules]]
//! id = "acme-monthly"
//! scope = "tenant=acme"
//! budget_usd = 500.0
//! period = "month"
//! thresholds = [50, 80, 100]
//! ```

use std::fmt;
use std::time::Duration;

use keel_core::Cost;
use serde::{Deserialize, Serialize};

use crate::period::Period;
use crate::scope::Selector;

/// Soft thresholds used when a budget names none, in percent of the cap.
pub const DEFAULT_THRESHOLDS: [u8; 3] = [50, 80, 100];

/// The longest rate-limit interval accepted.
const MAX_INTERVAL: Duration = Duration::from_secs(31 * 86_400);

/// What a rule does when the shared (Redis) backend cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Keep serving, enforcing the rule in this process only.
    Open,
    /// Refuse requests the rule covers until the backend is back.
    Closed,
}

impl FailMode {
    /// `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// A rule as written: the shape of `[[limits.rules]]` entries and of the
/// admin API's rule bodies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A stable name: 1 to 64 letters, digits, `-`, `_` or `.` (taken from
    /// the path when the admin API's PUT leaves it out).
    #[serde(default)]
    pub id: String,
    /// Which requests it covers (`tenant=acme,user=*`).
    pub scope: String,
    /// Requests allowed per `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Tokens (prompt plus completion) allowed per `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The rate interval: `30s`, `1m`, `1h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// Requests allowed in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// The spending cap in US dollars per `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The budget period: `hour`, `day`, `week` or `month` (UTC calendar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Budget percentages that raise an event when crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<u8>>,
    /// `open` or `closed` when Redis is unreachable; budgets and concurrency
    /// default to `closed`, rates to `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_redis_error: Option<FailMode>,
}

/// A rule refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {id:?}: `{field}` {message}")]
pub struct RuleError {
    /// The rule's id as given.
    pub id: String,
    /// The field at fault (`requests`, `per`, `scope`...).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// What a rule limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// At most `limit` requests per `per` (GCRA: bursts up to `limit`).
    Requests {
        /// Requests per interval.
        limit: u32,
        /// The interval.
        per: Duration,
    },
    /// At most `limit` tokens per `per`: the prompt and the most the
    /// completion may use are charged before the call, the unused part is
    /// refunded after it.
    Tokens {
        /// Tokens per interval.
        limit: u32,
        /// The interval.
        per: Duration,
    },
    /// At most `limit` requests in flight.
    Concurrency {
        /// Requests in flight.
        limit: u32,
    },
    /// At most `cap` spent per calendar `period`.
    Budget {
        /// The cap.
        cap: Cost,
        /// The window.
        period: Period,
        /// Percentages of the cap that raise events.
        thresholds: Vec<u8>,
    },
}

impl Limit {
    /// `requests`, `tokens`, `concurrency` or `budget`.
    pub fn kind(&self) -> &'static str {
        match self {
            Limit::Requests { .. } => "requests",
            Limit::Tokens { .. } => "tokens",
            Limit::Concurrency { .. } => "concurrency",
            Limit::Budget { .. } => "budget",
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its id.
    pub id: String,
    /// Which requests it covers.
    pub selector: Selector,
    /// What it limits.
    pub limit: Limit,
    /// What it does when Redis is unreachable.
    pub on_redis_error: FailMode,
    /// The rule as written, for listing.
    pub spec: RuleSpec,
}

impl RuleSpec {
    /// Checks the rule, naming the field at fault.
    pub fn check(&self) -> Result<Rule, RuleError> {
        let refuse = |field: &'static str, message: String| RuleError {
            id: self.id.clone(),
            field,
            message,
        };
        if !valid_id(&self.id) {
            return Err(refuse(
                "id",
                "must be 1 to 64 letters, digits, `-`, `_` or `.`".into(),
            ));
        }
        let selector = Selector::parse(&self.scope).map_err(|e| refuse("scope", e.reason))?;

        let given: Vec<&'static str> = [
            ("requests", self.requests.is_some()),
            ("tokens", self.tokens.is_some()),
            ("concurrency", self.concurrency.is_some()),
            ("budget_usd", self.budget_usd.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let kind = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(refuse(
                    "requests",
                    "is missing: a rule sets one of `requests`, `tokens`, `concurrency` or `budget_usd`"
                        .into(),
                ));
            }
            many => {
                return Err(refuse(
                    many[1],
                    format!(
                        "cannot be combined with `{}`: write one rule per limit",
                        many[0]
                    ),
                ));
            }
        };
        let rate_only = |field: &'static str, set: bool| {
            if set && !matches!(kind, "requests" | "tokens") {
                Err(refuse(
                    field,
                    "only applies to `requests` and `tokens` rules".into(),
                ))
            } else {
                Ok(())
            }
        };
        rate_only("per", self.per.is_some())?;
        let budget_only = |field: &'static str, set: bool| {
            if set && kind != "budget_usd" {
                Err(refuse(field, "only applies to `budget_usd` rules".into()))
            } else {
                Ok(())
            }
        };
        budget_only("period", self.period.is_some())?;
        budget_only("thresholds", self.thresholds.is_some())?;

        let count = |field: &'static str, value: Option<u64>| -> Result<u32, RuleError> {
            let value = value.unwrap_or(0);
            if value == 0 {
                return Err(refuse(field, "must be a positive whole number".into()));
            }
            u32::try_from(value).map_err(|_| refuse(field, format!("must be at most {}", u32::MAX)))
        };
        let per = || -> Result<Duration, RuleError> {
            let text = self
                .per
                .as_deref()
                .ok_or_else(|| refuse("per", "is missing: say how often, e.g. \"1m\"".into()))?;
            parse_interval(text).map_err(|m| refuse("per", m))
        };
        let limit = match kind {
            "requests" => Limit::Requests {
                limit: count("requests", self.requests)?,
                per: per()?,
            },
            "tokens" => Limit::Tokens {
                limit: count("tokens", self.tokens)?,
                per: per()?,
            },
            "concurrency" => Limit::Concurrency {
                limit: count("concurrency", self.concurrency)?,
            },
            _ => {
                let usd = self.budget_usd.unwrap_or(-1.0);
                let cap = (usd.is_finite() && usd > 0.0 && usd < 1e9)
                    .then(|| Cost((usd * 1e6).round() as u64))
                    .ok_or_else(|| {
                        refuse(
                            "budget_usd",
                            format!("must be a positive amount of dollars below 1e9, got {usd}"),
                        )
                    })?;
                let period_text = self.period.as_deref().ok_or_else(|| {
                    refuse("period", "is missing: use hour, day, week or month".into())
                })?;
                let period = Period::parse(period_text).ok_or_else(|| {
                    refuse(
                        "period",
                        format!("{period_text:?} is not a period; use hour, day, week or month"),
                    )
                })?;
                let mut thresholds = self
                    .thresholds
                    .clone()
                    .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
                if let Some(bad) = thresholds.iter().find(|p| **p == 0 || **p > 100) {
                    return Err(refuse(
                        "thresholds",
                        format!("must be percentages from 1 to 100, got {bad}"),
                    ));
                }
                thresholds.sort_unstable();
                thresholds.dedup();
                Limit::Budget {
                    cap,
                    period,
                    thresholds,
                }
            }
        };
        let on_redis_error = self.on_redis_error.unwrap_or(match limit {
            Limit::Requests { .. } | Limit::Tokens { .. } => FailMode::Open,
            Limit::Concurrency { .. } | Limit::Budget { .. } => FailMode::Closed,
        });
        Ok(Rule {
            id: self.id.clone(),
            selector,
            limit,
            on_redis_error,
            spec: self.clone(),
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} on {})",
            self.id,
            self.limit.kind(),
            self.selector
        )
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses `30s`, `1m`, `1h`, `1d` (a positive whole number and a unit).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_secs = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3_600,
        "d" | "day" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not an interval; write a number and s, m, h or d, e.g. \"1m\""
            ));
        }
    };
    let number: u64 = if number.is_empty() {
        1
    } else {
        number
            .parse()
            .map_err(|_| format!("{text:?} has an unreadable number"))?
    };
    let interval = Duration::from_secs(number.saturating_mul(unit_secs));
    if interval.is_zero() || interval > MAX_INTERVAL {
        return Err(format!("{text:?} must be from 1s to 31d"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, scope: &str) -> RuleSpec {
        RuleSpec {
            id: id.into(),
            scope: scope.into(),
            ..RuleSpec::default()
        }
    }

    #[test]
    fn checks_each_kind_with_defaults() {
        let rule = RuleSpec {
            requests: Some(600),
            per: Some("1m".into()),
            ..spec("rpm", "tenant=acme,user=*")
        }
        .check()
        .unwrap();
        assert_eq!(
            rule.limit,
            Limit::Requests {
                limit: 600,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(rule.on_redis_error, FailMode::Open);

        let rule = RuleSpec {
            budget_usd: Some(12.5),
            period: Some("month".into()),
            thresholds: Some(vec![80, 50, 80]),
            ..spec("monthly", "tenant=acme")
        }
        .check()
        .unwrap();
        assert_eq!(
            rule.limit,
            Limit::Budget {
                cap: Cost(12_500_000),
                period: Period::Month,
                thresholds: vec![50, 80]
            }
        );
        assert_eq!(rule.on_redis_error, FailMode::Closed);
    }

    #[test]
    fn refuses_bad_rules_naming_the_field() {
        let cases = [
            (
                RuleSpec {
                    requests: Some(0),
                    per: Some("1m".into()),
                    ..spec("a", "tenant=t")
                },
                "requests",
                "positive",
            ),
            (
                RuleSpec {
                    budget_usd: Some(-5.0),
                    period: Some("day".into()),
                    ..spec("a", "tenant=t")
                },
                "budget_usd",
                "positive",
            ),
            (
                RuleSpec {
                    budget_usd: Some(5.0),
                    period: Some("fortnight".into()),
                    ..spec("a", "tenant=t")
                },
                "period",
                "not a period",
            ),
            (
                RuleSpec {
                    requests: Some(5),
                    per: Some("1m".into()),
                    ..spec("a", "org=t")
                },
                "scope",
                "unknown dimension",
            ),
            (
                RuleSpec {
                    requests: Some(5),
                    ..spec("a", "tenant=t")
                },
                "per",
                "missing",
            ),
            (
                RuleSpec {
                    requests: Some(5),
                    per: Some("5 fortnights".into()),
                    ..spec("a", "tenant=t")
                },
                "per",
                "not an interval",
            ),
            (
                RuleSpec {
                    requests: Some(5),
                    concurrency: Some(2),
                    per: Some("1s".into()),
                    ..spec("a", "tenant=t")
                },
                "concurrency",
                "cannot be combined",
            ),
            (spec("a", "tenant=t"), "requests", "missing"),
            (
                RuleSpec {
                    concurrency: Some(2),
                    ..spec("bad id!", "tenant=t")
                },
                "id",
                "letters",
            ),
            (
                RuleSpec {
                    concurrency: Some(2),
                    period: Some("day".into()),
                    ..spec("a", "tenant=t")
                },
                "period",
                "only applies",
            ),
            (
                RuleSpec {
                    budget_usd: Some(1.0),
                    period: Some("day".into()),
                    thresholds: Some(vec![0]),
                    ..spec("a", "tenant=t")
                },
                "thresholds",
                "percentages",
            ),
        ];
        for (spec, field, needle) in cases {
            let err = spec.check().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn negative_numbers_do_not_deserialize() {
        let err = serde_json::from_str::<RuleSpec>(
            r#"{"id":"a","scope":"tenant=t","requests":-1,"per":"1m"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid value"), "{err}");
        let err = serde_json::from_str::<RuleSpec>(r#"{"id":"a","scope":"tenant=t","rpm":5}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval("m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("2h"), Ok(Duration::from_secs(7_200)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("40d").is_err());
    }
}
