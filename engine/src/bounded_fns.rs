//! Functions whose output size an argument chooses, held to one statement's
//! memory share.
//!
//! DataFusion charges its memory pool for what operators buffer (sorts,
//! aggregations, joins), not for what a scalar function returns. A few
//! functions return values far larger than their input when asked:
//! `generate_series(1, 1e13)` builds a list of 10^13 integers,
//! `repeat('a', 2e9)` a 2 GB string per row, `replace(s, '', t)` a copy of
//! `t` between every two characters of `s`. One such call used to take the
//! whole server down (the allocation aborts the process or the kernel's
//! OOM killer ends it). Each of these functions is registered here in a
//! wrapper that works out, from its arguments and before calling it, an
//! upper bound of the bytes it would return for the batch, and refuses the
//! call (`ResourcesExhausted`, gRPC RESOURCE_EXHAUSTED) when the bound is
//! more than one statement's memory share (`query_memory`). The bound is
//! computed over whole argument arrays (a length kernel and one pass over
//! integers), never per row through `ScalarValue`.
//!
//! Functions whose output is at most a multiple of their inputs (`concat`,
//! `||`, `make_array`, ...) are held to the same share by their inputs, in
//! `bounded_inputs.rs`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::compute::{cast, cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{
    DataType, Int64Type, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarUDF};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::bounded_inputs::Guarded;
use crate::limits::human_bytes;

/// How a function's output grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Growth {
    /// `repeat(s, n)`: `len(s) * n`.
    Repeat,
    /// `lpad` / `rpad(s, n [, fill])`: `len(s) + n * len(fill)`.
    Pad,
    /// `replace(s, from, to)`: `to` for every `from` in `s` (between every
    /// two characters when `from` is empty).
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: a pattern may
    /// match the empty string at every position, and a replacement may
    /// repeat the match.
    RegexpReplace,
    /// `array_repeat(element, n)`: `n` elements.
    ArrayRepeat,
    /// `array_resize(array, n [, value])`: `n` elements.
    ArrayResize,
    /// `range` / `generate_series(start, stop [, step])`: one element per step.
    Series,
}

/// The functions wrapped, by DataFusion's name.
const BOUNDED: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// Replaces the functions in [`BOUNDED`] of `state` with wrappers that
/// refuse a call whose output could pass `limit` bytes (and, like every
/// function, one whose arguments do: `bounded_inputs.rs`).
pub(crate) fn bound_growing_functions(state: &mut SessionState, limit: usize) -> Result<()> {
    for (name, growth) in BOUNDED {
        let Some(inner) = state.scalar_functions().get(*name).cloned() else {
            continue;
        };
        let bounded = Guarded::new(inner, limit, Some(*growth));
        state.register_udf(Arc::new(ScalarUDF::new_from_impl(bounded)))?;
    }
    Ok(())
}

/// Refuses a call of `name` whose output, by `growth`, could pass `limit`
/// bytes.
pub(crate) fn check_output(
    name: &str,
    growth: Growth,
    args: &[ColumnarValue],
    rows: usize,
    limit: usize,
) -> Result<()> {
    let bound = output_bound(growth, args, rows)?;
    if bound > limit as u64 {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{name} would return up to {} for {rows} row(s), more than one statement may hold ({}, \
             the query_memory setting)",
            human_bytes(usize::try_from(bound).unwrap_or(usize::MAX)),
            human_bytes(limit),
        )));
    }
    Ok(())
}

