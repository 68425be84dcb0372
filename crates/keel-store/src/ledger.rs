//! The usage ledger's batching writer: the gateway hands rows over without
//! waiting on the database, and one task writes them in batches.
//!
//! Intake is a bounded channel. When the database is slow or down the writer
//! keeps its current batch and retries with capped exponential backoff; it
//! stops taking rows meanwhile, so the channel fills and callers of
//! [`Ledger::record`] wait (back-pressure) instead of memory growing or rows
//! being dropped. Inserts are idempotent on `request_id`, which makes
//! retrying a batch whose outcome is unknown safe.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::backend::Store;
use crate::error::StoreError;
use crate::usage::UsageRecord;

/// The first retry waits this long after a failed write…
const RETRY_INITIAL: Duration = Duration::from_millis(100);

/// …and each later one twice as long, up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How the ledger batches and buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Rows that may wait in the channel before [`Ledger::record`] waits
    /// (at least 1).
    pub capacity: usize,
    /// The most rows written in one transaction (at least 1).
    pub max_batch: usize,
    /// The longest a row waits for its batch to fill before it is written.
    pub flush_interval: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            capacity: 10_000,
            max_batch: 500,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// The ledger was shut down, so the row was not accepted. The row is handed
/// back so the caller can still account for it.
#[derive(Debug, thiserror::Error)]
#[error("usage ledger is shut down and refused the row: record usage before shutting down")]
pub struct LedgerClosed {
    /// The refused row.
    pub row: Box<UsageRecord>,
}

/// The handle the gateway records usage through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    intake: mpsc::Sender<UsageRecord>,
    counters: Arc<Counters>,
}

/// The writer task, returned by [`Ledger::spawn`]; keep it to shut down
/// cleanly.
#[derive(Debug)]
pub struct LedgerTask {
    stop: oneshot::Sender<()>,
    writer: JoinHandle<()>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    written: AtomicU64,
    failures: AtomicU64,
}

/// Where the writer puts batches: the store, or a fake in unit tests.
trait Sink: Send + Sync + 'static {
    fn write<'a>(
        &'a self,
        rows: &'a [UsageRecord],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;
}

impl Sink for Store {
    fn write<'a>(
        &'a self,
        rows: &'a [UsageRecord],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.insert_usage(rows)
    }
}

impl Ledger {
    /// Starts the writer task. Call it from within a tokio runtime (the
    /// task is spawned on the current one).
    pub fn spawn(store: Store, config: LedgerConfig) -> (Ledger, LedgerTask) {
        spawn_with(store, config)
    }

    /// Hands a row to the writer. Waits only when the buffer is full
    /// (back-pressure); never drops the row.
    pub async fn record(&self, row: UsageRecord) -> Result<(), LedgerClosed> {
        match self.intake.send(row).await {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError(row)) => Err(LedgerClosed { row: Box::new(row) }),
        }
    }

    /// Rows accepted but not yet written, for a metric or readiness check.
    pub fn pending(&self) -> usize {
        let accepted = self.counters.accepted.load(Ordering::Relaxed);
        let written = self.counters.written.load(Ordering::Relaxed);
        // The writer may count a row before `record` does; never underflow.
        usize::try_from(accepted.saturating_sub(written)).unwrap_or(usize::MAX)
    }

    /// Rows written to the store so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Failed write attempts so far (each was retried).
    pub fn write_failures(&self) -> u64 {
        self.counters.failures.load(Ordering::Relaxed)
    }
}

impl LedgerTask {
    /// Closes intake, writes every accepted row (retrying as long as the
    /// store keeps failing), then returns. Later [`Ledger::record`] calls,
    /// and ones waiting for room, fail with [`LedgerClosed`].
    ///
    /// Bound it with `tokio::time::timeout` if the store may never recover;
    /// rows still unwritten then are reported by [`Ledger::pending`].
    pub async fn shutdown(self) {
        // An error means the writer already stopped (every handle dropped).
        let _ = self.stop.send(());
        if let Err(e) = self.writer.await {
            error!(error = %e, "Usage ledger writer failed; unwritten rows were lost");
        }
        info!(
            written = self.counters.written.load(Ordering::Relaxed),
            write_failures = self.counters.failures.load(Ordering::Relaxed),
            "Usage ledger stopped"
        );
    }
}

