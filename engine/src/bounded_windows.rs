//! Window functions whose values are held to one statement's memory share.
//!
//! A window function returns one value per row, and a value can hold its
//! whole frame: `array_agg(x) OVER (ORDER BY x)` over a million rows builds
//! rows of up to a million elements, 8,192 of them per batch (a 1.9 GB
//! allocation failed and aborted the server), and `max(s) OVER ()` or
//! `first_value(s) OVER (...)` copies one value to every row of its
//! partition. DataFusion charges its memory pool for the rows a window
//! operator buffers, not for the values it computes.
//!
//! [`bound_window`] wraps each window function whose values vary in size
//! (strings, binaries, lists, structs, maps; counts and sums are left
//! alone) so that every value it produces is charged to a budget shared by
//! all the partitions of that function in the statement: a value is held
//! until the same partition has produced a batch's worth of values after
//! it (or until the partition ends), and a value that stands for the whole
//! partition is charged once per row it is copied to. Past the statement's
//! `query_memory` the statement fails with `ResourcesExhausted` (gRPC
//! RESOURCE_EXHAUSTED). A `FILTER` on such an aggregate over a whole
//! partition is refused: the rows it is copied to are not the rows it reads.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::function::{
    AccumulatorArgs, ExpressionArgs, PartitionEvaluatorArgs, StateFieldsArgs, WindowUDFFieldArgs,
};
use datafusion::logical_expr::window_state::WindowAggState;
use datafusion::logical_expr::WindowFunctionDefinition;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Expr, PartitionEvaluator,
    ReversedUDAF, ReversedUDWF, Signature, WindowFrameBound, WindowFrameUnits, WindowUDF,
    WindowUDFImpl,
};
use datafusion::physical_expr::PhysicalExpr;

use crate::limits::human_bytes;

/// Wraps `wf` so that its values are charged to a budget of `limit` bytes,
/// a value held for `batch` values of its partition. Returns `None` when
/// `wf` is wrapped already.
pub(crate) fn bound_window(wf: &WindowFunction, limit: usize, batch: usize) -> Option<Expr> {
    let params = &wf.params;
    let budget = Arc::new(Budget {
        limit,
        batch: batch.max(1),
        in_use: AtomicUsize::new(0),
        whole_partition: whole_partition(params),
        filtered: params.filter.is_some(),
    });
    let fun = match &wf.fun {
        WindowFunctionDefinition::AggregateUDF(f) => {
            if is_bounded_aggregate(f) {
                return None;
            }
            WindowFunctionDefinition::AggregateUDF(Arc::new(AggregateUDF::new_from_impl(
                BoundedAggregate {
                    inner: Arc::clone(f),
                    budget,
                },
            )))
        }
        WindowFunctionDefinition::WindowUDF(f) => {
            let any: &dyn std::any::Any = f.inner().as_ref();
            if any.is::<BoundedWindowFn>() {
                return None;
            }
            WindowFunctionDefinition::WindowUDF(Arc::new(WindowUDF::new_from_impl(
                BoundedWindowFn {
                    inner: Arc::clone(f),
                    budget,
                },
            )))
        }
    };
    Some(Expr::WindowFunction(Box::new(WindowFunction {
        fun,
        params: params.clone(),
    })))
}

fn is_bounded_aggregate(f: &AggregateUDF) -> bool {
    let any: &dyn std::any::Any = f.inner().as_ref();
    any.is::<BoundedAggregate>()
}

/// Whether every row of a partition gets the same value (DataFusion's
/// `is_window_constant_in_partition`): the frame is the whole partition.
fn whole_partition(params: &WindowFunctionParams) -> bool {
    let frame = &params.window_frame;
    let whole = |bound: &WindowFrameBound| match bound {
        WindowFrameBound::CurrentRow => {
            frame.units == WindowFrameUnits::Range && params.order_by.is_empty()
        }
        other => other.is_unbounded(),
    };
    whole(&frame.start_bound) && whole(&frame.end_bound)
}

/// Whether values of `t` vary in size.
fn variable_width(t: &DataType) -> bool {
    !(t.is_primitive() || matches!(t, DataType::Boolean | DataType::Null))
}

/// The bytes one window function's values hold across its partitions.
#[derive(Debug)]
struct Budget {
    /// One statement's memory share (`query_memory`).
    limit: usize,
    /// Values of one partition held at once: a batch's worth.
    batch: usize,
    /// Bytes charged and not yet released.
    in_use: AtomicUsize,
    /// Whether a value stands for every row of its partition.
    whole_partition: bool,
    /// Whether the function has a FILTER clause.
    filtered: bool,
}

/// The values one partition has charged to a [`Budget`], released when the
/// partition ends.
#[derive(Debug)]
struct Charges {
    budget: Arc<Budget>,
    name: String,
    held: VecDeque<usize>,
    total: usize,
}

