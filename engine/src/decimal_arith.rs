//! Decimal `*`, `+` and `-` without a per-row overflow check where no row
//! can overflow.
//!
//! arrow computes every `Decimal128` product, and every sum or difference,
//! with a checked 128-bit operation per row inside a fallible loop: no
//! SIMD, and on x86-64 a multiply with an overflow check is several times
//! the cost of a plain one. TPC-H's money columns are `DECIMAL(15, 2)`, so
//! `l_extendedprice * (1 - l_discount) * (1 + l_tax)` (q1, over 6M rows)
//! runs two checked multiplies and two checked subtractions per row,
//! though no value in those columns comes near 2^63.
//!
//! Before physical planning, [`unchecked_decimal_arith`] replaces each
//! `Decimal128` `a * b`, `a + b` and `a - b` whose type is arrow's with a
//! [`DecimalArith`] function of the same type and column name. Per batch it
//! computes the results from 64-bit operands (scaled first for `+` and `-`,
//! as arrow rescales to the larger scale) while checking, in the same
//! branch-free pass, that every operand fits in 64 bits; then no result can
//! overflow 128 bits. If one does not fit, it throws the results away and
//! calls arrow's kernel, as DataFusion would have, so answers and overflow
//! errors are exactly DataFusion's.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, FieldRef, DECIMAL128_MAX_PRECISION, DECIMAL128_MAX_SCALE,
};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{internal_err, DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr_common::datum::apply;

/// The arithmetic a [`DecimalArith`] performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecimalOp {
    /// `a * b`
    Mul,
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
}

impl DecimalOp {
    fn of(op: Operator) -> Option<Self> {
        match op {
            Operator::Multiply => Some(Self::Mul),
            Operator::Plus => Some(Self::Add),
            Operator::Minus => Some(Self::Sub),
            _ => None,
        }
    }

    fn operator(self) -> Operator {
        match self {
            Self::Mul => Operator::Multiply,
            Self::Add => Operator::Plus,
            Self::Sub => Operator::Minus,
        }
    }

    /// arrow's result type for `Decimal128(p1, s1) op Decimal128(p2, s2)`
    /// and the factors arrow scales each operand by first (sums and
    /// differences bring both to the larger scale), or `None` when this
    /// module leaves the operation to arrow (negative scales, scales or
    /// precisions out of range).
    fn shape(self, (p1, s1): (u8, i8), (p2, s2): (u8, i8)) -> Option<Shape> {
        let max = DECIMAL128_MAX_PRECISION;
        if s1 < 0 || s2 < 0 || p1 > max || p2 > max {
            return None;
        }
        match self {
            Self::Mul => {
                let scale = s1.checked_add(s2)?;
                (scale <= DECIMAL128_MAX_SCALE).then(|| Shape {
                    output: DataType::Decimal128((p1 + p2 + 1).min(max), scale),
                    factors: (1, 1),
                })
            }
            Self::Add | Self::Sub => {
                // In i16: p <= 38 and 0 <= s <= 127.
                let (p1, s1, p2, s2) = (i16::from(p1), i16::from(s1), i16::from(p2), i16::from(s2));
                let scale = s1.max(s2);
                let precision = scale + (p1 - s1).max(p2 - s2) + 1;
                let factor = |s: i16| 10_i64.checked_pow(u32::try_from(scale - s).ok()?);
                Some(Shape {
                    output: DataType::Decimal128(
                        u8::try_from(precision.clamp(1, i16::from(max))).ok()?,
                        i8::try_from(scale).ok()?,
                    ),
                    factors: (factor(s1)?, factor(s2)?),
                })
            }
        }
    }

    /// arrow's kernel, as DataFusion's binary expression calls it.
    fn arrow(self, l: &ColumnarValue, r: &ColumnarValue) -> Result<ColumnarValue> {
        match self {
            Self::Mul => apply(l, r, numeric::mul_wrapping),
            Self::Add => apply(l, r, numeric::add_wrapping),
            Self::Sub => apply(l, r, numeric::sub_wrapping),
        }
    }
}

/// arrow's result type for an operation and the factors it scales the
/// operands by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    output: DataType,
    factors: (i64, i64),
}

