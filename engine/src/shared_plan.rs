//! A grouped result a query computes twice is computed once.
//!
//! DataFusion inlines a common table expression at each reference, so
//! TPC-H q15, which joins `revenue0` and compares with `max(total_revenue)
//! FROM revenue0`, scans and aggregates a quarter of `lineitem` twice.
//! Before physical planning, [`share_repeated`] finds aggregates that occur
//! more than once in the optimized plan (scalar subqueries included) as
//! equal subtrees, and wraps each occurrence in a [`SharedNode`]; the
//! occurrences' [`SharedExec`]s share one state, so the first to run
//! executes its input into memory (accounted to the statement's memory
//! pool), and the others read those batches instead of running their own.
//! When the batches do not fit the statement's memory, every occurrence
//! runs its own input instead, as it would unshared, so sharing never
//! fails a statement that runs without it.
//!
//! Only aggregates are shared here: their output is at most the groups
//! the aggregate itself held in memory, and they are where repeated work
//! is large. One kind of join is shared too, found first by
//! `shared_join.rs`: the join a reduced aggregate's semi join copies
//! (TPC-H q17); its output is what the reducer's selective filter left.
//! Equal subtrees compute equal results (a plan without volatile
//! functions is a pure function of its input files, read in the same
//! statement), so which occurrence runs does not matter. A recursive
//! query's terms run once per iteration and are left alone. A governed subtree is shared whole, barrier and
//! masks included: every occurrence is the same principal's query. A
//! [`SharedExec`] lets no filter through (DataFusion's default), so a
//! dynamic filter from one consumer's join never narrows another's rows.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, DFSchemaRef, DataFusionError, Result, Statistics};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{Distribution, EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// `plan` with every aggregate that occurs more than once (outside other
/// repeated aggregates) wrapped in a [`SharedNode`] per occurrence.
pub fn share_repeated(plan: LogicalPlan) -> Result<LogicalPlan> {
    // Joins first (`shared_join.rs`); what they share is left alone here.
    let (plan, first_id) = crate::shared_join::share_reduced_joins(plan, 0)?;
    let mut seen: HashMap<LogicalPlan, usize> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::RecursiveQuery(_)) || is_shared(node) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if matches!(node, LogicalPlan::Aggregate(_)) && !is_volatile(node)? {
            *seen.entry(node.clone()).or_default() += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    seen.retain(|_, n| *n > 1);
    if seen.is_empty() {
        return Ok(plan);
    }
    // Occurrences that are not inside another repeated aggregate.
    let mut outer: HashMap<LogicalPlan, usize> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::RecursiveQuery(_)) || is_shared(node) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if seen.contains_key(node) {
            *outer.entry(node.clone()).or_default() += 1;
            return Ok(TreeNodeRecursion::Jump);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let mut states: HashMap<LogicalPlan, Arc<SharedState>> = outer
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .enumerate()
        .map(|(id, (node, consumers))| {
            let state = SharedState::new(first_id + id, consumers);
            (node, Arc::new(state))
        })
        .collect();
    if states.is_empty() {
        return Ok(plan);
    }
    plan.transform_down_with_subqueries(|node| match states.get_mut(&node) {
        _ if matches!(node, LogicalPlan::RecursiveQuery(_)) || is_shared(&node) => {
            Ok(Transformed::new(node, false, TreeNodeRecursion::Jump))
        }
        Some(state) => {
            let shared = SharedNode {
                input: node,
                state: Arc::clone(state),
            };
            let node = LogicalPlan::Extension(Extension {
                node: Arc::new(shared),
            });
            Ok(Transformed::new(node, true, TreeNodeRecursion::Jump))
        }
        None => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

/// Whether `node` is a [`SharedNode`] already.
fn is_shared(node: &LogicalPlan) -> bool {
    matches!(node, LogicalPlan::Extension(e) if e.node.as_any().is::<SharedNode>())
}

/// Whether a plan calls a volatile function (`random()`): two occurrences
/// may differ, so they are not shared.
fn is_volatile(plan: &LogicalPlan) -> Result<bool> {
    plan.exists(|n| Ok(n.expressions().iter().any(Expr::is_volatile)))
}

/// One occurrence of a repeated aggregate; occurrences of one aggregate
/// hold the same state.
#[derive(Debug, Clone)]
pub struct SharedNode {
    input: LogicalPlan,
    state: Arc<SharedState>,
}

impl SharedNode {
    /// One of `consumers` occurrences of `input`, sharing state `id`; the
    /// caller makes one node per occurrence from one [`SharedNode`]
    /// (clones share the state).
    pub(crate) fn new(input: LogicalPlan, id: usize, consumers: usize) -> Self {
        Self {
            input,
            state: Arc::new(SharedState::new(id, consumers)),
        }
    }
}

impl PartialEq for SharedNode {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state) && self.input == other.input
    }
}

impl Eq for SharedNode {}

impl Hash for SharedNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.state.id.hash(state);
        self.input.hash(state);
    }
}

