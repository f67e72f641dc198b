//! What `EXPLAIN ANALYZE` may print about a join's key values.
//!
//! Veil's `EXPLAIN ANALYZE` shows row counts and timings only (byte and
//! memory metrics would measure the raw values of a masked join,
//! `governance/raw_keys.rs`). One row-category metric says something about
//! the keys themselves: DataFusion's hash join builds a direct-indexed
//! array instead of a hash table when its build side's single integer key
//! spans a small range or fills it densely, and counts that in
//! `array_map_created_count`. On a masked join that compares raw keys, that
//! count told whether the raw values of the rows a user picked lay within
//! 1,024 of each other: a comparison of values the user may only see as
//! tokens. [`redact`] removes the metric from the text of every
//! `EXPLAIN ANALYZE` (every partition's, with `VERBOSE`); the join itself is
//! DataFusion's, unchanged.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use regex::Regex;

/// `array_map_created_count=1` and its per-partition form
/// `array_map_created_count{partition=0}=1`, with the separator before it
/// (or after it, when it comes first).
static KEY_METRICS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let metric = r"array_map_created_count(\{[^}]*\})?=[^,\]]*";
    Regex::new(&format!(", {metric}|{metric}(, )?")).ok()
});

/// The stream of an `EXPLAIN ANALYZE` with the metrics above removed from
/// its text columns.
pub(crate) fn redact(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let redacted = stream.map(|batch| batch.and_then(|b| redact_batch(&b)));
    Box::pin(RecordBatchStreamAdapter::new(schema, redacted))
}

fn redact_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8 => redact_text(c),
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

fn redact_text(column: &ArrayRef) -> ArrayRef {
    let Some(re) = KEY_METRICS.as_ref() else {
        // The pattern is a constant that compiles. Were it not, the plan
        // column (which cannot be null) would make the batch an error:
        // no text rather than the metric.
        return Arc::new(StringArray::new_null(column.len()));
    };
    let text = column.as_string::<i32>();
    Arc::new(
        text.iter()
            .map(|s| s.map(|s| re.replace_all(s, "")))
            .collect::<StringArray>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn the_array_map_count_goes_and_every_other_metric_stays() {
        let column: ArrayRef = Arc::new(StringArray::from(vec![
            Some("HashJoinExec: mode=CollectLeft, metrics=[output_rows=3, array_map_created_count=1, build_input_rows=2]"),
            Some("HashJoinExec: metrics=[output_rows=3, array_map_created_count{partition=1}=0]"),
            Some("HashJoinExec: metrics=[array_map_created_count=2, output_rows=3]"),
            None,
        ]));
        let out = redact_text(&column);
        let out = out.as_string::<i32>();
        assert_eq!(
            out.value(0),
            "HashJoinExec: mode=CollectLeft, metrics=[output_rows=3, build_input_rows=2]"
        );
        assert_eq!(out.value(1), "HashJoinExec: metrics=[output_rows=3]");
        assert_eq!(out.value(2), "HashJoinExec: metrics=[output_rows=3]");
        assert!(out.is_null(3));
    }
}
