//! Opening one authenticated russh connection: TCP, key exchange with the
//! host key policy, then key or password login.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::SshError;
use super::target::{HostKeyPolicy, Identity, Resolved};

/// An open, authenticated connection.
pub type SshHandle = client::Handle<Client>;

/// How to log in.
pub enum Login<'a> {
    /// With these keys, in order.
    Keys(&'a [Identity]),
    /// With this password (never logged, never part of an error).
    Password(&'a str),
}

/// The russh client handler: decides about the server's host key.
pub struct Client {
    policy: HostKeyPolicy,
    host: String,
    port: u16,
    /// Why the host key was refused, for the error message (russh only
    /// reports that it was).
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let HostKeyPolicy::KnownHosts(path) = &self.policy else {
            return Ok(true);
        };
        let refuse = |why: String| {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            Ok(false)
        };
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return refuse(format!(
                    "{}:{} presented a host certificate, which strict host key checking against {} does not support",
                    self.host,
                    self.port,
                    path.display()
                ));
            }
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
            Ok(true) => Ok(true),
            Ok(false) => refuse(format!(
                "host key of {} ({} {fingerprint}) is not in {}; add it there (ssh-keyscan) or turn connector_runtime.strict_host_key_checking off",
                known_hosts_name(&self.host, self.port),
                key.algorithm(),
                path.display()
            )),
            Err(russh::keys::Error::KeyChanged { line }) => refuse(format!(
                "host key of {} ({} {fingerprint}) does NOT match the one recorded in {} line {line}: the device was reinstalled or someone is intercepting the connection; remove the old entry if the change is expected",
                known_hosts_name(&self.host, self.port),
                key.algorithm(),
                path.display()
            )),
            Err(e) => refuse(format!(
                "cannot check the host key of {} against {}: {e}",
                known_hosts_name(&self.host, self.port),
                path.display()
            )),
        }
    }
}

/// How `known_hosts` names a host.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Cipher preference of the client.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// The client configuration shared by every connection.
fn client_config() -> Arc<client::Config> {
    static CONFIG: OnceLock<Arc<client::Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(client::Config {
                // A device that vanishes without closing the connection
                // (power cut) is noticed within about a minute.
                keepalive_interval: Some(Duration::from_secs(15)),
                keepalive_max: 4,
                inactivity_timeout: None,
                nodelay: true,
                // Bigger windows keep image streams flowing on fast links.
                window_size: 8 << 20,
                preferred: russh::Preferred {
                    // AES-GCM first: hardware AES (aws-lc-rs) moves image
                    // streams several times faster than ChaCha20 in
                    // software. The server's list still decides what is
                    // available.
                    cipher: std::borrow::Cow::Borrowed(CIPHERS),
                    ..Default::default()
                },
                ..Default::default()
            })
        })
        .clone()
}

/// Opens a connection to `r` and logs in, all within `timeout`.
pub async fn open(
    r: &Resolved,
    login: Login<'_>,
    timeout: Duration,
) -> Result<SshHandle, SshError> {
    match tokio::time::timeout(timeout, open_inner(r, login)).await {
        Ok(result) => result,
        Err(_) => Err(SshError::Timeout(format!(
            "connecting to {} ({}) and logging in took longer than {}",
            r.target,
            r.describe(),
            super::human_duration(timeout)
        ))),
    }
}

async fn open_inner(r: &Resolved, login: Login<'_>) -> Result<SshHandle, SshError> {
    let connect_err = |message: String| SshError::Connect {
        target: r.target.clone(),
        addr: r.address(),
        message,
    };
    let stream = tokio::net::TcpStream::connect((r.host.as_str(), r.port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let refusal = Arc::new(Mutex::new(None));
    let handler = Client {
        policy: r.host_keys.clone(),
        host: r.host.clone(),
        port: r.port,
        refusal: refusal.clone(),
    };
    let mut handle = match client::connect_stream(client_config(), stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(why) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(SshError::HostKey {
                    target: r.target.clone(),
                    message: why,
                });
            }
            return Err(connect_err(format!("SSH handshake failed: {e}")));
        }
    };
    match login {
        Login::Keys(identities) => {
            let mut tried = Vec::new();
            for identity in identities {
                let hash = if identity.key.algorithm().is_rsa() {
                    handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(|e| connect_err(e.to_string()))?
                        .flatten()
                } else {
                    None
                };
                let key = PrivateKeyWithHashAlg::new(identity.key.clone(), hash);
                let result = handle
                    .authenticate_publickey(r.user.clone(), key)
                    .await
                    .map_err(|e| connect_err(format!("key login failed: {e}")))?;
                if result.success() {
                    tracing::debug!(target: "tfdc::ssh", "logged in to {} with {}", r.describe(), identity.path.display());
                    return Ok(handle);
                }
                tried.push(identity.path.display().to_string());
            }
            Err(SshError::Auth {
                target: r.target.clone(),
                addr: r.address(),
                user: r.user.clone(),
                message: format!("none of the keys was accepted (tried {})", tried.join(", ")),
            })
        }
        Login::Password(password) => {
            let result = handle
                .authenticate_password(r.user.clone(), password)
                .await
                .map_err(|e| connect_err(format!("password login failed: {e}")))?;
            if result.success() {
                tracing::debug!(target: "tfdc::ssh", "logged in to {} with the test password", r.describe());
                Ok(handle)
            } else {
                Err(SshError::Auth {
                    target: r.target.clone(),
                    addr: r.address(),
                    user: r.user.clone(),
                    message: "the password login was refused (check test_data.test_password)"
                        .into(),
                })
            }
        }
    }
}
