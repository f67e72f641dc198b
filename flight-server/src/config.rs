//! Server configuration: `veil.toml`, then `VEIL_*` environment variables,
//! then command-line flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./veil-data";

/// The `veil.toml` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Workspace warehouse: object_store URL or directory.
    pub warehouse: Option<String>,
    /// The shared PostgreSQL catalog (URL or libpq parameters).
    pub catalog: Option<String>,
    /// The Ballista scheduler queries over data sources run on (`df://host:port`).
    pub cluster: Option<String>,
    /// Largest workspace per project, in bytes (0: no limit).
    pub workspace_max_bytes: Option<u64>,
    /// Address of the Prometheus `/metrics` endpoint (none by default).
    pub metrics_listen: Option<String>,
    /// How long a group commit of audit records may also be held open
    /// while only a few statements run, in milliseconds (0 to 2; default 0).
    pub audit_commit_delay_ms: Option<f64>,
    /// `[tls]`: serve Flight SQL over TLS.
    pub tls: Option<TlsSection>,
    /// `[limits]`: memory, concurrency and time limits.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// The `[tls]` table of `veil.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA of required client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The `[limits]` table of `veil.toml` (sizes as bytes or "512MiB", "4GiB").
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Memory all queries share.
    pub memory: Option<String>,
    /// Memory one query may use.
    pub query_memory: Option<String>,
    /// Statements running at once.
    pub max_queries: Option<usize>,
    /// Statements one user runs at once.
    pub max_queries_per_user: Option<usize>,
    /// Statement timeout in seconds.
    pub query_timeout_secs: Option<f64>,
    /// Longest wait for a free slot, in seconds.
    pub queue_timeout_secs: Option<f64>,
    /// Disk all statements may spill to together.
    pub spill: Option<String>,
}

/// Parses a size: bytes, or a number with KiB / MiB / GiB / TiB (also K,
/// M, G, T, KB, MB, GB, TB, all binary).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid size '{text}' (e.g. 536870912, 512MiB, 4GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size unit in '{text}' (use KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = num * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > usize::MAX as f64 {
        return Err(format!("size '{text}' is out of range"));
    }
    Ok(bytes as usize)
}

