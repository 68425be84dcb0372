//! Limits as the server uses them, on both backends: in process on tokio's
//! paused clock, and in Redis (127.0.0.1:6379, or `KEEL_TEST_REDIS_URL`) on a
//! hand-advanced clock, each test under its own key prefix.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "scenarios shared by two backends are plain async fns"
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_core::Cost;
use keel_limits::{
    Admission, Attrs, Block, Charge, Clock, FailMode, Limits, LimitsConfig, RateKind,
    RedisSettings, Refusal, RuleSpec, Selector,
};
use keel_telemetry::Metrics;

/// 2026-12-03T23:59:00Z, a minute before a day (not a month) ends.
const LATE_EVENING: i64 = 1_796_342_340_000;

struct Harness {
    limits: Limits,
    clock: Clock,
    shared: bool,
}

fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "keel-test:{}:{nanos}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Harness {
    fn local() -> Harness {
        let clock = Clock::anchored(LATE_EVENING);
        let config = LimitsConfig {
            clock: clock.clone(),
            ..LimitsConfig::default()
        };
        Harness {
            limits: Limits::new(config, Metrics::new()).unwrap(),
            clock,
            shared: false,
        }
    }

    fn redis_at(url: String, lease: Duration) -> Harness {
        Harness::redis_with(url, lease, unique_prefix())
    }

    fn redis_with(url: String, lease: Duration, prefix: String) -> Harness {
        let clock = Clock::manual(LATE_EVENING);
        let config = LimitsConfig {
            clock: clock.clone(),
            redis: Some(RedisSettings {
                url,
                prefix,
                timeout: Duration::from_millis(500),
            }),
            lease,
            ..LimitsConfig::default()
        };
        Harness {
            limits: Limits::new(config, Metrics::new()).unwrap(),
            clock,
            shared: true,
        }
    }

    fn redis() -> Harness {
        Harness::redis_at(redis_url(), Duration::from_secs(900))
    }

    fn rules(&self, specs: &[&str]) {
        let rules = specs
            .iter()
            .map(|json| {
                serde_json::from_str::<RuleSpec>(json)
                    .unwrap()
                    .check()
                    .unwrap()
            })
            .collect();
        self.limits.set_api_rules(rules).unwrap();
    }

    async fn advance(&self, by: Duration) {
        if self.shared {
            self.clock.advance(by);
        } else {
            tokio::time::advance(by).await;
        }
    }

    /// Lets releases of dropped admissions (spawned for Redis) land.
    async fn settle_drops(&self) {
        if self.shared {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admit(&self, attrs: &Attrs<'_>, tokens: u64, cost: u64) -> Result<Admission, Refusal> {
        static ID: AtomicU32 = AtomicU32::new(0);
        let member = format!("req-{}", ID.fetch_add(1, Ordering::Relaxed));
        let charge = Charge {
            tokens,
            cost: Cost(cost),
        };
        self.limits.admit(attrs, charge, &member).await
    }
}

fn user<'a>(tenant: &'a str, user: &'a str) -> Attrs<'a> {
    Attrs {
        tenant,
        user: Some(user),
        model: "gpt-4o-mini",
        ..Attrs::default()
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn in_process() {
                super::$name(super::Harness::local()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Harness::redis()).await;
            }
        }
    )*};
}

on_both_backends!(
    request_rates_refill,
    token_rates_refund_what_was_not_used,
    concurrency_frees_slots_when_requests_end,
    budgets_reset_with_the_calendar,
    decisions_are_all_or_nothing_across_rules,
    thresholds_raise_events_once,
    blocked_scopes_are_refused,
    racing_requests_never_overspend,
    streams_extend_their_hold_or_stop,
    dropped_admissions_release_their_holds,
    changed_limits_keep_what_was_used,
);

