//! Test support: a fresh, private database per test on every backend.
//!
//! SQLite tests get an in-memory database or a file in a temporary
//! directory. PostgreSQL tests get a new `keel_test_<random>` database,
//! created through the admin URL in `KEEL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and dropped afterwards, so tests
//! run in parallel safely. An unreachable PostgreSQL fails the test: these
//! tests never skip.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_store::{Store, StoreError, UsageRecord};
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use tempfile::TempDir;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Generates one `#[tokio::test]` per listed backend in a module named after
/// the test function: `backend_test!(run, name, sqlite_file: SqliteFile)`.
macro_rules! backend_test {
    ($runner:ident, $name:ident, $($variant:ident: $kind:ident),+) => {
        mod $name {
            $(
                #[tokio::test]
                async fn $variant() -> anyhow::Result<()> {
                    crate::support::$runner(crate::support::Kind::$kind, super::$name).await
                }
            )+
        }
    };
}

/// Runs each named test on in-memory SQLite, file SQLite and PostgreSQL,
/// each with a migrated store.
macro_rules! every_backend {
    ($($name:ident),+ $(,)?) => {
        $(backend_test!(
            run, $name, sqlite_memory: SqliteMemory, sqlite_file: SqliteFile, postgres: Postgres
        );)+
    };
}

/// Runs each named test on the backends another connection can reach (file
/// SQLite and PostgreSQL), each with a migrated store.
macro_rules! durable_backends {
    ($($name:ident),+ $(,)?) => {
        $(backend_test!(run, $name, sqlite_file: SqliteFile, postgres: Postgres);)+
    };
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SqliteMemory,
    SqliteFile,
    Postgres,
}

/// What a test gets: the store and how to reach its database again.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub store: Store,
    pub url: String,
    pub kind: Kind,
}

impl TestDb {
    /// Opens and migrates a second store on the same database.
    pub async fn reopen(&self) -> Result<Store> {
        if self.kind == Kind::SqliteMemory {
            bail!("an in-memory database cannot be reopened; use durable_backends!");
        }
        let store = Store::connect(&self.url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Runs SQL on a separate connection, behind the store's back.
    pub async fn execute_raw(&self, sql: &str) -> Result<()> {
        match self.kind {
            Kind::SqliteMemory => bail!("an in-memory database is reachable only via its store"),
            Kind::SqliteFile => {
                let mut conn = SqliteConnection::connect(&self.url).await?;
                conn.execute(sqlx::raw_sql(sql)).await?;
                conn.close().await?;
            }
            Kind::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await?;
                conn.execute(sqlx::raw_sql(sql)).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }
}

/// Runs a test on a fresh, migrated store of `kind`, then cleans up, even
/// when the test panics.
pub async fn run<F, Fut>(kind: Kind, test: F) -> Result<()>
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    run_with(kind, true, test).await
}

/// Like [`run`] but leaves the schema unmigrated.
pub async fn run_unmigrated<F, Fut>(kind: Kind, test: F) -> Result<()>
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    run_with(kind, false, test).await
}

async fn run_with<F, Fut>(kind: Kind, migrate: bool, test: F) -> Result<()>
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let (db, cleanup) = open(kind).await?;
    if migrate {
        db.store
            .migrate()
            .await
            .context("migrating the test store")?;
    }

    // Spawned so a failed assertion comes back as a JoinError and the
    // database is still dropped before the panic is resumed.
    let outcome = tokio::spawn(test(db.clone())).await;
    db.store.close().await;
    cleanup.run().await;
    match outcome {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

/// Resources to release after a test.
struct Cleanup {
    _dir: Option<TempDir>,
    postgres_database: Option<String>,
}

impl Cleanup {
    async fn run(self) {
        if let Some(name) = self.postgres_database {
            // Best effort: a leftover database only costs disk space.
            let admin = admin_url();
            if let Ok(mut conn) = PgConnection::connect(&admin).await {
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = conn.execute(sqlx::raw_sql(&drop)).await;
                let _ = conn.close().await;
            }
        }
    }
}

async fn open(kind: Kind) -> Result<(TestDb, Cleanup)> {
    let (url, cleanup) = match kind {
        Kind::SqliteMemory => (
            "sqlite::memory:".to_owned(),
            Cleanup {
                _dir: None,
                postgres_database: None,
            },
        ),
        Kind::SqliteFile => {
            let dir = tempfile::tempdir()?;
            // A nested path checks that missing directories are created.
            let url = format!("sqlite://{}/data/keel.db", dir.path().display());
            (
                url,
                Cleanup {
                    _dir: Some(dir),
                    postgres_database: None,
                },
            )
        }
        Kind::Postgres => {
            let (url, name) = create_postgres_database().await?;
            (
                url,
                Cleanup {
                    _dir: None,
                    postgres_database: Some(name),
                },
            )
        }
    };
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("opening {kind:?} store"))?;
    Ok((TestDb { store, url, kind }, cleanup))
}

/// The admin URL tests create their databases through.
pub fn admin_url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn create_postgres_database() -> Result<(String, String)> {
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin).await.with_context(|| {
        format!(
            "PostgreSQL is not reachable at {admin}: start it or point KEEL_TEST_POSTGRES_URL \
             at a server where this user may CREATE DATABASE (these tests never skip)"
        )
    })?;

    // Identifiers cannot be bound; the name is generated from [a-z0-9_].
    let name = format!("keel_test_{:016x}", rand::random::<u64>());
    let create = format!("CREATE DATABASE {name}");
    conn.execute(sqlx::raw_sql(&create))
        .await
        .with_context(|| format!("creating test database {name}"))?;
    conn.close().await?;
    Ok((database_url(&admin, &name), name))
}

/// `admin` with its database path replaced by `database`.
fn database_url(admin: &str, database: &str) -> String {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{database}{query}", &base[..path_start])
}

/// Waits (in real time, polling) until `condition` holds, failing after ten
/// seconds. For waiting on a background task's progress, never for timing.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..2_000 {
        if condition() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("timed out waiting until {what}")
}

/// A successful, non-streamed ledger row with every optional field empty.
pub fn usage_row(request_id: &str, tenant: &str, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_owned(),
        ts_ms,
        tenant_id: tenant.to_owned(),
        user_id: None,
        key_id: None,
        session: None,
        workflow: None,
        model: "gpt-4o-mini".to_owned(),
        deployment: None,
        provider: None,
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_micros: 7,
        latency_us: 1_000,
        overhead_us: 50,
        ttft_us: None,
        status: 200,
        error_code: None,
        stream: false,
        attempts: 1,
        cache: None,
        saved_prompt_tokens: 0,
        saved_completion_tokens: 0,
        saved_cost_micros: 0,
    }
}

#[test]
fn database_url_replaces_only_the_path() {
    assert_eq!(
        database_url("postgres://u:p@h:5432/test?sslmode=disable", "x"),
        "postgres://u:p@h:5432/x?sslmode=disable"
    );
    assert_eq!(database_url("postgres://h", "x"), "postgres://h/x");
}

/// The error a store call was expected to return.
pub fn refused<T: std::fmt::Debug>(result: Result<T, StoreError>) -> Result<StoreError> {
    match result {
        Ok(value) => bail!("expected the store to refuse, but it returned {value:?}"),
        Err(e) => Ok(e),
    }
}
