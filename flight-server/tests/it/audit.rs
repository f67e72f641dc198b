//! Over Flight SQL: the impersonation matrix and what the audit log shows
//! of it, VERIFY AUDIT, and the Prometheus endpoint.

use crate::common;

use common::{client, fetch, harness, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn query(
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<Vec<Vec<String>>, String> {
    let info = c
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(harness::rows(&fetch(c, info).await?))
}

#[tokio::test]
async fn impersonation_matrix_and_its_audit_trail() {
    let s = start().await;
    let addr = s.handle.addr;
    let mut sally = client(addr, "sally", "sally-pw").await.unwrap();
    for sql in [
        "CREATE PROJECT imp",
        "ALTER PROJECT imp ADD DATA SOURCE hr.employees",
        "ALTER PROJECT imp ADD MEMBER bob",
    ] {
        query(&mut sally, sql).await.unwrap();
    }

    // Permitted: admin as bob, inside bob's project, sees bob's rows.
    let mut admin = client(addr, "admin", "admin-pw").await.unwrap();
    admin.set_header("x-veil-impersonate", "bob");
    admin.set_header("x-veil-project", "imp");
    assert_eq!(
        query(&mut admin, "SELECT DISTINCT region FROM hr.employees")
            .await
            .unwrap(),
        [["US"]]
    );
    // Refused: carol is not a member of imp, so admin-as-carol cannot enter.
    let mut as_carol = client(addr, "admin", "admin-pw").await.unwrap();
    as_carol.set_header("x-veil-impersonate", "carol");
    as_carol.set_header("x-veil-project", "imp");
    let e = query(&mut as_carol, "SELECT 1").await.unwrap_err();
    assert!(e.contains("carol is not a member of project imp"), "{e}");
    // Refused: bob lacks IMPERSONATE_USER.
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    bob.set_header("x-veil-impersonate", "alice");
    let e = query(&mut bob, "SELECT 1").await.unwrap_err();
    assert!(
        e.contains("PermissionDenied") || e.contains("permission denied"),
        "{e}"
    );
    assert!(e.contains("bob lacks permission IMPERSONATE_USER"), "{e}");

    // The audit log names both identities.
    let mut auditor = client(addr, "admin", "admin-pw").await.unwrap();
    let trail = query(
        &mut auditor,
        "SELECT actor, impersonated, project, action, outcome, object FROM system.audit \
         WHERE impersonated IS NOT NULL AND action IN ('Query', 'Impersonate') ORDER BY id",
    )
    .await
    .unwrap();
    let has = |row: [&str; 6]| trail.iter().any(|r| r == &row);
    assert!(
        has(["admin", "bob", "imp", "Query", "ok", "hr.employees"]),
        "{trail:?}"
    );
    assert!(
        has(["admin", "bob", "NULL", "Impersonate", "ok", "bob"]),
        "{trail:?}"
    );
    assert!(
        has(["bob", "alice", "NULL", "Impersonate", "error", "alice"]),
        "{trail:?}"
    );
    // bob cannot read the trail, not even through a prepared statement.
    let mut plain_bob = client(addr, "bob", "bob-pw").await.unwrap();
    let e = plain_bob
        .prepare("SELECT * FROM system.audit".into(), None)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("bob lacks permission AUDIT"), "{e}");
    assert_eq!(
        query(&mut auditor, "VERIFY AUDIT").await.unwrap()[0][0],
        "ok"
    );
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test]
async fn metrics_count_statements_errors_rows_and_sessions() {
    let s = start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    veil_flight_server::server::serve_metrics(s.engine.clone(), listener);
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    let got = query(&mut bob, "SELECT name FROM hr.employees")
        .await
        .unwrap();
    query(&mut bob, "SELECT * FROM system.audit")
        .await
        .unwrap_err();
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    };
    assert!(value("veil_statements_total{kind=\"query\",outcome=\"ok\"}") >= 1.0);
    assert!(value("veil_errors_total{code=\"PermissionDenied\"}") >= 1.0);
    assert!(value("veil_rows_served_total") >= got.len() as f64);
    assert!(value("veil_active_sessions") >= 1.0);
    assert!(value("veil_policy_evaluation_seconds_count") >= 1.0);
    // The query's record was durable before its answer: at least one group
    // commit, carrying at least one record each, each one timed.
    let commits = value("veil_audit_group_commits_total");
    assert!(commits >= 1.0, "{text}");
    assert!(value("veil_audit_group_commit_records_total") >= commits);
    assert!(value("veil_audit_group_commit_seconds_count") >= 1.0);
    // Nothing runs between statements: no slot held, no query memory in use.
    assert_eq!(value("veil_statements_running"), 0.0);
    assert_eq!(value("veil_query_memory_bytes"), 0.0);
    // Labels carry codes and kinds only: no SQL, no user names, no values.
    assert!(!text.contains("bob") && !text.contains("hr.employees"));
    assert!(http_get(metrics_addr, "/other").await.contains("404"));
}
