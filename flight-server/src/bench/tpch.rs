//! `veil bench tpch`: the 22 TPC-H queries three ways in one process, so the
//! cost of governance shows up as ratios:
//!
//! - ungoverned: plain DataFusion over the same Parquet files;
//! - unrestricted: through Veil as `bench_unrestricted`, whom every policy
//!   of the profile exempts (the cost of the machinery alone);
//! - restricted: through Veil as `bench_restricted` (masks and row filters).
//!
//! Each query runs once per variant to warm up, then `iterations` rounds of
//! the three variants interleaved, each round starting with the next
//! variant; the median of each is reported. The
//! unrestricted answer must equal the ungoverned one for every query: the
//! run fails otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use veil_engine::adaptive_and::AdaptiveConjuncts;
use veil_engine::group_reduction::ReduceGroupsByJoinKey;
use veil_engine::keys::MasterKey;
use veil_engine::semi_join::SemiJoinOnJoinKey;
use veil_engine::shared_plan::SharingQueryPlanner;
use veil_engine::store::{CatalogStore, PostgresStore, SqliteStore};
use veil_engine::{Engine, EngineOptions, Session};

use super::generate::{recorded_scale, TABLES};
use super::report::{median, BenchResult, QueryTiming};
use super::BenchError;

macro_rules! queries {
    ($($n:literal),*) => {
        [$(include_str!(concat!("../../../benches/tpch/queries/q", $n, ".sql"))),*]
    };
}

/// The 22 TPC-H queries (validation parameters), over `tpch.<table>`.
pub const QUERIES: [&str; 22] = queries!(
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17",
    "18", "19", "20", "21", "22"
);

/// The governance profile (`benches/tpch/governance.sql`).
pub const PROFILE: &str = include_str!("../../../benches/tpch/governance.sql");

/// The unrestricted principal of the profile.
pub const UNRESTRICTED: &str = "bench_unrestricted";
/// The restricted principal of the profile.
pub const RESTRICTED: &str = "bench_restricted";

/// What to run.
#[derive(Debug, Clone)]
pub struct TpchOptions {
    /// The directory `veil bench generate` wrote.
    pub data: PathBuf,
    /// The scale, if given; must match the one recorded in `data`.
    pub scale: Option<f64>,
    /// Measured rounds per query (after one warm-up round).
    pub iterations: usize,
    /// Queries to run, 1-based; empty: all 22.
    pub queries: Vec<usize>,
    /// Run the governed queries on a Ballista scheduler and executor
    /// started in this process (what distribution costs on one machine).
    pub cluster: bool,
}

/// The plans of the selected queries (all 22 when none is given),
/// ungoverned and as each profile principal (`EXPLAIN` through the same
/// paths the benchmark times), for profiling.
pub async fn explain(data: &Path, queries: &[usize]) -> Result<String, BenchError> {
    let harness = Harness::new(data).await?;
    let mut out = String::new();
    for n in selected(queries) {
        let sql = query(n)?;
        let explain = format!("EXPLAIN {sql}");
        let plain = plain(&harness.plain, &explain).await?;
        out.push_str(&format!("== q{n} ungoverned\n{}\n", plan_text(&plain)?));
        for user in [UNRESTRICTED, RESTRICTED] {
            let batches = governed(&mut harness.session(user), &explain).await?;
            out.push_str(&format!("== q{n} as {user}\n{}\n", plan_text(&batches)?));
        }
    }
    Ok(out)
}

/// The `plan` column of EXPLAIN output.
fn plan_text(batches: &[RecordBatch]) -> Result<String, BenchError> {
    let opts = FormatOptions::default();
    let mut out = String::new();
    for b in batches {
        let (Some(kind), Some(plan)) = (b.column_by_name("plan_type"), b.column_by_name("plan"))
        else {
            continue;
        };
        let kind = ArrayFormatter::try_new(kind.as_ref(), &opts)?;
        let plan = ArrayFormatter::try_new(plan.as_ref(), &opts)?;
        for row in 0..b.num_rows() {
            out.push_str(&format!("-- {}\n{}\n", kind.value(row), plan.value(row)));
        }
    }
    Ok(out)
}

