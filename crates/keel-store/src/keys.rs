//! API keys: generating secrets, storing their hashes, revoking them.
//!
//! A secret is shown once, when it is created, and only its SHA-256 is
//! stored. The server loads [`Store::active_keys`] into memory and checks a
//! request's key by hashing it, so authentication never waits on the store.

use std::fmt;

use keel_core::{KeyId, TenantId, UserId};
use rand::Rng;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{RowExt, Store, now_ms, on_pool};
use crate::error::{StoreError, is_foreign_key_violation, is_unique_violation};
use crate::tenants::invalid_id;

/// What every generated secret starts with, so leaked keys are easy to spot.
const SECRET_PREFIX: &str = "sk-keel-";

/// Random characters after the prefix: 43 base62 characters carry
/// 43 × log2(62) ≈ 256.03 bits.
const SECRET_RANDOM_CHARS: usize = 43;

/// How many leading characters of a secret are kept for display.
const DISPLAY_PREFIX_CHARS: usize = 12;

/// What an operator asks for when creating or importing a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    /// The tenant the key acts for.
    pub tenant_id: TenantId,
    /// The user the key acts for, or `None` for a tenant-wide key.
    pub user_id: Option<UserId>,
    /// A label for people (`ci`, `alice laptop`).
    pub name: String,
}

/// A stored API key. Holds the secret's hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The public id, safe to show and log.
    pub id: KeyId,
    /// The tenant the key acts for.
    pub tenant_id: TenantId,
    /// The user the key acts for, if any.
    pub user_id: Option<UserId>,
    /// A label for people.
    pub name: String,
    /// [`hash_key`] of the secret. Never serialized, so it cannot leak
    /// through an API response.
    #[serde(skip_serializing, default)]
    pub hash: String,
    /// The first characters of the secret, to tell keys apart in listings.
    pub prefix: String,
    /// When the key was created, unix milliseconds.
    pub created_ms: i64,
    /// When the key was revoked, unix milliseconds; `None` while active.
    pub revoked_ms: Option<i64>,
}

/// A freshly created key and its secret, which is never stored and so can
/// be shown only this once.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The stored key.
    pub key: ApiKey,
    /// The secret to hand to the client.
    pub secret: String,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The stored hash of a secret: lowercase hex SHA-256.
///
/// A fast hash is right here, unlike for passwords. Generated secrets are
/// 256 random bits, so guessing one from its hash is infeasible however fast
/// the hash is; slow hashes such as argon2 only help low-entropy secrets
/// chosen by people. And every request is authenticated by hashing its key,
/// where a deliberately slow hash would add milliseconds to each call.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret: `sk-keel-` and 43 base62 characters from the
/// operating system's random source (at least 256 bits).
pub fn generate_secret() -> String {
    let random: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(SECRET_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("{SECRET_PREFIX}{random}")
}

/// The part of a secret kept for display: its first 12 characters, but never
/// more than half of it, so short imported secrets are not given away.
fn display_prefix(secret: &str) -> String {
    let keep = DISPLAY_PREFIX_CHARS.min(secret.chars().count() / 2);
    secret.chars().take(keep).collect()
}

macro_rules! key_columns {
    () => {
        "id, tenant_id, user_id, name, hash, prefix, created_ms, revoked_ms"
    };
}

const INSERT_KEY: &str = concat!(
    "INSERT INTO api_keys (",
    key_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, NULL) ON CONFLICT (hash) DO NOTHING RETURNING ",
    key_columns!()
);
const SELECT_KEY_BY_HASH: &str =
    concat!("SELECT ", key_columns!(), " FROM api_keys WHERE hash = $1");
const SELECT_KEYS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys ORDER BY created_ms DESC, id DESC"
);
const SELECT_TENANT_KEYS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys WHERE tenant_id = $1 ORDER BY created_ms DESC, id DESC"
);
const SELECT_ACTIVE_KEYS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys WHERE revoked_ms IS NULL ORDER BY created_ms DESC, id DESC"
);
const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL";

impl Store {
    /// Creates a key with a fresh secret for an existing tenant (and user).
    ///
    /// Fails with [`StoreError::NotFound`] when the tenant or user is missing.
    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        self.check_key_owner(&new).await?;
        let secret = generate_secret();
        let key = self.insert_key(&new, &secret).await?;

