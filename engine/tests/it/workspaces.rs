//! Workspaces in-process: the dictionary attack on masked joins, masked-
//! column lineage, concurrent appends, the size limit, orphan clean-up and
//! file release.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{demo, err, one, rows, run};
use veil_engine::{Engine, EngineOptions, ErrorKind};

/// sally's project `name` over hr.employees with bob as a member.
async fn project(engine: &Arc<Engine>, name: &str, masked_joins: bool) {
    let mut sally = engine.session("sally");
    run(&mut sally, &format!("CREATE PROJECT {name}")).await;
    run(
        &mut sally,
        &format!("ALTER PROJECT {name} ADD DATA SOURCE hr.employees"),
    )
    .await;
    run(&mut sally, &format!("ALTER PROJECT {name} ADD MEMBER bob")).await;
    if masked_joins {
        run(
            &mut sally,
            &format!("ALTER PROJECT {name} SET MASKED JOINS ON"),
        )
        .await;
    }
}

/// Parquet files under a directory, recursively.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

/// A member who can write rows must not get their own guesses tokenized
/// with the project's join key and joined against the real column.
#[tokio::test]
async fn dictionary_attack_on_a_masked_join_key_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "dict", true).await;
    // The attacker's guesses: ten real e-mail addresses of employees bob sees.
    let mut sally = engine.session("sally");
    let guesses: Vec<String> = rows(
        &mut sally,
        "SELECT email FROM hr.employees WHERE region = 'US' ORDER BY employee_id LIMIT 10",
    )
    .await
    .into_iter()
    .map(|r| format!("('{}')", r[0]))
    .collect();
    assert_eq!(guesses.len(), 10);

    let mut bob = engine.session("bob");
    bob.use_project(Some("dict")).unwrap();
    // Sanity: masked keys do join inside this project.
    assert_ne!(
        one(
            &mut bob,
            "SELECT count(*) FROM hr.employees a JOIN hr.employees b ON a.email = b.email"
        )
        .await,
        "0"
    );
    run(&mut bob, "CREATE TABLE workspace.guesses (email VARCHAR)").await;
    run(
        &mut bob,
        &format!(
            "INSERT INTO workspace.guesses VALUES {}",
            guesses.join(", ")
        ),
    )
    .await;
    // 1. Workspace tables are not re-masked: plaintext never meets a token.
    assert_eq!(
        one(
            &mut bob,
            "SELECT count(*) FROM workspace.guesses g JOIN hr.employees e ON g.email = e.email"
        )
        .await,
        "0"
    );
    // 2. The mask functions cannot be called by name.
    for f in ["veil_hash", "veil_encrypt", "hash", "veil_decrypt"] {
        let e = err(
            &mut bob,
            &format!("SELECT {f}(email) FROM workspace.guesses"),
        )
        .await;
        assert!(e.to_string().contains(f), "{f}: {e}");
    }
    // 3. Registered as a derived source, tagged PII and added to the project,
    //    the guesses are HASHed, but never with the project's key.
    run(&mut sally, "USE PROJECT dict").await;
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE analytics.guesses FROM WORKSPACE TABLE guesses",
    )
    .await;
    run(&mut sally, "USE PROJECT NONE").await;
    run(
        &mut sally,
        "ALTER DATA SOURCE analytics.guesses TAG COLUMN email WITH ('PII.Email')",
    )
    .await;
    run(
        &mut sally,
        "ALTER PROJECT dict ADD DATA SOURCE analytics.guesses",
    )
    .await;
    assert_eq!(
        one(
            &mut bob,
            "SELECT bool_and(length(email) = 32) FROM analytics.guesses"
        )
        .await,
        "true",
        "the derived column is masked for bob"
    );
    assert_eq!(
        one(
            &mut bob,
            "SELECT count(*) FROM analytics.guesses g JOIN hr.employees e ON g.email = e.email"
        )
        .await,
        "0"
    );
    // 4. Nor does copying tokens around help: a CTAS of the real tokens
    //    joins (same key), guesses never do.
    run(
        &mut bob,
        "CREATE TABLE workspace.tokens AS SELECT email FROM hr.employees",
    )
    .await;
    assert_ne!(
        one(
            &mut bob,
            "SELECT count(*) FROM workspace.tokens t JOIN hr.employees e ON t.email = e.email"
        )
        .await,
        "0"
    );
    assert_eq!(
        one(
            &mut bob,
            "SELECT count(*) FROM workspace.tokens t JOIN workspace.guesses g ON t.email = g.email"
        )
        .await,
        "0"
    );
    // 5. Project-keyed tokens shared as a derived source stay opaque outside
    //    the project: they match nothing there.
    run(&mut sally, "USE PROJECT dict").await;
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE analytics.tokens FROM WORKSPACE TABLE tokens",
    )
    .await;
    let described = rows(&mut sally, "DESCRIBE DATA SOURCE analytics.tokens").await;
    assert!(
        described.iter().any(|r| r[0] == "column email"
            && r[1].ends_with("masked (from hr.employees.email, project-keyed tokens)")),
        "{described:?}"
    );
    run(&mut sally, "USE PROJECT NONE").await;
    let mut outside = engine.session("bob");
    assert_eq!(
        one(
            &mut outside,
            "SELECT count(*) FROM analytics.tokens t JOIN hr.employees e ON t.email = e.email"
        )
        .await,
        "0"
    );
    assert_eq!(
        one(&mut outside, "SELECT count(*) FROM analytics.tokens").await,
        "311"
    );
}