/// `Decimal128` arithmetic that skips the per-row overflow check for
/// batches whose scaled operands all fit in 64 bits (see the module
/// documentation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DecimalArith {
    op: DecimalOp,
    /// The operands' `(precision, scale)`.
    operands: ((u8, i8), (u8, i8)),
    shape: Shape,
    signature: Signature,
}

impl DecimalArith {
    /// `op` on operands of the given `(precision, scale)`, or `None` where
    /// arrow's kernel is left to do it.
    pub fn new(op: DecimalOp, l: (u8, i8), r: (u8, i8)) -> Option<Self> {
        Some(Self {
            op,
            operands: (l, r),
            shape: op.shape(l, r)?,
            signature: Signature::any(2, Volatility::Immutable),
        })
    }

    /// The operation and the operands' `(precision, scale)` it was made
    /// for (what [`DecimalArith::new`] takes).
    pub fn parts(&self) -> (DecimalOp, (u8, i8), (u8, i8)) {
        (self.op, self.operands.0, self.operands.1)
    }
}

/// The largest magnitude a value may have so that it times `factor` fits
/// in 64 bits.
fn bound(factor: i64) -> u64 {
    i64::MAX.unsigned_abs() / factor.unsigned_abs().max(1)
}

/// Whether `v` is within `bound` (so it, scaled, fits in 64 bits).
#[inline(always)]
fn within(v: i128, bound: u64) -> bool {
    let narrow = v as i64;
    (i128::from(narrow) == v) & (narrow.unsigned_abs() <= bound)
}

/// `op` on every pair, or `None` if some value (null slots included) is
/// beyond its bound. The operands, scaled, fit in 64 bits, so no result
/// overflows 128 bits (|a * b| <= 2^126). One pass per operation without
/// branches: results are computed while the bounds are checked and thrown
/// away if one failed.
fn fused(
    op: DecimalOp,
    (fa, fb): (i64, i64),
    l: impl Iterator<Item = i128>,
    r: impl Iterator<Item = i128>,
) -> Option<Vec<i128>> {
    let wide = |v: i128, factor: i64| i128::from((v as i64).wrapping_mul(factor));
    match op {
        DecimalOp::Mul => each(l, r, (fa, fb), |x, y| {
            i128::from(x as i64).wrapping_mul(i128::from(y as i64))
        }),
        DecimalOp::Add => each(l, r, (fa, fb), |x, y| wide(x, fa) + wide(y, fb)),
        DecimalOp::Sub => each(l, r, (fa, fb), |x, y| wide(x, fa) - wide(y, fb)),
    }
}

/// `f` on every pair, if every value is within its factor's bound.
#[inline(always)]
fn each(
    l: impl Iterator<Item = i128>,
    r: impl Iterator<Item = i128>,
    (fa, fb): (i64, i64),
    f: impl Fn(i128, i128) -> i128,
) -> Option<Vec<i128>> {
    let (bl, br) = (bound(fa), bound(fb));
    // Collected, not written into a zeroed vector: zeroing the output
    // first was 2-3 % of TPC-H q1's CPU (`perf`, the allocator's memset).
    let mut ok = true;
    let out: Vec<i128> = l
        .zip(r)
        .map(|(x, y)| {
            ok &= within(x, bl) & within(y, br);
            f(x, y)
        })
        .collect();
    ok.then_some(out)
}

/// The fast path over arrays and non-null scalars (`None`: arrow's kernel
/// is needed, for values beyond 64 bits or a null scalar).
fn fast(
    op: DecimalOp,
    factors: (i64, i64),
    l: &ColumnarValue,
    r: &ColumnarValue,
) -> Option<Decimal128Array> {
    use ColumnarValue::{Array as A, Scalar as S};
    use ScalarValue::Decimal128 as D;
    fn values(a: &ArrayRef) -> Option<&Decimal128Array> {
        a.as_primitive_opt::<Decimal128Type>()
    }
    let (values, nulls) = match (l, r) {
        (A(a), A(b)) => {
            let (a, b) = (values(a)?, values(b)?);
            let nulls = NullBuffer::union(a.nulls(), b.nulls());
            let (xs, ys) = (a.values().iter().copied(), b.values().iter().copied());
            (fused(op, factors, xs, ys)?, nulls)
        }
        (A(a), S(D(Some(y), _, _))) => {
            let a = values(a)?;
            let ys = std::iter::repeat_n(*y, a.len());
            (
                fused(op, factors, a.values().iter().copied(), ys)?,
                a.nulls().cloned(),
            )
        }
        (S(D(Some(x), _, _)), A(b)) => {
            let b = values(b)?;
            let xs = std::iter::repeat_n(*x, b.len());
            (
                fused(op, factors, xs, b.values().iter().copied())?,
                b.nulls().cloned(),
            )
        }
        _ => return None,
    };
    Some(Decimal128Array::new(ScalarBuffer::from(values), nulls))
}

