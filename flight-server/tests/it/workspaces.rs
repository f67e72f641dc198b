//! Workspaces over Flight SQL: ingest in each mode (and its refusals),
//! writes through statement update and prepared statements, a stream cut
//! off by the client, and derived-source lineage in SHOW DATA SOURCES.

use crate::common;

use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use common::harness::rows;
use common::{client, code_of, fetch, start};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use futures::StreamExt;
use tonic::transport::Channel;

type Client = FlightSqlServiceClient<Channel>;

async fn run(c: &mut Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let info = c.execute(sql.into(), None).await.map_err(code_of)?;
    Ok(rows(&fetch(c, info).await?))
}

async fn count(c: &mut Client, table: &str) -> String {
    run(c, &format!("SELECT count(*) FROM workspace.{table}"))
        .await
        .unwrap()[0][0]
        .clone()
}

fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("label", DataType::Utf8, true),
    ]));
    let labels: Vec<String> = ids.clone().map(|i| format!("row {i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
            Arc::new(StringArray::from(labels)),
        ],
    )
    .unwrap()
}

fn ingest_cmd(
    table: &str,
    if_not_exist: TableNotExistOption,
    if_exists: TableExistsOption,
) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_not_exist.into(),
            if_exists: if_exists.into(),
        }),
        table: table.into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    }
}

async fn ingest(
    c: &mut Client,
    cmd: CommandStatementIngest,
    batches: Vec<RecordBatch>,
) -> Result<i64, String> {
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    c.execute_ingest(cmd, stream).await.map_err(code_of)
}

use TableExistsOption as E;
use TableNotExistOption as N;

/// sally's project `name` over hr.employees, bob a member; bob's client is in it.
async fn setup(addr: std::net::SocketAddr, name: &str) -> (Client, Client) {
    let mut sally = client(addr, "sally", "sally-pw").await.unwrap();
    for sql in [
        format!("CREATE PROJECT {name}"),
        format!("ALTER PROJECT {name} ADD DATA SOURCE hr.employees"),
        format!("ALTER PROJECT {name} ADD MEMBER bob"),
    ] {
        run(&mut sally, &sql).await.unwrap();
    }
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    bob.set_header("x-veil-project", name);
    (sally, bob)
}

