//! CTAS of 10M rows from a governed source into a project workspace vs
//! DataFusion's plain `COPY TO` Parquet of the same rows (same zstd level),
//! and the same CTAS with a HASH mask on the text column.
//!
//! `cargo bench -p veil-engine --bench workspace_write` (median of 5 runs;
//! `VEIL_BENCH_ROWS` changes the row count).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use veil_engine::{Engine, EngineOptions};

fn generate(path: &Path, rows: i64) {
    let chunk = 131_072i64;
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new(
            "id",
            datafusion::arrow::datatypes::DataType::Int64,
            false,
        ),
        datafusion::arrow::datatypes::Field::new(
            "name",
            datafusion::arrow::datatypes::DataType::Utf8,
            false,
        ),
        datafusion::arrow::datatypes::Field::new(
            "amount",
            datafusion::arrow::datatypes::DataType::Float64,
            false,
        ),
    ]));
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), None).expect("writer");
    for start in (0..rows).step_by(chunk as usize) {
        let ids: Vec<i64> = (start..(start + chunk).min(rows)).collect();
        let names: Vec<String> = ids
            .iter()
            .map(|i| format!("customer-{:08}", i % 1_000_003))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
                Arc::new(StringArray::from(names)),
                Arc::new(Float64Array::from_iter_values(
                    ids.iter().map(|i| (i % 10_000) as f64 / 7.0),
                )),
            ],
        )
        .expect("batch");
        w.write(&batch).expect("write");
    }
    w.close().expect("close");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rows: i64 = std::env::var("VEIL_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let runs = 5;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tmp");
    let source = dir.path().join("big.parquet");
    generate(&source, rows);
    let options = EngineOptions {
        workspace_max_bytes: None,
        release_delay: Duration::ZERO,
        ..Default::default()
    };
    let engine = Engine::open_with(&dir.path().join("veil"), &root, options).expect("engine");
    engine.bootstrap_admin(Some("pw".into())).expect("admin");
    let run = |s: &mut veil_engine::Session, sql: String| {
        rt.block_on(async {
            s.execute(&sql)
                .await
                .expect(&sql)
                .collect()
                .await
                .expect(&sql)
        })
    };
    let mut admin = engine.session("admin");
    for sql in [
        format!("CREATE DATA SOURCE bench.big FROM PARQUET '{}'", source.display()),
        "ALTER DATA SOURCE bench.big SET SUBSCRIPTION ANYONE".into(),
        "CREATE PROJECT bench".into(),
        "ALTER PROJECT bench ADD DATA SOURCE bench.big".into(),
        "CREATE USER analyst".into(),
        "ALTER PROJECT bench ADD MEMBER analyst".into(),
        "CREATE MASKING POLICY bench_name ON bench.big (name) USING HASH FOR current_user() = 'analyst'".into(),
    ] {
        run(&mut admin, sql);
    }
    let mut owner = engine.session("admin");
    owner.use_project(Some("bench")).expect("project");
    let mut analyst = engine.session("analyst");
    analyst.use_project(Some("bench")).expect("project");
    let plain = SessionContext::new();
    rt.block_on(plain.register_parquet(
        "big",
        source.to_str().expect("path"),
        ParquetReadOptions::default(),
    ))
    .expect("register");

    let (mut copy, mut ctas, mut masked) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let out = dir.path().join(format!("copy-{i}/"));
        let t = Instant::now();
        rt.block_on(async {
            plain
                .sql(&format!(
                    "COPY (SELECT * FROM big) TO '{}' STORED AS PARQUET OPTIONS ('format.compression' 'zstd(3)')",
                    out.display()
                ))
                .await
                .expect("copy")
                .collect()
                .await
                .expect("copy")
        });
        copy.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&out);

        let t = Instant::now();
        run(
            &mut owner,
            "CREATE OR REPLACE TABLE workspace.t AS SELECT * FROM bench.big".into(),
        );
        ctas.push(t.elapsed());

        let t = Instant::now();
        run(
            &mut analyst,
            "CREATE OR REPLACE TABLE workspace.m AS SELECT * FROM bench.big".into(),
        );
        masked.push(t.elapsed());
    }
    let (copy, ctas, masked) = (median(copy), median(ctas), median(masked));
    let mrows = |d: Duration| rows as f64 / d.as_secs_f64() / 1e6;
    println!("{rows} rows, median of {runs}:");
    println!(
        "  DataFusion COPY TO parquet      {:>8.1} ms  {:>6.2} Mrows/s",
        copy.as_secs_f64() * 1e3,
        mrows(copy)
    );
    println!(
        "  Veil CTAS into workspace        {:>8.1} ms  {:>6.2} Mrows/s  ({:.2}x COPY)",
        ctas.as_secs_f64() * 1e3,
        mrows(ctas),
        ctas.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "  Veil CTAS, name HASH-masked     {:>8.1} ms  {:>6.2} Mrows/s  ({:.2}x COPY)",
        masked.as_secs_f64() * 1e3,
        mrows(masked),
        masked.as_secs_f64() / copy.as_secs_f64()
    );
}
