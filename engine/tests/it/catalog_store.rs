//! The two catalog stores behave alike (SQLite embedded, PostgreSQL
//! shared), and the PostgreSQL one stays one catalog when several servers
//! write to it at once: every change applied exactly once, one audit chain,
//! tampering found, stale changes refused.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::pg::PgCluster;
use veil_engine::model::User;
use veil_engine::store::{
    AuditAnchor, AuditEntry, AuditFilter, CatalogStore, Change, Expect, PostgresStore, SqliteStore,
};
use veil_engine::workspace::WorkspaceTable;
use veil_engine::ErrorKind;

const KEY: [u8; 32] = [9; 32];

fn user(name: &str) -> User {
    User {
        name: name.into(),
        password_hash: None,
        groups: BTreeSet::from(["staff".to_string()]),
        attributes: Default::default(),
        permissions: Default::default(),
    }
}

fn entry(action: &str, object: &str) -> AuditEntry {
    AuditEntry {
        actor: "alice".into(),
        action: action.into(),
        object: object.into(),
        detail: "{}".into(),
        outcome: "ok".into(),
        ..Default::default()
    }
}

fn table(name: &str, version: u64) -> WorkspaceTable {
    serde_json::from_value(serde_json::json!({
        "project_id": "p1", "name": name, "version": version, "arrow_schema": "{}",
        "files": [], "rows": 0, "masked": {}, "parents": [], "project_keyed": false,
        "incarnation": "i1", "created_by": "bob", "updated_by": "bob", "updated_at": "now",
    }))
    .unwrap()
}

