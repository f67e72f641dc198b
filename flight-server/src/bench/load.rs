//! `veil bench load`: many Flight SQL clients against a real `veil serve
//! --demo` child process, mixing governed queries of several users,
//! project switches and workspace ingest, while governance changes land in
//! the middle of the run. Every answer is checked against the answer the
//! same user gets under the same governance state, computed before the run;
//! the report gives throughput, p50 / p99 latency, errors by kind and the
//! server's peak RSS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use super::BenchError;

/// The project the load runs in (sally's, purpose approved, bob and carol members).
const PROJECT: &str = "load";
/// Who the clients are, in turn.
const USERS: [&str; 4] = ["bob", "carol", "alice", "dave"];
/// The governance change: carol's regions, alternating.
const CAROL_REGIONS: [&str; 2] = ["('EU')", "('EU', 'US')"];

/// What one operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// Row-filtered query outside the project.
    Rows,
    /// Masked columns outside the project.
    Masked,
    /// The same source inside the project (purpose lifts the row policy).
    Project,
    /// Ingest into the client's own workspace table, then count it.
    Ingest,
}

const QUERIES: [(Op, &str); 3] = [
    (
        Op::Rows,
        "SELECT region, count(*) AS n, sum(amount) AS total FROM sales.transactions \
         GROUP BY region ORDER BY region",
    ),
    (
        Op::Masked,
        "SELECT employee_id, name, email, salary FROM hr.employees ORDER BY employee_id LIMIT 5",
    ),
    (
        Op::Project,
        "SELECT count(*) AS n, count(DISTINCT region) AS regions FROM sales.transactions",
    ),
];

/// The load test's report.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Machine description.
    pub machine: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds the load ran.
    pub duration_s: f64,
    /// Operations completed (queries and ingests, failed ones included).
    pub operations: u64,
    /// Operations per second.
    pub throughput_ops_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Errors by kind (`expected: ...` are refusals the users must get).
    pub errors: BTreeMap<String, u64>,
    /// Errors nobody should get.
    pub unexpected_errors: u64,
    /// Answers that match no governance state the query could have seen.
    pub wrong_answers: u64,
    /// Governance changes made during the run.
    pub governance_changes: u64,
    /// Rows ingested into workspaces.
    pub rows_ingested: u64,
    /// Peak resident set of the server process, MiB (VmHWM).
    pub server_peak_rss_mb: f64,
}

impl LoadReport {
    /// A few lines for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} clients, {:.0} s: {} operations, {:.1} ops/s, p50 {:.1} ms, p99 {:.1} ms\n\
             governance changes {}, rows ingested {}, server peak RSS {:.0} MiB\n\
             unexpected errors {}, wrong answers {}\n",
            self.clients,
            self.duration_s,
            self.operations,
            self.throughput_ops_s,
            self.p50_ms,
            self.p99_ms,
            self.governance_changes,
            self.rows_ingested,
            self.server_peak_rss_mb,
            self.unexpected_errors,
            self.wrong_answers
        );
        for (kind, n) in &self.errors {
            s.push_str(&format!("  {n:>8}  {kind}\n"));
        }
        s
    }
}

type Client = FlightSqlServiceClient<Channel>;

async fn connect(addr: &str, user: &str, project: Option<&str>) -> Result<Client, BenchError> {
    super::flight_client(addr, user, &format!("{user}-pw"), project).await
}

/// Runs a statement the ADBC way (prepare, execute, fetch); the rows as text.
async fn run_sql(c: &mut Client, sql: &str) -> Result<String, BenchError> {
    let mut prepared = c.prepare(sql.to_string(), None).await?;
    let info = prepared.execute().await?;
    let mut batches: Vec<RecordBatch> = Vec::new();
    for ep in info.endpoint {
        let ticket = ep
            .ticket
            .ok_or_else(|| BenchError::Invalid("an endpoint without a ticket".into()))?;
        batches.extend(c.do_get(ticket).await?.try_collect::<Vec<_>>().await?);
    }
    Ok(pretty_format_batches(&batches)?.to_string())
}