/// In an equalized project, what a member writes is what the synthetic
/// principal sees: sally (hr) writes hashed e-mails like bob would.
#[tokio::test]
async fn equalized_writes_hold_the_equalized_view() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "eq", false).await;
    let mut sally = engine.session("sally");
    run(&mut sally, "ALTER PROJECT eq SET EQUALIZATION ON").await;
    assert!(one(&mut sally, "SELECT max(email) FROM hr.employees")
        .await
        .contains('@'));
    sally.use_project(Some("eq")).unwrap();
    run(
        &mut sally,
        "CREATE TABLE workspace.emp AS SELECT email, region FROM hr.employees",
    )
    .await;
    assert_eq!(
        rows(
            &mut sally,
            "SELECT count(*), count(DISTINCT region), bool_or(email LIKE '%@%') FROM workspace.emp"
        )
        .await,
        vec![vec![
            "311".to_string(),
            "1".to_string(),
            "false".to_string()
        ]]
    );
}

/// Outside equalization members see different data: sally (hr) reads raw
/// SSNs and e-mails of every region, bob hashed e-mails of US rows. A table
/// sally writes holds what bob's masks and row policy hide, so bob may not
/// read it, nor anything copied or appended from it (before, he read every
/// raw SSN in the project); and since a derived source is shared with the
/// project's least-privileged entitlements (staff, region US), it cannot be
/// derived either (before, bob read all 1000 raw SSNs from it outside the
/// project). bob's own writes can; with equalization on, sally's can.
#[tokio::test]
async fn a_workspace_table_shows_no_member_more_than_their_access() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "pub", false).await;
    let mut sally = engine.session("sally");
    run(
        &mut sally,
        "ALTER PROJECT pub ADD DATA SOURCE sales.transactions",
    )
    .await;
    sally.use_project(Some("pub")).unwrap();
    let mut bob = engine.session("bob");
    bob.use_project(Some("pub")).unwrap();
    run(
        &mut sally,
        "CREATE TABLE workspace.raw AS SELECT employee_id, email, ssn FROM hr.employees",
    )
    .await;
    assert_eq!(
        one(&mut sally, "SELECT count(ssn) FROM workspace.raw").await,
        "1000"
    );

    // bob, in the project: no statement that reads it runs.
    for sql in [
        "SELECT ssn FROM workspace.raw",
        "SELECT count(*) FROM workspace.raw",
        "SELECT e.employee_id FROM hr.employees e JOIN workspace.raw r ON e.employee_id = r.employee_id",
        "SELECT employee_id FROM hr.employees WHERE employee_id IN (SELECT employee_id FROM workspace.raw)",
        "CREATE TABLE workspace.stolen AS SELECT * FROM workspace.raw",
        "WITH c AS (SELECT * FROM workspace.raw) SELECT count(*) FROM c",
        "SELECT employee_id FROM hr.employees UNION ALL SELECT employee_id FROM workspace.raw",
        "WITH RECURSIVE r(n) AS (SELECT employee_id FROM workspace.raw WHERE employee_id = 2 \
         UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
        "SELECT (SELECT max(ssn) FROM workspace.raw) AS m",
        "SELECT x.ssn FROM hr.employees e, LATERAL (SELECT ssn FROM workspace.raw r \
         WHERE r.employee_id = e.employee_id) x",
    ] {
        let e = err(&mut bob, sql).await;
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{sql}: {e}");
        let text = e.to_string();
        for part in [
            "bob may not read workspace table raw",
            "sally wrote what they read of hr.employees, more than bob may see of it",
            "column ssn is masked",
            "row policy employees_region applies",
        ] {
            assert!(text.contains(part), "{sql}: {part}: {text}");
        }
        assert!(!text.contains("region IN"), "no predicate: {text}");
    }
    // Listed, but without the size that would count the rows bob's row
    // policy hides.
    let raw_row = |listed: Vec<Vec<String>>| listed.into_iter().find(|r| r[0] == "raw").unwrap();
    let seen = raw_row(rows(&mut bob, "SHOW TABLES IN workspace").await);
    assert_eq!((&seen[2][..], &seen[3][..], &seen[8][..]), ("", "", "no"));
    let seen = raw_row(rows(&mut sally, "SHOW TABLES IN workspace").await);
    assert_eq!((&seen[2][..], &seen[8][..]), ("1000", "yes"));
    // EXPLAIN shows the refusal as its plan (DataFusion reports a failed
    // analyzer rule there), not the table's plan.
    let explained = rows(&mut bob, "EXPLAIN SELECT * FROM workspace.raw").await;
    let last = explained.last().unwrap();
    assert!(
        last[1].contains("permission denied: bob may not read workspace table raw"),
        "{explained:?}"
    );
    let e = err(
        &mut sally,
        "CREATE DERIVED DATA SOURCE analytics.raw FROM WORKSPACE TABLE raw",
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let text = e.to_string();
    for part in [
        "workspace table raw cannot be derived",
        "has_group('staff') AND has_attribute('region', 'US')",
        "sally wrote what they read of hr.employees, more than those entitlements may see of it",
        "column ssn is masked",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }

    // What sally copies or appends from it carries its provenance.
    run(
        &mut sally,
        "CREATE TABLE workspace.ids AS SELECT employee_id FROM workspace.raw",
    )
    .await;
    run(
        &mut bob,
        "CREATE TABLE workspace.mine AS SELECT employee_id, email FROM hr.employees",
    )
    .await;
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.mine").await,
        "311"
    );
    run(
        &mut sally,
        "INSERT INTO workspace.mine SELECT employee_id, email FROM workspace.raw WHERE employee_id = 2",
    )
    .await;
    for t in ["ids", "mine"] {
        let e = err(&mut bob, &format!("SELECT count(*) FROM workspace.{t}")).await;
        assert!(e.to_string().contains("sally wrote"), "{t}: {e}");
        let e = err(
            &mut sally,
            &format!("CREATE DERIVED DATA SOURCE analytics.{t} FROM WORKSPACE TABLE {t}"),
        )
        .await;
        assert!(e.to_string().contains("sally wrote"), "{t}: {e}");
    }

    // The same row policy, resolved for sally's regions (EU, US).
    run(
        &mut sally,
        "CREATE TABLE workspace.tx AS SELECT * FROM sales.transactions",
    )
    .await;
    let e = err(&mut bob, "SELECT count(*) FROM workspace.tx").await;
    assert!(
        e.to_string()
            .contains("row policy transactions_region filters other rows"),
        "{e}"
    );

    // Nothing was registered: outside, bob finds none of them.
    let mut outside = engine.session("bob");
    for t in ["raw", "ids", "mine", "tx"] {
        let e = err(&mut outside, &format!("SELECT * FROM analytics.{t}")).await;
        assert_eq!(e.kind(), ErrorKind::NotFound, "{t}: {e}");
    }

    // bob's own view: sally reads it, it derives, and outside it shows
    // tokens of US rows only.
    run(
        &mut bob,
        "CREATE OR REPLACE TABLE workspace.mine AS SELECT employee_id, email, region \
         FROM hr.employees",
    )
    .await;
    assert_eq!(
        one(&mut sally, "SELECT count(*) FROM workspace.mine").await,
        "311"
    );
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE analytics.mine FROM WORKSPACE TABLE mine",
    )
    .await;
    assert_eq!(
        rows(
            &mut outside,
            "SELECT count(*), bool_and(length(email) = 32), max(region) FROM analytics.mine"
        )
        .await,
        vec![vec![
            "311".to_string(),
            "true".to_string(),
            "US".to_string()
        ]]
    );

    // Equalized, sally writes what the shared entitlements see.
    let mut owner = engine.session("sally");
    run(&mut owner, "ALTER PROJECT pub SET EQUALIZATION ON").await;
    run(
        &mut sally,
        "CREATE OR REPLACE TABLE workspace.raw AS SELECT employee_id, email, ssn FROM hr.employees",
    )
    .await;
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.raw").await,
        "311"
    );
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE analytics.raw FROM WORKSPACE TABLE raw",
    )
    .await;
    assert_eq!(
        rows(
            &mut outside,
            "SELECT count(*), count(ssn), bool_or(email LIKE '%@%') FROM analytics.raw"
        )
        .await,
        vec![vec![
            "311".to_string(),
            "0".to_string(),
            "false".to_string()
        ]]
    );
}

