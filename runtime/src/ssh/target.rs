//! From a target name (`device`, `control-host`) to an address, a user,
//! keys and a host-key policy, the way the reference's `ssh` command line
//! would get them: the device config names the host and user, the agent
//! user's `~/.ssh/config` may rename the host, change the port and add
//! identity files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};

use super::SshError;
use super::config::{OpenSshConfig, expand_tilde};
use crate::config::RuntimeSettings;

/// Connection attempt deadline when `~/.ssh/config` sets no
/// `ConnectTimeout` (and the upper bound when it does).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// OpenSSH's default identity files, in the order `ssh` tries them (the
/// ones the runtime can use).
const DEFAULT_IDENTITIES: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];

/// Where a named target points before `~/.ssh/config` is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRule {
    /// The host as the device config gives it.
    pub host: String,
    /// The user the reference would log in as.
    pub user: String,
}

/// The device-config facts the named targets need, extracted once.
#[derive(Debug, Clone, Default)]
pub struct TargetFacts {
    /// `device_ip`.
    pub device_ip: Option<String>,
    /// `test_data.test_username`, default `ubuntu`.
    pub test_username: String,
    /// `control_host`.
    pub control_host: Option<String>,
    /// `control_user`, default `ubuntu`.
    pub control_user: String,
}

/// The known target names, for messages.
pub const TARGETS: [&str; 2] = ["device", "control-host"];

impl TargetFacts {
    /// Resolves `name` to its host and user.
    pub fn rule(&self, name: &str) -> Result<TargetRule, SshError> {
        let (host, key, user) = match name {
            "device" => (&self.device_ip, "device_ip", &self.test_username),
            "control-host" => (&self.control_host, "control_host", &self.control_user),
            _ => {
                return Err(SshError::UnknownTarget {
                    target: name.to_string(),
                });
            }
        };
        let host = host.clone().ok_or_else(|| SshError::NotConfigured {
            target: name.to_string(),
            key: key.to_string(),
        })?;
        Ok(TargetRule {
            host,
            user: user.clone(),
        })
    }
}

/// Host key policy of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Accept any host key (the reference's `StrictHostKeyChecking=no`,
    /// `UserKnownHostsFile=/dev/null`).
    AcceptAny,
    /// Require the key recorded for the host in this `known_hosts` file.
    KnownHosts(PathBuf),
}

/// An agent private key ready for authentication.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Where it was read from.
    pub path: PathBuf,
    /// The key.
    pub key: Arc<PrivateKey>,
}

impl Identity {
    /// The public key as an `authorized_keys` line: the `.pub` file next to
    /// the private key when it holds the same key, else derived from the
    /// private key.
    pub fn public_line(&self) -> String {
        let mut pub_path = self.path.clone().into_os_string();
        pub_path.push(".pub");
        if let Ok(public) = russh::keys::load_public_key(&pub_path)
            && public.key_data() == self.key.public_key().key_data()
            && let Ok(text) = std::fs::read_to_string(&pub_path)
            && let Some(line) = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
        {
            return line.to_string();
        }
        let public: &PublicKey = self.key.public_key();
        public.to_openssh().unwrap_or_default().trim().to_string()
    }
}

/// Everything needed to open a connection to a target.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Target name.
    pub target: String,
    /// Host name or address to connect to (after `HostName`).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Keys to offer, in order.
    pub identities: Vec<Identity>,
    /// Host key policy.
    pub host_keys: HostKeyPolicy,
    /// Deadline of one connection attempt (TCP, key exchange, login).
    pub connect_timeout: Duration,
}

impl Resolved {
    /// `user@host:port`.
    pub fn describe(&self) -> String {
        format!("{}@{}", self.user, self.address())
    }

    /// `host:port` (IPv6 literals in brackets).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The agent user's home directory (`$HOME`).
pub fn home_dir() -> Result<PathBuf, SshError> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
        _ => Err(SshError::BadSetup(
            "HOME is not set, so ~/.ssh cannot be found; run the connector as the agent user with HOME set".into(),
        )),
    }
}

