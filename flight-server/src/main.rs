//! The `veil` command-line tool.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use veil_engine::audit::archive::{self, ExportFormat};
use veil_engine::store::AuditFilter;
use veil_engine::{Engine, Session, VeilError};
use veil_flight_server::bench::{self, BenchError};
use veil_flight_server::config::{Config, FileConfig, Overrides};

/// mimalloc instead of the system allocator (as DataFusion's own CLI
/// does): after a large query, glibc's allocator spent about a tenth of a
/// point query's CPU consolidating and splitting free chunks (README,
/// "Benchmarks"). Built without transparent huge pages (the workspace's
/// `no_thp` feature): the kernel zeroed a whole 2 MiB page each time
/// mimalloc touched memory it had purged.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "veil",
    version,
    about = "Veil: a governed Flight SQL query engine"
)]
struct Cli {
    /// Configuration file (default: ./veil.toml when present).
    #[arg(long, global = true, env = "VEIL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: catalog.sqlite, warehouse/, keys/.
    #[arg(long, global = true, env = "VEIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where project workspaces live: a directory or an object_store URL
    /// such as s3://bucket/prefix (default: <data-dir>/warehouse).
    #[arg(long, global = true, env = "VEIL_WAREHOUSE")]
    warehouse: Option<String>,
    /// The PostgreSQL catalog several servers share: a postgres:// URL or
    /// libpq key=value parameters (default: <data-dir>/catalog.sqlite).
    /// Servers sharing it need the same master key (VEIL_MASTER_KEY) and
    /// the same warehouse.
    #[arg(long, global = true, env = "VEIL_CATALOG", hide_env_values = true)]
    catalog: Option<String>,
    /// Largest total size of one project's workspace, in bytes (0: no limit;
    /// default 10 GiB).
    #[arg(long, global = true, env = "VEIL_WORKSPACE_MAX_BYTES")]
    workspace_max_bytes: Option<u64>,
    /// Log lines as text or as JSON objects (one per line). Levels come from
    /// `VEIL_LOG` (e.g. `info`, `veil_engine=debug`).
    #[arg(
        long,
        global = true,
        env = "VEIL_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// TLS flags of `veil serve`.
#[derive(clap::Args)]
struct TlsArgs {
    /// PEM certificate (chain) of the server; serves TLS (`grpc+tls://`).
    #[arg(long, env = "VEIL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the server certificate.
    #[arg(long, env = "VEIL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA: require client certificates it signed (mTLS); the
    /// certificate's common name is the user.
    #[arg(long, env = "VEIL_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
}

/// Resource-limit flags of `veil serve`.
#[derive(clap::Args)]
struct LimitArgs {
    /// Memory all queries share (e.g. 4GiB).
    #[arg(long, env = "VEIL_MEMORY_LIMIT")]
    memory_limit: Option<String>,
    /// Memory one query may use (e.g. 1GiB); spilling operators spill past it.
    #[arg(long, env = "VEIL_QUERY_MEMORY")]
    query_memory: Option<String>,
    /// Statements running at once on the server.
    #[arg(long, env = "VEIL_MAX_QUERIES")]
    max_queries: Option<usize>,
    /// Statements one user runs at once.
    #[arg(long, env = "VEIL_MAX_QUERIES_PER_USER")]
    max_queries_per_user: Option<usize>,
    /// Statement timeout in seconds.
    #[arg(long, env = "VEIL_QUERY_TIMEOUT")]
    query_timeout: Option<f64>,
    /// Longest wait for a free slot, in seconds.
    #[arg(long, env = "VEIL_QUEUE_TIMEOUT")]
    queue_timeout: Option<f64>,
    /// Disk all statements may spill to together (e.g. 16GiB); a spill past
    /// it fails its statement.
    #[arg(long, env = "VEIL_SPILL_LIMIT")]
    spill_limit: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Flight SQL server.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "VEIL_LISTEN")]
        listen: Option<String>,
        /// Address of the Prometheus `/metrics` endpoint (off by default).
        #[arg(long, env = "VEIL_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// How long the audit writer may also hold a group commit open while
        /// a few statements still run, in milliseconds (0 to 2; default 0).
        #[arg(long, env = "VEIL_AUDIT_COMMIT_DELAY_MS")]
        audit_commit_delay_ms: Option<f64>,
        /// Load the sample data and the demo users and policies.
        #[arg(long)]
        demo: bool,
        /// Run queries over data sources on this Ballista scheduler
        /// (`df://host:port`, started with `veil scheduler`); its executors
        /// need this server's cluster key (`veil cluster-key`).
        #[arg(long, env = "VEIL_CLUSTER")]
        cluster: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Write a development CA, a server certificate it signed and client
    /// certificates (for local TLS and mTLS; not for production).
    DevCert {
        /// Output directory.
        #[arg(long, default_value = "veil-certs")]
        out: PathBuf,
        /// Host names and IP addresses of the server certificate.
        #[arg(long = "host", default_values_t = veil_flight_server::tls::DEV_HOSTS.map(String::from))]
        hosts: Vec<String>,
        /// Also write a client certificate for this user (repeatable).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Run a governance script as admin, idempotently (objects that exist are skipped).
    Apply {
        /// The script.
        file: PathBuf,
    },
    /// Write the governance state as a script `veil apply` replays on a new
    /// catalog (users, permissions, purposes, sources, policies, projects).
    Export {
        /// Write the script here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the cluster key Ballista executors open mask keys with
    /// (derived from this data directory's master key).
    ClusterKey {
        /// Write it here, readable by its owner only (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a Ballista scheduler for `veil serve --cluster` (holds no key).
    Scheduler {
        /// Address to listen on.
        #[arg(long, env = "VEIL_SCHEDULER_LISTEN", default_value = "127.0.0.1:50050")]
        listen: std::net::SocketAddr,
    },
    /// Run a Ballista executor of a `veil scheduler`. It reads an S3
    /// warehouse with the `AWS_*` environment variables, as the front end.
    Executor {
        /// The scheduler (`df://host:port`).
        #[arg(long, env = "VEIL_SCHEDULER", default_value = "df://127.0.0.1:50050")]
        scheduler: String,
        /// Address of its Flight service (stage outputs).
        #[arg(long, env = "VEIL_EXECUTOR_LISTEN", default_value = "127.0.0.1:50061")]
        listen: std::net::SocketAddr,
        /// Port of its gRPC service (on the same host).
        #[arg(long, default_value_t = 50062)]
        grpc_port: u16,
        /// Host name the scheduler and other executors reach it by
        /// (default: the listen address).
        #[arg(long)]
        external_host: Option<String>,
        /// Tasks it runs at once (default: one per core).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
        /// Directory for its shuffle files (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<String>,
        /// File holding the cluster key (`veil cluster-key --out`); or the
        /// key itself in `VEIL_CLUSTER_KEY`.
        #[arg(long)]
        cluster_key_file: Option<PathBuf>,
    },
    /// Benchmarks: TPC-H sample data, governed TPC-H, Flight throughput, charts.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Write TPC-H tables as Parquet (one directory per table).
    Generate {
        /// TPC-H scale factor (1 = about 1 GB of raw data).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// How data pages are compressed.
        #[arg(long, value_enum, default_value = "zstd")]
        compression: bench::generate::PageCompression,
    },
    /// Run the 22 TPC-H queries ungoverned, unrestricted and restricted.
    Tpch {
        /// Scale factor (default: the one `generate` recorded in --data).
        #[arg(long)]
        scale: Option<f64>,
        /// The directory `veil bench generate` wrote.
        #[arg(long)]
        data: PathBuf,
        /// Measured rounds per query, after one warm-up round.
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// Only these queries (e.g. `--query 1 --query 6`).
        #[arg(long = "query")]
        queries: Vec<usize>,
        /// Write the result as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the plans (ungoverned, unrestricted, restricted) of the
        /// selected queries instead of timing them.
        #[arg(long)]
        explain: bool,
        /// Run the governed queries on a Ballista scheduler and executor
        /// started in this process.
        #[arg(long)]
        cluster: bool,
    },
    /// Draw per-query bars of result files (Veil's and peers') as SVG.
    Plot {
        /// Result files (`veil bench tpch --out`, benches/compare_duckdb.py).
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// The chart.
        #[arg(long)]
        out: PathBuf,
    },
    /// Stream lineitem over Flight SQL on loopback; time point queries.
    Flight {
        /// The directory `veil bench generate` wrote.
        #[arg(long)]
        data: PathBuf,
        /// Streaming runs per principal (the best is reported; 0 times
        /// the point queries only).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Point queries to time.
        #[arg(long, default_value_t = 1000)]
        points: usize,
        /// Write the report as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run the queries on a Ballista scheduler and executor started in
        /// this process.
        #[arg(long)]
        cluster: bool,
    },
    /// What the audit log costs over Flight SQL: point queries from
    /// concurrent clients against a server recording every query and one
    /// dropping query records, rounds alternating; closed loop, then paced.
    Audit {
        /// The directory `veil bench generate` wrote.
        #[arg(long)]
        data: PathBuf,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Queries per run (all clients together).
        #[arg(long, default_value_t = 4000)]
        queries: usize,
        /// Rounds of one audited and one unaudited run, per mode.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Offered queries per second in the paced runs (0 skips them).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Write the report as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load test: N clients against a `veil serve --demo` child process,
    /// governed queries of several users, project switches, workspace
    /// ingest and governance changes mid-run; every answer checked.
    Load {
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Seconds between governance changes.
        #[arg(long, default_value_t = 5.0)]
        change_every: f64,
        /// Write the report as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the audit hash chain (archives and live log).
    Verify,
    /// Write audit records to a file.
    Export {
        /// parquet or jsonl.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Only records at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Move the records before a time into a Parquet archive under
    /// <data-dir>/audit-archive; the chain stays verifiable across the cut.
    Archive {
        /// Archive records strictly before this time (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long)]
        before: String,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// Where the repository's testdata/ is: the working directory, else the source tree.
fn demo_root() -> PathBuf {
    let cwd = PathBuf::from(".");
    if cwd.join(veil_engine::statement::DEMO_SCRIPT).exists() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn apply_script(session: &mut Session, script: &str) -> Result<(usize, usize), String> {
    veil_engine::statement::apply_script(session, script)
        .await
        .map_err(|e| e.to_string())
}

fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}

fn open_engine(config: &Config, base: &Path) -> Result<Arc<Engine>, String> {
    let data_dir = config.data_dir.as_path();
    let engine =
        Engine::open_with(data_dir, base, config.engine.clone()).map_err(|e| e.to_string())?;
    let password = std::env::var("VEIL_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(generated) = engine
        .bootstrap_admin(password)
        .map_err(|e| e.to_string())?
    {
        let path = data_dir.join("admin-password");
        write_secret(&path, &generated).map_err(|e| format!("{}: {e}", path.display()))?;
        println!(
            "created user admin with password {generated} (also in {})",
            path.display()
        );
    }
    Ok(engine)
}

/// An audit record of something secret the CLI handed out (`action` on
/// `object`), and where it was written (`None`: standard output).
fn record_taken(
    engine: &Engine,
    action: &str,
    object: String,
    out: Option<&Path>,
) -> Result<(), String> {
    engine
        .store()
        .audit(&veil_engine::store::AuditEntry {
            actor: "system".into(),
            action: action.into(),
            object,
            detail: serde_json::json!({"out": out.map(|p| p.display().to_string())}).to_string(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let catalog = cli.catalog.clone();
    let overrides = Overrides {
        listen: None,
        data_dir: cli.data_dir,
        warehouse: cli.warehouse,
        catalog: cli.catalog,
        workspace_max_bytes: cli.workspace_max_bytes,
        metrics_listen: None,
        ..Default::default()
    };
    match cli.command {
        Command::DevCert {
            out,
            hosts,
            clients,
            force,
        } => {
            let written = veil_flight_server::tls::DevCert {
                out: out.clone(),
                hosts,
                clients,
                force,
            }
            .write()
            .map_err(|e| e.to_string())?;
            for f in &written {
                println!("wrote {}", f.display());
            }
            println!(
                "serve: veil serve --tls-cert {0}/server.pem --tls-key {0}/server-key.pem \
                 [--tls-client-ca {0}/ca.pem]; clients trust {0}/ca.pem",
                out.display()
            );
            Ok(())
        }
        Command::Bench { command } => bench(command, catalog.as_deref())
            .await
            .map_err(|e| e.to_string()),
        Command::Serve {
            listen,
            metrics_listen,
            audit_commit_delay_ms,
            demo,
            cluster,
            tls,
            limits,
        } => {
            let config = Config::resolve(
                file,
                Overrides {
                    listen,
                    metrics_listen,
                    audit_commit_delay_ms,
                    cluster,
                    tls: veil_flight_server::config::TlsSection {
                        cert: tls.tls_cert,
                        key: tls.tls_key,
                        client_ca: tls.tls_client_ca,
                    },
                    limits: veil_flight_server::config::LimitsSection {
                        memory: limits.memory_limit,
                        query_memory: limits.query_memory,
                        max_queries: limits.max_queries,
                        max_queries_per_user: limits.max_queries_per_user,
                        query_timeout_secs: limits.query_timeout,
                        queue_timeout_secs: limits.queue_timeout,
                        spill: limits.spill_limit,
                    },
                    ..overrides
                },
            )?;
            let base = if demo {
                demo_root()
            } else {
                PathBuf::from(".")
            };
            let engine = open_engine(&config, &base)?;
            let swept = engine
                .sweep_workspaces()
                .await
                .map_err(|e| format!("workspace clean-up: {e}"))?;
            if swept > 0 {
                println!("removed {swept} orphan workspace files of unfinished writes");
            }
            if demo {
                let (applied, skipped) = veil_engine::statement::load_demo(&engine)
                    .await
                    .map_err(|e| format!("demo setup: {e}"))?;
                println!("demo loaded ({applied} statements applied, {skipped} already present)");
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
            if let Some(addr) = config.metrics_listen {
                let metrics = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
                let bound = metrics.local_addr().map_err(|e| e.to_string())?;
                veil_flight_server::server::serve_metrics(Arc::clone(&engine), metrics);
                println!("metrics on http://{bound}/metrics");
            }
            let tls = config
                .tls
                .as_ref()
                .map(|t| t.server_config())
                .transpose()
                .map_err(|e| e.to_string())?;
            let scheme = if tls.is_some() { "grpc+tls" } else { "grpc" };
            let handle = veil_flight_server::server::serve_with(engine, listener, tls)
                .map_err(|e| e.to_string())?;
            println!("listening on {}", handle.addr);
            println!("clients connect to {scheme}://{}", handle.addr);
            if let Some(cluster) = &config.engine.cluster {
                println!("queries over data sources run on the Ballista cluster at {cluster}");
            }
            if demo {
                println!(
                    "connect: python -c \"import adbc_driver_flightsql.dbapi as f; \
                     c = f.connect('grpc://{}', db_kwargs={{'username': 'bob', 'password': 'bob-pw'}}); \
                     cur = c.cursor(); cur.execute('SELECT * FROM hr.employees LIMIT 5'); print(cur.fetch_arrow_table())\"",
                    handle.addr
                );
                println!(
                    "demo users: alice/alice-pw (hr), bob/bob-pw (US analyst), carol/carol-pw (EU analyst), \
                     dave/dave-pw (contractor), sally/sally-pw (hr, creates projects), pam/pam-pw (approves purposes)"
                );
            }
            let _ = std::io::stdout().flush();
            shutdown_signal().await;
            println!("shutting down");
            handle.shutdown().await
        }
        Command::Apply { file: script } => {
            let config = Config::resolve(file, overrides)?;
            let engine = open_engine(&config, Path::new("."))?;
            let text = std::fs::read_to_string(&script)
                .map_err(|e| format!("{}: {e}", script.display()))?;
            let (applied, skipped) = apply_script(&mut engine.session("admin"), &text).await?;
            println!("{applied} statements applied, {skipped} already present");
            Ok(())
        }
        Command::Export { out } => {
            let config = Config::resolve(file, overrides)?;
            let engine = open_engine(&config, Path::new("."))?;
            let snapshot = engine.snapshot().map_err(|e| e.to_string())?;
            let script = veil_engine::statement::export::export_script(&snapshot);
            // Who took the governance state (password hashes included).
            record_taken(
                &engine,
                "Export",
                format!("catalog version {}", snapshot.version),
                out.as_deref(),
            )?;
            match out {
                Some(path) => {
                    // The script holds password hashes: private to its owner.
                    write_secret(&path, &script).map_err(|e| format!("{}: {e}", path.display()))?;
                    println!(
                        "governance of catalog version {} written to {}",
                        snapshot.version,
                        path.display()
                    );
                }
                None => print!("{script}"),
            }
            Ok(())
        }
        Command::ClusterKey { out } => {
            let config = Config::resolve(file, overrides)?;
            let engine = open_engine(&config, Path::new("."))?;
            let key = veil_engine::distributed::cluster_key(engine.keys()).to_hex();
            // Who took it: its holders can open the mask keys of plans.
            record_taken(&engine, "ClusterKey", "cluster key".into(), out.as_deref())?;
            match out {
                Some(path) => {
                    write_secret(&path, &format!("{key}\n"))
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    println!("cluster key written to {}", path.display());
                }
                None => println!("{key}"),
            }
            Ok(())
        }
        Command::Scheduler { listen } => {
            println!("Ballista scheduler listening on {listen}");
            let _ = std::io::stdout().flush();
            tokio::select! {
                r = veil_engine::distributed::run_scheduler(listen) => r.map_err(|e| e.to_string()),
                _ = shutdown_signal() => Ok(()),
            }
        }
        Command::Executor {
            scheduler,
            listen,
            grpc_port,
            external_host,
            concurrent_tasks,
            work_dir,
            cluster_key_file,
        } => {
            let text = match cluster_key_file {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None => std::env::var("VEIL_CLUSTER_KEY").map_err(|_| {
                    "an executor needs the cluster key: --cluster-key-file or VEIL_CLUSTER_KEY \
                     (veil cluster-key writes it)"
                        .to_string()
                })?,
            };
            let key = veil_udfs::ClusterKey::from_hex(&text).map_err(|e| e.to_string())?;
            let options = veil_engine::distributed::ExecutorOptions {
                scheduler,
                bind: listen,
                external_host,
                grpc_port,
                vcores: concurrent_tasks,
                work_dir,
            };
            println!(
                "Ballista executor on {listen}, scheduler {}",
                options.scheduler
            );
            let _ = std::io::stdout().flush();
            tokio::select! {
                r = veil_engine::distributed::run_executor(options, key) => r.map_err(|e| e.to_string()),
                _ = shutdown_signal() => Ok(()),
            }
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let config = Config::resolve(file, overrides)?;
            let engine = open_engine(&config, Path::new("."))?;
            let v = engine.verify_audit().map_err(|e| e.to_string())?;
            match v.first_broken {
                None => {
                    println!("ok: {} records verified", v.records);
                    Ok(())
                }
                Some(id) => Err(format!(
                    "broken: record {id} of {} fails verification{}",
                    v.records,
                    v.unreadable
                        .iter()
                        .map(|u| format!("; cannot read audit archive {u}"))
                        .collect::<String>()
                )),
            }
        }
        Command::Audit {
            command: AuditCommand::Export { format, since, out },
        } => {
            let config = Config::resolve(file, overrides)?;
            let engine = open_engine(&config, Path::new("."))?;
            let format: ExportFormat = format.parse().map_err(|e: VeilError| e.to_string())?;
            let filter = AuditFilter {
                since: since
                    .as_deref()
                    .map(archive::parse_time)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                ..Default::default()
            };
            let n = archive::export(engine.store().as_ref(), &filter, format, &out)
                .map_err(|e| e.to_string())?;
            println!("{n} audit records written to {}", out.display());
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Archive { before },
        } => {
            let config = Config::resolve(file, overrides)?;
            let engine = open_engine(&config, Path::new("."))?;
            let before = archive::parse_time(&before).map_err(|e| e.to_string())?;
            let dir = config.data_dir.join("audit-archive");
            match archive::archive(engine.store().as_ref(), &before, &dir)
                .map_err(|e| e.to_string())?
            {
                Some((path, n)) => println!("{n} audit records archived to {}", path.display()),
                None => println!("no audit records before {before}"),
            }
            Ok(())
        }
    }
}

fn write_report<T: serde::Serialize>(report: &T, out: Option<&Path>) -> Result<(), BenchError> {
    if let Some(out) = out {
        let text =
            serde_json::to_string_pretty(report).map_err(|e| BenchError::Invalid(e.to_string()))?;
        std::fs::write(out, text + "\n")
            .map_err(|e| BenchError::Invalid(format!("{}: {e}", out.display())))?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

/// `catalog`: the global `--catalog`, which `bench flight` runs its server on.
async fn bench(command: BenchCommand, catalog: Option<&str>) -> Result<(), BenchError> {
    match command {
        BenchCommand::Generate {
            scale,
            out,
            compression,
        } => {
            let t = std::time::Instant::now();
            let tables = tokio::task::spawn_blocking(move || {
                bench::generate::generate(scale, &out, compression, std::io::stderr().is_terminal())
            })
            .await
            .map_err(|e| BenchError::Invalid(e.to_string()))??;
            for g in &tables {
                println!("{:<9} {:>10} rows  {}", g.table, g.rows, g.dir.display());
            }
            println!(
                "TPC-H scale {scale} written in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        BenchCommand::Tpch {
            scale,
            data,
            iterations,
            queries,
            out,
            explain,
            cluster,
        } => {
            if explain {
                print!("{}", bench::tpch::explain(&data, &queries).await?);
                return Ok(());
            }
            let opts = bench::tpch::TpchOptions {
                data,
                scale,
                iterations,
                queries,
                cluster,
            };
            let result = bench::tpch::run(&opts, |q| {
                eprintln!(
                    "{}: ungoverned {:.1} ms, restricted {:.1} ms",
                    q.name, q.ungoverned_ms, q.restricted_ms
                )
            })
            .await?;
            print!("{}", result.table());
            if let Some(out) = out {
                result.write(&out)?;
                println!("result written to {}", out.display());
            }
            Ok(())
        }
        BenchCommand::Plot { results, out } => {
            let results = results
                .iter()
                .map(|p| bench::report::BenchResult::read(p))
                .collect::<Result<Vec<_>, _>>()?;
            bench::plot::plot(&results, &out)?;
            println!("chart written to {}", out.display());
            Ok(())
        }
        BenchCommand::Flight {
            data,
            runs,
            points,
            out,
            cluster,
        } => {
            let report = bench::flight::run(&data, runs, points, catalog, cluster).await?;
            print!("{}", report.table());
            write_report(&report, out.as_deref())
        }
        BenchCommand::Audit {
            data,
            clients,
            queries,
            rounds,
            rate,
            out,
        } => {
            let opts = bench::audit::AuditOptions {
                clients,
                queries,
                rounds,
                rate,
            };
            let report = bench::audit::run(&data, opts).await?;
            print!("{}", report.table());
            write_report(&report, out.as_deref())
        }
        BenchCommand::Load {
            clients,
            duration,
            change_every,
            out,
        } => {
            let secs = |s: f64, what: &str| {
                std::time::Duration::try_from_secs_f64(s).map_err(|_| {
                    BenchError::Invalid(format!("{what} must be a positive number of seconds"))
                })
            };
            let report = bench::load::run(
                clients,
                secs(duration, "--duration")?,
                secs(change_every, "--change-every")?,
            )
            .await?;
            print!("{}", report.table());
            write_report(&report, out.as_deref())?;
            if report.unexpected_errors > 0 || report.wrong_answers > 0 {
                return Err(BenchError::Mismatch(format!(
                    "{} unexpected errors and {} wrong answers under load",
                    report.unexpected_errors, report.wrong_answers
                )));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG").unwrap_or_else(|_| {
                // Benchmarks print their own report; one audit line per
                // query would drown it.
                let quiet = matches!(cli.command, Command::Bench { .. });
                tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
            }),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // Deep (but accepted) statements recurse in DataFusion's planner; give
    // every worker the stack the engine's parser limits are sized for.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(veil_engine::sql_guard::WORKER_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
