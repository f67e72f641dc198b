//! The per-statement catalog a principal sees: catalog `veil` (or, inside a
//! project, the catalog named after it, holding only the project's sources),
//! one schema per data-source schema, holding only the sources the principal
//! is subscribed to. `information_schema`, `SHOW TABLES` and Flight metadata all
//! read this, so an unsubscribed source is absent everywhere; naming one in
//! a query gives a permission-denied error that names it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;

use crate::decoder_panic::DecoderPanic;
use crate::error::{Result, VeilError};
use crate::file_schema::{FileSchemaCheck, FileSchemaMismatch};
use crate::governance::{GovernanceContext, GovernedTable, StatementGovernance};
use crate::model::{DataSource, SourceKind};
use crate::policy::subscription;
use crate::workspace::{Warehouse, WorkspaceSchema, WORKSPACE_SCHEMA};

/// The catalog name outside projects.
pub const CATALOG: &str = "veil";

/// The schema of `system.audit`.
pub const SYSTEM_SCHEMA: &str = "system";

/// Parquet listing options used for every source.
pub fn parquet_options() -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet")
}

/// The Arrow schema stored with a source.
pub fn source_schema(source: &DataSource) -> Result<SchemaRef> {
    let schema: Schema = serde_json::from_str(&source.arrow_schema).map_err(|e| {
        VeilError::Internal(format!(
            "stored schema of {} is corrupt: {e}",
            source.full_name()
        ))
    })?;
    Ok(Arc::new(schema))
}

/// The raw (ungoverned) table of a source. Only the governance rule uses it.
/// Parquet footer statistics are cached in the engine-wide `runtime` (keyed
/// by file and checked against its size and modification time), so planning
/// does not re-read footers for every statement.
pub fn raw_table(source: &DataSource, runtime: &RuntimeEnv) -> Result<Arc<dyn TableProvider>> {
    let inner: Arc<dyn TableProvider> = if let SourceKind::Derived(lineage) = &source.kind {
        crate::workspace::parquet_files_table(&lineage.files, source_schema(source)?, runtime)?
    } else {
        let url = ListingTableUrl::parse(&source.location)?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(parquet_options())
            .with_schema(source_schema(source)?)
            .with_expr_adapter_factory(Arc::new(FileSchemaCheck));
        Arc::new(
            ListingTable::try_new(config)?
                .with_cache(runtime.cache_manager.get_file_statistic_cache()),
        )
    };
    Ok(guarded_table(
        format!("data source {}", source.full_name()),
        source.location.clone(),
        inner,
    ))
}

/// `inner`, a table over Parquet files, with the errors of a source's scan
/// (see [`SourceTable`]): `what` names it to users ("workspace table
/// keep"), `location` only to the server log. For a table that has files:
/// one whose scan finds none fails.
pub(crate) fn guarded_table(
    what: String,
    location: String,
    inner: Arc<dyn TableProvider>,
) -> Arc<dyn TableProvider> {
    Arc::new(SourceTable {
        what,
        location,
        inner,
    })
}

/// A source's raw table that names the source in every error of its scan,
/// so that deleted, truncated or corrupt files fail that source's queries
/// with a clear error (FailedPrecondition) and nothing else; a source whose
/// files are all gone fails instead of answering with no rows.
#[derive(Debug)]
struct SourceTable {
    /// What users are told cannot be read ("data source hr.employees").
    what: String,
    location: String,
    inner: Arc<dyn TableProvider>,
}

/// The error a query gets when a table's files cannot be read: it names
/// the table and says what to suspect; the location and the low-level
/// cause go to the server log only (no storage paths to users). `name` is
/// what cannot be read ("data source hr.employees", "workspace table keep").
pub(crate) fn unreadable_source(
    name: &str,
    location: &str,
    cause: &dyn std::fmt::Display,
) -> VeilError {
    tracing::warn!(source = name, location, "a table cannot be read: {cause}");
    VeilError::FailedPrecondition(format!(
        "{name} cannot be read: one of its files is missing, truncated, corrupt or of \
         another schema, or none is left (the server log has the details)"
    ))
}

/// What an error that comes from reading a table's files went wrong in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFailure {
    /// Parquet decoding (a page arrow's reader could not decode, a panic of
    /// the decoder) or a file that does not match the source's schema.
    Decoding,
    /// Storage: a file missing or cut short.
    Storage,
}

