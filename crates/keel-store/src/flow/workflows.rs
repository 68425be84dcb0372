//! Registered workflow definitions: each registration of a name is a new
//! version, so runs keep the definition they started with.

use serde::{Deserialize, Serialize};

use crate::backend::{BeginWrite, RowExt, Store, now_ms, on_pool};
use crate::error::StoreError;

/// A definition as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWorkflow {
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// Its name.
    pub name: String,
    /// 1 for the first registration of the name, then counting up.
    pub version: i64,
    /// The definition's text, as registered.
    pub definition: String,
    /// Unix milliseconds.
    pub created_ms: i64,
}

const LATEST: &str = "SELECT tenant_id, name, version, definition, created_ms FROM flow_workflows \
     WHERE tenant_id = $1 AND name = $2 ORDER BY version DESC LIMIT 1";
const INSERT: &str = "INSERT INTO flow_workflows (tenant_id, name, version, definition, created_ms) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, name, version) DO NOTHING";
const COLUMNS: &str = "tenant_id, name, version, definition, created_ms";

impl Store {
    /// Stores a definition as the newest version of `name`; returns it.
    /// An unchanged definition is not stored again: the latest version is
    /// returned instead, so registering on every start is harmless.
    pub async fn save_workflow(
        &self,
        tenant_id: &str,
        name: &str,
        definition: &str,
    ) -> Result<StoredWorkflow, StoreError> {
        // Several processes may register the same file at once. The check
        // and the insert share a transaction (SQLite serialises them); on
        // PostgreSQL two may still pick the same version, and the loser,
        // inserting nothing, looks again and finds the winner's row.
        loop {
            if let Some(stored) = self.save_once(tenant_id, name, definition).await? {
                return Ok(stored);
            }
        }
    }

    /// The latest version if it holds `definition`, else `definition`
    /// inserted as the next version; `None` if another writer took that
    /// version first.
    async fn save_once(
        &self,
        tenant_id: &str,
        name: &str,
        definition: &str,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        let created_ms = now_ms();
        on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let latest = sqlx::query(LATEST)
                    .bind(tenant_id)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .as_ref()
                    .map(workflow_from_row)
                    .transpose()?;
                let version = match latest {
                    Some(latest) if latest.definition == definition => {
                        return Ok(Some(latest));
                    }
                    Some(latest) => latest.version + 1,
                    None => 1,
                };
                let done = sqlx::query(INSERT)
                    .bind(tenant_id)
                    .bind(name)
                    .bind(version)
                    .bind(definition)
                    .bind(created_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok((done.rows_affected() == 1).then(|| StoredWorkflow {
                    tenant_id: tenant_id.to_owned(),
                    name: name.to_owned(),
                    version,
                    definition: definition.to_owned(),
                    created_ms,
                }))
            }
            .await
        })
        .map_err(StoreError::db("save a workflow"))
    }

    /// A version of a workflow, or its latest when `version` is `None`.
    pub async fn workflow(
        &self,
        tenant_id: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM flow_workflows WHERE tenant_id = $1 AND name = $2 \
             AND ($3 IS NULL OR version = $3) ORDER BY version DESC LIMIT 1"
        );
        on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(tenant_id)
                .bind(name)
                .bind(version)
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(workflow_from_row).transpose())
        })
        .map_err(StoreError::db("read a workflow"))
    }

    /// The latest version of each of a tenant's workflows, by name.
    pub async fn workflows(&self, tenant_id: &str) -> Result<Vec<StoredWorkflow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM flow_workflows w WHERE tenant_id = $1 AND version = \
             (SELECT MAX(version) FROM flow_workflows v WHERE v.tenant_id = w.tenant_id \
             AND v.name = w.name) ORDER BY name"
        );
        on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(tenant_id)
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(workflow_from_row).collect())
        })
        .map_err(StoreError::db("list workflows"))
    }
}

fn workflow_from_row(row: &impl RowExt) -> Result<StoredWorkflow, sqlx::Error> {
    Ok(StoredWorkflow {
        tenant_id: row.text("tenant_id")?,
        name: row.text("name")?,
        version: row.int("version")?,
        definition: row.text("definition")?,
        created_ms: row.int("created_ms")?,
    })
}
