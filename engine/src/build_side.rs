//! The build side of a semi or anti hash join by estimated size in bytes.
//!
//! DataFusion's join selection builds the hash table on the side it
//! estimates smaller in memory: it compares the two sides'
//! `total_byte_size` and, when either side has none (every join output
//! and every aggregate), their row counts. Row counts ignore how wide a row
//! is, and the row estimate of a filtered aggregate is a 20 % guess. TPC-H
//! q18 shows both: `o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP
//! BY l_orderkey HAVING sum(l_quantity) > 300)` is estimated at 1.2M keys
//! (57 in fact) against the customer-orders rows it filters. Unrestricted,
//! those are 1.5M rows and the keys are built; a row policy on customer
//! leaves 661K (an accurate estimate), so the semi join built a 661K-row,
//! five-column hash table to look up 57 keys, and the query ran 10-40 %
//! slower than without governance.
//!
//! [`SmallerBuildSide`] runs right after join selection and applies
//! DataFusion's own comparison with the missing sizes filled in: a side
//! without `total_byte_size` is estimated at its rows times the width of
//! its row (fixed-width types at their width, variable-width ones at
//! [`VARIABLE_WIDTH`] bytes), and both sides are measured that way when
//! either lacks a size. It only swaps semi and anti joins that DataFusion
//! partitioned: their output is the same rows whichever side is built, the
//! partitioned mode needs no other change, and a side small enough to be
//! collected is not worth moving. Null-aware anti joins (`NOT IN`) keep
//! their sides, as DataFusion requires.
//!
//! Not governance: `veil bench tpch` gives its ungoverned run this rule
//! too, so the runs differ by governance alone. It moves no expression and
//! reads no value: the join compares the same keys.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{JoinType, Result};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::ExecutionPlan;

use crate::collect_build::CollectSmallBuild;

/// Bytes a value of a variable-width type (strings, binary, nested) is
/// taken to hold.
pub const VARIABLE_WIDTH: usize = 24;

/// The physical optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct SmallerBuildSide;

/// DataFusion's default physical rules with [`SmallerBuildSide`] and
/// [`CollectSmallBuild`] (collect_build.rs) right after join selection and
/// `then` right after them.
pub fn physical_rules(
    then: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map(|i| i + 1)
        .unwrap_or(rules.len());
    let mut after: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> =
        vec![Arc::new(SmallerBuildSide), Arc::new(CollectSmallBuild)];
    after.extend(then);
    rules.splice(at..at, after);
    rules
}

impl PhysicalOptimizerRule for SmallerBuildSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.optimizer.join_reordering {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let semi_or_anti = matches!(
                join.join_type(),
                JoinType::LeftSemi | JoinType::RightSemi | JoinType::LeftAnti | JoinType::RightAnti
            );
            if !semi_or_anti
                || join.null_aware
                || *join.partition_mode() != PartitionMode::Partitioned
                || !build_is_larger(join.left().as_ref(), join.right().as_ref())?
            {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                join.swap_inputs(PartitionMode::Partitioned)?,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "veil_smaller_build_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `build` is estimated larger than `probe` in bytes, when
/// DataFusion could not compare their sizes (see the module docs). False
/// when either side has no row estimate.
fn build_is_larger(build: &dyn ExecutionPlan, probe: &dyn ExecutionPlan) -> Result<bool> {
    let context = StatisticsContext::new();
    let args = StatisticsArgs::new();
    let (b, p) = (
        context.compute(build, &args)?,
        context.compute(probe, &args)?,
    );
    if b.total_byte_size.get_value().is_some() && p.total_byte_size.get_value().is_some() {
        // DataFusion compared these sizes itself.
        return Ok(false);
    }
    let (Some(build_rows), Some(probe_rows)) = (b.num_rows.get_value(), p.num_rows.get_value())
    else {
        return Ok(false);
    };
    let bytes = |rows: usize, schema: &Schema| rows.saturating_mul(row_width(schema));
    Ok(bytes(*build_rows, &build.schema()) > bytes(*probe_rows, &probe.schema()))
}

/// Estimated bytes of one row of `schema`.
fn row_width(schema: &Schema) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(VARIABLE_WIDTH))
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::test_sql::{physical_plan, rows};

