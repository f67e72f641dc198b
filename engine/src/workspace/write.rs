//! Writes into a project's workspace: `CREATE TABLE workspace.t [AS ...]`,
//! `INSERT [OVERWRITE] INTO workspace.t ...`, `DROP TABLE workspace.t` and
//! Flight SQL ingest.
//!
//! Every write runs the governed plan of the writer in the project (so rows
//! written are what the writer could read there: masked, filtered,
//! equalized), writes Parquet with DataFusion's writer (zstd, page
//! statistics) under a staging name, and commits one catalog transaction
//! that lists the new files and expects the table version it started from.
//! A failure anywhere before that commit deletes what it wrote and leaves
//! the committed table as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::config::TableParquetOptions;
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::path::Path;
use serde_json::json;

use super::lineage::{copied_tables, masked_map};
use super::{add_reads, table_name, ParentRead, WorkspaceFile, WorkspaceTable, WORKSPACE_SCHEMA};
use crate::engine::{QueryOutput, Session};
use crate::error::{Result, VeilError};
use crate::governance::GovernanceContext;
use crate::store::{AuditEntry, Change, Expect};

/// A workspace statement recognized in a planned SQL statement.
#[derive(Debug)]
pub enum WorkspaceOp {
    /// `CREATE [OR REPLACE] TABLE [IF NOT EXISTS] workspace.t (AS SELECT ... | (cols))`.
    Create {
        /// Table name as written.
        table: String,
        /// The rows (an empty relation for a column list).
        input: LogicalPlan,
        /// IF NOT EXISTS.
        if_not_exists: bool,
        /// OR REPLACE.
        or_replace: bool,
    },
    /// `INSERT [OVERWRITE] INTO workspace.t ...`.
    Insert {
        /// Table name as written.
        table: String,
        /// The rows, already cast to the table's columns.
        input: LogicalPlan,
        /// Replace the table's rows instead of appending.
        overwrite: bool,
    },
    /// `DROP TABLE [IF EXISTS] workspace.t`.
    Drop {
        /// Table name as written.
        table: String,
        /// IF EXISTS.
        if_exists: bool,
    },
}

/// What an ingest does with a missing or an existing table (Flight SQL's
/// table definition options; ADBC's modes are create = (Create, Fail),
/// append = (Fail, Append), replace = (Create, Replace), create_append =
/// (Create, Append)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestMode {
    /// Create the table when it does not exist (else fail).
    pub create_if_missing: bool,
    /// What to do when it exists.
    pub if_exists: IfExists,
}

/// What an ingest does with an existing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Fail.
    Fail,
    /// Append the rows.
    Append,
    /// Replace the table.
    Replace,
}

/// The workspace table a reference names, if it is in the workspace of the
/// session's catalog.
fn workspace_table(name: &TableReference, catalog: &str) -> Option<String> {
    match name {
        TableReference::Partial { schema, table } if schema.as_ref() == WORKSPACE_SCHEMA => {
            Some(table.to_string())
        }
        TableReference::Full {
            catalog: c,
            schema,
            table,
        } if c.as_ref() == catalog && schema.as_ref() == WORKSPACE_SCHEMA => {
            Some(table.to_string())
        }
        _ => None,
    }
}

/// Recognizes a workspace statement in a plan; None for anything else
/// (which the caller refuses as DDL/DML). Outside a project there is no
/// workspace, so nothing is recognized.
pub fn recognize(plan: &LogicalPlan, project: Option<&str>) -> Result<Option<WorkspaceOp>> {
    let Some(catalog) = project else {
        return Ok(None);
    };
    Ok(match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => workspace_table(&c.name, catalog)
            .map(|table| WorkspaceOp::Create {
                table,
                input: c.input.as_ref().clone(),
                if_not_exists: c.if_not_exists,
                or_replace: c.or_replace,
            }),
        LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
            workspace_table(&d.name, catalog).map(|table| WorkspaceOp::Drop {
                table,
                if_exists: d.if_exists,
            })
        }
        LogicalPlan::Dml(d) => match workspace_table(&d.table_name, catalog) {
            None => None,
            Some(table) => match &d.op {
                WriteOp::Insert(op) => Some(WorkspaceOp::Insert {
                    table,
                    input: d.input.as_ref().clone(),
                    overwrite: *op != InsertOp::Append,
                }),
                other => {
                    return Err(VeilError::InvalidArgument(format!(
                        "{other} is not supported on workspace table {table}; write a new \
                         version with CREATE OR REPLACE TABLE workspace.{table} AS SELECT ..."
                    )))
                }
            },
        },
        _ => None,
    })
}

