//! `HASH`: keyed HMAC-SHA256 tokens.
//!
//! Utf8 family -> 32 lowercase hex chars (128 bits of the MAC; Utf8View in,
//! Utf8View out, Utf8 otherwise); integer
//! family -> Int64 holding the MAC's first 63 bits; anything else -> the hex
//! token of its canonical bytes. The key's HMAC pad states are computed once,
//! when the UDF is built (`mac.rs`); tokens are written straight into the
//! output's value buffer (no allocation or UTF-8 check per row).
//! Low-cardinality arrays are tokenized once per distinct value by the
//! generic adapter (see `distinct.rs`); integer tokens are also remembered
//! across the batches of one statement (join keys repeat), up to a bound.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    ArrayRef, Int64Array, Int64Builder, NullBufferBuilder, StringArray,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{HashMap, Result};

use crate::canonical::{canonical_int, for_each_canonical, is_integer};
use crate::error::UdfError;
use crate::key::MaskKey;
use crate::mac::KeyedMac;
use crate::mask::ArrayMask;

/// Most integer tokens one instance remembers (about 40 MB at the cap).
const INT_CACHE_CAP: usize = 1 << 20;

/// Values seen before the cache decides whether it pays.
const CACHE_PROBE: u64 = 1 << 16;

/// Keyed HMAC-SHA256 mask.
pub(crate) struct HashMask {
    key: MaskKey,
    mac: KeyedMac,
    /// Integer tokens this instance computed: an instance lives for one
    /// statement's plan, where join and group keys repeat across batches
    /// (every order of a customer), so each distinct key is hashed once.
    /// In memory only, dropped with the plan, never printed.
    ints: Mutex<HashMap<i128, i64>>,
    /// Off once the cache has shown it does not pay (mostly distinct keys).
    cache_on: AtomicBool,
    looked: AtomicU64,
    hits: AtomicU64,
}

impl std::fmt::Debug for HashMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HashMask({})", self.key.handle())
    }
}

