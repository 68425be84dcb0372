//! The workflow store: runs, leases, releases, signals and fairness.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result, ensure};
use keel_core::Cost;
use keel_store::flow::*;
use keel_store::{Store, StoreError};
use serde_json::{Value, json};

use crate::support::TestDb;

fn step(key: &str, deps: &[&str]) -> NewStep {
    NewStep {
        key: key.to_owned(),
        queue: String::new(),
        deps: deps.iter().map(|d| Dep::on(*d)).collect(),
        wait_any: false,
        input: None,
    }
}

fn run(tenant: &str, steps: Vec<NewStep>) -> NewRun {
    NewRun {
        tenant_id: tenant.to_owned(),
        workflow: "w".to_owned(),
        version: 1,
        input: json!({"ticket": "refund"}),
        idempotency_key: None,
        max_steps: 100,
        max_tokens: None,
        max_cost: None,
        steps,
    }
}

fn claim(queue: &str, batch: u32) -> ClaimRequest {
    ClaimRequest {
        queue: queue.to_owned(),
        owner: "test".to_owned(),
        lease_ms: 60_000,
        batch,
        per_tenant: batch,
        tenant_concurrency: None,
        tenant: None,
    }
}

async fn statuses(store: &Store, run_id: &str) -> Result<BTreeMap<String, StepStatus>> {
    Ok(store
        .run_steps(run_id)
        .await?
        .into_iter()
        .map(|s| (s.key, s.status))
        .collect())
}

async fn succeed(store: &Store, c: &Claimed, output: Value) -> Result<bool> {
    Ok(store
        .finish_step(
            &c.run_id,
            &c.key,
            &c.token,
            &StepUpdate::Succeeded(output),
            &AttemptTrace::default(),
            None,
        )
        .await?)
}

async fn claim_one(store: &Store, key: &str) -> Result<Claimed> {
    store
        .claim_steps(&claim("", 10))
        .await?
        .into_iter()
        .find(|c| c.key == key)
        .with_context(|| format!("{key} was not claimable"))
}

async fn starts_idempotently_with_roots_ready(db: TestDb) -> Result<()> {
    let mut new = run("t1", vec![step("a", &[]), step("b", &["a"])]);
    new.idempotency_key = Some("order-7".to_owned());
    let (first, created) = db.store.start_run(&new).await?;
    ensure!(created && first.status == RunStatus::Running);
    assert_eq!(first.input, json!({"ticket": "refund"}));

    let (again, created) = db.store.start_run(&new).await?;
    ensure!(!created, "the same key must not start a second run");
    assert_eq!(again.id, first.id);
    assert_eq!(db.store.runs("t1", None, 10).await?.len(), 1);
    assert_eq!(db.store.count_runs("t1", RunStatus::Running).await?, 1);
    assert_eq!(db.store.count_runs("t1", RunStatus::Failed).await?, 0);

    let steps = statuses(&db.store, &first.id).await?;
    assert_eq!(steps["a"], StepStatus::Ready);
    assert_eq!(steps["b"], StepStatus::Pending);
    // Another tenant may use the same key.
    new.tenant_id = "t2".to_owned();
    ensure!(db.store.start_run(&new).await?.1);
    ensure!(
        db.store.run("t2", &first.id).await?.is_none(),
        "runs are per tenant"
    );
    Ok(())
}

async fn a_finished_step_releases_what_waits_only_on_it(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store
        .start_run(&run(
            "t1",
            vec![step("a", &[]), step("b", &[]), step("join", &["a", "b"])],
        ))
        .await?;
    let mut claimed = store.claim_steps(&claim("", 10)).await?;
    claimed.sort_by(|x, y| x.key.cmp(&y.key));
    let [a, b] = &claimed[..] else {
        anyhow::bail!("expected a and b to be claimable, got {claimed:?}");
    };
    ensure!(a.attempt == 1 && a.was == StepStatus::Ready && a.steps_used >= 1);
    ensure!(succeed(store, a, json!({"text": "A"})).await?);
    assert_eq!(statuses(store, &r.id).await?["join"], StepStatus::Pending);

    let failed = StepUpdate::Failed("upstream 500".to_owned());
    ensure!(
        store
            .finish_step(
                &r.id,
                &b.key,
                &b.token,
                &failed,
                &AttemptTrace::default(),
                None
            )
            .await?
    );
    // Ended counts, failed or not: the engine decides what a failure means.
    assert_eq!(statuses(store, &r.id).await?["join"], StepStatus::Ready);
    let steps = store.run_steps(&r.id).await?;
    let a = steps.iter().find(|s| s.key == "a").context("a")?;
    assert_eq!(a.output, Some(json!({"text": "A"})));
    Ok(())
}

