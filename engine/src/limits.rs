//! Resource limits: one memory pool shared by every query, each query held
//! to its own share of it, a cap on concurrent statements per server and per
//! user, and a statement timeout.
//!
//! Memory: every statement gets a [`QueryMemoryPool`], a DataFusion
//! [`FairSpillPool`] of the per-query share (so spilling operators divide the
//! share fairly and spill to disk when it runs out) that also charges every
//! byte to the server-wide [`SharedMemory`]. A query that needs more than
//! its share, or more than the server has left, fails with a
//! `ResourcesExhausted` error naming the limit; the other queries go on.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Result, VeilError};

/// The limits of one engine (configurable; see README "Resource limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes all running queries may hold together.
    pub memory: usize,
    /// Bytes one query may hold (spilling operators spill past it).
    pub query_memory: usize,
    /// Statements running at once on the server; more wait in a queue.
    pub max_queries: usize,
    /// Statements one user runs at once; more wait in a queue.
    pub max_queries_per_user: usize,
    /// Longest a statement may run, planning to its last batch.
    pub query_timeout: Duration,
    /// Longest a statement waits for a free slot before it is refused.
    pub queue_timeout: Duration,
    /// Bytes all statements may spill to disk together (the operating
    /// system's temporary directory); a spill past it fails its statement.
    pub spill: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 4 << 30,
            query_memory: 1 << 30,
            max_queries: 32,
            max_queries_per_user: 8,
            query_timeout: Duration::from_secs(3600),
            queue_timeout: Duration::from_secs(60),
            spill: 16 << 30,
        }
    }
}

/// Formats a byte count for messages ("64.0 MiB").
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The server-wide memory budget every query's pool charges.
#[derive(Debug)]
pub struct SharedMemory {
    used: AtomicUsize,
    limit: usize,
}

impl SharedMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held by all queries now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn reserve(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: usize) {
        // Never underflow, even if DataFusion shrinks more than it grew.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

/// One query's memory pool: its share, charged to the shared budget.
#[derive(Debug)]
pub struct QueryMemoryPool {
    inner: TrackConsumersPool<FairSpillPool>,
    shared: Arc<SharedMemory>,
    share: usize,
}

impl QueryMemoryPool {
    /// A pool of `share` bytes drawing on `shared`.
    pub fn new(shared: Arc<SharedMemory>, share: usize) -> Self {
        let top = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: TrackConsumersPool::new(FairSpillPool::new(share), top),
            shared,
            share,
        }
    }
}

impl std::fmt::Display for QueryMemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool: {} of a {} share reserved",
            human_bytes(self.inner.reserved()),
            human_bytes(self.share)
        )
    }
}

impl MemoryPool for QueryMemoryPool {
    fn name(&self) -> &str {
        "veil_query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.reserve(additional);
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.shared.release(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        if !self.shared.try_reserve(additional) {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the server's query memory ({}) is in use by other queries; \
                 {} more for {} does not fit, retry later",
                human_bytes(self.shared.limit),
                human_bytes(additional),
                reservation.consumer().name(),
            )));
        }
        self.inner.try_grow(reservation, additional).map_err(|e| {
            self.shared.release(additional);
            let detail = match e {
                DataFusionError::ResourcesExhausted(m) => m,
                other => other.to_string(),
            };
            DataFusionError::ResourcesExhausted(format!(
                "query memory limit of {} exceeded ({detail})",
                human_bytes(self.share)
            ))
        })
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.share)
    }
}

/// Admission control: slots for running statements, per server and per user.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    server: Arc<Semaphore>,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
    memory: Arc<SharedMemory>,
}

/// The slots one running statement holds; dropping it frees them.
#[derive(Debug)]
pub struct Slot {
    _server: OwnedSemaphorePermit,
    _user: OwnedSemaphorePermit,
}

impl Admission {
    /// Admission control for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            server: Arc::new(Semaphore::new(limits.max_queries.max(1))),
            users: Mutex::new(HashMap::new()),
            memory: Arc::new(SharedMemory::new(limits.memory)),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The shared memory budget.
    pub fn memory(&self) -> &Arc<SharedMemory> {
        &self.memory
    }

    /// A memory pool for one statement.
    pub fn query_pool(&self) -> Arc<dyn MemoryPool> {
        Arc::new(QueryMemoryPool::new(
            Arc::clone(&self.memory),
            self.limits.query_memory.min(self.limits.memory),
        ))
    }

