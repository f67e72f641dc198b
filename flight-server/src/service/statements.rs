//! Statements and prepared statements: FlightInfo, tickets, DoGet, DoPut.
//!
//! Tickets and prepared handles are signed, self-contained and expiring.
//! They carry the session, the user, the SQL, bound parameters, the project
//! and the policy version seen at planning; at DoGet the caller must be that
//! user, still a member of that project, and the statement is planned again
//! so the policies in force now apply.
//! Governance statements run at GetFlightInfo (the client may never call
//! DoGet); their rows travel inside the ticket.

use std::io::Cursor;
use std::sync::Arc;

use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Status;
use veil_engine::workspace::write::{IfExists, IngestMode};
use veil_engine::workspace::WORKSPACE_SCHEMA;
use veil_engine::{QueryOutput, Session, VeilError};

use super::put_data::PutBatches;
use super::{encode, wire, DoGetStream, VeilFlightSql};
use crate::status::{internal, to_status};

/// Lifetime of tickets and prepared handles.
pub const TICKET_TTL_SECS: i64 = 3600;

/// A prepared statement handle's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handle {
    /// Session id.
    pub sid: String,
    /// Authenticated user.
    pub user: String,
    /// SQL text.
    pub sql: String,
    /// Bound parameters (Arrow IPC stream, base64), if any.
    pub params: Option<String>,
    /// The project the statement was prepared in; it runs there (after the
    /// membership check) whatever the session does meanwhile.
    pub project: Option<String>,
}

/// A ticket's content.
#[derive(Debug, Serialize, Deserialize)]
struct TicketBody {
    handle: Handle,
    impersonated: Option<String>,
    /// The project the statement was planned in (re-checked at DoGet).
    project: Option<String>,
    policy_version: u64,
    /// Precomputed rows (governance statements), Arrow IPC stream, base64.
    results: Option<String>,
    /// The engine's id of the plan made for GetFlightInfo, which DoGet runs
    /// when it is still valid (see `veil_engine::Session::plan_ahead`).
    #[serde(default)]
    plan: Option<String>,
}

fn ipc_encode(schema: &Schema, batches: &[RecordBatch]) -> Result<String, Status> {
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, schema).map_err(internal)?;
        for b in batches {
            w.write(b).map_err(internal)?;
        }
        w.finish().map_err(internal)?;
    }
    Ok(STANDARD.encode(buf))
}

fn ipc_decode(text: &str) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let bad = |e: String| Status::invalid_argument(format!("bad embedded batch: {e}"));
    let raw = STANDARD.decode(text).map_err(|e| bad(e.to_string()))?;
    let reader = StreamReader::try_new(Cursor::new(raw), None).map_err(|e| bad(e.to_string()))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    Ok((schema, batches))
}

/// Parameters of one row of a bound batch.
fn row_params(batch: &RecordBatch, row: usize) -> Result<ParamValues, Status> {
    let values = batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, row))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?;
    Ok(ParamValues::from(values))
}

/// Streams a result as Flight data; engine errors keep their gRPC code.
/// View types travel as their classic forms (see `wire`).
pub(super) fn encode_stream(out: QueryOutput) -> DoGetStream {
    let stream = out.stream.map_err(|e| to_status(VeilError::from(e)));
    match wire::wire_schema(&out.schema) {
        None => encode::flight_stream(&out.schema, stream),
        Some(to) => {
            let sent = Arc::clone(&to);
            let stream = stream.and_then(move |b| {
                std::future::ready(
                    wire::wire_batch(&b, &to)
                        .map_err(|e| internal(format!("cannot convert a result batch: {e}"))),
                )
            });
            encode::flight_stream(&sent, stream)
        }
    }
}

fn decode_params(params: &Option<String>) -> Result<Option<ParamValues>, Status> {
    let Some(p) = params else { return Ok(None) };
    let (_, batches) = ipc_decode(p)?;
    match batches.iter().find(|b| b.num_rows() > 0) {
        Some(b) => Ok(Some(row_params(b, 0)?)),
        None => Ok(None),
    }
}

