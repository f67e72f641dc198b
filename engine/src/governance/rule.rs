//! The governance analyzer rule: rewrites every scan of a [`GovernedTable`]
//! into mask projection -> barrier -> raw scan, for one principal.
//!
//! The identity and the catalog snapshot come from the statement's
//! [`StatementGovernance`], which the engine puts into the statement's
//! `ConfigOptions` and SQL `SET` cannot change (only a few execution
//! options are settable at all, `engine::SETTABLE_OPTIONS`). It walks
//! subqueries, keeps output names, and is idempotent: after the rewrite no
//! `GovernedTable` scan is left, so a second run changes nothing.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Expr, ExprSchemable, LogicalPlan, Projection, ScalarUDF, TableScan, TableScanBuilder,
};
use datafusion::optimizer::AnalyzerRule;
use veil_udfs::{mask_udf, MaskKey, MaskSpec, TruncUnit};

use super::node::GovernedScanNode;
use super::principal_fns::{parse_predicate, resolve};
use super::table::GovernedTable;
use crate::error::VeilError;
use crate::keys::MasterKey;
use crate::model::{CatalogSnapshot, DataSource, MaskMethod};
use crate::policy::{decide, Access, RowFilter, SourceDecision};
use crate::principal::Principal;

/// What one source's rewrite applied, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedPolicies {
    /// `schema.table`.
    pub source: String,
    /// The decision (masks with winners and overridden, row filters).
    pub decision: SourceDecision,
}

/// Everything the rule needs to decide for one principal.
#[derive(Debug)]
pub struct GovernanceContext {
    /// Effective principal.
    pub principal: Principal,
    /// The project the statement runs in, if any: only its sources are in scope.
    pub project: Option<String>,
    /// Catalog at one policy version.
    pub snapshot: Arc<CatalogSnapshot>,
    /// Root of mask keys.
    pub keys: MasterKey,
    /// Sources touched and policies applied by the last analysis.
    pub applied: Mutex<Vec<AppliedPolicies>>,
    /// Tables whose files the statement's scans read, as (what users are
    /// told, location for the log): a read error while the statement runs
    /// names its table (`catalog::explain_read_error`).
    pub scanned: Mutex<Vec<(String, String)>>,
    /// Workspace tables the statement reads, as (table, version, the
    /// sources their writes read), for the audit record.
    pub workspace_reads: Mutex<Vec<(String, u64, Vec<String>)>>,
    /// Where the analyzer's time is reported.
    pub metrics: crate::metrics::Metrics,
    /// Set when the statement's output is dropped (`interrupt.rs`).
    pub interrupt: Arc<crate::interrupt::Interrupt>,
    /// Set when the statement's plan was sent to a Ballista cluster
    /// (`distributed/`), for its audit record.
    pub on_cluster: std::sync::atomic::AtomicBool,
}

/// The analyzer rule. One instance serves every statement: each
/// statement's [`GovernanceContext`] travels in its `ConfigOptions` as
/// [`StatementGovernance`], and a plan analyzed without one is refused.
#[derive(Debug, Default)]
pub struct GovernanceRule;

/// A statement's governance context, as a `ConfigOptions` extension (so
/// the engine can reuse one session state for every statement). SQL can
/// neither set nor list it: `SET veil_governance.<anything>` fails and it
/// shows no entries in `SHOW ALL` or `information_schema.df_settings`.
#[derive(Debug, Clone)]
pub struct StatementGovernance(pub Arc<GovernanceContext>);

impl ExtensionOptions for StatementGovernance {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, _value: &str) -> Result<()> {
        Err(VeilError::PermissionDenied(format!(
            "{}.{key} is the statement's governance and cannot be set",
            Self::PREFIX
        ))
        .into())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        Vec::new()
    }
}

impl ConfigExtension for StatementGovernance {
    const PREFIX: &'static str = "veil_governance";
}

fn policy_failure(policy: &str, reason: impl std::fmt::Display) -> DataFusionError {
    VeilError::PolicyFailure {
        policy: policy.to_string(),
        reason: reason.to_string(),
    }
    .into()
}

/// The UDF parameters of a policy's method; keyed methods use `key`.
pub fn mask_spec(m: &MaskMethod, key: MaskKey) -> Result<MaskSpec, VeilError> {
    Ok(match m {
        MaskMethod::Null => MaskSpec::Null,
        MaskMethod::Constant(c) => MaskSpec::Constant(c.clone()),
        MaskMethod::Hash => MaskSpec::Hash(key),
        MaskMethod::Encrypt => MaskSpec::Encrypt(key),
        MaskMethod::Regex {
            pattern,
            replacement,
        } => MaskSpec::Regex {
            pattern: pattern.clone(),
            replacement: replacement.clone(),
        },
        MaskMethod::ShowFirst(n) => MaskSpec::ShowFirst(*n),
        MaskMethod::ShowLast(n) => MaskSpec::ShowLast(*n),
        MaskMethod::Round(w) => MaskSpec::Round(*w),
        MaskMethod::DateTrunc(u) => MaskSpec::DateTrunc(u.parse::<TruncUnit>()?),
    })
}