impl PartialOrd for SharedNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.state.id.cmp(&other.state.id) {
            Ordering::Equal => self.input.partial_cmp(&other.input),
            o => Some(o),
        }
    }
}

impl UserDefinedLogicalNodeCore for SharedNode {
    fn name(&self) -> &str {
        "Shared"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Shared: id={} consumers={}",
            self.state.id, self.state.consumers
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Some(input) = inputs.into_iter().next() else {
            return internal_err!("Shared needs exactly one input");
        };
        Ok(Self {
            input,
            state: Arc::clone(&self.state),
        })
    }
}

/// What the occurrences of one aggregate share: the run of the statement
/// executing it (the first occurrence to execute starts it).
#[derive(Debug)]
struct SharedState {
    id: usize,
    consumers: usize,
    run: Mutex<Option<Run>>,
}

/// The batches of one aggregate, with the memory they hold accounted.
struct Materialized {
    batches: Vec<RecordBatch>,
    _reservation: MemoryReservation,
}

type Batches = Shared<BoxFuture<'static, Result<Arc<Materialized>, Arc<DataFusionError>>>>;

/// One statement's execution of a shared aggregate.
struct Run {
    context: Weak<TaskContext>,
    batches: Batches,
    /// Consumers that have not taken the batches yet.
    waiting: usize,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Run")
            .field("waiting", &self.waiting)
            .finish()
    }
}

impl SharedState {
    fn new(id: usize, consumers: usize) -> Self {
        Self {
            id,
            consumers,
            run: Mutex::new(None),
        }
    }

    /// The batches for a consumer running under `context`: the run of
    /// that context, or a new one executing `input`. The run is dropped
    /// once every consumer has its batches.
    fn batches(
        &self,
        input: &Arc<dyn ExecutionPlan>,
        context: &Arc<TaskContext>,
    ) -> Result<Batches> {
        let mut run = self
            .run
            .lock()
            .map_err(|_| DataFusionError::Internal("shared aggregate lock poisoned".into()))?;
        let current = run.as_mut().filter(|r| {
            r.context
                .upgrade()
                .is_some_and(|c| Arc::ptr_eq(&c, context))
        });
        let batches = match current {
            Some(r) => {
                r.waiting = r.waiting.saturating_sub(1);
                let batches = r.batches.clone();
                if r.waiting == 0 {
                    *run = None;
                }
                batches
            }
            None => {
                let batches = materialize(Arc::clone(input), Arc::clone(context), self.id);
                if self.consumers > 1 {
                    *run = Some(Run {
                        context: Arc::downgrade(context),
                        batches: batches.clone(),
                        waiting: self.consumers - 1,
                    });
                }
                batches
            }
        };
        Ok(batches)
    }
}

/// Executes `input`'s one partition into memory, accounted to the
/// statement's memory pool.
fn materialize(input: Arc<dyn ExecutionPlan>, context: Arc<TaskContext>, id: usize) -> Batches {
    async move {
        let reservation =
            MemoryConsumer::new(format!("SharedExec[{id}]")).register(context.memory_pool());
        let mut stream = input.execute(0, context)?;
        let mut batches = vec![];
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
        Ok(Arc::new(Materialized {
            batches,
            _reservation: reservation,
        }))
    }
    .map(|r: Result<Arc<Materialized>>| r.map_err(Arc::new))
    .boxed()
    .shared()
}

/// DataFusion's default planner with repeated aggregates shared and
/// decimal arithmetic without needless overflow checks (for
/// sessions without governance, such as `veil bench tpch`'s ungoverned
/// run; the governed planner does the same).
#[derive(Debug, Default)]
pub struct SharingQueryPlanner;

#[async_trait]
impl QueryPlanner for SharingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner =
            DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(SharedPlanner)]);
        let plan = share_repeated(logical_plan.clone())?;
        let plan = crate::decimal_arith::unchecked_decimal_arith(plan)?;
        let plan = crate::avg_sums::averages_from_sums(plan)?;
        planner.create_physical_plan(&plan, session).await
    }
}

