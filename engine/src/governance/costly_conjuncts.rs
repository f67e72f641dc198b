//! Costly masks after cheap conjuncts: a filter whose predicate ANDs
//! conjuncts that call a costly mask (HASH, ENCRYPT, REGEX, SHOW_*;
//! [`veil_udfs::is_costly_mask`]) with conjuncts that call none evaluates
//! the costly ones only on the rows the cheap ones keep
//! ([`CostlyConjunctsLast`]):
//!
//! ```text
//!   Filter [substr(hash_k(phone), 1, 2) IN (..)       Filter [CASE WHEN round(bal) > 5000
//!           AND round(bal) > 5000]              =>            THEN substr(hash_k(phone), 1, 2) IN (..) END]
//! ```
//!
//! A predicate on a masked column is evaluated with the mask inlined
//! (DataFusion substitutes the mask projection's expression into a filter
//! pushed through it), so every row reaching the filter pays for the mask,
//! about 0.2 µs per value for HASH, whatever the other conjuncts decide.
//! DataFusion evaluates `a AND b` on the rows `a` keeps only when `a` keeps
//! at most a fifth of them; TPC-H q22's `c_acctbal > avg` keeps about half,
//! so its restricted run hashed every visible phone twice (README,
//! "Benchmarks"). `CASE WHEN` evaluates its `THEN` on the rows its `WHEN`
//! keeps, whatever their share, within the one filter (two stacked filters
//! did the same work but re-batched the rows in between, and q22 got
//! slower).
//!
//! What it keeps: the filter keeps exactly the rows it kept (`CASE WHEN a
//! THEN b END` is true exactly where `a` and `b` both are), with its
//! projection and fetch, and every conjunct still reads only what it read,
//! above the same barrier. What changes is which conjunct runs first, which
//! SQL leaves open for `AND` (and DataFusion's pre-selection already
//! decides at run time): the costly conjuncts now see only the rows the
//! cheap ones keep, and the cheap ones see every row, so an error a costly
//! conjunct would raise on a row the cheap ones drop no longer surfaces,
//! and one a cheap conjunct raises on a row a selective costly conjunct
//! used to drop first now does. Either way the rows are ones the principal
//! sees (the barrier is below), so which error surfaces says nothing about
//! hidden rows. It runs last, after every rule that pushes, merges or
//! analyses filters.

use std::any::Any;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::Result;
use datafusion::physical_expr::expressions::case;
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::ExecutionPlan;
use veil_udfs::is_costly_mask;

/// The physical optimizer rule (see the module docs).
#[derive(Debug, Default)]
pub struct CostlyConjunctsLast;

