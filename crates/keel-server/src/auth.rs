//! API-key authentication against an in-memory table.
//!
//! Keys are looked up by the SHA-256 of the presented secret, so the table
//! never holds a secret and a request never touches the store. The table is
//! loaded at startup, updated by the admin API on this process, and
//! refreshed from the store periodically so keys created or revoked through
//! another replica take effect everywhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The header that marks a request keel makes to itself (a workflow
/// step calling the gateway path), with this process's internal secret.
const INTERNAL_HEADER: &str = "x-keel-internal";
/// The tenant an internal request acts for.
const INTERNAL_TENANT_HEADER: &str = "x-keel-tenant";
/// The key id internal requests are attributed to.
const INTERNAL_KEY: &str = "keel-flow";

/// The in-memory key table.
#[derive(Clone)]
pub struct KeyTable {
    by_hash: Arc<RwLock<HashMap<String, Caller>>>,
    /// Bumped by every change this process makes, so a reload that read
    /// the store before the change does not overwrite it.
    changes: Arc<AtomicU64>,
    /// The hash of a random secret that exists only in this process: a
    /// request carrying it was made by keel itself.
    internal_hash: Arc<str>,
    internal_secret: Arc<str>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable").finish_non_exhaustive()
    }
}

impl Default for KeyTable {
    fn default() -> Self {
        let secret = keel_store::generate_secret();
        KeyTable {
            by_hash: Arc::default(),
            changes: Arc::default(),
            internal_hash: keel_store::hash_key(&secret).into(),
            internal_secret: secret.into(),
        }
    }
}

impl KeyTable {
    /// Headers that authenticate a request keel makes to itself on behalf
    /// of `tenant` (workflow steps use the gateway path this way, so the
    /// tenant's limits, budgets and cache apply to them).
    pub fn internal_headers(&self, tenant: &TenantId) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let (Ok(secret), Ok(tenant)) = (
            http::HeaderValue::from_str(&self.internal_secret),
            http::HeaderValue::from_str(tenant.as_str()),
        ) {
            headers.insert(INTERNAL_HEADER, secret);
            headers.insert(INTERNAL_TENANT_HEADER, tenant);
        }
        headers
    }

    /// The caller of an internal request, if `headers` carry the secret.
    fn internal_caller(&self, headers: &HeaderMap) -> Option<Result<Caller, ApiError>> {
        let presented = headers.get(INTERNAL_HEADER)?;
        let valid = presented
            .to_str()
            .is_ok_and(|p| keel_store::hash_key(p).as_str() == &*self.internal_hash);
        let tenant = headers
            .get(INTERNAL_TENANT_HEADER)
            .and_then(|t| t.to_str().ok())
            .and_then(|t| TenantId::new(t).ok());
        Some(match (valid, tenant, KeyId::new(INTERNAL_KEY)) {
            (true, Some(tenant_id), Ok(key_id)) => Ok(Caller {
                key_id,
                tenant_id,
                user_id: None,
            }),
            _ => Err(ApiError::new(
                ErrorCode::InvalidApiKey,
                "the API key is not valid or was revoked",
            )),
        })
    }

    /// Replaces the table with the store's active keys.
    pub async fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        loop {
            let seen = self.changes.load(Ordering::SeqCst);
            let keys = store.active_keys().await?;
            if let Some(count) = self.replace_unless_changed(seen, &keys) {
                return Ok(count);
            }
            // A key was created or revoked here while the store was read;
            // the store has it now, so read again rather than lose it.
        }
    }

    /// Replaces the table with `keys` if nothing changed since `seen`;
    /// returns how many keys it holds, or `None` when it changed.
    fn replace_unless_changed(&self, seen: u64, keys: &[ApiKey]) -> Option<usize> {
        let table: HashMap<String, Caller> = keys
            .iter()
            .map(|k| (k.hash.clone(), caller_of(k)))
            .collect();
        let mut current = self.write();
        if self.changes.load(Ordering::SeqCst) != seen {
            return None;
        }
        *current = table;
        Some(current.len())
    }

    /// Adds one key (after the admin API created it).
    pub fn insert(&self, key: &ApiKey) {
        let mut table = self.write();
        table.insert(key.hash.clone(), caller_of(key));
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes a key by id (after the admin API revoked it).
    pub fn remove(&self, id: &KeyId) {
        let mut table = self.write();
        table.retain(|_, caller| &caller.key_id != id);
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Finds the caller for a request's `Authorization: Bearer` or
    /// `x-api-key` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(internal) = self.internal_caller(headers) {
            return internal;
        }
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

    fn key(id: &str, secret: &str) -> ApiKey {
        ApiKey {
            id: KeyId::new(id).unwrap(),
            tenant_id: TenantId::new("t").unwrap(),
            user_id: None,
            name: id.to_owned(),
            hash: keel_store::hash_key(secret),
            prefix: String::new(),
            created_ms: 0,
            revoked_ms: None,
        }
    }

    #[test]
    fn internal_requests_need_this_process_secret() {
        let table = KeyTable::default();
        let tenant = TenantId::new("acme").unwrap();
        let caller = table
            .authenticate(&table.internal_headers(&tenant))
            .unwrap();
        assert_eq!(
            (caller.tenant_id, caller.key_id.as_str()),
            (tenant.clone(), INTERNAL_KEY)
        );

        // Another process's secret (or a guess) is refused.
        let other = KeyTable::default().internal_headers(&tenant);
        assert!(table.authenticate(&other).is_err());
        let mut empty = HeaderMap::new();
        empty.insert(INTERNAL_HEADER, "".parse().unwrap());
        empty.insert(INTERNAL_TENANT_HEADER, "acme".parse().unwrap());
        assert!(table.authenticate(&empty).is_err());
    }

    #[test]
    fn a_reload_read_before_a_local_change_does_not_overwrite_it() {
        let table = KeyTable::default();
        let old = key("k1", "sk-old");

        // A refresh reads the store (holding only the old key)...
        let seen = table.changes.load(Ordering::SeqCst);
        // ...the admin API creates a key here meanwhile...
        table.insert(&key("k2", "sk-new"));
        // ...and the refresh's stale read must not drop the new key.
        assert_eq!(
            table.replace_unless_changed(seen, std::slice::from_ref(&old)),
            None
        );
        assert!(table.authenticate(&headers("Bearer sk-new")).is_ok());

        // With nothing changed in between, the store's view wins.
        let seen = table.changes.load(Ordering::SeqCst);
        assert_eq!(table.replace_unless_changed(seen, &[old]), Some(1));
        assert!(table.authenticate(&headers("Bearer sk-old")).is_ok());
        assert!(table.authenticate(&headers("Bearer sk-new")).is_err());
    }
}
