//! Hard spending caps: reserve the worst case before a call, settle after.
//!
//! Every matching budget is checked and charged under one lock, so a
//! reservation is all-or-nothing: a request either holds its worst-case cost
//! in every budget it falls under, or in none. Settling replaces the hold
//! with the real cost. Because a request is only admitted when
//! `spent + in flight + worst case <= cap`, and its real cost never exceeds
//! its worst case, spend never exceeds a cap — however many requests race.
//! A [`Reservation`] dropped without settling (a failed or cancelled call)
//! releases its holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use keel_core::Cost;

use crate::period::Period;
use crate::scope::{Attrs, Selector};

/// A spending cap on a scope for a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRule {
    /// A stable name, shown in errors and events.
    pub id: String,
    /// Which requests it covers, and how it splits its accounts.
    pub selector: Selector,
    /// How long a window lasts before spend resets.
    pub period: Period,
    /// The most that may be spent in one window.
    pub cap: Cost,
    /// Percentages of the cap that raise an event when crossed (e.g. 50, 80,
    /// 100).
    pub thresholds: Vec<u8>,
}

/// A request refused because a budget cannot cover its worst case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "budget {rule:?} for {scope} cannot cover this request: cap {cap}, spent {spent}, \
     in flight {reserved}, this request may cost up to {requested}"
)]
pub struct BudgetExceeded {
    /// The budget's id.
    pub rule: String,
    /// The account within it (`tenant=acme,user=alice`).
    pub scope: String,
    /// The cap.
    pub cap: Cost,
    /// Spent in the current window.
    pub spent: Cost,
    /// Held by requests in flight.
    pub reserved: Cost,
    /// What this request would have held.
    pub requested: Cost,
    /// When the window resets (Unix milliseconds).
    pub resets_at_ms: i64,
}

/// A soft threshold a settlement crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdCrossed {
    /// The budget's id.
    pub rule: String,
    /// The account within it.
    pub scope: String,
    /// The threshold, in percent of the cap.
    pub percent: u8,
    /// Spent after the settlement.
    pub spent: Cost,
    /// The cap.
    pub cap: Cost,
}

/// One account's state in its current window.
#[derive(Debug, Clone, Copy, Default)]
struct Account {
    window_start_ms: i64,
    spent: u64,
    reserved: u64,
}

impl Account {
    /// Starts a new window when `now_ms` is past the current one. Holds of
    /// requests still in flight carry over: they will be paid in the new one.
    fn roll(&mut self, period: Period, now_ms: i64) {
        let start = period.window_start(now_ms);
        if start != self.window_start_ms {
            self.window_start_ms = start;
            self.spent = 0;
        }
    }
}

/// What a request holds in one budget.
#[derive(Debug)]
struct Hold {
    rule: Arc<BudgetRule>,
    scope: String,
    amount: u64,
}

#[derive(Debug, Default)]
struct Inner {
    rules: RwLock<Vec<Arc<BudgetRule>>>,
    accounts: Mutex<HashMap<(String, String), Account>>,
}

/// In-process budgets, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    inner: Arc<Inner>,
}

/// A request's hold on every budget it falls under.
#[must_use = "settle the reservation with the real cost, or drop it to release it"]
#[derive(Debug)]
pub struct Reservation {
    budgets: Budgets,
    holds: Vec<Hold>,
    amount: Cost,
}

impl Budgets {
    /// Budgets enforcing `rules`.
    pub fn new(rules: Vec<BudgetRule>) -> Budgets {
        let budgets = Budgets::default();
        budgets.set_rules(rules);
        budgets
    }

    /// Replaces the rules. Spend already recorded under a rule id is kept,
    /// so changing a cap does not forgive what was spent.
    pub fn set_rules(&self, rules: Vec<BudgetRule>) {
        let rules = rules.into_iter().map(Arc::new).collect();
        *self
            .inner
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rules;
    }

