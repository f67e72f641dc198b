//! Rewrite properties: a principal with no applicable policy sees exactly
//! the ungoverned result; governed `SELECT c` equals ungoverned `mask(c)`;
//! analyzing twice equals analyzing once.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use veil_engine::Engine;
use veil_udfs::{mask_udf, MaskSpec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn engine() -> (tempfile::TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), &root()).unwrap();
    engine.bootstrap_admin(Some("pw".into())).unwrap();
    let mut admin = engine.session("admin");
    let script = std::fs::read_to_string(root().join("testdata/demo/setup.sql")).unwrap();
    veil_engine::statement::apply_script(&mut admin, &script)
        .await
        .unwrap();
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

#[tokio::test]
async fn no_applicable_policy_means_the_ungoverned_result() {
    let (_d, engine) = engine().await;
    // alice is in hr: every policy on hr.employees has an exception for her.
    let mut alice = engine.session("alice");
    for (governed, plain) in [
        ("SELECT * FROM hr.employees ORDER BY employee_id", "SELECT * FROM employees ORDER BY employee_id"),
        (
            "SELECT department, region, count(*) AS n, sum(salary) AS total FROM hr.employees GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT department, region, count(*) AS n, sum(salary) AS total FROM employees GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            "SELECT e.name FROM hr.employees e WHERE e.salary > 100000 AND e.region = 'EU' ORDER BY 1",
            "SELECT e.name FROM employees e WHERE e.salary > 100000 AND e.region = 'EU' ORDER BY 1",
        ),
    ] {
        let g = alice.execute(governed).await.unwrap().collect().await.unwrap();
        assert_eq!(text(&g), text(&raw(plain).await), "{governed}");
    }
}

#[tokio::test]
async fn governed_column_equals_mask_of_raw_column() {
    let (_d, engine) = engine().await;
    let mut bob = engine.session("bob");
    let governed = bob
        .execute("SELECT email FROM hr.employees ORDER BY employee_id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let raw_emails =
        raw("SELECT email FROM employees WHERE region = 'US' ORDER BY employee_id").await;
    let udf = mask_udf(MaskSpec::Hash(engine.keys().column_key(
        "hr.employees",
        "email",
        1,
    )))
    .unwrap();
    let mut expected = vec![];
    for b in raw_emails {
        let col = b.column(0).clone();
        let args = ScalarFunctionArgs {
            arg_fields: vec![Arc::new(b.schema().field(0).clone())],
            number_rows: col.len(),
            args: vec![ColumnarValue::Array(col)],
            return_field: Arc::new(datafusion::arrow::datatypes::Field::new(
                "email",
                datafusion::arrow::datatypes::DataType::Utf8,
                true,
            )),
            config_options: Arc::new(Default::default()),
        };
        let ColumnarValue::Array(out) = udf.invoke_with_args(args).unwrap() else {
            panic!()
        };
        expected.push(RecordBatch::try_from_iter(vec![("email", out)]).unwrap());
    }
    assert_eq!(text(&governed), text(&expected));
}

#[tokio::test]
async fn analyzing_twice_equals_analyzing_once() {
    let (_d, engine) = engine().await;
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
