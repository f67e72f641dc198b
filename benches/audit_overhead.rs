//! What the audit log costs: concurrent clients running small governed
//! queries as bob (a HASH mask and a row filter apply), with every query
//! recorded (group commit into SQLite, WAL, synchronous=FULL) vs the same
//! engine on a store that drops query records.
//!
//! `cargo bench -p veil-engine --bench audit_overhead` (VEIL_BENCH_QUERIES
//! total queries per run, default 8000; VEIL_BENCH_CLIENTS, default 8;
//! VEIL_BENCH_ROUNDS rounds of one audited and one unaudited run, default
//! 9; VEIL_BENCH_ONLY=audited|unaudited runs one side only, for profiling;
//! VEIL_BENCH_COMMIT_DELAY_US sets the writer's low-load hold, the
//! `audit_commit_delay_ms` setting, on both sides).
//! Prints each round, the median throughputs, the median of the rounds'
//! costs and the process's CPU time per query on each side (Linux).
//!
//! Then the same clients offer a fixed rate (VEIL_BENCH_RATE queries/s,
//! default 1000, the load; 0 skips it), in the same number of
//! alternating rounds: what each side served, its CPU per query and share
//! of the machine, and latency p50 / p99 counted from when each query was
//! due.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_engine::keys::MasterKey;
use veil_engine::model::CatalogSnapshot;
use veil_engine::store::{
    AuditAnchor, AuditEntry, AuditFilter, AuditRecord, AuditVerification, CatalogStore, Change,
    SqliteStore,
};
use veil_engine::{Engine, EngineOptions};

/// The allocator the `veil` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The SQLite store with query records dropped (the baseline).
#[derive(Debug)]
struct NoAudit(SqliteStore);

