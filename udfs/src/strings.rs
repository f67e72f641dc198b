//! String array plumbing shared by the text-producing masks.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArrayType, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;

/// Maps every non-null value of `array` (any string type; other types are
/// cast to text first) through `f` into a new Utf8 array. `f` writes into a
/// scratch `String` that is cleared and reused for every row.
pub(crate) fn map_strings<F>(array: &ArrayRef, bytes_per_value: usize, f: F) -> Result<ArrayRef>
where
    F: FnMut(&str, &mut String),
{
    Ok(match array.data_type() {
        DataType::Utf8 => run(array.as_string::<i32>(), array.len(), bytes_per_value, f),
        DataType::LargeUtf8 => run(array.as_string::<i64>(), array.len(), bytes_per_value, f),
        DataType::Utf8View => run(array.as_string_view(), array.len(), bytes_per_value, f),
        _ => {
            let text = cast(array, &DataType::Utf8)?;
            run(text.as_string::<i32>(), text.len(), bytes_per_value, f)
        }
    })
}

fn run<'a, S, F>(values: S, len: usize, bytes_per_value: usize, mut f: F) -> ArrayRef
where
    S: StringArrayType<'a>,
    F: FnMut(&str, &mut String),
{
    let mut out = StringBuilder::with_capacity(len, len * bytes_per_value);
    let mut scratch = String::with_capacity(bytes_per_value);
    for v in values.iter() {
        match v {
            Some(s) => {
                scratch.clear();
                f(s, &mut scratch);
                out.append_value(&scratch);
            }
            None => out.append_null(),
        }
    }
    Arc::new(out.finish())
}
