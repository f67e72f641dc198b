//! `veil bench generate`: TPC-H data as Parquet, generated in-process with
//! the `tpchgen` / `tpchgen-arrow` crates (no downloads, no dbgen).
//!
//! Each table becomes a directory `<out>/<table>/` of `part-<n>.parquet`
//! files (page statistics; pages compressed with the chosen
//! [`PageCompression`]), so a table is one data source location. Large
//! tables are generated in several parts on all cores.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use indicatif::{ProgressBar, ProgressStyle};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use super::BenchError;

/// The eight TPC-H tables, smallest first.
pub const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// Rows per Parquet row group of the generated files.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The file that records the scale and the codec a directory was generated with.
pub const MARKER: &str = "veil-tpch.json";

/// Rows of a table at scale 1 (lineitem: about 6M, its count varies).
fn rows_at_sf1(table: &str) -> f64 {
    match table {
        "region" => 5.0,
        "nation" => 25.0,
        "supplier" => 10_000.0,
        "customer" => 150_000.0,
        "part" => 200_000.0,
        "partsupp" => 800_000.0,
        "orders" => 1_500_000.0,
        _ => 6_001_215.0,
    }
}

fn scaled_rows(table: &str, scale: f64) -> u64 {
    match table {
        "region" | "nation" => rows_at_sf1(table) as u64,
        t => (rows_at_sf1(t) * scale).ceil() as u64,
    }
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

fn batches(table: &str, scale: f64, part: i32, parts: i32) -> Batches {
    match table {
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(
            scale, part, parts,
        ))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(
            scale, part, parts,
        ))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(
            scale, part, parts,
        ))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
        _ => Box::new(LineItemArrow::new(LineItemGenerator::new(
            scale, part, parts,
        ))),
    }
}

/// How the data pages of the generated files are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PageCompression {
    /// zstd level 1: the smallest files, the slowest to read.
    Zstd,
    /// Snappy: what Spark, pyarrow and DuckDB write by default.
    Snappy,
    /// LZ4 (the `LZ4_RAW` codec).
    Lz4,
    /// No compression.
    None,
}

impl PageCompression {
    /// The Parquet codec.
    fn codec(self) -> Result<Compression, BenchError> {
        Ok(match self {
            PageCompression::Zstd => Compression::ZSTD(ZstdLevel::try_new(1)?),
            PageCompression::Snappy => Compression::SNAPPY,
            PageCompression::Lz4 => Compression::LZ4_RAW,
            PageCompression::None => Compression::UNCOMPRESSED,
        })
    }

    /// Its name on the command line, also written to the marker file.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// One unit of work: a part of a table.
struct Job {
    table: &'static str,
    part: i32,
    parts: i32,
}

/// What was written, per table.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The table's name.
    pub table: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Rows written.
    pub rows: u64,
}

