//! The `[vectors]` and `[[embedders]]` sections: raw types and checks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::bail;
use keel_server::{EmbedderKind, EmbedderSpec, RetrievalSetup};
use keel_vector::Planner;
use serde::Deserialize;

use super::gateway::RawModel;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawVectors {
    dir: Option<String>,
    url: Option<String>,
    fsync: bool,
    snapshot_wal_mb: u64,
    exact_max: u64,
    exact_ratio: f64,
}

impl Default for RawVectors {
    fn default() -> Self {
        let planner = Planner::default();
        RawVectors {
            dir: None,
            url: None,
            fsync: true,
            snapshot_wal_mb: 64,
            exact_max: planner.exact_max,
            exact_ratio: planner.exact_ratio,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmbedder {
    name: String,
    kind: String,
    #[serde(default)]
    model_dir: Option<String>,
    #[serde(default)]
    dimension: Option<usize>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default = "default_batch")]
    max_batch: usize,
}

fn default_batch() -> usize {
    32
}

/// Where `scripts/model.sh` puts all-MiniLM-L6-v2 under the data dir.
pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

pub(super) fn check_retrieval(
    data_dir: &Path,
    vectors: &RawVectors,
    embedders: &[RawEmbedder],
    models: &[RawModel],
) -> anyhow::Result<RetrievalSetup> {
    let dir = match &vectors.dir {
        Some(d) if d.trim().is_empty() => bail!("key `vectors.dir`: must not be empty"),
        Some(d) => PathBuf::from(d),
        None => data_dir.join("vectors"),
    };
    if vectors.snapshot_wal_mb == 0 {
        bail!("key `vectors.snapshot_wal_mb`: must be at least 1");
    }
    if !vectors.exact_ratio.is_finite() || vectors.exact_ratio < 0.0 {
        bail!(
            "key `vectors.exact_ratio`: must be a number of at least 0, got {}",
            vectors.exact_ratio
        );
    }
    let mut setup = RetrievalSetup::new(dir);
    setup.postgres_url = match &vectors.url {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Some(u.clone())
        }
        Some(u) => bail!(
            "key `vectors.url`: {:?} is not a PostgreSQL URL; use postgres://user@host:port/db (a server with pgvector)",
            super::redact_url(u)
        ),
        None => None,
    };
    setup.fsync = vectors.fsync;
    setup.snapshot_wal_bytes = vectors.snapshot_wal_mb * 1024 * 1024;
    setup.planner = Planner {
        exact_max: vectors.exact_max,
        exact_ratio: vectors.exact_ratio,
    };

    let mut names = HashSet::new();
    for (i, e) in embedders.iter().enumerate() {
        let at = format!("embedders[{i}]");
        if e.name.trim().is_empty() {
            bail!("key `{at}.name`: must not be empty");
        }
        if !names.insert(e.name.as_str()) {
            bail!("key `{at}.name`: {:?} is used twice", e.name);
        }
        if models.iter().any(|m| m.name == e.name) {
            bail!(
                "key `{at}.name`: {:?} is also a model name; /v1/embeddings could not tell them apart",
                e.name
            );
        }
        if !(1..=1024).contains(&e.max_batch) {
            bail!(
                "key `{at}.max_batch`: must be 1 to 1024, got {}",
                e.max_batch
            );
        }
        let dimension = |kind: &str| match e.dimension {
            Some(d) if (1..=keel_vector::spec::MAX_DIMENSION).contains(&d) => Ok(d),
            Some(d) => bail!("key `{at}.dimension`: must be 1 to 8192, got {d}"),
            None => bail!("key `{at}.dimension`: a {kind} embedder needs its vector length"),
        };
        let kind = match e.kind.as_str() {
            "local" => EmbedderKind::Local {
                model_dir: e
                    .model_dir
                    .as_ref()
                    .map_or_else(|| data_dir.join(DEFAULT_MODEL), PathBuf::from),
            },
            "hashing" => EmbedderKind::Hashing {
                dimension: dimension("hashing")?,
            },
            "remote" => {
                let Some(model) = e.model.clone() else {
                    bail!(
                        "key `{at}.model`: a remote embedder names an embedding model from [[models]]"
                    );
                };
                if !models.iter().any(|m| m.name == model) {
                    bail!("key `{at}.model`: {model:?} is not listed under [[models]]");
                }
                EmbedderKind::Remote {
                    model,
                    dimension: dimension("remote")?,
                }
            }
            other => {
                bail!("key `{at}.kind`: {other:?} is not a kind; use local, hashing or remote")
            }
        };
        setup.embedders.push(EmbedderSpec {
            name: e.name.clone(),
            kind,
            max_batch: e.max_batch,
        });
    }
    Ok(setup)
}
