//! A partitioned hash join's dynamic filter, made cheap enough to apply
//! to every row of its probe side's scan.
//!
//! DataFusion fills the dynamic filter of a join whose two sides are hash
//! partitioned with one filter per partition, routed by the probe key's
//! partition: `CASE hash_repartition(key) % n WHEN 0 THEN f0 WHEN 1 THEN
//! f1 .. ELSE false END`. Evaluated as written, the `CASE` hashes every row,
//! splits the batch per partition and merges the results, which costs more
//! than the repartition and probe it would save. A row a `CASE` keeps is
//! kept by one of its branches, so when every branch is an `IN` list on
//! the same key (small build sides), one list of all their values keeps a
//! superset of the rows, each for the same reason (its key is in that
//! partition's build side), at one set lookup per row: that is what
//! [`any_partition`] evaluates instead (q18's last join keeps 182 of six
//! million lineitem rows that way). Branches that look up each partition's
//! hash table are left to the join: `f0 OR f1 ..` costs a lookup per
//! partition for every row, more than the repartition and the one probe it
//! saves (measured: q5, whose lineitem filter keeps 15 %, +50-90 ms).
//!
//! The result only ever keeps more rows than the join's filter, so it is
//! exactly as leakproof: the join still decides every match.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{lit, BinaryExpr, CaseExpr, InListExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;

/// What to evaluate for `filter` (a filled dynamic filter): itself, with
/// each per-partition `CASE` (at the top, or under `AND` / `OR`) replaced by
/// one `IN` list of its branches' values; None when a `CASE` of other
/// branches leaves nothing cheap to evaluate (a conjunct of an `AND` that
/// is such a `CASE` is dropped, which keeps a superset). `schema` is the
/// schema the filter is evaluated on.
pub(crate) fn any_partition(
    filter: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    if let Some(case) = filter.downcast_ref::<CaseExpr>() {
        if case.expr().is_some() && case.when_then_expr().iter().all(|(w, _)| w.is::<Literal>()) {
            let branches: Vec<_> = case
                .when_then_expr()
                .iter()
                .map(|(_, then)| Arc::clone(then))
                .chain(case.else_expr().cloned())
                .filter(|e| !is_literal(e, false))
                .collect();
            if branches.is_empty() {
                return Ok(Some(lit(false)));
            }
            if branches.iter().any(|b| is_literal(b, true)) {
                return Ok(Some(lit(true)));
            }
            return merged_in_list(&branches, schema);
        }
    }
    if let Some(binary) = filter.downcast_ref::<BinaryExpr>() {
        let op = *binary.op();
        if matches!(op, Operator::And | Operator::Or) {
            let left = any_partition(binary.left(), schema)?;
            let right = any_partition(binary.right(), schema)?;
            return Ok(match (left, right) {
                (Some(l), Some(r)) => Some(Arc::new(BinaryExpr::new(l, op, r))),
                (Some(one), None) | (None, Some(one)) if op == Operator::And => Some(one),
                _ => None,
            });
        }
    }
    Ok(Some(Arc::clone(filter)))
}

/// One `key IN (..)` holding every value of `branches`, when each branch
/// is `key IN (..)` or `bounds AND key IN (..)` (the `IN` implies the
/// bounds) on the same key with literal values.
fn merged_in_list(
    branches: &[Arc<dyn PhysicalExpr>],
    schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let mut key: Option<&Arc<dyn PhysicalExpr>> = None;
    let mut values: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for branch in branches {
        let Some(list) = in_list_of(branch) else {
            return Ok(None);
        };
        if list.negated() || key.is_some_and(|k| k.as_ref() != list.expr().as_ref()) {
            return Ok(None);
        }
        if !list.list().iter().all(|v| v.is::<Literal>()) {
            return Ok(None);
        }
        key = Some(list.expr());
        values.extend(list.list().iter().cloned());
    }
    match key {
        Some(key) => Ok(Some(Arc::new(InListExpr::try_new(
            Arc::clone(key),
            values,
            false,
            schema,
        )?))),
        None => Ok(None),
    }
}

/// The `IN` list of `key IN (..)` or of `bounds AND key IN (..)`.
fn in_list_of(branch: &Arc<dyn PhysicalExpr>) -> Option<&InListExpr> {
    if let Some(list) = branch.downcast_ref::<InListExpr>() {
        return Some(list);
    }
    let binary = branch.downcast_ref::<BinaryExpr>()?;
    if *binary.op() != Operator::And {
        return None;
    }
    binary.right().downcast_ref::<InListExpr>()
}