fn spawn_with<S: Sink>(sink: S, config: LedgerConfig) -> (Ledger, LedgerTask) {
    // A zero-sized channel or batch would never make progress.
    let config = LedgerConfig {
        capacity: config.capacity.max(1),
        max_batch: config.max_batch.max(1),
        ..config
    };
    info!(
        capacity = config.capacity,
        max_batch = config.max_batch,
        flush_interval_ms = u64::try_from(config.flush_interval.as_millis()).unwrap_or(u64::MAX),
        "Usage ledger started"
    );

    let (intake, rows) = mpsc::channel(config.capacity);
    let (stop, stop_rx) = oneshot::channel();
    let counters = Arc::new(Counters::default());
    let writer = Writer {
        sink,
        rows,
        config,
        stop: stop_rx,
        stop_seen: false,
        counters: Arc::clone(&counters),
    };
    let writer = tokio::spawn(writer.run());

    let ledger = Ledger {
        intake,
        counters: Arc::clone(&counters),
    };
    (
        ledger,
        LedgerTask {
            stop,
            writer,
            counters,
        },
    )
}

/// The task that drains the channel into the sink.
struct Writer<S> {
    sink: S,
    rows: mpsc::Receiver<UsageRecord>,
    config: LedgerConfig,
    stop: oneshot::Receiver<()>,
    /// Whether `stop` has resolved; a oneshot must not be polled again.
    stop_seen: bool,
    counters: Arc<Counters>,
}

impl<S: Sink> Writer<S> {
    async fn run(mut self) {
        while let Some(batch) = self.next_batch().await {
            self.write(batch).await;
        }
    }

    /// Waits for rows and returns up to `max_batch` of them, or `None` once
    /// intake is closed and empty.
    async fn next_batch(&mut self) -> Option<Vec<UsageRecord>> {
        let max = self.config.max_batch;
        let mut batch = Vec::with_capacity(max);

        // Wait for the first row; the flush interval starts with it.
        loop {
            tokio::select! {
                received = self.rows.recv_many(&mut batch, max) => {
                    if received == 0 {
                        return None;
                    }
                    break;
                }
                stop = &mut self.stop, if !self.stop_seen => self.on_stop(stop),
            }
        }

        // Fill the batch until it is full or the interval is up. Once intake
        // is closed `recv_many` never waits, so shutdown drains at once.
        let deadline = Instant::now() + self.config.flush_interval;
        while batch.len() < max {
            let room = max - batch.len();
            tokio::select! {
                received = self.rows.recv_many(&mut batch, room) => {
                    if received == 0 {
                        break;
                    }
                }
                () = sleep_until(deadline) => break,
                stop = &mut self.stop, if !self.stop_seen => self.on_stop(stop),
            }
        }
        Some(batch)
    }

    /// Writes one batch, retrying until it succeeds. Holding the batch
    /// instead of taking more rows is what turns a failing store into
    /// back-pressure.
    async fn write(&mut self, batch: Vec<UsageRecord>) {
        let rows = batch.len();
        let mut backoff = RETRY_INITIAL;
        let mut attempt: u32 = 1;
        loop {
            match self.sink.write(&batch).await {
                Ok(()) => {
                    self.counters
                        .written
                        .fetch_add(rows as u64, Ordering::Relaxed);
                    debug!(rows, attempt, "Usage batch written");
                    return;
                }
                Err(e) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    let retry_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                    warn!(rows, attempt, retry_ms, error = %e, "Usage write failed; retrying");
                }
            }
            self.pause(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
            attempt = attempt.saturating_add(1);
        }
    }

    /// Sleeps between retries while still noticing a shutdown request, so
    /// callers waiting for room learn promptly that intake is closed.
    async fn pause(&mut self, duration: Duration) {
        let wake = Instant::now() + duration;
        loop {
            tokio::select! {
                () = sleep_until(wake) => return,
                stop = &mut self.stop, if !self.stop_seen => self.on_stop(stop),
            }
        }
    }

