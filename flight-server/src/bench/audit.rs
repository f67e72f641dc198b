//! `veil bench audit`: what the audit log costs as Flight SQL clients see
//! it. Two servers on loopback over the same TPC-H files and governance
//! profile, one recording every query (group commit into SQLite, WAL,
//! `synchronous=FULL`), one whose store drops query and login records
//! (governance changes are still recorded with them); clients of the
//! restricted principal (a HASH mask and a row policy apply) run point
//! queries on `supplier` (the smallest table the profile governs: 10,000
//! rows at scale 1), first back to back (closed loop), then paced at
//! a fixed offered rate. Rounds alternate between the two servers.
//!
//! The clients run on a runtime of their own (threads named
//! `bench-client`), so the report gives the servers' CPU per query apart
//! from the clients' (`/proc/self/task`, Linux).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use serde::Serialize;
use veil_engine::store::{
    AuditAnchor, AuditEntry, AuditFilter, AuditRecord, AuditVerification, CatalogStore, Change,
};
use veil_engine::Engine;

use super::flight::{drain, PASSWORD};
use super::tpch::{Harness, RESTRICTED};
use super::BenchError;

/// Name of the client runtime's threads (at most 15 bytes: Linux's
/// thread names are cut there).
const CLIENT_THREADS: &str = "bench-client";

/// A store that records governance changes but drops the records of
/// queries and logins: the server without query auditing, for the
/// comparison only.
#[derive(Debug)]
struct DropsQueryRecords(Arc<dyn CatalogStore>);

impl CatalogStore for DropsQueryRecords {
    fn version(&self) -> veil_engine::Result<u64> {
        self.0.version()
    }
    fn load(&self) -> veil_engine::Result<veil_engine::model::CatalogSnapshot> {
        self.0.load()
    }
    fn apply(
        &self,
        changes: &[Change],
        audit: &AuditEntry,
        based_on: u64,
    ) -> veil_engine::Result<u64> {
        self.0.apply(changes, audit, based_on)
    }
    fn lock_writes(&self) -> veil_engine::Result<()> {
        self.0.lock_writes()
    }
    fn unlock_writes(&self) {
        self.0.unlock_writes()
    }
    fn audit_batch(&self, _entries: &[AuditEntry]) -> veil_engine::Result<()> {
        Ok(())
    }
    fn audit_records(&self, f: &AuditFilter) -> veil_engine::Result<Vec<AuditRecord>> {
        self.0.audit_records(f)
    }
    fn verify_audit(&self) -> veil_engine::Result<AuditVerification> {
        self.0.verify_audit()
    }
    fn audit_anchor(&self) -> veil_engine::Result<AuditAnchor> {
        self.0.audit_anchor()
    }
    fn archive_audit(&self, anchor: &AuditAnchor) -> veil_engine::Result<usize> {
        self.0.archive_audit(anchor)
    }
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    /// Concurrent clients (one connection each).
    pub clients: usize,
    /// Queries per run (all clients together).
    pub queries: usize,
    /// Rounds of one audited and one unaudited run, per mode.
    pub rounds: usize,
    /// Offered queries per second in the paced mode (0 skips it).
    pub rate: f64,
}

/// One side of one mode, medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Queries per second served.
    pub queries_per_s: f64,
    /// The servers' CPU time per query (clients' threads excluded), µs.
    pub server_cpu_us: f64,
    /// The whole process's CPU time per query, µs.
    pub process_cpu_us: f64,
    /// Latency p50, ms (paced: counted from when the query was due).
    pub p50_ms: f64,
    /// Latency p99, ms.
    pub p99_ms: f64,
}

