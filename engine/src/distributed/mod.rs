//! Governed plans executed on Apache DataFusion Ballista (DESIGN.md
//! section 7: past one machine's compute).
//!
//! The front end (`veil serve --cluster URL`) does everything a statement
//! needs but run it: authentication, governance, optimization, physical
//! planning, audit. A physical plan that reads governed sources is then
//! submitted, whole, to a Ballista scheduler (`veil scheduler`), which
//! cuts it into stages at its shuffles and hands the tasks to executors
//! (`veil executor`); the front end streams the final stage's batches to
//! the client as it would its own.
//!
//! ```text
//!   client ─Flight SQL─► front end: govern, plan ─PhysicalPlanNode─► scheduler ─tasks─► executors
//!          ◄──────────── stream ◄──────────────── final stage (Flight) ◄───────────────────┘
//! ```
//!
//! What travels is [`VeilCodec`]'s: the governance barrier with its hidden
//! input, masks with their keys sealed under the cluster key (derived from
//! the front end's master key; `veil cluster-key`), which executors hold
//! and the scheduler does not. An executor can open the keys of the masks
//! in the plans it is sent and derive nothing else: not another column's
//! key, not the ticket or audit keys.
//!
//! A plan holding an operator or function the codec cannot carry (Veil's
//! statement-bound checks, its memory-bounded function wrappers) runs on the front
//! end as without a cluster (`veil_cluster_queries_total{ran="local"}`).
//! Errors of a distributed run reach the client as an incident id; the
//! audit record names the Ballista job, whose text only the executors'
//! logs keep (see [`failed`]).

pub mod codec;
mod job;
mod stores;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::{StreamExt, TryStreamExt};
use prometheus::IntCounter;
use prost::Message;
use veil_udfs::ClusterKey;

pub use codec::VeilCodec;

use crate::error::{Result, VeilError};
use crate::governance::node::GovernedScanExec;
use crate::keys::MasterKey;

/// `config` for plans that run on Ballista (what Ballista's own client
/// sets: no physical scalar subqueries, whose expression cannot travel
/// without its operator; no dynamic filters, which do not cross stages;
/// broadcast thresholds; no view types), except that joins stay hash
/// joins: a masked join on raw keys runs as one `CollectLeft` hash join
/// (`governance/raw_keys.rs`), never sorted or partitioned by raw keys.
pub fn restrict(config: SessionConfig) -> SessionConfig {
    use ballista_core::extension::SessionConfigHelperExt;
    config
        .ballista_restricted_configuration()
        .set_bool("datafusion.optimizer.prefer_hash_join", true)
}

/// The cluster key of a front end: executors open mask keys with it.
pub fn cluster_key(master: &MasterKey) -> ClusterKey {
    ClusterKey::from_bytes(master.derive("ballista cluster key"))
}

/// A Ballista scheduler a front end submits its plans to.
#[derive(Clone)]
pub struct Cluster {
    scheduler: String,
    codec: Arc<VeilCodec>,
    /// Counts the jobs cancelled because their statement stopped early.
    cancelled: Option<IntCounter>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cluster({})", self.scheduler)
    }
}

/// `df://host:port`, `http://host:port` or `host:port` as the
/// `http://host:port` Ballista's client connects to.
pub fn scheduler_url(text: &str) -> Result<String> {
    let rest = text
        .strip_prefix("df://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text)
        .trim_end_matches('/');
    let bad = || {
        VeilError::InvalidArgument(format!(
            "not a scheduler address: {text:?} (expected df://host:port)"
        ))
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(format!("http://{host}:{port}"))
}

impl Cluster {
    /// The scheduler at `url` (see [`scheduler_url`]); masks sealed under `key`.
    pub fn new(url: &str, key: ClusterKey) -> Result<Self> {
        Ok(Self {
            scheduler: scheduler_url(url)?,
            codec: Arc::new(VeilCodec::with_key(key)),
            cancelled: None,
        })
    }

    /// The same cluster counting in `counter` the jobs it cancels.
    pub fn counting_cancels(mut self, counter: IntCounter) -> Self {
        self.cancelled = Some(counter);
        self
    }

    /// `plan` as a plan that runs it on the cluster: `None` when it reads
    /// no data source (system tables, constants: it stays here),
    /// `Some(Err(reason))` when the codec cannot carry all of it.
    pub(crate) fn ship(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
    ) -> Option<std::result::Result<Arc<dyn ExecutionPlan>, DataFusionError>> {
        if !reads_sources(plan) {
            return None;
        }
        let plan: Arc<dyn ExecutionPlan> = if plan.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(Arc::clone(plan)))
        } else {
            Arc::clone(plan)
        };
        let encoded =
            PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), self.codec.as_ref());
        Some(encoded.map(|encoded| {
            Arc::new(RemoteExec::new(
                plan.schema(),
                encoded.encode_to_vec().into(),
                self.scheduler.clone(),
                config.clone(),
                self.cancelled.clone(),
            )) as Arc<dyn ExecutionPlan>
        }))
    }
}