    /// Closes intake when shutdown is requested. If the task handle was
    /// dropped instead, the writer runs on until every [`Ledger`] is gone.
    fn on_stop(&mut self, stop: Result<(), oneshot::error::RecvError>) {
        self.stop_seen = true;
        if stop.is_ok() {
            self.rows.close();
            debug!("Usage ledger intake closed; flushing");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A sink that fails a set number of times, then records batches.
    #[derive(Clone, Default)]
    struct FakeSink {
        state: Arc<Mutex<FakeState>>,
    }

    #[derive(Default)]
    struct FakeState {
        failures_left: usize,
        attempts: Vec<Instant>,
        batches: Vec<Vec<String>>,
    }

    impl FakeSink {
        fn failing(times: usize) -> Self {
            let sink = FakeSink::default();
            sink.state.lock().unwrap().failures_left = times;
            sink
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.state.lock().unwrap().batches.clone()
        }

        fn attempts(&self) -> Vec<Instant> {
            self.state.lock().unwrap().attempts.clone()
        }
    }

    impl Sink for FakeSink {
        async fn write(&self, rows: &[UsageRecord]) -> Result<(), StoreError> {
            let mut state = self.state.lock().unwrap();
            state.attempts.push(Instant::now());
            if state.failures_left > 0 {
                state.failures_left -= 1;
                return Err(StoreError::Database {
                    op: "test",
                    source: sqlx::Error::PoolClosed,
                });
            }
            state
                .batches
                .push(rows.iter().map(|r| r.request_id.clone()).collect());
            Ok(())
        }
    }

    fn row(id: usize) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{id}"),
            ts_ms: 0,
            tenant_id: "t".into(),
            user_id: None,
            key_id: None,
            session: None,
            workflow: None,
            model: "m".into(),
            deployment: None,
            provider: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_micros: 1,
            latency_us: 1,
            overhead_us: 1,
            ttft_us: None,
            status: 200,
            error_code: None,
            stream: false,
            attempts: 1,
            cache: None,
            saved_prompt_tokens: 0,
            saved_completion_tokens: 0,
            saved_cost_micros: 0,
        }
    }

    fn config(capacity: usize, max_batch: usize) -> LedgerConfig {
        LedgerConfig {
            capacity,
            max_batch,
            flush_interval: Duration::from_millis(200),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_a_partial_batch_after_the_interval() {
        let sink = FakeSink::default();
        let start = Instant::now();
        let (ledger, task) = spawn_with(sink.clone(), config(100, 10));

        for id in 0..3 {
            ledger.record(row(id)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(199)).await;
        assert!(sink.batches().is_empty());
        assert_eq!(ledger.pending(), 3);

        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(sink.batches(), vec![vec!["req-0", "req-1", "req-2"]]);
        assert_eq!(sink.attempts()[0] - start, Duration::from_millis(200));
        assert_eq!((ledger.pending(), ledger.written()), (0, 3));
        task.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn splits_rows_into_batches_of_at_most_max_batch() {
        let sink = FakeSink::default();
        let (ledger, task) = spawn_with(sink.clone(), config(100, 2));
        for id in 0..5 {
            ledger.record(row(id)).await.unwrap();
        }
        task.shutdown().await;

        let sizes: Vec<usize> = sink.batches().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(ledger.written(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_capped_exponential_backoff() {
        let sink = FakeSink::failing(8);
        let (ledger, task) = spawn_with(sink.clone(), config(100, 10));
        ledger.record(row(1)).await.unwrap();
        task.shutdown().await;

        let attempts = sink.attempts();
        let gaps_ms: Vec<u128> = attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps_ms, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(sink.batches(), vec![vec!["req-1"]]);
        assert_eq!((ledger.written(), ledger.write_failures()), (1, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn record_waits_for_room_while_the_store_fails() {
        let sink = FakeSink::failing(3);
        let (ledger, task) = spawn_with(sink.clone(), config(1, 1));

        // The writer takes row 0 and starts retrying; row 1 fills the
        // channel, so row 2 must wait.
        ledger.record(row(0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        ledger.record(row(1)).await.unwrap();
        let mut third = std::pin::pin!(ledger.record(row(2)));
        let early = std::future::poll_fn(|cx| std::task::Poll::Ready(third.as_mut().poll(cx)));
        assert!(early.await.is_pending());
        assert_eq!(ledger.pending(), 2);

        third.await.unwrap();
        task.shutdown().await;
        assert_eq!(
            sink.batches(),
            vec![vec!["req-0"], vec!["req-1"], vec!["req-2"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_rows_after_shutdown_and_hands_them_back() {
        let sink = FakeSink::default();
        let (ledger, task) = spawn_with(sink, LedgerConfig::default());
        task.shutdown().await;

        let refused = ledger.record(row(7)).await.unwrap_err();
        assert_eq!(refused.row.request_id, "req-7");
        assert_eq!(ledger.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_capacity_and_batch_are_raised_to_one() {
        let sink = FakeSink::default();
        let (ledger, task) = spawn_with(sink.clone(), config(0, 0));
        ledger.record(row(1)).await.unwrap();
        task.shutdown().await;
        assert_eq!(sink.batches(), vec![vec!["req-1"]]);
    }
}
