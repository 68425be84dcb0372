//! Opening a store: URL parsing, connection pools and the helpers every
//! repository module uses to run one query against either backend.
//!
//! A [`Store`] holds one pool, SQLite or PostgreSQL. Repository code is
//! written once with [`on_pool!`], which expands the same block for each pool
//! type; only SQL that differs between the dialects is written twice.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Postgres, Row, Sqlite, Transaction};
use tracing::info;

use crate::error::StoreError;

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite allows one writer at a time; a few connections let reads (key
/// loads, usage queries) run beside the ledger's writes in WAL mode.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// Connections per process on PostgreSQL; replicas multiply this.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// How long a caller waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// An embedded SQLite file (or in-memory database, for tests).
    Sqlite,
    /// A PostgreSQL server, shared by scale-out replicas.
    Postgres,
}

impl Backend {
    /// The stable lowercase name, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pool behind a store.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// keel's repository: tenants, users, API keys and the usage ledger, over
/// SQLite or PostgreSQL.
///
/// Cloning is cheap (the pool is reference-counted); share one store across
/// the program.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// Where workflow timing (due times, leases, deadlines) reads the time;
    /// the wall clock unless [`Store::with_clock`] set another.
    clock: Clock,
}

/// A source of unix milliseconds.
#[derive(Clone)]
struct Clock(Option<Arc<dyn Fn() -> i64 + Send + Sync>>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(custom)"
        } else {
            "Clock(wall)"
        })
    }
}

/// Runs the same block against whichever pool a store holds, binding the pool
/// to `$pool`. Each arm is type-checked separately, so the block may use
/// driver types generically.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            $crate::backend::Pool::Sqlite($pool) => $body,
            $crate::backend::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Store {
    /// Opens the store named by `url` and checks that it answers.
    ///
    /// Accepted forms: `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:`,
    /// `postgres://…` and `postgresql://…`. A SQLite file and its directory
    /// are created when missing. Call [`Store::migrate`] before use.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        // Only the scheme is ever echoed back: the rest may hold a password.
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => connect_sqlite(url).await,
            "postgres" | "postgresql" => connect_postgres(url).await,
            _ => Err(StoreError::UnsupportedUrl {
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// This store, reading workflow time (due times, leases, deadlines)
    /// from `clock` in unix milliseconds instead of the wall clock: an
    /// engine on tokio's paused clock in tests, or one clock shared by the
    /// parts of an engine.
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> i64 + Send + Sync>) -> Store {
        self.clock = Clock(Some(clock));
        self
    }

    /// The time workflow bookkeeping uses, unix milliseconds.
    pub fn clock_ms(&self) -> i64 {
        match &self.clock.0 {
            Some(clock) => clock(),
            None => now_ms(),
        }
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs `SELECT 1`, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))
        .map_err(StoreError::db("ping the store"))?;
        Ok(())
    }

    /// Closes every pooled connection, waiting for in-flight queries.
    /// Later calls on this store (or its clones) fail.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await);
        info!(backend = self.backend().as_str(), "Closed store");
    }
}

async fn connect_sqlite(url: &str) -> Result<Store, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl {
            backend: "sqlite",
            reason: e.to_string(),
        })?
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let memory = is_memory_url(url);
    let path = if memory {
        PathBuf::from(":memory:")
    } else {
        options.get_filename().into()
    };

    let pool = if memory {
        // An in-memory database lives exactly as long as its connections, so
        // keep one connection open forever and route everything through it.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
    } else {
        create_parent_dir(&path)?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
    }
    .map_err(|source| StoreError::Connect {
        backend: "sqlite",
        source,
    })?;

    info!(backend = "sqlite", path = %path.display(), "Opened store");
    Ok(Store {
        pool: Pool::Sqlite(pool),
        clock: Clock(None),
    })
}

async fn connect_postgres(url: &str) -> Result<Store, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
        backend: "postgres",
        reason: e.to_string(),
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await
        .map_err(|source| StoreError::Connect {
            backend: "postgres",
            source,
        })?;

    info!(
        backend = "postgres",
        host = options.get_host(),
        port = options.get_port(),
        database = options.get_database().unwrap_or_default(),
        "Opened store"
    );
    Ok(Store {
        pool: Pool::Postgres(pool),
        clock: Clock(None),
    })
}

/// Whether a SQLite URL names an in-memory database.
fn is_memory_url(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|p| p == "mode=memory")
}

/// Creates the directory a SQLite file lives in. Blocking, but it runs once
/// at startup before anything else uses the runtime.
fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// The current wall-clock time as unix milliseconds, the unit every stored
/// timestamp uses.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Starts a transaction meant to write.
///
/// On SQLite this is `BEGIN IMMEDIATE`: taking the write lock up front means
/// a concurrent writer makes us wait (busy timeout) instead of failing when
/// a deferred transaction tries to upgrade its read lock.
pub(crate) trait BeginWrite {
    /// The driver the transaction belongs to.
    type Db: sqlx::Database;

    /// Acquires a connection and begins a write transaction on it.
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// Typed column reads shared by both drivers' rows, so row mapping is
/// written once. Column types follow one convention: text is `TEXT`,
/// integers and timestamps are 64-bit, flags are small integers 0/1.
pub(crate) trait RowExt {
    /// A non-null text column.
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    /// A non-null 64-bit integer column.
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    /// A nullable 64-bit integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A 0/1 flag column.
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                Ok(self.try_get::<i16, _>(column)? != 0)
            }
        }
    };
}
impl_row_ext!(SqliteRow);
impl_row_ext!(PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_memory_urls() {
        assert!(is_memory_url("sqlite::memory:"));
        assert!(is_memory_url("sqlite://:memory:"));
        assert!(is_memory_url("sqlite://x?mode=memory&cache=shared"));
        assert!(!is_memory_url("sqlite://data/keel.db"));
        assert!(!is_memory_url("sqlite:keel.db?mode=rwc"));
    }

    #[test]
    fn backend_names_are_stable() {
        assert_eq!(Backend::Sqlite.as_str(), "sqlite");
        assert_eq!(Backend::Postgres.to_string(), "postgres");
    }
}