    /// Holds `worst_case` in every budget `attrs` falls under, or in none.
    pub fn reserve(
        &self,
        attrs: &Attrs<'_>,
        worst_case: Cost,
        now_ms: i64,
    ) -> Result<Reservation, BudgetExceeded> {
        let matching: Vec<(Arc<BudgetRule>, String)> = {
            let rules = self
                .inner
                .rules
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rules
                .iter()
                .filter_map(|r| {
                    r.selector
                        .partition(attrs)
                        .map(|scope| (Arc::clone(r), scope))
                })
                .collect()
        };
        let amount = worst_case.micros();
        let mut accounts = self.lock();

        // Check every budget before charging any: all or nothing.
        for (rule, scope) in &matching {
            let account = accounts
                .entry((rule.id.clone(), scope.clone()))
                .or_default();
            account.roll(rule.period, now_ms);
            let committed = account.spent.saturating_add(account.reserved);
            if committed.saturating_add(amount) > rule.cap.micros() {
                return Err(BudgetExceeded {
                    rule: rule.id.clone(),
                    scope: scope.clone(),
                    cap: rule.cap,
                    spent: Cost(account.spent),
                    reserved: Cost(account.reserved),
                    requested: worst_case,
                    resets_at_ms: rule.period.next_window(now_ms),
                });
            }
        }
        let mut holds = Vec::with_capacity(matching.len());
        for (rule, scope) in matching {
            if let Some(account) = accounts.get_mut(&(rule.id.clone(), scope.clone())) {
                account.reserved = account.reserved.saturating_add(amount);
            }
            holds.push(Hold {
                rule,
                scope,
                amount,
            });
        }
        Ok(Reservation {
            budgets: self.clone(),
            holds,
            amount: worst_case,
        })
    }

    /// Spent and in flight for one account, for inspection.
    pub fn account(&self, rule: &str, scope: &str, now_ms: i64) -> Option<(Cost, Cost)> {
        let period = self.rule(rule)?.period;
        let mut accounts = self.lock();
        let account = accounts.get_mut(&(rule.to_owned(), scope.to_owned()))?;
        account.roll(period, now_ms);
        Some((Cost(account.spent), Cost(account.reserved)))
    }

