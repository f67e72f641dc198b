//! Joins give up their thread when one poll runs long.
//!
//! A join that finds nothing to emit keeps working inside one poll: for
//! each probe batch DataFusion's nested-loop join walks every build row,
//! and the hash join every candidate pair, returning only once it has
//! output or needs the next probe batch, which its input usually has at
//! hand. A join whose condition rejects everything (`a.v + b.v < 0` over
//! 200,000 x 2,000,000 rows) then holds its executor thread for its whole
//! run: the interrupt (`interrupt.rs`) ends it at the deadline, but until
//! then every other statement waits for a thread.
//!
//! Two nodes around each nested-loop and hash join share a clock per
//! partition. The one above the join ([`Role::Clock`]) notes when the
//! join's current poll began. The one on its probe input ([`Role::Probe`]),
//! asked for the next batch once the join has held the thread for
//! [`POLL_LIMIT`] in this poll, first gives the thread up (a Tokio
//! `yield_now`, which lets every other ready task run first). A join that
//! emits as it goes returns from each poll long before that, so nothing
//! changes for it. A join that does not now holds its thread for one probe
//! batch at a time: for the nested-loop join, |build| x 8,192 evaluations
//! of its condition (about 2.8 s for 200,000 build rows in a release
//! build here), not the whole join. A join that held its thread for
//! 100 ms also makes its statement *heavy*: while statements that have
//! not run long are running, its joins run only on the executor's lanes
//! (all threads but one), each for one poll at a time, asleep until one is
//! free (`turns.rs`), so that those statements get a thread for more than
//! one turn per probe batch.
//!
//! Slicing probe batches thinner would shorten that, but the nested-loop
//! join pays about 2 us per build row and probe batch whatever the batch's
//! size: at 2,048-row slices a legitimate `count(*)` over 2,000 x 1,000,000
//! rows took 4.3 s against 2.9 s (release), so batches pass whole.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{internal_err, Result, Statistics};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{
    CardinalityEffect, ChildrenPropertiesMode, ReplaceChildrenOptions,
};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs,
};
use futures::{Stream, StreamExt};

use crate::turns::{self, Lane, Turn};

/// How long a join may hold its thread in one poll before its probe input
/// makes it give the thread up.
pub const POLL_LIMIT: Duration = Duration::from_millis(10);

/// When each partition's current poll of the join began, and the lane it
/// runs on in this poll (`turns.rs`).
#[derive(Debug)]
struct Clocks {
    base: Instant,
    /// Nanoseconds since `base` plus one; zero outside a poll.
    entered: Vec<AtomicU64>,
    /// Given back at the end of the poll: a lane is never held by a join
    /// that waits (for its input, or for its reader), which could be
    /// waiting for a join that waits for that lane.
    lanes: Vec<Mutex<Option<Lane>>>,
}

thread_local! {
    /// Joins on this thread's stack that run on a lane: a join nested in
    /// one (same task, same thread) needs no lane of its own, and waiting
    /// for one would wait for the join above it.
    static IN_LANE: Cell<u32> = const { Cell::new(0) };
}

/// Counts a join running on a lane on this thread while it lives.
struct InLane;

impl InLane {
    fn enter() -> Self {
        IN_LANE.with(|n| n.set(n.get() + 1));
        InLane
    }

    /// Whether a join above on this thread runs on a lane.
    fn active() -> bool {
        IN_LANE.with(|n| n.get() > 0)
    }
}

