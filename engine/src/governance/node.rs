//! The governance barrier, logical ([`GovernedScanNode`]) and physical
//! (`GovernedScanExec`), and the query planner that connects them.
//!
//! The logical node sits between a raw scan and the mask projection. It owns
//! the row-policy predicate and evaluates it by itself, so no user conjunct is
//! ever evaluated in the same batch pass as the policy. DataFusion's filter
//! pushdown cannot cross it (every column is in
//! `prevent_predicate_push_down_columns`); column pruning can
//! (`necessary_children_exprs`).
//!
//! The physical node has no visible children: its input plan is optimized
//! here and then hidden, so EXPLAIN (any form) shows one opaque line,
//! statistics describe only rows the principal sees (`visible_stats.rs`;
//! for join ordering), metrics count only rows that passed the policy,
//! and physical filter pushdown cannot reach the raw scan, except dynamic
//! filters (join keys, TopK thresholds) on columns it passes unmasked,
//! which are leakproof (see `GovernedScanExec::accepts_early`); the barrier
//! applies those to its rows too.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, DFSchemaRef, DataFusionError, Result, Statistics};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::expressions::{Column, DynamicFilterPhysicalExpr};
use datafusion::physical_expr::utils::{
    collect_columns, conjunction, reassign_expr_columns, split_conjunction,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::projection_pushdown::ProjectionPushdown;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::filter_pushdown::{
    ChildFilterPushdownResult, ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation,
    PushedDown,
};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

use super::rule::StatementGovernance;
use super::visible_stats::{Visible, VisibleStatsCache};
use crate::dynamic_rows::DynamicRows;
use crate::dynamic_scan::after_joins_build;
use crate::error::VeilError;

/// The logical governance barrier over one raw scan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GovernedScanNode {
    /// `schema.table`.
    pub source: String,
    /// Raw input (a TableScan, possibly with leakproof filters and pruning).
    pub input: LogicalPlan,
    /// The AND of all row policies; None when no row policy applies.
    pub row_predicate: Option<Expr>,
    /// Names of masked columns (never leakproof for pushdown).
    pub masked: Vec<String>,
    /// Names of the policies applied (for EXPLAIN and audit).
    pub policies: Vec<String>,
}

impl GovernedScanNode {
    /// Wraps the node as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The node inside a plan, if the plan is one.
    pub fn from_plan(plan: &LogicalPlan) -> Option<&GovernedScanNode> {
        match plan {
            LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<GovernedScanNode>(),
            _ => None,
        }
    }
}

impl PartialOrd for GovernedScanNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if self == other {
            return Some(Ordering::Equal);
        }
        match self.source.cmp(&other.source) {
            Ordering::Equal => None,
            o => Some(o),
        }
    }
}

