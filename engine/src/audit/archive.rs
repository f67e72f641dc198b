//! Exports and archives of the audit log.
//!
//! `archive` moves the records before a time into a Parquet file under the
//! archive directory (MACs included) and then, in one store transaction,
//! removes them and records the last one as the anchor the live chain
//! continues from; `verify_all` checks the archives and the live log as one
//! chain.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::cast::{
    as_binary_array, as_int64_array, as_string_array, as_timestamp_microsecond_array,
};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::chain::Verifier;
use super::table::records_batch;
use crate::error::{Result, VeilError};
use crate::store::{
    AuditAnchor, AuditEntry, AuditFilter, AuditRecord, AuditVerification, CatalogStore,
};

/// File formats of `veil audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One Parquet file (the `system.audit` columns plus `mac`).
    Parquet,
    /// One JSON object per line.
    Jsonl,
}

impl std::str::FromStr for ExportFormat {
    type Err = VeilError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Self::Parquet),
            "jsonl" | "json" => Ok(Self::Jsonl),
            other => Err(VeilError::InvalidArgument(format!(
                "unknown export format '{other}' (parquet or jsonl)"
            ))),
        }
    }
}

/// A user-given time (RFC 3339, or a date `YYYY-MM-DD` meaning its start in
/// UTC) in the stored form.
pub fn parse_time(s: &str) -> Result<String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            VeilError::InvalidArgument(format!(
                "time '{s}' is neither RFC 3339 (2026-01-31T12:00:00Z) nor a date (2026-01-31)"
            ))
        })?;
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> VeilError + '_ {
    move |e| VeilError::Internal(format!("{}: {e}", what.display()))
}

fn parquet_err(
    path: &Path,
) -> impl Fn(datafusion::parquet::errors::ParquetError) -> VeilError + '_ {
    move |e| VeilError::Internal(format!("{}: {e}", path.display()))
}