impl Charges {
    fn new(budget: &Arc<Budget>, name: &str) -> Self {
        Self {
            budget: Arc::clone(budget),
            name: name.to_string(),
            held: VecDeque::new(),
            total: 0,
        }
    }

    /// Charges a value of `bytes` copied to `copies` rows, releasing the
    /// partition's values older than a batch.
    fn charge(&mut self, bytes: usize, copies: usize) -> Result<()> {
        let bytes = bytes.saturating_mul(copies.max(1));
        self.held.push_back(bytes);
        self.total = self.total.saturating_add(bytes);
        let mut in_use = self
            .budget
            .in_use
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        while self.held.len() > self.budget.batch {
            let old = self.held.pop_front().unwrap_or(0);
            self.total -= old;
            in_use = self
                .budget
                .in_use
                .fetch_sub(old, Ordering::Relaxed)
                .saturating_sub(old);
        }
        if in_use > self.budget.limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the values of {} over a window would take {}, more than one statement may hold \
                 ({}, the query_memory setting); a window of fewer rows, or fewer rows per \
                 partition, takes less",
                self.name,
                human_bytes(in_use),
                human_bytes(self.budget.limit),
            )));
        }
        Ok(())
    }
}

impl Drop for Charges {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.total, Ordering::Relaxed);
    }
}

/// A window function (an aggregate, `F = AggregateUDF`, or `first_value`,
/// `lag`, ..., `F = WindowUDF`) whose values are charged to `budget`.
#[derive(Debug)]
struct Charged<F> {
    inner: Arc<F>,
    budget: Arc<Budget>,
}

impl<F: PartialEq> PartialEq for Charged<F> {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && Arc::ptr_eq(&self.budget, &other.budget)
    }
}

impl<F: Eq> Eq for Charged<F> {}

impl<F: Hash> Hash for Charged<F> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

/// An aggregate used as a window function, its values charged.
type BoundedAggregate = Charged<AggregateUDF>;

/// A window function (`first_value`, `lag`, ...) whose values are charged.
type BoundedWindowFn = Charged<WindowUDF>;

impl BoundedAggregate {
    fn wrap(&self, inner: Arc<AggregateUDF>) -> Arc<AggregateUDF> {
        Arc::new(AggregateUDF::new_from_impl(BoundedAggregate {
            inner,
            budget: Arc::clone(&self.budget),
        }))
    }

    /// `accumulator` charged, when its values vary in size.
    fn charged(
        &self,
        args: &AccumulatorArgs,
        accumulator: Box<dyn Accumulator>,
    ) -> Result<Box<dyn Accumulator>> {
        if !variable_width(args.return_field.data_type()) {
            return Ok(accumulator);
        }
        if self.budget.whole_partition && self.budget.filtered {
            return Err(DataFusionError::NotImplemented(format!(
                "{} with FILTER over a whole partition: its value is copied to rows it does \
                 not read; aggregate in a subquery and join, or give the window an ORDER BY",
                self.name()
            )));
        }
        Ok(Box::new(ChargedAccumulator {
            inner: accumulator,
            charges: Charges::new(&self.budget, self.name()),
            rows: 0,
        }))
    }
}

