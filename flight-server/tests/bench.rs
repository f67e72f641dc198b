//! `veil bench tpch` must catch a wrong answer: when a policy starts to
//! apply to the unrestricted principal, the equality check fails the run
//! and names the query.

#![allow(clippy::unwrap_used, missing_docs)]

use veil_flight_server::bench::generate::generate;
use veil_flight_server::bench::tpch::{run_on, Harness, TpchOptions};
use veil_flight_server::bench::BenchError;

#[tokio::test]
async fn the_equality_check_fails_a_run_whose_unrestricted_answer_differs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tpch");
    generate(0.01, &data, false).unwrap();
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
