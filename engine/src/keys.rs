//! The master key and the keys derived from it.
//!
//! ```text
//! master.key (32 random bytes, 0600) or VEIL_MASTER_KEY
//!   └─ HKDF-SHA256(info = purpose string) ─► per (source, column) mask keys,
//!                                            ticket signing key, audit chain key
//! ```
//! Key bytes never leave this module except inside a [`MaskKey`] handed to a
//! UDF instance; `Debug` prints nothing secret.

use std::io::Write;
use std::path::Path;

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use veil_udfs::{KeyHandle, MaskKey};

use crate::error::{Result, VeilError};

/// The root secret. Everything else is derived from it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn parse_hex_key(text: &str, what: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        VeilError::InvalidArgument(format!("{what} must be 64 hexadecimal characters"))
    })?;
    bytes
        .try_into()
        .map_err(|_| VeilError::InvalidArgument(format!("{what} must be 32 bytes (64 hex chars)")))
}

impl MasterKey {
    /// From explicit bytes (tests, benchmarks).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// `VEIL_MASTER_KEY` (hex) when set, else `<data_dir>/keys/master.key`,
    /// created with 32 random bytes and mode 0600 when missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        if let Ok(text) = std::env::var("VEIL_MASTER_KEY") {
            return Ok(Self(parse_hex_key(&text, "VEIL_MASTER_KEY")?));
        }
        let dir = data_dir.join("keys");
        let path = dir.join("master.key");
        let io = |e: std::io::Error| VeilError::Internal(format!("{}: {e}", path.display()));
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            return Ok(Self(parse_hex_key(&text, "keys/master.key")?));
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path).map_err(io)?;
        file.write_all(hex::encode(bytes).as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self(bytes))
    }

    /// Derives 32 bytes for a purpose string.
    pub fn derive(&self, info: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"veil-v1"), &self.0);
        let mut out = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length.
        if hk.expand(info.as_bytes(), &mut out).is_err() {
            out = [0u8; 32];
        }
        out
    }

    /// The mask key for one (source, column) at a key version.
    pub fn column_key(&self, source: &str, column: &str, version: u32) -> MaskKey {
        let id = format!("col:{source}.{column}");
        let bytes = self.derive(&format!("veil/mask/{id}/v{version}"));
        MaskKey::new(KeyHandle { id, version }, bytes)
    }

    /// A project's join key at a key version: HASH and ENCRYPT use it for
    /// every source of a project with masked joins on. Keyed by the project's
    /// stable id, so two projects (even of the same name) never share tokens.
    pub fn project_key(&self, project_id: &str, version: u32) -> MaskKey {
        let id = format!("project:{project_id}");
        let bytes = self.derive(&format!("veil/mask/{id}/v{version}"));
        MaskKey::new(KeyHandle { id, version }, bytes)
    }

    /// Key of the audit hash chain.
    pub fn audit_key(&self) -> [u8; 32] {
        self.derive("veil/audit-chain/v1")
    }

    /// Key that signs session tokens, tickets and prepared handles.
    pub fn signing_key(&self) -> [u8; 32] {
        self.derive("veil/signing/v1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_separated() {
        let m = MasterKey::from_bytes([7; 32]);
        assert_eq!(m.derive("a"), m.derive("a"));
        assert_ne!(m.derive("a"), m.derive("b"));
        assert_ne!(
            m.derive("veil/mask/project:aa/v1"),
            m.derive("veil/mask/project:aa/v2"),
            "a new version is a new key"
        );
        let p1 = m.project_key("aa", 1);
        assert_ne!(p1, m.project_key("bb", 1));
        assert_ne!(p1, m.project_key("aa", 2));
        assert_eq!(p1.handle().to_string(), "project:aa#v1");
        let k1 = m.column_key("hr.employees", "ssn", 1);
        let k2 = m.column_key("hr.employees", "ssn", 2);
        assert_ne!(k1, k2);
        assert!(!format!("{k1:?}")
            .contains(&hex::encode(m.derive("veil/mask/col:hr.employees.ssn/v1"))));
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create(dir.path()).unwrap();
        let b = MasterKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.derive("x"), b.derive("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys/master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