impl GovernanceContext {
    /// Rewrites one scan of a governed table.
    fn rewrite_scan(&self, scan: TableScan, table: &GovernedTable) -> Result<LogicalPlan> {
        let source = self.ctx_source(table)?;
        let decision = match decide(&self.principal, &self.snapshot, source)? {
            Access::Denied(reason) => return Err(VeilError::PermissionDenied(reason).into()),
            Access::Granted(d) => d,
        };
        let raw = LogicalPlan::TableScan(
            TableScanBuilder::new(
                scan.table_name.clone(),
                provider_as_source(Arc::clone(&table.inner)),
            )
            .with_projection(scan.projection.clone())
            .build()?,
        );
        let raw_schema: &DFSchema = raw.schema();

        // Row policies, resolved for the principal and type-checked.
        let mut predicates = Vec::new();
        let mut applied_rows = Vec::new();
        for rf in &decision.row_filters {
            let parsed = match parse_predicate(&rf.predicate, raw_schema) {
                Ok(p) => p,
                Err(DataFusionError::SchemaError(..)) if rf.global => continue,
                Err(e) => return Err(policy_failure(&rf.policy, e)),
            };
            let resolved = resolve(parsed, &self.principal, raw_schema)
                .map_err(|e| policy_failure(&rf.policy, e))?;
            match resolved.get_type(raw_schema) {
                Ok(t) if t.is_null() || t == datafusion::arrow::datatypes::DataType::Boolean => {}
                Ok(t) => {
                    return Err(policy_failure(
                        &rf.policy,
                        format!("predicate has type {t}, not boolean"),
                    ))
                }
                Err(e) => return Err(policy_failure(&rf.policy, e)),
            }
            predicates.push(resolved);
            applied_rows.push(rf.clone());
        }
        let row_predicate = conjunction(predicates);

        // Masks, one UDF per masked column, checked against the column type.
        let mut exprs = Vec::with_capacity(raw_schema.fields().len());
        let mut masked = Vec::new();
        let mut policies: Vec<String> = applied_rows.iter().map(|r| r.policy.clone()).collect();
        for (qualifier, field) in raw_schema.iter() {
            let col = Expr::Column(datafusion::common::Column::new(
                qualifier.cloned(),
                field.name(),
            ));
            let Some((udf, _, policy)) = self.column_mask(&decision, field)? else {
                exprs.push(col);
                continue;
            };
            exprs.push(
                Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), vec![col]))
                    .alias_qualified(qualifier.cloned(), field.name()),
            );
            masked.push(field.name().clone());
            policies.push(policy);
        }
        policies.sort();
        policies.dedup();

        // Nothing applies to this principal on a Parquet source: no row is
        // hidden and no value masked, so there is nothing for a barrier to
        // isolate, and a plain scan keeps DataFusion's statistics, join
        // order and dynamic filters (TPC-H q18 ran 1.9x slower behind an
        // empty barrier). Derived sources keep the barrier: it carries the
        // masked-ness of their columns into workspace lineage.
        let plain = row_predicate.is_none()
            && masked.is_empty()
            && self
                .snapshot
                .sources
                .get(&decision.source)
                .is_some_and(|s| matches!(s.kind, crate::model::SourceKind::Parquet));
        if plain {
            self.record_applied(&decision, applied_rows);
            return Ok(raw);
        }

        // The physical barrier offers the row policy to the Parquet scan
        // for pruning (node.rs), so the raw scan carries no copy of it.
        let unmasked = masked.is_empty();
        let barrier = GovernedScanNode {
            source: decision.source.clone(),
            input: raw,
            row_predicate,
            masked,
            policies,
        }
        .into_plan();
        self.record_applied(&decision, applied_rows);
        if unmasked {
            // Row policies only: the barrier already shows the raw columns.
            return Ok(barrier);
        }
        Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            Arc::new(barrier),
        )?))
    }

    /// Notes what a rewrite applied (for the audit record and lineage).
    fn record_applied(&self, decision: &SourceDecision, applied_rows: Vec<RowFilter>) {
        if let Ok(mut applied) = self.applied.lock() {
            let mut decision = decision.clone();
            decision.row_filters = applied_rows;
            applied.push(AppliedPolicies {
                source: decision.source.clone(),
                decision,
            });
        }
    }

    /// The mask a decision puts on one column: its UDF (checked against the
    /// column's type), output type and winning policy.
    fn column_mask(
        &self,
        decision: &SourceDecision,
        field: &Field,
    ) -> Result<Option<(ScalarUDF, DataType, String)>> {
        let Some(mask) = decision.mask_of(field.name()) else {
            return Ok(None);
        };
        // Derived sources hold rows members wrote themselves: their keyed
        // masks never use a project key, or a member could have their own
        // guesses tokenized and joined against the real column (a
        // dictionary attack).
        let derived = self
            .snapshot
            .sources
            .get(&decision.source)
            .is_some_and(|s| matches!(s.kind, crate::model::SourceKind::Derived(_)));
        let key = match self.join_project().filter(|_| !derived) {
            Some(p) => self.keys.project_key(&p.id, p.key_version),
            None => self.keys.column_key(
                &decision.source,
                field.name(),
                self.snapshot.settings.column_key_version,
            ),
        };
        let spec = mask_spec(&mask.method, key).map_err(|e| policy_failure(&mask.policy, e))?;
        let udf = mask_udf(spec).map_err(|e| policy_failure(&mask.policy, e))?;
        let output = udf
            .return_type(&[field.data_type().clone()])
            .map_err(|e| policy_failure(&mask.policy, format!("column {}: {e}", field.name())))?;
        Ok(Some((udf, output, mask.policy.clone())))
    }

    /// The schema a source shows this principal: masked columns carry their
    /// mask's output type (nullable), the others are as stored. Catalogs,
    /// `information_schema` and Flight `GetTables` report this schema.
    pub fn visible_schema(&self, source: &DataSource, raw: &SchemaRef) -> Result<SchemaRef> {
        let decision = match decide(&self.principal, &self.snapshot, source)? {
            Access::Denied(reason) => return Err(VeilError::PermissionDenied(reason).into()),
            Access::Granted(d) => d,
        };
        let fields = raw
            .fields()
            .iter()
            .map(|f| {
                Ok(match self.column_mask(&decision, f)? {
                    Some((_, output, _)) => Arc::new(Field::new(f.name(), output, true)),
                    None => Arc::clone(f),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            raw.metadata().clone(),
        )))
    }

    /// Refuses a scan of a workspace table holding what the principal's own
    /// access to its parents hides (`policy::read_beyond`).
    fn check_workspace_read(&self, scan: &TableScan) -> Result<()> {
        let Some(w) = crate::workspace::lineage::workspace_table(scan) else {
            return Ok(());
        };
        if let Ok(mut reads) = self.workspace_reads.lock() {
            let t = &w.table;
            if !reads
                .iter()
                .any(|(n, v, _)| *n == t.name && *v == t.version)
            {
                reads.push((
                    t.name.clone(),
                    t.version,
                    t.parents.iter().cloned().collect(),
                ));
            }
        }
        let who = self.principal.describe();
        let beyond = crate::policy::read_beyond(&self.principal, &self.snapshot, &w.table, who)?;
        if beyond.is_empty() {
            return Ok(());
        }
        Err(VeilError::PermissionDenied(format!(
            "{who} may not read workspace table {}: it holds data read with broader access than \
             {who} has: {}; with equalization on, every member writes and reads the same view",
            w.table.name,
            beyond.join("; ")
        ))
        .into())
    }

    /// The statement's project when it has masked joins on.
    fn join_project(&self) -> Option<&crate::project::Project> {
        let p = self.snapshot.projects.get(self.project.as_deref()?)?;
        p.masked_joins.then_some(p)
    }

    fn ctx_source(&self, table: &GovernedTable) -> Result<&crate::model::DataSource> {
        self.snapshot.sources.get(&table.source).ok_or_else(|| {
            VeilError::NotFound(format!("data source {} no longer exists", table.source)).into()
        })
    }
}

