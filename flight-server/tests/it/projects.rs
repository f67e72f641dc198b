//! Project context over Flight SQL: header, session option `catalog`, USE
//! PROJECT; prepared handles and tickets stay bound to the project they were
//! planned in and are re-checked when used; equalized members get identical
//! rows.

use crate::common;

use std::collections::HashMap;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::Action;
use common::harness::rows;
use common::{client, code_of, fetch, start};
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::Channel;
use veil_flight_server::service::session_options::{
    GetSessionOptionsResult, OptionValue, SessionOptionValue, SetSessionOptionsRequest,
    SetSessionOptionsResult,
};

type Client = FlightSqlServiceClient<Channel>;

/// Runs one statement (statement query path) and returns its rows.
async fn run(c: &mut Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let info = c.execute(sql.into(), None).await.map_err(code_of)?;
    Ok(rows(&fetch(c, info).await?))
}

async fn one(c: &mut Client, sql: &str) -> String {
    let r = run(c, sql).await.unwrap();
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r[0][0].clone()
}

/// sally's project `name` over transactions (and `extra` sources), with bob
/// as a member and 'Fraud Detection' approved by pam and acknowledged by bob.
async fn project_with_purpose(addr: std::net::SocketAddr, name: &str, extra: &[&str]) {
    let mut sally = client(addr, "sally", "sally-pw").await.unwrap();
    let mut stmts = vec![
        format!("CREATE PROJECT {name}"),
        format!("ALTER PROJECT {name} ADD DATA SOURCE sales.transactions"),
    ];
    stmts.extend(
        extra
            .iter()
            .map(|s| format!("ALTER PROJECT {name} ADD DATA SOURCE {s}")),
    );
    stmts.push(format!("ALTER PROJECT {name} ADD MEMBER bob"));
    stmts.push(format!(
        "ALTER PROJECT {name} ADD PURPOSE 'Fraud Detection'"
    ));
    for sql in stmts {
        run(&mut sally, &sql).await.unwrap();
    }
    let mut pam = client(addr, "pam", "pam-pw").await.unwrap();
    run(
        &mut pam,
        &format!("APPROVE PURPOSE 'Fraud Detection' FOR PROJECT {name}"),
    )
    .await
    .unwrap();
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    run(
        &mut bob,
        &format!("ACKNOWLEDGE PURPOSE 'Fraud Detection' FOR PROJECT {name}"),
    )
    .await
    .unwrap();
}

const REGIONS: &str = "SELECT count(DISTINCT region) FROM sales.transactions";

#[tokio::test]
async fn a_ticket_runs_in_its_project_and_is_rechecked_at_doget() {
    let s = start().await;
    project_with_purpose(s.handle.addr, "audit1", &[]).await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    run(&mut bob, "USE PROJECT audit1").await.unwrap();
    let info = bob.execute(REGIONS.into(), None).await.unwrap();
    // The session leaves the project; the ticket still runs where it was planned.
    run(&mut bob, "USE PROJECT NONE").await.unwrap();
    assert_eq!(one(&mut bob, REGIONS).await, "1");
    assert_eq!(rows(&fetch(&mut bob, info.clone()).await.unwrap()), [["3"]]);
    // Removed from the project: the same ticket is refused, no row comes out.
    let mut sally = client(s.handle.addr, "sally", "sally-pw").await.unwrap();
    run(&mut sally, "ALTER PROJECT audit1 REMOVE MEMBER bob")
        .await
        .unwrap();
    let err = fetch(&mut bob, info).await.unwrap_err();
    assert!(
        err.contains("permission denied: bob is not a member of project audit1"),
        "{err}"
    );
}

#[tokio::test]
async fn a_prepared_statement_keeps_the_project_it_was_prepared_in() {
    let s = start().await;
    project_with_purpose(s.handle.addr, "audit2", &[]).await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    run(&mut bob, "USE PROJECT audit2").await.unwrap();
    let mut prepared = bob.prepare(REGIONS.into(), None).await.unwrap();
    run(&mut bob, "USE PROJECT NONE").await.unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(rows(&fetch(&mut bob, info).await.unwrap()), [["3"]]);
    let mut outside = bob.prepare(REGIONS.into(), None).await.unwrap();
    let info = outside.execute().await.unwrap();
    assert_eq!(rows(&fetch(&mut bob, info).await.unwrap()), [["1"]]);
}

/// (catalog, schema.table) of every table GetTables lists.
async fn tables(c: &mut Client) -> Vec<(String, String)> {
    let info = c.get_tables(CommandGetTables::default()).await.unwrap();
    rows(&fetch(c, info).await.unwrap())
        .into_iter()
        .map(|r| (r[0].clone(), format!("{}.{}", r[1], r[2])))
        .collect()
}

