//! Which output columns of a plan carry masked values: the lineage that
//! keeps a workspace table's (and a derived source's) masked columns marked
//! as masked.
//!
//! It walks a governed logical plan bottom-up. A mask projection's inputs
//! are the [`GovernedScanNode`]'s masked columns; a column of a workspace
//! table or derived source that already holds masked values stays masked.
//! Every expression inherits the masked origins of the columns it reads.
//! Nodes it does not know are treated conservatively: every output column
//! inherits every input's origins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchema;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, TableScan};

use super::WorkspaceTableProvider;
use crate::governance::GovernedScanNode;
use crate::model::{CatalogSnapshot, SourceKind};

/// The masked origins (`schema.table.column`) of one output column.
pub type Origins = BTreeSet<String>;

/// Masked origins of each output column of `plan`, in schema order.
pub fn masked_columns(plan: &LogicalPlan, snapshot: &CatalogSnapshot) -> Vec<Origins> {
    walk(plan, snapshot)
}

/// The same as a map of only the masked columns.
pub fn masked_map(plan: &LogicalPlan, snapshot: &CatalogSnapshot) -> BTreeMap<String, Origins> {
    plan.schema()
        .fields()
        .iter()
        .zip(masked_columns(plan, snapshot))
        .filter(|(_, o)| !o.is_empty())
        .map(|(f, o)| (f.name().clone(), o))
        .collect()
}

/// The workspace table a scan reads, if it reads one.
pub(crate) fn workspace_table(scan: &TableScan) -> Option<Arc<WorkspaceTableProvider>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn std::any::Any + Send + Sync> = provider;
    any.downcast::<WorkspaceTableProvider>().ok()
}

/// The workspace tables `plan` reads (subqueries included): what a write
/// copies from them carries their provenance.
pub fn copied_tables(plan: &LogicalPlan) -> Vec<Arc<WorkspaceTableProvider>> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            out.extend(workspace_table(scan));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn union_all(inputs: &[Vec<Origins>]) -> Origins {
    inputs.iter().flatten().flatten().cloned().collect()
}

fn of_expr(e: &Expr, schema: &DFSchema, input: &[Origins], snapshot: &CatalogSnapshot) -> Origins {
    let mut out = Origins::new();
    for col in e.column_refs() {
        match schema.index_of_column(col) {
            Ok(i) => out.extend(input.get(i).into_iter().flatten().cloned()),
            // Unresolvable here (outer reference): be conservative.
            Err(_) => out.extend(input.iter().flatten().cloned()),
        }
    }
    // Subqueries inside the expression: whatever they read flows in.
    let _ = e.apply(|sub| {
        let plan = match sub {
            Expr::ScalarSubquery(s) => Some(&s.subquery),
            Expr::InSubquery(s) => Some(&s.subquery.subquery),
            Expr::Exists(s) => Some(&s.subquery.subquery),
            _ => None,
        };
        if let Some(plan) = plan {
            out.extend(walk(plan, snapshot).into_iter().flatten());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn walk(plan: &LogicalPlan, snapshot: &CatalogSnapshot) -> Vec<Origins> {
    let width = plan.schema().fields().len();
    if let Some(node) = GovernedScanNode::from_plan(plan) {
        let derived = match snapshot.sources.get(&node.source).map(|s| &s.kind) {
            Some(SourceKind::Derived(l)) => Some(&l.masked),
            _ => None,
        };
        return plan
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let mut o = Origins::new();
                if node.masked.contains(f.name()) {
                    o.insert(format!("{}.{}", node.source, f.name()));
                }
                if let Some(prior) = derived.and_then(|m| m.get(f.name())) {
                    o.extend(prior.iter().cloned());
                }
                o
            })
            .collect();
    }
    let inputs: Vec<Vec<Origins>> = plan.inputs().iter().map(|p| walk(p, snapshot)).collect();
    let one = |i: usize| inputs.get(i).cloned().unwrap_or_default();
    let exprs = |es: &[Expr], input: &LogicalPlan, origins: &[Origins]| -> Vec<Origins> {
        es.iter()
            .map(|e| of_expr(e, input.schema(), origins, snapshot))
            .collect()
    };
    let out = match plan {
        LogicalPlan::TableScan(scan) => {
            let masked = workspace_table(scan).map(|w| w.table.masked.clone());
            plan.schema()
                .fields()
                .iter()
                .map(|f| {
                    masked
                        .as_ref()
                        .and_then(|m| m.get(f.name()).cloned())
                        .unwrap_or_default()
                })
                .collect()
        }
        LogicalPlan::Projection(p) => exprs(&p.expr, &p.input, &one(0)),
        LogicalPlan::Aggregate(a) => {
            let mut out = exprs(&a.group_expr, &a.input, &one(0));
            // Grouping sets add an internal id column after the group keys.
            while out.len() + a.aggr_expr.len() < width {
                out.push(Origins::new());
            }
            out.extend(exprs(&a.aggr_expr, &a.input, &one(0)));
            out
        }
        LogicalPlan::Window(w) => {
            let mut out = one(0);
            out.extend(exprs(&w.window_expr, &w.input, &one(0)));
            out
        }
        LogicalPlan::Join(j) => {
            let (l, r) = (one(0), one(1));
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti => l,
                JoinType::RightSemi | JoinType::RightAnti => r,
                JoinType::LeftMark => l.into_iter().chain([Origins::new()]).collect(),
                JoinType::RightMark => r.into_iter().chain([Origins::new()]).collect(),
                _ => l.into_iter().chain(r).collect(),
            }
        }
        LogicalPlan::Union(_) => (0..width)
            .map(|i| {
                inputs
                    .iter()
                    .filter_map(|cols| cols.get(i))
                    .flatten()
                    .cloned()
                    .collect()
            })
            .collect(),
        _ if inputs.len() == 1 && inputs[0].len() == width => one(0),
        _ => vec![union_all(&inputs); width],
    };
    if out.len() == width {
        out
    } else {
        vec![union_all(&inputs); width]
    }
}
