//! A plan's job on the Ballista scheduler, from submission to the final
//! stage's batches, cancelled on the cluster when the statement stops
//! reading it early (its timeout, `KILL`, a client gone).
//!
//! Ballista's own client (`execute_physical_plan`) keeps the job's id to
//! itself and cancels nothing when its stream is dropped: a timed-out
//! statement answered the client at once while its tasks held the
//! executors' slots to the end. This is the same protocol (a submission
//! that answers the job's id, its status asked for until it ends, the
//! final partitions fetched from the executors over Flight) with the job
//! in a guard. (Ballista's default "push" mode streams statuses instead,
//! and the first of them, with the id, may come only when the job ends.)

use std::sync::Arc;
use std::time::Duration;

use ballista_core::client::BallistaClient;
use ballista_core::config::BallistaConfig;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::execute_query_result::Result as Submitted;
use ballista_core::serde::protobuf::get_job_status_result::FlightProxy;
use ballista_core::serde::protobuf::job_status::Status;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, GetJobStatusResult, KeyValuePair,
    PartitionLocation,
};
use ballista_core::serde::scheduler::PartitionId;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionConfig;
use futures::{Stream, StreamExt, TryStreamExt};
use prometheus::IntCounter;
use tonic::transport::Channel;

type Scheduler = SchedulerGrpcClient<Channel>;

fn execution(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{what}: {e}"))
}

/// A submitted job: cancelled on the scheduler if dropped before it ended.
struct Job {
    scheduler: Scheduler,
    id: String,
    ended: bool,
    cancelled: Option<IntCounter>,
}

/// The wait between two asks for a job's status: a twentieth of the time
/// the job has run so far, within these bounds, so that noticing its end
/// late adds about 5 % to a short job (a point query takes a few hundred
/// milliseconds on a cluster) and polling a long one costs nothing.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MOST_POLL: Duration = Duration::from_millis(100);