impl Drop for InLane {
    fn drop(&mut self) {
        IN_LANE.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

impl Clocks {
    fn new(partitions: usize) -> Self {
        Self {
            base: Instant::now(),
            entered: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            lanes: (0..partitions).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn lane(&self, partition: usize) -> Option<MutexGuard<'_, Option<Lane>>> {
        let lane = self.lanes.get(partition)?;
        Some(lane.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The partition runs on `lane` until its poll ends.
    fn hold(&self, partition: usize, lane: Lane) {
        if let Some(mut held) = self.lane(partition) {
            *held = Some(lane);
        }
    }

    /// Gives the partition's lane back, if it holds one.
    fn release(&self, partition: usize) {
        let lane = self.lane(partition).and_then(|mut held| held.take());
        drop(lane);
    }

    /// Whether the partition runs on a lane.
    fn holds(&self, partition: usize) -> bool {
        self.lane(partition).is_some_and(|held| held.is_some())
    }

    fn enter(&self, partition: usize) {
        if let Some(at) = self.entered.get(partition) {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            at.store(nanos + 1, Ordering::Relaxed);
        }
    }

    fn leave(&self, partition: usize) {
        if let Some(at) = self.entered.get(partition) {
            at.store(0, Ordering::Relaxed);
        }
    }

    /// When the current poll began, if one is under way.
    fn entered(&self, partition: usize) -> Option<Instant> {
        let nanos = self.entered.get(partition)?.load(Ordering::Relaxed);
        (nanos != 0).then(|| self.base + Duration::from_nanos(nanos - 1))
    }
}

/// Which side of the join a [`TimesliceExec`] sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Above the join: starts the clock at each poll.
    Clock,
    /// On the join's probe input: yields by the clock.
    Probe,
}

/// One of the two nodes around a join (module docs); passes its input's
/// rows, order, partitioning and statistics through unchanged.
#[derive(Debug, Clone)]
pub struct TimesliceExec {
    input: Arc<dyn ExecutionPlan>,
    role: Role,
    clocks: Arc<Clocks>,
}

impl DisplayAs for TimesliceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.role {
            Role::Clock => write!(f, "TimesliceExec: join"),
            Role::Probe => write!(f, "TimesliceExec: probe"),
        }
    }
}

impl ExecutionPlan for TimesliceExec {
    fn name(&self) -> &str {
        "TimesliceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("TimesliceExec has one child");
        }
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            ..Self::clone(&self)
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, recompute())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let turn = context.session_config().get_extension::<Turn>();
        let input = self.input.execute(partition, context)?;
        let clocks = Arc::clone(&self.clocks);
        Ok(match self.role {
            Role::Clock => Box::pin(ClockStream {
                input,
                clocks,
                partition,
            }),
            Role::Probe => Box::pin(ProbeStream {
                input,
                clocks,
                partition,
                turn,
                yielding: None,
            }),
        })
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats.first() {
            Some(s) => Ok(Arc::clone(s)),
            None => internal_err!("TimesliceExec has one child"),
        }
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// The join's output; notes when each poll begins and ends.
struct ClockStream {
    input: SendableRecordBatchStream,
    clocks: Arc<Clocks>,
    partition: usize,
}

impl Stream for ClockStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.clocks.enter(self.partition);
        let out = self.input.poll_next_unpin(cx);
        self.clocks.leave(self.partition);
        self.clocks.release(self.partition);
        out
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.input.size_hint()
    }
}

impl RecordBatchStream for ClockStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

/// The join's probe input, yielding by the clock.
struct ProbeStream {
    input: SendableRecordBatchStream,
    clocks: Arc<Clocks>,
    partition: usize,
    /// The statement's place on the executor (`turns.rs`); none outside it.
    turn: Option<Arc<Turn>>,
    /// A yield under way; a lane when it ends with one.
    yielding: Option<Pin<Box<dyn Future<Output = Option<Lane>> + Send>>>,
}

impl ProbeStream {
    /// When the join's poll began, if it has held its thread for long
    /// enough.
    fn overdue(&self) -> Option<Instant> {
        self.clocks
            .entered(self.partition)
            .filter(|entered| entered.elapsed() > POLL_LIMIT)
    }

    /// How the join gives its thread up after a poll that began at
    /// `entered`: its statement is heavy now, and while light ones run it
    /// waits for a lane (`turns.rs`); otherwise it lets every ready task
    /// run first.
    fn after_long_poll(
        &self,
        entered: Instant,
    ) -> Pin<Box<dyn Future<Output = Option<Lane>> + Send>> {
        if let Some(turn) = &self.turn {
            turn.ran_long(entered.elapsed());
            if turn.is_heavy() && turn.others_waiting() && !InLane::active() {
                return Box::pin(turns::give_way(Arc::clone(turn)));
            }
        }
        Box::pin(async {
            tokio::task::yield_now().await;
            None
        })
    }

    /// Whether the join, of a heavy statement, must wait for a lane before
    /// its next batch: light statements run and it holds none.
    fn needs_lane(&self) -> Option<Pin<Box<dyn Future<Output = Option<Lane>> + Send>>> {
        let turn = self.turn.as_ref()?;
        let needed = turn.is_heavy()
            && turn.others_waiting()
            && !InLane::active()
            && !self.clocks.holds(self.partition);
        needed.then(|| Box::pin(turns::give_way(Arc::clone(turn))) as _)
    }
}

impl Stream for ProbeStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let lane = if let Some(yielding) = self.yielding.as_mut() {
            let lane = ready!(yielding.as_mut().poll(cx));
            self.yielding = None;
            lane
        } else {
            let yielding = match self.overdue() {
                Some(entered) => {
                    // Given back before waiting for one.
                    self.clocks.release(self.partition);
                    Some(self.after_long_poll(entered))
                }
                None => self.needs_lane(),
            };
            match yielding {
                Some(mut yielding) => match yielding.as_mut().poll(cx) {
                    Poll::Ready(lane) => lane,
                    Poll::Pending => {
                        self.yielding = Some(yielding);
                        return Poll::Pending;
                    }
                },
                None => None,
            }
        };
        if let Some(lane) = lane {
            self.clocks.hold(self.partition, lane);
        }
        let _in_lane = self.clocks.holds(self.partition).then(InLane::enter);
        self.input.poll_next_unpin(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.input.size_hint()
    }
}

impl RecordBatchStream for ProbeStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

