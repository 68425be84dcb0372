//! Tenants and users.

use anyhow::Result;
use keel_core::{TenantId, UserId};
use keel_store::StoreError;

use crate::support::{TestDb, refused};

async fn creates_reads_and_lists_tenants(db: TestDb) -> Result<()> {
    let store = &db.store;
    let beta = store.create_tenant(&TenantId::new("beta")?, "Beta").await?;
    let acme = store
        .create_tenant(&TenantId::new("acme")?, "Acme Inc")
        .await?;

    assert_eq!(acme.name, "Acme Inc");
    assert!(acme.created_ms > 0);
    assert_eq!(store.tenant(&acme.id).await?, Some(acme.clone()));
    assert_eq!(store.tenant(&TenantId::new("nobody")?).await?, None);
    assert_eq!(store.tenants().await?, vec![acme, beta]);
    Ok(())
}

async fn refuses_a_duplicate_tenant(db: TestDb) -> Result<()> {
    let id = TenantId::new("acme")?;
    db.store.create_tenant(&id, "Acme").await?;

    let err = refused(db.store.create_tenant(&id, "Other").await)?;
    assert!(
        matches!(&err, StoreError::Conflict { what: "tenant", id } if id == "acme"),
        "{err}"
    );
    assert_eq!(
        db.store.tenant(&id).await?.map(|t| t.name),
        Some("Acme".to_owned())
    );
    Ok(())
}

async fn ensure_tenant_is_idempotent_and_follows_the_configured_name(db: TestDb) -> Result<()> {
    let id = TenantId::new("demo")?;
    let first = db.store.ensure_tenant(&id, "Demo").await?;
    let again = db.store.ensure_tenant(&id, "Demo").await?;
    assert_eq!(first, again);

    let renamed = db.store.ensure_tenant(&id, "Demo Inc").await?;
    assert_eq!(renamed.name, "Demo Inc");
    assert_eq!(renamed.created_ms, first.created_ms);
    assert_eq!(db.store.tenants().await?, vec![renamed]);
    Ok(())
}

async fn creates_users_only_in_existing_tenants(db: TestDb) -> Result<()> {
    let store = &db.store;
    let acme = TenantId::new("acme")?;
    let beta = TenantId::new("beta")?;
    let alice = UserId::new("alice")?;

    let err = refused(store.create_user(&acme, &alice, "Alice").await)?;
    assert!(
        matches!(&err, StoreError::NotFound { what: "tenant", id } if id == "acme"),
        "{err}"
    );

    store.create_tenant(&acme, "Acme").await?;
    store.create_tenant(&beta, "Beta").await?;
    let user = store.create_user(&acme, &alice, "Alice").await?;
    assert_eq!(
        (user.tenant_id.as_str(), user.id.as_str()),
        ("acme", "alice")
    );

    let err = refused(store.create_user(&acme, &alice, "Alice again").await)?;
    assert!(
        matches!(&err, StoreError::Conflict { what: "user", id } if id == "alice"),
        "{err}"
    );

    // User ids are unique per tenant, not globally.
    store.create_user(&beta, &alice, "Other Alice").await?;
    let bob = store
        .create_user(&acme, &UserId::new("bob")?, "Bob")
        .await?;
    assert_eq!(store.users(&acme).await?, vec![user, bob]);
    assert!(store.users(&TenantId::new("nobody")?).await?.is_empty());
    Ok(())
}

every_backend!(
    creates_reads_and_lists_tenants,
    refuses_a_duplicate_tenant,
    ensure_tenant_is_idempotent_and_follows_the_configured_name,
    creates_users_only_in_existing_tenants,
);
