//! Two Flight SQL servers on one PostgreSQL catalog, one warehouse and one
//! master key (DESIGN.md section 7), each on its own socket: a client of
//! one is governed by what a client of the other changed, and a token or
//! ticket of one server is refused by the other (sessions are per server).

use crate::common;

use common::pg::PgCluster;
use common::{client, fetch, query, rows, start_in, Server};
use datafusion::arrow::array::RecordBatch;
use veil_engine::{CatalogParams, EngineOptions};

async fn server(url: &str, warehouse: &std::path::Path, key: Option<&std::path::Path>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    if let Some(key) = key {
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::copy(key, dir.path().join("keys/master.key")).unwrap();
    }
    let options = EngineOptions {
        catalog: Some(CatalogParams(url.to_string())),
        warehouse: Some(warehouse.to_string_lossy().into_owned()),
        ..Default::default()
    };
    start_in(dir, options, None).await
}

fn cell(batches: &[RecordBatch]) -> String {
    common::harness::rows(batches)[0][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flight_servers_share_one_governed_catalog() {
    let pg = PgCluster::start();
    let url = pg.database("veil");
    let shared = tempfile::tempdir().unwrap();
    let a = server(&url, shared.path(), None).await;
    let key = a._dir.path().join("keys/master.key");
    let b = server(&url, shared.path(), Some(&key)).await;

    let mut admin_a = client(a.handle.addr, "admin", "admin-pw").await.unwrap();
    let mut bob_b = client(b.handle.addr, "bob", "bob-pw").await.unwrap();
    let count = "SELECT count(*) FROM sales.transactions";
    assert_eq!(cell(&query(&mut bob_b, count).await.unwrap()), "832");
    query(
        &mut admin_a,
        "CREATE ROW POLICY nothing_for_bob ON sales.transactions USING false \
         UNLESS has_group('hr')",
    )
    .await
    .unwrap();
    assert_eq!(cell(&query(&mut bob_b, count).await.unwrap()), "0");

    // A plan made on B before the change is planned again at DoGet.
    query(&mut admin_a, "DROP POLICY nothing_for_bob")
        .await
        .unwrap();
    let info = bob_b.execute(count.into(), None).await.unwrap();
    query(
        &mut admin_a,
        "CREATE ROW POLICY nothing_for_bob ON sales.transactions USING false \
         UNLESS has_group('hr')",
    )
    .await
    .unwrap();
    assert_eq!(cell(&fetch(&mut bob_b, info).await.unwrap()), "0");

    // Sessions are per server: A's token and A's tickets mean nothing on B,
    // though both servers sign with keys from the same master key.
    let mut bob_a = client(a.handle.addr, "bob", "bob-pw").await.unwrap();
    let info = bob_a
        .execute("SELECT card_id FROM sales.transactions".into(), None)
        .await
        .unwrap();
    let mut token_on_b = common::client(b.handle.addr, "carol", "carol-pw")
        .await
        .unwrap();
    token_on_b.set_token(bob_a.token().unwrap().clone());
    let e = query(&mut token_on_b, count).await.unwrap_err();
    assert!(e.contains("session closed or unknown"), "{e}");
    let mut carol_b = client(b.handle.addr, "carol", "carol-pw").await.unwrap();
    let e = fetch(&mut carol_b, info).await.unwrap_err();
    assert!(e.contains("ticket"), "{e}");
    assert!(!e.contains("card_id"), "{e}");
    // Revoking a login on A ends its sessions on B at their next call.
    query(&mut admin_a, "ALTER USER bob SET PASSWORD 'new-pw'")
        .await
        .unwrap();
    let e = query(&mut bob_b, count).await.unwrap_err();
    assert!(
        e.contains("Unauthenticated") || e.contains("authentication"),
        "{e}"
    );
    assert!(client(b.handle.addr, "bob", "bob-pw").await.is_err());
    let mut bob_b = client(b.handle.addr, "bob", "new-pw").await.unwrap();
    assert_eq!(cell(&query(&mut bob_b, count).await.unwrap()), "0");
    query(&mut admin_a, "DROP USER carol").await.unwrap();
    let e = query(&mut carol_b, count).await.unwrap_err();
    assert!(
        e.contains("Unauthenticated") || e.contains("authentication"),
        "{e}"
    );

    // The audit log, read on B, holds A's changes, and verifies.
    let trail = query(
        &mut admin_a,
        "SELECT count(*) FROM system.audit WHERE action = 'CreatePolicy' \
         AND object = 'nothing_for_bob'",
    )
    .await
    .unwrap();
    assert_eq!(cell(&trail), "2");
    let mut admin_b = client(b.handle.addr, "admin", "admin-pw").await.unwrap();
    let verdict = query(&mut admin_b, "VERIFY AUDIT").await.unwrap();
    assert_eq!(cell(&verdict), "ok");
    assert!(rows(&verdict) == 1);
}
