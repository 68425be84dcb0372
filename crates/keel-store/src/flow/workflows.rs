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

const NEXT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM flow_workflows WHERE tenant_id = $1 AND name = $2";
const INSERT: &str = "INSERT INTO flow_workflows (tenant_id, name, version, definition, created_ms) \
     VALUES ($1, $2, $3, $4, $5)";
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
        if let Some(latest) = self.workflow(tenant_id, name, None).await?
            && latest.definition == definition
        {
            return Ok(latest);
        }
        let created_ms = now_ms();
        let version = on_pool!(self, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                let version = sqlx::query(NEXT_VERSION)
                    .bind(tenant_id)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?
                    .int("v")?;
                sqlx::query(INSERT)
                    .bind(tenant_id)
                    .bind(name)
                    .bind(version)
                    .bind(definition)
                    .bind(created_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await.map(|()| version)
            }
            .await
        })
        .map_err(StoreError::db("save a workflow"))?;
        Ok(StoredWorkflow {
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            version,
            definition: definition.to_owned(),
            created_ms,
        })
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
