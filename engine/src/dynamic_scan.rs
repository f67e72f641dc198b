//! A hash join's build-side keys filter its probe scan's rows.
//!
//! DataFusion hands a hash join's build-side keys (bounds and a lookup, or
//! an `IN` list) to the probe side's scan as a dynamic filter. With Parquet
//! filter pushdown off, DataFusion's default, the scan uses it only to skip
//! row groups and pages by their statistics: every row of a page it reads
//! reaches the join, which hashes and looks up each one. TPC-H q17 joins
//! 6M `lineitem` rows with 204 parts, twice: 165 ms of CPU in the two
//! joins' probes for 12K matching rows.
//!
//! [`DynamicScanRows`] wraps each scan whose predicate holds dynamic
//! filters in a [`DynamicRowsExec`], which evaluates them on the scan's
//! batches, as a barrier does on its rows (`dynamic_rows.rs`): each while
//! it drops more than a tenth of the rows it is given, the most selective
//! first, a partitioned join's per-partition filter as one filter over all
//! partitions (`any_partition.rs`; q18's last join keeps 182 of 6M
//! `lineitem` rows). The join then probes only rows that can match. It never enters a
//! barrier (whose hidden input is no child), and a filter only drops rows
//! the join would drop: its keys are the build side's, which the same
//! query reads.
//!
//! A scan holding a filter that a hash join of the same plan produces waits,
//! before it reads, until that join has built (at most [`FILTER_WAIT`]). A
//! join reads its probe side only once it has built, so this changes
//! nothing for its own probe scan; but DataFusion starts every partition of
//! a `CoalescePartitionsExec` (a collected join's build side) as soon as the
//! plan is executed, so such a scan raced the joins above it: in TPC-H q7
//! the customer scan passed 34.6K-42.2K of 150K rows where the nation
//! join's filter keeps 12K, and the orders filtered by those customers went
//! on to the next join's build. Only hash joins' filters are waited for: a
//! TopK's or an aggregate's completes when its own input ends, and that
//! input may be this scan.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, Result, Statistics};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, DynamicFilterPhysicalExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_expr::utils::reassign_expr_columns;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    StatisticsArgs,
};
use futures::StreamExt;

use crate::adaptive_and::AdaptiveAnd;
use crate::dynamic_rows::DynamicRows;
use crate::timeslice::TimesliceExec;

/// Longest a scan waits for the hash joins whose filters it holds to build.
/// A join that never fills its filter at run time (its dynamic filter
/// pushdown turned off after planning) then costs this wait once per
/// partition, not a hang; a build that takes longer leaves the scan to
/// start unfiltered, as it did before.
pub(crate) const FILTER_WAIT: Duration = Duration::from_millis(500);

/// The physical optimizer rule (see the module documentation). It runs
/// after DataFusion's post-optimization filter pushdown, which hands the
/// dynamic filters to the scans.
#[derive(Debug, Default)]
pub struct DynamicScanRows;

