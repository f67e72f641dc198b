//! [`Engine`] (catalog store, keys, cached snapshot) and [`Session`], the
//! single entry point for every statement a client sends.
//!
//! ```text
//! Session::execute(sql)
//!   ├─ governance statement? ─► statement::exec (rights checked, one transaction + audit)
//!   └─ SQL ─► per-statement SessionContext (catalog of subscribed sources,
//!             governance analyzer for this principal and snapshot)
//!             ─► logical plan ─► verify (no DDL, DML, COPY, SET) ─► stream
//! ```
//! A new context is built for every statement from the current snapshot, so
//! a policy, subscription or attribute change takes effect on the next
//! statement of every open session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::common::format::{ExplainAnalyzeCategories, MetricCategory};
use datafusion::common::ParamValues;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{LogicalPlan, Statement};
use datafusion::optimizer::{Analyzer, Optimizer};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::analyze::AnalyzeExec;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use rand::distr::{Alphanumeric, SampleString};

use crate::audit::{AuditWriter, QueryAudit};
use crate::catalog::{VeilCatalog, CATALOG};
use crate::catalog_cache::{CatalogKey, PrincipalView};
use crate::error::{Result, VeilError};
use crate::governance::leakproof::{LiftUnsafeFilters, SecureFilterPushdown};
use crate::governance::raw_groups::RawKeyGroup;
use crate::governance::raw_keys::{RawKeyJoin, RawKeyJoinMode};
use crate::governance::{
    GovernanceContext, GovernanceRule, GovernedQueryPlanner, StatementGovernance,
};
use crate::keys::MasterKey;
use crate::model::{CatalogSnapshot, Permission, User};
use crate::principal::Principal;
use crate::statement;
use crate::store::{
    AuditEntry, AuditVerification, CatalogStore, Change, PostgresStore, SqliteStore,
};
use crate::workspace::write::WorkspaceOp;
use crate::workspace::Warehouse;

/// Execution options a session may `SET`; every other option is refused
/// because it could change what the governance layer relies on.
pub const SETTABLE_OPTIONS: &[&str] = &[
    "datafusion.execution.batch_size",
    "datafusion.execution.target_partitions",
    "datafusion.execution.time_zone",
    "datafusion.sql_parser.enable_ident_normalization",
];

/// How long a source directory's file list is reused before it is listed again.
pub const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The one settable option that changes functions (`now()`, ...).
const TIME_ZONE: &str = "datafusion.execution.time_zone";

/// The session state every statement starts from (a clone of it, then its
/// catalog, settings and [`StatementGovernance`]): DataFusion's functions
/// and rules, the governance analyzer rule right before type coercion, and
/// the governance optimizer rules. Built once per engine, because
/// registering DataFusion's functions again cost more than the rest of a
/// statement's context. Functions whose output an argument sizes are held
/// to `query_memory` bytes per call (`bounded_fns.rs`).
///
/// With `distributed` (a server with a Ballista cluster), the physical
/// rules whose operators and expressions are bound to this process (they
/// wait on its joins, yield to its executor, measure its batches) are left
/// out, so that plans can travel (`distributed/`); none is governance.
fn statement_state(
    runtime: Arc<RuntimeEnv>,
    query_memory: usize,
    distributed: bool,
) -> Result<SessionState> {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG, "public");
    // EXPLAIN ANALYZE shows row counts and timings only: byte and
    // memory metrics of operators that compare raw keys (raw_keys.rs,
    // raw_groups.rs) would measure raw values.
    config.options_mut().explain.analyze_categories =
        ExplainAnalyzeCategories::Only(vec![MetricCategory::Rows, MetricCategory::Timing]);
    // Not governance: joins on up to 8Mi integer key values index their
    // build side (join_arrays.rs); `veil bench tpch`'s ungoverned run too.
    crate::join_arrays::configure(&mut config);
    if distributed {
        config = crate::distributed::restrict(config);
    }

    let mut analyzer_rules = Analyzer::new().rules;
    let at = analyzer_rules
        .iter()
        .position(|r| r.name() == "type_coercion")
        .unwrap_or(0);
    analyzer_rules.insert(at, Arc::new(GovernanceRule));
    let mut optimizer_rules = Optimizer::new().rules;
    let at = optimizer_rules
        .iter()
        .position(|r| r.name() == "push_down_filter")
        .map(|i| i + 1)
        .unwrap_or(optimizer_rules.len());
    optimizer_rules.insert(at, Arc::new(SecureFilterPushdown));
    // Not governance: DataFusion leaves `x IN (subquery)` above every join
    // (semi_join.rs); `veil bench tpch` gives its ungoverned run this rule too.
    optimizer_rules.push(Arc::new(crate::semi_join::SemiJoinOnJoinKey));
    // Not governance either: an aggregate joined on its group key only
    // aggregates the keys the join can match (group_reduction.rs); the
    // ungoverned run of `veil bench tpch` has it too.
    optimizer_rules.push(Arc::new(crate::group_reduction::ReduceGroupsByJoinKey));
    optimizer_rules.push(Arc::new(RawKeyJoin));
    optimizer_rules.push(Arc::new(LiftUnsafeFilters));
    optimizer_rules.push(Arc::new(crate::bounded_fns::BoundedConstants {
        limit: query_memory,
    }));
    // After join selection: semi and anti joins build on the side smaller
    // in bytes (build_side.rs) and joins with a far larger probe side
    // build one table (collect_build.rs), neither governance; then joins
    // on raw keys never partition by them (governance/raw_keys.rs).
    let mut physical_rules = crate::build_side::physical_rules(vec![Arc::new(RawKeyJoinMode)]);
    // Last before the sanity check: partial aggregates group raw keys, so
    // nothing may reshape them after; filters evaluate costly masks after
    // their other conjuncts (costly_conjuncts.rs), after every rule that
    // pushes or merges filters, and the remaining conjuncts run in a
    // measured order (adaptive_and.rs, not governance); joins yield between batches
    // (yielding.rs), after every rule that rewrites joins or pushes
    // filters through them. `LIKE`s of `%`-separated segments are matched
    // by substring search (like_segments.rs, not governance), before the
    // filter rules that split or reorder their conjuncts.
    let at = physical_rules
        .iter()
        .position(|r| r.name() == "SanityCheckPlan")
        .unwrap_or(physical_rules.len());
    let last: [Arc<dyn PhysicalOptimizerRule + Send + Sync>; 6] = [
        Arc::new(RawKeyGroup),
        Arc::new(crate::like_segments::LikeSegments),
        Arc::new(crate::governance::costly_conjuncts::CostlyConjunctsLast),
        Arc::new(crate::adaptive_and::AdaptiveConjuncts),
        // Not governance: scans drop the rows a join's build-side keys
        // rule out (dynamic_scan.rs); the ungoverned bench run has it too.
        Arc::new(crate::dynamic_scan::DynamicScanRows),
        Arc::new(crate::yielding::YieldingJoins),
    ];
    physical_rules.splice(at..at, last);
    // After everything, the sanity check included: plans that only pass a
    // scan's columns on read its strings as `Utf8` (classic_strings.rs,
    // not governance).
    physical_rules.push(Arc::new(crate::classic_strings::ClassicStringScans));
    if distributed {
        physical_rules.retain(|r| !LOCAL_ONLY_RULES.contains(&r.name()));
    }

    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
        .with_analyzer_rules(analyzer_rules)
        .with_optimizer_rules(optimizer_rules)
        .with_physical_optimizer_rules(physical_rules)
        .with_query_planner(Arc::new(GovernedQueryPlanner {
            input_limit: Some(query_memory),
            visible: Default::default(),
            distributed,
        }))
        .build();
    crate::bounded_fns::bound_growing_functions(&mut state, query_memory)?;
    Ok(state)
}

