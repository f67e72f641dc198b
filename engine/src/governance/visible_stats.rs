//! What a barrier may tell the optimizer about its rows: statistics of the
//! rows the principal can see, never of the raw source.
//!
//! Join ordering needs sizes and, for a join on keys, how many distinct
//! keys each side holds. A barrier that reported only its raw size rounded
//! up to a power of two told a principal roughly how many rows they could
//! not see, and left DataFusion to assume every key unique: a restricted
//! `customer` joined to a restricted `orders` was estimated at the size of
//! the smaller side. Raw column statistics would fix the estimate and
//! describe hidden rows (a range that only a hidden salary reaches).
//!
//! So a barrier with a row policy reports, inexact, what the principal could
//! compute with `SELECT count(*), count(c), min(c), max(c)` over what they
//! see: the visible row count, and for each *unmasked integer or date
//! column* its null count and an upper bound of its distinct values
//! (`max - min + 1`, at most the non-null count). Min and max themselves
//! are not reported; they only estimate, inside the barrier, the
//! selectivity of the leakproof filters pushed below it. A barrier without
//! a row policy hides no row, so it reports the raw statistics of its
//! unmasked columns the same way.
//!
//! The visible statistics are computed once, by one aggregate over the
//! source with the row policy applied, and kept per (source, row predicate
//! after principal functions are resolved, files: paths, sizes, times and
//! e-tags). The predicate is compared as an expression, not as text, so
//! two principals share an entry only when they see the same rows. A source
//! larger than [`MAX_ROWS`] raw rows is not counted (the barrier reports
//! its bucketed raw size, as before).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue, Statistics};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::session_state::SessionState;
use datafusion::functions_aggregate::count::count_all;
use datafusion::functions_aggregate::expr_fn::{count, max, min};
use datafusion::logical_expr::{col, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::operator_statistics::{
    ExtendedStatistics, FilterStatisticsProvider, PassthroughStatisticsProvider,
    ProjectionStatisticsProvider, StatisticsProvider, StatisticsRegistry, StatisticsResult,
};
use datafusion::physical_plan::ExecutionPlan;

use super::node::GovernedScanNode;

/// Sources with more raw rows than this are not counted at planning time
/// (a one-off aggregate over at most this many rows, on first use).
pub const MAX_ROWS: usize = 16 << 20;

/// Entries kept before the cache starts over.
const MAX_ENTRIES: usize = 1024;

/// Row predicates counted per source and file set: a policy that depends
/// on the user (`owner = current_user()`) makes one predicate per user, and
/// counting each of them would cost every user's first query a scan of
/// the source. Past this many, the source's barriers report the bucketed
/// raw size.
pub const MAX_PREDICATES: usize = 64;

/// How long a key whose count failed goes without statistics.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// One counted column of the visible rows.
#[derive(Debug, Clone)]
struct VisibleColumn {
    nulls: usize,
    /// Upper bound of distinct values (see [`distinct_bound`]).
    distinct: usize,
    /// Kept for the selectivity of leakproof filters inside the barrier;
    /// never reported.
    min: ScalarValue,
    max: ScalarValue,
}

/// The statistics of one source as one principal sees it (see the module
/// documentation): all counts are of visible rows.
#[derive(Debug, Default)]
pub struct Visible {
    /// Rows that pass the row policy.
    rows: usize,
    columns: HashMap<String, VisibleColumn>,
}

impl Visible {
    /// What the barrier over `inner` (its hidden input) reports, less
    /// `masked`: the visible statistics put in place of the raw scan's,
    /// carried through the leakproof filters and projections the hidden
    /// input applies (DataFusion's own estimators), then stripped to
    /// inexact row, null and distinct counts. `partitions` splits the rows
    /// evenly when one partition is asked for.
    pub fn statistics(
        self: &Arc<Self>,
        inner: &dyn ExecutionPlan,
        masked: &Arc<[String]>,
        partitions: Option<usize>,
    ) -> Result<Statistics> {
        let registry = StatisticsRegistry::with_providers(vec![
            Arc::new(VisibleScan {
                visible: Arc::clone(self),
                masked: Arc::clone(masked),
            }),
            Arc::new(FilterStatisticsProvider),
            Arc::new(ProjectionStatisticsProvider),
            Arc::new(PassthroughStatisticsProvider),
            Arc::new(NothingRaw),
        ]);
        let computed = registry.compute_base(inner)?;
        let share = |n: usize| partitions.map_or(n, |p| n.div_ceil(p.max(1)));
        let schema = inner.schema();
        let mut out = Statistics::new_unknown(&schema);
        out.num_rows = match computed.num_rows.get_value() {
            Some(n) => Precision::Inexact(share(*n)),
            None => Precision::Absent,
        };
        // No byte size: the raw size per row would average in hidden rows.
        for ((field, stats), column) in schema
            .fields()
            .iter()
            .zip(&mut out.column_statistics)
            .zip(&computed.column_statistics)
        {
            if masked.contains(field.name()) {
                continue;
            }
            stats.null_count = column.null_count.to_inexact();
            stats.distinct_count = column.distinct_count.to_inexact();
        }
        Ok(out)
    }

    /// The same report from raw statistics, for a barrier that hides no
    /// row: every row is visible, masked columns are left unknown.
    pub fn of_all_rows(schema: &Schema, masked: &[String], raw: &Statistics) -> Statistics {
        let mut out = Statistics::new_unknown(schema);
        out.num_rows = raw.num_rows.to_inexact();
        out.total_byte_size = raw.total_byte_size.to_inexact();
        for ((field, stats), column) in schema
            .fields()
            .iter()
            .zip(&mut out.column_statistics)
            .zip(&raw.column_statistics)
        {
            if masked.contains(field.name()) || !eligible(field.data_type()) {
                continue;
            }
            stats.null_count = column.null_count.to_inexact();
            let non_null = match (raw.num_rows.get_value(), column.null_count.get_value()) {
                (Some(rows), Some(nulls)) => rows.saturating_sub(*nulls),
                (Some(rows), None) => *rows,
                _ => continue,
            };
            if let (Some(lo), Some(hi)) =
                (column.min_value.get_value(), column.max_value.get_value())
            {
                if let Some(d) = distinct_bound(lo, hi, non_null) {
                    stats.distinct_count = Precision::Inexact(d);
                }
            }
        }
        out
    }
}

/// The statistics of the hidden scan: the visible rows, with min and max
/// of the counted columns (for filter selectivity inside the barrier).
#[derive(Debug)]
struct VisibleScan {
    visible: Arc<Visible>,
    masked: Arc<[String]>,
}

impl StatisticsProvider for VisibleScan {
    fn compute_statistics(
        &self,
        plan: &dyn ExecutionPlan,
        _child_stats: &[ExtendedStatistics],
    ) -> Result<StatisticsResult> {
        if !plan.children().is_empty() {
            return Ok(StatisticsResult::Delegate);
        }
        let schema = plan.schema();
        let mut out = Statistics::new_unknown(&schema);
        out.num_rows = Precision::Inexact(self.visible.rows);
        for (field, stats) in schema.fields().iter().zip(&mut out.column_statistics) {
            if self.masked.contains(field.name()) {
                continue;
            }
            if let Some(c) = self.visible.columns.get(field.name()) {
                stats.null_count = Precision::Inexact(c.nulls);
                stats.distinct_count = Precision::Inexact(c.distinct);
                if !c.min.is_null() && !c.max.is_null() {
                    stats.min_value = Precision::Inexact(c.min.clone());
                    stats.max_value = Precision::Inexact(c.max.clone());
                }
            }
        }
        Ok(StatisticsResult::Computed(ExtendedStatistics::new(out)))
    }
}

/// Last in the chain: a node no estimator above knows passes its input's
/// statistics on (only the row count when its columns differ), never the
/// raw ones its own `partition_statistics` would compute.
#[derive(Debug)]
struct NothingRaw;

impl StatisticsProvider for NothingRaw {
    fn compute_statistics(
        &self,
        plan: &dyn ExecutionPlan,
        child_stats: &[ExtendedStatistics],
    ) -> Result<StatisticsResult> {
        let schema = plan.schema();
        let mut out = Statistics::new_unknown(&schema);
        if let [one] = child_stats {
            if one.base().column_statistics.len() == schema.fields().len() {
                return Ok(StatisticsResult::Computed(one.clone()));
            }
            // A node that reshapes its rows: the count only.
            out.num_rows = one.base().num_rows.to_inexact();
        }
        Ok(StatisticsResult::Computed(ExtendedStatistics::new(out)))
    }
}

/// Columns whose value range bounds their distinct count.
fn eligible(t: &DataType) -> bool {
    t.is_integer() || matches!(t, DataType::Date32)
}

/// `max - min + 1`, at most `non_null`.
fn distinct_bound(lo: &ScalarValue, hi: &ScalarValue, non_null: usize) -> Option<usize> {
    let as_i128 = |v: &ScalarValue| -> Option<i128> {
        match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(x)) => Some(x as i128),
            _ => None,
        }
    };
    let (lo, hi) = match (lo, hi) {
        (ScalarValue::UInt64(Some(l)), ScalarValue::UInt64(Some(h))) => (*l as i128, *h as i128),
        (ScalarValue::Date32(Some(l)), ScalarValue::Date32(Some(h))) => (*l as i128, *h as i128),
        _ => (as_i128(lo)?, as_i128(hi)?),
    };
    let range = usize::try_from((hi - lo + 1).max(0)).unwrap_or(usize::MAX);
    Some(range.min(non_null))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    predicate: Expr,
    files: u64,
}

