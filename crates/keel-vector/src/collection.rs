//! One collection on disk and in memory: its spec, its partitions, and the
//! write-ahead log that makes every acknowledged write durable.
//!
//! Writers are serialized by one lock: a write is logged, then applied to
//! its partitions, then acknowledged. Queries never take that lock; they
//! read partitions, which stay consistent under their own locks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::partition::{Partition, Planner, Prepared, lock, score};
use crate::payload::extract;
use crate::point::{Point, Query, QueryResult, ScoredPoint, Strategy, check_id, check_vector};
use crate::snapshot;
use crate::spec::{CollectionSpec, Metric};
use crate::wal::{Op, Wal};

/// What a client sees of a collection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CollectionInfo {
    /// The spec it was created with.
    #[serde(flatten)]
    pub spec: CollectionSpec,
    /// Live points.
    pub points: u64,
    /// Partitions holding points.
    pub partitions: usize,
}

type PartitionMap = HashMap<Option<String>, Arc<Partition>>;

/// A collection of the embedded store.
#[derive(Debug)]
pub(crate) struct Collection {
    spec: CollectionSpec,
    dir: PathBuf,
    partitions: RwLock<PartitionMap>,
    writer: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    wal: Wal,
    seq: u64,
}

impl Collection {
    /// Creates the collection's directory and files.
    pub fn create(dir: &Path, spec: CollectionSpec, fsync: bool) -> Result<Collection> {
        std::fs::create_dir_all(dir)
            .map_err(VectorError::io(format!("creating {}", dir.display())))?;
        let json = serde_json::to_vec_pretty(&spec).unwrap_or_default();
        let tmp = dir.join("collection.json.tmp");
        snapshot::write_synced(&tmp, &json)?;
        std::fs::rename(&tmp, dir.join("collection.json"))
            .map_err(VectorError::io("saving the collection spec"))?;
        Collection::open(dir, fsync)
    }

    /// Loads a collection: its snapshot, then the log written after it.
    pub fn open(dir: &Path, fsync: bool) -> Result<Collection> {
        let spec_path = dir.join("collection.json");
        let raw = std::fs::read(&spec_path)
            .map_err(VectorError::io(format!("reading {}", spec_path.display())))?;
        let spec: CollectionSpec =
            serde_json::from_slice(&raw).map_err(|e| VectorError::Corrupt {
                path: spec_path.display().to_string(),
                message: e.to_string(),
            })?;
        let (seq, loaded) = snapshot::read(dir, &spec)?.unwrap_or((0, Vec::new()));
        let partitions = loaded.into_iter().map(|(v, p)| (v, Arc::new(p))).collect();
        let (wal, records) = Wal::open(&dir.join("wal.log"), spec.dimension, fsync)?;
        let collection = Collection {
            spec,
            dir: dir.to_owned(),
            partitions: RwLock::new(partitions),
            writer: Mutex::new(Writer { wal, seq }),
        };

        let mut last = seq;
        let mut replayed = 0;
        for (record_seq, op) in records {
            if record_seq <= seq {
                continue;
            }
            match op {
                Op::Upsert(points) => {
                    let prepared = collection.extract_all(points)?;
                    collection.apply_upsert(prepared)?;
                }
                Op::Delete(ids) => {
                    collection.apply_delete(&ids)?;
                }
            }
            last = record_seq;
            replayed += 1;
        }
        lock!(collection.writer, lock).seq = last;
        tracing::debug!(dir = %dir.display(), snapshot_seq = seq, replayed, "Opened collection");
        Ok(collection)
    }

    /// The spec.
    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    /// What a client sees of it.
    pub fn info(&self) -> CollectionInfo {
        let partitions = lock!(self.partitions, read);
        CollectionInfo {
            spec: self.spec.clone(),
            points: partitions.values().map(|p| p.len()).sum(),
            partitions: partitions.values().filter(|p| p.len() > 0).count(),
        }
    }

    /// Checks points and gets them ready (see [`prepare`]).
    pub fn prepare(&self, points: Vec<Point>) -> Result<Vec<Point>> {
        prepare(&self.spec, points)
    }