async fn a_wait_any_join_is_ready_at_the_first_success(db: TestDb) -> Result<()> {
    let store = &db.store;
    let mut join = step("join", &["a", "b"]);
    join.wait_any = true;
    let (r, _) = store
        .start_run(&run("t1", vec![step("a", &[]), step("b", &[]), join]))
        .await?;
    let a = claim_one(store, "a").await?;
    ensure!(succeed(store, &a, json!(1)).await?);
    assert_eq!(statuses(store, &r.id).await?["join"], StepStatus::Ready);
    Ok(())
}

async fn a_stale_token_cannot_finish_a_step(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store.start_run(&run("t1", vec![step("a", &[])])).await?;
    let mut short = claim("", 1);
    short.lease_ms = -1; // expired at once: the worker "died"
    let first = store.claim_steps(&short).await?.pop().context("claim")?;

    let second = claim_one(store, "a").await?;
    assert_eq!((second.attempt, second.was), (2, StepStatus::Leased));
    ensure!(second.token != first.token);

    ensure!(
        !succeed(store, &first, json!("stale")).await?,
        "the old token lost the lease"
    );
    ensure!(!store.renew_lease(&r.id, "a", &first.token, 1000).await?);
    ensure!(store.renew_lease(&r.id, "a", &second.token, 1000).await?);
    ensure!(succeed(store, &second, json!("fresh")).await?);
    ensure!(
        !succeed(store, &second, json!("twice")).await?,
        "a step finishes once"
    );

    let attempts = store.run_attempts(&r.id).await?;
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.status.as_str()))
        .collect();
    assert_eq!(seen, [(1, "lost"), (2, "succeeded")]);
    let steps = store.run_steps(&r.id).await?;
    assert_eq!(steps[0].output, Some(json!("fresh")));
    ensure!(
        store.claim_steps(&claim("", 10)).await?.is_empty(),
        "done steps stay done"
    );
    Ok(())
}

async fn retries_wait_until_due(db: TestDb) -> Result<()> {
    let store = &db.store;
    for (due_ms, claimable) in [(i64::MAX / 2, false), (0, true)] {
        let (r, _) = store.start_run(&run("t1", vec![step("a", &[])])).await?;
        let a = claim_one(store, "a").await?;
        let retry = StepUpdate::Retry {
            error: "429".to_owned(),
            due_ms,
        };
        ensure!(
            store
                .finish_step(&r.id, "a", &a.token, &retry, &AttemptTrace::default(), None)
                .await?
        );
        let again = store.claim_steps(&claim("", 10)).await?;
        assert_eq!(again.len(), usize::from(claimable), "due at {due_ms}");
        if let Some(again) = again.first() {
            assert_eq!((again.attempt, again.was), (2, StepStatus::Ready));
            let steps = store.run_steps(&r.id).await?;
            assert_eq!(steps[0].error.as_deref(), Some("429"));
        }
    }
    Ok(())
}

async fn claims_are_fair_across_tenants_and_capped_per_tenant(db: TestDb) -> Result<()> {
    let store = &db.store;
    let flood: Vec<_> = (0..40).map(|i| step(&format!("s{i}"), &[])).collect();
    store.start_run(&run("noisy", flood)).await?;
    store
        .start_run(&run("quiet", vec![step("x", &[]), step("y", &[])]))
        .await?;

    let mut request = claim("", 8);
    request.per_tenant = 3;
    let claimed = store.claim_steps(&request).await?;
    let by = |t: &str| claimed.iter().filter(|c| c.tenant_id == t).count();
    assert_eq!(
        (by("quiet"), by("noisy")),
        (2, 3),
        "the quiet tenant is not starved"
    );

    request.per_tenant = 50;
    request.batch = 50;
    request.tenant_concurrency = Some(5);
    let more = store.claim_steps(&request).await?;
    // noisy holds 3 leases already: the cap of 5 leaves room for 2.
    assert_eq!(more.iter().filter(|c| c.tenant_id == "noisy").count(), 2);

    request.tenant = Some("quiet".to_owned());
    request.tenant_concurrency = None;
    ensure!(
        store.claim_steps(&request).await?.is_empty(),
        "quiet's steps are all leased"
    );
    request.tenant = Some("noisy".to_owned());
    let own = store.claim_steps(&request).await?;
    ensure!(!own.is_empty() && own.iter().all(|c| c.tenant_id == "noisy"));
    Ok(())
}

