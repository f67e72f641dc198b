//! Decimal averages computed from the sums and counts their aggregate
//! already keeps.
//!
//! An `avg(x)` keeps its own sum and count of `x` per group, so TPC-H q1's
//! `sum(l_quantity), sum(l_extendedprice), avg(l_quantity),
//! avg(l_extendedprice), avg(l_discount), count(*)` adds up `l_quantity`
//! and `l_extendedprice` twice per row and counts rows four times: eleven
//! accumulator updates per row where six give every result. Before
//! physical planning, [`averages_from_sums`] rewrites each `Decimal128`
//! `avg(x)` of an aggregate that already counts `x` (`count(x)`, or
//! `count(*)` when `x` cannot be NULL) into that count and a `sum(x)` (the
//! aggregate's own when it has one), and a projection above divides them
//! with DataFusion's own decimal averager ([`AvgOfSum`]): the same value,
//! type, name and overflow error as `avg(x)` (the average of the same
//! integer sum over the same count, NULL where the sum is). An aggregate
//! with no such count keeps its averages, where splitting them would add
//! an accumulator rather than remove one.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Decimal128Array};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, FieldRef, Int64Type, DECIMAL128_MAX_PRECISION,
    DECIMAL128_MAX_SCALE,
};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{internal_err, Column, Result};
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Projection, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_functions_aggregate_common::utils::DecimalAverager;

/// Rewrites the decimal averages of `plan`'s aggregates (subqueries
/// included; see the module documentation).
pub fn averages_from_sums(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::Aggregate(aggregate) = &node else {
            return Ok(Transformed::no(node));
        };
        Ok(match rewrite(aggregate)? {
            Some(plan) => Transformed::yes(plan),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

/// The arguments of `e` (under any alias) when it calls the aggregate
/// `name` plainly: no `DISTINCT`, `FILTER`, `ORDER BY` or null treatment.
fn plain_call<'a>(e: &'a Expr, name: &str) -> Option<&'a [Expr]> {
    let e = match e {
        Expr::Alias(alias) => alias.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
        return None;
    };
    let plain = !params.distinct
        && params.filter.is_none()
        && params.order_by.is_empty()
        && params.null_treatment.is_none();
    (plain && func.name() == name).then_some(params.args.as_slice())
}

/// What replaces one `avg(x)`: where its sum and count are in the new
/// aggregate's list, and the type of `x`.
#[derive(Debug, Clone, Copy)]
struct Split {
    sum: usize,
    count: usize,
    precision: u8,
    scale: i8,
}

fn rewrite(aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
    if aggregate
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Ok(None);
    }
    let input = aggregate.input.schema();
    let exprs = &aggregate.aggr_expr;
    let count_star = exprs.iter().position(|e| {
        plain_call(e, "count")
            .is_some_and(|args| matches!(args, [Expr::Literal(v, _)] if !v.is_null()))
    });
    let mut aggr = exprs.clone();
    let mut splits: Vec<Option<Split>> = vec![None; exprs.len()];
    for (i, e) in exprs.iter().enumerate() {
        let Some([x]) = plain_call(e, "avg") else {
            continue;
        };
        let Ok(DataType::Decimal128(precision, scale)) = x.get_type(input) else {
            continue;
        };
        let same = |args: &[Expr]| args == std::slice::from_ref(x);
        let count = match exprs
            .iter()
            .position(|c| plain_call(c, "count").is_some_and(same))
        {
            Some(c) => c,
            None if !x.nullable(input)? => match count_star {
                Some(c) => c,
                None => continue,
            },
            None => continue,
        };
        let sum = match aggr
            .iter()
            .position(|c| plain_call(c, "sum").is_some_and(same))
        {
            Some(s) => s,
            None => {
                aggr.push(sum(x.clone()));
                aggr.len() - 1
            }
        };
        splits[i] = Some(Split {
            sum,
            count,
            precision,
            scale,
        });
    }
    if splits.iter().all(Option::is_none) {
        return Ok(None);
    }
    // The new list: every expression but the replaced averages; `at` maps
    // an index of `aggr` to its place in it.
    let mut at = vec![None; aggr.len()];
    let mut kept = Vec::with_capacity(aggr.len());
    for (i, e) in aggr.into_iter().enumerate() {
        if splits.get(i).is_some_and(Option::is_some) {
            continue;
        }
        at[i] = Some(kept.len());
        kept.push(e);
    }
    let groups = aggregate.group_expr.len();
    // A plan DataFusion refuses (a name the added sum would repeat) stays
    // as it was: the rewrite is only ever an optimization.
    let Ok(split) = Aggregate::try_new(
        Arc::clone(&aggregate.input),
        aggregate.group_expr.clone(),
        kept,
    ) else {
        return Ok(None);
    };
    let column = |i: usize| Expr::Column(Column::from(split.schema.qualified_field(i)));
    let place = |i: usize| match at.get(i).copied().flatten() {
        Some(p) => Ok(groups + p),
        None => internal_err!("avg_sums: aggregate {i} has no place"),
    };
    let mut projection: Vec<Expr> = (0..groups).map(column).collect();
    for (i, split_avg) in splits.iter().enumerate() {
        let (qualifier, field) = aggregate.schema.qualified_field(groups + i);
        let expr = match split_avg {
            None => column(place(i)?),
            Some(s) => {
                let udf = ScalarUDF::new_from_impl(AvgOfSum::new(s.precision, s.scale));
                let args = vec![column(place(s.sum)?), column(place(s.count)?)];
                Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), args))
            }
        };
        projection.push(expr.alias_qualified(qualifier.cloned(), field.name()));
    }
    let split = Arc::new(LogicalPlan::Aggregate(split));
    Ok(Projection::try_new(projection, split)
        .ok()
        .filter(|p| p.schema.iter().eq(aggregate.schema.iter()))
        .map(LogicalPlan::Projection))
}

