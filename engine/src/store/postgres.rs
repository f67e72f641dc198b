//! PostgreSQL implementation of [`CatalogStore`]: one catalog shared by
//! several Veil servers (DESIGN.md section 7).
//!
//! The rows are the SQLite store's: one `(name, body)` row per entity, the
//! audit log hash-chained the same way. What sharing adds:
//! - changes are made one at a time across servers: a server holds the
//!   session advisory lock [`WRITE_LOCK`] from reading the snapshot a change
//!   is computed from until the change commits ([`CatalogStore::lock_writes`]),
//!   and `apply` refuses changes computed from an older version anyway;
//! - the audit chain's head row is locked (`FOR UPDATE`) by every append, so
//!   records from every server form one chain;
//! - migrations run under a transaction advisory lock, so servers starting
//!   together migrate once.
//!
//! The `postgres` client blocks on a Tokio runtime of its own, which cannot
//! run inside the server's; each connection therefore lives on a thread of
//! its own ([`Conn`]), and a broken connection is opened again at its next use.

use std::sync::{mpsc, Arc, Mutex};

use postgres::error::SqlState;
use postgres::{Client, GenericClient, IsolationLevel, Transaction};
use subtle::ConstantTimeEq;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    anchor_text, check_schema, check_version, expected, load_row, parse_anchor, AuditAnchor,
    AuditEntry, AuditFilter, AuditRecord, AuditVerification, CatalogStore, Change, ENTITY_TABLES,
};
use crate::audit::chain::{self, Verifier};
use crate::error::{Result, VeilError};
use crate::model::CatalogSnapshot;

