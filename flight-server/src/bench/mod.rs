//! `veil bench`: TPC-H sample data, the governed TPC-H benchmark, Flight
//! throughput and charts. See README.md, "Benchmarks".

pub mod audit;
pub mod flight;
pub mod generate;
pub mod load;
pub mod plot;
pub mod report;
pub mod tpch;

use std::path::Path;

/// A benchmark that could not run or whose answers are wrong.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options or input files.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A query failed.
    #[error("{query} as {who}: {message}")]
    Query {
        /// `q1` .. `q22`, or the query text.
        query: String,
        /// Who ran it.
        who: String,
        /// The error.
        message: String,
    },
    /// Two answers that must be equal are not.
    #[error("wrong answer: {0}")]
    Mismatch(String),
    /// Engine errors (catalog, governance script).
    #[error(transparent)]
    Veil(#[from] veil_engine::VeilError),
    /// DataFusion errors.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow errors.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Parquet errors.
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Flight client errors.
    #[error(transparent)]
    Flight(#[from] arrow_flight::error::FlightError),
}

/// Largest HTTP/2 frame the bench's client accepts (the protocol's default
/// is 16 KiB): the server then sends each Arrow batch in a few frames.
/// With the default, `veil bench flight` streamed lineitem at 175-249 MB/s;
/// with this, 400-466 MB/s (one build switching it, runs alternating,
/// 2026-12-02).
const CLIENT_MAX_FRAME_BYTES: u32 = 4 << 20;

/// The Flight SQL client the benches use.
pub(crate) type FlightClient =
    arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>;

/// A logged-in Flight SQL client on `addr` (host:port), inside `project`
/// (header `x-veil-project`) when given. Its HTTP/2 frames and windows are
/// sized for bulk results, as a client fetching large results should be
/// configured.
pub(crate) async fn flight_client(
    addr: &str,
    user: &str,
    password: &str,
    project: Option<&str>,
) -> Result<arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>, BenchError>
{
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| BenchError::Invalid(e.to_string()))?
        .max_frame_size(CLIENT_MAX_FRAME_BYTES)
        .initial_stream_window_size(4 * CLIENT_MAX_FRAME_BYTES)
        .initial_connection_window_size(8 * CLIENT_MAX_FRAME_BYTES)
        .connect()
        .await
        .map_err(|e| BenchError::Invalid(format!("connect to {addr}: {e}")))?;
    let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    if let Some(p) = project {
        c.set_header("x-veil-project", p);
    }
    c.handshake(user, password).await?;
    Ok(c)
}

/// The `p` quantile (0..1) of sorted durations, in milliseconds.
pub(crate) fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

impl BenchError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
