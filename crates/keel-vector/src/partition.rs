//! One partition: an HNSW graph (usearch) beside the points it indexes.
//!
//! Points live in an arena: a slot per internal key (`u32`), the vectors in
//! one contiguous `Vec<f32>`, and payload indexes over the keys. The graph
//! holds the same vectors under the same keys. An update takes a fresh key
//! and retires the old one, so a query never sees a half-written point.
//!
//! Search follows the plan the filter's exact cardinality suggests
//! ([`Planner`]): few candidates are compared one by one with the query,
//! more are found by a filtered graph walk, and a walk that comes back
//! short (a sparse filter can cut the graph apart) is finished exactly, so
//! a query returns `k` answers whenever `k` points match.

use std::collections::{BinaryHeap, HashMap};
use std::sync::RwLock;

use roaring::RoaringBitmap;
use serde_json::{Map, Value};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::payload::{IndexValue, PayloadIndex};
use crate::point::{Point, Strategy};
use crate::spec::{HnswParams, Metric, Quantization};

/// Concurrent calls usearch is prepared for: callers hold one of
/// [`PERMITS`] each, and an insert may fan out to [`ADD_THREADS`].
pub const INDEX_THREADS: usize = PERMITS * ADD_THREADS;

/// Index calls in flight at once.
pub const PERMITS: usize = 16;

/// Threads one large insert may use.
const ADD_THREADS: usize = 4;

/// When to compare candidates one by one instead of walking the graph.
///
/// An exact scan costs about the same per matching point whatever the
/// filter, so its cost grows with `m`, the points the filter keeps. A
/// filtered walk visits more nodes the narrower the filter is, about in
/// proportion to `N / m` for a partition of `N` points. The two meet where
/// `m² ≈ ratio · N`; `bench/vector_search.sh --sweep` measures both sides,
/// and `ratio` is set from it (bench/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planner {
    /// Search exactly when at most this many points match, whatever the
    /// partition's size.
    pub exact_max: u64,
    /// Search exactly when `matching² ≤ exact_ratio × partition size`.
    pub exact_ratio: f64,
}

impl Default for Planner {
    /// On 100k × 384 (bench/RESULTS.md) an exact scan of thousands of
    /// points costs about 0.35 µs per point and a filtered walk about
    /// 0.2 ms divided by the fraction kept: they cross near `m² = 560 N`,
    /// 7.5 % of 100k points.
    fn default() -> Self {
        Planner {
            exact_max: 1024,
            exact_ratio: 560.0,
        }
    }
}

impl Planner {
    fn exact(&self, matching: u64, total: u64) -> bool {
        let m = matching as f64;
        matching <= self.exact_max || m * m <= self.exact_ratio * total as f64
    }
}

/// A search's answers as `(point, distance)`, closest first, with the
/// strategy used and the number of candidates.
pub(crate) type Found = (Vec<(Point, f32)>, Strategy, u64);

/// A point's stored parts.
#[derive(Debug)]
struct Slot {
    id: String,
    payload: Map<String, Value>,
    extracted: Vec<(String, Vec<IndexValue>)>,
}

/// The points of a partition.
#[derive(Debug, Default)]
pub(crate) struct Points {
    vectors: Vec<f32>,
    slots: Vec<Option<Slot>>,
    /// Retired keys, reused by the next points stored, so updates do not
    /// grow the arena (usearch reuses the graph's slots the same way).
    free: Vec<u32>,
    ids: HashMap<String, u32>,
    live: RoaringBitmap,
    index: PayloadIndex,
}

/// A point checked and ready to store.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub point: Point,
    pub extracted: Vec<(String, Vec<IndexValue>)>,
}

/// One partition of a collection.
pub(crate) struct Partition {
    dimension: usize,
    metric: Metric,
    /// Candidates asked of the graph per answer wanted: more when the
    /// graph's copy is quantized, so re-ranking recovers the exact order.
    oversample: usize,
    graph: RwLock<Index>,
    points: RwLock<Points>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("dimension", &self.dimension)
            .field("metric", &self.metric)
            .finish_non_exhaustive()
    }
}

fn index_error(e: impl std::fmt::Display) -> VectorError {
    VectorError::Index(e.to_string())
}