/// Schema migrations, applied in order; `veil_schema` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES
        ('policy_version', '0'), ('audit_anchor', '0:'), ('audit_head', '0:');
    CREATE TABLE users (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE data_sources (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE policies (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE purposes (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE projects (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE settings (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE workspace_tables (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE audit (
        id BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        impersonated TEXT,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL,
        outcome TEXT NOT NULL,
        mac BYTEA NOT NULL,
        project TEXT
    );
"#];

/// Advisory lock held while migrating ("veil" and 1).
const MIGRATION_LOCK: i64 = 0x7665_696c_0001;
/// Advisory lock held from a change's snapshot to its commit ("veil", 2).
pub const WRITE_LOCK: i64 = 0x7665_696c_0002;
/// How long a connection may sit unused before it is checked at its next use.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a server waits for another one's change before giving up.
const LOCK_TIMEOUT: &str = "30s";

const AUDIT_COLUMNS: &str =
    "id, at, actor, impersonated, action, object, detail, outcome, mac, project";

/// A catalog error: contention between servers is a Conflict (retry);
/// anything else is internal (its text names no secret: the client library
/// leaves passwords out of its messages).
fn pg_err(e: postgres::Error) -> VeilError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
        ]
        .contains(code)
        {
            return VeilError::Conflict(format!(
                "the shared catalog is busy ({}); nothing was written, retry",
                db.message()
            ));
        }
        return VeilError::Internal(format!(
            "catalog storage error: {} (SQLSTATE {})",
            db.message(),
            code.code()
        ));
    }
    VeilError::Internal(format!("catalog storage error: {e}"))
}

/// TLS for catalog connections over TCP: the server's certificate must
/// chain to the system's roots or to the PEM certificates in
/// `PGSSLROOTCERT` or `sslrootcert` (libpq's names) and name the host; rustls has no
/// mode that skips this. `sslmode=require` refuses a server without TLS,
/// the default `prefer` uses TLS when the server offers it, `disable`
/// never (Unix sockets never use TLS).
fn tls(root_cert: Option<&str>) -> Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is one root fewer.
        let _ = roots.add(cert);
    }
    let env = std::env::var_os("PGSSLROOTCERT").map(std::path::PathBuf::from);
    for path in root_cert
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(env)
    {
        use rustls::pki_types::pem::PemObject;
        let bad = |e: String| {
            VeilError::InvalidArgument(format!("catalog root certificates {}: {e}", path.display()))
        };
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&path)
            .map_err(|e| bad(e.to_string()))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| VeilError::Internal(format!("catalog TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Takes libpq's `sslrootcert` out of connection parameters (the client
/// library does not know it): (the other parameters, its value).
fn split_root_cert(params: &str) -> Result<(String, Option<String>)> {
    let bad = |e: String| VeilError::InvalidArgument(format!("catalog parameters: {e}"));
    if params.starts_with("postgres://") || params.starts_with("postgresql://") {
        let mut url = url::Url::parse(params).map_err(|e| bad(e.to_string()))?;
        let mut root = None;
        let rest: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| match k.as_ref() {
                "sslrootcert" => {
                    root = Some(v.into_owned());
                    None
                }
                _ => Some((k.into_owned(), v.into_owned())),
            })
            .collect();
        url.set_query(None);
        if !rest.is_empty() {
            url.query_pairs_mut().extend_pairs(rest);
        }
        return Ok((url.to_string(), root));
    }
    let pattern = regex::Regex::new(r"(?:^|\s)sslrootcert\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
        .map_err(|e| bad(e.to_string()))?;
    let Some(found) = pattern.captures(params) else {
        return Ok((params.to_string(), None));
    };
    let value = found.get(1).map_or("", |m| m.as_str());
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .map_or_else(|| value.to_string(), |v| v.replace("\\'", "'"));
    let whole = found.get(0).map_or(0..0, |m| m.range());
    let rest = format!("{}{}", &params[..whole.start], &params[whole.end..]);
    Ok((rest.trim().to_string(), Some(value)))
}

/// The state of a connection's thread.
struct Worker {
    params: String,
    root_cert: Option<String>,
    client: Option<Client>,
    last_used: std::time::Instant,
}

impl Worker {
    /// The connection, opened again when it broke. One idle for a while is
    /// checked first (the database may have restarted meanwhile, which the
    /// client learns only when it next uses the connection: too late for a
    /// write, which cannot be repeated).
    fn client(&mut self) -> Result<&mut Client> {
        if self.last_used.elapsed() > IDLE_CHECK {
            if let Some(c) = &mut self.client {
                if c.is_valid(IDLE_CHECK).is_err() {
                    self.client = None;
                }
            }
        }
        self.last_used = std::time::Instant::now();
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let config: postgres::Config = self
                .params
                .parse()
                .map_err(|e| VeilError::InvalidArgument(format!("catalog parameters: {e}")))?;
            // A Unix socket is local: no TLS (the client library would try
            // to verify a certificate for an empty host name).
            let local = config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, postgres::config::Host::Unix(_)));
            let connected = if local {
                config.connect(postgres::NoTls)
            } else {
                config.connect(tls(self.root_cert.as_deref())?)
            };
            let client = connected.map_err(|e| {
                let err = pg_err(e);
                let text = err.to_string();
                if text.contains("certificate") || text.contains("TLS") {
                    return VeilError::Internal(format!(
                        "{text} (the catalog server's certificate must verify against the \
                         system's roots or sslrootcert / PGSSLROOTCERT and name the host)"
                    ));
                }
                err
            })?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| VeilError::Internal("no catalog connection".into()))
    }
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// One connection, driven on a thread of its own.
struct Conn {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Whether reads are repeated on a new connection (see [`Conn::run`]).
    retry_reads: bool,
}

impl Conn {
    /// Starts the thread and opens the connection (so a bad address or
    /// password fails at start-up).
    fn open(params: &str, name: &str, retry_reads: bool) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (params, root_cert) = split_root_cert(params)?;
        let mut worker = Worker {
            params,
            root_cert,
            client: None,
            last_used: std::time::Instant::now(),
        };
        std::thread::Builder::new()
            .name(format!("veil-catalog-{name}"))
            .spawn(move || {
                for job in rx {
                    job(&mut worker);
                }
            })
            .map_err(|e| VeilError::Internal(format!("catalog connection thread: {e}")))?;
        let conn = Self {
            jobs: Mutex::new(tx),
            retry_reads,
        };
        conn.run(|_| Ok(()))?;
        Ok(conn)
    }

    /// Runs `f` on the connection and waits for its answer. A panic inside
    /// `f` drops the connection (it may be mid-transaction) and is an error.
    /// On the read connection, `f` runs once more, on a new connection,
    /// when the first run found the connection closed (the database
    /// restarted): reads can be repeated, a write whose commit went
    /// unanswered cannot, so a write fails and its statement with it.
    fn run<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Client) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let gone = || VeilError::Internal("the catalog connection's thread ended".into());
        let retry = self.retry_reads;
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |w: &mut Worker| {
            let once = |w: &mut Worker| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.client().and_then(&f)))
                    .unwrap_or_else(|_| {
                        w.client = None;
                        Err(VeilError::Internal("a catalog operation panicked".into()))
                    })
            };
            let mut result = once(w);
            if result.is_err() && retry && w.client.as_ref().is_some_and(Client::is_closed) {
                result = once(w);
            }
            let _ = tx.send(result);
        });
        self.jobs
            .lock()
            .map_err(|_| gone())?
            .send(job)
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

