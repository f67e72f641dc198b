//! Rewrite properties, over generated policies and queries: a principal no
//! policy applies to sees exactly the ungoverned result; governed `SELECT c`
//! equals ungoverned `mask(c)`; analyzing twice equals analyzing once.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use proptest::prelude::*;
use veil_engine::Engine;
use veil_udfs::{mask_udf, MaskSpec};

fn root() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("..")
}

async fn demo_engine() -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), &root()).unwrap();
    engine.bootstrap_admin(Some("pw".into())).unwrap();
    veil_engine::statement::load_demo(&engine).await.unwrap();
    (dir, engine)
}

async fn raw(sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "employees",
        root()
            .join("testdata/hr/employees.parquet")
            .to_str()
            .unwrap(),
        ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn text(b: &[RecordBatch]) -> String {
    pretty_format_batches(b).unwrap().to_string()
}

/// One masking method a generated policy may use, valid for its column.
#[derive(Debug, Clone)]
enum Method {
    Hash,
    Null,
    Constant,
    ShowLast(usize),
    ShowFirst(usize),
    Regex,
    Round(i64),
}

impl Method {
    fn sql(&self) -> String {
        match self {
            Method::Hash => "HASH".into(),
            Method::Null => "NULL".into(),
            Method::Constant => "CONSTANT '***'".into(),
            Method::ShowLast(n) => format!("SHOW_LAST {n}"),
            Method::ShowFirst(n) => format!("SHOW_FIRST {n}"),
            Method::Regex => "REGEX '[0-9]' REPLACE '#'".into(),
            Method::Round(w) => format!("ROUND {w}"),
        }
    }

    fn spec(&self, engine: &Engine, column: &str) -> MaskSpec {
        match self {
            Method::Hash => MaskSpec::Hash(engine.keys().column_key("hr.employees", column, 1)),
            Method::Null => MaskSpec::Null,
            Method::Constant => MaskSpec::Constant("***".into()),
            Method::ShowLast(n) => MaskSpec::ShowLast(*n),
            Method::ShowFirst(n) => MaskSpec::ShowFirst(*n),
            Method::Regex => MaskSpec::Regex {
                pattern: "[0-9]".into(),
                replacement: "#".into(),
            },
            Method::Round(w) => MaskSpec::Round(*w as f64),
        }
    }
}

const TEXT_COLUMNS: [&str; 5] = ["name", "email", "ssn", "department", "region"];

/// A column of hr.employees with a method valid for its type.
fn column_and_method() -> impl Strategy<Value = (String, Method)> {
    let text = (
        prop::sample::select(TEXT_COLUMNS.to_vec()),
        prop_oneof![
            Just(Method::Hash),
            Just(Method::Null),
            Just(Method::Constant),
            (0usize..5).prop_map(Method::ShowLast),
            (0usize..5).prop_map(Method::ShowFirst),
            Just(Method::Regex),
        ],
    )
        .prop_map(|(c, m)| (c.to_string(), m));
    let int = (
        prop::sample::select(vec!["salary", "employee_id"]),
        prop_oneof![
            Just(Method::Hash),
            Just(Method::Null),
            (1i64..50_000).prop_map(Method::Round),
        ],
    )
        .prop_map(|(c, m)| (c.to_string(), m));
    prop_oneof![text, int]
}

/// An exception that always covers the `hr` group: UNLESS has_group('hr'),
/// or FOR a condition `hr` members never meet.
fn exception() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("UNLESS has_group('hr')".to_string()),
        Just("UNLESS has_group('hr') OR current_user = 'nobody'".to_string()),
        Just("FOR NOT has_group('hr')".to_string()),
        Just("FOR has_group('analysts')".to_string()),
    ]
}

/// A governed query over hr.employees and its ungoverned twin.
fn query() -> impl Strategy<Value = (String, String)> {
    let all = [
        "employee_id",
        "name",
        "email",
        "ssn",
        "department",
        "region",
        "salary",
        "hire_date",
    ];
    (
        prop::sample::subsequence(all.to_vec(), 1..=all.len()),
        prop_oneof![
            Just(String::new()),
            (0i64..200_000).prop_map(|n| format!(" WHERE salary > {n}")),
            prop::sample::select(vec!["EU", "US", "APAC"])
                .prop_map(|r| format!(" WHERE region = '{r}'")),
            Just(" WHERE email LIKE '%a%' AND ssn IS NOT NULL".to_string()),
        ],
    )
        .prop_map(|(cols, filter)| {
            let q = |t: &str| {
                format!(
                    "SELECT {} FROM {t}{filter} ORDER BY employee_id",
                    cols.join(", ")
                )
            };
            (q("hr.employees"), q("employees"))
        })
}