/// Writes the eight TPC-H tables at `scale` under `out`, pages compressed
/// with `compression`, replacing what an earlier run wrote there. Shows a
/// progress bar when `progress` is set.
pub fn generate(
    scale: f64,
    out: &Path,
    compression: PageCompression,
    progress: bool,
) -> Result<Vec<Generated>, BenchError> {
    if !(scale.is_finite() && scale > 0.0 && scale <= 1000.0) {
        return Err(BenchError::Invalid(format!(
            "scale {scale} is out of range (0 < scale <= 1000)"
        )));
    }
    let codec = compression.codec()?;
    std::fs::create_dir_all(out).map_err(|e| BenchError::io(out, e))?;
    // Parts of about 1.5M rows each, so every core has work.
    let mut jobs = Vec::new();
    for table in TABLES {
        let parts = (scaled_rows(table, scale) / 1_500_000).max(1) as i32;
        check_replaceable(&out.join(table))?;
        let staging = staging_dir(out, table);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| BenchError::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| BenchError::io(&staging, e))?;
        for part in 1..=parts {
            jobs.push(Job { table, part, parts });
        }
    }
    // Largest first, so the long lineitem parts start at once.
    jobs.sort_by(|a, b| {
        (rows_at_sf1(b.table) / f64::from(b.parts))
            .total_cmp(&(rows_at_sf1(a.table) / f64::from(a.parts)))
    });
    let total: u64 = TABLES.iter().map(|t| scaled_rows(t, scale)).sum();
    let bar = if progress {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({per_sec})",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let rows = Mutex::new(std::collections::BTreeMap::<&str, u64>::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(jobs.len()))
            .map(|_| {
                s.spawn(|| -> Result<(), BenchError> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else {
                            return Ok(());
                        };
                        let n = write_part(out, job, scale, codec, &bar)?;
                        if let Ok(mut rows) = rows.lock() {
                            *rows.entry(job.table).or_default() += n;
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Invalid("a generator thread panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    bar.finish_and_clear();
    // Every part is written: swap each table's directory in.
    let rows = rows.into_inner().unwrap_or_default();
    let mut generated = Vec::new();
    for table in TABLES {
        let dir = out.join(table);
        replace_dir(&staging_dir(out, table), &dir)?;
        generated.push(Generated {
            table: table.to_string(),
            dir,
            rows: rows.get(table).copied().unwrap_or(0),
        });
    }
    let marker = out.join(MARKER);
    std::fs::write(
        &marker,
        serde_json::json!({ "scale": scale, "compression": compression.name() }).to_string(),
    )
    .map_err(|e| BenchError::io(&marker, e))?;
    Ok(generated)
}

/// The scale recorded in a directory `generate` wrote.
pub fn recorded_scale(data: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(data.join(MARKER)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()?
        .get("scale")?
        .as_f64()
}

fn staging_dir(out: &Path, table: &str) -> PathBuf {
    out.join(format!(".{table}.generating"))
}

fn write_part(
    out: &Path,
    job: &Job,
    scale: f64,
    codec: Compression,
    bar: &ProgressBar,
) -> Result<u64, BenchError> {
    let mut batches = batches(job.table, scale, job.part, job.parts).peekable();
    let path = staging_dir(out, job.table).join(format!("part-{}.parquet", job.part));
    let schema = match batches.peek() {
        Some(Ok(b)) => classic_schema(&b.schema()),
        Some(Err(_)) | None => {
            return match batches.next() {
                Some(Err(e)) => Err(e.into()),
                _ => Ok(0), // an empty part writes no file
            };
        }
    };
    let file = File::create(&path).map_err(|e| BenchError::io(&path, e))?;
    let props = WriterProperties::builder()
        .set_compression(codec)
        // Dictionaries stop at 64 KiB, so unique columns (keys, names) fall
        // back to plain pages early and a point lookup does not decompress
        // a 1 MiB dictionary page per column (the default limit).
        .set_dictionary_page_size_limit(64 * 1024)
        // Pages of 4096 rows instead of 20,000: a point lookup decodes a
        // fifth as much per column; TPC-H measured no loss (README).
        .set_data_page_row_count_limit(4096)
        // Row groups of 128Ki rows instead of 1Mi: DataFusion splits a
        // scan across cores by row group, and a table of one row group
        // (customer, part, partsupp at scale 1) was read by one core only.
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
    let mut rows = 0;
    for batch in batches {
        let batch = classic_strings(&batch?)?;
        rows += batch.num_rows() as u64;
        bar.inc(batch.num_rows() as u64);
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(rows)
}

/// `batch` with its `Utf8View` columns (how `tpchgen-arrow` builds strings)
/// as `Utf8`, so the Arrow schema stored in the files says `Utf8`, as
/// pyarrow's and most writers' do. The Parquet columns are the same either
/// way; a reader planning views still reads views, and a plan that only
/// passes columns on reads `Utf8` without a cast
/// (`engine/src/classic_strings.rs`).
fn classic_strings(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => cast(c, &DataType::Utf8),
            _ => Ok(Arc::clone(c)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(classic_schema(batch.schema_ref()), columns)
}

/// `schema` with `Utf8View` fields as `Utf8` ([`classic_strings`]).
fn classic_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => Field::clone(f).with_data_type(DataType::Utf8),
            _ => Field::clone(f),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Refuses a table directory that holds anything `generate` did not write.
fn check_replaceable(dir: &Path) -> Result<(), BenchError> {
    if dir.exists() {
        let entries = std::fs::read_dir(dir).map_err(|e| BenchError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BenchError::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("part-") && name.ends_with(".parquet")) {
                return Err(BenchError::Invalid(format!(
                    "refusing to replace {}: it holds {name}, which veil bench generate did not write",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// Moves `staging` to `dir`, removing the earlier generated table there.
fn replace_dir(staging: &Path, dir: &Path) -> Result<(), BenchError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    }
    std::fs::rename(staging, dir).map_err(|e| BenchError::io(dir, e))
}