/// The one-row `count` result of a write (rows written).
pub fn count_output(rows: u64) -> Result<QueryOutput> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(UInt64Array::from(vec![rows]))],
    )?;
    QueryOutput::from_batches(schema, vec![batch])
}

/// How a write meets the committed table.
#[derive(Debug, Clone)]
enum Mode {
    /// The table must not exist.
    Create,
    /// Replace the version the write started from.
    Replace(WorkspaceTable),
    /// Append to the table the write started from (rebased onto appends that
    /// committed meanwhile; a replace or drop meanwhile is a conflict).
    Append(WorkspaceTable),
}

/// A write that failed because the warehouse's storage is full becomes
/// ResourceExhausted, saying that nothing changed; other errors pass.
fn out_of_space(e: VeilError, table: &str) -> VeilError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match &e {
        VeilError::DataFusion(d) => Some(d.as_ref()),
        other => Some(other),
    };
    while let Some(c) = cause {
        let full = c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull);
        if full {
            return VeilError::ResourceExhausted(format!(
                "the workspace warehouse is out of space ({c}); the write to {table} \
                 was not committed and the table is unchanged"
            ));
        }
        cause = c.source();
    }
    e
}

/// Runs a recognized workspace statement.
pub async fn execute(
    session: &Session,
    ctx: &SessionContext,
    gctx: &GovernanceContext,
    op: WorkspaceOp,
    sql: &str,
) -> Result<(QueryOutput, bool)> {
    let mut w = Writer::new(session, gctx)?;
    w.sql = Some(sql.to_string());
    let out = run(&w, ctx, op).await?;
    Ok((out, w.recorded.load(std::sync::atomic::Ordering::Relaxed)))
}

async fn run(w: &Writer<'_>, ctx: &SessionContext, op: WorkspaceOp) -> Result<QueryOutput> {
    match op {
        WorkspaceOp::Drop { table, if_exists } => w.drop(&table_name(&table)?, if_exists),
        WorkspaceOp::Create {
            table,
            input,
            if_not_exists,
            or_replace,
        } => {
            let name = table_name(&table)?;
            let mode = match (w.current(&name), if_not_exists, or_replace) {
                (None, _, _) => Mode::Create,
                (Some(_), true, _) => return count_output(0),
                (Some(t), false, true) => Mode::Replace(t),
                (Some(_), false, false) => {
                    return Err(VeilError::AlreadyExists(format!(
                        "workspace table {name} already exists in project {}",
                        w.project
                    )))
                }
            };
            w.write_plan(ctx, &name, input, mode).await
        }
        WorkspaceOp::Insert {
            table,
            input,
            overwrite,
        } => {
            let name = table_name(&table)?;
            let current = w.current(&name).ok_or_else(|| w.missing(&name))?;
            let mode = if overwrite {
                Mode::Replace(current)
            } else {
                Mode::Append(current)
            };
            w.write_plan(ctx, &name, input, mode).await
        }
    }
}

/// Ingests a client's stream of batches into a workspace table (Flight SQL
/// `CommandStatementIngest`); returns the rows written.
/// A refused or failed ingest leaves its audit record here; a committed one
/// is recorded with its commit.
pub async fn ingest(
    session: &Session,
    table: &str,
    mode: IngestMode,
    stream: SendableRecordBatchStream,
) -> Result<u64> {
    match ingest_rows(session, table, mode, stream).await {
        Err(e) => {
            let mut audit = session.query_audit(&format!("ingest into {WORKSPACE_SCHEMA}.{table}"));
            audit.entry.action = "Ingest".into();
            Err(audit.fail(e).await)
        }
        ok => ok,
    }
}