impl HashMask {
    pub(crate) fn new(key: MaskKey) -> Result<Self, UdfError> {
        let mac = KeyedMac::new(key.bytes())
            .map_err(|_| UdfError::InvalidParameters(format!("key {}", key.handle())))?;
        Ok(Self {
            key,
            mac,
            ints: Mutex::new(HashMap::default()),
            cache_on: AtomicBool::new(true),
            looked: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    /// The Int64 token of an integer: the MAC's first 63 bits.
    fn int_token(&self, canonical: &[u8]) -> i64 {
        let tag = self.mac.tag(canonical);
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        (u64::from_be_bytes(first) >> 1) as i64
    }

    /// Integer arrays. While the cache pays (at least one value in ten seen
    /// again after the first [`CACHE_PROBE`] values), cached tokens are
    /// looked up under one lock per batch and the misses hashed outside it;
    /// otherwise the cache is dropped and every value is hashed.
    fn mask_ints(&self, input: &ArrayRef) -> Result<ArrayRef> {
        if !self.cache_on.load(Ordering::Relaxed) {
            let mut out = Int64Builder::with_capacity(input.len());
            for_each_canonical(input, |v| {
                out.append_option(v.map(|bytes| self.int_token(bytes)));
                Ok(())
            })?;
            return Ok(Arc::new(out.finish()));
        }
        let mut tokens: Vec<Option<i64>> = Vec::with_capacity(input.len());
        let mut misses: Vec<(usize, i128)> = Vec::new();
        {
            let cache = self.ints.lock().ok();
            for_each_canonical(input, |v| {
                let Some(bytes) = v else {
                    tokens.push(None);
                    return Ok(());
                };
                let value = bytes
                    .get(1..17)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(i128::from_be_bytes)
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal(
                            "integer canonical form is 17 bytes".into(),
                        )
                    })?;
                match cache.as_ref().and_then(|c| c.get(&value)) {
                    Some(t) => tokens.push(Some(*t)),
                    None => {
                        misses.push((tokens.len(), value));
                        tokens.push(None);
                    }
                }
                Ok(())
            })?;
        }
        let looked = tokens.iter().flatten().count() as u64 + misses.len() as u64;
        let hits = looked - misses.len() as u64;
        let fresh: Vec<(i128, i64)> = misses
            .into_iter()
            .map(|(row, value)| {
                let token = self.int_token(&canonical_int(value));
                tokens[row] = Some(token);
                (value, token)
            })
            .collect();
        let looked = self.looked.fetch_add(looked, Ordering::Relaxed) + looked;
        let hits = self.hits.fetch_add(hits, Ordering::Relaxed) + hits;
        if let Ok(mut cache) = self.ints.lock() {
            if looked >= CACHE_PROBE && hits * 10 < looked {
                self.cache_on.store(false, Ordering::Relaxed);
                *cache = HashMap::default();
            } else if cache.len() < INT_CACHE_CAP {
                cache.extend(fresh);
            }
        }
        Ok(Arc::new(Int64Array::from(tokens)))
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

/// Each byte's two lowercase hex chars (one lookup per byte: 8 against 15
/// ns a token with a lookup per nibble, measured on this project's AMD VM).
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [digits[i >> 4], digits[i & 0x0f]];
        i += 1;
    }
    pairs
};

/// Appends the first 16 bytes of `tag` to `out` as 32 hex chars.
fn push_hex32(tag: &[u8; 32], out: &mut Vec<u8>) {
    let mut text = [0u8; 32];
    for (pair, b) in text.chunks_exact_mut(2).zip(&tag[..16]) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
    out.extend_from_slice(&text);
}

impl ArrayMask for HashMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::Hash(self.key.clone())
    }

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
            return self.mask_ints(input);
        }
        // 32 hex chars per non-null value, written into one buffer; the
        // array is checked once as a whole (ASCII only) when built.
        let mut values: Vec<u8> = Vec::with_capacity(len * 32);
        let mut offsets: Vec<i32> = Vec::with_capacity(len + 1);
        let mut nulls = NullBufferBuilder::new(len);
        offsets.push(0);
        for_each_canonical(input, |v| {
            match v {
                None => nulls.append_null(),
                Some(bytes) => {
                    push_hex32(&self.mac.tag(bytes), &mut values);
                    nulls.append_non_null();
                }
            }
            let end = i32::try_from(values.len()).map_err(|_| {
                datafusion::error::DataFusionError::Execution(format!(
                    "HASH: {len} tokens do not fit one Utf8 array"
                ))
            })?;
            offsets.push(end);
            Ok(())
        })?;
        let tokens = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            values.into(),
            nulls.finish(),
        )?;
        let tokens: ArrayRef = Arc::new(tokens);
        match self.return_type(input.data_type())? {
            // Views over the same bytes; no copy.
            DataType::Utf8View => Ok(cast(&tokens, &DataType::Utf8View)?),
            _ => Ok(tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyHandle;
    use datafusion::arrow::array::{
        Array, AsArray, LargeStringArray, StringArray, StringViewArray,
    };

    /// The token by definition: the first 16 bytes of HMAC-SHA256(key,
    /// 's' || value), in lowercase hex.
    fn expected(key: &[u8; 32], value: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(b"s");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn string_tokens_are_the_truncated_hmac_of_the_tagged_value_and_keep_nulls() {
        let bytes = [9u8; 32];
        let mask = HashMask::new(MaskKey::new(
            KeyHandle {
                id: "col:s.t.c".into(),
                version: 1,
            },
            bytes,
        ))
        .unwrap();
        let rows = vec![
            Some("alice"),
            None,
            Some(""),
            Some("a value longer than one sixty-four byte block of SHA-256 input, to be sure"),
            None,
            Some("ünïcödé"),
        ];
        let inputs: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.clone())),
            Arc::new(LargeStringArray::from(rows.clone())),
            Arc::new(StringViewArray::from(rows.clone())),
            // A slice: offsets and nulls not starting at zero.
            Arc::new(StringArray::from([vec![Some("skip")], rows.clone()].concat()).slice(1, 6)),
        ];
        for input in inputs {
            let out = mask.mask(&input).unwrap();
            assert_eq!(out.len(), rows.len());
            assert_eq!(
                out.data_type(),
                &mask.return_type(input.data_type()).unwrap()
            );
            let got: Vec<Option<String>> = match out.data_type() {
                DataType::Utf8View => out
                    .as_string_view()
                    .iter()
                    .map(|v| v.map(String::from))
                    .collect(),
                _ => out
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(String::from))
                    .collect(),
            };
            let want: Vec<Option<String>> = rows
                .iter()
                .map(|r| r.map(|v| expected(&bytes, v)))
                .collect();
            assert_eq!(got, want, "{}", input.data_type());
        }
    }
}
