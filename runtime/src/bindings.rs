//! Host bindings for the `connector` world (`wit/`).
//!
//! Every import is async on the host (host waits suspend the guest instead
//! of blocking the thread), trappable (guest misuse such as exceeding a
//! limit ends the phase), and traced.

wasmtime::component::bindgen!({
    world: "connector",
    path: "../wit",
    imports: { default: async | trappable | tracing },
    exports: { default: async },
    trappable_error_type: {
        "testflinger:connector/types.error" => crate::host::HostError,
    },
    with: {
        "testflinger:connector/ssh.session": crate::host::ssh::SessionHandle,
        "testflinger:connector/serial.port": crate::host::serial::PortHandle,
    },
});

pub use testflinger::connector::*;

/// The WIT package version this runtime implements.
pub const WIT_VERSION: &str = "0.1.0";
