//! `veil export`: the governance state of a catalog, replayed by
//! `veil apply` onto a new one, governs alike and exports to the same
//! script again.

use crate::common;

use common::{demo, one, root, rows, run};
use veil_engine::statement::{apply_script, export::export_script};
use veil_engine::{Engine, EngineOptions};

/// The script without its header (the catalog version differs).
fn body(script: &str) -> String {
    script
        .lines()
        .skip_while(|l| l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_exported_catalog_replays_to_the_same_governance() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    let mut admin = engine.session("admin");
    for sql in [
        "ALTER DATA SOURCE payments.cards ADD OWNER alice",
        "ALTER DATA SOURCE payments.cards REMOVE OWNER admin",
        "CREATE USER quinn PASSWORD 'q''s pw' GROUPS ('staff', 'it''s') ATTRIBUTES (region = ('EU', 'US'))",
        "CREATE PURPOSE 'Audit Prep' PARENT 'Fraud Detection' DESCRIPTION 'it''s for the auditors'",
        "CREATE ROW POLICY big_only ON sales.transactions USING amount > 100 FOR current_user() = 'quinn'",
    ] {
        run(&mut admin, sql).await;
    }
    let mut sally = engine.session("sally");
    for sql in [
        "CREATE PROJECT fraud DOCUMENTATION 'card fraud, 2026'",
        "ALTER PROJECT fraud ADD MEMBER bob",
        "ALTER PROJECT fraud ADD MEMBER quinn",
        "ALTER PROJECT fraud ADD DATA SOURCE sales.transactions",
        "ALTER PROJECT fraud ADD DATA SOURCE hr.employees",
        "ALTER PROJECT fraud ADD PURPOSE 'Fraud Detection'",
        "ALTER PROJECT fraud ADD PURPOSE 'Audit Prep'",
        "ALTER PROJECT fraud SET MASKED JOINS ON",
        "CREATE PROJECT eq",
        "ALTER PROJECT eq ADD MEMBER carol",
        "ALTER PROJECT eq ADD DATA SOURCE hr.employees",
        "ALTER PROJECT eq SET EQUALIZATION ON",
        "ALTER PROJECT eq ADD OWNER carol",
    ] {
        run(&mut sally, sql).await;
    }
    let mut pam = engine.session("pam");
    run(
        &mut pam,
        "APPROVE PURPOSE 'Fraud Detection' FOR PROJECT fraud",
    )
    .await;
    run(&mut pam, "DENY PURPOSE 'Audit Prep' FOR PROJECT fraud").await;

    let script = export_script(&engine.snapshot().unwrap());
    assert!(script.contains("PASSWORD HASH '$argon2id$"), "{script}");
    assert!(!script.contains("q''s pw") && !script.contains("bob-pw"));

    // A new catalog (its own admin), the script applied by `veil apply`.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Engine::open_with(fresh_dir.path(), &root(), EngineOptions::default()).unwrap();
    fresh
        .bootstrap_admin(Some("other-admin-pw".into()))
        .unwrap();
    let (applied, skipped) = apply_script(&mut fresh.session("admin"), &script)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    assert!(applied > 40, "{applied}");
    assert_eq!(skipped, 0);
    let again = export_script(&fresh.snapshot().unwrap());
    assert_eq!(body(&again), body(&script));
    // Same people, same passwords, same views of the data.
    assert!(fresh.authenticate("bob", "bob-pw").is_ok());
    assert!(fresh.authenticate("quinn", "q's pw").is_ok());
    assert!(fresh.authenticate("bob", "wrong").is_err());
    for (user, project, sql) in [
        (
            "bob",
            None,
            "SELECT count(*), count(ssn), min(salary), max(region) FROM hr.employees",
        ),
        ("quinn", None, "SELECT count(*) FROM sales.transactions"),
        (
            "carol",
            Some("eq"),
            "SELECT count(*), count(email) FROM hr.employees",
        ),
        (
            "bob",
            Some("fraud"),
            "SELECT count(*) FROM sales.transactions",
        ),
        ("dave", None, "SELECT count(*) FROM sales.transactions"),
        (
            "alice",
            None,
            "SELECT card_number FROM payments.cards ORDER BY card_id LIMIT 3",
        ),
        (
            "bob",
            None,
            "SELECT card_number FROM payments.cards ORDER BY card_id LIMIT 3",
        ),
    ] {
        let mut a = engine.session(user);
        let mut b = fresh.session(user);
        if let Some(p) = project {
            a.use_project(Some(p)).unwrap();
            b.use_project(Some(p)).unwrap();
        }
        assert_eq!(
            rows(&mut a, sql).await,
            rows(&mut b, sql).await,
            "{user}: {sql}"
        );
    }
    // The purpose is approved in the new catalog too; once bob
    // acknowledges it there (his own act, not in a script), he acts under
    // it and the transactions row policy is lifted for him.
    let mut bob = fresh.session("bob");
    bob.use_project(Some("fraud")).unwrap();
    run(
        &mut bob,
        "ACKNOWLEDGE PURPOSE 'Fraud Detection' FOR PROJECT fraud",
    )
    .await;
    assert_eq!(
        one(&mut bob, "SELECT count(*) FROM sales.transactions").await,
        "3000"
    );
    // admin is in neither project, and owns no source it did not own.
    let snap = fresh.snapshot().unwrap();
    assert!(!snap.projects["fraud"].members.contains("admin"));
    assert!(!snap.projects["eq"].members.contains("admin"));
    assert!(!snap.sources["payments.cards"].owners.contains("admin"));
    // Applied to a catalog that has governance already (the one it came
    // from, changed since), it is refused before it changes anything: a
    // replay would set back what changed after the export.
    let mut admin = engine.session("admin");
    run(
        &mut admin,
        "ALTER DATA SOURCE sales.transactions SET SUBSCRIPTION OWNERS ONLY",
    )
    .await;
    let version = engine.snapshot().unwrap().version;
    let e = apply_script(&mut admin, &script).await.unwrap_err();
    assert!(e.to_string().contains("new catalog"), "{e}");
    assert_eq!(engine.snapshot().unwrap().version, version);
    assert_eq!(
        engine.snapshot().unwrap().sources["sales.transactions"].subscription,
        veil_engine::model::Subscription::OwnersOnly
    );
}

/// `PASSWORD HASH` sets a stored hash as it is: only for USER_ADMIN, only
/// an argon2id hash (not a plaintext password, not another algorithm), and
/// never both a password and a hash.
#[tokio::test]
async fn a_password_hash_is_taken_only_from_user_admins_and_only_as_argon2id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    let hash = engine.snapshot().unwrap().users["bob"]
        .password_hash
        .clone()
        .unwrap();
    let mut bob = engine.session("bob");
    let e = common::err(&mut bob, &format!("CREATE USER eve PASSWORD HASH '{hash}'")).await;
    assert_eq!(e.kind(), veil_engine::ErrorKind::PermissionDenied, "{e}");
    let mut admin = engine.session("admin");
    for bad in [
        "CREATE USER eve PASSWORD HASH 'hunter2'".to_string(),
        format!(
            "CREATE USER eve PASSWORD HASH '{}'",
            hash.replace("argon2id", "argon2i")
        ),
        format!("CREATE USER eve PASSWORD 'x' PASSWORD HASH '{hash}'"),
    ] {
        let e = common::err(&mut admin, &bad).await;
        assert_eq!(
            e.kind(),
            veil_engine::ErrorKind::InvalidArgument,
            "{bad}: {e}"
        );
        assert!(
            !engine.snapshot().unwrap().users.contains_key("eve"),
            "{bad}"
        );
    }
    // bob's hash given to eve: eve logs in with bob's password, nothing else.
    run(
        &mut admin,
        &format!("CREATE USER eve PASSWORD HASH '{hash}'"),
    )
    .await;
    assert!(engine.authenticate("eve", "bob-pw").is_ok());
    assert!(engine.authenticate("eve", "hunter2").is_err());
}