    /// Waits (up to the queue timeout) for a slot for `user`'s statement.
    pub async fn admit(&self, user: &str) -> Result<Slot> {
        let per_user = {
            let mut users = self
                .users
                .lock()
                .map_err(|_| VeilError::Internal("admission lock poisoned".into()))?;
            Arc::clone(users.entry(user.to_string()).or_insert_with(|| {
                Arc::new(Semaphore::new(self.limits.max_queries_per_user.max(1)))
            }))
        };
        let wait = self.limits.queue_timeout;
        let user_slot = tokio::time::timeout(wait, per_user.acquire_owned())
            .await
            .map_err(|_| {
                VeilError::ResourceExhausted(format!(
                    "{user} already runs {} statements at once (the per-user limit); \
                     waited {wait:?} for one to finish",
                    self.limits.max_queries_per_user,
                ))
            })?
            .map_err(|_| VeilError::Internal("admission closed".into()))?;
        let server_slot = tokio::time::timeout(wait, Arc::clone(&self.server).acquire_owned())
            .await
            .map_err(|_| {
                VeilError::ResourceExhausted(format!(
                    "the server already runs {} statements at once (its limit); \
                     waited {wait:?} for one to finish",
                    self.limits.max_queries,
                ))
            })?
            .map_err(|_| VeilError::Internal("admission closed".into()))?;
        Ok(Slot {
            _server: server_slot,
            _user: user_slot,
        })
    }

    /// Statements running now.
    pub fn running(&self) -> usize {
        self.limits
            .max_queries
            .max(1)
            .saturating_sub(self.server.available_permits())
    }
}

/// The error of a statement that ran past its timeout.
pub fn timed_out(timeout: Duration) -> VeilError {
    VeilError::ResourceExhausted(format!(
        "statement cancelled: it ran longer than the query timeout ({timeout:?})"
    ))
}

/// Ends `stream` with a timeout error at `deadline`.
pub fn with_deadline(
    stream: SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    let limited = futures::stream::unfold(Some((stream, sleep)), move |state| async move {
        let (mut inner, mut sleep) = state?;
        tokio::select! {
            biased;
            item = inner.next() => item.map(|item| (item, Some((inner, sleep)))),
            _ = &mut sleep => Some((Err(DataFusionError::from(timed_out(timeout))), None)),
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, limited))
}

/// Keeps `guard` alive until `stream` ends or is dropped.
pub fn holding<G: Send + 'static>(
    stream: SendableRecordBatchStream,
    guard: G,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let held = stream.map(move |item| {
        let _ = &guard;
        item
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(shared: &Arc<SharedMemory>, share: usize) -> Arc<dyn MemoryPool> {
        Arc::new(QueryMemoryPool::new(Arc::clone(shared), share))
    }

    #[test]
    fn a_query_is_held_to_its_share_and_all_to_the_server_budget() {
        let shared = Arc::new(SharedMemory::new(100));
        let a = pool(&shared, 60);
        let b = pool(&shared, 60);
        let ra = MemoryConsumer::new("sort").register(&a);
        let rb = MemoryConsumer::new("join").register(&b);
        ra.try_grow(50).unwrap();
        let over = ra.try_grow(20).unwrap_err().to_string();
        assert!(
            over.contains("query memory limit of 60 B exceeded"),
            "{over}"
        );
        assert_eq!(shared.used(), 50, "a refused grow charges nothing");
        let full = rb.try_grow(55).unwrap_err().to_string();
        assert!(full.contains("in use by other queries"), "{full}");
        rb.try_grow(50).unwrap();
        assert_eq!(shared.used(), 100);
        drop(ra);
        assert_eq!(shared.used(), 50, "a finished query gives its memory back");
        rb.try_grow(10).unwrap();
        drop(rb);
        assert_eq!(shared.used(), 0);
    }

    #[tokio::test]
    async fn slots_are_limited_per_user_and_freed_on_drop() {
        let admission = Admission::new(Limits {
            max_queries: 2,
            max_queries_per_user: 1,
            queue_timeout: Duration::from_millis(50),
            ..Limits::default()
        });
        let a = admission.admit("alice").await.unwrap();
        let err = admission.admit("alice").await.unwrap_err().to_string();
        assert!(err.contains("alice already runs 1 statements"), "{err}");
        let b = admission.admit("bob").await.unwrap();
        assert_eq!(admission.running(), 2);
        let err = admission.admit("carol").await.unwrap_err().to_string();
        assert!(err.contains("the server already runs 2"), "{err}");
        drop(a);
        let _again = admission.admit("alice").await.unwrap();
        drop(b);
        assert_eq!(admission.running(), 1);
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
