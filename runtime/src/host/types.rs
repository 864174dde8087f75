//! `types`: the one conversion from [`HostError`] to the guest's
//! `types.error` (or a trap).

use super::{HostError, HostState};
use crate::host::wit::latest::types::{Error, Host};

impl Host for HostState {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<Error> {
        match err {
            HostError::Guest(e) => Ok(e),
            HostError::Trap(e) => Err(e),
        }
    }
}
