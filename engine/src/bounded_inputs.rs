//! Every function call, and both sides of every `||`, held to one
//! statement's memory share.
//!
//! `bounded_fns.rs` bounds the few functions whose output size an argument
//! chooses. Most other functions return at most a small multiple of what
//! they are given, but `concat`, `||`, `make_array`, `to_hex`, ... return
//! more than any one argument, and a statement can feed one call's result
//! into the next: `s || s || s || s` over a CTE whose `s` is the same
//! expression over another CTE grows a value four times per level, past
//! any server's memory in a dozen levels of SQL text (the server was
//! aborted by a failed 3 GB allocation). No memory pool sees these values:
//! DataFusion charges operators' buffers, not expression results.
//!
//! Just before physical planning, [`bound_inputs`] wraps every scalar
//! function of the optimized plan in [`Guarded`], which adds up the bytes
//! of the arguments of each call (whole arrays, `get_array_memory_size`;
//! a constant counted once per row) and refuses the call
//! (`ResourcesExhausted`, gRPC RESOURCE_EXHAUSTED) when they pass the
//! statement's `query_memory`; and each operand of `||` (a binary
//! operator, not a function) in [`WithinQueryMemory`], an identity
//! function with the same check. A value can then only grow by a small
//! factor before its next use refuses it. Functions returning `Utf8`,
//! `Binary` or `List` (32-bit offsets) are held to 2 GiB of input, and
//! `||` operands of those types to 1 GiB each, so that Arrow's offset
//! overflow (a panic) cannot be reached either.
//!
//! Veil's own functions (`veil_*`: masks, join-key encryption) and the
//! plan below a governed scan's barrier (row policies) are left as they
//! are: governance applies them to raw values, which a user cannot grow,
//! and a refusal naming their input's size would tell the size of raw
//! values.
//!
//! Names, types, nullability, volatility, orderings and bounds are those of
//! the wrapped function, so plans and answers are unchanged; physical
//! EXPLAIN shows `within_query_memory(...)` around `||` operands. The same
//! pass wraps window functions (`bounded_windows.rs`).

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, ExpressionPlacement, LogicalPlan, Operator,
    ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::bounded_fns::{check_output, Growth};
use crate::bounded_windows::bound_window;
use crate::checked::{Check, Checked};
use crate::governance::GovernedScanNode;
use crate::limits::human_bytes;

/// Functions left unwrapped: DataFusion recognizes them by type (nested
/// field projection into Parquet, schema adaptation, file metadata), and
/// none returns more than it reads.
const UNWRAPPED: &[&str] = &["get_field", "input_file_name", "file_row_index"];

/// Names of Veil's own functions (masks, join-key encryption): applied by
/// governance to raw columns, never to a value a user grew, and a refusal
/// naming their input's size would tell the size of raw values.
const VEIL_PREFIX: &str = "veil_";

/// The most input a function returning 32-bit offsets may take: Arrow
/// panics when such an array passes 2 GiB.
const OFFSET_LIMIT: usize = i32::MAX as usize;

/// Wraps every scalar function of `plan` (subqueries included) in
/// [`Guarded`] and every `||` operand in [`WithinQueryMemory`], both
/// refusing inputs of more than `limit` bytes per call.
/// Window functions get the budget of `bounded_windows.rs`, a value held
/// for `batch` rows.
pub(crate) fn bound_inputs(plan: LogicalPlan, limit: usize, batch: usize) -> Result<LogicalPlan> {
    let guard = Checked::udf(WithinQueryMemory { limit });
    let rewritten = plan.transform_down_with_subqueries(|node| {
        // Below the barrier only governance's own expressions run, over raw
        // values: a refusal there would tell their size.
        if GovernedScanNode::from_plan(&node).is_some() {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        }
        node.map_expressions(|e| e.transform_up(|e| guard_expr(e, limit, batch, &guard)))
    })?;
    Ok(rewritten.data)
}

/// One expression node: a function call wrapped, `||` operands guarded, a
/// window function's values charged.
fn guard_expr(
    e: Expr,
    limit: usize,
    batch: usize,
    guard: &Arc<ScalarUDF>,
) -> Result<Transformed<Expr>> {
    Ok(match e {
        Expr::WindowFunction(wf) => match bound_window(&wf, limit, batch) {
            Some(bounded) => Transformed::yes(bounded),
            None => Transformed::no(Expr::WindowFunction(wf)),
        },
        Expr::ScalarFunction(f) if wraps(&f.func) => {
            let guarded = Guarded::new(f.func, limit, None);
            Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(guarded)),
                f.args,
            )))
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::StringConcat,
            right,
        }) => {
            // A constant is held to its size by BoundedConstants.
            let within = |e: Box<Expr>| match *e {
                e @ Expr::Literal(..) => Box::new(e),
                Expr::ScalarFunction(f) if is_guard(&f.func) => Box::new(Expr::ScalarFunction(f)),
                e => Box::new(Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(guard),
                    vec![e],
                ))),
            };
            Transformed::yes(Expr::BinaryExpr(BinaryExpr {
                left: within(left),
                op: Operator::StringConcat,
                right: within(right),
            }))
        }
        e => Transformed::no(e),
    })
}

