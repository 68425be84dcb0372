//! Usage trends: sums per time bucket and group, and week over week, with
//! rows placed on both sides of hour, day and week edges.

use anyhow::Result;
use keel_store::{
    Bucket, Dimension, TrendQuery, TrendRow, UsageQuery, UsageRecord, UsageTotals, WeekOverWeek,
};

use crate::support::{TestDb, usage_row};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

/// Monday 2024-01-01 00:00:00 UTC, the start of a week bucket.
const MONDAY: i64 = 1_704_067_200_000;

/// A row with its own token and cost figures, so every sum is traceable to
/// the rows in it: `n` prompt tokens, `2n` completion tokens, `100n` micros.
fn row(id: &str, tenant: &str, ts_ms: i64, n: i64) -> UsageRecord {
    UsageRecord {
        prompt_tokens: n,
        completion_tokens: 2 * n,
        cost_micros: 100 * n,
        ..usage_row(id, tenant, ts_ms)
    }
}

fn with_user(user: &str, row: UsageRecord) -> UsageRecord {
    UsageRecord {
        user_id: Some(user.into()),
        ..row
    }
}

fn with_workflow(workflow: &str, row: UsageRecord) -> UsageRecord {
    UsageRecord {
        workflow: Some(workflow.into()),
        ..row
    }
}

/// The sums of rows built by [`row`] with these `n`, `errors` of them failed.
fn totals(ns: &[i64], errors: i64) -> UsageTotals {
    let n: i64 = ns.iter().sum();
    UsageTotals {
        requests: ns.len() as i64,
        errors,
        prompt_tokens: n,
        completion_tokens: 2 * n,
        cost_micros: 100 * n,
        ..UsageTotals::default()
    }
}

fn trend_row(bucket_start_ms: i64, group: Option<&str>, totals: UsageTotals) -> TrendRow {
    TrendRow {
        bucket_start_ms,
        group: group.map(str::to_owned),
        totals,
    }
}

/// Rows on both sides of the Sunday→Monday midnight that opens a week, and
/// of the next hour and day edges. `n` is unique per row, so a row counted
/// in the wrong bucket or group changes a sum.
async fn seed_edges(db: &TestDb) -> Result<()> {
    let rows = vec![
        // Sunday 23:59:59.999: the previous hour, day and week.
        with_workflow(
            "triage",
            with_user("alice", row("a", "acme", MONDAY - 1, 1)),
        ),
        // Monday 00:00 exactly: the new week's first bucket.
        with_workflow("triage", with_user("alice", row("b", "acme", MONDAY, 2))),
        // The last millisecond of Monday's first hour.
        with_user("bob", row("c", "acme", MONDAY + HOUR - 1, 4)),
        // The first millisecond of its second hour.
        UsageRecord {
            session: Some("s1".into()),
            ..with_user("bob", row("d", "acme", MONDAY + HOUR, 8))
        },
        // Tuesday, failed.
        UsageRecord {
            status: 500,
            ..with_user("alice", row("e", "acme", MONDAY + DAY + 5 * HOUR, 16))
        },
        // Another tenant, inside Monday's first hour.
        with_user("carol", row("f", "globex", MONDAY + 10 * 60_000, 32)),
    ];
    db.store.insert_usage(&rows).await?;
    Ok(())
}

fn acme(bucket: Bucket, group_by: Option<Dimension>) -> TrendQuery {
    TrendQuery {
        filter: UsageQuery {
            tenant_id: Some("acme".into()),
            ..UsageQuery::default()
        },
        bucket,
        group_by,
    }
}

async fn hourly_trend_splits_rows_at_hour_edges_per_user(db: TestDb) -> Result<()> {
    seed_edges(&db).await?;

    let trend = db
        .store
        .usage_trend(&acme(Bucket::Hour, Some(Dimension::User)))
        .await?;
    assert_eq!(
        trend,
        vec![
            trend_row(MONDAY - HOUR, Some("alice"), totals(&[1], 0)),
            trend_row(MONDAY, Some("alice"), totals(&[2], 0)),
            trend_row(MONDAY, Some("bob"), totals(&[4], 0)),
            trend_row(MONDAY + HOUR, Some("bob"), totals(&[8], 0)),
            trend_row(MONDAY + DAY + 5 * HOUR, Some("alice"), totals(&[16], 1)),
        ]
    );
    Ok(())
}

