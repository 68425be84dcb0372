//! The embedded store: every tenant's collections in process, persisted
//! under one directory.
//!
//! ```text
//! <root>/<tenant>/<collection>/collection.json, wal.log, snapshot/
//! ```
//!
//! Writes run on tokio's blocking pool so a large batch never stalls the
//! request threads; reads (queries, gets, counts) are short and run in
//! place under `block_in_place`. A semaphore keeps concurrent index calls
//! within the thread slots usearch was prepared for. A collection whose log outgrows
//! `snapshot_wal_bytes` is snapshotted in the background.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::collection::{Collection, CollectionInfo};
use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::partition::{PERMITS, Planner, lock};
use crate::point::{Point, Query, QueryResult};
use crate::spec::{CollectionSpec, check_name};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The directory holding every collection.
    pub root: PathBuf,
    /// Sync the log to disk before acknowledging a write (survives power
    /// loss, not only a crash of the process).
    pub fsync: bool,
    /// Snapshot a collection once its log passes this many bytes.
    pub snapshot_wal_bytes: u64,
    /// Exact search versus graph walk.
    pub planner: Planner,
}

impl EmbeddedOptions {
    /// Defaults for a store under `root`.
    pub fn new(root: impl Into<PathBuf>) -> EmbeddedOptions {
        EmbeddedOptions {
            root: root.into(),
            fsync: true,
            snapshot_wal_bytes: 64 * 1024 * 1024,
            planner: Planner::default(),
        }
    }
}

type Key = (String, String);

#[derive(Debug)]
struct Entry {
    collection: Collection,
    snapshotting: AtomicBool,
}

/// The in-process vector store; cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    options: Arc<EmbeddedOptions>,
    collections: Arc<RwLock<HashMap<Key, Arc<Entry>>>>,
    permits: Arc<Semaphore>,
    /// Held while a collection's directory is created or removed, so two
    /// requests for one name never write the same files.
    catalog: Arc<tokio::sync::Mutex<()>>,
}

impl EmbeddedStore {
    /// Opens the store, loading every collection under the root (snapshot,
    /// then log; nothing is re-embedded).
    pub async fn open(options: EmbeddedOptions) -> Result<EmbeddedStore> {
        let root = options.root.clone();
        let fsync = options.fsync;
        let loaded = tokio::task::spawn_blocking(move || load_all(&root, fsync))
            .await
            .map_err(|e| VectorError::Index(format!("loading collections: {e}")))??;
        let count = loaded.len();
        let collections = loaded
            .into_iter()
            .map(|(k, collection)| {
                let entry = Entry {
                    collection,
                    snapshotting: AtomicBool::new(false),
                };
                (k, Arc::new(entry))
            })
            .collect();
        tracing::info!(root = %options.root.display(), collections = count, "Vector store loaded");
        Ok(EmbeddedStore {
            options: Arc::new(options),
            collections: Arc::new(RwLock::new(collections)),
            permits: Arc::new(Semaphore::new(PERMITS)),
            catalog: Arc::default(),
        })
    }

    /// Creates a collection.
    pub async fn create(&self, tenant: &str, mut spec: CollectionSpec) -> Result<CollectionInfo> {
        spec.validate()?;
        let key = (tenant.to_owned(), spec.name.clone());
        let _catalog = self.catalog.lock().await;
        if lock!(self.collections, read).contains_key(&key) {
            return Err(VectorError::AlreadyExists { name: spec.name });
        }
        let dir = self.dir(tenant, &spec.name)?;
        let fsync = self.options.fsync;
        let collection = self
            .blocking(move || Collection::create(&dir, spec, fsync))
            .await?;
        let info = collection.info();
        let mut collections = lock!(self.collections, write);
        if collections.contains_key(&key) {
            return Err(VectorError::AlreadyExists { name: key.1 });
        }
        let entry = Entry {
            collection,
            snapshotting: AtomicBool::new(false),
        };
        collections.insert(key, Arc::new(entry));
        Ok(info)
    }