/// One mode (closed loop or paced): both sides and what auditing cost.
#[derive(Debug, Clone, Serialize)]
pub struct Mode {
    /// `closed loop` or `paced at N queries/s`.
    pub mode: String,
    /// Queries recorded.
    pub audited: Side,
    /// Query records dropped.
    pub unaudited: Side,
    /// Median over the rounds of 1 - audited / unaudited throughput, %.
    pub throughput_cost_pct: f64,
    /// Each round's throughput cost, %.
    pub round_costs_pct: Vec<f64>,
    /// Median over the rounds of the servers' CPU per query, audited over
    /// unaudited - 1, %.
    pub server_cpu_cost_pct: f64,
    /// SQLite commits of query records on the audited side.
    pub commits: u64,
    /// Records per commit on the audited side.
    pub records_per_commit: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Machine description.
    pub machine: String,
    /// The query (with a varying key).
    pub query: String,
    /// Clients.
    pub clients: usize,
    /// Queries per run.
    pub queries: usize,
    /// Rounds per mode.
    pub rounds: usize,
    /// Closed loop, then paced.
    pub modes: Vec<Mode>,
    /// The restricted principal's queries recorded in `system.audit`, per
    /// side (checked: every query on the audited side, none on the other).
    pub query_records: [u64; 2],
}

/// Queries of the restricted principal in `engine`'s audit log.
async fn query_records(engine: &Arc<Engine>) -> Result<u64, BenchError> {
    let sql = format!(
        "SELECT count(*) FROM system.audit WHERE action = 'Query' AND actor = '{RESTRICTED}'"
    );
    let batches = engine
        .session("admin")
        .execute(&sql)
        .await?
        .collect()
        .await?;
    batches
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
        .filter(|c| c.len() == 1)
        .and_then(|c| u64::try_from(c.value(0)).ok())
        .ok_or_else(|| BenchError::Invalid("system.audit gave no count".into()))
}

/// The query client `c` sends `i`-th.
fn point_query(c: usize, i: usize) -> String {
    format!(
        "SELECT s_name, s_acctbal FROM tpch.supplier WHERE s_suppkey = {}",
        // Keys every scale has (100 suppliers at 0.01).
        1 + (c * 7919 + i * 104_729) % 100
    )
}

/// CPU time (user + system) of this process's threads, in total and of
/// the client runtime's threads; None off Linux.
fn cpu_times() -> Option<(Duration, Duration)> {
    let (mut all, mut clients) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
            continue;
        };
        all += user + system;
        if head.ends_with(CLIENT_THREADS) {
            clients += user + system;
        }
    }
    // USER_HZ is 100 on Linux.
    Some((
        Duration::from_millis(all * 10),
        Duration::from_millis(clients * 10),
    ))
}

/// One run against one server.
struct Run {
    wall: Duration,
    /// Servers' and whole process's CPU time over the run.
    cpu: Option<(Duration, Duration)>,
    latencies: Vec<Duration>,
    commits: u64,
}

