//! What the audit log costs: concurrent clients running small governed
//! queries as bob (a HASH mask and a row filter apply), with every query
//! recorded (group commit into SQLite, WAL, synchronous=FULL) vs the same
//! engine on a store that drops query records.
//!
//! `cargo bench -p veil-engine --bench audit_overhead` (VEIL_BENCH_QUERIES
//! total queries per run, default 8000; VEIL_BENCH_CLIENTS, default 8;
//! median of 5 interleaved runs).

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
    fn apply(&self, changes: &[Change], audit: &AuditEntry) -> veil_engine::Result<u64> {
        self.0.apply(changes, audit)
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
        ..Default::default()
    };
    let engine = Engine::new(store, keys, &root, options).expect("engine");
    engine.bootstrap_admin(Some("pw".into())).expect("admin");
    veil_engine::statement::load_demo(&engine)
        .await
        .expect("demo");
    engine
}

/// Runs `queries` small queries from `clients` concurrent sessions; returns the wall time.
async fn run(engine: &Arc<Engine>, clients: usize, queries: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = vec![];
    for c in 0..clients {
        let engine = Arc::clone(engine);
        tasks.push(tokio::spawn(async move {
            let mut bob = engine.session("bob");
            for i in 0..queries / clients {
                let sql = format!(
                    "SELECT name, email FROM hr.employees WHERE employee_id = {}",
                    (c * 7919 + i) % 311 + 1
                );
                let out = bob.execute(&sql).await.expect("query");
                out.collect().await.expect("rows");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let queries = env("VEIL_BENCH_QUERIES", 8000);
    let clients = env("VEIL_BENCH_CLIENTS", 8);
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
    rt.block_on(run(&with, clients, clients * 20));
    rt.block_on(run(&without, clients, clients * 20));
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..5 {
        a.push(rt.block_on(run(&with, clients, queries)));
        b.push(rt.block_on(run(&without, clients, queries)));
    }
    let (a, b) = (median(a), median(b));
    let qps = |d: Duration| queries as f64 / d.as_secs_f64();
    println!("{queries} small governed queries from {clients} clients (median of 5):");
    println!("  audited:     {:>8.0} queries/s ({:?})", qps(a), a);
    println!("  not audited: {:>8.0} queries/s ({:?})", qps(b), b);
    println!(
        "  audit cost:  {:.1}% of throughput",
        (1.0 - qps(a) / qps(b)) * 100.0
    );
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