/// Two masks of one method differ in what they show: erin's salaries are
/// rounded to 10, bob's (same groups and region) to 10,000. What erin
/// writes is refused to bob, though both masks rank alike.
#[tokio::test]
async fn a_finer_mask_of_the_same_method_reaches_no_coarser_member() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    let mut admin = engine.session("admin");
    run(
        &mut admin,
        "CREATE USER erin PASSWORD 'erin-pw' GROUPS ('analysts', 'staff') \
         ATTRIBUTES (region = 'US')",
    )
    .await;
    run(
        &mut admin,
        "CREATE MASKING POLICY salary_fine ON hr.employees (salary) USING ROUND 10 \
         UNLESS current_user() = 'bob' OR has_group('hr')",
    )
    .await;
    project(&engine, "fine", false).await;
    let mut sally = engine.session("sally");
    run(&mut sally, "ALTER PROJECT fine ADD MEMBER erin").await;
    let mut erin = engine.session("erin");
    erin.use_project(Some("fine")).unwrap();
    let mut bob = engine.session("bob");
    bob.use_project(Some("fine")).unwrap();
    let fine = "SELECT count(*) FROM hr.employees WHERE salary % 10000 <> 0";
    assert_ne!(one(&mut erin, fine).await, "0");
    assert_eq!(one(&mut bob, fine).await, "0");
    run(
        &mut erin,
        "CREATE TABLE workspace.pay AS SELECT employee_id, salary FROM hr.employees",
    )
    .await;
    assert_ne!(
        one(
            &mut erin,
            "SELECT count(*) FROM workspace.pay WHERE salary % 10000 <> 0"
        )
        .await,
        "0"
    );
    let e = err(&mut bob, "SELECT salary FROM workspace.pay").await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string()
            .contains("column salary is masked differently"),
        "{e}"
    );
}

