//! The OpenAI embeddings endpoint: `POST /v1/embeddings`.
//!
//! Each input gets a unit-length vector drawn from a generator seeded with
//! `sha256(model + "\0" + text)`, so the same text under the same model
//! always embeds the same way and different texts are nearly orthogonal.
//! Token-array inputs are hashed as their decimal ids joined by spaces.

use std::f64::consts::TAU;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::MAX_EMBEDDING_DIM;
use crate::error::SimError;
use crate::fault::FaultKind;
use crate::reply::{self, Dialect};
use crate::request;
use crate::sim::Sim;
use crate::text::count_tokens;

/// Returns the simulator's embedding of `text` under `model`: `dim` floats
/// with an L2 norm of 1.
pub(crate) fn embed(model: &str, text: &str, dim: usize) -> Vec<f32> {
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update([0]);
    hasher.update(text.as_bytes());
    let mut rng = StdRng::from_seed(hasher.finalize().into());

    // Box–Muller gives two independent normal draws per pair of uniforms;
    // normal components make the direction uniform on the sphere.
    let mut vector = vec![0.0_f32; dim];
    for pair in vector.chunks_mut(2) {
        let radius = (-2.0 * (1.0 - rng.r#gen::<f64>()).ln()).sqrt();
        let angle = TAU * rng.r#gen::<f64>();
        pair[0] = (radius * angle.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (radius * angle.sin()) as f32;
        }
    }

    let norm = vector
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    vector
}

/// One input to embed: its hashed text and its size in tokens.
struct Input {
    text: String,
    tokens: u32,
}

/// The parts of an embeddings request the simulator uses.
struct EmbeddingsRequest {
    model: String,
    inputs: Vec<Input>,
    dim: Option<usize>,
    base64: bool,
}

impl EmbeddingsRequest {
    fn parse(body: &[u8]) -> Result<EmbeddingsRequest, SimError> {
        let object = request::parse_object(body)?;
        let model = request::required_str(&object, "model")?.to_owned();
        let inputs = read_inputs(object.get("input").unwrap_or(&Value::Null))?;

        let dim = request::positive_u32(&object, "dimensions")?.map(|dim| dim as usize);
        if dim.is_some_and(|dim| dim > MAX_EMBEDDING_DIM) {
            let reason = format!("must be at most {MAX_EMBEDDING_DIM}");
            return Err(SimError::request("dimensions", reason));
        }
        let base64 = match object.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(format)) if format == "float" => false,
            Some(Value::String(format)) if format == "base64" => true,
            Some(_) => {
                return Err(SimError::request(
                    "encoding_format",
                    "must be float or base64",
                ));
            }
        };
        Ok(EmbeddingsRequest {
            model,
            inputs,
            dim,
            base64,
        })
    }
}

/// Reads `input`: a string, an array of strings, an array of token ids, or
/// an array of arrays of token ids.
fn read_inputs(input: &Value) -> Result<Vec<Input>, SimError> {
    let empty = || SimError::request("input", "must not be empty");
    let shape = || {
        let reason = "must be a string, an array of strings, or an array of (arrays of) token ids";
        SimError::request("input", reason)
    };
    let text = |value: &Value| match value {
        Value::String(text) if text.is_empty() => Err(empty()),
        Value::String(text) => Ok(Input {
            tokens: count_tokens(text),
            text: text.clone(),
        }),
        _ => Err(shape()),
    };

    match input {
        Value::Null => Err(SimError::request("input", "is required")),
        Value::String(_) => Ok(vec![text(input)?]),
        Value::Array(items) if items.is_empty() => Err(empty()),
        Value::Array(items) if items[0].is_number() => Ok(vec![token_input(items)?]),
        Value::Array(items) if items[0].is_array() => items
            .iter()
            .map(|item| {
                item.as_array()
                    .ok_or_else(shape)
                    .and_then(|ids| token_input(ids))
            })
            .collect(),
        Value::Array(items) => items.iter().map(text).collect(),
        _ => Err(shape()),
    }
}

fn token_input(ids: &[Value]) -> Result<Input, SimError> {
    if ids.is_empty() {
        return Err(SimError::request(
            "input",
            "must not contain an empty token array",
        ));
    }
    let mut text = String::with_capacity(ids.len() * 6);
    for id in ids {
        let id = id
            .as_u64()
            .ok_or_else(|| SimError::request("input", "token ids must be non-negative integers"))?;
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&id.to_string());
    }
    let tokens = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    Ok(Input { text, tokens })
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(sim): State<Sim>, body: Bytes) -> Response {
    let request = match EmbeddingsRequest::parse(&body) {
        Ok(request) => request,
        Err(err) => return sim.reject(Dialect::OpenAi, &err),
    };
    let turn = match sim.begin(Dialect::OpenAi, &request.model).await {
        Ok(turn) => turn,
        Err(response) => return response,
    };
    if turn.fault == Some(FaultKind::Malformed) {
        return reply::malformed_json();
    }

    let dim = request.dim.unwrap_or(turn.config.embedding_dim);
    let body = reply::to_json(&render(&request, dim));
    match turn.fault {
        Some(FaultKind::CutStream) => reply::cut_json(body),
        _ => reply::json_body(body),
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    total_tokens: u32,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: Usage,
}

fn render(request: &EmbeddingsRequest, dim: usize) -> EmbeddingList<'_> {
    let data = request
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embed(&request.model, &input.text, dim);
            let embedding = if request.base64 {
                Vector::Base64(encode_base64(&vector))
            } else {
                Vector::Float(vector)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();

    let tokens = request
        .inputs
        .iter()
        .fold(0_u32, |sum, input| sum.saturating_add(input.tokens));
    EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }
}

/// Encodes the little-endian bytes of `vector` as standard padded base64, as
/// OpenAI's `encoding_format: "base64"` does.
fn encode_base64(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let bits = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (position, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if position <= group.len() {
                out.push(char::from(ALPHABET[((bits >> shift) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn embedding_is_deterministic_unit_length() {
        let first = embed("m", "hello", 384);
        assert_eq!(first, embed("m", "hello", 384));
        assert_ne!(first, embed("other", "hello", 384));
        let norm: f32 = first.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(embed("m", "odd", 7).len(), 7);
    }

    #[test]
    fn base64_matches_known_encodings() {
        assert_eq!(encode_base64(&[]), "");
        // 1.0f32 is 00 00 80 3f in little-endian order.
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[1.0, 0.0]), "AACAPwAAAAA=");
        assert_eq!(encode_base64(&[1.0, 0.0, -2.0]), "AACAPwAAAAAAAADA");
    }

    #[test]
    fn reads_every_input_shape() {
        assert_eq!(read_inputs(&json!("hi")).unwrap().len(), 1);
        assert_eq!(read_inputs(&json!(["a", "b"])).unwrap().len(), 2);
        let tokens = read_inputs(&json!([1, 2, 3])).unwrap();
        assert_eq!((tokens[0].text.as_str(), tokens[0].tokens), ("1 2 3", 3));
        assert_eq!(read_inputs(&json!([[1], [2, 3]])).unwrap().len(), 2);
    }

    #[test]
    fn refuses_empty_or_mixed_input() {
        for input in [
            json!(""),
            json!([]),
            json!([[]]),
            json!(["a", 1]),
            json!([1, "a"]),
            json!(7),
        ] {
            let err = read_inputs(&input).err().unwrap();
            assert_eq!(err.param(), Some("input"), "{input}");
        }
    }
}