/// Whether `expr` is the boolean literal `value`.
fn is_literal(expr: &Arc<dyn PhysicalExpr>, value: bool) -> bool {
    expr.downcast_ref::<Literal>()
        .is_some_and(|l| l.value() == &ScalarValue::Boolean(Some(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::expressions::{binary, case, col, in_list};

    fn setup() -> (Arc<Schema>, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..1000))],
        )
        .unwrap();
        (schema, batch)
    }

    fn kept(filter: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Vec<i64> {
        let mask = filter
            .evaluate(batch)
            .unwrap()
            .into_array(batch.num_rows())
            .unwrap();
        let keys = batch
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        (0..batch.num_rows())
            .filter(|&i| mask.as_boolean().value(i))
            .map(|i| keys.value(i))
            .collect()
    }

    /// `CASE k % 2 WHEN 0 THEN b0 WHEN 1 THEN b1 ELSE other END`.
    fn routed(
        schema: &Schema,
        b0: Arc<dyn PhysicalExpr>,
        b1: Arc<dyn PhysicalExpr>,
        other: bool,
    ) -> Arc<dyn PhysicalExpr> {
        let k = col("k", schema).unwrap();
        let partition = binary(k, Operator::Modulo, lit(2i64), schema).unwrap();
        case(
            Some(partition),
            vec![(lit(0i64), b0), (lit(1i64), b1)],
            Some(lit(other)),
        )
        .unwrap()
    }

    fn list(schema: &Schema, values: &[i64]) -> Arc<dyn PhysicalExpr> {
        let values = values.iter().map(|&v| lit(v)).collect();
        in_list(col("k", schema).unwrap(), values, &false, schema).unwrap()
    }

    fn between(schema: &Schema, low: i64, high: i64) -> Arc<dyn PhysicalExpr> {
        let k = || col("k", schema).unwrap();
        let low = binary(k(), Operator::GtEq, lit(low), schema).unwrap();
        let high = binary(k(), Operator::LtEq, lit(high), schema).unwrap();
        binary(low, Operator::And, high, schema).unwrap()
    }

    #[test]
    fn per_partition_in_lists_become_one_list_keeping_every_build_key() {
        let (schema, batch) = setup();
        // Partition 0 holds the even build keys, partition 1 the odd ones.
        let bounded = |low, high, values: &[i64]| {
            binary(
                between(&schema, low, high),
                Operator::And,
                list(&schema, values),
                &schema,
            )
            .unwrap()
        };
        let filter = routed(
            &schema,
            bounded(4, 900, &[4, 10, 900]),
            list(&schema, &[7, 11]),
            false,
        );
        let relaxed = any_partition(&filter, &schema).unwrap().unwrap();
        assert!(relaxed.is::<InListExpr>(), "{relaxed}");
        assert_eq!(kept(&relaxed, &batch), vec![4, 7, 10, 11, 900]);
        // The routed filter keeps the same rows here (each key sits in
        // its partition).
        assert_eq!(kept(&filter, &batch), vec![4, 7, 10, 11, 900]);
    }

    #[test]
    fn other_branches_are_left_to_the_join() {
        let (schema, batch) = setup();
        // Not `IN` lists (bounds here, hash table lookups in a join):
        // nothing to evaluate.
        let filter = routed(
            &schema,
            between(&schema, 0, 3),
            between(&schema, 10, 12),
            false,
        );
        assert!(any_partition(&filter, &schema).unwrap().is_none());
        // Under an `AND`, the other conjunct is still evaluated: a
        // superset of the rows.
        let below = between(&schema, 0, 20);
        let both = binary(Arc::clone(&below), Operator::And, filter, &schema).unwrap();
        let relaxed = any_partition(&both, &schema).unwrap().unwrap();
        assert_eq!(kept(&relaxed, &batch), (0..=20).collect::<Vec<_>>());
        assert!(kept(&both, &batch).iter().all(|k| *k <= 20));
    }

    #[test]
    fn an_unknown_partition_keeps_every_row_and_nested_cases_are_relaxed() {
        let (schema, batch) = setup();
        // A canceled partition (`ELSE true`): nothing can be ruled out.
        let unknown = routed(&schema, list(&schema, &[1]), list(&schema, &[2]), true);
        let relaxed = any_partition(&unknown, &schema).unwrap().unwrap();
        assert_eq!(kept(&relaxed, &batch).len(), 1000);
        // No build rows at all: nothing kept.
        let empty = routed(&schema, lit(false), lit(false), false);
        let relaxed = any_partition(&empty, &schema).unwrap().unwrap();
        assert!(kept(&relaxed, &batch).is_empty());
        // `key IS NULL OR CASE ..` (null-aware joins): the CASE under the
        // OR is relaxed too.
        let k = col("k", &schema).unwrap();
        let is_null: Arc<dyn PhysicalExpr> =
            Arc::new(datafusion::physical_expr::expressions::IsNullExpr::new(k));
        let inner = routed(&schema, list(&schema, &[3]), list(&schema, &[5]), false);
        let filter = binary(is_null, Operator::Or, inner, &schema).unwrap();
        let relaxed = any_partition(&filter, &schema).unwrap().unwrap();
        assert!(!relaxed.to_string().contains("CASE"), "{relaxed}");
        assert_eq!(kept(&relaxed, &batch), vec![3, 5]);
    }

    #[test]
    fn filters_without_a_case_are_left_as_they_are() {
        let (schema, _) = setup();
        let filter = list(&schema, &[1, 2]);
        let same = any_partition(&filter, &schema).unwrap().unwrap();
        assert!(Arc::ptr_eq(&filter, &same));
    }
}