impl UserDefinedLogicalNodeCore for GovernedScanNode {
    fn name(&self) -> &str {
        "GovernedScan"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        self.row_predicate.iter().cloned().collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GovernedScan: {}", self.source)?;
        if !self.policies.is_empty() {
            write!(f, " policies=[{}]", self.policies.join(", "))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Some(input) = inputs.into_iter().next() else {
            return internal_err!("GovernedScan needs exactly one input");
        };
        if exprs.len() != usize::from(self.row_predicate.is_some()) {
            return internal_err!("GovernedScan row predicate count changed");
        }
        Ok(Self {
            source: self.source.clone(),
            input,
            row_predicate: exprs.into_iter().next(),
            masked: self.masked.clone(),
            policies: self.policies.clone(),
        })
    }

    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let schema = self.input.schema();
        let mut needed: Vec<usize> = output_columns.to_vec();
        if let Some(p) = &self.row_predicate {
            for c in p.column_refs() {
                needed.push(schema.index_of_column(c).ok()?);
            }
        }
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

/// The physical barrier: runs a hidden, already optimized input and keeps
/// only the rows the row predicate accepts.
#[derive(Debug)]
pub(crate) struct GovernedScanExec {
    source: String,
    inner: Arc<dyn ExecutionPlan>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    /// Raw columns the barrier's parent masks (dynamic filters on them stay out).
    masked: Arc<[String]>,
    /// Statistics of the visible rows, when they were counted.
    visible: Option<Arc<Visible>>,
    /// The columns of `inner` the barrier passes on, when not all of them:
    /// a column only the row policy or a filter inside the barrier reads
    /// stays inside (see `try_swapping_with_projection`).
    output: Option<Arc<[usize]>>,
    /// Leakproof dynamic filters from above (see
    /// [`GovernedScanExec::accepts_early`]), over `inner`'s schema: the
    /// barrier drops the rows they rule out once their producer fills them.
    dynamic: Arc<[Arc<dyn PhysicalExpr>]>,
    /// Ids of the dynamic filters above that hash joins of the plan produce:
    /// the barrier reads only once they are built (`dynamic_scan.rs`,
    /// [`awaiting_joins`]).
    awaited: Arc<HashSet<u64>>,
    /// Whether the hidden input is shown as the child: only in a plan
    /// decoded on a Ballista node (`distributed/codec.rs`), never here.
    /// Ballista's scheduler restricts each task's plan to the task's
    /// partitions by rewriting the scans it finds among a plan's children;
    /// a barrier with no child and N partitions went to every task whole,
    /// so each task read every partition (rows repeated) and wrote two of
    /// them to one shuffle file (found at TPC-H SF1: shuffle reads failed).
    /// Nothing can move into an open barrier: it takes no filter from
    /// above (DataFusion's default), and the scheduler runs only its stage
    /// cutting, partition restriction, distribution requirements, join
    /// selection and aggregate statistics, none of which moves an operator
    /// below another.
    open: bool,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl GovernedScanExec {
    pub(crate) fn new(
        source: String,
        inner: Arc<dyn ExecutionPlan>,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        masked: Arc<[String]>,
        visible: Option<Arc<Visible>>,
        output: Option<Arc<[usize]>>,
    ) -> Result<Self> {
        let schema = match &output {
            Some(columns) => Arc::new(inner.schema().project(columns)?),
            None => inner.schema(),
        };
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            inner.properties().partitioning.clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            source,
            inner,
            predicate,
            masked,
            visible,
            output,
            dynamic: Arc::new([]),
            awaited: Arc::default(),
            open: false,
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// What another process needs to run this barrier (`distributed/codec.rs`):
    /// the source, the hidden input, the row predicate (over the input's
    /// schema), the masked columns and the columns passed on. Dynamic
    /// filters and visible-row statistics stay behind: they are this
    /// process's (filled by its joins, used by its planning).
    #[allow(clippy::type_complexity)]
    pub(crate) fn parts(
        &self,
    ) -> (
        &str,
        &Arc<dyn ExecutionPlan>,
        Option<&Arc<dyn PhysicalExpr>>,
        &Arc<[String]>,
        Option<&Arc<[usize]>>,
    ) {
        (
            &self.source,
            &self.inner,
            self.predicate.as_ref(),
            &self.masked,
            self.output.as_ref(),
        )
    }

    /// The same barrier showing its hidden input as its child (a plan on a
    /// Ballista node; see the `open` field).
    pub(crate) fn opened(mut self) -> Self {
        self.open = true;
        self
    }

    /// Whether the hidden input is the child (see [`GovernedScanExec::opened`]).
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// This open barrier over `children`: the same input restricted (to a
    /// task's partitions) or with its shuffle reads resolved. A closed
    /// barrier has no children to replace.
    fn over(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = match (self.open, <[_; 1]>::try_from(children)) {
            (true, Ok([input])) => input,
            (false, Err(none)) if none.is_empty() => return Ok(self),
            _ => return internal_err!("GovernedScanExec has no replaceable children"),
        };
        if input.schema() != self.inner.schema() {
            return internal_err!("a governed scan's input cannot change its schema");
        }
        let barrier = GovernedScanExec::new(
            self.source.clone(),
            input,
            self.predicate.clone(),
            Arc::clone(&self.masked),
            None,
            self.output.clone(),
        )?;
        Ok(Arc::new(barrier.opened()))
    }

    /// The same barrier also applying `dynamic` (over `inner`'s schema).
    fn with_dynamic(mut self, dynamic: Arc<[Arc<dyn PhysicalExpr>]>) -> Self {
        self.dynamic = dynamic;
        self
    }

    /// The same barrier waiting, before it reads, for the dynamic filters
    /// of ids `awaited` to be built.
    fn with_awaited(mut self, awaited: Arc<HashSet<u64>>) -> Self {
        self.awaited = awaited;
        self
    }

    /// The same barrier passing on only the columns `names` (of its
    /// output), in that order. The hidden input is narrowed to those and
    /// the row policy's columns, and DataFusion's projection pushdown takes
    /// the narrowing down into it (a filter inside then copies only the
    /// columns that leave it, the scan decodes no column nobody reads).
    fn narrowed(&self, names: &[String]) -> Result<Self> {
        let schema = self.inner.schema();
        let mut keep = names
            .iter()
            .map(|n| schema.index_of(n))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if let Some(p) = &self.predicate {
            keep.extend(collect_columns(p).iter().map(|c| c.index()));
        }
        let mut inner = Arc::clone(&self.inner);
        if keep.len() < schema.fields().len() {
            let columns = keep.iter().map(|&i| {
                let name = schema.field(i).name();
                (
                    Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>,
                    name.clone(),
                )
            });
            let narrowed = Arc::new(ProjectionExec::try_new(columns, inner)?);
            inner = ProjectionPushdown::new().optimize(narrowed, &ConfigOptions::default())?;
        }
        let schema = inner.schema();
        let predicate = match &self.predicate {
            Some(p) => Some(reassign_expr_columns(Arc::clone(p), &schema)?),
            None => None,
        };
        let dynamic = self
            .dynamic
            .iter()
            .map(|d| reassign_expr_columns(Arc::clone(d), &schema))
            .collect::<Result<Vec<_>>>()?;
        let output = names
            .iter()
            .map(|n| schema.index_of(n))
            .collect::<Result<Vec<_>, _>>()?;
        let all = output.len() == schema.fields().len()
            && output.iter().enumerate().all(|(i, c)| i == *c);
        Ok(GovernedScanExec::new(
            self.source.clone(),
            inner,
            predicate,
            Arc::clone(&self.masked),
            self.visible.clone(),
            (!all).then(|| output.into()),
        )?
        .with_dynamic(dynamic.into())
        .with_awaited(Arc::clone(&self.awaited)))
    }

    /// Whether `filter` may run on raw rows before the row policy: a
    /// dynamic filter (a join's build-side keys, a TopK's threshold:
    /// comparisons of columns with values the query already holds, which
    /// cannot fail) whose every input is a plain column the barrier passes
    /// unmasked. A filter on a masked column arrives rewritten through the
    /// mask (its input is the mask's UDF, not a column) and stays out.
    fn accepts_early(&self, filter: &Arc<dyn PhysicalExpr>) -> bool {
        let any: &dyn std::any::Any = filter.as_ref();
        if !any.is::<DynamicFilterPhysicalExpr>() {
            return false;
        }
        let schema = self.schema();
        let inputs = filter.children();
        !inputs.is_empty()
            && inputs.iter().all(|e| {
                let any: &dyn std::any::Any = e.as_ref();
                any.downcast_ref::<Column>().is_some_and(|c| {
                    schema
                        .fields()
                        .get(c.index())
                        .is_some_and(|f| f.name() == c.name())
                        && !self.masked.iter().any(|m| m == c.name())
                })
            })
    }
}

/// `plan`, when it is a barrier applying dynamic filters that hash joins
/// of the plan produce (ids in `produced`), made to read only once those
/// are built (see `dynamic_scan.rs`); None otherwise.
pub(crate) fn awaiting_joins(
    plan: &Arc<dyn ExecutionPlan>,
    produced: &HashSet<u64>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(barrier) = plan.downcast_ref::<GovernedScanExec>() else {
        return Ok(None);
    };
    let awaited: HashSet<u64> = barrier
        .dynamic
        .iter()
        .filter_map(|d| d.expression_id())
        .filter(|id| produced.contains(id))
        .collect();
    if awaited.is_empty() || awaited == *barrier.awaited {
        return Ok(None);
    }
    let waiting = GovernedScanExec::new(
        barrier.source.clone(),
        Arc::clone(&barrier.inner),
        barrier.predicate.clone(),
        Arc::clone(&barrier.masked),
        barrier.visible.clone(),
        barrier.output.clone(),
    )?
    .with_dynamic(Arc::clone(&barrier.dynamic))
    .with_awaited(Arc::new(awaited));
    Ok(Some(Arc::new(waiting)))
}

/// Offers `filters` (over `plan`'s output) to the scan at the bottom of a
/// barrier's hidden input, through the nodes above it as DataFusion's own
/// filter pushdown would; returns the rewritten input, or None when
/// nothing took them.
fn push_into_hidden(
    plan: &Arc<dyn ExecutionPlan>,
    filters: Vec<Arc<dyn PhysicalExpr>>,
    config: &ConfigOptions,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let phase = FilterPushdownPhase::Post;
    match plan.children().as_slice() {
        [] => {
            let offered = ChildPushdownResult {
                parent_filters: filters
                    .into_iter()
                    .map(|filter| ChildFilterPushdownResult {
                        filter,
                        child_results: vec![],
                    })
                    .collect(),
                self_filters: vec![],
            };
            Ok(plan
                .handle_child_pushdown_result(phase, offered, config)?
                .updated_node)
        }
        [child] => {
            let description = plan.gather_filters_for_pushdown(phase, filters, config)?;
            let passed: Vec<_> = description
                .parent_filters()
                .into_iter()
                .next()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| matches!(f.discriminant, PushedDown::Yes))
                .map(|f| f.predicate)
                .collect();
            if passed.is_empty() {
                return Ok(None);
            }
            match push_into_hidden(child, passed, config)? {
                Some(new_child) => Ok(Some(Arc::clone(plan).replace_children(
                    vec![new_child],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )?)),
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

impl DisplayAs for GovernedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GovernedScanExec: source={}", self.source)
    }
}

impl ExecutionPlan for GovernedScanExec {
    fn name(&self) -> &str {
        "GovernedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // Deliberately opaque: nothing outside may inspect or rewrite the
        // raw input (but the partitions Ballista gives a task; see `open`).
        if self.open {
            return vec![&self.inner];
        }
        vec![]
    }

    /// Only the dynamic filters the barrier and its hidden scan took (see
    /// [`GovernedScanExec::accepts_early`]): a join or TopK fills its
    /// dynamic filter only when it finds the filter's expression among the
    /// expressions of the plan below it, and the barrier's hidden input is
    /// no child. Nothing else of the hidden input (the row policy, pushed
    /// filters) is shown.
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for d in self.dynamic.iter() {
            if f(d)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        let mut outcome = TreeNodeRecursion::Continue;
        self.inner.apply(|node| {
            node.apply_expressions(&mut |root| {
                root.apply(|e| {
                    let any: &dyn std::any::Any = e.as_ref();
                    if !any.is::<DynamicFilterPhysicalExpr>() {
                        return Ok(TreeNodeRecursion::Continue);
                    }
                    if f(e)? == TreeNodeRecursion::Stop {
                        outcome = TreeNodeRecursion::Stop;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Jump)
                })
            })
        })?;
        Ok(outcome)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.over(children)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.over(children)
    }

    /// Join ordering needs sizes and distinct keys, so the barrier reports,
    /// inexact, statistics of the rows the principal sees (see
    /// `visible_stats.rs`): the visible row count, and for unmasked integer
    /// and date columns null counts and a distinct-count bound; never a
    /// min or max, never anything about a masked column. When a row policy
    /// applies and the visible rows were not counted, only the raw row
    /// count and byte size rounded up to a power of two.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let schema = self.schema();
        if let Some(visible) = &self.visible {
            let partitions = args
                .partition()
                .map(|_| self.cache.partitioning.partition_count());
            return Ok(Arc::new(
                visible
                    .statistics(self.inner.as_ref(), &self.masked, partitions)?
                    .project(self.output.as_ref()),
            ));
        }
        let raw = StatisticsContext::new().compute(self.inner.as_ref(), args)?;
        let raw = Arc::unwrap_or_clone(raw).project(self.output.as_ref());
        if self.predicate.is_none() {
            return Ok(Arc::new(Visible::of_all_rows(&schema, &self.masked, &raw)));
        }
        let bucket = |p: &Precision<usize>| match p.get_value() {
            Some(v) => Precision::Inexact(v.max(&1).next_power_of_two()),
            None => Precision::Absent,
        };
        let mut out = Statistics::new_unknown(&schema);
        out.num_rows = bucket(&raw.num_rows);
        out.total_byte_size = bucket(&raw.total_byte_size);
        Ok(Arc::new(out))
    }

    /// A projection above the barrier that reads only some of its columns
    /// (the mask projection, a plain column list) takes the rest out of
    /// the barrier: the barrier passes on only the columns it reads (see
    /// [`GovernedScanExec::narrowed`]) and the projection is rebound to
    /// them. The row policy still sees every column it reads, on every row.
    fn try_swapping_with_projection(
        &self,
        projection: &ProjectionExec,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let schema = self.schema();
        let read: BTreeSet<usize> = projection
            .expr()
            .iter()
            .flat_map(|e| collect_columns(&e.expr))
            .map(|c| c.index())
            .collect();
        if read.len() >= schema.fields().len() {
            return Ok(None);
        }
        let names: Vec<String> = read
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect();
        let barrier: Arc<dyn ExecutionPlan> = Arc::new(self.narrowed(&names)?);
        let narrowed = barrier.schema();
        let exprs = projection
            .expr()
            .iter()
            .map(|e| {
                Ok(ProjectionExpr::new(
                    reassign_expr_columns(Arc::clone(&e.expr), &narrowed)?,
                    e.alias.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let plain = exprs.len() == narrowed.fields().len()
            && exprs.iter().enumerate().all(|(i, e)| {
                e.expr
                    .downcast_ref::<Column>()
                    .is_some_and(|c| c.index() == i && c.name() == e.alias)
            });
        if plain {
            return Ok(Some(barrier));
        }
        Ok(Some(Arc::new(ProjectionExec::try_new(exprs, barrier)?)))
    }

    /// Leakproof dynamic filters (see [`GovernedScanExec::accepts_early`])
    /// go on to the hidden scan, which may skip row groups, pages and (with
    /// `pushdown_filters`) rows that cannot match, and the barrier applies
    /// them to the rows the scan returns, with the row policy: without
    /// `pushdown_filters` nothing else would before the join, and a row a
    /// join is bound to drop is then neither masked nor moved. Every filter
    /// is reported unsupported, so the parent keeps evaluating its own.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<_> = child_pushdown_result
            .parent_filters
            .into_iter()
            .map(|f| f.filter)
            .collect();
        let result = FilterPushdownPropagation::with_parent_pushdown_result(vec![
            PushedDown::No;
            filters.len()
        ]);
        if phase != FilterPushdownPhase::Post {
            return Ok(result);
        }
        let early: Vec<_> = filters
            .into_iter()
            .filter(|f| self.accepts_early(f))
            .collect();
        if early.is_empty() {
            return Ok(result);
        }
        // Over the barrier's output; the hidden input may hold more columns.
        let schema = self.inner.schema();
        let early = early
            .into_iter()
            .map(|f| reassign_expr_columns(f, &schema))
            .collect::<Result<Vec<_>>>()?;
        let inner = push_into_hidden(&self.inner, early.clone(), config)?
            .unwrap_or_else(|| Arc::clone(&self.inner));
        let dynamic: Arc<[_]> = self.dynamic.iter().cloned().chain(early).collect();
        let barrier = GovernedScanExec::new(
            self.source.clone(),
            inner,
            self.predicate.clone(),
            Arc::clone(&self.masked),
            self.visible.clone(),
            self.output.clone(),
        )?
        .with_dynamic(dynamic)
        .with_awaited(Arc::clone(&self.awaited));
        Ok(result.with_updated_node(Arc::new(barrier) as Arc<dyn ExecutionPlan>))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let awaited: Vec<_> = self
            .dynamic
            .iter()
            .filter(|d| {
                d.expression_id()
                    .is_some_and(|id| self.awaited.contains(&id))
            })
            .cloned()
            .collect();
        let input = after_joins_build(self.inner.execute(partition, context)?, awaited);
        let schema: SchemaRef = self.schema();
        let predicate = self.predicate.clone();
        let source = self.source.clone();
        let mut dynamic = DynamicRows::new(Arc::clone(&self.dynamic));
        let output = self.output.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = input.map(move |batch| {
            let mut batch = batch?;
            let mut dynamic_keep = dynamic.mask(&batch)?;
            // A join keeping few of the rows (q22's anti join keeps 0.6 % of
            // the orders) narrows the batch first, so the row policy runs
            // only on rows that can leave the barrier. Both filters run on
            // every row that leaves it, in either order.
            if let (Some(_), Some(d)) = (&predicate, &dynamic_keep) {
                if d.true_count() * 2 < d.len() {
                    batch = filter_record_batch(&batch, d)?;
                    dynamic_keep = None;
                }
            }
            let passed = match &output {
                Some(columns) => batch.project(columns)?,
                None => batch.clone(),
            };
            let policy = match &predicate {
                Some(p) => Some(boolean(
                    p.evaluate(&batch)
                        .map_err(|e| row_policy_failed(&source, e))?,
                    batch.num_rows(),
                )?),
                None => None,
            };
            let keep = match (policy, dynamic_keep) {
                (Some(p), Some(d)) => Some(and(&p, &d)?),
                (p, d) => p.or(d),
            };
            let out = match keep {
                Some(k) => filter_record_batch(&passed, &k)?,
                None => passed,
            };
            baseline.record_output(out.num_rows());
            Ok(out)
        });
        // No empty batches, as DataFusion's own filter: Ballista's shuffle
        // files hold a compressed empty batch its reader cannot decode.
        let stream = stream.try_filter(|b| std::future::ready(b.num_rows() > 0));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// The error a query gets when the row policy fails on the raw rows (a
/// cast of a value that does not parse, a division by zero): DataFusion's
/// text names the value ("Cannot cast string '758-44-3250'"), which may be
/// masked or in a row the principal may not see, so it is neither shown nor
/// logged; a resource limit passes through as it is.
fn row_policy_failed(source: &str, e: DataFusionError) -> DataFusionError {
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return e;
    }
    tracing::warn!(source, "a row policy failed on the data it filters");
    VeilError::FailedPrecondition(format!(
        "a row policy on {source} failed on the data it filters, query denied (its error is \
         not shown: it can hold values this user may not see; an administrator can run the \
         policy's predicate over the source)"
    ))
    .into()
}

/// `value` (a predicate's result over `rows` rows) as a boolean array.
fn boolean(value: ColumnarValue, rows: usize) -> Result<BooleanArray> {
    let array = value.into_array(rows)?;
    match array.as_boolean_opt() {
        Some(b) => Ok(b.clone()),
        None => internal_err!("a barrier filter is not boolean: {}", array.data_type()),
    }
}

/// Plans [`GovernedScanNode`]s into the opaque physical barrier.
#[derive(Debug)]
struct GovernedScanPlanner {
    visible: Arc<VisibleStatsCache>,
}

#[async_trait]
impl ExtensionPlanner for GovernedScanPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<GovernedScanNode>() else {
            return Ok(None);
        };
        let ([logical], [physical]) = (logical_inputs, physical_inputs) else {
            return internal_err!("GovernedScan needs exactly one input");
        };
        let predicate = match &node.row_predicate {
            Some(p) => Some(crate::like_segments::rewrite(
                planner.create_physical_expr(p, logical.schema(), session, planning_ctx)?,
            )?),
            None => None,
        };
        let visible = self.visible.get(node, physical, session).await;
        let spread = !node.masked.is_empty();
        Ok(Some(Arc::new(GovernedScanExec::new(
            node.source.clone(),
            optimize_hidden_input(Arc::clone(physical), predicate.as_ref(), spread, session)?,
            predicate,
            node.masked.clone().into(),
            visible,
            None,
        )?)))
    }
}

/// The physical optimizer rules a barrier's hidden input gets (it is a
/// scan, possibly under leakproof filters and a projection): filters and
/// projections pushed into the scan, and segment `LIKE`s matched by
/// substring search (`like_segments.rs`). The rest of the physical optimizer
/// (distribution, sorting, joins, aggregates, limits) has nothing to do
/// on it and cost about 20 µs per source and statement.
const HIDDEN_INPUT_RULES: [&str; 4] = [
    "FilterPushdown",
    "ProjectionPushdown",
    "veil_like_segments",
    "EnsureCooperative",
];

/// Optimizes the input the outer physical optimizer cannot see. The row
/// policy is offered to the scan as a filter, so Parquet skips the row
/// groups and pages whose statistics rule it out (and, with
/// `pushdown_filters`, applies it while decoding); the barrier still
/// evaluates it on every row it passes, so whatever filter is left on top
/// for it is dropped. With `spread` (masks run above the barrier), the
/// batches are dealt round-robin over the target partitions.
fn optimize_hidden_input(
    input: Arc<dyn ExecutionPlan>,
    predicate: Option<&Arc<dyn PhysicalExpr>>,
    spread: bool,
    session: &dyn Session,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut inner = match predicate {
        Some(p) => Arc::new(FilterExec::try_new(Arc::clone(p), input)?) as Arc<dyn ExecutionPlan>,
        None => input,
    };
    if let Some(state) = session.as_any().downcast_ref::<SessionState>() {
        for rule in state.physical_optimizers() {
            if HIDDEN_INPUT_RULES.contains(&rule.name()) {
                inner = rule.optimize(inner, session.config_options())?;
            }
        }
    }
    if let Some(p) = predicate {
        inner = without_policy(inner, p)?;
    }
    // Outside a barrier, DataFusion splits a scan's files into byte ranges
    // for its parent (EnforceDistribution); the hidden scan has no parent
    // there, so it is split here, or a one-file source is read by one core.
    let config = session.config_options();
    let target = config.execution.target_partitions;
    if config.optimizer.repartition_file_scans && target > 1 {
        inner = inner
            .transform_up(|p| {
                if !p.children().is_empty() {
                    return Ok(Transformed::no(p));
                }
                Ok(match p.repartitioned(target, config)? {
                    Some(split) => Transformed::yes(split),
                    None => Transformed::no(p),
                })
            })?
            .data;
    }
    // Byte ranges split a file at row-group bounds, so a table of one
    // full row group and a small one (150K rows in groups of 128K) is read
    // 87 % by one partition. Outside a barrier that costs little; masks
    // above one (HMAC per value) then run mostly on one core, so the
    // batches are dealt round-robin here, where the outer optimizer (which
    // only adds round-robin when there are fewer partitions than its
    // target) cannot see the skew. Not when round-robin is off (a plan for
    // a Ballista cluster, `distributed/`): there each partition of the
    // barrier runs in a task of its own, with a repartition of its own
    // that reads the whole input and keeps what it deals to one partition.
    if spread && target > 1 && config.optimizer.enable_round_robin_repartition {
        inner = Arc::new(RepartitionExec::try_new(
            inner,
            Partitioning::RoundRobinBatch(target),
        )?);
    }
    Ok(inner)
}

/// `plan` (a barrier's hidden input) with the row policy `policy` taken out
/// of its filters. Filter pushdown leaves the policy in the filter offered
/// to the scan, and merges it into a user's filter there (`region = 'US'
/// AND email LIKE '%a%'`); the barrier evaluates it on every row anyway,
/// and only there is its error kept from the user (`row_policy_failed`):
/// evaluated in a hidden filter, a policy that fails on the data quoted
/// the raw value ("Cannot cast string '758-44-3250'"), and it ran twice.
/// The scan keeps it as its pruning predicate.
fn without_policy(
    plan: Arc<dyn ExecutionPlan>,
    policy: &Arc<dyn PhysicalExpr>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_down(|node| {
        let Some(filter) = node.downcast_ref::<FilterExec>() else {
            return Ok(Transformed::no(node));
        };
        // The policy over this filter's input (a projection between them
        // moves its columns).
        let Ok(here) = reassign_expr_columns(Arc::clone(policy), &filter.input().schema()) else {
            return Ok(Transformed::no(node));
        };
        let policy_parts = split_conjunction(&here);
        let parts = split_conjunction(filter.predicate());
        let kept: Vec<Arc<dyn PhysicalExpr>> = parts
            .iter()
            .filter(|c| !policy_parts.iter().any(|p| *p == **c))
            .map(|c| Arc::clone(c))
            .collect();
        if kept.len() == parts.len() {
            return Ok(Transformed::no(node));
        }
        if kept.is_empty() && filter.projection().is_none() && filter.fetch().is_none() {
            return Ok(Transformed::yes(Arc::clone(filter.input())));
        }
        let predicate = conjunction(kept);
        let rebuilt = FilterExecBuilder::from(filter)
            .with_predicate(predicate)
            .build()?;
        Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// DataFusion's default planner plus the governance barrier, and, when
/// given a statement's memory share, the input bounds of
/// `bounded_inputs.rs` on every function call; a governed statement's
/// join conditions check its interrupt (`interrupt.rs`).
#[derive(Debug, Default)]
pub struct GovernedQueryPlanner {
    /// Bytes one function call's arguments may take (`query_memory`);
    /// `None` plans unbounded.
    pub input_limit: Option<usize>,
    /// Statistics of visible rows, shared by the engine's statements.
    pub visible: Arc<VisibleStatsCache>,
    /// Plans for a Ballista cluster: no join waits on this process's
    /// interrupt, no aggregate is shared between consumers in memory, no
    /// function is wrapped in this process's memory budget.
    pub distributed: bool,
}

#[async_trait]
impl QueryPlanner for GovernedQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(GovernedScanPlanner {
                visible: Arc::clone(&self.visible),
            }),
            Arc::new(crate::shared_plan::SharedPlanner),
        ]);
        let mut plan = logical_plan.clone();
        // On a cluster, executors bound memory with their own pools.
        if let Some(limit) = self.input_limit.filter(|_| !self.distributed) {
            let batch = session.config_options().execution.batch_size.get();
            plan = crate::bounded_inputs::bound_inputs(plan, limit, batch)?;
        }
        // A statement's join conditions stop when it does (interrupt.rs).
        if let Some(governance) = session
            .config_options()
            .extensions
            .get::<StatementGovernance>()
            .filter(|_| !self.distributed)
        {
            plan = crate::interrupt::interruptible_joins(plan, &governance.0.interrupt)?;
        }
        // An aggregate the query repeats runs once (shared_plan.rs).
        if !self.distributed {
            plan = crate::shared_plan::share_repeated(plan)?;
        }
        // Decimal arithmetic that cannot overflow skips arrow's per-row
        // overflow check (decimal_arith.rs).
        let plan = crate::decimal_arith::unchecked_decimal_arith(plan)?;
        // Decimal averages share their aggregate's sums and count (avg_sums.rs).
        let plan = crate::avg_sums::averages_from_sums(plan)?;
        planner.create_physical_plan(&plan, session).await
    }
}

#[cfg(test)]
pub(super) mod tests {
    use datafusion::arrow::array::RecordBatch;
    use datafusion::datasource::provider_as_source;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::logical_expr::{col, lit, LogicalPlanBuilder};
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    use super::*;

    /// The demo employees file: 1000 rows, about a quarter in region US.
    const EMPLOYEES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/hr/employees.parquet"
    );

    /// Registers the demo employees file in `ctx` as `name` and returns a
    /// logical scan of it.
    pub(in crate::governance) async fn employees_scan(
        ctx: &SessionContext,
        name: &str,
    ) -> LogicalPlanBuilder {
        ctx.register_parquet(name, EMPLOYEES, ParquetReadOptions::default())
            .await
            .unwrap();
        let table = ctx.table_provider(name).await.unwrap();
        LogicalPlanBuilder::scan(name, provider_as_source(table), None).unwrap()
    }

    /// A session state that plans barriers.
    fn governed_state() -> SessionState {
        SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(Arc::new(GovernedQueryPlanner::default()))
            .build()
    }

    /// Plans `GovernedScan(region = 'US')`, with `masked` columns, over the
    /// demo employees file and returns the barrier's hidden input, printed.
    async fn hidden_input(pushdown_filters: bool, partitions: usize, masked: &[&str]) -> String {
        hidden_input_with(pushdown_filters, partitions, masked, true).await
    }

    async fn hidden_input_with(
        pushdown_filters: bool,
        partitions: usize,
        masked: &[&str],
        round_robin: bool,
    ) -> String {
        let mut state = governed_state();
        state
            .config_mut()
            .options_mut()
            .execution
            .parquet
            .pushdown_filters = pushdown_filters;
        let options = state.config_mut().options_mut();
        options.execution.target_partitions = partitions;
        // The demo file is small: split it anyway.
        options.optimizer.repartition_file_min_size = 0;
        options.optimizer.enable_round_robin_repartition = round_robin;
        let ctx = SessionContext::new_with_state(state);
        let scan = employees_scan(&ctx, "employees").await.build().unwrap();
        let barrier = us_only(scan, masked.iter().map(|m| m.to_string()).collect());
        let plan = ctx.state().create_physical_plan(&barrier).await.unwrap();
        let mut node = &plan;
        while node.downcast_ref::<GovernedScanExec>().is_none() {
            node = node.children()[0];
        }
        let exec = node.downcast_ref::<GovernedScanExec>().unwrap();
        assert!(
            exec.predicate.is_some(),
            "the barrier evaluates the policy itself"
        );
        let shown = displayable(exec.inner.as_ref()).indent(true).to_string();
        shown
    }

    #[tokio::test]
    async fn the_row_policy_prunes_the_hidden_parquet_scan() {
        // Statistics pruning only: the scan takes the predicate, and the
        // filter left for the barrier (which evaluates it anyway) is gone.
        let inner = hidden_input(false, 1, &[]).await;
        assert!(inner.starts_with("DataSourceExec"), "{inner}");
        assert!(inner.contains("predicate=region@"), "{inner}");
        assert!(!inner.contains("FilterExec"), "{inner}");
        // With pushdown_filters the scan applies it while decoding too.
        let inner = hidden_input(true, 1, &[]).await;
        assert!(inner.starts_with("DataSourceExec"), "{inner}");
        assert!(inner.contains("predicate=region@"), "{inner}");
    }

    #[tokio::test]
    async fn the_hidden_scan_is_split_across_target_partitions() {
        // One file, read by four partitions (byte ranges), as DataFusion
        // does for a scan outside a barrier.
        assert!(hidden_input(false, 1, &[])
            .await
            .contains("file_groups={1 group:"));
        let inner = hidden_input(false, 4, &[]).await;
        assert!(inner.contains("file_groups={4 groups:"), "{inner}");
        assert!(inner.contains("predicate=region@"), "{inner}");
        assert!(!inner.contains("RepartitionExec"), "{inner}");
    }

    #[tokio::test]
    async fn a_masked_barrier_deals_its_batches_round_robin() {
        // Masks run above the barrier, so its batches are spread evenly
        // (byte ranges may leave most rows to one partition); the scan
        // below still gets its ranges and the row policy.
        let inner = hidden_input(false, 2, &["salary"]).await;
        assert!(
            inner.starts_with("RepartitionExec: partitioning=RoundRobinBatch(2)"),
            "{inner}"
        );
        assert!(inner.contains("file_groups={2 groups:"), "{inner}");
        assert!(inner.contains("predicate=region@"), "{inner}");
        // One partition: nothing to spread.
        let inner = hidden_input(false, 1, &["salary"]).await;
        assert!(!inner.contains("RepartitionExec"), "{inner}");
        // Round-robin off (plans for a Ballista cluster, where each
        // partition runs in a task of its own): nothing dealt either.
        let inner = hidden_input_with(false, 2, &["salary"], false).await;
        assert!(!inner.contains("RepartitionExec"), "{inner}");
        assert!(inner.contains("file_groups={2 groups:"), "{inner}");
    }

    #[tokio::test]
    async fn a_barrier_passes_on_only_the_columns_read_above_it() {
        // `SELECT employee_id, upper(department) FROM employees` behind
        // `region = 'US'`, with a filter on `email` inside the barrier (as
        // leakproof filters are pushed): the barrier passes on the two
        // columns read above it; its hidden input keeps `region` for the
        // policy and reads `email` for the filter without passing it up.
        // (One partition: DataFusion keeps a projection that computes
        // above the round-robin it would otherwise add over the small file.)
        let mut state = governed_state();
        state.config_mut().options_mut().execution.target_partitions = 1;
        let ctx = SessionContext::new_with_state(state);
        employees_scan(&ctx, "employees").await;
        let barrier = us_employees_with_a_in_email(&ctx).await;
        let query = LogicalPlanBuilder::from(barrier)
            .project(vec![
                col("employee_id"),
                datafusion::functions::string::expr_fn::upper(col("department")).alias("d"),
            ])
            .unwrap()
            .build()
            .unwrap();
        let plan = ctx.state().create_physical_plan(&query).await.unwrap();
        let exec = find_barrier(&plan).expect("a barrier");
        let names = |schema: SchemaRef| -> Vec<String> {
            schema.fields().iter().map(|f| f.name().clone()).collect()
        };
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert_eq!(
            names(exec.schema()),
            ["employee_id", "department"],
            "{shown}"
        );
        let inner = displayable(exec.inner.as_ref()).indent(true).to_string();
        assert_eq!(
            names(exec.inner.schema()),
            ["employee_id", "department", "region"],
            "{inner}"
        );
        assert!(inner.contains("email@"), "the filter still runs: {inner}");
        // The same rows as the policy and the filter written as SQL.
        let got = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let want = ctx
            .sql(
                "SELECT employee_id, upper(department) AS d FROM employees \
                 WHERE region = 'US' AND email LIKE '%a%'",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let sorted = |batches: &[datafusion::arrow::record_batch::RecordBatch]| {
            let shown = datafusion::arrow::util::pretty::pretty_format_batches(batches)
                .unwrap()
                .to_string();
            let mut lines: Vec<String> = shown.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        let rows = sorted(&got);
        assert_eq!(rows, sorted(&want));
        assert!(rows.len() > 100, "{rows:?}");

        // A projection that reads no column: the barrier passes on none,
        // and still one row per row the policy and the filter keep.
        let ones = LogicalPlanBuilder::from(us_employees_with_a_in_email(&ctx).await)
            .project(vec![lit(1).alias("one")])
            .unwrap()
            .build()
            .unwrap();
        let plan = ctx.state().create_physical_plan(&ones).await.unwrap();
        assert!(find_barrier(&plan)
            .expect("a barrier")
            .schema()
            .fields()
            .is_empty());
        let got = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let counted: usize = got.iter().map(|b| b.num_rows()).sum();
        assert_eq!(counted, rows.len() - 4, "{rows:?}");
    }

    /// `GovernedScan(region = 'US')` over the `employees` table registered
    /// in `ctx`, with `email LIKE '%a%'` inside (as a pushed leakproof
    /// filter would be).
    #[tokio::test]
    async fn the_row_policy_runs_in_the_barrier_alone_under_a_users_filter() {
        // A user's filter inside the barrier (`email LIKE '%a%'`): the
        // hidden input's FilterExec runs it, and the policy stays out of it
        // (the scan takes it for pruning; the barrier evaluates it, where
        // its errors are kept from the user).
        for partitions in [1, 4] {
            let mut state = governed_state();
            state.config_mut().options_mut().execution.target_partitions = partitions;
            let ctx = SessionContext::new_with_state(state);
            employees_scan(&ctx, "employees").await;
            let barrier = us_employees_with_a_in_email(&ctx).await;
            let plan = ctx.state().create_physical_plan(&barrier).await.unwrap();
            let exec = find_barrier(&plan).expect("a barrier");
            let inner = displayable(exec.inner.as_ref()).indent(true).to_string();
            let filters: Vec<&str> = inner.lines().filter(|l| l.contains("FilterExec")).collect();
            assert_eq!(filters.len(), 1, "{inner}");
            assert!(filters[0].contains("email@"), "{inner}");
            assert!(!filters[0].contains("region@"), "{inner}");
            assert!(inner.contains("pruning_predicate=region"), "{inner}");
        }
    }

    async fn us_employees_with_a_in_email(ctx: &SessionContext) -> LogicalPlan {
        let table = ctx.table_provider("employees").await.unwrap();
        let scan = LogicalPlanBuilder::scan("employees", provider_as_source(table), None)
            .unwrap()
            .filter(col("email").like(lit("%a%")))
            .unwrap()
            .build()
            .unwrap();
        us_only(scan, vec![])
    }

    /// `GovernedScan(region = 'US')` over `scan` (of the employees file),
    /// its parent masking `masked`.
    fn us_only(scan: LogicalPlan, masked: Vec<String>) -> LogicalPlan {
        GovernedScanNode {
            source: "hr.employees".into(),
            input: scan,
            row_predicate: Some(col("region").eq(lit("US"))),
            masked,
            policies: vec!["employees_region".into()],
        }
        .into_plan()
    }

    /// The barrier found anywhere in `plan`.
    fn find_barrier(plan: &Arc<dyn ExecutionPlan>) -> Option<&GovernedScanExec> {
        if let Some(b) = plan.downcast_ref::<GovernedScanExec>() {
            return Some(b);
        }
        plan.children().into_iter().find_map(find_barrier)
    }

    /// `SELECT employee_id FROM picked WHERE employee_id < 3`, `picked`
    /// registered in `ctx` as another copy of the employees file.
    async fn picked_employee_ids(ctx: &SessionContext) -> LogicalPlan {
        employees_scan(ctx, "picked")
            .await
            .filter(col("picked.employee_id").lt(lit(3)))
            .unwrap()
            .project(vec![col("picked.employee_id")])
            .unwrap()
            .build()
            .unwrap()
    }

    /// Plans and runs `left JOIN right ON left.key = right.key` (inner).
    async fn run_inner_join(
        ctx: &SessionContext,
        left: LogicalPlan,
        right: LogicalPlan,
        keys: (&str, &str),
    ) -> (Arc<dyn ExecutionPlan>, usize) {
        let join = LogicalPlanBuilder::from(left)
            .join(
                right,
                datafusion::logical_expr::JoinType::Inner,
                (vec![keys.0], vec![keys.1]),
                None,
            )
            .unwrap()
            .build()
            .unwrap();
        let (plan, got) = plan_and_collect(ctx, &join).await;
        (plan, got.iter().map(|b| b.num_rows()).sum())
    }

    /// The physical plan of `plan` and the batches it returns.
    async fn plan_and_collect(
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> (Arc<dyn ExecutionPlan>, Vec<RecordBatch>) {
        let plan = ctx.state().create_physical_plan(plan).await.unwrap();
        let got = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .unwrap();
        (plan, got)
    }

    /// The count `sql` (a `SELECT count(*) ...`) returns, as a row count.
    async fn count(ctx: &SessionContext, sql: &str) -> usize {
        let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let n = b[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0);
        usize::try_from(n).unwrap()
    }

    /// Plans `picked JOIN GovernedScan(employees) USING employee_id`, where
    /// `picked` is a few employees (the build side), and returns the
    /// barrier's hidden input, printed. With `narrow`, only `employee_id`
    /// and `name` are read above the barrier, which is narrowed to them.
    async fn hidden_input_of_a_joined_barrier(
        masked: Vec<String>,
        partitions: usize,
        narrow: bool,
    ) -> String {
        let mut state = governed_state();
        state.config_mut().options_mut().execution.target_partitions = partitions;
        let ctx = SessionContext::new_with_state(state);
        let picked = picked_employee_ids(&ctx).await;
        let employees = employees_scan(&ctx, "employees").await;
        let barrier = us_only(employees.build().unwrap(), masked);
        let barrier = if narrow {
            LogicalPlanBuilder::from(barrier)
                .project(vec![col("employees.employee_id"), col("employees.name")])
                .unwrap()
                .build()
                .unwrap()
        } else {
            barrier
        };
        let join = LogicalPlanBuilder::from(picked)
            .join(
                barrier,
                datafusion::logical_expr::JoinType::Inner,
                (vec!["picked.employee_id"], vec!["employees.employee_id"]),
                None,
            )
            .unwrap()
            .build()
            .unwrap();
        let plan = ctx.state().create_physical_plan(&join).await.unwrap();
        let exec = find_barrier(&plan).expect("a barrier");
        assert_eq!(
            exec.schema().fields().len() == 2,
            narrow,
            "{:?}",
            exec.schema()
        );
        let shown = displayable(exec.inner.as_ref()).indent(true).to_string();
        // The barrier applies the filters its hidden scan got, no other.
        assert_eq!(
            exec.dynamic.is_empty(),
            !shown.contains("DynamicFilter"),
            "{shown}"
        );
        shown
    }

    #[tokio::test]
    async fn a_dynamic_filter_is_rebound_to_the_narrowed_hidden_input() {
        // `picked JOIN (SELECT name, salary FROM GovernedScan(employees))
        // ON salary`: the barrier passes on [name, salary] and keeps
        // `region` inside for the policy, so `salary` is column 1 above the
        // barrier and column 2 in its hidden input; the join's filter must
        // reach the scan on `salary`, not on whatever column 1 is there.
        // With `pushdown_filters` the scan applies it to every row, so a
        // filter on the wrong column would drop or fail rows.
        let mut state = governed_state();
        let options = state.config_mut().options_mut();
        options.execution.target_partitions = 1;
        options.execution.parquet.pushdown_filters = true;
        let ctx = SessionContext::new_with_state(state);
        let picked = employees_scan(&ctx, "picked")
            .await
            .filter(col("picked.employee_id").lt(lit(3)))
            .unwrap()
            .project(vec![col("picked.salary").alias("paid")])
            .unwrap()
            .build()
            .unwrap();
        employees_scan(&ctx, "employees").await;
        let barrier = LogicalPlanBuilder::from(us_employees_with_a_in_email(&ctx).await)
            .project(vec![col("employees.name"), col("employees.salary")])
            .unwrap()
            .build()
            .unwrap();
        let (plan, counted) =
            run_inner_join(&ctx, picked, barrier, ("paid", "employees.salary")).await;
        let exec = find_barrier(&plan).expect("a barrier");
        assert_eq!(exec.schema().fields().len(), 2, "{:?}", exec.schema());
        let inner = displayable(exec.inner.as_ref()).indent(true).to_string();
        // Filled by the join (it finds its filter among the barrier's
        // expressions) and on `salary`.
        assert!(inner.contains("DynamicFilter [ salary@"), "{inner}");
        let want = count(
            &ctx,
            "SELECT count(*) FROM employees p JOIN employees e ON p.salary = e.salary \
             WHERE p.employee_id < 3 AND e.region = 'US' AND e.email LIKE '%a%'",
        )
        .await;
        assert!(counted > 0);
        assert_eq!(counted, want);
    }

    #[tokio::test]
    async fn the_barrier_drops_rows_a_join_key_filter_rules_out() {
        // `picked JOIN GovernedScan(region = 'US') USING employee_id`,
        // DataFusion's defaults (no `pushdown_filters`, so the scan prunes
        // by statistics only): once the build side (two employees) is
        // known, the barrier passes on only the rows that can match, not
        // every US employee, and the answer is the same.
        // Also with both sides hash partitioned: the join's filter is then
        // one `IN` list per partition, which the barrier applies as one
        // list (`any_partition.rs`), still after its policy.
        let cases = [
            (vec![], false),
            (vec!["salary".to_string()], false),
            (vec![], true),
        ];
        for (masked, partitioned) in cases {
            let mut state = governed_state();
            if partitioned {
                let options = state.config_mut().options_mut();
                options.execution.target_partitions = 2;
                options.optimizer.hash_join_single_partition_threshold = 0;
                options.optimizer.hash_join_single_partition_threshold_rows = 0;
            }
            let ctx = SessionContext::new_with_state(state);
            let picked = picked_employee_ids(&ctx).await;
            let employees = employees_scan(&ctx, "employees").await;
            let barrier = us_only(employees.build().unwrap(), masked.clone());
            let (plan, joined) = run_inner_join(
                &ctx,
                picked,
                barrier,
                ("picked.employee_id", "employees.employee_id"),
            )
            .await;
            let want = count(
                &ctx,
                "SELECT count(*) FROM employees WHERE employee_id < 3 AND region = 'US'",
            )
            .await;
            let us = count(&ctx, "SELECT count(*) FROM employees WHERE region = 'US'").await;
            // The join keeps a picked row the policy hides (the barrier
            // narrows its batches to the join's rows before the policy).
            let picked_rows =
                count(&ctx, "SELECT count(*) FROM employees WHERE employee_id < 3").await;
            assert!(want >= 1 && want < picked_rows, "{want} {picked_rows}");
            assert_eq!(joined, want, "{masked:?} {partitioned}");
            let text = displayable(plan.as_ref()).indent(true).to_string();
            assert_eq!(text.contains("mode=Partitioned"), partitioned, "{text}");
            let exec = find_barrier(&plan).expect("a barrier");
            let passed = exec.metrics().and_then(|m| m.output_rows()).unwrap();
            assert!(us > 100, "{us}");
            assert_eq!(passed, want, "{masked:?} {partitioned}");
        }
    }

    #[tokio::test]
    async fn a_topk_threshold_applied_by_the_barrier_keeps_the_top_visible_rows() {
        // `ORDER BY salary DESC LIMIT 5` over `GovernedScan(region = 'US')`
        // in batches of 64 rows: the TopK's threshold tightens as it reads
        // and the barrier drops raw rows below it, before the policy. The
        // answer is still the top five US salaries, not the top five of
        // every region.
        let mut state = governed_state();
        let options = state.config_mut().options_mut();
        options
            .set("datafusion.execution.batch_size", "64")
            .unwrap();
        options.execution.target_partitions = 2;
        options.optimizer.repartition_file_min_size = 0;
        let ctx = SessionContext::new_with_state(state);
        let scan = employees_scan(&ctx, "employees").await.build().unwrap();
        let top = LogicalPlanBuilder::from(us_only(scan, vec![]))
            .project(vec![col("employees.employee_id"), col("employees.salary")])
            .unwrap()
            .sort(vec![
                col("employees.salary").sort(false, true),
                col("employees.employee_id").sort(true, true),
            ])
            .unwrap()
            .limit(0, Some(5))
            .unwrap()
            .build()
            .unwrap();
        let (plan, got) = plan_and_collect(&ctx, &top).await;
        let want = ctx
            .sql(
                "SELECT employee_id, salary FROM employees WHERE region = 'US' \
                 ORDER BY salary DESC, employee_id LIMIT 5",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let shown = |b: &[RecordBatch]| {
            datafusion::arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };
        assert_eq!(shown(&got), shown(&want));
        let exec = find_barrier(&plan).expect("a barrier");
        assert!(
            !exec.dynamic.is_empty(),
            "the TopK's filter reached the barrier"
        );
        // Fewer than every US employee left the barrier.
        let us = count(&ctx, "SELECT count(*) FROM employees WHERE region = 'US'").await;
        let passed = exec.metrics().and_then(|m| m.output_rows()).unwrap();
        assert!(passed < us, "{passed} of {us}");
    }

    #[tokio::test]
    async fn a_join_key_dynamic_filter_reaches_the_hidden_scan_only_on_an_unmasked_column() {
        // Whole or narrowed to the columns read above it (the filter is
        // written over the barrier's output and re-bound to its input).
        for narrow in [false, true] {
            // employee_id passes the barrier unmasked: the join's build-side
            // keys may prune the raw scan (the policy still runs on every row).
            let inner = hidden_input_of_a_joined_barrier(vec![], 1, narrow).await;
            assert!(inner.contains("DynamicFilter"), "{inner}");
            // Also through the round-robin of a barrier that masks another column.
            let inner = hidden_input_of_a_joined_barrier(vec!["salary".into()], 2, narrow).await;
            assert!(inner.contains("RoundRobinBatch(2)"), "{inner}");
            assert!(inner.contains("DynamicFilter"), "{inner}");
            // Masked, it must not: the raw values are not what the join sees.
            for partitions in [1, 2] {
                let inner = hidden_input_of_a_joined_barrier(
                    vec!["employee_id".into()],
                    partitions,
                    narrow,
                )
                .await;
                assert!(!inner.contains("DynamicFilter"), "{inner}");
            }
        }
    }

    #[tokio::test]
    async fn a_barrier_holding_a_join_filter_reads_only_once_the_join_has_built() {
        // Like a scan (`dynamic_scan.rs`): a barrier started before the
        // hash join whose filter it applies has built waits for it, then
        // passes only the rows that filter keeps and its policy allows.
        use datafusion::logical_expr::Operator;
        use datafusion::physical_expr::expressions::{lit as plit, BinaryExpr};
        use datafusion::physical_plan::collect;
        let (scan, filter) = crate::dynamic_scan::k_scan_with_filter();
        let k: Arc<dyn PhysicalExpr> = Arc::new(Column::new("k", 0));
        // The policy: even k only.
        let two = Arc::new(BinaryExpr::new(
            Arc::clone(&k),
            Operator::Modulo,
            plit(2i64),
        ));
        let even = Arc::new(BinaryExpr::new(two, Operator::Eq, plit(0i64)));
        let barrier =
            GovernedScanExec::new("s.t".into(), scan, Some(even), Arc::new([]), None, None)
                .unwrap()
                .with_dynamic(vec![Arc::clone(&filter) as Arc<dyn PhysicalExpr>].into());
        let barrier: Arc<dyn ExecutionPlan> = Arc::new(barrier);
        // A filter no join of the plan produces is not waited for.
        assert!(awaiting_joins(&barrier, &HashSet::new()).unwrap().is_none());
        let id = filter.expression_id().unwrap();
        let waiting = awaiting_joins(&barrier, &HashSet::from([id]))
            .unwrap()
            .unwrap();
        let task = SessionContext::new().task_ctx();
        let run = tokio::spawn(collect(waiting, task));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!run.is_finished(), "the barrier read before the join built");
        filter
            .update(Arc::new(BinaryExpr::new(k, Operator::Lt, plit(10i64))))
            .unwrap();
        filter.mark_complete();
        let batches = run.await.unwrap().unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        // k < 10 and even: 0, 2, 4, 6, 8.
        assert_eq!(rows, 5);
    }
}
