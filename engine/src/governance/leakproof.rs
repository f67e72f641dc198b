//! Which user predicates may cross the governance barrier, and the two
//! optimizer rules that enforce it.
//!
//! A conjunct is *leakproof* when evaluating it cannot fail or signal, so
//! evaluating it on a row the policy hides reveals nothing: comparisons of
//! unmasked columns with literals or other unmasked columns, IS [NOT] NULL,
//! IN lists of literals, BETWEEN literals, LIKE with a literal pattern,
//! combined with AND / OR / NOT. Anything else (casts of columns, arithmetic,
//! functions, subqueries, volatile expressions) stays above the barrier.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::Result;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{BinaryExpr, Expr, Filter, LogicalPlan, Operator, TableScan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::node::GovernedScanNode;

/// Whether `e` may be evaluated on rows a row policy hides.
pub fn is_leakproof(e: &Expr, masked: &HashSet<&str>) -> bool {
    use Operator::*;
    match e {
        Expr::Column(c) => !masked.contains(c.name.as_str()),
        Expr::Literal(..) => true,
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            matches!(
                op,
                Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom | And | Or
            ) && is_leakproof(left, masked)
                && is_leakproof(right, masked)
        }
        Expr::Not(x)
        | Expr::IsNull(x)
        | Expr::IsNotNull(x)
        | Expr::IsTrue(x)
        | Expr::IsFalse(x)
        | Expr::IsNotTrue(x)
        | Expr::IsNotFalse(x)
        | Expr::IsUnknown(x)
        | Expr::IsNotUnknown(x) => is_leakproof(x, masked),
        Expr::InList(l) => {
            is_leakproof(&l.expr, masked) && l.list.iter().all(|x| matches!(x, Expr::Literal(..)))
        }
        Expr::Between(b) => {
            is_leakproof(&b.expr, masked)
                && matches!(*b.low, Expr::Literal(..))
                && matches!(*b.high, Expr::Literal(..))
        }
        Expr::Like(l) => is_leakproof(&l.expr, masked) && matches!(*l.pattern, Expr::Literal(..)),
        Expr::TryCast(t) => is_leakproof(&t.expr, masked),
        Expr::Cast(c) => matches!(*c.expr, Expr::Literal(..)),
        _ => false,
    }
}

fn masked_set(node: &GovernedScanNode) -> HashSet<&str> {
    node.masked.iter().map(String::as_str).collect()
}

/// Moves leakproof conjuncts of a filter directly above a barrier to just
/// below it, where DataFusion pushes them on into the scan for pruning.
#[derive(Debug, Default)]
pub struct SecureFilterPushdown;

impl OptimizerRule for SecureFilterPushdown {
    fn name(&self) -> &str {
        "veil_secure_filter_pushdown"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(node) = GovernedScanNode::from_plan(&filter.input) else {
            return Ok(Transformed::no(plan));
        };
        let masked = masked_set(node);
        let (inside, above): (Vec<Expr>, Vec<Expr>) =
            split_conjunction_owned(filter.predicate.clone())
                .into_iter()
                .partition(|c| !c.is_volatile() && is_leakproof(c, &masked));
        let Some(inside) = conjunction(inside) else {
            return Ok(Transformed::no(plan));
        };
        let mut node = node.clone();
        node.input = LogicalPlan::Filter(Filter::try_new(inside, Arc::new(node.input))?);
        let barrier = node.into_plan();
        Ok(Transformed::yes(match conjunction(above) {
            Some(p) => LogicalPlan::Filter(Filter::try_new(p, Arc::new(barrier))?),
            None => barrier,
        }))
    }
}

/// Safety net, run last: any conjunct below a barrier that is neither
/// leakproof nor a copy of the row policy is lifted back above it.
/// (DataFusion pushes conjuncts without column references into every input
/// of an extension node; this undoes that for the barrier.)
#[derive(Debug, Default)]
pub struct LiftUnsafeFilters;

fn lift(
    plan: LogicalPlan,
    allowed: &dyn Fn(&Expr) -> bool,
    lifted: &mut Vec<Expr>,
) -> Result<LogicalPlan> {
    match plan {
        LogicalPlan::Filter(f) => {
            let (keep, out): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(f.predicate)
                .into_iter()
                .partition(|c| allowed(c));
            lifted.extend(out);
            let input = lift(Arc::unwrap_or_clone(f.input), allowed, lifted)?;
            Ok(match conjunction(keep) {
                Some(p) => LogicalPlan::Filter(Filter::try_new(p, Arc::new(input))?),
                None => input,
            })
        }
        LogicalPlan::TableScan(scan) => {
            let (keep, out): (Vec<Expr>, Vec<Expr>) =
                scan.filters.into_iter().partition(|c| allowed(c));
            lifted.extend(out);
            Ok(LogicalPlan::TableScan(TableScan {
                filters: keep,
                ..scan
            }))
        }
        LogicalPlan::Projection(mut p) => {
            p.input = Arc::new(lift(Arc::unwrap_or_clone(p.input), allowed, lifted)?);
            Ok(LogicalPlan::Projection(p))
        }
        other => Ok(other),
    }
}

impl OptimizerRule for LiftUnsafeFilters {
    fn name(&self) -> &str {
        "veil_lift_unsafe_filters"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let Some(node) = GovernedScanNode::from_plan(&plan) else {
            return Ok(Transformed::no(plan));
        };
        let masked = masked_set(node);
        let policy: Vec<Expr> = node
            .row_predicate
            .clone()
            .map(split_conjunction_owned)
            .unwrap_or_default();
        let allowed =
            |c: &Expr| policy.contains(c) || (!c.is_volatile() && is_leakproof(c, &masked));
        let mut lifted = Vec::new();
        let input = lift(node.input.clone(), &allowed, &mut lifted)?;
        let Some(above) = conjunction(lifted) else {
            return Ok(Transformed::no(plan));
        };
        let mut node = node.clone();
        node.input = input;
        Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
            above,
            Arc::new(node.into_plan()),
        )?)))
    }
}