/// A purpose is an exception granted for a project's work: transactions
/// show every region under 'Research', US only to bob without it. A table
/// written under it and derived is usable only under that purpose, in a
/// project that has it approved (before, bob read all 3000 transactions
/// outside any project, against his 832); a derived table whose contents
/// do not depend on the purpose is shared as before.
#[tokio::test]
async fn data_read_under_a_purpose_stays_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    let mut sally = engine.session("sally");
    let mut pam = engine.session("pam");
    for p in ["purp", "other"] {
        run(&mut sally, &format!("CREATE PROJECT {p}")).await;
        run(&mut sally, &format!("ALTER PROJECT {p} ADD MEMBER bob")).await;
    }
    for sql in [
        "ALTER PROJECT purp ADD DATA SOURCE sales.transactions",
        "ALTER PROJECT purp ADD DATA SOURCE hr.employees",
        "ALTER PROJECT purp ADD PURPOSE 'Research'",
    ] {
        run(&mut sally, sql).await;
    }
    run(&mut pam, "APPROVE PURPOSE 'Research' FOR PROJECT purp").await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("purp")).unwrap();
    run(
        &mut bob,
        "CREATE TABLE workspace.tx AS SELECT * FROM sales.transactions",
    )
    .await;
    run(
        &mut bob,
        "CREATE TABLE workspace.staff AS SELECT employee_id, region FROM hr.employees",
    )
    .await;
    sally.use_project(Some("purp")).unwrap();
    for t in ["tx", "staff"] {
        run(
            &mut sally,
            &format!("CREATE DERIVED DATA SOURCE analytics.{t} FROM WORKSPACE TABLE {t}"),
        )
        .await;
    }
    let purposes = |described: Vec<Vec<String>>| {
        described.into_iter().find(|r| r[0] == "purposes").unwrap()[1].clone()
    };
    assert_eq!(
        purposes(rows(&mut sally, "DESCRIBE DATA SOURCE analytics.tx").await),
        "Research; required: it holds what they exempt from policies"
    );
    assert_eq!(
        purposes(rows(&mut sally, "DESCRIBE DATA SOURCE analytics.staff").await),
        "Research"
    );

    let mut outside = engine.session("bob");
    assert_eq!(
        one(&mut outside, "SELECT count(*) FROM sales.transactions").await,
        "832"
    );
    let e = err(&mut outside, "SELECT count(*) FROM analytics.tx").await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains(
            "bob is not subscribed to analytics.tx: it holds data read under the purposes of \
             project purp ('Research')"
        ),
        "{e}"
    );
    assert_eq!(
        one(&mut outside, "SELECT count(*) FROM analytics.staff").await,
        "311"
    );

    // Another project: only once it has the purpose approved.
    run(&mut sally, "USE PROJECT NONE").await;
    run(
        &mut sally,
        "ALTER PROJECT other ADD DATA SOURCE analytics.tx",
    )
    .await;
    let mut inside = engine.session("bob");
    inside.use_project(Some("other")).unwrap();
    let e = err(&mut inside, "SELECT count(*) FROM analytics.tx").await;
    assert!(e.to_string().contains("is not subscribed"), "{e}");
    run(&mut sally, "ALTER PROJECT other ADD PURPOSE 'Research'").await;
    run(&mut pam, "APPROVE PURPOSE 'Research' FOR PROJECT other").await;
    assert_eq!(
        one(&mut inside, "SELECT count(*) FROM analytics.tx").await,
        "3000"
    );
    // Derived again from there, it stays bound to the purpose.
    run(
        &mut inside,
        "CREATE TABLE workspace.tx2 AS SELECT * FROM analytics.tx",
    )
    .await;
    let mut owner = engine.session("sally");
    owner.use_project(Some("other")).unwrap();
    run(
        &mut owner,
        "CREATE DERIVED DATA SOURCE analytics.tx2 FROM WORKSPACE TABLE tx2",
    )
    .await;
    assert_eq!(
        purposes(rows(&mut owner, "DESCRIBE DATA SOURCE analytics.tx2").await),
        "Research; required: it holds what they exempt from policies"
    );
    let e = err(&mut outside, "SELECT count(*) FROM analytics.tx2").await;
    assert!(
        e.to_string()
            .contains("bob is not subscribed to analytics.tx2"),
        "{e}"
    );
}

