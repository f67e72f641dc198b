//! Governed queries on a Ballista cluster (DESIGN.md section 7): a front
//! end with `cluster` set sends the plans of queries over governed sources
//! to a real Ballista scheduler and executors (in this process, on
//! loopback) and answers exactly what it answers alone; masks travel with
//! their keys sealed; an executor without the cluster key runs nothing.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::{demo, err, root, rows};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use prost::Message;
use veil_engine::distributed::{cluster_key, standalone, VeilCodec};
use veil_engine::keys::MasterKey;
use veil_engine::{Engine, EngineOptions, ErrorKind};

/// Queries whose answers must not depend on where they run: masks (HASH,
/// NULL, ROUND, SHOW_LAST), row policies, a filter, a join and a subquery
/// on masked columns, aggregates, windows, sorts and limits.
const QUERIES: &[&str] = &[
    "SELECT employee_id, name, email, ssn, salary, region FROM hr.employees ORDER BY employee_id LIMIT 20",
    "SELECT region, department, count(*), sum(salary), min(name) FROM hr.employees GROUP BY region, department ORDER BY region, department",
    "SELECT count(*) FROM hr.employees WHERE name = (SELECT name FROM hr.employees ORDER BY employee_id LIMIT 1)",
    "SELECT e.region, count(*), sum(t.amount) FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id JOIN hr.employees e ON c.employee_id = e.employee_id GROUP BY e.region ORDER BY e.region",
    "SELECT c.card_number, e.name FROM payments.cards c JOIN hr.employees e ON c.employee_id = e.employee_id ORDER BY c.card_id LIMIT 10",
    "SELECT name, rank() OVER (PARTITION BY region ORDER BY salary DESC, employee_id) AS r FROM hr.employees ORDER BY region, r LIMIT 15",
    "SELECT merchant, count(DISTINCT card_id) FROM sales.transactions WHERE amount > 100 GROUP BY merchant ORDER BY merchant",
];

const USERS: &[&str] = &["alice", "bob", "carol", "sally"];

/// A cluster whose executors hold `key`; its scheduler's URL.
async fn cluster(key: veil_udfs::ClusterKey) -> String {
    standalone(key, 2, 2).await.unwrap()
}

fn with_cluster(url: &str) -> EngineOptions {
    EngineOptions {
        cluster: Some(url.to_string()),
        ..Default::default()
    }
}

/// The demo catalog in `dir` served by one engine running queries itself
/// and one (on the same catalog and keys) sending them to the cluster at
/// `url`.
async fn engines(dir: &Path, url: &str) -> (Arc<Engine>, Arc<Engine>) {
    let local = demo(dir, EngineOptions::default()).await;
    let remote = Engine::open_with(dir, &root(), with_cluster(url)).unwrap();
    (local, remote)
}

fn ran(engine: &Engine, place: &str) -> u64 {
    engine
        .metrics()
        .cluster_queries
        .with_label_values(&[place])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governed_queries_answer_the_same_on_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let key = cluster_key(&MasterKey::load_or_create(tmp.path()).unwrap());
    let url = cluster(key).await;
    let (local, remote) = engines(tmp.path(), &url).await;
    for user in USERS {
        for sql in QUERIES {
            let want = rows(&mut local.session(user), sql).await;
            let got = rows(&mut remote.session(user), sql).await;
            assert_eq!(got, want, "{user}: {sql}");
            assert!(!want.is_empty(), "{user}: {sql}");
        }
    }
    // The audit records say where they ran.
    let on_cluster = rows(
        &mut local.session("admin"),
        "SELECT count(*) FROM system.audit WHERE detail LIKE '%\"cluster\":true%'",
    )
    .await;
    assert_eq!(on_cluster[0][0], (USERS.len() * QUERIES.len()).to_string());
    // They ran there: every one of them reads a data source.
    let queries = (USERS.len() * QUERIES.len()) as u64;
    assert_eq!(ran(&remote, "cluster"), queries);
    assert_eq!(ran(&remote, "local"), 0);
    assert_eq!(ran(&local, "cluster"), 0);

    // What bob sees there is still bob's: hashed names, no SSNs, US only.
    let bob = rows(
        &mut remote.session("bob"),
        "SELECT name, ssn, region FROM hr.employees ORDER BY employee_id LIMIT 50",
    )
    .await;
    let alice = rows(
        &mut remote.session("alice"),
        "SELECT name FROM hr.employees",
    )
    .await;
    for row in &bob {
        assert_eq!(row[1], "NULL");
        assert_eq!(row[2], "US");
        assert!(!alice.iter().any(|a| a[0] == row[0]), "raw name {row:?}");
    }
}