/// The server child process.
struct ServerProcess {
    child: tokio::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Result<ServerProcess, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::io(&PathBuf::from("tempdir"), e))?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io(&PathBuf::from("veil"), e))?;
    let mut child = tokio::process::Command::new(&exe)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .env("VEIL_ADMIN_PASSWORD", "admin-pw")
        .env("VEIL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::io(&exe, e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Invalid("no stdout from the server".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Some(a) = line.strip_prefix("listening on ") {
                    break a.trim().to_string();
                }
            }
            _ => {
                return Err(BenchError::Invalid(
                    "the server exited before listening".into(),
                ))
            }
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ServerProcess {
        child,
        addr,
        _dir: dir,
    })
}

fn peak_rss_mb(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The project, its purpose approved and acknowledged by its members.
async fn setup(addr: &str) -> Result<(), BenchError> {
    let mut sally = connect(addr, "sally", None).await?;
    for sql in [
        format!("CREATE PROJECT {PROJECT}"),
        format!("ALTER PROJECT {PROJECT} ADD DATA SOURCE sales.transactions"),
        format!("ALTER PROJECT {PROJECT} ADD MEMBER bob"),
        format!("ALTER PROJECT {PROJECT} ADD MEMBER carol"),
        format!("ALTER PROJECT {PROJECT} ADD PURPOSE 'Fraud Detection'"),
    ] {
        run_sql(&mut sally, &sql).await?;
    }
    let mut pam = connect(addr, "pam", None).await?;
    run_sql(
        &mut pam,
        &format!("APPROVE PURPOSE 'Fraud Detection' FOR PROJECT {PROJECT}"),
    )
    .await?;
    for user in ["bob", "carol"] {
        let mut c = connect(addr, user, None).await?;
        run_sql(
            &mut c,
            &format!("ACKNOWLEDGE PURPOSE 'Fraud Detection' FOR PROJECT {PROJECT}"),
        )
        .await?;
    }
    Ok(())
}

fn in_project(user: &str) -> bool {
    matches!(user, "bob" | "carol")
}

/// The answer (or error text) each user gets for each query in each state.
type Expected = BTreeMap<(String, Op, usize), Result<String, String>>;

async fn set_state(admin: &mut Client, state: usize) -> Result<(), BenchError> {
    run_sql(
        admin,
        &format!(
            "ALTER USER carol SET ATTRIBUTE region = {}",
            CAROL_REGIONS[state % 2]
        ),
    )
    .await
    .map(|_| ())
}

async fn expected_answers(addr: &str, admin: &mut Client) -> Result<Expected, BenchError> {
    let mut expected = Expected::new();
    for state in 0..CAROL_REGIONS.len() {
        set_state(admin, state).await?;
        for user in USERS {
            let mut plain = connect(addr, user, None).await?;
            for (op, sql) in QUERIES {
                if op == Op::Project && !in_project(user) {
                    continue;
                }
                let answer = if op == Op::Project {
                    let mut p = connect(addr, user, Some(PROJECT)).await?;
                    run_sql(&mut p, sql).await
                } else {
                    run_sql(&mut plain, sql).await
                };
                expected.insert(
                    (user.to_string(), op, state),
                    answer.map_err(|e| error_kind(&e.to_string())),
                );
            }
        }
    }
    set_state(admin, 0).await?;
    Ok(expected)
}

/// A short, stable name for an error: its gRPC code and first words.
fn error_kind(text: &str) -> String {
    let code = (1..=16)
        .map(tonic::Code::from_i32)
        .find(|c| text.contains(c.description()) || text.contains(&format!("{c:?}")))
        .map(|c| format!("{c:?}"))
        .unwrap_or_else(|| "Other".into());
    let words: String = text
        .split("message: ")
        .nth(1)
        .unwrap_or(text)
        .split_whitespace()
        .take(7)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{code}: {}", words.trim_matches('"'))
}

/// One finished operation.
struct Outcome {
    user: String,
    op: Op,
    started: Instant,
    ended: Instant,
    answer: Result<String, String>,
}

/// When each governance state began (ack time) and when its change began.
#[derive(Default)]
struct Timeline {
    /// (change started, change acknowledged, new state)
    changes: Vec<(Instant, Instant, usize)>,
}

impl Timeline {
    /// The states a statement running in [start, end] may have seen.
    fn states(&self, start: Instant, end: Instant) -> Vec<usize> {
        let mut states = vec![0];
        for (began, acked, state) in &self.changes {
            if *acked <= start {
                states = vec![*state];
            } else if *began <= end {
                states.push(*state);
            }
        }
        states
    }
}

fn ingest_batch(client: usize, seq: u64) -> Result<RecordBatch, BenchError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (0..10).map(|i| (seq * 10 + i) as i64).collect();
    let labels: Vec<String> = ids
        .iter()
        .map(|i| format!("client {client} row {i}"))
        .collect();
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(labels)),
        ],
    )?)
}

