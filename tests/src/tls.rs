//! HTTPS for the simulator's servers: a throwaway CA (`tests/certs/`) and a
//! certificate it signed for `localhost`, `127.0.0.1` and `::1`. Clients
//! trust it by adding [`CA_PEM`] (e.g. through
//! `connector_runtime.extra_ca_certs`, see [`write_ca`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The test CA certificate (PEM).
pub const CA_PEM: &str = include_str!("../certs/ca.pem");
/// The server certificate (PEM), signed by [`CA_PEM`].
pub const SERVER_CERT_PEM: &str = include_str!("../certs/server.pem");
/// The server certificate's private key (PKCS#8 PEM).
pub const SERVER_KEY_PEM: &str = include_str!("../certs/server.key");

/// Writes [`CA_PEM`] to `dir/labsim-ca.pem` and returns the path.
pub fn write_ca(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("labsim-ca.pem");
    std::fs::write(&path, CA_PEM)?;
    Ok(path)
}

/// A TLS acceptor presenting the test server certificate.
pub fn acceptor() -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(SERVER_CERT_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