/// The shared catalog. Writes (changes, audit appends, the write lock) go
/// through one connection, reads (the version checked at every statement,
/// snapshots, the audit table) through another, so reads never wait for a
/// commit.
pub struct PostgresStore {
    writer: Conn,
    reader: Conn,
    audit_key: [u8; 32],
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may hold a password.
        f.write_str("PostgresStore")
    }
}

/// A value of the `meta` table; `lock` holds its row until the
/// transaction ends.
fn meta(c: &mut impl GenericClient, key: &str, lock: bool) -> Result<String> {
    let sql = if lock {
        "SELECT value FROM meta WHERE key = $1 FOR UPDATE"
    } else {
        "SELECT value FROM meta WHERE key = $1"
    };
    col(&c.query_one(sql, &[&key]).map_err(pg_err)?, 0)
}

fn read_anchor(c: &mut impl GenericClient, key: &str, lock: bool) -> Result<AuditAnchor> {
    parse_anchor(key, &meta(c, key, lock)?)
}

fn write_anchor(tx: &mut Transaction<'_>, key: &str, a: &AuditAnchor) -> Result<()> {
    tx.execute(
        "UPDATE meta SET value = $2 WHERE key = $1",
        &[&key, &anchor_text(a)],
    )
    .map_err(pg_err)?;
    Ok(())
}

fn stored_version(c: &mut impl GenericClient, lock: bool) -> Result<u64> {
    meta(c, "policy_version", lock)?
        .parse()
        .map_err(|_| VeilError::Internal("policy_version is not a number".into()))
}

/// Column `i` of a row (an error, not a panic, when the catalog's tables
/// were altered under the server).
fn col<'a, T: postgres::types::FromSql<'a>>(r: &'a postgres::Row, i: usize) -> Result<T> {
    r.try_get(i)
        .map_err(|e| VeilError::Internal(format!("catalog column {i}: {e}")))
}

fn audit_row(r: &postgres::Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: col(r, 0)?,
        at: col(r, 1)?,
        entry: AuditEntry {
            actor: col(r, 2)?,
            impersonated: col(r, 3)?,
            action: col(r, 4)?,
            object: col(r, 5)?,
            detail: col(r, 6)?,
            outcome: col(r, 7)?,
            project: col(r, 9)?,
        },
        mac: col(r, 8)?,
    })
}

/// A read-only transaction that sees one committed state throughout.
fn consistent_read(c: &mut Client) -> Result<Transaction<'_>> {
    c.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg_err)
}

/// Appends records to the chain inside `tx`, moving the head (locked until
/// `tx` ends, so appends from every server chain one after another).
fn append(key: &[u8; 32], tx: &mut Transaction<'_>, entries: &[AuditEntry]) -> Result<()> {
    let mut head = read_anchor(tx, "audit_head", true)?;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let insert = tx
        .prepare(&format!(
            "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .map_err(pg_err)?;
    for e in entries {
        let mac = chain::mac(key, &head.mac, &at, e);
        head.id += 1;
        tx.execute(
            &insert,
            &[
                &head.id,
                &at,
                &e.actor,
                &e.impersonated,
                &e.action,
                &e.object,
                &e.detail,
                &e.outcome,
                &mac,
                &e.project,
            ],
        )
        .map_err(pg_err)?;
        head.mac = mac;
    }
    write_anchor(tx, "audit_head", &head)
}

/// Applies the migrations not applied yet, under an advisory lock.
fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS veil_schema (version INTEGER NOT NULL)")
        .map_err(pg_err)?;
    let applied: i64 = col(
        &tx.query_one("SELECT count(*) FROM veil_schema", &[])
            .map_err(pg_err)?,
        0,
    )?;
    let applied = check_schema(applied, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).map_err(pg_err)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO veil_schema (version) VALUES ($1)", &[&version])
            .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)
}

