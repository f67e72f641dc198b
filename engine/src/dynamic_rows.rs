//! Dynamic filters (join keys, TopK thresholds) applied to the rows of a
//! barrier or of a scan, each while it pays.
//!
//! DataFusion gives a scan the dynamic filters of the joins above it; the
//! scan prunes row groups and pages with them but passes on every row of
//! what it reads. [`DynamicRows`] evaluates them on each batch of one
//! partition, for `GovernedScanExec` (`governance/node.rs`) and
//! `DynamicRowsExec` (`dynamic_scan.rs`):
//!
//! - first every filled filter on every row of the first
//!   [`DYNAMIC_SAMPLE_ROWS`], timed; a filter that kept more than nine rows
//!   in ten is dropped (a join's hash lookup per row, done again by the
//!   join, for nothing), the others are ordered by the cost per row of
//!   their cheapest sampled batch over the share of rows they drop
//!   (`adaptive_and::priority`, as for filters: a batch whose thread lost
//!   its core while timed does not decide the order);
//! - then each on the rows the ones before it kept (on a copy of those once
//!   at most a fifth remain), and dropped once it has kept more than nine in
//!   ten of the rows it was given (q9: the orders filter keeps 85 % of
//!   lineitem's rows but runs on the 2 % the part filter keeps).
//!
//! A filter whose join probes these rows directly (`own`: the scan under
//! a join and a few comparisons, `dynamic_scan.rs`) repeats the join's
//! lookup on the rows it keeps: its sample decides whether it keeps its
//! lookup ([`OWN_LOOKUP_NANOS`] a row at most, half the rows dropped at
//! least) or leaves it to the join and applies only its bounds.
//!
//! Only rows a filter can drop are counted, not rows seen before it is
//! filled. A partitioned join's filter is applied as
//! [`any_partition`](crate::any_partition) relaxes it (once per filled
//! expression): one `IN` list, or nothing when its partitions look up hash
//! tables. Every filter only drops rows its join would not match, so
//! which run and in what order never changes an answer.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{internal_err, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::{lit, DynamicFilterPhysicalExpr};
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef};
use datafusion::physical_plan::joins::HashTableLookupExpr;

use crate::adaptive_and::{priority, truth};
use crate::any_partition::any_partition;

/// Rows a partition's dynamic filters are tried on before it judges them.
pub(crate) const DYNAMIC_SAMPLE_ROWS: usize = 65_536;

/// The most a join's lookup may cost a row (its bounds included) to be
/// applied in the scan its join probes (`own`). TPC-H's lookups in
/// arrays (`join_arrays.rs`) cost 2-9 ns a row here (more where the keys
/// come in random order), while q4's lookup of 6M `lineitem` rows in a
/// hash table of 57K orders cost 16 ns a row.
pub(crate) const OWN_LOOKUP_NANOS: f64 = 10.0;

/// The dynamic filters of one partition (see the module documentation).
pub(crate) struct DynamicRows {
    filters: Vec<JudgedFilter>,
    /// The order to evaluate them in, once sampled.
    order: Option<Vec<usize>>,
}

/// One dynamic filter of [`DynamicRows`] and how it has done.
struct JudgedFilter {
    filter: Arc<dyn PhysicalExpr>,
    /// The filled expression last seen and what is evaluated for it
    /// (None: nothing, it is left to its join).
    relaxed: Option<(Arc<dyn PhysicalExpr>, Option<PhysicalExprRef>)>,
    /// Rows it was evaluated on while sampling and how many it kept.
    sampled: usize,
    sample_kept: usize,
    /// Its lowest cost per row over the sample's batches: a batch whose
    /// thread was descheduled while timed costs more than the filter did.
    best_per_row: f64,
    /// Rows it ruled on once ordered (those the filters before it kept)
    /// and how many of them it kept.
    ruled: usize,
    kept: usize,
    /// No longer evaluated: it did not pay.
    off: bool,
    /// Its join probes these rows directly, with the same lookup.
    own: bool,
    /// Its lookups are left to its join (its bounds are still applied):
    /// an `own` filter whose sample showed a lookup that did not pay.
    bounds_only: bool,
}

