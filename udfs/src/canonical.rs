//! Canonical, type-tagged bytes of values: the input of keyed masks.
//!
//! Tags keep families apart, so the integer 42 and the string '42' never give
//! the same token. All integer widths share one family (42 as Int32 and as
//! Int64 give one token, so integer keys of different widths still join).

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::*;
use datafusion::common::Result;

/// Whether a type is in the integer family (HASH of it yields Int64).
pub(crate) fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

/// Calls `f` once per row, in order, with the row's canonical bytes or None.
/// The canonical bytes of an integer of any width: `i` + 16-byte big-endian.
pub(crate) fn canonical_int(v: i128) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = b'i';
    out[1..].copy_from_slice(&v.to_be_bytes());
    out
}

pub(crate) fn for_each_canonical<F>(array: &ArrayRef, mut f: F) -> Result<()>
where
    F: FnMut(Option<&[u8]>) -> Result<()>,
{
    let mut buf: Vec<u8> = Vec::with_capacity(64);
    macro_rules! ints {
        ($t:ty) => {{
            for v in array.as_primitive::<$t>().iter() {
                match v {
                    None => f(None)?,
                    Some(v) => f(Some(&canonical_int(v as i128)))?,
                }
            }
        }};
    }
    macro_rules! strs {
        ($a:expr, $tag:expr) => {{
            for v in $a.iter() {
                match v {
                    None => f(None)?,
                    Some(v) => {
                        let v: &[u8] = v.as_ref();
                        buf.clear();
                        buf.push($tag);
                        buf.extend_from_slice(v);
                        f(Some(&buf))?
                    }
                }
            }
        }};
    }
    match array.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Utf8 => strs!(array.as_string::<i32>(), b's'),
        DataType::LargeUtf8 => strs!(array.as_string::<i64>(), b's'),
        DataType::Utf8View => strs!(array.as_string_view(), b's'),
        DataType::Binary => strs!(array.as_binary::<i32>(), b'b'),
        DataType::LargeBinary => strs!(array.as_binary::<i64>(), b'b'),
        DataType::BinaryView => strs!(array.as_binary_view(), b'b'),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let floats = cast(array, &DataType::Float64)?;
            for v in floats.as_primitive::<Float64Type>().iter() {
                match v {
                    None => f(None)?,
                    Some(v) => {
                        // One encoding for 0.0 / -0.0 and for every NaN.
                        let v = if v == 0.0 {
                            0.0
                        } else if v.is_nan() {
                            f64::NAN
                        } else {
                            v
                        };
                        buf.clear();
                        buf.push(b'f');
                        buf.extend_from_slice(&v.to_bits().to_be_bytes());
                        f(Some(&buf))?
                    }
                }
            }
        }
        other => {
            // Dates, timestamps, decimals, booleans...: the type plus its text.
            let tag = format!("o{other}:");
            let text = cast(array, &DataType::Utf8)?;
            for v in text.as_string::<i32>().iter() {
                match v {
                    None => f(None)?,
                    Some(v) => {
                        buf.clear();
                        buf.extend_from_slice(tag.as_bytes());
                        buf.extend_from_slice(v.as_bytes());
                        f(Some(&buf))?
                    }
                }
            }
        }
    }
    Ok(())
}
