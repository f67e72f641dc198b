//! Group reduction: a grouped aggregate joined on a group key only
//! aggregates the keys the other side of the join can match.
//!
//! DataFusion decorrelates `l_quantity < (SELECT avg(l_quantity) FROM
//! lineitem WHERE l_partkey = p_partkey)` (TPC-H q17; q20 and q2 alike)
//! into a join with `SELECT l_partkey, avg(..) FROM lineitem GROUP BY
//! l_partkey`: every group of the table is aggregated (200K parts at
//! scale 1), though the outer query keeps the 204 parts of one brand and
//! container. This rule copies the relation of the other side that the
//! join key comes from, when it is filtered selectively (an equality,
//! `LIKE` or `IN` test against literals, pushed into a barrier or a scan
//! or not), as a semi join below the aggregate, on the group key:
//!
//! ```text
//!   Join [k = g]                           Join [k = g]
//!     .. Filter [brand = 'x'] (part) ..  =>  .. Filter [brand = 'x'] (part) ..
//!     Aggregate [group g]                    Aggregate [group g]
//!       input                                  LeftSemi Join [g = k]
//!                                                input
//!                                                Projection [k] (Filter [brand = 'x'] (part))
//! ```
//!
//! Exact for the join types where the aggregate's unmatched groups are
//! dropped anyway (inner, the filtered side of a semi join or an outer
//! join): a row of the join has `g = k`, and the join's `k` is one of the
//! copied relation's keys (inner and semi joins and filters on the way
//! only remove rows; projections pass the key as a plain column), so a
//! group whose key is not among them never reaches the join's output, and
//! the groups that do are aggregated from the same rows. NULL keys follow
//! the join's own null equality. A logical plan has no estimates: a
//! relation with only ranges, or none, is not copied.
//!
//! Governance: the copy is a whole relation as the query reads it (its
//! barrier, row policy and masks included; the search never enters a
//! barrier, and a key computed by an expression, a mask among them, stops
//! it), and the semi join compares the values the join compares, so it
//! can only drop groups the join would drop. Equal keyed masks on both
//! sides are then compared as raw keys by `governance/raw_keys.rs`, as
//! for any join.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Operator,
    Projection, SubqueryAlias,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The alias of a copied relation; also how the rule recognises an
/// aggregate it has already reduced.
const REDUCER: &str = "__veil_group_reducer";

/// The optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct ReduceGroupsByJoinKey;

impl OptimizerRule for ReduceGroupsByJoinKey {
    fn name(&self) -> &str {
        "veil_reduce_groups_by_join_key"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        // Which sides may hold the aggregate: a side whose unmatched rows
        // the join drops.
        let sides: &[bool] = match join.join_type {
            JoinType::Inner => &[true, false],
            JoinType::LeftSemi | JoinType::Left => &[true],
            JoinType::RightSemi | JoinType::Right => &[false],
            _ => &[],
        };
        for &aggregate_on_right in sides {
            for (left, right) in &join.on {
                let (Expr::Column(left_key), Expr::Column(right_key)) = (left, right) else {
                    continue;
                };
                let (grouped, other, group_key, other_key) = if aggregate_on_right {
                    (&join.right, &join.left, right_key, left_key)
                } else {
                    (&join.left, &join.right, left_key, right_key)
                };
                let Some(reducer) = find_reducer(other, other_key)? else {
                    continue;
                };
                let Some(reduced) = reduce(grouped, group_key, &reducer, join.null_equality)?
                else {
                    continue;
                };
                let (left, right) = if aggregate_on_right {
                    (Arc::clone(&join.left), Arc::new(reduced))
                } else {
                    (Arc::new(reduced), Arc::clone(&join.right))
                };
                return Ok(Transformed::yes(LogicalPlan::Join(Join::try_new(
                    left,
                    right,
                    join.on.clone(),
                    join.filter.clone(),
                    join.join_type,
                    join.join_constraint,
                    join.null_equality,
                    join.null_aware,
                )?)));
            }
        }
        Ok(Transformed::no(plan))
    }
}

