//! [`VectorStore`]: one API over both backends, the embedded store (the
//! default) and PostgreSQL with pgvector (scale-out). Callers and tests use
//! this type; the backends behave the same to a client, except for the
//! [`Strategy`](crate::Strategy) they report.

use serde_json::Value;

use crate::collection::CollectionInfo;
use crate::embedded::EmbeddedStore;
use crate::error::Result;
use crate::pg::PgVectorStore;
use crate::point::{Point, Query, QueryResult};
use crate::spec::CollectionSpec;

/// Every tenant's collections, in process or in PostgreSQL.
#[derive(Debug, Clone)]
pub enum VectorStore {
    /// In process, persisted under a directory.
    Embedded(EmbeddedStore),
    /// In PostgreSQL with pgvector, shared by every keel process.
    Postgres(PgVectorStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $body:expr) => {
        match $self {
            VectorStore::Embedded($s) => $body,
            VectorStore::Postgres($s) => $body,
        }
    };
}

impl VectorStore {
    /// Which backend: `embedded` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            VectorStore::Embedded(_) => "embedded",
            VectorStore::Postgres(_) => "postgres",
        }
    }

    /// Creates a collection.
    pub async fn create(&self, tenant: &str, spec: CollectionSpec) -> Result<CollectionInfo> {
        each!(self, s => s.create(tenant, spec).await)
    }

    /// Every tenant (namespace) that has a collection, sorted.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        match self {
            VectorStore::Embedded(s) => Ok(s.tenants()),
            VectorStore::Postgres(s) => s.tenants().await,
        }
    }

    /// A tenant's collections, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<CollectionInfo>> {
        match self {
            VectorStore::Embedded(s) => Ok(s.list(tenant)),
            VectorStore::Postgres(s) => s.list(tenant).await,
        }
    }

    /// One collection.
    pub async fn info(&self, tenant: &str, name: &str) -> Result<CollectionInfo> {
        match self {
            VectorStore::Embedded(s) => s.info(tenant, name),
            VectorStore::Postgres(s) => s.info(tenant, name).await,
        }
    }

    /// A collection's spec.
    pub async fn spec(&self, tenant: &str, name: &str) -> Result<CollectionSpec> {
        match self {
            VectorStore::Embedded(s) => s.spec(tenant, name),
            VectorStore::Postgres(s) => s.spec(tenant, name).await,
        }
    }

    /// Deletes a collection with its points.
    pub async fn delete_collection(&self, tenant: &str, name: &str) -> Result<()> {
        each!(self, s => s.delete_collection(tenant, name).await)
    }

    /// Stores points, replacing those with the same ids.
    pub async fn upsert(&self, tenant: &str, name: &str, points: Vec<Point>) -> Result<usize> {
        each!(self, s => s.upsert(tenant, name, points).await)
    }

    /// Points by id, in the order asked (missing ids skipped).
    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        ids: Vec<String>,
        with_vector: bool,
    ) -> Result<Vec<Point>> {
        each!(self, s => s.get(tenant, name, ids, with_vector).await)
    }

    /// Deletes points by id; returns how many existed.
    pub async fn delete(&self, tenant: &str, name: &str, ids: Vec<String>) -> Result<usize> {
        each!(self, s => s.delete(tenant, name, ids).await)
    }

    /// Deletes every point the filter keeps (raw JSON, checked against
    /// the collection's indexed fields); returns how many there were.
    pub async fn delete_matching(&self, tenant: &str, name: &str, filter: &Value) -> Result<usize> {
        each!(self, s => s.delete_matching(tenant, name, filter).await)
    }

    /// Counts points, optionally filtered and in one partition.
    pub async fn count(
        &self,
        tenant: &str,
        name: &str,
        filter: Option<&Value>,
        partition: Option<String>,
    ) -> Result<u64> {
        each!(self, s => s.count(tenant, name, filter, partition).await)
    }

    /// Answers a query; the filter is raw JSON checked against the
    /// collection's indexed fields.
    pub async fn query(
        &self,
        tenant: &str,
        name: &str,
        filter: Option<&Value>,
        query: Query,
    ) -> Result<QueryResult> {
        each!(self, s => s.query(tenant, name, filter, query).await)
    }

    /// Snapshots the embedded store (a no-op on PostgreSQL).
    pub async fn snapshot_all(&self) -> Result<()> {
        match self {
            VectorStore::Embedded(s) => s.snapshot_all().await,
            VectorStore::Postgres(_) => Ok(()),
        }
    }
}