/// The query text without comments and the final semicolon.
pub fn query_sql(n: usize) -> Option<String> {
    let text = QUERIES.get(n.checked_sub(1)?)?;
    let body: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    Some(body.join("\n").trim().trim_end_matches(';').to_string())
}

/// The queries to run: those given, or all 22.
fn selected(queries: &[usize]) -> Vec<usize> {
    if queries.is_empty() {
        (1..=QUERIES.len()).collect()
    } else {
        queries.to_vec()
    }
}

/// The text of query `n`, or an error naming the valid range.
fn query(n: usize) -> Result<String, BenchError> {
    query_sql(n)
        .ok_or_else(|| BenchError::Invalid(format!("there is no TPC-H query {n} (1 to 22)")))
}

/// An engine with the profile applied and a plain DataFusion context over
/// the same files.
pub struct Harness {
    /// Plain DataFusion, tables registered as `tpch.<table>`.
    pub plain: SessionContext,
    /// Veil's engine on a temporary data directory.
    pub engine: Arc<Engine>,
    /// With a cluster: an engine on the same catalog and keys that runs
    /// every query itself, so the restricted principal's answers on the
    /// cluster are checked against its answers here.
    pub alone: Option<Arc<Engine>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Statements of the engine that ran `place` (`cluster` or `local`)
    /// with a cluster configured.
    pub fn cluster_runs(&self, place: &str) -> u64 {
        self.engine
            .metrics()
            .cluster_queries
            .with_label_values(&[place])
            .get()
    }

    /// Registers the eight tables of `data` both ways and applies the
    /// governance profile as admin.
    pub async fn new(data: &Path) -> Result<Self, BenchError> {
        Self::with_store(data, None, false, |store| store).await
    }

    /// [`Harness::new`], the engine's store wrapped by `wrap`: a SQLite
    /// catalog in a temporary directory, or the PostgreSQL catalog at
    /// `catalog` (a database of its own: the run registers its sources and
    /// appends to its audit log). With `cluster`, the engine runs queries
    /// on a Ballista scheduler and one executor started in this process.
    pub async fn with_store(
        data: &Path,
        catalog: Option<&str>,
        cluster: bool,
        wrap: impl FnOnce(Arc<dyn CatalogStore>) -> Arc<dyn CatalogStore>,
    ) -> Result<Self, BenchError> {
        let data = data.canonicalize().map_err(|e| BenchError::io(data, e))?;
        let text = data.to_str().filter(|s| !s.contains('\'')).ok_or_else(|| {
            BenchError::Invalid(format!(
                "data directory {} must be UTF-8 without quotes",
                data.display()
            ))
        })?;
        check_data(&data)?;
        let dir = tempfile::tempdir().map_err(|e| BenchError::io(Path::new("tmp"), e))?;
        let keys = MasterKey::load_or_create(dir.path())?;
        let open = || -> Result<Arc<dyn CatalogStore>, BenchError> {
            Ok(match catalog {
                Some(params) => Arc::new(PostgresStore::connect(params, keys.audit_key())?),
                None => Arc::new(SqliteStore::open(
                    &dir.path().join("catalog.sqlite"),
                    keys.audit_key(),
                )?),
            })
        };
        let options = EngineOptions::default().in_data_dir(dir.path());
        let mut alone = None;
        let mut remote = options.clone();
        if cluster {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let key = veil_engine::distributed::cluster_key(&keys);
            remote.cluster = Some(veil_engine::distributed::standalone(key, 1, cores).await?);
            let twin = MasterKey::load_or_create(dir.path())?;
            alone = Some(Engine::new(open()?, twin, &data, options)?);
        }
        let engine = Engine::new(wrap(open()?), keys, &data, remote)?;
        engine.bootstrap_admin(Some(random_password()))?;
        let profile = PROFILE.replace("{data}", text);
        veil_engine::statement::apply_script(&mut engine.session("admin"), &profile).await?;

        // DataFusion with Veil's planning rules and settings that are not
        // governance (`semi_join.rs`, `group_reduction.rs`, `build_side.rs`,
        // `shared_plan.rs`, `adaptive_and.rs`, `join_arrays.rs`), so the runs
        // differ by governance alone.
        let plain = SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_config({
                    let mut config = SessionConfig::new();
                    veil_engine::join_arrays::configure(&mut config);
                    config
                })
                .with_default_features()
                .with_optimizer_rule(Arc::new(SemiJoinOnJoinKey))
                .with_optimizer_rule(Arc::new(ReduceGroupsByJoinKey))
                .with_query_planner(Arc::new(SharingQueryPlanner))
                .with_physical_optimizer_rules(plain_physical_rules())
                .build(),
        );
        plain.sql("CREATE SCHEMA tpch").await?.collect().await?;
        for t in TABLES {
            let path = format!("{}/", data.join(t).display());
            plain
                .register_parquet(format!("tpch.{t}"), &path, ParquetReadOptions::default())
                .await?;
        }
        Ok(Self {
            plain,
            engine,
            alone,
            _dir: dir,
        })
    }

    /// A session of a profile principal.
    pub fn session(&self, user: &str) -> Session {
        self.engine.session(user)
    }
}

