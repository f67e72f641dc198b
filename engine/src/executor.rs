//! Statements execute on a runtime of their own.
//!
//! The server's runtime answers the network: it accepts connections,
//! authenticates, answers metadata and enforces deadlines. Planning
//! (`Session::planning`), queries and workspace writes run on the
//! engine's [`Executor`], a second Tokio runtime with one worker per core
//! (DataFusion's advice for separating CPU-bound work from I/O); results
//! reach the server over a channel of a few batches. A statement that keeps its threads busy (one long poll of a
//! join: `interrupt.rs`) then slows other statements down but never stops
//! the server from accepting a connection, answering its health check,
//! cancelling at the deadline or noticing that a client hung up. A
//! statement whose output is dropped is aborted at its next `.await` and
//! its [`Interrupt`] set, which ends a long poll at its next join
//! condition. A panic inside a statement becomes its error, never a
//! silently short answer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use datafusion::common::runtime::SpawnedTask;
use datafusion::common::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use futures::{FutureExt, StreamExt};
use tokio::runtime::{Handle, Runtime};

use crate::error::{Result, VeilError};
use crate::interrupt::{Interrupt, StopOnDrop};
use crate::turns::{Turn, Turns};

/// How many tasks a worker polls between looks at the global queue.
const GLOBAL_QUEUE_INTERVAL: u32 = 2;

/// Batches a statement may run ahead of its reader.
const AHEAD: usize = 2;

/// The runtime statements execute on; shut down (without waiting for
/// running statements) when dropped.
#[derive(Debug)]
pub(crate) struct Executor {
    runtime: Option<Runtime>,
    handle: Handle,
    /// Its statements, light and heavy (`turns.rs`).
    turns: Arc<Turns>,
}

impl Executor {
    /// A runtime of `threads` workers of `stack` bytes each.
    pub fn new(threads: usize, stack: usize) -> Result<Self> {
        crate::decoder_panic::watch();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            // New statements (and tasks woken from the server's threads)
            // arrive through the runtime's global queue. Left to tune
            // itself, a worker looks there again only after a number of
            // polls tuned to past poll times: after a run of short polls,
            // dozens of the one-second polls of a join that yields between
            // probe batches (timeslice.rs), so a new statement waited 50 s
            // behind two such joins. Every other poll, it looks.
            .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
            .thread_name("veil-exec")
            .thread_stack_size(stack)
            .enable_all()
            .build()
            .map_err(|e| VeilError::Internal(format!("cannot start the executor: {e}")))?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
            turns: Arc::new(Turns::new(threads.max(1))),
        })
    }

    /// Starts `plan` on the executor; its batches come back through the
    /// returned stream, which keeps the executor running until it ends
    /// (an executor shut down under a reader would look like the end of
    /// its answer). Dropping the stream aborts the statement and sets
    /// `interrupt`. The statement has a [`Turn`] among the executor's
    /// statements, in `task`'s extensions for its joins (`turns.rs`).
    pub fn execute(
        self: &Arc<Self>,
        plan: Arc<dyn ExecutionPlan>,
        task: TaskContext,
        interrupt: Arc<Interrupt>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = plan.schema();
        let turn = self.turn();
        let config = task
            .session_config()
            .clone()
            .with_extension(Arc::clone(&turn));
        let task = Arc::new(task.with_session_config(config));
        // Light from now on, while it waits for a thread too.
        let running = turn.run();
        // Operators spawn their tasks on the runtime they are started in.
        let _enter = self.handle.enter();
        let mut stream = execute_stream(plan, task)?;
        let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
        let drain = async move {
            // The plan is dropped (its tasks told to stop, its memory
            // released as they do) before the reader sees its end or
            // its error.
            let drained = AssertUnwindSafe(async {
                let _running = running;
                loop {
                    match stream.next().await {
                        Some(Ok(batch)) => {
                            // Waiting for the reader is not running.
                            turn.running(false);
                            if tx.send(Ok(batch)).await.is_err() {
                                return; // the reader is gone
                            }
                            turn.running(true);
                        }
                        Some(Err(e)) => {
                            drop(stream);
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        None => {
                            drop(stream);
                            return;
                        }
                    }
                }
            })
            .catch_unwind()
            .await;
            if let Err(panic) = drained {
                let error = panic_error(panic_message(panic.as_ref()));
                let _ = tx
                    .send(Err(DataFusionError::External(Box::new(error))))
                    .await;
            }
        };
        let guard = (
            SpawnedTask::spawn(drain),
            StopOnDrop(interrupt),
            Arc::clone(self),
        );
        let batches = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|item| (item, (rx, guard)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// A new statement's place among the executor's statements
    /// (`turns.rs`); not running until [`Turn::run`].
    pub fn turn(&self) -> Arc<Turn> {
        Arc::new(Turn::new(Arc::clone(&self.turns)))
    }

    /// Runs `work` (planning, a workspace write) on the executor, running
    /// as `turn` (`turns.rs`) from now until it ends. Dropping the returned
    /// future aborts it and sets `interrupt`.
    pub async fn run<T, F>(&self, work: F, interrupt: Arc<Interrupt>, turn: Arc<Turn>) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let _stop = StopOnDrop(interrupt);
        let running = turn.run();
        let work = async move {
            let _running = running;
            work.await
        };
        let task = {
            let _enter = self.handle.enter();
            SpawnedTask::spawn(AssertUnwindSafe(work).catch_unwind())
        };
        match task.join().await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(panic_error(panic_message(panic.as_ref()))),
            Err(e) => Err(VeilError::Internal(format!("the statement failed: {e}"))),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Awaits `work`; a panic inside it becomes `Err` with the panic's text
/// (for work whose panic is a known input's fault: a corrupt Parquet
/// footer).
pub(crate) async fn unless_panic<F: Future>(work: F) -> std::result::Result<F::Output, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()).to_string())
}