impl ScalarUDFImpl for DecimalArith {
    fn name(&self) -> &str {
        match self.op {
            DecimalOp::Mul => "decimal_mul",
            DecimalOp::Add => "decimal_add",
            DecimalOp::Sub => "decimal_sub",
        }
    }

    /// The binary expression's own name, so that columns keep their names.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        let [l, r] = args else {
            return internal_err!("{} takes two arguments", self.name());
        };
        let expr = BinaryExpr::new(Box::new(l.clone()), self.op.operator(), Box::new(r.clone()));
        Ok(Expr::BinaryExpr(expr).schema_name().to_string())
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.shape.output.clone())
    }

    /// Null where an operand is, as the binary expression.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        let output = self.shape.output.clone();
        Ok(Arc::new(Field::new(self.name(), output, nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [l, r] = args.args.as_slice() else {
            return internal_err!("{} takes two arguments", self.name());
        };
        let Shape { output, factors } = &self.shape;
        let DataType::Decimal128(precision, scale) = *output else {
            return internal_err!("{} returns {output}", self.name());
        };
        let Some(array) = fast(self.op, *factors, l, r) else {
            return self.op.arrow(l, r);
        };
        let array: ArrayRef = Arc::new(array.with_precision_and_scale(precision, scale)?);
        Ok(ColumnarValue::Array(array))
    }
}

/// Replaces `Decimal128` arithmetic in `plan`'s nodes (subqueries included)
/// with [`DecimalArith`] (see the module documentation). Extension nodes
/// and scans keep their own expressions.
pub fn unchecked_decimal_arith(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Extension(_) | LogicalPlan::TableScan(_)) {
            return Ok(Transformed::no(node));
        }
        let schema = merge_schema(&node.inputs());
        node.map_expressions(|expr| expr.transform_up(|e| rewrite(e, &schema)))
    })
    .map(|t| t.data)
}

