//! Masks as they travel to other processes (Ballista's scheduler and
//! executors) inside a serialized plan.
//!
//! A mask travels as its method and parameters. A keyed mask (HASH,
//! ENCRYPT) carries its key handle and its 32 key bytes **sealed**:
//! AES-256-GCM under the [`ClusterKey`], a random nonce, and the handle
//! and method as associated data, so a sealed key opens only as the key
//! of that handle for that method. Key bytes are never in a plan in clear.
//!
//! ```text
//!   front end ── encode_mask(udf, cluster) ──► {"method":"hash","key":{id, version, nonce, sealed}}
//!   scheduler ── decode_mask(bytes, None) ───► sealed mask: plans, re-encodes as is, never runs
//!   executor ─── decode_mask(bytes, Some(k)) ► the mask itself
//! ```

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use serde::{Deserialize, Serialize};

use crate::date_trunc::TruncUnit;
use crate::error::UdfError;
use crate::key::{KeyHandle, MaskKey};
use crate::mask::{mask_udf, spec_of, MaskSpec};

/// The key that seals mask keys for the processes of one cluster. Its
/// holders can open the keys of the masks in plans sent to them, nothing
/// else (it derives no key). `Debug` prints nothing secret.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// A cluster key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key as 64 hex digits (what `veil cluster-key` writes).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, UdfError> {
        let text = text.trim();
        let bad = || UdfError::InvalidParameters("a cluster key is 64 hex digits".into());
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// A key handle with its bytes sealed under a [`ClusterKey`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Hash)]
struct SealedKey {
    id: String,
    version: u32,
    nonce: String,
    sealed: String,
}

/// A mask as it is written into a plan.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(tag = "method", rename_all = "snake_case")]
enum WireMask {
    Null,
    Constant {
        text: String,
    },
    Hash {
        key: SealedKey,
    },
    Encrypt {
        key: SealedKey,
    },
    Regex {
        pattern: String,
        replacement: String,
    },
    ShowFirst {
        n: usize,
    },
    ShowLast {
        n: usize,
    },
    Round {
        width: f64,
    },
    DateTrunc {
        unit: String,
    },
}

/// What the associated data of a sealed key binds it to.
fn binding(method: &str, id: &str, version: u32) -> Vec<u8> {
    format!("veil-mask-key\0{method}\0{id}\0{version}").into_bytes()
}

fn seal(method: &str, key: &MaskKey, cluster: Option<&ClusterKey>) -> Result<SealedKey, UdfError> {
    let handle = key.handle();
    let Some(cluster) = cluster else {
        return Err(UdfError::InvalidParameters(format!(
            "no cluster key to seal key {handle} with"
        )));
    };
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = binding(method, &handle.id, handle.version);
    let sealed = cluster
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: key.bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| UdfError::InvalidParameters("cannot seal a mask key".into()))?;
    Ok(SealedKey {
        id: handle.id.clone(),
        version: handle.version,
        nonce: B64.encode(nonce),
        sealed: B64.encode(sealed),
    })
}

fn open(method: &str, key: &SealedKey, cluster: &ClusterKey) -> Result<MaskKey, UdfError> {
    let handle = KeyHandle {
        id: key.id.clone(),
        version: key.version,
    };
    let refused = || UdfError::Decrypt(format!("{handle} (sealed under another cluster key?)"));
    let nonce = B64.decode(&key.nonce).map_err(|_| refused())?;
    let sealed = B64.decode(&key.sealed).map_err(|_| refused())?;
    if nonce.len() != 12 {
        return Err(refused());
    }
    let aad = binding(method, &key.id, key.version);
    let bytes = cluster
        .cipher()
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: &aad,
            },
        )
        .map_err(|_| refused())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| refused())?;
    Ok(MaskKey::new(handle, bytes))
}

fn unit_name(unit: TruncUnit) -> &'static str {
    match unit {
        TruncUnit::Year => "year",
        TruncUnit::Month => "month",
        TruncUnit::Day => "day",
    }
}

