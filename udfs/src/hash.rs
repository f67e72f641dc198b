//! `HASH`: keyed HMAC-SHA256 tokens.
//!
//! Utf8 family -> 32 lowercase hex chars (128 bits of the MAC; Utf8View in,
//! Utf8View out, Utf8 otherwise); integer
//! family -> Int64 holding the MAC's first 63 bits; anything else -> the hex
//! token of its canonical bytes. The keyed HMAC state is computed once, when
//! the UDF is built, and cloned per value (no allocation per row).
//! Low-cardinality arrays are tokenized once per distinct value by the
//! generic adapter (see `distinct.rs`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Builder, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::canonical::{for_each_canonical, is_integer};
use crate::error::UdfError;
use crate::key::MaskKey;
use crate::mask::ArrayMask;

type HmacSha256 = Hmac<Sha256>;

/// Keyed HMAC-SHA256 mask.
#[derive(Debug)]
pub(crate) struct HashMask {
    key: MaskKey,
    mac: HmacSha256,
}

impl HashMask {
    pub(crate) fn new(key: MaskKey) -> Result<Self, UdfError> {
        let mac = HmacSha256::new_from_slice(key.bytes())
            .map_err(|_| UdfError::InvalidParameters(format!("key {}", key.handle())))?;
        Ok(Self { key, mac })
    }

    fn tag(&self, canonical: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(canonical);
        mac.finalize().into_bytes().into()
    }
}

impl PartialEq for HashMask {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for HashMask {}
impl Hash for HashMask {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the first 16 bytes of `tag` as 32 hex chars.
fn hex32(tag: &[u8; 32], out: &mut [u8; 32]) {
    for (i, b) in tag[..16].iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0x0f) as usize];
    }
}

impl ArrayMask for HashMask {
    const ONCE_PER_DISTINCT: bool = true;

    fn return_type(&self, input: &DataType) -> Result<DataType> {
        Ok(match input {
            t if is_integer(t) => DataType::Int64,
            DataType::Utf8View => DataType::Utf8View,
            _ => DataType::Utf8,
        })
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let len = input.len();
        if is_integer(input.data_type()) {
            let mut out = Int64Builder::with_capacity(len);
            for_each_canonical(input, |v| {
                match v {
                    None => out.append_null(),
                    Some(bytes) => {
                        let tag = self.tag(bytes);
                        let mut first = [0u8; 8];
                        first.copy_from_slice(&tag[..8]);
                        out.append_value((u64::from_be_bytes(first) >> 1) as i64)
                    }
                }
                Ok(())
            })?;
            return Ok(Arc::new(out.finish()));
        }
        let mut out = StringBuilder::with_capacity(len, len * 32);
        let mut text = [0u8; 32];
        for_each_canonical(input, |v| {
            match v {
                None => out.append_null(),
                Some(bytes) => {
                    hex32(&self.tag(bytes), &mut text);
                    // Only ASCII hex digits were written.
                    let s = std::str::from_utf8(&text)
                        .map_err(|e| datafusion::error::DataFusionError::Internal(e.to_string()))?;
                    out.append_value(s)
                }
            }
            Ok(())
        })?;
        let tokens: ArrayRef = Arc::new(out.finish());
        match self.return_type(input.data_type())? {
            // Views over the same bytes; no copy.
            DataType::Utf8View => Ok(cast(&tokens, &DataType::Utf8View)?),
            _ => Ok(tokens),
        }
    }
}