async fn daily_trend_groups_rows_without_the_attribution_last(db: TestDb) -> Result<()> {
    seed_edges(&db).await?;

    let trend = db
        .store
        .usage_trend(&acme(Bucket::Day, Some(Dimension::Workflow)))
        .await?;
    assert_eq!(
        trend,
        vec![
            trend_row(MONDAY - DAY, Some("triage"), totals(&[1], 0)),
            trend_row(MONDAY, Some("triage"), totals(&[2], 0)),
            trend_row(MONDAY, None, totals(&[4, 8], 0)),
            trend_row(MONDAY + DAY, None, totals(&[16], 1)),
        ]
    );
    Ok(())
}

async fn weekly_trend_starts_weeks_on_monday(db: TestDb) -> Result<()> {
    seed_edges(&db).await?;

    // No tenant filter and no grouping: every row, one total per week.
    let all = TrendQuery {
        bucket: Bucket::Week,
        ..TrendQuery::default()
    };
    assert_eq!(
        db.store.usage_trend(&all).await?,
        vec![
            trend_row(MONDAY - WEEK, None, totals(&[1], 0)),
            trend_row(MONDAY, None, totals(&[2, 4, 8, 16, 32], 1)),
        ]
    );

    let per_tenant = TrendQuery {
        group_by: Some(Dimension::Tenant),
        ..all
    };
    assert_eq!(
        db.store.usage_trend(&per_tenant).await?,
        vec![
            trend_row(MONDAY - WEEK, Some("acme"), totals(&[1], 0)),
            trend_row(MONDAY, Some("acme"), totals(&[2, 4, 8, 16], 1)),
            trend_row(MONDAY, Some("globex"), totals(&[32], 0)),
        ]
    );
    Ok(())
}

async fn the_epoch_week_starts_on_the_monday_before_it(db: TestDb) -> Result<()> {
    // The epoch was a Thursday. Both rows precede the first Monday after
    // it, so `ts - offset` is negative; a remainder left negative would
    // put them in a bucket starting after the rows themselves.
    db.store
        .insert_usage(&[row("t", "acme", 0, 1), row("w", "acme", 3 * DAY + 1, 2)])
        .await?;
    let weekly = TrendQuery {
        bucket: Bucket::Week,
        ..TrendQuery::default()
    };
    assert_eq!(
        db.store.usage_trend(&weekly).await?,
        vec![trend_row(-3 * DAY, None, totals(&[1, 2], 0)),]
    );
    Ok(())
}

async fn trend_applies_every_filter_with_an_exclusive_end(db: TestDb) -> Result<()> {
    seed_edges(&db).await?;

    // [Monday 00:00, Monday 01:00): `b` and `c` only, `d` sits on the end.
    let window = TrendQuery {
        filter: UsageQuery {
            tenant_id: Some("acme".into()),
            since_ms: Some(MONDAY),
            until_ms: Some(MONDAY + HOUR),
            ..UsageQuery::default()
        },
        bucket: Bucket::Day,
        group_by: Some(Dimension::Session),
    };
    assert_eq!(
        db.store.usage_trend(&window).await?,
        vec![trend_row(MONDAY, None, totals(&[2, 4], 0))]
    );

    let cases = [
        (
            UsageQuery {
                user_id: Some("bob".into()),
                ..UsageQuery::default()
            },
            totals(&[4, 8], 0),
        ),
        (
            UsageQuery {
                session: Some("s1".into()),
                ..UsageQuery::default()
            },
            totals(&[8], 0),
        ),
        (
            UsageQuery {
                workflow: Some("triage".into()),
                ..UsageQuery::default()
            },
            totals(&[1, 2], 0),
        ),
        (
            UsageQuery {
                tenant_id: Some("globex".into()),
                ..UsageQuery::default()
            },
            totals(&[32], 0),
        ),
    ];
    for (filter, expected) in cases {
        let query = TrendQuery {
            filter: filter.clone(),
            bucket: Bucket::Week,
            group_by: None,
        };
        let trend = db.store.usage_trend(&query).await?;
        let mut summed = UsageTotals::default();
        for row in &trend {
            summed.requests += row.totals.requests;
            summed.errors += row.totals.errors;
            summed.prompt_tokens += row.totals.prompt_tokens;
            summed.completion_tokens += row.totals.completion_tokens;
            summed.cost_micros += row.totals.cost_micros;
        }
        assert_eq!(summed, expected, "{filter:?}");
    }

    let other_model = TrendQuery {
        filter: UsageQuery {
            model: Some("claude".into()),
            ..UsageQuery::default()
        },
        ..TrendQuery::default()
    };
    assert!(db.store.usage_trend(&other_model).await?.is_empty());
    Ok(())
}