/// The wire form of `udf` when it is a mask (`None` otherwise), keys sealed
/// under `cluster`. A sealed mask (decoded without a cluster key) encodes
/// as it arrived; a keyed mask with its key and no `cluster` is an error.
pub fn encode_mask(
    udf: &ScalarUDF,
    cluster: Option<&ClusterKey>,
) -> Option<Result<Vec<u8>, UdfError>> {
    let any: &dyn std::any::Any = udf.inner().as_ref();
    if let Some(sealed) = any.downcast_ref::<SealedMask>() {
        return Some(Ok(sealed.wire.clone()));
    }
    let wire = match spec_of(udf)? {
        MaskSpec::Null => Ok(WireMask::Null),
        MaskSpec::Constant(text) => Ok(WireMask::Constant { text }),
        MaskSpec::Hash(key) => seal("hash", &key, cluster).map(|key| WireMask::Hash { key }),
        MaskSpec::Encrypt(key) => {
            seal("encrypt", &key, cluster).map(|key| WireMask::Encrypt { key })
        }
        MaskSpec::Regex {
            pattern,
            replacement,
        } => Ok(WireMask::Regex {
            pattern,
            replacement,
        }),
        MaskSpec::ShowFirst(n) => Ok(WireMask::ShowFirst { n }),
        MaskSpec::ShowLast(n) => Ok(WireMask::ShowLast { n }),
        MaskSpec::Round(width) => Ok(WireMask::Round { width }),
        MaskSpec::DateTrunc(unit) => Ok(WireMask::DateTrunc {
            unit: unit_name(unit).into(),
        }),
    };
    Some(wire.and_then(|w| {
        serde_json::to_vec(&w).map_err(|e| UdfError::InvalidParameters(e.to_string()))
    }))
}

/// The mask `bytes` (from [`encode_mask`]) describe. With `cluster`, the
/// mask itself (its key opened); without, a sealed mask that plans and
/// re-encodes like it but refuses to run (a scheduler's).
pub fn decode_mask(bytes: &[u8], cluster: Option<&ClusterKey>) -> Result<ScalarUDF, UdfError> {
    let wire: WireMask = serde_json::from_slice(bytes)
        .map_err(|e| UdfError::InvalidParameters(format!("not a Veil mask: {e}")))?;
    let key = |method: &str, sealed: &SealedKey| -> Result<MaskKey, UdfError> {
        match cluster {
            Some(cluster) => open(method, sealed, cluster),
            // Only for planning: the sealed mask never runs, and a mask's
            // output type does not depend on its key.
            None => Ok(MaskKey::new(
                KeyHandle {
                    id: sealed.id.clone(),
                    version: sealed.version,
                },
                [0; 32],
            )),
        }
    };
    let spec = match &wire {
        WireMask::Null => MaskSpec::Null,
        WireMask::Constant { text } => MaskSpec::Constant(text.clone()),
        WireMask::Hash { key: k } => MaskSpec::Hash(key("hash", k)?),
        WireMask::Encrypt { key: k } => MaskSpec::Encrypt(key("encrypt", k)?),
        WireMask::Regex {
            pattern,
            replacement,
        } => MaskSpec::Regex {
            pattern: pattern.clone(),
            replacement: replacement.clone(),
        },
        WireMask::ShowFirst { n } => MaskSpec::ShowFirst(*n),
        WireMask::ShowLast { n } => MaskSpec::ShowLast(*n),
        WireMask::Round { width } => MaskSpec::Round(*width),
        WireMask::DateTrunc { unit } => MaskSpec::DateTrunc(unit.parse()?),
    };
    let udf = mask_udf(spec)?;
    let keyed = matches!(wire, WireMask::Hash { .. } | WireMask::Encrypt { .. });
    if cluster.is_some() || !keyed {
        return Ok(udf);
    }
    Ok(ScalarUDF::new_from_impl(SealedMask {
        template: Arc::new(udf),
        wire: bytes.to_vec(),
    }))
}

/// A keyed mask whose key is sealed: it has the mask's name, signature and
/// output type (for a scheduler's planning) and refuses to run.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SealedMask {
    /// The mask with a zeroed key: for its name, signature and types only.
    template: Arc<ScalarUDF>,
    /// The wire form it arrived in.
    wire: Vec<u8>,
}

impl ScalarUDFImpl for SealedMask {
    fn name(&self) -> &str {
        self.template.name()
    }

