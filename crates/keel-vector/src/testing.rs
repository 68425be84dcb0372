//! For tests that need a pgvector database of their own: the server
//! `scripts/pgvector.sh` starts (or `KEEL_TEST_PGVECTOR_URL`), and a fresh,
//! empty database on it per test.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection;

/// Where `scripts/pgvector.sh` serves PostgreSQL with pgvector.
pub const DEFAULT_PGVECTOR_URL: &str = "postgres://postgres@127.0.0.1:5433/keel";

/// The pgvector server tests use: `KEEL_TEST_PGVECTOR_URL`, or
/// [`DEFAULT_PGVECTOR_URL`].
pub fn pgvector_url() -> String {
    std::env::var("KEEL_TEST_PGVECTOR_URL").unwrap_or_else(|_| DEFAULT_PGVECTOR_URL.to_owned())
}

/// Creates a new, empty database named after `prefix`, the process and a
/// counter on the pgvector server; returns its URL. The error says how to
/// start the server.
pub async fn scratch_database(prefix: &str) -> Result<String, String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = pgvector_url();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!(
        "{prefix}_{}_{}_{stamp}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
    );
    let mut admin = sqlx::PgConnection::connect(&base).await.map_err(|e| {
        format!("pgvector server at {base}: {e}; start it with scripts/pgvector.sh")
    })?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("creating database {name}: {e}"))?;
    let Some((server, _)) = base.rsplit_once('/') else {
        return Err(format!("{base} names no database"));
    };
    Ok(format!("{server}/{name}"))
}