/// Resolves `target` for `user` (its rule's user when `None`); `~` is the
/// agent user's `home`.
pub fn resolve(
    facts: &TargetFacts,
    settings: &RuntimeSettings,
    home: &Path,
    target: &str,
    user: Option<&str>,
) -> Result<Resolved, SshError> {
    let rule = facts.rule(target)?;
    let ssh_config = OpenSshConfig::load(settings.ssh_config.as_deref(), home)?;
    // The rule always names a user, as the reference passes `user@host`:
    // it wins over a `User` line, exactly as on the `ssh` command line.
    let user = user.unwrap_or(&rule.user).to_string();
    let entry = ssh_config.lookup(&rule.host, &user);
    let host = entry.host_name.clone().unwrap_or_else(|| rule.host.clone());
    let port = entry.port.unwrap_or(22);
    let candidates: Vec<(PathBuf, bool)> = if !settings.identity_files.is_empty() {
        settings
            .identity_files
            .iter()
            .map(|p| (expand_tilde(p, home), true))
            .collect()
    } else if !entry.identity_files.is_empty() {
        entry
            .identity_files
            .iter()
            .map(|p| (p.clone(), true))
            .collect()
    } else {
        DEFAULT_IDENTITIES
            .iter()
            .map(|name| (home.join(".ssh").join(name), false))
            .collect()
    };
    let identities = load_identities(target, &candidates)?;
    let host_keys = if settings.strict_host_key_checking {
        HostKeyPolicy::KnownHosts(
            settings
                .known_hosts
                .as_deref()
                .map(|p| expand_tilde(p, home))
                .unwrap_or_else(|| home.join(".ssh").join("known_hosts")),
        )
    } else {
        HostKeyPolicy::AcceptAny
    };
    let connect_timeout = entry
        .connect_timeout
        .filter(|t| !t.is_zero())
        .map_or(MAX_CONNECT_TIMEOUT, |t| t.min(MAX_CONNECT_TIMEOUT));
    Ok(Resolved {
        target: target.to_string(),
        host,
        port,
        user,
        identities,
        host_keys,
        connect_timeout,
    })
}

/// Loads the candidate keys. `explicit` candidates that are missing are
/// skipped with a warning (as `ssh` does); keys that cannot be used are
/// reported only if none can.
fn load_identities(
    target: &str,
    candidates: &[(PathBuf, bool)],
) -> Result<Vec<Identity>, SshError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (path, explicit) in candidates {
        match load_identity(path) {
            Ok(Some(identity)) => out.push(identity),
            Ok(None) => {
                if *explicit {
                    tracing::warn!(target: "tfdc::ssh", "identity file {} does not exist", path.display());
                    problems.push(format!("{} does not exist", path.display()));
                }
            }
            Err(problem) => {
                tracing::warn!(target: "tfdc::ssh", "{problem}");
                problems.push(problem);
            }
        }
    }
    if out.is_empty() {
        let looked = candidates
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let detail = if problems.is_empty() {
            format!("none of {looked} exists")
        } else {
            problems.join("; ")
        };
        return Err(SshError::NoIdentity(format!(
            "no usable SSH key for target {target}: {detail}; create an unencrypted key (ssh-keygen -t ed25519 -N '') or set connector_runtime.identity_files"
        )));
    }
    Ok(out)
}

fn load_identity(path: &Path) -> Result<Option<Identity>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read identity file {}: {e}", path.display())),
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => Ok(Some(Identity {
            path: path.to_path_buf(),
            key: Arc::new(key),
        })),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(format!(
            "identity file {} is protected by a passphrase; the runtime only uses unencrypted keys (ssh-agent is not consulted)",
            path.display()
        )),
        Err(e) => Err(format!(
            "identity file {} is not a usable private key: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TargetFacts {
        TargetFacts {
            device_ip: Some("10.1.2.3".into()),
            test_username: "tester".into(),
            control_host: None,
            control_user: "ubuntu".into(),
        }
    }

    #[test]
    fn rules_name_the_missing_key() {
        let f = facts();
        assert_eq!(
            f.rule("device").unwrap(),
            TargetRule {
                host: "10.1.2.3".into(),
                user: "tester".into()
            }
        );
        let err = f.rule("control-host").unwrap_err().to_string();
        assert!(err.contains("control_host"), "{err}");
        let err = f.rule("bmc").unwrap_err().to_string();
        assert!(err.contains("bmc") && err.contains("device"), "{err}");
    }

    #[test]
    fn describe_brackets_ipv6() {
        let r = Resolved {
            target: "device".into(),
            host: "::1".into(),
            port: 2222,
            user: "u".into(),
            identities: Vec::new(),
            host_keys: HostKeyPolicy::AcceptAny,
            connect_timeout: MAX_CONNECT_TIMEOUT,
        };
        assert_eq!(r.describe(), "u@[::1]:2222");
    }
}
