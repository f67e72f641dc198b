//! Group commit of audit records: concurrent queries hand their records to
//! one writer thread, which appends everything waiting in one transaction
//! and only then tells each query its record is durable.
//!
//! Every commit costs WAL writes and an fsync, and on a busy server the
//! number of commits, not the inserts, is most of what auditing costs
//! (with `synchronous=NORMAL` and no batching it cost as much as with
//! FULL). So, like PostgreSQL's
//! `commit_delay` / `commit_siblings`, the writer holds a batch open for
//! more records while the CPUs have other statements to run anyway: only
//! while more than twice as many statements are still running as the
//! machine has cores (each running statement holds a [`PendingRecord`]),
//! and never longer than [`COMMIT_DELAY`]. A lone statement, or a few on
//! an idle machine, is committed at once. Twice the cores, not the cores:
//! a running statement is not always on a CPU (it reads files, waits for
//! its client), and holding while only `cores` ran left CPUs idle (paired
//! runs of `benches/audit_overhead.rs`: 10.4-14.4 % against 5.9-6.2 %).
//!
//! Optionally (`audit_commit_delay_ms`, off by default) a batch is also held
//! while fewer statements run, as long as at least one is still running,
//! for at most that delay: fewer commits (less CPU per query) for more
//! latency under moderate load. A lone statement is never held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Result, VeilError};
use crate::metrics::AuditCommitMetrics;
use crate::store::{AuditEntry, CatalogStore};

/// Most records appended in one transaction.
const MAX_BATCH: usize = 512;

/// Longest a batch is held open for more records.
pub const COMMIT_DELAY: Duration = Duration::from_millis(2);

type Waiter = Option<oneshot::Sender<Result<()>>>;

/// A record on its way to the writer, with the statement's pending mark
/// (released by the writer as it takes the record, so a batch held open
/// for the statement sees its record and its release at once).
type Queued = (AuditEntry, Waiter, Option<PendingRecord>);

/// Takes a queued record, releasing its statement's pending mark.
fn taken((entry, waiter, handed): Queued) -> (AuditEntry, Waiter) {
    drop(handed);
    (entry, waiter)
}

/// Hands audit records to the writer thread.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Queued>,
    pending: Arc<AtomicUsize>,
}

/// A record a running statement will hand over later; while enough are
/// outstanding, the writer holds its batch open for them (dropping it says
/// the record was handed over or will never come).
#[derive(Debug)]
pub struct PendingRecord(Arc<AtomicUsize>);

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When to stop gathering a batch.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Keep the batch open only while more statements than this still run.
    running_above: usize,
    /// And no longer than this.
    at_most: Duration,
    /// While fewer run (but at least one), hold for at most this (zero: not at all).
    few_running: Duration,
}

