//! Scopes: which requests a rule applies to, and which counter each uses.
//!
//! A rule's [`Selector`] lists dimensions (tenant, user, key, workflow,
//! session, model). A dimension with a value (`tenant=acme`) must match; a
//! dimension with `*` (`user=*`) gives every distinct value its own counter.
//! So `tenant=acme,user=*,model=gpt-4o` is "each user of tenant acme, on
//! gpt-4o", and a request without a user is outside it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A request attribute a rule can select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The tenant.
    Tenant,
    /// The user within the tenant.
    User,
    /// The API key.
    Key,
    /// The workflow (`x-keel-workflow`).
    Workflow,
    /// The session (`x-keel-session`).
    Session,
    /// The model alias.
    Model,
}

impl Dimension {
    const ALL: [Dimension; 6] = [
        Dimension::Tenant,
        Dimension::User,
        Dimension::Key,
        Dimension::Workflow,
        Dimension::Session,
        Dimension::Model,
    ];

    /// The name used in selectors.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Tenant => "tenant",
            Dimension::User => "user",
            Dimension::Key => "key",
            Dimension::Workflow => "workflow",
            Dimension::Session => "session",
            Dimension::Model => "model",
        }
    }
}

/// What a request is, for limit matching.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs<'a> {
    /// The tenant id.
    pub tenant: &'a str,
    /// The user id, if the key belongs to a user.
    pub user: Option<&'a str>,
    /// The key id.
    pub key: Option<&'a str>,
    /// The workflow, if the request names one.
    pub workflow: Option<&'a str>,
    /// The session, if the request names one.
    pub session: Option<&'a str>,
    /// The model alias.
    pub model: &'a str,
}

impl<'a> Attrs<'a> {
    fn get(&self, dimension: Dimension) -> Option<&'a str> {
        match dimension {
            Dimension::Tenant => Some(self.tenant),
            Dimension::User => self.user,
            Dimension::Key => self.key,
            Dimension::Workflow => self.workflow,
            Dimension::Session => self.session,
            Dimension::Model => Some(self.model),
        }
    }
}

/// One part of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Match {
    /// `*`: one counter per distinct value.
    Each,
    /// A fixed value that must match.
    Is(String),
}

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {input:?}: {reason}")]
pub struct InvalidSelector {
    /// The selector text.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Which requests a rule covers and how it splits its counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Sorted by dimension, each dimension at most once.
    parts: Vec<(Dimension, Match)>,
}

impl Selector {
    /// Parses `dimension=value` pairs separated by commas, such as
    /// `tenant=acme,user=*`. Values are ids: 1 to 128 characters without
    /// `,` `=` or spaces; `*` means "each value".
    pub fn parse(input: &str) -> Result<Selector, InvalidSelector> {
        let refuse = |reason: String| InvalidSelector {
            input: input.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        for part in input.split(',') {
            let Some((name, value)) = part.trim().split_once('=') else {
                return Err(refuse(format!("{part:?} is not dimension=value")));
            };
            let dimension = Dimension::ALL
                .into_iter()
                .find(|d| d.as_str() == name.trim())
                .ok_or_else(|| {
                    refuse(format!(
                        "unknown dimension {:?}; use tenant, user, key, workflow, session or model",
                        name.trim()
                    ))
                })?;
            let value = value.trim();
            let valid =
                !value.is_empty() && value.len() <= 128 && !value.contains([',', '=', ' ', '\t']);
            if !valid {
                return Err(refuse(format!(
                    "{name} has an empty or malformed value {value:?}"
                )));
            }
            if parts.iter().any(|(d, _)| *d == dimension) {
                return Err(refuse(format!("{name} appears twice")));
            }
            let matcher = if value == "*" {
                Match::Each
            } else {
                Match::Is(value.to_owned())
            };
            parts.push((dimension, matcher));
        }
        parts.sort_by_key(|(d, _)| *d);
        Ok(Selector { parts })
    }

    /// Whether every dimension has a fixed value (no `*`), as blocks need.
    pub fn is_exact(&self) -> bool {
        self.parts.iter().all(|(_, m)| matches!(m, Match::Is(_)))
    }

    /// Whether the rule applies to `attrs` (as [`Selector::partition`]
    /// would say, without building the key).
    pub fn matches(&self, attrs: &Attrs<'_>) -> bool {
        self.parts.iter().all(
            |(dimension, matcher)| match (attrs.get(*dimension), matcher) {
                (None, _) => false,
                (Some(_), Match::Each) => true,
                (Some(value), Match::Is(want)) => want == value,
            },
        )
    }

    /// The counter key for `attrs`, or `None` when the rule does not apply:
    /// a fixed value differs, or the request lacks a selected dimension.
    pub fn partition(&self, attrs: &Attrs<'_>) -> Option<String> {
        let mut key = String::new();
        for (dimension, matcher) in &self.parts {
            let value = attrs.get(*dimension)?;
            if let Match::Is(want) = matcher
                && want != value
            {
                return None;
            }
            if !key.is_empty() {
                key.push(',');
            }
            key.push_str(dimension.as_str());
            key.push('=');
            key.push_str(value);
        }
        Some(key)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (dimension, matcher)) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let value = match matcher {
                Match::Each => "*",
                Match::Is(v) => v,
            };
            write!(f, "{}={value}", dimension.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(tenant: &'a str, user: Option<&'a str>, model: &'a str) -> Attrs<'a> {
        Attrs {
            tenant,
            user,
            model,
            ..Attrs::default()
        }
    }

    #[test]
    fn fixed_values_must_match() {
        let s = Selector::parse("tenant=acme,model=gpt-4o").unwrap();
        assert_eq!(
            s.partition(&attrs("acme", None, "gpt-4o")).as_deref(),
            Some("tenant=acme,model=gpt-4o")
        );
        assert_eq!(s.partition(&attrs("globex", None, "gpt-4o")), None);
        assert_eq!(s.partition(&attrs("acme", None, "other")), None);
        assert!(s.matches(&attrs("acme", None, "gpt-4o")));
        assert!(!s.matches(&attrs("acme", None, "other")));
    }

    #[test]
    fn each_gives_every_value_its_own_counter() {
        let s = Selector::parse("user=*, tenant=acme").unwrap();
        let a = s.partition(&attrs("acme", Some("alice"), "m")).unwrap();
        let b = s.partition(&attrs("acme", Some("bob"), "m")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, "tenant=acme,user=alice");
        assert_eq!(
            s.partition(&attrs("acme", None, "m")),
            None,
            "no user: out of scope"
        );
        assert!(!s.matches(&attrs("acme", None, "m")));
        assert_eq!(s.to_string(), "tenant=acme,user=*");
    }

    #[test]
    fn refuses_malformed_selectors_saying_why() {
        for (input, needle) in [
            ("tenant", "dimension=value"),
            ("org=acme", "unknown dimension"),
            ("tenant=", "malformed value"),
            ("tenant=a,tenant=b", "twice"),
            ("user=a b", "malformed value"),
        ] {
            let err = Selector::parse(input).unwrap_err();
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
    }
}
