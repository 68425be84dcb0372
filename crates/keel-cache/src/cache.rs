//! [`ResponseCache`]: lookups, fills, eviction and invalidation over the
//! vector store.
//!
//! Each tenant's entries are one collection in a namespace of their own
//! (`~cache.<tenant>`, which no tenant id can spell), so a lookup can only
//! ever see its own tenant's entries, on either backend. An exact lookup
//! reads the entry whose id is the request's exact key. A semantic lookup
//! embeds the final user turn and searches the entries of the same context
//! digest that are still fresh; the best few at or above the threshold go
//! to the guard, and the first it lets through is the hit.
//!
//! A cache that fails (the store or the embedder) never fails a request: a
//! lookup that errs is a miss and a fill that errs is dropped, both with a
//! warning. Fills and sweeps run off the request path.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use keel_core::chat::{ChatCompletion, ChatRequest};
use keel_embed::Embedder;
use keel_limits::Clock;
use keel_vector::{Query, VectorError, VectorStore};
use serde_json::json;

use crate::entry::{self, COLLECTION, EXACT_ONLY, Entry};
use crate::flight::Flights;
use crate::guard;
use crate::key::{RequestKey, Scope};
use crate::settings::{CacheSettings, Skip};

/// Why a cache operation failed; callers log it and carry on as a miss.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The vector store failed.
    #[error("cache store: {0}")]
    Store(#[from] VectorError),
    /// Embedding the question failed.
    #[error("cache embedder: {0}")]
    Embed(#[from] keel_embed::EmbedError),
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    /// The same request was answered before.
    Exact,
    /// A request with the same context and a question the embedder and
    /// the guard call the same.
    Semantic,
    /// An entry past its TTL, served because every upstream failed.
    Stale,
}

impl HitKind {
    /// The `x-keel-cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            HitKind::Exact => "exact",
            HitKind::Semantic => "semantic",
            HitKind::Stale => "stale",
        }
    }
}

/// A served entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// How it was found.
    pub kind: HitKind,
    /// The entry.
    pub entry: Arc<Entry>,
    /// The question's similarity to the entry's, for semantic hits.
    pub similarity: Option<f32>,
}

/// A request on its way through the cache: its keys, and the question's
/// vector once a lookup has embedded it (a fill reuses it).
#[derive(Debug, Clone)]
pub struct Probe {
    /// The request's keys.
    pub key: RequestKey,
    namespace: String,
    model: String,
    vector: Option<Vec<f32>>,
    /// Guard vetoes met on the way, by name, for metrics.
    pub vetoes: Vec<&'static str>,
}

impl Probe {
    /// The probe with its question's vector already known (embedded by the
    /// caller), so neither a lookup nor a fill embeds it again.
    pub fn with_vector(mut self, vector: Vec<f32>) -> Probe {
        self.vector = Some(vector);
        self
    }
}

/// The response cache; cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: CacheSettings,
    store: VectorStore,
    embedder: Option<Arc<dyn Embedder>>,
    clock: Clock,
    ready: RwLock<HashSet<String>>,
    creating: tokio::sync::Mutex<()>,
    flights: Flights,
}

/// What every cache namespace starts with; tenant ids cannot contain `~`.
const NAMESPACE_PREFIX: &str = "~cache.";

fn namespace(tenant: &str) -> String {
    format!("{NAMESPACE_PREFIX}{tenant}")
}

