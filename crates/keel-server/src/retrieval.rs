//! Retrieval as the server runs it: the configured embedders and the
//! vector store, built once at startup.
//!
//! Embedders are named in config and chosen per collection (and served on
//! `/v1/embeddings` under their names when local). A local model loads
//! once and is shared behind a [`Batcher`], so concurrent requests share
//! forward passes. A remote embedder calls an embedding model through
//! keel's own gateway, with its retries, breakers and fallbacks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use keel_core::embeddings::{EmbeddingInput, EmbeddingRequest};
use keel_embed::{Batcher, EmbedError, EmbedFuture, Embedder, HashingEmbedder, LocalEmbedder};
use keel_gateway::Gateway;
use keel_vector::{EmbeddedOptions, EmbeddedStore, PgVectorStore, Planner, VectorStore};

/// How an embedder is made.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 (or a model of the same architecture) from a
    /// directory of safetensors and `tokenizer.json`.
    Local {
        /// The model directory.
        model_dir: PathBuf,
    },
    /// Feature hashing: no model, lexical only.
    Hashing {
        /// Vector length.
        dimension: usize,
    },
    /// An embedding model served through the gateway.
    Remote {
        /// The gateway model name.
        model: String,
        /// The vector length it returns.
        dimension: usize,
    },
}

/// One configured embedder.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderSpec {
    /// The name collections and `/v1/embeddings` use.
    pub name: String,
    /// What it is.
    pub kind: EmbedderKind,
    /// Texts per forward pass when batching concurrent calls.
    pub max_batch: usize,
}

/// Retrieval settings.
#[derive(Debug, Clone)]
pub struct RetrievalSetup {
    /// The embedders.
    pub embedders: Vec<EmbedderSpec>,
    /// Where the embedded vector store keeps its files.
    pub vectors_dir: PathBuf,
    /// A PostgreSQL URL with pgvector: collections live there instead, shared
    /// by every keel process.
    pub postgres_url: Option<String>,
    /// Sync the vector log before acknowledging writes.
    pub fsync: bool,
    /// Snapshot a collection once its log passes this size.
    pub snapshot_wal_bytes: u64,
    /// Exact search versus graph walk.
    pub planner: Planner,
}

impl RetrievalSetup {
    /// No embedders, the store under `vectors_dir`, default tuning.
    pub fn new(vectors_dir: PathBuf) -> RetrievalSetup {
        let defaults = EmbeddedOptions::new(&vectors_dir);
        RetrievalSetup {
            embedders: Vec::new(),
            vectors_dir,
            postgres_url: None,
            fsync: defaults.fsync,
            snapshot_wal_bytes: defaults.snapshot_wal_bytes,
            planner: defaults.planner,
        }
    }
}

/// Why retrieval could not start.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// An embedder failed to load.
    #[error("embedder {name:?}: {source}")]
    Embedder {
        /// The embedder's name.
        name: String,
        /// Why.
        source: EmbedError,
    },
    /// The vector store failed to open.
    #[error("vector store: {0}")]
    Vectors(#[from] keel_vector::VectorError),
}

/// The running embedders and vector store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Retrieval {
    /// The vector store.
    pub vectors: VectorStore,
    embedders: Arc<HashMap<String, Named>>,
}

#[derive(Debug, Clone)]
struct Named {
    embedder: Arc<dyn Embedder>,
    local: bool,
    /// The gateway model and dimension of a remote embedder.
    remote: Option<(String, usize)>,
}