/// Refuses a directory without the eight table directories.
fn check_data(data: &Path) -> Result<(), BenchError> {
    for t in TABLES {
        if !data.join(t).is_dir() {
            return Err(BenchError::Invalid(format!(
                "{} has no {t}/ directory: run `veil bench generate --out {}` first",
                data.display(),
                data.display()
            )));
        }
    }
    Ok(())
}

fn random_password() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

async fn plain(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

async fn governed(s: &mut Session, sql: &str) -> veil_engine::error::Result<Vec<RecordBatch>> {
    s.execute(sql).await?.collect().await
}

/// Rows as text lines, sorted: equal answers give equal lines whatever the
/// row order of ties.
pub fn canonical(batches: &[RecordBatch]) -> Result<Vec<String>, BenchError> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut lines = Vec::new();
    for b in batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            let cells: Vec<String> = fmts.iter().map(|f| f.value(row).to_string()).collect();
            lines.push(cells.join("|"));
        }
    }
    lines.sort();
    Ok(lines)
}

/// The error saying how answer `got` (of `who`) differs from `want` (of
/// `other`), if it does.
fn mismatch(
    query: &str,
    (who, got): (&str, &[RecordBatch]),
    (other, want): (&str, &[RecordBatch]),
) -> Result<Option<BenchError>, BenchError> {
    let (want, have) = (canonical(want)?, canonical(got)?);
    if want == have {
        return Ok(None);
    }
    let first = want
        .iter()
        .zip(&have)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(have.len()));
    Ok(Some(BenchError::Mismatch(format!(
        "{query}: {who} got {} rows, {other} {}; first difference at sorted row {first}: \
         {:?} vs {:?}",
        have.len(),
        want.len(),
        have.get(first),
        want.get(first)
    ))))
}

