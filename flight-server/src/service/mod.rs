//! The Flight SQL service: authenticate, adapt, delegate to the engine.
//!
//! Every RPC starts with [`VeilFlightSql::session`], which verifies the
//! bearer token and applies the per-call headers (`x-veil-impersonate`,
//! `x-veil-project`). Statement handling lives in `statements`, catalog
//! metadata in `metadata`.

mod encode;
mod metadata;
mod put_data;
pub mod session_options;
mod statements;
mod wire;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};
use veil_engine::{Engine, Session};

use crate::auth::{decode_basic, Peer, Sessions};
use crate::signed::Signer;
use crate::status::to_status;
pub use statements::Handle;

/// The stream type of DoGet.
pub type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// Veil's Flight SQL service.
#[derive(Debug, Clone)]
pub struct VeilFlightSql {
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    signer: Signer,
}

fn header<'m>(md: &'m MetadataMap, name: &str) -> Option<&'m str> {
    md.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn schema_bytes(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn batch_stream(schema: SchemaRef, batch: RecordBatch) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { Ok(batch) }))
            .map_err(Status::from),
    )
}

fn metadata_info<M: ProstMessageExt>(
    cmd: M,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(cmd.as_any().encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

impl VeilFlightSql {
    /// A service over an engine. Tokens and tickets are signed with a key
    /// derived from the engine's master key.
    pub fn new(engine: Arc<Engine>) -> Self {
        let signer = Signer::new(engine.keys().signing_key());
        Self {
            sessions: Arc::new(Sessions::new(Arc::clone(&engine), signer.clone())),
            engine,
            signer,
        }
    }

    /// Authenticates a call and applies its session headers. The future
    /// holds a copy of the call's metadata, not the call.
    fn session<T>(
        &self,
        request: &Request<T>,
    ) -> impl std::future::Future<Output = Result<(String, Session), Status>> + Send + '_ {
        let md = request.metadata().clone();
        let peer = Peer::of(request);
        async move {
            let (sid, mut session) = self.sessions.authenticate(&md, &peer).await?;
            apply_headers(&mut session, &md)?;
            Ok((sid, session))
        }
    }
}

fn apply_headers(session: &mut Session, md: &MetadataMap) -> Result<(), Status> {
    // Impersonation first: project membership is the effective user's.
    if let Some(target) = header(md, "x-veil-impersonate") {
        session.impersonate(Some(target)).map_err(to_status)?;
    }
    if let Some(project) = header(md, "x-veil-project") {
        statements::enter(session, Some(project).filter(|p| !p.is_empty()))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl FlightSqlService for VeilFlightSql {
    type FlightService = VeilFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let md = request.metadata();
        let peer = Peer::of(&request);
        let token = match header(md, "authorization") {
            Some(auth) => {
                let (user, password) = decode_basic(auth)?;
                self.sessions.login(&user, Some(&password), &peer).await?
            }
            None => match &peer.cert_user {
                Some(user) => self.sessions.login(user, None, &peer).await?,
                None => {
                    return Err(Status::unauthenticated(
                        "Handshake needs Basic credentials or a client certificate",
                    ))
                }
            },
        };
        // Session headers may arrive on the Handshake too.
        let mut bearer = MetadataMap::new();
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("token is not a valid header"))?;
        bearer.insert("authorization", value.clone());
        let (sid, mut session) = self.sessions.authenticate(&bearer, &peer).await?;
        apply_headers(&mut session, md)?;
        self.sessions.store(&sid, session);
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::iter(vec![Ok(reply)]));
        let mut response = Response::new(stream);
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sid, session) = self.session(&request).await?;
        let handle = Handle {
            sid: sid.clone(),
            user: session.user().to_string(),
            sql: query.query,
            params: None,
            project: session.project().map(str::to_string),
        };
        let info = self
            .flight_info(session, &sid, handle, request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sid, session) = self.session(&request).await?;
        let handle = self.open_handle(&session, &cmd.prepared_statement_handle)?;
        let info = self
            .flight_info(session, &sid, handle, request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request).await?;
        Ok(Response::new(
            self.do_get_ticket(session, &ticket.statement_handle)
                .await?,
        ))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (sid, mut session) = self.session(&request).await?;
        let handle = self.open_handle(&session, &cmd.prepared_statement_handle)?;
        if handle.sid != sid {
            return Err(Status::permission_denied(
                "prepared statement belongs to another session",
            ));
        }
        statements::enter(&mut session, handle.project.as_deref())?;
        let out = session.execute(&handle.sql).await.map_err(to_status)?;
        Ok(Response::new(statements::encode_stream(out)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (sid, session) = self.session(&request).await?;
        let (dataset, params) = session.prepare(&query.query).await.map_err(to_status)?;
        let handle = Handle {
            sid,
            user: session.user().to_string(),
            sql: query.query,
            params: None,
            project: session.project().map(str::to_string),
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: self.sign_handle(&handle)?.into(),
            dataset_schema: schema_bytes(&wire::client_schema(dataset))?,
            parameter_schema: schema_bytes(&wire::client_schema(params))?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles are self-contained and expire on their own; tickets from
        // them stay valid for partitions fetched later.
        self.session(&request).await?;
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let (_, session) = self.session(&request).await?;
        let handle = self.open_handle(&session, &cmd.prepared_statement_handle)?;
        let (schema, batches) = Self::read_batches(request).await?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(self.bind(handle, schema, &batches)?.into()),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (sid, mut session) = self.session(&request).await?;
        let handle = self.open_handle(&session, &cmd.prepared_statement_handle)?;
        statements::enter(&mut session, handle.project.as_deref())?;
        let (_, batches) = Self::read_batches(request).await?;
        let n = self.run_update(&mut session, &handle.sql, &batches).await?;
        self.sessions.store(&sid, session);
        Ok(n)
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (_, session) = self.session(&request).await?;
        let mode = statements::ingest_mode(&session, &cmd)?;
        let stream = statements::ingest_stream(request).await?;
        let rows = veil_engine::workspace::write::ingest(&session, &cmd.table, mode, stream)
            .await
            .map_err(to_status)?;
        Ok(i64::try_from(rows).unwrap_or(i64::MAX))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (sid, mut session) = self.session(&request).await?;
        let n = self.run_update(&mut session, &cmd.query, &[]).await?;
        self.sessions.store(&sid, session);
        Ok(n)
    }

    async fn get_flight_info_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let schema = cmd.into_builder().schema();
        metadata_info(cmd, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        cmd: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request).await?;
        let mut b = cmd.into_builder();
        b.append(veil_engine::catalog::CATALOG);
        for project in session.projects().map_err(to_status)? {
            b.append(project);
        }
        let schema = b.schema();
        let batch = b.build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(batch_stream(schema, batch)))
    }

    async fn get_flight_info_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let schema = cmd.clone().into_builder().schema();
        metadata_info(cmd, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        cmd: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request).await?;
        let schema = cmd.clone().into_builder().schema();
        let batch = metadata::db_schemas(&session, cmd).await?;
        Ok(Response::new(batch_stream(schema, batch)))
    }

    async fn get_flight_info_tables(
        &self,
        cmd: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let schema = cmd.clone().into_builder().schema();
        metadata_info(cmd, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        cmd: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (_, session) = self.session(&request).await?;
        let schema = cmd.clone().into_builder().schema();
        let batch = metadata::tables(&session, cmd).await?;
        Ok(Response::new(batch_stream(schema, batch)))
    }

    async fn get_flight_info_table_types(
        &self,
        cmd: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let schema = cmd.into_builder().schema();
        metadata_info(cmd, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        cmd: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let mut b = cmd.into_builder();
        b.append(metadata::TABLE_TYPE);
        let schema = b.schema();
        let batch = b.build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(batch_stream(schema, batch)))
    }

    async fn get_flight_info_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let info = metadata::SQL_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("sql info"))?;
        let schema = cmd.clone().into_builder(info).schema();
        metadata_info(cmd, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        cmd: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let info = metadata::SQL_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("sql info"))?;
        let b = cmd.into_builder(info);
        let schema = b.schema();
        let batch = b.build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(batch_stream(schema, batch)))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        let info = metadata::XDBC_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("xdbc info"))?;
        let schema = cmd.into_builder(info).schema();
        metadata_info(cmd, &schema, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        cmd: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let info = metadata::XDBC_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("xdbc info"))?;
        let b = cmd.into_builder(info);
        let schema = b.schema();
        let batch = b.build().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(batch_stream(schema, batch)))
    }

    async fn get_flight_info_primary_keys(
        &self,
        cmd: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        metadata_info(cmd, &metadata::primary_keys_schema(), request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        _cmd: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let schema = metadata::primary_keys_schema();
        Ok(Response::new(batch_stream(
            Arc::clone(&schema),
            RecordBatch::new_empty(schema),
        )))
    }

    async fn get_flight_info_exported_keys(
        &self,
        cmd: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        metadata_info(cmd, &metadata::foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _cmd: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let schema = metadata::foreign_keys_schema();
        Ok(Response::new(batch_stream(
            Arc::clone(&schema),
            RecordBatch::new_empty(schema),
        )))
    }

    async fn get_flight_info_imported_keys(
        &self,
        cmd: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        metadata_info(cmd, &metadata::foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _cmd: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let schema = metadata::foreign_keys_schema();
        Ok(Response::new(batch_stream(
            Arc::clone(&schema),
            RecordBatch::new_empty(schema),
        )))
    }

    async fn get_flight_info_cross_reference(
        &self,
        cmd: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.session(&request).await?;
        metadata_info(cmd, &metadata::foreign_keys_schema(), request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _cmd: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.session(&request).await?;
        let schema = metadata::foreign_keys_schema();
        Ok(Response::new(batch_stream(
            Arc::clone(&schema),
            RecordBatch::new_empty(schema),
        )))
    }

    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let (sid, mut session) = self.session(&request).await?;
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            "SetSessionOptions" => {
                let req = session_options::decode(&action.body)?;
                let result = session_options::set(&mut session, req);
                self.sessions.store(&sid, session);
                result.encode_to_vec()
            }
            "GetSessionOptions" => session_options::get(&session).encode_to_vec(),
            "CloseSession" => {
                self.sessions.close(&sid);
                session_options::closed().encode_to_vec()
            }
            other => {
                return Err(Status::invalid_argument(format!("unknown action {other}")));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
            result,
        )]))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
