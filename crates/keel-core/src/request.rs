//! Turning request bytes into typed bodies with errors that name the field.
//!
//! serde's own messages say what was wrong but not where; the path from
//! `serde_path_to_error` (`messages[0].role`) becomes the error's `param` so
//! a client sees exactly which field to fix.

use serde::de::DeserializeOwned;

use crate::ErrorCode;

/// A request body keel refused, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// `InvalidJson` for syntax and type errors, `InvalidRequest` for values.
    pub code: ErrorCode,
    /// The JSON path of the field at fault, if one is.
    pub param: Option<String>,
    /// What was wrong, for humans.
    pub message: String,
}

impl RequestError {
    /// A value error on `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> RequestError {
        RequestError {
            code: ErrorCode::InvalidRequest,
            param: Some(param.to_owned()),
            message: message.into(),
        }
    }
}

/// Parses a JSON body into `T`, reporting the path of the first bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RequestError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let param = (path != ".").then_some(path);
        let (code, message) = match inner.classify() {
            serde_json::error::Category::Data => (
                ErrorCode::InvalidRequest,
                match &param {
                    Some(p) => format!("invalid value for `{p}`: {inner}"),
                    None => format!("invalid request body: {inner}"),
                },
            ),
            _ => (
                ErrorCode::InvalidJson,
                format!("request body is not valid JSON: {inner}"),
            ),
        };
        RequestError {
            code,
            param,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatRequest;

    #[test]
    fn syntax_errors_are_invalid_json() {
        let err = parse_json::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn type_errors_name_the_path() {
        let err = parse_json::<ChatRequest>(
            br#"{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        assert!(err.message.contains("wizard"), "{}", err.message);
    }

    #[test]
    fn missing_fields_are_reported() {
        let err = parse_json::<ChatRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert!(err.message.contains("messages"), "{}", err.message);
    }
}