fn rows(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Runs the benchmark; `each` sees every query's timing as it finishes.
pub async fn run(
    opts: &TpchOptions,
    each: impl FnMut(&QueryTiming),
) -> Result<BenchResult, BenchError> {
    check_data(&opts.data)?;
    let recorded = recorded_scale(&opts.data);
    let scale = match (opts.scale, recorded) {
        (Some(s), Some(r)) if (s - r).abs() > f64::EPSILON * s.max(1.0) => {
            return Err(BenchError::Invalid(format!(
                "--scale {s} does not match the scale {r} that {} was generated at",
                opts.data.display()
            )))
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => {
            return Err(BenchError::Invalid(format!(
                "{} does not record its scale: pass --scale",
                opts.data.display()
            )))
        }
    };
    let harness = Harness::with_store(&opts.data, None, opts.cluster, |store| store).await?;
    let result = run_on(&harness, scale, opts, each).await?;
    if opts.cluster {
        eprintln!(
            "governed runs on the cluster: {}, on the front end: {}",
            harness.cluster_runs("cluster"),
            harness.cluster_runs("local")
        );
    }
    Ok(result)
}

/// [`run`] on a harness the caller prepared (tests change its governance).
pub async fn run_on(
    harness: &Harness,
    scale: f64,
    opts: &TpchOptions,
    mut each: impl FnMut(&QueryTiming),
) -> Result<BenchResult, BenchError> {
    let mut unrestricted = harness.session(UNRESTRICTED);
    let mut restricted = harness.session(RESTRICTED);
    let mut timings = Vec::new();
    for n in selected(&opts.queries) {
        let sql = query(n)?;
        let name = format!("q{n}");
        let failed = |who: &str, e: &dyn std::fmt::Display| BenchError::Query {
            query: name.clone(),
            who: who.to_string(),
            message: e.to_string(),
        };
        // Warm-up, and the equality check of unrestricted vs ungoverned.
        let expected = plain(&harness.plain, &sql)
            .await
            .map_err(|e| failed("plain DataFusion", &e))?;
        let got = governed(&mut unrestricted, &sql)
            .await
            .map_err(|e| failed(UNRESTRICTED, &e))?;
        if let Some(e) = mismatch(&name, (UNRESTRICTED, &got), ("plain DataFusion", &expected))? {
            return Err(e);
        }
        let limited = governed(&mut restricted, &sql)
            .await
            .map_err(|e| failed(RESTRICTED, &e))?;
        if let Some(alone) = &harness.alone {
            let here = governed(&mut alone.session(RESTRICTED), &sql)
                .await
                .map_err(|e| failed(RESTRICTED, &e))?;
            let who = format!("{RESTRICTED} on the cluster");
            if let Some(e) = mismatch(&name, (&who, &limited), ("the front end alone", &here))? {
                return Err(e);
            }
        }
        let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
        for round in 0..opts.iterations.max(1) {
            // Each round starts with the next variant, so none always
            // runs right after another (whose freed memory, caches or
            // machine spell it would inherit).
            for k in 0..3 {
                let t = Instant::now();
                match (round + k) % 3 {
                    0 => {
                        plain(&harness.plain, &sql)
                            .await
                            .map_err(|e| failed("plain DataFusion", &e))?;
                        a.push(ms(t));
                    }
                    1 => {
                        governed(&mut unrestricted, &sql)
                            .await
                            .map_err(|e| failed(UNRESTRICTED, &e))?;
                        b.push(ms(t));
                    }
                    _ => {
                        governed(&mut restricted, &sql)
                            .await
                            .map_err(|e| failed(RESTRICTED, &e))?;
                        c.push(ms(t));
                    }
                }
            }
        }
        let timing = QueryTiming {
            name,
            ungoverned_ms: median(&mut a),
            unrestricted_ms: Some(median(&mut b)),
            restricted_ms: median(&mut c),
            rows: rows(&expected),
            restricted_rows: Some(rows(&limited)),
        };
        each(&timing);
        timings.push(timing);
    }
    Ok(BenchResult::new(scale, "veil", timings))
}

/// DataFusion's physical rules with Veil's that are not governance: the
/// semi-join build side (`build_side.rs`), one table for a join whose
/// probe side is far larger (`collect_build.rs`) and, last before the sanity
/// check as in the engine, segment `LIKE`s by substring search
/// (`like_segments.rs`), the adaptive conjunct order (`adaptive_and.rs`)
/// and join keys filtering scans' rows (`dynamic_scan.rs`); then, last as
/// in the engine, classic strings for pass-through scans
/// (`classic_strings.rs`; no TPC-H query is one).
fn plain_physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = veil_engine::build_side::physical_rules(vec![]);
    let at = rules
        .iter()
        .position(|r| r.name() == "SanityCheckPlan")
        .unwrap_or(rules.len());
    let last: [Arc<dyn PhysicalOptimizerRule + Send + Sync>; 3] = [
        Arc::new(veil_engine::like_segments::LikeSegments),
        Arc::new(AdaptiveConjuncts),
        Arc::new(veil_engine::dynamic_scan::DynamicScanRows),
    ];
    rules.splice(at..at, last);
    rules.push(Arc::new(veil_engine::classic_strings::ClassicStringScans));
    rules
}