/// Runs `queries` point queries from `clients` (logged in already),
/// back to back or paced at `rate` queries/s.
async fn run_once(
    runtime: &tokio::runtime::Runtime,
    clients: &mut Vec<super::FlightClient>,
    engine: &Engine,
    queries: usize,
    rate: Option<f64>,
) -> Result<Run, BenchError> {
    let n = clients.len();
    let commits = engine.metrics().audit_commits.commits.get();
    let cpu = cpu_times();
    let start = Instant::now();
    let tasks: Vec<_> = std::mem::take(clients)
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            runtime.spawn(async move {
                let mut latencies = Vec::with_capacity(queries / n);
                for i in 0..queries / n {
                    let due = match rate {
                        // Client c sends the (i * n + c)-th query overall.
                        Some(rate) => {
                            let due = start + Duration::from_secs_f64((i * n + c) as f64 / rate);
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    drain(&mut client, &point_query(c, i)).await?;
                    latencies.push(due.elapsed());
                }
                Ok::<_, BenchError>((client, latencies))
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(queries);
    for task in tasks {
        let (client, mut l) = task
            .await
            .map_err(|e| BenchError::Invalid(format!("a client failed: {e}")))??;
        clients.push(client);
        latencies.append(&mut l);
    }
    let wall = start.elapsed();
    let cpu = cpu.zip(cpu_times()).map(|((a, ac), (b, bc))| {
        let all = b.saturating_sub(a);
        (all.saturating_sub(bc.saturating_sub(ac)), all)
    });
    Ok(Run {
        wall,
        cpu,
        latencies,
        commits: engine
            .metrics()
            .audit_commits
            .commits
            .get()
            .saturating_sub(commits),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Medians of one side's runs.
fn side(runs: &[Run], queries: usize) -> Side {
    let per_query = |pick: fn(&(Duration, Duration)) -> Duration| {
        median(
            runs.iter()
                .filter_map(|r| r.cpu.as_ref())
                .map(|c| pick(c).as_secs_f64() * 1e6 / queries as f64)
                .collect(),
        )
    };
    let mut latencies: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    latencies.sort();
    Side {
        queries_per_s: median(
            runs.iter()
                .map(|r| queries as f64 / r.wall.as_secs_f64().max(1e-9))
                .collect(),
        ),
        server_cpu_us: per_query(|c| c.0),
        process_cpu_us: per_query(|c| c.1),
        p50_ms: super::percentile(&latencies, 0.5),
        p99_ms: super::percentile(&latencies, 0.99),
    }
}

/// A server on loopback over its own harness, and its clients.
struct Target {
    harness: Harness,
    server: crate::server::ServeHandle,
    clients: Vec<super::FlightClient>,
}

/// Starts a server (query records kept or dropped) and logs `clients` in
/// from `runtime`, where their connections' tasks then run.
async fn target(
    runtime: &tokio::runtime::Runtime,
    data: &Path,
    query_audit: bool,
    clients: usize,
) -> Result<Target, BenchError> {
    let harness = Harness::with_store(data, None, false, |store| {
        if query_audit {
            store
        } else {
            Arc::new(DropsQueryRecords(store))
        }
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::io(Path::new("127.0.0.1:0"), e))?;
    let server = crate::serve(harness.engine.clone(), listener)
        .map_err(|e| BenchError::io(Path::new("127.0.0.1:0"), e))?;
    let addr = server.addr.to_string();
    let mut logged_in = Vec::with_capacity(clients);
    for _ in 0..clients {
        let addr = addr.clone();
        let login = runtime
            .spawn(async move { super::flight_client(&addr, RESTRICTED, PASSWORD, None).await });
        logged_in.push(
            login
                .await
                .map_err(|e| BenchError::Invalid(format!("a client failed: {e}")))??,
        );
    }
    Ok(Target {
        harness,
        server,
        clients: logged_in,
    })
}

/// Runs the comparison.
pub async fn run(data: &Path, opts: AuditOptions) -> Result<AuditReport, BenchError> {
    if opts.clients == 0 || opts.queries < opts.clients || opts.rounds == 0 {
        return Err(BenchError::Invalid(
            "--clients, --rounds and --queries must be positive, with at least one query per client"
                .into(),
        ));
    }
    if !(opts.rate >= 0.0 && opts.rate.is_finite()) {
        return Err(BenchError::Invalid(
            "--rate must be a number of queries per second (0 skips the paced runs)".into(),
        ));
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .map_err(|e| BenchError::io(Path::new("client runtime"), e))?;
    let mut audited = target(&runtime, data, true, opts.clients).await?;
    let mut unaudited = target(&runtime, data, false, opts.clients).await?;
    let queries = opts.queries / opts.clients * opts.clients;
    // Warm-up: caches, connections, the Parquet footer.
    let warm_up = (queries / 4).max(opts.clients) / opts.clients * opts.clients;
    for t in [&mut audited, &mut unaudited] {
        run_once(&runtime, &mut t.clients, &t.harness.engine, warm_up, None).await?;
    }
    let mut ran = warm_up;
    let mut modes = Vec::new();
    let paced = (opts.rate > 0.0).then_some(opts.rate);
    for rate in std::iter::once(None).chain(paced.map(Some)) {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 0..opts.rounds {
            // Alternate which side runs first.
            for first in [round % 2 == 0, round % 2 == 1] {
                let (t, runs) = if first {
                    (&mut audited, &mut with)
                } else {
                    (&mut unaudited, &mut without)
                };
                runs.push(
                    run_once(&runtime, &mut t.clients, &t.harness.engine, queries, rate).await?,
                );
            }
        }
        let costs = |f: &dyn Fn(&Run, &Run) -> Option<f64>| -> Vec<f64> {
            with.iter()
                .zip(&without)
                .filter_map(|(a, b)| f(a, b))
                .collect()
        };
        let throughput_costs = costs(&|a, b| {
            Some((1.0 - b.wall.as_secs_f64() / a.wall.as_secs_f64().max(1e-9)) * 100.0)
        });
        let commits: u64 = with.iter().map(|r| r.commits).sum();
        modes.push(Mode {
            mode: rate.map_or("closed loop".into(), |r| format!("paced at {r} queries/s")),
            audited: side(&with, queries),
            unaudited: side(&without, queries),
            throughput_cost_pct: median(throughput_costs.clone()),
            round_costs_pct: throughput_costs,
            server_cpu_cost_pct: median(costs(&|a, b| {
                let (a, b) = (a.cpu?.0.as_secs_f64(), b.cpu?.0.as_secs_f64());
                (b > 0.0).then(|| (a / b - 1.0) * 100.0)
            })),
            commits,
            records_per_commit: (with.len() * queries) as f64 / commits.max(1) as f64,
        });
        ran += with.len() * queries;
    }
    let records = [
        query_records(&audited.harness.engine).await?,
        query_records(&unaudited.harness.engine).await?,
    ];
    if records != [ran as u64, 0] {
        return Err(BenchError::Mismatch(format!(
            "{ran} queries ran on each side; system.audit recorded {} on the audited one and {} on the other",
            records[0], records[1]
        )));
    }
    for t in [audited, unaudited] {
        let _ = t.server.shutdown().await;
    }
    runtime.shutdown_background();
    Ok(AuditReport {
        machine: super::report::machine(),
        query: "SELECT s_name, s_acctbal FROM tpch.supplier WHERE s_suppkey = <k>".into(),
        clients: opts.clients,
        queries,
        rounds: opts.rounds,
        modes,
        query_records: records,
    })
}

impl AuditReport {
    /// The terminal summary.
    pub fn table(&self) -> String {
        let mut s = format!(
            "audit cost over Flight SQL on loopback, {}\n{} clients as {RESTRICTED}, {} queries per run, {} rounds per mode: {}\n",
            self.machine, self.clients, self.queries, self.rounds, self.query
        );
        s.push_str(
            "mode                         side          queries/s  server CPU/query  process CPU/query   p50 ms   p99 ms\n",
        );
        for m in &self.modes {
            for (name, side) in [("audited", &m.audited), ("unaudited", &m.unaudited)] {
                s.push_str(&format!(
                    "{:<28} {:<12} {:>10.0} {:>14.0} us {:>15.0} us {:>8.2} {:>8.2}\n",
                    m.mode,
                    name,
                    side.queries_per_s,
                    side.server_cpu_us,
                    side.process_cpu_us,
                    side.p50_ms,
                    side.p99_ms
                ));
            }
            s.push_str(&format!(
                "{:<28} cost: throughput {:.1} % (rounds: {}), server CPU per query {:+.1} % ({:.1} records per commit)\n",
                m.mode,
                m.throughput_cost_pct,
                m.round_costs_pct
                    .iter()
                    .map(|c| format!("{c:.1}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                m.server_cpu_cost_pct,
                m.records_per_commit
            ));
        }
        s.push_str(&format!(
            "queries in system.audit: {} audited, {} unaudited\n",
            self.query_records[0], self.query_records[1]
        ));
        s
    }
}
