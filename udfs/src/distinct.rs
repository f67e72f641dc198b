//! Low-cardinality encoding of plain arrays, so a costly mask runs once per
//! distinct value instead of once per row.
//!
//! [`encode`] walks the array once, keeping at most [`CAPACITY`] distinct
//! values in a linear table; on the first value beyond that it gives up
//! (so high-cardinality input pays for a handful of comparisons). On success
//! the caller masks `values` (one row per distinct value, same type as the
//! input) and gathers the result with `take(masked, keys)`. For view types
//! the gather copies 16-byte views and shares the masked data buffer, so a
//! 6M-row column of three values yields three tokens' worth of bytes.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::*;
use datafusion::common::Result;

/// Most distinct values an array may hold to be encoded.
pub(crate) const CAPACITY: usize = 16;

/// Arrays shorter than this are masked directly.
const MIN_LEN: usize = 64;

/// An array split into its distinct values and one key per row.
pub(crate) struct Distinct {
    /// Each distinct non-null value once, in first-seen order.
    pub values: ArrayRef,
    /// Per row, the index into `values`; NULL where the input is NULL.
    pub keys: UInt32Array,
}

/// Encodes `array` when it is long enough, of a supported type and holds at
/// most [`CAPACITY`] distinct non-null values; `None` otherwise.
pub(crate) fn encode(array: &ArrayRef) -> Result<Option<Distinct>> {
    if array.len() < MIN_LEN || array.null_count() == array.len() {
        return Ok(None);
    }
    let len = array.len();
    let valid = |i: usize| array.is_valid(i);
    macro_rules! prim {
        ($t:ty) => {{
            let v = array.as_primitive::<$t>().values();
            positions(len, valid, |i, j| v[i] == v[j])
        }};
    }
    macro_rules! bytes {
        ($a:expr) => {{
            let a = $a;
            positions(len, valid, |i, j| a.value(i) == a.value(j))
        }};
    }
    macro_rules! views {
        ($a:expr) => {{
            // A view of at most 12 bytes holds the whole value (zero-padded),
            // so two such views are equal exactly when their values are;
            // longer values first compare length and prefix, then bytes.
            let a = $a;
            let v = a.views();
            positions(len, valid, |i, j| {
                let (x, y) = (v[i], v[j]);
                if (x as u32) <= 12 || (y as u32) <= 12 {
                    x == y
                } else {
                    x as u64 == y as u64 && a.value(i) == a.value(j)
                }
            })
        }};
    }
    let found = match array.data_type() {
        DataType::Utf8 => bytes!(array.as_string::<i32>()),
        DataType::LargeUtf8 => bytes!(array.as_string::<i64>()),
        DataType::Binary => bytes!(array.as_binary::<i32>()),
        DataType::LargeBinary => bytes!(array.as_binary::<i64>()),
        DataType::Utf8View => views!(array.as_string_view()),
        DataType::BinaryView => views!(array.as_binary_view()),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Date32 => prim!(Date32Type),
        DataType::Date64 => prim!(Date64Type),
        _ => None,
    };
    let Some((firsts, keys)) = found else {
        return Ok(None);
    };
    let values = take(array.as_ref(), &UInt32Array::from(firsts), None)?;
    let keys = UInt32Array::new(keys.into(), array.nulls().cloned());
    Ok(Some(Distinct { values, keys }))
}

/// Gathers masked distinct values back into one value per row.
pub(crate) fn expand(masked: &ArrayRef, keys: &UInt32Array) -> Result<ArrayRef> {
    Ok(Arc::new(take(masked.as_ref(), keys, None)?))
}

/// (row of each distinct value's first occurrence, key per row), or None
/// when there are more than [`CAPACITY`] distinct values. `eq(i, j)` says
/// whether rows i and j hold the same value, compared exactly (bytes or
/// integers), never by a lossy equality.
fn positions(
    len: usize,
    valid: impl Fn(usize) -> bool,
    eq: impl Fn(usize, usize) -> bool,
) -> Option<(Vec<u32>, Vec<u32>)> {
    let mut firsts: Vec<u32> = Vec::with_capacity(CAPACITY);
    let mut keys: Vec<u32> = Vec::with_capacity(len);
    for row in 0..len {
        let key = if !valid(row) {
            0
        } else {
            match firsts.iter().position(|&f| eq(f as usize, row)) {
                Some(k) => k,
                None if firsts.len() == CAPACITY => return None,
                None => {
                    firsts.push(u32::try_from(row).ok()?);
                    firsts.len() - 1
                }
            }
        };
        // key < CAPACITY, always fits.
        keys.push(key as u32);
    }
    Some((firsts, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringViewArray};

    #[test]
    fn round_trips_with_nulls_and_slices() {
        let rows: Vec<Option<&str>> = (0..200)
            .map(|i| (i % 7 != 0).then_some(["a", "a long value past twelve", "b"][i % 3]))
            .collect();
        let array: ArrayRef = Arc::new(StringViewArray::from(rows.clone()));
        let sliced = array.slice(5, 150);
        let d = encode(&sliced).unwrap().expect("low cardinality");
        assert_eq!(d.values.len(), 3);
        assert_eq!(
            expand(&d.values, &d.keys).unwrap().as_ref(),
            sliced.as_ref()
        );
    }

    #[test]
    fn gives_up_beyond_capacity_and_on_short_or_all_null_input() {
        let many: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1000));
        assert!(encode(&many).unwrap().is_none());
        let short: ArrayRef = Arc::new(Int64Array::from_iter_values([1, 1, 1]));
        assert!(encode(&short).unwrap().is_none());
        let nulls: ArrayRef = Arc::new(Int64Array::from(vec![None::<i64>; 100]));
        assert!(encode(&nulls).unwrap().is_none());
    }
}
