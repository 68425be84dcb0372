//! The one error type of keel-sim.
//!
//! Every way the simulator refuses input is a [`SimError`]: a bad `--fault`
//! rule, a bad runtime config, or a malformed API request. HTTP handlers turn
//! request errors into 400 responses in the dialect of the endpoint (see
//! `reply.rs`); the CLI prints the others.

/// Everything the simulator can refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A fault rule string is not `KIND:RATE[:MODEL_PREFIX]`.
    #[error("invalid fault rule `{input}`: {reason}")]
    InvalidFaultRule {
        /// The rule as given.
        input: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },

    /// A config value is out of range.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The config key at fault.
        field: &'static str,
        /// What is wrong with it and how to fix it.
        reason: String,
    },

    /// A request body is not valid JSON or not a JSON object.
    #[error("request body is not a valid JSON object: {reason}")]
    InvalidJson {
        /// What the JSON parser reported.
        reason: String,
    },

    /// A request field is missing or has a bad value.
    #[error("invalid `{param}`: {reason}")]
    InvalidRequest {
        /// The request field at fault.
        param: &'static str,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
}

impl SimError {
    /// Shorthand for [`SimError::InvalidRequest`].
    pub(crate) fn request(param: &'static str, reason: impl Into<String>) -> Self {
        SimError::InvalidRequest {
            param,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`SimError::InvalidConfig`].
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        SimError::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// The request field at fault, if the error is about one.
    pub(crate) fn param(&self) -> Option<&'static str> {
        match self {
            SimError::InvalidRequest { param, .. } => Some(param),
            SimError::InvalidConfig { field, .. } => Some(field),
            SimError::InvalidFaultRule { .. } | SimError::InvalidJson { .. } => None,
        }
    }

    /// The stable OpenAI-style `error.code` string.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            SimError::InvalidFaultRule { .. } | SimError::InvalidConfig { .. } => "invalid_config",
            SimError::InvalidJson { .. } => "invalid_json",
            SimError::InvalidRequest { .. } => "invalid_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_at_fault() {
        let err = SimError::request("messages", "must be an array");
        assert_eq!(err.to_string(), "invalid `messages`: must be an array");
        assert_eq!(err.param(), Some("messages"));
        assert_eq!(err.code(), "invalid_request");
    }
}
