//! Production hardening over a real socket: TLS and mTLS handshakes with
//! generated certificates, memory / concurrency / time limits, session
//! revocation and login back-off.

use crate::common;

use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::HandshakeRequest;
use common::{client, query, rows, start, start_with};
use datafusion::arrow::array::Int64Array;
use futures::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use veil_engine::limits::Limits;
use veil_engine::login::ThrottlePolicy;
use veil_engine::EngineOptions;
use veil_flight_server::tls::{DevCert, TlsFiles, DEV_HOSTS};

/// How the client prints the two codes these tests expect.
const EXHAUSTED: &str = "Some resource has been exhausted";
const PRECONDITION: &str = "The system is not in a state required for the operation";
const UNAUTHENTICATED: &str = "The request does not have valid authentication credentials";

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    DevCert {
        out: dir.path().to_path_buf(),
        hosts: DEV_HOSTS.iter().map(|h| h.to_string()).collect(),
        clients: vec!["alice".into(), "mallory".into()],
        force: false,
    }
    .write()
    .unwrap();
    dir
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    dir: &std::path::Path,
    identity: Option<&str>,
) -> Result<Channel, String> {
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(user) = identity {
        let cert = std::fs::read(dir.join(format!("{user}.pem"))).unwrap();
        let key = std::fs::read(dir.join(format!("{user}-key.pem"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Engine options with `limits`.
fn with_limits(limits: Limits) -> EngineOptions {
    EngineOptions {
        limits,
        ..Default::default()
    }
}

/// A demo server whose statements time out after 500 ms.
async fn half_second_timeout() -> common::Server {
    let limits = Limits {
        query_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    start_with(with_limits(limits), None).await
}

/// Engine options with a statement memory share of `bytes`.
fn with_query_memory(bytes: usize) -> EngineOptions {
    with_limits(Limits {
        query_memory: bytes,
        ..Limits::default()
    })
}

fn count(batches: &[datafusion::arrow::array::RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn tls_serves_governed_queries_and_refuses_plaintext() {
    let dir = certs();
    let files = TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server-key.pem"),
        client_ca: None,
    };
    let server = start_with(
        EngineOptions::default(),
        Some(files.server_config().unwrap()),
    )
    .await;
    let addr = server.handle.addr;

    let channel = tls_channel(addr, dir.path(), None).await.unwrap();
    let mut bob = FlightSqlServiceClient::new(channel);
    bob.handshake("bob", "bob-pw").await.unwrap();
    let batches = query(&mut bob, "SELECT DISTINCT region FROM sales.transactions")
        .await
        .unwrap();
    assert_eq!(rows(&batches), 1, "row policy applies over TLS too");

    // A plaintext client gets nowhere.
    let plain = client(addr, "bob", "bob-pw").await;
    assert!(plain.is_err(), "plaintext handshake against a TLS server");

    // A client that does not trust the server's CA fails the handshake.
    let other = certs();
    assert!(tls_channel(addr, other.path(), None).await.is_err());
}

#[tokio::test]
async fn mtls_needs_a_client_certificate_and_it_names_the_user() {
    let dir = certs();
    let files = TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server-key.pem"),
        client_ca: Some(dir.path().join("ca.pem")),
    };
    let server = start_with(
        EngineOptions::default(),
        Some(files.server_config().unwrap()),
    )
    .await;
    let addr = server.handle.addr;

    // Without a certificate the TLS handshake (or the first call) fails.
    let refused = match tls_channel(addr, dir.path(), None).await {
        Err(_) => true,
        Ok(ch) => FlightSqlServiceClient::new(ch)
            .handshake("bob", "bob-pw")
            .await
            .is_err(),
    };
    assert!(refused, "mTLS server accepted a client without certificate");

    // alice's certificate logs alice in without a password.
    let channel = tls_channel(addr, dir.path(), Some("alice")).await.unwrap();
    let response = FlightServiceClient::new(channel.clone())
        .handshake(futures::stream::iter(vec![HandshakeRequest::default()]))
        .await
        .unwrap();
    let bearer = response
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut alice = FlightSqlServiceClient::new(channel.clone());
    alice.set_token(bearer.trim_start_matches("Bearer ").to_string());
    let all = query(&mut alice, "SELECT DISTINCT region FROM sales.transactions")
        .await
        .unwrap();
    assert!(rows(&all) >= 2, "alice (three regions) sees more than one");

    // ... but cannot log in as bob, even with bob's password.
    let as_bob = FlightSqlServiceClient::new(channel)
        .handshake("bob", "bob-pw")
        .await
        .unwrap_err()
        .to_string();
    assert!(as_bob.contains("cannot log in as bob"), "{as_bob}");

    // mallory has a valid certificate but is no Veil user.
    let channel = tls_channel(addr, dir.path(), Some("mallory"))
        .await
        .unwrap();
    let err = FlightServiceClient::new(channel)
        .handshake(futures::stream::iter(vec![HandshakeRequest::default()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("mallory"), "{}", err.message());
}

#[tokio::test]
async fn a_query_over_its_memory_share_fails_cleanly_while_another_runs() {
    let server = start_with(with_query_memory(4 << 20), None).await;
    let addr = server.handle.addr;
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    let mut carol = client(addr, "carol", "carol-pw").await.unwrap();

    // A hash join's build side cannot spill: 2M keys need far more than 4 MiB.
    let big = "SELECT count(*) FROM generate_series(1, 2000000) a \
               JOIN generate_series(1, 2000000) b ON a.value = b.value";
    let small = "SELECT count(*) FROM sales.transactions";
    let (big, small) = tokio::join!(query(&mut bob, big), query(&mut carol, small));
    let err = big.unwrap_err();
    assert!(err.contains(EXHAUSTED), "{err}");
    assert!(
        err.contains("query memory limit of 4.0 MiB exceeded"),
        "{err}"
    );
    assert!(count(&small.unwrap()) > 0);

    // The server is healthy and the memory came back.
    assert!(all_memory_back(&server.engine).await);
    let again = query(&mut bob, "SELECT count(*) FROM sales.transactions")
        .await
        .unwrap();
    assert!(count(&again) > 0);
    // A sort spills instead of failing: same share, bigger than it.
    let sorted = query(
        &mut bob,
        "SELECT value FROM generate_series(1, 1000000) ORDER BY value DESC LIMIT 1 OFFSET 10",
    )
    .await;
    assert!(sorted.is_ok(), "{sorted:?}");
}

/// A value grown by naming it many times: `s || s || s || s` over a CTE
/// whose `s` is the same over another CTE grows four times per level, and
/// took the server down (a 3 GB allocation aborted it) in a dozen levels of
/// SQL. Every function's arguments and each operand of `||` are held to the
/// statement's `query_memory`: the statement fails alone with
/// RESOURCE_EXHAUSTED, the server serves on, and `||` answers as before.
#[tokio::test]
async fn values_grown_by_repetition_are_held_to_the_memory_share() {
    let server = start_with(with_query_memory(16 << 20), None).await;
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    // Levels of a CTE chain, each `step` over the one before.
    let chain = |base: &str, step: &str, levels: usize, measure: &str| {
        let mut ctes = vec![format!("a0 AS (SELECT {base} AS s)")];
        for i in 1..=levels {
            ctes.push(format!("a{i} AS (SELECT {step} AS s FROM a{})", i - 1));
        }
        format!(
            "WITH {} SELECT {measure}(s) FROM a{levels}",
            ctes.join(", ")
        )
    };
    let text = "repeat('x', 100000)";
    let large = "arrow_cast(repeat('x', 100000), 'LargeUtf8')";
    let view = "arrow_cast(repeat('x', 100000), 'Utf8View')";
    let list = "make_array(1, 2, 3, 4, 5, 6, 7, 8)";
    let bombs = [
        (chain(text, "s||s||s||s", 12, "length"), "an operand of ||"),
        (chain(large, "s||s||s||s", 12, "length"), "an operand of ||"),
        (
            chain(view, "concat(s, s, s, s)", 12, "length"),
            "the arguments of concat",
        ),
        (
            chain(large, "encode(s, 'hex')", 24, "length"),
            "the arguments of encode",
        ),
        // `||` of lists is array_concat.
        (
            chain(list, "s||s||s||s", 16, "cardinality"),
            "the arguments of array_concat",
        ),
        (
            chain(list, "flatten(make_array(s, s, s, s))", 16, "cardinality"),
            "the arguments of make_array",
        ),
        // A NULL of a fixed-size type takes its width in every row.
        (
            "SELECT arrow_cast(NULL, 'FixedSizeBinary(60000)') FROM hr.employees".to_string(),
            "a constant of 58.6 KiB copied to the 8192 rows of a batch",
        ),
        // Over a governed table's rows, in a filter.
        (
            "WITH a AS (SELECT repeat(name, 1000) AS s FROM hr.employees), \
             b AS (SELECT s||s||s||s||s||s||s||s AS s FROM a), \
             c AS (SELECT s||s||s||s||s||s||s||s AS s FROM b) \
             SELECT count(*) FROM c WHERE length(s||s||s||s) > 0"
                .to_string(),
            "an operand of ||",
        ),
    ];
    for (sql, what) in bombs {
        let e = query(&mut bob, &sql).await.unwrap_err();
        assert!(e.contains(EXHAUSTED), "{sql:.80}: {e:.300}");
        assert!(
            e.contains(&format!("{what} would take"))
                && e.contains("(16.0 MiB, the query_memory setting)"),
            "{sql:.80}: {e:.300}"
        );
        assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
    }
    assert!(all_memory_back(&server.engine).await);

    // `||` and functions answer as before, under their usual names.
    let same = query(
        &mut bob,
        "SELECT count(*) FROM hr.employees \
         WHERE name || '-' || email = concat(name, '-', email)",
    )
    .await
    .unwrap();
    let not_null = query(
        &mut bob,
        "SELECT count(*) FROM hr.employees WHERE name IS NOT NULL AND email IS NOT NULL",
    )
    .await
    .unwrap();
    assert!(count(&not_null) > 0);
    assert_eq!(count(&same), count(&not_null));
    let named = query(
        &mut bob,
        "SELECT upper(name) || 'x' FROM hr.employees LIMIT 1",
    )
    .await
    .unwrap();
    assert_eq!(
        named[0].schema().field(0).name(),
        "upper(hr.employees.name) || Utf8(\"x\")"
    );
    // Three levels of the first chain stay under 16 MiB.
    let fits = query(&mut bob, &chain(text, "s||s||s||s", 3, "length"))
        .await
        .unwrap();
    let lengths = fits[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int32Array>()
        .unwrap();
    assert_eq!(lengths.value(0), 100_000 * 4_i32.pow(3));
}

/// A window function returns one value per row, and a value can hold its
/// whole frame or be copied to every row of its partition: a running
/// `array_agg` over two million rows aborted the server (a 1.9 GB
/// allocation), `max(s) OVER ()` copies the largest string to every row.
/// Their values are charged to the statement's `query_memory`: the
/// statement fails alone with RESOURCE_EXHAUSTED, and windows of ordinary
/// size answer.
#[tokio::test]
async fn window_values_are_held_to_the_memory_share() {
    let server = start_with(with_query_memory(64 << 20), None).await;
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    // One 4 MB string among 20,000 rows, computed per row (not a constant).
    let one_big =
        "SELECT value AS v, repeat('z', CASE WHEN value = 1 THEN 4000000 ELSE 1 END) AS s \
                   FROM generate_series(1, 20000)";
    let bombs = [
        (
            "SELECT max(cardinality(a)) FROM (SELECT array_agg(value) OVER (ORDER BY value) AS a \
             FROM generate_series(1, 100000))"
                .to_string(),
            "array_agg",
        ),
        (
            "SELECT max(cardinality(a)) FROM (SELECT array_agg(value) OVER () AS a \
             FROM generate_series(1, 100000))"
                .to_string(),
            "array_agg",
        ),
        (
            "SELECT max(length(a)) FROM (SELECT string_agg(CAST(value AS VARCHAR), ',') \
             OVER (PARTITION BY value % 10) AS a FROM generate_series(1, 100000))"
                .to_string(),
            "string_agg",
        ),
        (
            format!("SELECT max(length(a)) FROM (SELECT max(s) OVER () AS a FROM ({one_big}))"),
            "max",
        ),
        (
            format!(
                "SELECT max(length(a)) FROM \
                 (SELECT first_value(s) OVER (ORDER BY v) AS a FROM ({one_big}))"
            ),
            "first_value",
        ),
    ];
    for (sql, function) in bombs {
        let e = query(&mut bob, &sql).await.unwrap_err();
        assert!(e.contains(EXHAUSTED), "{sql:.80}: {e:.300}");
        assert!(
            e.contains(&format!(
                "the values of {function} over a window would take"
            )) && e.contains("(64.0 MiB, the query_memory setting)"),
            "{sql:.80}: {e:.300}"
        );
        assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
    }
    // A FILTER over a whole partition: its value is copied to rows it
    // does not read, which the charge cannot count.
    let e = query(
        &mut bob,
        "SELECT array_agg(value) FILTER (WHERE value < 10) OVER () FROM generate_series(1, 10)",
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("array_agg with FILTER over a whole partition"),
        "{e:.300}"
    );
    assert!(all_memory_back(&server.engine).await);

    // Windows of ordinary size answer, over many rows and a governed table.
    let sliding = query(
        &mut bob,
        "SELECT CAST(sum(cardinality(a)) AS BIGINT) FROM (SELECT array_agg(value) \
         OVER (ORDER BY value ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS a \
         FROM generate_series(1, 100000))",
    )
    .await
    .unwrap();
    assert_eq!(count(&sliding), 3 * 100_000 - 3);
    let per_region = query(
        &mut bob,
        "SELECT count(*) FROM (SELECT cardinality(array_agg(name) OVER (PARTITION BY region)) \
         AS n, count(*) OVER (PARTITION BY region) AS c FROM hr.employees) WHERE n = c",
    )
    .await
    .unwrap();
    let all = query(&mut bob, "SELECT count(*) FROM hr.employees")
        .await
        .unwrap();
    assert!(count(&all) > 0);
    assert_eq!(count(&per_region), count(&all));
}

/// Spilling is held to the `spill` limit across all statements: a sort that
/// must spill more than it fails with RESOURCE_EXHAUSTED, its spill files
/// are gone, and the same sort that fits in memory still answers. Without
/// a limit one user could fill the disk that holds the catalog and audit.
#[tokio::test]
async fn spilling_past_the_spill_limit_fails_the_statement_alone() {
    let options = EngineOptions {
        limits: Limits {
            query_memory: 32 << 20,
            spill: 1 << 20,
            ..Limits::default()
        },
        ..Default::default()
    };
    let server = start_with(options, None).await;
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    // The whole sort (no LIMIT, which DataFusion runs as a top-k in memory).
    let sorted = "SELECT value FROM generate_series(1, 10000000) ORDER BY value DESC";
    let err = query(&mut bob, sorted).await.unwrap_err();
    assert!(err.contains(EXHAUSTED), "{err}");
    assert!(
        err.contains("exceeded the allowable limit of 1024.0 KB"),
        "{err}"
    );
    // The same over a data source: the limit, not the source's files.
    let over_source = "SELECT value, n FROM generate_series(1, 10000000) \
                       CROSS JOIN (SELECT count(*) AS n FROM hr.employees) e ORDER BY value DESC";
    let err = query(&mut bob, over_source).await.unwrap_err();
    assert!(err.contains(EXHAUSTED), "{err}");
    assert!(!err.contains("cannot be read"), "{err}");
    // Nothing is left spilled and the server serves on.
    assert!(all_memory_back(&server.engine).await);
    let small = "SELECT value FROM generate_series(1, 10000) ORDER BY value DESC LIMIT 1";
    assert_eq!(rows(&query(&mut bob, small).await.unwrap()), 1);
}

#[tokio::test]
async fn slots_per_user_queue_and_time_out_and_a_dropped_stream_frees_its_slot() {
    let options = EngineOptions {
        limits: Limits {
            max_queries: 4,
            max_queries_per_user: 1,
            queue_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..Default::default()
    };
    let server = start_with(options, None).await;
    let addr = server.handle.addr;
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    let mut bob2 = client(addr, "bob", "bob-pw").await.unwrap();
    let mut carol = client(addr, "carol", "carol-pw").await.unwrap();

    // bob starts a long stream and reads only its first batch.
    let info = bob
        .execute(
            "SELECT value FROM generate_series(1, 50000000)".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = bob.do_get(ticket).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());

    // A second statement of bob's waits for the slot, then is refused.
    let err = query(&mut bob2, "SELECT 1").await.unwrap_err();
    assert!(err.contains(EXHAUSTED), "{err}");
    assert!(err.contains("bob already runs 1 statements"), "{err}");
    // carol is not held up by bob.
    assert_eq!(rows(&query(&mut carol, "SELECT 1").await.unwrap()), 1);

    // Dropping the stream cancels the query and frees bob's slot.
    drop(stream);
    assert!(
        all_slots_freed(&server.engine).await,
        "the cancelled query still holds its slot"
    );
    assert_eq!(rows(&query(&mut bob2, "SELECT 1").await.unwrap()), 1);
}

#[tokio::test]
async fn a_statement_past_the_query_timeout_is_cancelled() {
    let server = half_second_timeout().await;
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    let err = query(
        &mut bob,
        "SELECT sum(value % 7) FROM generate_series(1, 100000000000)",
    )
    .await
    .unwrap_err();
    assert!(err.contains(EXHAUSTED), "{err}");
    assert!(err.contains("query timeout (500ms)"), "{err}");
    assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
    assert_eq!(server.engine.admission().running(), 0);

    // A join turns each batch it reads into many it emits without reading
    // again, so the task running it never gave up its thread: this ran on
    // past the timeout (44 s in a debug build) and after its client hung
    // up. Joins yield between batches (`yielding.rs`): the timeout fires on
    // this runtime of one thread, shared with the client.
    let started = std::time::Instant::now();
    let err = query(
        &mut bob,
        "SELECT count(*) FROM generate_series(1, 400000) a CROSS JOIN generate_series(1, 400000) b",
    )
    .await
    .unwrap_err();
    assert!(err.contains("query timeout (500ms)"), "{err}");
    assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(server.engine.admission().running(), 0);

    // Planning counts too. A join of 100 relations takes seconds to plan
    // (planning time grows as the cube of the join count); planned on the
    // runtime that serves the network, it held a thread and no timeout
    // applied to it. Planning runs on the engine's executor and within the
    // timeout (executor.rs, Session::admitted).
    let joins: String = (1..100)
        .map(|i| {
            format!(
                " JOIN generate_series(1, 2) a{i} ON a{}.value = a{i}.value",
                i - 1
            )
        })
        .collect();
    let many = format!("SELECT count(*) FROM generate_series(1, 2) a0{joins}");
    let err = query(&mut bob, &many).await.unwrap_err();
    assert!(err.contains("query timeout (500ms)"), "{err}");
    assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
}

/// Whether `done` holds within five seconds: a stopped statement's tasks
/// on the engine's executor release their slots and memory as they stop.
async fn soon(done: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether every admission slot is free within five seconds.
async fn all_slots_freed(engine: &veil_engine::Engine) -> bool {
    soon(|| engine.admission().running() == 0).await
}

/// Whether all statement memory is back within five seconds.
async fn all_memory_back(engine: &veil_engine::Engine) -> bool {
    soon(|| engine.admission().memory().used() == 0).await
}

/// A nested-loop join that emits nothing: one poll compares the whole
/// left (build) side with each right batch, each right batch in turn.
const RUNAWAY_JOIN: &str = "SELECT count(*) FROM generate_series(1, 200000) a \
    JOIN generate_series(1, 2000000) b ON a.value + b.value < 0";

#[tokio::test]
async fn a_runaway_join_stops_at_the_deadline_or_when_its_client_hangs_up() {
    // One per thread of the engine's executor: before statements ran there
    // and join conditions checked their interrupt (executor.rs,
    // interrupt.rs), these held every worker thread for as long as the
    // join ran (minutes), whatever the timeout, and the server accepted
    // no connection meanwhile.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = half_second_timeout().await;
    let mut clients = Vec::new();
    for _ in 0..threads {
        clients.push(client(server.handle.addr, "bob", "bob-pw").await.unwrap());
    }
    let started = std::time::Instant::now();
    let runs = clients.iter_mut().map(|c| query(c, RUNAWAY_JOIN));
    for result in futures::future::join_all(runs).await {
        let err = result.unwrap_err();
        assert!(err.contains("query timeout (500ms)"), "{err}");
    }
    // The joins stopped: the next statement finds a thread in time.
    assert_eq!(rows(&query(&mut clients[0], "SELECT 1").await.unwrap()), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(server.engine.admission().running(), 0);

    // With the default (one hour) timeout, clients that hang up.
    let server = start_with(EngineOptions::default(), None).await;
    let addr = server.handle.addr;
    let mut clients = Vec::new();
    for _ in 0..threads {
        clients.push(client(addr, "bob", "bob-pw").await.unwrap());
    }
    let runs = futures::future::join_all(clients.iter_mut().map(|c| query(c, RUNAWAY_JOIN)));
    // While they run, the server accepts a connection; then they hang up.
    let connect = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        client(addr, "carol", "carol-pw").await
    };
    let mut carol = tokio::select! {
        _ = runs => panic!("the joins finished before the client hung up"),
        carol = connect => carol.unwrap(),
    };
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), query(&mut carol, "SELECT 1")).await;
    assert_eq!(rows(&answer.expect("no thread freed").unwrap()), 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        all_slots_freed(&server.engine).await,
        "the abandoned joins still hold their slots"
    );
}

/// A nested-loop join whose probe batches each take a debug build about a
/// second (2,000 build rows each), and whose probe side has 24,000 of them.
const ENDLESS_JOIN: &str = "SELECT count(*) FROM generate_series(1, 2000) a \
    JOIN generate_series(1, 200000000) b ON a.value + b.value < 0";

/// Runs `join` from one client of bob's per core (inside `project`, which
/// sally creates with bob as its member, when given), waits `settle`, then
/// carol's `statement`, which must answer within `limit` while the joins
/// run; carol's answer, and the server. The joins stop once their clients
/// hang up.
async fn carol_behind_joins(
    project: Option<&str>,
    join: &str,
    settle: Duration,
    statement: &str,
    limit: Duration,
) -> (i64, common::Server) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = start_with(EngineOptions::default(), None).await;
    let addr = server.handle.addr;
    if let Some(name) = project {
        let mut sally = client(addr, "sally", "sally-pw").await.unwrap();
        for sql in [
            format!("CREATE PROJECT {name}"),
            format!("ALTER PROJECT {name} ADD MEMBER bob"),
        ] {
            query(&mut sally, &sql).await.unwrap();
        }
    }
    let mut carol = client(addr, "carol", "carol-pw").await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..threads {
        let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
        if let Some(name) = project {
            bob.set_header("x-veil-project", name);
        }
        clients.push(bob);
    }
    let runs = futures::future::join_all(clients.iter_mut().map(|c| query(c, join)));
    let others = async {
        tokio::time::sleep(settle).await;
        tokio::time::timeout(limit, query(&mut carol, statement)).await
    };
    let answer = tokio::select! {
        _ = runs => panic!("the joins finished"),
        answer = others => answer,
    };
    let answer = answer.expect("carol's statement waited for the joins");
    let answer = count(&answer.unwrap());
    // The joins' clients hung up (dropped here): they stop.
    drop(clients);
    assert!(
        all_slots_freed(&server.engine).await,
        "the abandoned joins still hold their slots"
    );
    (answer, server)
}

#[tokio::test]
async fn a_runaway_join_shares_the_executor_with_other_statements() {
    // Before joins gave up their thread when a poll ran long
    // (timeslice.rs), these held every executor thread until they ended
    // (hours) or hit the timeout (an hour by default): every other
    // statement waited that long.
    let (answer, _server) = carol_behind_joins(
        None,
        ENDLESS_JOIN,
        Duration::from_secs(2), // once the joins hold the threads
        "SELECT count(*) FROM generate_series(1, 100000)",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(answer, 100000);
}

#[tokio::test]
async fn a_statement_needing_many_turns_gets_them_behind_runaway_joins() {
    // Each of these joins gives its thread up only between probe batches
    // (5,000 x 8,192 condition evaluations, about 2 s in a debug build).
    // Carol's sum hands about 120 batches between its partitions: at one
    // turn per probe batch it took minutes. The joins' statements have run
    // long, so while hers runs they keep to all threads but one
    // (turns.rs).
    let (answer, _server) = carol_behind_joins(
        None,
        HEAVY_JOIN,
        heavy_join_settle(),
        MANY_TURNS,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(answer, 250_000_500_000);
}

/// A nested-loop join giving its thread up only between probe batches of
/// 5,000 x 8,192 condition evaluations (about 2 s in a debug build).
const HEAVY_JOIN: &str = "SELECT count(*) FROM generate_series(1, 5000) a \
    JOIN generate_series(1, 200000000) b ON a.value + b.value < 0";

/// A statement that hands about 120 batches between its partitions.
const MANY_TURNS: &str = "SELECT sum(value) FROM generate_series(1, 1000000) WHERE value % 2 = 0";

/// Until every partition of one [`HEAVY_JOIN`] per core has run a probe
/// batch (the first is not held back: nothing tells yet that it runs long).
fn heavy_join_settle() -> Duration {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    Duration::from_secs(3 * u64::try_from(threads).unwrap_or(2))
}

#[tokio::test]
async fn a_workspace_write_that_has_run_long_gives_way_too() {
    // A CREATE TABLE AS runs on the executor under its own turn (in the
    // write's session config): its join turns it heavy like a query's.
    let ctas = format!("CREATE TABLE workspace.joined AS {HEAVY_JOIN}");
    let (answer, server) = carol_behind_joins(
        Some("heavy"),
        &ctas,
        heavy_join_settle(),
        MANY_TURNS,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(answer, 250_000_500_000);
    // The writes stopped with their clients and left no table behind.
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    bob.set_header("x-veil-project", "heavy");
    let err = query(&mut bob, "SELECT count(*) FROM workspace.joined")
        .await
        .unwrap_err();
    assert!(err.contains("joined"), "{err}");
}

#[tokio::test]
async fn a_flood_of_logins_does_not_hold_up_running_sessions() {
    // A password check is argon2: tens of milliseconds of CPU. Checked on
    // the threads that serve the network, 32 logins at once held up every
    // session behind them; they are checked off those threads, one per
    // core at a time (auth.rs).
    const LOGINS: usize = 32;
    let server = start().await;
    let addr = server.handle.addr;
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let logins = futures::future::join_all((0..LOGINS).map(|_| async {
        let c = client(addr, "carol", "carol-pw").await;
        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        c
    }));
    let answer = async {
        // Once the logins are under way.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = query(&mut bob, "SELECT 1").await;
        (answer, done.load(std::sync::atomic::Ordering::SeqCst))
    };
    let (logins, (answer, finished_before)) = tokio::join!(logins, answer);
    assert_eq!(rows(&answer.unwrap()), 1);
    assert!(logins.iter().all(Result::is_ok));
    assert!(
        finished_before < LOGINS / 2,
        "bob waited for {finished_before} of {LOGINS} logins"
    );
}

#[tokio::test]
async fn revocation_ends_open_sessions_and_other_changes_apply_at_once() {
    let server = start_with(EngineOptions::default(), None).await;
    let addr = server.handle.addr;
    let mut admin = client(addr, "admin", "admin-pw").await.unwrap();
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    let mut carol = client(addr, "carol", "carol-pw").await.unwrap();
    let mut dave = client(addr, "dave", "dave-pw").await.unwrap();
    let regions = "SELECT DISTINCT region FROM sales.transactions";
    assert_eq!(rows(&query(&mut bob, regions).await.unwrap()), 1);

    // An attribute change applies to bob's next statement, same session.
    query(
        &mut admin,
        "ALTER USER bob SET ATTRIBUTE region = ('US', 'EU')",
    )
    .await
    .unwrap();
    assert_eq!(rows(&query(&mut bob, regions).await.unwrap()), 2);
    // A grant does too, without a new login.
    query(&mut admin, "GRANT PERMISSION AUDIT TO bob")
        .await
        .unwrap();
    query(&mut bob, "SELECT count(*) FROM system.audit")
        .await
        .unwrap();
    // A revocation ends the session.
    query(&mut admin, "REVOKE PERMISSION AUDIT FROM bob")
        .await
        .unwrap();
    let err = query(&mut bob, "SELECT 1").await.unwrap_err();
    assert!(err.contains(UNAUTHENTICATED), "{err}");
    assert!(err.contains("permission AUDIT of bob was revoked"), "{err}");
    client(addr, "bob", "bob-pw").await.unwrap();

    query(&mut admin, "ALTER USER carol SET PASSWORD 'carol-new'")
        .await
        .unwrap();
    let err = query(&mut carol, "SELECT 1").await.unwrap_err();
    assert!(err.contains("password of carol changed"), "{err}");
    assert!(client(addr, "carol", "carol-pw").await.is_err());
    client(addr, "carol", "carol-new").await.unwrap();

    query(&mut admin, "DROP USER dave").await.unwrap();
    let err = query(&mut dave, "SELECT 1").await.unwrap_err();
    assert!(err.contains(UNAUTHENTICATED), "{err}");
    assert!(err.contains("dave no longer exists"), "{err}");
}

#[tokio::test]
async fn failed_logins_back_off_per_user_and_address_and_are_audited() {
    let options = EngineOptions {
        login: ThrottlePolicy {
            free_attempts: 2,
            backoff: Duration::from_millis(800),
            max_backoff: Duration::from_secs(2),
            ..ThrottlePolicy::default()
        },
        ..Default::default()
    };
    let server = start_with(options, None).await;
    let addr = server.handle.addr;
    for _ in 0..3 {
        let e = client(addr, "bob", "guess").await.unwrap_err();
        assert!(e.contains("invalid user name or password"), "{e}");
    }
    // Now even the right password waits, and so does this address.
    let e = client(addr, "bob", "bob-pw").await.unwrap_err();
    assert!(e.contains(EXHAUSTED), "{e}");
    assert!(
        e.contains("too many failed logins for 'bob' or from 127.0.0.1"),
        "{e}"
    );
    assert!(client(addr, "carol", "carol-pw").await.is_err());

    tokio::time::sleep(Duration::from_millis(900)).await;
    client(addr, "bob", "bob-pw").await.unwrap();
    let mut admin = client(addr, "admin", "admin-pw").await.unwrap();
    let throttled = query(
        &mut admin,
        "SELECT count(*) FROM system.audit WHERE action = 'Authenticate' \
         AND outcome = 'error' AND detail LIKE '%\"throttled\":true%'",
    )
    .await
    .unwrap();
    assert_eq!(count(&throttled), 2, "bob's and carol's refused attempts");
    let failed = query(
        &mut admin,
        "SELECT count(*) FROM system.audit WHERE action = 'Authenticate' \
         AND detail LIKE '%\"client\":\"127.0.0.1\"%' AND outcome = 'error'",
    )
    .await
    .unwrap();
    assert_eq!(count(&failed), 5);
}

#[tokio::test]
async fn a_data_source_with_deleted_or_corrupted_files_fails_alone() {
    let server = start_with(EngineOptions::default(), None).await;
    let addr = server.handle.addr;
    let files = tempfile::tempdir().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["gone", "bad"] {
        std::fs::create_dir(files.path().join(name)).unwrap();
        std::fs::copy(
            root.join("testdata/sales/transactions.parquet"),
            files.path().join(name).join("part-0.parquet"),
        )
        .unwrap();
    }
    let mut admin = client(addr, "admin", "admin-pw").await.unwrap();
    for name in ["gone", "bad"] {
        let dir = files.path().join(name);
        for sql in [
            format!(
                "CREATE DATA SOURCE faults.{name} FROM PARQUET '{}/'",
                dir.display()
            ),
            format!("ALTER DATA SOURCE faults.{name} SET SUBSCRIPTION ANYONE"),
        ] {
            query(&mut admin, &sql).await.unwrap();
        }
    }
    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    let before = query(&mut bob, "SELECT count(*) FROM faults.bad")
        .await
        .unwrap();
    assert!(count(&before) > 0);

    std::fs::remove_file(files.path().join("gone/part-0.parquet")).unwrap();
    std::fs::write(
        files.path().join("bad/part-0.parquet"),
        b"PAR1 this is not a parquet file any more PAR1",
    )
    .unwrap();

    // Once while the directory listings may still be the cached ones (the
    // old file sizes: reads past the end), once after they expire (the new
    // sizes: the garbage footer names more metadata than the file holds,
    // which panics inside parquet in debug builds).
    for pass in ["cached", "listed again"] {
        for (name, sql) in [
            ("gone", "SELECT count(*) FROM faults.gone"),
            ("bad", "SELECT * FROM faults.bad"),
        ] {
            let err = query(&mut bob, sql).await.unwrap_err();
            assert!(err.contains(PRECONDITION), "{pass}: {err}");
            assert!(
                err.contains(&format!("data source faults.{name} cannot be read")),
                "{pass}: {err}"
            );
            assert!(
                !err.contains("part-0.parquet"),
                "no storage path to users: {err}"
            );
        }
        tokio::time::sleep(veil_engine::engine::LISTING_TTL + Duration::from_millis(200)).await;
    }
    // Every other source answers as before.
    let fine = query(&mut bob, "SELECT count(*) FROM sales.transactions")
        .await
        .unwrap();
    assert!(count(&fine) > 0);
    let joined = query(
        &mut bob,
        "SELECT count(*) FROM sales.transactions t JOIN faults.bad b ON t.region = b.region",
    )
    .await
    .unwrap_err();
    assert!(joined.contains("faults.bad"), "{joined}");
}

/// Statements built to make sqlparser 0.62 take exponential time, overflow
/// its stack or build a tree too deep to drop: each is refused at once
/// with InvalidArgument (prepared and direct), the server keeps serving,
/// and the refusal is audited like any failed statement.
#[tokio::test]
async fn parser_bombs_are_refused_and_the_server_keeps_serving() {
    let server = start_with(EngineOptions::default(), None).await;
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    let bombs = [
        // Days of backtracking without the step budget.
        (
            format!("SELECT {}", "x-not-b.".repeat(30)),
            "too complex to parse",
        ),
        (
            format!("SELECT {}x", "if(current_time(".repeat(30)),
            "too complex to parse",
        ),
        // Padding raised the budget and made every step skip it: 7 s in a
        // release build before whitespace runs were compacted.
        (
            format!("SELECT {}{}", "cast(".repeat(30), " /* */ ".repeat(2_400)),
            "too complex to parse",
        ),
        // Each would abort the server with a stack overflow.
        (
            format!("SELECT {}1", "interval ".repeat(20_000)),
            "nests too deeply",
        ),
        (
            format!("SELECT 1 FROM {}t", "(".repeat(20_000)),
            "more than 64 deep",
        ),
        (
            format!("SELECT {}", vec!["1"; 300_000].join("+")),
            "more than 2048 operators",
        ),
        // A name chain (the fuzzer's find).
        (format!("SELECT a{}", ".b".repeat(40)), "more than 16 '.'"),
        // A chain of set operations as deep as it is long: 40,000 overflowed
        // the planner's stack and aborted the server.
        (
            format!("SELECT {}1", "1 UNION ALL SELECT ".repeat(40_000)),
            "more than 1024 UNION, INTERSECT and EXCEPT",
        ),
        // Thousands of tables, joined or chained through CTEs: minutes of
        // planning and gigabytes of schemas.
        (
            format!(
                "SELECT count(*) FROM {}",
                (0..5_000)
                    .map(|i| format!("sales.transactions t{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "more than 128 tables",
        ),
        (
            format!(
                "WITH a0 AS (SELECT 1 AS x), {} SELECT * FROM a19999",
                (1..20_000)
                    .map(|i| format!("a{i} AS (SELECT x FROM a{})", i - 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "more than 128 tables",
        ),
        // A NULL of a fixed-size type holds its whole width: 8 GB
        // allocated while planning aborted the server.
        (
            "SELECT arrow_typeof(arrow_cast(NULL, 'FixedSizeList(1000000000, Int64)'))".into(),
            "takes 8000000000 bytes per value, more than 65536",
        ),
        (
            "SELECT arrow_try_cast(NULL, 'List(FixedSizeBinary(2000000000))') FROM sales.transactions"
                .into(),
            "takes 2000000000 bytes per value",
        ),
        // Text over the limit: refused before tokenizing.
        (
            format!("SELECT '{}'", "x".repeat(3 << 20)),
            "at most 1048576 are accepted",
        ),
    ];
    for (sql, why) in &bombs {
        let started = std::time::Instant::now();
        let e = query(&mut bob, sql).await.unwrap_err();
        assert!(
            e.contains("invalid argument: ") && e.contains(why),
            "{sql:.40}: {e}"
        );
        let e = bob
            .execute(sql.clone(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{sql:.40}: {e}");
        // Refused, not ground through: generous for a debug build.
        assert!(started.elapsed() < Duration::from_secs(10), "{sql:.40}");
        assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
    }
    // An error that quotes a long statement arrives whole, cut to 4 KiB.
    let long = format!(
        "CREATE USER x PASSWORD 'p' GROUPS ({}",
        "'g',".repeat(100_000)
    );
    let e = query(&mut bob, &long).await.unwrap_err();
    assert!(e.contains("invalid argument: syntax error"), "{e:.200}");
    assert!(
        e.contains("(message truncated)") && e.len() < 8192,
        "{}",
        e.len()
    );
    let refused = server
        .engine
        .store()
        .audit_records(&Default::default())
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.entry.actor == "bob"
                && r.entry.outcome == "error"
                && r.entry.detail.contains("too complex")
        })
        .count();
    assert!(refused >= 4, "{refused} audited refusals");
    // The audit keeps the first MiB of an oversized text and its length.
    let records = server
        .engine
        .store()
        .audit_records(&Default::default())
        .unwrap();
    let big = records
        .iter()
        .find(|r| r.entry.detail.contains("bytes in all"))
        .expect("the oversized statement's record");
    assert!(
        big.entry.detail.len() < (1 << 20) + 4096,
        "{}",
        big.entry.detail.len()
    );
    assert!(big
        .entry
        .detail
        .contains(&format!("({} bytes in all)", 3 * (1 << 20) + 9)));
}

/// Functions whose output an argument sizes (a series, a repeat, a pad, a
/// replacement of the empty string) used to take the server down: one
/// `generate_series(1, 1e13)` allocated until the kernel killed the
/// process. Each is now refused with RESOURCE_EXHAUSTED naming the function
/// and the `query_memory` share before anything is built, a 35-column
/// `CUBE` is refused before DataFusion lists its 2^35 grouping sets, a
/// session cannot `SET` a batch size every operator would allocate for at
/// once, the server keeps serving, and the same functions at ordinary
/// sizes answer.
#[tokio::test]
async fn functions_that_size_their_output_are_held_to_the_memory_share() {
    let server = start_with(EngineOptions::default(), None).await;
    let mut bob = client(server.handle.addr, "bob", "bob-pw").await.unwrap();
    let x = "x".repeat(100_000);
    let bombs = [
        (
            "SELECT generate_series(1, 10000000000000)",
            "generate_series",
        ),
        ("SELECT cardinality(range(10000000000000))", "range"),
        (
            "SELECT generate_series(TIMESTAMP '2000-01-01', TIMESTAMP '2100-01-01', \
             INTERVAL '1 nanosecond')",
            "generate_series",
        ),
        (
            "SELECT generate_series(DATE '2000-01-01', DATE '9000-01-01', INTERVAL '1 second')",
            "generate_series",
        ),
        ("SELECT length(repeat('ab', 1000000000))", "repeat"),
        // Per row of a governed table, over the batch.
        (
            "SELECT max(length(repeat(name, 100000000))) FROM hr.employees",
            "repeat",
        ),
        ("SELECT length(lpad('a', 2000000000))", "lpad"),
        (
            "SELECT length(rpad('a', 20000000, repeat('é', 100)))",
            "rpad",
        ),
        ("SELECT array_repeat(1, 1000000000000)", "array_repeat"),
        (
            "SELECT array_resize(make_array(1), 1000000000000)",
            "array_resize",
        ),
        (
            &*format!("SELECT length(replace('{x}', '', '{x}'))"),
            "replace",
        ),
        (
            &*format!("SELECT length(regexp_replace('{x}', '', '{x}', 'g'))"),
            "regexp_replace",
        ),
    ];
    for (sql, function) in bombs {
        let e = query(&mut bob, sql).await.unwrap_err();
        assert!(e.contains(EXHAUSTED), "{sql:.60}: {e:.300}");
        assert!(
            e.contains(&format!("{function} would return up to"))
                && e.contains("the query_memory setting"),
            "{sql:.60}: {e:.300}"
        );
        assert_eq!(rows(&query(&mut bob, "SELECT 1").await.unwrap()), 1);
    }
    let cube = (1..=35).map(|i| format!("c{i}")).collect::<Vec<_>>();
    let sql = format!(
        "SELECT count(*) FROM (SELECT {} FROM (SELECT 1 AS c1) t) GROUP BY CUBE({})",
        cube.iter()
            .map(|c| format!("1 AS {c}"))
            .collect::<Vec<_>>()
            .join(", "),
        cube.join(", ")
    );
    let started = std::time::Instant::now();
    let e = query(&mut bob, &sql).await.unwrap_err();
    assert!(
        e.contains("invalid argument: GROUP BY stands for 34359738368 grouping sets"),
        "{e:.300}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The same, inside EXPLAIN.
    let e = query(&mut bob, &format!("EXPLAIN {sql}"))
        .await
        .unwrap_err();
    assert!(e.contains("grouping sets"), "{e:.300}");

    // A batch size is a size every operator allocates for up front: a
    // session may not set one that would take the server down, nor a
    // partition count past the limit; a zero batch size is the user's error.
    for (sql, why) in [
        (
            "SET datafusion.execution.batch_size = 100000000000",
            "more than the most a session may set (1048576)",
        ),
        (
            "SET datafusion.execution.target_partitions = 1000000000",
            "more than the most a session may set (1024)",
        ),
        (
            "SET datafusion.execution.batch_size = 'lots'",
            "takes a whole number",
        ),
        // DataFusion took it, and every timestamp the session returned
        // then failed in the client's decoder.
        (
            "SET datafusion.execution.time_zone = 'Mars/Olympus'",
            "Mars/Olympus is not a time zone",
        ),
    ] {
        let e = query(&mut bob, sql).await.unwrap_err();
        assert!(
            e.contains("invalid argument: ") && e.contains(why),
            "{sql}: {e}"
        );
    }
    for zone in ["Europe/Paris", "+02:00", "UTC"] {
        let sql = format!("SET datafusion.execution.time_zone = '{zone}'");
        query(&mut bob, &sql).await.unwrap();
    }
    let e = query(&mut bob, "SET datafusion.execution.batch_size = 0")
        .await
        .unwrap_err();
    assert!(
        e.contains("Client specified an invalid argument") && e.contains("greater than 0"),
        "{e}"
    );
    query(&mut bob, "SET datafusion.execution.batch_size = 65536")
        .await
        .unwrap();
    let grouped = query(
        &mut bob,
        "SELECT region, count(*) FROM sales.transactions GROUP BY region",
    )
    .await
    .unwrap();
    assert!(rows(&grouped) > 0);

    // A constant is copied to every row of a batch: a large one is refused
    // where a batch of the table (65,536 rows, set above) would hold too
    // many copies, and allowed with a smaller batch, or where there is one
    // row.
    let big = "z".repeat(200_000);
    let copied = format!(
        "SELECT max(length(arrow_cast('{big}', 'LargeUtf8') || region)) FROM sales.transactions"
    );
    let e = query(&mut bob, &copied).await.unwrap_err();
    assert!(
        e.contains(EXHAUSTED) && e.contains("a constant of 195.4 KiB copied to the 65536 rows"),
        "{e:.400}"
    );
    let folded = "SELECT string_agg(repeat('x', 100000000), ',') FROM hr.employees";
    let e = query(&mut bob, folded).await.unwrap_err();
    assert!(
        e.contains(EXHAUSTED) && e.contains("a constant of"),
        "{e:.400}"
    );
    query(&mut bob, "SET datafusion.execution.batch_size = 1024")
        .await
        .unwrap();
    assert_eq!(rows(&query(&mut bob, &copied).await.unwrap()), 1);
    query(&mut bob, "SET datafusion.execution.batch_size = 8192")
        .await
        .unwrap();
    let one_row = "SELECT count(*) FROM (SELECT unnest(generate_series(1, 1000000)))";
    assert_eq!(rows(&query(&mut bob, one_row).await.unwrap()), 1);

    // Ordinary sizes answer as before.
    let fine = [
        ("SELECT cardinality(generate_series(1, 1000000))", "1000000"),
        (
            "SELECT cardinality(range(DATE '2024-01-01', DATE '2025-01-01', INTERVAL '1 day'))",
            "366",
        ),
        ("SELECT length(repeat('ab', 1000))", "2000"),
        ("SELECT lpad('7', 3, '0')", "007"),
        ("SELECT rpad('7', 3)", "7  "),
        ("SELECT replace('a-b-c', '-', '+')", "a+b+c"),
        ("SELECT regexp_replace('a1b22', '[0-9]+', '#', 'g')", "a#b#"),
        ("SELECT cardinality(array_repeat('x', 3))", "3"),
        ("SELECT cardinality(array_resize(make_array(1, 2), 5))", "5"),
        (
            "SELECT count(*) FROM (SELECT region, department, count(*) FROM hr.employees \
             GROUP BY CUBE(region, department, hire_date))",
            "",
        ),
    ];
    for (sql, want) in fine {
        let got = query(&mut bob, sql).await.unwrap();
        let cell = datafusion::arrow::util::display::ArrayFormatter::try_new(
            got[0].column(0),
            &Default::default(),
        )
        .unwrap()
        .value(0)
        .to_string();
        if !want.is_empty() {
            assert_eq!(cell, want, "{sql}");
        } else {
            assert!(cell.parse::<u64>().unwrap() > 0, "{sql}");
        }
    }
}

/// A row policy that fails on the rows it filters denies bob's query over
/// Flight SQL whatever the path (statement, prepared statement, a prepared
/// statement with a bound parameter) with FailedPrecondition and no value:
/// DataFusion's own text would quote the raw SSN it could not cast.
#[tokio::test]
async fn a_failing_row_policy_shows_no_value_over_every_flight_path() {
    use arrow_flight::sql::client::PreparedStatement;
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::util::display::array_value_to_string;

    let server = start().await;
    let addr = server.handle.addr;
    let mut alice = client(addr, "alice", "alice-pw").await.unwrap();
    let mut secrets = vec![];
    for b in query(
        &mut alice,
        "SELECT ssn FROM hr.employees WHERE ssn IS NOT NULL",
    )
    .await
    .unwrap()
    {
        for i in 0..b.num_rows() {
            secrets.push(array_value_to_string(b.column(0), i).unwrap());
        }
    }
    assert!(secrets.len() > 100);
    let mut admin = client(addr, "admin", "admin-pw").await.unwrap();
    query(
        &mut admin,
        "CREATE ROW POLICY bad_cast ON hr.employees USING CAST(ssn AS INT) > 0 \
         UNLESS has_group('hr')",
    )
    .await
    .unwrap();

    let mut bob = client(addr, "bob", "bob-pw").await.unwrap();
    let check = |path: &str, e: String| {
        assert!(e.contains(PRECONDITION), "{path}: {e}");
        assert!(
            e.contains("a row policy on hr.employees failed on the data it filters"),
            "{path}: {e}"
        );
        for s in &secrets {
            assert!(!e.contains(s.as_str()), "{path}: {s} in {e}");
        }
    };
    let sql = "SELECT name FROM hr.employees WHERE ssn IS NOT NULL";
    let info = bob.execute(sql.into(), None).await;
    let e = match info {
        Err(e) => e.to_string(),
        Ok(info) => common::fetch(&mut bob, info).await.unwrap_err(),
    };
    check("statement", e);
    check("prepared", query(&mut bob, sql).await.unwrap_err());

    let mut prepared: PreparedStatement<_> = bob
        .prepare(
            "SELECT name FROM hr.employees WHERE department = $1".into(),
            None,
        )
        .await
        .unwrap();
    let param = RecordBatch::try_from_iter([(
        "$1",
        std::sync::Arc::new(StringArray::from(vec!["engineering"])) as _,
    )])
    .unwrap();
    prepared.set_parameters(param).unwrap();
    let e = match prepared.execute().await {
        Err(e) => e.to_string(),
        Ok(info) => common::fetch(&mut bob, info).await.unwrap_err(),
    };
    check("prepared with a parameter", e);
    // alice, whom the policy exempts, reads as before.
    assert!(rows(&query(&mut alice, sql).await.unwrap()) > 100);
}