impl JudgedFilter {
    fn new(filter: &Arc<dyn PhysicalExpr>) -> Self {
        Self {
            filter: Arc::clone(filter),
            relaxed: None,
            sampled: 0,
            sample_kept: 0,
            best_per_row: f64::INFINITY,
            ruled: 0,
            kept: 0,
            off: false,
            own: false,
            bounds_only: false,
        }
    }

    /// What to evaluate on batches of `schema`: a dynamic filter's current
    /// expression, relaxed once per fill; None when it is left to its join.
    fn current(&mut self, schema: &Schema) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let Some(dynamic) = self.filter.downcast_ref::<DynamicFilterPhysicalExpr>() else {
            return Ok(Some(Arc::clone(&self.filter)));
        };
        let filled = dynamic.current()?;
        if let Some((seen, relaxed)) = &self.relaxed {
            if Arc::ptr_eq(seen, &filled) {
                return Ok(relaxed.clone());
            }
        }
        let mut relaxed = any_partition(&filled, schema)?;
        if let (true, Some(r)) = (self.bounds_only, &relaxed) {
            // `bounds AND lookup` → `bounds AND true`: a superset, as any
            // lookup sits in a conjunction or disjunction.
            let bounds = Arc::clone(r).transform(|e| {
                Ok(match e.is::<HashTableLookupExpr>() {
                    true => Transformed::yes(lit(true)),
                    false => Transformed::no(e),
                })
            })?;
            if bounds.transformed {
                relaxed = Some(bounds.data);
            }
        }
        self.relaxed = Some((filled, relaxed.clone()));
        Ok(relaxed)
    }
}

impl DynamicRows {
    pub(crate) fn new(filters: Arc<[Arc<dyn PhysicalExpr>]>) -> Self {
        Self {
            filters: filters.iter().map(JudgedFilter::new).collect(),
            order: None,
        }
    }

    /// Flags the filters whose join probes these rows directly (`own`,
    /// one flag per filter).
    pub(crate) fn probed_by(mut self, own: &[bool]) -> Self {
        for (f, own) in self.filters.iter_mut().zip(own) {
            f.own = *own;
        }
        self
    }

    /// Whether a filter that kept `kept` of `ruled` rows still pays.
    fn pays(ruled: usize, kept: usize) -> bool {
        ruled < DYNAMIC_SAMPLE_ROWS || kept.saturating_mul(10) <= ruled.saturating_mul(9)
    }

    /// The rows of `batch` the filled filters keep, or None when none
    /// rules anything out (or they stopped paying).
    pub(crate) fn mask(&mut self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        if let Some(order) = &self.order {
            return Self::ordered(&mut self.filters, order, batch);
        }
        let keep = self.sample(batch)?;
        let sampled = |f: &JudgedFilter| f.sampled >= DYNAMIC_SAMPLE_ROWS;
        if self.filters.iter().any(sampled)
            && self.filters.iter().all(|f| f.sampled == 0 || sampled(f))
        {
            self.order = Some(self.rank());
        }
        Ok(keep)
    }

    /// Evaluates every filter on every row of `batch`, timing each.
    fn sample(&mut self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        let rows = batch.num_rows();
        let mut keep: Option<BooleanArray> = None;
        for judged in &mut self.filters {
            let Some(filter) = judged.current(batch.schema_ref())? else {
                continue;
            };
            let start = Instant::now();
            let value = filter.evaluate(batch)?;
            let nanos = start.elapsed().as_nanos();
            if rules_nothing(&value) {
                continue;
            }
            let mask = truth(value, rows)?;
            judged.sampled += rows;
            judged.sample_kept += mask.true_count();
            judged.best_per_row = judged.best_per_row.min(nanos as f64 / rows.max(1) as f64);
            keep = Some(match keep {
                Some(k) => and(&k, &mask)?,
                None => mask,
            });
        }
        Ok(keep)
    }

    /// Drops the sampled filters that did not pay and orders the rest,
    /// those not filled yet last. An `own` filter keeps its lookups only
    /// when [`own_lookup_pays`] on its sample.
    fn rank(&mut self) -> Vec<usize> {
        for f in &mut self.filters {
            f.off = f.sampled > 0 && !Self::pays(f.sampled, f.sample_kept);
            if f.own && !own_lookup_pays(f.best_per_row, f.sample_kept, f.sampled) {
                f.bounds_only = true;
                f.relaxed = None;
            }
        }
        let priority: Vec<f64> = self
            .filters
            .iter()
            .map(|f| match f.sampled {
                0 => f64::INFINITY,
                rows => priority(f.best_per_row, f.sample_kept, rows),
            })
            .collect();
        let mut order: Vec<usize> = (0..priority.len()).collect();
        order.sort_by(|&a, &b| priority[a].total_cmp(&priority[b]).then(a.cmp(&b)));
        order
    }