/// Physical rules a plan for a Ballista cluster goes without: their
/// operators and expressions belong to this process (they wait on its
/// joins' dynamic filters, yield to its executor, order conjuncts by what
/// they measured here).
const LOCAL_ONLY_RULES: [&str; 5] = [
    "veil_classic_string_scans",
    "veil_like_segments",
    "veil_adaptive_conjuncts",
    "veil_dynamic_scan_rows",
    "veil_yielding_joins",
];

/// Engine settings beyond the data directory.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where project workspaces live: an object_store URL (`s3://bucket/prefix`)
    /// or a local directory. Default: `<data_dir>/warehouse`.
    pub warehouse: Option<String>,
    /// Largest total size of one project's workspace tables; None: no limit.
    pub workspace_max_bytes: Option<u64>,
    /// How long replaced or dropped workspace files stay readable by queries
    /// that started before the change.
    pub release_delay: std::time::Duration,
    /// Where `veil audit archive` puts archived audit records, so that
    /// `VERIFY AUDIT` checks them with the live log. Default:
    /// `<data_dir>/audit-archive`.
    pub audit_archive: Option<PathBuf>,
    /// Memory, concurrency and time limits of statements.
    pub limits: crate::limits::Limits,
    /// Back-off after failed logins.
    pub login: crate::login::ThrottlePolicy,
    /// How long the audit writer may also hold a group commit open while
    /// only a few statements run (at most 2 ms; zero, the default: never).
    /// Fewer commits, less CPU per query, more latency under moderate load.
    pub audit_commit_delay: std::time::Duration,
    /// The PostgreSQL catalog shared by several servers; `None`: the
    /// embedded SQLite catalog, `<data_dir>/catalog.sqlite`.
    pub catalog: Option<CatalogParams>,
    /// The Ballista scheduler governed queries run on (`df://host:port`);
    /// `None`: they run in this process.
    pub cluster: Option<String>,
}

/// Connection parameters of a PostgreSQL catalog: a `postgres://` URL or
/// libpq `key=value` pairs. They may hold a password, so `Debug` shows
/// none of them.
#[derive(Clone, PartialEq, Eq)]
pub struct CatalogParams(pub String);

impl std::fmt::Debug for CatalogParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogParams(<redacted>)")
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            warehouse: None,
            workspace_max_bytes: Some(DEFAULT_WORKSPACE_MAX_BYTES),
            release_delay: crate::workspace::write::RELEASE_DELAY,
            audit_archive: None,
            limits: crate::limits::Limits::default(),
            login: crate::login::ThrottlePolicy::default(),
            audit_commit_delay: std::time::Duration::ZERO,
            catalog: None,
            cluster: None,
        }
    }
}

impl EngineOptions {
    /// Fills what is unset and defaults to a place in `data_dir`: the
    /// warehouse (`<data_dir>/warehouse`) and the audit archive
    /// (`<data_dir>/audit-archive`).
    pub fn in_data_dir(mut self, data_dir: &Path) -> Self {
        if self.warehouse.is_none() {
            self.warehouse = Some(data_dir.join("warehouse").to_string_lossy().into_owned());
        }
        if self.audit_archive.is_none() {
            self.audit_archive = Some(data_dir.join("audit-archive"));
        }
        self
    }
}

/// What a shared catalog's start-up sweep leaves beyond the query timeout:
/// a write's files are older than its statement by the time it commits.
pub const SWEEP_MARGIN: std::time::Duration = std::time::Duration::from_secs(600);

/// Default per-project workspace limit: 10 GiB.
pub const DEFAULT_WORKSPACE_MAX_BYTES: u64 = 10 << 30;

/// The governed query engine.
#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn CatalogStore>,
    keys: MasterKey,
    snapshot: RwLock<Arc<CatalogSnapshot>>,
    write_lock: Mutex<()>,
    runtime: Arc<RuntimeEnv>,
    base_dir: PathBuf,
    warehouse: Warehouse,
    options: EngineOptions,
    audit: AuditWriter,
    metrics: crate::metrics::Metrics,
    admission: crate::limits::Admission,
    throttle: crate::login::LoginThrottle,
    plans: crate::plan_cache::PlanCache,
    /// Each principal's catalog at the current policy version.
    catalogs: crate::catalog_cache::CatalogCache,
    /// What every statement's session state is cloned from.
    statement_state: SessionState,
    /// Where statements execute (`executor.rs`).
    executor: Arc<crate::executor::Executor>,
    /// The Ballista cluster queries over governed sources run on.
    cluster: Option<crate::distributed::Cluster>,
}

/// A statement's result: its schema and a stream of batches.
pub struct QueryOutput {
    /// Result schema.
    pub schema: SchemaRef,
    /// The batches.
    pub stream: SendableRecordBatchStream,
}

impl std::fmt::Debug for QueryOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueryOutput({:?})", self.schema)
    }
}

impl QueryOutput {
    /// A result made of ready batches.
    pub fn from_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Self> {
        Ok(Self {
            stream: Box::pin(MemoryStream::try_new(batches, Arc::clone(&schema), None)?),
            schema,
        })
    }

    /// The one-row `status` result of a statement that changes something.
    pub fn status(text: &str) -> Result<Self> {
        let schema = status_schema();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(vec![text]))],
        )?;
        Self::from_batches(schema, vec![batch])
    }

    /// Collects every batch.
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        use futures::TryStreamExt;
        Ok(self.stream.try_collect().await?)
    }
}

/// Schema of the status row.
pub fn status_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "status",
        DataType::Utf8,
        false,
    )]))
}

/// Hashes a password with argon2id.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| VeilError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| VeilError::Internal(format!("password hashing failed: {e}")))
}

/// Held while a change is computed and applied (see
/// [`Engine::write_guard`]); releases the store's write lock when dropped.
pub(crate) struct WriteGuard<'a> {
    store: &'a dyn CatalogStore,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.store.unlock_writes();
    }
}

impl Engine {
    /// Opens the engine on a data directory: `catalog.sqlite` (or the
    /// PostgreSQL catalog of `options.catalog`), `keys/`.
    /// Relative data-source locations resolve against `base_dir`.
    pub fn open(data_dir: &Path, base_dir: &Path) -> Result<Arc<Self>> {
        Self::open_with(data_dir, base_dir, EngineOptions::default())
    }

