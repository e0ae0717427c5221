//! The client-facing TLS configuration: certificate and key from the config, ALPN
//! "postgresql" (required by PostgreSQL 17 direct TLS), reloadable on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {} holds no certificate", cert.display()));
    }
    // The error text never includes key material, only the path.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a private key from tls_key {}: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert/tls_key rejected: {e}"))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// The current server TLS configuration; swapped whole on reload so a handshake in
/// progress keeps the configuration it started with.
pub struct TlsSettings {
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Option<Arc<ServerConfig>>>,
}

impl TlsSettings {
    pub fn new(cert: Option<&Path>, key: Option<&Path>) -> Result<Self, String> {
        let files = match (cert, key) {
            (Some(c), Some(k)) => Some((c.to_path_buf(), k.to_path_buf())),
            (None, None) => None,
            _ => return Err("[listen] tls_cert and tls_key must be given together".into()),
        };
        let current = match &files {
            Some((c, k)) => Some(load_server_config(c, k)?),
            None => None,
        };
        Ok(Self {
            files,
            current: RwLock::new(current),
        })
    }

    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the certificate and key. On failure the old ones stay in use.
    pub fn reload(&self) -> Result<bool, String> {
        let Some((c, k)) = &self.files else {
            return Ok(false);
        };
        let fresh = load_server_config(c, k)?;
        match self.current.write() {
            Ok(mut g) => *g = Some(fresh),
            Err(poisoned) => *poisoned.into_inner() = Some(fresh),
        }
        Ok(true)
    }
}
