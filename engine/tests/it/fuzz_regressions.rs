//! Inputs the fuzz targets (fuzz/) found, kept in fuzz/regressions/<target>/:
//! each must now fail cleanly, through the function the target calls and
//! through a real session.

use crate::common;

use veil_engine::{EngineOptions, ErrorKind};

fn inputs(target: &str) -> Vec<(String, String)> {
    let dir = common::root().join("fuzz/regressions").join(target);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            (path.display().to_string(), text)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no inputs in {}", dir.display());
    out
}

/// A 71-byte chain of names and subscripts that sqlparser 0.62 parsed in
/// exponential time (4 s in release, 90 s under the fuzzer): refused up
/// front, as a condition, as a row predicate, as a statement and as a query.
#[tokio::test]
async fn long_name_chains_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::demo(dir.path(), EngineOptions::default()).await;
    let mut bob = engine.session("bob");
    let mut admin = engine.session("admin");
    for (name, text) in inputs("policy_expression") {
        let chain = |e: &dyn std::fmt::Display| {
            let e = e.to_string();
            assert!(e.contains("chain with more than 16 '.'"), "{name}: {e}");
        };
        chain(&veil_engine::condition::parse_condition(&text).unwrap_err());
        let policy = format!("CREATE ROW POLICY fz ON hr.employees USING {text}");
        chain(&veil_engine::statement::parse(&policy).unwrap_err());
        let e = common::err(&mut admin, &policy).await;
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}: {e}");
        chain(&e);
        let e = common::err(&mut bob, &format!("SELECT {text}")).await;
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}: {e}");
        chain(&e);
    }
    // Names as long as real ones still work.
    common::run(
        &mut bob,
        "SELECT employees.region FROM veil.hr.employees LIMIT 1",
    )
    .await;
}