impl Retrieval {
    /// Loads every embedder and opens the vector store.
    pub async fn start(
        setup: RetrievalSetup,
        gateway: &Gateway,
    ) -> Result<Retrieval, RetrievalError> {
        let mut embedders = HashMap::new();
        for spec in setup.embedders {
            let remote = match &spec.kind {
                EmbedderKind::Remote { model, dimension } => Some((model.clone(), *dimension)),
                _ => None,
            };
            let (embedder, local): (Arc<dyn Embedder>, bool) = match &spec.kind {
                EmbedderKind::Local { model_dir } => {
                    let dir = model_dir.clone();
                    let model = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir))
                        .await
                        .map_err(|e| RetrievalError::Embedder {
                            name: spec.name.clone(),
                            source: EmbedError::Model(e.to_string()),
                        })?
                        .map_err(|source| RetrievalError::Embedder {
                            name: spec.name.clone(),
                            source,
                        })?;
                    (
                        Arc::new(Batcher::spawn(Arc::new(model), spec.max_batch)),
                        true,
                    )
                }
                EmbedderKind::Hashing { dimension } => {
                    (Arc::new(HashingEmbedder::new(*dimension)), true)
                }
                EmbedderKind::Remote { model, dimension } => {
                    let remote = GatewayEmbedder {
                        gateway: gateway.clone(),
                        model: model.clone(),
                        dimension: *dimension,
                        id: format!("remote:{model}"),
                    };
                    (Arc::new(remote), false)
                }
            };
            tracing::info!(name = %spec.name, id = embedder.id(), dimension = embedder.dimension(), "Embedder ready");
            embedders.insert(
                spec.name,
                Named {
                    embedder,
                    local,
                    remote,
                },
            );
        }
        let vectors = match &setup.postgres_url {
            Some(url) => VectorStore::Postgres(PgVectorStore::connect(url).await?),
            None => {
                let mut options = EmbeddedOptions::new(setup.vectors_dir);
                options.fsync = setup.fsync;
                options.snapshot_wal_bytes = setup.snapshot_wal_bytes;
                options.planner = setup.planner;
                VectorStore::Embedded(EmbeddedStore::open(options).await?)
            }
        };
        Ok(Retrieval {
            vectors,
            embedders: Arc::new(embedders),
        })
    }

    /// The embedder of that name.
    pub fn embedder(&self, name: &str) -> Option<Arc<dyn Embedder>> {
        self.embedders.get(name).map(|n| Arc::clone(&n.embedder))
    }

    /// The in-process embedder of that name, which `/v1/embeddings` serves
    /// itself instead of routing to an upstream.
    pub fn local_embedder(&self, name: &str) -> Option<Arc<dyn Embedder>> {
        self.embedders
            .get(name)
            .filter(|n| n.local)
            .map(|n| Arc::clone(&n.embedder))
    }

    /// The gateway model and vector length behind a remote embedder, so
    /// callers can route its calls through the gateway themselves (with
    /// limits, budgets and the usage ledger).
    pub fn remote_model(&self, name: &str) -> Option<(String, usize)> {
        self.embedders.get(name).and_then(|n| n.remote.clone())
    }

    /// Every embedder's name, sorted.
    pub fn embedder_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.embedders.keys().cloned().collect();
        names.sort();
        names
    }
}

/// An embedding model behind the gateway, as an [`Embedder`].
#[derive(Debug)]
struct GatewayEmbedder {
    gateway: Gateway,
    model: String,
    dimension: usize,
    id: String,
}

impl Embedder for GatewayEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let request = EmbeddingRequest {
                model: self.model.clone(),
                input: EmbeddingInput::Texts(texts.to_vec()),
                encoding_format: None,
                dimensions: None,
                extra: Default::default(),
            };
            let (response, _) = self
                .gateway
                .embed(&request)
                .await
                .map_err(|e| EmbedError::Upstream(e.message))?;
            vectors_of(&response, texts.len(), self.dimension, &self.model)
                .map_err(EmbedError::Upstream)
        })
    }
}

/// The vectors of an OpenAI-style embeddings response, one per input in
/// order, each `dimension` long; an error says what the upstream got wrong.
pub(crate) fn vectors_of(
    response: &keel_core::embeddings::EmbeddingResponse,
    inputs: usize,
    dimension: usize,
    model: &str,
) -> Result<Vec<Vec<f32>>, String> {
    let mut out = vec![Vec::new(); inputs];
    for (position, item) in response.data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(|i| i.as_u64())
            .map_or(position, |i| i as usize);
        let vector: Option<Vec<f32>> = item.get("embedding").and_then(|e| e.as_array()).map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
                .collect()
        });
        match (out.get_mut(index), vector) {
            (Some(slot), Some(v)) if v.len() == dimension => *slot = v,
            _ => {
                return Err(format!(
                    "{model} returned an embedding that is not {dimension} numbers at index {index}"
                ));
            }
        }
    }
    if out.iter().any(Vec::is_empty) {
        return Err(format!("{model} returned fewer embeddings than inputs"));
    }
    Ok(out)
}