impl AggregateUDFImpl for BoundedAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.inner().window_function_schema_name(params)
    }

    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.inner().window_function_display_name(params)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let accumulator = self.inner.accumulator(acc_args.clone())?;
        self.charged(&acc_args, accumulator)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let accumulator = self.inner.create_sliding_accumulator(args.clone())?;
        self.charged(&args, accumulator)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = Arc::clone(self.inner.inner()).with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| {
            Arc::new(BoundedAggregate {
                inner: Arc::new(AggregateUDF::new_from_shared_impl(inner)),
                budget: Arc::clone(&self.budget),
            }) as Arc<dyn AggregateUDFImpl>
        }))
    }

    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.reverse_udf() {
            ReversedUDAF::Reversed(f) => ReversedUDAF::Reversed(self.wrap(f)),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner.is_descending()
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// An accumulator whose every value is charged: once per row it is
/// evaluated for, or, over a whole partition, once per row read.
struct ChargedAccumulator {
    inner: Box<dyn Accumulator>,
    charges: Charges,
    rows: usize,
}

impl fmt::Debug for ChargedAccumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Accumulator for ChargedAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.rows = self
            .rows
            .saturating_add(values.first().map_or(0, |v| v.len()));
        self.inner.update_batch(values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let value = self.inner.evaluate()?;
        let copies = if self.charges.budget.whole_partition {
            self.rows
        } else {
            1
        };
        self.charges.charge(value.size(), copies)?;
        Ok(value)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

impl WindowUDFImpl for BoundedWindowFn {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn expressions(&self, expr_args: ExpressionArgs) -> Vec<Arc<dyn PhysicalExpr>> {
        self.inner.expressions(expr_args)
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let field = self
            .inner
            .field(WindowUDFFieldArgs::new(args.input_fields(), self.name()))?;
        let evaluator = self.inner.partition_evaluator_factory(args)?;
        if !variable_width(field.data_type()) {
            return Ok(evaluator);
        }
        Ok(Box::new(ChargedEvaluator {
            inner: evaluator,
            charges: Charges::new(&self.budget, self.name()),
        }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        self.inner.field(field_args)
    }

    fn sort_options(&self) -> Option<datafusion::arrow::compute::SortOptions> {
        self.inner.sort_options()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn reverse_expr(&self) -> ReversedUDWF {
        match self.inner.reverse_expr() {
            ReversedUDWF::Reversed(f) => {
                ReversedUDWF::Reversed(Arc::new(WindowUDF::new_from_impl(BoundedWindowFn {
                    inner: f,
                    budget: Arc::clone(&self.budget),
                })))
            }
            other => other,
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn limit_effect(
        &self,
        args: &[Arc<dyn PhysicalExpr>],
    ) -> datafusion::logical_expr::LimitEffect {
        self.inner.inner().limit_effect(args)
    }
}

/// A partition evaluator whose values, one per row, are charged.
struct ChargedEvaluator {
    inner: Box<dyn PartitionEvaluator>,
    charges: Charges,
}

impl fmt::Debug for ChargedEvaluator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl PartitionEvaluator for ChargedEvaluator {
    fn memoize(&mut self, state: &mut WindowAggState) -> Result<()> {
        self.inner.memoize(state)
    }

    fn get_range(&self, idx: usize, n_rows: usize) -> Result<Range<usize>> {
        self.inner.get_range(idx, n_rows)
    }

    fn is_causal(&self) -> bool {
        self.inner.is_causal()
    }

    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        self.inner.evaluate_all(values, num_rows)
    }

    fn evaluate(&mut self, values: &[ArrayRef], range: &Range<usize>) -> Result<ScalarValue> {
        let value = self.inner.evaluate(values, range)?;
        self.charges.charge(value.size(), 1)?;
        Ok(value)
    }

    fn evaluate_all_with_rank(
        &self,
        num_rows: usize,
        ranks_in_partition: &[Range<usize>],
    ) -> Result<ArrayRef> {
        self.inner
            .evaluate_all_with_rank(num_rows, ranks_in_partition)
    }

    fn supports_bounded_execution(&self) -> bool {
        self.inner.supports_bounded_execution()
    }

    fn uses_window_frame(&self) -> bool {
        self.inner.uses_window_frame()
    }

    fn include_rank(&self) -> bool {
        self.inner.include_rank()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, WindowFrame};

    fn budget(limit: usize, batch: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            batch,
            in_use: AtomicUsize::new(0),
            whole_partition: false,
            filtered: false,
        })
    }

    #[test]
    fn values_are_held_for_a_batch_and_released_with_their_partition() {
        let b = budget(100, 2);
        let mut first = Charges::new(&b, "array_agg");
        first.charge(30, 1).unwrap();
        first.charge(30, 1).unwrap();
        // The third value releases the first: two values held.
        first.charge(30, 1).unwrap();
        assert_eq!(b.in_use.load(Ordering::Relaxed), 60);
        // Another partition of the same function shares the budget.
        let mut second = Charges::new(&b, "array_agg");
        let e = second.charge(50, 1).unwrap_err().to_string();
        assert!(
            e.contains("the values of array_agg over a window would take 110 B"),
            "{e}"
        );
        drop(second);
        assert_eq!(b.in_use.load(Ordering::Relaxed), 60);
        // A value copied to 20 rows counts 20 times.
        assert!(first.charge(5, 20).is_err());
        drop(first);
        assert_eq!(b.in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn whole_partition_frames_are_those_datafusion_evaluates_once() {
        let params = |order_by: bool, frame: Option<WindowFrame>| WindowFunctionParams {
            args: vec![],
            partition_by: vec![],
            order_by: if order_by {
                vec![col("a").sort(true, false)]
            } else {
                vec![]
            },
            window_frame: frame.unwrap_or_else(|| WindowFrame::new(order_by.then_some(false))),
            filter: None,
            null_treatment: None,
            distinct: false,
        };
        // OVER (), OVER (PARTITION BY ...): the whole partition.
        assert!(whole_partition(&params(false, None)));
        // OVER (ORDER BY a): up to the current row's peers.
        assert!(!whole_partition(&params(true, None)));
        // ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING.
        let all = WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
            WindowFrameBound::Following(ScalarValue::UInt64(None)),
        );
        assert!(whole_partition(&params(true, Some(all))));
        let sliding = WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            WindowFrameBound::Preceding(ScalarValue::UInt64(Some(2))),
            WindowFrameBound::CurrentRow,
        );
        assert!(!whole_partition(&params(true, Some(sliding))));
    }
}
