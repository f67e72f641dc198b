//! The identity function with a check: wraps an expression so that each
//! batch of its values passes a check first, and changes nothing else
//! (name, type, nullability, ordering and bounds are the operand's).

use std::any::Any;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// What a [`Checked`] identity checks.
pub(crate) trait Check: Debug + PartialEq + Eq + Hash + Send + Sync + 'static {
    /// The function's name, as EXPLAIN shows it.
    const NAME: &'static str;

    /// Fails when the statement must not go on with `value` (`rows` rows).
    fn check(&self, value: &ColumnarValue, rows: usize) -> Result<()>;
}

/// The identity on one operand, after [`Check::check`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Checked<C> {
    check: C,
    signature: Signature,
}

impl<C: Check> Checked<C> {
    /// The function checking with `check`.
    pub fn udf(check: C) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Self {
            check,
            signature: Signature::any(1, Volatility::Immutable),
        }))
    }

    /// Whether `func` is this identity (of any check of type `C`).
    pub fn is(func: &ScalarUDF) -> bool {
        let inner: &dyn Any = func.inner().as_ref();
        inner.is::<Self>()
    }
}

/// The error of a call without its one argument.
fn one_argument<C: Check>() -> DataFusionError {
    DataFusionError::Internal(format!("{} takes one argument", C::NAME))
}

impl<C: Check> ScalarUDFImpl for Checked<C> {
    fn name(&self) -> &str {
        C::NAME
    }

    /// The operand's own name, so that output column names do not change.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args
            .first()
            .map(|a| a.schema_name().to_string())
            .unwrap_or_default())
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args.arg_fields
            .first()
            .map(Arc::clone)
            .ok_or_else(one_argument::<C>)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = <[ColumnarValue; 1]>::try_from(args.args).map_err(|_| one_argument::<C>())?;
        self.check.check(&value, args.number_rows)?;
        Ok(value)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        Ok(inputs
            .first()
            .map(|p| p.sort_properties)
            .unwrap_or(SortProperties::Singleton))
    }

    fn preserves_lex_ordering(&self, _inputs: &[ExprProperties]) -> Result<bool> {
        Ok(true)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        match input.first() {
            Some(i) => Ok((*i).clone()),
            None => Interval::make_unbounded(&DataType::Null),
        }
    }
}