/// Whether `plan` reads Parquet files: a data source, governed or not
/// for this principal, or a workspace table.
fn reads_sources(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut reads = false;
    let _ = plan.apply(|node| {
        reads |= node.downcast_ref::<GovernedScanExec>().is_some()
            || node
                .downcast_ref::<DataSourceExec>()
                .is_some_and(|d| d.downcast_to_file_source::<ParquetSource>().is_some());
        Ok(if reads {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    reads
}

/// Runs its (hidden) plan on the cluster and streams the final stage.
struct RemoteExec {
    /// The plan as `VeilCodec` encodes it.
    encoded: Arc<[u8]>,
    scheduler: String,
    config: SessionConfig,
    cancelled: Option<IntCounter>,
    cache: Arc<PlanProperties>,
}

impl fmt::Debug for RemoteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteExec({})", self.scheduler)
    }
}

impl RemoteExec {
    fn new(
        schema: datafusion::arrow::datatypes::SchemaRef,
        encoded: Arc<[u8]>,
        scheduler: String,
        config: SessionConfig,
        cancelled: Option<IntCounter>,
    ) -> Self {
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            encoded,
            scheduler,
            config,
            cancelled,
            cache,
        }
    }
}

impl DisplayAs for RemoteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RemoteExec: scheduler={}", self.scheduler)
    }
}

/// An error of a distributed run, as an incident. A failed job's text is
/// not kept: an executor reads files without this process's file-schema
/// checks (`file_schema.rs`; DataFusion's plan format does not carry
/// them), and arrow's cast errors quote the value they failed on, which
/// could be a masked value or one of a hidden row. The record names the
/// Ballista job, whose error the executors' own logs hold. Errors before
/// or after a job (an unreachable scheduler, a lost executor) keep theirs.
fn failed(e: DataFusionError) -> DataFusionError {
    let text = e.to_string();
    let job = text
        .split_once("Job ")
        .and_then(|(_, rest)| rest.split_once(" failed"))
        .map(|(id, _)| id)
        .filter(|id| id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let what = match job {
        Some(id) => format!("Ballista job {id} failed; the executors' logs have its error"),
        None => text,
    };
    DataFusionError::External(Box::new(VeilError::Internal(format!(
        "distributed execution failed: {what}"
    ))))
}

impl ExecutionPlan for RemoteExec {
    fn name(&self) -> &str {
        "RemoteExec"
    }

    /// The plan it runs is the cluster's, not this process's to rewrite.
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            datafusion::common::internal_err!("RemoteExec has no children")
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return datafusion::common::internal_err!("RemoteExec has one partition");
        }
        let encoded = self.encoded.to_vec();
        let scheduler = self.scheduler.clone();
        let config = self.config.clone();
        let cancelled = self.cancelled.clone();
        let schema = self.schema();
        let started = job::run(scheduler, encoded, config, cancelled);
        let stream = futures::stream::once(started)
            .try_flatten()
            .map(|batch| batch.map_err(failed));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

fn ballista_error(what: &str, e: impl fmt::Display) -> VeilError {
    VeilError::Internal(format!("{what}: {e}"))
}

/// Runs a Ballista scheduler on `bind` until the process ends. It holds no
/// cluster key: masks pass through it sealed.
pub async fn run_scheduler(bind: SocketAddr) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        override_physical_codec: Some(Arc::new(VeilCodec::sealed())),
        override_session_builder: Some(Arc::new(stores::scheduler_session)),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista_error("cannot start the scheduler", e))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| ballista_error("scheduler", e))
}