#[tokio::test]
async fn ingest_modes_and_their_refusals() {
    let server = start().await;
    let addr = server.handle.addr;
    let (_, mut bob) = setup(addr, "ing").await;

    // create
    assert_eq!(
        ingest(
            &mut bob,
            ingest_cmd("t", N::Create, E::Fail),
            vec![batch(0..3)]
        )
        .await,
        Ok(3)
    );
    let e = ingest(
        &mut bob,
        ingest_cmd("t", N::Create, E::Fail),
        vec![batch(0..3)],
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("already exists: ") && e.contains("workspace table t already exists"),
        "{e}"
    );
    // append
    assert_eq!(
        ingest(
            &mut bob,
            ingest_cmd("t", N::Fail, E::Append),
            vec![batch(3..5)]
        )
        .await,
        Ok(2)
    );
    assert_eq!(count(&mut bob, "t").await, "5");
    let e = ingest(
        &mut bob,
        ingest_cmd("missing", N::Fail, E::Append),
        vec![batch(0..1)],
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("not found: ") && e.contains("workspace table missing does not exist"),
        "{e}"
    );
    // replace
    assert_eq!(
        ingest(
            &mut bob,
            ingest_cmd("t", N::Create, E::Replace),
            vec![batch(10..11)]
        )
        .await,
        Ok(1)
    );
    assert_eq!(
        run(&mut bob, "SELECT id, label FROM workspace.t")
            .await
            .unwrap(),
        vec![vec!["10".to_string(), "row 10".to_string()]]
    );
    // create_append, on a missing then an existing table
    assert_eq!(
        ingest(
            &mut bob,
            ingest_cmd("ca", N::Create, E::Append),
            vec![batch(0..2)]
        )
        .await,
        Ok(2)
    );
    assert_eq!(
        ingest(
            &mut bob,
            ingest_cmd("ca", N::Create, E::Append),
            vec![batch(2..4), batch(4..6)]
        )
        .await,
        Ok(4)
    );
    assert_eq!(count(&mut bob, "ca").await, "6");

    // A schema that does not match the table: refused, nothing written.
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec!["a"]))],
    )
    .unwrap();
    let e = ingest(&mut bob, ingest_cmd("ca", N::Fail, E::Append), vec![other])
        .await
        .unwrap_err();
    assert!(
        e.contains("invalid argument: ") && e.contains("do not match workspace table ca"),
        "{e}"
    );
    assert_eq!(count(&mut bob, "ca").await, "6");

    // Names that could leave the workspace directory.
    for bad in ["../x", "a/b", "", "x.y", "ä"] {
        let e = ingest(
            &mut bob,
            ingest_cmd(bad, N::Create, E::Fail),
            vec![batch(0..1)],
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("invalid argument: ") && e.contains("is not valid"),
            "{bad}: {e}"
        );
    }
    // Only the workspace schema of the current project.
    let mut cmd = ingest_cmd("t2", N::Create, E::Fail);
    cmd.schema = Some("hr".into());
    let e = ingest(&mut bob, cmd, vec![batch(0..1)]).await.unwrap_err();
    assert!(
        e.contains("permission denied: ") && e.contains("only workspace is writable"),
        "{e}"
    );
    let mut cmd = ingest_cmd("t2", N::Create, E::Fail);
    cmd.catalog = Some("veil".into());
    let e = ingest(&mut bob, cmd, vec![batch(0..1)]).await.unwrap_err();
    assert!(e.contains("permission denied: "), "{e}");
    let mut cmd = ingest_cmd("t2", N::Create, E::Fail);
    cmd.schema = Some("workspace".into());
    cmd.catalog = Some("ing".into());
    assert_eq!(ingest(&mut bob, cmd, vec![batch(0..1)]).await, Ok(1));

    // Outside a project, and for a non-member, there is no workspace.
    let mut outside = client(addr, "bob", "bob-pw").await.unwrap();
    let e = ingest(
        &mut outside,
        ingest_cmd("t", N::Create, E::Fail),
        vec![batch(0..1)],
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("failed precondition: ") && e.contains("needs a project"),
        "{e}"
    );
    let mut carol = client(addr, "carol", "carol-pw").await.unwrap();
    carol.set_header("x-veil-project", "ing");
    let e = ingest(
        &mut carol,
        ingest_cmd("t", N::Create, E::Fail),
        vec![batch(0..1)],
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("permission denied: ") && e.contains("carol is not a member of project ing"),
        "{e}"
    );
}

/// A client that goes away mid-stream (its call is dropped, the HTTP/2
/// stream reset): the write fails and the table keeps exactly its committed
/// rows, with no file left behind.
#[tokio::test]
async fn a_stream_cut_midway_commits_nothing() {
    let server = start().await;
    let addr = server.handle.addr;
    let (_, mut bob) = setup(addr, "cut").await;
    ingest(
        &mut bob,
        ingest_cmd("t", N::Create, E::Fail),
        vec![batch(0..5)],
    )
    .await
    .unwrap();
    let warehouse = server._dir.path().join("warehouse");
    let before = parquet_files(&warehouse);
    for (table, mode) in [("t", (N::Fail, E::Append)), ("fresh", (N::Create, E::Fail))] {
        let mut c = client(addr, "bob", "bob-pw").await.unwrap();
        c.set_header("x-veil-project", "cut");
        let call = tokio::spawn(async move {
            let items =
                futures::stream::iter((0..20).map(|i| Ok(batch(i * 1000..i * 1000 + 1000))))
                    .chain(futures::stream::pending());
            c.execute_ingest(ingest_cmd(table, mode.0, mode.1), items)
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        call.abort();
        assert!(call.await.is_err(), "the call was cut");
    }
    // The server notices the reset and cleans up, staging directories too.
    let mut left = vec![];
    for _ in 0..100 {
        left = parquet_files(&warehouse);
        if left == before && staging_dirs(&warehouse).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, before, "no staged or promoted file remains");
    assert_eq!(staging_dirs(&warehouse), Vec::<std::path::PathBuf>::new());
    assert_eq!(count(&mut bob, "t").await, "5");
    let tables = run(&mut bob, "SHOW TABLES IN workspace").await.unwrap();
    assert_eq!(
        tables.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        vec!["t"]
    );
}

fn staging_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.ends_with("_staging") {
            out.push(p);
        } else if p.is_dir() {
            out.extend(staging_dirs(&p));
        }
    }
    out
}

fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Writes through the statement-update and prepared-statement paths report
/// the rows written; a derived source shows its kind and lineage.
#[tokio::test]
async fn writes_on_every_path_and_derived_lineage() {
    let server = start().await;
    let addr = server.handle.addr;
    let (mut sally, mut bob) = setup(addr, "paths").await;
    let n = bob
        .execute_update(
            "CREATE TABLE workspace.emp AS SELECT employee_id, email FROM hr.employees".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(n, 311);
    let mut prepared = bob
        .prepare(
            "INSERT INTO workspace.emp VALUES (-1, 'x'), (-2, 'y')".into(),
            None,
        )
        .await
        .unwrap();
    assert!(prepared.dataset_schema().unwrap().fields().is_empty());
    assert_eq!(prepared.execute_update().await.unwrap(), 2);
    assert_eq!(count(&mut bob, "emp").await, "313");
    // cursor.execute of a write: prepared query path, run at GetFlightInfo.
    let mut prepared = bob
        .prepare("DROP TABLE workspace.emp".into(), None)
        .await
        .unwrap();
    prepared.execute().await.unwrap();
    let e = run(&mut bob, "SELECT * FROM workspace.emp")
        .await
        .unwrap_err();
    assert!(e.contains("emp"), "{e}");

    run(
        &mut bob,
        "CREATE TABLE workspace.ids AS SELECT employee_id, email FROM hr.employees",
    )
    .await
    .unwrap();
    sally.set_header("x-veil-project", "paths");
    run(
        &mut sally,
        "CREATE DERIVED DATA SOURCE analytics.ids FROM WORKSPACE TABLE ids",
    )
    .await
    .unwrap();
    let mut outside = client(addr, "bob", "bob-pw").await.unwrap();
    let listed = run(&mut outside, "SHOW DATA SOURCES").await.unwrap();
    let derived = listed.iter().find(|r| r[0] == "analytics.ids").unwrap();
    assert_eq!(derived[1], "derived");
    assert_eq!(
        derived[6],
        "project paths workspace table ids version 1; parents hr.employees"
    );
    let parquet = listed.iter().find(|r| r[0] == "hr.employees").unwrap();
    assert_eq!(parquet[1], "parquet");
    assert_eq!(
        run(&mut outside, "SELECT count(*) FROM analytics.ids")
            .await
            .unwrap()[0][0],
        "311"
    );
    // Committed writes leave no staging directory behind.
    let warehouse = server._dir.path().join("warehouse");
    assert_eq!(staging_dirs(&warehouse), Vec::<std::path::PathBuf>::new());
}

/// A storage failure under a write is an internal error: the client gets an
/// incident id, not the warehouse's paths or the operating system's text;
/// the write leaves nothing and the project's other tables still read.
#[tokio::test]
async fn a_storage_failure_names_an_incident_not_the_warehouse() {
    let server = start().await;
    let (_sally, mut bob) = setup(server.handle.addr, "broken").await;
    run(
        &mut bob,
        "CREATE TABLE workspace.kept AS SELECT employee_id FROM hr.employees",
    )
    .await
    .unwrap();
    let warehouse = server._dir.path().join("warehouse");
    let kept = parquet_files(&warehouse)[0].clone();
    let project = kept.parent().unwrap().parent().unwrap();
    // The next table's directory cannot be made: a file holds its name.
    std::fs::write(project.join("next"), b"in the way").unwrap();
    let e = run(
        &mut bob,
        "CREATE TABLE workspace.next AS SELECT employee_id FROM hr.employees",
    )
    .await
    .unwrap_err();
    assert!(e.contains("Internal"), "{e}");
    assert!(e.contains("internal error, incident "), "{e}");
    let root = warehouse.to_string_lossy().into_owned();
    for hidden in [root.as_str(), "warehouse", "projects", "directory"] {
        assert!(!e.contains(hidden), "{hidden} in {e}");
    }
    // An administrator finds the whole error in the audit log under the
    // incident the client was given.
    let incident = e
        .split("internal error, incident ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_string();
    assert_eq!(incident.len(), 12, "{e}");
    let mut admin = client(server.handle.addr, "admin", "admin-pw")
        .await
        .unwrap();
    let record = run(
        &mut admin,
        &format!(
            "SELECT actor, outcome, detail FROM system.audit \
             WHERE detail LIKE '%\"incident\":\"{incident}\"%'"
        ),
    )
    .await
    .unwrap();
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!(record[0][..2], ["bob", "error"]);
    let detail: serde_json::Value = serde_json::from_str(&record[0][2]).unwrap();
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains(root.as_str()), "{error}");
    assert!(detail["sql"].as_str().unwrap().contains("workspace.next"));
    assert_eq!(count(&mut bob, "kept").await, "311");
    let e = run(&mut bob, "SELECT * FROM workspace.next")
        .await
        .unwrap_err();
    assert!(e.contains("next"), "{e}");
}

/// A statement bob planned over his own workspace table does not show him
/// what sally (hr, equalization off) later wrote into it: the prepared
/// handle, the ticket he got before and a new statement are all refused,
/// and no raw e-mail reaches him on any of them.
#[tokio::test]
async fn a_broader_members_overwrite_reaches_no_handle_of_another_member() {
    let server = start().await;
    let addr = server.handle.addr;
    let (mut sally, mut bob) = setup(addr, "reach").await;
    sally.set_header("x-veil-project", "reach");
    run(
        &mut bob,
        "CREATE TABLE workspace.t AS SELECT employee_id, email FROM hr.employees",
    )
    .await
    .unwrap();
    let sql = "SELECT email FROM workspace.t";
    let mut prepared = bob.prepare(sql.into(), None).await.unwrap();
    let ticketed = bob.execute(sql.into(), None).await.unwrap();
    let before = rows(&fetch(&mut bob, ticketed.clone()).await.unwrap());
    assert_eq!(before.len(), 311);
    assert!(before.iter().all(|r| !r[0].contains('@')));

    run(
        &mut sally,
        "INSERT OVERWRITE workspace.t SELECT employee_id, email FROM hr.employees",
    )
    .await
    .unwrap();
    assert!(run(&mut sally, sql).await.unwrap()[0][0].contains('@'));

    let check = |path: &str, e: String| {
        // tonic's text for PermissionDenied.
        assert!(e.contains("does not have permission"), "{path}: {e}");
        assert!(
            e.contains("bob may not read workspace table t"),
            "{path}: {e}"
        );
        assert!(!e.contains('@'), "{path}: {e}");
    };
    let e = match prepared.execute().await {
        Err(e) => e.to_string(),
        Ok(info) => fetch(&mut bob, info).await.unwrap_err(),
    };
    check("prepared", e);
    // The ticket is planned again at DoGet, against the current catalog.
    check("ticket", fetch(&mut bob, ticketed).await.unwrap_err());
    check("statement", run(&mut bob, sql).await.unwrap_err());
}

/// Sends `messages` as one DoPut and returns its status: the call's, or
/// the first answer's.
async fn put_status(c: &mut Client, messages: Vec<arrow_flight::FlightData>) -> tonic::Status {
    use arrow_flight::error::FlightError;
    let status = |e: FlightError| match e {
        FlightError::Tonic(s) => *s,
        other => panic!("not a status: {other}"),
    };
    match c.do_put(futures::stream::iter(messages)).await {
        Err(e) => status(e),
        Ok(mut answers) => match answers.next().await {
            Some(Err(s)) => s,
            other => panic!("the put was taken: {other:?}"),
        },
    }
}

/// `batch` as a DoPut's messages under `descriptor`, its record batch
/// message damaged by `damage`.
async fn damaged_put(
    descriptor: arrow_flight::FlightDescriptor,
    batch: RecordBatch,
    damage: fn(&mut arrow_flight::FlightData),
) -> Vec<arrow_flight::FlightData> {
    use futures::TryStreamExt;
    let mut messages: Vec<_> = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(batch)]))
        .try_collect()
        .await
        .unwrap();
    damage(messages.last_mut().unwrap());
    messages
}