/// Access is compared with the current catalog: once region is masked for
/// bob, his own table, written when it was not, is refused to him too; with
/// the policy gone he reads it again.
#[tokio::test]
async fn a_writer_whose_access_narrowed_no_longer_reads_their_table() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "narrow", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("narrow")).unwrap();
    run(
        &mut bob,
        "CREATE TABLE workspace.mine AS SELECT employee_id, region FROM hr.employees",
    )
    .await;
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.mine").await,
        "311"
    );
    let mut admin = engine.session("admin");
    run(
        &mut admin,
        "CREATE MASKING POLICY region_null ON hr.employees (region) USING NULL UNLESS has_group('hr')",
    )
    .await;
    let e = err(&mut bob, "SELECT count(*) FROM workspace.mine").await;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string()
            .contains("bob wrote what they read of hr.employees, more than bob may see of it (column region is masked"),
        "{e}"
    );
    run(&mut admin, "DROP POLICY region_null").await;
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.mine").await,
        "311"
    );
}

/// Which workspace columns are marked masked: whatever a masked column flows
/// into, through expressions, aggregates, joins and unions.
#[tokio::test]
async fn masked_columns_are_tracked_through_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "lin", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("lin")).unwrap();
    let cases = [
        ("plain", "SELECT employee_id, region FROM hr.employees", ""),
        (
            "expr",
            "SELECT employee_id, upper(email) AS shout FROM hr.employees",
            "shout",
        ),
        (
            "agg",
            "SELECT email, count(*) AS n, max(name) AS who FROM hr.employees GROUP BY email",
            "email, who",
        ),
        (
            "joined",
            "SELECT a.employee_id, b.name FROM hr.employees a JOIN hr.employees b ON a.email = b.email",
            "name",
        ),
        (
            "unioned",
            "SELECT region AS v FROM hr.employees UNION ALL SELECT email FROM hr.employees",
            "v",
        ),
        (
            "sub",
            "SELECT employee_id, (SELECT max(email) FROM hr.employees) AS m FROM hr.employees",
            "m",
        ),
    ];
    for (table, sql, _) in &cases {
        run(
            &mut bob,
            &format!("CREATE TABLE workspace.{table} AS {sql}"),
        )
        .await;
    }
    // Copying a masked workspace column keeps the mark.
    run(
        &mut bob,
        "CREATE TABLE workspace.copy AS SELECT shout FROM workspace.expr",
    )
    .await;
    let listed = rows(&mut bob, "SHOW TABLES IN workspace").await;
    let masked = |t: &str| {
        listed
            .iter()
            .find(|r| r[0] == t)
            .map(|r| r[6].clone())
            .unwrap_or_else(|| panic!("{t} not listed: {listed:?}"))
    };
    for (table, _, want) in &cases {
        assert_eq!(masked(table), *want, "{table}");
    }
    assert_eq!(masked("copy"), "shout");
    let plain = listed.iter().find(|r| r[0] == "plain").unwrap();
    assert_eq!(plain[7], "hr.employees", "sources");
}

