//! SQLite implementation of [`CatalogStore`] (WAL, versioned migrations).
//!
//! Entities are stored one row each, their fields as JSON; the audit log is
//! hash-chained: each record's MAC is HMAC-SHA256(audit key, previous MAC ||
//! record content), so an edited, removed or reordered record breaks the chain.

use std::path::Path;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    anchor_text, check_schema, check_version, expected, load_row, parse_anchor, workspace_key,
    AuditAnchor, AuditEntry, AuditFilter, AuditRecord, AuditVerification, CatalogStore, Change,
    Expect, ENTITY_TABLES,
};
use crate::audit::chain::{self, Verifier};
use crate::error::{Result, VeilError};
use crate::model::CatalogSnapshot;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('policy_version', '0');
    CREATE TABLE users (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE data_sources (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE policies (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        impersonated TEXT,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL,
        outcome TEXT NOT NULL,
        mac BLOB NOT NULL
    );
"#,
    r#"
    CREATE TABLE purposes (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE projects (name TEXT PRIMARY KEY, body TEXT NOT NULL);
"#,
    r#"
    CREATE TABLE settings (name TEXT PRIMARY KEY, body TEXT NOT NULL);
"#,
    r#"
    CREATE TABLE workspace_tables (name TEXT PRIMARY KEY, body TEXT NOT NULL);
"#,
    // The audit project column; the anchor (last archived record) and the
    // head (last appended record) of the chain, as "id:mac-hex".
    r#"
    ALTER TABLE audit ADD COLUMN project TEXT;
    INSERT INTO meta (key, value) VALUES ('audit_anchor', '0:');
    INSERT INTO meta (key, value)
        SELECT 'audit_head', COALESCE(
            (SELECT id || ':' || lower(hex(mac)) FROM audit ORDER BY id DESC LIMIT 1), '0:');
"#,
    // The audit table without AUTOINCREMENT: ids come from the chain's head
    // (never reused, archives included), and every group commit no longer
    // rewrites the `sqlite_sequence` page (one WAL frame fewer per commit).
    r#"
    CREATE TABLE audit_rowid (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        impersonated TEXT,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL,
        outcome TEXT NOT NULL,
        mac BLOB NOT NULL,
        project TEXT
    );
    INSERT INTO audit_rowid (id, at, actor, impersonated, action, object, detail, outcome, mac, project)
        SELECT id, at, actor, impersonated, action, object, detail, outcome, mac, project
        FROM audit ORDER BY id;
    DROP TABLE audit;
    ALTER TABLE audit_rowid RENAME TO audit;
"#,
];

const AUDIT_COLUMNS: &str =
    "id, at, actor, impersonated, action, object, detail, outcome, mac, project";

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        entry: AuditEntry {
            actor: r.get(2)?,
            impersonated: r.get(3)?,
            action: r.get(4)?,
            object: r.get(5)?,
            detail: r.get(6)?,
            outcome: r.get(7)?,
            project: r.get(9)?,
        },
        mac: r.get(8)?,
    })
}

fn read_anchor(tx: &Connection, key: &str) -> Result<AuditAnchor> {
    let v: String = tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))?;
    parse_anchor(key, &v)
}

fn write_anchor(tx: &Connection, key: &str, a: &AuditAnchor) -> Result<()> {
    tx.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?
        .execute(params![key, anchor_text(a)])?;
    Ok(())
}

/// A write transaction that takes the database's write lock at its start
/// (waiting up to the busy timeout): one that read first and wrote later
/// would fail at once (SQLITE_BUSY) when another process, say `veil apply`
/// or `veil export` beside a running server, wrote in between.
fn write_transaction(conn: &mut Connection) -> Result<Transaction<'_>> {
    Ok(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?)
}