async fn ingest(c: &mut Client, table: &str, batch: RecordBatch) -> Result<i64, BenchError> {
    use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
    let cmd = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create.into(),
            if_exists: TableExistsOption::Append.into(),
        }),
        table: table.into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    Ok(
        c.execute_ingest(cmd, futures::stream::iter(vec![Ok(batch)]))
            .await?,
    )
}

/// One client's loop until `until`.
async fn client_loop(
    addr: String,
    id: usize,
    until: Instant,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) -> Result<u64, BenchError> {
    let user = USERS[id % USERS.len()];
    let mut plain = connect(&addr, user, None).await?;
    let mut project = if in_project(user) {
        Some(connect(&addr, user, Some(PROJECT)).await?)
    } else {
        None
    };
    let table = format!("ingest_c{id}");
    let (mut ingested, mut seq) = (0u64, 0u64);
    let mut i = id;
    while Instant::now() < until {
        i += 1;
        let op = match i % 7 {
            0 if project.is_some() => Op::Ingest,
            1 | 2 if project.is_some() => Op::Project,
            3 | 4 => Op::Masked,
            _ => Op::Rows,
        };
        let started = Instant::now();
        let answer = match (op, project.as_mut()) {
            (Op::Ingest, Some(p)) => {
                let batch = ingest_batch(id, seq)?;
                seq += 1;
                match ingest(p, &table, batch).await {
                    Ok(n) => {
                        ingested += n.max(0) as u64;
                        run_sql(p, &format!("SELECT count(*) AS n FROM workspace.{table}")).await
                    }
                    Err(e) => Err(e),
                }
            }
            (Op::Project, Some(p)) => run_sql(p, QUERIES[2].1).await,
            (Op::Masked, _) => run_sql(&mut plain, QUERIES[1].1).await,
            _ => run_sql(&mut plain, QUERIES[0].1).await,
        };
        let answer = match (op, answer) {
            // The expected count of the client's own table.
            (Op::Ingest, Ok(text)) => {
                let want = format!("| {ingested} ");
                if text.contains(&want) {
                    Ok(String::new())
                } else {
                    Err(format!(
                        "wrong answer: workspace count {text}, expected {ingested}"
                    ))
                }
            }
            (_, a) => a.map_err(|e| error_kind(&e.to_string())),
        };
        outcomes.lock().await.push(Outcome {
            user: user.to_string(),
            op,
            started,
            ended: Instant::now(),
            answer,
        });
    }
    Ok(ingested)
}

