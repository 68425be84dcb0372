//! API keys: creation, import, listing and revocation.

use anyhow::Result;
use keel_core::{KeyId, TenantId, UserId};
use keel_store::{NewKey, Store, StoreError, hash_key};

use crate::support::{TestDb, refused};

async fn tenant(store: &Store, id: &str) -> Result<TenantId> {
    let id = TenantId::new(id)?;
    store.create_tenant(&id, id.as_str()).await?;
    Ok(id)
}

fn new_key(tenant: &TenantId, name: &str) -> NewKey {
    NewKey {
        tenant_id: tenant.clone(),
        user_id: None,
        name: name.to_owned(),
    }
}

async fn created_keys_store_the_hash_and_never_the_secret(db: TestDb) -> Result<()> {
    let acme = tenant(&db.store, "acme").await?;
    let created = db.store.create_key(new_key(&acme, "ci")).await?;

    assert!(created.secret.starts_with("sk-keel-") && created.secret.len() == 51);
    assert_eq!(created.key.hash, hash_key(&created.secret));
    assert_eq!(created.key.prefix, created.secret[..12]);
    assert!(created.key.revoked_ms.is_none());

    let stored = db.store.keys(Some(&acme)).await?;
    assert_eq!(stored, vec![created.key.clone()]);
    let json = serde_json::to_string(&stored)?;
    assert!(!json.contains(&created.secret) && !json.contains(&created.key.hash));
    Ok(())
}

async fn create_key_needs_an_existing_tenant_and_user(db: TestDb) -> Result<()> {
    let ghost = TenantId::new("ghost")?;
    let err = refused(db.store.create_key(new_key(&ghost, "x")).await)?;
    assert!(
        matches!(&err, StoreError::NotFound { what: "tenant", id } if id == "ghost"),
        "{err}"
    );

    let acme = tenant(&db.store, "acme").await?;
    let alice = UserId::new("alice")?;
    let for_alice = NewKey {
        user_id: Some(alice.clone()),
        ..new_key(&acme, "laptop")
    };
    let err = refused(db.store.create_key(for_alice.clone()).await)?;
    assert!(
        matches!(&err, StoreError::NotFound { what: "user", id } if id == "alice"),
        "{err}"
    );

    db.store.create_user(&acme, &alice, "Alice").await?;
    let created = db.store.create_key(for_alice).await?;
    assert_eq!(created.key.user_id, Some(alice));
    Ok(())
}

async fn import_key_is_idempotent_by_secret(db: TestDb) -> Result<()> {
    let demo = tenant(&db.store, "demo").await?;
    let first = db
        .store
        .import_key(new_key(&demo, "dev"), "sk-keel-demo")
        .await?;
    let again = db
        .store
        .import_key(new_key(&demo, "dev renamed"), "sk-keel-demo")
        .await?;

    assert_eq!(first, again);
    assert_eq!(first.hash, hash_key("sk-keel-demo"));
    assert_eq!(first.prefix, "sk-kee");
    assert_eq!(db.store.keys(None).await?.len(), 1);

    let other = tenant(&db.store, "other").await?;
    let err = refused(
        db.store
            .import_key(new_key(&other, "dev"), "sk-keel-demo")
            .await,
    )?;
    assert!(matches!(&err, StoreError::KeyTenantMismatch { tenant, .. } if tenant == "demo"));
    let err = refused(db.store.import_key(new_key(&demo, "empty"), "").await)?;
    assert!(matches!(err, StoreError::EmptySecret));
    Ok(())
}

async fn revoked_keys_leave_the_active_set_for_good(db: TestDb) -> Result<()> {
    let acme = tenant(&db.store, "acme").await?;
    let kept = db.store.create_key(new_key(&acme, "kept")).await?.key;
    let imported = db
        .store
        .import_key(new_key(&acme, "dev"), "sk-keel-local-dev")
        .await?;

    assert!(db.store.revoke_key(&imported.id).await?);
    assert!(!db.store.revoke_key(&imported.id).await?);
    assert!(!db.store.revoke_key(&KeyId::new("key_unknown")?).await?);

    assert_eq!(db.store.active_keys().await?, vec![kept]);
    let all = db.store.keys(None).await?;
    let revoked = all.iter().find(|k| k.id == imported.id);
    assert!(revoked.is_some_and(|k| k.revoked_ms.is_some()));

    // Re-importing the secret (as config does on every start) keeps it revoked.
    let again = db
        .store
        .import_key(new_key(&acme, "dev"), "sk-keel-local-dev")
        .await?;
    assert_eq!(again.id, imported.id);
    assert!(again.revoked_ms.is_some());
    Ok(())
}

async fn lists_keys_newest_first_per_tenant_or_all(db: TestDb) -> Result<()> {
    let acme = tenant(&db.store, "acme").await?;
    let beta = tenant(&db.store, "beta").await?;
    for name in ["a", "b", "c"] {
        db.store.create_key(new_key(&acme, name)).await?;
    }
    let beta_key = db.store.create_key(new_key(&beta, "b1")).await?.key;

    let all = db.store.keys(None).await?;
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].created_ms >= w[1].created_ms));
    assert_eq!(db.store.keys(Some(&beta)).await?, vec![beta_key]);
    assert!(
        db.store
            .keys(Some(&acme))
            .await?
            .iter()
            .all(|k| k.tenant_id == acme)
    );
    Ok(())
}

every_backend!(
    created_keys_store_the_hash_and_never_the_secret,
    create_key_needs_an_existing_tenant_and_user,
    import_key_is_idempotent_by_secret,
    revoked_keys_leave_the_active_set_for_good,
    lists_keys_newest_first_per_tenant_or_all,
);
