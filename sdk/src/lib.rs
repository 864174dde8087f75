//! # testflinger-connector
//!
//! The SDK for writing a Testflinger device connector (a provision type)
//! as a WebAssembly component. The runtime (`testflinger-device-connectors`)
//! loads the component once per stage, in a sandbox: the connector reaches
//! the device only through the capabilities below, by *name* (`"device"`,
//! `"reboot_script"`, `"control-host"`), and the lab decides what each name
//! means and whether it is granted.
//!
//! A connector is a `cdylib` crate built with
//! `cargo build --target wasm32-wasip2`, with a `connector.toml` next to
//! its `Cargo.toml` declaring what it serves and needs:
//!
//! ```toml
//! description = "Devices that cannot be re-imaged: provision only checks SSH"
//! provision_types = ["noprovision"]
//!
//! [capabilities]
//! ssh = ["device"]
//! power = ["reboot_script"]
//! ```
//!
//! and one type implementing [`Connector`], exported with
//! `export_connector!(Noprovision);` (which embeds that `connector.toml`).
//! This is `connectors/noprovision`, run here on the native test harness:
//!
//! ```
//! use std::time::Duration;
//! use testflinger_connector::prelude::*;
//! use testflinger_connector::testing::{FakeHost, err};
//!
//! struct Noprovision;
//!
//! impl Connector for Noprovision {
//!     fn new() -> Self {
//!         Noprovision
//!     }
//!
//!     fn provision(&mut self) -> PhaseResult<()> {
//!         let device_ip = |cfg: &config::Config| cfg.text("device_ip").required("<address>");
//!         provision::Frame::new().run(device_ip, |_| {
//!             info!("Booting the test image");
//!             if ssh::probe("device", ssh::OPENSSH_CONNECT_WAIT).is_ok() {
//!                 return Ok(());
//!             }
//!             power::hardreset().or_recover_on_timeout("timeout reaching control host!")?;
//!             ssh::wait_reachable("device", Duration::from_secs(360))
//!                 .or_fail("Failed to boot test image!")
//!         })
//!     }
//! }
//!
//! let host = FakeHost::new()
//!     .config(serde_json::json!({"device_ip": "10.0.0.5", "reboot_script": ["pdu 4 cycle"]}))
//!     .connect("device", [err(ErrorKind::Io, "connection refused")])
//!     .install();
//! Noprovision::new().provision().unwrap();
//! assert_eq!(host.trace(), ["ssh connect device", "power reboot_script", "wait-reachable device"]);
//! ```
//!
//! The toolkit: [`provision::Frame`] (the reference's provision order),
//! [`config`] (typed device-config keys), [`wait`] (bounded waits with
//! standard lines), [`ResultExt`] and [`PhaseError`] (the reference's
//! error classes, messages and causes), the host wrappers ([`ssh`],
//! [`power`], [`transfer`], [`http`], [`serial`], [`job`], [`log`]) and,
//! on native builds, [`testing::FakeHost`]. The repository's README walks
//! through a complete example connector (`sdk/examples/acme_board`).
//!
//! Stages a connector does not implement return [`PhaseError::unsupported`]
//! and the runtime runs its native default (the reference behaviour of
//! `runtest`, `reserve`, `allocate`, `cleanup`).

#![warn(missing_docs)]

/// Generated bindings of the `connector` world. Connectors normally use the
/// wrappers of this crate instead.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "connector",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_connector_world",
        default_bindings_module: "testflinger_connector::bindings",
    });
}

pub mod clock;
pub mod config;
mod error;
pub mod hooks;
pub mod http;
pub mod job;
pub mod log;
pub mod power;
pub mod provision;
pub mod serial;
pub mod ssh;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod transfer;
pub mod wait;

/// Durations and sizes: parsing as YAML writes them, and the one format of
/// durations in log lines ([`units::human_duration`]: `250 ms`, `34 s`,
/// `20 min`), shared with the runtime.
pub use tfdc_units as units;

pub use error::{
    Error, ErrorKind, HostResultExt, PhaseError, PhaseKind, PhaseResult, Result, ResultExt,
};

/// Everything a connector usually needs.
pub mod prelude {
    pub use crate::error::{
        Error, ErrorKind, HostResultExt, PhaseError, PhaseKind, PhaseResult, ResultExt,
    };
    pub use crate::job::Stage;
    pub use crate::wait::Check;
    pub use crate::{Connector, export_connector};
    pub use crate::{
        clock, config, hooks, http, job, log, power, provision, serial, ssh, transfer, units, wait,
    };
    pub use crate::{debug, error, info, warn};
}

/// The WIT package version this SDK builds against.
pub const WIT_VERSION: &str = __wit_version!();

