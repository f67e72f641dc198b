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

impl PgCluster {
    /// Creates and starts a server; panics with what to install when the
    /// PostgreSQL server binaries are missing.
    pub fn start() -> Self {
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
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=60",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let cluster = Self {
            child,
            url: format!("host={} user=veil dbname=postgres", dir.path().display()),
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
                .arg("-h")
                .arg(self.dir.path())
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
        format!("host={} user=veil dbname={name}", self.dir.path().display())
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
        // SIGQUIT: immediate shutdown (the data is thrown away anyway).
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
