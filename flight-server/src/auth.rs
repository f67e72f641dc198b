//! Authentication: HTTP Basic at Handshake, bearer tokens afterwards, and
//! the server-side session registry the tokens are bound to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::Status;
use veil_engine::{Engine, Session};

use crate::signed::Signer;
use crate::status::to_status;

/// How long a bearer token lives.
pub const TOKEN_TTL_SECS: i64 = 12 * 3600;

#[derive(Debug, Serialize, Deserialize)]
struct TokenBody {
    sid: String,
    user: String,
}

/// Decodes `Basic <base64(user:password)>`, padded or not.
pub fn decode_basic(header: &str) -> Result<(String, String), Status> {
    let bad = || Status::unauthenticated("malformed Basic authorization header");
    let b64 = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or_else(bad)?
        .trim()
        .trim_end_matches('=');
    let raw = STANDARD_NO_PAD
        .decode(b64)
        .or_else(|_| URL_SAFE_NO_PAD.decode(b64))
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = text.split_once(':').ok_or_else(bad)?;
    Ok((u.to_string(), p.to_string()))
}

/// Live sessions, by id.
#[derive(Debug)]
pub struct Sessions {
    engine: Arc<Engine>,
    signer: Signer,
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// An empty registry.
    pub fn new(engine: Arc<Engine>, signer: Signer) -> Self {
        Self {
            engine,
            signer,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a password and opens a session; returns its bearer token.
    pub fn login(&self, user: &str, password: &str) -> Result<String, Status> {
        let u = self
            .engine
            .authenticate(user, password)
            .map_err(to_status)?;
        let sid = hex::encode(rand::random::<[u8; 16]>());
        let token = self.signer.sign(
            "token",
            TokenBody {
                sid: sid.clone(),
                user: u.name.clone(),
            },
            TOKEN_TTL_SECS,
        )?;
        let mut live = self
            .live
            .lock()
            .map_err(|_| Status::internal("session lock"))?;
        live.insert(sid, self.engine.session(&u.name));
        self.engine.metrics().active_sessions.set(live.len() as i64);
        Ok(token)
    }

    /// The session behind a request's bearer token (or Basic credentials,
    /// which open a fresh session). Returns (session id, session).
    pub fn authenticate(&self, md: &MetadataMap) -> Result<(String, Session), Status> {
        let header = md
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("no authorization header; call Handshake first")
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
        let token = if let Some(t) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        {
            t.trim().to_string()
        } else {
            let (u, p) = decode_basic(header)?;
            self.login(&u, &p)?
        };
        let body: TokenBody = self.signer.verify("token", &token)?;
        let live = self
            .live
            .lock()
            .map_err(|_| Status::internal("session lock"))?;
        let session = live
            .get(&body.sid)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("session closed or unknown; log in again"))?;
        if session.user() != body.user {
            return Err(Status::unauthenticated("token does not match its session"));
        }
        Ok((body.sid, session))
    }

    /// Stores a session's updated settings.
    pub fn store(&self, sid: &str, session: Session) {
        if let Ok(mut live) = self.live.lock() {
            if live.contains_key(sid) {
                live.insert(sid.to_string(), session);
            }
        }
    }

    /// Closes a session.
    pub fn close(&self, sid: &str) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(sid);
            self.engine.metrics().active_sessions.set(live.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_is_padding_indifferent() {
        // "alice:pw" -> YWxpY2U6cHc=
        assert_eq!(
            decode_basic("Basic YWxpY2U6cHc=").unwrap(),
            ("alice".into(), "pw".into())
        );
        assert_eq!(
            decode_basic("Basic YWxpY2U6cHc").unwrap(),
            ("alice".into(), "pw".into())
        );
        assert!(decode_basic("Basic !!!").is_err());
        assert!(decode_basic("Bearer x").is_err());
        assert!(decode_basic("Basic bm9jb2xvbg").is_err(), "no colon");
    }
}
