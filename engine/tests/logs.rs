//! Log scan: the adversarial queries of a masked, filtered user, logged at
//! DEBUG (DataFusion's plans included), never put a masked value, a hidden
//! row's value or a password into the logs, nor into the errors they get.

#![allow(clippy::unwrap_used)]

mod common;

use common::{demo, err, rows, Captured};
use veil_engine::EngineOptions;

#[tokio::test]
async fn debug_logs_hold_no_masked_value_hidden_row_or_password() {
    let logs = Captured::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || sink.clone())
        .try_init()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = demo(dir.path(), EngineOptions::default()).await;
    // What only HR may see: every SSN, e-mail and name, of every region.
    let mut alice = engine.session("alice");
    let secrets: Vec<String> = rows(&mut alice, "SELECT ssn, email, name FROM hr.employees")
        .await
        .into_iter()
        .flatten()
        .filter(|v| v != "NULL")
        .collect();
    assert!(secrets.len() > 600);
    // And the regions of the rows bob may not see.
    let mut bob = engine.session("bob");
    let visible: Vec<String> = rows(&mut bob, "SELECT DISTINCT region FROM hr.employees")
        .await
        .concat();
    let hidden: Vec<String> = rows(&mut alice, "SELECT DISTINCT region FROM hr.employees")
        .await
        .concat()
        .into_iter()
        .filter(|r| !visible.contains(r))
        .collect();
    assert!(!hidden.is_empty() && !visible.is_empty());
    logs.0.lock().unwrap().clear();

    let mut admin = engine.session("admin");
    for sql in [
        "CREATE USER zed PASSWORD 'zed-secret-pw-1' GROUPS ('staff')",
        "ALTER USER zed SET PASSWORD 'zed-new-pw-2'",
        "GRANT PERMISSION IMPERSONATE_USER TO admin",
    ] {
        rows(&mut admin, sql).await;
    }
    assert!(engine.authenticate("zed", "wrong-guess-pw-3").is_err());
    engine.authenticate("zed", "zed-new-pw-2").unwrap();
    let mut as_bob = engine.session("admin");
    as_bob.impersonate(Some("bob")).unwrap();
    // What the user is told when a statement fails, checked like the logs.
    let mut errors = Vec::new();
    for s in [&mut bob, &mut as_bob] {
        for sql in [
            "SELECT name, email, ssn FROM hr.employees",
            "SELECT * FROM hr.employees WHERE ssn LIKE '1%' OR email LIKE 'a%'",
            "SELECT e.name FROM hr.employees e JOIN hr.employees f ON e.email = f.email",
            "SELECT name FROM hr.employees WHERE email IN (SELECT email FROM hr.employees)",
            "SELECT min(email), max(name), count(DISTINCT ssn) FROM hr.employees",
            "SELECT name, rank() OVER (ORDER BY email) FROM hr.employees",
            "EXPLAIN VERBOSE SELECT * FROM hr.employees WHERE name > 'M'",
            "EXPLAIN ANALYZE SELECT * FROM hr.employees WHERE email > 'a'",
            "SELECT CAST(ssn AS INT) FROM hr.employees",
            "SELECT CAST(email AS BIGINT) FROM hr.employees",
            "SELECT 1 / (length(name) - length(name)) FROM hr.employees",
            "SHOW POLICY INFO FOR hr.employees",
            "SELECT * FROM hr.employees WHERE region <> 'US'",
            "SELECT to_timestamp(name) FROM hr.employees",
            "SELECT arrow_cast(email, 'Int64') FROM hr.employees",
            "SELECT * FROM hr.employees WHERE CAST(region AS INT) = 1",
            "SELECT * FROM hr.employees WHERE CAST(region AS INT) = 1 AND ssn IS NULL",
            "SELECT CAST(name AS DATE) FROM hr.employees ORDER BY email LIMIT 1",
        ] {
            let failed = match s.execute(sql).await {
                Ok(out) => out.collect().await.err(),
                Err(e) => Some(e),
            };
            errors.extend(failed.map(|e| format!("{sql}: {e}")));
        }
    }
    // A row policy that fails on the raw rows (an SSN does not parse as a
    // number): DataFusion's error quotes the value; the log must not.
    rows(
        &mut admin,
        "CREATE ROW POLICY ssn_cast ON hr.employees USING CAST(ssn AS INT) > 0 \
         UNLESS has_group('hr')",
    )
    .await;
    for sql in [
        "SELECT name FROM hr.employees",
        "SELECT e.name FROM hr.employees e JOIN hr.employees f ON e.email = f.email",
    ] {
        let e = err(&mut bob, sql).await;
        errors.push(format!("{sql}: {e}"));
        assert!(
            e.to_string()
                .contains("a row policy on hr.employees failed"),
            "{sql}: {e}"
        );
    }
    assert!(errors.len() >= 10, "the casts fail: {errors:?}");
    for e in &errors {
        for secret in &secrets {
            assert!(!e.contains(secret.as_str()), "'{secret}' in the error {e}");
        }
        // Short: only as a quoted value.
        for region in &hidden {
            assert!(
                !e.contains(&format!("'{region}'")),
                "'{region}' in the error {e}"
            );
        }
    }
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("DEBUG"), "debug logs were captured");
    assert!(text.contains("statement"), "statements are logged");
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "'{secret}' found in the logs"
        );
    }
    for password in [
        "zed-secret-pw-1",
        "zed-new-pw-2",
        "wrong-guess-pw-3",
        "admin-pw",
    ] {
        if let Some(i) = text.find(password) {
            panic!(
                "password {password} found in the logs: {}",
                &text[i.saturating_sub(600)..(i + 100).min(text.len())]
            );
        }
    }
}
