//! The agent user's OpenSSH client configuration (`~/.ssh/config`), read
//! with `ssh2-config` and reduced to what the runtime honours: `Host`
//! patterns (first match wins per keyword, as OpenSSH does), `HostName`,
//! `Port`, `User`, `IdentityFile` (accumulated over every matching block)
//! and `ConnectTimeout`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2_config::{ParseRule, SshConfig};

use super::SshError;

/// What the OpenSSH configuration says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// `HostName`, with `%h` expanded.
    pub host_name: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `User`.
    pub user: Option<String>,
    /// `IdentityFile` entries in order, `~` and `%d` expanded.
    pub identity_files: Vec<PathBuf>,
    /// `ConnectTimeout`.
    pub connect_timeout: Option<Duration>,
}

/// A parsed OpenSSH client configuration (possibly empty).
#[derive(Debug, Clone, Default)]
pub struct OpenSshConfig {
    parsed: Option<SshConfig>,
    home: PathBuf,
}

impl OpenSshConfig {
    /// Reads `explicit` if given (it must exist), else `<home>/.ssh/config`
    /// if it exists. Unknown and unsupported keywords are accepted, as a
    /// real-world config carries many the runtime does not use.
    pub fn load(explicit: Option<&Path>, home: &Path) -> Result<Self, SshError> {
        let (path, required) = match explicit {
            Some(p) => (expand_tilde(p, home), true),
            None => (home.join(".ssh").join("config"), false),
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(OpenSshConfig {
                    parsed: None,
                    home: home.to_path_buf(),
                });
            }
            Err(e) => {
                return Err(SshError::BadSetup(format!(
                    "cannot read the SSH client config {}: {e}; fix connector_runtime.ssh_config in the device config",
                    path.display()
                )));
            }
        };
        let parsed = SshConfig::default()
            .home_dir(home)
            .parse(
                &mut BufReader::new(file),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map_err(|e| {
                SshError::BadSetup(format!(
                    "the SSH client config {} is invalid: {e}",
                    path.display()
                ))
            })?;
        Ok(OpenSshConfig {
            parsed: Some(parsed),
            home: home.to_path_buf(),
        })
    }

    /// The settings for `host` (the name as given, before `HostName`).
    pub fn lookup(&self, host: &str, remote_user: &str) -> HostEntry {
        let Some(parsed) = &self.parsed else {
            return HostEntry::default();
        };
        let params = parsed.query(host);
        let host_name = params
            .host_name
            .map(|h| expand_tokens(&h, host, host, remote_user, &self.home));
        let real_host = host_name.clone().unwrap_or_else(|| host.to_string());
        let identity_files = params
            .identity_file
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let text = p.to_string_lossy();
                let expanded = expand_tokens(&text, host, &real_host, remote_user, &self.home);
                expand_tilde(Path::new(&expanded), &self.home)
            })
            .collect();
        HostEntry {
            host_name,
            port: params.port,
            user: params.user,
            identity_files,
            connect_timeout: params.connect_timeout,
        }
    }
}

/// Expands a leading `~` or `~/` against `home`.
pub fn expand_tilde(path: &Path, home: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// Expands the OpenSSH tokens that make sense here: `%%`, `%d` (home),
/// `%h` (remote host name), `%n` (host as given), `%r` (remote user).
fn expand_tokens(text: &str, given: &str, host: &str, user: &str, home: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('d') => out.push_str(&home.to_string_lossy()),
            Some('h') => out.push_str(host),
            Some('n') => out.push_str(given),
            Some('r') => out.push_str(user),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (tempfile::TempDir, OpenSshConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".ssh")).unwrap();
        std::fs::write(dir.path().join(".ssh/config"), text).unwrap();
        let c = OpenSshConfig::load(None, dir.path()).unwrap();
        (dir, c)
    }

    #[test]
    fn first_match_wins_and_identity_files_accumulate() {
        let (dir, c) = config(
            "Host 10.0.0.*\n  Port 2222\n  User first\n  IdentityFile ~/.ssh/a\n\
             Host *\n  Port 22\n  User second\n  IdentityFile %d/b\n  HostName %h.lab\n  ConnectTimeout 3\n",
        );
        let e = c.lookup("10.0.0.7", "ubuntu");
        assert_eq!(e.port, Some(2222));
        assert_eq!(e.user.as_deref(), Some("first"));
        assert_eq!(e.host_name.as_deref(), Some("10.0.0.7.lab"));
        assert_eq!(
            e.identity_files,
            vec![dir.path().join(".ssh/a"), dir.path().join("b")]
        );
        assert_eq!(e.connect_timeout, Some(Duration::from_secs(3)));
        let other = c.lookup("other", "ubuntu");
        assert_eq!(other.port, Some(22));
        assert_eq!(other.user.as_deref(), Some("second"));
    }

    #[test]
    fn negated_patterns_exclude() {
        let (_d, c) = config("Host * !10.0.0.1\n  Port 2200\n");
        assert_eq!(c.lookup("10.0.0.1", "u").port, None);
        assert_eq!(c.lookup("10.0.0.2", "u").port, Some(2200));
    }

    #[test]
    fn missing_default_file_is_empty_but_explicit_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let c = OpenSshConfig::load(None, dir.path()).unwrap();
        assert_eq!(c.lookup("x", "u"), HostEntry::default());
        let err = OpenSshConfig::load(Some(Path::new("~/nope")), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("connector_runtime.ssh_config"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keywords_are_tolerated() {
        let (_d, c) = config("Host *\n  SomeFutureOption yes\n  ControlMaster auto\n  Port 1\n");
        assert_eq!(c.lookup("h", "u").port, Some(1));
    }

    #[test]
    fn tilde_expansion() {
        let home = Path::new("/h");
        assert_eq!(expand_tilde(Path::new("~/x"), home), PathBuf::from("/h/x"));
        assert_eq!(expand_tilde(Path::new("/a/x"), home), PathBuf::from("/a/x"));
        assert_eq!(expand_tilde(Path::new("~"), home), PathBuf::from("/h"));
    }
}