#[tokio::test]
async fn the_project_is_set_by_header_by_session_option_and_by_use_project() {
    let s = start().await;
    project_with_purpose(s.handle.addr, "audit3", &["payments.cards"]).await;
    let in_project = vec![
        ("audit3".to_string(), "payments.cards".to_string()),
        ("audit3".to_string(), "sales.transactions".to_string()),
    ];

    // Header (ADBC: adbc.flight.sql.rpc.call_header.x-veil-project).
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    bob.set_header("x-veil-project", "audit3");
    assert_eq!(tables(&mut bob).await, in_project);
    assert_eq!(one(&mut bob, REGIONS).await, "3");
    let info = bob.get_catalogs().await.unwrap();
    let catalogs: Vec<String> = rows(&fetch(&mut bob, info).await.unwrap())
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(catalogs, ["audit3", "veil"]);

    // Session option `catalog` (ADBC adbc_current_catalog, JDBC catalog=).
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    assert_eq!(
        tables(&mut bob).await.len(),
        3,
        "outside: every subscribed source"
    );
    let errors = set_catalog(&mut bob, "audit3").await;
    assert!(errors.errors.is_empty(), "{errors:?}");
    assert_eq!(tables(&mut bob).await, in_project);
    assert_eq!(current_catalog(&mut bob).await, "audit3");
    let errors = set_catalog(&mut bob, "veil").await;
    assert!(errors.errors.is_empty(), "{errors:?}");
    assert_eq!(current_catalog(&mut bob).await, "veil");
    assert_eq!(one(&mut bob, REGIONS).await, "1");

    // USE PROJECT through the statement path.
    run(&mut bob, "USE PROJECT audit3").await.unwrap();
    assert_eq!(tables(&mut bob).await, in_project);
    let listed: Vec<String> = run(&mut bob, "SHOW DATA SOURCES")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(listed, ["payments.cards", "sales.transactions"]);

    // Non-members are refused on every path.
    let mut carol = client(s.handle.addr, "carol", "carol-pw").await.unwrap();
    let errors = set_catalog(&mut carol, "audit3").await;
    assert_eq!(errors.errors.len(), 1, "carol is not a member");
    assert_eq!(current_catalog(&mut carol).await, "veil");
    let err = run(&mut carol, "USE PROJECT audit3").await.unwrap_err();
    assert!(
        err.contains("carol is not a member of project audit3"),
        "{err}"
    );
    carol.set_header("x-veil-project", "audit3");
    let err = run(&mut carol, "SELECT 1").await.unwrap_err();
    assert!(
        err.contains("carol is not a member of project audit3"),
        "{err}"
    );
}

async fn set_catalog(c: &mut Client, catalog: &str) -> SetSessionOptionsResult {
    let req = SetSessionOptionsRequest {
        session_options: HashMap::from([(
            "catalog".to_string(),
            SessionOptionValue {
                option_value: Some(OptionValue::StringValue(catalog.into())),
            },
        )]),
    };
    let body = action(c, "SetSessionOptions", req.encode_to_vec()).await;
    SetSessionOptionsResult::decode(body.as_slice()).unwrap()
}

async fn current_catalog(c: &mut Client) -> String {
    let body = action(c, "GetSessionOptions", vec![]).await;
    let opts = GetSessionOptionsResult::decode(body.as_slice()).unwrap();
    match &opts.session_options["catalog"].option_value {
        Some(OptionValue::StringValue(s)) => s.clone(),
        other => panic!("{other:?}"),
    }
}

async fn action(c: &mut Client, kind: &str, body: Vec<u8>) -> Vec<u8> {
    let mut results = c
        .do_action(Action::new(kind, body))
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    results.remove(0).body.to_vec()
}

#[tokio::test]
async fn equalized_members_get_identical_rows_and_keep_their_own_view_outside() {
    let s = start().await;
    let mut sally = client(s.handle.addr, "sally", "sally-pw").await.unwrap();
    for sql in [
        "CREATE PROJECT eq1",
        "ALTER PROJECT eq1 ADD DATA SOURCE hr.employees",
        "ALTER PROJECT eq1 ADD DATA SOURCE payments.cards",
        "ALTER PROJECT eq1 ADD MEMBER bob",
        "ALTER PROJECT eq1 SET EQUALIZATION ON",
    ] {
        run(&mut sally, sql).await.unwrap();
    }
    let query = "SELECT e.employee_id, e.name, e.email, e.ssn, e.salary, c.card_number \
                 FROM hr.employees e JOIN payments.cards c ON c.employee_id = e.employee_id \
                 ORDER BY e.employee_id, c.card_id LIMIT 20";
    let outside = run(&mut sally, query).await.unwrap();
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    let bob_outside = run(&mut bob, query).await.unwrap();
    run(&mut sally, "USE PROJECT eq1").await.unwrap();
    run(&mut bob, "USE PROJECT eq1").await.unwrap();
    let sally_in = run(&mut sally, query).await.unwrap();
    let bob_in = run(&mut bob, query).await.unwrap();
    assert_eq!(sally_in.len(), 20);
    assert_eq!(sally_in, bob_in, "equalized members see the same rows");
    assert_ne!(
        sally_in, outside,
        "sally's clear view does not enter the project"
    );
    // The recommended entitlements are bob's own groups and region, so
    // inside he sees exactly what he sees outside.
    assert_eq!(bob_in, bob_outside);
    for row in &sally_in {
        assert_eq!(row[2].len(), 32, "email is a HASH token: {row:?}");
        assert_eq!(row[3], "NULL", "ssn is NULL: {row:?}");
        assert!(row[5].starts_with("************"), "card: {row:?}");
    }
    run(&mut sally, "USE PROJECT NONE").await.unwrap();
    assert_eq!(run(&mut sally, query).await.unwrap(), outside);
}
