//! `DATE_TRUNC '<year | month | day>'`: dates and timestamps truncated.
//!
//! Timestamps are truncated on their stored UTC instant; the type (unit and
//! time zone) is kept.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use datafusion::arrow::array::{ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::Result;

use crate::error::UdfError;
use crate::mask::ArrayMask;

/// The truncation granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TruncUnit {
    /// January 1st.
    Year,
    /// First of the month.
    Month,
    /// Midnight.
    Day,
}

impl FromStr for TruncUnit {
    type Err = UdfError;
    fn from_str(s: &str) -> Result<Self, UdfError> {
        match s.to_ascii_lowercase().as_str() {
            "year" => Ok(Self::Year),
            "month" => Ok(Self::Month),
            "day" => Ok(Self::Day),
            other => Err(UdfError::InvalidParameters(format!(
                "DATE_TRUNC unit must be 'year', 'month' or 'day', got '{other}'"
            ))),
        }
    }
}

/// Truncates dates and timestamps.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DateTruncMask {
    unit: TruncUnit,
}

impl DateTruncMask {
    pub(crate) fn new(unit: TruncUnit) -> Self {
        Self { unit }
    }

    fn date(&self, d: NaiveDate) -> NaiveDate {
        match self.unit {
            TruncUnit::Year => d.with_day(1).and_then(|d| d.with_month(1)).unwrap_or(d),
            TruncUnit::Month => d.with_day(1).unwrap_or(d),
            TruncUnit::Day => d,
        }
    }

    fn datetime(&self, t: NaiveDateTime) -> NaiveDateTime {
        self.date(t.date())
            .and_hms_opt(0, 0, 0)
            .unwrap_or_else(|| t.with_nanosecond(0).unwrap_or(t))
    }
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

impl ArrayMask for DateTruncMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::DateTrunc(self.unit)
    }

    fn return_type(&self, input: &DataType) -> Result<DataType> {
        match input {
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Ok(input.clone()),
            other => Err(UdfError::UnsupportedType {
                method: "DATE_TRUNC",
                data_type: other.to_string(),
            }
            .into()),
        }
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let t = input.data_type().clone();
        self.return_type(&t)?;
        macro_rules! ts {
            ($ty:ty, $per_sec:expr) => {{
                let a = input.as_primitive::<$ty>();
                let out: PrimitiveArray<$ty> = a.unary(|v| {
                    let secs = v.div_euclid($per_sec);
                    let sub = v.rem_euclid($per_sec);
                    match DateTime::from_timestamp(secs, 0) {
                        Some(dt) => {
                            let tr = self.datetime(dt.naive_utc()).and_utc().timestamp();
                            if tr == secs {
                                v - sub
                            } else {
                                tr.saturating_mul($per_sec)
                            }
                        }
                        None => v,
                    }
                });
                Arc::new(out.with_data_type(t.clone())) as ArrayRef
            }};
        }
        Ok(match &t {
            DataType::Date32 => {
                let out: PrimitiveArray<Date32Type> =
                    input.as_primitive::<Date32Type>().unary(|d| {
                        NaiveDate::from_num_days_from_ce_opt(d + UNIX_EPOCH_DAYS_FROM_CE)
                            .map(|nd| self.date(nd).num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
                            .unwrap_or(d)
                    });
                Arc::new(out)
            }
            DataType::Date64 => {
                let days = cast(input, &DataType::Date32)?;
                let truncated = self.mask(&days)?;
                cast(&truncated, &DataType::Date64)?
            }
            DataType::Timestamp(TimeUnit::Second, _) => ts!(TimestampSecondType, 1i64),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                ts!(TimestampMillisecondType, 1_000i64)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                ts!(TimestampMicrosecondType, 1_000_000i64)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                ts!(TimestampNanosecondType, 1_000_000_000i64)
            }
            other => {
                return Err(UdfError::UnsupportedType {
                    method: "DATE_TRUNC",
                    data_type: other.to_string(),
                }
                .into())
            }
        })
    }
}