/// Two writers appending at once: every committed row is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "conc", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("conc")).unwrap();
    run(
        &mut bob,
        "CREATE TABLE workspace.t (writer VARCHAR, n BIGINT)",
    )
    .await;
    let mut tasks = vec![];
    for writer in ["bob", "sally"] {
        let mut s = engine.session(writer);
        s.use_project(Some("conc")).unwrap();
        tasks.push(tokio::spawn(async move {
            for n in 0..15 {
                let sql = format!("INSERT INTO workspace.t VALUES ('{writer}', {n})");
                s.execute(&sql).await.unwrap().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        rows(
            &mut bob,
            "SELECT count(*), count(DISTINCT writer || '-' || n) FROM workspace.t"
        )
        .await,
        vec![vec!["30".to_string(), "30".to_string()]]
    );
}

/// A write that would take the workspace over its limit is refused and
/// leaves nothing behind; a write that fits goes through.
#[tokio::test]
async fn workspace_limit_refuses_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        workspace_max_bytes: Some(4096),
        ..Default::default()
    };
    let engine = demo(dir.path(), options).await;
    project(&engine, "small", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("small")).unwrap();
    run(&mut bob, "CREATE TABLE workspace.tiny AS SELECT 1 AS x").await;
    let e = err(
        &mut bob,
        "CREATE TABLE workspace.big AS SELECT * FROM hr.employees",
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(
        e.to_string().contains("over its limit of 4096 bytes"),
        "{e}"
    );
    let tables: Vec<String> = rows(&mut bob, "SHOW TABLES IN workspace")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(tables, vec!["tiny"]);
    let files = parquet_files(&dir.path().join("warehouse"));
    assert_eq!(files.len(), 1, "only tiny's file remains: {files:?}");
}

/// Files of unfinished writes are removed at start-up; committed ones stay.
/// Dropped tables release their files.
#[tokio::test]
async fn orphans_are_swept_and_drops_release_files() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        release_delay: Duration::ZERO,
        ..Default::default()
    };
    let engine = demo(dir.path(), options).await;
    project(&engine, "sweep", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("sweep")).unwrap();
    run(
        &mut bob,
        "CREATE TABLE workspace.keep AS SELECT employee_id FROM hr.employees",
    )
    .await;
    let committed = parquet_files(&dir.path().join("warehouse"));
    assert_eq!(committed.len(), 1);
    let table_dir = committed[0].parent().unwrap().to_path_buf();
    // What a crash mid-write leaves: a staged file and a promoted, unlisted one.
    let staged = table_dir.join("_staging/abc/part-0.parquet");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"partial").unwrap();
    std::fs::write(table_dir.join("abc-0.parquet"), b"partial").unwrap();
    std::fs::create_dir_all(table_dir.parent().unwrap().join("gone")).unwrap();
    std::fs::write(table_dir.parent().unwrap().join("gone/x-0.parquet"), b"x").unwrap();
    assert_eq!(engine.sweep_workspaces().await.unwrap(), 3);
    assert_eq!(parquet_files(&dir.path().join("warehouse")), committed);
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.keep").await,
        "311"
    );

    // Nobody registers the warehouse as a plain data source around the
    // workspace isolation, by path or URL.
    let mut admin = engine.session("admin");
    let wh = dir.path().join("warehouse");
    for location in [
        wh.join("projects").display().to_string(),
        table_dir.display().to_string(),
        format!("file://{}/", wh.display()),
        format!("{}/projects/../projects", wh.display()),
    ] {
        let e = err(
            &mut admin,
            &format!("CREATE DATA SOURCE steal.ws FROM PARQUET '{location}'"),
        )
        .await;
        assert!(
            e.to_string().contains("inside the workspace warehouse"),
            "{location}: {e}"
        );
    }

    run(&mut bob, "DROP TABLE workspace.keep").await;
    for _ in 0..100 {
        if parquet_files(&dir.path().join("warehouse")).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("dropped table's files were not released");
}