fn parse_secs(secs: f64, what: &str) -> Result<std::time::Duration, String> {
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{what} must be a positive number of seconds, not {secs}"))
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory (catalog.sqlite, warehouse/, keys/).
    pub data_dir: PathBuf,
    /// Engine options (warehouse, workspace limit).
    pub engine: veil_engine::EngineOptions,
    /// Address of the Prometheus `/metrics` endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS files, when the endpoint serves TLS.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// Settings a flag or environment variable may override.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `VEIL_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` / `VEIL_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--warehouse` / `VEIL_WAREHOUSE`.
    pub warehouse: Option<String>,
    /// `--catalog` / `VEIL_CATALOG`.
    pub catalog: Option<String>,
    /// `--cluster` / `VEIL_CLUSTER`.
    pub cluster: Option<String>,
    /// `--workspace-max-bytes` / `VEIL_WORKSPACE_MAX_BYTES`.
    pub workspace_max_bytes: Option<u64>,
    /// `--metrics-listen` / `VEIL_METRICS_LISTEN`.
    pub metrics_listen: Option<String>,
    /// `--audit-commit-delay-ms` / `VEIL_AUDIT_COMMIT_DELAY_MS`.
    pub audit_commit_delay_ms: Option<f64>,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca` (`VEIL_TLS_*`).
    pub tls: TlsSection,
    /// `--memory-limit`, `--query-memory`, `--max-queries`, ... (`VEIL_*`).
    pub limits: LimitsSection,
}

impl FileConfig {
    /// Reads a config file; a missing default file is an empty config.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("veil.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(_) if !required => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

impl Config {
    /// Merges file values with flag/env values (already merged by clap).
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Self, String> {
        let Overrides {
            listen,
            data_dir,
            warehouse,
            catalog,
            cluster,
            workspace_max_bytes,
            metrics_listen,
            audit_commit_delay_ms,
            tls,
            limits,
        } = o;
        let metrics_listen = metrics_listen
            .or(file.metrics_listen)
            .map(|m| {
                m.parse()
                    .map_err(|e| format!("invalid metrics address '{m}': {e}"))
            })
            .transpose()?;
        let listen = listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen
            .parse()
            .map_err(|e| format!("invalid listen address '{listen}': {e}"))?;
        let data_dir = data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut engine = veil_engine::EngineOptions {
            warehouse: warehouse.or(file.warehouse),
            catalog: catalog
                .or(file.catalog)
                .filter(|c| !c.trim().is_empty())
                .map(veil_engine::CatalogParams),
            cluster: cluster.or(file.cluster).filter(|c| !c.trim().is_empty()),
            ..Default::default()
        };
        if let Some(max) = workspace_max_bytes.or(file.workspace_max_bytes) {
            engine.workspace_max_bytes = (max > 0).then_some(max);
        }
        if let Some(ms) = audit_commit_delay_ms.or(file.audit_commit_delay_ms) {
            let max = veil_engine::audit::writer::COMMIT_DELAY.as_secs_f64() * 1000.0;
            engine.audit_commit_delay = (0.0..=max)
                .contains(&ms)
                .then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
                .ok_or_else(|| {
                    format!("audit_commit_delay_ms must be between 0 and {max}, not {ms}")
                })?;
        }
        let file_tls = file.tls.unwrap_or_default();
        let tls = match (tls.cert.or(file_tls.cert), tls.key.or(file_tls.key)) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: tls.client_ca.or(file_tls.client_ca),
            }),
            (None, None) if tls.client_ca.or(file_tls.client_ca).is_none() => None,
            _ => {
                return Err(
                    "TLS needs both a certificate and a key (tls.cert and tls.key, \
                     or --tls-cert and --tls-key)"
                        .into(),
                )
            }
        };
        let fl = file.limits;
        let l = &mut engine.limits;
        if let Some(m) = limits.memory.or(fl.memory) {
            l.memory = parse_size(&m)?;
        }
        if let Some(m) = limits.query_memory.or(fl.query_memory) {
            l.query_memory = parse_size(&m)?;
        }
        if let Some(m) = limits.spill.or(fl.spill) {
            l.spill = parse_size(&m)?;
        }
        if let Some(n) = limits.max_queries.or(fl.max_queries) {
            l.max_queries = n.max(1);
        }
        if let Some(n) = limits.max_queries_per_user.or(fl.max_queries_per_user) {
            l.max_queries_per_user = n.max(1);
        }
        if let Some(s) = limits.query_timeout_secs.or(fl.query_timeout_secs) {
            l.query_timeout = parse_secs(s, "the query timeout")?;
        }
        if let Some(s) = limits.queue_timeout_secs.or(fl.queue_timeout_secs) {
            l.queue_timeout = parse_secs(s, "the queue timeout")?;
        }
        if l.query_memory > l.memory {
            return Err(format!(
                "the per-query memory ({}) cannot exceed the server's ({})",
                veil_engine::limits::human_bytes(l.query_memory),
                veil_engine::limits::human_bytes(l.memory)
            ));
        }
        Ok(Self {
            listen,
            data_dir,
            engine,
            metrics_listen,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_in() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:6000\"\ndata_dir = \"/x\"").unwrap();
        let flags = |listen: &str| Overrides {
            listen: Some(listen.into()),
            ..Default::default()
        };
        let c = Config::resolve(file, flags("127.0.0.1:7000")).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        let c = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            c.engine.workspace_max_bytes,
            Some(veil_engine::engine::DEFAULT_WORKSPACE_MAX_BYTES)
        );
        assert!(Config::resolve(FileConfig::default(), flags("nope")).is_err());
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let file: FileConfig =
            toml::from_str("warehouse = \"s3://b/w\"\nworkspace_max_bytes = 0").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.engine.warehouse.as_deref(), Some("s3://b/w"));
        assert_eq!(c.engine.workspace_max_bytes, None);
        let file: FileConfig = toml::from_str("metrics_listen = \"127.0.0.1:9100\"").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.metrics_listen.map(|a| a.port()), Some(9100));
        let bad = Overrides {
            metrics_listen: Some("x".into()),
            ..Default::default()
        };
        assert!(Config::resolve(FileConfig::default(), bad).is_err());
    }

    #[test]
    fn tls_and_limits_come_from_the_file_and_flags() {
        let file: FileConfig = toml::from_str(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [limits]\nmemory = \"2GiB\"\nquery_memory = \"256MiB\"\nmax_queries = 4\n\
             query_timeout_secs = 1.5\nspill = \"8GiB\"",
        )
        .unwrap();
        let flags = Overrides {
            limits: LimitsSection {
                max_queries_per_user: Some(2),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Config::resolve(file, flags).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert!(tls.client_ca.is_none());
        let l = &c.engine.limits;
        assert_eq!(l.memory, 2 << 30);
        assert_eq!(l.query_memory, 256 << 20);
        assert_eq!((l.max_queries, l.max_queries_per_user), (4, 2));
        assert_eq!(l.query_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(l.spill, 8 << 30);

        let half: FileConfig = toml::from_str("[tls]\ncert = \"c.pem\"").unwrap();
        let e = Config::resolve(half, Overrides::default()).unwrap_err();
        assert!(e.contains("both a certificate and a key"), "{e}");
        let greedy: FileConfig =
            toml::from_str("[limits]\nmemory = \"1GiB\"\nquery_memory = \"2GiB\"").unwrap();
        assert!(Config::resolve(greedy, Overrides::default()).is_err());
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5 KiB").unwrap(), 1536);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn the_cluster_comes_from_the_file_and_the_flag_wins() {
        let file = || toml::from_str::<FileConfig>("cluster = \"df://10.0.0.5:50050\"").unwrap();
        let c = Config::resolve(file(), Overrides::default()).unwrap();
        assert_eq!(c.engine.cluster.as_deref(), Some("df://10.0.0.5:50050"));
        let flag = Overrides {
            cluster: Some("df://h:1".into()),
            ..Default::default()
        };
        let c = Config::resolve(file(), flag).unwrap();
        assert_eq!(c.engine.cluster.as_deref(), Some("df://h:1"));
        // An empty value (VEIL_CLUSTER=) means no cluster.
        let blank = Overrides {
            cluster: Some(" ".into()),
            ..Default::default()
        };
        let c = Config::resolve(FileConfig::default(), blank).unwrap();
        assert_eq!(c.engine.cluster, None);
    }

    #[test]
    fn the_audit_commit_delay_is_read_and_bounded() {
        let resolve = |text: &str| {
            let file: FileConfig = toml::from_str(text).unwrap();
            Config::resolve(file, Overrides::default())
        };
        let default = resolve("").unwrap();
        assert_eq!(default.engine.audit_commit_delay, std::time::Duration::ZERO);
        let set = resolve("audit_commit_delay_ms = 1").unwrap();
        assert_eq!(
            set.engine.audit_commit_delay,
            std::time::Duration::from_millis(1)
        );
        for bad in ["audit_commit_delay_ms = 5", "audit_commit_delay_ms = -1"] {
            let err = resolve(bad).unwrap_err();
            assert!(
                err.contains("audit_commit_delay_ms must be between 0 and 2"),
                "{err}"
            );
        }
        // The flag (or VEIL_AUDIT_COMMIT_DELAY_MS) wins over the file, and is
        // bounded the same way.
        let flag = |ms: f64| {
            let file: FileConfig = toml::from_str("audit_commit_delay_ms = 1").unwrap();
            let o = Overrides {
                audit_commit_delay_ms: Some(ms),
                ..Default::default()
            };
            Config::resolve(file, o)
        };
        assert_eq!(
            flag(0.5).unwrap().engine.audit_commit_delay,
            std::time::Duration::from_micros(500)
        );
        assert_eq!(
            flag(0.0).unwrap().engine.audit_commit_delay,
            std::time::Duration::ZERO
        );
        assert!(flag(f64::NAN).is_err());
        assert!(flag(3.0).unwrap_err().contains("between 0 and 2"));
    }
}
