//! A circuit breaker per deployment: closed → open → half-open → closed.
//!
//! Closed lets everything through and counts consecutive failures. At the
//! threshold it opens and the router skips the deployment, so a dead upstream
//! costs no latency. After `open_for` it turns half-open and lets a few probe
//! requests through; enough successes close it, any failure opens it again.
//! Time comes from tokio's clock so tests run on a paused clock.

use std::sync::{Arc, Mutex};

use keel_telemetry::{BreakerStateValue, Metrics};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// The breaker of one deployment.
#[derive(Debug)]
pub struct Breaker {
    deployment: String,
    config: BreakerConfig,
    state: Mutex<State>,
    metrics: Metrics,
}

/// The right to send one request; report how it went.
#[must_use = "report the attempt's outcome with success() or failure()"]
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    reported: bool,
}

/// A breaker's state, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    /// The deployment.
    pub deployment: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Consecutive failures counted while closed.
    pub consecutive_failures: u32,
    /// While open: milliseconds until probes are let through.
    pub reopens_in_ms: Option<u64>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(deployment: impl Into<String>, config: BreakerConfig, metrics: Metrics) -> Breaker {
        let breaker = Breaker {
            deployment: deployment.into(),
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
            metrics,
        };
        breaker.publish(BreakerStateValue::Closed);
        breaker
    }

    /// Asks to send a request: `None` while open, or while half-open with
    /// every probe slot taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() < until => return None,
            State::Open { .. } => {
                *state = State::HalfOpen {
                    in_flight: 1,
                    successes: 0,
                };
                self.publish(BreakerStateValue::HalfOpen);
                true
            }
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                if in_flight >= self.config.half_open_probes {
                    return None;
                }
                *state = State::HalfOpen {
                    in_flight: in_flight + 1,
                    successes,
                };
                true
            }
        };
        Some(Permit {
            breaker: Arc::clone(self),
            probe,
            reported: false,
        })
    }

    /// Whether a request would be let through now, without taking a slot.
    pub fn is_available(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until } => Instant::now() >= until,
            State::HalfOpen { in_flight, .. } => in_flight < self.config.half_open_probes,
        }
    }

    /// The current state, for the admin API.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let state = *self.lock();
        let (name, failures, reopens_in_ms) = match state {
            State::Closed { failures } => ("closed", failures, None),
            State::Open { until } => {
                let left = until.saturating_duration_since(Instant::now());
                (
                    "open",
                    0,
                    Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
                )
            }
            State::HalfOpen { .. } => ("half_open", 0, None),
        };
        BreakerSnapshot {
            deployment: self.deployment.clone(),
            state: name,
            consecutive_failures: failures,
            reopens_in_ms,
        }
    }

    /// Counts a failure noticed after the attempt was reported a success,
    /// such as a stream that broke off mid-way.
    pub fn record_late_failure(&self) {
        self.record(false, false);
    }

    /// Forces the breaker closed (admin reset).
    pub fn reset(&self) {
        *self.lock() = State::Closed { failures: 0 };
        self.publish(BreakerStateValue::Closed);
    }

    fn record(&self, probe: bool, ok: bool) {
        let mut state = self.lock();
        let next = match (*state, ok) {
            (State::Closed { .. }, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false)
                if failures + 1 >= self.config.failure_threshold =>
            {
                self.open()
            }
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            (
                State::HalfOpen {
                    in_flight,
                    successes,
                },
                true,
            ) if probe => {
                if successes + 1 >= self.config.success_threshold {
                    self.publish(BreakerStateValue::Closed);
                    tracing::info!(deployment = %self.deployment, "Circuit breaker closed");
                    State::Closed { failures: 0 }
                } else {
                    State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        successes: successes + 1,
                    }
                }
            }
            (State::HalfOpen { .. }, false) if probe => self.open(),
            // A request admitted before the breaker changed state reports
            // late; its outcome says nothing about the deployment now.
            (other, _) => other,
        };
        *state = next;
    }

    fn release_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen {
            in_flight,
            successes,
        } = *state
        {
            *state = State::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                successes,
            };
        }
    }

    fn open(&self) -> State {
        self.publish(BreakerStateValue::Open);
        self.metrics
            .breaker_trips
            .get_or_create(&keel_telemetry::metrics::BreakerLabels {
                deployment: self.deployment.clone(),
            })
            .inc();
        tracing::warn!(
            deployment = %self.deployment,
            open_for_ms = self.config.open_for.as_millis() as u64,
            "Circuit breaker opened"
        );
        State::Open {
            until: Instant::now() + self.config.open_for,
        }
    }

    fn publish(&self, value: BreakerStateValue) {
        self.metrics.set_breaker_state(&self.deployment, value);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value updated in one assignment; a panic
        // elsewhere cannot leave it half-written, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Permit {
    /// The attempt succeeded.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, true);
    }

    /// The attempt failed in a way that counts against the deployment.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // An attempt abandoned without a verdict (the client went away, or
        // the failure was the caller's) frees its probe slot and counts as
        // neither success nor failure.
        if !self.reported && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker(threshold: u32) -> Arc<Breaker> {
        let config = BreakerConfig {
            failure_threshold: threshold,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
            success_threshold: 2,
        };
        Arc::new(Breaker::new("d", config, Metrics::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = breaker(3);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.snapshot().state, "closed");
        b.try_acquire().unwrap().failure();
        assert_eq!(b.snapshot().state, "open");
        assert!(b.try_acquire().is_none());
        assert!(!b.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_limited_probes_then_closes() {
        let b = breaker(1);
        b.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().unwrap();
        assert_eq!(b.snapshot().state, "half_open");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        probe.success();
        b.try_acquire().unwrap().success();
        assert_eq!(b.snapshot().state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = breaker(1);
        b.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().unwrap().failure();
        let snap = b.snapshot();
        assert_eq!(snap.state, "open");
        assert_eq!(snap.reopens_in_ms, Some(10_000));
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_frees_its_slot() {
        let b = breaker(1);
        b.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_state_as_a_metric() {
        let metrics = Metrics::new();
        let b = Arc::new(Breaker::new(
            "dep-x",
            BreakerConfig::default(),
            metrics.clone(),
        ));
        for _ in 0..5 {
            b.try_acquire().unwrap().failure();
        }
        let text = metrics.render();
        assert!(
            text.contains("keel_breaker_state{deployment=\"dep-x\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("keel_breaker_trips_total{deployment=\"dep-x\"} 1"),
            "{text}"
        );
    }
}