async fn cancelling_stops_workers_from_finishing(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store
        .start_run(&run("t1", vec![step("a", &[]), step("b", &["a"])]))
        .await?;
    let a = claim_one(store, "a").await?;
    ensure!(
        !store.cancel_run("t2", &r.id).await?,
        "another tenant cannot cancel it"
    );
    ensure!(store.cancel_run("t1", &r.id).await?);
    ensure!(!store.cancel_run("t1", &r.id).await?, "cancelled once");
    ensure!(!succeed(store, &a, json!(1)).await?);

    let run = store.run("t1", &r.id).await?.context("run")?;
    assert_eq!(run.status, RunStatus::Cancelled);
    ensure!(run.finished_ms.is_some());
    let steps = statuses(store, &r.id).await?;
    ensure!(
        steps.values().all(|s| *s == StepStatus::Cancelled),
        "{steps:?}"
    );
    Ok(())
}

async fn a_person_answers_a_waiting_step(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store
        .start_run(&run(
            "t1",
            vec![step("approve", &[]), step("after", &["approve"])],
        ))
        .await?;
    let c = claim_one(store, "approve").await?;
    let wait = StepUpdate::Wait {
        detail: json!({"question": "refund $120?"}),
        deadline_ms: i64::MAX / 2,
    };
    ensure!(
        store
            .finish_step(
                &r.id,
                "approve",
                &c.token,
                &wait,
                &AttemptTrace::default(),
                None
            )
            .await?
    );
    ensure!(
        store.claim_steps(&claim("", 10)).await?.is_empty(),
        "waits for the person"
    );

    let early = store.signal_step("t1", &r.id, "after", &json!(true)).await;
    ensure!(
        matches!(early, Err(StoreError::NotWaiting { .. })),
        "{early:?}"
    );
    let stranger = store
        .signal_step("t2", &r.id, "approve", &json!(true))
        .await;
    ensure!(
        matches!(stranger, Err(StoreError::NotFound { .. })),
        "{stranger:?}"
    );

    store
        .signal_step("t1", &r.id, "approve", &json!({"approved": true}))
        .await?;
    let steps = store.run_steps(&r.id).await?;
    assert_eq!(steps[0].key, "after");
    assert_eq!(steps[0].status, StepStatus::Ready);
    assert_eq!(steps[1].output, Some(json!({"approved": true})));
    assert_eq!(steps[1].detail, Some(json!({"question": "refund $120?"})));
    let twice = store
        .signal_step("t1", &r.id, "approve", &json!(false))
        .await;
    ensure!(
        matches!(twice, Err(StoreError::NotWaiting { .. })),
        "answered once"
    );
    Ok(())
}

async fn a_missed_deadline_makes_the_step_claimable(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store
        .start_run(&run("t1", vec![step("approve", &[])]))
        .await?;
    let c = claim_one(store, "approve").await?;
    let wait = StepUpdate::Wait {
        detail: json!({"escalated": false}),
        deadline_ms: 1,
    };
    ensure!(
        store
            .finish_step(
                &r.id,
                "approve",
                &c.token,
                &wait,
                &AttemptTrace::default(),
                None
            )
            .await?
    );
    let again = claim_one(store, "approve").await?;
    assert_eq!(again.was, StepStatus::Waiting);
    assert_eq!(again.detail, Some(json!({"escalated": false})));
    Ok(())
}

async fn a_run_end_records_usage_and_cancels_the_rest(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store
        .start_run(&run("t1", vec![step("a", &[]), step("b", &["a"])]))
        .await?;
    let a = claim_one(store, "a").await?;
    let trace = AttemptTrace {
        input: Some(json!({"prompt": "hi"})),
        model: Some("gpt-4o".to_owned()),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost: Cost(42),
        error: Some("boom".to_owned()),
        ..AttemptTrace::default()
    };
    let end = RunEnd {
        status: RunStatus::Failed,
        output: None,
        error: Some("step a failed: boom".to_owned()),
    };
    let failed = StepUpdate::Failed("boom".to_owned());
    ensure!(
        store
            .finish_step(&r.id, "a", &a.token, &failed, &trace, Some(&end))
            .await?
    );

    let run = store.run("t1", &r.id).await?.context("run")?;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!((run.tokens_used, run.cost), (15, Cost(42)));
    assert_eq!(run.error.as_deref(), Some("step a failed: boom"));
    assert_eq!(statuses(store, &r.id).await?["b"], StepStatus::Cancelled);
    let attempt = &store.run_attempts(&r.id).await?[0];
    assert_eq!(attempt.trace, trace);
    Ok(())
}

