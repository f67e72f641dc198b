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
    /// Largest workspace per project, in bytes (0: no limit).
    pub workspace_max_bytes: Option<u64>,
    /// Address of the Prometheus `/metrics` endpoint (none by default).
    pub metrics_listen: Option<String>,
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
    /// `--workspace-max-bytes` / `VEIL_WORKSPACE_MAX_BYTES`.
    pub workspace_max_bytes: Option<u64>,
    /// `--metrics-listen` / `VEIL_METRICS_LISTEN`.
    pub metrics_listen: Option<String>,
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
            workspace_max_bytes,
            metrics_listen,
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
            ..Default::default()
        };
        if let Some(max) = workspace_max_bytes.or(file.workspace_max_bytes) {
            engine.workspace_max_bytes = (max > 0).then_some(max);
        }
        Ok(Self {
            listen,
            data_dir,
            engine,
            metrics_listen,
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
}
