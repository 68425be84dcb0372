//! The in-process backend: every account of every rule under one lock.
//!
//! One lock makes each decision all-or-nothing across rules: a request is
//! checked against every rule that covers it and charged only if all of them
//! admit it, so a request refused by a user's limit never uses up its
//! tenant's. Rates use GCRA from the `gcra` crate; the crate's state is a
//! plain value, which is what lets keel check several rules and commit them
//! together (a limiter that charges on check, like `governor`'s, cannot undo
//! a charge when a later rule refuses). Budgets follow the module docs of
//! [`crate::limits`]: hold the worst case, settle to the real cost.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gcra::{GcraError, GcraState, RateLimit};
use keel_core::Cost;

use crate::decision::{
    BudgetExceeded, Charge, Hit, Quota, Quotas, RateKind, Refusal, ThresholdCrossed,
};
use crate::period::Period;
use crate::rule::Limit;

type Key = (String, String);

/// One budget account's state in its current window.
#[derive(Debug, Clone, Copy)]
struct Account {
    period: Period,
    window_start_ms: i64,
    spent: u64,
    reserved: u64,
}

impl Account {
    fn new(period: Period) -> Account {
        Account {
            period,
            window_start_ms: i64::MIN,
            spent: 0,
            reserved: 0,
        }
    }

