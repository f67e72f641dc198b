//! sqllogictest harness shared by the in-process and the Flight SQL runners
//! (included with `#[path]` from each crate's tests).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

/// Opens a session as a user.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, user: &str) -> Result<Box<dyn Persona>, String>;
}

/// Runs statements as one user.
#[async_trait]
pub trait Persona: Send {
    async fn run(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String>;
}

/// Formats batches as sqllogictest rows.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formatter"))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| match f.value(r).to_string() {
                        s if s.is_empty() => "(empty)".to_string(),
                        s => s,
                    })
                    .collect(),
            );
        }
    }
    out
}

/// Replaces RFC 3339 UTC times (`2026-11-22T13:33:12Z`) with `<time>`, and
/// object URLs with `<location>`, so expected results can hold rows that
/// record when and where something happened.
fn mask_times(cell: &str) -> String {
    // Locations under a test's temporary directory differ per run.
    if cell.starts_with("file:///") || cell.starts_with("s3://") {
        return "<location>".to_string();
    }
    const SHAPE: &[u8; 20] = b"dddd-dd-ddTdd:dd:ddZ";
    let b = cell.as_bytes();
    let fits = |i: usize| {
        SHAPE
            .iter()
            .enumerate()
            .all(|(k, want)| match (b.get(i + k), want) {
                (Some(c), b'd') => c.is_ascii_digit(),
                (Some(c), w) => c == w,
                (None, _) => false,
            })
    };
    let (mut out, mut i) = (String::with_capacity(cell.len()), 0);
    while i < b.len() {
        if fits(i) {
            out.push_str("<time>");
            i += SHAPE.len();
        } else {
            let ch = cell[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
    }
    out
}

struct SltDb {
    connector: Arc<dyn Connector>,
    persona: Option<Box<dyn Persona>>,
}

#[async_trait]
impl AsyncDB for SltDb {
    type Error = std::io::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, std::io::Error> {
        let sql = sql.trim();
        if let Some(user) = sql.strip_prefix("CONNECT AS ") {
            self.persona = Some(
                self.connector
                    .connect(user.trim())
                    .await
                    .map_err(std::io::Error::other)?,
            );
            return Ok(DBOutput::StatementComplete(0));
        }
        let persona = self
            .persona
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no CONNECT AS before the first statement"))?;
        let batches = persona.run(sql).await.map_err(std::io::Error::other)?;
        let schema = batches.first().map(|b| b.schema());
        let is_status = schema
            .as_ref()
            .is_none_or(|s| s.fields().len() == 1 && s.field(0).name() == "status");
        if is_status {
            return Ok(DBOutput::StatementComplete(0));
        }
        let rows = rows(&batches)
            .into_iter()
            .map(|r| r.iter().map(|c| mask_times(c)).collect())
            .collect();
        let width = schema.map(|s| s.fields().len()).unwrap_or(0);
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        })
    }

    async fn shutdown(&mut self) {}
}

/// Runs every .slt file of testdata/slt/ with fresh connections.
pub async fn run_all(connector: Arc<dyn Connector>) {
    let dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("../testdata/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/slt")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files found");
    for file in files {
        let c = Arc::clone(&connector);
        let mut runner = Runner::new(move || {
            let c = Arc::clone(&c);
            async move {
                Ok::<_, std::io::Error>(SltDb {
                    connector: c,
                    persona: None,
                })
            }
        });
        runner.with_column_validator(sqllogictest::default_column_validator);
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}:\n{e}", file.display());
        }
    }
}
