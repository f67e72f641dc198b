//! A governed join on masked keys inside a masked-joins project vs the same
//! join ungoverned, at TPC-H scale factor 1 shapes: `orders` (1.5M rows)
//! joined to `customer` (150K rows) on custkey, both custkey columns HASHed.
//! The tables are generated with TPC-H's cardinalities and key
//! distribution (every third customer has no orders), not by dbgen.
//!
//! `cargo bench -p veil-engine --bench masked_join`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion::arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use veil_engine::Engine;

const CUSTOMERS: i64 = 150_000;
const ORDERS: i64 = 1_500_000;

fn write(path: &Path, batches: impl Iterator<Item = RecordBatch>) {
    let mut batches = batches.peekable();
    let schema = batches.peek().expect("a batch").schema();
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, schema, None).expect("writer");
    for b in batches {
        w.write(&b).expect("write");
    }
    w.close().expect("close");
}

fn generate(dir: &Path) {
    let chunk = 65_536i64;
    write(
        &dir.join("customer.parquet"),
        (0..CUSTOMERS).step_by(chunk as usize).map(|start| {
            let keys: Vec<i64> = (start..(start + chunk).min(CUSTOMERS))
                .map(|i| i + 1)
                .collect();
            RecordBatch::try_from_iter(vec![
                (
                    "c_custkey",
                    Arc::new(Int64Array::from(keys.clone())) as ArrayRef,
                ),
                (
                    "c_acctbal",
                    Arc::new(Float64Array::from_iter_values(
                        keys.iter().map(|k| (k * 37 % 10_000) as f64 - 1000.0),
                    )),
                ),
            ])
            .expect("customer batch")
        }),
    );
    write(
        &dir.join("orders.parquet"),
        (0..ORDERS).step_by(chunk as usize).map(|start| {
            let n: Vec<i64> = (start..(start + chunk).min(ORDERS)).collect();
            // TPC-H: o_custkey is uniform over the customers that are not a
            // multiple of 3 (a splitmix64 hash of the order number here).
            let cust = n.iter().map(|i| {
                let mut z = (*i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let k = ((z ^ (z >> 31)) % (CUSTOMERS as u64 / 3 * 2)) as i64;
                k / 2 * 3 + 1 + k % 2
            });
            RecordBatch::try_from_iter(vec![
                (
                    "o_orderkey",
                    Arc::new(Int64Array::from(n.clone())) as ArrayRef,
                ),
                ("o_custkey", Arc::new(Int64Array::from_iter_values(cust))),
                (
                    "o_totalprice",
                    Arc::new(Float64Array::from_iter_values(
                        n.iter().map(|i| (i % 500_000) as f64 / 3.0),
                    )),
                ),
                (
                    "o_orderdate",
                    Arc::new(Date32Array::from_iter_values(
                        n.iter().map(|i| 8035 + (i % 2400) as i32),
                    )),
                ),
            ])
            .expect("orders batch")
        }),
    );
}

const JOIN: &str = "SELECT count(*), sum(o.o_orderkey) FROM bench.orders o \
                    JOIN bench.customer c ON o.o_custkey = c.c_custkey";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tmp");
    generate(dir.path());
    let engine = Engine::open(dir.path(), &root).expect("engine");
    engine.bootstrap_admin(Some("pw".into())).expect("admin");
    let plain = SessionContext::new();
    rt.block_on(async {
        veil_engine::statement::load_demo(&engine)
            .await
            .expect("demo");
        let mut admin = engine.session("admin");
        for t in ["customer", "orders"] {
            let path = dir.path().join(format!("{t}.parquet"));
            for sql in [
                format!(
                    "CREATE DATA SOURCE bench.{t} FROM PARQUET '{}'",
                    path.display()
                ),
                format!("ALTER DATA SOURCE bench.{t} SET SUBSCRIPTION ANYONE"),
            ] {
                admin
                    .execute(&sql)
                    .await
                    .expect("setup")
                    .collect()
                    .await
                    .expect("setup");
            }
            plain
                .register_parquet(
                    t,
                    path.to_str().expect("path"),
                    ParquetReadOptions::default(),
                )
                .await
                .expect("register");
        }
        let mut sally = engine.session("sally");
        for sql in [
            "ALTER DATA SOURCE bench.customer TAG COLUMN c_custkey WITH ('Key.Customer')",
            "ALTER DATA SOURCE bench.orders TAG COLUMN o_custkey WITH ('Key.Customer')",
            "CREATE MASKING POLICY customer_keys ON COLUMNS TAGGED 'Key.Customer' USING HASH",
        ] {
            admin
                .execute(sql)
                .await
                .expect("policy")
                .collect()
                .await
                .expect("policy");
        }
        for sql in [
            "CREATE PROJECT tpch",
            "ALTER PROJECT tpch ADD DATA SOURCE bench.customer",
            "ALTER PROJECT tpch ADD DATA SOURCE bench.orders",
            "ALTER PROJECT tpch SET MASKED JOINS ON",
        ] {
            sally
                .execute(sql)
                .await
                .expect("project")
                .collect()
                .await
                .expect("project");
        }
    });
    let plain_join = JOIN.replace("bench.", "");
    let mut sally = engine.session("sally");
    sally.use_project(Some("tpch")).expect("project");
    // Same answer both ways, or the benchmark measures nothing.
    let (a, b) = rt.block_on(async {
        let a = plain
            .sql(&plain_join)
            .await
            .expect("sql")
            .collect()
            .await
            .expect("run");
        let b = sally
            .execute(JOIN)
            .await
            .expect("sql")
            .collect()
            .await
            .expect("run");
        (a, b)
    });
    assert_eq!(
        datafusion::arrow::util::pretty::pretty_format_batches(&a)
            .expect("fmt")
            .to_string(),
        datafusion::arrow::util::pretty::pretty_format_batches(&b)
            .expect("fmt")
            .to_string()
    );

    if std::env::var_os("VEIL_BENCH_KEEP").is_some() {
        // Keep the catalog and data for profiling by hand.
        eprintln!("kept {}", dir.keep().display());
        return;
    }
    let mut g = c.benchmark_group("orders_x_customer_sf1");
    g.sample_size(10);
    g.bench_function("ungoverned", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                plain
                    .sql(&plain_join)
                    .await
                    .expect("sql")
                    .collect()
                    .await
                    .expect("run")
            })
        })
    });
    g.bench_function("masked_keys_in_masked_joins_project", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                let mut s = sally.clone();
                s.execute(JOIN)
                    .await
                    .expect("sql")
                    .collect()
                    .await
                    .expect("run")
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