/// A copied relation: `SubqueryAlias REDUCER (Projection [key] (..))` and
/// its key column.
struct Reducer {
    plan: LogicalPlan,
    key: Column,
}

/// The selective relation under `plan` that `column`'s values come from,
/// copied as a one-column relation; None when there is none.
fn find_reducer(plan: &LogicalPlan, column: &Column) -> Result<Option<Reducer>> {
    if is_base(plan)? {
        if !is_filtered(plan)? {
            return Ok(None);
        }
        let projected =
            Projection::try_new(vec![Expr::Column(column.clone())], Arc::new(plan.clone()))?;
        let alias = SubqueryAlias::try_new(Arc::new(LogicalPlan::Projection(projected)), REDUCER)?;
        return Ok(Some(Reducer {
            plan: LogicalPlan::SubqueryAlias(alias),
            key: Column::new(Some(REDUCER), column.name.clone()),
        }));
    }
    match plan {
        LogicalPlan::Filter(f) => find_reducer(&f.input, column),
        LogicalPlan::Projection(p) => match projected_column(p, column) {
            Some(inner) => find_reducer(&p.input, &inner),
            None => Ok(None),
        },
        LogicalPlan::SubqueryAlias(a) => match aliased_column(a, column) {
            Some(inner) => find_reducer(&a.input, &inner),
            None => Ok(None),
        },
        LogicalPlan::Join(j)
            if matches!(
                j.join_type,
                JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
            ) =>
        {
            let on_left = j.left.schema().has_column(column);
            let (own, other) = if on_left {
                (&j.left, &j.right)
            } else {
                (&j.right, &j.left)
            };
            // The join's partner key: the rows that pass have `column =
            // partner`, so the partner's relation reduces as well (for a
            // semi join it is the filtering subquery).
            for (left, right) in &j.on {
                let (mine, partner) = if on_left {
                    (left, right)
                } else {
                    (right, left)
                };
                if let (Expr::Column(mine), Expr::Column(partner)) = (mine, partner) {
                    if mine == column {
                        if let Some(found) = find_reducer(other, partner)? {
                            return Ok(Some(found));
                        }
                    }
                }
            }
            find_reducer(own, column)
        }
        _ => Ok(None),
    }
}

/// `plan` with the aggregate that groups `column` reduced by `reducer`,
/// or None when `column` is not a plain group key under plain
/// projections, aliases and filters (or the aggregate is reduced already).
fn reduce(
    plan: &LogicalPlan,
    column: &Column,
    reducer: &Reducer,
    null_equality: NullEquality,
) -> Result<Option<LogicalPlan>> {
    let (inner, input) = match plan {
        LogicalPlan::Projection(p) => (projected_column(p, column), &p.input),
        LogicalPlan::SubqueryAlias(a) => (aliased_column(a, column), &a.input),
        LogicalPlan::Filter(f) => (Some(column.clone()), &f.input),
        LogicalPlan::Aggregate(a) => return reduce_aggregate(a, column, reducer, null_equality),
        _ => return Ok(None),
    };
    let Some(inner) = inner else {
        return Ok(None);
    };
    let Some(reduced) = reduce(input, &inner, reducer, null_equality)? else {
        return Ok(None);
    };
    Ok(Some(match plan {
        LogicalPlan::SubqueryAlias(a) => {
            LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(reduced), a.alias.clone())?)
        }
        LogicalPlan::Filter(f) => {
            LogicalPlan::Filter(Filter::try_new(f.predicate.clone(), Arc::new(reduced))?)
        }
        _ => plan.with_new_exprs(plan.expressions(), vec![reduced])?,
    }))
}