/// `sum / count` as `avg` of a `DECIMAL(precision, scale)` computes it
/// (DataFusion's [`DecimalAverager`]): type `DECIMAL(min(38, precision +
/// 4), min(38, scale + 4))`, NULL where the sum is NULL or the count 0.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AvgOfSum {
    signature: Signature,
    /// The column's `(precision, scale)`.
    input: (u8, i8),
    scale: i8,
    output: (u8, i8),
}

impl AvgOfSum {
    /// The average of a `DECIMAL(precision, scale)` column.
    pub fn new(precision: u8, scale: i8) -> Self {
        let output = (
            DECIMAL128_MAX_PRECISION.min(precision.saturating_add(4)),
            DECIMAL128_MAX_SCALE.min(scale.saturating_add(4)),
        );
        Self {
            signature: Signature::any(2, Volatility::Immutable),
            input: (precision, scale),
            scale,
            output,
        }
    }

    /// The column's `(precision, scale)` (what [`AvgOfSum::new`] takes).
    pub fn input(&self) -> (u8, i8) {
        self.input
    }
}

impl ScalarUDFImpl for AvgOfSum {
    fn name(&self) -> &str {
        "avg_of_sum"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Decimal128(self.output.0, self.output.1))
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        let (precision, scale) = self.output;
        let output = DataType::Decimal128(precision, scale);
        Ok(Arc::new(Field::new(self.name(), output, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [sums, counts] = args.args.as_slice() else {
            return internal_err!("avg_of_sum takes a sum and a count");
        };
        let (sums, counts) = (sums.to_array(rows)?, counts.to_array(rows)?);
        let (Some(sums), Some(counts)) = (
            sums.as_primitive_opt::<Decimal128Type>(),
            counts.as_primitive_opt::<Int64Type>(),
        ) else {
            return internal_err!("avg_of_sum takes a Decimal128 sum and an Int64 count");
        };
        let (precision, scale) = self.output;
        let averager = DecimalAverager::<Decimal128Type>::try_new(self.scale, precision, scale)?;
        let averages = sums
            .iter()
            .zip(counts.iter())
            .map(|(sum, count)| match (sum, count) {
                (Some(sum), Some(count)) if count > 0 => {
                    averager.avg(sum, i128::from(count)).map(Some)
                }
                _ => Ok(None),
            })
            .collect::<Result<Decimal128Array>>()?;
        let array: ArrayRef = Arc::new(averages.with_precision_and_scale(precision, scale)?);
        Ok(ColumnarValue::Array(array))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Runs `sql` as DataFusion plans it and with the averages rewritten;
    /// returns both answers (with column names and types) and the
    /// rewritten physical plan.
    async fn both(sql: &str) -> (String, String, String) {
        let ctx = SessionContext::new();
        for ddl in [
            "CREATE TABLE t (g VARCHAR NOT NULL, x DECIMAL(15, 2) NOT NULL, y DECIMAL(15, 2)) \
             AS VALUES ('a', 1.00, 1.00), ('a', 2.00, NULL), ('a', 2.00, 4.50), \
             ('b', 10.01, NULL), ('b', 0.02, NULL), ('c', -3.33, -1.11)",
            "CREATE TABLE empty (x DECIMAL(15, 2) NOT NULL)",
        ] {
            ctx.sql(ddl).await.unwrap().collect().await.unwrap();
        }
        let df = ctx.sql(sql).await.unwrap();
        let logical = df.logical_plan().clone();
        let state = ctx.state();
        let mut answers = vec![];
        let mut text = String::new();
        for rewritten in [false, true] {
            let plan = if rewritten {
                averages_from_sums(logical.clone()).unwrap()
            } else {
                logical.clone()
            };
            let physical = state.create_physical_plan(&plan).await.unwrap();
            if rewritten {
                text = displayable(physical.as_ref()).indent(true).to_string();
            }
            let batches = datafusion::physical_plan::collect(physical, ctx.task_ctx())
                .await
                .unwrap();
            let schema = batches
                .first()
                .map(|b| format!("{:?}", b.schema()))
                .unwrap_or_default();
            answers.push(format!(
                "{schema}\n{}",
                pretty_format_batches(&batches).unwrap()
            ));
        }
        let rewritten = answers.pop().unwrap();
        (answers.pop().unwrap(), rewritten, text)
    }

    /// The table's rows as trimmed cells.
    fn rows(answer: &str) -> Vec<Vec<String>> {
        answer
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(1)
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .map(|cells| cells[1..cells.len() - 1].to_vec())
            .collect()
    }

    #[tokio::test]
    async fn q1s_averages_come_from_its_sums_and_count() {
        let sql = "SELECT g, sum(x), avg(x), avg(x * 2), count(*) FROM t GROUP BY g ORDER BY g";
        let (plain, rewritten, plan) = both(sql).await;
        assert_eq!(plain, rewritten);
        let a = ["a", "5.00", "1.666666", "3.333333", "3"];
        assert_eq!(rows(&rewritten)[0], a, "{rewritten}");
        assert!(plan.contains("avg_of_sum"), "{plan}");
        // The aggregate sums and counts; no accumulator averages.
        let aggregates = plan.lines().filter(|l| l.contains("AggregateExec"));
        assert!(aggregates.clone().count() > 0, "{plan}");
        assert!(aggregates.clone().all(|l| !l.contains("avg(")), "{plan}");
    }

    #[tokio::test]
    async fn a_nullable_column_needs_its_own_count() {
        // y can be NULL: count(*) is not its count, so avg(y) stays.
        let (plain, rewritten, plan) =
            both("SELECT g, avg(y), sum(y), count(*) FROM t GROUP BY g ORDER BY g").await;
        assert_eq!(plain, rewritten);
        assert!(!plan.contains("avg_of_sum"), "{plan}");
        // With count(y) it is split; group b (only NULLs) averages to NULL.
        let (plain, rewritten, plan) =
            both("SELECT g, avg(y), count(y) FROM t GROUP BY g ORDER BY g").await;
        assert_eq!(plain, rewritten);
        assert!(plan.contains("avg_of_sum"), "{plan}");
        assert_eq!(rows(&rewritten)[1], ["b", "", "0"], "{rewritten}");
    }

    /// An aggregate where the added `sum(x)` would repeat a column's name
    /// is left as it is, and the query still runs.
    #[tokio::test]
    async fn a_name_the_added_sum_would_repeat_keeps_the_average() {
        use datafusion::functions_aggregate::expr_fn::{avg, count, max};
        use datafusion::prelude::{col, lit};
        let ctx = SessionContext::new();
        let ddl = "CREATE TABLE t (x DECIMAL(15, 2) NOT NULL) AS VALUES (1.00), (2.00)";
        ctx.sql(ddl).await.unwrap().collect().await.unwrap();
        let df = ctx.table("t").await.unwrap().aggregate(
            vec![],
            vec![
                avg(col("x")),
                count(lit(1)),
                max(col("x")).alias("sum(t.x)"),
            ],
        );
        let plan = df.unwrap().logical_plan().clone();
        let same = averages_from_sums(plan.clone()).unwrap();
        assert_eq!(same, plan);
        let physical = ctx.state().create_physical_plan(&same).await.unwrap();
        let batches = datafusion::physical_plan::collect(physical, ctx.task_ctx())
            .await
            .unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        assert_eq!(rows(&text), [["1.500000", "2", "2.00"]], "{text}");
    }

    #[tokio::test]
    async fn distinct_filtered_float_and_ungrouped_empty_averages() {
        for sql in [
            "SELECT avg(DISTINCT x), count(*) FROM t",
            "SELECT avg(x) FILTER (WHERE g = 'a'), count(*) FROM t",
            "SELECT avg(CAST(x AS DOUBLE)), count(*) FROM t",
            "SELECT avg(x), count(*) FROM empty",
            "SELECT avg(x), count(*) FROM t",
        ] {
            let (plain, rewritten, _) = both(sql).await;
            assert_eq!(plain, rewritten, "{sql}");
        }
        let (_, rewritten, plan) = both("SELECT avg(x), count(*) FROM empty").await;
        assert!(plan.contains("avg_of_sum"), "{plan}");
        assert_eq!(rows(&rewritten), [["", "0"]], "{rewritten}");
        let (_, _, plan) = both("SELECT avg(DISTINCT x), count(*) FROM t").await;
        assert!(!plan.contains("avg_of_sum"), "{plan}");
    }
}
