//! The usage ledger: inserts, idempotency, filters and totals.

use anyhow::Result;
use keel_store::{UsageQuery, UsageRecord, UsageTotals};

use crate::support::{TestDb, usage_row};

fn ids(rows: &[UsageRecord]) -> Vec<&str> {
    rows.iter().map(|r| r.request_id.as_str()).collect()
}

/// A row with every optional field set, to check a full round trip.
fn full_row(request_id: &str, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        user_id: Some("alice".into()),
        key_id: Some("key_1".into()),
        session: Some("s-1".into()),
        workflow: Some("triage".into()),
        deployment: Some("openai-east".into()),
        provider: Some("openai".into()),
        ttft_us: Some(120),
        status: 502,
        error_code: Some("upstream_unavailable".into()),
        stream: true,
        attempts: 3,
        cache: Some("miss".into()),
        ..usage_row(request_id, "acme", ts_ms)
    }
}

async fn stores_rows_and_ignores_repeated_request_ids(db: TestDb) -> Result<()> {
    let rows = vec![full_row("r1", 1_000), usage_row("r2", "acme", 2_000)];
    db.store.insert_usage(&rows).await?;

    // A retried batch, even with different numbers, must not count twice.
    let retried: Vec<UsageRecord> = rows
        .iter()
        .map(|r| UsageRecord {
            prompt_tokens: 999,
            ..r.clone()
        })
        .collect();
    db.store.insert_usage(&retried).await?;
    db.store.insert_usage(&[]).await?;

    let stored = db.store.usage(&UsageQuery::default()).await?;
    assert_eq!(stored, vec![rows[1].clone(), rows[0].clone()]);
    let totals = db.store.usage_totals(&UsageQuery::default()).await?;
    assert_eq!(totals.requests, 2);
    assert_eq!(totals.prompt_tokens, 20);
    Ok(())
}

