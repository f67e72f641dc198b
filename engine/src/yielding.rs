//! Operators that can emit far more rows than they read yield to the
//! scheduler between batches.
//!
//! DataFusion makes a plan cooperative at its leaves (a scan gives up the
//! thread every so many batches), which is enough while every operator
//! reads about as much as it emits. A join does not: `count(*)` over a
//! nested-loop join of 2,000,000 and 100,000 rows turns each input batch
//! into millions of output batches without polling its input again, so the
//! task never yielded. Its worker thread was lost until the join finished
//! (hours): the query timeout could not fire, a client that hung up did not
//! stop it, and with both worker threads taken by such a statement the
//! server accepted no connection at all. [`YieldingJoins`] puts a
//! `CooperativeExec` (one Tokio budget unit per batch) above every join and
//! unnest, so such a task gives up its thread every 128 batches: deadlines
//! and cancellation are checked, and other sessions get their turn.
//!
//! That covers joins that emit. A nested-loop or hash join that emits
//! nothing never reaches the budget's check; `timeslice.rs` makes those
//! give up their thread when one poll runs long.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec,
    SymmetricHashJoinExec,
};
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::ExecutionPlan;

/// Wraps every join and unnest of a physical plan in a `CooperativeExec`.
#[derive(Debug, Default)]
pub(crate) struct YieldingJoins;

/// Whether `plan` can emit many batches for one batch it reads.
fn multiplies(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<NestedLoopJoinExec>()
        || plan.is::<CrossJoinExec>()
        || plan.is::<HashJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<PiecewiseMergeJoinExec>()
        || plan.is::<UnnestExec>()
}

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(coop) = node.downcast_ref::<CooperativeExec>() {
                // Already wrapped (this rule ran before, or DataFusion's).
                if coop.input().is::<CooperativeExec>() {
                    return Ok(Transformed::yes(Arc::clone(coop.input())));
                }
                return Ok(Transformed::no(node));
            }
            if multiplies(node.as_ref()) {
                // Nested-loop and hash joins also give up their thread when
                // one poll runs long (timeslice.rs).
                let node = crate::timeslice::around(node)?;
                if !node.transformed && crate::timeslice::is_timesliced(node.data.as_ref()) {
                    return Ok(node); // this rule ran before
                }
                return Ok(Transformed::yes(Arc::new(CooperativeExec::new(node.data))));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "veil_yielding_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
