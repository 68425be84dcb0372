//! Liberal reading of request bodies.
//!
//! The simulator reads bodies as untyped JSON and checks only the fields it
//! uses, so requests with extra or future fields still work; a missing or
//! mistyped field it needs is a [`SimError`] naming that field.

use serde_json::{Map, Value};

use crate::error::SimError;

/// A request body as a JSON object.
pub(crate) type Object = Map<String, Value>;

/// Parses `body` as a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Object, SimError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(SimError::InvalidJson {
            reason: "expected an object at the top level".into(),
        }),
        Err(err) => Err(SimError::InvalidJson {
            reason: err.to_string(),
        }),
    }
}

/// The required string field `param`.
pub(crate) fn required_str<'a>(
    object: &'a Object,
    param: &'static str,
) -> Result<&'a str, SimError> {
    match object.get(param) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(SimError::request(param, "is required")),
        Some(_) => Err(SimError::request(param, "must be a string")),
    }
}

/// The required array field `param`.
pub(crate) fn required_array<'a>(
    object: &'a Object,
    param: &'static str,
) -> Result<&'a [Value], SimError> {
    match object.get(param) {
        Some(Value::Array(items)) => Ok(items),
        None | Some(Value::Null) => Err(SimError::request(param, "is required")),
        Some(_) => Err(SimError::request(param, "must be an array")),
    }
}

/// The optional positive integer field `param`, saturated to `u32`.
pub(crate) fn positive_u32(object: &Object, param: &'static str) -> Result<Option<u32>, SimError> {
    match object.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(0) | None => Err(SimError::request(param, "must be a positive integer")),
            Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
        },
    }
}

/// The optional boolean field `param`, false when absent.
pub(crate) fn flag(object: &Object, param: &'static str) -> Result<bool, SimError> {
    match object.get(param) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(SimError::request(param, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Object {
        parse_object(json.as_bytes()).unwrap()
    }

    #[test]
    fn refuses_non_objects() {
        assert!(matches!(
            parse_object(b"[1]"),
            Err(SimError::InvalidJson { .. })
        ));
        assert!(matches!(
            parse_object(b"{"),
            Err(SimError::InvalidJson { .. })
        ));
    }

    #[test]
    fn reads_typed_fields() {
        let body = object(r#"{"model": "m", "messages": [], "max_tokens": 5, "stream": true}"#);
        assert_eq!(required_str(&body, "model").unwrap(), "m");
        assert!(required_array(&body, "messages").unwrap().is_empty());
        assert_eq!(positive_u32(&body, "max_tokens").unwrap(), Some(5));
        assert_eq!(positive_u32(&body, "absent").unwrap(), None);
        assert!(flag(&body, "stream").unwrap());
    }

    #[test]
    fn names_the_bad_field() {
        let body = object(r#"{"model": 1, "messages": {}, "max_tokens": 0, "stream": "yes"}"#);
        let errors = [
            required_str(&body, "model").unwrap_err(),
            required_array(&body, "messages").unwrap_err(),
            positive_u32(&body, "max_tokens").unwrap_err(),
            flag(&body, "stream").unwrap_err(),
            required_str(&body, "missing").unwrap_err(),
        ];
        for (err, param) in errors
            .iter()
            .zip(["model", "messages", "max_tokens", "stream"])
        {
            assert_eq!(err.param(), Some(param));
        }
        assert_eq!(errors[4].to_string(), "invalid `missing`: is required");
    }
}
