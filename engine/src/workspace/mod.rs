//! Project workspaces (DESIGN.md section 5): a writable Parquet namespace
//! per project, `<warehouse>/projects/<project-id>/<table>/`, visible as
//! schema `workspace` of the project's catalog to its members in project
//! context, and nowhere else.
//!
//! A table is a list of Parquet files recorded in the catalog with a
//! version. Writes stage files, then commit one catalog transaction that
//! lists them ([`write`]); the catalog refuses a commit whose expected
//! version is no longer current, so of two concurrent writers one wins and
//! the other gets a conflict error.

pub mod fence;
pub mod lineage;
pub mod storage;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::{ScanArgs, ScanResult, Session as CatalogSession, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DataFusionError;
use datafusion::common::{Result as DfResult, Statistics};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableType;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

pub use storage::Warehouse;

use crate::catalog::parquet_options;
use crate::error::{Result, VeilError};

/// The schema name of a project's workspace inside its catalog.
pub const WORKSPACE_SCHEMA: &str = "workspace";

/// Longest workspace table name.
pub const MAX_TABLE_NAME: usize = 128;

/// One committed Parquet file of a workspace table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceFile {
    /// Object path inside the warehouse's store.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// One version of a workspace table, as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceTable {
    /// The project's id.
    pub project_id: String,
    /// Table name (validated by [`table_name`]).
    pub name: String,
    /// Bumped by every committed write.
    pub version: u64,
    /// Arrow schema (JSON).
    pub arrow_schema: String,
    /// The Parquet files of this version.
    pub files: Vec<WorkspaceFile>,
    /// Rows in this version.
    pub rows: u64,
    /// Columns holding masked values, with the source columns they came from.
    pub masked: BTreeMap<String, BTreeSet<String>>,
    /// Governed sources read by the writes of this table (directly or
    /// through the workspace tables they copied).
    pub parents: BTreeSet<String>,
    /// For each parent, every distinct access its writes read it with: a
    /// derived source may publish the table only to entitlements that see
    /// each parent at least as broadly (`CREATE DERIVED DATA SOURCE`).
    /// Empty in tables written before it was kept.
    #[serde(default)]
    pub reads: BTreeMap<String, Vec<ParentRead>>,
    /// Whether keyed masks of those writes used the project's join key.
    pub project_keyed: bool,
    /// Set anew by every create or replace: an append started on one
    /// incarnation rebases onto later appends, never onto a replacement.
    pub incarnation: String,
    /// Who created the table.
    pub created_by: String,
    /// Who committed this version.
    pub updated_by: String,
    /// When (RFC 3339).
    pub updated_at: String,
}

/// How one write read a parent source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRead {
    /// Who wrote (the user the write was governed for: the impersonated
    /// one under impersonation).
    pub by: String,
    /// What the write's principal saw of the parent.
    pub access: crate::model::Restriction,
}

/// Adds `more` (a write's or a copied table's reads) to `reads`, each
/// distinct read once, and its sources to `parents`.
pub fn add_reads(
    parents: &mut BTreeSet<String>,
    reads: &mut BTreeMap<String, Vec<ParentRead>>,
    more: &BTreeMap<String, Vec<ParentRead>>,
) {
    for (parent, more) in more {
        parents.insert(parent.clone());
        let mine = reads.entry(parent.clone()).or_default();
        for r in more {
            if !mine.contains(r) {
                mine.push(r.clone());
            }
        }
    }
}

impl WorkspaceTable {
    /// Total size of its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Its Arrow schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        let s: Schema = serde_json::from_str(&self.arrow_schema).map_err(|e| {
            VeilError::Internal(format!(
                "stored schema of workspace table {} is corrupt: {e}",
                self.name
            ))
        })?;
        Ok(Arc::new(s))
    }
}

/// Validates a workspace table name: 1 to 128 letters, digits or `_`,
/// starting with a letter or `_` (so no path separator, no `..`, nothing a
/// file system or object store would read specially). Returns it lowercased.
pub fn table_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TABLE_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(VeilError::InvalidArgument(format!(
            "workspace table name '{}' is not valid: use 1 to {MAX_TABLE_NAME} letters, \
             digits or '_', starting with a letter or '_'",
            name.escape_default()
        )));
    }
    Ok(name.to_ascii_lowercase())
}