fn write_parquet(records: &[AuditRecord], path: &Path) -> Result<()> {
    let batch = records_batch(records, true)?;
    let file = File::create(path).map_err(io(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet_err(path))?;
    writer.write(&batch).map_err(parquet_err(path))?;
    let file = writer.into_inner().map_err(parquet_err(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(())
}

fn write_jsonl(records: &[AuditRecord], path: &Path) -> Result<()> {
    let mut out = std::io::BufWriter::new(File::create(path).map_err(io(path))?);
    for r in records {
        let detail: serde_json::Value = serde_json::from_str(&r.entry.detail)
            .unwrap_or_else(|_| serde_json::Value::String(r.entry.detail.clone()));
        let line = serde_json::json!({
            "id": r.id,
            "at": r.at,
            "actor": r.entry.actor,
            "impersonated": r.entry.impersonated,
            "project": r.entry.project,
            "action": r.entry.action,
            "object": r.entry.object,
            "outcome": r.entry.outcome,
            "detail": detail,
            "mac": hex::encode(&r.mac),
        });
        writeln!(out, "{line}").map_err(io(path))?;
    }
    out.into_inner()
        .map_err(|e| VeilError::Internal(format!("{}: {e}", path.display())))?
        .sync_all()
        .map_err(io(path))
}

/// Writes the records matching `filter` to `out`; returns how many.
pub fn export(
    store: &dyn CatalogStore,
    filter: &AuditFilter,
    format: ExportFormat,
    out: &Path,
) -> Result<usize> {
    let records = store.audit_records(filter)?;
    match format {
        ExportFormat::Parquet => write_parquet(&records, out)?,
        ExportFormat::Jsonl => write_jsonl(&records, out)?,
    }
    Ok(records.len())
}

/// Moves the records before `before` (stored time form) to a Parquet file in
/// `dir`; returns the file and the number of records, or None when there
/// was nothing to archive.
pub fn archive(
    store: &dyn CatalogStore,
    before: &str,
    dir: &Path,
) -> Result<Option<(PathBuf, usize)>> {
    let records = store.audit_records(&AuditFilter {
        before: Some(before.to_string()),
        ..Default::default()
    })?;
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    // Archive a prefix of the chain only: stop at the first gap in time order.
    let anchor = store.audit_anchor()?;
    if first.id != anchor.id + 1 || last.id - first.id + 1 != records.len() as i64 {
        return Err(VeilError::FailedPrecondition(format!(
            "audit records before {before} are not a prefix of the log (ids {}..{}); \
             run VERIFY AUDIT",
            first.id, last.id
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Named by first id: a file left by a crash before the catalog commit
    // is simply written again.
    let path = dir.join(format!("audit-{:012}-{:012}.parquet", first.id, last.id));
    let tmp = path.with_extension("parquet.tmp");
    write_parquet(&records, &tmp)?;
    for stale in archive_files(dir)? {
        if stale.0 == first.id {
            std::fs::remove_file(&stale.1).map_err(io(&stale.1))?;
        }
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    let removed = store.archive_audit(&AuditAnchor {
        id: last.id,
        mac: last.mac.clone(),
    })?;
    Ok(Some((path, removed)))
}

/// The archive files in `dir`, by first id.
fn archive_files(dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let first = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".parquet"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(a, _)| a.parse::<i64>().ok());
        if let Some(first) = first {
            files.push((first, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads an archive's records in order into `each`. parquet's Thrift
/// skipper may spend 2^31 iterations on a damaged header that claims a
/// list of that many elements whose skipping takes no input (booleans;
/// parquet 59, `skip_till_depth`); the push decoder shares it.
fn read_archive(file: File, mut each: impl FnMut(&AuditRecord)) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| VeilError::InvalidArgument(e.to_string());
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| bad(&e))?;
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        batch_records(&batch)?.iter().for_each(&mut each);
    }
    Ok(())
}

fn batch_records(batch: &RecordBatch) -> Result<Vec<AuditRecord>> {
    let col = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            VeilError::InvalidArgument(format!("audit archive has no column {name}"))
        })
    };
    let ids = as_int64_array(col("id")?)?;
    let at = as_timestamp_microsecond_array(col("at")?)?;
    let text = |name: &str| Ok::<_, VeilError>(as_string_array(col(name)?)?.clone());
    let (actor, imp, project, action, object, outcome, detail) = (
        text("actor")?,
        text("impersonated")?,
        text("project")?,
        text("action")?,
        text("object")?,
        text("outcome")?,
        text("detail")?,
    );
    let mac = as_binary_array(col("mac")?)?;
    let opt = |a: &datafusion::arrow::array::StringArray, i: usize| {
        datafusion::arrow::array::Array::is_valid(a, i).then(|| a.value(i).to_string())
    };
    (0..batch.num_rows())
        .map(|i| {
            let at = chrono::DateTime::from_timestamp_micros(at.value(i))
                .ok_or_else(|| {
                    VeilError::InvalidArgument("audit archive time out of range".into())
                })?
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            Ok(AuditRecord {
                id: ids.value(i),
                at,
                entry: AuditEntry {
                    actor: actor.value(i).to_string(),
                    impersonated: opt(&imp, i),
                    project: opt(&project, i),
                    action: action.value(i).to_string(),
                    object: object.value(i).to_string(),
                    detail: detail.value(i).to_string(),
                    outcome: outcome.value(i).to_string(),
                },
                mac: mac.value(i).to_vec(),
            })
        })
        .collect()
}

/// Verifies the archives in `dir` and then the live log as one chain.
pub fn verify_all(
    store: &dyn CatalogStore,
    key: &[u8; 32],
    dir: &Path,
) -> Result<AuditVerification> {
    let mut verifier = Verifier::after(key, &AuditAnchor::default());
    let mut unreadable = vec![];
    for (_, path) in archive_files(dir)? {
        let file = File::open(&path).map_err(io(&path))?;
        // An archive is checked, not trusted: one that cannot be read
        // (damaged, truncated, rewritten) breaks the chain at the first
        // record it no longer gives, and parquet's panics on bad pages
        // are caught.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_archive(file, |r| verifier.check(r))
        }));
        let cause = match read {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => crate::executor::panic_message(panic.as_ref()).to_string(),
        };
        tracing::warn!(archive = %path.display(), "an audit archive cannot be read: {cause}");
        verifier.unreadable();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        unreadable.push(format!("{file}: {cause}"));
    }
    let anchor = store.audit_anchor()?;
    // The archives must end exactly where the live chain starts.
    verifier.finish(&anchor);
    let live = store.verify_audit()?;
    Ok(AuditVerification {
        records: verifier.records + live.records,
        first_broken: verifier.first_broken.or(live.first_broken),
        unreadable,
    })
}
