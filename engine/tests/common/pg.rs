//! A throwaway PostgreSQL server for tests: `initdb` in a temporary
//! directory, `postgres` listening on a Unix socket inside it (no TCP port
//! to collide on), stopped and removed when dropped. The server binaries
//! come from `VEIL_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package, which `scripts/setup` installs), else
//! `PATH`. As root, the server runs as the `postgres` user (PostgreSQL
//! refuses to run as root).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; `url` connects to its `postgres` database as `veil`.
pub struct PgCluster {
    child: Child,
    settings: Vec<String>,
    /// libpq connection parameters.
    pub url: String,
    dir: tempfile::TempDir,
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VEIL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn program(name: &str) -> PathBuf {
    bin_dir().map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `name args` as the `postgres` user when running as root.
fn command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ]);
        c.arg(program(name));
        c
    } else {
        Command::new(program(name))
    }
}

/// Starts `postgres` on `<dir>/data`, its socket in `dir`.
fn spawn(dir: &Path, settings: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let mut postgres = command("postgres");
    postgres.arg("-D").arg(dir.join("data")).arg("-k").arg(dir);
    for setting in settings {
        postgres.arg("-c").arg(setting);
    }
    postgres.stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

impl PgCluster {
    /// Stops the server at once (what a crash does to its clients'
    /// connections) and starts it again on the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path(), &self.settings);
        self.wait_ready();
    }

    fn stop(&mut self) {
        // SIGQUIT: immediate shutdown.
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Creates and starts a server; panics with what to install when the
    /// PostgreSQL server binaries are missing.
    pub fn start() -> Self {
        Self::start_configured(None)
    }

    /// A server that also listens on `127.0.0.1:<port>` with TLS, serving
    /// the PEM certificate chain and key given; (server, port).
    pub fn start_tls(cert: &str, key: &str) -> (Self, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        (Self::start_configured(Some((cert, key, port))), port)
    }

    fn start_configured(tls: Option<(&str, &str, u16)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success(), "chown of {} failed", dir.path().display());
        }
        let data = dir.path().join("data");
        let initdb = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "veil", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL's initdb ({}) did not run: {e}; install the server with \
                     scripts/setup (Debian's postgresql package) or set VEIL_PG_BIN",
                    program("initdb").display()
                )
            });
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut settings = vec!["fsync=off".to_string(), "max_connections=60".to_string()];
        match tls {
            None => settings.push("listen_addresses=".into()),
            Some((cert, key, port)) => {
                // In the data directory: the postgres user owns it, and the
                // key must be private to that user.
                std::fs::write(data.join("server.crt"), cert).unwrap();
                std::fs::write(data.join("server.key"), key).unwrap();
                let fixed = Command::new("chmod")
                    .arg("0600")
                    .arg(data.join("server.key"))
                    .status()
                    .unwrap();
                assert!(fixed.success());
                if is_root() {
                    let chown = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(data.join("server.crt"))
                        .arg(data.join("server.key"))
                        .status()
                        .unwrap();
                    assert!(chown.success());
                }
                settings.extend([
                    "listen_addresses=127.0.0.1".to_string(),
                    format!("port={port}"),
                    "ssl=on".into(),
                ]);
                std::fs::write(
                    data.join("pg_hba.conf"),
                    "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
                )
                .unwrap();
            }
        }
        let child = spawn(dir.path(), &settings);
        let port = tls.map_or(5432, |(_, _, port)| port);
        let cluster = Self {
            child,
            settings,
            url: format!(
                "host={} port={port} user=veil dbname=postgres",
                dir.path().display()
            ),
            dir,
        };
        cluster.wait_ready();
        cluster
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ready = Command::new(program("pg_isready"))
                .arg("-q")
                .arg("-d")
                .arg(&self.url)
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new, empty database on this server; its connection parameters.
    pub fn database(&self, name: &str) -> String {
        let status = Command::new(program("psql"))
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&self.url)
            .arg("-c")
            .arg(format!("CREATE DATABASE {name}"))
            .status()
            .unwrap();
        assert!(status.success(), "CREATE DATABASE {name} failed");
        self.url
            .replace("dbname=postgres", &format!("dbname={name}"))
    }

    /// Runs SQL with psql (what an operator, or an attacker with the
    /// catalog's credentials, would do by hand); returns its output.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(program("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(url)
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The socket directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