/// A workspace table whose committed files were damaged or deleted (by
/// hand, a disk fault) fails with an error naming it, never with fewer
/// rows or a storage path; so does a derived source over it, and the
/// project's other tables read as before.
#[tokio::test]
async fn a_workspace_tables_lost_or_damaged_files_fail_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "lost", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("lost")).unwrap();
    run(
        &mut bob,
        "CREATE TABLE workspace.keep AS SELECT employee_id FROM hr.employees",
    )
    .await;
    let files = parquet_files(&dir.path().join("warehouse"));
    assert_eq!(files.len(), 1);
    run(&mut bob, "CREATE TABLE workspace.other AS SELECT 1 AS x").await;
    let mut sally = engine.session("sally");
    sally.use_project(Some("lost")).unwrap();
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE an.keep FROM WORKSPACE TABLE keep",
    )
    .await;
    let mut outside = engine.session("sally");
    assert_eq!(
        one(&mut outside, "SELECT count(*) FROM an.keep").await,
        "311"
    );

    for damage in ["garbage", "deleted"] {
        if damage == "garbage" {
            std::fs::write(&files[0], b"PAR1 not a parquet file PAR1").unwrap();
        } else {
            std::fs::remove_file(&files[0]).unwrap();
        }
        tokio::time::sleep(veil_engine::engine::LISTING_TTL + Duration::from_millis(200)).await;
        for (session, sql, what) in [
            (
                &mut bob,
                "SELECT * FROM workspace.keep",
                "workspace table keep",
            ),
            (&mut outside, "SELECT * FROM an.keep", "data source an.keep"),
        ] {
            let e = err(session, sql).await;
            let text = e.to_string();
            assert_eq!(
                e.kind(),
                ErrorKind::FailedPrecondition,
                "{damage} {sql}: {text}"
            );
            assert!(
                text.contains(&format!("failed precondition: {what} cannot be read:")),
                "{damage} {sql}: {text}"
            );
            assert!(!text.contains("warehouse"), "no storage path: {text}");
        }
        assert_eq!(one(&mut bob, "SELECT x FROM workspace.other").await, "1");
    }
}

