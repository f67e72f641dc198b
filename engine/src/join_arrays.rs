//! Hash joins on one integer key over a range of up to 8Mi values index
//! their build side by key instead of hashing it.
//!
//! DataFusion's hash join can keep its build side in an array indexed by
//! `key - min` (`ArrayMap`): a probe row is then one load, where the hash
//! table computes a hash, walks a bucket and compares keys. DataFusion
//! builds that array only when the keys span fewer than 1,024 values or
//! fill at least 15 % of their range, so TPC-H's order keys (6M values at
//! scale 1), probed by millions of `lineitem` rows, were hashed: q4 spent
//! 22 % of its CPU in 3.8M probes of 57K orders. [`configure`] raises the
//! range below which the array is built to [`ARRAY_JOIN_RANGE`]: at most
//! 32 MiB (4 bytes per value of the range), reserved from the statement's
//! memory pool as the hash table is. Past that range, and for keys of
//! other types or several keys, the join hashes as before; answers are
//! DataFusion's either way.
//!
//! The array costs its range in memory to clear, whatever the number of
//! rows: 15K scattered order keys per partition made q12's build 16 ms
//! slower while its probes got 4 ms faster. Over the whole suite the
//! probes win (README, "found and fixed" (27)).

use datafusion::prelude::SessionConfig;

/// The key range (max - min) below which a hash join builds an array.
pub const ARRAY_JOIN_RANGE: usize = 8 << 20;

/// Sets the range below which hash joins index their build side by key.
pub fn configure(config: &mut SessionConfig) {
    config
        .options_mut()
        .execution
        .perfect_hash_join_small_build_threshold = ARRAY_JOIN_RANGE;
}

/// Every hash join hashes its keys, whatever their range: for statements
/// that join masked columns on their raw values (`governance/raw_keys.rs`),
/// where an array's size, and the time to clear it, would follow the range
/// of values the user may only see as tokens.
pub fn hash_only(config: &mut SessionConfig) {
    let execution = &mut config.options_mut().execution;
    execution.perfect_hash_join_small_build_threshold = 0;
    execution.perfect_hash_join_min_key_density = f64::INFINITY;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::{collect, ExecutionPlan};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::governance::raw_keys::{joins_raw_keys, plan_joins_raw_keys};
    use crate::test_sql::physical_plan;

    /// 1,000 dimension keys spread over 0..4M (a range of 4M values, filled
    /// to 0.025 %), and 200,000 facts over the same range, in columns named
    /// `key`.
    async fn ctx(config: SessionConfig, key: &str) -> SessionContext {
        let ctx = SessionContext::new_with_config(config.with_target_partitions(2));
        for (name, rows, step) in [("dim", 1_000, 4_000), ("fact", 200_000, 20)] {
            let schema = Arc::new(Schema::new(vec![
                Field::new(key, DataType::Int64, false),
                Field::new("v", DataType::Int64, false),
            ]));
            let keys = Int64Array::from_iter_values((0..rows).map(|i| i * step));
            let vals = Int64Array::from_iter_values(0..rows);
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(keys), Arc::new(vals)])
                    .unwrap();
            let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        ctx
    }

    fn arrays_built(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut built = plan
            .metrics()
            .and_then(|m| m.sum_by_name("array_map_created_count"))
            .map_or(0, |v| v.as_usize());
        for child in plan.children() {
            built += arrays_built(child);
        }
        built
    }

    #[tokio::test]
    async fn a_join_over_a_sparse_range_under_8mi_values_builds_an_array_with_the_same_answer() {
        let sql = "SELECT count(*), sum(fact.v), sum(dim.v) FROM fact JOIN dim ON fact.k = dim.k";
        let mut answers = Vec::new();
        for arrays in [false, true] {
            let mut config = SessionConfig::new();
            if arrays {
                configure(&mut config);
            }
            let ctx = ctx(config, "k").await;
            let logical = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
            assert!(!plan_joins_raw_keys(&logical));
            let plan = physical_plan(&ctx, sql).await;
            assert!(!joins_raw_keys(&plan));
            let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
            assert_eq!(arrays_built(&plan) > 0, arrays, "arrays: {arrays}");
            answers.push(
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(answers[0], answers[1]);
        // Every 200th fact (k a multiple of 4,000 below 4M) has its dimension.
        assert!(answers[1].contains("| 1000 "), "{}", answers[1]);
    }

    /// A join on raw keys (columns named as `raw_keys.rs` names them) is
    /// recognized, and under `hash_only` builds no array even for keys
    /// whose range is small, with the same answer.
    #[tokio::test]
    async fn a_join_on_raw_keys_hashes_them_whatever_their_range() {
        let sql = "SELECT count(*), sum(fact.v) FROM fact JOIN dim \
                   ON fact.__veil_raw_key_0 = dim.__veil_raw_key_0";
        let mut answers = Vec::new();
        for hashing in [false, true] {
            let mut config = SessionConfig::new();
            configure(&mut config);
            if hashing {
                hash_only(&mut config);
            }
            let ctx = ctx(config, "__veil_raw_key_0").await;
            let logical = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
            assert!(plan_joins_raw_keys(&logical));
            let plan = physical_plan(&ctx, sql).await;
            assert!(joins_raw_keys(&plan));
            let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
            assert_eq!(arrays_built(&plan) > 0, !hashing, "hash only: {hashing}");
            answers.push(
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(answers[0], answers[1]);
    }
}
