//! One hash table for a join whose probe side is far larger than its build
//! side.
//!
//! DataFusion collects a hash join's build side into one table (the probe
//! side then read where it lies, partition by partition) only when the
//! build side is estimated under `hash_join_single_partition_threshold`
//! (1 MiB) or `_rows` (128K rows). Any larger and it partitions the join:
//! both sides are hash-repartitioned on the key, so every probe row is
//! hashed and copied once more before the join sees it. In TPC-H q5 the
//! customer-orders rows (146K to 228K estimated, 118K to 227K in fact) are
//! joined with all 6M `lineitem` rows, and repartitioning `lineitem` costs
//! more than building one table of the orders does.
//!
//! [`CollectSmallBuild`] runs right after join selection (and
//! `build_side.rs`): a join DataFusion partitioned is collected when its
//! build side is estimated at most [`MAX_BUILD_ROWS`] rows and its probe
//! side at least [`PROBE_FACTOR`] times as many. It leaves a join alone
//! when a join or a grouped aggregate above it keys on a column of the same
//! name as one of its keys: the partitioned join's output is already
//! hash-partitioned on that key and is used as it is above (TPC-H q21's
//! semi and anti joins on `l_orderkey` over `orders ⋈ lineitem`), where
//! a collected join's output would have to be repartitioned again. Only
//! inner joins and joins whose output follows the probe side (right,
//! right semi, right anti) are collected, so no join needs state shared
//! across probe partitions that it did not need before.
//!
//! Not governance: the join compares the same keys in either mode, and
//! `veil bench tpch` gives its ungoverned run this rule too.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::{JoinType, Result};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::ExecutionPlan;

/// Most rows a build side may be estimated at to be collected.
pub const MAX_BUILD_ROWS: usize = 500_000;

/// How many times the build side's estimated rows the probe side must be
/// estimated at.
pub const PROBE_FACTOR: usize = 4;

/// The physical optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct CollectSmallBuild;

impl PhysicalOptimizerRule for CollectSmallBuild {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.optimizer.join_reordering || config.execution.target_partitions < 2 {
            return Ok(plan);
        }
        rewrite(plan, &HashSet::new())
    }

    fn name(&self) -> &str {
        "veil_collect_small_build"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with its qualifying joins collected; `keyed_above` holds the
/// names of the columns joins and aggregates above `plan` key on.
fn rewrite(
    plan: Arc<dyn ExecutionPlan>,
    keyed_above: &HashSet<String>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let own = keys(plan.as_ref());
    let keyed: HashSet<String> = keyed_above.iter().cloned().chain(own.clone()).collect();
    let children = plan
        .children()
        .into_iter()
        .map(|child| rewrite(Arc::clone(child), &keyed))
        .collect::<Result<Vec<_>>>()?;
    let plan = replace_children_if_necessary(plan, children)?;
    let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
        return Ok(plan);
    };
    let probe_driven = matches!(
        join.join_type(),
        JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
    );
    if !probe_driven
        || join.null_aware
        || *join.partition_mode() != PartitionMode::Partitioned
        || own.iter().any(|k| keyed_above.contains(k))
        || !probe_far_larger(join.left().as_ref(), join.right().as_ref())?
    {
        return Ok(plan);
    }
    Ok(Arc::new(
        join.builder()
            .with_partition_mode(PartitionMode::CollectLeft)
            .build()?,
    ))
}

/// Names of the plain columns `plan` keys on: a hash join's keys on both
/// sides, a grouped aggregate's group columns.
fn keys(plan: &dyn ExecutionPlan) -> Vec<String> {
    fn name(e: &Arc<dyn PhysicalExpr>) -> Option<String> {
        e.downcast_ref::<Column>().map(|c| c.name().to_string())
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        join.on()
            .iter()
            .flat_map(|(l, r)| [name(l), name(r)])
            .flatten()
            .collect()
    } else if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        aggregate
            .group_expr()
            .expr()
            .iter()
            .filter_map(|(e, _)| name(e))
            .collect()
    } else {
        Vec::new()
    }
}

/// Whether `build` is estimated at most [`MAX_BUILD_ROWS`] rows and
/// `probe` at least [`PROBE_FACTOR`] times as many. False when either has
/// no row estimate.
fn probe_far_larger(build: &dyn ExecutionPlan, probe: &dyn ExecutionPlan) -> Result<bool> {
    let context = StatisticsContext::new();
    let args = StatisticsArgs::new();
    let (b, p) = (
        context.compute(build, &args)?,
        context.compute(probe, &args)?,
    );
    let (Some(&build_rows), Some(&probe_rows)) = (b.num_rows.get_value(), p.num_rows.get_value())
    else {
        return Ok(false);
    };
    Ok(build_rows <= MAX_BUILD_ROWS && probe_rows >= build_rows.saturating_mul(PROBE_FACTOR))
}

