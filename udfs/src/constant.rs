//! `CONSTANT '<text>'`: the constant for every non-NULL value (Utf8).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;

use crate::mask::ArrayMask;

/// Replaces every non-NULL value with one text.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConstantMask {
    text: String,
}

impl ConstantMask {
    pub(crate) fn new(text: String) -> Self {
        Self { text }
    }
}

impl ArrayMask for ConstantMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::Constant(self.text.clone())
    }

    fn return_type(&self, _input: &DataType) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let len = input.len();
        let mut out = StringBuilder::with_capacity(len, len * self.text.len());
        for i in 0..len {
            if input.is_null(i) {
                out.append_null();
            } else {
                out.append_value(&self.text);
            }
        }
        Ok(Arc::new(out.finish()))
    }
}
