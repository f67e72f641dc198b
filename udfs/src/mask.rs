//! [`MaskSpec`], the generic [`MaskUdf`] adapter and [`mask_udf`].

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::constant::ConstantMask;
use crate::date_trunc::{DateTruncMask, TruncUnit};
use crate::distinct;
use crate::encrypt::EncryptMask;
use crate::error::UdfError;
use crate::hash::HashMask;
use crate::key::MaskKey;
use crate::null::NullMask;
use crate::regex_replace::RegexMask;
use crate::round::RoundMask;
use crate::show::ShowMask;

/// A masking method with its parameters, as a policy states it.
#[derive(Debug, Clone)]
pub enum MaskSpec {
    /// NULL of the column's type.
    Null,
    /// A constant text; the column becomes Utf8.
    Constant(String),
    /// Keyed HMAC-SHA256 token.
    Hash(MaskKey),
    /// Deterministic AES-256-GCM with a synthetic nonce.
    Encrypt(MaskKey),
    /// Regex replace.
    Regex {
        /// The pattern.
        pattern: String,
        /// The replacement (`$1` style groups allowed).
        replacement: String,
    },
    /// Keep the first n characters, `*` for the rest.
    ShowFirst(usize),
    /// Keep the last n characters, `*` for the rest.
    ShowLast(usize),
    /// floor(x / width) * width.
    Round(f64),
    /// Truncate dates and timestamps.
    DateTrunc(TruncUnit),
}

/// One masking method applied to a whole array.
pub(crate) trait ArrayMask: Debug + Send + Sync + PartialEq + Eq + Hash + 'static {
    /// Whether masking a value costs enough (a MAC, a cipher, a regex, a new
    /// string) that low-cardinality arrays should be masked once per
    /// distinct value (see [`crate::distinct`]).
    const ONCE_PER_DISTINCT: bool = false;
    /// Output type for a (non-dictionary) input type.
    fn return_type(&self, input: &DataType) -> Result<DataType>;
    /// Masks every value of `input` (never a dictionary); NULL stays NULL.
    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef>;
    /// The method and parameters this mask was built from.
    fn spec(&self) -> MaskSpec;
}

/// Builds the UDF for a mask. Parameters are checked here (regex syntax,
/// width > 0), so a policy that cannot run fails when it is created or
/// planned, never silently at execution.
pub fn mask_udf(spec: MaskSpec) -> std::result::Result<ScalarUDF, UdfError> {
    Ok(match spec {
        MaskSpec::Null => wrap("veil_mask_null".into(), NullMask),
        MaskSpec::Constant(text) => wrap("veil_mask_constant".into(), ConstantMask::new(text)),
        MaskSpec::Hash(key) => wrap(format!("veil_hash[{}]", key.handle()), HashMask::new(key)?),
        MaskSpec::Encrypt(key) => wrap(
            format!("veil_encrypt[{}]", key.handle()),
            EncryptMask::new(key)?,
        ),
        MaskSpec::Regex {
            pattern,
            replacement,
        } => wrap(
            "veil_mask_regex".into(),
            RegexMask::new(pattern, replacement)?,
        ),
        MaskSpec::ShowFirst(n) => wrap("veil_show_first".into(), ShowMask::first(n)),
        MaskSpec::ShowLast(n) => wrap("veil_show_last".into(), ShowMask::last(n)),
        MaskSpec::Round(width) => wrap("veil_round".into(), RoundMask::new(width)?),
        MaskSpec::DateTrunc(unit) => wrap("veil_date_trunc".into(), DateTruncMask::new(unit)),
    })
}

/// Whether `udf` is a keyed mask that gives different values of one type
/// different tokens (HASH, ENCRYPT). Two such UDFs that compare equal use one
/// key, so their tokens of two columns of one type are equal exactly when
/// the values are (up to HMAC collisions, about 2^-64 per pair of values for
/// 64-bit integer tokens).
pub fn is_injective_mask(udf: &ScalarUDF) -> bool {
    let any: &dyn std::any::Any = udf.inner().as_ref();
    any.is::<MaskUdf<HashMask>>() || any.is::<MaskUdf<EncryptMask>>()
}

/// Whether `udf` is a mask whose work per value is costly: a MAC, a cipher,
/// a regex or a walk over the characters (HASH, ENCRYPT, REGEX, SHOW_*; the
/// methods masked once per distinct value). A filter evaluates a conjunct
/// calling one after its other conjuncts, on the rows they keep.
pub fn is_costly_mask(udf: &ScalarUDF) -> bool {
    fn costly<M: ArrayMask>(any: &dyn std::any::Any) -> bool {
        M::ONCE_PER_DISTINCT && any.is::<MaskUdf<M>>()
    }
    let any: &dyn std::any::Any = udf.inner().as_ref();
    costly::<HashMask>(any)
        || costly::<EncryptMask>(any)
        || costly::<RegexMask>(any)
        || costly::<ShowMask>(any)
        || costly::<NullMask>(any)
        || costly::<ConstantMask>(any)
        || costly::<RoundMask>(any)
        || costly::<DateTruncMask>(any)
}

/// The method and parameters `udf` masks with, when it is a mask built by
/// [`mask_udf`] (for shipping it to another process, `wire.rs`).
pub(crate) fn spec_of(udf: &ScalarUDF) -> Option<MaskSpec> {
    fn of<M: ArrayMask>(any: &dyn std::any::Any) -> Option<MaskSpec> {
        any.downcast_ref::<MaskUdf<M>>().map(|m| m.mask.spec())
    }
    let any: &dyn std::any::Any = udf.inner().as_ref();
    of::<HashMask>(any)
        .or_else(|| of::<EncryptMask>(any))
        .or_else(|| of::<RegexMask>(any))
        .or_else(|| of::<ShowMask>(any))
        .or_else(|| of::<NullMask>(any))
        .or_else(|| of::<ConstantMask>(any))
        .or_else(|| of::<RoundMask>(any))
        .or_else(|| of::<DateTruncMask>(any))
}

fn wrap<M: ArrayMask>(name: String, mask: M) -> ScalarUDF {
    ScalarUDF::new_from_impl(MaskUdf {
        name,
        mask,
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// Adapts an [`ArrayMask`] to DataFusion: scalars, dictionaries and NULL type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MaskUdf<M> {
    name: String,
    mask: M,
    signature: Signature,
}

impl<M: ArrayMask> MaskUdf<M> {
    fn apply(&self, input: &ArrayRef) -> Result<ArrayRef> {
        if input.data_type() == &DataType::Null {
            return Ok(Arc::clone(input));
        }
        if let Some(dict) = input.as_any_dictionary_opt() {
            // Mask each distinct value once; the keys are reused as they are.
            let values = self.mask.mask(dict.values())?;
            return Ok(dict.with_values(values));
        }
        if M::ONCE_PER_DISTINCT {
            if let Some(d) = distinct::encode(input)? {
                return distinct::expand(&self.mask.mask(&d.values)?, &d.keys);
            }
        }
        self.mask.mask(input)
    }
}

impl<M: ArrayMask> ScalarUDFImpl for MaskUdf<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [DataType::Null] => Ok(DataType::Null),
            [DataType::Dictionary(k, v)] => Ok(DataType::Dictionary(
                k.clone(),
                Box::new(self.mask.return_type(v)?),
            )),
            [t] => self.mask.return_type(t),
            _ => exec_err!("{} takes exactly one argument", self.name),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{} takes exactly one argument", self.name);
        };
        match arg {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(self.apply(a)?)),
            ColumnarValue::Scalar(s) => {
                let out = self.apply(&s.to_array()?)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
            }
        }
    }
}