/// Arrow IPC that does not decode, as ingested rows or as a prepared
/// statement's parameters, is the client's mistake: InvalidArgument, and
/// nothing is written. A record batch whose body is cut short made
/// arrow's IPC reader panic (its buffers are sliced out of the body
/// unchecked) and the client's stream was reset ("h2 protocol error",
/// Cancelled); a garbage header came back as Internal.
#[tokio::test]
async fn data_that_does_not_decode_is_the_clients_mistake() {
    use arrow_flight::sql::{
        ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
        CommandPreparedStatementQuery, ProstMessageExt,
    };
    use arrow_flight::{Action, FlightDescriptor};
    use prost::Message;
    let server = start().await;
    let (_, mut bob) = setup(server.handle.addr, "bad").await;
    ingest(
        &mut bob,
        ingest_cmd("t", N::Create, E::Fail),
        vec![batch(0..5)],
    )
    .await
    .unwrap();
    // The body cut off (the header still names its buffers), or the
    // header garbage.
    let cut: fn(&mut arrow_flight::FlightData) = |m| m.data_body = Default::default();
    let garbage: fn(&mut arrow_flight::FlightData) = |m| m.data_header = vec![7; 40].into();
    // Rows to ingest.
    let append = ingest_cmd("t", N::Fail, E::Append).as_any().encode_to_vec();
    for damage in [cut, garbage] {
        let descriptor = FlightDescriptor::new_cmd(append.clone());
        let messages = damaged_put(descriptor, batch(5..10), damage).await;
        let status = put_status(&mut bob, messages).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("cannot be decoded"), "{status:?}");
        assert_eq!(count(&mut bob, "t").await, "5");
    }
    // A prepared statement's parameters.
    let request = ActionCreatePreparedStatementRequest {
        query: "SELECT $1 + 1".into(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let mut answers = bob.do_action(action).await.unwrap();
    let body = answers.next().await.unwrap().unwrap().body;
    let created: ActionCreatePreparedStatementResult = arrow_flight::sql::Any::decode(body)
        .unwrap()
        .unpack()
        .unwrap()
        .unwrap();
    let query = CommandPreparedStatementQuery {
        prepared_statement_handle: created.prepared_statement_handle,
    };
    let params = RecordBatch::try_from_iter([(
        "p",
        Arc::new(Int64Array::from(vec![41])) as datafusion::arrow::array::ArrayRef,
    )])
    .unwrap();
    for damage in [cut, garbage] {
        let descriptor = FlightDescriptor::new_cmd(query.as_any().encode_to_vec());
        let messages = damaged_put(descriptor, params.clone(), damage).await;
        let status = put_status(&mut bob, messages).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("cannot be decoded"), "{status:?}");
    }
    // The session goes on.
    assert_eq!(count(&mut bob, "t").await, "5");
}
