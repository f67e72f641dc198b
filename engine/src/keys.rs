//! The master key and the keys derived from it.
//!
//! ```text
//! KeyProvider (default FileKeyProvider: master.key, 32 random bytes, 0600,
//!              or VEIL_MASTER_KEY)
//!   └─ HKDF-SHA256(info = purpose string) ─► per (source, column) mask keys, version v
//!                                            per project join keys, version v
//!                                            ticket signing key, audit chain key
//! ```
//! Versions live in the catalog (settings, projects); derived bytes are
//! never stored anywhere.
//! Key bytes never leave this module except inside a [`MaskKey`] handed to a
//! UDF instance; `Debug` prints nothing secret.

use std::io::Write;
use std::path::Path;

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use veil_udfs::{KeyHandle, MaskKey};

use crate::error::{Result, VeilError};

/// Where the root key comes from: the integration point for an external
/// KMS (unwrap a data key there and return it). Derivation, versions and
/// everything else stay in [`MasterKey`].
pub trait KeyProvider: Send + Sync {
    /// A short name for logs, e.g. `file`.
    fn name(&self) -> &str;
    /// The 32-byte root key.
    fn root_key(&self) -> Result<[u8; 32]>;
}

/// The default provider: `VEIL_MASTER_KEY` (64 hex chars) when set, else
/// `<data_dir>/keys/master.key`, created 0600 with 32 random bytes.
#[derive(Debug, Clone)]
pub struct FileKeyProvider {
    data_dir: std::path::PathBuf,
}

impl FileKeyProvider {
    /// The provider of a data directory.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
        }
    }
}

impl KeyProvider for FileKeyProvider {
    fn name(&self) -> &str {
        "file"
    }

    fn root_key(&self) -> Result<[u8; 32]> {
        if let Ok(text) = std::env::var("VEIL_MASTER_KEY") {
            return parse_hex_key(&text, "VEIL_MASTER_KEY");
        }
        let dir = self.data_dir.join("keys");
        let path = dir.join("master.key");
        let io = |e: std::io::Error| VeilError::Internal(format!("{}: {e}", path.display()));
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            return parse_hex_key(&text, "keys/master.key");
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
        Ok(bytes)
    }
}

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
    /// created with 32 random bytes and mode 0600 when missing
    /// ([`FileKeyProvider`]).
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        Self::from_provider(&FileKeyProvider::new(data_dir))
    }

    /// The root key from any provider (an external KMS, for instance).
    pub fn from_provider(provider: &dyn KeyProvider) -> Result<Self> {
        Ok(Self(provider.root_key()?))
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

    struct Fixed;
    impl KeyProvider for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn root_key(&self) -> Result<[u8; 32]> {
            Ok([9; 32])
        }
    }

    #[test]
    fn any_provider_roots_the_same_derivations() {
        let a = MasterKey::from_provider(&Fixed).unwrap();
        assert_eq!(a.derive("x"), MasterKey::from_bytes([9; 32]).derive("x"));
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