    /// Evaluates the filters in order, each on the rows the ones before
    /// kept, judging each on those rows.
    fn ordered(
        filters: &mut [JudgedFilter],
        order: &[usize],
        batch: &RecordBatch,
    ) -> Result<Option<BooleanArray>> {
        let rows = batch.num_rows();
        let mut keep: Option<BooleanArray> = None;
        for &i in order {
            let Some(judged) = filters.get_mut(i) else {
                return internal_err!("dynamic filter {i} out of range");
            };
            if judged.off {
                continue;
            }
            let Some(filter) = judged.current(batch.schema_ref())? else {
                continue;
            };
            let before = keep.as_ref().map_or(rows, |k| k.true_count());
            let value = match &keep {
                // At most a fifth left (DataFusion's threshold for `AND`).
                Some(k) if before * 5 <= rows => filter.evaluate_selection(batch, k)?,
                _ => filter.evaluate(batch)?,
            };
            if rules_nothing(&value) {
                continue;
            }
            let mask = truth(value, rows)?;
            let next = match keep {
                Some(k) => and(&k, &mask)?,
                None => mask,
            };
            let after = next.true_count();
            judged.ruled += before;
            judged.kept += after;
            judged.off = !Self::pays(judged.ruled, judged.kept);
            keep = Some(next);
            if after == 0 {
                break;
            }
        }
        Ok(keep)
    }
}

/// Whether a join's own filter (its lookup included) that kept `kept` of
/// `rows` rows, at best `per_row` ns a row, pays in the scan, where the
/// join will look up again the rows it keeps: when it costs at most
/// [`OWN_LOOKUP_NANOS`] a row and drops at least half the rows, whose
/// filters and probes between scan and join it saves.
fn own_lookup_pays(per_row: f64, kept: usize, rows: usize) -> bool {
    rows > 0 && per_row <= OWN_LOOKUP_NANOS && kept.saturating_mul(2) <= rows
}

