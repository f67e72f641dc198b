//! `veil bench tpch` must catch a wrong answer: when a policy starts to
//! apply to the unrestricted principal, the equality check fails the run
//! and names the query.

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
        cluster: false,
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
            cluster: false,
        };
        let harness = Harness::new(&data).await.unwrap();
        let ok = run_on(&harness, 0.001, &opts, |_| {}).await.unwrap();
        assert_eq!(ok.queries.len(), 1);
    }
}

#[test]
fn generate_splits_tables_into_row_groups_every_core_can_read() {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
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
    // Strings are stored with the Arrow type most writers give them
    // (`tpchgen-arrow` builds views), so pass-through scans read `Utf8`.
    let file = std::fs::File::open(data.join("lineitem").join("part-1.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let comment = reader
        .schema()
        .field_with_name("l_comment")
        .unwrap()
        .clone();
    assert_eq!(*comment.data_type(), DataType::Utf8);
}

/// Veil's planner rules that are not governance (the semi join below a
/// join on its key, group reduction, shared aggregates, the semi-join
/// build side, the adaptive conjunct order), which `veil bench tpch`'s
/// ungoverned run has, answer the 22 queries exactly as DataFusion alone
/// does, and do fire on them.
#[tokio::test]
async fn veils_planner_rules_answer_the_22_queries_as_datafusion_alone() {
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use veil_flight_server::bench::tpch::{canonical, query_sql};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    generate(0.01, &data, PageCompression::Zstd, false).unwrap();
    let harness = Harness::new(&data).await.unwrap();
    let alone = SessionContext::new();
    alone.sql("CREATE SCHEMA tpch").await.unwrap();
    for t in veil_flight_server::bench::generate::TABLES {
        let path = format!("{}/", data.join(t).display());
        alone
            .register_parquet(format!("tpch.{t}"), &path, ParquetReadOptions::default())
            .await
            .unwrap();
    }
    for n in 1..=22 {
        let sql = query_sql(n).unwrap();
        let with = harness
            .plain
            .sql(&sql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let without = alone.sql(&sql).await.unwrap().collect().await.unwrap();
        let with = canonical(&with).unwrap();
        assert!(!with.is_empty(), "q{n} answers nothing at scale 0.01");
        assert_eq!(with, canonical(&without).unwrap(), "q{n}");
    }
    // The rules fire: q17's aggregate is reduced, q15's is shared.
    let q17 = harness.plain.sql(&query_sql(17).unwrap()).await.unwrap();
    let logical = q17
        .into_optimized_plan()
        .unwrap()
        .display_indent()
        .to_string();
    assert!(logical.contains("__veil_group_reducer"), "{logical}");
    let q15 = harness.plain.sql(&query_sql(15).unwrap()).await.unwrap();
    let physical = q15.create_physical_plan().await.unwrap();
    let shown = displayable(physical.as_ref()).indent(true).to_string();
    assert_eq!(shown.matches("SharedExec").count(), 2, "{shown}");
}

/// Governed TPC-H on a Ballista cluster (an in-process scheduler and
/// executor): the unrestricted principal's answers, computed there, equal
/// DataFusion's here, and the restricted principal's equal its answers on
/// an engine alone (`run_on` checks both), for queries with decimal
/// arithmetic and averages, outer joins, EXISTS and scalar subqueries; and
/// every governed run went there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governed_tpch_on_a_cluster_answers_as_datafusion_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    generate(0.01, &data, PageCompression::Zstd, false).unwrap();
    let queries = vec![1, 3, 9, 13, 15, 18, 21, 22];
    let opts = TpchOptions {
        data: data.clone(),
        scale: None,
        iterations: 1,
        queries: queries.clone(),
        cluster: true,
    };
    let harness = Harness::with_store(&data, None, true, |store| store)
        .await
        .unwrap();
    let result = run_on(&harness, 0.01, &opts, |_| {}).await.unwrap();
    assert_eq!(result.queries.len(), queries.len());
    // A warm-up and a measured round, as two principals.
    assert_eq!(harness.cluster_runs("cluster"), 4 * queries.len() as u64);
    assert_eq!(harness.cluster_runs("local"), 0);
}