impl Job {
    /// Waits for the job to end: where the final stage's partitions are,
    /// and through whom they are fetched.
    async fn finished(&mut self) -> Result<(Vec<PartitionLocation>, Option<FlightProxy>)> {
        let started = std::time::Instant::now();
        loop {
            let GetJobStatusResult {
                status,
                flight_proxy,
            } = self
                .scheduler
                .get_job_status(GetJobStatusParams {
                    job_id: self.id.clone(),
                })
                .await
                .map_err(|e| execution("scheduler", e.message()))?
                .into_inner();
            match status.and_then(|s| s.status) {
                None | Some(Status::Queued(_)) | Some(Status::Running(_)) => {
                    let wait = (started.elapsed() / 20).clamp(FIRST_POLL, MOST_POLL);
                    tokio::time::sleep(wait).await;
                }
                Some(Status::Failed(failed)) => {
                    self.ended = true;
                    // `failed` (mod.rs) keeps the id, not the executor's text.
                    return Err(DataFusionError::Execution(format!(
                        "Job {} failed: {}",
                        self.id, failed.error
                    )));
                }
                Some(Status::Successful(done)) => {
                    self.ended = true;
                    return Ok((done.partition_location, flight_proxy));
                }
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut scheduler = self.scheduler.clone();
        let id = std::mem::take(&mut self.id);
        let counter = self.cancelled.take();
        runtime.spawn(async move {
            let asked = scheduler.cancel_job(CancelJobParams { job_id: id.clone() });
            match asked.await.map(|r| r.into_inner().cancelled) {
                Ok(true) => {
                    tracing::info!(job = %id, "cancelled the Ballista job of a statement that stopped");
                    if let Some(counter) = counter {
                        counter.inc();
                    }
                }
                // It ended meanwhile.
                Ok(false) => tracing::debug!(job = %id, "the Ballista job had ended"),
                Err(e) => {
                    tracing::warn!(job = %id, error = %e.message(), "cannot cancel a Ballista job")
                }
            }
        });
    }
}

/// Submits `plan` (encoded) to the scheduler at `url` with `config`'s
/// settings and streams the job's final stage; dropping the stream before
/// the job ends cancels it (counted in `cancelled`).
pub(super) async fn run(
    url: String,
    plan: Vec<u8>,
    config: SessionConfig,
    cancelled: Option<IntCounter>,
) -> Result<impl Stream<Item = Result<datafusion::arrow::array::RecordBatch>> + Send> {
    let ballista: BallistaConfig = config.ballista_config();
    let grpc = GrpcClientConfig::from(&ballista);
    let size = ballista.grpc_client_max_message_size();
    let channel = create_grpc_client_endpoint(url.clone(), Some(&grpc))
        .map_err(|e| execution("scheduler address", e))?
        .connect()
        .await
        .map_err(|e| execution("cannot reach the scheduler", e))?;
    let mut scheduler = Scheduler::new(channel)
        .max_encoding_message_size(size)
        .max_decoding_message_size(size);
    let settings = config
        .options()
        .entries()
        .into_iter()
        .map(|e| KeyValuePair {
            key: e.key,
            value: e.value,
        })
        .collect();
    let mut request = tonic::Request::new(ExecuteQueryParams {
        query: Some(Query::PhysicalPlan(plan)),
        settings,
        session_id: uuid::Uuid::new_v4().to_string(),
        operation_id: uuid::Uuid::new_v4().to_string(),
    });
    ballista_core::version::insert_version_header(request.metadata_mut());
    let submitted = scheduler
        .execute_query(request)
        .await
        .map_err(|e| execution("the scheduler refused the job", e.message()))?
        .into_inner();
    let id = match submitted.result {
        Some(Submitted::Success(s)) => s.job_id,
        Some(Submitted::Failure(f)) => {
            return Err(execution(
                "the scheduler refused the job",
                format!("{:?}", f.failure),
            ))
        }
        None => return Err(execution("the scheduler refused the job", "no answer")),
    };
    let mut job = Job {
        scheduler,
        id,
        ended: false,
        cancelled,
    };
    let (partitions, proxy) = job.finished().await?;
    let fetch = Arc::new(Fetch {
        url,
        proxy,
        size,
        grpc,
    });
    Ok(futures::stream::iter(partitions)
        .then(move |p| {
            let fetch = Arc::clone(&fetch);
            async move { fetch.partition(p).await }
        })
        .try_flatten())
}

/// How the final stage's partitions are fetched.
struct Fetch {
    url: String,
    proxy: Option<FlightProxy>,
    size: usize,
    grpc: GrpcClientConfig,
}

impl Fetch {
    /// The batches of the final stage's partition `location`.
    async fn partition(&self, location: PartitionLocation) -> Result<SendableRecordBatchStream> {
        let layout = location.layout();
        let (Some(executor), Some(partition)) = (location.executor_meta, location.partition_id)
        else {
            return Err(execution(
                "scheduler",
                "a result partition without its executor",
            ));
        };
        let executor_port = u16::try_from(executor.port)
            .map_err(|_| execution("scheduler", "an executor port out of range"))?;
        let (host, port) = match &self.proxy {
            Some(FlightProxy::External(address)) => split(&format!("http://{address}"))?,
            Some(FlightProxy::Local(true)) => split(&self.url)?,
            Some(FlightProxy::Local(false)) | None => (executor.host.clone(), executor_port),
        };
        let mut client = BallistaClient::try_new(
            &host,
            port,
            self.size,
            false,
            None,
            self.grpc.io_retries_times,
            self.grpc.io_retry_wait_time_ms,
            0,
            0,
        )
        .await
        .map_err(|e| execution("cannot reach an executor", e))?;
        let id: PartitionId = partition.into();
        client
            .fetch_partition_proxied(
                &executor.id,
                &id,
                location.file_id,
                layout,
                &executor.host,
                executor_port,
                true,
            )
            .await
            .map_err(|e| e.into_datafusion())
    }
}

/// `host` and `port` of a URL.
fn split(address: &str) -> Result<(String, u16)> {
    let url = url::Url::parse(address).map_err(|e| execution("a Flight proxy address", e))?;
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => Ok((host.to_string(), port)),
        _ => Err(execution(
            "a Flight proxy address without host and port",
            address,
        )),
    }
}