    /// [`Engine::open`] with options (warehouse location, workspace limit).
    pub fn open_with(
        data_dir: &Path,
        base_dir: &Path,
        options: EngineOptions,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            VeilError::InvalidArgument(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let keys = MasterKey::load_or_create(data_dir)?;
        let store: Arc<dyn CatalogStore> = match &options.catalog {
            Some(params) => Arc::new(PostgresStore::connect(&params.0, keys.audit_key())?),
            None => Arc::new(SqliteStore::open(
                &data_dir.join("catalog.sqlite"),
                keys.audit_key(),
            )?),
        };
        Self::new(store, keys, base_dir, options.in_data_dir(data_dir))
    }

    /// An engine over any store; `options.warehouse` must be set.
    pub fn new(
        store: Arc<dyn CatalogStore>,
        keys: MasterKey,
        base_dir: &Path,
        options: EngineOptions,
    ) -> Result<Arc<Self>> {
        let snapshot = store.load()?;
        // Directory listings are cached for a second only: a file added to
        // a source's directory is read by the queries planned after that.
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(
                CacheManagerConfig::default().with_list_files_cache_ttl(Some(LISTING_TTL)),
            )
            .with_max_temp_directory_size(options.limits.spill as u64)
            .build_arc()?;
        let location = options
            .warehouse
            .as_deref()
            .ok_or_else(|| VeilError::InvalidArgument("no warehouse location configured".into()))?;
        let warehouse = Warehouse::open(location, &runtime)?;
        let metrics = crate::metrics::Metrics::new()?;
        let cluster = options
            .cluster
            .as_deref()
            .map(|url| {
                crate::distributed::Cluster::new(url, crate::distributed::cluster_key(&keys))
                    .map(|c| c.counting_cancels(metrics.cluster_jobs_cancelled.clone()))
            })
            .transpose()?;
        let audit = AuditWriter::start(
            Arc::clone(&store),
            options.audit_commit_delay,
            metrics.audit_commits.clone(),
        )?;
        Ok(Arc::new(Self {
            admission: crate::limits::Admission::new(options.limits.clone()),
            throttle: crate::login::LoginThrottle::new(options.login.clone()),
            plans: Default::default(),
            catalogs: Default::default(),
            statement_state: statement_state(
                Arc::clone(&runtime),
                options.limits.query_memory.min(options.limits.memory),
                cluster.is_some(),
            )?,
            cluster,
            executor: Arc::new(crate::executor::Executor::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                crate::sql_guard::WORKER_STACK_BYTES,
            )?),
            audit,
            metrics,
            store,
            keys,
            snapshot: RwLock::new(Arc::new(snapshot)),
            write_lock: Mutex::new(()),
            runtime,
            base_dir: std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf()),
            warehouse,
            options,
        }))
    }

    /// A statement's runtime: the engine's, with the statement's own memory
    /// pool (its share of the server's).
    pub(crate) fn statement_runtime(&self) -> Result<Arc<RuntimeEnv>> {
        Ok(RuntimeEnvBuilder::from_runtime_env(&self.runtime)
            .with_memory_pool(self.admission.query_pool())
            .build_arc()?)
    }

    /// Where workspaces live.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The engine's options.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Removes workspace files no catalog entry lists (left by writes that
    /// failed or crashed before their commit). Run at start-up; returns how
    /// many files were removed.
    ///
    /// On a shared catalog, other servers may be writing: only files older
    /// than the longest a statement may run (the query timeout) and
    /// [`SWEEP_MARGIN`] go.
    pub async fn sweep_workspaces(&self) -> Result<usize> {
        let snapshot = self.snapshot()?;
        let min_age = self
            .options
            .catalog
            .is_some()
            .then(|| self.options.limits.query_timeout + SWEEP_MARGIN);
        self.warehouse.sweep(&snapshot, min_age).await
    }

    /// Deletes files a committed change stopped listing, after
    /// [`EngineOptions::release_delay`] (queries that started before the
    /// change may still read them); files a derived source pins stay.
    pub fn release_later(self: &Arc<Self>, files: Vec<String>) {
        if files.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // the next start-up sweep removes them
        };
        let engine = Arc::clone(self);
        handle.spawn(async move {
            tokio::time::sleep(engine.options.release_delay).await;
            let released = match engine.snapshot() {
                Ok(s) => engine.warehouse.release(&s, &files).await,
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                tracing::warn!(
                    "releasing workspace files failed (the start-up sweep retries): {e}"
                );
            }
        });
    }

    /// Where statements execute.
    pub(crate) fn executor(&self) -> &crate::executor::Executor {
        &self.executor
    }

    /// The master key (for deriving signing keys at the transport).
    pub fn keys(&self) -> &MasterKey {
        &self.keys
    }

    /// The metrics in Prometheus text format, with the gauges of running
    /// statements and query memory brought up to date.
    pub fn render_metrics(&self) -> Result<String> {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .statements_running
            .set(gauge(self.admission.running()));
        self.metrics
            .query_memory_bytes
            .set(gauge(self.admission.memory().used()));
        self.metrics.render()
    }

    /// Admission control and the shared memory budget.
    pub fn admission(&self) -> &crate::limits::Admission {
        &self.admission
    }

    /// The engine's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The group-commit audit writer.
    pub fn audit_writer(&self) -> &AuditWriter {
        &self.audit
    }

    /// Verifies the audit chain: the archives (when an archive directory is
    /// configured) and the live log, as one chain.
    pub fn verify_audit(&self) -> Result<AuditVerification> {
        match &self.options.audit_archive {
            Some(dir) => {
                crate::audit::archive::verify_all(self.store.as_ref(), &self.keys.audit_key(), dir)
            }
            None => self.store.verify_audit(),
        }
    }

    /// The catalog store.
    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    /// Directory relative data-source locations resolve against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The current catalog snapshot (reloaded when another writer changed it).
    pub fn snapshot(&self) -> Result<Arc<CatalogSnapshot>> {
        let version = self.store.version()?;
        {
            let cached = self
                .snapshot
                .read()
                .map_err(|_| VeilError::Internal("snapshot lock poisoned".into()))?;
            if cached.version == version {
                return Ok(Arc::clone(&cached));
            }
        }
        let fresh = Arc::new(self.store.load()?);
        if let Ok(mut w) = self.snapshot.write() {
            *w = Arc::clone(&fresh);
        }
        Ok(fresh)
    }

    /// Serializes a read-check-write sequence of governance changes: this
    /// server's statements, and (through the store's write lock) the
    /// servers sharing its catalog.
    pub(crate) fn write_guard(&self) -> Result<WriteGuard<'_>> {
        let local = self
            .write_lock
            .lock()
            .map_err(|_| VeilError::Internal("write lock poisoned".into()))?;
        self.store.lock_writes()?;
        Ok(WriteGuard {
            store: self.store.as_ref(),
            _local: local,
        })
    }

    /// Applies changes computed from the snapshot at version `based_on`,
    /// with their audit record; the caller holds [`Self::write_guard`].
    pub(crate) fn apply_locked(
        &self,
        changes: &[Change],
        audit: &AuditEntry,
        based_on: u64,
    ) -> Result<()> {
        self.store.apply(changes, audit, based_on)?;
        Ok(())
    }

    /// First start: creates `admin` with every permission when the catalog
    /// has no user. Returns the generated password when one was generated.
    pub fn bootstrap_admin(&self, password: Option<String>) -> Result<Option<String>> {
        let _guard = self.write_guard()?;
        let snapshot = self.snapshot()?;
        if !snapshot.users.is_empty() {
            return Ok(None);
        }
        let generated = password.is_none();
        let password = password.unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), 24));
        let admin = User {
            name: "admin".into(),
            password_hash: Some(hash_password(&password)?),
            groups: Default::default(),
            attributes: Default::default(),
            permissions: Permission::ALL.into_iter().collect(),
        };
        self.apply_locked(
            &[Change::PutUser(admin)],
            &AuditEntry {
                actor: "system".into(),
                impersonated: None,
                action: "CreateUser".into(),
                object: "admin".into(),
                detail: r#"{"bootstrap":true}"#.into(),
                outcome: "ok".into(),
                ..Default::default()
            },
            snapshot.version,
        )?;
        Ok(generated.then_some(password))
    }

    /// Checks a user name and password; see [`Engine::login`].
    pub fn authenticate(&self, user: &str, password: &str) -> Result<User> {
        self.login(user, password, None)
    }

    /// Checks a user name and password from `client` (the peer's address,
    /// when known). Every attempt is audited; failed ones are throttled per
    /// user and per address ([`crate::login`]): while a back-off runs, an
    /// attempt is refused without checking the password. The check costs
    /// the same whether or not the user exists.
    pub fn login(&self, user: &str, password: &str, client: Option<&str>) -> Result<User> {
        let keys = crate::login::keys(user, client);
        if let Some(wait) = self.throttle.blocked(&keys) {
            let secs = wait.as_secs_f64().ceil() as u64;
            self.audit_login(
                user,
                "error",
                serde_json::json!({"client": client, "throttled": true, "retry_after_secs": secs}),
            )?;
            let from = client.map(|c| format!(" or from {c}")).unwrap_or_default();
            return Err(VeilError::ResourceExhausted(format!(
                "too many failed logins for '{user}'{from}; retry in {secs} s"
            )));
        }
        let snapshot = self.snapshot()?;
        let record = snapshot.users.get(user);
        let hash = record
            .and_then(|u| u.password_hash.as_deref())
            .or(DUMMY_HASH.as_deref());
        let verified = hash
            .and_then(|h| PasswordHash::new(h).ok())
            .is_some_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            });
        let ok = record.filter(|u| verified && u.password_hash.is_some());
        let backoff = if ok.is_some() {
            self.throttle.succeeded(&keys[0]);
            None
        } else {
            self.throttle.failed(&keys)
        };
        self.audit_login(
            user,
            if ok.is_some() { "ok" } else { "error" },
            serde_json::json!({"client": client, "backoff_secs": backoff.map(|b| b.as_secs())}),
        )?;
        ok.cloned().ok_or_else(|| {
            VeilError::Unauthenticated(format!("invalid user name or password for '{user}'"))
        })
    }

    /// Logs in the user a verified client certificate names (mTLS); audited.
    pub fn login_certificate(&self, user: &str, client: Option<&str>) -> Result<User> {
        let found = self.snapshot()?.users.get(user).cloned();
        self.audit_login(
            user,
            if found.is_some() { "ok" } else { "error" },
            serde_json::json!({"client": client, "method": "certificate"}),
        )?;
        found.ok_or_else(|| {
            VeilError::Unauthenticated(format!(
                "the client certificate names '{user}', who is not a user"
            ))
        })
    }

    fn audit_login(&self, user: &str, outcome: &str, detail: serde_json::Value) -> Result<()> {
        self.store.audit(&AuditEntry {
            actor: user.to_string(),
            impersonated: None,
            action: "Authenticate".into(),
            object: user.to_string(),
            detail: detail.to_string(),
            outcome: outcome.into(),
            ..Default::default()
        })
    }

    /// A session for an authenticated user.
    pub fn session(self: &Arc<Self>, user: &str) -> Session {
        let credential = self
            .snapshot()
            .ok()
            .and_then(|s| s.users.get(user).map(Credential::of));
        Session {
            credential,
            engine: Arc::clone(self),
            user: user.to_string(),
            impersonated: None,
            project: None,
            settings: Vec::new(),
            deadline: None,
        }
    }
}