    /// Every tenant (namespace) that has a collection, sorted.
    pub fn tenants(&self) -> Vec<String> {
        let mut out: Vec<String> = lock!(self.collections, read)
            .keys()
            .map(|(t, _)| t.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A tenant's collections, by name.
    pub fn list(&self, tenant: &str) -> Vec<CollectionInfo> {
        let mut out: Vec<CollectionInfo> = lock!(self.collections, read)
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, e)| e.collection.info())
            .collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    /// One collection.
    pub fn info(&self, tenant: &str, name: &str) -> Result<CollectionInfo> {
        Ok(self.entry(tenant, name)?.collection.info())
    }

    /// A collection's spec.
    pub fn spec(&self, tenant: &str, name: &str) -> Result<CollectionSpec> {
        Ok(self.entry(tenant, name)?.collection.spec().clone())
    }

    /// Deletes a collection and its files.
    pub async fn delete_collection(&self, tenant: &str, name: &str) -> Result<()> {
        let key = (tenant.to_owned(), name.to_owned());
        let _catalog = self.catalog.lock().await;
        let removed = lock!(self.collections, write).remove(&key);
        if removed.is_none() {
            return Err(VectorError::NotFound {
                name: name.to_owned(),
            });
        }
        let dir = self.dir(tenant, name)?;
        // Renamed first, so a crash mid-removal never leaves half a
        // collection that loads at the next start.
        let doomed = dir.with_extension(format!("deleted-{}", std::process::id()));
        self.blocking(move || {
            std::fs::rename(&dir, &doomed)
                .and_then(|()| std::fs::remove_dir_all(&doomed))
                .map_err(VectorError::io(format!("removing {}", dir.display())))
        })
        .await
    }

    /// Stores points (vectors given), replacing those with the same ids.
    pub async fn upsert(&self, tenant: &str, name: &str, points: Vec<Point>) -> Result<usize> {
        let entry = self.entry(tenant, name)?;
        let points = entry.collection.prepare(points)?;
        let n = points.len();
        let limit = self.options.snapshot_wal_bytes;
        let writer = Arc::clone(&entry);
        let needs_snapshot = self
            .blocking(move || writer.collection.upsert(points, limit))
            .await?;
        if needs_snapshot {
            self.snapshot_in_background(entry);
        }
        Ok(n)
    }

    /// Points by id, in the order asked (missing ids skipped).
    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        ids: Vec<String>,
        with_vector: bool,
    ) -> Result<Vec<Point>> {
        let entry = self.entry(tenant, name)?;
        self.compute(move || Ok(entry.collection.get(&ids, with_vector)))
            .await
    }

    /// Deletes points by id; returns how many existed.
    pub async fn delete(&self, tenant: &str, name: &str, ids: Vec<String>) -> Result<usize> {
        let entry = self.entry(tenant, name)?;
        self.blocking(move || entry.collection.delete(ids)).await
    }

    /// Deletes every point the filter keeps; returns how many there were.
    pub async fn delete_matching(&self, tenant: &str, name: &str, filter: &Value) -> Result<usize> {
        let entry = self.entry(tenant, name)?;
        let filter = parse_filter(&entry.collection, Some(filter))?.unwrap_or_default();
        self.blocking(move || entry.collection.delete_matching(&filter))
            .await
    }

    /// Counts points, optionally filtered and in one partition.
    pub async fn count(
        &self,
        tenant: &str,
        name: &str,
        filter: Option<&Value>,
        partition: Option<String>,
    ) -> Result<u64> {
        let entry = self.entry(tenant, name)?;
        let filter = parse_filter(&entry.collection, filter)?;
        self.compute(move || {
            entry
                .collection
                .count(filter.as_ref(), partition.as_deref())
        })
        .await
    }