/// Whether `func` is the `||` operand guard.
fn is_guard(func: &ScalarUDF) -> bool {
    Checked::<WithinQueryMemory>::is(func)
}

/// Whether `func` gets a [`Guarded`] wrapper: not one already, not a
/// guard, not in [`UNWRAPPED`].
fn wraps(func: &ScalarUDF) -> bool {
    let inner: &dyn Any = func.inner().as_ref();
    !inner.is::<Guarded>()
        && !is_guard(func)
        && !UNWRAPPED.contains(&func.name())
        && !func.name().starts_with(VEIL_PREFIX)
}

/// Bytes `args` hold for `rows` rows: whole arrays, a constant once per
/// row (a kernel that needs an array copies it to every row).
fn input_bytes(args: &[ColumnarValue], rows: usize) -> usize {
    args.iter().fold(0usize, |total, arg| {
        let bytes = match arg {
            ColumnarValue::Array(a) => a.get_array_memory_size(),
            ColumnarValue::Scalar(s) => s.size().saturating_mul(rows.max(1)),
        };
        total.saturating_add(bytes)
    })
}

/// Whether `t` uses 32-bit offsets (at most 2 GiB of values per array).
fn small_offsets(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::Binary | DataType::List(_) | DataType::Map(..)
    )
}

/// The error for `what` taking `bytes` for `rows` rows, over `most`
/// (`limit`, or less for a type of 32-bit offsets, `data_type`).
fn too_large(
    what: &str,
    bytes: usize,
    rows: usize,
    most: usize,
    limit: usize,
    data_type: &DataType,
) -> DataFusionError {
    let why = if most < limit {
        format!(
            "more than {} ({data_type} values hold at most 2 GiB per array)",
            human_bytes(most)
        )
    } else {
        format!(
            "more than one statement may hold ({}, the query_memory setting)",
            human_bytes(limit)
        )
    };
    // Many rows of large values: fewer rows per batch take less.
    let hint = if rows > 1 {
        "; a smaller datafusion.execution.batch_size takes less per batch"
    } else {
        ""
    };
    DataFusionError::ResourcesExhausted(format!(
        "{what} would take {} for {rows} row(s), {why}{hint}",
        human_bytes(bytes)
    ))
}

/// A scalar function whose calls are refused when their arguments
/// together pass the statement's memory share, or, for the functions of
/// `bounded_fns.rs`, when their output could.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Guarded {
    inner: Arc<ScalarUDF>,
    limit: usize,
    growth: Option<Growth>,
}

impl Guarded {
    /// `inner` held to `limit` bytes of arguments (and of output, by
    /// `growth`).
    pub(crate) fn new(inner: Arc<ScalarUDF>, limit: usize, growth: Option<Growth>) -> Self {
        Self {
            inner,
            limit,
            growth,
        }
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Guarded::new(
            Arc::new(inner),
            self.limit,
            self.growth,
        )))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some(growth) = self.growth {
            check_output(
                self.name(),
                growth,
                &args.args,
                args.number_rows,
                self.limit,
            )?;
        }
        let bytes = input_bytes(&args.args, args.number_rows);
        let most = if small_offsets(args.return_field.data_type()) {
            self.limit.min(OFFSET_LIMIT)
        } else {
            self.limit
        };
        if bytes > most {
            let what = format!("the arguments of {}", self.name());
            let output = args.return_field.data_type();
            return Err(too_large(
                &what,
                bytes,
                args.number_rows,
                most,
                self.limit,
                output,
            ));
        }
        self.inner.invoke_with_args(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }
}

/// The check of the identity around each operand of `||`: refuses a
/// value of more than the statement's memory share.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WithinQueryMemory {
    limit: usize,
}

impl Check for WithinQueryMemory {
    const NAME: &'static str = "within_query_memory";