/// Visible statistics per (source, row predicate, files); one per engine.
#[derive(Debug)]
pub struct VisibleStatsCache {
    entries: Mutex<HashMap<Key, Arc<Visible>>>,
    /// Keys whose count failed, and when: not tried again for
    /// [`RETRY_AFTER`], so a failing count does not run on every query.
    failed: Mutex<HashMap<Key, Instant>>,
    /// Largest source counted, in raw rows ([`MAX_ROWS`]).
    max_rows: usize,
}

impl Default for VisibleStatsCache {
    fn default() -> Self {
        Self::with_max_rows(MAX_ROWS)
    }
}

impl VisibleStatsCache {
    /// A cache that counts sources of at most `max_rows` raw rows.
    pub fn with_max_rows(max_rows: usize) -> Self {
        Self {
            entries: Mutex::default(),
            failed: Mutex::default(),
            max_rows,
        }
    }

    /// Row predicates counted (or tried) for `key`'s source and files.
    fn predicates_of(&self, key: &Key) -> usize {
        let same = |k: &Key| k.source == key.source && k.files == key.files;
        let counted = self
            .entries
            .lock()
            .map_or(usize::MAX, |e| e.keys().filter(|k| same(k)).count());
        let failed = self
            .failed
            .lock()
            .map_or(usize::MAX, |f| f.keys().filter(|k| same(k)).count());
        counted.saturating_add(failed)
    }

