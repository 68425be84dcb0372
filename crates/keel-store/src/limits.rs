//! Limit rules created through the admin API, and the kill switch.
//!
//! The store keeps them so they survive restarts and reach every replica:
//! each server rereads both tables every second. Rule bodies are stored as
//! the JSON the admin API accepted; keel-limits checks them again on load.

use serde::{Deserialize, Serialize};

use crate::backend::{RowExt, Store, now_ms, on_pool};
use crate::error::StoreError;

/// A stored limit rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    /// The rule's id.
    pub id: String,
    /// The rule as JSON.
    pub spec: String,
    /// When it was first stored (Unix ms).
    pub created_ms: i64,
    /// When it last changed (Unix ms).
    pub updated_ms: i64,
}

/// A stored kill-switch entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    /// What is blocked (`tenant=acme`).
    pub scope: String,
    /// Why.
    pub reason: String,
    /// When it was set (Unix ms).
    pub created_ms: i64,
}

const SELECT_RULES: &str =
    "SELECT id, spec, created_ms, updated_ms FROM limit_rules ORDER BY created_ms, id";
const UPSERT_RULE: &str = "INSERT INTO limit_rules (id, spec, created_ms, updated_ms) \
     VALUES ($1, $2, $3, $3) ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, \
     updated_ms = excluded.updated_ms RETURNING id, spec, created_ms, updated_ms";
const DELETE_RULE: &str = "DELETE FROM limit_rules WHERE id = $1";

const SELECT_BLOCKS: &str = "SELECT scope, reason, created_ms FROM blocks ORDER BY created_ms";
const UPSERT_BLOCK: &str = "INSERT INTO blocks (scope, reason, created_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason \
     RETURNING scope, reason, created_ms";
const DELETE_BLOCK: &str = "DELETE FROM blocks WHERE scope = $1";

impl Store {
    /// Every stored rule, oldest first.
    pub async fn limit_rules(&self) -> Result<Vec<StoredRule>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(SELECT_RULES).fetch_all(pool).await;
            rows.and_then(|rows| rows.iter().map(rule_from_row).collect())
        })
        .map_err(StoreError::db("list limit rules"))
    }

    /// Stores a rule, replacing one with the same id.
    pub async fn put_limit_rule(&self, id: &str, spec: &str) -> Result<StoredRule, StoreError> {
        on_pool!(self, |pool| {
            let query = sqlx::query(UPSERT_RULE).bind(id).bind(spec).bind(now_ms());
            query
                .fetch_one(pool)
                .await
                .and_then(|row| rule_from_row(&row))
        })
        .map_err(StoreError::db("store a limit rule"))
    }

    /// Deletes a rule; fails with [`StoreError::NotFound`] if there is none.
    pub async fn delete_limit_rule(&self, id: &str) -> Result<(), StoreError> {
        let deleted = on_pool!(self, |pool| {
            let query = sqlx::query(DELETE_RULE).bind(id);
            query.execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(StoreError::db("delete a limit rule"))?;
        if deleted == 0 {
            return Err(StoreError::NotFound {
                what: "limit rule",
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Every kill-switch entry, oldest first.
    pub async fn blocks(&self) -> Result<Vec<StoredBlock>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(SELECT_BLOCKS).fetch_all(pool).await;
            rows.and_then(|rows| rows.iter().map(block_from_row).collect())
        })
        .map_err(StoreError::db("list blocks"))
    }

    /// Blocks a scope (or changes the reason of an existing block).
    pub async fn put_block(&self, scope: &str, reason: &str) -> Result<StoredBlock, StoreError> {
        on_pool!(self, |pool| {
            let query = sqlx::query(UPSERT_BLOCK)
                .bind(scope)
                .bind(reason)
                .bind(now_ms());
            query
                .fetch_one(pool)
                .await
                .and_then(|row| block_from_row(&row))
        })
        .map_err(StoreError::db("store a block"))
    }

    /// Lifts a block; fails with [`StoreError::NotFound`] if there is none.
    pub async fn delete_block(&self, scope: &str) -> Result<(), StoreError> {
        let deleted = on_pool!(self, |pool| {
            let query = sqlx::query(DELETE_BLOCK).bind(scope);
            query.execute(pool).await.map(|r| r.rows_affected())
        })
        .map_err(StoreError::db("delete a block"))?;
        if deleted == 0 {
            return Err(StoreError::NotFound {
                what: "block",
                id: scope.to_owned(),
            });
        }
        Ok(())
    }
}

fn rule_from_row(row: &impl RowExt) -> Result<StoredRule, sqlx::Error> {
    Ok(StoredRule {
        id: row.text("id")?,
        spec: row.text("spec")?,
        created_ms: row.int("created_ms")?,
        updated_ms: row.int("updated_ms")?,
    })
}

fn block_from_row(row: &impl RowExt) -> Result<StoredBlock, sqlx::Error> {
    Ok(StoredBlock {
        scope: row.text("scope")?,
        reason: row.text("reason")?,
        created_ms: row.int("created_ms")?,
    })
}
