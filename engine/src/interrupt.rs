//! Stopping a statement inside one long poll.
//!
//! A statement stops when its stream is dropped (its client hung up, or
//! its deadline passed and the reader gave up): the task that runs it is
//! aborted at its next `.await`. A join can go a very long time without
//! one: DataFusion's nested-loop join compares its whole buffered left side
//! with each right batch inside a single poll while it has nothing to emit
//! (`count(*)` under a join condition, or a condition no pair meets), and a
//! hash join's extra condition is tried on every candidate pair the same
//! way: `SELECT count(*) FROM generate_series(1, 2000000) a JOIN
//! generate_series(1, 100000) b ON a.value < b.value` held its threads for
//! as long as it ran (over nine minutes before it was killed), whatever
//! the timeout.
//!
//! Each statement has an [`Interrupt`], set when its output is dropped.
//! Just before physical planning, [`interruptible_joins`] wraps every
//! join condition of the optimized plan in `interruptible(...)`, the
//! identity on the condition that first fails if the interrupt is set
//! (`checked.rs`); since a join
//! evaluates its condition once per left row (nested loop) or per batch of
//! candidate pairs (hash, sort-merge), the long poll ends within one such
//! evaluation of the statement being dropped.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{ColumnarValue, Expr, LogicalPlan};

use crate::checked::{Check, Checked};

/// Set once a statement's result is no longer wanted.
#[derive(Debug, Default)]
pub struct Interrupt {
    stopped: AtomicBool,
}

impl Interrupt {
    /// Stops the statement at its next check.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether the statement was stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Fails once the statement was stopped.
    pub fn check(&self) -> Result<()> {
        if self.is_stopped() {
            return Err(DataFusionError::Execution(
                "statement stopped: its result is no longer read (the client went away \
                 or the query timeout passed)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Stops the statement when dropped (held by its output stream).
#[derive(Debug)]
pub(crate) struct StopOnDrop(pub Arc<Interrupt>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Wraps the condition of every join of `plan` (subqueries included) in
/// `interruptible(...)`, the identity that first fails once `interrupt`
/// is set.
pub(crate) fn interruptible_joins(
    plan: LogicalPlan,
    interrupt: &Arc<Interrupt>,
) -> Result<LogicalPlan> {
    let check = Checked::udf(Running(Arc::clone(interrupt)));
    let rewritten = plan.transform_down_with_subqueries(|node| match node {
        LogicalPlan::Join(mut join) => match join.filter.take() {
            Some(Expr::ScalarFunction(f)) if Checked::<Running>::is(&f.func) => {
                join.filter = Some(Expr::ScalarFunction(f));
                Ok(Transformed::no(LogicalPlan::Join(join)))
            }
            Some(filter) => {
                join.filter = Some(Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(&check),
                    vec![filter],
                )));
                Ok(Transformed::yes(LogicalPlan::Join(join)))
            }
            None => Ok(Transformed::no(LogicalPlan::Join(join))),
        },
        node => Ok(Transformed::no(node)),
    })?;
    Ok(rewritten.data)
}

/// The check of `interruptible(...)`: the statement was not stopped.
#[derive(Debug)]
struct Running(Arc<Interrupt>);

impl PartialEq for Running {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Running {}

impl Hash for Running {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

impl Check for Running {
    const NAME: &'static str = "interruptible";

    fn check(&self, _value: &ColumnarValue, _rows: usize) -> Result<()> {
        self.0.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::BooleanArray;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::common::config::ConfigOptions;
    use datafusion::logical_expr::{col, table_scan, JoinType, ScalarFunctionArgs, ScalarUDF};

    fn call(f: &ScalarUDF) -> Result<ColumnarValue> {
        let value = ColumnarValue::Array(Arc::new(BooleanArray::from(vec![true, false])));
        f.invoke_with_args(ScalarFunctionArgs {
            args: vec![value],
            arg_fields: vec![Arc::new(Field::new("c", DataType::Boolean, true))],
            number_rows: 2,
            return_field: Arc::new(Field::new("c", DataType::Boolean, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    #[test]
    fn the_condition_passes_until_the_statement_is_stopped() {
        let interrupt = Arc::new(Interrupt::default());
        let f = Checked::udf(Running(Arc::clone(&interrupt)));
        let ColumnarValue::Array(out) = call(&f).unwrap() else {
            panic!("an array in, an array out");
        };
        assert_eq!(out.len(), 2);
        drop(StopOnDrop(Arc::clone(&interrupt)));
        let err = call(&f).unwrap_err().to_string();
        assert!(err.contains("statement stopped"), "{err}");
    }

    #[test]
    fn join_conditions_are_wrapped_once() {
        let schema = |n: &str| {
            datafusion::arrow::datatypes::Schema::new(vec![Field::new(n, DataType::Int64, false)])
        };
        let plan = table_scan(Some("a"), &schema("x"), None)
            .unwrap()
            .join_on(
                table_scan(Some("b"), &schema("y"), None)
                    .unwrap()
                    .build()
                    .unwrap(),
                JoinType::Inner,
                vec![col("a.x").lt(col("b.y"))],
            )
            .unwrap()
            .build()
            .unwrap();
        let interrupt = Arc::new(Interrupt::default());
        let once = interruptible_joins(plan, &interrupt).unwrap();
        let twice = interruptible_joins(once.clone(), &interrupt).unwrap();
        let shown = format!("{}", twice.display_indent());
        assert_eq!(shown.matches("interruptible(").count(), 1, "{shown}");
        assert_eq!(once, twice);
        // The join's output names are unchanged.
        assert_eq!(once.schema().fields().len(), 2);
    }
}