/// Whether `plan` is a join this module puts its nodes around.
fn timesliced(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<NestedLoopJoinExec>() || plan.is::<HashJoinExec>()
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// Whether `join` already has the probe node on its input.
pub(crate) fn is_timesliced(join: &dyn ExecutionPlan) -> bool {
    join.children()
        .get(1)
        .and_then(|probe| probe.downcast_ref::<TimesliceExec>())
        .is_some_and(|probe| probe.role == Role::Probe)
}

/// Puts the two nodes around `join` (a nested-loop or hash join): the
/// clock above it, the probe node on its right (probe) input. A join whose
/// probe input already has one is returned as it is.
pub(crate) fn around(join: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let children = join.children();
    let [build, probe] = children.as_slice() else {
        return Ok(Transformed::no(join));
    };
    if !timesliced(join.as_ref()) || is_timesliced(join.as_ref()) {
        return Ok(Transformed::no(join));
    }
    let partitions = join.properties().partitioning.partition_count();
    let clocks = Arc::new(Clocks::new(partitions));
    let probe = Arc::new(TimesliceExec {
        input: Arc::clone(probe),
        role: Role::Probe,
        clocks: Arc::clone(&clocks),
    });
    let build = Arc::clone(build);
    let join = Arc::clone(&join).replace_children(vec![build, probe], recompute())?;
    Ok(Transformed::yes(Arc::new(TimesliceExec {
        input: join,
        role: Role::Clock,
        clocks,
    })))
}

/// Every join of `plan` timesliced (for tests of plans built by hand).
#[cfg(test)]
fn timeslice_all(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::TreeNode;
    plan.transform_up(around).map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn physical_plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        let df = ctx.sql(sql).await.unwrap();
        df.create_physical_plan().await.unwrap()
    }

    /// Polls `plan` to its end; its batches and how many times it gave
    /// its thread up.
    async fn run(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> (String, usize) {
        let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).unwrap();
        let mut pending = 0;
        let mut out = vec![];
        std::future::poll_fn(|cx| loop {
            match stream.poll_next_unpin(cx) {
                Poll::Ready(Some(batch)) => out.push(batch.unwrap()),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {
                    pending += 1;
                    return Poll::Pending;
                }
            }
        })
        .await;
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&out).unwrap();
        (shown.to_string(), pending)
    }

    #[tokio::test]
    async fn a_join_nested_in_one_on_a_lane_needs_none_of_its_own() {
        // One partition: the inner join runs in the outer one's probe
        // input, on the same thread. Its statement is heavy and a light
        // one runs, so the outer join takes the executor's one lane; had
        // the inner one waited for a lane too, it would wait for ever.
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        let turns = Arc::new(crate::turns::Turns::new(2));
        let light = Arc::new(Turn::new(Arc::clone(&turns)));
        let _light = light.run();
        let heavy = Arc::new(Turn::new(Arc::clone(&turns)));
        heavy.ran_long(crate::turns::HEAVY_POLL);
        let sql = "SELECT count(*) FROM \
                   (SELECT value AS v FROM generate_series(1, 20)) c RIGHT JOIN \
                   ((SELECT value AS v FROM generate_series(1, 300)) a JOIN \
                    (SELECT value AS v, value * 2 AS w FROM generate_series(1, 3000)) b \
                    ON a.v = b.v) \
                   ON c.v = b.w";
        let plan = physical_plan(&ctx, sql).await;
        let plan = timeslice_all(plan).unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert_eq!(shown.matches("TimesliceExec: probe").count(), 2, "{shown}");
        let config = ctx.copied_config().with_extension(Arc::clone(&heavy));
        let task = Arc::new(TaskContext::from(&ctx.state()).with_session_config(config));
        let stream = datafusion::physical_plan::execute_stream(plan, task).unwrap();
        let batches = tokio::time::timeout(
            Duration::from_secs(60),
            futures::TryStreamExt::try_collect::<Vec<_>>(stream),
        )
        .await
        .expect("the nested join waited for the lane its outer join held")
        .unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(shown.contains("| 300 "), "{shown}");
    }

    #[tokio::test]
    async fn a_join_gives_up_its_thread_and_keeps_its_answer() {
        // One partition, inputs in memory: nothing else in the plan waits.
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        let sql = "SELECT count(*), sum(a.v + b.v) FROM \
                   (SELECT value AS v FROM generate_series(1, 3000)) a JOIN \
                   (SELECT value AS v FROM generate_series(1, 20000)) b ON a.v + b.v < 100";
        let plan = physical_plan(&ctx, sql).await;
        let (expected, plain_pending) = run(Arc::clone(&plan), &ctx).await;
        assert_eq!(plain_pending, 0, "the plain join runs in one poll");
        let sliced = timeslice_all(plan).unwrap();
        let shown = datafusion::physical_plan::displayable(sliced.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("TimesliceExec: join"), "{shown}");
        assert!(shown.contains("TimesliceExec: probe"), "{shown}");
        let (answer, pending) = run(sliced, &ctx).await;
        assert_eq!(answer, expected);
        assert!(expected.contains("| 4851 "), "{expected}");
        assert!(pending > 0, "the join never gave up its thread");
    }
}