async fn ingest_rows(
    session: &Session,
    table: &str,
    mode: IngestMode,
    stream: SendableRecordBatchStream,
) -> Result<u64> {
    let (ctx, gctx) = session.context()?;
    let w = Writer::new(session, &gctx)?;
    let name = table_name(table)?;
    let schema = stream.schema();
    let mode = match (w.current(&name), mode.if_exists) {
        (None, _) if !mode.create_if_missing => return Err(w.missing(&name)),
        (None, _) => Mode::Create,
        (Some(_), IfExists::Fail) => {
            return Err(VeilError::AlreadyExists(format!(
                "workspace table {name} already exists in project {}",
                w.project
            )))
        }
        (Some(t), IfExists::Replace) => Mode::Replace(t),
        (Some(t), IfExists::Append) => {
            same_columns(&name, t.schema()?.as_ref(), &schema)?;
            Mode::Append(t)
        }
    };
    let source = StreamingTable::try_new(
        Arc::clone(&schema),
        vec![Arc::new(OneShot::new(stream)) as Arc<dyn PartitionStream>],
    )?;
    let mut df = ctx.read_table(Arc::new(source))?;
    if let Mode::Append(t) = &mode {
        let stored = t.schema()?;
        let cast = stored
            .fields()
            .iter()
            .map(|f| {
                datafusion::prelude::cast(
                    datafusion::prelude::ident(f.name()),
                    f.data_type().clone(),
                )
                .alias(f.name())
            })
            .collect::<Vec<_>>();
        df = df.select(cast)?;
    }
    let plan = df.into_unoptimized_plan();
    let out = w.write_plan(&ctx, &name, plan, mode).await?;
    let batches = out.collect().await?;
    Ok(batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
        .map(|a| a.value(0))
        .unwrap_or(0))
}

/// Types an ingest may send for a column: the column's own, or another
/// encoding of the same values (Utf8 / LargeUtf8 / Utf8View, and the binary
/// ones alike); they are cast to the column's type.
fn same_family(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    a == b
        || matches!(
            (a, b),
            (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View)
        )
        || matches!(
            (a, b),
            (
                Binary | LargeBinary | BinaryView,
                Binary | LargeBinary | BinaryView
            )
        )
}

/// An ingest's columns must be the table's: same names, same types.
fn same_columns(table: &str, stored: &Schema, incoming: &Schema) -> Result<()> {
    let show = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = stored.fields().len() == incoming.fields().len()
        && stored
            .fields()
            .iter()
            .zip(incoming.fields())
            .all(|(a, b)| a.name() == b.name() && same_family(a.data_type(), b.data_type()));
    if same {
        Ok(())
    } else {
        Err(VeilError::InvalidArgument(format!(
            "the ingested columns ({}) do not match workspace table {table} ({}); nothing was \
             written",
            show(incoming),
            show(stored)
        )))
    }
}

/// A client stream as a one-partition table that can be read once.
struct OneShot {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl OneShot {
    fn new(stream: SendableRecordBatchStream) -> Self {
        Self {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl std::fmt::Debug for OneShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OneShot({:?})", self.schema)
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().ok().and_then(|mut s| s.take()) {
            Some(s) => s,
            None => Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async {
                    Err(datafusion::error::DataFusionError::Execution(
                        "the ingest stream can be read only once".into(),
                    ))
                }),
            )),
        }
    }
}

/// What a write carries into its table version besides rows.
struct Provenance {
    /// Columns holding masked values, with their origins.
    masked: BTreeMap<String, BTreeSet<String>>,
    /// Governed sources read (directly or through copied tables).
    parents: BTreeSet<String>,
    /// With what access each was read.
    reads: BTreeMap<String, Vec<ParentRead>>,
}

/// One workspace statement's context: who writes into which project.
struct Writer<'a> {
    session: &'a Session,
    gctx: &'a GovernanceContext,
    project: String,
    project_id: String,
    masked_joins: bool,
    /// The statement, for the audit record (None: Flight SQL ingest).
    sql: Option<String>,
    /// Whether a commit recorded the statement in the audit log.
    recorded: std::sync::atomic::AtomicBool,
}

/// The Parquet writer settings of workspace tables.
fn parquet_settings() -> TableParquetOptions {
    let mut opts = TableParquetOptions::default();
    opts.global.compression = Some("zstd(3)".into());
    opts.global.statistics_enabled = Some("page".into());
    opts
}

impl<'a> Writer<'a> {
    fn new(session: &'a Session, gctx: &'a GovernanceContext) -> Result<Self> {
        let Some(name) = session.project() else {
            return Err(VeilError::FailedPrecondition(
                "workspaces exist only in a project: USE PROJECT p first".into(),
            ));
        };
        let project = gctx
            .snapshot
            .projects
            .get(name)
            .ok_or_else(|| VeilError::NotFound(format!("project {name} does not exist")))?;
        Ok(Self {
            session,
            gctx,
            project: project.name.clone(),
            project_id: project.id.clone(),
            masked_joins: project.masked_joins,
            sql: None,
            recorded: Default::default(),
        })
    }