    /// Answers a query; the filter is raw JSON checked against the
    /// collection's fields.
    pub async fn query(
        &self,
        tenant: &str,
        name: &str,
        filter: Option<&Value>,
        mut query: Query,
    ) -> Result<QueryResult> {
        let entry = self.entry(tenant, name)?;
        query.filter = parse_filter(&entry.collection, filter)?;
        let planner = self.options.planner;
        self.compute(move || entry.collection.query(query, &planner))
            .await
    }

    /// Snapshots every collection (at shutdown, so the next start loads
    /// graphs instead of replaying logs).
    pub async fn snapshot_all(&self) -> Result<()> {
        let entries: Vec<Arc<Entry>> = lock!(self.collections, read).values().cloned().collect();
        for entry in entries {
            if entry.collection.wal_bytes() > 0 {
                self.blocking(move || entry.collection.snapshot()).await?;
            }
        }
        Ok(())
    }

    fn snapshot_in_background(&self, entry: Arc<Entry>) {
        if entry.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let worker = Arc::clone(&entry);
            if let Err(e) = store.blocking(move || worker.collection.snapshot()).await {
                tracing::warn!(error = %e, "Snapshot failed; the write-ahead log keeps every write");
            }
            entry.snapshotting.store(false, Ordering::Release);
        });
    }

    fn entry(&self, tenant: &str, name: &str) -> Result<Arc<Entry>> {
        lock!(self.collections, read)
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| VectorError::NotFound {
                name: name.to_owned(),
            })
    }

    fn dir(&self, tenant: &str, name: &str) -> Result<PathBuf> {
        check_name("collection", name)?;
        // Tenant ids are already restricted to a safe alphabet; a leading
        // dot is refused so no tenant maps to `.` or `..`.
        if tenant.is_empty() || tenant.starts_with('.') || tenant.contains(['/', '\\']) {
            return Err(VectorError::invalid(
                "tenant",
                "this tenant id cannot name a directory",
            ));
        }
        Ok(self.options.root.join(tenant).join(name))
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.permits
            .acquire()
            .await
            .map_err(|_| VectorError::Index("the vector store is shut down".to_owned()))
    }

    /// Runs a read where the caller is. Reads are short and CPU-bound
    /// (0.15 to 0.3 ms for a search over 100k points; bench/RESULTS.md), so
    /// a hand-off to the blocking pool and back would be a large share of
    /// each. On a multi-threaded runtime
    /// `block_in_place` moves the worker's other tasks to another thread
    /// meanwhile; a current-thread runtime just runs it.
    async fn compute<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let _permit = self.permit().await?;
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
            _ => work(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permit().await?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| VectorError::Index(format!("index task failed: {e}")))?
    }
}

fn parse_filter(collection: &Collection, filter: Option<&Value>) -> Result<Option<Filter>> {
    filter
        .filter(|f| !f.is_null())
        .map(|f| Filter::parse(f, &collection.spec().fields, "filter"))
        .transpose()
}

fn load_all(root: &Path, fsync: bool) -> Result<Vec<(Key, Collection)>> {
    std::fs::create_dir_all(root)
        .map_err(VectorError::io(format!("creating {}", root.display())))?;
    let mut out = Vec::new();
    let read = |dir: &Path| {
        std::fs::read_dir(dir).map_err(VectorError::io(format!("listing {}", dir.display())))
    };
    for tenant in read(root)? {
        let tenant = tenant.map_err(VectorError::io("listing tenants"))?;
        if !tenant.path().is_dir() {
            continue;
        }
        for dir in read(&tenant.path())? {
            let dir = dir.map_err(VectorError::io("listing collections"))?.path();
            // Left by a deletion that a crash interrupted.
            if dir.to_string_lossy().contains(".deleted-") {
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            if !dir.join("collection.json").exists() {
                continue;
            }
            let collection = Collection::open(&dir, fsync)?;
            let key = (
                tenant.file_name().to_string_lossy().into_owned(),
                collection.spec().name.clone(),
            );
            out.push((key, collection));
        }
    }
    Ok(out)
}
