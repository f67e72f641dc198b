//! Governed planning: every scan of a governed source is rewritten, before
//! optimization, into
//!
//! ```text
//!   Projection [mask(col) AS col, ...]            one projection, masks from raw inputs
//!     GovernedScan: source (barrier)              evaluates row policies exactly; opaque
//!       TableScan raw (filters: leakproof         the physical barrier also gives the row
//!                      user conjuncts)            policy to the Parquet scan, for pruning
//! ```
//!
//! Guarantees kept here:
//! - No user expression sees an unmasked value of a masked column: the mask
//!   projection is the only consumer of raw columns (besides the equality
//!   comparisons of a join on two equal injective masks, which
//!   [`raw_keys::RawKeyJoin`] makes on the raw values, and of a partial
//!   aggregate grouping by one, [`raw_groups::RawKeyGroup`]), and the barrier
//!   lets no predicate on a masked column through (DataFusion's filter pushdown stops
//!   at the node; [`leakproof::SecureFilterPushdown`] moves only leakproof
//!   conjuncts on unmasked columns below it, and
//!   [`leakproof::LiftUnsafeFilters`] lifts back anything else the optimizer
//!   pushed).
//! - Row policies are evaluated by the barrier itself, on their own, so no
//!   user conjunct is ever evaluated on a hidden row.
//! - The physical barrier hides its input: EXPLAIN shows one opaque node,
//!   statistics describe visible rows only ([`visible_stats`]), no metric
//!   counts hidden rows, and physical
//!   filter pushdown cannot cross it.

pub mod costly_conjuncts;
pub mod leakproof;
pub mod node;
pub mod principal_fns;
pub mod raw_groups;
pub mod raw_keys;
pub mod rule;
pub mod table;
pub mod visible_stats;

pub(crate) use node::awaiting_joins;
pub use node::{GovernedQueryPlanner, GovernedScanNode};
pub use rule::{GovernanceContext, GovernanceRule, StatementGovernance};
pub use table::GovernedTable;

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_plan::ExecutionPlan;

/// `plan` with every node for which `rewrite` returns a replacement
/// replaced, bottom up (the body of the physical rules here that rewrite
/// one kind of node at a time).
pub(crate) fn rewrite_nodes(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(&Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        Ok(match rewrite(&p)? {
            Some(new) => Transformed::yes(new),
            None => Transformed::no(p),
        })
    })
    .map(|t| t.data)
}
