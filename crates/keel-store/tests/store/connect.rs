//! Opening stores: URL schemes, SQLite files, readiness.

use anyhow::Result;
use keel_store::{Backend, Store, StoreError};

use crate::support::{Kind, TestDb};

#[tokio::test]
async fn refuses_unknown_schemes_without_echoing_the_url() {
    let err = Store::connect("mysql://root:hunter2@db/keel")
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::UnsupportedUrl { scheme } if scheme == "mysql"));
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let err = Store::connect("data/keel.db").await.unwrap_err();
    assert!(matches!(&err, StoreError::UnsupportedUrl { scheme } if scheme.is_empty()));
}

#[tokio::test]
async fn reports_an_unreachable_postgres_as_a_connect_error() {
    let err = Store::connect("postgres://keel:hunter2@127.0.0.1:1/keel")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                backend: "postgres",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn sqlite_creates_the_file_and_its_directories() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a/b/keel.db");
    let store = Store::connect(&format!("sqlite:{}", file.display())).await?;
    store.migrate().await?;
    assert!(file.exists());
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn accepts_the_postgresql_scheme() -> Result<()> {
    let url = crate::support::admin_url().replacen("postgres://", "postgresql://", 1);
    let store = Store::connect(&url).await?;
    assert_eq!(store.backend(), Backend::Postgres);
    store.ping().await?;
    store.close().await;
    Ok(())
}

async fn reports_its_backend_and_answers_ping(db: TestDb) -> Result<()> {
    let expected = match db.kind {
        Kind::SqliteMemory | Kind::SqliteFile => Backend::Sqlite,
        Kind::Postgres => Backend::Postgres,
    };
    assert_eq!(db.store.backend(), expected);
    db.store.ping().await?;
    Ok(())
}

async fn memory_and_files_hold_one_database_across_connections(db: TestDb) -> Result<()> {
    let id = keel_core::TenantId::new("acme")?;
    db.store.create_tenant(&id, "Acme").await?;

    // Many concurrent reads may land on different pooled connections; all
    // must see the same database.
    let reads = (0..16).map(|_| {
        let store = db.store.clone();
        let id = id.clone();
        tokio::spawn(async move { store.tenant(&id).await })
    });
    for read in reads {
        assert!(read.await??.is_some());
    }
    Ok(())
}

every_backend!(
    reports_its_backend_and_answers_ping,
    memory_and_files_hold_one_database_across_connections,
);
