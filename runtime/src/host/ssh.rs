//! `ssh`: sessions to named targets (placeholder: being implemented).

use std::sync::Arc;

use wasmtime::component::Resource;

use super::{HostError, HostState};
use crate::bindings::ssh::{ExecResult, Host, HostSession};
use crate::capability::Capability;
use crate::ssh::Connection;

/// The host side of a `session` resource.
pub struct SessionHandle {
    /// Target name the session was opened for.
    pub target: String,
    /// The shared connection.
    pub conn: Arc<Connection>,
}

impl HostSession for HostState {
    async fn exec(
        &mut self,
        _this: Resource<SessionHandle>,
        _command: String,
        _timeout: u64,
        _opts: Vec<(String, String)>,
    ) -> Result<ExecResult, HostError> {
        Err(HostError::unsupported("ssh exec is not implemented yet"))
    }

    async fn upload(
        &mut self,
        _this: Resource<SessionHandle>,
        _path: String,
        _data: Vec<u8>,
        _mode: u32,
        _timeout: u64,
    ) -> Result<(), HostError> {
        Err(HostError::unsupported("ssh upload is not implemented yet"))
    }

    async fn download(
        &mut self,
        _this: Resource<SessionHandle>,
        _path: String,
        _timeout: u64,
    ) -> Result<Vec<u8>, HostError> {
        Err(HostError::unsupported(
            "ssh download is not implemented yet",
        ))
    }

    async fn download_artifact(
        &mut self,
        _this: Resource<SessionHandle>,
        _path: String,
        _artifact: String,
        _timeout: u64,
    ) -> Result<u64, HostError> {
        Err(HostError::unsupported(
            "ssh download is not implemented yet",
        ))
    }

    async fn drop(&mut self, this: Resource<SessionHandle>) -> wasmtime::Result<()> {
        self.table().delete(this)?;
        Ok(())
    }
}

impl Host for HostState {
    async fn connect(
        &mut self,
        target: String,
        _timeout: u64,
        _opts: Vec<(String, String)>,
    ) -> Result<Resource<SessionHandle>, HostError> {
        self.cx.gate.check(Capability::Ssh, &target)?;
        Err(HostError::unsupported("ssh is not implemented yet"))
    }

    async fn wait_reachable(&mut self, target: String, _timeout: u64) -> Result<(), HostError> {
        self.cx.gate.check(Capability::Ssh, &target)?;
        Err(HostError::unsupported("ssh is not implemented yet"))
    }

    async fn authorize_key(&mut self, target: String, _timeout: u64) -> Result<(), HostError> {
        self.cx.gate.check(Capability::Ssh, &target)?;
        Err(HostError::unsupported("ssh is not implemented yet"))
    }
}