/// What a session's login was granted on: when any of it changes (password
/// changed, a permission revoked, the user dropped) the session ends.
#[derive(Debug, Clone, PartialEq)]
struct Credential {
    password_hash: Option<String>,
    permissions: std::collections::BTreeSet<Permission>,
}

impl Credential {
    fn of(user: &User) -> Self {
        Self {
            password_hash: user.password_hash.clone(),
            permissions: user.permissions.clone(),
        }
    }
}

/// A hash to verify against when the user does not exist or has no
/// password, so a login costs the same either way.
static DUMMY_HASH: std::sync::LazyLock<Option<String>> =
    std::sync::LazyLock::new(|| hash_password("veil: no such user").ok());

/// One client's session: identity, project context and allowed settings.
#[derive(Debug, Clone)]
pub struct Session {
    engine: Arc<Engine>,
    credential: Option<Credential>,
    user: String,
    impersonated: Option<String>,
    project: Option<String>,
    settings: Vec<(String, String)>,
    /// When the running statement must end (set by `execute_with_params`).
    deadline: Option<tokio::time::Instant>,
}

/// Largest `datafusion.execution.batch_size` a session may set. DataFusion's
/// operators allocate for a whole batch up front: a `GROUP BY` at a batch
/// size of 10^11 rows asked for 1.6 TB at once and aborted the server.
pub const MAX_BATCH_SIZE: u64 = 1 << 20;

/// Most `datafusion.execution.target_partitions` a session may set (each
/// partition is a stream with its own buffers in every operator).
pub const MAX_TARGET_PARTITIONS: u64 = 1024;

/// `SET name = value` when `name` may be set by a session, to a value in
/// its range.
fn settable(variable: &str, value: String) -> Result<(String, String)> {
    let name = variable.to_ascii_lowercase();
    if !SETTABLE_OPTIONS.contains(&name.as_str()) {
        return Err(VeilError::PermissionDenied(format!(
            "SET {name} is not allowed; settable options: {}",
            SETTABLE_OPTIONS.join(", ")
        )));
    }
    let most = match name.as_str() {
        "datafusion.execution.batch_size" => Some(MAX_BATCH_SIZE),
        "datafusion.execution.target_partitions" => Some(MAX_TARGET_PARTITIONS),
        _ => None,
    };
    if name == "datafusion.execution.time_zone" {
        // DataFusion takes any text and fails later, in the client's
        // decoder or a cast; PostgreSQL refuses an unknown zone at SET.
        let zone = value.trim().trim_matches('\'');
        if zone
            .parse::<datafusion::arrow::array::timezone::Tz>()
            .is_err()
        {
            return Err(VeilError::InvalidArgument(format!(
                "SET {name}: {zone} is not a time zone (an IANA name such as Europe/Paris, or \
                 an offset such as +02:00)"
            )));
        }
    }
    if let Some(most) = most {
        let n: u64 = value.trim().trim_matches('\'').parse().map_err(|_| {
            VeilError::InvalidArgument(format!("SET {name} takes a whole number, not {value}"))
        })?;
        if n > most {
            return Err(VeilError::InvalidArgument(format!(
                "SET {name} = {n} is more than the most a session may set ({most})"
            )));
        }
    }
    Ok((name, value))
}

