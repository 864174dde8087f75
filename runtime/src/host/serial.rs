//! `serial`: the device's console (placeholder: being implemented).

use wasmtime::component::Resource;

use super::{HostError, HostState};
use crate::bindings::serial::{Host, HostPort};
use crate::capability::Capability;

/// The host side of a `port` resource.
pub struct PortHandle {
    pub name: String,
}

impl HostPort for HostState {
    async fn wait_for(
        &mut self,
        _this: Resource<PortHandle>,
        _pattern: String,
        _timeout: u64,
    ) -> Result<String, HostError> {
        Err(HostError::unsupported("serial is not implemented yet"))
    }

    async fn write(
        &mut self,
        _this: Resource<PortHandle>,
        _data: Vec<u8>,
        _timeout: u64,
    ) -> Result<(), HostError> {
        Err(HostError::unsupported("serial is not implemented yet"))
    }

    async fn drop(&mut self, this: Resource<PortHandle>) -> wasmtime::Result<()> {
        self.table().delete(this)?;
        Ok(())
    }
}

impl Host for HostState {
    async fn open(&mut self, name: String) -> Result<Resource<PortHandle>, HostError> {
        self.cx.gate.check(Capability::Serial, &name)?;
        Err(HostError::unsupported("serial is not implemented yet"))
    }
}
