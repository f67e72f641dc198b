//! Authentication: HTTP Basic at Handshake, bearer tokens afterwards, and
//! the server-side session registry the tokens are bound to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
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

/// Who is calling: the peer's IP address and, over mTLS, the user its
/// verified client certificate names.
#[derive(Debug, Default, Clone)]
pub struct Peer {
    /// The client's IP address, when known.
    pub addr: Option<String>,
    /// The common name of a verified client certificate.
    pub cert_user: Option<String>,
}

impl Peer {
    /// The peer of a request.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self {
            addr: request.remote_addr().map(|a| a.ip().to_string()),
            cert_user: request
                .peer_certs()
                .and_then(|chain| crate::tls::certificate_user(&chain)),
        }
    }
}

#[derive(Debug)]
struct Live {
    session: Session,
    expires: i64,
}

/// Live sessions, by id.
#[derive(Debug)]
pub struct Sessions {
    engine: Arc<Engine>,
    signer: Signer,
    live: Mutex<HashMap<String, Live>>,
    /// Password checks running at once (one per core).
    checks: Arc<Semaphore>,
}

impl Sessions {
    /// An empty registry.
    pub fn new(engine: Arc<Engine>, signer: Signer) -> Self {
        Self {
            engine,
            signer,
            live: Mutex::new(HashMap::new()),
            checks: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    /// Checks a password (or, with no password and a verified client
    /// certificate, the certificate) and opens a session; returns its
    /// bearer token. A client certificate may only log in its own user.
    pub async fn login(
        &self,
        user: &str,
        password: Option<&str>,
        peer: &Peer,
    ) -> Result<String, Status> {
        if let Some(cert_user) = &peer.cert_user {
            if cert_user != user {
                return Err(Status::unauthenticated(format!(
                    "the client certificate is {cert_user}'s; it cannot log in as {user}"
                )));
            }
        }
        let client = peer.addr.as_deref();
        let u = match (password, &peer.cert_user) {
            (Some(p), _) => self.check_password(user, p, client).await?,
            (None, Some(_)) => self.engine.login_certificate(user, client),
            (None, None) => {
                return Err(Status::unauthenticated(
                    "Handshake needs Basic credentials or a client certificate",
                ))
            }
        }
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
        // Sessions whose token expired can never be used again.
        let now = chrono::Utc::now().timestamp();
        live.retain(|_, l| l.expires > now);
        live.insert(
            sid,
            Live {
                session: self.engine.session(&u.name),
                expires: now + TOKEN_TTL_SECS,
            },
        );
        self.engine.metrics().active_sessions.set(live.len() as i64);
        Ok(token)
    }

    /// Checks a password off the server's threads: argon2 takes tens of
    /// milliseconds of CPU (and 19 MiB), and a flood of logins run on the
    /// threads that serve the network stalled every session. At most one
    /// check per core runs at once; the others wait their turn.
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        client: Option<&str>,
    ) -> Result<veil_engine::Result<veil_engine::model::User>, Status> {
        let _turn = self
            .checks
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        let engine = Arc::clone(&self.engine);
        let (user, password) = (user.to_string(), password.to_string());
        let client = client.map(str::to_string);
        tokio::task::spawn_blocking(move || engine.login(&user, &password, client.as_deref()))
            .await
            .map_err(|e| crate::status::internal(format!("the password check failed: {e}")))
    }

    /// The session behind a request's bearer token (or Basic credentials,
    /// which open a fresh session). Returns (session id, session). A session
    /// whose login was revoked (user dropped, password changed, permission
    /// revoked) is closed and refused.
    pub async fn authenticate(
        &self,
        md: &MetadataMap,
        peer: &Peer,
    ) -> Result<(String, Session), Status> {
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
            self.login(&u, Some(&p), peer).await?
        };
        let body: TokenBody = self.signer.verify("token", &token)?;
        let mut session = {
            let live = self
                .live
                .lock()
                .map_err(|_| Status::internal("session lock"))?;
            live.get(&body.sid)
                .map(|l| l.session.clone())
                .ok_or_else(|| Status::unauthenticated("session closed or unknown; log in again"))?
        };
        if session.user() != body.user {
            return Err(Status::unauthenticated("token does not match its session"));
        }
        match session.check_credentials() {
            Err(e) => {
                self.close(&body.sid);
                return Err(to_status(e));
            }
            Ok(true) => self.store(&body.sid, session.clone()),
            Ok(false) => {}
        }
        Ok((body.sid, session))
    }

    /// Stores a session's updated settings.
    pub fn store(&self, sid: &str, session: Session) {
        if let Ok(mut live) = self.live.lock() {
            if let Some(l) = live.get_mut(sid) {
                l.session = session;
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