/// Plans [`SharedNode`]s into [`SharedExec`]s.
#[derive(Debug, Default)]
pub struct SharedPlanner;

#[async_trait]
impl ExtensionPlanner for SharedPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<SharedNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return internal_err!("Shared needs exactly one input");
        };
        Ok(Some(Arc::new(SharedExec::new(
            Arc::clone(input),
            Arc::clone(&node.state),
        ))))
    }
}

/// One occurrence of a shared aggregate: one partition, the batches of
/// whichever occurrence ran first.
#[derive(Debug)]
pub struct SharedExec {
    input: Arc<dyn ExecutionPlan>,
    state: Arc<SharedState>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedExec {
    fn new(input: Arc<dyn ExecutionPlan>, state: Arc<SharedState>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            state,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SharedExec: id={} consumers={}",
            self.state.id, self.state.consumers
        )
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &str {
        "SharedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// None of its own.
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = children.as_slice() else {
            return internal_err!("SharedExec needs exactly one child");
        };
        Ok(Arc::new(Self::new(
            Arc::clone(input),
            Arc::clone(&self.state),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("SharedExec has one partition, not {partition}");
        }
        let batches = self.state.batches(&self.input, &context)?;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let input = Arc::clone(&self.input);
        let stream = futures::stream::once(async move {
            let own: BoxStream<'static, Result<RecordBatch>> = match batches.await {
                Ok(materialized) => {
                    let batches = materialized.batches.clone();
                    futures::stream::iter(batches)
                        .map(move |batch| {
                            // The memory stays accounted while a consumer streams.
                            let _held = &materialized;
                            Ok(batch)
                        })
                        .boxed()
                }
                // Too large to hold for the query's memory: each
                // occurrence streams its own input, as it would unshared.
                Err(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                    input.execute(0, context)?.boxed()
                }
                Err(e) => return Err(DataFusionError::Shared(e)),
            };
            Ok::<_, DataFusionError>(own.inspect_ok(move |batch| {
                baseline.record_output(batch.num_rows());
            }))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(&self, _partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(None)]
    }

    /// The input's statistics: its one partition is this one.
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(match input_stats.first() {
            Some(s) => Arc::clone(s),
            None => Arc::new(Statistics::new_unknown(&self.schema())),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    async fn sales(sharing: bool) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(2);
        let mut builder = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        if sharing {
            builder = builder.with_query_planner(Arc::new(SharingQueryPlanner));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.sql(
            "CREATE TABLE s (k INT, v INT) AS VALUES \
             (1, 10), (1, 20), (2, 30), (3, 5), (3, 25), (NULL, 30), (4, NULL)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        ctx
    }

    /// The answer and the executed physical plan.
    pub(crate) async fn run(ctx: &SessionContext, sql: &str) -> (String, Arc<dyn ExecutionPlan>) {
        let plan = crate::test_sql::physical_plan(ctx, sql).await;
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        (pretty_format_batches(&batches).unwrap().to_string(), plan)
    }

    /// Per `SharedExec`, the rows its own input produced (None: never ran).
    pub(crate) fn shared_inputs(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Option<usize>>) {
        if plan.name() == "SharedExec" {
            let input = plan.children()[0];
            out.push(input.metrics().and_then(|m| m.output_rows()));
        }
        for child in plan.children() {
            shared_inputs(child, out);
        }
    }

    /// 800 KB of one column, in one partition.
    fn wide() -> Arc<dyn ExecutionPlan> {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::datasource::memory::MemorySourceConfig;
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let column = Arc::new(Int64Array::from_iter_values(0..100_000));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap();
        MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap()
    }

    #[tokio::test]
    async fn a_shared_input_too_large_to_hold_is_streamed_by_each_occurrence() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::physical_plan::union::UnionExec;
        let input = wide();
        let state = Arc::new(SharedState::new(0, 2));
        let occurrence = || -> Arc<dyn ExecutionPlan> {
            Arc::new(SharedExec::new(Arc::clone(&input), Arc::clone(&state)))
        };
        let union = UnionExec::try_new(vec![occurrence(), occurrence()]).unwrap();
        for limit in [64 * 1024, 16 * 1024 * 1024] {
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_limit(limit, 1.0)
                .build_arc()
                .unwrap();
            let context = Arc::new(TaskContext::default().with_runtime(runtime));
            // 64 KiB cannot hold the input (the first occurrence's try
            // fails); both occurrences then stream it themselves.
            let held = materialize(Arc::clone(&input), Arc::clone(&context), 0).await;
            assert_eq!(held.is_err(), limit < 1024 * 1024, "{limit}");
            let batches = collect(Arc::clone(&union), context).await.unwrap();
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(rows, 200_000, "{limit}");
        }
    }

    const BEST: &str = "WITH r AS (SELECT k, sum(v) AS total FROM s GROUP BY k) \
        SELECT k, total FROM r WHERE total = (SELECT max(total) FROM r) ORDER BY k NULLS FIRST";

    #[tokio::test]
    async fn a_cte_named_twice_aggregates_once_and_answers_the_same() {
        let (shared, plain) = (sales(true).await, sales(false).await);
        let (got, plan) = run(&shared, BEST).await;
        assert_eq!(got, run(&plain, BEST).await.0);
        let want = [
            "+---+-------+",
            "| k | total |",
            "+---+-------+",
            "|   | 30    |",
            "| 1 | 30    |",
            "| 2 | 30    |",
            "| 3 | 30    |",
            "+---+-------+",
        ];
        assert_eq!(got, want.join("\n"));
        let mut inputs = vec![];
        shared_inputs(&plan, &mut inputs);
        assert_eq!(
            inputs.len(),
            2,
            "{}",
            displayable(plan.as_ref()).indent(true)
        );
        // One occurrence ran its aggregate (five groups), the other read
        // its batches.
        let ran: Vec<_> = inputs.iter().filter(|r| r.unwrap_or(0) > 0).collect();
        assert_eq!(ran, vec![&Some(5)], "{inputs:?}");
    }

    #[tokio::test]
    async fn a_self_join_of_a_cte_shares_it_and_different_aggregates_do_not() {
        let (shared, plain) = (sales(true).await, sales(false).await);
        let self_join = "WITH r AS (SELECT k, sum(v) AS total FROM s GROUP BY k) \
            SELECT a.k, b.k AS other FROM r a JOIN r b ON a.total = b.total AND a.k < b.k ORDER BY 1, 2";
        let (got, plan) = run(&shared, self_join).await;
        assert_eq!(got, run(&plain, self_join).await.0);
        let want = [
            "+---+-------+",
            "| k | other |",
            "+---+-------+",
            "| 1 | 2     |",
            "| 1 | 3     |",
            "| 2 | 3     |",
            "+---+-------+",
        ];
        assert_eq!(got, want.join("\n"));
        let mut inputs = vec![];
        shared_inputs(&plan, &mut inputs);
        assert_eq!(inputs.len(), 2);

        // Volatile aggregates and recursive terms are not shared.
        for sql in [
            "WITH r AS (SELECT k, sum(v * random()) AS t FROM s GROUP BY k) \
             SELECT count(a.t + b.t) FROM r a JOIN r b ON a.k = b.k",
            "WITH RECURSIVE n(i, c) AS (SELECT 1, 0 UNION ALL \
             SELECT n.i + 1, a.c + b.c FROM n, (SELECT count(*) AS c FROM (SELECT k FROM s GROUP BY k)) a, \
             (SELECT count(*) AS c FROM (SELECT k FROM s GROUP BY k)) b WHERE n.i < 3) \
             SELECT i, c FROM n ORDER BY i",
        ] {
            let (got, plan) = run(&shared, sql).await;
            let mut inputs = vec![];
            shared_inputs(&plan, &mut inputs);
            assert!(inputs.is_empty(), "{sql}");
            if !sql.contains("random") {
                assert_eq!(got, run(&plain, sql).await.0);
                let want = ["+---+----+", "| i | c  |", "+---+----+", "| 1 | 0  |", "| 2 | 10 |", "| 3 | 10 |", "+---+----+"];
                assert_eq!(got, want.join("\n"));
            }
        }

        let different = "SELECT a.k FROM (SELECT k, sum(v) AS t FROM s GROUP BY k) a \
            JOIN (SELECT k, max(v) AS t FROM s GROUP BY k) b ON a.k = b.k AND a.t = b.t ORDER BY 1";
        let (got, plan) = run(&shared, different).await;
        assert_eq!(got, run(&plain, different).await.0);
        let mut inputs = vec![];
        shared_inputs(&plan, &mut inputs);
        assert!(inputs.is_empty());
    }
}
