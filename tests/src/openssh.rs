//! Debian's OpenSSH `sshd` on a loopback address, with its own config,
//! host key and `authorized_keys`: the server labs really run, for the
//! compatibility test and the streaming bench. It needs no root beyond
//! what the test already has (`UsePAM no`, `StrictModes no`); it is killed
//! when its handle is dropped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian installs the server (`scripts/setup.sh` installs it).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Whether [`SSHD`] is installed.
pub fn available() -> bool {
    Path::new(SSHD).exists()
}

/// A running sshd; killed when dropped.
pub struct Sshd {
    child: Child,
    ip: String,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    /// Starts sshd on `ip` (an ephemeral port) with its config, host key,
    /// pid file and log under `dir`. Logins read
    /// `<home>/.ssh/authorized_keys` and get `HOME=<home>`; `path`, when
    /// given, comes first on the session's `PATH` (stand-in programs).
    /// Returns once the server sends its banner (at most 10 s).
    pub fn start(ip: &str, dir: &Path, home: &Path, path: Option<&Path>) -> anyhow::Result<Sshd> {
        let host_key = crate::dut::write_key_pair(&dir.join("host_key"), None)?;
        std::fs::create_dir_all(home.join(".ssh"))?;
        // sshd insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = std::net::TcpListener::bind((ip, 0))?.local_addr()?.port();
        let env = match path {
            Some(bin) => format!(
                "HOME={} PATH={}:/usr/local/bin:/usr/bin:/bin",
                home.display(),
                bin.display()
            ),
            None => format!("HOME={}", home.display()),
        };
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {ip}\nPort {port}\nHostKey {hk}\nPidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {home}/.ssh/authorized_keys\nUsePAM no\nStrictModes no\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nSetEnv {env}\n\
                 Subsystem sftp internal-sftp\nLogLevel VERBOSE\n",
                hk = host_key.private_key.display(),
                dir = dir.display(),
                home = home.display(),
            ),
        )?;
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot run {SSHD}"))?;
        let mut sshd = Sshd {
            child,
            ip: ip.to_string(),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect((ip, port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 8];
                if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-" {
                    return Ok(sshd);
                }
            }
            if let Ok(Some(status)) = sshd.child.try_wait() {
                bail!("sshd exited with {status}: {}", sshd.log_text());
            }
            if Instant::now() >= deadline {
                bail!("sshd did not answer within 10 s: {}", sshd.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address it listens on.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What sshd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The name of the user the tests run as (the login sshd accepts).
pub fn user_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied before any other call could reuse that storage.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return "root".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}