/// Runs the load: `clients` clients for `duration`, a governance change
/// every `change_every`. Fails when any answer is wrong or any error is
/// unexpected (after writing nothing: the caller writes the report).
pub async fn run(
    clients: usize,
    duration: Duration,
    change_every: Duration,
) -> Result<LoadReport, BenchError> {
    let mut server = start_server().await?;
    let addr = server.addr.clone();
    setup(&addr).await?;
    let mut admin = connect(&addr, "admin", None).await?;
    let expected = expected_answers(&addr, &mut admin).await?;

    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let until = t0 + duration;
    let workers: Vec<_> = (0..clients.max(1))
        .map(|id| tokio::spawn(client_loop(addr.clone(), id, until, Arc::clone(&outcomes))))
        .collect();
    let mut timeline = Timeline::default();
    let mut state = 0;
    while Instant::now() + change_every < until {
        tokio::time::sleep(change_every).await;
        state = (state + 1) % CAROL_REGIONS.len();
        let began = Instant::now();
        set_state(&mut admin, state).await?;
        timeline.changes.push((began, Instant::now(), state));
    }
    let mut rows_ingested = 0;
    for w in workers {
        rows_ingested += w
            .await
            .map_err(|e| BenchError::Invalid(format!("a client task failed: {e}")))??;
    }
    let elapsed = t0.elapsed();
    let server_peak_rss_mb = peak_rss_mb(server.child.id());
    let _ = server.child.kill().await;

    let outcomes = std::mem::take(&mut *outcomes.lock().await);
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.ended - o.started).collect();
    latencies.sort();
    let (mut errors, mut unexpected, mut wrong) = (BTreeMap::new(), 0u64, 0u64);
    for o in &outcomes {
        if o.op == Op::Ingest {
            if let Err(e) = &o.answer {
                if e.starts_with("wrong answer") {
                    wrong += 1;
                } else {
                    unexpected += 1;
                    *errors.entry(e.clone()).or_insert(0) += 1;
                }
            }
            continue;
        }
        let allowed: Vec<&Result<String, String>> = timeline
            .states(o.started, o.ended)
            .into_iter()
            .filter_map(|s| expected.get(&(o.user.clone(), o.op, s)))
            .collect();
        match &o.answer {
            Err(e) if allowed.iter().any(|a| a.as_ref().err() == Some(e)) => {
                *errors.entry(format!("expected: {e}")).or_insert(0) += 1;
            }
            Err(e) => {
                unexpected += 1;
                *errors.entry(e.clone()).or_insert(0) += 1;
            }
            Ok(text) if allowed.iter().any(|a| a.as_ref().ok() == Some(text)) => {}
            Ok(_) => wrong += 1,
        }
    }
    let report = LoadReport {
        machine: super::report::machine(),
        clients,
        duration_s: elapsed.as_secs_f64(),
        operations: outcomes.len() as u64,
        throughput_ops_s: outcomes.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: super::percentile(&latencies, 0.50),
        p99_ms: super::percentile(&latencies, 0.99),
        errors,
        unexpected_errors: unexpected,
        wrong_answers: wrong,
        governance_changes: timeline.changes.len() as u64,
        rows_ingested,
        server_peak_rss_mb,
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_may_see_the_states_around_a_change() {
        let t = Instant::now();
        let s = |ms| t + Duration::from_millis(ms);
        let timeline = Timeline {
            changes: vec![(s(100), s(110), 1), (s(200), s(210), 0)],
        };
        assert_eq!(timeline.states(s(0), s(50)), vec![0]);
        assert_eq!(
            timeline.states(s(120), s(150)),
            vec![1],
            "after the ack: new state only"
        );
        assert_eq!(
            timeline.states(s(90), s(105)),
            vec![0, 1],
            "overlapping the change"
        );
        assert_eq!(timeline.states(s(220), s(230)), vec![0]);
    }

    #[test]
    fn error_kinds_are_short_and_stable() {
        let k = error_kind(
            "Tonic error: code: 'The caller does not have permission to execute the specified \
             operation', message: \"permission denied: dave is not subscribed to hr.employees\"",
        );
        assert!(
            k.starts_with("PermissionDenied: permission denied: dave"),
            "{k}"
        );
    }
}