async fn changed_limits_keep_what_was_used(h: Harness) {
    h.rules(&[r#"{"id":"r","scope":"tenant=acme","requests":1,"per":"1h"}"#]);
    let a = user("acme", "alice");
    drop(h.admit(&a, 1, 0).await.unwrap());
    assert!(h.admit(&a, 1, 0).await.is_err());
    // Raised to three an hour: the request already made is one of them.
    h.rules(&[r#"{"id":"r","scope":"tenant=acme","requests":3,"per":"1h"}"#]);
    drop(h.admit(&a, 1, 0).await.unwrap());
    drop(h.admit(&a, 1, 0).await.unwrap());
    assert!(h.admit(&a, 1, 0).await.is_err());
    // Lowered to two: three were made, so none is left.
    h.rules(&[r#"{"id":"r","scope":"tenant=acme","requests":2,"per":"1h"}"#]);
    assert!(h.admit(&a, 1, 0).await.is_err());
}

async fn request_rates_refill(h: Harness) {
    h.rules(&[r#"{"id":"rpm","scope":"tenant=acme,user=*","requests":10,"per":"1m"}"#]);
    let a = user("acme", "alice");
    for expected_remaining in (0..10).rev() {
        let admitted = h.admit(&a, 1, 0).await.unwrap();
        let quota = admitted.quotas().requests.unwrap();
        assert_eq!((quota.limit, quota.remaining), (10, expected_remaining));
    }
    let Refusal::Rate {
        rule,
        kind,
        retry_after,
        ..
    } = h.admit(&a, 1, 0).await.unwrap_err()
    else {
        panic!("expected a rate refusal");
    };
    assert_eq!((rule.as_str(), kind), ("rpm", RateKind::Requests));
    let wait = retry_after.unwrap();
    assert!(
        wait > Duration::from_millis(5_900) && wait <= Duration::from_secs(6),
        "{wait:?}"
    );
    // Another user has a counter of their own.
    drop(h.admit(&user("acme", "bob"), 1, 0).await.unwrap());
    // One emission interval later, exactly one more fits.
    h.advance(Duration::from_secs(6)).await;
    drop(h.admit(&a, 1, 0).await.unwrap());
    assert!(h.admit(&a, 1, 0).await.is_err());
    // A whole interval refills the whole limit.
    h.advance(Duration::from_secs(60)).await;
    for _ in 0..10 {
        drop(h.admit(&a, 1, 0).await.unwrap());
    }
    assert!(h.admit(&a, 1, 0).await.is_err());
}

async fn token_rates_refund_what_was_not_used(h: Harness) {
    h.rules(&[r#"{"id":"tpm","scope":"tenant=acme","tokens":1000,"per":"1m"}"#]);
    let a = user("acme", "alice");
    let first = h.admit(&a, 600, 0).await.unwrap();
    assert_eq!(first.quotas().tokens.unwrap().remaining, 400);
    assert!(matches!(
        h.admit(&a, 600, 0).await.unwrap_err(),
        Refusal::Rate {
            kind: RateKind::Tokens,
            retry_after: Some(_),
            ..
        }
    ));
    // The call used 100 of the 600 held: 500 come back.
    first
        .settle(Charge {
            tokens: 100,
            cost: Cost::ZERO,
        })
        .await;
    let second = h.admit(&a, 600, 0).await.unwrap();
    assert_eq!(second.quotas().tokens.unwrap().remaining, 300);
    // More than the whole limit can never fit: no retry time is offered.
    let refusal = h.admit(&a, 1_001, 0).await.unwrap_err();
    assert!(
        matches!(
            refusal,
            Refusal::Rate {
                retry_after: None,
                requested: 1_001,
                ..
            }
        ),
        "{refusal:?}"
    );
    assert!(
        refusal.to_string().contains("lower max_tokens"),
        "{refusal}"
    );
    drop(second);
}

async fn concurrency_frees_slots_when_requests_end(h: Harness) {
    h.rules(&[r#"{"id":"two","scope":"tenant=acme","concurrency":2}"#]);
    let a = user("acme", "alice");
    let one = h.admit(&a, 1, 0).await.unwrap();
    let two = h.admit(&a, 1, 0).await.unwrap();
    let refusal = h.admit(&a, 1, 0).await.unwrap_err();
    assert!(
        matches!(refusal, Refusal::Concurrency { limit: 2, .. }),
        "{refusal:?}"
    );
    one.settle(Charge::default()).await;
    let three = h.admit(&a, 1, 0).await.unwrap();
    drop(two);
    h.settle_drops().await;
    let four = h.admit(&a, 1, 0).await.unwrap();
    assert!(h.admit(&a, 1, 0).await.is_err());
    drop((three, four));
}

async fn budgets_reset_with_the_calendar(h: Harness) {
    h.rules(&[r#"{"id":"daily","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#]);
    let a = user("acme", "alice");
    let first = h.admit(&a, 0, 600_000).await.unwrap();
    let Refusal::Budget(exceeded) = h.admit(&a, 0, 600_000).await.unwrap_err() else {
        panic!("expected a budget refusal");
    };
    assert_eq!(
        (exceeded.spent, exceeded.reserved, exceeded.requested),
        (Cost(0), Cost(600_000), Cost(600_000))
    );
    // Midnight UTC after 2026-12-03.
    assert_eq!(exceeded.resets_at_ms, 1_796_342_400_000);
    first
        .settle(Charge {
            tokens: 0,
            cost: Cost(300_000),
        })
        .await;
    h.admit(&a, 0, 600_000)
        .await
        .unwrap()
        .settle(Charge {
            tokens: 0,
            cost: Cost(600_000),
        })
        .await;
    assert_eq!(
        h.limits.account("daily", "tenant=acme").await,
        Some((Cost(900_000), Cost(0)))
    );
    assert!(h.admit(&a, 0, 200_000).await.is_err());
    // A minute later it is a new day: the whole cap is free again.
    h.advance(Duration::from_secs(61)).await;
    drop(h.admit(&a, 0, 1_000_000).await.unwrap());
}

async fn decisions_are_all_or_nothing_across_rules(h: Harness) {
    h.rules(&[
        r#"{"id":"tenant-budget","scope":"tenant=acme","budget_usd":10.0,"period":"month"}"#,
        r#"{"id":"user-budget","scope":"tenant=acme,user=*","budget_usd":0.5,"period":"month"}"#,
        r#"{"id":"tenant-rpm","scope":"tenant=acme","requests":100,"per":"1m"}"#,
        r#"{"id":"user-rpm","scope":"tenant=acme,user=*","requests":1,"per":"1m"}"#,
    ]);
    let alice = user("acme", "alice");
    let Refusal::Budget(exceeded) = h.admit(&alice, 0, 800_000).await.unwrap_err() else {
        panic!("expected a budget refusal");
    };
    assert_eq!(exceeded.rule, "user-budget");
    // Nothing was held in the tenant's budget for the refused request.
    assert_eq!(
        h.limits.account("tenant-budget", "tenant=acme").await,
        Some((Cost(0), Cost(0)))
    );
    let first = h.admit(&alice, 0, 100_000).await.unwrap();
    assert_eq!(
        first.quotas().requests.unwrap().remaining,
        0,
        "the tightest rule"
    );
    first.settle(Charge::default()).await;
    // Alice's own limit refuses her next request, and that refusal does not
    // use up the tenant's requests: bob still sees 98 left after his.
    assert!(h.admit(&alice, 0, 100_000).await.is_err());
    let bob = h.admit(&user("acme", "bob"), 0, 100_000).await.unwrap();
    let quotas = bob.quotas().requests.unwrap();
    assert_eq!(quotas.remaining, 0, "bob's own limit is the tightest");
    drop(bob);
    let carol = user("acme", "carol");
    h.rules(&[r#"{"id":"tenant-rpm","scope":"tenant=acme","requests":100,"per":"1m"}"#]);
    let c = h.admit(&carol, 0, 0).await.unwrap();
    assert_eq!(c.quotas().requests.unwrap().remaining, 97);
}

async fn thresholds_raise_events_once(h: Harness) {
    h.rules(&[
        r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"month","thresholds":[50,80,100]}"#,
    ]);
    let a = user("acme", "alice");
    let crossed = h
        .admit(&a, 0, 850_000)
        .await
        .unwrap()
        .settle(Charge {
            tokens: 0,
            cost: Cost(850_000),
        })
        .await;
    assert_eq!(
        crossed.iter().map(|c| c.percent).collect::<Vec<_>>(),
        [50, 80]
    );
    let crossed = h
        .admit(&a, 0, 150_000)
        .await
        .unwrap()
        .settle(Charge {
            tokens: 0,
            cost: Cost(150_000),
        })
        .await;
    assert_eq!(crossed.iter().map(|c| c.percent).collect::<Vec<_>>(), [100]);
    let events: Vec<u8> = h
        .limits
        .events()
        .iter()
        .map(|e| e.crossed.percent)
        .collect();
    assert_eq!(events, [50, 80, 100]);
}

async fn blocked_scopes_are_refused(h: Harness) {
    h.limits.set_blocks(vec![Block {
        scope: Selector::parse("tenant=acme,user=mallory").unwrap(),
        reason: "runaway agent".into(),
        created_ms: 0,
    }]);
    let refusal = h.admit(&user("acme", "mallory"), 1, 0).await.unwrap_err();
    assert_eq!(refusal.code(), keel_core::ErrorCode::Forbidden);
    assert!(refusal.to_string().contains("runaway agent"), "{refusal}");
    assert_eq!(refusal.retry_after(0), None);
    drop(h.admit(&user("acme", "alice"), 1, 0).await.unwrap());
    h.limits.set_blocks(Vec::new());
    drop(h.admit(&user("acme", "mallory"), 1, 0).await.unwrap());
}

async fn racing_requests_never_overspend(h: Harness) {
    // 200 requests race for a budget that fits exactly ten worst cases.
    h.rules(&[r#"{"id":"b","scope":"tenant=acme","budget_usd":0.07,"period":"day"}"#]);
    let limits = h.limits.clone();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let limits = limits.clone();
            tokio::spawn(async move {
                let attrs = user("acme", "alice");
                let charge = Charge {
                    tokens: 10,
                    cost: Cost(7_000),
                };
                match limits.admit(&attrs, charge, &format!("race-{i}")).await {
                    Ok(admission) => {
                        tokio::task::yield_now().await;
                        admission.settle(charge).await;
                        true
                    }
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10);
    assert_eq!(
        h.limits.account("b", "tenant=acme").await,
        Some((Cost(70_000), Cost(0)))
    );
}

async fn streams_extend_their_hold_or_stop(h: Harness) {
    h.rules(&[r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#]);
    let a = user("acme", "alice");
    let mut stream = h.admit(&a, 0, 500_000).await.unwrap();
    stream.extend(Cost(400_000)).await.unwrap();
    assert_eq!(stream.held().cost, Cost(900_000));
    assert!(h.admit(&a, 0, 200_000).await.is_err());
    let refusal = stream.extend(Cost(200_000)).await.unwrap_err();
    assert!(matches!(refusal, Refusal::Budget(_)));
    assert_eq!(
        stream.held().cost,
        Cost(900_000),
        "a refused extension holds nothing"
    );
    stream
        .settle(Charge {
            tokens: 0,
            cost: Cost(950_000),
        })
        .await;
    assert_eq!(
        h.limits.account("b", "tenant=acme").await,
        Some((Cost(950_000), Cost(0)))
    );
}

async fn dropped_admissions_release_their_holds(h: Harness) {
    h.rules(&[
        r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#,
        r#"{"id":"tpm","scope":"tenant=acme","tokens":100,"per":"1h"}"#,
    ]);
    let a = user("acme", "alice");
    drop(h.admit(&a, 100, 1_000_000).await.unwrap());
    h.settle_drops().await;
    drop(h.admit(&a, 100, 1_000_000).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_applies_each_rules_fail_mode() {
    // Nothing listens on port 1.
    let h = Harness::redis_at("redis://127.0.0.1:1".into(), Duration::from_secs(900));
    h.rules(&[
        r#"{"id":"rpm","scope":"tenant=open","requests":1,"per":"1h"}"#,
        r#"{"id":"budget","scope":"tenant=closed","budget_usd":1.0,"period":"day"}"#,
    ]);
    // Fail open: enforced in this process instead.
    drop(h.admit(&user("open", "u"), 1, 0).await.unwrap());
    let refusal = h.admit(&user("open", "u"), 1, 0).await.unwrap_err();
    assert!(matches!(refusal, Refusal::Rate { .. }), "{refusal:?}");
    // Fail closed: refused, saying why, with a retry time.
    let refusal = h.admit(&user("closed", "u"), 1, 1).await.unwrap_err();
    assert_eq!(refusal.code(), keel_core::ErrorCode::LimitsUnavailable);
    assert!(refusal.to_string().contains("budget"), "{refusal}");
    assert_eq!(refusal.retry_after(0), Some(Duration::from_secs(1)));
    // A rule can choose otherwise.
    let mut spec: RuleSpec = serde_json::from_str(
        r#"{"id":"budget","scope":"tenant=closed","budget_usd":1.0,"period":"day"}"#,
    )
    .unwrap();
    spec.on_redis_error = Some(FailMode::Open);
    h.limits.set_api_rules(vec![spec.check().unwrap()]).unwrap();
    drop(h.admit(&user("closed", "u"), 1, 1).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_frees_its_slot_when_the_lease_ends() {
    let h = Harness::redis_at(redis_url(), Duration::from_secs(5));
    h.rules(&[
        r#"{"id":"one","scope":"tenant=acme","concurrency":1}"#,
        r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#,
    ]);
    let a = user("acme", "alice");
    // A process that dies mid-request never settles or releases.
    std::mem::forget(h.admit(&a, 1, 1_000_000).await.unwrap());
    assert!(h.admit(&a, 1, 1).await.is_err());
    h.clock.advance(Duration::from_secs(6));
    drop(h.admit(&a, 1, 1_000_000).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_redis_share_limits() {
    // Two Limits on one key prefix behave as two keel processes.
    let prefix = unique_prefix();
    let first = Harness::redis_with(redis_url(), Duration::from_secs(900), prefix.clone());
    let second = Harness::redis_with(redis_url(), Duration::from_secs(900), prefix);
    for h in [&first, &second] {
        h.rules(&[
            r#"{"id":"rpm","scope":"tenant=acme","requests":5,"per":"1h"}"#,
            r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#,
        ]);
    }
    let a = user("acme", "alice");
    for h in [&first, &second, &first, &second, &first] {
        drop(h.admit(&a, 1, 0).await.unwrap());
    }
    assert!(first.admit(&a, 1, 0).await.is_err());
    assert!(second.admit(&a, 1, 0).await.is_err());
    // A hold taken through one is seen by the other.
    first.rules(&[r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#]);
    second.rules(&[r#"{"id":"b","scope":"tenant=acme","budget_usd":1.0,"period":"day"}"#]);
    let held = first.admit(&a, 0, 700_000).await.unwrap();
    assert!(second.admit(&a, 0, 400_000).await.is_err());
    held.settle(Charge {
        tokens: 0,
        cost: Cost(500_000),
    })
    .await;
    assert_eq!(
        second.limits.account("b", "tenant=acme").await,
        Some((Cost(500_000), Cost(0)))
    );
}