/// Whether a filter's value is `true` for every row (not filled yet, or
/// nothing to rule out).
fn rules_nothing(value: &ColumnarValue) -> bool {
    matches!(
        value,
        ColumnarValue::Scalar(ScalarValue::Boolean(Some(true)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{binary, case, col, in_list, lit};

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]))
    }

    /// Keys `0..rows`.
    fn batch(rows: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap()
    }

    fn k() -> Arc<dyn PhysicalExpr> {
        col("k", &schema()).unwrap()
    }

    /// `k op v`.
    fn compare(op: Operator, v: i64) -> Arc<dyn PhysicalExpr> {
        binary(k(), op, lit(v), &schema()).unwrap()
    }

    /// `k % m = 0`.
    fn multiple_of(m: i64) -> Arc<dyn PhysicalExpr> {
        let modulo = binary(k(), Operator::Modulo, lit(m), &schema()).unwrap();
        binary(modulo, Operator::Eq, lit(0i64), &schema()).unwrap()
    }

    fn sample_rows() -> i64 {
        i64::try_from(DYNAMIC_SAMPLE_ROWS).unwrap()
    }

    #[test]
    fn dynamic_filters_stop_when_they_keep_nine_rows_in_ten() {
        // Judged only after a sample.
        assert!(DynamicRows::pays(
            DYNAMIC_SAMPLE_ROWS - 1,
            DYNAMIC_SAMPLE_ROWS - 1
        ));
        // Selective: kept on.
        assert!(DynamicRows::pays(100_000, 10));
        assert!(DynamicRows::pays(100_000, 90_000));
        // Keeping more than 90 %: off.
        assert!(!DynamicRows::pays(100_000, 90_001));
        assert!(!DynamicRows::pays(DYNAMIC_SAMPLE_ROWS, DYNAMIC_SAMPLE_ROWS));
    }

    #[test]
    fn a_partition_drops_a_filter_that_keeps_every_row() {
        let rows = sample_rows();
        let batch = batch(rows);
        // Keeps every row: applied to the sample, then no longer.
        let mut all = DynamicRows::new(vec![compare(Operator::GtEq, 0)].into());
        assert_eq!(
            all.mask(&batch).unwrap().unwrap().true_count(),
            batch.num_rows()
        );
        assert!(all.mask(&batch).unwrap().is_none());
        // Keeps 1 %: applied to every batch.
        let mut few = DynamicRows::new(vec![compare(Operator::Lt, rows / 100)].into());
        for _ in 0..3 {
            let kept = few.mask(&batch).unwrap().unwrap().true_count();
            assert_eq!(kept, usize::try_from(rows / 100).unwrap());
        }
        // Each filter judged on its own: with both, the one keeping every
        // row stops after the sample, the selective one goes on.
        let mut both = DynamicRows::new(
            vec![
                compare(Operator::GtEq, 0),
                compare(Operator::Lt, rows / 100),
            ]
            .into(),
        );
        for _ in 0..3 {
            let kept = both.mask(&batch).unwrap().unwrap().true_count();
            assert_eq!(kept, usize::try_from(rows / 100).unwrap());
        }
        assert!(both.filters[0].off && !both.filters[1].off);
        // Not filled (`true`): nothing to apply, nothing counted.
        let mut empty = DynamicRows::new(vec![lit(true)].into());
        assert!(empty.mask(&batch).unwrap().is_none());
        assert_eq!(empty.filters[0].sampled, 0);
    }

    #[test]
    fn the_selective_filter_runs_first_and_a_redundant_one_stops() {
        let batch = batch(sample_rows());
        // Listed first: keeps seven rows in eight (`k % 16 < 14`). Listed
        // second: keeps one row in 64, all of them kept by the first. Of
        // about the same cost a row, the second drops eight times as many
        // rows for it: only a timing eight times off would rank it second
        // (a twofold margin, `% 2` first, failed once in CI under load).
        let modulo = binary(k(), Operator::Modulo, lit(16i64), &schema()).unwrap();
        let most = binary(modulo, Operator::Lt, lit(14i64), &schema()).unwrap();
        let mut rows = DynamicRows::new(vec![most, multiple_of(64)].into());
        let want = batch.num_rows() / 64;
        assert_eq!(rows.mask(&batch).unwrap().unwrap().true_count(), want);
        assert_eq!(rows.order, Some(vec![1, 0]));
        assert!(!rows.filters[0].off, "an eighth of the rows dropped alone");
        // Run on the rows `% 64` kept, the first keeps all of them: it
        // stops once it has ruled on a sample of them.
        for _ in 0..64 {
            assert_eq!(rows.mask(&batch).unwrap().unwrap().true_count(), want);
        }
        assert!(rows.filters[0].off);
        assert!(!rows.filters[1].off);
        assert_eq!(rows.mask(&batch).unwrap().unwrap().true_count(), want);
    }

    #[test]
    fn a_joins_own_lookup_pays_when_cheap_and_selective() {
        let rows = DYNAMIC_SAMPLE_ROWS;
        // An array's load a row, dropping 99 %: applied.
        assert!(own_lookup_pays(1.0, rows / 100, rows));
        // Dropping exactly half still pays; keeping more does not.
        assert!(own_lookup_pays(2.0, rows / 2, rows));
        assert!(!own_lookup_pays(2.0, rows / 2 + 1, rows));
        // A large hash table's probe: left to the join however selective.
        assert!(!own_lookup_pays(16.0, 0, rows));
        assert!(own_lookup_pays(9.0, 0, rows));
        // Never sampled: left to the join.
        assert!(!own_lookup_pays(f64::INFINITY, 0, 0));
        assert!(!own_lookup_pays(0.0, 0, 0));
    }

    /// A join's dynamic filter filled with `k <= 1000 AND lookup(k)` over
    /// an empty hash table (no build key matches).
    fn bounds_and_empty_lookup() -> Arc<dyn PhysicalExpr> {
        use datafusion::physical_plan::joins::join_hash_map::JoinHashMapU64;
        use datafusion::physical_plan::joins::{Map, SeededRandomState};
        let map = Map::HashMap(Box::new(JoinHashMapU64::with_capacity(0)));
        let lookup = HashTableLookupExpr::new(
            vec![k()],
            SeededRandomState::with_seed(0),
            Arc::new(map),
            "hash_lookup".to_string(),
        );
        let bounds = compare(Operator::LtEq, 1000);
        let filled = binary(bounds, Operator::And, Arc::new(lookup), &schema()).unwrap();
        let dynamic = DynamicFilterPhysicalExpr::new(vec![k()], lit(true));
        dynamic.update(filled).unwrap();
        Arc::new(dynamic)
    }

    #[test]
    fn a_joins_own_lookup_is_left_to_it_once_its_sample_shows_it_costly() {
        let batch = batch(sample_rows());
        for (per_row, kept) in [(1u128, 0), (50, 1001)] {
            let mut rows = DynamicRows::new(vec![bounds_and_empty_lookup()].into());
            rows = rows.probed_by(&[true]);
            // The sample evaluates the lookup: no row is kept.
            let sampled = rows.sample(&batch).unwrap().unwrap();
            assert_eq!(sampled.true_count(), 0);
            // Judged at `per_row` ns a row (set, not timed).
            let judged = &mut rows.filters[0];
            assert_eq!(judged.sampled, batch.num_rows());
            assert!(judged.best_per_row.is_finite());
            judged.best_per_row = per_row as f64;
            rows.order = Some(rows.rank());
            // Cheap: the lookup stays; costly: only the bounds (0..=1000).
            let mask = rows.mask(&batch).unwrap().unwrap();
            assert_eq!(mask.true_count(), kept, "{per_row} ns a row");
            assert_eq!(rows.filters[0].bounds_only, per_row > 10);
        }
        // Not flagged as probed by its join: the lookup always stays.
        let mut rows = DynamicRows::new(vec![bounds_and_empty_lookup()].into());
        rows.sample(&batch).unwrap();
        rows.filters[0].best_per_row = 50.0;
        rows.order = Some(rows.rank());
        assert_eq!(rows.mask(&batch).unwrap().unwrap().true_count(), 0);
    }

    #[test]
    fn a_partitioned_joins_case_filter_is_applied_as_any_partitions() {
        let batch = batch(1000);
        let member = |values: &[i64]| {
            let values = values.iter().map(|&v| lit(v)).collect();
            in_list(k(), values, &false, &schema()).unwrap()
        };
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(vec![k()], lit(true)));
        let filter = Arc::clone(&dynamic) as Arc<dyn PhysicalExpr>;
        let mut rows = DynamicRows::new(vec![filter].into());
        // Not filled: nothing applied, nothing counted.
        assert!(rows.mask(&batch).unwrap().is_none());
        assert_eq!(rows.filters[0].sampled, 0);
        // A collected build side's filter (bounds, lookup): applied.
        dynamic.update(compare(Operator::Lt, 10)).unwrap();
        assert_eq!(rows.mask(&batch).unwrap().unwrap().true_count(), 10);
        // A partitioned join's `CASE partition WHEN 0 THEN .. END`: each
        // partition's keys kept, the lists merged into one.
        let partition = binary(k(), Operator::Modulo, lit(2i64), &schema()).unwrap();
        let per_partition = case(
            Some(partition),
            vec![(lit(0i64), member(&[2, 4])), (lit(1i64), member(&[7]))],
            Some(lit(false)),
        )
        .unwrap();
        dynamic.update(per_partition).unwrap();
        assert_eq!(rows.mask(&batch).unwrap().unwrap().true_count(), 3);
        let (_, relaxed) = rows.filters[0].relaxed.as_ref().unwrap();
        let relaxed = relaxed.as_ref().unwrap();
        assert!(!relaxed.to_string().contains("CASE"), "{relaxed}");
        assert_eq!(rows.filters[0].sampled, 2000);
        // Per-partition lookups that are not `IN` lists: left to the join.
        let partition = binary(k(), Operator::Modulo, lit(2i64), &schema()).unwrap();
        let lookups = case(
            Some(partition),
            vec![
                (lit(0i64), compare(Operator::Lt, 10)),
                (lit(1i64), compare(Operator::Lt, 20)),
            ],
            Some(lit(false)),
        )
        .unwrap();
        dynamic.update(lookups).unwrap();
        assert!(rows.mask(&batch).unwrap().is_none());
        assert_eq!(rows.filters[0].sampled, 2000);
    }
}
