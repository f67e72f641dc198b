//! TLS for the Flight SQL endpoint (rustls through tonic), client
//! certificates (mTLS) and `veil dev-cert`.
//!
//! With a client CA configured, every client must present a certificate
//! that CA signed; the certificate's subject common name is the Veil user
//! it authenticates (a Handshake without a password logs that user in, and
//! a password login must name the same user).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use thiserror::Error;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A TLS set-up failure.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read.
    #[error("cannot read TLS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `veil dev-cert` would overwrite a file.
    #[error("{0} exists; pass --force to replace the development certificates")]
    Exists(PathBuf),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The configuration is incomplete.
    #[error("{0}")]
    Config(String),
}

/// The server's certificate files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA whose client certificates are required (mTLS); none: no
    /// client certificates.
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// The tonic server configuration: identity and, with mTLS, the CA
    /// every client certificate must chain to.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

/// The Veil user a verified client certificate names: the subject common
/// name of the leaf certificate.
pub fn certificate_user(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Option<String> {
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What `veil dev-cert` writes.
#[derive(Debug)]
pub struct DevCert {
    /// Output directory.
    pub out: PathBuf,
    /// DNS names and IP addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Users to write client certificates for (mTLS).
    pub clients: Vec<String>,
    /// Replace existing files.
    pub force: bool,
}

/// Default names of a development server certificate.
pub const DEV_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut f = options.open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

impl DevCert {
    /// Writes a development CA (`ca.pem`, `ca-key.pem`), a server
    /// certificate it signed (`server.pem`, `server-key.pem`) and one
    /// client certificate per user (`<user>.pem`, `<user>-key.pem`).
    /// Private keys are created 0600. Returns the files written.
    pub fn write(&self) -> Result<Vec<PathBuf>, TlsError> {
        if self.hosts.is_empty() {
            return Err(TlsError::Config("dev-cert needs at least one host".into()));
        }
        let mut names = vec!["ca".to_string(), "server".to_string()];
        for c in &self.clients {
            if c.is_empty() || c.contains(['/', '\\']) || c == "ca" || c == "server" {
                return Err(TlsError::Config(format!(
                    "'{c}' cannot name a client certificate file"
                )));
            }
            names.push(c.clone());
        }
        let files: Vec<(PathBuf, PathBuf)> = names
            .iter()
            .map(|n| {
                (
                    self.out.join(format!("{n}.pem")),
                    self.out.join(format!("{n}-key.pem")),
                )
            })
            .collect();
        if !self.force {
            if let Some(existing) = files.iter().flat_map(|(c, k)| [c, k]).find(|p| p.exists()) {
                return Err(TlsError::Exists(existing.clone()));
            }
        }
        std::fs::create_dir_all(&self.out).map_err(|source| TlsError::Write {
            path: self.out.clone(),
            source,
        })?;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "Veil development CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let mut pems = vec![(ca_cert.pem(), ca_key.serialize_pem())];
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::new(self.hosts.clone())?;
        server
            .distinguished_name
            .push(DnType::CommonName, self.hosts[0].clone());
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        pems.push((
            server.signed_by(&server_key, &issuer)?.pem(),
            server_key.serialize_pem(),
        ));

        for user in &self.clients {
            let mut client = CertificateParams::new(Vec::<String>::new())?;
            client
                .distinguished_name
                .push(DnType::CommonName, user.clone());
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate()?;
            pems.push((client.signed_by(&key, &issuer)?.pem(), key.serialize_pem()));
        }

        let mut written = Vec::new();
        for ((cert_path, key_path), (cert, key)) in files.into_iter().zip(pems) {
            write(&key_path, &key, true)?;
            write(&cert_path, &cert, false)?;
            written.extend([cert_path, key_path]);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_writes_a_ca_server_and_client_and_names_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevCert {
            out: dir.path().to_path_buf(),
            hosts: DEV_HOSTS.iter().map(|h| h.to_string()).collect(),
            clients: vec!["alice".into()],
            force: false,
        };
        let files = dev.write().unwrap();
        assert_eq!(files.len(), 6);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("server-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pem = std::fs::read(dir.path().join("alice.pem")).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        assert_eq!(certificate_user(&[der]).as_deref(), Some("alice"));
        let again = dev.write().unwrap_err().to_string();
        assert!(again.contains("pass --force"), "{again}");
        let bad = DevCert {
            clients: vec!["../x".into()],
            force: true,
            ..dev
        };
        assert!(bad.write().is_err());
        TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            client_ca: Some(dir.path().join("ca.pem")),
        }
        .server_config()
        .unwrap();
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("server-key.pem"),
            client_ca: None,
        }
        .server_config()
        .unwrap_err()
        .to_string();
        assert!(missing.contains("nope.pem"), "{missing}");
    }
}