    fn signature(&self) -> &Signature {
        self.template.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.template.return_type(arg_types)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "{} cannot run here: its key is sealed, and this process holds no cluster key",
            self.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, ArrayRef, StringArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    use super::*;

    fn key(id: &str) -> MaskKey {
        MaskKey::new(
            KeyHandle {
                id: id.into(),
                version: 3,
            },
            [7; 32],
        )
    }

    fn run(udf: &ScalarUDF, values: ArrayRef) -> Result<ArrayRef> {
        let rows = values.len();
        let field = Arc::new(Field::new("x", values.data_type().clone(), true));
        let out = udf.invoke_with_args(ScalarFunctionArgs {
            args: vec![ColumnarValue::Array(values)],
            arg_fields: vec![Arc::clone(&field)],
            number_rows: rows,
            return_field: Arc::new(Field::new("y", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })?;
        out.into_array(rows)
    }

    #[test]
    fn a_keyed_mask_travels_sealed_and_masks_the_same_on_arrival() {
        let cluster = ClusterKey::from_bytes([9; 32]);
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("ann"), None, Some("bo")]));
        for spec in [
            MaskSpec::Hash(key("col:hr.e.name")),
            MaskSpec::Encrypt(key("project:7")),
        ] {
            let udf = mask_udf(spec).unwrap();
            let wire = encode_mask(&udf, Some(&cluster)).unwrap().unwrap();
            // The key bytes (0x07 x 32) appear nowhere, raw or in base64.
            let text = String::from_utf8(wire.clone()).unwrap();
            assert!(!text.contains(&B64.encode([7u8; 32])), "{text}");
            assert!(!wire.windows(32).any(|w| w == [7u8; 32]));
            assert!(text.contains("\"version\":3"), "{text}");

            let arrived = decode_mask(&wire, Some(&cluster)).unwrap();
            assert_eq!(arrived, udf, "same handle, same mask");
            let want = run(&udf, Arc::clone(&names)).unwrap();
            assert_eq!(
                run(&arrived, Arc::clone(&names)).unwrap().as_ref(),
                want.as_ref()
            );
            assert!(want.is_null(1));
        }
    }

    #[test]
    fn a_sealed_mask_plans_but_never_runs_and_reencodes_as_it_came() {
        let cluster = ClusterKey::from_bytes([9; 32]);
        let udf = mask_udf(MaskSpec::Hash(key("col:hr.e.ssn"))).unwrap();
        let wire = encode_mask(&udf, Some(&cluster)).unwrap().unwrap();
        let sealed = decode_mask(&wire, None).unwrap();
        assert_eq!(sealed.name(), udf.name());
        assert_eq!(
            sealed.return_type(&[DataType::Utf8]).unwrap(),
            udf.return_type(&[DataType::Utf8]).unwrap()
        );
        let names: ArrayRef = Arc::new(StringArray::from(vec!["ann"]));
        let err = run(&sealed, names).unwrap_err().to_string();
        assert!(err.contains("sealed"), "{err}");
        assert_eq!(encode_mask(&sealed, None).unwrap().unwrap(), wire);
        // Without a cluster key, a mask holding its key is not encoded.
        assert!(encode_mask(&udf, None).unwrap().is_err());
        // An executor with the key opens what the scheduler passed on.
        assert_eq!(decode_mask(&wire, Some(&cluster)).unwrap(), udf);
    }

    #[test]
    fn a_sealed_key_opens_only_under_its_cluster_key_handle_and_method() {
        let cluster = ClusterKey::from_bytes([9; 32]);
        let udf = mask_udf(MaskSpec::Hash(key("col:hr.e.ssn"))).unwrap();
        let wire = encode_mask(&udf, Some(&cluster)).unwrap().unwrap();
        let other = ClusterKey::from_bytes([8; 32]);
        let err = decode_mask(&wire, Some(&other)).unwrap_err().to_string();
        assert!(err.contains("col:hr.e.ssn#v3"), "{err}");
        let text = String::from_utf8(wire).unwrap();
        for forged in [
            text.replace("col:hr.e.ssn", "col:hr.e.name"),
            text.replace("\"version\":3", "\"version\":4"),
            text.replace("\"hash\"", "\"encrypt\""),
        ] {
            assert!(
                decode_mask(forged.as_bytes(), Some(&cluster)).is_err(),
                "{forged}"
            );
        }
        assert!(decode_mask(b"{\"method\":\"nope\"}", Some(&cluster)).is_err());
    }

    #[test]
    fn unkeyed_masks_and_non_masks() {
        let cluster = ClusterKey::from_bytes([1; 32]);
        for spec in [
            MaskSpec::Null,
            MaskSpec::Constant("x".into()),
            MaskSpec::Regex {
                pattern: "[0-9]".into(),
                replacement: "#".into(),
            },
            MaskSpec::ShowFirst(2),
            MaskSpec::ShowLast(4),
            MaskSpec::Round(10.0),
            MaskSpec::DateTrunc(TruncUnit::Month),
        ] {
            let udf = mask_udf(spec).unwrap();
            let wire = encode_mask(&udf, Some(&cluster)).unwrap().unwrap();
            assert_eq!(decode_mask(&wire, None).unwrap(), udf);
        }
        let upper = datafusion::functions::string::upper();
        assert!(encode_mask(&upper, Some(&cluster)).is_none());
    }

    #[test]
    fn cluster_keys_read_from_hex() {
        let key = ClusterKey::from_bytes([0xab; 32]);
        assert_eq!(
            ClusterKey::from_hex(&format!(" {}\n", key.to_hex()))
                .unwrap()
                .0,
            key.0
        );
        assert!(ClusterKey::from_hex("abcd").is_err());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "ClusterKey(<redacted>)");
    }
}
