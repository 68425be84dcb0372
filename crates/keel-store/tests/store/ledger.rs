//! The batching ledger writer against real databases, and durability.

use std::collections::HashSet;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use anyhow::Result;
use keel_core::TenantId;
use keel_store::{Ledger, LedgerConfig, NewKey, UsageQuery};

use crate::support::{TestDb, usage_row, wait_until};

const PAUSE_LEDGER: &str = "ALTER TABLE usage_ledger RENAME TO usage_ledger_paused";
const RESUME_LEDGER: &str = "ALTER TABLE usage_ledger_paused RENAME TO usage_ledger";

fn small(capacity: usize, max_batch: usize) -> LedgerConfig {
    LedgerConfig {
        capacity,
        max_batch,
        flush_interval: Duration::from_millis(10),
    }
}

async fn writes_every_recorded_row_by_shutdown(db: TestDb) -> Result<()> {
    let (ledger, task) = Ledger::spawn(db.store.clone(), small(64, 50));

    // Several producers, as request handlers would be.
    let producers = (0..4).map(|p| {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let row = usage_row(&format!("p{p}-{i}"), "acme", i);
                ledger
                    .record(row)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        })
    });
    for producer in producers {
        producer.await??;
    }
    task.shutdown().await;

    assert_eq!((ledger.written(), ledger.pending()), (1_200, 0));
    let totals = db.store.usage_totals(&UsageQuery::default()).await?;
    assert_eq!(totals.requests, 1_200);
    Ok(())
}

async fn record_waits_while_the_store_cannot_write(db: TestDb) -> Result<()> {
    db.execute_raw(PAUSE_LEDGER).await?;
    let (ledger, task) = Ledger::spawn(db.store.clone(), small(2, 1));

    // The writer takes the first row and keeps retrying it, so two more rows
    // fill the channel and the fourth must wait for room.
    ledger.record(usage_row("r0", "acme", 0)).await?;
    wait_until("the first write failed", || ledger.write_failures() >= 1).await?;
    ledger.record(usage_row("r1", "acme", 1)).await?;
    ledger.record(usage_row("r2", "acme", 2)).await?;
    let mut fourth = std::pin::pin!(ledger.record(usage_row("r3", "acme", 3)));
    let early = std::future::poll_fn(|cx| Poll::Ready(fourth.as_mut().poll(cx))).await;
    assert!(
        early.is_pending(),
        "record returned instead of waiting for room"
    );
    assert_eq!(ledger.pending(), 3);

    db.execute_raw(RESUME_LEDGER).await?;
    fourth.await?;
    task.shutdown().await;

    let totals = db.store.usage_totals(&UsageQuery::default()).await?;
    assert_eq!(
        (totals.requests, ledger.written(), ledger.pending()),
        (4, 4, 0)
    );
    Ok(())
}

async fn retried_batches_are_written_exactly_once(db: TestDb) -> Result<()> {
    db.execute_raw(PAUSE_LEDGER).await?;
    let (ledger, task) = Ledger::spawn(db.store.clone(), small(100, 500));
    for i in 0..25 {
        ledger
            .record(usage_row(&format!("r{i}"), "acme", i))
            .await?;
    }
    wait_until("two writes failed", || ledger.write_failures() >= 2).await?;
    assert_eq!((ledger.written(), ledger.pending()), (0, 25));

    db.execute_raw(RESUME_LEDGER).await?;
    task.shutdown().await;

    let rows = db.store.usage(&UsageQuery::default()).await?;
    let unique: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!((rows.len(), unique.len()), (25, 25));
    let totals = db.store.usage_totals(&UsageQuery::default()).await?;
    assert_eq!(totals.prompt_tokens, 25 * 10);
    assert_eq!(ledger.written(), 25);
    Ok(())
}

async fn data_survives_closing_and_reopening(db: TestDb) -> Result<()> {
    let acme = TenantId::new("acme")?;
    db.store.create_tenant(&acme, "Acme").await?;
    let new_key = NewKey {
        tenant_id: acme.clone(),
        user_id: None,
        name: "ci".into(),
    };
    let key = db.store.create_key(new_key).await?.key;
    db.store.insert_usage(&[usage_row("r1", "acme", 1)]).await?;
    db.store.close().await;

    let reopened = db.reopen().await?;
    assert_eq!(
        reopened.schema_version().await?,
        Some(keel_store::SCHEMA_VERSION)
    );
    assert!(reopened.tenant(&acme).await?.is_some());
    assert_eq!(reopened.active_keys().await?, vec![key]);
    assert_eq!(
        reopened
            .usage_totals(&UsageQuery::default())
            .await?
            .requests,
        1
    );
    reopened.close().await;
    Ok(())
}

every_backend!(writes_every_recorded_row_by_shutdown);
durable_backends!(
    record_waits_while_the_store_cannot_write,
    retried_batches_are_written_exactly_once,
    data_survives_closing_and_reopening,
);
