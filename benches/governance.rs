//! Governance cost benchmarks:
//! - planning latency of a 3-way join, governed (per-statement context
//!   included) vs plain DataFusion over the same Parquet files, and the
//!   difference of the two planned back to back;
//! - grouping 6M rows by a 3-value column: raw, a raw column as wide as a
//!   HASH token (32 chars), and HASH-masked.
//!
//! `cargo bench -p veil-engine --bench governance`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use veil_engine::Engine;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Three raw values as wide as a HASH token (32 chars), to tell the mask's
/// cost from the cost of grouping wider strings.
const WIDE: [&str; 3] = [
    "0123456789abcdef0123456789abcdef",
    "fedcba9876543210fedcba9876543210",
    "00112233445566778899aabbccddeeff",
];

fn write_low_cardinality(path: &Path, rows: usize) {
    let file = std::fs::File::create(path).expect("create");
    let schema = RecordBatch::try_from_iter(vec![
        (
            "region",
            Arc::new(StringArray::from(vec!["EU"])) as ArrayRef,
        ),
        ("amount", Arc::new(Int64Array::from(vec![1i64])) as ArrayRef),
        (
            "wide",
            Arc::new(StringArray::from(vec![WIDE[0]])) as ArrayRef,
        ),
    ])
    .expect("schema")
    .schema();
    let mut w = ArrowWriter::try_new(file, schema, None).expect("writer");
    let chunk = 1 << 16;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "region",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["EU", "US", "APAC"][(done + i) % 3]),
                )) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(Int64Array::from_iter_values(
                    (0..n as i64).map(|i| i % 1000),
                )) as ArrayRef,
            ),
            (
                "wide",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| WIDE[(done + i) % 3]),
                )) as ArrayRef,
            ),
        ])
        .expect("batch");
        w.write(&batch).expect("write");
        done += n;
    }
    w.close().expect("close");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let engine = Engine::open(dir.path(), &root()).expect("engine");
    engine.bootstrap_admin(Some("pw".into())).expect("admin");
    let lc = dir.path().join("lc.parquet");
    write_low_cardinality(&lc, 6_000_000);
    rt.block_on(async {
        veil_engine::statement::load_demo(&engine)
            .await
            .expect("setup");
        let mut admin = engine.session("admin");
        for stmt in [
            format!(
                "CREATE DATA SOURCE bench.lc FROM PARQUET '{}'",
                lc.display()
            ),
            "ALTER DATA SOURCE bench.lc SET SUBSCRIPTION ANYONE".to_string(),
            "CREATE MASKING POLICY lc_hash ON bench.lc (region) USING HASH".to_string(),
        ] {
            admin.execute(&stmt).await.expect("bench setup");
        }
    });

    let join = "SELECT e.department, sum(t.amount) FROM sales.transactions t \
                JOIN payments.cards c ON t.card_id = c.card_id \
                JOIN hr.employees e ON c.employee_id = e.employee_id GROUP BY e.department";
    let plain = SessionContext::new();
    rt.block_on(async {
        for (name, file) in [
            ("transactions", "testdata/sales/transactions.parquet"),
            ("cards", "testdata/payments/cards.parquet"),
            ("employees", "testdata/hr/employees.parquet"),
        ] {
            plain
                .register_parquet(
                    name,
                    root().join(file).to_str().expect("path"),
                    ParquetReadOptions::default(),
                )
                .await
                .expect("register");
        }
        plain
            .register_parquet(
                "lc",
                lc.to_str().expect("path"),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
    });
    let plain_join = join
        .replace("sales.", "")
        .replace("payments.", "")
        .replace("hr.", "");

    let bob = engine.session("bob");
    let plan_plain = || {
        rt.block_on(async {
            let plan = plain
                .state()
                .create_logical_plan(&plain_join)
                .await
                .expect("plan");
            plain
                .state()
                .create_physical_plan(&plan)
                .await
                .expect("physical")
        })
    };
    let plan_governed = || {
        rt.block_on(async {
            let (ctx, _) = bob.context().expect("context");
            let plan = ctx.state().create_logical_plan(join).await.expect("plan");
            ctx.state()
                .create_physical_plan(&plan)
                .await
                .expect("physical")
        })
    };
    let mut g = c.benchmark_group("planning_3way_join");
    g.bench_function("plain_datafusion", |b| b.iter(plan_plain));
    g.bench_function("governed_restricted", |b| b.iter(plan_governed));
    // The machine is noisy (runs of the two benchmarks above differ by up
    // to 30 %), so the cost of governance is also measured directly: each
    // iteration plans the plain and the governed query back to back, and
    // only the difference is counted.
    g.bench_function("governance_added_interleaved", |b| {
        b.iter_custom(|iters| {
            let mut added: i128 = 0;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                plan_plain();
                let plain_took = start.elapsed();
                let start = std::time::Instant::now();
                plan_governed();
                added += start.elapsed().as_nanos() as i128 - plain_took.as_nanos() as i128;
            }
            std::time::Duration::from_nanos(added.max(0) as u64)
        })
    });
    g.bench_function("governed_context_only", |b| {
        b.iter(|| bob.context().expect("context"))
    });
    g.finish();
    let (ctx, _) = bob.context().expect("context");

    // Where the time goes, phase by phase, on one state per side.
    let mut g = c.benchmark_group("planning_3way_join_phases");
    for (side, state, sql) in [
        ("plain", plain.state(), plain_join.as_str()),
        ("governed", ctx.state(), join),
    ] {
        let logical = rt.block_on(state.create_logical_plan(sql)).expect("plan");
        let analyzed = state
            .analyzer()
            .execute_and_check(logical.clone(), state.config_options(), |_, _| {})
            .expect("analyze");
        let optimized = state.optimize(&logical).expect("optimize");
        g.bench_function(format!("{side}_sql_to_logical"), |b| {
            b.iter(|| rt.block_on(state.create_logical_plan(sql)).expect("plan"))
        });
        g.bench_function(format!("{side}_analyze"), |b| {
            b.iter(|| {
                state
                    .analyzer()
                    .execute_and_check(logical.clone(), state.config_options(), |_, _| {})
                    .expect("analyze")
            })
        });
        g.bench_function(format!("{side}_optimize"), |b| {
            b.iter(|| {
                state
                    .optimizer()
                    .optimize(analyzed.clone(), &state, |_, _| {})
                    .expect("optimize")
            })
        });
        g.bench_function(format!("{side}_physical"), |b| {
            b.iter(|| {
                rt.block_on(
                    state
                        .query_planner()
                        .create_physical_plan(&optimized, &state),
                )
                .expect("physical")
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("group_6m_rows_by_3_values");
    g.sample_size(10);
    g.bench_function("raw_column", |b| {
        b.iter(|| {
            rt.block_on(async {
                plain
                    .sql("SELECT region, count(*) FROM lc GROUP BY region")
                    .await
                    .expect("sql")
                    .collect()
                    .await
                    .expect("collect")
            })
        })
    });
    g.bench_function("raw_32_char_column", |b| {
        b.iter(|| {
            rt.block_on(async {
                plain
                    .sql("SELECT wide, count(*) FROM lc GROUP BY wide")
                    .await
                    .expect("sql")
                    .collect()
                    .await
                    .expect("collect")
            })
        })
    });
    g.bench_function("hash_masked_column", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = engine.session("bob");
                s.execute("SELECT region, count(*) FROM bench.lc GROUP BY region")
                    .await
                    .expect("sql")
                    .collect()
                    .await
                    .expect("collect")
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
