//! Masked keys compared raw: an equi-join whose two keys are the same
//! injective keyed mask (HASH or ENCRYPT under one key) of two columns of one
//! type compares the raw values instead of the tokens ([`RawKeyJoin`]), and
//! a GROUP BY on such a mask groups the raw values and masks each group's key
//! once ([`RawKeyGroup`]).
//!
//! ```text
//!   Join on tok_a = tok_b                 Projection [join's columns]   (drops the raw keys)
//!     Projection [hash_k(a) AS tok_a]  =>   Join on raw_0 = raw_1
//!     Projection [hash_k(b) AS tok_b]         Projection [hash_k(a) AS tok_a, a AS raw_0]
//!                                             Projection [hash_k(b) AS tok_b, b AS raw_1]
//!
//!   Aggregate by tok_a: count(*)          Projection [hash_k(raw_0) AS tok_a, count(*)]
//!     Projection [hash_k(a) AS tok_a]  =>   Aggregate by raw_0: count(*)
//!                                             Projection [hash_k(a) AS tok_a, a AS raw_0]
//! ```
//!
//! Under one key, HASH and ENCRYPT give two values of one type equal tokens
//! exactly when the values are equal (canonical, type-tagged input;
//! [`veil_udfs::is_injective_mask`]), so the join matches the same pairs of
//! rows, NULLs included, and the groups hold the same rows; the results are
//! the token results. What changes is the cost: no key has to be masked to
//! be joined, a query that does not return the keys masks nothing, and a
//! GROUP BY masks one key per group (TPC-H SF1 orders x customer in a
//! masked-joins project was 4.2x the ungoverned join; 6M rows grouped by a
//! 3-value HASHed column 2.8x the raw grouping; see README).
//!
//! What it keeps:
//! - The raw columns exist only between the mask projections and the join or
//!   aggregate, under internal names SQL cannot name (the statement was
//!   resolved before the optimizer runs). No user expression reads them; only
//!   the key comparison does, and what leaves the join or aggregate is
//!   tokens (the join drops the raw keys, the aggregate masks them).
//! - Equal masks are equal UDFs, which compare equal only when their key
//!   handles do (project key and version, or source, column and version).
//!   Keys of two columns, two sources outside a project, two projects or two
//!   versions never compare equal, so masked keys that must not join still
//!   compare tokens and still match nothing.
//! - The join's dynamic filter, the only way its key values travel, stops at
//!   the barrier like any physical filter pushdown (`node.rs`), and no
//!   operator above a barrier prints its values.
//! - Floats (0.0 and -0.0, NaNs share tokens), dictionaries and nested types
//!   keep the token comparison.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, Join, LogicalPlan, Projection, ScalarUDF, SubqueryAlias,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use veil_udfs::is_injective_mask;

/// Prefix of the raw key columns this rule adds.
const RAW_KEY: &str = "__veil_raw_key_";

/// The optimizer rule (see the module docs).
#[derive(Debug, Default)]
pub struct RawKeyJoin;

/// Types whose equality is exactly equality of their canonical mask input.
fn joinable(t: &DataType) -> bool {
    use DataType::*;
    t.is_integer()
        || matches!(
            t,
            Utf8 | LargeUtf8
                | Utf8View
                | Binary
                | LargeBinary
                | BinaryView
                | FixedSizeBinary(_)
                | Boolean
                | Date32
                | Date64
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

/// Rebuilds `plan` so that it also outputs, under `name`, the raw input of
/// the mask that produces `col`; None when `col` is not an injective mask of
/// a plain column reached through nodes that pass columns through.
fn expose(plan: &LogicalPlan, col: &Column, name: &str) -> Result<Option<Exposed>> {
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
                    Some((Expr::Column(raw.clone()), func, raw_type, None))
                }
                Expr::Column(inner) => expose(&p.input, &inner, name)?
                    .map(|e| (Expr::Column(e.raw), e.mask, e.raw_type, Some(e.plan))),
                _ => None,
            };
            let Some((raw, mask, raw_type, input)) = found else {
                return Ok(None);
            };
            let mut exprs = p.expr.clone();
            exprs.push(raw.alias(name));
            let input = input.map(Arc::new).unwrap_or_else(|| Arc::clone(&p.input));
            Ok(Some(Exposed {
                plan: LogicalPlan::Projection(Projection::try_new(exprs, input)?),
                raw: Column::new_unqualified(name),
                mask,
                raw_type,
            }))
        }
        LogicalPlan::Filter(f) => Ok(expose(&f.input, col, name)?
            .map(|e| {
                Ok::<_, datafusion::error::DataFusionError>(Exposed {
                    plan: LogicalPlan::Filter(Filter::try_new(
                        f.predicate.clone(),
                        Arc::new(e.plan),
                    )?),
                    ..e
                })
            })
            .transpose()?),
        LogicalPlan::SubqueryAlias(s) => {
            let inner = Column::from(s.input.schema().qualified_field(i));
            let Some(e) = expose(&s.input, &inner, name)? else {
                return Ok(None);
            };
            let plan = SubqueryAlias::try_new(Arc::new(e.plan), s.alias.clone())?;
            Ok(Some(Exposed {
                plan: LogicalPlan::SubqueryAlias(plan),
                raw: Column::new(Some(s.alias.clone()), name),
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
            let (l_name, r_name) = (names.next(&plan)?, names.next(&plan)?);
            let Some(le) = expose(&left, l, &l_name)? else {
                continue;
            };
            let Some(re) = expose(&right, r, &r_name)? else {
                continue;
            };
            if le.mask != re.mask || le.raw_type != re.raw_type || !joinable(&le.raw_type) {
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

/// The GROUP BY rule (see the module docs).
#[derive(Debug, Default)]
pub struct RawKeyGroup;

impl OptimizerRule for RawKeyGroup {
    fn name(&self) -> &str {
        "veil_raw_key_group"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let mut input = Arc::clone(&agg.input);
        let mut group = agg.group_expr.clone();
        let mut masks: Vec<Option<Arc<ScalarUDF>>> = vec![None; group.len()];
        let mut names = FreshNames::default();
        for (g, mask) in group.iter_mut().zip(masks.iter_mut()) {
            let Expr::Column(c) = g.clone().unalias() else {
                continue;
            };
            let Some(e) = expose(&input, &c, &names.next(&plan)?)? else {
                continue;
            };
            if !joinable(&e.raw_type) {
                continue;
            }
            *g = Expr::Column(e.raw);
            *mask = Some(e.mask);
            input = Arc::new(e.plan);
        }
        if masks.iter().all(Option::is_none) {
            return Ok(Transformed::no(plan));
        }
        let rebuilt = Aggregate::try_new(input, group, agg.aggr_expr.clone())?;
        // Same names, types and order as before: group keys masked again.
        let exprs = rebuilt
            .schema
            .iter()
            .zip(agg.schema.iter())
            .enumerate()
            .map(|(i, (new, (qualifier, field)))| {
                let col = Expr::Column(Column::from(new));
                let expr = match masks.get(i).cloned().flatten() {
                    Some(mask) => Expr::ScalarFunction(ScalarFunction::new_udf(mask, vec![col])),
                    None => col,
                };
                expr.alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        Ok(Transformed::yes(LogicalPlan::Projection(
            Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(rebuilt)))?,
        )))
    }
}
