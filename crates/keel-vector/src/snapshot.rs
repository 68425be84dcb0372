//! Snapshots: a collection's partitions written whole, so a restart loads
//! the graphs as built instead of re-inserting every vector, and the
//! write-ahead log can start over.
//!
//! Layout under the collection directory:
//!
//! ```text
//! snapshot/manifest.json   {"seq": 41, "partitions": [{"value": "acme", "file": "p0"}]}
//! snapshot/p0.graph        the usearch index (its own format)
//! snapshot/p0.points       "KVP1", dimension, slot count, each slot's id and
//!                          payload (or a retired mark), then the raw vectors
//! ```
//!
//! A new snapshot is written to `snapshot.tmp/` and swapped in by renames;
//! a crash at any point leaves either the old snapshot with the full log or
//! the new one with a log whose older records replay skips by `seq`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VectorError};
use crate::partition::{Partition, Prepared, new_graph};
use crate::payload::extract;
use crate::point::Point;
use crate::spec::CollectionSpec;
use crate::wal::Reader;

const MAGIC: &[u8; 4] = b"KVP1";

/// What a snapshot holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// The last write it includes.
    pub seq: u64,
    /// Its partitions.
    pub partitions: Vec<PartitionFile>,
}

/// One partition's files.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PartitionFile {
    /// The partition key's value (`None` when unpartitioned).
    pub value: Option<String>,
    /// The file stem.
    pub file: String,
}