    /// Logs and applies prepared points; returns whether the log has grown
    /// past `snapshot_bytes`.
    pub fn upsert(&self, points: Vec<Point>, snapshot_bytes: u64) -> Result<bool> {
        let mut writer = lock!(self.writer, lock);
        let op = Op::Upsert(points);
        let seq = writer.seq + 1;
        writer.wal.append(seq, &op)?;
        writer.seq += 1;
        let Op::Upsert(points) = op else {
            return Ok(false);
        };
        self.apply_upsert(self.extract_all(points)?)?;
        Ok(writer.wal.bytes() > snapshot_bytes)
    }

    /// Logs and applies a delete; returns how many points existed.
    pub fn delete(&self, ids: Vec<String>) -> Result<usize> {
        let mut writer = lock!(self.writer, lock);
        let op = Op::Delete(ids);
        let seq = writer.seq + 1;
        writer.wal.append(seq, &op)?;
        writer.seq += 1;
        let Op::Delete(ids) = op else { return Ok(0) };
        self.apply_delete(&ids)
    }

    /// Deletes every point the filter keeps, in every partition; returns
    /// how many there were. Points stored while it runs are kept.
    pub fn delete_matching(&self, filter: &Filter) -> Result<usize> {
        let ids: Vec<String> = lock!(self.partitions, read)
            .values()
            .flat_map(|p| p.ids_matching(filter))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        self.delete(ids)
    }

    /// Writes a snapshot and empties the log.
    pub fn snapshot(&self) -> Result<()> {
        let mut writer = lock!(self.writer, lock);
        let partitions: Vec<(Option<String>, Arc<Partition>)> = lock!(self.partitions, read)
            .iter()
            .map(|(v, p)| (v.clone(), Arc::clone(p)))
            .collect();
        let refs: Vec<(Option<String>, &Partition)> = partitions
            .iter()
            .map(|(v, p)| (v.clone(), p.as_ref()))
            .collect();
        snapshot::write(&self.dir, writer.seq, &refs, self.spec.dimension)?;
        writer.wal.clear()?;
        tracing::debug!(dir = %self.dir.display(), seq = writer.seq, "Wrote snapshot");
        Ok(())
    }

    /// Bytes in the log.
    pub fn wal_bytes(&self) -> u64 {
        lock!(self.writer, lock).wal.bytes()
    }

    /// Points by id.
    pub fn get(&self, ids: &[String], with_vector: bool) -> Vec<Point> {
        let partitions = lock!(self.partitions, read);
        let mut found: HashMap<String, Point> = partitions
            .values()
            .flat_map(|p| p.get(ids, with_vector))
            .map(|p| (p.id.clone(), p))
            .collect();
        ids.iter().filter_map(|id| found.remove(id)).collect()
    }

    /// Points a filter keeps, in one partition or all.
    pub fn count(&self, filter: Option<&Filter>, partition: Option<&str>) -> Result<u64> {
        let partitions = lock!(self.partitions, read);
        match partition {
            Some(value) => {
                self.check_partition(Some(value))?;
                Ok(partitions
                    .get(&Some(value.to_owned()))
                    .map_or(0, |p| p.count(filter)))
            }
            None => Ok(partitions.values().map(|p| p.count(filter)).sum()),
        }
    }

    /// Answers a query.
    pub fn query(&self, mut query: Query, planner: &Planner) -> Result<QueryResult> {
        self.check_partition(query.partition.as_deref())?;
        prepare_query(&self.spec, &mut query.vector)?;
        let partition = lock!(self.partitions, read).get(&query.partition).cloned();
        let Some(partition) = partition else {
            return Ok(QueryResult {
                points: Vec::new(),
                strategy: Strategy::Empty,
                candidates: 0,
            });
        };
        let planner = query.planner.as_ref().unwrap_or(planner);
        let (hits, strategy, candidates) =
            partition.search(&query.vector, query.k, query.filter.as_ref(), planner)?;
        let points = hits
            .into_iter()
            .map(|(p, d)| ScoredPoint {
                id: p.id,
                score: score(self.spec.metric, d),
                payload: query.with_payload.then_some(p.payload),
                vector: None,
            })
            .collect::<Vec<_>>();
        let points = if query.with_vector {
            let ids: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
            let vectors: HashMap<String, Vec<f32>> = partition
                .get(&ids, true)
                .into_iter()
                .map(|p| (p.id, p.vector))
                .collect();
            points
                .into_iter()
                .map(|mut p| {
                    p.vector = vectors.get(&p.id).cloned();
                    p
                })
                .collect()
        } else {
            points
        };
        Ok(QueryResult {
            points,
            strategy,
            candidates,
        })
    }

