//! `veil bench plot`: per-query bars of one or more result files as SVG.
//!
//! Each query gets a group of bars: for every file, its ungoverned,
//! unrestricted (when present) and restricted medians, so the cost of
//! governance and the gap to a peer show at a glance.

use std::path::Path;

use plotters::prelude::*;

use super::report::BenchResult;
use super::BenchError;

/// Bar colours, cycled over the series.
const COLOURS: [RGBColor; 9] = [
    RGBColor(158, 202, 225),
    RGBColor(66, 146, 198),
    RGBColor(8, 69, 148),
    RGBColor(253, 174, 107),
    RGBColor(241, 105, 19),
    RGBColor(166, 54, 3),
    RGBColor(161, 217, 155),
    RGBColor(65, 171, 93),
    RGBColor(0, 109, 44),
];

struct Series {
    label: String,
    /// Per query of the chart, the value if the file has it.
    values: Vec<Option<f64>>,
}

fn series(results: &[BenchResult], names: &[String]) -> Vec<Series> {
    let mut out = Vec::new();
    for r in results {
        let find = |name: &str| r.queries.iter().find(|q| q.name == name);
        let pick = |f: &dyn Fn(&super::report::QueryTiming) -> Option<f64>| -> Vec<Option<f64>> {
            names.iter().map(|n| find(n).and_then(f)).collect()
        };
        out.push(Series {
            label: format!("{} ungoverned", r.engine),
            values: pick(&|q| Some(q.ungoverned_ms)),
        });
        let unrestricted = pick(&|q| q.unrestricted_ms);
        if unrestricted.iter().any(Option::is_some) {
            out.push(Series {
                label: format!("{} unrestricted", r.engine),
                values: unrestricted,
            });
        }
        out.push(Series {
            label: format!("{} restricted", r.engine),
            values: pick(&|q| Some(q.restricted_ms)),
        });
    }
    out
}

fn plot_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Invalid(format!("chart: {e}"))
}

/// Draws the chart of `results` into `out` (SVG).
pub fn plot(results: &[BenchResult], out: &Path) -> Result<(), BenchError> {
    let first = results
        .first()
        .ok_or_else(|| BenchError::Invalid("plot needs at least one result file".into()))?;
    let mut names: Vec<String> = Vec::new();
    for r in results {
        for q in &r.queries {
            if !names.contains(&q.name) {
                names.push(q.name.clone());
            }
        }
    }
    if names.is_empty() {
        return Err(BenchError::Invalid(
            "the result files hold no queries".into(),
        ));
    }
    let all = series(results, &names);
    let top = all
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1.0)
        * 1.1;
    let width = (names.len() as u32 * (20 + 8 * all.len() as u32)).max(640) + 120;
    let root = SVGBackend::new(out, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let engines: Vec<&str> = results.iter().map(|r| r.engine.as_str()).collect();
    let caption = format!(
        "TPC-H scale {}: {} (median ms per query; {})",
        first.scale,
        engines.join(" vs "),
        first.machine
    );
    let n = names.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(plot_err)?;
    let label_names = names.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&move |x| {
            // Label the middle of each group only.
            let i = x.floor();
            if (x - i - 0.5).abs() < 1e-6 {
                label_names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    let width = 0.8 / all.len() as f64;
    for (k, s) in all.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let bars = s.values.iter().enumerate().filter_map(|(i, v)| {
            let x0 = i as f64 + 0.1 + k as f64 * width;
            v.map(|v| Rectangle::new([(x0, 0.0), (x0 + width, v)], colour.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(plot_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::QueryTiming;

    #[test]
    fn draws_every_query_and_series() {
        let q = |name: &str, u: f64, r: f64| QueryTiming {
            name: name.into(),
            ungoverned_ms: u,
            unrestricted_ms: Some(u * 1.01),
            restricted_ms: r,
            rows: 1,
            restricted_rows: None,
        };
        let veil = BenchResult::new(
            1.0,
            "veil",
            vec![q("q1", 100.0, 110.0), q("q2", 20.0, 21.0)],
        );
        let mut duck = BenchResult::new(1.0, "duckdb", vec![q("q1", 80.0, 95.0)]);
        duck.queries[0].unrestricted_ms = None;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("chart.svg");
        plot(&[veil, duck], &out).unwrap_or_else(|e| panic!("{e}"));
        let svg = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{e}"));
        for text in [
            "q1",
            "q2",
            "veil restricted",
            "duckdb ungoverned",
            "duckdb restricted",
        ] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        assert!(!svg.contains("duckdb unrestricted"));
        assert!(plot(&[], &out).is_err());
    }
}
