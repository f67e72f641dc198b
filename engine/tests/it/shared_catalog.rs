//! Two servers on one PostgreSQL catalog and one warehouse (DESIGN.md
//! section 7): what one changes governs the other's next statement, a
//! workspace table one writes the other reads, changes made at once on
//! both land once each, and the audit log is one chain.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::pg::PgCluster;
use common::{demo, err, one, root, rows, run};
use veil_engine::{CatalogParams, Engine, EngineOptions, ErrorKind};

/// A server on its own data directory, sharing the catalog, the warehouse
/// and (copied from the first server's) the master key.
fn options(catalog: &str, warehouse: &Path) -> EngineOptions {
    EngineOptions {
        catalog: Some(CatalogParams(catalog.to_string())),
        warehouse: Some(warehouse.to_string_lossy().into_owned()),
        ..Default::default()
    }
}

fn second_server(first: &Path, dir: &Path, opts: EngineOptions) -> Arc<Engine> {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::copy(first.join("keys/master.key"), dir.join("keys/master.key")).unwrap();
    Engine::open_with(dir, &root(), opts).unwrap()
}

/// The directory of the only workspace table written so far.
fn parquet_dir(warehouse: &Path) -> std::path::PathBuf {
    let mut dirs = vec![];
    let mut stack = vec![warehouse.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                dirs.push(d.clone());
            }
        }
    }
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_catalog_govern_alike() {
    let pg = PgCluster::start();
    let url = pg.database("veil");
    let tmp = tempfile::tempdir().unwrap();
    let warehouse = tmp.path().join("warehouse");
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = demo(&dir_a, options(&url, &warehouse)).await;
    let b = second_server(&dir_a, &dir_b, options(&url, &warehouse));
    // The second server found the catalog set up: no second admin.
    assert_eq!(b.bootstrap_admin(None).unwrap(), None);
    assert!(b.authenticate("bob", "bob-pw").is_ok());

    // A policy made on A governs B's next statement, and its removal too.
    let mut bob_b = b.session("bob");
    assert_eq!(
        one(&mut bob_b, "SELECT count(*) FROM sales.transactions").await,
        "832"
    );
    let mut admin_a = a.session("admin");
    run(
        &mut admin_a,
        "CREATE ROW POLICY only_big ON sales.transactions USING amount > 400",
    )
    .await;
    let big = one(&mut bob_b, "SELECT count(*) FROM sales.transactions").await;
    assert!(big.parse::<u32>().unwrap() < 832, "{big}");
    run(&mut admin_a, "DROP POLICY only_big").await;
    assert_eq!(
        one(&mut bob_b, "SELECT count(*) FROM sales.transactions").await,
        "832"
    );
    // Masks too: bob on B sees no SSN; a user created on A logs in on B.
    let ssn = rows(&mut bob_b, "SELECT DISTINCT ssn FROM hr.employees").await;
    assert_eq!(ssn, [["NULL"]]);
    run(
        &mut admin_a,
        "CREATE USER zoe PASSWORD 'zoe-pw' GROUPS ('staff') ATTRIBUTES (region = 'EU')",
    )
    .await;
    assert!(b.authenticate("zoe", "zoe-pw").is_ok());

    // A project made on A; bob writes its workspace on B, sally reads on A.
    let mut sally_a = a.session("sally");
    for sql in [
        "CREATE PROJECT shared",
        "ALTER PROJECT shared ADD DATA SOURCE hr.employees",
        "ALTER PROJECT shared ADD MEMBER bob",
        "ALTER PROJECT shared SET EQUALIZATION ON",
    ] {
        run(&mut sally_a, sql).await;
    }
    bob_b.use_project(Some("shared")).unwrap();
    run(
        &mut bob_b,
        "CREATE TABLE workspace.ids AS SELECT employee_id, region FROM hr.employees",
    )
    .await;
    sally_a.use_project(Some("shared")).unwrap();
    let written = one(&mut sally_a, "SELECT count(*) FROM workspace.ids").await;
    assert_eq!(
        written,
        one(&mut bob_b, "SELECT count(*) FROM workspace.ids").await
    );
    // A server starting while another writes leaves the other's files:
    // only what is older than a statement may run is an orphan.
    let table_dir = parquet_dir(&warehouse);
    let staged = table_dir.join("_staging/w1/part-0.parquet");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"being written").unwrap();
    let promoted = table_dir.join("w1-0.parquet");
    std::fs::write(&promoted, b"about to be listed").unwrap();
    let restarted = second_server(&dir_a, &tmp.path().join("c"), options(&url, &warehouse));
    assert_eq!(restarted.sweep_workspaces().await.unwrap(), 0);
    assert!(staged.exists() && promoted.exists());
    // Two hours later, nobody committed them: they go.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for p in [&staged, &promoted] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    for d in [staged.parent().unwrap(), &table_dir.join("_staging")] {
        std::fs::File::open(d).unwrap().set_modified(old).unwrap();
    }
    assert_eq!(restarted.sweep_workspaces().await.unwrap(), 2);
    assert!(!staged.exists() && !promoted.exists());
    assert_eq!(
        one(&mut sally_a, "SELECT count(*) FROM workspace.ids").await,
        written
    );

    // Both create the same table at once: one wins, the other is told.
    let (mut s1, mut s2) = (a.session("sally"), b.session("bob"));
    s1.use_project(Some("shared")).unwrap();
    s2.use_project(Some("shared")).unwrap();
    let (r1, r2) = tokio::join!(
        s1.execute("CREATE TABLE workspace.race AS SELECT 1 AS x"),
        s2.execute("CREATE TABLE workspace.race AS SELECT 2 AS x"),
    );
    let mut outcomes = [r1.is_ok(), r2.is_ok()];
    outcomes.sort();
    assert_eq!(outcomes, [false, true]);
    let e = r1.err().or(r2.err()).unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");

    // Users created on both servers at once: all of them, once each.
    let mut tasks = vec![];
    for (i, engine) in [&a, &b].into_iter().cycle().take(16).enumerate() {
        let engine = Arc::clone(engine);
        tasks.push(tokio::spawn(async move {
            let mut admin = engine.session("admin");
            admin
                .execute(&format!("CREATE USER racer{i} PASSWORD 'pw'"))
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for engine in [&a, &b] {
        let mut admin = engine.session("admin");
        let racers = rows(&mut admin, "SHOW USERS").await;
        let n = racers.iter().filter(|r| r[0].starts_with("racer")).count();
        assert_eq!(n, 16);
    }
    // The same name on both: exactly one is created.
    let (mut x, mut y) = (a.session("admin"), b.session("admin"));
    let (r1, r2) = tokio::join!(
        x.execute("CREATE USER twin PASSWORD 'pw'"),
        y.execute("CREATE USER twin PASSWORD 'pw'"),
    );
    assert_eq!(r1.is_ok() as u8 + r2.is_ok() as u8, 1);

    // One audit log: both servers' records, one unbroken chain.
    for engine in [&a, &b] {
        let mut admin = engine.session("admin");
        assert_eq!(
            rows(&mut admin, "VERIFY AUDIT").await[0][0],
            "ok",
            "VERIFY AUDIT"
        );
    }
    let mut admin_b = b.session("admin");
    let creates = one(
        &mut admin_b,
        "SELECT count(*) FROM system.audit WHERE action = 'CreateUser' AND outcome = 'ok' \
         AND object LIKE 'racer%'",
    )
    .await;
    assert_eq!(creates, "16");
    // Tampering on the database is found by either server.
    pg.psql(&url, "UPDATE audit SET actor = 'mallory' WHERE id = 5");
    let verdict = rows(&mut admin_b, "VERIFY AUDIT").await;
    assert_eq!(verdict[0][0], "broken", "{verdict:?}");
    let e = err(&mut bob_b, "SELECT * FROM system.audit").await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}