impl PostgresStore {
    /// Connects to the catalog at `params` (a `postgres://` URL or
    /// `key=value` pairs, as libpq takes them) and migrates it. `audit_key`
    /// keys the audit hash chain: every server sharing the catalog needs
    /// the same master key.
    pub fn connect(params: &str, audit_key: [u8; 32]) -> Result<Self> {
        let writer = Conn::open(params, "writer", false)?;
        writer.run(migrate)?;
        let reader = Conn::open(params, "reader", true)?;
        Ok(Self {
            writer,
            reader,
            audit_key,
        })
    }
}

impl CatalogStore for PostgresStore {
    fn version(&self) -> Result<u64> {
        self.reader.run(|c| stored_version(c, false))
    }

    fn load(&self) -> Result<CatalogSnapshot> {
        self.reader.run(|c| {
            let mut tx = consistent_read(c)?;
            let mut snap = CatalogSnapshot {
                version: stored_version(&mut tx, false)?,
                ..Default::default()
            };
            for table in ENTITY_TABLES {
                for row in tx
                    .query(&format!("SELECT name, body FROM {table}"), &[])
                    .map_err(pg_err)?
                {
                    let body: String = col(&row, 1)?;
                    load_row(&mut snap, table, col(&row, 0)?, &body)?;
                }
            }
            tx.commit().map_err(pg_err)?;
            Ok(snap)
        })
    }