fn refusal(plan: &LogicalPlan) -> Option<String> {
    let what = match plan {
        LogicalPlan::Ddl(d) => format!("DDL ({})", d.name()),
        LogicalPlan::Dml(d) => format!("{} into {}", d.op, d.table_name),
        LogicalPlan::Copy(_) => "COPY".to_string(),
        LogicalPlan::Statement(s) => format!("statement {}", s.name()),
        _ => return None,
    };
    let writes = matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_));
    Some(refusal_text(&what, writes))
}

/// Statements refused before they are planned, since none of them can be
/// a workspace write: DataFusion plans a function's body, a view's query
/// and a COPY's query first, so a mistake in those answered instead of the
/// refusal. Same words as [`refusal`].
fn refusal_unplanned(statement: &DFStatement) -> Option<String> {
    let ddl = match statement {
        DFStatement::CopyTo(_) => return Some(refusal_text("COPY", false)),
        DFStatement::CreateExternalTable(_) => "CreateExternalTable",
        DFStatement::Statement(s) => match s.as_ref() {
            SqlStatement::CreateFunction(_) => "CreateFunction",
            SqlStatement::DropFunction(_) => "DropFunction",
            SqlStatement::CreateView(_) => "CreateView",
            _ => return None,
        },
        _ => return None,
    };
    Some(refusal_text(&format!("DDL ({ddl})"), true))
}

/// Why `what` is refused; `writes`: it would create or change a table.
fn refusal_text(what: &str, writes: bool) -> String {
    let hint = if writes {
        "; tables are written only in a project's workspace (inside a project: \
         CREATE TABLE workspace.t AS SELECT ...)"
    } else {
        ""
    };
    format!("{what} is not allowed: data is reached only through governed data sources{hint}")
}

/// A planned SQL statement: a query, a write into the project's workspace,
/// or `SET` (the option and value, or why it is refused).
enum Planned {
    Query(LogicalPlan),
    Workspace(WorkspaceOp),
    Set(Result<(String, String)>),
}

impl Session {
    /// Sets an execution option directly, bypassing the SQL `SET` allow-list.
    /// For embedding and tests (e.g. running leak tests with Parquet filter
    /// pushdown on); clients cannot reach this.
    pub fn configure(&mut self, name: &str, value: &str) -> Result<()> {
        SessionConfig::new().options_mut().set(name, value)?;
        self.settings.retain(|(k, _)| k != name);
        self.settings.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// Fails when the login this session stands on was revoked: the user
    /// was dropped, their password changed or a permission they held during
    /// the session was revoked. Other changes (grants, groups, attributes,
    /// policies) apply to the next statement without a new login; a grant
    /// is remembered, so revoking it later ends the session too. Returns
    /// whether the remembered permissions changed (store the session).
    pub fn check_credentials(&mut self) -> Result<bool> {
        let snapshot = self.engine.snapshot()?;
        let Some(user) = snapshot.users.get(&self.user) else {
            return Err(VeilError::Unauthenticated(format!(
                "user {} no longer exists; session closed",
                self.user
            )));
        };
        let Some(was) = &mut self.credential else {
            return Err(VeilError::Unauthenticated(format!(
                "session of {} has no login; log in again",
                self.user
            )));
        };
        if user.password_hash != was.password_hash {
            return Err(VeilError::Unauthenticated(format!(
                "the password of {} changed; session closed, log in again",
                self.user
            )));
        }
        if let Some(p) = was.permissions.difference(&user.permissions).next() {
            return Err(VeilError::Unauthenticated(format!(
                "permission {p} of {} was revoked; session closed, log in again",
                self.user
            )));
        }
        let granted = user.permissions.len() > was.permissions.len();
        if granted {
            was.permissions = user.permissions.clone();
        }
        Ok(granted)
    }

    /// The authenticated user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user policies are evaluated for.
    pub fn effective_user(&self) -> &str {
        self.impersonated.as_deref().unwrap_or(&self.user)
    }

    /// The impersonated user, if any.
    pub fn impersonated(&self) -> Option<&str> {
        self.impersonated.as_deref()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Act as another user (requires IMPERSONATE_USER); None stops. Starting
    /// (or being refused) is audited; repeating the current target is not.
    pub fn impersonate(&mut self, target: Option<&str>) -> Result<()> {
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            self.impersonated = None;
            return Ok(());
        };
        if self.impersonated.as_deref() == Some(target) {
            return Ok(());
        }
        let snapshot = self.engine.snapshot()?;
        let me = self.caller(&snapshot)?;
        let refused = if !me.has(Permission::ImpersonateUser) {
            Some(VeilError::PermissionDenied(format!(
                "{} lacks permission IMPERSONATE_USER needed to impersonate {target}",
                self.user
            )))
        } else if !snapshot.users.contains_key(target) {
            Some(VeilError::NotFound(format!("user {target} does not exist")))
        } else {
            None
        };
        self.engine.store.audit(&AuditEntry {
            actor: self.user.clone(),
            impersonated: Some(target.to_string()),
            action: "Impersonate".into(),
            object: target.to_string(),
            detail: serde_json::json!({"error": refused.as_ref().map(ToString::to_string)})
                .to_string(),
            outcome: if refused.is_some() { "error" } else { "ok" }.into(),
            project: self.project.clone(),
        })?;
        if let Some(e) = refused {
            return Err(e);
        }
        self.impersonated = Some(target.to_string());
        Ok(())
    }

    /// The current project, if any.
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// The catalog queries resolve in: the project's name inside a project,
    /// `veil` outside.
    pub fn catalog_name(&self) -> &str {
        self.project.as_deref().unwrap_or(CATALOG)
    }

    /// Enters a project (the effective user must be a member) or, with None,
    /// `veil` or an empty name, leaves it. Membership and compliance are
    /// checked again at every statement.
    pub fn use_project(&mut self, project: Option<&str>) -> Result<()> {
        let Some(name) = project
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case(CATALOG))
        else {
            self.project = None;
            return Ok(());
        };
        let name = crate::project::project_name(name)?;
        let snapshot = self.engine.snapshot()?;
        self.caller(&snapshot)?;
        let user = self.effective_record(&snapshot)?;
        crate::project::member_project(&snapshot, user, &name)?;
        self.project = Some(name);
        Ok(())
    }

    /// The projects the effective user is a member of (they are catalogs).
    pub fn projects(&self) -> Result<Vec<String>> {
        let snapshot = self.engine.snapshot()?;
        let me = self.effective_user();
        Ok(snapshot.projects_where(|p| p.members.contains(me)))
    }