    fn check(&self, value: &ColumnarValue, rows: usize) -> Result<()> {
        let bytes = input_bytes(std::slice::from_ref(value), rows);
        // Two operands of 32-bit offsets must fit 2 GiB together.
        let most = if small_offsets(&value.data_type()) {
            self.limit.min(OFFSET_LIMIT / 2)
        } else {
            self.limit
        };
        if bytes > most {
            return Err(too_large(
                "an operand of ||",
                bytes,
                rows,
                most,
                self.limit,
                &value.data_type(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, AsArray, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::common::ScalarValue;
    use datafusion::functions::core::expr_fn::get_field;
    use datafusion::functions::string::expr_fn::concat;
    use datafusion::logical_expr::{binary_expr, col, create_udf, lit, table_scan, Volatility};

    /// `func` called on `args` over `rows` rows, returning `returns`.
    fn call(
        func: &ScalarUDF,
        args: Vec<ColumnarValue>,
        rows: usize,
        returns: DataType,
    ) -> Result<ColumnarValue> {
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
            .collect();
        func.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("r", returns, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    fn guarded(name: &str, limit: usize) -> ScalarUDF {
        let inner = datafusion::functions::string::functions()
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap();
        ScalarUDF::new_from_impl(Guarded::new(inner, limit, None))
    }

    #[test]
    fn calls_over_the_share_are_refused_and_others_answer() {
        let concat = guarded("concat", 1 << 20);
        let names: ArrayRef = Arc::new(StringArray::from(vec!["ab", "cd"]));
        let out = call(
            &concat,
            vec![ColumnarValue::Array(names), text("-")],
            2,
            DataType::Utf8,
        )
        .unwrap()
        .into_array(2)
        .unwrap();
        assert_eq!(out.as_string::<i32>().value(1), "cd-");

        // Two 1 KiB constants copied to 1,000 rows are 2 MB: over 1 MiB.
        let big = text(&"x".repeat(1024));
        let e = call(&concat, vec![big.clone(), big], 1000, DataType::Utf8).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("the arguments of concat would take 2.1 MiB for 1000 row(s)")
                && e.contains(
                    "(1.0 MiB, the query_memory setting); a smaller \
                               datafusion.execution.batch_size takes less per batch"
                ),
            "{e}"
        );

        // Utf8 results hold 2 GiB whatever the share: refused before the
        // kernel's offset overflow (a panic), without allocating.
        let unlimited = guarded("concat", usize::MAX);
        let e = call(&unlimited, vec![text("xyz")], 1 << 30, DataType::Utf8).unwrap_err();
        assert!(
            e.to_string()
                .contains("(Utf8 values hold at most 2 GiB per array)"),
            "{e}"
        );
    }

    #[test]
    fn operands_of_concatenation_are_passed_through_or_refused() {
        let within = Checked::udf(WithinQueryMemory { limit: 1 << 20 });
        let names: ArrayRef = Arc::new(StringArray::from(vec!["ab", "cd"]));
        let out = call(
            &within,
            vec![ColumnarValue::Array(Arc::clone(&names))],
            2,
            DataType::Utf8,
        )
        .unwrap();
        let ColumnarValue::Array(out) = out else {
            panic!("an array in, the same array out");
        };
        assert!(Arc::ptr_eq(&out, &names));
        let e = call(&within, vec![text(&"x".repeat(1024))], 2000, DataType::Utf8).unwrap_err();
        assert!(e.to_string().contains("an operand of || would take"), "{e}");
    }

    #[test]
    fn plans_get_every_function_and_operand_guarded_once() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new(
                "s",
                DataType::Struct(vec![Field::new("f", DataType::Utf8, true)].into()),
                true,
            ),
        ]);
        // A mask: governance applies it to a raw column.
        let veil_mask = create_udf(
            "veil_mask_null",
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| Ok(args[0].clone())),
        );
        let plan = table_scan(Some("t"), &schema, None)
            .unwrap()
            .project(vec![
                concat(vec![col("a"), lit("x")]),
                binary_expr(col("a"), Operator::StringConcat, lit("y")),
                get_field(col("s"), "f"),
                veil_mask.call(vec![col("a")]),
            ])
            .unwrap()
            .build()
            .unwrap();
        let names = plan.schema().field_names();
        let once = bound_inputs(plan, 1 << 20, 8192).unwrap();
        let twice = bound_inputs(once.clone(), 1 << 20, 8192).unwrap();
        assert_eq!(once, twice);
        // Output names are unchanged.
        assert_eq!(once.schema().field_names(), names);
        let LogicalPlan::Projection(p) = &once else {
            panic!("{once}");
        };
        let funcs = |e: &Expr| match e {
            Expr::ScalarFunction(f) => {
                let any: &dyn Any = f.func.inner().as_ref();
                (f.name().to_string(), any.is::<Guarded>())
            }
            other => panic!("{other}"),
        };
        assert_eq!(funcs(&p.expr[0]), ("concat".into(), true));
        assert_eq!(funcs(&p.expr[2]), ("get_field".into(), false));
        assert_eq!(funcs(&p.expr[3]), ("veil_mask_null".into(), false));
        let Expr::BinaryExpr(b) = &p.expr[1] else {
            panic!("{}", p.expr[1]);
        };
        // The column is guarded, the constant is not (BoundedConstants).
        assert_eq!(funcs(&b.left), ("within_query_memory".into(), false));
        assert!(matches!(*b.right, Expr::Literal(..)));
    }

    fn text(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())))
    }
}