    fn apply(&self, changes: &[Change], audit: &AuditEntry, based_on: u64) -> Result<u64> {
        let changes = changes.to_vec();
        let audit = audit.clone();
        let key = self.audit_key;
        self.writer.run(move |c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            let version = stored_version(&mut tx, true)?;
            check_version(based_on, version)?;
            for change in &changes {
                if let Some((project, name, expect)) = change.expects() {
                    let stored: Option<String> = tx
                        .query_opt(
                            "SELECT body FROM workspace_tables WHERE name = $1",
                            &[&super::workspace_key(project, name)],
                        )
                        .map_err(pg_err)?
                        .map(|r| col(&r, 0))
                        .transpose()?;
                    expected(name, expect, stored.as_deref())?;
                }
                let (table, name, body) = change.row()?;
                match body {
                    Some(body) => tx.execute(
                        &format!(
                            "INSERT INTO {table} (name, body) VALUES ($1, $2) \
                             ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body"
                        ),
                        &[&name, &body],
                    ),
                    None => tx.execute(&format!("DELETE FROM {table} WHERE name = $1"), &[&name]),
                }
                .map_err(pg_err)?;
            }
            let next = version + 1;
            tx.execute(
                "UPDATE meta SET value = $1 WHERE key = 'policy_version'",
                &[&next.to_string()],
            )
            .map_err(pg_err)?;
            append(&key, &mut tx, std::slice::from_ref(&audit))?;
            tx.commit().map_err(pg_err)?;
            Ok(next)
        })
    }

    fn lock_writes(&self) -> Result<()> {
        self.writer.run(|c| {
            c.batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
                .map_err(pg_err)?;
            let locked = c.execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK]);
            c.batch_execute("SET lock_timeout = 0").map_err(pg_err)?;
            locked.map_err(|e| match pg_err(e) {
                VeilError::Conflict(_) => VeilError::Conflict(format!(
                    "another server held the catalog's write lock for {LOCK_TIMEOUT}; \
                     nothing was written, retry"
                )),
                other => other,
            })?;
            Ok(())
        })
    }

    fn unlock_writes(&self) {
        let unlocked = self.writer.run(|c| {
            c.execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK])
                .map_err(pg_err)?;
            Ok(())
        });
        if let Err(e) = unlocked {
            // The lock went with a broken connection, or was never taken.
            tracing::warn!("catalog write lock: {e}");
        }
    }

    fn audit_batch(&self, entries: &[AuditEntry]) -> Result<()> {
        let entries = entries.to_vec();
        let key = self.audit_key;
        self.writer.run(move |c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            append(&key, &mut tx, &entries)?;
            tx.commit().map_err(pg_err)
        })
    }

    fn audit_records(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let f = f.clone();
        self.reader.run(move |c| {
            let limit = f.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
            let rows = c
                .query(
                    &format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit
                         WHERE ($1::BIGINT IS NULL OR id >= $1) AND ($2::BIGINT IS NULL OR id <= $2)
                           AND ($3::TEXT IS NULL OR at >= $3) AND ($4::TEXT IS NULL OR at < $4)
                           AND ($5::TEXT IS NULL OR actor = $5) AND ($6::TEXT IS NULL OR action = $6)
                         ORDER BY id LIMIT $7"
                    ),
                    &[
                        &f.min_id, &f.max_id, &f.since, &f.before, &f.actor, &f.action, &limit,
                    ],
                )
                .map_err(pg_err)?;
            rows.iter().map(audit_row).collect()
        })
    }

    fn verify_audit(&self) -> Result<AuditVerification> {
        let key = self.audit_key;
        self.reader.run(move |c| {
            use postgres::fallible_iterator::FallibleIterator;
            let mut tx = consistent_read(c)?;
            let anchor = read_anchor(&mut tx, "audit_anchor", false)?;
            let head = read_anchor(&mut tx, "audit_head", false)?;
            let mut verifier = Verifier::after(&key, &anchor);
            let none: [&str; 0] = [];
            let mut rows = tx
                .query_raw(
                    &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"),
                    none,
                )
                .map_err(pg_err)?;
            while let Some(row) = rows.next().map_err(pg_err)? {
                verifier.check(&audit_row(&row)?);
            }
            drop(rows);
            verifier.finish(&head);
            tx.commit().map_err(pg_err)?;
            Ok(AuditVerification {
                records: verifier.records,
                first_broken: verifier.first_broken,
                unreadable: vec![],
            })
        })
    }

    fn audit_anchor(&self) -> Result<AuditAnchor> {
        self.reader.run(|c| read_anchor(c, "audit_anchor", false))
    }

    fn archive_audit(&self, anchor: &AuditAnchor) -> Result<usize> {
        let anchor = anchor.clone();
        self.writer.run(move |c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            read_anchor(&mut tx, "audit_anchor", true)?;
            let stored: Option<Vec<u8>> = tx
                .query_opt("SELECT mac FROM audit WHERE id = $1", &[&anchor.id])
                .map_err(pg_err)?
                .map(|r| col(&r, 0))
                .transpose()?;
            if !stored.is_some_and(|m| bool::from(m.ct_eq(&anchor.mac))) {
                return Err(VeilError::Conflict(format!(
                    "audit record {} is not the one archived; nothing was removed",
                    anchor.id
                )));
            }
            let removed = tx
                .execute("DELETE FROM audit WHERE id <= $1", &[&anchor.id])
                .map_err(pg_err)?;
            write_anchor(&mut tx, "audit_anchor", &anchor)?;
            tx.commit().map_err(pg_err)?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::split_root_cert;

    #[test]
    fn sslrootcert_is_taken_out_of_either_form() {
        let (rest, root) =
            split_root_cert("host=db sslmode=require sslrootcert=/etc/ca.pem user=veil").unwrap();
        assert_eq!(rest, "host=db sslmode=require user=veil");
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, root) = split_root_cert(r"sslrootcert='/my ca/it\'s.pem' host=db").unwrap();
        assert_eq!(rest, "host=db");
        assert_eq!(root.as_deref(), Some("/my ca/it's.pem"));
        let (rest, root) = split_root_cert(
            "postgres://veil:pw@db:5432/veil?sslmode=require&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://veil:pw@db:5432/veil?sslmode=require");
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, root) = split_root_cert("host=db user=veil").unwrap();
        assert_eq!((rest.as_str(), root), ("host=db user=veil", None));
    }
}
