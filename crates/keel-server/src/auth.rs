//! API-key authentication against an in-memory table.
//!
//! Keys are looked up by the SHA-256 of the presented secret, so the table
//! never holds a secret and a request never touches the store. The table is
//! loaded at startup, updated by the admin API on this process, and
//! refreshed from the store periodically so keys created or revoked through
//! another replica take effect everywhere.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use keel_core::{ErrorCode, KeyId, TenantId, UserId};
use keel_store::{ApiKey, Store, StoreError};

use crate::error::ApiError;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key used.
    pub key_id: KeyId,
    /// The key's tenant.
    pub tenant_id: TenantId,
    /// The key's user, if it belongs to one.
    pub user_id: Option<UserId>,
}

/// The in-memory key table.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_hash: Arc<RwLock<HashMap<String, Caller>>>,
}

impl KeyTable {
    /// Replaces the table with the store's active keys.
    pub async fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        let keys = store.active_keys().await?;
        let table: HashMap<String, Caller> = keys
            .into_iter()
            .map(|k| (k.hash.clone(), caller_of(&k)))
            .collect();
        let count = table.len();
        *self.write() = table;
        Ok(count)
    }

    /// Adds one key (after the admin API created it).
    pub fn insert(&self, key: &ApiKey) {
        self.write().insert(key.hash.clone(), caller_of(key));
    }

    /// Removes a key by id (after the admin API revoked it).
    pub fn remove(&self, id: &KeyId) {
        self.write().retain(|_, caller| &caller.key_id != id);
    }

    /// Finds the caller for a request's `Authorization: Bearer` or
    /// `x-api-key` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let secret = presented_key(headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidApiKey,
                "no API key: send it as `Authorization: Bearer <key>`",
            )
        })?;
        let hash = keel_store::hash_key(secret);
        let table = self
            .by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.get(&hash).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidApiKey,
                "the API key is not valid or was revoked",
            )
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Caller>> {
        // Every write replaces whole entries; a poisoned lock still holds a
        // consistent map.
        self.by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn caller_of(key: &ApiKey) -> Caller {
    Caller {
        key_id: key.id.clone(),
        tenant_id: key.tenant_id.clone(),
        user_id: key.user_id.clone(),
    }
}

/// The secret a request presents, if any.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))?;
    let key = key.trim();
    (!key.is_empty()).then_some(key)
}

/// Checks the admin token (`Authorization: Bearer <token>`) in constant time.
pub fn check_admin(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = token else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the admin API is disabled: set the admin token environment variable and restart",
        ));
    };
    let given = presented_key(headers).unwrap_or_default();
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidApiKey,
            "missing or wrong admin token",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn reads_bearer_and_x_api_key() {
        assert_eq!(presented_key(&headers("Bearer sk-1")), Some("sk-1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-2".parse().unwrap());
        assert_eq!(presented_key(&h), Some("sk-2"));
        assert_eq!(presented_key(&headers("Basic abc")), None);
    }

    #[test]
    fn admin_token_must_match_exactly() {
        assert!(check_admin(&headers("Bearer t0k"), Some("t0k")).is_ok());
        assert!(check_admin(&headers("Bearer t0"), Some("t0k")).is_err());
        assert_eq!(
            check_admin(&headers("Bearer t0k"), None).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}
