//! Request and fault counters, and the [`SimStats`] snapshot served at
//! `GET /sim/stats`.
//!
//! Counting is on the hot path, so totals are atomics and the per-model map
//! takes a write lock only the first time a model is seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::fault::FaultKind;

/// A snapshot of what the simulator has served since start or the last
/// reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Well-formed model requests (chat, messages, embeddings).
    pub requests_total: u64,
    /// Model requests refused with 400 before any fault was considered.
    pub invalid_requests: u64,
    /// Well-formed model requests by the `model` they asked for.
    pub requests_by_model: BTreeMap<String, u64>,
    /// Injected faults by kind name (`"429"`, `"hang"`, …); every kind is
    /// present, with 0 if it never fired.
    pub faults_by_kind: BTreeMap<String, u64>,
}

impl SimStats {
    /// Total faults injected, of any kind.
    pub fn faults_total(&self) -> u64 {
        self.faults_by_kind.values().sum()
    }
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    invalid: AtomicU64,
    by_model: RwLock<HashMap<String, AtomicU64>>,
    faults: [AtomicU64; FaultKind::ALL.len()],
}

impl Counters {
    /// Counts a well-formed request for `model`.
    pub(crate) fn record_request(&self, model: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);

        let known = self.by_model.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = known.get(model) {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        drop(known);

        let mut models = self
            .by_model
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        models
            .entry(model.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused as invalid.
    pub(crate) fn record_invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an injected fault.
    pub(crate) fn record_fault(&self, kind: FaultKind) {
        self.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub(crate) fn snapshot(&self) -> SimStats {
        let models = self.by_model.read().unwrap_or_else(PoisonError::into_inner);
        SimStats {
            requests_total: self.requests.load(Ordering::Relaxed),
            invalid_requests: self.invalid.load(Ordering::Relaxed),
            requests_by_model: models
                .iter()
                .map(|(model, count)| (model.clone(), count.load(Ordering::Relaxed)))
                .collect(),
            faults_by_kind: FaultKind::ALL
                .iter()
                .map(|kind| {
                    (
                        kind.as_str().to_owned(),
                        self.faults[kind.index()].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }

    /// Sets every counter back to zero.
    pub(crate) fn reset(&self) {
        let mut models = self
            .by_model
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        models.clear();
        self.requests.store(0, Ordering::Relaxed);
        self.invalid.store(0, Ordering::Relaxed);
        for count in &self.faults {
            count.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_models_and_faults() {
        let counters = Counters::default();
        counters.record_request("a");
        counters.record_request("a");
        counters.record_request("b");
        counters.record_invalid();
        counters.record_fault(FaultKind::Hang);

        let stats = counters.snapshot();
        assert_eq!(stats.requests_total, 3);
        assert_eq!(stats.invalid_requests, 1);
        assert_eq!(stats.requests_by_model["a"], 2);
        assert_eq!(stats.faults_by_kind["hang"], 1);
        assert_eq!(stats.faults_by_kind["429"], 0);
        assert_eq!(stats.faults_total(), 1);
    }

    #[test]
    fn reset_zeroes_everything() {
        let counters = Counters::default();
        counters.record_request("a");
        counters.record_fault(FaultKind::CutStream);
        counters.reset();

        let stats = counters.snapshot();
        assert_eq!(stats.requests_total, 0);
        assert!(stats.requests_by_model.is_empty());
        assert_eq!(stats.faults_total(), 0);
    }
}