async fn a_map_waits_for_its_items_then_runs_again(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (r, _) = store
        .start_run(&run(
            "t1",
            vec![step("each", &[]), step("after", &["each"])],
        ))
        .await?;
    let each = claim_one(store, "each").await?;
    let items: Vec<_> = (0..3)
        .map(|i| NewStep {
            input: Some(json!({"item": i})),
            ..step(&format!("each[{i}]"), &[])
        })
        .collect();
    let expand = StepUpdate::Expand(items);
    ensure!(
        store
            .finish_step(
                &r.id,
                "each",
                &each.token,
                &expand,
                &AttemptTrace::default(),
                None
            )
            .await?
    );
    let claimed = store.claim_steps(&claim("", 10)).await?;
    let keys: HashSet<_> = claimed.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, HashSet::from(["each[0]", "each[1]", "each[2]"]));
    ensure!(
        claimed
            .iter()
            .all(|c| c.input.as_ref().is_some_and(|i| i["item"].is_number()))
    );
    for c in &claimed {
        ensure!(succeed(store, c, json!(c.key)).await?);
    }
    let gather = claim_one(store, "each").await?;
    assert_eq!(gather.attempt, 2);
    assert_eq!(statuses(store, &r.id).await?["after"], StepStatus::Pending);
    Ok(())
}

async fn prunes_only_runs_finished_before_the_cutoff(db: TestDb) -> Result<()> {
    let store = &db.store;
    let (done, _) = store.start_run(&run("t1", vec![step("a", &[])])).await?;
    let (live, _) = store.start_run(&run("t1", vec![step("a", &[])])).await?;
    ensure!(store.cancel_run("t1", &done.id).await?);
    assert_eq!(store.prune_runs(0).await?, 0);
    assert_eq!(store.prune_runs(i64::MAX).await?, 1);
    ensure!(store.run("t1", &done.id).await?.is_none());
    ensure!(store.run_steps(&done.id).await?.is_empty());
    ensure!(store.run("t1", &live.id).await?.is_some());
    Ok(())
}

async fn workflows_are_versioned(db: TestDb) -> Result<()> {
    let store = &db.store;
    let v1 = store.save_workflow("t1", "triage", "name: triage").await?;
    let same = store.save_workflow("t1", "triage", "name: triage").await?;
    assert_eq!((v1.version, same.version), (1, 1));
    let v2 = store
        .save_workflow("t1", "triage", "name: triage\n")
        .await?;
    assert_eq!(v2.version, 2);
    assert_eq!(
        store.workflow("t1", "triage", None).await?,
        Some(v2.clone())
    );
    assert_eq!(
        store
            .workflow("t1", "triage", Some(1))
            .await?
            .map(|w| w.version),
        Some(1)
    );
    ensure!(store.workflow("t2", "triage", None).await?.is_none());
    assert_eq!(store.workflows("t1").await?, vec![v2]);
    Ok(())
}

/// Two stores on one database claim the same ready steps at once; each
/// step goes to exactly one of them.
async fn concurrent_claimers_never_share_a_step(db: TestDb) -> Result<()> {
    let other = db.reopen().await?;
    let steps: Vec<_> = (0..60).map(|i| step(&format!("s{i}"), &[])).collect();
    db.store.start_run(&run("t1", steps)).await?;

    let claim_all = |store: Store| async move {
        let mut mine = Vec::new();
        loop {
            let got = store.claim_steps(&claim("", 7)).await?;
            if got.is_empty() {
                return anyhow::Ok(mine);
            }
            mine.extend(got.into_iter().map(|c| c.key));
        }
    };
    let (a, b) = tokio::join!(claim_all(db.store.clone()), claim_all(other));
    let (a, b) = (a?, b?);
    let all: HashSet<_> = a.iter().chain(&b).collect();
    assert_eq!(a.len() + b.len(), 60, "no step claimed twice");
    assert_eq!(all.len(), 60);
    Ok(())
}

/// Processes registering the same file at start race for its version:
/// all of them end up with the one version.
async fn concurrent_registrations_share_one_version(db: TestDb) -> Result<()> {
    let other = db.reopen().await?;
    let (a, b) = tokio::join!(
        db.store.save_workflow("t1", "w", "name: w"),
        other.save_workflow("t1", "w", "name: w")
    );
    assert_eq!((a?.version, b?.version), (1, 1));
    assert_eq!(db.store.workflows("t1").await?.len(), 1);
    Ok(())
}

