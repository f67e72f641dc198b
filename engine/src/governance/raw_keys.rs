//! Masked joins on raw keys: an equi-join whose two keys are the same
//! injective keyed mask (HASH or ENCRYPT under one key) of two columns of one
//! type compares the raw values instead of the tokens ([`RawKeyJoin`]), and
//! runs so that nothing about its output depends on those values
//! ([`RawKeyJoinMode`]).
//!
//! ```text
//!   Join on tok_a = tok_b                 Projection [join's columns]   (drops the raw keys)
//!     Projection [hash_k(a) AS tok_a]  =>   Join on raw_0 = raw_1
//!     Projection [hash_k(b) AS tok_b]         Projection [hash_k(a) AS tok_a, a AS raw_0]
//!                                             Projection [hash_k(b) AS tok_b, b AS raw_1]
//! ```
//!
//! Under one key, HASH and ENCRYPT give two values of one type equal tokens
//! exactly when the values are equal (canonical, type-tagged input;
//! [`veil_udfs::is_injective_mask`]), so the join matches the same pairs of
//! rows, NULLs included, and its result is the token join's result. What
//! changes is the cost: no key has to be masked to be joined, and a query
//! that does not return the keys masks nothing (TPC-H SF1 orders x customer
//! in a masked-joins project: 4.2x the ungoverned join before, see README).
//!
//! What it keeps:
//! - The raw columns exist only between the mask projections and the join's
//!   own projection right above it, under internal names SQL cannot name
//!   (the statement was resolved before the optimizer runs). No user
//!   expression reads them; only the join's key comparison does.
//! - Equal masks are equal UDFs, which compare equal only when their key
//!   handles do (project key and version, or source, column and version).
//!   Keys of two columns, two sources outside a project, two projects or two
//!   versions never compare equal, so masked keys that must not join still
//!   compare tokens and still match nothing.
//! - Output order and batch boundaries never depend on a raw key. A
//!   partitioned hash join sends each row to partition `hash(key) % n` with
//!   DataFusion's fixed, public hash seeds, and each partition's rows come
//!   out together. On raw keys, a user who may `SET target_partitions` could
//!   read `hash(raw) mod n` for several n off the batches, rebuild the hash
//!   and test guesses offline. [`RawKeyJoinMode`] therefore runs these joins
//!   as `CollectLeft`: one hash table of the build side, probe rows in their
//!   input order, no repartitioning on the key.
//! - The join's dynamic filter, the only way its key values travel, stops at
//!   the barrier: a barrier lets dynamic filters through only on columns it
//!   passes unmasked (`node.rs`), and a raw key is the raw value of a masked
//!   column. No operator above a barrier prints its values.
//! - Floats (0.0 and -0.0, NaNs share tokens), dictionaries and nested types
//!   keep the token join.
//!
//! GROUP BY: a partial aggregate may group raw values the same way, but
//! everything that places, sorts or spills groups by key must see tokens
//! (`raw_groups.rs`).

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Expr, Filter, Join, LogicalPlan, Projection, ScalarUDF, SubqueryAlias,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::ExecutionPlan;
use veil_udfs::is_injective_mask;

/// Prefix of the raw key columns this rule adds.
const RAW_KEY: &str = "__veil_raw_key_";

/// The logical optimizer rule (see the module docs).
#[derive(Debug, Default)]
pub struct RawKeyJoin;

/// The physical optimizer rule, run right after DataFusion's join
/// selection: hash joins on raw keys run as `CollectLeft` (see the module
/// docs).
#[derive(Debug, Default)]
pub struct RawKeyJoinMode;

/// Types whose equality is exactly equality of their canonical mask input
/// (`veil_udfs` canonical.rs: integers and bytes as they are, the others as
/// their full-precision text). Left out: floats, Date64 (its text drops the
/// time of day a value may carry), fixed-size binary (no text form) and
/// every nested or dictionary type.
pub(crate) fn raw_comparable(t: &DataType) -> bool {
    use DataType::*;
    t.is_integer()
        || matches!(
            t,
            Utf8 | LargeUtf8
                | Utf8View
                | Binary
                | LargeBinary
                | BinaryView
                | Boolean
                | Date32
                | Time32(_)
                | Time64(_)
                | Timestamp(..)
                | Decimal128(..)
                | Decimal256(..)
        )
}

