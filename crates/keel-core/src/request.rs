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
    /// `InvalidJson` for syntax errors, `InvalidRequest` for missing fields,
    /// wrong types and bad values.
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
    // Most bodies are valid: parse them directly, and pay for path tracking
    // only to explain a failure.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let mut param = (path != "." && path != "?").then_some(path);
        // serde reports a missing field at its parent; name the field itself.
        let text = inner.to_string();
        if let Some(rest) = text.strip_prefix("missing field `")
            && let Some((field, _)) = rest.split_once('`')
        {
            param = Some(match param {
                Some(parent) => format!("{parent}.{field}"),
                None => field.to_owned(),
            });
        }
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
    fn missing_fields_are_named() {
        let err = parse_json::<ChatRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err = parse_json::<ChatRequest>(br#"{"model": "m", "messages": [{"content": "x"}]}"#)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn syntax_errors_name_no_field() {
        assert_eq!(
            parse_json::<ChatRequest>(b"{not json").unwrap_err().param,
            None
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::chat::ChatRequest;
    use crate::embeddings::EmbeddingRequest;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("model".to_owned()),
                        Just("messages".to_owned()),
                        Just("role".to_owned()),
                        Just("content".to_owned()),
                        Just("input".to_owned()),
                        "[a-z_]{1,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn message() -> impl Strategy<Value = Value> {
        (
            prop_oneof![
                Just("system"),
                Just("user"),
                Just("assistant"),
                Just("tool")
            ],
            ".{0,40}",
            prop::option::of("[a-z]{1,8}"),
        )
            .prop_map(|(role, content, name)| {
                let mut m = json!({"role": role, "content": content});
                if let Some(name) = name {
                    m["name"] = json!(name);
                }
                m
            })
    }

    proptest! {
        // Whatever bytes arrive, parsing answers with a value or an error
        // that says something; it never panics.
        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            for result in [
                parse_json::<ChatRequest>(&bytes).map(|_| ()),
                parse_json::<EmbeddingRequest>(&bytes).map(|_| ()),
            ] {
                if let Err(e) = result {
                    prop_assert!(!e.message.is_empty());
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse_json::<ChatRequest>(&bytes) {
                prop_assert!(!e.message.is_empty());
            }
        }

        // A valid request, extra fields included, survives parse → encode
        // unchanged, which is what passing it through to an upstream needs.
        #[test]
        fn valid_requests_pass_through_unchanged(
            messages in prop::collection::vec(message(), 1..5),
            extra in prop::collection::btree_map("x_[a-z]{1,6}", json_value(), 0..4),
            stream in any::<bool>(),
            max_tokens in prop::option::of(1u32..100_000),
        ) {
            let mut body = json!({"model": "m", "messages": messages, "stream": stream});
            if let Some(n) = max_tokens {
                body["max_tokens"] = json!(n);
            }
            for (k, v) in extra {
                body[k] = v;
            }
            let bytes = serde_json::to_vec(&body).unwrap();
            let request: ChatRequest = parse_json(&bytes).unwrap();
            prop_assert!(request.validate().is_ok());
            prop_assert_eq!(serde_json::to_value(&request).unwrap(), body);
        }
    }
}