/// On PostgreSQL a run's start wakes listeners on other connections; on
/// SQLite there is nothing to listen to.
async fn starting_a_run_notifies_listeners(db: TestDb) -> Result<()> {
    let Some(mut listener) = db.store.listen_flow().await? else {
        ensure!(db.store.backend() == keel_store::Backend::Sqlite);
        return Ok(());
    };
    let other = db.reopen().await?;
    other.start_run(&run("t1", vec![step("a", &[])])).await?;
    let queue = tokio::time::timeout(std::time::Duration::from_secs(30), listener.recv()).await??;
    assert_eq!(queue, "");
    Ok(())
}

async fn model_calls_hold_the_runs_budget_until_they_settle(db: TestDb) -> Result<()> {
    let store = &db.store;
    let mut new = run("t1", vec![step("a", &[]), step("b", &[])]);
    new.max_tokens = Some(100);
    new.max_cost = Some(Cost(1_000));
    let (r, _) = store.start_run(&new).await?;
    let mut quick = claim("", 10);
    quick.lease_ms = -1; // b's worker will die: its lease is over at once
    let mut claimed = store.claim_steps(&quick).await?;
    claimed.sort_by(|x, y| x.key.cmp(&y.key));
    let (a, b) = (&claimed[0], &claimed[1]);

    ensure!(
        store
            .hold_run_budget(&r.id, "a", &a.token, 60, Cost(600))
            .await?
    );
    ensure!(
        !store
            .hold_run_budget(&r.id, "b", &b.token, 60, Cost(100))
            .await?,
        "160 > 100 tokens"
    );
    ensure!(
        !store
            .hold_run_budget(&r.id, "b", &b.token, 10, Cost(500))
            .await?,
        "$1100 > $1000"
    );
    ensure!(
        store
            .hold_run_budget(&r.id, "b", &b.token, 30, Cost(300))
            .await?
    );
    let held = store.run("t1", &r.id).await?.context("run")?;
    assert_eq!((held.reserved_tokens, held.reserved_cost), (90, Cost(900)));

    // a settles at what it used; the rest of its hold goes back.
    let used = AttemptTrace {
        prompt_tokens: 8,
        completion_tokens: 2,
        cost: Cost(100),
        ..AttemptTrace::default()
    };
    let done = StepUpdate::Succeeded(json!("a"));
    ensure!(
        store
            .finish_step(&r.id, "a", &a.token, &done, &used, None)
            .await?
    );
    let settled = store.run("t1", &r.id).await?.context("run")?;
    assert_eq!((settled.tokens_used, settled.cost), (10, Cost(100)));
    assert_eq!(
        (settled.reserved_tokens, settled.reserved_cost),
        (30, Cost(300))
    );
    assert_eq!(
        (settled.max_tokens, settled.max_cost),
        (Some(100), Some(Cost(1_000)))
    );

    // b's worker died: claiming b again gives its hold back.
    let again = claim_one(store, "b").await?;
    assert_eq!(again.attempt, 2);
    let released = store.run("t1", &r.id).await?.context("run")?;
    assert_eq!(
        (released.reserved_tokens, released.reserved_cost),
        (0, Cost::ZERO)
    );
    ensure!(
        !store
            .hold_run_budget(&r.id, "b", &b.token, 1, Cost(1))
            .await?,
        "a stale token holds nothing"
    );
    Ok(())
}

every_backend!(
    model_calls_hold_the_runs_budget_until_they_settle,
    starts_idempotently_with_roots_ready,
    a_finished_step_releases_what_waits_only_on_it,
    a_wait_any_join_is_ready_at_the_first_success,
    a_stale_token_cannot_finish_a_step,
    retries_wait_until_due,
    claims_are_fair_across_tenants_and_capped_per_tenant,
    cancelling_stops_workers_from_finishing,
    a_person_answers_a_waiting_step,
    a_missed_deadline_makes_the_step_claimable,
    a_run_end_records_usage_and_cancels_the_rest,
    a_map_waits_for_its_items_then_runs_again,
    prunes_only_runs_finished_before_the_cutoff,
    workflows_are_versioned,
);

durable_backends!(
    concurrent_claimers_never_share_a_step,
    concurrent_registrations_share_one_version,
    starting_a_run_notifies_listeners,
);