    fn current(&self, name: &str) -> Option<WorkspaceTable> {
        self.gctx
            .snapshot
            .workspaces
            .get(&self.project_id)
            .and_then(|t| t.get(name))
            .cloned()
    }

    fn missing(&self, name: &str) -> VeilError {
        VeilError::NotFound(format!(
            "workspace table {name} does not exist in project {}",
            self.project
        ))
    }

    fn audit(&self, action: &str, table: &str, mut detail: serde_json::Value) -> AuditEntry {
        self.recorded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (_, policies) = crate::audit::applied_json(self.gctx);
        if let Some(d) = detail.as_object_mut() {
            d.insert("sql".into(), json!(self.sql));
            d.insert("policies".into(), policies);
        }
        AuditEntry {
            actor: self.session.user().to_string(),
            impersonated: self.session.impersonated().map(str::to_string),
            project: Some(self.project.clone()),
            action: action.into(),
            object: format!("{}.{WORKSPACE_SCHEMA}.{table}", self.project),
            detail: detail.to_string(),
            outcome: "ok".into(),
        }
    }

    fn drop(&self, name: &str, if_exists: bool) -> Result<QueryOutput> {
        let engine = self.session.engine();
        let released = {
            let _guard = engine.write_guard()?;
            let fresh = engine.snapshot()?;
            let Some(current) = fresh
                .workspaces
                .get(&self.project_id)
                .and_then(|t| t.get(name))
            else {
                if if_exists {
                    return QueryOutput::status(&format!("workspace table {name} does not exist"));
                }
                return Err(self.missing(name));
            };
            engine.apply_locked(
                &[Change::DeleteWorkspaceTable(
                    self.project_id.clone(),
                    name.to_string(),
                    Expect::Version(current.version),
                )],
                &self.audit(
                    "WorkspaceDrop",
                    name,
                    json!({"project": self.project, "table": name, "version": current.version}),
                ),
                fresh.version,
            )?;
            current.files.iter().map(|f| f.path.clone()).collect()
        };
        engine.release_later(released);
        QueryOutput::status(&format!("workspace table {name} dropped"))
    }

    /// Writes a plan's rows as a new table version.
    async fn write_plan(
        &self,
        ctx: &SessionContext,
        name: &str,
        input: LogicalPlan,
        mode: Mode,
    ) -> Result<QueryOutput> {
        let engine = self.session.engine();
        let warehouse = engine.warehouse();
        let state = ctx.state();
        let optimizing = state.clone();
        let plan = self
            .session
            .planning(async move { Ok(optimizing.optimize(&input)?) })
            .await?;
        let provenance = self.provenance(&plan)?;
        let schema = match &mode {
            Mode::Append(t) => t.schema()?,
            Mode::Create | Mode::Replace(_) => Arc::new(plan.schema().as_arrow().clone()),
        };

        let write_id = uuid::Uuid::new_v4().simple().to_string();
        let staging = warehouse.open_write(&self.project_id, name, &write_id);
        // If this future is dropped mid-write (the client went away), the
        // guard removes what was written so far.
        let mut guard = Abandoned {
            warehouse: Some(warehouse.clone()),
            staging: staging.clone(),
            table_dir: warehouse.table_dir(&self.project_id, name),
            write_id: write_id.clone(),
        };
        let written = async {
            // Runs with the statement's own memory pool, and its place
            // among the executor's statements for its joins (turns.rs).
            let turn = engine.executor().turn();
            let mut config = state.config().clone().with_extension(Arc::clone(&turn));
            if crate::governance::raw_keys::plan_joins_raw_keys(&plan) {
                crate::join_arrays::hash_only(&mut config);
            }
            let state = SessionStateBuilder::new_from_existing(state)
                .with_config(config)
                .with_runtime_env(engine.statement_runtime()?)
                .build();
            let df = DataFrame::new(state, plan);
            let url = format!("{}/", warehouse.url_of(&staging));
            // On the engine's executor, like every query (executor.rs).
            let write = async move {
                Ok(df
                    .write_parquet(&url, DataFrameWriteOptions::new(), Some(parquet_settings()))
                    .await?)
            };
            let counts = engine
                .executor()
                .run(write, Arc::clone(&self.gctx.interrupt), turn)
                .await?;
            let rows: u64 = counts
                .iter()
                .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
                .map(|a| a.iter().flatten().sum::<u64>())
                .sum();
            let mut staged = warehouse.list(&staging).await?;
            staged.sort_by(|a, b| a.location.cmp(&b.location));
            let files = warehouse
                .promote(&staged, &self.project_id, name, &write_id)
                .await?;
            Ok::<_, VeilError>((rows, files))
        }
        .await;
        // Nothing more lands in staging once this returns (fence.rs).
        warehouse.close_write(&write_id).await;
        let (rows, files) = match written {
            Ok(w) => w,
            Err(e) => {
                guard.warehouse = None;
                let _ = warehouse.delete_dir(&staging).await;
                discard_promoted(warehouse, &guard.table_dir, &write_id).await;
                let e = crate::catalog::explain_write_input_error(e, self.gctx);
                return Err(out_of_space(e, name));
            }
        };
        guard.warehouse = None;
        let new_bytes: u64 = files.iter().map(|f| f.size).sum();
        let committed = self.commit(name, &mode, schema, files.clone(), rows, provenance);
        match committed {
            Ok(replaced) => {
                engine.release_later(replaced);
                let _ = warehouse.delete_dir(&staging).await;
                tracing::info!(
                    project = %self.project,
                    table = name,
                    rows,
                    bytes = new_bytes,
                    "workspace write committed"
                );
                count_output(rows)
            }
            Err(e) => {
                let paths: Vec<Path> = files.iter().map(|f| Path::from(f.path.as_str())).collect();
                let _ = warehouse.delete(paths).await;
                let _ = warehouse.delete_dir(&staging).await;
                Err(e)
            }
        }
    }