    /// Starts a new window when `now_ms` is past the current one. Holds of
    /// requests still in flight carry over: they will be paid in the new one.
    fn roll(&mut self, now_ms: i64) {
        let start = self.period.window_start(now_ms);
        if start != self.window_start_ms {
            self.window_start_ms = start;
            self.spent = 0;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    rates: HashMap<Key, Rate>,
    in_flight: HashMap<Key, u32>,
    accounts: HashMap<Key, Account>,
}

/// A rate account: its GCRA state and the emission interval it was
/// computed with, so a changed limit rescales what was used instead of
/// misreading it.
#[derive(Debug, Clone, Copy)]
struct Rate {
    gcra: GcraState,
    emission: Duration,
}

impl Rate {
    /// The state under `rate`: time already booked is converted from the
    /// old emission interval to the new one, so the requests (or tokens)
    /// used so far still count, no more and no less.
    fn under(self, rate: &RateLimit, now: Instant) -> GcraState {
        if self.emission == rate.emission_interval || self.emission.is_zero() {
            return self.gcra;
        }
        let booked = self
            .gcra
            .tat
            .and_then(|tat| tat.checked_duration_since(now))
            .unwrap_or_default();
        let scale = rate.emission_interval.as_secs_f64() / self.emission.as_secs_f64();
        GcraState {
            tat: Some(now + booked.mul_f64(scale)),
        }
    }
}

/// In-process limits.
#[derive(Debug, Default)]
pub(crate) struct Local {
    state: Mutex<State>,
}

/// A change decided in the check phase, applied in the commit phase.
enum Change {
    Rate(Rate),
    Enter,
    Hold,
}

fn rate_limit(limit: u32, per: Duration) -> RateLimit {
    RateLimit::new(limit, per)
}

/// What a GCRA state leaves of a limit at `now`.
fn quota(state: &GcraState, limit: u32, per: Duration, now: Instant) -> Quota {
    let busy = state
        .tat
        .and_then(|tat| tat.checked_duration_since(now))
        .unwrap_or_default();
    let free = per.saturating_sub(busy);
    let remaining = (free.as_secs_f64() / per.as_secs_f64() * f64::from(limit)).floor() as u64;
    Quota {
        limit: u64::from(limit),
        remaining,
        reset: busy,
    }
}

fn rate_parts(limit: &Limit) -> Option<(RateKind, u32, Duration)> {
    match *limit {
        Limit::Requests { limit, per } => Some((RateKind::Requests, limit, per)),
        Limit::Tokens { limit, per } => Some((RateKind::Tokens, limit, per)),
        _ => None,
    }
}

impl Local {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State is updated by code that does not panic between related
        // writes; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks every hit, then charges all of them or none.
    pub fn admit(
        &self,
        hits: &[Hit],
        charge: Charge,
        now_ms: i64,
        now: Instant,
    ) -> Result<Quotas, Refusal> {
        let mut state = self.lock();
        let mut changes = Vec::with_capacity(hits.len());
        let mut quotas = Quotas::default();
        for hit in hits {
            let key = hit.key();
            let change = match &hit.rule.limit {
                Limit::Requests { .. } | Limit::Tokens { .. } => {
                    let Some((kind, limit, per)) = rate_parts(&hit.rule.limit) else {
                        continue;
                    };
                    let cost = match kind {
                        RateKind::Requests => 1,
                        RateKind::Tokens => charge.tokens,
                    };
                    let refuse = |retry_after| Refusal::Rate {
                        rule: hit.rule.id.clone(),
                        scope: hit.scope.clone(),
                        kind,
                        limit: u64::from(limit),
                        per,
                        requested: cost,
                        retry_after,
                    };
                    let cost32 = u32::try_from(cost).map_err(|_| refuse(None))?;
                    let rate = rate_limit(limit, per);
                    let mut gcra = state
                        .rates
                        .get(&key)
                        .map(|r| r.under(&rate, now))
                        .unwrap_or_default();
                    match gcra.check_and_modify_at(&rate, now, cost32) {
                        Ok(()) => {}
                        Err(GcraError::DeniedUntil { next_allowed_at }) => {
                            return Err(refuse(Some(
                                next_allowed_at.saturating_duration_since(now),
                            )));
                        }
                        Err(GcraError::DeniedIndefinitely { .. }) => return Err(refuse(None)),
                    }
                    quotas.merge(kind, quota(&gcra, limit, per, now));
                    Change::Rate(Rate {
                        gcra,
                        emission: rate.emission_interval,
                    })
                }
                Limit::Concurrency { limit } => {
                    let n = state.in_flight.get(&key).copied().unwrap_or(0);
                    if n >= *limit {
                        return Err(Refusal::Concurrency {
                            rule: hit.rule.id.clone(),
                            scope: hit.scope.clone(),
                            limit: u64::from(*limit),
                        });
                    }
                    Change::Enter
                }
                Limit::Budget { cap, period, .. } => {
                    check_budget(&mut state, hit, *cap, *period, charge.cost, now_ms)?;
                    Change::Hold
                }
            };
            changes.push(change);
        }
        for (hit, change) in hits.iter().zip(changes) {
            let key = hit.key();
            match change {
                Change::Rate(rate) => {
                    state.rates.insert(key, rate);
                }
                Change::Enter => *state.in_flight.entry(key).or_default() += 1,
                Change::Hold => {
                    if let Some(account) = state.accounts.get_mut(&key) {
                        account.reserved = account.reserved.saturating_add(charge.cost.micros());
                    }
                }
            }
        }
        Ok(quotas)
    }

    /// Holds `extra` more in every budget hit, or in none.
    pub fn extend(&self, hits: &[Hit], extra: Cost, now_ms: i64) -> Result<(), Refusal> {
        let mut state = self.lock();
        for hit in hits {
            if let Limit::Budget { cap, period, .. } = &hit.rule.limit {
                check_budget(&mut state, hit, *cap, *period, extra, now_ms)?;
            }
        }
        for hit in hits {
            if let (Limit::Budget { .. }, Some(account)) =
                (&hit.rule.limit, state.accounts.get_mut(&hit.key()))
            {
                account.reserved = account.reserved.saturating_add(extra.micros());
            }
        }
        Ok(())
    }

    /// Replaces what a request held with what it used: refunds unused
    /// tokens (or charges extra ones as debt), frees its concurrency slot,
    /// and moves its budget holds to spend.
    pub fn settle(
        &self,
        hits: &[Hit],
        held: Charge,
        used: Charge,
        now_ms: i64,
        now: Instant,
    ) -> Vec<ThresholdCrossed> {
        let mut state = self.lock();
        let mut crossed = Vec::new();
        for hit in hits {
            let key = hit.key();
            match &hit.rule.limit {
                Limit::Requests { .. } => {}
                Limit::Tokens { limit, per } => {
                    let rate = rate_limit(*limit, *per);
                    let Some(entry) = state.rates.get_mut(&key) else {
                        continue;
                    };
                    entry.gcra = entry.under(&rate, now);
                    entry.emission = rate.emission_interval;
                    let gcra = &mut entry.gcra;
                    if used.tokens < held.tokens {
                        let refund = u32::try_from(held.tokens - used.tokens).unwrap_or(u32::MAX);
                        // `revert_at` never fails; it returns a Result for
                        // API symmetry.
                        let _ = gcra.revert_at(&rate, now, refund);
                    } else if used.tokens > held.tokens {
                        // More than the worst case (a miscounted prompt):
                        // charge it anyway, as debt later requests wait for.
                        let extra = u32::try_from(used.tokens - held.tokens).unwrap_or(u32::MAX);
                        let tat = gcra.tat.map_or(now, |t| t.max(now));
                        gcra.tat = Some(tat + rate.increment_interval(extra));
                    }
                }
                Limit::Concurrency { .. } => {
                    if let Some(n) = state.in_flight.get_mut(&key) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            state.in_flight.remove(&key);
                        }
                    }
                }
                Limit::Budget {
                    cap, thresholds, ..
                } => {
                    let Some(account) = state.accounts.get_mut(&key) else {
                        continue;
                    };
                    account.roll(now_ms);
                    account.reserved = account.reserved.saturating_sub(held.cost.micros());
                    let before = account.spent;
                    account.spent = account.spent.saturating_add(used.cost.micros());
                    crossed.extend(crossings(hit, *cap, thresholds, before, account.spent));
                }
            }
        }
        crossed
    }

