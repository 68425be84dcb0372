//! Schema migrations for both backends, applied by a small runner.
//!
//! Each migration is embedded twice, once per dialect, under
//! `migrations/{sqlite,postgres}/NNNN_name.sql`. The runner records applied
//! versions in `keel_migrations(version, name, applied_ms)` and applies each
//! pending one in its own transaction, so a failed migration leaves no trace.
//!
//! Several processes may start at once. On PostgreSQL every migration
//! transaction first takes a transaction-scoped advisory lock, so one process
//! applies a version while the others wait and then find it recorded. On
//! SQLite `BEGIN IMMEDIATE` takes the database write lock for the same effect.

use sqlx::Executor;
use tracing::{debug, info, warn};

use crate::backend::{Backend, BeginWrite, Pool, RowExt, Store, now_ms, on_pool};
use crate::error::StoreError;

/// One schema change, written for each dialect.
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, oldest first. Append only: never edit one that shipped.
/// The schema version a migrated store is at: the newest migration's.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "limits",
        sqlite: include_str!("../migrations/sqlite/0002_limits.sql"),
        postgres: include_str!("../migrations/postgres/0002_limits.sql"),
    },
    Migration {
        version: 3,
        name: "cache_savings",
        sqlite: include_str!("../migrations/sqlite/0003_cache_savings.sql"),
        postgres: include_str!("../migrations/postgres/0003_cache_savings.sql"),
    },
    Migration {
        version: 4,
        name: "flow",
        sqlite: include_str!("../migrations/sqlite/0004_flow.sql"),
        postgres: include_str!("../migrations/postgres/0004_flow.sql"),
    },
];

/// The bookkeeping table; the same SQL serves both dialects.
const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS keel_migrations (
    version    BIGINT NOT NULL PRIMARY KEY,
    name       TEXT   NOT NULL,
    applied_ms BIGINT NOT NULL
)";

const SELECT_APPLIED: &str = "SELECT version FROM keel_migrations WHERE version = $1";
const INSERT_APPLIED: &str =
    "INSERT INTO keel_migrations (version, name, applied_ms) VALUES ($1, $2, $3)";

/// Advisory lock key serialising migrations across processes on PostgreSQL
/// (the bytes of "keelmigr").
const POSTGRES_MIGRATION_LOCK: i64 = 0x6b65_656c_6d69_6772;

impl Store {
    /// Brings the schema up to date, applying each pending migration once.
    ///
    /// Safe to call on every start and from several processes at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        for migration in MIGRATIONS {
            let applied = self
                .apply(migration)
                .await
                .map_err(|source| StoreError::Migration {
                    version: migration.version,
                    name: migration.name,
                    source,
                })?;
            if applied {
                info!(
                    version = migration.version,
                    name = migration.name,
                    "Applied migration"
                );
            }
        }

        // Migrations only add, so an older keel may run on a newer schema,
        // but that is worth saying out loud.
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if let Some(found) = self.schema_version().await?
            && found > known
        {
            warn!(
                schema_version = found,
                known_version = known,
                "Schema is newer than this keel"
            );
        }
        debug!(backend = self.backend().as_str(), "Schema up to date");
        Ok(())
    }

    /// The newest migration version recorded in the database, or `None`
    /// before the first [`Store::migrate`].
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let table_sql = match self.pool {
            Pool::Sqlite(_) => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Pool::Postgres(_) => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let version_sql = "SELECT MAX(version) AS version FROM keel_migrations";

        on_pool!(self, |pool| {
            async {
                let row = sqlx::query(table_sql)
                    .bind("keel_migrations")
                    .fetch_one(pool)
                    .await?;
                if row.int("n")? == 0 {
                    return Ok(None);
                }
                sqlx::query(version_sql)
                    .fetch_one(pool)
                    .await?
                    .opt_int("version")
            }
            .await
        })
        .map_err(StoreError::db("read the schema version"))
    }

    /// Applies one migration unless already recorded; returns whether it ran.
    async fn apply(&self, m: &Migration) -> Result<bool, sqlx::Error> {
        let backend = self.backend();
        let sql = match backend {
            Backend::Sqlite => m.sqlite,
            Backend::Postgres => m.postgres,
        };

        on_pool!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            if backend == Backend::Postgres {
                // Held until commit or rollback; other processes queue here.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(POSTGRES_MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            (&mut *tx)
                .execute(sqlx::raw_sql(CREATE_MIGRATIONS_TABLE))
                .await?;

            let done = sqlx::query(SELECT_APPLIED)
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                tx.rollback().await?;
                return Ok(false);
            }

            (&mut *tx).execute(sqlx::raw_sql(sql)).await?;
            sqlx::query(INSERT_APPLIED)
                .bind(m.version)
                .bind(m.name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i64::try_from(i).unwrap() + 1, "{}", m.name);
            assert!(!m.sqlite.trim().is_empty() && !m.postgres.trim().is_empty());
        }
    }
}