/// The error of a statement that panicked with `message`: the Parquet
/// decoder's on a damaged page (`decoder_panic.rs`), which
/// `catalog::explain_read_error` tells as its table's unreadable data;
/// else internal.
fn panic_error(message: &str) -> VeilError {
    if crate::decoder_panic::is_decoder_panic(message) {
        let panic = crate::decoder_panic::DecoderPanic(message.to_string());
        VeilError::DataFusion(Box::new(DataFusionError::External(Box::new(panic))))
    } else {
        VeilError::Internal(format!("the statement failed: {message}"))
    }
}

/// The text a panic carried ("a panic" when it carried none).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use futures::TryStreamExt;

    use crate::test_sql::physical_plan as plan;

    fn executor() -> Arc<Executor> {
        Arc::new(Executor::new(1, 2 << 20).unwrap())
    }

    fn task(ctx: &SessionContext) -> TaskContext {
        TaskContext::from(&ctx.state())
    }

    /// Rows of a stream read to its end.
    async fn rows(stream: SendableRecordBatchStream) -> usize {
        let batches: Vec<_> = stream.try_collect().await.unwrap();
        batches.iter().map(|b| b.num_rows()).sum()
    }

    #[tokio::test]
    async fn a_plan_streams_its_batches_back() {
        let exec = executor();
        let ctx = SessionContext::new();
        let plan = plan(&ctx, "SELECT value FROM generate_series(1, 100000)").await;
        let stream = exec.execute(plan, task(&ctx), Arc::default()).unwrap();
        assert_eq!(rows(stream).await, 100000);
    }

    #[tokio::test]
    async fn an_open_stream_keeps_the_executor_running() {
        let exec = executor();
        let ctx = SessionContext::new();
        let plan = plan(&ctx, "SELECT value FROM generate_series(1, 100000)").await;
        let stream = exec.execute(plan, task(&ctx), Arc::default()).unwrap();
        drop(exec); // the engine went away
        assert_eq!(rows(stream).await, 100000);
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_statement() {
        let exec = executor();
        let ctx = SessionContext::new();
        let plan = plan(&ctx, "SELECT count(*) FROM generate_series(1, 100000000)").await;
        let interrupt = Arc::new(Interrupt::default());
        let stream = exec
            .execute(plan, task(&ctx), Arc::clone(&interrupt))
            .unwrap();
        assert!(!interrupt.is_stopped());
        drop(stream);
        assert!(interrupt.is_stopped());
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_short_answer() {
        let exec = executor();
        let ctx = SessionContext::new();
        let boom = datafusion::logical_expr::create_udf(
            "boom",
            vec![datafusion::arrow::datatypes::DataType::Int64],
            datafusion::arrow::datatypes::DataType::Int64,
            datafusion::logical_expr::Volatility::Volatile,
            Arc::new(|_: &[datafusion::logical_expr::ColumnarValue]| panic!("boom")),
        );
        ctx.register_udf(boom);
        let plan = plan(&ctx, "SELECT boom(value) FROM generate_series(1, 10)").await;
        let stream = exec.execute(plan, task(&ctx), Arc::default()).unwrap();
        let err = stream.try_collect::<Vec<_>>().await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");

        let fail = || -> Result<()> { panic!("boom") };
        let err = exec
            .run(async move { fail() }, Arc::default(), exec.turn())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let answer = exec
            .run(async { Ok(42) }, Arc::default(), exec.turn())
            .await
            .unwrap();
        assert_eq!(answer, 42);
    }
}
