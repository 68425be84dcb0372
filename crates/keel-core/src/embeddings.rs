//! The OpenAI embeddings and models wire schema.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A `POST /v1/embeddings` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// The model name the client asked for (a keel model alias).
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Output dimensions, for models that support shortening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The inputs of an embeddings request, in any of OpenAI's four shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One pre-tokenized input.
    Tokens(Vec<u32>),
    /// Several pre-tokenized inputs.
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many inputs there are.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(v) => v.len(),
            EmbeddingInput::TokenBatches(v) => v.len(),
        }
    }

    /// Whether there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        match self {
            EmbeddingInput::Text(t) => t.is_empty(),
            EmbeddingInput::Tokens(t) => t.is_empty(),
            EmbeddingInput::Texts(v) => v.is_empty() || v.iter().any(String::is_empty),
            EmbeddingInput::TokenBatches(v) => v.is_empty() || v.iter().any(Vec::is_empty),
        }
    }
}

impl EmbeddingRequest {
    /// Checks the values serde cannot, naming the field at fault.
    pub fn validate(&self) -> Result<(), crate::RequestError> {
        use crate::RequestError as E;
        if self.model.trim().is_empty() {
            return Err(E::invalid("model", "`model` must not be empty"));
        }
        if self.input.is_empty() {
            return Err(E::invalid(
                "input",
                "`input` must not be empty or contain empty items",
            ));
        }
        if self.input.len() > 2048 {
            return Err(E::invalid(
                "input",
                format!(
                    "`input` has {} items; at most 2048 are allowed",
                    self.input.len()
                ),
            ));
        }
        if let Some(format) = &self.encoding_format
            && format != "float"
            && format != "base64"
        {
            return Err(E::invalid(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", got {format:?}"),
            ));
        }
        if self.dimensions == Some(0) {
            return Err(E::invalid("dimensions", "`dimensions` must be at least 1"));
        }
        Ok(())
    }
}

/// A `POST /v1/embeddings` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    /// Always `list`.
    #[serde(default = "list_object")]
    pub object: String,
    /// One embedding per input, passed through as the upstream sent it.
    pub data: Vec<Value>,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Token usage.
    #[serde(default)]
    pub usage: EmbeddingUsage,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token usage of an embeddings call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    /// Tokens read.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// The same number, as OpenAI reports it.
    #[serde(default)]
    pub total_tokens: u64,
}

/// A `GET /v1/models` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelInfo>,
}

/// One entry of a model list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model name clients use.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Who serves it.
    pub owned_by: String,
}

fn list_object() -> String {
    "list".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_all_four_input_shapes() {
        for input in [
            serde_json::json!("a"),
            serde_json::json!(["a", "b"]),
            serde_json::json!([1, 2]),
            serde_json::json!([[1], [2, 3]]),
        ] {
            let req: EmbeddingRequest =
                serde_json::from_value(serde_json::json!({"model": "e", "input": input})).unwrap();
            assert!(req.validate().is_ok());
        }
    }

    #[test]
    fn refuses_empty_input() {
        let req: EmbeddingRequest =
            serde_json::from_value(serde_json::json!({"model": "e", "input": []})).unwrap();
        assert_eq!(req.validate().unwrap_err().param.as_deref(), Some("input"));
    }
}