fn rewrite(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &expr else {
        return Ok(Transformed::no(expr));
    };
    let Some(decimal_op) = DecimalOp::of(*op) else {
        return Ok(Transformed::no(expr));
    };
    let decimal = |e: &Expr| match e.get_type(schema) {
        Ok(DataType::Decimal128(p, s)) => Some((p, s)),
        _ => None,
    };
    let (Some(l), Some(r)) = (decimal(left), decimal(right)) else {
        return Ok(Transformed::no(expr));
    };
    let Some(arith) = DecimalArith::new(decimal_op, l, r) else {
        return Ok(Transformed::no(expr));
    };
    // Only where DataFusion's type for the expression is arrow's.
    if expr.get_type(schema).ok().as_ref() != Some(&arith.shape.output) {
        return Ok(Transformed::no(expr));
    }
    let udf = ScalarUDF::new_from_impl(arith);
    let args = vec![left.as_ref().clone(), right.as_ref().clone()];
    Ok(Transformed::yes(Expr::ScalarFunction(
        ScalarFunction::new_udf(Arc::new(udf), args),
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use datafusion::arrow::array::Decimal128Array;
    use datafusion::common::config::ConfigOptions;

    use super::*;

    fn decimals(values: &[Option<i128>], p: u8, s: i8) -> ColumnarValue {
        let array = Decimal128Array::from(values.to_vec())
            .with_precision_and_scale(p, s)
            .unwrap();
        ColumnarValue::Array(Arc::new(array))
    }

    fn invoke(op: DecimalOp, l: ColumnarValue, r: ColumnarValue) -> Result<ArrayRef> {
        let field = |v: &ColumnarValue| Arc::new(Field::new("x", v.data_type(), true));
        let (lt, rt) = (l.data_type(), r.data_type());
        let (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) = (lt, rt) else {
            panic!("decimal operands expected");
        };
        let udf = DecimalArith::new(op, (p1, s1), (p2, s2)).unwrap();
        let output = udf.shape.output.clone();
        let rows = match (&l, &r) {
            (ColumnarValue::Array(a), _) | (_, ColumnarValue::Array(a)) => a.len(),
            _ => 1,
        };
        let args = ScalarFunctionArgs {
            arg_fields: vec![field(&l), field(&r)],
            args: vec![l, r],
            number_rows: rows,
            return_field: Arc::new(Field::new("out", output, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        udf.invoke_with_args(args)?.into_array(rows)
    }

    fn arrow(op: DecimalOp, l: ColumnarValue, r: ColumnarValue, rows: usize) -> Result<ArrayRef> {
        op.arrow(&l, &r)?.into_array(rows)
    }

    #[test]
    fn every_operation_equals_arrows_kernel_on_arrays_scalars_and_nulls() {
        let a = [
            Some(1_050_000),
            None,
            Some(-3_25),
            Some(0),
            Some(9_999_999_999),
        ];
        let b = [Some(93), Some(7), None, Some(-100), Some(1_00)];
        let scalar = |v: i128, p, s| ColumnarValue::Scalar(ScalarValue::Decimal128(Some(v), p, s));
        for op in [DecimalOp::Mul, DecimalOp::Add, DecimalOp::Sub] {
            let cases = [
                (decimals(&a, 15, 2), decimals(&b, 15, 2)),
                (decimals(&a, 15, 2), scalar(1_00, 20, 2)),
                (scalar(1_00, 20, 2), decimals(&b, 15, 2)),
                (scalar(-7, 3, 2), decimals(&a, 15, 2)),
                // TPC-H's `1 - l_discount`: the literal has scale 0.
                (scalar(1, 20, 0), decimals(&b, 15, 2)),
                (decimals(&a, 15, 2), decimals(&b, 12, 4)),
                (decimals(&b, 12, 4), scalar(-3, 10, 1)),
            ];
            for (l, r) in cases {
                let fast = invoke(op, l.clone(), r.clone()).unwrap();
                let plain = arrow(op, l, r, a.len()).unwrap();
                assert_eq!(fast.data_type(), plain.data_type(), "{op:?}");
                assert_eq!(fast.as_ref(), plain.as_ref(), "{op:?}");
            }
        }
    }

    #[test]
    fn values_beyond_64_bits_take_arrows_kernel_with_its_overflow_error() {
        let big = 10_i128.pow(30);
        let l = decimals(&[Some(big), Some(2)], 38, 0);
        let r = decimals(&[Some(3), Some(4)], 38, 0);
        let fast = invoke(DecimalOp::Mul, l.clone(), r.clone()).unwrap();
        assert_eq!(
            fast.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>()
                .values(),
            &[3 * big, 8]
        );
        assert_eq!(
            fast.as_ref(),
            arrow(DecimalOp::Mul, l.clone(), r, 2).unwrap().as_ref()
        );

        let err = invoke(DecimalOp::Mul, l.clone(), l)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Overflow"), "{err}");

        // Values that fit in 64 bits only before arrow scales them up.
        let near = i128::from(i64::MAX / 10);
        let l = decimals(&[Some(near), Some(-near)], 30, 0);
        let r = decimals(&[Some(1), Some(2)], 30, 2);
        for op in [DecimalOp::Add, DecimalOp::Sub] {
            let fast = invoke(op, l.clone(), r.clone()).unwrap();
            assert_eq!(
                fast.as_ref(),
                arrow(op, l.clone(), r.clone(), 2).unwrap().as_ref()
            );
        }
    }

    #[test]
    fn shapes_are_arrows_result_types_and_scale_factors() {
        let shape = |op: DecimalOp, l, r| op.shape(l, r).map(|s| (s.output, s.factors));
        assert_eq!(
            shape(DecimalOp::Sub, (20, 0), (15, 2)),
            Some((DataType::Decimal128(23, 2), (100, 1)))
        );
        assert_eq!(
            shape(DecimalOp::Add, (15, 2), (15, 2)),
            Some((DataType::Decimal128(16, 2), (1, 1)))
        );
        assert_eq!(
            shape(DecimalOp::Mul, (37, 4), (21, 2)),
            Some((DataType::Decimal128(38, 6), (1, 1)))
        );
        // Negative scales are left to arrow.
        assert_eq!(shape(DecimalOp::Add, (38, -100), (38, 120)), None);
        assert_eq!(shape(DecimalOp::Mul, (10, -2), (10, 2)), None);
        // Scales 10^19 apart: arrow rescales in 128 bits; left to it.
        assert_eq!(shape(DecimalOp::Add, (38, 0), (38, 19)), None);
        assert_eq!(shape(DecimalOp::Mul, (38, 20), (38, 20)), None);
    }

    async fn lines(sharing: bool) -> datafusion::prelude::SessionContext {
        use datafusion::execution::SessionStateBuilder;
        let mut builder = SessionStateBuilder::new().with_default_features();
        if sharing {
            builder = builder.with_query_planner(Arc::new(crate::shared_plan::SharingQueryPlanner));
        }
        let ctx = datafusion::prelude::SessionContext::new_with_state(builder.build());
        let create = "CREATE TABLE l (f VARCHAR, price DECIMAL(15, 2), disc DECIMAL(15, 2), \
             tax DECIMAL(15, 2)) AS VALUES \
             ('A', 1000.50, 0.05, 0.08), ('A', 20.00, 0.10, NULL), ('B', 99999999.99, 0.00, 0.02), \
             ('B', NULL, 0.03, 0.01), ('C', 7.25, 1.00, 0.00)";
        ctx.sql(create).await.unwrap().collect().await.unwrap();
        ctx
    }

    const Q1: &str =
        "SELECT f, sum(price * (1 - disc)) AS s1, sum(price * (1 - disc) * (1 + tax)), \
        avg(price - disc), min(price + tax) FROM l GROUP BY f ORDER BY f";

    #[tokio::test]
    async fn a_query_answers_as_with_datafusion_alone_under_the_same_column_names() {
        let (fast, plain) = (lines(true).await, lines(false).await);
        let got = crate::test_sql::rows(&fast, Q1).await;
        assert_eq!(got, crate::test_sql::rows(&plain, Q1).await);
        let want = [
            "+---+---------------+-----------------------------------------------------+-----------------------+----------------------+",
            "| f | s1            | sum(l.price * Int64(1) - l.disc * Int64(1) + l.tax) | avg(l.price - l.disc) | min(l.price + l.tax) |",
            "+---+---------------+-----------------------------------------------------+-----------------------+----------------------+",
            "| A | 968.4750      | 1026.513000                                         | 510.175000            | 1000.58              |",
            "| B | 99999999.9900 | 101999999.989800                                    | 99999999.990000       | 100000000.01         |",
            "| C | 0.0000        | 0.000000                                            | 6.250000              | 7.25                 |",
            "+---+---------------+-----------------------------------------------------+-----------------------+----------------------+",
        ];
        assert_eq!(got, want.join("\n"));

        let explained = crate::test_sql::rows(&fast, &format!("EXPLAIN {Q1}")).await;
        for name in ["decimal_mul", "decimal_sub", "decimal_add"] {
            assert!(explained.contains(name), "{name} missing from\n{explained}");
        }
    }

    #[tokio::test]
    async fn operands_that_cannot_be_null_give_a_column_that_cannot_either() {
        let (fast, plain) = (lines(true).await, lines(false).await);
        let sql = "WITH n AS (SELECT coalesce(price, 0) AS p, coalesce(disc, 0) AS d FROM l) \
            SELECT sum(p * (1 - d)), sum(p * (1 - d) * 2) FROM n";
        let got = crate::test_sql::rows(&fast, sql).await;
        assert_eq!(got, crate::test_sql::rows(&plain, sql).await);
        assert!(got.contains("| 100000968.4650 "), "{got}");
    }
}
