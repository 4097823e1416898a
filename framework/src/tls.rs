//! TLS settings — Workerman's `ssl` transport: a certificate and key for a listening worker
//! ([`ServerTls`]: `wss://`, `https://`, a TLS channel server) and the roots an outgoing
//! connection trusts ([`ClientTls`]: `wss://` clients, `tls://` channel clients). rustls with
//! the *ring* provider; TLS 1.2 and 1.3.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::Error;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

/// A listening worker's certificate chain and private key (Workerman's `local_cert` and
/// `local_pk`). Cheap to clone; shared by every connection.
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Load a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_pem = std::fs::read(cert)
            .map_err(|e| tls_error(&format!("cannot read certificate {}", cert.display()), e))?;
        let key_pem = std::fs::read(key)
            .map_err(|e| tls_error(&format!("cannot read private key {}", key.display()), e))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// A certificate chain and key from PEM text.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("bad certificate PEM", e))?;
        if chain.is_empty() {
            return Err(Error::Tls("no certificate in the PEM data".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls_error("bad private key PEM", e))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_error("certificate and key do not make a server identity", e))?;
        Ok(ServerTls(Arc::new(config)))
    }

    /// A fresh server session for one accepted connection.
    pub(crate) fn session(&self) -> Result<rustls::Connection, Error> {
        rustls::ServerConnection::new(self.0.clone())
            .map(rustls::Connection::Server)
            .map_err(|e| tls_error("TLS session", e))
    }
}

/// The certificate authorities an outgoing TLS connection trusts. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// The system's roots (`/etc/ssl/certs`).
    pub fn system() -> Result<Self, Error> {
        Self::with_roots(system_roots()?)
    }

    /// The system's roots and the CA certificates in this PEM file (a private CA).
    pub fn system_and_ca_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let mut roots = native_roots();
        add_pem_file(&mut roots, path.as_ref())?;
        Self::with_roots(roots)
    }

    /// Trust only the CA certificates in this PEM file (a private CA).
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        add_pem_file(&mut roots, path.as_ref())?;
        Self::with_roots(roots)
    }

    fn with_roots(roots: rustls::RootCertStore) -> Result<Self, Error> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls(Arc::new(config)))
    }

    /// The rustls configuration (for async streams).
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }

    /// A fresh client session to `host` (a DNS name or an IP address, checked against the
    /// server's certificate).
    pub(crate) fn session(&self, host: &str) -> Result<rustls::Connection, Error> {
        self.client_session(host).map(rustls::Connection::Client)
    }

    /// [`ClientTls::session`] as rustls' client type (for blocking streams).
    pub(crate) fn client_session(&self, host: &str) -> Result<rustls::ClientConnection, Error> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| tls_error(&format!("bad server name {host:?}"), e))?;
        rustls::ClientConnection::new(self.0.clone(), name).map_err(|e| tls_error("TLS session", e))
    }
}

/// The system's trusted roots, as many as rustls can read.
fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    roots
}

/// The system's trusted roots; an error when there is none.
fn system_roots() -> Result<rustls::RootCertStore, Error> {
    let roots = native_roots();
    if roots.is_empty() {
        return Err(Error::Tls(
            "no trusted CA certificates in the system store: name a private CA".into(),
        ));
    }
    Ok(roots)
}

fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), Error> {
    let pem = std::fs::read(path)
        .map_err(|e| tls_error(&format!("cannot read CA file {}", path.display()), e))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| tls_error(&format!("bad CA PEM {}", path.display()), e))?;
        roots
            .add(cert)
            .map_err(|e| tls_error(&format!("bad CA certificate in {}", path.display()), e))?;
        added += 1;
    }
    if added == 0 {
        return Err(Error::Tls(format!(
            "no certificate in CA file {}",
            path.display()
        )));
    }
    Ok(())
}