/// The ingest mode of a `CommandStatementIngest`, checked against the
/// session: only the current project's workspace can be written.
pub(super) fn ingest_mode(
    session: &Session,
    cmd: &CommandStatementIngest,
) -> Result<IngestMode, Status> {
    use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
    let Some(project) = session.project() else {
        return Err(to_status(VeilError::FailedPrecondition(format!(
            "ingest into {} needs a project: only a project's workspace is writable (set the \
             catalog or x-veil-project to the project)",
            cmd.table
        ))));
    };
    if let Some(schema) = cmd.schema.as_deref().filter(|s| !s.is_empty()) {
        if schema != WORKSPACE_SCHEMA {
            return Err(to_status(VeilError::PermissionDenied(format!(
                "ingest into schema {schema} is not allowed: only {WORKSPACE_SCHEMA} is writable"
            ))));
        }
    }
    if let Some(catalog) = cmd.catalog.as_deref().filter(|c| !c.is_empty()) {
        if catalog != project {
            return Err(to_status(VeilError::PermissionDenied(format!(
                "ingest into catalog {catalog} is not allowed from project {project}"
            ))));
        }
    }
    if cmd.temporary {
        return Err(Status::invalid_argument(
            "temporary tables are not supported; ingest into the workspace",
        ));
    }
    if cmd.transaction_id.is_some() {
        return Err(Status::invalid_argument("transactions are not supported"));
    }
    let opts = cmd.table_definition_options.unwrap_or_default();
    let create_if_missing = match TableNotExistOption::try_from(opts.if_not_exist) {
        Ok(TableNotExistOption::Create) => true,
        Ok(TableNotExistOption::Fail) => false,
        _ => {
            return Err(Status::invalid_argument(
                "ingest must say what to do when the table does not exist (create or fail)",
            ))
        }
    };
    let if_exists = match TableExistsOption::try_from(opts.if_exists) {
        Ok(TableExistsOption::Fail) => IfExists::Fail,
        Ok(TableExistsOption::Append) => IfExists::Append,
        Ok(TableExistsOption::Replace) => IfExists::Replace,
        _ => {
            return Err(Status::invalid_argument(
                "ingest must say what to do when the table exists (fail, append or replace)",
            ))
        }
    };
    Ok(IngestMode {
        create_if_missing,
        if_exists,
    })
}

/// The batches of an ingest as a stream with its schema (read from the
/// first message). A client that breaks the stream off fails the write.
pub(super) async fn ingest_stream(
    request: tonic::Request<PeekableFlightDataStream>,
) -> Result<SendableRecordBatchStream, Status> {
    let mut decoded = PutBatches::new(request);
    let first = decoded.next().await;
    let (schema, first) = match (decoded.schema(), first) {
        (Some(s), first) => (Arc::clone(s), first),
        (None, Some(Ok(b))) => (b.schema(), Some(Ok(b))),
        (None, Some(Err(e))) => return Err(e),
        (None, None) => {
            return Err(Status::invalid_argument(
                "ingest stream carried no schema and no rows",
            ))
        }
    };
    let rest = futures::stream::iter(first).chain(decoded).map(|r| {
        r.map_err(|e| {
            datafusion::error::DataFusionError::Execution(format!(
                "ingest stream broke off: {}; nothing was written",
                e.message()
            ))
        })
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rest)))
}

/// Puts the session in `project` (checking membership again) unless it is
/// there already.
pub(super) fn enter(session: &mut Session, project: Option<&str>) -> Result<(), Status> {
    if session.project() != project {
        session.use_project(project).map_err(to_status)?;
    }
    Ok(())
}

