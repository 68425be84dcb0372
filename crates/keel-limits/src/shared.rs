//! The shared backend: counters, holds and windows in Redis, so several keel
//! processes enforce one set of limits.
//!
//! Each decision is one Lua script run (`lua/admit.lua`, `lua/settle.lua`),
//! which Redis executes atomically: a request is checked against every rule
//! that covers it and charged in all of them or none, exactly as in-process.
//! Rates are GCRA on a stored theoretical arrival time; concurrency slots and
//! budget holds are sorted-set members that expire with a lease, so a
//! process that dies mid-request frees what it held once the lease ends.
//! All keys of one request go to one script call; with Redis Cluster every
//! key would have to share a slot, so keel expects a single primary
//! (Sentinel or a managed failover pair are fine).

use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::decision::{
    BudgetExceeded, Charge, Hit, Quota, Quotas, RateKind, Refusal, ThresholdCrossed,
};
use crate::local::crossings;
use crate::rule::Limit;

/// The rate helpers both scripts use.
const RATE: &str = include_str!("lua/rate.lua");
const ADMIT: &str = include_str!("lua/admit.lua");
const SETTLE: &str = include_str!("lua/settle.lua");

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key keel writes.
    pub prefix: String,
    /// Longest wait for one decision before the rule's fail mode applies.
    pub timeout: Duration,
}

/// A failed call to Redis.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Redis-backed limits.
#[derive(Clone)]
pub(crate) struct Shared {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    admit: Script,
    settle: Script,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a rule is described to the scripts: its kind and three parameters.
fn params(limit: &Limit, now_ms: i64) -> (&'static str, String, String, String) {
    match limit {
        Limit::Requests { limit, per } => (
            "r",
            limit.to_string(),
            per.as_millis().to_string(),
            String::new(),
        ),
        Limit::Tokens { limit, per } => (
            "t",
            limit.to_string(),
            per.as_millis().to_string(),
            String::new(),
        ),
        Limit::Concurrency { limit } => ("c", limit.to_string(), String::new(), String::new()),
        Limit::Budget { cap, period, .. } => (
            "b",
            cap.micros().to_string(),
            period.window_start(now_ms).to_string(),
            period.next_window(now_ms).to_string(),
        ),
    }
}

impl Shared {
    /// A lazily connecting client: keel starts even when Redis is down, and
    /// each rule's fail mode decides until it is back.
    pub fn new(settings: &RedisSettings) -> Result<Shared, BackendError> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| BackendError(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BackendError(e.to_string()))?;
        Ok(Shared {
            conn,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            admit: Script::new(&format!("{RATE}\n{ADMIT}")),
            settle: Script::new(&format!("{RATE}\n{SETTLE}")),
        })
    }

