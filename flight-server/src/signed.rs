//! Signed, expiring, self-contained tokens: bearer tokens, tickets and
//! prepared-statement handles.
//!
//! Layout: `base64url(json payload) "." base64url(HMAC-SHA256(key, payload))`.
//! The key is derived from the master key, so tokens survive restarts of one
//! server and verify on every server sharing the key; a forged or edited
//! token fails verification, an old one fails its expiry check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tonic::Status;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies payloads with one key.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

/// A payload with an expiry (seconds since the Unix epoch).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    exp: i64,
    kind: String,
    body: T,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Signer {
    /// A signer with a 32-byte key.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, data: &[u8]) -> Result<Vec<u8>, Status> {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .map_err(|_| Status::internal("signing key"))?;
        m.update(data);
        Ok(m.finalize().into_bytes().to_vec())
    }

    /// Signs `body` of `kind`, valid for `ttl_secs`.
    pub fn sign<T: Serialize>(&self, kind: &str, body: T, ttl_secs: i64) -> Result<String, Status> {
        let payload = serde_json::to_vec(&Envelope {
            exp: now() + ttl_secs,
            kind: kind.to_string(),
            body,
        })
        .map_err(|e| Status::internal(format!("encode: {e}")))?;
        let mac = self.mac(&payload)?;
        Ok(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    /// Verifies signature, kind and expiry, and returns the body.
    pub fn verify<T: DeserializeOwned>(&self, kind: &str, token: &str) -> Result<T, Status> {
        let bad = || Status::unauthenticated(format!("invalid or forged {kind}"));
        let (p, m) = token.split_once('.').ok_or_else(bad)?;
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| bad())?;
        let mac = URL_SAFE_NO_PAD.decode(m).map_err(|_| bad())?;
        let mut check = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .map_err(|_| Status::internal("signing key"))?;
        check.update(&payload);
        check.verify_slice(&mac).map_err(|_| bad())?;
        let env: Envelope<T> = serde_json::from_slice(&payload).map_err(|_| bad())?;
        if env.kind != kind {
            return Err(bad());
        }
        if env.exp < now() {
            return Err(Status::unauthenticated(format!("{kind} expired")));
        }
        Ok(env.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_forgery_kind_and_expiry() {
        let s = Signer::new([1; 32]);
        let t = s.sign("ticket", "hello", 60).unwrap();
        assert_eq!(s.verify::<String>("ticket", &t).unwrap(), "hello");
        assert!(s.verify::<String>("handle", &t).is_err());
        let other = Signer::new([2; 32]);
        assert!(other.verify::<String>("ticket", &t).is_err());
        let (p, m) = t.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(p).unwrap();
        raw[10] ^= 1;
        let forged = format!("{}.{m}", URL_SAFE_NO_PAD.encode(raw));
        assert!(s.verify::<String>("ticket", &forged).is_err());
        let old = s.sign("ticket", "x", -1).unwrap();
        assert!(s
            .verify::<String>("ticket", &old)
            .unwrap_err()
            .message()
            .contains("expired"));
        assert!(s.verify::<String>("ticket", "garbage").is_err());
    }
}
