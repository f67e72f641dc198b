//! The audit log: what is recorded, the hash chain, the group-commit writer,
//! the `system.audit` table and archives.
//!
//! Every governance change is recorded in the same store transaction as the
//! change; every other statement (queries, SHOW, refusals) gets exactly one
//! record through the [`AuditWriter`], and a query's last batch reaches the
//! client only after its record is durable.

pub mod archive;
pub mod chain;
pub mod table;
pub mod writer;

use std::sync::Arc;
use std::time::Instant;

use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use serde_json::json;

pub use writer::AuditWriter;

use crate::engine::QueryOutput;
use crate::governance::GovernanceContext;
use crate::store::AuditEntry;

/// The JSON of the policies a statement applied, per source touched.
pub fn applied_json(gctx: &GovernanceContext) -> (String, serde_json::Value) {
    let applied = gctx.applied.lock().map(|a| a.clone()).unwrap_or_default();
    let mut names: Vec<String> = applied.iter().map(|a| a.source.clone()).collect();
    names.dedup();
    names.extend(
        workspace_reads(gctx)
            .iter()
            .map(|(t, _, _)| format!("workspace.{t}")),
    );
    let sources = applied
        .iter()
        .map(|a| {
            json!({
                "source": a.source,
                "row_policies": a.decision.row_filters.iter().map(|r| r.policy.clone()).collect::<Vec<_>>(),
                "masks": a.decision.masks.iter().map(|m| json!({
                    "column": m.column,
                    "method": m.method.to_string(),
                    "policy": m.policy,
                    "overridden": m.overridden,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    (names.join(","), sources)
}

/// The workspace tables a statement read (see `GovernanceContext`).
fn workspace_reads(gctx: &GovernanceContext) -> Vec<(String, u64, Vec<String>)> {
    gctx.workspace_reads
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
}

/// The same as the query record's `workspace_tables`.
fn workspace_reads_json(gctx: &GovernanceContext) -> serde_json::Value {
    workspace_reads(gctx)
        .into_iter()
        .map(|(table, version, parents)| {
            json!({"table": table, "version": version, "parents": parents})
        })
        .collect()
}

/// `sql` as the audit keeps it: whole, unless it is over the parser's
/// limit (then it was refused unparsed): its first bytes and its length;
/// passwords taken out ([`redact_passwords`]).
fn bounded_text(sql: &str) -> String {
    let max = crate::sql_guard::MAX_SQL_BYTES;
    if sql.len() <= max {
        return redact_passwords(sql);
    }
    let end = sql.floor_char_boundary(max);
    format!(
        "{} ... ({} bytes in all)",
        redact_passwords(&sql[..end]),
        sql.len()
    )
}

/// Text with the literal after every `PASSWORD` or `PASSWORD HASH`
/// replaced by `'<redacted>'`, quoted or cut off: a statement that fails
/// (refused, mistyped) is recorded with its text and its error, which
/// quotes it, and neither may hand a password to whoever reads the audit.
pub fn redact_passwords(text: &str) -> String {
    static PASSWORD: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)\bPASSWORD(\s+HASH)?\s*'(?:[^']|'')*'?").ok()
    });
    match PASSWORD.as_ref() {
        Some(re) => re
            .replace_all(text, |c: &regex::Captures<'_>| {
                format!("PASSWORD{} '<redacted>'", c.get(1).map_or("", |_| " HASH"))
            })
            .into_owned(),
        // The pattern is fixed and compiles; were it not to, keep nothing.
        None => "<statement not kept: it may hold a password>".into(),
    }
}

/// One query's record, written when its result ends (or fails, or is
/// dropped by the client).
pub(crate) struct QueryAudit {
    pub(crate) entry: AuditEntry,
    pub(crate) sql: String,
    pub(crate) started: Instant,
    pub(crate) gctx: Option<Arc<GovernanceContext>>,
    pub(crate) writer: AuditWriter,
    /// Held until the record is handed to the writer.
    pending: Option<writer::PendingRecord>,
    metrics: crate::metrics::Metrics,
    rows: u64,
    /// The incident id of an internal error (see [`QueryAudit::fail`]).
    incident: Option<String>,
    done: bool,
}

impl QueryAudit {
    /// A record for `sql` run by `entry`'s actor (action and object are
    /// filled in at the end).
    pub(crate) fn new(
        entry: AuditEntry,
        sql: &str,
        gctx: Option<Arc<GovernanceContext>>,
        writer: AuditWriter,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            entry,
            sql: bounded_text(sql),
            started: Instant::now(),
            gctx,
            pending: Some(writer.pending()),
            writer,
            metrics,
            rows: 0,
            incident: None,
            done: false,
        }
    }

    fn finished_entry(&self, outcome: &str, error: Option<&str>) -> AuditEntry {
        let (object, sources) = match &self.gctx {
            Some(g) => applied_json(g),
            None => (String::new(), json!([])),
        };
        let (purposes, equalized) = match &self.gctx {
            Some(g) => (g.principal.purposes.clone(), g.principal.user.is_none()),
            None => (Default::default(), false),
        };
        let mut detail = json!({
            "sql": self.sql,
            "purposes": purposes,
            "equalized": equalized,
            "sources": sources,
            "workspace_tables": self.gctx.as_deref().map_or(json!([]), workspace_reads_json),
            "rows": self.rows,
            "duration_ms": self.started.elapsed().as_secs_f64() * 1000.0,
            "error": error,
            "incident": self.incident,
        });
        // Where it ran, on a server with a Ballista cluster.
        if let Some(g) = self.gctx.as_deref() {
            if g.on_cluster.load(std::sync::atomic::Ordering::Relaxed) {
                detail["cluster"] = json!(true);
            }
        }
        AuditEntry {
            action: if self.entry.action.is_empty() {
                "Query".into()
            } else {
                self.entry.action.clone()
            },
            object: if self.entry.object.is_empty() {
                object
            } else {
                self.entry.object.clone()
            },
            detail: detail.to_string(),
            outcome: outcome.into(),
            ..self.entry.clone()
        }
    }

    /// Drops the record: the statement was recorded elsewhere (with the
    /// change it made).
    pub(crate) fn discard(mut self) {
        self.done = true;
        self.pending = None;
        self.metrics
            .statements
            .with_label_values(&["write", "ok"])
            .inc();
    }

    /// Writes the record and waits until it is durable.
    pub(crate) async fn finish(mut self, error: Option<&str>) -> crate::error::Result<()> {
        self.done = true;
        let outcome = if error.is_some() { "error" } else { "ok" };
        let kind = match self.entry.action.as_str() {
            "Query" | "Set" | "Prepare" | "" => "query",
            "Ingest" => "write",
            _ => "governance",
        };
        self.metrics
            .statements
            .with_label_values(&[kind, outcome])
            .inc();
        self.metrics.rows_served.inc_by(self.rows);
        let entry = self.finished_entry(outcome, error);
        // Who did what and how it went; never SQL text, values or secrets.
        tracing::info!(
            user = %entry.actor,
            impersonated = entry.impersonated.as_deref().unwrap_or(""),
            project = entry.project.as_deref().unwrap_or(""),
            action = %entry.action,
            sources = %entry.object,
            outcome,
            rows = self.rows,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "statement"
        );
        self.writer.record(entry, self.pending.take()).await
    }

    /// Writes the record of a statement that failed with `e` and returns
    /// the error its client gets: an internal error's whole text stays in
    /// the record (and the server log) and the client gets only its
    /// incident id, which the record keeps under `incident`.
    pub(crate) async fn fail(mut self, e: crate::error::VeilError) -> crate::error::VeilError {
        self.metrics.error(e.kind());
        let text = redact_passwords(&e.to_string());
        let (e, incident) = e.into_incident();
        self.incident = incident;
        if let Err(audit_err) = self.finish(Some(&text)).await {
            tracing::error!("{audit_err}");
        }
        e
    }

    /// Wraps a result so its record is written when the stream ends; the
    /// end of the stream is delivered only once the record is durable.
    pub(crate) fn wrap(self, out: QueryOutput) -> QueryOutput {
        let schema = Arc::clone(&out.schema);
        let stream = futures::stream::unfold(Some((out.stream, self)), |state| async move {
            let (mut inner, mut audit) = state?;
            match inner.next().await {
                Some(Ok(batch)) => {
                    audit.rows += batch.num_rows() as u64;
                    Some((Ok(batch), Some((inner, audit))))
                }
                Some(Err(e)) => {
                    let e = crate::catalog::explain_read_error(
                        crate::error::VeilError::from(e),
                        audit.gctx.as_deref(),
                    );
                    Some((Err(audit.fail(e).await.into()), None))
                }
                None => match audit.finish(None).await {
                    Ok(()) => None,
                    Err(e) => Some((
                        Err(datafusion::error::DataFusionError::External(Box::new(e))),
                        None,
                    )),
                },
            }
        });
        QueryOutput {
            schema: Arc::clone(&schema),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        }
    }
}

impl Drop for QueryAudit {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the end: record what was sent.
            let entry = self.finished_entry("cancelled", None);
            self.writer.record_detached(entry);
            // Only now, so a batch being gathered sees the record first.
            self.pending = None;
        }
    }
}
