//! Helpers shared by the engine's integration tests.

#![allow(clippy::unwrap_used, dead_code)]

pub mod pg;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
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
    cells(&batches)
}

/// Batches as text cells ("NULL" for nulls).
pub fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
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

/// Writes `batch` as the Parquet file `path`, atomically (a temporary file
/// renamed over it), so a source listing `path` never sees half a file.
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    use datafusion::parquet::arrow::ArrowWriter;
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// `count` copies of a Parquet file's bytes, each with 1 to 16 bytes of its
/// pages (between the leading magic and the footer) overwritten at a
/// pseudo-random place, with the damaged range. xorshift64 from `seed`:
/// the same damage on every run.
pub fn damaged_copies(
    original: &[u8],
    seed: u64,
    count: usize,
) -> Vec<(std::ops::Range<usize>, Vec<u8>)> {
    let tail = original.len() - 8;
    let footer = u32::from_le_bytes(original[tail..tail + 4].try_into().unwrap()) as usize;
    let pages = 4..tail - footer - 16;
    let mut seed = seed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    (0..count)
        .map(|_| {
            let mut bytes = original.to_vec();
            let at = pages.start + next() % pages.len();
            let len = 1 + next() % 16;
            for b in &mut bytes[at..at + len] {
                *b = next() as u8;
            }
            (at..at + len, bytes)
        })
        .collect()
}
