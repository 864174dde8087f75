//! `reserve_data.ssh_keys` (reference §3.5 step 2): public keys imported
//! from Launchpad (`lp:<user>`) or GitHub (`gh:<user>`) and appended to the
//! test user's `authorized_keys` on the device.
//!
//! Deliberate difference: the reference shells out to `ssh-import-id` and
//! `ssh-copy-id`; this module fetches the keys itself over HTTPS (URLs from
//! `connector_runtime.launchpad_keys_url` / `github_keys_url`) and installs
//! them over the runtime's own SSH client. Lines get the same
//! `# ssh-import-id <spec>` label `ssh-import-id` adds, keys already
//! present are not added twice, and a user without keys is reported at
//! once instead of being retried ten times.

use std::time::Duration;

use bytes::Bytes;
use russh::keys::{HashAlg, PublicKey};

use crate::context::StageContext;
use crate::http::Request;

/// Attempts per key import and per key installation (reference: 10 each).
pub const ATTEMPTS: u32 = 10;
/// Deadline of one key download (the reference gives `ssh-import-id` 30 s).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one installation over SSH (reference: 30 s for `ssh-copy-id`).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest key list accepted from a key server.
const MAX_KEYS_BODY: u64 = 1 << 20;

/// Where a key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `lp:` — Launchpad.
    Launchpad,
    /// `gh:` — GitHub.
    GitHub,
}

/// One parsed `ssh_keys` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub provider: Provider,
    pub user: String,
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = match self.provider {
            Provider::Launchpad => "lp",
            Provider::GitHub => "gh",
        };
        write!(f, "{prefix}:{}", self.user)
    }
}

/// Parses an entry by the server's rule `^(lp|gh):(\S+)$`.
pub fn parse_spec(text: &str) -> Option<KeySpec> {
    let (prefix, user) = text.split_once(':')?;
    let provider = match prefix {
        "lp" => Provider::Launchpad,
        "gh" => Provider::GitHub,
        _ => return None,
    };
    if user.is_empty() || user.chars().any(char::is_whitespace) {
        return None;
    }
    Some(KeySpec {
        provider,
        user: user.to_string(),
    })
}

/// The URL of `spec`'s keys: `template` with `{user}` replaced by the
/// percent-encoded user name.
pub fn key_url(template: &str, spec: &KeySpec) -> String {
    let mut encoded = String::with_capacity(spec.user.len());
    for b in spec.user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    template.replace("{user}", &encoded)
}

/// Why a key could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("Failed to import ssh key: {key}. User not found.")]
    NotFound { key: String },
    #[error("Failed to import ssh key: {key}. Maximum retries reached (last error: {last})")]
    MaxRetries { key: String, last: String },
}

/// The public keys of a key server's answer, as `authorized_keys` lines
/// labelled `# ssh-import-id <spec>` (whitespace normalised as
/// `ssh-import-id` does). Lines that are not valid public keys are
/// dropped; their count is returned too.
pub fn authorized_lines(body: &str, spec: &KeySpec) -> (Vec<(String, PublicKey)>, usize) {
    let mut keys = Vec::new();
    let mut rejected = 0;
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let normalised = fields.join(" ");
        match PublicKey::from_openssh(&normalised) {
            Ok(key) if fields.len() >= 2 => {
                keys.push((format!("{normalised} # ssh-import-id {spec}"), key));
            }
            _ => rejected += 1,
        }
    }
    (keys, rejected)
}

/// A short description of a key for the log: fingerprint, type, comment.
pub fn describe(key: &PublicKey) -> String {
    let comment = key.comment().as_str_lossy();
    let mut out = format!("{} ({}", key.fingerprint(HashAlg::Sha256), key.algorithm());
    if !comment.is_empty() {
        out.push(' ');
        out.push_str(comment);
    }
    out.push(')');
    out
}

/// The pause before retry number `attempt + 1` of an import: the
/// reference's `min(2**attempt, 100)` seconds, in units of `base`.
pub fn import_backoff(attempt: u32, base: Duration) -> Duration {
    base.mul_f64(2f64.powi(attempt.min(16) as i32).min(100.0))
}

/// Downloads the key list of `spec`, retrying as the reference does: a 404
/// ends it at once, anything else is retried up to [`ATTEMPTS`] times.
pub async fn fetch(
    cx: &StageContext,
    spec: &KeySpec,
    base: Duration,
) -> Result<String, ImportError> {
    let template = match spec.provider {
        Provider::Launchpad => &cx.config.runtime.launchpad_keys_url,
        Provider::GitHub => &cx.config.runtime.github_keys_url,
    };
    let url = key_url(template, spec);
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match cx
            .http
            .send(Request::get(url.clone(), FETCH_TIMEOUT), MAX_KEYS_BODY)
            .await
        {
            Ok(resp) if (200..300).contains(&resp.status) => {
                return Ok(String::from_utf8_lossy(&resp.body).into_owned());
            }
            Ok(resp) if resp.status == 404 => {
                return Err(ImportError::NotFound {
                    key: spec.to_string(),
                });
            }
            Ok(resp) => last = format!("GET {url} answered HTTP {}", resp.status),
            Err(e) => last = e.to_string(),
        }
        tracing::error!(target: "tfdc::defaults", "Unable to import ssh key from: {spec} ({last})");
        if attempt + 1 < ATTEMPTS {
            tracing::info!(target: "tfdc::defaults", "Retrying...");
            tokio::time::sleep(import_backoff(attempt, base)).await;
        }
    }
    Err(ImportError::MaxRetries {
        key: spec.to_string(),
        last,
    })
}