/// Writes a snapshot of `partitions` as of `seq` into `dir`.
pub(crate) fn write(
    dir: &Path,
    seq: u64,
    partitions: &[(Option<String>, &Partition)],
    dimension: usize,
) -> Result<()> {
    let tmp = dir.join("snapshot.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(VectorError::io(format!("creating {}", tmp.display())))?;

    let mut manifest = Manifest {
        seq,
        partitions: Vec::new(),
    };
    for (i, (value, partition)) in partitions.iter().enumerate() {
        let file = format!("p{i}");
        partition.with_parts(|graph, points| -> Result<()> {
            let graph_path = tmp.join(format!("{file}.graph"));
            graph
                .save(&graph_path.to_string_lossy())
                .map_err(|e| VectorError::Index(format!("saving {}: {e}", graph_path.display())))?;
            let points_path = tmp.join(format!("{file}.points"));
            let context = || format!("writing {}", points_path.display());
            let out = File::create(&points_path).map_err(VectorError::io(context()))?;
            let mut out = BufWriter::new(out);
            let mut put = |bytes: &[u8]| out.write_all(bytes);
            let slots: Vec<_> = points.slots().collect();
            let mut write_all = || -> std::io::Result<()> {
                put(MAGIC)?;
                put(&(dimension as u32).to_le_bytes())?;
                put(&(slots.len() as u32).to_le_bytes())?;
                for slot in &slots {
                    match slot {
                        Some((id, payload)) => {
                            put(&[1])?;
                            put(&(id.len() as u32).to_le_bytes())?;
                            put(id.as_bytes())?;
                            let json =
                                serde_json::to_vec(payload).unwrap_or_else(|_| b"{}".to_vec());
                            put(&(json.len() as u32).to_le_bytes())?;
                            put(&json)?;
                        }
                        None => put(&[0])?,
                    }
                }
                for x in points.vectors() {
                    put(&x.to_le_bytes())?;
                }
                Ok(())
            };
            write_all().map_err(VectorError::io(context()))?;
            let file = out
                .into_inner()
                .map_err(|e| VectorError::io(context())(e.into_error()))?;
            file.sync_all().map_err(VectorError::io(context()))
        })?;
        manifest.partitions.push(PartitionFile {
            value: value.clone(),
            file,
        });
    }
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    write_synced(&tmp.join("manifest.json"), &json)?;

    // Swap: the old snapshot stays whole until the new one is in place.
    let current = dir.join("snapshot");
    let old = dir.join("snapshot.old");
    let _ = std::fs::remove_dir_all(&old);
    if current.exists() {
        std::fs::rename(&current, &old).map_err(VectorError::io("retiring the old snapshot"))?;
    }
    std::fs::rename(&tmp, &current).map_err(VectorError::io("installing the new snapshot"))?;
    sync_dir(dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// A loaded snapshot: its seq and its partitions by key value.
pub(crate) type Loaded = (u64, Vec<(Option<String>, Partition)>);

/// Loads the snapshot in `dir`, if any: its seq and partitions.
pub(crate) fn read(dir: &Path, spec: &CollectionSpec) -> Result<Option<Loaded>> {
    // A crash between the two renames leaves only the old one.
    let mut snapshot = dir.join("snapshot");
    if !snapshot.join("manifest.json").exists() {
        snapshot = dir.join("snapshot.old");
        if !snapshot.join("manifest.json").exists() {
            return Ok(None);
        }
    }
    let manifest_path = snapshot.join("manifest.json");
    let corrupt = |path: &Path, message: String| VectorError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    let raw = std::fs::read(&manifest_path).map_err(VectorError::io(format!(
        "reading {}",
        manifest_path.display()
    )))?;
    let manifest: Manifest =
        serde_json::from_slice(&raw).map_err(|e| corrupt(&manifest_path, e.to_string()))?;

    let mut partitions = Vec::new();
    for p in manifest.partitions {
        let graph_path = snapshot.join(format!("{}.graph", p.file));
        let graph = new_graph(spec.dimension, spec.metric, spec.hnsw)?;
        graph
            .load(&graph_path.to_string_lossy())
            .map_err(|e| corrupt(&graph_path, e.to_string()))?;
        graph
            .reserve_capacity_and_threads(
                graph.capacity().max(1024),
                crate::partition::INDEX_THREADS,
            )
            .map_err(|e| VectorError::Index(e.to_string()))?;
        graph.change_expansion_add(spec.hnsw.ef_construction);
        graph.change_expansion_search(spec.hnsw.ef_search);

        let points_path = snapshot.join(format!("{}.points", p.file));
        let data = std::fs::read(&points_path).map_err(VectorError::io(format!(
            "reading {}",
            points_path.display()
        )))?;
        let (slots, vectors) = decode_points(&data, spec)
            .ok_or_else(|| corrupt(&points_path, "truncated or malformed".to_owned()))??;
        partitions.push((
            p.value,
            Partition::restore(
                spec.dimension,
                spec.metric,
                spec.hnsw,
                graph,
                slots,
                vectors,
            ),
        ));
    }
    Ok(Some((manifest.seq, partitions)))
}

type Slots = (Vec<Option<Prepared>>, Vec<f32>);

fn decode_points(data: &[u8], spec: &CollectionSpec) -> Option<Result<Slots>> {
    let mut r = Reader::new(data);
    if r.take(4)? != MAGIC || r.u32()? as usize != spec.dimension {
        return None;
    }
    let count = r.u32()? as usize;
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count {
        match r.u8()? {
            1 => {
                let id = r.string()?;
                let payload = r.payload()?;
                let extracted = match extract(&spec.fields, &payload, "payload") {
                    Ok(e) => e,
                    Err(e) => return Some(Err(e)),
                };
                let point = Point {
                    id,
                    vector: Vec::new(),
                    payload,
                };
                slots.push(Some(Prepared { point, extracted }));
            }
            _ => slots.push(None),
        }
    }
    let vectors = r.floats(count.checked_mul(spec.dimension)?)?;
    Some(Ok((slots, vectors)))
}

/// Writes a file and syncs it to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let context = || format!("writing {}", path.display());
    let mut file = File::create(path).map_err(VectorError::io(context()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(VectorError::io(context()))
}

/// Syncs a directory so renames in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(VectorError::io(format!("syncing {}", dir.display())))
}
