//! GROUP BY on raw keys: a partial aggregate that groups by a column the mask
//! projection right below it computes as an injective keyed mask (HASH or
//! ENCRYPT) groups by the raw column instead, and the group keys it emits
//! are masked right above it ([`RawKeyGroup`]).
//!
//! ```text
//!   Aggregate Final [tok]                 Aggregate Final [tok]
//!     Repartition Hash(tok)                 Repartition Hash(tok)
//!       Aggregate Partial [tok]      =>       Projection [hash_k(tok) AS tok, states]
//!         Projection [hash_k(a) AS tok]         Aggregate Partial [tok]        (raw values)
//!                                                 Projection [a AS tok]
//! ```
//!
//! Under one key, HASH and ENCRYPT give two values of one type equal tokens
//! exactly when the values are equal (the same argument as for joins,
//! `raw_keys.rs`), so grouping the raw values forms the same groups, NULL
//! included, and masking each group's key gives the token the row would
//! have had. What changes is the cost: a 3-value column of 6M rows is masked
//! once per group and partition instead of once per row, and grouped on its
//! short raw values instead of 32-char tokens (README, "Benchmarks").
//!
//! What it keeps:
//! - Only the partial aggregate sees raw values, and it only compares them
//!   for equality. Its output is the token grouping's output: groups come out
//!   in the order they are first seen in its input (an injective mask keeps
//!   that order), and it never sorts or spills by its keys (under memory
//!   pressure a partial aggregate emits what it has, in the same order).
//! - Everything that places, sorts or spills groups by key works on tokens:
//!   the repartitioning above hashes tokens, and the final aggregate, which
//!   may spill runs sorted by its key, groups tokens. A single-partition
//!   aggregate (`Single`, which may spill) is split into `Partial` on raw
//!   values and `Final` on tokens for that reason.
//! - Only grouping columns that no aggregate, aggregate filter or other
//!   grouping expression reads are rewritten, and only from the types a
//!   masked join may compare raw ([`super::raw_keys::raw_comparable`]).
//!   Aggregates with a limit (top-k by key or value) or an ordering, grouping
//!   sets and pre-sorted input keep grouping tokens.
//!
//! Known difference, reviewed: a partial aggregate under memory pressure
//! emits early when its table outgrows its reservation, and raw values are
//! not all as long as tokens, so when it emits can depend on the raw values'
//! total size. Only batch boundaries of intermediate output change; the
//! final aggregate's result is the same.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::{ExecutionPlan, InputOrderMode};
use veil_udfs::is_injective_mask;

use super::raw_keys::raw_comparable;

/// The physical optimizer rule (see the module docs). Runs last, right
/// before DataFusion's sanity check, so no later rule reshapes its output.
#[derive(Debug, Default)]
pub struct RawKeyGroup;

impl PhysicalOptimizerRule for RawKeyGroup {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        super::rewrite_nodes(plan, rewrite)
    }

    fn name(&self) -> &str {
        "veil_raw_key_group"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The rewritten aggregate, or `None` where it does not apply.
fn rewrite(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let any: &dyn Any = plan.as_ref();
    let Some(agg) = any.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if !matches!(agg.mode(), AggregateMode::Partial | AggregateMode::Single)
        || !agg.group_expr().is_single()
        || agg.group_expr().is_empty()
        || agg.limit_options().is_some()
        || *agg.input_order_mode() != InputOrderMode::Linear
        || agg.aggr_expr().iter().any(|a| !a.order_bys().is_empty())
    {
        return Ok(None);
    }
    let any: &dyn Any = agg.input().as_ref();
    let Some(projection) = any.downcast_ref::<ProjectionExec>() else {
        return Ok(None);
    };
    let below = projection.input().schema();

    // Columns of the projection read by anything but a plain grouping column.
    let group = agg.group_expr().expr();
    let mut read: HashSet<usize> = HashSet::new();
    let plain = |e: &Arc<dyn PhysicalExpr>| {
        let any: &dyn Any = e.as_ref();
        any.downcast_ref::<Column>().map(Column::index)
    };
    let others = agg
        .aggr_expr()
        .iter()
        .flat_map(|a| a.expressions())
        .chain(agg.filter_expr().iter().flatten().cloned())
        .chain(
            group
                .iter()
                .filter(|(e, _)| plain(e).is_none())
                .map(|(e, _)| Arc::clone(e)),
        );
    for e in others {
        read.extend(collect_columns(&e).iter().map(Column::index));
    }

    // Projection columns that are an injective mask of a raw column and
    // that only the grouping reads, with their mask.
    let mut exprs: Vec<ProjectionExpr> = projection.expr().to_vec();
    let mut masks: HashMap<usize, Arc<dyn PhysicalExpr>> = HashMap::new();
    for (e, _) in group {
        let Some(index) = plain(e).filter(|i| !read.contains(i) && !masks.contains_key(i)) else {
            continue;
        };
        let Some(slot) = exprs.get_mut(index) else {
            continue;
        };
        let mask = Arc::clone(&slot.expr);
        let any: &dyn Any = mask.as_ref();
        let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() else {
            continue;
        };
        let [arg] = f.args() else {
            continue;
        };
        if !is_injective_mask(f.fun())
            || plain(arg).is_none()
            || !raw_comparable(&arg.data_type(&below)?)
        {
            continue;
        }
        slot.expr = Arc::clone(arg);
        masks.insert(index, mask);
    }
    if masks.is_empty() {
        return Ok(None);
    }

    let raw_input: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(
        exprs,
        Arc::clone(projection.input()),
    )?);
    let partial = AggregateExec::try_new(
        AggregateMode::Partial,
        agg.group_expr().clone(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        raw_input,
        agg.input_schema(),
    )?;
    if *partial.input_order_mode() != InputOrderMode::Linear {
        return Ok(None);
    }
    let partial: Arc<dyn ExecutionPlan> = Arc::new(partial);

    // Mask each group key the partial aggregate emits (its first columns,
    // in grouping order); pass the rest through.
    let schema = partial.schema();
    let mut outputs = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), i));
        let mask = group
            .get(i)
            .and_then(|(e, _)| plain(e))
            .and_then(|index| masks.get(&index));
        let expr = match mask {
            Some(mask) => Arc::clone(mask).with_new_children(vec![column])?,
            None => column,
        };
        outputs.push(ProjectionExpr {
            expr,
            alias: field.name().clone(),
        });
    }
    let tokens: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(outputs, partial)?);

    let new: Arc<dyn ExecutionPlan> = match agg.mode() {
        AggregateMode::Single => Arc::new(AggregateExec::try_new(
            AggregateMode::Final,
            agg.group_expr().as_final(),
            agg.aggr_expr().to_vec(),
            agg.filter_expr().to_vec(),
            tokens,
            agg.input_schema(),
        )?),
        _ => tokens,
    };
    // The same columns as before, or no rewrite.
    let (was, is) = (agg.schema(), new.schema());
    let same = was.fields().len() == is.fields().len()
        && was.fields().iter().zip(is.fields()).all(|(x, y)| {
            x.name() == y.name()
                && x.data_type() == y.data_type()
                && x.is_nullable() == y.is_nullable()
        });
    if !same {
        return Ok(None);
    }
    Ok(Some(new))
}