    fn check_partition(&self, partition: Option<&str>) -> Result<()> {
        check_partition(&self.spec, partition)
    }

    fn extract_all(&self, points: Vec<Point>) -> Result<Vec<Prepared>> {
        points
            .into_iter()
            .map(|point| {
                let extracted = extract(&self.spec.fields, &point.payload, "payload")?;
                Ok(Prepared { point, extracted })
            })
            .collect()
    }

    fn partition_of(&self, point: &Point) -> Option<String> {
        let key = self.spec.partition_key.as_ref()?;
        point
            .payload
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    fn apply_upsert(&self, points: Vec<Prepared>) -> Result<()> {
        let mut groups: HashMap<Option<String>, Vec<Prepared>> = HashMap::new();
        for p in points {
            groups
                .entry(self.partition_of(&p.point))
                .or_default()
                .push(p);
        }
        for (value, batch) in groups {
            // A point that moved to another partition leaves its old one.
            if self.spec.partition_key.is_some() {
                let ids: Vec<String> = batch.iter().map(|p| p.point.id.clone()).collect();
                let others: Vec<Arc<Partition>> = lock!(self.partitions, read)
                    .iter()
                    .filter(|(v, _)| **v != value)
                    .map(|(_, p)| Arc::clone(p))
                    .collect();
                for other in others {
                    other.delete(&ids)?;
                }
            }
            let partition = self.partition(value)?;
            partition.upsert(batch)?;
        }
        Ok(())
    }

    fn apply_delete(&self, ids: &[String]) -> Result<usize> {
        let partitions: Vec<Arc<Partition>> =
            lock!(self.partitions, read).values().cloned().collect();
        let mut deleted = 0;
        for p in partitions {
            deleted += p.delete(ids)?;
        }
        Ok(deleted)
    }

    fn partition(&self, value: Option<String>) -> Result<Arc<Partition>> {
        if let Some(p) = lock!(self.partitions, read).get(&value) {
            return Ok(Arc::clone(p));
        }
        let mut partitions = lock!(self.partitions, write);
        if let Some(p) = partitions.get(&value) {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(Partition::new(
            self.spec.dimension,
            self.spec.metric,
            self.spec.hnsw,
        )?);
        partitions.insert(value, Arc::clone(&p));
        Ok(p)
    }
}

/// Checks points and gets them ready: vectors checked (and scaled to unit
/// length for cosine), ids checked, indexed fields typed, the partition key
/// present.
pub(crate) fn prepare(spec: &CollectionSpec, mut points: Vec<Point>) -> Result<Vec<Point>> {
    for (i, p) in points.iter_mut().enumerate() {
        check_id(&p.id, &format!("points[{i}].id"))?;
        let path = format!("points[{i}].vector");
        check_vector(&p.vector, spec.dimension, &path)?;
        if spec.metric == Metric::Cosine {
            normalize(&mut p.vector, &path)?;
        }
        extract(&spec.fields, &p.payload, &format!("points[{i}].payload"))?;
        if let Some(key) = &spec.partition_key
            && !p.payload.get(key).is_some_and(|v| v.is_string())
        {
            return Err(VectorError::invalid(
                format!("points[{i}].payload.{key}"),
                format!(
                    "this collection is partitioned by {key:?}; every point needs it as a string"
                ),
            ));
        }
    }
    Ok(points)
}

/// Checks a query vector (and scales it for cosine).
pub(crate) fn prepare_query(spec: &CollectionSpec, vector: &mut [f32]) -> Result<()> {
    check_vector(vector, spec.dimension, "vector")?;
    if spec.metric == Metric::Cosine {
        normalize(vector, "vector")?;
    }
    Ok(())
}

/// Refuses a partition the collection does not expect, or a missing one.
pub(crate) fn check_partition(spec: &CollectionSpec, partition: Option<&str>) -> Result<()> {
    match (&spec.partition_key, partition) {
        (Some(key), None) => Err(VectorError::invalid(
            "partition",
            format!("this collection is partitioned by {key:?}; name the partition to search"),
        )),
        (None, Some(_)) => Err(VectorError::invalid(
            "partition",
            "this collection has no partition key; leave `partition` out",
        )),
        _ => Ok(()),
    }
}

fn normalize(v: &mut [f32], path: &str) -> Result<()> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(VectorError::invalid(
            path,
            "a cosine collection cannot hold an all-zero vector (it has no direction)",
        ));
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(())
}