/// Whether a query error comes from reading files rather than from the
/// query itself, and how. A page that fails to decode reaches DataFusion
/// through arrow's reader, as arrow's `ParquetError` ("dictionary index
/// out of bounds", ...).
fn read_failure(e: &DataFusionError) -> Option<ReadFailure> {
    let decoding = match e.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => {
            return Some(ReadFailure::Storage)
        }
        DataFusionError::ParquetError(_) => true,
        DataFusionError::ArrowError(a, _) => matches!(a.as_ref(), ArrowError::ParquetError(_)),
        DataFusionError::External(e) => {
            e.is::<FileSchemaMismatch>()
                || e.is::<DecoderPanic>()
                || crate::decoder_panic::mentions_decoder_panic(&e.to_string())
        }
        _ => false,
    };
    decoding.then_some(ReadFailure::Decoding)
}

/// Rewrites an execution error that comes from reading a table's files
/// into [`unreadable_source`]'s error for that table: the one whose
/// location the cause mentions, else the only table the query scanned.
pub(crate) fn explain_read_error(e: VeilError, gctx: Option<&GovernanceContext>) -> VeilError {
    explain(e, gctx, false)
}

/// [`explain_read_error`] for a workspace write's error: a storage error
/// is its inputs' only when it names one of their locations (else it may
/// be the write's own, to the warehouse); a decoding error is its inputs'.
pub(crate) fn explain_write_input_error(e: VeilError, gctx: &GovernanceContext) -> VeilError {
    explain(e, Some(gctx), true)
}

fn explain(e: VeilError, gctx: Option<&GovernanceContext>, writing: bool) -> VeilError {
    let (VeilError::DataFusion(d), Some(gctx)) = (&e, gctx) else {
        return e;
    };
    let Some(failure) = read_failure(d) else {
        return e;
    };
    let named_only = writing && failure == ReadFailure::Storage;
    let text = d.to_string();
    // Under `<table>/_staging/`: the write's own files, not its input's.
    if named_only && text.contains(&format!("/{}/", crate::workspace::fence::STAGING)) {
        return e;
    }
    let scanned = gctx.scanned.lock().map(|s| s.clone()).unwrap_or_default();
    let mentioned = |location: &str| mentions(&text, location);
    let table = scanned.iter().find(|(_, location)| mentioned(location)).or(
        if scanned.len() == 1 && !named_only {
            scanned.first()
        } else {
            None
        },
    );
    match table {
        Some((what, location)) => unreadable_source(what, location, d),
        None if scanned.is_empty() || named_only => e,
        None => {
            let names: Vec<&str> = scanned.iter().map(|(what, _)| what.as_str()).collect();
            let what = format!("a table of this query ({})", names.join(", "));
            unreadable_source(&what, "", d)
        }
    }
}

/// `TableProvider::scan`'s arguments as `ScanArgs`, for providers whose
/// `scan` is their `scan_with_args`.
pub(crate) fn scan_args<'a>(
    projection: Option<&'a Vec<usize>>,
    filters: &'a [datafusion::logical_expr::Expr],
    limit: Option<usize>,
) -> datafusion::catalog::ScanArgs<'a> {
    datafusion::catalog::ScanArgs::default()
        .with_projection(projection.map(Vec::as_slice))
        .with_filters(Some(filters))
        .with_limit(limit)
}