/// The demo catalog in `dir` with each demo source's rows in `parts`
/// Parquet files of a directory under `dir`, so that a session with as
/// many target partitions plans every governed scan in `parts` partitions.
async fn split_demo(dir: &Path, parts: usize, options: EngineOptions) -> Arc<Engine> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut script = std::fs::read_to_string(root().join("testdata/demo/setup.sql")).unwrap();
    for source in ["hr/employees", "payments/cards", "sales/transactions"] {
        let file = std::fs::File::open(root().join(format!("testdata/{source}.parquet"))).unwrap();
        let batches: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let all =
            datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let out = dir.join("split").join(source);
        std::fs::create_dir_all(&out).unwrap();
        let per = all.num_rows().div_ceil(parts);
        for i in 0..parts {
            let rows = all.slice(i * per, per.min(all.num_rows() - i * per));
            common::write_parquet(&out.join(format!("part-{i}.parquet")), &rows);
        }
        script = script.replace(
            &format!("'testdata/{source}.parquet'"),
            &format!("'{}/'", out.display()),
        );
    }
    let engine = Engine::open_with(dir, &root(), options).unwrap();
    engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
    veil_engine::statement::apply_script(&mut engine.session("admin"), &script)
        .await
        .unwrap();
    engine
}

/// Ballista gives each task of a stage some partitions of its scans: a
/// governed scan read in several partitions (three files, three target
/// partitions) must be split among the tasks like any scan, each
/// partition read once. Before the barrier showed its input to the
/// scheduler, every task read it whole: rows repeated, and two
/// partitions written to one shuffle file (TPC-H SF1 failed that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governed_scans_of_several_partitions_are_read_once_on_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let key = cluster_key(&MasterKey::load_or_create(tmp.path()).unwrap());
    let url = cluster(key).await;
    let local = split_demo(tmp.path(), 3, EngineOptions::default()).await;
    let remote = Engine::open_with(tmp.path(), &root(), with_cluster(&url)).unwrap();
    let three = "SET datafusion.execution.target_partitions = 3";
    // Each of the three files is a partition of the scan (so of the barrier).
    let mut bob = local.session("bob");
    common::run(&mut bob, three).await;
    let (ctx, _gov) = bob.context().unwrap();
    let plan = ctx
        .sql("SELECT name FROM hr.employees")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let mut barriers = vec![];
    plan.apply(|node| {
        if node.name() == "GovernedScanExec" {
            barriers.push(node.output_partitioning().partition_count());
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    assert_eq!(barriers, [3]);
    for user in USERS {
        let mut here = local.session(user);
        let mut there = remote.session(user);
        common::run(&mut here, three).await;
        common::run(&mut there, three).await;
        // Sums of floats rounded: the partitions add up in any order.
        for sql in QUERIES
            .iter()
            .map(|q| q.replace("sum(t.amount)", "round(sum(t.amount), 2)"))
            .chain([
                "SELECT count(*), sum(salary) FROM hr.employees".to_string(),
                "SELECT e.name, count(*) FROM hr.employees e JOIN sales.transactions t ON t.region = e.region GROUP BY e.name ORDER BY e.name".to_string(),
            ])
        {
            let sql = sql.as_str();
            let want = rows(&mut here, sql).await;
            assert_eq!(rows(&mut there, sql).await, want, "{user}: {sql}");
            assert!(!want.is_empty(), "{user}: {sql}");
        }
    }
    assert_eq!(ran(&remote, "local"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_plan_sent_holds_no_key_and_the_scheduler_cannot_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let master = MasterKey::load_or_create(tmp.path()).unwrap();
    // Planned as for a cluster (never contacted: nothing runs there).
    let engine = demo(tmp.path(), with_cluster("df://127.0.0.1:9")).await;
    let (ctx, _gov) = engine.session("bob").context().unwrap();
    let sql = "SELECT name, email, salary FROM hr.employees ORDER BY employee_id LIMIT 5";
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let front = VeilCodec::with_key(cluster_key(&master));
    let bytes = PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), &front)
        .unwrap()
        .encode_to_vec();
    // The masks travel as key handles; the keys' bytes (derived from the
    // master key as the engine derives them) are not in the plan, nor is
    // the master key or the cluster key.
    let text = String::from_utf8_lossy(&bytes);
    for column in ["name", "email"] {
        let id = format!("col:hr.employees.{column}");
        assert!(text.contains(&id), "{column} is not masked in the plan");
        let key = master.derive(&format!("veil/mask/{id}/v1"));
        assert!(!bytes.windows(32).any(|w| w == key), "{column}'s key");
    }
    assert!(!bytes
        .windows(32)
        .any(|w| w == master.derive("ballista cluster key")));

    // The scheduler decodes and re-encodes the plan without a key; an
    // executor decodes that and answers as the front end does.
    let task = ctx.task_ctx();
    let node = PhysicalPlanNode::decode(bytes.as_slice()).unwrap();
    let at_scheduler = node
        .try_into_physical_plan(&task, &VeilCodec::sealed())
        .unwrap();
    let passed_on =
        PhysicalPlanNode::try_from_physical_plan(at_scheduler.clone(), &VeilCodec::sealed())
            .unwrap()
            .encode_to_vec();
    let at_executor = PhysicalPlanNode::decode(passed_on.as_slice())
        .unwrap()
        .try_into_physical_plan(&task, &front)
        .unwrap();
    let want = datafusion::physical_plan::collect(plan, ctx.task_ctx())
        .await
        .unwrap();
    let got = datafusion::physical_plan::collect(at_executor, ctx.task_ctx())
        .await
        .unwrap();
    assert_eq!(got, want);
    // The scheduler's copy cannot compute a token.
    let refused = datafusion::physical_plan::collect(at_scheduler, ctx.task_ctx())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("sealed"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_with_another_cluster_key_answer_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    MasterKey::load_or_create(tmp.path()).unwrap();
    let stranger = veil_udfs::ClusterKey::from_bytes([42; 32]);
    let url = cluster(stranger).await;
    let (local, remote) = engines(tmp.path(), &url).await;
    let sql = "SELECT name, email FROM hr.employees ORDER BY employee_id LIMIT 5";
    let e = err(&mut remote.session("bob"), sql).await;
    assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    let text = e.to_string();
    // The client gets an incident id, nothing an executor said.
    assert!(text.contains("incident"), "{text}");
    assert!(!text.contains("col:hr.employees"), "{text}");
    let names = rows(&mut local.session("alice"), "SELECT name FROM hr.employees").await;
    assert!(!names.iter().any(|n| text.contains(&n[0])), "{text}");
    // The audit record names the Ballista job and keeps no executor text.
    let recorded = rows(
        &mut local.session("admin"),
        "SELECT detail FROM system.audit WHERE detail LIKE '%distributed execution failed%'",
    )
    .await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0][0].contains("Ballista job"), "{recorded:?}");
    assert!(!recorded[0][0].contains("sealed"), "{recorded:?}");
    // Unkeyed masks run there: carol's salaries are rounded, her rows EU.
    let got = rows(
        &mut remote.session("carol"),
        "SELECT salary, region FROM hr.employees ORDER BY employee_id LIMIT 20",
    )
    .await;
    let want = rows(
        &mut local.session("carol"),
        "SELECT salary, region FROM hr.employees ORDER BY employee_id LIMIT 20",
    )
    .await;
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_cannot_travel_runs_on_the_front_end() {
    let tmp = tempfile::tempdir().unwrap();
    let key = cluster_key(&MasterKey::load_or_create(tmp.path()).unwrap());
    let url = cluster(key).await;
    let (local, remote) = engines(tmp.path(), &url).await;
    // No governed source: nothing to send.
    for sql in [
        "SELECT 1 + 1",
        "SELECT count(*) FROM information_schema.tables",
    ] {
        assert_eq!(
            rows(&mut remote.session("bob"), sql).await,
            rows(&mut local.session("bob"), sql).await
        );
    }
    assert_eq!(ran(&remote, "cluster") + ran(&remote, "local"), 0);
    // `repeat` is held to the statement's memory by a wrapper of this
    // process: the plan stays here, and answers.
    let sql = "SELECT repeat(region, 2) FROM hr.employees ORDER BY employee_id LIMIT 3";
    assert_eq!(
        rows(&mut remote.session("bob"), sql).await,
        vec![vec!["USUS".to_string()]; 3]
    );
    assert_eq!(ran(&remote, "local"), 1);
    assert_eq!(ran(&remote, "cluster"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masked_joins_in_a_project_match_on_the_cluster_and_nowhere_else() {
    let tmp = tempfile::tempdir().unwrap();
    let key = cluster_key(&MasterKey::load_or_create(tmp.path()).unwrap());
    let url = cluster(key).await;
    let (local, remote) = engines(tmp.path(), &url).await;
    let mut admin = local.session("admin");
    for sql in [
        "ALTER DATA SOURCE sales.transactions TAG COLUMN card_id WITH ('Join.Card')",
        "ALTER DATA SOURCE payments.cards TAG COLUMN card_id WITH ('Join.Card')",
        "CREATE MASKING POLICY card_keys ON COLUMNS TAGGED 'Join.Card' USING HASH FOR has_group('analysts')",
    ] {
        common::run(&mut admin, sql).await;
    }
    let mut sally = local.session("sally");
    for sql in [
        "CREATE PROJECT joins DOCUMENTATION 'masked joins'",
        "ALTER PROJECT joins ADD DATA SOURCE sales.transactions",
        "ALTER PROJECT joins ADD DATA SOURCE payments.cards",
        "ALTER PROJECT joins ADD MEMBER carol",
        "ALTER PROJECT joins SET MASKED JOINS ON",
    ] {
        common::run(&mut sally, sql).await;
    }
    let join =
        "SELECT count(*) FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id";
    let tokens = "SELECT t.card_id, c.card_number FROM sales.transactions t JOIN payments.cards c ON t.card_id = c.card_id ORDER BY t.txn_id LIMIT 5";
    let before = ran(&remote, "cluster");
    for (project, count) in [(None, "0"), (Some("joins"), "1007")] {
        let mut here = local.session("carol");
        let mut there = remote.session("carol");
        here.use_project(project).unwrap();
        there.use_project(project).unwrap();
        assert_eq!(common::one(&mut there, join).await, count, "{project:?}");
        assert_eq!(common::one(&mut here, join).await, count, "{project:?}");
        // The raw key matches nothing; the tokens are the project's.
        let raw = "SELECT count(*) FROM payments.cards WHERE card_id = 1";
        assert_eq!(common::one(&mut there, raw).await, "0");
        assert_eq!(
            rows(&mut there, tokens).await,
            rows(&mut here, tokens).await
        );
    }
    assert_eq!(ran(&remote, "cluster") - before, 6);
}

/// A statement that stops early (here its timeout) cancels its job on the
/// cluster: Ballista's own client left it running to its end, holding the
/// executors' task slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_that_times_out_cancels_its_job_on_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let key = cluster_key(&MasterKey::load_or_create(tmp.path()).unwrap());
    let url = cluster(key).await;
    let local = demo(tmp.path(), EngineOptions::default()).await;
    let mut options = with_cluster(&url);
    options.limits.query_timeout = std::time::Duration::from_secs(2);
    let remote = Engine::open_with(tmp.path(), &root(), options).unwrap();
    // About 2.7 * 10^10 triples: hours, not two seconds.
    let endless = "SELECT count(*) FROM sales.transactions a, sales.transactions b, sales.transactions c WHERE a.amount + b.amount > c.amount";
    let e = err(&mut remote.session("alice"), endless).await;
    assert!(e.to_string().contains("query timeout"), "{e}");
    assert_eq!(ran(&remote, "cluster"), 1);
    let cancelled = || remote.metrics().cluster_jobs_cancelled.get();
    let waited = std::time::Instant::now();
    while cancelled() == 0 && waited.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled(), 1);
    // The cluster answers the next statement; a job that ends is not cancelled.
    assert_eq!(
        common::one(
            &mut remote.session("alice"),
            "SELECT count(*) FROM hr.employees"
        )
        .await,
        common::one(
            &mut local.session("alice"),
            "SELECT count(*) FROM hr.employees"
        )
        .await
    );
    assert_eq!(cancelled(), 1);
}

/// A source's file rewritten with another schema fails on the cluster as
/// it fails on the front end (there as the source's unreadable data; on
/// the cluster as an incident), for a plain scan (alice) and one under a
/// row policy (bob): executors read files without Veil's file-schema check
/// (DataFusion's plan format drops a scan's adapter), and DataFusion's own
/// checks refuse the file there; nothing answers with the missing columns
/// as NULLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_of_another_schema_fail_on_the_cluster_too() {
    let tmp = tempfile::tempdir().unwrap();
    let key = cluster_key(&MasterKey::load_or_create(tmp.path()).unwrap());
    let url = cluster(key).await;
    let (local, remote) = engines(tmp.path(), &url).await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("part-0.parquet");
    std::fs::copy(root().join("testdata/sales/transactions.parquet"), &file).unwrap();
    let mut admin = local.session("admin");
    for sql in [
        format!("CREATE DATA SOURCE drift.t FROM PARQUET '{}/'", files.path().display()),
        "ALTER DATA SOURCE drift.t SET SUBSCRIPTION ANYONE".into(),
        "CREATE ROW POLICY drift_region ON drift.t USING attribute_contains('region', region) UNLESS has_group('hr')".into(),
    ] {
        common::run(&mut admin, &sql).await;
    }
    let queries = [
        "SELECT * FROM drift.t ORDER BY txn_id LIMIT 5",
        "SELECT count(*) FROM drift.t WHERE txn_id > 0",
    ];
    for user in ["alice", "bob"] {
        for sql in queries {
            let want = rows(&mut local.session(user), sql).await;
            assert_eq!(
                rows(&mut remote.session(user), sql).await,
                want,
                "{user}: {sql}"
            );
        }
    }
    std::fs::copy(root().join("testdata/hr/employees.parquet"), &file).unwrap();
    tokio::time::sleep(veil_engine::engine::LISTING_TTL + std::time::Duration::from_millis(200))
        .await;
    for user in ["alice", "bob"] {
        for sql in queries {
            let here = err(&mut local.session(user), sql).await;
            assert_eq!(
                here.kind(),
                ErrorKind::FailedPrecondition,
                "{user}: {sql}: {here}"
            );
            let there = err(&mut remote.session(user), sql).await;
            assert!(
                there.to_string().contains("incident"),
                "{user}: {sql}: {there}"
            );
        }
    }
    assert_eq!(ran(&remote, "cluster"), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_scheduler_fails_the_statement_with_an_incident() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (local, remote) = engines(tmp.path(), &format!("df://127.0.0.1:{port}")).await;
    let started = std::time::Instant::now();
    let e = err(
        &mut remote.session("bob"),
        "SELECT count(*) FROM hr.employees",
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    assert!(e.to_string().contains("incident"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // The record says why: the client's own error, not a job's.
    let recorded = rows(
        &mut local.session("admin"),
        "SELECT detail FROM system.audit WHERE detail LIKE '%distributed execution failed%'",
    )
    .await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(!recorded[0][0].contains("Ballista job"), "{recorded:?}");
}