/// Gathers one batch: `first`, everything already queued, and what arrives
/// while `hold` allows.
fn gather(
    rx: &mpsc::Receiver<Queued>,
    first: Queued,
    pending: &AtomicUsize,
    hold: Hold,
) -> Vec<(AuditEntry, Waiter)> {
    let mut batch = vec![taken(first)];
    let started = Instant::now();
    let (busy, few) = (started + hold.at_most, started + hold.few_running);
    while batch.len() < MAX_BATCH {
        if let Ok(next) = rx.try_recv() {
            batch.push(taken(next));
            continue;
        }
        let deadline = match pending.load(Ordering::Acquire) {
            running if running > hold.running_above => busy,
            0 => break,
            _ => few,
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            break;
        }
        match rx.recv_timeout(wait) {
            Ok(next) => batch.push(taken(next)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    batch
}

impl AuditWriter {
    /// Starts the writer thread for `store`; it ends when every handle is
    /// dropped. `few_running`: how long a batch may also be held while only
    /// a few statements run (zero: never); `metrics` counts the commits.
    pub fn start(
        store: Arc<dyn CatalogStore>,
        few_running: Duration,
        metrics: AuditCommitMetrics,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Queued>();
        let pending = Arc::new(AtomicUsize::new(0));
        let others = Arc::clone(&pending);
        let hold = Hold {
            running_above: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            at_most: COMMIT_DELAY,
            few_running: few_running.min(COMMIT_DELAY),
        };
        std::thread::Builder::new()
            .name("veil-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let batch = gather(&rx, first, &others, hold);
                    let (entries, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let started = Instant::now();
                    let result = store.audit_batch(&entries);
                    match &result {
                        Ok(()) => metrics.committed(entries.len(), started.elapsed()),
                        Err(e) => {
                            tracing::error!(records = entries.len(), "audit write failed: {e}")
                        }
                    }
                    for w in waiters.into_iter().flatten() {
                        let _ = w.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(VeilError::Internal(format!("audit write failed: {e}"))),
                        });
                    }
                }
            })
            .map_err(|e| VeilError::Internal(format!("cannot start the audit writer: {e}")))?;
        Ok(Self { tx, pending })
    }

    /// Notes that a statement started whose record will come later.
    pub fn pending(&self) -> PendingRecord {
        self.pending.fetch_add(1, Ordering::AcqRel);
        PendingRecord(Arc::clone(&self.pending))
    }

    /// How many running statements have yet to hand over their record.
    pub fn pending_records(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Appends a record and waits until it is durable. `handed` is the
    /// statement's pending mark, released by the writer as it takes the
    /// record (so a batch held open for it sees the record, and sees it
    /// released without waiting out its hold).
    pub async fn record(&self, entry: AuditEntry, handed: Option<PendingRecord>) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entry, Some(done), handed))
            .map_err(|_| VeilError::Internal("the audit writer has stopped".into()))?;
        wait.await
            .map_err(|_| VeilError::Internal("the audit writer has stopped".into()))?
    }

    /// Appends a record without waiting (used where nobody is left to
    /// answer, e.g. a client that dropped its stream).
    pub fn record_detached(&self, entry: AuditEntry) {
        if self.tx.send((entry, None, None)).is_err() {
            tracing::error!("audit writer has stopped; a record was lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> Queued {
        let e = AuditEntry {
            action: action.into(),
            ..Default::default()
        };
        (e, None, None)
    }

    /// Hold a batch open while more than one statement runs, for up to
    /// `secs`.
    fn hold(secs: u64) -> Hold {
        Hold {
            running_above: 1,
            at_most: Duration::from_secs(secs),
            few_running: Duration::ZERO,
        }
    }

    #[test]
    fn a_record_with_few_statements_running_is_committed_at_once() {
        let (tx, rx) = mpsc::channel();
        tx.send(entry("Queued")).unwrap();
        // One statement still runs, not more than `running_above`: no wait.
        let pending = AtomicUsize::new(1);
        let started = Instant::now();
        let batch = gather(&rx, entry("Query"), &pending, hold(30));
        // What was queued joins; the 30 s allowed were not sat out.
        assert_eq!(batch.len(), 2);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_batch_held_for_silent_statements_closes_at_the_deadline() {
        let (tx, rx) = mpsc::channel::<Queued>();
        let pending = AtomicUsize::new(5);
        let limit = Hold {
            running_above: 1,
            at_most: Duration::from_millis(50),
            few_running: Duration::ZERO,
        };
        let started = Instant::now();
        let batch = gather(&rx, entry("Query"), &pending, limit);
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(tx);
    }

    #[test]
    fn a_batch_held_open_takes_the_records_of_statements_that_finish() {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = AuditWriter {
            tx,
            pending: Arc::clone(&pending),
        };
        // Three statements run; two finish and hand their records over
        // (with their marks, as `record` does).
        let marks: Vec<PendingRecord> = (0..3).map(|_| writer.pending()).collect();
        assert_eq!(writer.pending_records(), 3);
        let sender = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for (i, mark) in marks.into_iter().enumerate() {
                    std::thread::sleep(Duration::from_millis(20));
                    let (e, _, _) = entry(&format!("Q{i}"));
                    writer.tx.send((e, None, Some(mark))).unwrap();
                }
            })
        };
        let started = Instant::now();
        let batch = gather(&rx, entry("First"), &pending, hold(30));
        sender.join().unwrap();
        // Held while two or more ran: the first two records joined, and
        // the batch closed when only one statement was left, long before
        // the 30 s allowed.
        let actions: Vec<_> = batch.iter().map(|(e, _)| e.action.as_str()).collect();
        assert!(actions.starts_with(&["First", "Q0", "Q1"]), "{actions:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // Nothing lost: what the batch did not take is still queued.
        assert_eq!(batch.len() + rx.try_iter().count(), 4);
        assert_eq!(writer.pending_records(), 0);
    }

    #[test]
    fn with_a_low_load_delay_a_batch_waits_for_the_few_still_running() {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(1));
        let mark = PendingRecord(Arc::clone(&pending));
        let low = Hold {
            running_above: 4,
            at_most: Duration::from_secs(30),
            few_running: Duration::from_secs(30),
        };
        // One statement runs (not above 4): held for it; it hands its
        // record over and the batch closes as nothing runs any more.
        let sender = {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let (e, _, _) = entry("Late");
                tx.send((e, None, Some(mark))).unwrap();
                tx
            })
        };
        let started = Instant::now();
        let batch = gather(&rx, entry("First"), &pending, low);
        let tx = sender.join().unwrap();
        let actions: Vec<_> = batch.iter().map(|(e, _)| e.action.as_str()).collect();
        assert_eq!(actions, ["First", "Late"]);
        assert!(started.elapsed() < Duration::from_secs(10));
        // With nothing running, the same hold commits at once.
        let started = Instant::now();
        assert_eq!(gather(&rx, entry("Alone"), &pending, low).len(), 1);
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(tx);
    }
}