/// An upper bound of the bytes `growth`'s function returns for `args`
/// over `rows` rows.
fn output_bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let arg = |i: usize| args.get(i);
    let total = match growth {
        Growth::Repeat => {
            let (s, n) = (lengths(arg(0))?, ints(arg(1))?);
            sum(rows, |r| s.get(r).saturating_mul(n.get(r)))
        }
        Growth::Pad => {
            let (s, n) = (lengths(arg(0))?, ints(arg(1))?);
            let fill = match arg(2) {
                Some(f) => lengths(Some(f))?,
                None => PerRow::Same(1),
            };
            sum(rows, |r| {
                let width = fill.get(r).max(1);
                s.get(r).saturating_add(n.get(r).saturating_mul(width))
            })
        }
        Growth::Replace => {
            let (s, from, to) = (lengths(arg(0))?, lengths(arg(1))?, lengths(arg(2))?);
            sum(rows, |r| {
                let s = s.get(r);
                let places = match from.get(r) {
                    0 => s.saturating_add(1),
                    f => s / f,
                };
                s.saturating_add(places.saturating_mul(to.get(r)))
            })
        }
        Growth::RegexpReplace => {
            let (s, repl) = (lengths(arg(0))?, lengths(arg(2))?);
            // At most len+1 matches, each replaced by the replacement, whose
            // group references together repeat at most the whole input once
            // per reference (a reference is at least one byte of it).
            sum(rows, |r| {
                let s = s.get(r);
                let per_match = repl.get(r);
                s.saturating_add(s.saturating_add(1).saturating_mul(per_match))
                    .saturating_add(per_match.saturating_mul(s))
            })
        }
        Growth::ArrayRepeat => {
            let (element, n) = (average_bytes(arg(0), rows), ints(arg(1))?);
            sum(rows, |r| n.get(r).saturating_mul(element))
        }
        Growth::ArrayResize => {
            let element = average_bytes(arg(2), rows).max(16);
            let n = ints(arg(1))?;
            sum(rows, |r| n.get(r).saturating_mul(element))
        }
        Growth::Series => series_bound(args, rows)?,
    };
    Ok(total)
}

/// Bytes of `range` / `generate_series` output: 8 per element, elements
/// counted from start, stop and step (integers, or dates and timestamps
/// with an interval step counted at its shortest: a month as 28 days).
fn series_bound(args: &[ColumnarValue], rows: usize) -> Result<u64> {
    const DAY_NS: i128 = 86_400_000_000_000;
    let Some(first) = args.first() else {
        return Ok(0);
    };
    let (start, stop, step, unit_ns) = match (first.data_type(), args) {
        (DataType::Date32 | DataType::Date64 | DataType::Timestamp(..), [start, stop, step]) => {
            let unit_ns = match first.data_type() {
                DataType::Date32 => DAY_NS,
                DataType::Date64 => 1_000_000,
                DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
                DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
                DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
                _ => 1,
            };
            (
                ints(Some(start))?,
                ints(Some(stop))?,
                interval_ns(step)?,
                unit_ns,
            )
        }
        (_, [stop]) => (PerRow::Same(0), ints(Some(stop))?, PerRow::Same(1), 1),
        (_, [start, stop]) => (ints(Some(start))?, ints(Some(stop))?, PerRow::Same(1), 1),
        (_, [start, stop, step]) => (ints(Some(start))?, ints(Some(stop))?, ints(Some(step))?, 1),
        _ => return Ok(0),
    };
    Ok(sum(rows, |r| {
        let span = (i128::from(stop.signed(r)) - i128::from(start.signed(r))).abs() * unit_ns;
        let step = i128::from(step.signed(r)).abs().max(1);
        let elements = u64::try_from(span / step + 1).unwrap_or(u64::MAX);
        elements.saturating_mul(8)
    }))
}

/// Per-row nanoseconds of an interval argument, a month counted as 28 days
/// (the shortest), so that the element count is an upper bound.
fn interval_ns(arg: &ColumnarValue) -> Result<PerRow> {
    const DAY_NS: i64 = 86_400_000_000_000;
    let ns = |months: i32, days: i32, nanos: i64| -> Option<i64> {
        let m = i64::from(months).saturating_mul(28 * DAY_NS);
        let d = i64::from(days).saturating_mul(DAY_NS);
        Some(m.saturating_add(d).saturating_add(nanos))
    };
    Ok(match arg {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(v)) => PerRow::Same(
            v.and_then(|v| ns(v.months, v.days, v.nanoseconds))
                .unwrap_or(0),
        ),
        ColumnarValue::Array(a) if matches!(a.data_type(), DataType::Interval(_)) => {
            let mdn = cast(a, &DataType::Interval(IntervalUnit::MonthDayNano))?;
            let values = mdn.as_primitive::<IntervalMonthDayNanoType>();
            PerRow::Each(
                values
                    .iter()
                    .map(|v| v.and_then(|v| ns(v.months, v.days, v.nanoseconds)))
                    .collect(),
            )
        }
        // Anything else: count one element per nanosecond (the most).
        _ => PerRow::Same(1),
    })
}