impl CatalogStore for NoAudit {
    fn version(&self) -> veil_engine::Result<u64> {
        self.0.version()
    }
    fn load(&self) -> veil_engine::Result<CatalogSnapshot> {
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

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn engine(dir: &Path, audited: bool) -> Arc<Engine> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let keys = MasterKey::load_or_create(dir).expect("keys");
    let sqlite = SqliteStore::open(&dir.join("catalog.sqlite"), keys.audit_key()).expect("store");
    let store: Arc<dyn CatalogStore> = if audited {
        Arc::new(sqlite)
    } else {
        Arc::new(NoAudit(sqlite))
    };
    let options = EngineOptions {
        warehouse: Some(dir.join("warehouse").to_string_lossy().into_owned()),
        // VEIL_BENCH_COMMIT_DELAY_US: the `audit_commit_delay_ms` setting.
        audit_commit_delay: Duration::from_micros(env("VEIL_BENCH_COMMIT_DELAY_US", 0) as u64),
        ..Default::default()
    };
    let engine = Engine::new(store, keys, &root, options).expect("engine");
    engine.bootstrap_admin(Some("pw".into())).expect("admin");
    veil_engine::statement::load_demo(&engine)
        .await
        .expect("demo");
    engine
}

/// CPU time this process has used (user + system), from /proc (Linux);
/// None elsewhere.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// One run: wall time, the process's CPU time over it and each query's
/// latency.
struct Run {
    wall: Duration,
    cpu: Option<Duration>,
    latencies: Vec<Duration>,
}

/// Runs `queries` small queries from `clients` concurrent sessions: back
/// to back (closed loop) when `rate` is None, else paced so that together
/// they offer `rate` queries per second. A paced query's latency counts
/// from when it was due, not when it was sent, so a server that falls
/// behind shows it in the latency (no coordinated omission).
async fn run(engine: &Arc<Engine>, clients: usize, queries: usize, rate: Option<f64>) -> Run {
    let start = Instant::now();
    let cpu = cpu_time();
    let mut tasks = vec![];
    for c in 0..clients {
        let engine = Arc::clone(engine);
        tasks.push(tokio::spawn(async move {
            let mut bob = engine.session("bob");
            let mut latencies = Vec::with_capacity(queries / clients);
            for i in 0..queries / clients {
                let due = match rate {
                    // Client c sends the (i * clients + c)-th query overall.
                    Some(rate) => {
                        let due = start + Duration::from_secs_f64((i * clients + c) as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let sql = format!(
                    "SELECT name, email FROM hr.employees WHERE employee_id = {}",
                    (c * 7919 + i) % 311 + 1
                );
                let out = bob.execute(&sql).await.expect("query");
                out.collect().await.expect("rows");
                latencies.push(due.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(queries);
    for t in tasks {
        latencies.extend(t.await.expect("client"));
    }
    let wall = start.elapsed();
    Run {
        wall,
        cpu: cpu.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a)),
        latencies,
    }
}

/// Group commits `engine`'s audit writer has made (its `/metrics` counter).
fn commits(engine: &Engine) -> u64 {
    engine.metrics().audit_commits.commits.get()
}

/// Audited records per group commit since `engine` had made `since` commits.
fn per_commit(engine: &Engine, records: usize, since: u64) -> f64 {
    records as f64 / commits(engine).saturating_sub(since).max(1) as f64
}

/// The `q`-quantile of `v` (0.0..=1.0).
fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let queries = env("VEIL_BENCH_QUERIES", 8000);
    let clients = env("VEIL_BENCH_CLIENTS", 8);
    let rounds = env("VEIL_BENCH_ROUNDS", 9).max(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (with_dir, without_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (with, without) = rt.block_on(async {
        (
            engine(with_dir.path(), true).await,
            engine(without_dir.path(), false).await,
        )
    });
    // Warm-up.
    rt.block_on(run(&with, clients, clients * 20, None));
    rt.block_on(run(&without, clients, clients * 20, None));
    // Rounds of one audited and one unaudited run back to back (the order
    // alternates); this machine's speed drifts between rounds, so each
    // round's ratio is taken and the median ratio reported.
    let qps = |r: &Run| queries as f64 / r.wall.as_secs_f64();
    let cpu_us = |r: &Run| r.cpu.map(|c| c.as_secs_f64() * 1e6 / queries as f64);
    // VEIL_BENCH_ONLY=audited|unaudited runs one side only (to profile it).
    let only = std::env::var("VEIL_BENCH_ONLY").ok();
    if let Some(engine) = match only.as_deref() {
        Some("audited") => Some(&with),
        Some("unaudited") => Some(&without),
        _ => None,
    } {
        for _ in 0..rounds {
            let r = rt.block_on(run(engine, clients, queries, None));
            let cpu = cpu_us(&r).unwrap_or(f64::NAN);
            println!("  {:.0} queries/s, {cpu:.0} µs CPU per query", qps(&r));
        }
        return;
    }
    let (mut a, mut b, mut cost, mut cpu_a, mut cpu_b) = (vec![], vec![], vec![], vec![], vec![]);
    let since = commits(&with);
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = rt.block_on(run(&with, clients, queries, None));
            (x, rt.block_on(run(&without, clients, queries, None)))
        } else {
            let y = rt.block_on(run(&without, clients, queries, None));
            (rt.block_on(run(&with, clients, queries, None)), y)
        };
        println!(
            "  round {round}: audited {:.0} q/s, not audited {:.0} q/s",
            qps(&x),
            qps(&y)
        );
        cost.push((1.0 - qps(&x) / qps(&y)) * 100.0);
        a.push(qps(&x));
        b.push(qps(&y));
        cpu_a.extend(cpu_us(&x));
        cpu_b.extend(cpu_us(&y));
    }
    println!("{queries} small governed queries from {clients} clients, {rounds} rounds (medians):");
    println!("  audited:     {:>8.0} queries/s", median(a));
    println!("  not audited: {:>8.0} queries/s", median(b));
    println!(
        "  audit cost:  {:.1}% of throughput (median of the rounds' costs)",
        median(cost)
    );
    println!(
        "  records per group commit: {:.1}",
        per_commit(&with, queries * rounds, since)
    );
    if !cpu_a.is_empty() && !cpu_b.is_empty() {
        let (ca, cb) = (median(cpu_a), median(cpu_b));
        println!(
            "  CPU per query: {ca:.0} µs audited, {cb:.0} µs not audited ({:+.1}%)",
            (ca / cb - 1.0) * 100.0
        );
    }
    // The load: the same clients offering a fixed rate
    // (VEIL_BENCH_RATE queries/s, default 1000; 0 skips this part).
    let rate = env("VEIL_BENCH_RATE", 1000);
    if rate > 0 {
        paced(
            &rt,
            [&with, &without],
            clients,
            queries,
            rounds,
            rate as f64,
        );
    }
    let records = with
        .store()
        .audit_records(&AuditFilter::default())
        .expect("records")
        .len();
    println!(
        "  records written: {records}; chain ok: {}",
        with.verify_audit()
            .map(|v| v.first_broken.is_none())
            .unwrap_or(false)
    );
}

/// Rounds of one audited and one unaudited run at `rate` queries/s offered
/// (order alternating), then what each side served, its CPU and latency.
fn paced(
    rt: &tokio::runtime::Runtime,
    engines: [&Arc<Engine>; 2],
    clients: usize,
    queries: usize,
    rounds: usize,
    rate: f64,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut runs: [Vec<Run>; 2] = [vec![], vec![]];
    let since = commits(engines[0]);
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            runs[side].push(rt.block_on(run(engines[side], clients, queries, Some(rate))));
        }
    }
    let qps = |r: &Run| queries as f64 / r.wall.as_secs_f64();
    let cpu_us = |r: &Run| r.cpu.map(|c| c.as_secs_f64() * 1e6 / queries as f64);
    let share = |r: &Run| {
        r.cpu
            .map(|c| c.as_secs_f64() / r.wall.as_secs_f64() / cores * 100.0)
    };
    println!("{queries} queries offered at {rate:.0} queries/s by {clients} clients, {rounds} rounds (medians):");
    let mut cpu = [f64::NAN; 2];
    for (side, name) in [(0, "audited:    "), (1, "not audited:")] {
        let rs = &runs[side];
        cpu[side] = median(rs.iter().filter_map(cpu_us).collect());
        let mut lat: Vec<Duration> = rs
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {name} {:>5.0} queries/s served, {:.0} µs CPU per query ({:.0}% of the machine), latency p50 {:.2} ms, p99 {:.2} ms",
            median(rs.iter().map(qps).collect()),
            cpu[side],
            median(rs.iter().filter_map(share).collect()),
            ms(quantile(&mut lat, 0.5)),
            ms(quantile(&mut lat, 0.99)),
        );
    }
    let cost = median(
        runs[0]
            .iter()
            .zip(&runs[1])
            .map(|(a, b)| (1.0 - qps(a) / qps(b)) * 100.0)
            .collect(),
    );
    println!(
        "  audit cost at this load: {cost:.1}% of throughput, CPU per query {:+.1}%; records per group commit: {:.1}",
        (cpu[0] / cpu[1] - 1.0) * 100.0,
        per_commit(engines[0], queries * rounds, since)
    );
}
