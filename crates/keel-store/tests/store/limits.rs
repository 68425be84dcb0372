//! Limit rules and blocks stored for the admin API.

use anyhow::Result;
use keel_store::StoreError;

use crate::support::{TestDb, refused};

async fn stores_replaces_and_deletes_rules(db: TestDb) -> Result<()> {
    let store = &db.store;
    assert!(store.limit_rules().await?.is_empty());
    let first = store.put_limit_rule("rpm", r#"{"requests":1}"#).await?;
    store
        .put_limit_rule("budget", r#"{"budget_usd":1}"#)
        .await?;
    let replaced = store.put_limit_rule("rpm", r#"{"requests":2}"#).await?;
    assert_eq!(replaced.created_ms, first.created_ms);
    assert_eq!(replaced.spec, r#"{"requests":2}"#);
    let ids: Vec<String> = store
        .limit_rules()
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"rpm".to_owned()) && ids.contains(&"budget".to_owned()));

    store.delete_limit_rule("rpm").await?;
    let err = refused(store.delete_limit_rule("rpm").await)?;
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "limit rule",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.limit_rules().await?.len(), 1);
    Ok(())
}

async fn stores_and_lifts_blocks(db: TestDb) -> Result<()> {
    let store = &db.store;
    store.put_block("tenant=acme", "runaway agent").await?;
    let updated = store.put_block("tenant=acme", "still runaway").await?;
    assert_eq!(updated.reason, "still runaway");
    store.put_block("key=k_1", "leaked").await?;
    assert_eq!(store.blocks().await?.len(), 2);
    store.delete_block("tenant=acme").await?;
    let err = refused(store.delete_block("tenant=acme").await)?;
    assert!(
        matches!(err, StoreError::NotFound { what: "block", .. }),
        "{err}"
    );
    let left: Vec<String> = store.blocks().await?.into_iter().map(|b| b.scope).collect();
    assert_eq!(left, ["key=k_1"]);
    Ok(())
}

every_backend!(stores_replaces_and_deletes_rules, stores_and_lifts_blocks);
