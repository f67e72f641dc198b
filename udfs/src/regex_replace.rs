//! `REGEX '<pattern>' REPLACE '<replacement>'`: regex replace on text.

use std::hash::{Hash, Hasher};

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use regex::Regex;

use crate::error::UdfError;
use crate::mask::ArrayMask;
use crate::strings::map_strings;

/// Replaces every match of a pattern; non-text columns are cast to text.
#[derive(Debug)]
pub(crate) struct RegexMask {
    pattern: String,
    replacement: String,
    regex: Regex,
}

impl RegexMask {
    pub(crate) fn new(pattern: String, replacement: String) -> Result<Self, UdfError> {
        let regex = Regex::new(&pattern)
            .map_err(|e| UdfError::InvalidParameters(format!("regex '{pattern}': {e}")))?;
        Ok(Self {
            pattern,
            replacement,
            regex,
        })
    }
}

impl PartialEq for RegexMask {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.replacement == other.replacement
    }
}
impl Eq for RegexMask {}
impl Hash for RegexMask {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.replacement.hash(state);
    }
}

impl ArrayMask for RegexMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::Regex {
            pattern: self.pattern.clone(),
            replacement: self.replacement.clone(),
        }
    }

    const ONCE_PER_DISTINCT: bool = true;

    fn return_type(&self, _input: &DataType) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let per_value = input.get_buffer_memory_size() / input.len().max(1) + 8;
        map_strings(input, per_value, |s, out| {
            out.push_str(&self.regex.replace_all(s, self.replacement.as_str()))
        })
    }
}