/// Reads a list of Parquet object URLs with a known schema (no files: an
/// empty table).
pub fn parquet_files_table(
    urls: &[String],
    schema: SchemaRef,
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn TableProvider>> {
    if urls.is_empty() {
        return Ok(Arc::new(EmptyTable::new(schema)));
    }
    let paths = urls
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<DfResult<Vec<_>>>()?;
    let expected = paths.iter().map(|p| p.prefix().clone()).collect();
    let config = ListingTableConfig::new_with_multi_paths(paths)
        .with_listing_options(parquet_options())
        .with_schema(schema);
    let table =
        ListingTable::try_new(config)?.with_cache(runtime.cache_manager.get_file_statistic_cache());
    Ok(Arc::new(AllFiles {
        inner: Arc::new(table),
        expected,
    }))
}

/// A table of listed files that fails a scan when any of them is gone.
/// DataFusion lists each file's URL as a prefix, so a deleted file would
/// simply not be read: a workspace table or derived source that lost one of
/// its files answered with fewer rows.
#[derive(Debug)]
struct AllFiles {
    inner: Arc<dyn TableProvider>,
    expected: Vec<object_store::path::Path>,
}

#[async_trait]
impl TableProvider for AllFiles {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let args = crate::catalog::scan_args(projection, filters, limit);
        Ok(self.scan_with_args(state, args).await?.into_inner())
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn CatalogSession,
        args: ScanArgs<'a>,
    ) -> DfResult<ScanResult> {
        // With a limit the listing may stop once it has enough rows; the
        // limit above the scan still applies.
        let result = self
            .inner
            .scan_with_args(state, args.with_limit(None))
            .await?;
        let mut listed = std::collections::HashSet::new();
        result.plan().apply(|node| {
            if let Some(files) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
            {
                listed.extend(
                    files
                        .file_groups
                        .iter()
                        .flat_map(|g| g.iter())
                        .map(|f| f.path().clone()),
                );
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let missing = self
            .expected
            .iter()
            .filter(|p| !listed.contains(*p))
            .count();
        if missing > 0 {
            return Err(DataFusionError::Execution(format!(
                "{missing} of its {} files are missing",
                self.expected.len()
            )));
        }
        Ok(result)
    }
}

/// A workspace table as DataFusion reads it: its files, plus what lineage
/// needs (which columns hold masked values).
#[derive(Debug)]
pub struct WorkspaceTableProvider {
    /// The catalog entry.
    pub table: WorkspaceTable,
    inner: Arc<dyn TableProvider>,
}

impl WorkspaceTableProvider {
    /// Opens a table version.
    pub fn new(table: WorkspaceTable, warehouse: &Warehouse, runtime: &RuntimeEnv) -> Result<Self> {
        let urls: Vec<String> = table
            .files
            .iter()
            .map(|f| warehouse.url_of(&object_store::path::Path::from(f.path.as_str())))
            .collect();
        let mut inner = parquet_files_table(&urls, table.schema()?, runtime)?;
        if !urls.is_empty() {
            // Its committed files gone or damaged: an error, not fewer rows.
            inner = crate::catalog::guarded_table(
                format!("workspace table {}", table.name),
                warehouse.url_of(&warehouse.table_dir(&table.project_id, &table.name)),
                inner,
            );
        }
        Ok(Self { table, inner })
    }
}

#[async_trait]
impl TableProvider for WorkspaceTableProvider {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

/// Schema `workspace` of a project's catalog.
#[derive(Debug, Default)]
pub struct WorkspaceSchema {
    tables: BTreeMap<String, Arc<WorkspaceTableProvider>>,
}

impl WorkspaceSchema {
    /// The workspace of one project at one catalog snapshot.
    pub fn build(
        tables: Option<&BTreeMap<String, WorkspaceTable>>,
        warehouse: &Warehouse,
        runtime: &RuntimeEnv,
    ) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (name, t) in tables.into_iter().flatten() {
            out.insert(
                name.clone(),
                Arc::new(WorkspaceTableProvider::new(t.clone(), warehouse, runtime)?),
            );
        }
        Ok(Self { tables: out })
    }
}

#[async_trait]
impl SchemaProvider for WorkspaceSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .tables
            .get(name)
            .map(|t| Arc::clone(t) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}
