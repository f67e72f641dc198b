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
pub(crate) const REDUCER: &str = "__veil_group_reducer";

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

#[cfg(test)]
mod tests {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::test_sql::{plan, rows};

    /// Parts and their lines (NULL keys on both sides), with or without
    /// the rule.
    async fn shop(with_rule: bool) -> SessionContext {
        let mut builder = SessionStateBuilder::new().with_default_features();
        if with_rule {
            builder = builder.with_optimizer_rule(Arc::new(ReduceGroupsByJoinKey));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        for sql in [
            "CREATE TABLE part (p_id INT, brand VARCHAR, size INT) AS VALUES \
             (1, 'b1', 10), (2, 'b2', 20), (3, 'b1', 30), (4, 'b3', 10), (NULL, 'b1', 40)",
            "CREATE TABLE line (l_part INT, l_supp INT, qty INT, price INT) AS VALUES \
             (1, 7, 1, 100), (1, 8, 9, 200), (1, 7, 4, 300), (2, 7, 5, 10), (2, 8, 50, 20), \
             (3, 8, 2, 5), (3, 8, 8, 6), (4, 7, 3, 1), (NULL, 7, 1, 1000), (NULL, 8, 2, 2000)",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    /// The answer with and without the rule (asserted equal) and the
    /// plan with it.
    async fn both(sql: &str) -> (String, String) {
        let (with, without) = (shop(true).await, shop(false).await);
        let got = rows(&with, sql).await;
        assert_eq!(got, rows(&without, sql).await, "{sql}");
        (got, plan(&with, sql).await)
    }

    /// Whether the copied relation sits below the aggregate grouping
    /// `group` (and only once in the plan).
    fn reduced(plan: &str, group: &str) -> bool {
        let depth = |what: &str| {
            plan.lines()
                .find(|l| l.contains(what))
                .map(|l| l.len() - l.trim_start().len())
        };
        let aggregate = depth(&format!("Aggregate: groupBy=[[{group}]]"));
        match (aggregate, depth(REDUCER)) {
            (Some(a), Some(r)) => r > a && plan.matches(REDUCER).count() <= 2,
            _ => false,
        }
    }

    fn table(lines: &[&str]) -> String {
        lines.join("\n")
    }

    #[tokio::test]
    async fn a_correlated_average_aggregates_only_the_parts_the_filter_keeps() {
        // TPC-H q17's shape, with 0.8 of the part's average quantity.
        let sql = "SELECT sum(price) AS s FROM line, part WHERE p_id = l_part AND brand = 'b1' \
            AND qty < (SELECT 0.8 * avg(qty) FROM line l2 WHERE l2.l_part = p_id)";
        let (got, plan) = both(sql).await;
        assert!(reduced(&plan, "l2.l_part"), "{plan}");
        // Part 1: average 14/3, lines with qty 1 and 4 (< 3.73): 1 only;
        // part 3: average 5, qty 2 (< 4): 5. NULL parts join nothing.
        assert_eq!(
            got,
            table(&["+-----+", "| s   |", "+-----+", "| 105 |", "+-----+"])
        );
    }

    #[tokio::test]
    async fn a_subquery_in_an_in_list_reduces_through_the_semi_join() {
        // TPC-H q20's shape: the key reaches the filtered relation through
        // the `IN` subquery's semi join.
        let sql = "SELECT l_supp FROM (SELECT DISTINCT l_part AS k, l_supp FROM line) s \
            WHERE k IN (SELECT p_id FROM part WHERE brand LIKE 'b1%') \
            AND l_supp IN (SELECT l_supp FROM line l2 WHERE l2.l_part = k GROUP BY l_supp \
                           HAVING sum(qty) > 3) ORDER BY 1";
        let (got, plan) = both(sql).await;
        assert!(reduced(&plan, "l2.l_supp, l2.l_part"), "{plan}");
        let want = [
            "+--------+",
            "| l_supp |",
            "+--------+",
            "| 7      |",
            "| 8      |",
            "| 8      |",
            "+--------+",
        ];
        assert_eq!(got, table(&want));

        let sql = "SELECT p_id FROM part WHERE brand = 'b1' AND size > (SELECT sum(qty) FROM line \
            WHERE l_part = p_id AND l_supp = 8) ORDER BY 1";
        let (got, plan) = both(sql).await;
        assert!(reduced(&plan, "line.l_part"), "{plan}");
        let want = [
            "+------+", "| p_id |", "+------+", "| 1    |", "| 3    |", "+------+",
        ];
        assert_eq!(got, table(&want));
    }

    #[tokio::test]
    async fn a_derived_table_joined_on_its_group_key_is_reduced_from_either_side() {
        for sql in [
            "SELECT p_id, n FROM part JOIN (SELECT l_part, count(*) AS n FROM line GROUP BY l_part) g \
             ON g.l_part = p_id WHERE brand IN ('b2', 'b3') ORDER BY 1",
            "SELECT p_id, n FROM (SELECT l_part, count(*) AS n FROM line GROUP BY l_part) g \
             JOIN part ON p_id = g.l_part WHERE brand IN ('b2', 'b3') ORDER BY 1",
            // An equality on an expression of a column counts too.
            "SELECT p_id, n FROM part JOIN (SELECT l_part, count(*) AS n FROM line GROUP BY l_part) g \
             ON g.l_part = p_id WHERE size + 0 = 20 OR upper(brand) = 'B3' ORDER BY 1",
        ] {
            let (got, plan) = both(sql).await;
            assert!(reduced(&plan, "line.l_part"), "{plan}");
            let want = ["+------+---+", "| p_id | n |", "+------+---+", "| 2    | 2 |", "| 4    | 1 |", "+------+---+"];
            assert_eq!(got, table(&want), "{sql}");
        }
    }

    #[tokio::test]
    async fn nulls_match_when_the_join_says_so() {
        // IS NOT DISTINCT FROM joins the NULL part to the NULL-key group.
        let sql = "SELECT p_id, n FROM part JOIN (SELECT l_part, count(*) AS n FROM line GROUP BY l_part) g \
            ON g.l_part IS NOT DISTINCT FROM p_id WHERE brand = 'b1' ORDER BY 1 NULLS FIRST";
        let (got, plan) = both(sql).await;
        assert!(reduced(&plan, "line.l_part"), "{plan}");
        let want = [
            "+------+---+",
            "| p_id | n |",
            "+------+---+",
            "|      | 2 |",
            "| 1    | 3 |",
            "| 3    | 2 |",
            "+------+---+",
        ];
        assert_eq!(got, table(&want));
    }

    #[tokio::test]
    async fn groups_the_join_keeps_or_cannot_tell_apart_are_left_whole() {
        let (with, without) = (shop(true).await, shop(false).await);
        for sql in [
            // The aggregate on the preserved side of an outer join.
            "SELECT g.l_part, n, p_id FROM (SELECT l_part, count(*) AS n FROM line GROUP BY l_part) g \
             LEFT JOIN (SELECT * FROM part WHERE brand = 'b1') p ON g.l_part = p.p_id ORDER BY 1",
            // Only a range: no sign the other side is small.
            "SELECT p_id, n FROM part JOIN (SELECT l_part, count(*) AS n FROM line GROUP BY l_part) g \
             ON g.l_part = p_id WHERE size > 15 ORDER BY 1",
            // A computed key, a grouping set, an anti join.
            "SELECT p_id, n FROM part JOIN (SELECT l_part + 1 AS k, count(*) AS n FROM line GROUP BY l_part + 1) g \
             ON g.k = p_id WHERE brand = 'b1' ORDER BY 1",
            "SELECT p_id, n FROM part JOIN (SELECT l_part, count(*) AS n FROM line GROUP BY ROLLUP (l_part)) g \
             ON g.l_part = p_id WHERE brand = 'b1' ORDER BY 1",
            "SELECT g.l_part FROM (SELECT l_part FROM line GROUP BY l_part) g \
             WHERE NOT EXISTS (SELECT 1 FROM part WHERE p_id = g.l_part AND brand = 'b1') ORDER BY 1",
        ] {
            assert_eq!(plan(&with, sql).await, plan(&without, sql).await, "{sql}");
            assert_eq!(rows(&with, sql).await, rows(&without, sql).await, "{sql}");
        }
    }
}