impl ResponseCache {
    /// A cache over `store`; without an embedder it answers exact lookups
    /// only.
    pub fn new(
        settings: CacheSettings,
        store: VectorStore,
        embedder: Option<Arc<dyn Embedder>>,
        clock: Clock,
    ) -> ResponseCache {
        ResponseCache {
            inner: Arc::new(Inner {
                settings,
                store,
                embedder,
                clock,
                ready: RwLock::default(),
                creating: tokio::sync::Mutex::default(),
                flights: Flights::default(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// The cache clock's time, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Requests being generated now, shared by identical ones.
    pub fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// The cache's view of a request, or why it is kept out.
    pub fn probe(&self, request: &ChatRequest, scope: &Scope) -> Result<Probe, Skip> {
        self.inner.settings.request_allowed(request)?;
        let scope = Scope {
            tenant: scope.tenant.clone(),
            user: scope.user.clone().filter(|_| self.inner.settings.per_user),
        };
        Ok(Probe {
            key: RequestKey::of(request, &scope),
            namespace: namespace(&scope.tenant),
            model: request.model.clone(),
            vector: None,
            vetoes: Vec::new(),
        })
    }

    /// A fresh entry for the request: exact first, then semantic.
    pub async fn lookup(&self, probe: &mut Probe) -> Result<Option<Hit>, CacheError> {
        let found = self.find(probe, false).await;
        self.gone_is_empty(&probe.namespace, found)
    }

    /// An entry past its TTL but still kept, for when every upstream
    /// failed; fresh entries qualify too.
    pub async fn stale(&self, probe: &mut Probe) -> Result<Option<Hit>, CacheError> {
        let found = self.find(probe, true).await;
        let found = self.gone_is_empty(&probe.namespace, found)?;
        Ok(found.map(|hit| Hit {
            kind: HitKind::Stale,
            ..hit
        }))
    }

    /// A namespace whose collection went away since it was seen (another
    /// process invalidated the whole tenant) holds nothing; it is looked
    /// up afresh next time.
    fn gone_is_empty<T: Default>(
        &self,
        ns: &str,
        result: Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        match result {
            Err(CacheError::Store(VectorError::NotFound { .. })) => {
                write(&self.inner.ready).remove(ns);
                Ok(T::default())
            }
            other => other,
        }
    }

    async fn find(&self, probe: &mut Probe, stale: bool) -> Result<Option<Hit>, CacheError> {
        let s = &self.inner.settings;
        if !self.exists(&probe.namespace).await? {
            return Ok(None);
        }
        let now = self.inner.clock.now_ms();
        let live = |e: &Entry| {
            if stale {
                e.keep_until_ms > now
            } else {
                e.fresh_until_ms > now
            }
        };

        if s.exact || stale {
            let ids = vec![probe.key.exact.clone()];
            let found = self
                .inner
                .store
                .get(&probe.namespace, COLLECTION, ids, false)
                .await?;
            if let Some(entry) = found
                .into_iter()
                .find_map(|p| Entry::from_payload(p.payload))
                && live(&entry)
            {
                return Ok(Some(Hit {
                    kind: HitKind::Exact,
                    entry: Arc::new(entry),
                    similarity: None,
                }));
            }
        }

        if !(s.semantic || stale) {
            return Ok(None);
        }
        let Some(question) = probe.key.question.clone() else {
            return Ok(None);
        };
        let Some(vector) = self.vector(probe).await? else {
            return Ok(None);
        };
        // Only the context is filtered on in the store (one posting list);
        // expiry is checked on the candidates, which are asked for twice
        // over so entries past their TTL but kept for stale serving do
        // not crowd out fresh ones. A range filter on expiry times would
        // union one posting list per stored entry on every lookup.
        let filter = json!({"must": [
            {"key": "context", "match": {"value": probe.key.context}},
        ]});
        let query = Query {
            vector,
            k: s.candidates.max(1) * 2,
            with_payload: true,
            ..Query::default()
        };
        let result = self
            .inner
            .store
            .query(&probe.namespace, COLLECTION, Some(&filter), query)
            .await?;
        for point in result.points {
            if point.score < s.threshold {
                break;
            }
            let Some(entry) = point.payload.and_then(Entry::from_payload).filter(live) else {
                continue;
            };
            let verdict = match (&entry.question, s.guard) {
                (Some(stored), true) => guard::check(&question, stored),
                (Some(_), false) => Ok(()),
                (None, _) => continue,
            };
            match verdict {
                Ok(()) => {
                    return Ok(Some(Hit {
                        kind: HitKind::Semantic,
                        entry: Arc::new(entry),
                        similarity: Some(point.score),
                    }));
                }
                Err(veto) => {
                    tracing::debug!(
                        veto = veto.name(),
                        score = point.score,
                        "Cache guard vetoed a hit"
                    );
                    probe.vetoes.push(veto.name());
                }
            }
        }
        Ok(None)
    }

    /// Stores a complete answer; returns the entry for the request's
    /// flight, or `None` when the response may not be cached.
    pub async fn fill(
        &self,
        probe: &mut Probe,
        response: &ChatCompletion,
        cost_micros: i64,
        tokens: (u64, u64),
    ) -> Result<Option<Arc<Entry>>, CacheError> {
        let Some(entry) = self.prepare(probe, response, cost_micros, tokens) else {
            return Ok(None);
        };
        self.store(probe, &entry).await?;
        Ok(Some(entry))
    }

    /// The entry a response would be stored as, or `None` when it may not
    /// be cached (see [`CacheSettings::response_allowed`]). Nothing is
    /// stored yet: the request's flight can share it at once, and
    /// [`ResponseCache::store`] runs off the request path.
    pub fn prepare(
        &self,
        probe: &Probe,
        response: &ChatCompletion,
        cost_micros: i64,
        tokens: (u64, u64),
    ) -> Option<Arc<Entry>> {
        let s = &self.inner.settings;
        if let Err(skip) = s.response_allowed(response) {
            tracing::debug!(?skip, "Response not cached");
            return None;
        }
        let now = self.inner.clock.now_ms();
        let ttl_ms = millis(s.ttl);
        let semantic = s.semantic && probe.key.question.is_some() && self.inner.embedder.is_some();
        Some(Arc::new(Entry {
            context: match semantic {
                true => probe.key.context.clone(),
                false => EXACT_ONLY.to_owned(),
            },
            question: probe.key.question.clone(),
            model: probe.model.clone(),
            response: response.clone(),
            cost_micros,
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            created_ms: now,
            fresh_until_ms: now.saturating_add(ttl_ms),
            keep_until_ms: now
                .saturating_add(ttl_ms)
                .saturating_add(millis(s.stale_ttl)),
        }))
    }

    /// Stores an entry made by [`ResponseCache::prepare`] under the probe's
    /// key, embedding its question unless a lookup already did.
    pub async fn store(&self, probe: &mut Probe, entry: &Entry) -> Result<(), CacheError> {
        let mut entry = entry.clone();
        let vector = match entry.context == EXACT_ONLY {
            true => None,
            false => self.vector(probe).await?,
        };
        let vector = vector.unwrap_or_else(|| {
            // Without a vector, no semantic lookup may reach the entry.
            entry.context = EXACT_ONLY.to_owned();
            self.placeholder()
        });
        let point = entry.into_point(probe.key.exact.clone(), vector);
        let ns = &probe.namespace;
        self.ensure(ns).await?;
        let stored = self
            .inner
            .store
            .upsert(ns, COLLECTION, vec![point.clone()])
            .await;
        match stored {
            // Dropped by another process since this one saw it: make it
            // again, once.
            Err(VectorError::NotFound { .. }) => {
                write(&self.inner.ready).remove(ns);
                self.ensure(ns).await?;
                self.inner.store.upsert(ns, COLLECTION, vec![point]).await?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }

    /// Every tenant with cache entries, in this process or (on pgvector)
    /// any other.
    pub async fn tenants(&self) -> Result<Vec<String>, CacheError> {
        let all = self.inner.store.tenants().await?;
        Ok(all
            .into_iter()
            .filter_map(|ns| ns.strip_prefix(NAMESPACE_PREFIX).map(str::to_owned))
            .collect())
    }

    /// Deletes a tenant's entries, or only those of one model; returns how
    /// many went (`None`: the whole collection, uncounted).
    pub async fn invalidate(
        &self,
        tenant: &str,
        model: Option<&str>,
    ) -> Result<Option<usize>, CacheError> {
        let ns = namespace(tenant);
        if !self.exists(&ns).await? {
            return Ok(Some(0));
        }
        match model {
            Some(model) => {
                let filter = json!({"must": [{"key": "model", "match": {"value": model}}]});
                Ok(Some(
                    self.inner
                        .store
                        .delete_matching(&ns, COLLECTION, &filter)
                        .await?,
                ))
            }
            None => {
                let _creating = self.inner.creating.lock().await;
                self.inner.store.delete_collection(&ns, COLLECTION).await?;
                write(&self.inner.ready).remove(&ns);
                Ok(None)
            }
        }
    }

    /// Deletes a tenant's expired entries, then its oldest beyond
    /// `max_entries`; returns how many went.
    pub async fn sweep(&self, tenant: &str) -> Result<usize, CacheError> {
        let ns = namespace(tenant);
        if !self.exists(&ns).await? {
            return Ok(0);
        }
        let store = &self.inner.store;
        let now = self.inner.clock.now_ms();
        let expired = json!({"must": [{"key": "keep_until_ms", "range": {"lte": now}}]});
        let mut gone = store.delete_matching(&ns, COLLECTION, &expired).await?;

        let total = store.count(&ns, COLLECTION, None, None).await?;
        let max = self.inner.settings.max_entries;
        if total > max {
            let cutoff = self.oldest_cutoff(&ns, total - max, now).await?;
            let old = json!({"must": [{"key": "created_ms", "range": {"lt": cutoff}}]});
            gone += store.delete_matching(&ns, COLLECTION, &old).await?;
        }
        Ok(gone)
    }

    /// The smallest creation time below which at least `excess` entries
    /// were created: a binary search over counts, each answered from the
    /// field's index.
    async fn oldest_cutoff(&self, ns: &str, excess: u64, now: i64) -> Result<i64, CacheError> {
        let (mut low, mut high) = (0i64, now.saturating_add(1));
        while low < high {
            let mid = low + (high - low) / 2;
            let filter = json!({"must": [{"key": "created_ms", "range": {"lt": mid}}]});
            let older = self
                .inner
                .store
                .count(ns, COLLECTION, Some(&filter), None)
                .await?;
            if older >= excess {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Ok(low)
    }

    /// The question's vector, embedded once per probe.
    async fn vector(&self, probe: &mut Probe) -> Result<Option<Vec<f32>>, CacheError> {
        if probe.vector.is_none() {
            let (Some(embedder), Some(question)) = (&self.inner.embedder, &probe.key.question)
            else {
                return Ok(None);
            };
            let mut vectors = embedder.embed(std::slice::from_ref(question)).await?;
            probe.vector = vectors.pop();
        }
        Ok(probe.vector.clone())
    }

    /// The vector of entries no semantic lookup reaches: any unit vector.
    fn placeholder(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.dimension()];
        v[0] = 1.0;
        v
    }

    fn dimension(&self) -> usize {
        self.inner
            .embedder
            .as_ref()
            .map_or(1, |e| e.dimension())
            .max(1)
    }

    /// Whether the namespace has a collection, remembered once seen.
    async fn exists(&self, ns: &str) -> Result<bool, CacheError> {
        if read(&self.inner.ready).contains(ns) {
            return Ok(true);
        }
        match self.inner.store.spec(ns, COLLECTION).await {
            Ok(spec) if spec.dimension == self.dimension() => {
                write(&self.inner.ready).insert(ns.to_owned());
                Ok(true)
            }
            // Left by another embedder: its vectors cannot be compared.
            Ok(_) => Ok(false),
            Err(VectorError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the namespace's collection, replacing one made for another
    /// embedder.
    async fn ensure(&self, ns: &str) -> Result<(), CacheError> {
        if self.exists(ns).await? {
            return Ok(());
        }
        let _creating = self.inner.creating.lock().await;
        if self.exists(ns).await? {
            return Ok(());
        }
        let store = &self.inner.store;
        match store.delete_collection(ns, COLLECTION).await {
            Ok(()) => {
                tracing::warn!(namespace = ns, "Cache entries of another embedder dropped");
            }
            Err(VectorError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match store.create(ns, entry::spec(self.dimension())).await {
            Ok(_) | Err(VectorError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        write(&self.inner.ready).insert(ns.to_owned());
        Ok(())
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