/// One argument's values for each row: a scalar holds for every row.
enum PerRow {
    Same(i64),
    Each(Int64Array),
}

impl PerRow {
    /// The row's value; NULL and negative values count as 0.
    fn get(&self, row: usize) -> u64 {
        u64::try_from(self.signed(row)).unwrap_or(0)
    }

    /// The row's value as given (NULL as 0).
    fn signed(&self, row: usize) -> i64 {
        match self {
            PerRow::Same(v) => *v,
            PerRow::Each(a) if row < a.len() && a.is_valid(row) => a.value(row),
            PerRow::Each(_) => 0,
        }
    }
}

/// Sums `f` over `rows` rows, saturating.
fn sum(rows: usize, f: impl Fn(usize) -> u64) -> u64 {
    (0..rows).fold(0u64, |acc, r| acc.saturating_add(f(r)))
}

/// An integer (or date, or timestamp) argument as Int64 per row; a missing
/// argument is 0.
fn ints(arg: Option<&ColumnarValue>) -> Result<PerRow> {
    per_row(arg, as_int64)
}

/// A string argument's byte length per row; a missing argument is 0.
fn lengths(arg: Option<&ColumnarValue>) -> Result<PerRow> {
    per_row(arg, |array| match array.data_type() {
        DataType::Null => Ok(Int64Array::from(vec![0; array.len()])),
        _ => as_int64(&length(array)?),
    })
}

/// `values` of an argument, worked out on the argument's array (one row for
/// a scalar, which then holds for every row).
fn per_row(
    arg: Option<&ColumnarValue>,
    values: impl Fn(&ArrayRef) -> Result<Int64Array>,
) -> Result<PerRow> {
    Ok(match arg {
        None => PerRow::Same(0),
        Some(ColumnarValue::Scalar(s)) => {
            let v = values(&s.to_array_of_size(1)?)?;
            PerRow::Same(if v.is_valid(0) { v.value(0) } else { 0 })
        }
        Some(ColumnarValue::Array(a)) => PerRow::Each(values(a)?),
    })
}

/// Casts to Int64 (dates to days or milliseconds, timestamps to their
/// unit), values that do not fit becoming NULL.
fn as_int64(array: &ArrayRef) -> Result<Int64Array> {
    let options = CastOptions {
        safe: true,
        ..Default::default()
    };
    let array = cast_with_options(array, &DataType::Int64, &options)?;
    Ok(array.as_primitive::<Int64Type>().clone())
}