    /// The visible statistics of `node`'s rows for the columns `physical`
    /// (the barrier's raw input) passes, counted now if no entry has them.
    /// None when the source has no row policy, is not a file scan, has
    /// more than its row cap (or files without a row count) or could
    /// not be counted: the barrier then reports what it did before.
    pub async fn get(
        &self,
        node: &GovernedScanNode,
        physical: &Arc<dyn ExecutionPlan>,
        session: &dyn Session,
    ) -> Option<Arc<Visible>> {
        let predicate = node.row_predicate.as_ref()?;
        let (files, raw_rows) = files_of(physical)?;
        let key = Key {
            source: node.source.clone(),
            predicate: predicate.clone(),
            files,
        };
        let schema = physical.schema();
        let wanted: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| eligible(f.data_type()) && !node.masked.contains(f.name()))
            .map(|f| f.name().clone())
            .collect();
        let known = self.entries.lock().ok()?.get(&key).cloned();
        let missing: Vec<String> = match &known {
            Some(v) => wanted
                .into_iter()
                .filter(|c| !v.columns.contains_key(c))
                .collect(),
            None => wanted,
        };
        if let Some(v) = &known {
            if missing.is_empty() {
                return Some(Arc::clone(v));
            }
        }
        // The files' own row counts: an estimate above a pushed-down user
        // filter would let a huge source through.
        if raw_rows.is_none_or(|n| n > self.max_rows) {
            return None;
        }
        if let Some(at) = self.failed.lock().ok()?.get(&key) {
            if at.elapsed() < RETRY_AFTER {
                return None;
            }
        }
        if known.is_none() && self.predicates_of(&key) >= MAX_PREDICATES {
            return None;
        }
        let counted = match count_visible(node, predicate, &missing, session).await {
            Ok(v) => v,
            Err(e) => {
                // The error's text can quote a raw value the row policy
                // failed on (`node.rs`, `row_policy_failed`): not logged.
                tracing::debug!(
                    source = %node.source,
                    kind = ?crate::error::VeilError::from(e).kind(),
                    "visible statistics not counted"
                );
                if let Ok(mut failed) = self.failed.lock() {
                    if failed.len() >= MAX_ENTRIES {
                        failed.clear();
                    }
                    failed.insert(key, Instant::now());
                }
                return None;
            }
        };
        let mut merged = counted;
        if let Some(v) = known {
            merged
                .columns
                .extend(v.columns.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let merged = Arc::new(merged);
        if let Ok(mut failed) = self.failed.lock() {
            failed.remove(&key);
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key, Arc::clone(&merged));
        }
        Some(merged)
    }
}