    fn rule(&self, id: &str) -> Option<Arc<BudgetRule>> {
        let rules = self
            .inner
            .rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rules.iter().find(|r| r.id == id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Account>> {
        // Accounts are updated field by field under this lock by code that
        // cannot panic between the updates; a poisoned lock is still sound.
        self.inner
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves each hold out of "in flight" and charges `actual` instead.
    fn finish(&self, holds: &[Hold], actual: u64, now_ms: i64) -> Vec<ThresholdCrossed> {
        let mut crossed = Vec::new();
        let mut accounts = self.lock();
        for hold in holds {
            let Some(account) = accounts.get_mut(&(hold.rule.id.clone(), hold.scope.clone()))
            else {
                continue;
            };
            account.roll(hold.rule.period, now_ms);
            account.reserved = account.reserved.saturating_sub(hold.amount);
            let before = account.spent;
            account.spent = account.spent.saturating_add(actual);
            let cap = hold.rule.cap.micros().max(1);
            for &percent in &hold.rule.thresholds {
                let line = u128::from(cap) * u128::from(percent) / 100;
                if u128::from(before) < line && u128::from(account.spent) >= line {
                    crossed.push(ThresholdCrossed {
                        rule: hold.rule.id.clone(),
                        scope: hold.scope.clone(),
                        percent,
                        spent: Cost(account.spent),
                        cap: hold.rule.cap,
                    });
                }
            }
        }
        crossed
    }
}

impl Reservation {
    /// The worst case held.
    pub fn amount(&self) -> Cost {
        self.amount
    }

    /// Whether no budget covers the request (nothing is held).
    pub fn is_unbudgeted(&self) -> bool {
        self.holds.is_empty()
    }

    /// Replaces the hold with what the call really cost, returning the soft
    /// thresholds this crossed.
    pub fn settle(mut self, actual: Cost, now_ms: i64) -> Vec<ThresholdCrossed> {
        let holds = std::mem::take(&mut self.holds);
        self.budgets.finish(&holds, actual.micros(), now_ms)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.holds.is_empty() {
            let holds = std::mem::take(&mut self.holds);
            let now_ms = keel_core::now_unix_ms();
            self.budgets.finish(&holds, 0, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_300_000_000; // early December 2026, UTC

    fn rule(id: &str, selector: &str, cap: u64) -> BudgetRule {
        BudgetRule {
            id: id.into(),
            selector: Selector::parse(selector).unwrap(),
            period: Period::Day,
            cap: Cost(cap),
            thresholds: vec![50, 80, 100],
        }
    }

    fn attrs<'a>(tenant: &'a str, user: &'a str) -> Attrs<'a> {
        Attrs {
            tenant,
            user: Some(user),
            model: "m",
            ..Attrs::default()
        }
    }

    #[test]
    fn admits_until_the_worst_case_no_longer_fits() {
        let b = Budgets::new(vec![rule("t", "tenant=acme", 100)]);
        let a = attrs("acme", "u");
        let first = b.reserve(&a, Cost(60), NOW).unwrap();
        let err = b.reserve(&a, Cost(60), NOW).unwrap_err();
        assert_eq!(
            (err.spent, err.reserved, err.requested),
            (Cost(0), Cost(60), Cost(60))
        );
        assert_eq!(err.resets_at_ms, Period::Day.next_window(NOW));
        // Settling below the worst case frees the difference.
        first.settle(Cost(30), NOW);
        b.reserve(&a, Cost(60), NOW).unwrap().settle(Cost(60), NOW);
        assert_eq!(
            b.account("t", "tenant=acme", NOW),
            Some((Cost(90), Cost(0)))
        );
    }

    #[test]
    fn reservations_are_all_or_nothing() {
        let b = Budgets::new(vec![
            rule("tenant", "tenant=acme", 1_000),
            rule("per-user", "tenant=acme,user=*", 50),
        ]);
        let err = b
            .reserve(&attrs("acme", "alice"), Cost(80), NOW)
            .unwrap_err();
        assert_eq!(err.rule, "per-user");
        // The tenant budget, checked first, holds nothing after the refusal.
        assert_eq!(
            b.account("tenant", "tenant=acme", NOW),
            Some((Cost(0), Cost(0)))
        );
        // Another user has a budget of their own.
        b.reserve(&attrs("acme", "bob"), Cost(50), NOW)
            .unwrap()
            .settle(Cost(50), NOW);
        assert!(b.reserve(&attrs("acme", "carol"), Cost(50), NOW).is_ok());
    }

    #[test]
    fn dropped_reservations_release_their_hold() {
        let b = Budgets::new(vec![rule("t", "tenant=acme", 100)]);
        drop(b.reserve(&attrs("acme", "u"), Cost(100), NOW).unwrap());
        assert!(b.reserve(&attrs("acme", "u"), Cost(100), NOW).is_ok());
    }

    #[test]
    fn spend_resets_with_the_calendar_window() {
        let b = Budgets::new(vec![rule("t", "tenant=acme", 100)]);
        b.reserve(&attrs("acme", "u"), Cost(100), NOW)
            .unwrap()
            .settle(Cost(100), NOW);
        assert!(b.reserve(&attrs("acme", "u"), Cost(1), NOW).is_err());
        let tomorrow = Period::Day.next_window(NOW);
        assert!(b.reserve(&attrs("acme", "u"), Cost(100), tomorrow).is_ok());
    }

    #[test]
    fn settlements_report_crossed_thresholds_once() {
        let b = Budgets::new(vec![rule("t", "tenant=acme", 100)]);
        let crossed = b
            .reserve(&attrs("acme", "u"), Cost(85), NOW)
            .unwrap()
            .settle(Cost(85), NOW);
        let percents: Vec<u8> = crossed.iter().map(|c| c.percent).collect();
        assert_eq!(percents, vec![50, 80]);
        let crossed = b
            .reserve(&attrs("acme", "u"), Cost(15), NOW)
            .unwrap()
            .settle(Cost(15), NOW);
        assert_eq!(
            crossed.iter().map(|c| c.percent).collect::<Vec<_>>(),
            vec![100]
        );
    }

    #[test]
    fn requests_outside_every_scope_hold_nothing() {
        let b = Budgets::new(vec![rule("t", "tenant=acme", 1)]);
        let r = b.reserve(&attrs("globex", "u"), Cost(1_000), NOW).unwrap();
        assert!(r.is_unbudgeted());
    }

    #[test]
    fn concurrent_requests_never_overspend() {
        // 200 threads race for a budget that fits exactly 10 worst cases.
        let b = Budgets::new(vec![rule("t", "tenant=acme", 10 * 7)]);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..200)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        let r = b.reserve(&attrs("acme", "u"), Cost(7), NOW);
                        r.map(|r| r.settle(Cost(7), NOW)).is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(admitted, 10);
        assert_eq!(
            b.account("t", "tenant=acme", NOW),
            Some((Cost(70), Cost(0)))
        );
    }
}