/// The average bytes one row of an argument takes (at least 8); a missing
/// argument is 0.
fn average_bytes(arg: Option<&ColumnarValue>, rows: usize) -> u64 {
    let bytes = match arg {
        None => return 0,
        Some(ColumnarValue::Scalar(s)) => s.size(),
        Some(ColumnarValue::Array(a)) => a.get_array_memory_size() / rows.max(1),
    };
    (bytes as u64).max(8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn text(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())))
    }

    fn int(n: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))
    }

    #[test]
    fn bounds_count_every_row_and_ignore_nulls_and_negatives() {
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("ab"), None, Some("abcd")]));
        let counts: ArrayRef = Arc::new(Int64Array::from(vec![Some(10), Some(10), Some(-5)]));
        let args = [ColumnarValue::Array(names), ColumnarValue::Array(counts)];
        // 2 * 10 + 0 (NULL) + 0 (negative count).
        assert_eq!(output_bound(Growth::Repeat, &args, 3).unwrap(), 20);
        // A scalar holds for every row.
        assert_eq!(
            output_bound(Growth::Repeat, &[text("abc"), int(4)], 5).unwrap(),
            60
        );
        // lpad('a', 5, 'xy'): the input plus five fills.
        assert_eq!(
            output_bound(Growth::Pad, &[text("a"), int(5), text("xy")], 1).unwrap(),
            11
        );
        // replace with an empty pattern: the replacement at 4 places.
        assert_eq!(
            output_bound(Growth::Replace, &[text("abc"), text(""), text("zz")], 1).unwrap(),
            3 + 4 * 2
        );
        assert_eq!(
            output_bound(Growth::Replace, &[text("a-b-c"), text("-"), text("+")], 1).unwrap(),
            5 + 5
        );
        // Series: generate_series(1, 10) is at most 10 elements of 8 bytes,
        // range(5) 6 (an upper bound), a zero step is left to DataFusion.
        assert_eq!(
            output_bound(Growth::Series, &[int(1), int(10)], 1).unwrap(),
            80
        );
        assert_eq!(output_bound(Growth::Series, &[int(5)], 1).unwrap(), 48);
        assert_eq!(
            output_bound(Growth::Series, &[int(0), int(100), int(10)], 1).unwrap(),
            88
        );
        // Huge values saturate instead of overflowing.
        assert_eq!(
            output_bound(Growth::Series, &[int(i64::MIN), int(i64::MAX)], 1000).unwrap(),
            u64::MAX
        );
        // A month of daily dates: a month counts as at least 28 days.
        let day = ColumnarValue::Scalar(ScalarValue::new_interval_mdn(0, 1, 0));
        let dates = [
            ColumnarValue::Scalar(ScalarValue::Date32(Some(0))),
            ColumnarValue::Scalar(ScalarValue::Date32(Some(30))),
            day,
        ];
        assert_eq!(output_bound(Growth::Series, &dates, 1).unwrap(), 31 * 8);
    }
}

/// Refuses a plan holding a constant (a literal, or a call folded while
/// planning) that copied to every row of one batch would pass `limit`
/// bytes. DataFusion turns a constant into a column of `batch_size` copies
/// wherever a kernel needs an array (a projection's output, an aggregate's
/// argument): a 900 KB literal cast to `LargeUtf8` and selected over a table
/// made batches of 8,192 x 900 KB that no memory pool counted, and a folded
/// 100 MB `repeat` under `string_agg` overflowed Arrow's string offsets (a
/// panic). A node whose input holds at most n rows (`SELECT f(...)` with no
/// `FROM`: one) counts n copies. Runs last in every optimizer pass, after
/// constant folding.
#[derive(Debug)]
pub(crate) struct BoundedConstants {
    /// One statement's memory share (`query_memory`).
    pub(crate) limit: usize,
}

impl OptimizerRule for BoundedConstants {
    fn name(&self) -> &str {
        "veil_bounded_constants"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let batch = config.options().execution.batch_size.get().max(1);
        plan.apply_with_subqueries(|node| {
            // The rows one batch of the node's input can hold: fewer than a
            // batch when the input is known to be small (`SELECT f(...)`
            // with no FROM reads one row).
            let rows = node
                .inputs()
                .iter()
                .map(|input| input.max_rows().unwrap_or(batch))
                .max()
                .unwrap_or(1)
                .clamp(1, batch);
            let most = self.limit / rows;
            node.apply_expressions(|e| {
                e.apply(|e| {
                    if let Expr::Literal(v, _) = e {
                        // A NULL of a fixed-size type is small as a constant
                        // and takes its whole width in every row.
                        let width = crate::sql_guard::fixed_width(&v.data_type());
                        let size = v.size().max(usize::try_from(width).unwrap_or(usize::MAX));
                        if size > most {
                            return Err(DataFusionError::ResourcesExhausted(format!(
                                "a constant of {} copied to the {rows} rows of a batch would take \
                                 {}, more than one statement may hold ({}, the query_memory \
                                 setting); use a smaller constant or a smaller \
                                 datafusion.execution.batch_size",
                                human_bytes(size),
                                human_bytes(size.saturating_mul(rows)),
                                human_bytes(self.limit),
                            )));
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        Ok(Transformed::no(plan))
    }
}