    /// Spent and held for one budget account.
    pub fn account(&self, rule: &str, scope: &str, now_ms: i64) -> Option<(Cost, Cost)> {
        let mut state = self.lock();
        let account = state
            .accounts
            .get_mut(&(rule.to_owned(), scope.to_owned()))?;
        account.roll(now_ms);
        Some((Cost(account.spent), Cost(account.reserved)))
    }

    /// Forgets state nothing depends on any more: rates back at full,
    /// budget windows that ended with nothing held.
    pub fn sweep(&self, now_ms: i64, now: Instant) -> usize {
        let mut state = self.lock();
        let before = state.rates.len() + state.accounts.len();
        state
            .rates
            .retain(|_, r| r.gcra.tat.is_some_and(|tat| tat > now));
        state
            .accounts
            .retain(|_, a| a.reserved > 0 || a.period.window_start(now_ms) == a.window_start_ms);
        before - state.rates.len() - state.accounts.len()
    }
}

/// Refuses `amount` if the hit's budget account cannot hold it on top of
/// what is spent and held in the current window.
fn check_budget(
    state: &mut State,
    hit: &Hit,
    cap: Cost,
    period: Period,
    amount: Cost,
    now_ms: i64,
) -> Result<(), Refusal> {
    let account = state
        .accounts
        .entry(hit.key())
        .or_insert_with(|| Account::new(period));
    account.period = period;
    account.roll(now_ms);
    let committed = account.spent.saturating_add(account.reserved);
    if committed.saturating_add(amount.micros()) > cap.micros() {
        return Err(Refusal::Budget(BudgetExceeded {
            rule: hit.rule.id.clone(),
            scope: hit.scope.clone(),
            cap,
            spent: Cost(account.spent),
            reserved: Cost(account.reserved),
            requested: amount,
            resets_at_ms: period.next_window(now_ms),
        }));
    }
    Ok(())
}

/// The soft thresholds a settlement from `before` to `after` crossed.
pub(crate) fn crossings(
    hit: &Hit,
    cap: Cost,
    thresholds: &[u8],
    before: u64,
    after: u64,
) -> Vec<ThresholdCrossed> {
    let cap_micros = u128::from(cap.micros().max(1));
    thresholds
        .iter()
        .filter(|&&percent| {
            let line = cap_micros * u128::from(percent) / 100;
            u128::from(before) < line && u128::from(after) >= line
        })
        .map(|&percent| ThresholdCrossed {
            rule: hit.rule.id.clone(),
            scope: hit.scope.clone(),
            percent,
            spent: Cost(after),
            cap,
        })
        .collect()
}
