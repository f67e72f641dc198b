//! Starting and stopping the Flight SQL server on a socket.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::ServerTlsConfig;
use veil_engine::Engine;

use crate::service::VeilFlightSql;

/// Largest Flight message accepted (bigger ones get ResourceExhausted).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest HTTP/2 frame the server accepts, advertised to clients (the
/// protocol's default is 16 KiB). A client uploading a large Arrow stream
/// (DoPut, ingest) then sends it in a few large frames instead of tens of
/// thousands of small ones: the `flight_ingest` bench went from 431-542
/// to 849-872 MB/s on loopback with it and the windows below.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// HTTP/2 flow-control windows the server grants a client's uploads, per
/// stream and per connection (h2's default is 64 KiB, which stalls a fast
/// sender every 64 KiB until the window update comes back).
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// A running server.
#[derive(Debug)]
pub struct ServeHandle {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServeHandle {
    /// Stops accepting connections and waits for the server to finish.
    pub async fn shutdown(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Serves Flight SQL for `engine` on an already bound listener.
pub fn serve(engine: Arc<Engine>, listener: TcpListener) -> std::io::Result<ServeHandle> {
    serve_with(engine, listener, None)
}

/// [`serve`], over TLS when `tls` is given (see [`crate::tls`]).
pub fn serve_with(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
) -> std::io::Result<ServeHandle> {
    let addr = listener.local_addr()?;
    let service = FlightServiceServer::new(VeilFlightSql::new(engine))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = oneshot::channel::<()>();
    // Small responses must not wait for the peer's delayed ACK (Nagle):
    // without TCP_NODELAY a point query took about 96 ms instead of a few.
    let incoming = futures::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let mut builder = tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let task = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
        incoming,
        async {
            let _ = rx.await;
        },
    ));
    Ok(ServeHandle {
        addr,
        shutdown: Some(tx),
        task,
    })
}

/// Serves the engine's Prometheus metrics at `GET /metrics` on `listener`
/// (a port of its own, so it can stay inside a private network).
pub fn serve_metrics(engine: Arc<Engine>, listener: TcpListener) -> JoinHandle<()> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let engine = Arc::clone(&engine);
            async move {
                match engine.render_metrics() {
                    Ok(text) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        text,
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    })
}
