//! Semi-join reduction on a join key: moves `x IN (subquery)` below the
//! inner join that joins on `x`.
//!
//! DataFusion turns `WHERE o_orderkey IN (SELECT ...)` into a semi join
//! above the whole FROM clause, so the subquery filters the joined rows
//! (TPC-H q18: 6M lineitem rows joined to orders first, then filtered by 57
//! keys) and never moves it. `(A ⋈[A.k = B.k] B) ⋉[A.k] S` is
//! `(A ⋉[A.k] S) ⋈[A.k = B.k] B` for an inner join: the rewrite is exact.
//! It is applied only when the semi join's keys are keys of that join, so
//! the join below receives exactly the rows that would have survived the
//! semi join (a semi join above an unrelated join, such as q21's `EXISTS`
//! above a nation filter, stays where the query put it: the joins above
//! it may shrink its input, and a logical plan has no estimates to tell).
//!
//! The rule passes only inner joins and projections of plain columns. It
//! never enters a governance barrier or a mask projection (a projection
//! with a function call), so the semi join compares exactly the values it
//! compared before, masked or not.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct SemiJoinOnJoinKey;

impl OptimizerRule for SemiJoinOnJoinKey {
    fn name(&self) -> &str {
        "veil_semi_join_on_join_key"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(semi) = plan else {
            return Ok(Transformed::no(plan));
        };
        if semi.join_type != JoinType::LeftSemi || semi.filter.is_some() || semi.on.is_empty() {
            return Ok(Transformed::no(LogicalPlan::Join(semi)));
        }
        let mut keys = HashSet::new();
        for (left, _) in &semi.on {
            match left {
                Expr::Column(c) => keys.insert(c.clone()),
                _ => return Ok(Transformed::no(LogicalPlan::Join(semi))),
            };
        }
        match sink(&semi.left, &semi, &keys, false)? {
            Some(plan) => Ok(Transformed::yes(plan)),
            None => Ok(Transformed::no(LogicalPlan::Join(semi))),
        }
    }
}

/// `plan` with `semi` placed below it as far as the keys allow, or None
/// when it cannot go below `plan`. `under_key_join` says whether an inner
/// join on the keys was passed on the way (placing it is pointless
/// otherwise).
fn sink(
    plan: &LogicalPlan,
    semi: &Join,
    keys: &HashSet<Column>,
    under_key_join: bool,
) -> Result<Option<LogicalPlan>> {
    match plan {
        LogicalPlan::Projection(p)
            if p.expr.iter().all(|e| matches!(e, Expr::Column(_)))
                && keys.iter().all(|k| p.input.schema().has_column(k)) =>
        {
            let Some(input) = sink_or_place(&p.input, semi, keys, under_key_join)? else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Projection(Projection::try_new(
                p.expr.clone(),
                Arc::new(input),
            )?)))
        }
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            let joined_on = |side: usize| {
                keys.iter().all(|k| {
                    j.on.iter().any(|pair| {
                        let e = if side == 0 { &pair.0 } else { &pair.1 };
                        matches!(e, Expr::Column(c) if c == k)
                    })
                })
            };
            let (left, right) = if joined_on(0) {
                match sink_or_place(&j.left, semi, keys, true)? {
                    Some(l) => (Arc::new(l), Arc::clone(&j.right)),
                    None => return Ok(None),
                }
            } else if joined_on(1) {
                match sink_or_place(&j.right, semi, keys, true)? {
                    Some(r) => (Arc::clone(&j.left), Arc::new(r)),
                    None => return Ok(None),
                }
            } else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Join(Join::try_new(
                left,
                right,
                j.on.clone(),
                j.filter.clone(),
                j.join_type,
                j.join_constraint,
                j.null_equality,
                j.null_aware,
            )?)))
        }
        _ => Ok(None),
    }
}

/// `plan` with `semi` below it, or `semi` over `plan` when it goes no
/// further; None when no key join was passed.
fn sink_or_place(
    plan: &Arc<LogicalPlan>,
    semi: &Join,
    keys: &HashSet<Column>,
    under_key_join: bool,
) -> Result<Option<LogicalPlan>> {
    if let Some(deeper) = sink(plan, semi, keys, under_key_join)? {
        return Ok(Some(deeper));
    }
    if !under_key_join {
        return Ok(None);
    }
    Ok(Some(LogicalPlan::Join(Join::try_new(
        Arc::clone(plan),
        Arc::clone(&semi.right),
        semi.on.clone(),
        None,
        JoinType::LeftSemi,
        semi.join_constraint,
        semi.null_equality,
        false,
    )?)))
}

#[cfg(test)]
mod tests {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::test_sql::{plan, rows};