/// The embedded catalog store. Writes go through one connection; reads
/// (the policy version checked at every statement, snapshots, the audit
/// table) through a second one, so in WAL mode they never wait for a
/// commit's fsync.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    reader: Option<Mutex<Connection>>,
    audit_key: [u8; 32],
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the catalog at `path` and migrates it.
    /// `audit_key` keys the audit hash chain.
    pub fn open(path: &Path, audit_key: [u8; 32]) -> Result<Self> {
        let conn = Connection::open(path)?;
        let mut store = Self::init(conn, audit_key)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", "ON")?;
        store.reader = Some(Mutex::new(reader));
        Ok(store)
    }

    /// An in-memory catalog (tests).
    pub fn in_memory(audit_key: [u8; 32]) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, audit_key)
    }

    fn init(conn: Connection, audit_key: [u8; 32]) -> Result<Self> {
        Self::migrate(conn, audit_key, MIGRATIONS)
    }

    /// Applies the `migrations` not applied yet (tests stop at older schemas).
    fn migrate(mut conn: Connection, audit_key: [u8; 32], migrations: &[&str]) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let applied = check_schema(applied, migrations.len())?;
        for (i, sql) in migrations.iter().enumerate().skip(applied) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            reader: None,
            audit_key,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| VeilError::Internal("catalog connection lock poisoned".into()))
    }

    /// The read connection (the write connection for in-memory catalogs).
    fn read(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.reader
            .as_ref()
            .unwrap_or(&self.conn)
            .lock()
            .map_err(|_| VeilError::Internal("catalog connection lock poisoned".into()))
    }

    /// Appends records to the chain inside `tx`, moving the head.
    fn append(&self, tx: &Transaction<'_>, entries: &[AuditEntry]) -> Result<()> {
        let mut head = read_anchor(tx, "audit_head")?;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (id, at, actor, impersonated, action, object, detail, outcome, mac, project)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for e in entries {
            let mac = chain::mac(&self.audit_key, &head.mac, &at, e);
            head.id += 1;
            insert.execute(params![
                head.id,
                at,
                e.actor,
                e.impersonated,
                e.action,
                e.object,
                e.detail,
                e.outcome,
                mac,
                e.project
            ])?;
            head.mac = mac;
        }
        drop(insert);
        write_anchor(tx, "audit_head", &head)
    }
}