impl PhysicalOptimizerRule for DynamicScanRows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Every filter a hash join of the plan produces.
        let mut produced: HashSet<u64> = HashSet::new();
        plan.apply(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                produced.extend(
                    join.dynamic_expressions_produced()
                        .iter()
                        .filter_map(|f| f.expression_id()),
                );
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        // Per scan probed directly by a hash join: that join's filter.
        let mut direct: Vec<(*const (), u64)> = vec![];
        plan.transform_down(|node| {
            if node.is::<DynamicRowsExec>() {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                if let Some(scan) = probed_scan(join.right()) {
                    let scan = Arc::as_ptr(scan) as *const ();
                    for filter in join.dynamic_expressions_produced() {
                        if let Some(id) = filter.expression_id() {
                            direct.push((scan, id));
                        }
                    }
                }
            }
            // A barrier applies its dynamic filters itself (its hidden
            // input is no child): it waits like a scan.
            if let Some(barrier) = crate::governance::awaiting_joins(&node, &produced)? {
                return Ok(Transformed::new(barrier, true, TreeNodeRecursion::Jump));
            }
            if !node.is::<DataSourceExec>() {
                return Ok(Transformed::no(node));
            }
            let filters = dynamic_filters(&node)?;
            if filters.is_empty() {
                return Ok(Transformed::no(node));
            }
            let scan = Arc::as_ptr(&node) as *const ();
            let probed_by: Vec<u64> = direct
                .iter()
                .filter(|(s, _)| *s == scan)
                .map(|(_, id)| *id)
                .collect();
            let joins_build = filters
                .iter()
                .map(|f| f.expression_id().is_some_and(|id| produced.contains(&id)))
                .collect::<Vec<_>>();
            let filters = filters
                .into_iter()
                .map(|f| {
                    let own = f.expression_id().is_some_and(|id| probed_by.contains(&id));
                    (f, own)
                })
                .collect();
            let wrapped: Arc<dyn ExecutionPlan> =
                Arc::new(DynamicRowsExec::new(node, filters).awaiting(&joins_build));
            Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "veil_dynamic_scan_rows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The scan a join's probe side is, through nodes that neither drop nor
/// reorder rows across keys (projections, yield points, round-robin
/// repartitioning: the join itself would probe every row the scan passes) and
/// filters of a few comparisons ([`cheap`]): the join would probe the rows
/// such a filter keeps, so a lookup in the scan repeats the join's for
/// them, and pays only when it is cheap and drops most rows
/// (`dynamic_rows::own_lookup_pays`). TPC-H q4 spent 98 ms of CPU looking
/// up 6M `lineitem` rows in a hash table of orders in the scan, where
/// `l_receiptdate > l_commitdate` costs a few ns a row; q19's lookup in
/// an array of 485 parts costs 3-9 ns a row (its keys come in random
/// order) and spares 5.87M rows a string filter of about 16 ns a row.
fn probed_scan(probe: &Arc<dyn ExecutionPlan>) -> Option<&Arc<dyn ExecutionPlan>> {
    let mut node = probe;
    loop {
        if node.is::<DataSourceExec>() {
            return Some(node);
        }
        let thin = node.is::<CooperativeExec>()
            || node.is::<TimesliceExec>()
            || node.is::<ProjectionExec>()
            || node
                .downcast_ref::<RepartitionExec>()
                .is_some_and(|r| matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)))
            || node
                .downcast_ref::<FilterExec>()
                .is_some_and(|f| cheap(f.predicate()));
        match (thin, node.children().as_slice()) {
            (true, [child]) => node = child,
            _ => return None,
        }
    }
}

/// Whether `predicate` only compares columns and literals, combined with
/// `AND`, `OR`, `NOT` and `IS [NOT] NULL`: a few comparisons per row, no
/// function call, cast, `LIKE`, `IN` list or `CASE`.
fn cheap(predicate: &Arc<dyn PhysicalExpr>) -> bool {
    use datafusion::logical_expr::Operator::*;
    predicate
        .exists(|e| {
            let any: &dyn std::any::Any = e.as_ref();
            let ok = any.is::<Column>()
                || any.is::<Literal>()
                || any.is::<NotExpr>()
                || any.is::<IsNullExpr>()
                || any.is::<IsNotNullExpr>()
                || any.is::<AdaptiveAnd>()
                || any.downcast_ref::<BinaryExpr>().is_some_and(|b| {
                    matches!(
                        b.op(),
                        Eq | NotEq
                            | Lt
                            | LtEq
                            | Gt
                            | GtEq
                            | And
                            | Or
                            | IsDistinctFrom
                            | IsNotDistinctFrom
                    )
                });
            Ok(!ok)
        })
        .is_ok_and(|costly| !costly)
}

/// The dynamic filters among `scan`'s expressions, bound to its output
/// columns (a filter on a column the scan does not output is left out).
fn dynamic_filters(scan: &Arc<dyn ExecutionPlan>) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    let mut found = vec![];
    scan.apply_expressions(&mut |root| {
        root.apply(|e| {
            let any: &dyn std::any::Any = e.as_ref();
            if any.is::<DynamicFilterPhysicalExpr>() {
                found.push(Arc::clone(e));
                return Ok(TreeNodeRecursion::Jump);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    let schema = scan.schema();
    Ok(found
        .into_iter()
        .filter_map(|d| reassign_expr_columns(d, &schema).ok())
        .collect())
}

/// `input`, read only once the dynamic filters `awaited` (filters hash
/// joins produce) are complete, or [`FILTER_WAIT`] has passed. Creating a
/// scan's stream reads nothing; its first poll opens the files (and prunes
/// row groups by the filters as they are then).
pub(crate) fn after_joins_build(
    input: SendableRecordBatchStream,
    awaited: Vec<Arc<dyn PhysicalExpr>>,
) -> SendableRecordBatchStream {
    if awaited.is_empty() {
        return input;
    }
    let schema = input.schema();
    let built = async move {
        for filter in &awaited {
            let any: &dyn std::any::Any = filter.as_ref();
            if let Some(dynamic) = any.downcast_ref::<DynamicFilterPhysicalExpr>() {
                dynamic.wait_complete().await;
            }
        }
    };
    let waited = async move {
        // Past the bound the scan reads as it did before.
        let _ = tokio::time::timeout(FILTER_WAIT, built).await;
        input
    };
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::once(waited).flatten(),
    ))
}

/// A scan's rows that its dynamic filters keep (see the module
/// documentation); passes order, partitioning and statistics through.
#[derive(Debug)]
pub struct DynamicRowsExec {
    input: Arc<dyn ExecutionPlan>,
    filters: Arc<[Arc<dyn PhysicalExpr>]>,
    /// Per filter: whether its join probes this scan's rows directly.
    own: Arc<[bool]>,
    /// Per filter: whether a hash join of the plan produces it, so the scan
    /// waits for it to be built before reading (see the module doc).
    awaited: Arc<[bool]>,
    metrics: ExecutionPlanMetricsSet,
}

impl DynamicRowsExec {
    /// `input`'s rows that `filters` (over its schema) keep; each flagged
    /// when its join probes `input` directly, so a lookup that repeats the
    /// join's is applied only while it pays (`dynamic_rows.rs`).
    pub fn new(input: Arc<dyn ExecutionPlan>, filters: Vec<(Arc<dyn PhysicalExpr>, bool)>) -> Self {
        let (filters, own): (Vec<_>, Vec<_>) = filters.into_iter().unzip();
        Self {
            input,
            awaited: vec![false; filters.len()].into(),
            filters: filters.into(),
            own: own.into(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The same, waiting before it reads for the filters flagged in
    /// `awaited` (one flag per filter: those a hash join of the plan
    /// produces) to be complete, for at most [`FILTER_WAIT`].
    pub fn awaiting(mut self, awaited: &[bool]) -> Self {
        self.awaited = self
            .filters
            .iter()
            .enumerate()
            .map(|(i, _)| awaited.get(i).copied().unwrap_or(false))
            .collect();
        self
    }
}

impl DisplayAs for DynamicRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DynamicRowsExec: ")?;
        for (i, filter) in self.filters.iter().enumerate() {
            if i > 0 {
                write!(f, " AND ")?;
            }
            write!(f, "{filter}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DynamicRowsExec {
    fn name(&self) -> &str {
        "DynamicRowsExec"
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
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for filter in self.filters.iter() {
            if f(filter)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("DynamicRowsExec has one child");
        }
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            filters: Arc::clone(&self.filters),
            own: Arc::clone(&self.own),
            awaited: Arc::clone(&self.awaited),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let awaited: Vec<Arc<dyn PhysicalExpr>> = self
            .filters
            .iter()
            .zip(self.awaited.iter())
            .filter(|(_, awaited)| **awaited)
            .map(|(f, _)| Arc::clone(f))
            .collect();
        let input = after_joins_build(input, awaited);
        let mut rows = DynamicRows::new(Arc::clone(&self.filters)).probed_by(&self.own);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = input.map(move |batch| {
            let batch = batch?;
            let timer = baseline.elapsed_compute().timer();
            let out = match rows.mask(&batch)? {
                Some(keep) => filter_record_batch(&batch, &keep)?,
                None => batch,
            };
            timer.done();
            baseline.record_output(out.num_rows());
            Ok(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
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
            Some(s) => Ok(Arc::new(s.as_ref().clone().to_inexact())),
            None => internal_err!("DynamicRowsExec has one child"),
        }
    }
}

/// For tests here and in the barrier's: `k` = 0..100 in one in-memory
/// batch, and a dynamic filter on `k` (true until updated).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn k_scan_with_filter() -> (Arc<dyn ExecutionPlan>, Arc<DynamicFilterPhysicalExpr>) {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let values = Arc::new(Int64Array::from_iter_values(0..100));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![values]).unwrap();
    let scan = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
    let k: Arc<dyn PhysicalExpr> = Arc::new(Column::new("k", 0));
    let filter = Arc::new(DynamicFilterPhysicalExpr::new(
        vec![k],
        datafusion::physical_expr::expressions::lit(true),
    ));
    (scan, filter)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    use super::*;

    /// The demo employees file: 1000 rows, `employee_id` 1 to 1000.
    const EMPLOYEES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/hr/employees.parquet"
    );

    async fn ctx(with_rule: bool) -> SessionContext {
        ctx_with(with_rule, SessionConfig::new()).await
    }

    async fn ctx_with(with_rule: bool, config: SessionConfig) -> SessionContext {
        let config = config.with_target_partitions(2);
        let mut builder = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        if with_rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(DynamicScanRows));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_parquet("employees", EMPLOYEES, ParquetReadOptions::default())
            .await
            .unwrap();
        let ids = "CREATE TABLE ids (id BIGINT) AS VALUES (7), (500), (999), (5000)";
        ctx.sql(ids).await.unwrap().collect().await.unwrap();
        ctx
    }

    async fn physical(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        let df = ctx.sql(sql).await.unwrap();
        df.create_physical_plan().await.unwrap()
    }

    /// The answer, and per plan node name its output rows.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, Vec<(String, usize)>) {
        let plan = physical(ctx, sql).await;
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let mut rows = vec![];
        plan.apply(|node| {
            let out = node.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            rows.push((node.name().to_string(), out));
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        (text, rows)
    }

    /// The output rows of every node named `name`.
    fn output_rows(rows: &[(String, usize)], name: &str) -> Vec<usize> {
        rows.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, r)| *r)
            .collect()
    }

    async fn plan_text(ctx: &SessionContext, sql: &str) -> String {
        let plan = physical(ctx, sql).await;
        let text = displayable(plan.as_ref()).indent(true).to_string();
        text
    }

    const JOIN: &str = "SELECT e.employee_id, e.region FROM ids JOIN employees e \
        ON e.employee_id = ids.id ORDER BY e.employee_id";

    #[tokio::test]
    async fn a_join_probes_only_the_scan_rows_its_build_keys_can_match() {
        let (got, rows) = run(&ctx(true).await, JOIN).await;
        assert_eq!(got, run(&ctx(false).await, JOIN).await.0);
        assert_eq!(got.lines().count(), 7, "three matches:\n{got}");
        let of = |name: &str| output_rows(&rows, name);
        // The scan read every row; only the three the build keys name
        // reached the join.
        assert_eq!(of("DataSourceExec").iter().max(), Some(&1000), "{rows:?}");
        assert_eq!(of("DynamicRowsExec"), vec![3], "{rows:?}");
    }

    #[tokio::test]
    async fn a_partitioned_join_probes_only_the_scan_rows_any_partition_can_match() {
        // Both sides hash partitioned: the join's filter is one `IN` list
        // per partition, routed by the key's hash; the scan keeps the
        // rows any partition's list names.
        let mut config = SessionConfig::new();
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.hash_join_single_partition_threshold = 0;
        optimizer.hash_join_single_partition_threshold_rows = 0;
        let partitioned = ctx_with(true, config.clone()).await;
        let text = plan_text(&partitioned, JOIN).await;
        assert!(text.contains("mode=Partitioned"), "{text}");
        let (got, rows) = run(&partitioned, JOIN).await;
        assert_eq!(got, run(&ctx_with(false, config).await, JOIN).await.0);
        assert_eq!(got.lines().count(), 7, "three matches:\n{got}");
        let scanned = output_rows(&rows, "DynamicRowsExec");
        assert_eq!(scanned, vec![3], "{rows:?}");
    }

    /// The `own` flags of the plan's `DynamicRowsExec`s.
    fn own_flags(plan: &Arc<dyn ExecutionPlan>) -> Vec<Vec<bool>> {
        let mut flags = vec![];
        plan.apply(|node| {
            if let Some(rows) = node.downcast_ref::<DynamicRowsExec>() {
                flags.push(rows.own.to_vec());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        flags
    }

    #[tokio::test]
    async fn a_join_probing_the_scan_itself_is_flagged_and_samples_its_lookup() {
        // 300 build keys (more than DataFusion's 150 for an `IN` list): the
        // filter is `bounds AND hash_lookup`. The join probes the scan's
        // rows directly, with the same lookup: the scan's filter is
        // flagged `own`, and evaluated whole on the rows of its sample
        // (all 1000 here), which the lookup cuts to the 300 matches.
        let fast = ctx(true).await;
        let many = "CREATE TABLE many AS SELECT value * 2 AS id FROM generate_series(1, 300)";
        fast.sql(many).await.unwrap().collect().await.unwrap();
        let slow = ctx(false).await;
        slow.sql(many).await.unwrap().collect().await.unwrap();
        let sql = "SELECT count(*), min(e.employee_id), max(e.employee_id) \
            FROM many JOIN employees e ON e.employee_id = many.id";
        let (got, rows) = run(&fast, sql).await;
        assert_eq!(got, run(&slow, sql).await.0);
        assert!(got.contains("| 300      | 2 "), "{got}");
        let text = plan_text(&fast, sql).await;
        assert!(text.contains("mode=CollectLeft"), "{text}");
        assert_eq!(own_flags(&physical(&fast, sql).await), vec![vec![true]]);
        let scanned = output_rows(&rows, "DynamicRowsExec");
        assert_eq!(scanned, vec![300], "{rows:?}");
    }

    #[tokio::test]
    async fn a_join_probing_through_a_cheap_filter_is_flagged() {
        // As above, with a filter between the scan and the join: through
        // a comparison the join still probes the scan's rows (`own`), not
        // through a function call.
        let many = "CREATE TABLE many AS SELECT value * 2 AS id FROM generate_series(1, 300)";
        // The join's sides as written (`many` builds), whatever the filter's
        // estimate.
        let mut config = SessionConfig::new();
        config.options_mut().optimizer.join_reordering = false;
        for (filter, own) in [("e.salary > 0", true), ("length(e.name) > 0", false)] {
            let fast = ctx_with(true, config.clone()).await;
            fast.sql(many).await.unwrap().collect().await.unwrap();
            let slow = ctx_with(false, config.clone()).await;
            slow.sql(many).await.unwrap().collect().await.unwrap();
            let sql = format!(
                "SELECT count(*), min(e.employee_id), max(e.employee_id) \
                 FROM many JOIN employees e ON e.employee_id = many.id WHERE {filter}"
            );
            let (got, rows) = run(&fast, &sql).await;
            assert_eq!(got, run(&slow, &sql).await.0);
            assert!(got.contains("| 300      | 2 "), "{got}");
            let text = plan_text(&fast, &sql).await;
            assert!(text.contains("mode=CollectLeft"), "{text}");
            assert!(text.contains("FilterExec"), "{text}");
            let flags = own_flags(&physical(&fast, &sql).await);
            assert_eq!(flags, vec![vec![own]], "{filter}\n{text}");
            let rows = output_rows(&rows, "DynamicRowsExec");
            assert_eq!(rows, vec![300], "{filter}: {rows:?}\n{text}");
        }
    }

    #[tokio::test]
    async fn an_outer_join_keeps_its_preserved_scan_whole() {
        let sql = "SELECT e.employee_id, ids.id FROM employees e LEFT JOIN ids \
            ON e.employee_id = ids.id WHERE e.employee_id < 10 ORDER BY 1";
        let fast = ctx(true).await;
        let (got, _) = run(&fast, sql).await;
        assert_eq!(got, run(&ctx(false).await, sql).await.0);
        assert_eq!(got.lines().count(), 13, "nine employees:\n{got}");
        let plan = physical(&fast, sql).await;
        let text = displayable(plan.as_ref()).indent(true).to_string();
        assert!(
            !text.contains("DynamicRowsExec: DynamicFilter [ employee_id"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_plan_is_wrapped_once_and_a_scan_without_dynamic_filters_not_at_all() {
        let fast = ctx(true).await;
        let plan = physical(&fast, JOIN).await;
        let again = DynamicScanRows
            .optimize(Arc::clone(&plan), &ConfigOptions::default())
            .unwrap();
        let count = |p: &Arc<dyn ExecutionPlan>| {
            displayable(p.as_ref())
                .indent(true)
                .to_string()
                .matches("DynamicRowsExec")
                .count()
        };
        assert_eq!(count(&plan), 1);
        assert_eq!(count(&again), 1);
        let scan = physical(&fast, "SELECT region FROM employees WHERE salary > 100").await;
        assert_eq!(count(&scan), 0);
    }

    /// The `awaited` flags of the plan's `DynamicRowsExec`s.
    fn awaited_flags(plan: &Arc<dyn ExecutionPlan>) -> Vec<Vec<bool>> {
        let mut flags = vec![];
        plan.apply(|node| {
            if let Some(rows) = node.downcast_ref::<DynamicRowsExec>() {
                flags.push(rows.awaited.to_vec());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        flags
    }

    #[tokio::test]
    async fn only_a_hash_joins_filter_is_awaited() {
        let ctx = ctx(true).await;
        assert_eq!(awaited_flags(&physical(&ctx, JOIN).await), vec![vec![true]]);
        // A TopK's threshold completes when the scan it filters ends:
        // waiting for it there would never end.
        let top = "SELECT employee_id FROM employees ORDER BY salary DESC LIMIT 5";
        let plan = physical(&ctx, top).await;
        assert_eq!(
            awaited_flags(&plan),
            vec![vec![false]],
            "{}",
            displayable(plan.as_ref()).indent(true)
        );
        let (got, _) = run(&ctx, top).await;
        assert_eq!(got.lines().count(), 9, "five rows:\n{got}");
    }

    /// `k` = 0..100 in one batch under a `DynamicRowsExec` holding a filter
    /// on `k` (true until updated), awaited or not.
    fn scan_with_filter(awaited: bool) -> (Arc<dyn ExecutionPlan>, Arc<DynamicFilterPhysicalExpr>) {
        let (scan, filter) = k_scan_with_filter();
        let held = Arc::clone(&filter) as Arc<dyn PhysicalExpr>;
        let rows = DynamicRowsExec::new(scan, vec![(held, false)]).awaiting(&[awaited]);
        (Arc::new(rows), filter)
    }

    fn total_rows(batches: &[datafusion::arrow::array::RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    }

    #[tokio::test]
    async fn a_scan_holding_a_join_filter_reads_only_once_the_join_has_built() {
        let (rows, filter) = scan_with_filter(true);
        let task = SessionContext::new().task_ctx();
        let run = tokio::spawn(collect(rows, task));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!run.is_finished(), "the scan read before the join built");
        let k: Arc<dyn PhysicalExpr> = Arc::new(Column::new("k", 0));
        let ten = datafusion::physical_expr::expressions::lit(10i64);
        filter
            .update(Arc::new(BinaryExpr::new(
                k,
                datafusion::logical_expr::Operator::Lt,
                ten,
            )))
            .unwrap();
        filter.mark_complete();
        let batches = run.await.unwrap().unwrap();
        // Every row went through the built filter.
        assert_eq!(total_rows(&batches), 10);
    }

    #[tokio::test]
    async fn a_join_filter_never_built_holds_the_scan_only_up_to_the_bound() {
        let (rows, _filter) = scan_with_filter(true);
        let started = std::time::Instant::now();
        let batches = collect(rows, SessionContext::new().task_ctx())
            .await
            .unwrap();
        assert_eq!(total_rows(&batches), 100);
        assert!(started.elapsed() >= FILTER_WAIT, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_filter_not_awaited_holds_nothing() {
        let (rows, _filter) = scan_with_filter(false);
        let started = std::time::Instant::now();
        let batches = collect(rows, SessionContext::new().task_ctx())
            .await
            .unwrap();
        assert_eq!(total_rows(&batches), 100);
        assert!(started.elapsed() < FILTER_WAIT, "{:?}", started.elapsed());
    }
}