/// Changes, versions, conditional workspace changes and the audit log.
fn behaves_as_a_catalog(store: &dyn CatalogStore) {
    assert_eq!(store.version().unwrap(), 0);
    let v = store
        .apply(
            &[Change::PutUser(user("bob")), Change::PutUser(user("carol"))],
            &entry("CreateUser", "bob"),
            0,
        )
        .unwrap();
    assert_eq!(v, 1);
    let snap = store.load().unwrap();
    assert_eq!(snap.version, 1);
    assert_eq!(snap.users.keys().collect::<Vec<_>>(), ["bob", "carol"]);
    assert_eq!(snap.users["bob"], user("bob"));

    // Changes computed from version 0 are refused now, and write nothing.
    let e = store
        .apply(
            &[Change::DeleteUser("bob".into())],
            &entry("DropUser", "bob"),
            0,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted, "{e}");
    assert!(e.to_string().contains("version 0 is now 1"), "{e}");
    assert!(store.load().unwrap().users.contains_key("bob"));
    assert_eq!(store.version().unwrap(), 1);

    store
        .apply(
            &[Change::DeleteUser("bob".into())],
            &entry("DropUser", "bob"),
            1,
        )
        .unwrap();
    assert_eq!(
        store.load().unwrap().users.keys().collect::<Vec<_>>(),
        ["carol"]
    );

    // Workspace tables: created once, replaced only from the stored version.
    store
        .apply(
            &[Change::PutWorkspaceTable(table("t", 1), Expect::Absent)],
            &entry("WorkspaceWrite", "t"),
            2,
        )
        .unwrap();
    let e = store
        .apply(
            &[Change::PutWorkspaceTable(table("t", 1), Expect::Absent)],
            &entry("WorkspaceWrite", "t"),
            3,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = store
        .apply(
            &[Change::PutWorkspaceTable(table("t", 3), Expect::Version(2))],
            &entry("WorkspaceWrite", "t"),
            3,
        )
        .unwrap_err();
    assert!(e.to_string().contains("version 2 is now 1"), "{e}");
    store
        .apply(
            &[Change::PutWorkspaceTable(table("t", 2), Expect::Version(1))],
            &entry("WorkspaceWrite", "t"),
            3,
        )
        .unwrap();
    assert_eq!(store.load().unwrap().workspaces["p1"]["t"].version, 2);

    // The audit log: one record per change (refusals are not changes)
    // plus the batch, in order, filtered, verified, archived.
    store
        .audit_batch(&[entry("Query", "q1"), entry("Query", "q2")])
        .unwrap();
    let all = store.audit_records(&AuditFilter::default()).unwrap();
    let actions: Vec<&str> = all.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "CreateUser",
            "DropUser",
            "WorkspaceWrite",
            "WorkspaceWrite",
            "Query",
            "Query"
        ]
    );
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let queries = store
        .audit_records(&AuditFilter {
            action: Some("Query".into()),
            min_id: Some(6),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0].entry.object, "q2");
    let limited = store
        .audit_records(&AuditFilter {
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(limited.len(), 2);
    let v = store.verify_audit().unwrap();
    assert_eq!((v.records, v.first_broken), (6, None));

    let e = store
        .archive_audit(&AuditAnchor {
            id: 2,
            mac: vec![0; 32],
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted, "{e}");
    let anchor = AuditAnchor {
        id: all[1].id,
        mac: all[1].mac.clone(),
    };
    assert_eq!(store.archive_audit(&anchor).unwrap(), 2);
    assert_eq!(store.audit_anchor().unwrap(), anchor);
    store.audit(&entry("Query", "q3")).unwrap();
    let v = store.verify_audit().unwrap();
    assert_eq!((v.records, v.first_broken), (5, None));
    assert_eq!(
        store.audit_records(&AuditFilter::default()).unwrap()[4].id,
        7
    );
}

#[test]
fn the_sqlite_store_behaves_as_a_catalog() {
    let dir = tempfile::tempdir().unwrap();
    behaves_as_a_catalog(&SqliteStore::open(&dir.path().join("c.sqlite"), KEY).unwrap());
}

#[test]
fn the_postgres_store_behaves_as_a_catalog() {
    let pg = PgCluster::start();
    let url = pg.database("one");
    behaves_as_a_catalog(&PostgresStore::connect(&url, KEY).unwrap());
    // Opened again (a restart): same catalog, migrations not run twice.
    let again = PostgresStore::connect(&url, KEY).unwrap();
    assert_eq!(again.version().unwrap(), 4);
    assert_eq!(again.verify_audit().unwrap().first_broken, None);
}

/// Two servers' stores on one database, each with four threads: every
/// thread changes the catalog under the write lock and appends query
/// records at the same time. Every change lands once, on the version it
/// was computed from, and the audit log stays one unbroken chain.
#[test]
fn servers_sharing_a_postgres_catalog_make_one_history() {
    let pg = PgCluster::start();
    let url = pg.database("shared");
    // Each server serializes its own threads (the engine's write guard);
    // the store's lock serializes the servers.
    let servers: Vec<(Arc<PostgresStore>, Arc<std::sync::Mutex<()>>)> = (0..2)
        .map(|_| {
            (
                Arc::new(PostgresStore::connect(&url, KEY).unwrap()),
                Arc::default(),
            )
        })
        .collect();
    const PER_THREAD: usize = 10;
    let mut threads = vec![];
    for (s, (store, local)) in servers.iter().enumerate() {
        for t in 0..4 {
            let store = Arc::clone(store);
            let local = Arc::clone(local);
            threads.push(std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let name = format!("u{s}_{t}_{i}");
                    let guard = local.lock().unwrap();
                    store.lock_writes().unwrap();
                    let based_on = store.load().unwrap().version;
                    store
                        .apply(
                            &[Change::PutUser(user(&name))],
                            &entry("CreateUser", &name),
                            based_on,
                        )
                        .unwrap();
                    store.unlock_writes();
                    drop(guard);
                    store.audit_batch(&[entry("Query", &name)]).unwrap();
                }
            }));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let changes = 2 * 4 * PER_THREAD;
    let servers: Vec<Arc<PostgresStore>> = servers.into_iter().map(|(s, _)| s).collect();
    for store in &servers {
        let snap = store.load().unwrap();
        assert_eq!(snap.users.len(), changes);
        assert_eq!(snap.version, changes as u64);
        let v = store.verify_audit().unwrap();
        assert_eq!((v.records, v.first_broken), (2 * changes as i64, None));
    }
    let ids: Vec<i64> = servers[0]
        .audit_records(&AuditFilter::default())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, (1..=2 * changes as i64).collect::<Vec<_>>());

    // Without the lock, a change computed from an old snapshot is refused.
    let e = servers[1]
        .apply(
            &[Change::DeleteUser("u0_0_0".into())],
            &entry("DropUser", "u0_0_0"),
            3,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted, "{e}");
    assert!(servers[0].load().unwrap().users.contains_key("u0_0_0"));
}

/// Someone with the database's credentials edits, deletes or reorders
/// audit rows: VERIFY AUDIT finds the first broken record.
#[test]
fn tampering_with_the_postgres_audit_table_is_found() {
    let pg = PgCluster::start();
    let url = pg.database("tamper");
    let store = PostgresStore::connect(&url, KEY).unwrap();
    let entries: Vec<AuditEntry> = (0..6).map(|i| entry("Query", &format!("q{i}"))).collect();
    store.audit_batch(&entries).unwrap();
    assert_eq!(store.verify_audit().unwrap().first_broken, None);

    pg.psql(&url, "UPDATE audit SET actor = 'mallory' WHERE id = 3");
    assert_eq!(store.verify_audit().unwrap().first_broken, Some(3));
    pg.psql(&url, "UPDATE audit SET actor = 'alice' WHERE id = 3");
    assert_eq!(store.verify_audit().unwrap().first_broken, None);

    pg.psql(&url, "DELETE FROM audit WHERE id = 5");
    assert_eq!(store.verify_audit().unwrap().first_broken, Some(5));

    // Cutting the tail: the head row still names the last record.
    pg.psql(&url, "DELETE FROM audit WHERE id >= 4");
    assert!(store.verify_audit().unwrap().first_broken.is_some());
}

