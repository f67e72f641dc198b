//! Flight SQL over a real socket with the Rust Flight SQL client: the .slt
//! files through prepared statements, authentication, tickets, metadata.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, ProstMessageExt, TicketStatementQuery};
use arrow_flight::Ticket;
use async_trait::async_trait;
use common::harness::{self, Connector, Persona};
use common::{client, code_of, fetch, start};
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

struct FlightPersona(FlightSqlServiceClient<Channel>);

#[async_trait]
impl Persona for FlightPersona {
    async fn run(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        // The path ADBC's cursor.execute takes: prepare, then execute the handle.
        let mut prepared = self
            .0
            .prepare(sql.to_string(), None)
            .await
            .map_err(|e| e.to_string())?;
        let info = prepared.execute().await.map_err(|e| e.to_string())?;
        fetch(&mut self.0, info).await
    }
}

struct FlightConnector(SocketAddr);

#[async_trait]
impl Connector for FlightConnector {
    async fn connect(&self, user: &str) -> Result<Box<dyn Persona>, String> {
        Ok(Box::new(FlightPersona(
            client(self.0, user, &format!("{user}-pw")).await?,
        )))
    }
}

#[tokio::test]
async fn slt_over_flight_prepared_statements() {
    let s = start().await;
    harness::run_all(Arc::new(FlightConnector(s.handle.addr))).await;
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_unauthenticated() {
    let s = start().await;
    let e = client(s.handle.addr, "bob", "nope").await.err().unwrap();
    assert!(
        e.contains("Unauthenticated") || e.contains("unauthenticated"),
        "{e}"
    );
    let e = client(s.handle.addr, "nobody", "x").await.err().unwrap();
    assert!(e.contains("nauthenticated"), "{e}");
}

#[tokio::test]
async fn tickets_are_bound_to_their_user_and_signed() {
    let s = start().await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    let mut carol = client(s.handle.addr, "carol", "carol-pw").await.unwrap();
    let info = bob
        .execute("SELECT DISTINCT region FROM hr.employees".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    // Replayed by another user: refused, nothing of bob's rows comes out.
    let err = match carol.do_get(ticket.clone()).await {
        Err(e) => code_of(e),
        Ok(stream) => code_of(stream.try_collect::<Vec<_>>().await.expect_err("must fail")),
    };
    assert!(err.contains("another user"), "{err}");
    // A forged ticket fails verification.
    let forged = TicketStatementQuery {
        statement_handle: b"eyJleHAiOjk5OTk5OTk5OTl9.AAAA".to_vec().into(),
    };
    let err = match carol
        .do_get(Ticket::new(forged.as_any().encode_to_vec()))
        .await
    {
        Err(e) => code_of(e),
        Ok(stream) => code_of(stream.try_collect::<Vec<_>>().await.expect_err("must fail")),
    };
    assert!(err.contains("forged"), "{err}");
    // The owner can still use it, and the policy is applied at DoGet.
    let rows = harness::rows(&fetch(&mut bob, info).await.unwrap());
    assert_eq!(rows, vec![vec!["US".to_string()]]);
}

#[tokio::test]
async fn a_ticket_runs_under_the_policies_in_force_at_doget() {
    let s = start().await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    let mut admin = client(s.handle.addr, "admin", "admin-pw").await.unwrap();
    let sql = "SELECT DISTINCT region FROM hr.employees";
    // GetFlightInfo plans the query (and keeps the plan for its DoGet).
    let planned = bob.execute(sql.into(), None).await.unwrap();
    let fresh = bob.execute(sql.into(), None).await.unwrap();
    assert_eq!(
        harness::rows(&fetch(&mut bob, fresh).await.unwrap()),
        vec![vec!["US".to_string()]]
    );
    // bob's attribute changes between GetFlightInfo and DoGet: the DoGet
    // answers under the change, never with the plan made before it.
    let change = admin
        .execute("ALTER USER bob SET ATTRIBUTE region = ('EU')".into(), None)
        .await
        .unwrap();
    fetch(&mut admin, change).await.unwrap();
    assert_eq!(
        harness::rows(&fetch(&mut bob, planned).await.unwrap()),
        vec![vec!["EU".to_string()]]
    );
}

#[tokio::test]
async fn metadata_lists_only_subscribed_sources() {
    let s = start().await;
    let mut dave = client(s.handle.addr, "dave", "dave-pw").await.unwrap();
    let info = dave
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let rows = harness::rows(&fetch(&mut dave, info).await.unwrap());
    let names: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(names, vec!["transactions"]);
    let mut alice = client(s.handle.addr, "alice", "alice-pw").await.unwrap();
    let info = alice.get_tables(CommandGetTables::default()).await.unwrap();
    assert_eq!(
        fetch(&mut alice, info)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        3
    );
    let info = alice.get_catalogs().await.unwrap();
    assert_eq!(
        harness::rows(&fetch(&mut alice, info).await.unwrap()),
        vec![vec!["veil".to_string()]]
    );
}

#[tokio::test]
async fn errors_carry_the_right_codes() {
    let s = start().await;
    let mut dave = client(s.handle.addr, "dave", "dave-pw").await.unwrap();
    let cases = [
        ("SELECT * FROM hr.employees", Code::PermissionDenied),
        ("SELEC nonsense", Code::InvalidArgument),
        ("CREATE USER x PASSWORD 'y'", Code::PermissionDenied),
        ("SELECT * FROM nope.nothing", Code::NotFound),
        // The user's mistakes under DataFusion's context layers are theirs,
        // not the server's: a pattern compiled while planning, a bad
        // literal folded by the optimizer.
        ("SELECT 'a' ~ '('", Code::InvalidArgument),
        ("SELECT CAST('abc' AS DECIMAL(10,2))", Code::InvalidArgument),
    ];
    for (sql, code) in cases {
        let err = dave.execute(sql.into(), None).await.expect_err(sql);
        let status = match err {
            arrow_flight::error::FlightError::Tonic(s) => *s,
            other => panic!("{sql}: {other}"),
        };
        assert_eq!(status.code(), code, "{sql}: {}", status.message());
    }
    // Statement update runs governance statements.
    let mut admin = client(s.handle.addr, "admin", "admin-pw").await.unwrap();
    admin
        .execute_update("CREATE USER erin PASSWORD 'erin-pw'".into(), None)
        .await
        .unwrap();
    client(s.handle.addr, "erin", "erin-pw").await.unwrap();
    let err = admin
        .execute_update("CREATE USER erin".into(), None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[tokio::test]
async fn impersonation_needs_the_permission_and_evaluates_as_the_target() {
    let s = start().await;
    let mut admin = client(s.handle.addr, "admin", "admin-pw").await.unwrap();
    admin.set_header("x-veil-impersonate", "bob");
    let info = admin
        .execute("SELECT DISTINCT region FROM hr.employees".into(), None)
        .await
        .unwrap();
    assert_eq!(
        harness::rows(&fetch(&mut admin, info).await.unwrap()),
        vec![vec!["US".to_string()]]
    );
    // Impersonating bob never grants admin's rights beyond bob's.
    let err = admin
        .execute("CREATE USER zed".into(), None)
        .await
        .expect_err("bob lacks USER_ADMIN");
    assert!(
        err.to_string().contains("bob lacks permission USER_ADMIN"),
        "{err}"
    );
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    bob.set_header("x-veil-impersonate", "alice");
    let err = bob
        .execute("SELECT 1".into(), None)
        .await
        .expect_err("bob may not impersonate");
    assert!(err.to_string().contains("IMPERSONATE_USER"), "{err}");
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_clear_errors() {
    let s = start().await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    // A ticket that is not a protobuf message at all.
    let err = match bob.do_get(Ticket::new(vec![0xff, 0x01, 0x02])).await {
        Err(e) => e.to_string(),
        Ok(stream) => stream
            .try_collect::<Vec<_>>()
            .await
            .expect_err("must fail")
            .to_string(),
    };
    assert!(
        err.contains("InvalidArgument") || err.contains("invalid"),
        "{err}"
    );
    // A message over the server's 64 MiB limit.
    let huge = format!("SELECT '{}'", "x".repeat(65 * 1024 * 1024));
    let err = bob.execute(huge, None).await.expect_err("too large");
    let status = match err {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("{other}"),
    };
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    // The server is still healthy.
    let info = bob.execute("SELECT 1 AS one".into(), None).await.unwrap();
    assert_eq!(
        harness::rows(&fetch(&mut bob, info).await.unwrap()),
        vec![vec!["1".to_string()]]
    );
}

#[tokio::test]
async fn doget_schema_equals_flightinfo_schema() {
    let s = start().await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    for sql in [
        "SELECT * FROM hr.employees",
        "SELECT email, count(*) AS n FROM hr.employees GROUP BY email",
        "SELECT * FROM payments.cards c JOIN sales.transactions t ON c.card_id = t.card_id",
        "SHOW POLICIES",
    ] {
        let info = bob.execute(sql.into(), None).await.unwrap();
        let announced = info.clone().try_decode_schema().unwrap();
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let mut stream = bob.do_get(ticket).await.unwrap();
        while stream.try_next().await.unwrap().is_some() {}
        let streamed = stream.schema().cloned().unwrap();
        assert_eq!(announced.fields(), streamed.fields(), "{sql}");
    }
}

#[tokio::test]
async fn info_type_and_key_metadata_use_the_spec_schemas() {
    use arrow_flight::sql::{CommandGetPrimaryKeys, CommandGetXdbcTypeInfo, SqlInfo};
    let s = start().await;
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    let info = bob
        .get_sql_info(vec![SqlInfo::FlightSqlServerName])
        .await
        .unwrap();
    let batches = fetch(&mut bob, info).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(batches[0].schema().field(0).name(), "info_name");
    let info = bob.get_table_types().await.unwrap();
    assert_eq!(
        harness::rows(&fetch(&mut bob, info).await.unwrap()),
        vec![vec!["TABLE".to_string()]]
    );
    let info = bob
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    assert!(
        fetch(&mut bob, info)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
            >= 5
    );
    let info = bob
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("hr".into()),
            table: "employees".into(),
        })
        .await
        .unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    let names: Vec<_> = announced
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "catalog_name",
            "db_schema_name",
            "table_name",
            "column_name",
            "key_name",
            "key_sequence"
        ]
    );
    assert_eq!(
        fetch(&mut bob, info)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        0
    );
}

/// The schema `GetTables` announces for each visible table, by name.
async fn announced_schemas(
    c: &mut FlightSqlServiceClient<Channel>,
) -> Vec<(String, datafusion::arrow::datatypes::Schema)> {
    use datafusion::arrow::array::{AsArray, BinaryArray};
    use datafusion::arrow::ipc::convert::try_schema_from_ipc_buffer;
    let info = c
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = vec![];
    for batch in fetch(c, info).await.unwrap() {
        let schemas = batch.column(4).as_any().downcast_ref::<BinaryArray>();
        let schemas = schemas.unwrap();
        let dbs = batch.column(1).as_string::<i32>();
        let names = batch.column(2).as_string::<i32>();
        for i in 0..batch.num_rows() {
            let name = format!("{}.{}", dbs.value(i), names.value(i));
            out.push((name, try_schema_from_ipc_buffer(schemas.value(i)).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn metadata_reports_the_masked_types_a_query_returns() {
    let s = start().await;
    for user in ["alice", "bob", "dave"] {
        let mut c = client(s.handle.addr, user, &format!("{user}-pw"))
            .await
            .unwrap();
        let tables = announced_schemas(&mut c).await;
        assert!(!tables.is_empty(), "{user} sees no table");
        for (name, announced) in tables {
            let info = c
                .execute(format!("SELECT * FROM {name}"), None)
                .await
                .unwrap();
            let returned = info.clone().try_decode_schema().unwrap();
            let types = |s: &datafusion::arrow::datatypes::Schema| {
                s.fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(types(&announced), types(&returned), "{user}: {name}");
            // The rows come in the announced types, and no view type
            // reaches the client (JDBC cannot read them).
            for batch in fetch(&mut c, info).await.unwrap() {
                assert_eq!(types(&batch.schema()), types(&returned), "{user}: {name}");
            }
            let views = format!("{:?}", returned.fields());
            assert!(!views.contains("View"), "{user}: {name}: {views}");
            // A prepared statement announces the same types.
            let prepared = c
                .prepare(format!("SELECT * FROM {name}"), None)
                .await
                .unwrap();
            let dataset = prepared.dataset_schema().unwrap();
            assert_eq!(types(dataset), types(&returned), "{user}: {name} prepared");
        }
    }
    // SHOW_LAST turns bob's card numbers into plain strings; alice's
    // clearance leaves the stored Utf8View in the engine, which reaches
    // clients as Utf8 like every view type. information_schema reports
    // the engine's types.
    let card_type = |tables: &[(String, datafusion::arrow::datatypes::Schema)]| {
        let (_, schema) = tables.iter().find(|(n, _)| n == "payments.cards").unwrap();
        schema
            .field_with_name("card_number")
            .unwrap()
            .data_type()
            .clone()
    };
    let mut bob = client(s.handle.addr, "bob", "bob-pw").await.unwrap();
    let mut alice = client(s.handle.addr, "alice", "alice-pw").await.unwrap();
    let (bobs, alices) = (
        card_type(&announced_schemas(&mut bob).await),
        card_type(&announced_schemas(&mut alice).await),
    );
    assert_eq!(bobs, datafusion::arrow::datatypes::DataType::Utf8);
    assert_eq!(alices, bobs);
    let sql = "SELECT data_type FROM information_schema.columns \
               WHERE table_name = 'cards' AND column_name = 'card_number'";
    for (c, expected) in [(&mut bob, "Utf8"), (&mut alice, "Utf8View")] {
        let info = c.execute(sql.into(), None).await.unwrap();
        let rows = harness::rows(&fetch(c, info).await.unwrap());
        assert_eq!(rows, vec![vec![expected.to_string()]]);
    }
}