/// Where an executor listens and which scheduler it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port` (or `df://host:port`).
    pub scheduler: String,
    /// Address to bind (Flight service for stage outputs).
    pub bind: SocketAddr,
    /// Host name the scheduler and other executors reach it by.
    pub external_host: Option<String>,
    /// Port of its gRPC service.
    pub grpc_port: u16,
    /// Concurrent tasks; default: one per core.
    pub vcores: Option<usize>,
    /// Directory for shuffle files; default: a temporary directory.
    pub work_dir: Option<String>,
}

/// Runs a Ballista executor until the process ends, opening mask keys
/// with `key`.
pub async fn run_executor(options: ExecutorOptions, key: ClusterKey) -> Result<()> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
    let scheduler = scheduler_url(&options.scheduler)?;
    let (host, port) = scheduler
        .trim_start_matches("http://")
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| VeilError::InvalidArgument("scheduler address".into()))?;
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        port: options.bind.port(),
        grpc_port: options.grpc_port,
        external_host: options.external_host,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 30,
        work_dir: options.work_dir.clone(),
        override_physical_codec: Some(Arc::new(VeilCodec::with_key(key))),
        ..Default::default()
    };
    // Ballista's default runtime, with `s3://` buckets opened on first use
    // (spill files in the work directory, else the system's temporary one).
    let spill = options.work_dir;
    config.override_runtime_producer = Some(Arc::new(move |_| stores::runtime(spill.as_deref())));
    if let Some(vcores) = options.vcores {
        config.vcores = vcores.max(1);
    }
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ballista_error("executor", e))
}

/// An in-process scheduler and `executors` executors on loopback (for tests
/// and single-machine trials): the scheduler's URL.
pub async fn standalone(key: ClusterKey, executors: usize, vcores: usize) -> Result<String> {
    use ballista_core::extension::{
        ballista_aggregate_functions, ballista_scalar_functions, ballista_window_functions,
    };
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use ballista_core::serde::{BallistaCodec, BallistaLogicalExtensionCodec};
    use ballista_core::utils::default_config_producer;
    use datafusion::execution::SessionStateBuilder;
    let logical = Arc::new(BallistaLogicalExtensionCodec::default());
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_with_builder(
        Arc::new(stores::scheduler_session),
        Arc::new(default_config_producer),
        BallistaCodec::new(logical.clone(), Arc::new(VeilCodec::sealed())),
    )
    .await
    .map_err(|e| ballista_error("cannot start a scheduler", e))?;
    let url = format!("http://{addr}");
    let mut tries = 0;
    let scheduler = loop {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(e) if tries > 50 => return Err(ballista_error("scheduler unreachable", e)),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    // Ballista's standalone executor, with the stores of `veil executor`.
    let functions = SessionStateBuilder::new()
        .with_default_features()
        .with_scalar_functions(ballista_scalar_functions())
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .build();
    for _ in 0..executors.max(1) {
        ballista_executor::new_standalone_executor_from_builder(
            scheduler.clone(),
            vcores.max(1),
            Arc::new(default_config_producer),
            Arc::new(|_| stores::runtime(None)),
            BallistaCodec::new(logical.clone(), Arc::new(VeilCodec::with_key(key.clone()))),
            (&functions).into(),
        )
        .await
        .map_err(|e| ballista_error("cannot start an executor", e))?;
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_keeps_its_id_and_none_of_its_text() {
        let e = DataFusionError::Execution(
            "Job 038JFNJW4J000 failed: Task failed: Cannot cast string '758-44-3250' to Int64"
                .into(),
        );
        let text = failed(e).to_string();
        assert!(text.contains("Ballista job 038JFNJW4J000"), "{text}");
        assert!(!text.contains("758"), "{text}");
        assert!(
            text.ends_with("the executors' logs have its error"),
            "{text}"
        );
        // Before a job exists, the client's own error says what went wrong.
        let text = failed(DataFusionError::Execution(
            "scheduler unreachable: connection refused".into(),
        ))
        .to_string();
        assert!(text.contains("connection refused"), "{text}");
    }

    #[test]
    fn scheduler_addresses() {
        assert_eq!(scheduler_url("df://h:50050").unwrap(), "http://h:50050");
        assert_eq!(
            scheduler_url("http://10.0.0.1:7/").unwrap(),
            "http://10.0.0.1:7"
        );
        assert_eq!(scheduler_url("h:1").unwrap(), "http://h:1");
        for bad in ["h", "df://h:x", ":5", "df://a/b:1"] {
            assert!(scheduler_url(bad).is_err(), "{bad}");
        }
    }
}
