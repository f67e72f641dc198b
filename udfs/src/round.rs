//! `ROUND <width>`: numbers become floor(x / width) * width.
//!
//! Integer columns keep their type and need an integral width >= 1; floating
//! columns keep their type; decimals become Float64.

use std::hash::{Hash, Hasher};

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::compute::{cast, kernels::arity::unary};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, UInt64Type};
use datafusion::common::Result;

use crate::error::UdfError;
use crate::mask::ArrayMask;

/// Buckets numbers by a width.
#[derive(Debug)]
pub(crate) struct RoundMask {
    width: f64,
}

impl RoundMask {
    pub(crate) fn new(width: f64) -> Result<Self, UdfError> {
        if !(width.is_finite() && width > 0.0) {
            return Err(UdfError::InvalidParameters(format!(
                "ROUND width must be a positive number, got {width}"
            )));
        }
        Ok(Self { width })
    }

    fn int_width(&self, t: &DataType) -> Result<i64> {
        if self.width.fract() != 0.0 || self.width > i64::MAX as f64 {
            return Err(UdfError::UnsupportedType {
                method: "ROUND with a fractional width",
                data_type: t.to_string(),
            }
            .into());
        }
        Ok(self.width as i64)
    }
}

impl PartialEq for RoundMask {
    fn eq(&self, other: &Self) -> bool {
        self.width.to_bits() == other.width.to_bits()
    }
}
impl Eq for RoundMask {}
impl Hash for RoundMask {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.width.to_bits().hash(state)
    }
}

impl ArrayMask for RoundMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::Round(self.width)
    }

    fn return_type(&self, input: &DataType) -> Result<DataType> {
        match input {
            t if t.is_integer() => {
                self.int_width(t)?;
                Ok(t.clone())
            }
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Ok(input.clone()),
            DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => Ok(DataType::Float64),
            other => Err(UdfError::UnsupportedType {
                method: "ROUND",
                data_type: other.to_string(),
            }
            .into()),
        }
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let t = input.data_type().clone();
        let out_type = self.return_type(&t)?;
        let rounded: ArrayRef = if t.is_unsigned_integer() {
            let w = self.int_width(&t)? as u64;
            let v = cast(input, &DataType::UInt64)?;
            std::sync::Arc::new(unary::<UInt64Type, _, UInt64Type>(v.as_primitive(), |x| {
                x / w * w
            }))
        } else if t.is_integer() {
            let w = self.int_width(&t)?;
            let v = cast(input, &DataType::Int64)?;
            std::sync::Arc::new(unary::<Int64Type, _, Int64Type>(v.as_primitive(), |x| {
                x.div_euclid(w).saturating_mul(w)
            }))
        } else if let DataType::Decimal128(precision, scale) = t {
            // Up to 18 digits the unscaled value fits an i64, whose
            // conversion to f64 is one instruction (arrow's decimal cast
            // goes through i128, a library call per value); both round the
            // integer to the nearest f64, so the result is the same.
            let (w, unit) = (self.width, 10f64.powi(i32::from(scale)));
            if precision <= 18 {
                std::sync::Arc::new(unary::<Decimal128Type, _, Float64Type>(
                    input.as_primitive(),
                    |v| ((v as i64) as f64 / unit / w).floor() * w,
                ))
            } else {
                let v = cast(input, &DataType::Float64)?;
                std::sync::Arc::new(unary::<Float64Type, _, Float64Type>(
                    v.as_primitive(),
                    |x| (x / w).floor() * w,
                ))
            }
        } else {
            let w = self.width;
            let v = cast(input, &DataType::Float64)?;
            std::sync::Arc::new(unary::<Float64Type, _, Float64Type>(
                v.as_primitive(),
                |x| (x / w).floor() * w,
            ))
        };
        Ok(cast(&rounded, &out_type)?)
    }
}