async fn filters_by_every_attribute(db: TestDb) -> Result<()> {
    let rows = vec![
        UsageRecord {
            user_id: Some("alice".into()),
            ..usage_row("a", "acme", 100)
        },
        UsageRecord {
            key_id: Some("key_9".into()),
            ..usage_row("b", "acme", 200)
        },
        UsageRecord {
            session: Some("s1".into()),
            ..usage_row("c", "acme", 300)
        },
        UsageRecord {
            workflow: Some("wf".into()),
            ..usage_row("d", "beta", 400)
        },
        UsageRecord {
            model: "claude".into(),
            ..usage_row("e", "beta", 500)
        },
    ];
    db.store.insert_usage(&rows).await?;

    let cases = [
        (
            UsageQuery {
                tenant_id: Some("acme".into()),
                ..Default::default()
            },
            vec!["c", "b", "a"],
        ),
        (
            UsageQuery {
                user_id: Some("alice".into()),
                ..Default::default()
            },
            vec!["a"],
        ),
        (
            UsageQuery {
                key_id: Some("key_9".into()),
                ..Default::default()
            },
            vec!["b"],
        ),
        (
            UsageQuery {
                session: Some("s1".into()),
                ..Default::default()
            },
            vec!["c"],
        ),
        (
            UsageQuery {
                workflow: Some("wf".into()),
                ..Default::default()
            },
            vec!["d"],
        ),
        (
            UsageQuery {
                model: Some("claude".into()),
                ..Default::default()
            },
            vec!["e"],
        ),
        // since is inclusive, until exclusive.
        (
            UsageQuery {
                since_ms: Some(200),
                until_ms: Some(400),
                ..Default::default()
            },
            vec!["c", "b"],
        ),
        (
            UsageQuery {
                tenant_id: Some("beta".into()),
                since_ms: Some(450),
                ..Default::default()
            },
            vec!["e"],
        ),
        (
            UsageQuery {
                limit: Some(2),
                ..Default::default()
            },
            vec!["e", "d"],
        ),
        (
            UsageQuery {
                tenant_id: Some("nobody".into()),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(ids(&db.store.usage(&query).await?), expected, "{query:?}");
    }
    Ok(())
}

async fn limits_default_to_100_and_are_capped(db: TestDb) -> Result<()> {
    let rows: Vec<UsageRecord> = (0..150)
        .map(|i| usage_row(&format!("r{i:03}"), "acme", i))
        .collect();
    db.store.insert_usage(&rows).await?;

    let page = db.store.usage(&UsageQuery::default()).await?;
    assert_eq!(page.len(), 100);
    assert_eq!(page[0].request_id, "r149");
    let huge = UsageQuery {
        limit: Some(u32::MAX),
        ..Default::default()
    };
    assert_eq!(db.store.usage(&huge).await?.len(), 150);
    Ok(())
}

async fn totals_sum_the_matching_rows(db: TestDb) -> Result<()> {
    assert_eq!(
        db.store.usage_totals(&UsageQuery::default()).await?,
        UsageTotals::default()
    );

    let rows = vec![
        usage_row("a", "acme", 1),
        UsageRecord {
            status: 429,
            prompt_tokens: 0,
            completion_tokens: 0,
            ..usage_row("b", "acme", 2)
        },
        UsageRecord {
            status: 500,
            cost_micros: 1_000_000,
            ..usage_row("c", "acme", 3)
        },
        usage_row("d", "beta", 4),
        // A stream that broke after its 200 went out.
        UsageRecord {
            error_code: Some("upstream_bad_response".into()),
            ..usage_row("e", "cut", 5)
        },
    ];
    db.store.insert_usage(&rows).await?;
    let cut = UsageQuery {
        tenant_id: Some("cut".into()),
        ..Default::default()
    };
    assert_eq!(db.store.usage_totals(&cut).await?.errors, 1);

    let acme = UsageQuery {
        tenant_id: Some("acme".into()),
        limit: Some(1),
        ..Default::default()
    };
    let totals = db.store.usage_totals(&acme).await?;
    assert_eq!(
        totals,
        UsageTotals {
            requests: 3,
            errors: 2,
            prompt_tokens: 20,
            completion_tokens: 10,
            cost_micros: 1_000_014,
            ..UsageTotals::default()
        }
    );
    Ok(())
}

async fn writes_batches_beyond_the_bound_parameter_limit(db: TestDb) -> Result<()> {
    // 2,000 rows × 21 columns = 42,000 parameters, above SQLite's 32,766.
    let rows: Vec<UsageRecord> = (0..2_000)
        .map(|i| full_row(&format!("r{i:05}"), i))
        .collect();
    db.store.insert_usage(&rows).await?;
    db.store.insert_usage(&rows).await?;

    let totals = db.store.usage_totals(&UsageQuery::default()).await?;
    assert_eq!(totals.requests, 2_000);
    let all = db
        .store
        .usage(&UsageQuery {
            limit: Some(5_000),
            ..Default::default()
        })
        .await?;
    assert_eq!(all.len(), 2_000);
    assert_eq!(all.last(), rows.first());
    Ok(())
}

async fn stores_nul_characters_as_replacement_characters(db: TestDb) -> Result<()> {
    let row = UsageRecord {
        session: Some("s\0".into()),
        ..usage_row("r\0x", "acme", 1)
    };
    db.store.insert_usage(&[row]).await?;

    let stored = db.store.usage(&UsageQuery::default()).await?;
    assert_eq!(ids(&stored), vec!["r\u{FFFD}x"]);
    assert_eq!(stored[0].session.as_deref(), Some("s\u{FFFD}"));
    Ok(())
}

async fn report_pairs_rows_with_totals_over_every_match(db: TestDb) -> Result<()> {
    let rows: Vec<UsageRecord> = (0..5)
        .map(|i| usage_row(&format!("r{i}"), "acme", i))
        .collect();
    db.store.insert_usage(&rows).await?;
    db.store
        .insert_usage(&[usage_row("other", "globex", 9)])
        .await?;

    let query = UsageQuery {
        tenant_id: Some("acme".into()),
        limit: Some(2),
        ..UsageQuery::default()
    };
    let (page, totals) = db.store.usage_report(&query).await?;
    assert_eq!(ids(&page), vec!["r4", "r3"]);
    assert_eq!(totals, db.store.usage_totals(&query).await?);
    assert_eq!(totals.requests, 5, "totals ignore the page limit");
    Ok(())
}

every_backend!(
    report_pairs_rows_with_totals_over_every_match,
    stores_nul_characters_as_replacement_characters,
    stores_rows_and_ignores_repeated_request_ids,
    filters_by_every_attribute,
    limits_default_to_100_and_are_capped,
    totals_sum_the_matching_rows,
    writes_batches_beyond_the_bound_parameter_limit,
);
