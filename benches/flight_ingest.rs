//! Flight SQL ingest throughput: a 1 GB Arrow stream (by in-memory size)
//! ingested over loopback into a project workspace with the Rust Flight SQL
//! client, as ADBC `adbc_ingest` does.
//!
//! `cargo bench -p veil-flight-server --bench flight_ingest` (median of 3;
//! `VEIL_BENCH_MB` changes the size).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use tonic::transport::Channel;
use veil_engine::{Engine, EngineOptions};

fn batch(start: i64, rows: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + rows).collect();
    let text: Vec<String> = ids.iter().map(|i| format!("{i:0>100}")).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "amount",
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64 / 3.0),
            )),
        ),
        ("text", Arc::new(StringArray::from(text))),
    ])
    .expect("batch")
}

fn main() {
    let mb: usize = std::env::var("VEIL_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    rt.block_on(async {
        let options = EngineOptions {
            workspace_max_bytes: None,
            release_delay: Duration::ZERO,
            ..Default::default()
        };
        let engine = Engine::open_with(dir.path(), &root, options).expect("engine");
        engine.bootstrap_admin(Some("pw".into())).expect("admin");
        engine
            .session("admin")
            .execute("CREATE PROJECT bench")
            .await
            .expect("project");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = veil_flight_server::serve(engine, listener).expect("serve");
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = FlightSqlServiceClient::new(channel);
        client.handshake("admin", "pw").await.expect("login");
        client.set_header("x-veil-project", "bench");

        let one = batch(0, 65_536);
        let batch_bytes = one.get_array_memory_size();
        let count = (mb << 20) / batch_bytes;
        let total = (count * batch_bytes) as f64;
        let mut times = vec![];
        for _ in 0..3 {
            let cmd = CommandStatementIngest {
                table_definition_options: Some(TableDefinitionOptions {
                    if_not_exist: TableNotExistOption::Create.into(),
                    if_exists: TableExistsOption::Replace.into(),
                }),
                table: "ingested".into(),
                ..Default::default()
            };
            let stream = futures::stream::iter((0..count).map({
                let one = one.clone();
                move |_| Ok(one.clone())
            }));
            let t = Instant::now();
            let n = client.execute_ingest(cmd, stream).await.expect("ingest");
            times.push(t.elapsed());
            assert_eq!(n as usize, count * one.num_rows());
        }
        times.sort();
        let d = times[1];
        println!(
            "ingest of {:.0} MB ({} rows) over Flight SQL: median {:.2} s, {:.0} MB/s",
            total / 1048576.0,
            count * one.num_rows(),
            d.as_secs_f64(),
            total / 1048576.0 / d.as_secs_f64()
        );
        server.shutdown().await.expect("shutdown");
    });
}
