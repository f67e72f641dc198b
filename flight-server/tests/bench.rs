//! `veil bench tpch` must catch a wrong answer: when a policy starts to
//! apply to the unrestricted principal, the equality check fails the run
//! and names the query.

#![allow(clippy::unwrap_used, missing_docs)]

use veil_flight_server::bench::generate::{generate, PageCompression};
use veil_flight_server::bench::tpch::{run_on, Harness, TpchOptions};
use veil_flight_server::bench::BenchError;

#[tokio::test]
async fn the_equality_check_fails_a_run_whose_unrestricted_answer_differs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    generate(0.01, &data, PageCompression::Zstd, false).unwrap();
    let opts = TpchOptions {
        data: data.clone(),
        scale: None,
        iterations: 1,
        queries: vec![1, 6],
    };
    let harness = Harness::new(&data).await.unwrap();
    // As generated, the profile exempts bench_unrestricted: same answers.
    let ok = run_on(&harness, 0.01, &opts, |_| {}).await.unwrap();
    assert_eq!(ok.queries.len(), 2);
    assert_eq!(ok.queries[0].rows, 4);

    // A row policy without the exemption: q1's sums change for everyone.
    harness
        .session("admin")
        .execute("CREATE ROW POLICY bench_tamper ON tpch.lineitem USING l_quantity < 25")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    match run_on(&harness, 0.01, &opts, |_| {}).await {
        Err(BenchError::Mismatch(m)) => assert!(m.starts_with("q1:"), "{m}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn generate_writes_the_chosen_compression_and_the_queries_read_it() {
    use datafusion::parquet::basic::Compression;
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

    for (choice, codec, name) in [
        (PageCompression::Lz4, Compression::LZ4_RAW, "lz4"),
        (PageCompression::Snappy, Compression::SNAPPY, "snappy"),
        (PageCompression::None, Compression::UNCOMPRESSED, "none"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("tpch");
        generate(0.001, &data, choice, false).unwrap();
        let file = std::fs::File::open(data.join("lineitem").join("part-1.parquet")).unwrap();
        let meta = SerializedFileReader::new(file).unwrap().metadata().clone();
        for rg in meta.row_groups() {
            for col in rg.columns() {
                assert_eq!(
                    col.compression(),
                    codec,
                    "{choice:?}: {}",
                    col.column_path()
                );
            }
        }
        let marker = std::fs::read_to_string(data.join("veil-tpch.json")).unwrap();
        assert!(
            marker.contains(&format!("\"compression\":\"{name}\"")),
            "{marker}"
        );
        // The harness reads the files and the equality check passes.
        let opts = TpchOptions {
            data: data.clone(),
            scale: None,
            iterations: 1,
            queries: vec![6],
        };
        let harness = Harness::new(&data).await.unwrap();
        let ok = run_on(&harness, 0.001, &opts, |_| {}).await.unwrap();
        assert_eq!(ok.queries.len(), 1);
    }
}

#[test]
fn generate_splits_tables_into_row_groups_every_core_can_read() {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    use veil_flight_server::bench::generate::ROW_GROUP_ROWS;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    // About 300K lineitem rows: one part file.
    generate(0.05, &data, PageCompression::Zstd, false).unwrap();
    let file = std::fs::File::open(data.join("lineitem").join("part-1.parquet")).unwrap();
    let meta = SerializedFileReader::new(file).unwrap().metadata().clone();
    let sizes: Vec<i64> = meta.row_groups().iter().map(|rg| rg.num_rows()).collect();
    assert!(sizes.len() >= 2, "one row group: {sizes:?}");
    assert!(
        sizes.iter().all(|&n| n as usize <= ROW_GROUP_ROWS),
        "{sizes:?}"
    );
    assert!(sizes.iter().sum::<i64>() > 290_000, "{sizes:?}");
}