    /// What a write of `plan` carries: its masked columns, and what it read
    /// of each governed source, directly (with this writer's access) or
    /// through the workspace tables it copies (with theirs).
    fn provenance(&self, plan: &LogicalPlan) -> Result<Provenance> {
        let snapshot = &self.gctx.snapshot;
        let mut sources: Vec<String> = self
            .gctx
            .applied
            .lock()
            .map(|a| a.iter().map(|p| p.source.clone()).collect())
            .unwrap_or_default();
        sources.sort();
        sources.dedup();
        let mut out = Provenance {
            masked: masked_map(plan, snapshot),
            parents: BTreeSet::new(),
            reads: BTreeMap::new(),
        };
        let by = self.session.effective_user();
        for source in sources {
            let access = match snapshot.sources.get(&source) {
                Some(s) => crate::policy::restriction(&self.gctx.principal, snapshot, s)?,
                None => Default::default(),
            };
            out.parents.insert(source.clone());
            out.reads.entry(source).or_default().push(ParentRead {
                by: by.to_string(),
                access,
            });
        }
        for copied in copied_tables(plan) {
            out.parents.extend(copied.table.parents.iter().cloned());
            add_reads(&mut out.parents, &mut out.reads, &copied.table.reads);
        }
        Ok(out)
    }