/// Bytes damaged inside a workspace file's pages, its footer intact, fail
/// the query as that table's unreadable data (parquet's text, a dictionary
/// index or a page header, went to the user as InvalidArgument before),
/// and a `CREATE TABLE ... AS` reading it too (Internal until 2026-12-07).
#[tokio::test]
async fn a_workspace_tables_damaged_pages_fail_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "pages", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("pages")).unwrap();
    run(
        &mut bob,
        "CREATE TABLE workspace.keep AS SELECT employee_id, name, email FROM hr.employees",
    )
    .await;
    let file = parquet_files(&dir.path().join("warehouse"))[0].clone();
    let original = std::fs::read(&file).unwrap();
    let (mut answered, mut unreadable) = (0, 0);
    let copies = common::damaged_copies(&original, 0x2545_f491_4f6c_dd1d, 60);
    for (i, (damaged, bytes)) in copies.into_iter().enumerate() {
        std::fs::write(&file, &bytes).unwrap();
        // A modification time of its own: the same size written within one
        // clock tick would let the reader reuse the last copy's footer.
        let modified =
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let sql = "SELECT * FROM workspace.keep";
        let result = match bob.execute(sql).await {
            Err(e) => Err(e),
            Ok(out) => out.collect().await,
        };
        let Err(e) = result else {
            answered += 1;
            continue;
        };
        unreadable += 1;
        // A write reading it fails the same way (it was Internal), and
        // leaves no table behind.
        let copy = "CREATE TABLE workspace.copy AS SELECT * FROM workspace.keep";
        for e in [e, err(&mut bob, copy).await] {
            let what = format!("bytes {damaged:?}: {e}");
            assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{what}");
            assert!(
                e.to_string()
                    .contains("failed precondition: workspace table keep cannot be read:"),
                "{what}"
            );
            assert!(!e.to_string().contains("warehouse"), "{what}");
        }
        let tables = rows(&mut bob, "SHOW TABLES IN workspace").await;
        assert!(!format!("{tables:?}").contains("copy"), "{tables:?}");
    }
    assert!(
        unreadable >= 5,
        "the damage is found: {unreadable} failed, {answered} answered"
    );
}

/// A workspace table written in two parts, and the derived source that
/// pins its files, fail when either file is gone: before, a lost second
/// file was skipped and they answered with fewer rows (143 of 311).
#[tokio::test]
async fn a_lost_file_of_a_two_part_table_fails_it_not_fewer_rows() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    project(&engine, "parts", false).await;
    let mut bob = engine.session("bob");
    bob.use_project(Some("parts")).unwrap();
    let warehouse = dir.path().join("warehouse");
    run(
        &mut bob,
        "CREATE TABLE workspace.other AS SELECT employee_id FROM hr.employees",
    )
    .await;
    run(
        &mut bob,
        "CREATE TABLE workspace.keep AS SELECT employee_id FROM hr.employees WHERE employee_id < 500",
    )
    .await;
    let first: Vec<PathBuf> = parquet_files(&warehouse);
    run(
        &mut bob,
        "INSERT INTO workspace.keep SELECT employee_id FROM hr.employees WHERE employee_id >= 500",
    )
    .await;
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.keep").await,
        "311"
    );
    let mut sally = engine.session("sally");
    sally.use_project(Some("parts")).unwrap();
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE an.keep FROM WORKSPACE TABLE keep",
    )
    .await;
    let second: Vec<PathBuf> = parquet_files(&warehouse)
        .into_iter()
        .filter(|f| !first.contains(f))
        .collect();
    assert_eq!(second.len(), 1);
    std::fs::remove_file(&second[0]).unwrap();
    let mut outside = engine.session("bob");
    for (outer, sql, what) in [
        (false, "SELECT employee_id FROM workspace.keep", "workspace table keep"),
        (false, "SELECT employee_id FROM workspace.keep LIMIT 5", "workspace table keep"),
        (
            false,
            "SELECT count(*) FROM workspace.keep k JOIN workspace.other o ON k.employee_id = o.employee_id",
            "workspace table keep",
        ),
        (true, "SELECT employee_id FROM an.keep", "data source an.keep"),
    ] {
        let s = if outer { &mut outside } else { &mut bob };
        let e = err(s, sql).await;
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{sql}: {e}");
        assert!(
            e.to_string().contains(&format!("{what} cannot be read")),
            "{sql}: {e}"
        );
        assert!(!e.to_string().contains("warehouse"), "{sql}: {e}");
    }
    // The other table still reads.
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM workspace.other").await,
        "311"
    );
}
