//! `NULL`: NULL of the column's type.

use datafusion::arrow::array::{new_null_array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;

use crate::mask::ArrayMask;

/// Replaces every value with NULL, keeping the type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct NullMask;

impl ArrayMask for NullMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::Null
    }

    fn return_type(&self, input: &DataType) -> Result<DataType> {
        Ok(input.clone())
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        Ok(new_null_array(input.data_type(), input.len()))
    }
}