fn reduce_aggregate(
    aggregate: &Aggregate,
    column: &Column,
    reducer: &Reducer,
    null_equality: NullEquality,
) -> Result<Option<LogicalPlan>> {
    let reduced_before = aggregate
        .input
        .exists(|n| Ok(matches!(n, LogicalPlan::SubqueryAlias(a) if a.alias.table() == REDUCER)))?;
    if reduced_before {
        return Ok(None);
    }
    let Ok(index) = aggregate.schema.index_of_column(column) else {
        return Ok(None);
    };
    // Grouping sets aggregate some rows with the key set to NULL.
    let Some(Expr::Column(group)) = aggregate.group_expr.get(index) else {
        return Ok(None);
    };
    if aggregate
        .group_expr
        .iter()
        .any(|e| !matches!(e, Expr::Column(_)))
    {
        return Ok(None);
    }
    let semi = Join::try_new(
        Arc::clone(&aggregate.input),
        Arc::new(reducer.plan.clone()),
        vec![(
            Expr::Column(group.clone()),
            Expr::Column(reducer.key.clone()),
        )],
        None,
        JoinType::LeftSemi,
        JoinConstraint::On,
        null_equality,
        false,
    )?;
    Ok(Some(LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(LogicalPlan::Join(semi)),
        aggregate.group_expr.clone(),
        aggregate.aggr_expr.clone(),
    )?)))
}

/// The input column a projection passes as `column`, if it passes one
/// (a computed value, a mask among them, stops the rule).
fn projected_column(projection: &Projection, column: &Column) -> Option<Column> {
    let index = projection.schema.index_of_column(column).ok()?;
    match projection.expr.get(index)? {
        Expr::Column(c) => Some(c.clone()),
        Expr::Alias(a) => match a.expr.as_ref() {
            Expr::Column(c) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The input column an alias renames to `column`.
fn aliased_column(alias: &SubqueryAlias, column: &Column) -> Option<Column> {
    let index = alias.schema.index_of_column(column).ok()?;
    let (qualifier, field) = alias.input.schema().qualified_field(index);
    Some(Column::new(qualifier.cloned(), field.name()))
}

/// Whether a filter has a conjunct that usually keeps few rows: a column
/// (or an expression of columns) equal to a literal, matching a `LIKE`
/// pattern, in a list of literals, or an `OR` of those (DataFusion writes a short `IN` list so). A
/// logical plan has no estimates; ranges are left alone.
fn is_selective(predicate: &Expr) -> bool {
    split_conjunction(predicate)
        .into_iter()
        .any(is_selective_term)
}

fn is_selective_term(term: &Expr) -> bool {
    match term {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => (is_column(left) && is_literal(right)) || (is_literal(left) && is_column(right)),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => is_selective_term(left) && is_selective_term(right),
        Expr::Like(l) => !l.negated && is_column(&l.expr) && is_literal(&l.pattern),
        Expr::InList(i) => !i.negated && is_column(&i.expr) && i.list.iter().all(is_literal),
        _ => false,
    }
}

/// An expression of the row's columns (a column, a cast of one, a mask
/// of one, ..).
fn is_column(expr: &Expr) -> bool {
    !matches!(expr, Expr::Literal(..)) && !expr.column_refs().is_empty()
}

fn is_literal(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(..))
}

/// Whether `plan` reads one relation: a scan (governed or not) under
/// filters, projections and aliases, no join or aggregate.
fn is_base(plan: &LogicalPlan) -> Result<bool> {
    Ok(!plan.exists(|n| {
        Ok(!matches!(
            n,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::Extension(_)
        ))
    })?)
}

/// Whether a relation has a selective filter ([`is_selective`]) anywhere,
/// a leakproof one pushed below a governance barrier or into the scan
/// included.
fn is_filtered(plan: &LogicalPlan) -> Result<bool> {
    plan.exists(|n| {
        Ok(match n {
            LogicalPlan::Filter(f) => is_selective(&f.predicate),
            LogicalPlan::TableScan(t) => t.filters.iter().any(is_selective),
            _ => false,
        })
    })
}
