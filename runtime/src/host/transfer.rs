//! `transfer`: host-side streams (placeholder: being implemented).

use wasmtime::component::Resource;

use super::{HostError, HostState};
use crate::bindings::transfer::{Host, Report, Source};
use crate::host::ssh::SessionHandle;

impl Host for HostState {
    async fn to_ssh(
        &mut self,
        _src: Source,
        _target: Resource<SessionHandle>,
        _command: String,
        _timeout: u64,
        _opts: Vec<(String, String)>,
    ) -> Result<Report, HostError> {
        Err(HostError::unsupported("transfer is not implemented yet"))
    }

    async fn to_artifact(
        &mut self,
        _src: Source,
        _name: String,
        _timeout: u64,
        _opts: Vec<(String, String)>,
    ) -> Result<Report, HostError> {
        Err(HostError::unsupported("transfer is not implemented yet"))
    }
}
