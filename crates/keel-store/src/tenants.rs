//! Tenants and their users.
//!
//! A tenant is the unit of isolation and billing; users belong to exactly
//! one tenant. Both are created by operators (admin API or config) and never
//! deleted here, so ids stay valid in the usage ledger forever.

use keel_core::{TenantId, UserId};
use serde::{Deserialize, Serialize};

use crate::backend::{RowExt, Store, now_ms, on_pool};
use crate::error::{StoreError, is_foreign_key_violation};

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// The operator-chosen id.
    pub id: TenantId,
    /// A display name.
    pub name: String,
    /// When the tenant was first stored, unix milliseconds.
    pub created_ms: i64,
}

/// A user within a tenant, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The tenant the user belongs to.
    pub tenant_id: TenantId,
    /// The operator-chosen id, unique within the tenant.
    pub id: UserId,
    /// A display name.
    pub name: String,
    /// When the user was stored, unix milliseconds.
    pub created_ms: i64,
}

const INSERT_TENANT: &str = "INSERT INTO tenants (id, name, created_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO NOTHING RETURNING id, name, created_ms";

// Config is the source of truth for config-defined tenants, so a renamed
// tenant takes the new name; its creation time is kept.
const UPSERT_TENANT: &str = "INSERT INTO tenants (id, name, created_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id, name, created_ms";

const SELECT_TENANT: &str = "SELECT id, name, created_ms FROM tenants WHERE id = $1";
const SELECT_TENANTS: &str = "SELECT id, name, created_ms FROM tenants ORDER BY id";

const INSERT_USER: &str = "INSERT INTO users (tenant_id, id, name, created_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, id) DO NOTHING \
     RETURNING tenant_id, id, name, created_ms";

const SELECT_USER: &str = "SELECT tenant_id, id, name, created_ms FROM users \
     WHERE tenant_id = $1 AND id = $2";
const SELECT_USERS: &str = "SELECT tenant_id, id, name, created_ms FROM users \
     WHERE tenant_id = $1 ORDER BY id";

impl Store {
    /// Stores a new tenant.
    ///
    /// Fails with [`StoreError::Conflict`] when the id is taken.
    pub async fn create_tenant(&self, id: &TenantId, name: &str) -> Result<Tenant, StoreError> {
        let tenant = on_pool!(self, |pool| {
            let query = sqlx::query(INSERT_TENANT)
                .bind(id.as_str())
                .bind(name)
                .bind(now_ms());
            query
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(tenant_from_row).transpose())
        })
        .map_err(StoreError::db("create a tenant"))?;
        tenant.ok_or_else(|| StoreError::Conflict {
            what: "tenant",
            id: id.to_string(),
        })
    }

    /// Stores a tenant if it is missing, or renames it to `name` if it
    /// exists. Meant for tenants defined in config, applied on every start.
    pub async fn ensure_tenant(&self, id: &TenantId, name: &str) -> Result<Tenant, StoreError> {
        on_pool!(self, |pool| {
            let query = sqlx::query(UPSERT_TENANT)
                .bind(id.as_str())
                .bind(name)
                .bind(now_ms());
            query
                .fetch_one(pool)
                .await
                .and_then(|row| tenant_from_row(&row))
        })
        .map_err(StoreError::db("ensure a tenant"))
    }

    /// One tenant by id.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        on_pool!(self, |pool| {
            let query = sqlx::query(SELECT_TENANT).bind(id.as_str());
            query
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(tenant_from_row).transpose())
        })
        .map_err(StoreError::db("read a tenant"))
    }

    /// Every tenant, ordered by id.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(SELECT_TENANTS).fetch_all(pool).await;
            rows.and_then(|rows| rows.iter().map(tenant_from_row).collect())
        })
        .map_err(StoreError::db("list tenants"))
    }

    /// Stores a new user in an existing tenant.
    ///
    /// Fails with [`StoreError::NotFound`] when the tenant is missing and
    /// [`StoreError::Conflict`] when the tenant already has this user id.
    pub async fn create_user(
        &self,
        tenant: &TenantId,
        id: &UserId,
        name: &str,
    ) -> Result<User, StoreError> {
        let user = on_pool!(self, |pool| {
            let query = sqlx::query(INSERT_USER)
                .bind(tenant.as_str())
                .bind(id.as_str())
                .bind(name)
                .bind(now_ms());
            query
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(user_from_row).transpose())
        })
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::NotFound {
                    what: "tenant",
                    id: tenant.to_string(),
                }
            } else {
                StoreError::db("create a user")(e)
            }
        })?;
        user.ok_or_else(|| StoreError::Conflict {
            what: "user",
            id: id.to_string(),
        })
    }

    /// Every user of a tenant, ordered by id (empty for an unknown tenant).
    pub async fn users(&self, tenant: &TenantId) -> Result<Vec<User>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(SELECT_USERS)
                .bind(tenant.as_str())
                .fetch_all(pool)
                .await;
            rows.and_then(|rows| rows.iter().map(user_from_row).collect())
        })
        .map_err(StoreError::db("list users"))
    }

    /// Whether a user exists in a tenant, for checks before writes that
    /// reference it.
    pub(crate) async fn user_exists(
        &self,
        tenant: &TenantId,
        id: &UserId,
    ) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            let query = sqlx::query(SELECT_USER)
                .bind(tenant.as_str())
                .bind(id.as_str());
            query.fetch_optional(pool).await.map(|row| row.is_some())
        })
        .map_err(StoreError::db("read a user"))
    }
}

fn tenant_from_row(row: &impl RowExt) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: TenantId::new(row.text("id")?).map_err(invalid_id)?,
        name: row.text("name")?,
        created_ms: row.int("created_ms")?,
    })
}

fn user_from_row(row: &impl RowExt) -> Result<User, sqlx::Error> {
    Ok(User {
        tenant_id: TenantId::new(row.text("tenant_id")?).map_err(invalid_id)?,
        id: UserId::new(row.text("id")?).map_err(invalid_id)?,
        name: row.text("name")?,
        created_ms: row.int("created_ms")?,
    })
}

/// A stored id that no longer passes validation reads as a decode error.
pub(crate) fn invalid_id(error: keel_core::InvalidId) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
}