        // A fresh 256-bit secret cannot already be stored; if it somehow is,
        // refuse rather than hand out a secret that maps to another key.
        match key {
            Some(key) => Ok(CreatedKey { key, secret }),
            None => Err(StoreError::Conflict {
                what: "key secret",
                id: display_prefix(&secret),
            }),
        }
    }

    /// Stores a key whose secret was chosen elsewhere, such as a dev key in
    /// config. Idempotent: if the secret is already stored for the same
    /// tenant, that key is returned as it is, revoked or not, so a revoked
    /// key stays revoked across restarts.
    ///
    /// Fails with [`StoreError::KeyTenantMismatch`] when the secret is stored
    /// for a different tenant.
    pub async fn import_key(&self, new: NewKey, secret: &str) -> Result<ApiKey, StoreError> {
        if secret.is_empty() {
            return Err(StoreError::EmptySecret);
        }
        self.check_key_owner(&new).await?;
        if let Some(key) = self.insert_key(&new, secret).await? {
            return Ok(key);
        }

        let hash = hash_key(secret);
        let existing = on_pool!(self, |pool| {
            let query = sqlx::query(SELECT_KEY_BY_HASH).bind(&hash);
            query
                .fetch_one(pool)
                .await
                .and_then(|row| key_from_row(&row))
        })
        .map_err(StoreError::db("read an imported key"))?;
        if existing.tenant_id != new.tenant_id {
            return Err(StoreError::KeyTenantMismatch {
                key_id: existing.id.to_string(),
                tenant: existing.tenant_id.to_string(),
            });
        }
        Ok(existing)
    }

    /// Keys of one tenant, or of all tenants, revoked ones included, newest
    /// first.
    pub async fn keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>, StoreError> {
        on_pool!(self, |pool| {
            let rows = match tenant {
                Some(tenant) => {
                    sqlx::query(SELECT_TENANT_KEYS)
                        .bind(tenant.as_str())
                        .fetch_all(pool)
                        .await
                }
                None => sqlx::query(SELECT_KEYS).fetch_all(pool).await,
            };
            rows.and_then(|rows| rows.iter().map(key_from_row).collect())
        })
        .map_err(StoreError::db("list keys"))
    }

    /// Every key that is not revoked, newest first.
    pub async fn active_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(SELECT_ACTIVE_KEYS).fetch_all(pool).await;
            rows.and_then(|rows| rows.iter().map(key_from_row).collect())
        })
        .map_err(StoreError::db("list active keys"))
    }

    /// Revokes a key. Returns `false` if the key is unknown or was already
    /// revoked.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<bool, StoreError> {
        let done = on_pool!(self, |pool| {
            let query = sqlx::query(REVOKE_KEY).bind(now_ms()).bind(id.as_str());
            query
                .execute(pool)
                .await
                .map(|result| result.rows_affected())
        })
        .map_err(StoreError::db("revoke a key"))?;
        Ok(done > 0)
    }

    /// Refuses a key for a tenant or user that does not exist, with an error
    /// that names which one.
    async fn check_key_owner(&self, new: &NewKey) -> Result<(), StoreError> {
        if self.tenant(&new.tenant_id).await?.is_none() {
            return Err(StoreError::NotFound {
                what: "tenant",
                id: new.tenant_id.to_string(),
            });
        }
        if let Some(user) = &new.user_id
            && !self.user_exists(&new.tenant_id, user).await?
        {
            return Err(StoreError::NotFound {
                what: "user",
                id: user.to_string(),
            });
        }
        Ok(())
    }

    /// Inserts a key unless its hash is already stored; `None` means it was.
    async fn insert_key(&self, new: &NewKey, secret: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = KeyId::generate();
        let hash = hash_key(secret);
        let prefix = display_prefix(secret);
        on_pool!(self, |pool| {
            let query = sqlx::query(INSERT_KEY)
                .bind(id.as_str())
                .bind(new.tenant_id.as_str())
                .bind(new.user_id.as_ref().map(UserId::as_str))
                .bind(&new.name)
                .bind(&hash)
                .bind(&prefix)
                .bind(now_ms());
            query
                .fetch_optional(pool)
                .await
                .and_then(|row| row.as_ref().map(key_from_row).transpose())
        })
        .map_err(|e| {
            // The owner was checked just before; these only happen on a race
            // with a concurrent writer.
            if is_foreign_key_violation(&e) {
                StoreError::NotFound {
                    what: "tenant",
                    id: new.tenant_id.to_string(),
                }
            } else if is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "key",
                    id: id.to_string(),
                }
            } else {
                StoreError::db("create a key")(e)
            }
        })
    }
}

fn key_from_row(row: &impl RowExt) -> Result<ApiKey, sqlx::Error> {
    let user_id = row
        .opt_text("user_id")?
        .map(UserId::new)
        .transpose()
        .map_err(invalid_id)?;
    Ok(ApiKey {
        id: KeyId::new(row.text("id")?).map_err(invalid_id)?,
        tenant_id: TenantId::new(row.text("tenant_id")?).map_err(invalid_id)?,
        user_id,
        name: row.text("name")?,
        hash: row.text("hash")?,
        prefix: row.text("prefix")?,
        created_ms: row.int("created_ms")?,
        revoked_ms: row.opt_int("revoked_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_long_random_and_prefixed() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_PREFIX.len() + SECRET_RANDOM_CHARS);
        assert!(a.starts_with("sk-keel-"));
        assert!(
            a[SECRET_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
    }

    #[test]
    fn hash_is_lowercase_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn display_prefix_never_reveals_most_of_a_short_secret() {
        assert_eq!(display_prefix("sk-keel-abcdefghijklmnop"), "sk-keel-abcd");
        assert_eq!(display_prefix("sk-keel-demo"), "sk-kee");
        assert_eq!(display_prefix(""), "");
    }

    #[test]
    fn created_key_debug_hides_the_secret() {
        let key = ApiKey {
            id: KeyId::generate(),
            tenant_id: TenantId::new("t").unwrap(),
            user_id: None,
            name: "n".into(),
            hash: hash_key("sk-keel-secret"),
            prefix: "sk-keel-".into(),
            created_ms: 0,
            revoked_ms: None,
        };
        let created = CreatedKey {
            key,
            secret: "sk-keel-secret".into(),
        };
        assert!(!format!("{created:?}").contains("sk-keel-secret"));
    }

    #[test]
    fn api_key_json_omits_the_hash() {
        let key = ApiKey {
            id: KeyId::generate(),
            tenant_id: TenantId::new("t").unwrap(),
            user_id: None,
            name: "n".into(),
            hash: hash_key("x"),
            prefix: "p".into(),
            created_ms: 1,
            revoked_ms: None,
        };
        let json = serde_json::to_string(&key).unwrap();
        assert!(!json.contains("hash") && !json.contains(&key.hash));
    }
}