/// A catalog written by a newer server is refused, not rewritten.
#[test]
fn a_postgres_catalog_from_a_newer_server_is_refused() {
    let pg = PgCluster::start();
    let url = pg.database("newer");
    drop(PostgresStore::connect(&url, KEY).unwrap());
    pg.psql(&url, "INSERT INTO veil_schema (version) VALUES (99)");
    let e = PostgresStore::connect(&url, KEY).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("newer than this server"), "{e}");
}

/// A wrong address fails at start-up with the catalog's error, naming no
/// password.
#[test]
fn an_unreachable_postgres_catalog_fails_at_start() {
    let pg = PgCluster::start();
    let url = format!(
        "host={} port=1 user=veil password=hunter2 dbname=postgres",
        pg.dir().display()
    );
    let e = PostgresStore::connect(&url, KEY).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("catalog storage error"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A CA and a server certificate for `127.0.0.1` it signed: (CA PEM,
/// server chain PEM, server key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

/// Over TCP the catalog connection uses TLS and verifies the server: with
/// the CA it connects (`sslmode=require`), without it the certificate is
/// refused, and `sslmode=disable` against a server that requires TLS is
/// refused by the server.
#[test]
fn the_postgres_catalog_connects_over_verified_tls() {
    let (ca, chain, key) = certificates();
    let (pg, port) = PgCluster::start_tls(&chain, &key);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let tcp = format!("host=127.0.0.1 port={port} user=veil dbname=postgres");

    let url = format!("{tcp} sslmode=require sslrootcert={}", ca_file.display());
    let store = PostgresStore::connect(&url, KEY).unwrap();
    store
        .apply(
            &[Change::PutUser(user("bob"))],
            &entry("CreateUser", "bob"),
            0,
        )
        .unwrap();
    // The connection is TLS, as the server sees it.
    let ssl = pg.psql(
        &pg.url,
        "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE client_addr IS NOT NULL",
    );
    assert_eq!(ssl.trim(), "t");

    let e = PostgresStore::connect(&format!("{tcp} sslmode=require"), KEY).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let e = PostgresStore::connect(&format!("{tcp} sslmode=disable"), KEY).unwrap_err();
    assert!(e.to_string().contains("catalog storage error"), "{e}");
}

/// The database restarts under a server: reads go on through a new
/// connection at once; a write after a pause checks its connection first
/// and lands once.
#[test]
fn a_restarted_postgres_catalog_is_reconnected() {
    let mut pg = PgCluster::start();
    let url = pg.database("restart");
    let store = PostgresStore::connect(&url, KEY).unwrap();
    store
        .apply(
            &[Change::PutUser(user("bob"))],
            &entry("CreateUser", "bob"),
            0,
        )
        .unwrap();
    pg.restart();
    assert_eq!(store.version().unwrap(), 1);
    assert!(store.load().unwrap().users.contains_key("bob"));
    std::thread::sleep(std::time::Duration::from_secs(6));
    store
        .apply(
            &[Change::PutUser(user("carol"))],
            &entry("CreateUser", "carol"),
            1,
        )
        .unwrap();
    assert_eq!(store.load().unwrap().users.len(), 2);
    assert_eq!(store.verify_audit().unwrap().first_broken, None);
}

/// Two processes on one SQLite catalog (a server and `veil apply` or
/// `veil export` beside it): changes and audit appends from both at once
/// all land, on one chain.
#[test]
fn two_processes_on_one_sqlite_catalog_write_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let stores: Vec<Arc<SqliteStore>> = (0..2)
        .map(|_| Arc::new(SqliteStore::open(&path, KEY).unwrap()))
        .collect();
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(s, store)| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let name = format!("u{s}_{i}");
                    store.audit_batch(&[entry("Query", &name)]).unwrap();
                    // A change computed from a version the other process may
                    // have moved on: retried on Conflict, as the engine's
                    // write guard would have serialized it.
                    loop {
                        let based_on = store.version().unwrap();
                        match store.apply(
                            &[Change::PutUser(user(&name))],
                            &entry("CreateUser", &name),
                            based_on,
                        ) {
                            Ok(_) => break,
                            Err(e) if e.kind() == ErrorKind::Aborted => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snap = stores[0].load().unwrap();
    assert_eq!(snap.users.len(), 50);
    let v = stores[1].verify_audit().unwrap();
    assert_eq!((v.records, v.first_broken), (100, None));
}
