//! `ENCRYPT`: deterministic, reversible authenticated encryption.
//!
//! AES-256-GCM with a synthetic nonce (SIV construction): the 96-bit nonce is
//! HMAC-SHA256(nonce key, canonical value), so equal values give equal tokens
//! under one key, and decryption re-derives the nonce to authenticate it.
//! Both sub-keys are expanded with HKDF from the mask key. The token is
//! base64url (no padding) of nonce || ciphertext || tag.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use datafusion::arrow::array::{ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use hkdf::Hkdf;
use sha2::Sha256;

use crate::canonical::for_each_canonical;
use crate::error::UdfError;
use crate::key::MaskKey;
use crate::mac::KeyedMac;
use crate::mask::ArrayMask;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Deterministic AES-256-GCM-SIV-style mask.
pub(crate) struct EncryptMask {
    key: MaskKey,
    cipher: Aes256Gcm,
    nonce_mac: KeyedMac,
}

impl std::fmt::Debug for EncryptMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptMask({})", self.key.handle())
    }
}

fn subkeys(key: &MaskKey) -> Result<(Aes256Gcm, KeyedMac), UdfError> {
    let hk = Hkdf::<Sha256>::new(None, key.bytes());
    let (mut enc, mut nonce) = ([0u8; 32], [0u8; 32]);
    let bad = |_| UdfError::InvalidParameters(format!("key {}", key.handle()));
    hk.expand(b"veil/encrypt/aead", &mut enc).map_err(bad)?;
    hk.expand(b"veil/encrypt/nonce", &mut nonce).map_err(bad)?;
    let cipher = Aes256Gcm::new_from_slice(&enc)
        .map_err(|_| UdfError::InvalidParameters(format!("key {}", key.handle())))?;
    let mac = KeyedMac::new(&nonce)
        .map_err(|_| UdfError::InvalidParameters(format!("key {}", key.handle())))?;
    Ok((cipher, mac))
}

fn synthetic_nonce(mac: &KeyedMac, canonical: &[u8]) -> [u8; NONCE_LEN] {
    let full = mac.tag(canonical);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&full[..NONCE_LEN]);
    nonce
}

impl EncryptMask {
    pub(crate) fn new(key: MaskKey) -> Result<Self, UdfError> {
        let (cipher, nonce_mac) = subkeys(&key)?;
        Ok(Self {
            key,
            cipher,
            nonce_mac,
        })
    }
}

impl PartialEq for EncryptMask {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for EncryptMask {}
impl Hash for EncryptMask {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}

impl ArrayMask for EncryptMask {
    fn spec(&self) -> crate::MaskSpec {
        crate::MaskSpec::Encrypt(self.key.clone())
    }

    const ONCE_PER_DISTINCT: bool = true;

    fn return_type(&self, _input: &DataType) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn mask(&self, input: &ArrayRef) -> Result<ArrayRef> {
        let len = input.len();
        let mut out = StringBuilder::with_capacity(len, len * 48);
        let mut sealed: Vec<u8> = Vec::with_capacity(64);
        let mut text = String::with_capacity(64);
        for_each_canonical(input, |v| {
            let Some(plain) = v else {
                out.append_null();
                return Ok(());
            };
            let nonce = synthetic_nonce(&self.nonce_mac, plain);
            sealed.clear();
            sealed.extend_from_slice(&nonce);
            sealed.extend_from_slice(plain);
            let tag = {
                let (n, body) = sealed.split_at_mut(NONCE_LEN);
                self.cipher
                    .encrypt_in_place_detached(Nonce::from_slice(n), b"", body)
                    .map_err(|_| {
                        UdfError::InvalidParameters(format!("key {}", self.key.handle()))
                    })?
            };
            sealed.extend_from_slice(&tag);
            text.clear();
            URL_SAFE_NO_PAD.encode_string(&sealed, &mut text);
            out.append_value(&text);
            Ok(())
        })?;
        Ok(Arc::new(out.finish()))
    }
}

/// Decrypts an ENCRYPT token back to the value's canonical, type-tagged
/// bytes (`s` + UTF-8 for strings, `i` + 16-byte big-endian for integers).
/// Fails when the key, its version or the token is wrong.
pub fn decrypt_token(key: &MaskKey, token: &str) -> Result<Vec<u8>, UdfError> {
    let fail = || UdfError::Decrypt(key.handle().to_string());
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| fail())?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(fail());
    }
    let (cipher, nonce_mac) = subkeys(key)?;
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut plain = body.to_vec();
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), b"", &mut plain, tag.into())
        .map_err(|_| fail())?;
    if synthetic_nonce(&nonce_mac, &plain) != nonce {
        return Err(fail());
    }
    Ok(plain)
}
