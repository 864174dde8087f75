//! A minimal SSH client for tests and the demo: run one command on a
//! simulated device (or any SSH server) with a key or a password, feed it
//! standard input, collect its output and exit status. Blocking: it runs
//! its own small runtime, so synchronous tests can call it directly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use russh::ChannelMsg;
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;

/// What a command did.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit status (`None` when the command died of a signal or the
    /// connection was cut).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// How to log in.
pub enum Auth<'a> {
    /// A private key file (unencrypted).
    Key(&'a Path),
    /// A password.
    Password(&'a str),
}

struct AcceptAny;

impl client::Handler for AcceptAny {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Runs `command` on `addr` as `user`, with `stdin` as its input; the
/// whole exchange is bounded by `timeout`.
pub fn exec(
    addr: SocketAddr,
    user: &str,
    auth: Auth<'_>,
    command: &str,
    stdin: &[u8],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(timeout, exec_async(addr, user, auth, command, stdin))
            .await
            .with_context(|| format!("`{command}` on {addr} took longer than {timeout:?}"))?
    })
}

/// Async twin of [`exec`] (no overall deadline: wrap it in one).
pub async fn exec_async(
    addr: SocketAddr,
    user: &str,
    auth: Auth<'_>,
    command: &str,
    stdin: &[u8],
) -> anyhow::Result<Output> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        nodelay: true,
        window_size: 8 << 20,
        ..Default::default()
    });
    let mut handle = client::connect(config, addr, AcceptAny)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let ok = match auth {
        Auth::Key(path) => {
            let key = russh::keys::load_secret_key(path, None)
                .with_context(|| format!("reading {}", path.display()))?;
            handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
                .await?
                .success()
        }
        Auth::Password(pw) => handle.authenticate_password(user, pw).await?.success(),
    };
    if !ok {
        bail!("login as {user} on {addr} refused");
    }
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    if !stdin.is_empty() {
        channel.data(stdin).await?;
    }
    channel.eof().await?;
    let mut out = Output::default();
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    Ok(out)
}