impl VeilFlightSql {
    /// Plans or (governance) runs a handle and returns its FlightInfo.
    pub(super) async fn flight_info(
        &self,
        mut session: Session,
        sid: &str,
        handle: Handle,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let version = self.engine.snapshot().map_err(to_status)?.version;
        enter(&mut session, handle.project.as_deref())?;
        let params = decode_params(&handle.params)?;
        let (prepared, plan) = session
            .plan_ahead(&handle.sql, params.clone())
            .await
            .map_err(to_status)?;
        // Governance statements and SET have no result schema: run them now.
        let (schema, results) = if prepared.fields().is_empty() {
            let out = session
                .execute_with_params(&handle.sql, params)
                .await
                .map_err(to_status)?;
            let schema = Arc::clone(&out.schema);
            let batches = out.collect().await.map_err(to_status)?;
            self.sessions.store(sid, session.clone());
            (Arc::clone(&schema), Some(ipc_encode(&schema, &batches)?))
        } else {
            (prepared, None)
        };
        let body = TicketBody {
            handle,
            impersonated: session.impersonated().map(str::to_string),
            project: session.project().map(str::to_string),
            policy_version: version,
            results,
            plan,
        };
        let token = self.signer.sign("ticket", &body, TICKET_TTL_SECS)?;
        let ticket = TicketStatementQuery {
            statement_handle: token.into_bytes().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        FlightInfo::new()
            .try_with_schema(&wire::client_schema(schema))
            .map_err(|e| Status::internal(e.to_string()))
            .map(|i| i.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// Streams a ticket's rows, re-checking the caller and the policies.
    pub(super) async fn do_get_ticket(
        &self,
        mut session: Session,
        raw: &[u8],
    ) -> Result<DoGetStream, Status> {
        let token = std::str::from_utf8(raw)
            .map_err(|_| Status::unauthenticated("invalid or forged ticket"))?;
        let body: TicketBody = self.signer.verify("ticket", token)?;
        if body.handle.user != session.user() {
            return Err(Status::permission_denied(format!(
                "ticket was issued to another user, not {}",
                session.user()
            )));
        }
        if let Some(results) = &body.results {
            let (schema, batches) = ipc_decode(results)?;
            return Ok(encode_stream(
                QueryOutput::from_batches(schema, batches).map_err(to_status)?,
            ));
        }
        if session.impersonated() != body.impersonated.as_deref() {
            session
                .impersonate(body.impersonated.as_deref())
                .map_err(to_status)?;
        }
        enter(&mut session, body.project.as_deref())?;
        let params = decode_params(&body.handle.params)?;
        let out = session
            .execute_planned(&body.handle.sql, params, body.plan.as_deref())
            .await
            .map_err(to_status)?;
        Ok(encode_stream(out))
    }

    /// Signs a new handle.
    pub(super) fn sign_handle(&self, handle: &Handle) -> Result<Vec<u8>, Status> {
        Ok(self
            .signer
            .sign("handle", handle, TICKET_TTL_SECS)?
            .into_bytes())
    }

    /// Verifies a handle and that it belongs to the caller.
    pub(super) fn open_handle(&self, session: &Session, raw: &[u8]) -> Result<Handle, Status> {
        let token = std::str::from_utf8(raw)
            .map_err(|_| Status::unauthenticated("invalid or forged handle"))?;
        let h: Handle = self.signer.verify("handle", token)?;
        if h.user != session.user() {
            return Err(Status::permission_denied(format!(
                "prepared statement belongs to another user, not {}",
                session.user()
            )));
        }
        Ok(h)
    }

    /// Reads the parameter batches of a DoPut.
    pub(super) async fn read_batches(
        request: tonic::Request<PeekableFlightDataStream>,
    ) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), Status> {
        let mut decoded = PutBatches::new(request);
        let mut batches = vec![];
        while let Some(b) = decoded.next().await {
            batches.push(b?);
        }
        let schema = decoded
            .schema()
            .cloned()
            .or_else(|| batches.first().map(|b| b.schema()));
        Ok((schema, batches))
    }

    /// Binds parameters into a new handle.
    pub(super) fn bind(
        &self,
        mut handle: Handle,
        schema: Option<SchemaRef>,
        batches: &[RecordBatch],
    ) -> Result<Vec<u8>, Status> {
        handle.params = match schema {
            Some(s) if batches.iter().any(|b| b.num_rows() > 0) => Some(ipc_encode(&s, batches)?),
            _ => None,
        };
        self.sign_handle(&handle)
    }

    /// Runs an update statement once, or once per parameter row; returns the
    /// rows affected (0 for statements that report none).
    pub(super) async fn run_update(
        &self,
        session: &mut Session,
        sql: &str,
        batches: &[RecordBatch],
    ) -> Result<i64, Status> {
        let rows: Vec<ParamValues> = batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |r| row_params(b, r)))
            .collect::<Result<_, _>>()?;
        let runs: Vec<Option<ParamValues>> = if rows.is_empty() {
            vec![None]
        } else {
            rows.into_iter().map(Some).collect()
        };
        let mut count = 0i64;
        for params in runs {
            let out = session
                .execute_with_params(sql, params)
                .await
                .map_err(to_status)?;
            let single =
                (out.schema.fields().len() == 1).then(|| out.schema.field(0).name().clone());
            let batches = out.collect().await.map_err(to_status)?;
            match single.as_deref() {
                Some("status") => {}
                // A write reports the rows it wrote.
                Some("count") => {
                    count += batches
                        .iter()
                        .filter_map(|b| {
                            b.column(0)
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                        })
                        .flat_map(|a| a.iter().flatten())
                        .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
                        .sum::<i64>();
                }
                _ => count += batches.iter().map(|b| b.num_rows() as i64).sum::<i64>(),
            }
        }
        Ok(count)
    }
}