/// One side's key, exposed: the rebuilt input, the raw column in it, and
/// the mask the original key was.
struct Exposed {
    plan: LogicalPlan,
    raw: Column,
    mask: Arc<ScalarUDF>,
    raw_type: DataType,
}

/// Gives a fresh raw key name; called only once a mask is found.
type NameFn<'a> = dyn FnMut() -> Result<String> + 'a;

/// Rebuilds `plan` so that it also outputs, under a fresh name, the raw
/// input of the mask that produces `col`; None when `col` is not an
/// injective mask of a plain column reached through nodes that pass columns
/// through.
fn expose(plan: &LogicalPlan, col: &Column, name: &mut NameFn) -> Result<Option<Exposed>> {
    let Ok(i) = plan.schema().index_of_column(col) else {
        return Ok(None);
    };
    match plan {
        LogicalPlan::Projection(p) => {
            let Some(expr) = p.expr.get(i) else {
                return Ok(None);
            };
            let found = match expr.clone().unalias() {
                Expr::ScalarFunction(ScalarFunction { func, args }) if is_injective_mask(&func) => {
                    let [Expr::Column(raw)] = args.as_slice() else {
                        return Ok(None);
                    };
                    let raw_type = p
                        .input
                        .schema()
                        .qualified_field_from_column(raw)?
                        .1
                        .data_type()
                        .clone();
                    Some((Expr::Column(raw.clone()), name()?, func, raw_type, None))
                }
                Expr::Column(inner) => expose(&p.input, &inner, name)?.map(|e| {
                    let n = e.raw.name.clone();
                    (Expr::Column(e.raw), n, e.mask, e.raw_type, Some(e.plan))
                }),
                _ => None,
            };
            let Some((raw, name, mask, raw_type, input)) = found else {
                return Ok(None);
            };
            let mut exprs = p.expr.clone();
            exprs.push(raw.alias(&name));
            let input = input.map(Arc::new).unwrap_or_else(|| Arc::clone(&p.input));
            Ok(Some(Exposed {
                plan: LogicalPlan::Projection(Projection::try_new(exprs, input)?),
                raw: Column::new_unqualified(name),
                mask,
                raw_type,
            }))
        }
        LogicalPlan::Filter(f) => {
            let Some(e) = expose(&f.input, col, name)? else {
                return Ok(None);
            };
            let plan = Filter::try_new(f.predicate.clone(), Arc::new(e.plan))?;
            Ok(Some(Exposed {
                plan: LogicalPlan::Filter(plan),
                ..e
            }))
        }
        LogicalPlan::SubqueryAlias(s) => {
            let inner = Column::from(s.input.schema().qualified_field(i));
            let Some(e) = expose(&s.input, &inner, name)? else {
                return Ok(None);
            };
            let plan = SubqueryAlias::try_new(Arc::new(e.plan), s.alias.clone())?;
            Ok(Some(Exposed {
                plan: LogicalPlan::SubqueryAlias(plan),
                raw: Column::new(Some(s.alias.clone()), e.raw.name.clone()),
                ..e
            }))
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().has_column(col);
            let side = if left { &j.left } else { &j.right };
            let Some(e) = expose(side, col, name)? else {
                return Ok(None);
            };
            let exposed = Arc::new(e.plan);
            let (l, r) = if left {
                (exposed, Arc::clone(&j.right))
            } else {
                (Arc::clone(&j.left), exposed)
            };
            let plan = rebuild_join(j, l, r, j.on.clone())?;
            Ok(Some(Exposed {
                plan: LogicalPlan::Join(plan),
                ..e
            }))
        }
        _ => Ok(None),
    }
}

fn rebuild_join(
    j: &Join,
    left: Arc<LogicalPlan>,
    right: Arc<LogicalPlan>,
    on: Vec<(Expr, Expr)>,
) -> Result<Join> {
    Join::try_new(
        left,
        right,
        on,
        j.filter.clone(),
        j.join_type,
        j.join_constraint,
        j.null_equality,
        j.null_aware,
    )
}

