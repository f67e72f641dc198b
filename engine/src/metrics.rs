//! Prometheus metrics of one engine: statements by kind and outcome, errors
//! by code, rows served, active sessions, the time policy evaluation (the
//! governance analyzer) takes and the audit writer's group commits. Labels
//! carry codes and kinds only, never SQL text, names or values.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::{ErrorKind, Result, VeilError};

/// The engine's metrics and the registry that exports them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Statements by kind (`query`, `governance`, `write`) and outcome.
    pub statements: IntCounterVec,
    /// Errors by code (the gRPC status name).
    pub errors: IntCounterVec,
    /// Rows sent to clients.
    pub rows_served: IntCounter,
    /// Open client sessions.
    pub active_sessions: IntGauge,
    /// Seconds the governance analyzer takes per statement.
    pub policy_evaluation: Histogram,
    /// Statements holding a slot now (set when rendered).
    pub statements_running: IntGauge,
    /// Bytes of the shared query memory in use (set when rendered).
    pub query_memory_bytes: IntGauge,
    /// The audit writer's group commits.
    pub audit_commits: AuditCommitMetrics,
    /// Queries over governed sources on a server with a Ballista cluster,
    /// by where they ran (`cluster`, or `local` when the plan holds an
    /// operator or function that cannot travel).
    pub cluster_queries: IntCounterVec,
    /// Ballista jobs cancelled on the cluster because their statement
    /// stopped early (timeout, `KILL`, a client gone).
    pub cluster_jobs_cancelled: IntCounter,
}

/// What the audit writer counts: commits, the records they carried and how
/// long each took (insert, commit and sync), so an operator can see records
/// per commit and choose `audit_commit_delay_ms`.
#[derive(Debug, Clone)]
pub struct AuditCommitMetrics {
    /// Group commits of statement records.
    pub commits: IntCounter,
    /// Records those commits carried.
    pub records: IntCounter,
    /// Seconds each group commit took, sync included.
    pub seconds: Histogram,
}

impl AuditCommitMetrics {
    /// Counts one group commit of `records` records that took `took`.
    pub fn committed(&self, records: usize, took: std::time::Duration) {
        self.commits.inc();
        self.records.inc_by(records as u64);
        self.seconds.observe(took.as_secs_f64());
    }
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: C,
) -> Result<C> {
    registry
        .register(Box::new(c.clone()))
        .map_err(|e| VeilError::Internal(format!("metrics: {e}")))?;
    Ok(c)
}

fn internal(e: prometheus::Error) -> VeilError {
    VeilError::Internal(format!("metrics: {e}"))
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Result<Self> {
        let registry = Registry::new_custom(Some("veil".into()), None).map_err(internal)?;
        Ok(Self {
            statements: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new("statements_total", "Statements run, by kind and outcome"),
                    &["kind", "outcome"],
                )
                .map_err(internal)?,
            )?,
            errors: registered(
                &registry,
                IntCounterVec::new(Opts::new("errors_total", "Errors by code"), &["code"])
                    .map_err(internal)?,
            )?,
            rows_served: registered(
                &registry,
                IntCounter::new("rows_served_total", "Rows sent to clients").map_err(internal)?,
            )?,
            active_sessions: registered(
                &registry,
                IntGauge::new("active_sessions", "Open client sessions").map_err(internal)?,
            )?,
            policy_evaluation: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "policy_evaluation_seconds",
                        "Time the governance analyzer takes per statement",
                    )
                    .buckets(vec![
                        0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
                    ]),
                )
                .map_err(internal)?,
            )?,
            statements_running: registered(
                &registry,
                IntGauge::new("statements_running", "Statements holding a slot now")
                    .map_err(internal)?,
            )?,
            query_memory_bytes: registered(
                &registry,
                IntGauge::new(
                    "query_memory_bytes",
                    "Bytes of the shared query memory pool in use",
                )
                .map_err(internal)?,
            )?,
            cluster_queries: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "cluster_queries_total",
                        "Queries of a server with a Ballista cluster, by where they ran",
                    ),
                    &["ran"],
                )
                .map_err(internal)?,
            )?,
            cluster_jobs_cancelled: registered(
                &registry,
                IntCounter::new(
                    "cluster_jobs_cancelled_total",
                    "Ballista jobs cancelled because their statement stopped early",
                )
                .map_err(internal)?,
            )?,
            audit_commits: AuditCommitMetrics {
                commits: registered(
                    &registry,
                    IntCounter::new(
                        "audit_group_commits_total",
                        "Group commits of statement audit records",
                    )
                    .map_err(internal)?,
                )?,
                records: registered(
                    &registry,
                    IntCounter::new(
                        "audit_group_commit_records_total",
                        "Audit records written by group commits",
                    )
                    .map_err(internal)?,
                )?,
                seconds: registered(
                    &registry,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "audit_group_commit_seconds",
                            "Time one group commit of audit records takes, sync included",
                        )
                        .buckets(vec![
                            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25,
                        ]),
                    )
                    .map_err(internal)?,
                )?,
            },
            registry,
        })
    }

    /// Counts an error by its code.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.with_label_values(&[&format!("{kind:?}")]).inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> Result<String> {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(internal)
    }
}
