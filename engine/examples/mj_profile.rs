use std::path::Path;
use veil_engine::Engine;

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let engine = Engine::open(Path::new(&dir), &root).unwrap();
    let mut sally = engine.session("sally");
    sally.use_project(Some("tpch")).unwrap();
    for sql in ["EXPLAIN ANALYZE SELECT count(*), sum(o.o_totalprice) FROM bench.orders o JOIN bench.customer c ON o.o_custkey = c.c_custkey"] {
        let t = std::time::Instant::now();
        let out = sally.execute(sql).await.unwrap().collect().await.unwrap();
        println!("{:?}", t.elapsed());
        println!("{}", datafusion::arrow::util::pretty::pretty_format_batches(&out).unwrap());
    }
}