/// A fresh engine with hr.employees, a user `free` in group hr, a user `pat`
/// with no groups, and the given policies.
async fn engine_with(policies: &[String]) -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), &root()).unwrap();
    let mut admin = engine.session("admin");
    engine.bootstrap_admin(Some("pw".into())).unwrap();
    let mut script = vec![
        "CREATE USER free GROUPS ('hr')".to_string(),
        "CREATE USER pat".to_string(),
        "CREATE DATA SOURCE hr.employees FROM PARQUET 'testdata/hr/employees.parquet'".into(),
        "ALTER DATA SOURCE hr.employees SET SUBSCRIPTION ANYONE".into(),
    ];
    script.extend(policies.iter().cloned());
    for stmt in script {
        admin
            .execute(&stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    (dir, engine)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any mix of masking and row policies that all except the principal
    /// leaves every query's answer exactly the ungoverned one.
    #[test]
    fn no_applicable_policy_means_the_ungoverned_result(
        masks in prop::collection::vec((column_and_method(), exception()), 0..5),
        rows in prop::collection::vec(((0i64..200_000), exception()), 0..3),
        queries in prop::collection::vec(query(), 1..4),
    ) {
        let mut policies = vec![];
        for (i, ((column, method), except)) in masks.iter().enumerate() {
            policies.push(format!(
                "CREATE MASKING POLICY m{i} ON hr.employees ({column}) USING {} {except}",
                method.sql()
            ));
        }
        for (i, (min, except)) in rows.iter().enumerate() {
            policies.push(format!(
                "CREATE ROW POLICY r{i} ON hr.employees USING salary > {min} {except}"
            ));
        }
        block_on(async {
            let (_d, engine) = engine_with(&policies).await;
            let mut free = engine.session("free");
            for (governed, plain) in &queries {
                let g = free.execute(governed).await.unwrap().collect().await.unwrap();
                assert_eq!(text(&g), text(&raw(plain).await), "{governed} under {policies:?}");
            }
        });
    }

    /// A column masked for everyone reads as the mask UDF applied to the
    /// raw column, row for row.
    #[test]
    fn governed_column_equals_mask_of_raw_column((column, method) in column_and_method()) {
        block_on(async {
            let policy = format!(
                "CREATE MASKING POLICY m ON hr.employees ({column}) USING {}",
                method.sql()
            );
            let (_d, engine) = engine_with(&[policy]).await;
            let mut pat = engine.session("pat");
            let governed = pat
                .execute(&format!("SELECT {column} FROM hr.employees ORDER BY employee_id"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let udf = mask_udf(method.spec(&engine, &column)).unwrap();
            let mut expected = vec![];
            for b in raw(&format!("SELECT {column} FROM employees ORDER BY employee_id")).await {
                let col = b.column(0).clone();
                let ret = udf.return_type(&[col.data_type().clone()]).unwrap();
                let args = ScalarFunctionArgs {
                    arg_fields: vec![Arc::new(b.schema().field(0).clone())],
                    number_rows: col.len(),
                    args: vec![ColumnarValue::Array(col)],
                    return_field: Arc::new(Field::new(&column, ret, true)),
                    config_options: Arc::new(Default::default()),
                };
                let ColumnarValue::Array(out) = udf.invoke_with_args(args).unwrap() else {
                    panic!("array in, array out")
                };
                expected.push(RecordBatch::try_from_iter(vec![(column.as_str(), out)]).unwrap());
            }
            // Compared as multisets: ORDER BY a masked employee_id orders by token.
            let sorted = |b: &[RecordBatch]| {
                let mut lines: Vec<String> = text(b).lines().map(str::to_string).collect();
                lines.sort();
                lines
            };
            assert!(sorted(&governed) == sorted(&expected), "{column} {method:?}");
        });
    }
}

#[tokio::test]
async fn analyzing_twice_equals_analyzing_once() {
    let (_d, engine) = demo_engine().await;
    let bob = engine.session("bob");
    let (ctx, _) = bob.context().unwrap();
    for sql in [
        "SELECT email, ssn FROM hr.employees WHERE department = 'hr'",
        "SELECT count(*) FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id JOIN hr.employees e ON c.employee_id = e.employee_id",
        "SELECT * FROM hr.employees WHERE employee_id IN (SELECT employee_id FROM payments.cards)",
    ] {
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let analyzer = ctx.state().analyzer().clone();
        let config = ctx.state().config_options().clone();
        let once = analyzer.execute_and_check(plan, &config, |_, _| {}).unwrap();
        let twice = analyzer.execute_and_check(once.clone(), &config, |_, _| {}).unwrap();
        assert_eq!(format!("{once}"), format!("{twice}"), "{sql}");
        assert!(format!("{once}").contains("GovernedScan"));
    }
}