impl AnalyzerRule for GovernanceRule {
    fn name(&self) -> &str {
        "veil_governance"
    }

    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let Some(StatementGovernance(ctx)) = config.extensions.get::<StatementGovernance>() else {
            return Err(VeilError::Internal(
                "refusing to plan: the statement has no governance context".into(),
            )
            .into());
        };
        let _timer = ctx.metrics.policy_evaluation.start_timer();
        let mut rewrote = false;
        plan.transform_up_with_subqueries(|node| {
            let node = match node {
                LogicalPlan::TableScan(scan) => {
                    return match GovernedTable::from_source(&scan.source) {
                        Some(table) => {
                            let before = Arc::clone(&scan.projected_schema);
                            let after = ctx.rewrite_scan(scan, &table)?;
                            // The scan already showed the visible (masked)
                            // schema; recompute above only if that changed.
                            rewrote |= after.schema() != &before;
                            Ok(Transformed::yes(after))
                        }
                        None => {
                            ctx.check_workspace_read(&scan)?;
                            Ok(Transformed::no(LogicalPlan::TableScan(scan)))
                        }
                    };
                }
                other => other,
            };
            if rewrote {
                // A schema changed below: recompute the schemas above.
                Ok(Transformed::yes(node.recompute_schema()?))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }
}
