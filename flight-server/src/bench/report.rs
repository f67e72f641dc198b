//! The benchmark result file (`result.json`) and its terminal table.
//!
//! The shape is shared with `benches/compare_duckdb.py`, so charts can put
//! Veil and a peer side by side:
//! `{"scale", "engine", "machine", "queries": [{"name", "ungoverned_ms",
//! "unrestricted_ms", "restricted_ms", "rows"}], "total": {...}}`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;

/// One query's medians.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryTiming {
    /// `q1` .. `q22`.
    pub name: String,
    /// Plain DataFusion, no governance.
    pub ungoverned_ms: f64,
    /// Through Veil as a principal every policy exempts (`null` for peers
    /// that have no such path).
    pub unrestricted_ms: Option<f64>,
    /// Through Veil as a restricted principal.
    pub restricted_ms: f64,
    /// Rows of the ungoverned answer.
    pub rows: u64,
    /// Rows the restricted principal got (absent in peers' files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted_rows: Option<u64>,
}

/// Sums over all queries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Sum of `ungoverned_ms`.
    pub ungoverned_ms: f64,
    /// Sum of `unrestricted_ms` (`null` when a query has none).
    pub unrestricted_ms: Option<f64>,
    /// Sum of `restricted_ms`.
    pub restricted_ms: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    /// TPC-H scale factor.
    pub scale: f64,
    /// `veil`, `duckdb`, ...
    pub engine: String,
    /// CPU, cores and memory of the machine it ran on.
    pub machine: String,
    /// Per query, in order.
    pub queries: Vec<QueryTiming>,
    /// Sums.
    pub total: Totals,
}

impl BenchResult {
    /// A result with totals computed from `queries`.
    pub fn new(scale: f64, engine: &str, queries: Vec<QueryTiming>) -> Self {
        let total = Totals {
            ungoverned_ms: queries.iter().map(|q| q.ungoverned_ms).sum(),
            unrestricted_ms: queries.iter().map(|q| q.unrestricted_ms).sum(),
            restricted_ms: queries.iter().map(|q| q.restricted_ms).sum(),
        };
        Self {
            scale,
            engine: engine.to_string(),
            machine: machine(),
            queries,
            total,
        }
    }

    /// Reads a result file.
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            BenchError::Invalid(format!("{} is not a benchmark result: {e}", path.display()))
        })
    }

    /// Writes the result as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BenchError::Invalid(format!("result: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| BenchError::io(path, e))
    }

    /// The terminal table: medians and the ratios the targets are about.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} at scale {} on {}",
            self.engine, self.scale, self.machine
        );
        let _ = writeln!(
            s,
            "{:<6} {:>12} {:>14} {:>13} {:>9} {:>9} {:>9}",
            "query", "ungoverned", "unrestricted", "restricted", "unr/ung", "res/ung", "rows"
        );
        let ratio = |a: Option<f64>, b: f64| match a {
            Some(a) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
        for q in &self.queries {
            let _ = writeln!(
                s,
                "{:<6} {:>12} {:>14} {:>13} {:>9} {:>9} {:>9}",
                q.name,
                ms(Some(q.ungoverned_ms)),
                ms(q.unrestricted_ms),
                ms(Some(q.restricted_ms)),
                ratio(q.unrestricted_ms, q.ungoverned_ms),
                ratio(Some(q.restricted_ms), q.ungoverned_ms),
                q.rows
            );
        }
        let t = &self.total;
        let _ = writeln!(
            s,
            "{:<6} {:>12} {:>14} {:>13} {:>9} {:>9}",
            "total",
            ms(Some(t.ungoverned_ms)),
            ms(t.unrestricted_ms),
            ms(Some(t.restricted_ms)),
            ratio(t.unrestricted_ms, t.ungoverned_ms),
            ratio(Some(t.restricted_ms), t.ungoverned_ms),
        );
        s
    }
}

/// The median of some timings (0 when there are none).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// "CPU model, N cores, M GiB" from /proc (Linux), else the core count.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
    });
    match mem {
        Some(kb) => format!(
            "{cpu}, {cores} cores, {:.0} GiB, {}",
            kb / 1048576.0,
            std::env::consts::OS
        ),
        None => format!("{cpu}, {cores} cores, {}", std::env::consts::OS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_round_trip() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        let q = |name: &str, u: f64, r: f64| QueryTiming {
            name: name.into(),
            ungoverned_ms: u,
            unrestricted_ms: Some(u),
            restricted_ms: r,
            rows: 4,
            restricted_rows: None,
        };
        let r = BenchResult::new(0.01, "veil", vec![q("q1", 10.0, 11.0), q("q2", 5.0, 5.5)]);
        assert_eq!(r.total.restricted_ms, 16.5);
        assert_eq!(r.total.unrestricted_ms, Some(15.0));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("r.json");
        r.write(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            BenchResult::read(&path).unwrap_or_else(|e| panic!("{e}")),
            r
        );
        assert!(r.table().contains("total"), "{}", r.table());
        assert!(r.table().contains("1.10"), "{}", r.table());
    }
}
