//! `SHOW_FIRST n` / `SHOW_LAST n`: keep n characters, `*` for the others.

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;

use crate::mask::ArrayMask;
use crate::strings::map_strings;

/// Keeps the first or last `n` characters (Unicode scalar values).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ShowMask {
    n: usize,
    from_start: bool,
}

impl ShowMask {
    pub(crate) fn first(n: usize) -> Self {
        Self {
            n,
            from_start: true,
        }
    }
    pub(crate) fn last(n: usize) -> Self {
        Self {
            n,
            from_start: false,
        }
    }
}

/// Writes `s` with all but the kept characters replaced by `*`.
pub(crate) fn show(s: &str, n: usize, from_start: bool, out: &mut String) {
    let total = if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    };
    let keep = n.min(total);
    for (i, c) in s.chars().enumerate() {
        let kept = if from_start {
            i < keep
        } else {
            i >= total - keep
        };
        out.push(if kept { c } else { '*' });
    }
}

impl ArrayMask for ShowMask {
    fn spec(&self) -> crate::MaskSpec {
        if self.from_start {
            crate::MaskSpec::ShowFirst(self.n)
        } else {
            crate::MaskSpec::ShowLast(self.n)
        }
    }

    const ONCE_PER_DISTINCT: bool = true;

    fn return_type(&self, _input: &DataType) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let per_value = input.get_buffer_memory_size() / input.len().max(1) + 4;
        map_strings(input, per_value, |s, out| {
            show(s, self.n, self.from_start, out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::show;

    fn run(s: &str, n: usize, first: bool) -> String {
        let mut out = String::new();
        show(s, n, first, &mut out);
        out
    }

    #[test]
    fn keeps_characters_not_bytes() {
        assert_eq!(run("4111111111111111", 4, false), "************1111");
        assert_eq!(run("héllo", 2, true), "hé***");
        assert_eq!(run("ab", 4, false), "ab");
        assert_eq!(run("", 4, true), "");
    }
}