/// Refuses a workspace change when another writer committed first.
fn check_expected(tx: &Transaction<'_>, project: &str, name: &str, expect: Expect) -> Result<()> {
    let key = workspace_key(project, name);
    let stored: Option<String> = tx
        .query_row(
            "SELECT body FROM workspace_tables WHERE name = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()?;
    expected(name, expect, stored.as_deref())
}

impl CatalogStore for SqliteStore {
    fn version(&self) -> Result<u64> {
        let conn = self.read()?;
        let v: String = conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'policy_version'")?
            .query_row([], |r| r.get(0))?;
        v.parse()
            .map_err(|_| VeilError::Internal("policy_version is not a number".into()))
    }

    fn load(&self) -> Result<CatalogSnapshot> {
        let conn = self.read()?;
        let tx = conn.unchecked_transaction()?;
        let version: String = tx.query_row(
            "SELECT value FROM meta WHERE key = 'policy_version'",
            [],
            |r| r.get(0),
        )?;
        let mut snap = CatalogSnapshot {
            version: version.parse().unwrap_or(0),
            ..Default::default()
        };
        let rows = |table: &str| -> Result<Vec<(String, String)>> {
            let mut stmt = tx.prepare(&format!("SELECT name, body FROM {table}"))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        };
        for table in ENTITY_TABLES {
            for (name, body) in rows(table)? {
                load_row(&mut snap, table, name, &body)?;
            }
        }
        Ok(snap)
    }

    fn apply(&self, changes: &[Change], audit: &AuditEntry, based_on: u64) -> Result<u64> {
        let mut conn = self.lock()?;
        let tx = write_transaction(&mut conn)?;
        let stored: String = tx.query_row(
            "SELECT value FROM meta WHERE key = 'policy_version'",
            [],
            |r| r.get(0),
        )?;
        check_version(based_on, stored.parse().unwrap_or(0))?;
        for change in changes {
            if let Some((project, name, expect)) = change.expects() {
                check_expected(&tx, project, name, expect)?;
            }
            let (table, name, body) = change.row()?;
            match body {
                Some(body) => tx.execute(
                    &format!("INSERT OR REPLACE INTO {table} (name, body) VALUES (?1, ?2)"),
                    params![name, body],
                )?,
                None => tx.execute(
                    &format!("DELETE FROM {table} WHERE name = ?1"),
                    params![name],
                )?,
            };
        }
        tx.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)
             WHERE key = 'policy_version'",
            [],
        )?;
        self.append(&tx, std::slice::from_ref(audit))?;
        let v: String = tx.query_row(
            "SELECT value FROM meta WHERE key = 'policy_version'",
            [],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(v.parse().unwrap_or(0))
    }

    fn audit_batch(&self, entries: &[AuditEntry]) -> Result<()> {
        let mut conn = self.lock()?;
        let tx = write_transaction(&mut conn)?;
        self.append(&tx, entries)?;
        tx.commit()?;
        Ok(())
    }

    fn audit_records(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit
             WHERE (?1 IS NULL OR id >= ?1) AND (?2 IS NULL OR id <= ?2)
               AND (?3 IS NULL OR at >= ?3) AND (?4 IS NULL OR at < ?4)
               AND (?5 IS NULL OR actor = ?5) AND (?6 IS NULL OR action = ?6)
             ORDER BY id LIMIT ?7"
        ))?;
        let limit = f.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = stmt.query_map(
            params![f.min_id, f.max_id, f.since, f.before, f.actor, f.action, limit],
            audit_row,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn verify_audit(&self) -> Result<AuditVerification> {
        let conn = self.read()?;
        let tx = conn.unchecked_transaction()?;
        let anchor = read_anchor(&tx, "audit_anchor")?;
        let head = read_anchor(&tx, "audit_head")?;
        let mut verifier = Verifier::after(&self.audit_key, &anchor);
        let mut stmt = tx.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            verifier.check(&audit_row(r)?);
        }
        verifier.finish(&head);
        Ok(AuditVerification {
            records: verifier.records,
            first_broken: verifier.first_broken,
            unreadable: vec![],
        })
    }

    fn audit_anchor(&self) -> Result<AuditAnchor> {
        let conn = self.read()?;
        read_anchor(&conn, "audit_anchor")
    }

    fn archive_audit(&self, anchor: &AuditAnchor) -> Result<usize> {
        let mut conn = self.lock()?;
        let tx = write_transaction(&mut conn)?;
        let stored: Option<Vec<u8>> = tx
            .query_row("SELECT mac FROM audit WHERE id = ?1", [anchor.id], |r| {
                r.get(0)
            })
            .optional()?;
        if !stored.is_some_and(|m| bool::from(m.ct_eq(&anchor.mac))) {
            return Err(VeilError::Conflict(format!(
                "audit record {} is not the one archived; nothing was removed",
                anchor.id
            )));
        }
        let removed = tx.execute("DELETE FROM audit WHERE id <= ?1", [anchor.id])?;
        write_anchor(&tx, "audit_anchor", anchor)?;
        tx.commit()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> AuditEntry {
        AuditEntry {
            actor: "alice".into(),
            action: "Query".into(),
            object: format!("q{n}"),
            detail: "{}".into(),
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    fn open_at(path: &Path, migrations: &[&str]) -> SqliteStore {
        SqliteStore::migrate(Connection::open(path).unwrap(), [7; 32], migrations).unwrap()
    }

    /// A catalog written before the audit table lost AUTOINCREMENT keeps its
    /// records, ids and chain, and goes on from its head.
    #[test]
    fn the_audit_table_migrates_off_autoincrement_with_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let before = MIGRATIONS.len() - 1;
        {
            let old = open_at(&path, &MIGRATIONS[..before]);
            let entries: Vec<_> = (0..5).map(entry).collect();
            old.audit_batch(&entries).unwrap();
            // Archive the first two (the anchor moves past them).
            let second = old.audit_records(&AuditFilter::default()).unwrap()[1].clone();
            old.archive_audit(&AuditAnchor {
                id: second.id,
                mac: second.mac,
            })
            .unwrap();
        }
        let store = open_at(&path, MIGRATIONS);
        let conn = store.lock().unwrap();
        let table_sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!table_sql.contains("AUTOINCREMENT"), "{table_sql}");
        drop(conn);
        let verified = store.verify_audit().unwrap();
        assert_eq!((verified.records, verified.first_broken), (3, None));
        store.audit_batch(&[entry(5)]).unwrap();
        let ids: Vec<i64> = store
            .audit_records(&AuditFilter::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [3, 4, 5, 6]);
        assert_eq!(store.verify_audit().unwrap().first_broken, None);
    }

    /// With every record archived, the next id still follows the head (no
    /// reuse of an archived id, which AUTOINCREMENT used to guarantee).
    #[test]
    fn ids_are_never_reused_after_the_whole_log_is_archived() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("catalog.db"), [7; 32]).unwrap();
        store.audit_batch(&[entry(0), entry(1)]).unwrap();
        let last = store.audit_records(&AuditFilter::default()).unwrap()[1].clone();
        let removed = store
            .archive_audit(&AuditAnchor {
                id: last.id,
                mac: last.mac,
            })
            .unwrap();
        assert_eq!(removed, 2);
        store.audit_batch(&[entry(2)]).unwrap();
        let ids: Vec<i64> = store
            .audit_records(&AuditFilter::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [3]);
        assert_eq!(store.verify_audit().unwrap().first_broken, None);
    }
}
