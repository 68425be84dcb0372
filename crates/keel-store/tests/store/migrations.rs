//! The migration runner: idempotent, and safe when processes race.

use anyhow::Result;
use keel_core::TenantId;

use crate::support::TestDb;

async fn migrating_again_changes_nothing(db: TestDb) -> Result<()> {
    assert_eq!(
        db.store.schema_version().await?,
        Some(keel_store::SCHEMA_VERSION)
    );
    let id = TenantId::new("acme")?;
    db.store.create_tenant(&id, "Acme").await?;

    db.store.migrate().await?;
    db.store.migrate().await?;

    assert_eq!(
        db.store.schema_version().await?,
        Some(keel_store::SCHEMA_VERSION)
    );
    assert!(db.store.tenant(&id).await?.is_some());
    Ok(())
}

async fn schema_version_is_none_before_the_first_migration(db: TestDb) -> Result<()> {
    assert_eq!(db.store.schema_version().await?, None);
    db.store.migrate().await?;
    assert_eq!(
        db.store.schema_version().await?,
        Some(keel_store::SCHEMA_VERSION)
    );
    Ok(())
}

async fn concurrent_migrations_apply_once(db: TestDb) -> Result<()> {
    // Separate stores stand in for separate processes starting together.
    let others = [
        keel_store::Store::connect(&db.url).await?,
        keel_store::Store::connect(&db.url).await?,
        keel_store::Store::connect(&db.url).await?,
    ];
    let (a, b, c, d) = tokio::join!(
        db.store.migrate(),
        others[0].migrate(),
        others[1].migrate(),
        others[2].migrate(),
    );
    a?;
    b?;
    c?;
    d?;

    assert_eq!(
        db.store.schema_version().await?,
        Some(keel_store::SCHEMA_VERSION)
    );
    let id = TenantId::new("acme")?;
    others[0].create_tenant(&id, "Acme").await?;
    assert!(db.store.tenant(&id).await?.is_some());
    for store in &others {
        store.close().await;
    }
    Ok(())
}

async fn two_migrate_calls_on_one_store_may_overlap(db: TestDb) -> Result<()> {
    let (a, b) = tokio::join!(db.store.migrate(), db.store.migrate());
    a?;
    b?;
    assert_eq!(
        db.store.schema_version().await?,
        Some(keel_store::SCHEMA_VERSION)
    );
    Ok(())
}

every_backend!(migrating_again_changes_nothing);

backend_test!(
    run_unmigrated,
    schema_version_is_none_before_the_first_migration,
    sqlite_memory: SqliteMemory,
    sqlite_file: SqliteFile,
    postgres: Postgres
);
backend_test!(
    run_unmigrated,
    two_migrate_calls_on_one_store_may_overlap,
    sqlite_memory: SqliteMemory,
    sqlite_file: SqliteFile,
    postgres: Postgres
);
backend_test!(
    run_unmigrated,
    concurrent_migrations_apply_once,
    sqlite_file: SqliteFile,
    postgres: Postgres
);
