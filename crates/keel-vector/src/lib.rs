//! keel's vector store: collections of vectors with JSON payloads, searched
//! by nearest neighbour under filters, per tenant.
//!
//! - [`spec`]: what a collection is (dimension, metric, indexed fields,
//!   partition key, HNSW parameters).
//! - [`filter`] and [`payload`]: filters on indexed fields, resolved through
//!   bitmaps to the exact set of points they keep.
//! - `partition`: one HNSW graph (usearch) per partition beside its
//!   points; the [`Planner`] compares few candidates exactly and walks the
//!   graph for many.
//! - `wal` and `snapshot`: every acknowledged write survives a crash; a
//!   restart loads graphs from snapshots and replays the log after them.
//! - [`EmbeddedStore`]: all of that in process, the default.
//! - [`PgVectorStore`]: collections in PostgreSQL with pgvector (HNSW
//!   index, filters as SQL over normalized fields, list partitions), for
//!   several processes; [`VectorStore`] is the one API over both.
//! - [`chunk`]: cutting long documents into overlapping pieces.

pub mod chunk;
mod collection;
mod embedded;
pub mod error;
pub mod filter;
mod partition;
pub mod payload;
mod pg;
pub mod point;
mod snapshot;
pub mod spec;
mod sql;
mod store;
pub mod testing;
mod wal;

pub use chunk::{Chunking, chunk};
pub use collection::CollectionInfo;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::{Result, VectorError};
pub use filter::Filter;
pub use partition::Planner;
pub use pg::PgVectorStore;
pub use point::{Point, Query, QueryResult, ScoredPoint, Strategy};
pub use spec::{CollectionSpec, FieldType, HnswParams, Metric, Quantization};
pub use store::VectorStore;