    fn effective_record<'s>(&self, snapshot: &'s CatalogSnapshot) -> Result<&'s User> {
        snapshot.users.get(self.effective_user()).ok_or_else(|| {
            VeilError::Unauthenticated(format!("user {} no longer exists", self.effective_user()))
        })
    }

    /// The authenticated user's current catalog record.
    pub(crate) fn caller<'s>(&self, snapshot: &'s CatalogSnapshot) -> Result<&'s User> {
        snapshot.users.get(&self.user).ok_or_else(|| {
            VeilError::Unauthenticated(format!("user {} no longer exists", self.user))
        })
    }

    /// The effective principal at this snapshot: the (impersonated) user,
    /// inside a project with its purposes, or the project's synthetic
    /// principal when it is equalized (DESIGN.md section 3).
    pub fn principal(&self, snapshot: &CatalogSnapshot) -> Result<Principal> {
        self.caller(snapshot)?;
        let user = self.effective_record(snapshot)?;
        crate::project::effective_principal(snapshot, user, self.project.as_deref())
    }

    /// `system.audit` when the caller (and the impersonated user) hold AUDIT
    /// and no project is in use; otherwise why not.
    fn system_tables(
        &self,
        snapshot: &CatalogSnapshot,
    ) -> Result<std::result::Result<Arc<dyn datafusion::catalog::TableProvider>, String>> {
        if let Some(p) = &self.project {
            return Ok(Err(format!(
                "system.audit is not reachable inside project {p} (USE PROJECT NONE)"
            )));
        }
        for u in [
            Some(self.caller(snapshot)?),
            self.impersonated
                .as_ref()
                .map(|_| self.effective_record(snapshot))
                .transpose()?,
        ]
        .into_iter()
        .flatten()
        {
            if !u.has(Permission::Audit) {
                return Ok(Err(format!(
                    "{} lacks permission AUDIT needed to read system.audit",
                    u.name
                )));
            }
        }
        Ok(Ok(Arc::new(crate::audit::table::AuditTable::new(
            Arc::clone(&self.engine.store),
        ))))
    }

    /// Builds the DataFusion context for one statement.
    pub fn context(&self) -> Result<(SessionContext, Arc<GovernanceContext>)> {
        let snapshot = self.engine.snapshot()?;
        let key = CatalogKey {
            user: self.user.clone(),
            impersonated: self.impersonated.clone(),
            project: self.project.clone(),
        };
        let view = self
            .engine
            .catalogs
            .get_or_build(snapshot.version, key, || {
                let gctx = self.governance_context(self.principal(&snapshot)?, &snapshot);
                let system = self.system_tables(&snapshot)?;
                let catalog = VeilCatalog::build(
                    &gctx,
                    &self.engine.runtime,
                    &self.engine.warehouse,
                    system,
                )?;
                Ok(PrincipalView {
                    principal: gctx.principal,
                    catalog: Arc::new(catalog),
                })
            })?;
        let gctx = Arc::new(self.governance_context(view.principal.clone(), &snapshot));
        let catalog = Arc::clone(&view.catalog);
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog(self.catalog_name().into(), catalog);
        let mut state = self.engine.statement_state.clone();
        state.register_catalog_list(Arc::new(catalogs));
        let options = state.config_mut().options_mut();
        options.catalog.default_catalog = self.catalog_name().to_string();
        for (k, v) in &self.settings {
            options.set(k, v)?;
        }
        options
            .extensions
            .insert(StatementGovernance(Arc::clone(&gctx)));
        if self.settings.iter().any(|(k, _)| k == TIME_ZONE) {
            // Functions that read the time zone are made again for it.
            state = SessionStateBuilder::new_from_existing(state).build();
        }
        Ok((SessionContext::new_with_state(state), gctx))
    }

    /// What the governance rule of one statement decides with.
    fn governance_context(
        &self,
        principal: Principal,
        snapshot: &Arc<CatalogSnapshot>,
    ) -> GovernanceContext {
        GovernanceContext {
            principal,
            project: self.project.clone(),
            snapshot: Arc::clone(snapshot),
            keys: self.engine.keys.clone(),
            applied: Mutex::new(Vec::new()),
            scanned: Mutex::new(Vec::new()),
            workspace_reads: Mutex::new(Vec::new()),
            metrics: self.engine.metrics.clone(),
            interrupt: Arc::default(),
            on_cluster: Default::default(),
        }
    }

    /// Plans SQL once into a verified logical plan (no DDL, DML, COPY or
    /// other statements), or recognizes a workspace write or a `SET`.
    async fn plan_sql(&self, ctx: &SessionContext, sql: &str) -> Result<Planned> {
        let sql = statement::number_placeholders(sql);
        let state = ctx.state();
        let limit = state.config_options().sql_parser.recursion_limit.get();
        let statement = crate::sql_guard::parse_statement(&sql, limit)?;
        if let Some(why) = refusal_unplanned(&statement) {
            return Err(VeilError::PermissionDenied(why));
        }
        let plan = self
            .planning(async move { Ok(state.statement_to_plan(statement).await?) })
            .await?;
        if let LogicalPlan::Statement(Statement::SetVariable(set)) = &plan {
            return Ok(Planned::Set(settable(&set.variable, set.value.to_string())));
        }
        if let Some(op) = crate::workspace::write::recognize(&plan, self.project.as_deref())? {
            return Ok(Planned::Workspace(op));
        }
        self.verify(plan).map(Planned::Query)
    }

    fn verify(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let inner = match &plan {
            LogicalPlan::Explain(e) => e.plan.as_ref(),
            LogicalPlan::Analyze(a) => a.input.as_ref(),
            p => p,
        };
        if let Some(why) = refusal(inner) {
            return Err(VeilError::PermissionDenied(why));
        }
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        Ok(plan)
    }

    /// The result schema of a statement, without running it (prepared
    /// statements). Governance statements and SET report an empty schema.
    pub async fn schema_of(&self, sql: &str) -> Result<SchemaRef> {
        Ok(self.prepare(sql).await?.0)
    }

    /// Prepares a statement: (result schema, parameter schema). Governance
    /// statements and SET report empty schemas (they run when executed).
    /// A refused or failing statement leaves its audit record here.
    pub async fn prepare(&self, sql: &str) -> Result<(SchemaRef, SchemaRef)> {
        match self.admitted(self.prepare_plan(sql)).await {
            Err(e) => Err(self.audit_prepare_error(sql, e).await),
            ok => ok,
        }
    }

    async fn prepare_plan(&self, sql: &str) -> Result<(SchemaRef, SchemaRef)> {
        let empty = || Arc::new(Schema::empty());
        if statement::parse(sql)?.is_some() {
            return Ok((empty(), empty()));
        }
        let (ctx, _) = self.context()?;
        let (plan, write) = match self.plan_sql(&ctx, sql).await? {
            Planned::Set(set) => {
                set?;
                return Ok((empty(), empty()));
            }
            Planned::Query(plan) => (plan, false),
            Planned::Workspace(op) => match op {
                WorkspaceOp::Insert { input, .. } | WorkspaceOp::Create { input, .. } => {
                    (input, true)
                }
                WorkspaceOp::Drop { .. } => return Ok((empty(), empty())),
            },
        };
        let mut params: Vec<(usize, Field)> = plan
            .get_parameter_fields()?
            .into_iter()
            .map(|(name, field)| {
                let pos = name
                    .trim_start_matches('$')
                    .parse::<usize>()
                    .unwrap_or(usize::MAX);
                let dt = field
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Utf8);
                (pos, Field::new(name, dt, true))
            })
            .collect();
        params.sort_by_key(|(pos, _)| *pos);
        let param_schema = Arc::new(Schema::new(
            params.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
        ));
        // Writes run when executed (GetFlightInfo) and describe no rows.
        if write {
            return Ok((empty(), param_schema));
        }
        let state = ctx.state();
        let input = plan.clone();
        let optimized = self
            .planning(async move { Ok(state.optimize(&input)?) })
            .await;
        let schema = match optimized {
            Ok(p) => p.schema().as_arrow().clone(),
            Err(e) if param_schema.fields().is_empty() => return Err(e),
            Err(_) => plan.schema().as_arrow().clone(),
        };
        Ok((Arc::new(schema), param_schema))
    }

    /// Plans a query now for [`Session::execute_planned`] later (Flight
    /// SQL's GetFlightInfo, then DoGet): returns the result schema and the
    /// id of the kept physical plan ([`crate::plan_cache`]). Statements
    /// that are not queries (governance statements, `SET`, workspace
    /// writes) report an empty schema and no plan; they run when executed.
    /// A refused or failing statement leaves its audit record here.
    pub async fn plan_ahead(
        &self,
        sql: &str,
        params: Option<ParamValues>,
    ) -> Result<(SchemaRef, Option<String>)> {
        match self.admitted(self.plan_ahead_inner(sql, params)).await {
            Err(e) => Err(self.audit_prepare_error(sql, e).await),
            ok => ok,
        }
    }

    async fn plan_ahead_inner(
        &self,
        sql: &str,
        params: Option<ParamValues>,
    ) -> Result<(SchemaRef, Option<String>)> {
        let empty = || Arc::new(Schema::empty());
        if statement::parse(sql)?.is_some() {
            return Ok((empty(), None));
        }
        let (ctx, gctx) = self.context()?;
        let plan = match self.plan_sql(&ctx, sql).await? {
            Planned::Query(plan) => plan,
            Planned::Set(set) => {
                set?;
                return Ok((empty(), None));
            }
            Planned::Workspace(_) => return Ok((empty(), None)),
        };
        let plan = match params {
            Some(params) => plan.with_param_values(params)?,
            None => plan,
        };
        let plan = self.physical_plan(&ctx, plan).await?;
        let schema = plan.schema();
        let key = self.plan_key(gctx.snapshot.version, sql);
        let id = self.engine.plans.put(crate::plan_cache::PlannedQuery {
            key,
            ctx,
            gctx,
            plan,
        });
        Ok((schema, id))
    }

    /// What a kept plan must match to run in this session now.
    fn plan_key(&self, version: u64, sql: &str) -> crate::plan_cache::PlanKey {
        crate::plan_cache::PlanKey {
            user: self.user.clone(),
            impersonated: self.impersonated.clone(),
            project: self.project.clone(),
            settings: self.settings.clone(),
            version,
            sql: sql.to_string(),
        }
    }

    /// Records a statement that failed while being prepared or planned
    /// ahead; returns the error for the client ([`QueryAudit::fail`]).
    async fn audit_prepare_error(&self, sql: &str, e: VeilError) -> VeilError {
        let mut audit = self.query_audit(sql);
        audit.entry.action = "Prepare".into();
        audit.fail(e).await
    }

    /// Runs one statement.
    pub async fn execute(&mut self, sql: &str) -> Result<QueryOutput> {
        self.execute_with_params(sql, None).await
    }

    /// Runs one statement with bound parameters (`$1`, `$2`, ...). Every
    /// statement leaves exactly one audit record: a change's is written with
    /// it; a query's when its result ends (the end reaches the client only
    /// once the record is durable); anything else, or a refusal, before the
    /// answer is returned.
    ///
    /// The statement first waits for a slot (per server and per user), and
    /// holds it until its result ends or is dropped; it is cancelled when it
    /// runs past the query timeout.
    pub async fn execute_with_params(
        &mut self,
        sql: &str,
        params: Option<ParamValues>,
    ) -> Result<QueryOutput> {
        self.run_statement(sql, params, None).await
    }

    /// Runs a statement like [`Session::execute_with_params`], with the plan
    /// [`Session::plan_ahead`] kept under `plan` when it is still valid for
    /// this session (same user, impersonation, project, settings and policy
    /// version); otherwise the statement is planned again.
    pub async fn execute_planned(
        &mut self,
        sql: &str,
        params: Option<ParamValues>,
        plan: Option<&str>,
    ) -> Result<QueryOutput> {
        let planned = match plan {
            Some(id) => {
                let key = self.plan_key(self.engine.store.version()?, sql);
                self.engine.plans.take(id, &key)
            }
            None => None,
        };
        self.run_statement(sql, params, planned).await
    }

    async fn run_statement(
        &mut self,
        sql: &str,
        params: Option<ParamValues>,
        planned: Option<crate::plan_cache::PlannedQuery>,
    ) -> Result<QueryOutput> {
        let mut audit = Some(self.query_audit(sql));
        let engine = Arc::clone(&self.engine);
        let timeout = engine.admission.limits().query_timeout;
        let result = match engine.admission.admit(&self.user).await {
            Err(e) => Err(e),
            Ok(slot) => {
                let deadline = tokio::time::Instant::now() + timeout;
                self.deadline = Some(deadline);
                let run = self.dispatch(sql, params, planned, &mut audit);
                let result = match tokio::time::timeout_at(deadline, run).await {
                    Ok(result) => result.map(|out| QueryOutput {
                        schema: out.schema,
                        stream: crate::limits::holding(out.stream, slot),
                    }),
                    Err(_) => Err(crate::limits::timed_out(timeout)),
                };
                self.deadline = None;
                result
            }
        };
        match (result, audit) {
            (Err(e), Some(audit)) => Err(audit.fail(e).await),
            (Err(e), None) => {
                self.engine.metrics.error(e.kind());
                Err(e.into_incident().0)
            }
            (Ok(out), Some(audit)) => {
                audit.finish(None).await?;
                Ok(out)
            }
            (ok, None) => ok,
        }
    }

    /// A query's audit record, filled in as the statement runs.
    pub(crate) fn query_audit(&self, sql: &str) -> QueryAudit {
        QueryAudit::new(
            AuditEntry {
                actor: self.user.clone(),
                impersonated: self.impersonated.clone(),
                project: self.project.clone(),
                ..Default::default()
            },
            sql,
            None,
            self.engine.audit.clone(),
            self.engine.metrics.clone(),
        )
    }

    /// Runs one statement; takes `audit` when the record is written
    /// elsewhere (with a change, or when a result stream ends).
    async fn dispatch(
        &mut self,
        sql: &str,
        params: Option<ParamValues>,
        planned: Option<crate::plan_cache::PlannedQuery>,
        audit: &mut Option<QueryAudit>,
    ) -> Result<QueryOutput> {
        if let Some(planned) = planned {
            let out = self.start(&planned.ctx, &planned.gctx, planned.plan)?;
            return Ok(match audit.take() {
                Some(mut a) => {
                    a.entry.action = "Query".into();
                    a.gctx = Some(planned.gctx);
                    a.wrap(out)
                }
                None => out,
            });
        }
        let parsed = statement::parse(sql);
        if let Some(a) = audit.as_mut() {
            a.entry.action = match &parsed {
                Ok(Some(stmt)) => stmt.kind(),
                Ok(None) => "Query",
                Err(_) => "Statement",
            }
            .into();
        }
        if let Some(stmt) = parsed? {
            let (out, recorded) = statement::exec::execute(self, stmt).await?;
            if recorded {
                if let Some(a) = audit.take() {
                    a.discard();
                }
            }
            return Ok(out);
        }
        let (ctx, gctx) = self.context()?;
        let planned = self.plan_sql(&ctx, sql).await?;
        if let Planned::Set(set) = planned {
            if let Some(a) = audit.as_mut() {
                a.entry.action = "Set".into();
            }
            let (name, value) = set?;
            // Validate the value before keeping it.
            let mut probe = SessionConfig::new();
            probe.options_mut().set(&name, &value)?;
            self.settings.retain(|(k, _)| *k != name);
            self.settings.push((name, value));
            return QueryOutput::status("SET");
        }
        if let Some(a) = audit.as_mut() {
            a.gctx = Some(Arc::clone(&gctx));
        }
        let (out, recorded) = self.run_query(&ctx, &gctx, planned, sql, params).await?;
        Ok(match audit.take() {
            Some(a) if recorded => {
                a.discard();
                out
            }
            Some(a) => a.wrap(out),
            None => out,
        })
    }

    /// Plans and starts a query, or runs a workspace write (then the second
    /// value says whether the write's commit recorded the statement).
    async fn run_query(
        &self,
        ctx: &SessionContext,
        gctx: &GovernanceContext,
        planned: Planned,
        sql: &str,
        params: Option<ParamValues>,
    ) -> Result<(QueryOutput, bool)> {
        let mut plan = match planned {
            Planned::Query(plan) => plan,
            Planned::Set(_) => {
                return Err(VeilError::Internal("SET reached query execution".into()))
            }
            Planned::Workspace(mut op) => {
                if let Some(params) = params {
                    if let WorkspaceOp::Insert { input, .. } | WorkspaceOp::Create { input, .. } =
                        &mut op
                    {
                        *input = input.clone().with_param_values(params)?;
                    }
                }
                return crate::workspace::write::execute(self, ctx, gctx, op, sql).await;
            }
        };
        if let Some(params) = params {
            plan = plan.with_param_values(params)?;
        }
        let plan = self.physical_plan(ctx, plan).await?;
        Ok((self.start(ctx, gctx, plan)?, false))
    }

    /// Runs `work` (planning ahead of execution) under the same limits as
    /// a statement: a slot of the user's and the server's, and the query
    /// timeout.
    async fn admitted<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let _slot = self.engine.admission.admit(&self.user).await?;
        let timeout = self.engine.admission.limits().query_timeout;
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(crate::limits::timed_out(timeout)))
    }

    /// Runs planning work on the engine's executor (`executor.rs`): a
    /// statement that takes long to plan holds the executor's threads,
    /// never the server's, and a panic while planning is an error.
    pub(crate) async fn planning<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let executor = &self.engine.executor;
        executor.run(work, Arc::default(), executor.turn()).await
    }

    /// The governed physical plan of `plan` (analysis, optimization and
    /// physical planning), made on the executor.
    async fn physical_plan(
        &self,
        ctx: &SessionContext,
        plan: LogicalPlan,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = ctx.state();
        self.planning(async move { Ok(state.create_physical_plan(&plan).await?) })
            .await
    }

    /// Starts a physical plan on the engine's executor; the stream ends at
    /// the statement's deadline, and dropping it stops the statement.
    fn start(
        &self,
        ctx: &SessionContext,
        gctx: &GovernanceContext,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<QueryOutput> {
        let mut task = TaskContext::from(&*ctx.state_ref().read())
            .with_runtime(self.engine.statement_runtime()?);
        if crate::governance::raw_keys::joins_raw_keys(&plan) {
            let mut config = task.session_config().clone();
            crate::join_arrays::hash_only(&mut config);
            task = task.with_session_config(config);
        }
        let analyze = plan.downcast_ref::<AnalyzeExec>().is_some();
        let mut plan = plan;
        if let Some(cluster) = self.engine.cluster.as_ref().filter(|_| !analyze) {
            let ran = match cluster.ship(&plan, task.session_config()) {
                None => None,
                Some(Ok(remote)) => {
                    plan = remote;
                    gctx.on_cluster
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Some("cluster")
                }
                Some(Err(reason)) => {
                    tracing::debug!(%reason, "the plan runs on the front end");
                    Some("local")
                }
            };
            if let Some(ran) = ran {
                self.engine
                    .metrics
                    .cluster_queries
                    .with_label_values(&[ran])
                    .inc();
            }
        }
        let mut stream = self
            .engine
            .executor
            .execute(plan, task, Arc::clone(&gctx.interrupt))?;
        if analyze {
            stream = crate::analyze_text::redact(stream);
        }
        if let Some(deadline) = self.deadline {
            let timeout = self.engine.admission.limits().query_timeout;
            stream = crate::limits::with_deadline(stream, deadline, timeout);
        }
        Ok(QueryOutput {
            schema: stream.schema(),
            stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The physical rules Veil adds sit where their docs say: the build
    /// side and raw-key modes right after join selection (before any
    /// repartitioning or dynamic filter), the rest last before the sanity
    /// check.
    #[test]
    fn plans_for_a_cluster_go_without_the_local_rules() {
        let names = |distributed| {
            let state =
                statement_state(Arc::new(RuntimeEnv::default()), 1 << 20, distributed).unwrap();
            state
                .physical_optimizers()
                .iter()
                .map(|r| r.name().to_string())
                .collect::<Vec<_>>()
        };
        let (here, there) = (names(false), names(true));
        for rule in LOCAL_ONLY_RULES {
            assert!(here.iter().any(|n| n == rule), "{rule} is not a rule");
            assert!(!there.iter().any(|n| n == rule), "{rule}");
        }
        assert_eq!(there.len() + LOCAL_ONLY_RULES.len(), here.len());
    }

    #[test]
    fn physical_rules_run_in_their_documented_places() {
        let state = statement_state(Arc::new(RuntimeEnv::default()), 1 << 20, false).unwrap();
        let names: Vec<&str> = state
            .physical_optimizers()
            .iter()
            .map(|r| r.name())
            .collect();
        let at = |name: &str| {
            names
                .iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| panic!("{name} missing from {names:?}"))
        };
        let join_selection = at("join_selection");
        assert_eq!(at("veil_smaller_build_side"), join_selection + 1);
        assert_eq!(at("veil_collect_small_build"), join_selection + 2);
        assert_eq!(at("veil_raw_key_join_mode"), join_selection + 3);
        assert!(
            at("veil_smaller_build_side")
                < at("FilterPushdown(Post)").min(at("EnsureRequirements"))
        );
        let sanity = at("SanityCheckPlan");
        assert_eq!(
            &names[sanity - 6..sanity],
            [
                "veil_raw_key_group",
                "veil_like_segments",
                "veil_costly_conjuncts_last",
                "veil_adaptive_conjuncts",
                "veil_dynamic_scan_rows",
                "veil_yielding_joins"
            ]
        );
        assert!(at("FilterPushdown(Post)") < at("veil_dynamic_scan_rows"));
        assert_eq!(names.last(), Some(&"veil_classic_string_scans"));
    }
}