#[cfg(test)]
mod tests {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::test_sql::{physical_plan, rows};

    /// Two partitions and no build side small enough for DataFusion to
    /// collect, so every hash join is partitioned; with or without the
    /// rule.
    async fn context(with_rule: bool) -> SessionContext {
        let mut config = SessionConfig::new().with_target_partitions(2);
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.hash_join_single_partition_threshold = 0;
        optimizer.hash_join_single_partition_threshold_rows = 0;
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        if with_rule {
            let at = rules
                .iter()
                .position(|r| r.name() == "join_selection")
                .map_or(rules.len(), |i| i + 1);
            rules.insert(at, Arc::new(CollectSmallBuild));
        }
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        for sql in [
            // 1,000 keys with a name; 20,000 facts on keys 0..=1999 (half
            // of them match no key).
            "CREATE TABLE dim AS SELECT v AS k, 'name ' || v AS n FROM generate_series(1, 1000) AS t(v)",
            "CREATE TABLE fact AS SELECT v % 2000 AS k, v AS x FROM generate_series(1, 20000) AS t(v)",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    /// The partition modes of the plan's hash joins, top first.
    async fn modes(ctx: &SessionContext, sql: &str) -> Vec<String> {
        let plan = physical_plan(ctx, sql).await;
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        shown
            .lines()
            .filter_map(|l| l.split("HashJoinExec: mode=").nth(1))
            .map(|rest| rest.split(',').next().unwrap_or("").to_string())
            .collect()
    }

    /// Every dim key joined to its facts, counted and summed (no filter,
    /// so the estimates are the tables' exact sizes).
    const JOIN: &str = "SELECT count(*) AS c, sum(f.x) AS s, min(d.n) AS n \
        FROM dim d JOIN fact f ON d.k = f.k";

    #[tokio::test]
    async fn a_small_build_side_against_a_large_probe_side_is_collected_with_the_same_rows() {
        let (plain, veil) = (context(false).await, context(true).await);
        assert_eq!(modes(&plain, JOIN).await, ["Partitioned"]);
        assert_eq!(modes(&veil, JOIN).await, ["CollectLeft"]);
        let answer = rows(&veil, JOIN).await;
        assert_eq!(rows(&plain, JOIN).await, answer);
        // Facts whose key (x % 2000) is one of 1..=1000: ten per key.
        let sum: i64 = (1..=20_000i64)
            .filter(|x| (1..=1000).contains(&(x % 2000)))
            .sum();
        assert!(
            answer.contains(&format!("| 10000 | {sum} | name 1 |")),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_join_whose_key_is_grouped_above_stays_partitioned() {
        // The aggregate groups by the join's key: the partitioned join's
        // output is already hash-partitioned on it.
        let sql = "SELECT f.k, count(*) AS c FROM dim d JOIN fact f ON d.k = f.k \
            GROUP BY f.k ORDER BY f.k";
        let (plain, veil) = (context(false).await, context(true).await);
        assert_eq!(modes(&veil, sql).await, ["Partitioned"]);
        let answer = rows(&veil, sql).await;
        assert_eq!(rows(&plain, sql).await, answer);
        // Keys 1..=1000, each held by 10 facts.
        assert!(answer.contains("| 1000 | 10 |"), "{answer}");
        assert_eq!(answer.lines().count(), 1000 + 4, "{answer}");
    }

    #[tokio::test]
    async fn outer_joins_keeping_build_rows_and_comparable_sides_stay_partitioned() {
        let (plain, veil) = (context(false).await, context(true).await);
        // A left join returns every dim row, matched or not: the build
        // side's unmatched rows.
        let left = "SELECT d.k, f.x FROM dim d LEFT JOIN fact f ON d.k = f.k AND f.x < 3 \
            ORDER BY d.k";
        assert_eq!(modes(&veil, left).await, ["Partitioned"]);
        let answer = rows(&veil, left).await;
        assert_eq!(rows(&plain, left).await, answer);
        assert!(answer.contains("| 2    | 2 |"), "{answer}");
        assert!(answer.contains("| 1000 |   |"), "{answer}");
        // 2,000 facts against 1,000 keys: not four times as many.
        let even = "SELECT d.n, f.x FROM dim d JOIN (SELECT * FROM fact ORDER BY x LIMIT 2000) f \
            ON d.k = f.k ORDER BY f.x";
        assert_eq!(modes(&veil, even).await, ["Partitioned"]);
        assert_eq!(rows(&plain, even).await, rows(&veil, even).await);
    }
}
