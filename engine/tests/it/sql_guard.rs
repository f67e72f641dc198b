//! The step budget against real statements: every query in the repository
//! (TPC-H, the .slt suites, the demo and benchmark set-up scripts) parses
//! to exactly what the generic dialect gives, within a small fraction of
//! its budget.

use std::path::{Path, PathBuf};

use datafusion::sql::parser::DFParserBuilder;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use veil_engine::sql_guard::{
    BoundedDialect, MAX_OPERATORS, MAX_RELATIONS, MAX_SET_OPERATIONS, MIN_STEPS, STEPS_PER_BYTE,
    WORKER_STACK_BYTES,
};

use crate::common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// The SQL of every `statement` and `query` record of an .slt file.
fn slt_statements(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("statement ") || line.starts_with("query ") {
            let sql: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim().is_empty() && *l != "----")
                .collect();
            out.push(sql.join("\n"));
        }
    }
    out
}

fn corpus() -> Vec<String> {
    let mut all = vec![];
    for f in files("benches/tpch/queries", "sql") {
        all.push(std::fs::read_to_string(f).unwrap());
    }
    for f in files("testdata/slt", "slt") {
        all.extend(slt_statements(&std::fs::read_to_string(f).unwrap()));
    }
    for f in ["testdata/demo/setup.sql", "benches/tpch/governance.sql"] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        all.extend(veil_engine::statement::split_script(&text).unwrap());
    }
    all
}

#[test]
fn parses_like_the_generic_dialect_within_a_fraction_of_the_budget() {
    let (mut queries, mut governance, mut worst) = (0, 0, 0.0f64);
    for sql in corpus() {
        if veil_engine::statement::parse(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .is_some()
        {
            governance += 1;
            continue;
        }
        let bounded = BoundedDialect::for_sql(&sql);
        let ours = DFParserBuilder::new(sql.as_str())
            .with_dialect(&bounded)
            .build()
            .and_then(|mut p| p.parse_statements());
        let generic = DFParserBuilder::new(sql.as_str())
            .with_dialect(&GenericDialect {})
            .build()
            .and_then(|mut p| p.parse_statements());
        match (&ours, &generic) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{sql}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{sql}"),
            _ => panic!("{sql}: bounded {ours:?} vs generic {generic:?}"),
        }
        // The path queries take (compacted whitespace, checked tokens).
        if let Ok(generic) = &generic {
            let guarded = veil_engine::sql_guard::parse_statement(&sql, 50)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(Some(&guarded), generic.front(), "{sql}");
        }
        assert!(!bounded.exhausted(), "{sql}");
        let budget = (sql.len() as u64 * STEPS_PER_BYTE).max(MIN_STEPS) as f64;
        worst = worst.max(bounded.steps() as f64 / budget);
        println!(
            "{:>6} steps {:>6} bytes {sql:.60}",
            bounded.steps(),
            sql.len()
        );
        queries += 1;
    }
    println!("{queries} queries, {governance} governance statements; worst share of the budget {worst:.3}");
    assert!(
        queries >= 140 && governance >= 150,
        "{queries} / {governance}"
    );
    assert!(
        worst < 0.1,
        "a real statement used {worst:.2} of its budget"
    );
}

/// The densest constructs real SQL has (long operator chains, IN lists,
/// nested parentheses and calls) take at most 2 steps per byte: a quarter
/// of the budget.
#[test]
fn dense_statements_stay_well_within_the_budget() {
    let cases = [
        format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40)),
        format!("SELECT {}", vec!["1"; 2000].join("+")),
        format!("SELECT {}", vec!["-1"; 2000].join("*")),
        format!("SELECT {}", vec!["a"; 2000].join(" OR ")),
        format!("SELECT x IN ({})", vec!["1"; 5000].join(",")),
        format!("SELECT {}1{}", "abs(".repeat(40), ")".repeat(40)),
        format!("SELECT {}1", "NOT ".repeat(40)),
        format!("SELECT CASE {} END", vec!["WHEN a THEN b"; 2000].join(" ")),
        format!("SELECT {}", vec!["a.b"; 5000].join(",")),
        format!("SELECT {}", vec!["'x'"; 2000].join("||")),
        format!(
            "SELECT {}1 AS int){}",
            "CAST(".repeat(30),
            " AS int)".repeat(29)
        ),
        format!("SELECT a[1]{}", "[1]".repeat(40)),
        format!("SELECT {}", vec!["interval '1 day'"; 500].join("+")),
    ];
    for sql in cases {
        let bounded = BoundedDialect::for_sql(&sql);
        DFParserBuilder::new(sql.as_str())
            .with_dialect(&bounded)
            .build()
            .and_then(|mut p| p.parse_statements())
            .unwrap_or_else(|e| panic!("{sql:.60}: {e}"));
        let per_byte = bounded.steps() as f64 / sql.len() as f64;
        assert!(per_byte <= 2.0, "{per_byte:.2} steps per byte: {sql:.60}");
    }
}

/// Statements at the limits run through the whole engine (parse, plan,
/// governance rule, optimizer, execution, drop) as bob on a thread with a
/// server worker's stack.
#[test]
fn statements_at_the_limits_plan_and_run_on_a_worker_stack() {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK_BYTES)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let engine = common::demo(dir.path(), Default::default()).await;
                let mut bob = engine.session("bob");
                let n = MAX_OPERATORS as usize;
                let sum = format!("SELECT {}", vec!["1"; n].join("+"));
                assert_eq!(common::one(&mut bob, &sum).await, n.to_string());
                let ors: Vec<String> = (1..n / 2).map(|i| format!("employee_id = {i}")).collect();
                let filter = format!(
                    "SELECT count(*) FROM hr.employees WHERE {}",
                    ors.join(" OR ")
                );
                common::one(&mut bob, &filter).await;
                common::run(&mut bob, &format!("EXPLAIN VERBOSE {filter}")).await;
                let nested = format!("SELECT {}1{}", "(".repeat(20), ")".repeat(20));
                assert_eq!(common::one(&mut bob, &nested).await, "1");
                // As many set operations and relations as a statement may hold.
                let unions = format!(
                    "SELECT count(*) FROM ({})",
                    vec!["SELECT 1 AS x"; MAX_SET_OPERATIONS + 1].join(" UNION ALL ")
                );
                let want = (MAX_SET_OPERATIONS + 1).to_string();
                assert_eq!(common::one(&mut bob, &unions).await, want);
                let joins: Vec<String> = (1..MAX_RELATIONS as usize)
                    .map(|i| format!("JOIN sales.transactions t{i} ON t{i}.txn_id = t0.txn_id"))
                    .collect();
                let joined = format!(
                    "SELECT count(*) FROM sales.transactions t0 {}",
                    joins.join(" ")
                );
                let visible =
                    common::one(&mut bob, "SELECT count(*) FROM sales.transactions").await;
                assert_eq!(common::one(&mut bob, &joined).await, visible);
                let bad = format!("SELECT {} + 'x'", vec!["salary"; n - 1].join("+"));
                let e = common::err(&mut bob, &format!("{bad} FROM hr.employees")).await;
                assert!(!e.to_string().is_empty());
            });
        })
        .unwrap()
        .join()
        .unwrap();
}
