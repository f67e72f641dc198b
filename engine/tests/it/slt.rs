//! Runs testdata/slt/*.slt in-process, one fresh demo catalog per file set.

#[path = "../../../testdata/slt/harness.rs"]
mod harness;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use harness::{Connector, Persona};
use veil_engine::{Engine, Session};

struct InProcess {
    engine: Arc<Engine>,
    settings: Vec<(&'static str, &'static str)>,
}

struct InProcessPersona(Session);

#[async_trait]
impl Connector for InProcess {
    async fn connect(&self, user: &str) -> Result<Box<dyn Persona>, String> {
        let mut session = self.engine.session(user);
        for (k, v) in &self.settings {
            session.configure(k, v).map_err(|e| e.to_string())?;
        }
        Ok(Box::new(InProcessPersona(session)))
    }
}

#[async_trait]
impl Persona for InProcessPersona {
    async fn run(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        let out = self.0.execute(sql).await.map_err(|e| e.to_string())?;
        out.collect().await.map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn slt_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("..");
    let engine = Engine::open(dir.path(), &root).unwrap();
    engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
    veil_engine::statement::load_demo(&engine).await.unwrap();
    // The leak tests hold with Parquet filter pushdown and reordering on and
    // off, 1 and 4 partitions, batch sizes 1 and 8192.
    for pushdown in ["false", "true"] {
        for partitions in ["1", "4"] {
            for batch in ["1", "8192"] {
                let settings = vec![
                    ("datafusion.execution.parquet.pushdown_filters", pushdown),
                    ("datafusion.execution.parquet.reorder_filters", pushdown),
                    ("datafusion.execution.target_partitions", partitions),
                    ("datafusion.execution.batch_size", batch),
                ];
                let connector = InProcess {
                    engine: Arc::clone(&engine),
                    settings,
                };
                harness::run_all(Arc::new(connector)).await;
            }
        }
    }
}