/// Raw key names unique under one plan: no field anywhere under it has one.
#[derive(Default)]
struct FreshNames {
    taken: Option<HashSet<String>>,
    next: usize,
}

impl FreshNames {
    fn next(&mut self, plan: &LogicalPlan) -> Result<String> {
        if self.taken.is_none() {
            let mut names = HashSet::new();
            plan.apply(|p| {
                names.extend(p.schema().fields().iter().map(|f| f.name().clone()));
                Ok(TreeNodeRecursion::Continue)
            })?;
            self.taken = Some(names);
        }
        loop {
            let name = format!("{RAW_KEY}{}", self.next);
            self.next += 1;
            if !self.taken.as_ref().is_some_and(|t| t.contains(&name)) {
                return Ok(name);
            }
        }
    }
}

impl OptimizerRule for RawKeyJoin {
    fn name(&self) -> &str {
        "veil_raw_key_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let (mut left, mut right) = (Arc::clone(&join.left), Arc::clone(&join.right));
        let mut on = join.on.clone();
        let mut names = FreshNames::default();
        let mut changed = false;
        for pair in on.iter_mut() {
            let (Expr::Column(l), Expr::Column(r)) = &*pair else {
                continue;
            };
            let mut name = || names.next(&plan);
            let Some(le) = expose(&left, l, &mut name)? else {
                continue;
            };
            let Some(re) = expose(&right, r, &mut name)? else {
                continue;
            };
            if le.mask != re.mask || le.raw_type != re.raw_type || !raw_comparable(&le.raw_type) {
                continue;
            }
            *pair = (Expr::Column(le.raw), Expr::Column(re.raw));
            (left, right) = (Arc::new(le.plan), Arc::new(re.plan));
            changed = true;
        }
        if !changed {
            return Ok(Transformed::no(plan));
        }
        let rebuilt = rebuild_join(join, left, right, on)?;
        let columns = join
            .schema
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        Ok(Transformed::yes(LogicalPlan::Projection(
            Projection::try_new(columns, Arc::new(LogicalPlan::Join(rebuilt)))?,
        )))
    }
}

/// Whether `plan` has a hash join on raw keys: such a statement runs with
/// every join hashing its keys (`join_arrays::hash_only`), because an array
/// indexed by key would take memory, and time to clear, in proportion to
/// the range of the raw values.
pub(crate) fn joins_raw_keys(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.exists(|p| {
        let any: &dyn Any = p.as_ref();
        Ok(any.downcast_ref::<HashJoinExec>().is_some_and(|join| {
            join.on()
                .iter()
                .any(|(l, r)| is_raw_key(l) || is_raw_key(r))
        }))
    })
    // Cannot fail; if it did, hash every join.
    .unwrap_or(true)
}

/// Whether a logical plan (subqueries included) joins on raw keys, for
/// the statements DataFusion plans and runs in one call (workspace writes).
pub(crate) fn plan_joins_raw_keys(plan: &LogicalPlan) -> bool {
    let raw = |e: &Expr| matches!(e, Expr::Column(c) if c.name.starts_with(RAW_KEY));
    let mut found = false;
    let walked = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::Join(join) = p {
            found |= join.on.iter().any(|(l, r)| raw(l) || raw(r));
        }
        Ok(match found {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    });
    found || walked.is_err()
}

fn is_raw_key(e: &Arc<dyn PhysicalExpr>) -> bool {
    let any: &dyn Any = e.as_ref();
    any.downcast_ref::<PhysicalColumn>()
        .is_some_and(|c| c.name().starts_with(RAW_KEY))
}

impl PhysicalOptimizerRule for RawKeyJoinMode {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            let any: &dyn Any = p.as_ref();
            let Some(join) = any.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(p));
            };
            let raw = join
                .on()
                .iter()
                .any(|(l, r)| is_raw_key(l) || is_raw_key(r));
            if !raw || *join.partition_mode() == PartitionMode::CollectLeft {
                return Ok(Transformed::no(p));
            }
            let collect_left = join
                .builder()
                .with_partition_mode(PartitionMode::CollectLeft)
                .build()?;
            Ok(Transformed::yes(
                Arc::new(collect_left) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "veil_raw_key_join_mode"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
