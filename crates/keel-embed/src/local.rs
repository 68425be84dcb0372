//! all-MiniLM-L6-v2 in process: a 6-layer BERT encoder (candle), mean
//! pooling over real tokens, unit-length 384-dimensional vectors — the same
//! computation as sentence-transformers' model of that name.
//!
//! The model directory holds `config.json`, `tokenizer.json` and
//! `model.safetensors` (`scripts/model.sh` puts them in place). Texts longer
//! than [`MAX_TOKENS`] are truncated, as sentence-transformers does; callers
//! that must not lose text chunk it first. A batch is sorted by length and
//! run in groups of similar lengths, so short texts do not pay for a long
//! one's padding.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::{EmbedError, EmbedFuture, Embedder, normalize};

/// The longest input in tokens; longer texts are truncated.
pub const MAX_TOKENS: usize = 256;

/// Texts per forward pass.
const GROUP: usize = 32;

/// The local MiniLM embedder; cheap to clone.
#[derive(Clone)]
pub struct LocalEmbedder {
    model: Arc<Model>,
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    id: String,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("id", &self.model.id)
            .field("dimension", &self.model.dimension)
            .finish_non_exhaustive()
    }
}

impl LocalEmbedder {
    /// Loads the model from `dir` (reads about 90 MB).
    pub fn load(dir: &Path) -> Result<LocalEmbedder, EmbedError> {
        let fail = |message: String| EmbedError::Load {
            path: dir.display().to_string(),
            message,
        };
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| {
                fail(format!(
                    "cannot read {name}: {e}; run scripts/model.sh to fetch the model"
                ))
            })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| fail(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| fail(format!("tokenizer truncation: {e}")))?;
        let device = Device::Cpu;
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| fail(format!("model.safetensors: {e}")))?;
        let bert =
            BertModel::load(vb, &config).map_err(|e| fail(format!("model.safetensors: {e}")))?;
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        Ok(LocalEmbedder {
            model: Arc::new(Model {
                bert,
                tokenizer,
                device,
                dimension: config.hidden_size,
                id: format!("local:{name}"),
            }),
        })
    }

    /// Embeds `texts` on the calling thread (it is CPU-bound: call it from
    /// a blocking thread, as [`Embedder::embed`] does).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let m = &self.model;
        // Similar lengths together: less padding per forward pass.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for group in order.chunks(GROUP) {
            let batch: Vec<&str> = group.iter().map(|&i| texts[i].as_str()).collect();
            let vectors = m.forward(&batch)?;
            for (&i, v) in group.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

impl Model {
    fn forward(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = |e: candle_core::Error| EmbedError::Model(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Model(format!("tokenizing: {e}")))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut mask = Vec::with_capacity(texts.len() * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let shape = (texts.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device).map_err(model)?;
        let mask = Tensor::from_vec(mask, shape, &self.device).map_err(model)?;
        let types = ids.zeros_like().map_err(model)?;
        let hidden = self
            .bert
            .forward(&ids, &types, Some(&mask))
            .map_err(model)?;
        // Mean over real tokens only: padding is masked out of the sum and
        // the count.
        let mask = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(model)?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|h| h.sum(1))
            .map_err(model)?;
        let counts = mask.sum(1).map_err(model)?;
        let pooled = summed.broadcast_div(&counts).map_err(model)?;
        let mut vectors: Vec<Vec<f32>> = pooled.to_vec2().map_err(model)?;
        vectors.iter_mut().for_each(|v| normalize(v));
        Ok(vectors)
    }
}

impl Embedder for LocalEmbedder {
    fn id(&self) -> &str {
        &self.model.id
    }

    fn dimension(&self) -> usize {
        self.model.dimension
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        let this = self.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
                .await
                .map_err(|e| EmbedError::Model(format!("embedding task failed: {e}")))?
        })
    }

    /// The model's own tokenizer count (truncated at [`MAX_TOKENS`], as
    /// the model reads them).
    fn count_tokens(&self, texts: &[String]) -> u64 {
        texts
            .iter()
            .map(|t| {
                self.model
                    .tokenizer
                    .encode(t.as_str(), true)
                    .map_or_else(|_| t.len().div_ceil(4), |e| e.get_ids().len())
                    as u64
            })
            .sum()
    }
}