    /// Customers, their orders and the orders' lines, with or without
    /// the rule.
    async fn shop(with_rule: bool) -> SessionContext {
        let mut builder = SessionStateBuilder::new().with_default_features();
        if with_rule {
            builder = builder.with_optimizer_rule(Arc::new(SemiJoinOnJoinKey));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        for sql in [
            "CREATE TABLE c (c_id INT, c_name VARCHAR, c_region INT) AS VALUES \
             (1, 'ann', 1), (2, 'bob', 2), (3, 'cy', 1), (4, NULL, 3)",
            "CREATE TABLE o (o_id INT, o_c INT, o_total INT) AS VALUES \
             (10, 1, 100), (11, 1, 5), (12, 2, 70), (13, 3, 1), (14, 4, 40), (15, NULL, 9), (16, 2, NULL)",
            "CREATE TABLE l (l_o INT, l_qty INT) AS VALUES \
             (10, 30), (10, 40), (11, 1), (12, 50), (12, 60), (13, 2), (14, 20), (14, 25), (15, 99), (NULL, 7), (16, 80)",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    const BIG_ORDERS: &str = "SELECT c_name, o_id, sum(l_qty) AS q FROM c, o, l \
        WHERE o_id IN (SELECT l_o FROM l GROUP BY l_o HAVING sum(l_qty) > 60) \
        AND c_id = o_c AND o_id = l_o GROUP BY c_name, o_id ORDER BY o_id";

    /// Indentation of the first line containing `what`.
    fn depth(plan: &str, what: &str) -> usize {
        let line = plan.lines().find(|l| l.contains(what)).unwrap_or_else(|| {
            panic!("no {what} in\n{plan}");
        });
        line.len() - line.trim_start().len()
    }

    #[tokio::test]
    async fn the_semi_join_moves_below_the_join_on_its_key_and_answers_the_same() {
        let (with, without) = (shop(true).await, shop(false).await);
        let moved = plan(&with, BIG_ORDERS).await;
        let kept = plan(&without, BIG_ORDERS).await;
        // DataFusion puts it above the lines join; the rule below it, over
        // the customer-orders join (joined on another key).
        assert!(
            depth(&kept, "LeftSemi Join") < depth(&kept, "Inner Join: o.o_id = l.l_o"),
            "{kept}"
        );
        assert!(
            depth(&moved, "LeftSemi Join") > depth(&moved, "Inner Join: o.o_id = l.l_o"),
            "{moved}"
        );
        assert!(
            depth(&moved, "LeftSemi Join") < depth(&moved, "Inner Join: c.c_id = o.o_c"),
            "{moved}"
        );
        let got = rows(&with, BIG_ORDERS).await;
        assert_eq!(got, rows(&without, BIG_ORDERS).await);
        // Orders 10, 12, 15 and 16 have more than 60 in lines; 15 has no
        // customer.
        let want = [
            "+--------+------+-----+",
            "| c_name | o_id | q   |",
            "+--------+------+-----+",
            "| ann    | 10   | 70  |",
            "| bob    | 12   | 110 |",
            "| bob    | 16   | 80  |",
            "+--------+------+-----+",
        ];
        assert_eq!(got, want.join("\n"));
    }

    #[tokio::test]
    async fn a_semi_join_above_a_join_on_another_key_stays() {
        // The key is o_id, the join below joins customers on c_id = o_c.
        let sql = "SELECT c_name, o_id FROM c, o WHERE c_id = o_c \
            AND o_id IN (SELECT l_o FROM l WHERE l_qty > 45) ORDER BY o_id";
        let (with, without) = (shop(true).await, shop(false).await);
        assert_eq!(plan(&with, sql).await, plan(&without, sql).await);
        assert_eq!(rows(&with, sql).await, rows(&without, sql).await);
    }

    #[tokio::test]
    async fn answers_stay_the_same_for_keys_on_either_side_nulls_and_anti_joins() {
        let (with, without) = (shop(true).await, shop(false).await);
        for sql in [
            // The key on the join's right side.
            "SELECT l_o, l_qty, o_total FROM l JOIN o ON l_o = o_id \
             WHERE o_id IN (SELECT o_id FROM o WHERE o_total > 50) ORDER BY l_o, l_qty",
            // Over a derived table (an alias: the rule stops there), NULL keys.
            "SELECT * FROM (SELECT o_id, o_c, l_qty FROM o JOIN l ON o_id = l_l) t \
             WHERE o_c IN (SELECT c_id FROM c) ORDER BY o_id, l_qty"
                .replace("l_l", "l_o")
                .as_str(),
            // The key on the join's left side, NULLs in the subquery.
            "SELECT o_id, l_qty FROM o JOIN l ON o_id = l_o \
             WHERE o_id IN (SELECT l_o FROM l WHERE l_qty IS NULL OR l_qty > 50) ORDER BY 1, 2",
            // NOT IN and NOT EXISTS are not semi joins: untouched.
            "SELECT o_id, l_qty FROM o JOIN l ON o_id = l_o \
             WHERE o_id NOT IN (SELECT l_o FROM l WHERE l_qty > 50 AND l_o IS NOT NULL) ORDER BY 1, 2",
            "SELECT o_id, l_qty FROM o JOIN l ON o_id = l_o \
             WHERE NOT EXISTS (SELECT 1 FROM c WHERE c_id = o_c) ORDER BY 1, 2",
            // A semi join with a non-equi condition stays.
            "SELECT o_id, l_qty FROM o JOIN l ON o_id = l_o \
             WHERE EXISTS (SELECT 1 FROM l l2 WHERE l2.l_o = o_id AND l2.l_qty > l.l_qty) ORDER BY 1, 2",
        ] {
            assert_eq!(rows(&with, sql).await, rows(&without, sql).await, "{sql}");
        }
    }
}