    /// Two partitions and no collected build sides, so every hash join is
    /// partitioned; with or without the rule.
    async fn context(with_rule: bool) -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(2);
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold = 0;
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold_rows = 0;
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if with_rule {
            builder = builder.with_physical_optimizer_rules(physical_rules(vec![]));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        for sql in [
            // 1,000 wide rows: a key, numbers and strings.
            "CREATE TABLE wide AS SELECT v AS k, v * 2 AS a, 'name ' || v AS n, \
             'street ' || v AS s, CASE WHEN v % 7 = 0 THEN NULL ELSE v END AS nk \
             FROM generate_series(1, 1000) AS t(v)",
            // 5,000 narrow rows: keys 2..=1000 and 1002..=2000 twice, 1 and
            // 1001 never (NULL instead), 4001..=5000 once.
            "CREATE TABLE narrow AS SELECT CASE WHEN v % 1000 = 0 THEN NULL \
             WHEN v <= 4000 THEN v % 2000 + 1 ELSE v END AS k FROM generate_series(1, 5000) AS t(v)",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    /// The semi or anti hash join's type and its build side's first column.
    async fn semi_join(ctx: &SessionContext, sql: &str) -> String {
        let plan = physical_plan(ctx, sql).await;
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        let line = shown
            .lines()
            .find(|l| l.contains("HashJoinExec") && (l.contains("Semi") || l.contains("Anti")))
            .unwrap_or_else(|| panic!("no semi or anti join in\n{shown}"));
        let kind = ["LeftSemi", "RightSemi", "LeftAnti", "RightAnti"]
            .into_iter()
            .find(|k| line.contains(&format!("join_type={k}")))
            .unwrap_or_else(|| panic!("{line}"));
        kind.to_string()
    }

    /// The 1,000 wide rows joined to themselves (no size in bytes, as
    /// every join output) whose key is held more than once: the keys are
    /// estimated at 5,000 rows, so DataFusion builds on the wide rows.
    const WIDE_IN_KEYS: &str = "SELECT w.k, w.a, w.n, x.s FROM wide w JOIN wide x ON w.k = x.k \
        WHERE w.k IN (SELECT k FROM narrow GROUP BY k HAVING count(*) > 1) ORDER BY w.k";

    #[tokio::test]
    async fn semi_join_builds_on_the_narrow_keys_instead_of_the_wide_rows() {
        let (plain, veil) = (context(false).await, context(true).await);
        assert_eq!(semi_join(&plain, WIDE_IN_KEYS).await, "LeftSemi");
        // 1,000 x (8 + 8 + 24 + 24) bytes against 5,000 x 8: the keys.
        assert_eq!(semi_join(&veil, WIDE_IN_KEYS).await, "RightSemi");
        let (before, after) = (
            rows(&plain, WIDE_IN_KEYS).await,
            rows(&veil, WIDE_IN_KEYS).await,
        );
        assert_eq!(before, after);
        assert!(
            after.contains("| 1000 | 2000 | name 1000 | street 1000 |"),
            "{after}"
        );
        assert!(!after.contains("| 1    |"), "{after}");
        assert_eq!(after.lines().count(), 999 + 4, "{after}");
    }

    #[tokio::test]
    async fn anti_join_swaps_with_the_same_rows() {
        let sql = "SELECT w.k, w.a, x.n, x.s FROM wide w JOIN wide x ON w.k = x.k WHERE NOT EXISTS \
            (SELECT 1 FROM (SELECT k FROM narrow GROUP BY k HAVING count(*) > 1) d WHERE d.k = w.k) \
            ORDER BY w.k";
        let (plain, veil) = (context(false).await, context(true).await);
        assert_eq!(semi_join(&plain, sql).await, "LeftAnti");
        assert_eq!(semi_join(&veil, sql).await, "RightAnti");
        let after = rows(&veil, sql).await;
        assert_eq!(rows(&plain, sql).await, after);
        // Only key 1 is not held twice.
        assert!(after.contains("| 1 | 2 | name 1 | street 1 |"), "{after}");
        assert_eq!(after.lines().count(), 1 + 4, "{after}");
    }

    #[tokio::test]
    async fn narrow_build_sides_and_not_in_keep_their_sides() {
        let (plain, veil) = (context(false).await, context(true).await);
        // A narrow build side: 1,000 x 8 bytes against 5,000 x 8.
        let narrow = "SELECT w.k FROM wide w JOIN wide x ON w.k = x.k WHERE w.k IN \
            (SELECT k FROM narrow GROUP BY k HAVING count(*) > 1) ORDER BY w.k";
        assert_eq!(semi_join(&veil, narrow).await, "LeftSemi");
        assert_eq!(rows(&plain, narrow).await, rows(&veil, narrow).await);
        // NOT IN with NULLs among the keys: no row (SQL's three-valued
        // logic). DataFusion's null-aware join collects its one build side,
        // the wider, and keeps it.
        let not_in = "SELECT w.k, w.a, x.n, x.s FROM wide w JOIN wide x ON w.k = x.k \
            WHERE w.nk NOT IN (SELECT k FROM narrow) ORDER BY w.k";
        assert_eq!(semi_join(&veil, not_in).await, "LeftAnti");
        let answer = rows(&veil, not_in).await;
        assert_eq!(rows(&plain, not_in).await, answer);
        assert_eq!(answer.lines().count(), 2, "{answer}");
    }
}