/// Takes a lock whose holder may have panicked; the data stays consistent
/// because every writer finishes its own changes before releasing.
macro_rules! lock {
    ($l:expr, read) => {
        $l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    ($l:expr, write) => {
        $l.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    ($l:expr, lock) => {
        $l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    };
}
pub(crate) use lock;

/// How the graph stores vectors for a collection.
pub(crate) fn scalar_kind(metric: Metric, hnsw: HnswParams) -> ScalarKind {
    match (hnsw.quantization, metric) {
        (Quantization::F32, _) => ScalarKind::F32,
        (Quantization::I8, _) | (Quantization::Auto, Metric::Cosine) => ScalarKind::I8,
        (Quantization::F16, _) | (Quantization::Auto, _) => ScalarKind::F16,
    }
}

/// Builds an empty usearch index.
pub(crate) fn new_graph(dimension: usize, metric: Metric, hnsw: HnswParams) -> Result<Index> {
    let quantization = scalar_kind(metric, hnsw);
    let options = IndexOptions {
        dimensions: dimension,
        // Cosine vectors are stored at unit length, and usearch scales each
        // to unit length on its way to i8 (the only metric i8 is allowed
        // with), so a dot product ranks them by direction at a third of
        // the angular kernel's work, which also sums both norms.
        metric: match metric {
            Metric::Cosine | Metric::Dot => MetricKind::IP,
            Metric::L2 => MetricKind::L2sq,
        },
        quantization,
        connectivity: hnsw.m,
        expansion_add: hnsw.ef_construction,
        expansion_search: hnsw.ef_search,
        multi: false,
    };
    let graph = Index::new(&options).map_err(index_error)?;
    graph
        .reserve_capacity_and_threads(1024, INDEX_THREADS)
        .map_err(index_error)?;
    Ok(graph)
}

impl Partition {
    /// An empty partition.
    pub fn new(dimension: usize, metric: Metric, hnsw: HnswParams) -> Result<Partition> {
        Ok(Partition {
            dimension,
            metric,
            oversample: oversample(metric, hnsw),
            graph: RwLock::new(new_graph(dimension, metric, hnsw)?),
            points: RwLock::new(Points::default()),
        })
    }

    /// A partition rebuilt from a snapshot: the graph as saved, and the
    /// arena in key order (`None` for retired keys).
    pub fn restore(
        dimension: usize,
        metric: Metric,
        hnsw: HnswParams,
        graph: Index,
        slots: Vec<Option<Prepared>>,
        vectors: Vec<f32>,
    ) -> Partition {
        let mut points = Points {
            vectors,
            ..Points::default()
        };
        for (key, slot) in slots.into_iter().enumerate() {
            let key = key as u32;
            match slot {
                None => points.free.push(key),
                Some(p) => {
                    points.index.insert(key, &p.extracted);
                    points.ids.insert(p.point.id.clone(), key);
                    points.live.insert(key);
                    points.slots.push(Some(Slot {
                        id: p.point.id,
                        payload: p.point.payload,
                        extracted: p.extracted,
                    }));
                }
            }
            if points.slots.len() <= key as usize {
                points.slots.push(None);
            }
        }
        Partition {
            dimension,
            metric,
            oversample: oversample(metric, hnsw),
            graph: RwLock::new(graph),
            points: RwLock::new(points),
        }
    }

    /// Live points.
    pub fn len(&self) -> u64 {
        lock!(self.points, read).live.len()
    }

    /// Stores points, replacing those with the same ids. The caller
    /// serializes writers.
    pub fn upsert(&self, batch: Vec<Prepared>) -> Result<()> {
        let (added, retired) = {
            let mut points = lock!(self.points, write);
            let mut added = Vec::with_capacity(batch.len());
            let mut retired = Vec::new();
            for p in batch {
                if let Some(old) = points.ids.get(&p.point.id).copied() {
                    points.retire(old);
                    retired.push(old);
                }
                let key = points.free.pop().unwrap_or(points.slots.len() as u32);
                points.index.insert(key, &p.extracted);
                points.ids.insert(p.point.id.clone(), key);
                points.live.insert(key);
                let slot = Slot {
                    id: p.point.id,
                    payload: p.point.payload,
                    extracted: p.extracted,
                };
                points.put(key, slot, &p.point.vector);
                added.push(key);
            }
            (added, retired)
        };
        self.reserve(added.len())?;

        let graph = lock!(self.graph, read);
        for key in retired {
            graph.remove(u64::from(key)).map_err(index_error)?;
        }
        let points = lock!(self.points, read);
        // A key retired by a later point of the same batch is skipped, and
        // one reused within the batch is added once.
        let mut seen = RoaringBitmap::new();
        let added: Vec<u32> = added
            .into_iter()
            .filter(|k| points.live.contains(*k) && seen.insert(*k))
            .collect();
        let add = |keys: &[u32]| -> Result<()> {
            for key in keys {
                graph
                    .add(u64::from(*key), points.vector(*key, self.dimension))
                    .map_err(index_error)?;
            }
            Ok(())
        };
        // usearch inserts concurrently; a large batch uses every core.
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(ADD_THREADS);
        if added.len() < 256 || workers < 2 {
            return add(&added);
        }
        let share = added.len().div_ceil(workers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = added
                .chunks(share)
                .map(|keys| scope.spawn(|| add(keys)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(VectorError::Index("an insert thread panicked".into()))
                    })
                })
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }

    /// Removes points by id; returns how many existed.
    pub fn delete(&self, ids: &[String]) -> Result<usize> {
        let retired: Vec<u32> = {
            let mut points = lock!(self.points, write);
            let keys: Vec<u32> = ids
                .iter()
                .filter_map(|id| points.ids.get(id).copied())
                .collect();
            keys.iter().for_each(|k| points.retire(*k));
            keys
        };
        let graph = lock!(self.graph, read);
        for key in &retired {
            graph.remove(u64::from(*key)).map_err(index_error)?;
        }
        Ok(retired.len())
    }

    /// The stored points with these ids (missing ids are skipped).
    pub fn get(&self, ids: &[String], with_vector: bool) -> Vec<Point> {
        let points = lock!(self.points, read);
        ids.iter()
            .filter_map(|id| {
                points
                    .ids
                    .get(id)
                    .map(|k| points.point(*k, self.dimension, with_vector))
            })
            .collect()
    }

    /// The ids of the points the filter keeps.
    pub fn ids_matching(&self, filter: &Filter) -> Vec<String> {
        let points = lock!(self.points, read);
        let keys = filter.resolve(&points.index, &points.live);
        keys.iter()
            .filter_map(|key| points.slots.get(key as usize).and_then(Option::as_ref))
            .map(|slot| slot.id.clone())
            .collect()
    }

    /// How many points the filter keeps.
    pub fn count(&self, filter: Option<&Filter>) -> u64 {
        let points = lock!(self.points, read);
        match filter {
            Some(f) => f.resolve(&points.index, &points.live).len(),
            None => points.live.len(),
        }
    }

    /// The `k` closest points the filter keeps, as `(key, distance)`
    /// closest first, with the strategy used and the candidate count.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
        planner: &Planner,
    ) -> Result<Found> {
        let points = lock!(self.points, read);
        let total = points.live.len();
        let filtered = filter.map(|f| f.resolve(&points.index, &points.live));
        let candidates = filtered.as_ref().unwrap_or(&points.live);
        let matching = candidates.len();
        let wanted = (k as u64).min(matching) as usize;
        if wanted == 0 {
            return Ok((Vec::new(), Strategy::Empty, matching));
        }

        let (mut hits, strategy) = if filter.is_some() && planner.exact(matching, total) {
            (self.exact(&points, query, k, candidates), Strategy::Exact)
        } else {
            let graph = lock!(self.graph, read);
            let wanted = k * self.oversample;
            let found = if filter.is_some() {
                graph.filtered_search(query, wanted, |key| candidates.contains(key as u32))
            } else {
                graph.search(query, wanted)
            }
            .map_err(index_error)?;
            // Re-ranked with the full-precision vectors.
            let mut hits: Vec<(u32, f32)> = found
                .keys
                .iter()
                .map(|key| *key as u32)
                .filter(|key| candidates.contains(*key))
                .map(|key| {
                    (
                        key,
                        distance(self.metric, query, points.vector(key, self.dimension)),
                    )
                })
                .collect();
            hits.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            hits.truncate(k);
            let strategy = if filter.is_some() {
                Strategy::FilteredGraph
            } else {
                Strategy::Graph
            };
            (hits, strategy)
        };
        // A walk that came back short falls back to the exact answer.
        if hits.len() < wanted {
            hits = self.exact(&points, query, k, candidates);
        }

        let answers = hits
            .into_iter()
            .map(|(key, d)| (points.point(key, self.dimension, false), d))
            .collect();
        Ok((answers, strategy, matching))
    }

    /// Compares every candidate with the query.
    fn exact(
        &self,
        points: &Points,
        query: &[f32],
        k: usize,
        candidates: &RoaringBitmap,
    ) -> Vec<(u32, f32)> {
        // A max-heap of the k best so far, worst on top.
        let mut heap: BinaryHeap<(Ordered, u32)> = BinaryHeap::with_capacity(k + 1);
        for key in candidates {
            let d = distance(self.metric, query, points.vector(key, self.dimension));
            if heap.len() < k {
                heap.push((Ordered(d), key));
            } else if heap.peek().is_some_and(|(worst, _)| d < worst.0) {
                heap.pop();
                heap.push((Ordered(d), key));
            }
        }
        let mut out: Vec<(u32, f32)> = heap.into_iter().map(|(d, key)| (key, d.0)).collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Grows the graph ahead of `more` additions; growing needs the graph
    /// to itself.
    fn reserve(&self, more: usize) -> Result<()> {
        let needed = lock!(self.graph, read).size() + more;
        if needed <= lock!(self.graph, read).capacity() {
            return Ok(());
        }
        let graph = lock!(self.graph, write);
        let capacity = graph.capacity().max(1024);
        let target = needed.max(capacity.saturating_mul(2));
        graph
            .reserve_capacity_and_threads(target, INDEX_THREADS)
            .map_err(index_error)
    }

    /// Runs `f` over the graph and the arena, for snapshots.
    pub fn with_parts<T>(&self, f: impl FnOnce(&Index, &Points) -> T) -> T {
        let graph = lock!(self.graph, read);
        let points = lock!(self.points, read);
        f(&graph, &points)
    }
}

impl Points {
    fn retire(&mut self, key: u32) {
        if let Some(slot) = self.slots.get_mut(key as usize).and_then(Option::take) {
            self.index.remove(key, &slot.extracted);
            self.ids.remove(&slot.id);
            self.free.push(key);
        }
        self.live.remove(key);
    }

    /// Stores a point under `key`: a retired slot, or the next new one.
    fn put(&mut self, key: u32, slot: Slot, vector: &[f32]) {
        let at = key as usize;
        if at < self.slots.len() {
            let start = at * vector.len();
            self.vectors[start..start + vector.len()].copy_from_slice(vector);
            self.slots[at] = Some(slot);
        } else {
            self.vectors.extend_from_slice(vector);
            self.slots.push(Some(slot));
        }
    }

    fn vector(&self, key: u32, dimension: usize) -> &[f32] {
        let start = key as usize * dimension;
        &self.vectors[start..start + dimension]
    }

    fn point(&self, key: u32, dimension: usize, with_vector: bool) -> Point {
        let slot = self.slots.get(key as usize).and_then(Option::as_ref);
        Point {
            id: slot.map(|s| s.id.clone()).unwrap_or_default(),
            vector: if with_vector {
                self.vector(key, dimension).to_vec()
            } else {
                Vec::new()
            },
            payload: slot.map(|s| s.payload.clone()).unwrap_or_default(),
        }
    }

    /// The arena for a snapshot: slot count, vectors, and for each slot its
    /// id and payload (`None` when retired).
    pub fn slots(&self) -> impl Iterator<Item = Option<(&str, &Map<String, Value>)>> {
        self.slots
            .iter()
            .map(|s| s.as_ref().map(|s| (s.id.as_str(), &s.payload)))
    }

    /// The vector arena.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }
}

/// The distance usearch would report: `1 - dot` for cosine and dot,
/// squared euclidean for l2. numkong's kernels pick the widest SIMD the
/// CPU has at run time, as usearch's do.
pub(crate) fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    use numkong::{Dot, Euclidean};
    match metric {
        Metric::Cosine | Metric::Dot => 1.0 - f32::dot(a, b).unwrap_or(0.0) as f32,
        Metric::L2 => f32::sqeuclidean(a, b).unwrap_or(f64::INFINITY) as f32,
    }
}