/// Shell script run on the device as the test user: appends the lines
/// read from stdin to `~/.ssh/authorized_keys`, skipping keys already
/// there, and creates the folder and file with the modes sshd expects.
pub const INSTALL_SCRIPT: &str = r#"set -f
umask 077
mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" || exit 1
f="$HOME/.ssh/authorized_keys"
touch "$f" && chmod 600 "$f" || exit 1
if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >> "$f" || exit 1; fi
added=0
while IFS= read -r line; do
  [ -n "$line" ] || continue
  set -- $line
  if grep -qF -- "$1 $2" "$f"; then continue; fi
  printf '%s\n' "$line" >> "$f" || exit 1
  added=$((added + 1))
done
echo "added $added"
"#;

/// Installs `lines` for `user` on the device, retrying [`ATTEMPTS`] times
/// with `pause` in between (reference: 60 s). Returns the last error.
pub async fn install(
    cx: &StageContext,
    user: &str,
    spec: &KeySpec,
    lines: &[String],
    pause: Duration,
) -> Result<(), String> {
    let mut stdin = lines.join("\n");
    stdin.push('\n');
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match install_once(cx, user, stdin.as_bytes()).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tracing::error!(target: "tfdc::defaults", "Error copying ssh key to device for: {spec} ({last})");
        if attempt + 1 < ATTEMPTS {
            tracing::info!(target: "tfdc::defaults", "Retrying...");
            tokio::time::sleep(pause).await;
        }
    }
    Err(last)
}

async fn install_once(cx: &StageContext, user: &str, stdin: &[u8]) -> Result<(), String> {
    let conn = cx
        .ssh
        .connect("device", Some(user), INSTALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(stdin))]);
    let out = conn
        .exec_with_stdin(INSTALL_SCRIPT, body, INSTALL_TIMEOUT, false)
        .await
        .map_err(|e| e.to_string())?;
    if out.status != 0 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "installing the keys on {} exited with status {}: {}",
            conn.describe(),
            out.status,
            stderr.trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBdRN9kYK2U60WZ484Ru2OW08/CacxZed4nNrs9EVTET alice@laptop";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDdu3kOVmSm4C93KWkYW6yCTAhId5DEP4AuM/TBM1z1hrhUWI1RFeP7FI/gklm06XcyqKS7YNY4KIEgEq1SO/wA=";

    #[test]
    fn specs_follow_the_server_rule() {
        assert_eq!(
            parse_spec("lp:alice"),
            Some(KeySpec {
                provider: Provider::Launchpad,
                user: "alice".into()
            })
        );
        assert_eq!(parse_spec("gh:bob-2").unwrap().provider, Provider::GitHub);
        assert_eq!(parse_spec("gh:a:b").unwrap().user, "a:b");
        for bad in [
            "alice",
            "lp:",
            "xx:alice",
            "lp:al ice",
            "lp:alice\n",
            "LP:alice",
            "",
        ] {
            assert_eq!(parse_spec(bad), None, "{bad:?}");
        }
        assert_eq!(parse_spec("gh:bob").unwrap().to_string(), "gh:bob");
    }

    #[test]
    fn urls_encode_the_user() {
        let spec = parse_spec("lp:a/b?c%").unwrap();
        assert_eq!(
            key_url("https://launchpad.net/~{user}/+sshkeys", &spec),
            "https://launchpad.net/~a%2Fb%3Fc%25/+sshkeys"
        );
        let spec = parse_spec("gh:Bob_x.y~z").unwrap();
        assert_eq!(
            key_url("https://github.com/{user}.keys", &spec),
            "https://github.com/Bob_x.y~z.keys"
        );
    }

    #[test]
    fn key_lines_are_validated_and_labelled() {
        let spec = parse_spec("gh:bob").unwrap();
        let body = format!(
            "{ED25519}\r\n\n# a comment\nnot a key\nssh-ed25519 AAAAnotbase64!! x\n  {ECDSA}  \n"
        );
        let (keys, rejected) = authorized_lines(&body, &spec);
        assert_eq!(rejected, 2);
        let lines: Vec<&str> = keys.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            lines,
            vec![
                format!("{ED25519} # ssh-import-id gh:bob"),
                format!("{ECDSA} # ssh-import-id gh:bob"),
            ]
        );
        let described = describe(&keys[0].1);
        assert!(described.starts_with("SHA256:"), "{described}");
        assert!(
            described.contains("ssh-ed25519 alice@laptop"),
            "{described}"
        );
        assert_eq!(authorized_lines("", &spec).0.len(), 0);
    }

    #[test]
    fn backoff_follows_the_reference() {
        let secs: Vec<u64> = (0..10)
            .map(|a| import_backoff(a, Duration::from_secs(1)).as_secs())
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 100, 100, 100]);
        assert_eq!(
            import_backoff(3, Duration::from_millis(10)),
            Duration::from_millis(80)
        );
    }

    /// The installation script, run with a local shell against a scratch
    /// HOME: creates the file, keeps existing lines, adds no duplicates.
    #[test]
    fn install_script_appends_without_duplicates() {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(ssh.join("authorized_keys"), "ssh-rsa AAAAexisting agent").unwrap();
        let run = |input: &str| {
            use std::io::Write;
            let mut child = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(INSTALL_SCRIPT)
                .env("HOME", home.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let line = format!("{ED25519} # ssh-import-id lp:alice");
        assert_eq!(run(&format!("{line}\n")), "added 1\n");
        // Same key again (different label): nothing added.
        assert_eq!(
            run(&format!("{ED25519} # ssh-import-id gh:alice\n")),
            "added 0\n"
        );
        let text = std::fs::read_to_string(ssh.join("authorized_keys")).unwrap();
        assert_eq!(text, format!("ssh-rsa AAAAexisting agent\n{line}\n"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ssh.join("authorized_keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
