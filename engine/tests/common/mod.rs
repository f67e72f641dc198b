//! Helpers shared by the engine's integration tests.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use veil_engine::{Engine, EngineOptions, Session};

/// The repository root (testdata/ lives there).
/// Read at run time: a test binary may be reused from a clone at another path.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("..")
}

/// An engine on `dir` with the demo users, sources and policies.
pub async fn demo(dir: &Path, options: EngineOptions) -> Arc<Engine> {
    let engine = Engine::open_with(dir, &root(), options).unwrap();
    engine.bootstrap_admin(Some("admin-pw".into())).unwrap();
    veil_engine::statement::load_demo(&engine).await.unwrap();
    engine
}

/// Rows as text cells ("NULL" for nulls); panics on error.
pub async fn rows(s: &mut Session, sql: &str) -> Vec<Vec<String>> {
    let batches = s
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in &batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    out
}

/// The single cell of a one-row answer.
pub async fn one(s: &mut Session, sql: &str) -> String {
    let r = rows(s, sql).await;
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r[0][0].clone()
}

/// Runs a statement, panicking on error.
pub async fn run(s: &mut Session, sql: &str) {
    rows(s, sql).await;
}

/// The error of a statement that must fail (at planning or while streaming).
pub async fn err(s: &mut Session, sql: &str) -> veil_engine::VeilError {
    match s.execute(sql).await {
        Err(e) => e,
        Ok(out) => match out.collect().await {
            Err(e) => e,
            Ok(b) => panic!("{sql} succeeded: {b:?}"),
        },
    }
}

/// A log sink tests can read back.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