    fn keys(&self, hit: &Hit) -> (String, String) {
        let tag = match hit.rule.limit {
            Limit::Requests { .. } | Limit::Tokens { .. } => "r",
            Limit::Concurrency { .. } => "c",
            Limit::Budget { .. } => "b",
        };
        let base = format!("{}:{tag}:{}:{}", self.prefix, hit.rule.id, hit.scope);
        let holds = format!("{base}:holds");
        (base, holds)
    }

    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, BackendError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(BackendError(e.to_string())),
            Err(_) => Err(BackendError(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Checks and charges every hit, or none.
    pub async fn admit(
        &self,
        hits: &[Hit],
        member: &str,
        charge: Charge,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Result<Quotas, Refusal>, BackendError> {
        let mut keys = Vec::with_capacity(hits.len() * 2);
        let mut args = vec![
            now_ms.to_string(),
            member.to_owned(),
            lease.as_millis().to_string(),
            charge.tokens.to_string(),
            charge.cost.micros().to_string(),
        ];
        for hit in hits {
            let (k1, k2) = self.keys(hit);
            keys.extend([k1, k2]);
            let (kind, p1, p2, p3) = params(&hit.rule.limit, now_ms);
            args.extend([kind.to_owned(), p1, p2, p3]);
        }
        let reply = self.run(&self.admit, keys, args).await?;
        let bad = || BackendError(format!("unexpected reply from the admit script: {reply:?}"));
        match reply.first() {
            Some(1) => {
                let mut quotas = Quotas::default();
                for (hit, pair) in hits.iter().zip(reply[1..].chunks(2)) {
                    let (kind, limit) = match hit.rule.limit {
                        Limit::Requests { limit, .. } => (RateKind::Requests, limit),
                        Limit::Tokens { limit, .. } => (RateKind::Tokens, limit),
                        _ => continue,
                    };
                    let [remaining, reset] = pair else {
                        return Err(bad());
                    };
                    quotas.merge(
                        kind,
                        Quota {
                            limit: u64::from(limit),
                            remaining: u64::try_from(*remaining).unwrap_or(0),
                            reset: crate::clock::ms(*reset),
                        },
                    );
                }
                Ok(Ok(quotas))
            }
            Some(0) => {
                let (index, a, b) = match reply[1..] {
                    [index, a, b] => (index, a, b),
                    _ => return Err(bad()),
                };
                let hit = usize::try_from(index - 1)
                    .ok()
                    .and_then(|i| hits.get(i))
                    .ok_or_else(bad)?;
                Ok(Err(refusal(hit, charge, a, b, now_ms)))
            }
            _ => Err(bad()),
        }
    }

    /// Replaces held with used for every hit.
    pub async fn settle(
        &self,
        hits: &[Hit],
        member: &str,
        held: Charge,
        used: Charge,
        now_ms: i64,
    ) -> Result<Vec<ThresholdCrossed>, BackendError> {
        let hits: Vec<&Hit> = hits
            .iter()
            .filter(|h| !matches!(h.rule.limit, Limit::Requests { .. }))
            .collect();
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(hits.len() * 2);
        let mut args = vec![
            now_ms.to_string(),
            member.to_owned(),
            held.tokens.to_string(),
            used.tokens.to_string(),
            used.cost.micros().to_string(),
        ];
        for hit in &hits {
            let (k1, k2) = self.keys(hit);
            keys.extend([k1, k2]);
            let (kind, p1, p2, p3) = params(&hit.rule.limit, now_ms);
            args.extend([kind.to_owned(), p1, p2, p3]);
        }
        let reply = self.run(&self.settle, keys, args).await?;
        let mut crossed = Vec::new();
        for (hit, pair) in hits.iter().zip(reply.chunks(2)) {
            if let (
                Limit::Budget {
                    cap, thresholds, ..
                },
                [before, after],
            ) = (&hit.rule.limit, pair)
            {
                let before = u64::try_from(*before).unwrap_or(0);
                let after = u64::try_from(*after).unwrap_or(0);
                crossed.extend(crossings(hit, *cap, thresholds, before, after));
            }
        }
        Ok(crossed)
    }

    /// Holds `extra` more in every budget hit under the same member, or in
    /// none.
    pub async fn extend(
        &self,
        hits: &[Hit],
        member: &str,
        extra: keel_core::Cost,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Result<(), Refusal>, BackendError> {
        let budgets: Vec<Hit> = hits
            .iter()
            .filter(|h| matches!(h.rule.limit, Limit::Budget { .. }))
            .cloned()
            .collect();
        let charge = Charge {
            tokens: 0,
            cost: extra,
        };
        Ok(self
            .admit(&budgets, member, charge, lease, now_ms)
            .await?
            .map(|_| ()))
    }

    /// Checks Redis answers.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BackendError(e.to_string())),
            Err(_) => Err(BackendError("PING timed out".into())),
        }
    }

    /// Spent and held for one budget account, for inspection.
    pub async fn account(
        &self,
        hit: &Hit,
        now_ms: i64,
    ) -> Result<(keel_core::Cost, keel_core::Cost), BackendError> {
        let Limit::Budget { period, .. } = hit.rule.limit else {
            return Ok((keel_core::Cost::ZERO, keel_core::Cost::ZERO));
        };
        let (k1, _) = self.keys(hit);
        let mut conn = self.conn.clone();
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&k1)
            .query_async(&mut conn)
            .await
            .map_err(|e| BackendError(e.to_string()))?;
        let window = period.window_start(now_ms).to_string();
        let mut spent = 0;
        let mut held = 0;
        let in_window = fields.iter().any(|(k, v)| k == "w" && *v == window);
        for (k, v) in &fields {
            let v: u64 = v.parse().unwrap_or(0);
            if k == "spent" && in_window {
                spent = v;
            } else if k.starts_with("h:") {
                held += v;
            }
        }
        Ok((keel_core::Cost(spent), keel_core::Cost(held)))
    }
}

/// The refusal the admit script reported for `hit`.
fn refusal(hit: &Hit, charge: Charge, a: i64, b: i64, now_ms: i64) -> Refusal {
    let rule = hit.rule.id.clone();
    let scope = hit.scope.clone();
    match &hit.rule.limit {
        Limit::Requests { limit, per } | Limit::Tokens { limit, per } => {
            let kind = if matches!(hit.rule.limit, Limit::Requests { .. }) {
                RateKind::Requests
            } else {
                RateKind::Tokens
            };
            Refusal::Rate {
                rule,
                scope,
                kind,
                limit: u64::from(*limit),
                per: *per,
                requested: if kind == RateKind::Requests {
                    1
                } else {
                    charge.tokens
                },
                retry_after: (a >= 0).then(|| crate::clock::ms(a)),
            }
        }
        Limit::Concurrency { limit } => Refusal::Concurrency {
            rule,
            scope,
            limit: u64::from(*limit),
        },
        Limit::Budget { cap, period, .. } => Refusal::Budget(BudgetExceeded {
            rule,
            scope,
            cap: *cap,
            spent: keel_core::Cost(u64::try_from(a).unwrap_or(0)),
            reserved: keel_core::Cost(u64::try_from(b).unwrap_or(0)),
            requested: charge.cost,
            resets_at_ms: period.next_window(now_ms),
        }),
    }
}