    /// Commits a written version; returns the files it replaced.
    fn commit(
        &self,
        name: &str,
        mode: &Mode,
        schema: SchemaRef,
        files: Vec<WorkspaceFile>,
        rows: u64,
        provenance: Provenance,
    ) -> Result<Vec<String>> {
        let Provenance {
            masked,
            parents,
            reads,
        } = provenance;
        let engine = self.session.engine();
        let _guard = engine.write_guard()?;
        let fresh = engine.snapshot()?;
        let tables = fresh.workspaces.get(&self.project_id);
        let now_table = tables.and_then(|t| t.get(name));
        let user = self.session.user().to_string();
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let project_keyed = self.masked_joins && !masked.is_empty();
        let arrow_schema = serde_json::to_string(schema.as_ref())
            .map_err(|e| VeilError::Internal(format!("schema: {e}")))?;
        let (table, expect, replaced, kind) = match mode {
            Mode::Create => (
                WorkspaceTable {
                    project_id: self.project_id.clone(),
                    name: name.to_string(),
                    version: 1,
                    arrow_schema,
                    files,
                    rows,
                    masked,
                    parents,
                    reads,
                    project_keyed,
                    incarnation: new_incarnation(),
                    created_by: user.clone(),
                    updated_by: user.clone(),
                    updated_at: at,
                },
                Expect::Absent,
                vec![],
                "create",
            ),
            Mode::Replace(base) => (
                WorkspaceTable {
                    version: base.version + 1,
                    arrow_schema,
                    files,
                    rows,
                    masked,
                    parents,
                    reads,
                    project_keyed,
                    incarnation: new_incarnation(),
                    updated_by: user.clone(),
                    updated_at: at,
                    ..base.clone()
                },
                Expect::Version(base.version),
                base.files.iter().map(|f| f.path.clone()).collect(),
                "replace",
            ),
            Mode::Append(base) => {
                // Rebase onto appends committed meanwhile; anything else conflicts.
                let current = now_table.ok_or_else(|| {
                    VeilError::Conflict(format!(
                        "workspace table {name} was dropped while this write ran; nothing was \
                         written"
                    ))
                })?;
                if current.incarnation != base.incarnation {
                    return Err(VeilError::Conflict(format!(
                        "workspace table {name} was replaced while this write ran (version {} \
                         is now {}); nothing was written, retry",
                        base.version, current.version
                    )));
                }
                let mut t = current.clone();
                t.version += 1;
                t.files.extend(files);
                t.rows += rows;
                for (col, origins) in masked {
                    t.masked.entry(col).or_default().extend(origins);
                }
                t.parents.extend(parents);
                add_reads(&mut t.parents, &mut t.reads, &reads);
                t.project_keyed |= project_keyed;
                t.updated_by = user.clone();
                t.updated_at = at;
                (t, Expect::Version(current.version), vec![], "append")
            }
        };
        self.check_limit(&fresh, &table, now_table)?;
        let detail = json!({
            "project": self.project,
            "table": name,
            "mode": kind,
            "version": table.version,
            "rows": rows,
            "bytes": table.bytes(),
            "sources": table.parents,
            "masked_columns": table.masked.keys().collect::<Vec<_>>(),
        });
        engine.apply_locked(
            &[Change::PutWorkspaceTable(table, expect)],
            &self.audit("WorkspaceWrite", name, detail),
            fresh.version,
        )?;
        Ok(replaced)
    }

    /// Refuses a version that would take the project's workspace over its limit.
    fn check_limit(
        &self,
        fresh: &crate::model::CatalogSnapshot,
        table: &WorkspaceTable,
        replacing: Option<&WorkspaceTable>,
    ) -> Result<()> {
        let Some(limit) = self.session.engine().options().workspace_max_bytes else {
            return Ok(());
        };
        let others: u64 = fresh
            .workspaces
            .get(&self.project_id)
            .into_iter()
            .flat_map(|t| t.values())
            .filter(|t| Some(*t) != replacing)
            .map(WorkspaceTable::bytes)
            .sum();
        let total = others + table.bytes();
        if total > limit {
            return Err(VeilError::ResourceExhausted(format!(
                "workspace of project {} would hold {total} bytes, over its limit of {limit} \
                 bytes; nothing was written",
                self.project
            )));
        }
        Ok(())
    }
}

/// Deletes files a failed write promoted (named after its write id).
async fn discard_promoted(warehouse: &super::Warehouse, table_dir: &Path, write_id: &str) {
    if let Ok(metas) = warehouse.list(table_dir).await {
        let prefix = format!("{write_id}-");
        let mine: Vec<Path> = metas
            .into_iter()
            .filter(|m| {
                m.location
                    .filename()
                    .is_some_and(|f| f.starts_with(&prefix))
            })
            .map(|m| m.location)
            .collect();
        let _ = warehouse.delete(mine).await;
    }
}

/// Cleans up after a write whose future was dropped before it finished.
struct Abandoned {
    /// Some while the write is unfinished.
    warehouse: Option<super::Warehouse>,
    staging: Path,
    table_dir: Path,
    write_id: String,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(warehouse) = self.warehouse.take() else {
            return;
        };
        // Nothing more may be staged from here on.
        let closed = warehouse.close_write(&self.write_id);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // the start-up sweep removes them
        };
        let (staging, table_dir, write_id) = (
            self.staging.clone(),
            self.table_dir.clone(),
            std::mem::take(&mut self.write_id),
        );
        handle.spawn(async move {
            // Files the aborted write still had in flight land first.
            closed.await;
            let _ = warehouse.delete_dir(&staging).await;
            discard_promoted(&warehouse, &table_dir, &write_id).await;
        });
    }
}

fn new_incarnation() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// How long replaced or dropped files stay readable by queries that
/// started before the change.
pub const RELEASE_DELAY: Duration = Duration::from_secs(30);
