//! What the Flight SQL test binaries share: a demo server on a real socket,
//! logged-in Rust Flight SQL clients, fetching a FlightInfo's rows.

#![allow(clippy::unwrap_used, dead_code, missing_docs)]

#[path = "../../../../testdata/slt/harness.rs"]
pub mod harness;
#[path = "../../../../engine/tests/common/pg.rs"]
pub mod pg;

use std::net::SocketAddr;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::FlightInfo;
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use tonic::transport::Channel;
use veil_engine::Engine;
use veil_flight_server::ServeHandle;

/// A running demo server; dropped with its data directory.
pub struct Server {
    pub _dir: tempfile::TempDir,
    pub handle: ServeHandle,
    pub engine: std::sync::Arc<Engine>,
}

pub async fn start() -> Server {
    start_with(veil_engine::EngineOptions::default(), None).await
}

/// A demo server with engine options (limits, login policy), over TLS
/// when `tls` is given.
pub async fn start_with(
    options: veil_engine::EngineOptions,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Server {
    start_in(tempfile::tempdir().unwrap(), options, tls).await
}

/// [`start_with`] on a given data directory (its keys, or a shared
/// catalog's, may be there already).
pub async fn start_in(
    dir: tempfile::TempDir,
    options: veil_engine::EngineOptions,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Server {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("..");
    let engine = Engine::open_with(dir.path(), &root, options).unwrap();
    engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
    veil_engine::statement::load_demo(&engine).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle =
        veil_flight_server::server::serve_with(std::sync::Arc::clone(&engine), listener, tls)
            .unwrap();
    Server {
        _dir: dir,
        handle,
        engine,
    }
}

pub async fn client(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<FlightSqlServiceClient<Channel>, String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut c = FlightSqlServiceClient::new(channel);
    c.handshake(user, password)
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// Runs one query the way ADBC does (prepare, execute, fetch).
pub async fn query(
    c: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let mut prepared = c
        .prepare(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let info = prepared.execute().await.map_err(|e| e.to_string())?;
    fetch(c, info).await
}

/// Rows in a result.
pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

pub async fn fetch(
    c: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, String> {
    let mut out = vec![];
    for ep in info.endpoint {
        let ticket = ep.ticket.ok_or("endpoint without ticket")?;
        let stream = c.do_get(ticket).await.map_err(|e| e.to_string())?;
        out.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// The text of an error (status code and message).
pub fn code_of(e: impl std::fmt::Display) -> String {
    e.to_string()
}