fn oversample(metric: Metric, hnsw: HnswParams) -> usize {
    if scalar_kind(metric, hnsw) == ScalarKind::F32 {
        1
    } else {
        2
    }
}

/// The score a client sees for a distance.
pub(crate) fn score(metric: Metric, distance: f32) -> f32 {
    match metric {
        Metric::Cosine | Metric::Dot => 1.0 - distance,
        Metric::L2 => distance.max(0.0).sqrt(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f32);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(id: &str, x: f32) -> Prepared {
        Prepared {
            point: Point {
                id: id.into(),
                vector: vec![x, 1.0 - x],
                payload: Map::new(),
            },
            extracted: Vec::new(),
        }
    }

    #[test]
    fn updates_reuse_retired_slots_and_stay_searchable() {
        let p = Partition::new(2, Metric::L2, HnswParams::default()).unwrap();
        for round in 0..200 {
            let x = round as f32 / 200.0;
            p.upsert(vec![prepared("a", x), prepared("b", 1.0 - x)])
                .unwrap();
        }
        // The same id twice in one batch: the last one wins.
        p.upsert(vec![prepared("a", 0.2), prepared("a", 1.0)])
            .unwrap();
        p.delete(&["b".to_owned()]).unwrap();
        p.upsert(vec![prepared("c", 0.5)]).unwrap();
        let slots = lock!(p.points, read).slots.len();
        assert!(
            slots <= 4,
            "the arena grew to {slots} slots for 2 live points"
        );
        assert_eq!(p.len(), 2);

        let (hits, strategy, _) = p
            .search(&[0.995, 0.005], 2, None, &Planner::default())
            .unwrap();
        assert_eq!(strategy, Strategy::Graph);
        let ids: Vec<&str> = hits.iter().map(|(pt, _)| pt.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "c"]);
    }
}