#[doc(hidden)]
#[macro_export]
macro_rules! __wit_version {
    () => {
        "0.2.0"
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __sdk_version {
    () => {
        "0.2.0"
    };
}

/// A provision type's behaviour, one method per stage. Every method has a
/// default that returns [`PhaseError::unsupported`], which makes the
/// runtime run its native default for that stage.
pub trait Connector {
    /// Creates the connector. Called once per stage invocation.
    fn new() -> Self
    where
        Self: Sized;

    /// Puts the job's image on the device and makes it reachable.
    fn provision(&mut self) -> PhaseResult<()> {
        Err(PhaseError::unsupported())
    }

    /// Updates the device's firmware.
    fn firmware_update(&mut self) -> PhaseResult<()> {
        Err(PhaseError::unsupported())
    }

    /// Runs the job's tests and returns their exit status.
    fn runtest(&mut self) -> PhaseResult<i32> {
        Err(PhaseError::unsupported())
    }

    /// Holds the device for a multi-device job.
    fn allocate(&mut self) -> PhaseResult<()> {
        Err(PhaseError::unsupported())
    }

    /// Gives the job's users access to the device.
    fn reserve(&mut self) -> PhaseResult<()> {
        Err(PhaseError::unsupported())
    }

    /// Releases whatever the job took.
    fn cleanup(&mut self) -> PhaseResult<()> {
        Err(PhaseError::unsupported())
    }
}

#[doc(hidden)]
pub fn __run<C: Connector, T>(
    f: impl FnOnce(&mut C) -> PhaseResult<T>,
) -> core::result::Result<T, bindings::testflinger::connector::types::PhaseError> {
    let mut connector = C::new();
    f(&mut connector).map_err(PhaseError::into_wit)
}

#[doc(hidden)]
pub const fn __manifest_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Exports `$ty` (a [`Connector`]) as the component's `phases`, and embeds
/// the connector manifest: the crate's name and version, the WIT and SDK
/// versions, and the contents of the crate's `connector.toml`.
#[macro_export]
macro_rules! export_connector {
    ($ty:ty) => {
        const __TF_CONNECTOR_MANIFEST_TEXT: &str = concat!(
            "name = \"",
            env!("CARGO_PKG_NAME"),
            "\"\nversion = \"",
            env!("CARGO_PKG_VERSION"),
            "\"\nwit = \"",
            $crate::__wit_version!(),
            "\"\nsdk = \"",
            $crate::__sdk_version!(),
            "\"\n",
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/connector.toml")),
        );

        #[used]
        #[cfg_attr(
            target_arch = "wasm32",
            unsafe(link_section = "testflinger:connector-manifest")
        )]
        static __TF_CONNECTOR_MANIFEST: [u8; __TF_CONNECTOR_MANIFEST_TEXT.len()] =
            $crate::__manifest_bytes(__TF_CONNECTOR_MANIFEST_TEXT);

        // Only referenced by the wasm32 export below; host builds (unit
        // tests, `cargo build --workspace`) compile the impl but export
        // nothing, because the component ABI's symbol names (with `:` and
        // `@`) are not valid in a native linker's version script.
        #[allow(dead_code)]
        struct __TfConnectorExport;

        impl $crate::bindings::exports::testflinger::connector::phases::Guest for __TfConnectorExport {
            fn provision() -> ::core::result::Result<(), $crate::bindings::testflinger::connector::types::PhaseError> {
                $crate::__run::<$ty, _>(|c| c.provision())
            }
            fn firmware_update() -> ::core::result::Result<(), $crate::bindings::testflinger::connector::types::PhaseError> {
                $crate::__run::<$ty, _>(|c| c.firmware_update())
            }
            fn runtest() -> ::core::result::Result<i32, $crate::bindings::testflinger::connector::types::PhaseError> {
                $crate::__run::<$ty, _>(|c| c.runtest())
            }
            fn allocate() -> ::core::result::Result<(), $crate::bindings::testflinger::connector::types::PhaseError> {
                $crate::__run::<$ty, _>(|c| c.allocate())
            }
            fn reserve() -> ::core::result::Result<(), $crate::bindings::testflinger::connector::types::PhaseError> {
                $crate::__run::<$ty, _>(|c| c.reserve())
            }
            fn cleanup() -> ::core::result::Result<(), $crate::bindings::testflinger::connector::types::PhaseError> {
                $crate::__run::<$ty, _>(|c| c.cleanup())
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_connector_world!(__TfConnectorExport with_types_in $crate::bindings);

        /// Host builds: keeps the phase table (and so the connector type)
        /// reachable, as the wasm export does, so that a native build of a
        /// connector crate warns about exactly what the wasm build would.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __tf_connector_provision() -> ::core::result::Result<(), $crate::bindings::testflinger::connector::types::PhaseError> {
            <__TfConnectorExport as $crate::bindings::exports::testflinger::connector::phases::Guest>::provision()
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_match_the_crate_and_the_wit() {
        assert_eq!(__sdk_version!(), env!("CARGO_PKG_VERSION"));
        let types = include_str!("../../wit/types.wit");
        assert!(types.contains(&format!("testflinger:connector@{}", super::WIT_VERSION)));
    }
}