/// The files a scan reads: a hash of them (path, size, modification time,
/// e-tag; in any order) and their raw row count from file statistics
/// (None when a file has none). None when `plan` scans no files.
fn files_of(plan: &Arc<dyn ExecutionPlan>) -> Option<(u64, Option<usize>)> {
    let mut files = Vec::new();
    let mut rows = Some(0usize);
    let mut scans = 0;
    plan.apply(|p| {
        if let Some(config) = p
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        {
            scans += 1;
            for file in config.file_groups.iter().flat_map(|g| g.iter()) {
                let meta = &file.object_meta;
                let mut h = DefaultHasher::new();
                meta.location.as_ref().hash(&mut h);
                meta.size.hash(&mut h);
                meta.last_modified.timestamp_nanos_opt().hash(&mut h);
                meta.e_tag.hash(&mut h);
                files.push(h.finish());
                let n = file
                    .statistics
                    .as_ref()
                    .and_then(|s| s.num_rows.get_value().copied());
                rows = rows.zip(n).map(|(a, b)| a.saturating_add(b));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    if scans == 0 {
        return None;
    }
    files.sort_unstable();
    files.dedup();
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    Some((h.finish(), rows))
}

/// One aggregate over the raw source with the row policy applied:
/// `count(*)` and, per column, `count(c), min(c), max(c)`.
async fn count_visible(
    node: &GovernedScanNode,
    predicate: &Expr,
    columns: &[String],
    session: &dyn Session,
) -> Result<Visible> {
    let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
        return datafusion::common::internal_err!("visible statistics need a session state");
    };
    let mut scan = None;
    node.input.apply(|p| {
        if let LogicalPlan::TableScan(t) = p {
            scan = Some(t.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let Some(scan) = scan else {
        return datafusion::common::internal_err!("a barrier without a table scan");
    };
    let schema = scan.source.schema();
    let mut projection = BTreeSet::new();
    for c in predicate.column_refs() {
        projection.insert(schema.index_of(&c.name)?);
    }
    for c in columns {
        projection.insert(schema.index_of(c)?);
    }
    let mut aggregates = vec![count_all()];
    for c in columns {
        let c = col(datafusion::common::Column::new(
            Some(scan.table_name.clone()),
            c,
        ));
        aggregates.extend([count(c.clone()), min(c.clone()), max(c)]);
    }
    let plan = LogicalPlanBuilder::scan(
        scan.table_name.clone(),
        Arc::clone(&scan.source),
        Some(projection.into_iter().collect()),
    )?
    .filter(predicate.clone())?
    .aggregate(Vec::<Expr>::new(), aggregates)?
    .build()?;
    // No analyzer (the governance rule is for user plans; this one is
    // built typed, over the raw source, with the policy applied).
    let plan = state.optimizer().optimize(plan, state, |_, _| {})?;
    let physical = state
        .query_planner()
        .create_physical_plan(&plan, state)
        .await?;
    let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() == 1) else {
        return datafusion::common::internal_err!("visible statistics: no result row");
    };
    let int = |i: usize| -> Option<usize> {
        let a = batch.column(i).as_primitive_opt::<Int64Type>()?;
        (!a.is_null(0)).then(|| usize::try_from(a.value(0)).ok())?
    };
    let rows = int(0).unwrap_or(0);
    let mut out = Visible {
        rows,
        columns: HashMap::new(),
    };
    for (i, name) in columns.iter().enumerate() {
        let non_null = int(1 + 3 * i).unwrap_or(0);
        let lo = ScalarValue::try_from_array(batch.column(2 + 3 * i), 0)?;
        let hi = ScalarValue::try_from_array(batch.column(3 + 3 * i), 0)?;
        let distinct = if non_null == 0 {
            0
        } else {
            distinct_bound(&lo, &hi, non_null).unwrap_or(non_null)
        };
        out.columns.insert(
            name.clone(),
            VisibleColumn {
                nulls: rows.saturating_sub(non_null),
                distinct,
                min: lo,
                max: hi,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::node::tests::employees_scan;
    use datafusion::logical_expr::lit;
    use datafusion::prelude::{SessionConfig, SessionContext};

    #[tokio::test]
    async fn a_source_over_the_row_cap_is_not_counted() {
        // One partition: the planner hands the barrier its raw scan before
        // the physical optimizer splits the file.
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let scan = employees_scan(&ctx, "employees").await.build().unwrap();
        let state = ctx.state();
        let physical = state.create_physical_plan(&scan).await.unwrap();
        let node = GovernedScanNode {
            source: "hr.employees".into(),
            input: scan,
            // As the analyzer leaves it: typed like the column.
            row_predicate: Some(col("region").eq(lit(ScalarValue::Utf8View(Some("US".into()))))),
            masked: vec![],
            policies: vec!["employees_region".into()],
        };
        let us = ctx
            .sql("SELECT count(*) FROM employees WHERE region = 'US'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let us = us[0].column(0).as_primitive::<Int64Type>().value(0) as usize;
        assert!(us > 0 && us < 1000, "{us}");
        // The cap is on the files' raw rows (1000), not on the visible ones.
        for (cap, counted) in [(MAX_ROWS, true), (1000, true), (999, false), (us, false)] {
            let got = VisibleStatsCache::with_max_rows(cap)
                .get(&node, &physical, &state)
                .await;
            assert_eq!(got.is_some(), counted, "cap {cap}");
            if let Some(v) = got {
                assert_eq!(v.rows, us, "cap {cap}");
            }
        }
    }

    #[test]
    fn the_distinct_bound_is_the_range_capped_by_the_non_null_count() {
        let i = |v: i64| ScalarValue::Int64(Some(v));
        assert_eq!(distinct_bound(&i(1), &i(150_000), 80_000), Some(80_000));
        assert_eq!(distinct_bound(&i(10), &i(19), 80_000), Some(10));
        assert_eq!(
            distinct_bound(
                &ScalarValue::Int32(Some(-5)),
                &ScalarValue::Int32(Some(5)),
                100
            ),
            Some(11)
        );
        assert_eq!(
            distinct_bound(
                &ScalarValue::UInt64(Some(0)),
                &ScalarValue::UInt64(Some(u64::MAX)),
                7
            ),
            Some(7)
        );
        assert_eq!(
            distinct_bound(
                &ScalarValue::Date32(Some(8000)),
                &ScalarValue::Date32(Some(8009)),
                1000
            ),
            Some(10)
        );
    }
}