/// Whether `text` names `location` (a file, or a directory: `.../keep`
/// names `.../keep/x.parquet`, not `.../keep2/x.parquet`).
fn mentions(text: &str, location: &str) -> bool {
    let l = location.trim_start_matches("file://").trim_end_matches('/');
    !l.is_empty()
        && text.match_indices(l).any(|(at, _)| {
            !text[at + l.len()..]
                .starts_with(|c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
}

impl SourceTable {
    fn unreadable(&self, e: impl std::fmt::Display) -> DataFusionError {
        unreadable_source(&self.what, &self.location, &e).into()
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        self.inner.table_type()
    }

    fn statistics(&self) -> Option<datafusion::common::Statistics> {
        self.inner.statistics()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> DfResult<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let args = scan_args(projection, filters, limit);
        Ok(self.scan_with_args(state, args).await?.into_inner())
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn datafusion::catalog::Session,
        args: datafusion::catalog::ScanArgs<'a>,
    ) -> DfResult<datafusion::catalog::ScanResult> {
        // Reading a footer can panic inside parquet on a corrupt file (a
        // metadata length past the file's start overflows a subtraction in
        // debug builds); that is this source's failure, not the statement's.
        let result = crate::executor::unless_panic(self.inner.scan_with_args(state, args))
            .await
            .map_err(|panic| self.unreadable(panic))?
            .map_err(|e| self.unreadable(e))?;
        let plan = result.plan();
        if plan.is::<datafusion::physical_plan::empty::EmptyExec>() {
            return Err(self.unreadable("no Parquet files are there"));
        }
        if let Some(governance) = state
            .config_options()
            .extensions
            .get::<StatementGovernance>()
        {
            if let Ok(mut scanned) = governance.0.scanned.lock() {
                if !scanned.iter().any(|(what, _)| *what == self.what) {
                    scanned.push((self.what.clone(), self.location.clone()));
                }
            }
        }
        Ok(result)
    }
}

/// Catalog `veil` (or a project's catalog) for one principal.
#[derive(Debug, Default)]
pub struct VeilCatalog {
    schemas: BTreeMap<String, Arc<dyn SchemaProvider>>,
    /// Schemas listed by `information_schema` and Flight metadata.
    listed: Vec<String>,
}

/// One schema of [`VeilCatalog`].
#[derive(Debug, Default)]
pub struct VeilSchema {
    tables: BTreeMap<String, Arc<dyn TableProvider>>,
    denied: BTreeMap<String, String>,
}

impl VeilCatalog {
    /// Builds the catalog of sources visible to `p`.
    /// A source whose policies cannot be evaluated here (a broken policy)
    /// shows its stored types; querying it reports the policy failure.
    /// `system` is `Ok(audit table)` for holders of AUDIT, else why not.
    pub fn build(
        g: &GovernanceContext,
        runtime: &RuntimeEnv,
        warehouse: &Warehouse,
        system: std::result::Result<Arc<dyn TableProvider>, String>,
    ) -> Result<Self> {
        let mut schemas: BTreeMap<String, VeilSchema> = BTreeMap::new();
        let scope = match &g.project {
            None => None,
            Some(p) => Some(
                g.snapshot
                    .projects
                    .get(p)
                    .ok_or_else(|| VeilError::NotFound(format!("project {p} does not exist")))?,
            ),
        };
        for source in g.snapshot.sources.values() {
            let schema = schemas.entry(source.schema.clone()).or_default();
            if let Some(project) = scope {
                if !project.sources.contains_key(&source.full_name()) {
                    schema.denied.insert(
                        source.table.clone(),
                        format!(
                            "data source {} is not part of project {}",
                            source.full_name(),
                            project.name
                        ),
                    );
                    continue;
                }
            }
            match subscription(&g.principal, &g.snapshot, source)? {
                Ok(()) => {
                    let raw = raw_table(source, runtime)?;
                    let visible = g
                        .visible_schema(source, &raw.schema())
                        .unwrap_or_else(|_| raw.schema());
                    let table = GovernedTable::new(source.full_name(), raw, visible);
                    schema.tables.insert(source.table.clone(), Arc::new(table));
                }
                Err(reason) => {
                    schema.denied.insert(source.table.clone(), reason);
                }
            }
        }
        let mut listed: Vec<String> = schemas
            .iter()
            .filter(|(_, s)| !s.tables.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let mut schemas: BTreeMap<String, Arc<dyn SchemaProvider>> = schemas
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v) as Arc<dyn SchemaProvider>))
            .collect();
        let mut system_schema = VeilSchema::default();
        match system {
            Ok(audit) => {
                system_schema.tables.insert("audit".into(), audit);
                listed.push(SYSTEM_SCHEMA.to_string());
            }
            Err(reason) => {
                system_schema.denied.insert("audit".into(), reason);
            }
        }
        schemas.insert(SYSTEM_SCHEMA.to_string(), Arc::new(system_schema));
        // Inside a project, its workspace (and only there).
        if let Some(project) = scope {
            let workspace =
                WorkspaceSchema::build(g.snapshot.workspaces.get(&project.id), warehouse, runtime)?;
            schemas.insert(WORKSPACE_SCHEMA.to_string(), Arc::new(workspace));
            listed.push(WORKSPACE_SCHEMA.to_string());
        }
        Ok(Self { schemas, listed })
    }
}

impl CatalogProvider for VeilCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.listed.clone()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.get(name).cloned()
    }
}

#[async_trait]
impl SchemaProvider for VeilSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.tables.get(name) {
            return Ok(Some(Arc::clone(t)));
        }
        if let Some(reason) = self.denied.get(name) {
            return Err(DataFusionError::from(VeilError::PermissionDenied(
                reason.clone(),
            )));
        }
        Ok(None)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::mentions;

    #[test]
    fn a_location_is_named_by_its_own_files_only() {
        let text = "Object at location /w/projects/p/keep2/a-0.parquet not found";
        assert!(!mentions(text, "file:///w/projects/p/keep"));
        assert!(mentions(text, "file:///w/projects/p/keep2"));
        assert!(mentions(text, "file:///w/projects/p/keep2/"));
        assert!(mentions(text, "/w/projects/p/keep2/a-0.parquet"));
        assert!(!mentions(text, "/w/projects/p/keep2/a-0.parq"));
        assert!(!mentions(text, ""));
    }
}