impl PhysicalOptimizerRule for CostlyConjunctsLast {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        super::rewrite_nodes(plan, split)
    }

    fn name(&self) -> &str {
        "veil_costly_conjuncts_last"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `e` calls a costly mask anywhere.
fn calls_costly_mask(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.exists(|x| {
        let any: &dyn Any = x.as_ref();
        Ok(any
            .downcast_ref::<ScalarFunctionExpr>()
            .is_some_and(|f| is_costly_mask(f.fun())))
    })
    .unwrap_or(true)
}

/// The rewritten filter, or `None` where the predicate is all cheap or all
/// costly.
fn split(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let any: &dyn Any = plan.as_ref();
    let Some(filter) = any.downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    let (costly, cheap): (Vec<_>, Vec<_>) = split_conjunction(filter.predicate())
        .into_iter()
        .cloned()
        .partition(calls_costly_mask);
    if costly.is_empty() || cheap.is_empty() {
        return Ok(None);
    }
    let predicate = case(None, vec![(conjunction(cheap), conjunction(costly))], None)?;
    let filter = FilterExecBuilder::from(filter)
        .with_predicate(predicate)
        .build()?;
    Ok(Some(Arc::new(filter)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{binary, col, lit};
    use datafusion::physical_plan::test::TestMemoryExec;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::SessionContext;
    use veil_udfs::{mask_udf, KeyHandle, MaskKey, MaskSpec};

    fn input() -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("phone", DataType::Utf8, true),
            Field::new("bal", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1000)),
                Arc::new(StringArray::from_iter_values(
                    (0..1000).map(|i| format!("{:02}-{i:03}", i % 30)),
                )),
                Arc::new(Float64Array::from_iter_values((0..1000).map(|i| i as f64))),
            ],
        )
        .unwrap();
        TestMemoryExec::try_new_exec(&[vec![batch]], schema, None).unwrap()
    }

    fn call(spec: MaskSpec, arg: Arc<dyn PhysicalExpr>, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let udf = Arc::new(mask_udf(spec).unwrap());
        Arc::new(
            ScalarFunctionExpr::try_new(udf, vec![arg], schema, Arc::new(ConfigOptions::default()))
                .unwrap(),
        )
    }

    fn hash_key() -> MaskSpec {
        MaskSpec::Hash(MaskKey::new(
            KeyHandle {
                id: "col:t.phone".into(),
                version: 1,
            },
            [7u8; 32],
        ))
    }

    /// `hash(phone) < '8' AND bal > 700 AND id % 2 = 0` (keeps rows by the
    /// token and by two cheap tests), with a projection to `id` and a fetch.
    fn mixed_filter(input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let s = input.schema();
        let hashed = call(hash_key(), col("phone", &s).unwrap(), &s);
        let by_token = binary(hashed, Operator::Lt, lit("8"), &s).unwrap();
        let by_bal = binary(col("bal", &s).unwrap(), Operator::Gt, lit(700.0), &s).unwrap();
        let even = binary(
            binary(col("id", &s).unwrap(), Operator::Modulo, lit(2i64), &s).unwrap(),
            Operator::Eq,
            lit(0i64),
            &s,
        )
        .unwrap();
        let predicate = conjunction([by_token, by_bal, even]);
        Arc::new(
            FilterExecBuilder::new(predicate, input)
                .apply_projection(Some(vec![0]))
                .unwrap()
                .with_fetch(Some(40))
                .build()
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_costly_mask_runs_only_on_rows_the_cheap_conjuncts_keep() {
        let plan = mixed_filter(input());
        let rewritten = CostlyConjunctsLast
            .optimize(Arc::clone(&plan), &ConfigOptions::default())
            .unwrap();
        let text = displayable(rewritten.as_ref()).indent(true).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(
                "FilterExec: CASE WHEN bal@2 > 700 AND id@0 % 2 = 0 \
                 THEN veil_hash[col:t.phone#v1](phone@1) < 8 END"
            ) && lines[0].contains("projection=[id@0]")
                && lines[0].contains("fetch=40"),
            "{text}"
        );
        assert!(
            lines[1].trim_start().starts_with("DataSourceExec"),
            "{text}"
        );
        assert_eq!(rewritten.schema(), plan.schema());

        let ctx = SessionContext::new();
        let before = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let after = collect(rewritten, ctx.task_ctx()).await.unwrap();
        assert_eq!(before, after);
        assert!(after.iter().map(RecordBatch::num_rows).sum::<usize>() > 0);
    }

    /// The costly conjunct `hash(phone) = 'x' OR 100 / (id % 2) > 0`
    /// divides by zero on even ids; the cheap `id % 2 = 1` drops them. The
    /// one filter fails; rewritten, the costly conjunct never sees them.
    #[tokio::test]
    async fn the_costly_conjunct_never_sees_a_row_the_cheap_ones_drop() {
        let input = input();
        let s = input.schema();
        let id = || col("id", &s).unwrap();
        let odd = || binary(id(), Operator::Modulo, lit(2i64), &s).unwrap();
        let hashed = call(hash_key(), col("phone", &s).unwrap(), &s);
        let costly = binary(
            binary(hashed, Operator::Eq, lit("x"), &s).unwrap(),
            Operator::Or,
            binary(
                binary(lit(100i64), Operator::Divide, odd(), &s).unwrap(),
                Operator::Gt,
                lit(0i64),
                &s,
            )
            .unwrap(),
            &s,
        )
        .unwrap();
        let cheap = binary(odd(), Operator::Eq, lit(1i64), &s).unwrap();
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(FilterExec::try_new(conjunction([costly, cheap]), input).unwrap());
        let ctx = SessionContext::new();
        let err = collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Divide by zero"), "{err}");

        let rewritten = CostlyConjunctsLast
            .optimize(plan, &ConfigOptions::default())
            .unwrap();
        let out = collect(rewritten, ctx.task_ctx()).await.unwrap();
        let ids: Vec<i64> = out
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(ids, (0..1000).filter(|i| i % 2 == 1).collect::<Vec<_>>());
    }

    #[test]
    fn all_cheap_all_costly_and_cheap_masks_stay_one_filter() {
        let input = input();
        let s = input.schema();
        let hashed = || call(hash_key(), col("phone", &s).unwrap(), &s);
        let rounded = call(MaskSpec::Round(10.0), col("bal", &s).unwrap(), &s);
        let by_bal = binary(col("bal", &s).unwrap(), Operator::Gt, lit(1.0), &s).unwrap();
        for predicate in [
            // Only cheap conjuncts, one of them a cheap mask (ROUND).
            conjunction([
                binary(rounded, Operator::Gt, lit(5.0), &s).unwrap(),
                by_bal.clone(),
            ]),
            // Only costly conjuncts.
            conjunction([
                binary(hashed(), Operator::Lt, lit("8"), &s).unwrap(),
                binary(hashed(), Operator::Gt, lit("1"), &s).unwrap(),
            ]),
            // One conjunct: an OR of a costly and a cheap test.
            binary(
                binary(hashed(), Operator::Lt, lit("8"), &s).unwrap(),
                Operator::Or,
                by_bal.clone(),
                &s,
            )
            .unwrap(),
        ] {
            let plan: Arc<dyn ExecutionPlan> =
                Arc::new(FilterExec::try_new(predicate, Arc::clone(&input)).unwrap());
            let out = CostlyConjunctsLast
                .optimize(Arc::clone(&plan), &ConfigOptions::default())
                .unwrap();
            assert!(
                Arc::ptr_eq(&out, &plan),
                "{}",
                displayable(out.as_ref()).indent(true)
            );
        }
    }
}