async fn week_over_week_compares_the_seven_days_before_now(db: TestDb) -> Result<()> {
    // Thursday noon: the weeks compared are not calendar weeks.
    let now = MONDAY + 3 * DAY + 12 * HOUR;
    let rows = vec![
        // alice: two this week (one on its first millisecond), one before.
        with_user("alice", row("a1", "acme", now - 1, 1)),
        with_user("alice", row("a2", "acme", now - WEEK, 2)),
        with_user("alice", row("a3", "acme", now - WEEK - 1, 4)),
        // bob: only the previous week, from its first millisecond.
        with_user("bob", row("b1", "acme", now - 2 * WEEK, 8)),
        // Outside both weeks: too old, or at `now` itself.
        with_user("bob", row("b2", "acme", now - 2 * WEEK - 1, 16)),
        with_user("carol", row("c1", "acme", now, 32)),
        // dave: only this week, so no ratio.
        with_user("dave", row("d1", "acme", now - HOUR, 64)),
        // Another tenant's alice, filtered out.
        with_user("alice", row("g1", "globex", now - HOUR, 128)),
        // No user at all.
        row("n1", "acme", now - DAY, 256),
    ];
    db.store.insert_usage(&rows).await?;

    let acme = UsageQuery {
        tenant_id: Some("acme".into()),
        // The window replaces any time range in the filter.
        since_ms: Some(now),
        ..UsageQuery::default()
    };
    let weeks = db
        .store
        .usage_week_over_week(&acme, Some(Dimension::User), now)
        .await?;
    let week = |group: Option<&str>, this: &[i64], previous: &[i64]| WeekOverWeek {
        group: group.map(str::to_owned),
        this_week: totals(this, 0),
        previous_week: totals(previous, 0),
    };
    assert_eq!(
        weeks,
        vec![
            week(Some("alice"), &[1, 2], &[4]),
            week(Some("bob"), &[], &[8]),
            week(Some("dave"), &[64], &[]),
            week(None, &[256], &[]),
        ]
    );

    // alice: cost and tokens 3 against 4 units, 2 requests against 1.
    assert_eq!(weeks[0].cost_change(), Some(-0.25));
    assert_eq!(weeks[0].tokens_change(), Some(-0.25));
    assert_eq!(weeks[0].requests_change(), Some(1.0));
    assert_eq!(weeks[1].cost_change(), Some(-1.0));
    assert_eq!(weeks[2].cost_change(), None);

    let total = db.store.usage_week_over_week(&acme, None, now).await?;
    assert_eq!(total, vec![week(None, &[1, 2, 64, 256], &[4, 8])]);
    Ok(())
}

async fn week_over_week_is_empty_without_usage(db: TestDb) -> Result<()> {
    let weeks = db
        .store
        .usage_week_over_week(&UsageQuery::default(), Some(Dimension::Tenant), MONDAY)
        .await?;
    assert!(weeks.is_empty());
    Ok(())
}

every_backend!(
    hourly_trend_splits_rows_at_hour_edges_per_user,
    daily_trend_groups_rows_without_the_attribution_last,
    weekly_trend_starts_weeks_on_monday,
    the_epoch_week_starts_on_the_monday_before_it,
    trend_applies_every_filter_with_an_exclusive_end,
    week_over_week_compares_the_seven_days_before_now,
    week_over_week_is_empty_without_usage,
);
