//! WIT version policy: which `testflinger:connector` versions this runtime
//! serves, their bindings side by side, and the one place that picks the
//! bindings a component was built against.
//!
//! The latest version ([`latest`], `wit/`) is what the host modules of
//! [`crate::host`] implement, each on its interface's view. Every older
//! version keeps its own frozen WIT (`wit/v<version>/`) and bindings, and
//! forwards each call to the latest implementation on the same view,
//! converting types on the way ([`since_v0_1_0`]), as Zed's extension host
//! does. So a connector built years ago keeps linking and behaving as it
//! did, while the host is written once. Outside `host/`, the runtime sees
//! only its own types: [`Bindings::call`] returns a [`PhaseOutcome`].
//!
//! Adding a version: copy `wit/` to `wit/v<old>/`, bump `wit/`, add a
//! `since_v<old>` module forwarding the old bindings to the new ones, list
//! it in [`SERVED`], [`Bindings`], [`add_to_linker`] and
//! `error_conversions!`.

pub mod since_v0_1_0;

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::http::{HasHttp, HttpView};
use super::job::{HasJob, JobView};
use super::log::LogBudget;
use super::power::{HasPower, PowerView};
use super::serial::{HasSerial, SerialView};
use super::ssh::{HasSsh, SshView};
use super::transfer::{HasTransfer, TransferView};
use super::{HostError, HostState};
use crate::stage::{Failure, PhaseOutcome, Stage};

/// Bindings of the latest WIT version, `wit/` (0.2.0).
pub mod latest {
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

    /// The WIT package version of these bindings.
    pub const VERSION: &str = "0.2.0";
}

/// The WIT package version the host modules implement.
pub const LATEST: &str = latest::VERSION;

/// Every WIT version line served, oldest first: a component built against
/// any `0.<minor>.<patch>` of one of these lines runs (a newer patch of a
/// line only links while it imports functions this runtime has).
pub const SERVED: &[&str] = &[since_v0_1_0::VERSION, latest::VERSION];

fn parse(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

/// Whether two versions belong to one line: same major version, and same
/// minor while the major is 0 (semver for 0.x, as the component model
/// resolves imports).
fn same_line(a: (u64, u64, u64), b: (u64, u64, u64)) -> bool {
    if a.0 == 0 {
        b.0 == 0 && a.1 == b.1
    } else {
        a.0 == b.0
    }
}

/// The served version whose line `version` belongs to, if any.
pub fn served_line(version: &str) -> Option<&'static str> {
    let v = parse(version)?;
    SERVED
        .iter()
        .copied()
        .find(|s| parse(s).is_some_and(|s| same_line(s, v)))
}

/// How the served versions read in messages: `0.1.x and 0.2.x`.
pub fn served_text() -> String {
    let lines: Vec<String> = SERVED
        .iter()
        .map(|v| {
            let (maj, min, _) = parse(v).expect("served versions are valid");
            if maj == 0 {
                format!("0.{min}.x")
            } else {
                format!("{maj}.x")
            }
        })
        .collect();
    lines.join(" and ")
}

/// The version of a `testflinger:connector/<iface>@<version>` name, if it is
/// one of ours.
pub fn interface_version(name: &str) -> Option<&str> {
    name.strip_prefix("testflinger:connector/")
        .map(|rest| rest.split_once('@').map(|(_, v)| v).unwrap_or(""))
}

/// The [`wasmtime::component::HasData`] of `log` (and of `types`, which
/// has no functions).
struct HasLog;

impl wasmtime::component::HasData for HasLog {
    type Data<'a> = &'a mut LogBudget;
}

/// Adds every served version's imports to `linker`, each interface on its
/// view of [`HostState`] (WASI is added by the caller).
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    macro_rules! link {
        ($($version:ident)::+) => {{
            use $($version)::+ as v;
            v::types::add_to_linker::<_, HasLog>(linker, HostState::log)?;
            v::log::add_to_linker::<_, HasLog>(linker, HostState::log)?;
            v::job::add_to_linker::<_, HasJob>(linker, HostState::job)?;
            v::power::add_to_linker::<_, HasPower>(linker, HostState::power)?;
            v::serial::add_to_linker::<_, HasSerial>(linker, HostState::serial)?;
            v::ssh::add_to_linker::<_, HasSsh>(linker, HostState::ssh)?;
            v::http::add_to_linker::<_, HasHttp>(linker, HostState::http)?;
            v::transfer::add_to_linker::<_, HasTransfer>(linker, HostState::transfer)?;
        }};
    }
    link!(latest);
    link!(since_v0_1_0::bindings);
    Ok(())
}

/// Implements both versions' `types.Host` (the conversion of a
/// [`HostError`] into each version's `error`, or a trap) on every view.
macro_rules! error_conversions {
    ($($view:ty),* $(,)?) => {$(
        impl latest::types::Host for $view {
            fn convert_error(&mut self, err: HostError) -> wasmtime::Result<latest::types::Error> {
                err.into_wit()
            }
        }
        impl since_v0_1_0::bindings::types::Host for $view {
            fn convert_error(
                &mut self,
                err: HostError,
            ) -> wasmtime::Result<since_v0_1_0::bindings::types::Error> {
                since_v0_1_0::error(err)
            }
        }
    )*};
}

error_conversions!(
    LogBudget,
    JobView<'_>,
    PowerView<'_>,
    SerialView<'_>,
    SshView<'_>,
    HttpView<'_>,
    TransferView<'_>,
);

/// A latest-version phase error in the runtime's terms.
fn outcome(result: Result<i32, latest::types::PhaseError>) -> PhaseOutcome {
    use latest::types::PhaseError as E;
    let failure = |f: latest::types::Failure| Failure {
        class: f.class,
        message: f.message,
        cause: f.cause,
    };
    match result {
        Ok(status) => PhaseOutcome::Done(status),
        Err(E::Unsupported) => PhaseOutcome::Unsupported,
        Err(E::Failed(f)) => PhaseOutcome::Failed(failure(f)),
        Err(E::RecoveryNeeded(f)) => PhaseOutcome::RecoveryNeeded(failure(f)),
    }
}

/// A component ready to instantiate, bound with the bindings of the WIT
/// version it exports its phases for.
pub enum Bindings {
    /// Built against 0.1.x.
    V0_1(since_v0_1_0::bindings::ConnectorPre<HostState>),
    /// Built against the latest line.
    Latest(latest::ConnectorPre<HostState>),
}

/// Why a component cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Its imports do not resolve against the served versions.
    #[error("{0}")]
    Imports(String),
    /// It does not export the phases interface of a served version.
    #[error("{0}")]
    Exports(String),
}

impl Bindings {
    /// Picks the bindings from the phases interface `component` exports
    /// (its real interface, whatever its manifest claims).
    pub fn new(linker: &Linker<HostState>, component: &Component) -> Result<Self, BindError> {
        let engine = linker.engine();
        let phases = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .find(|name| name.starts_with("testflinger:connector/phases"));
        let line = phases
            .as_deref()
            .and_then(interface_version)
            .and_then(served_line);
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| BindError::Imports(format!("{e:#}")))?;
        let exports = |e: wasmtime::Error| BindError::Exports(format!("{e:#}"));
        match line {
            Some(since_v0_1_0::VERSION) => Ok(Bindings::V0_1(
                since_v0_1_0::bindings::ConnectorPre::new(pre).map_err(exports)?,
            )),
            Some(latest::VERSION) => Ok(Bindings::Latest(
                latest::ConnectorPre::new(pre).map_err(exports)?,
            )),
            _ => Err(BindError::Exports(format!(
                "it exports {}, not the phases interface of testflinger:connector {}",
                phases.as_deref().unwrap_or("no phases interface"),
                served_text()
            ))),
        }
    }

    /// The served version line the component was bound with.
    pub fn version(&self) -> &'static str {
        match self {
            Bindings::V0_1(_) => since_v0_1_0::VERSION,
            Bindings::Latest(_) => latest::VERSION,
        }
    }

    /// Instantiates the component in `store` and calls the export of
    /// `stage`; a trap is the error.
    pub async fn call(
        &self,
        store: &mut Store<HostState>,
        stage: Stage,
    ) -> wasmtime::Result<PhaseOutcome> {
        match self {
            Bindings::Latest(pre) => {
                let bindings = pre.instantiate_async(&mut *store).await?;
                let phases = bindings.testflinger_connector_phases();
                Ok(outcome(match stage {
                    Stage::Provision => phases.call_provision(store).await?.map(|()| 0),
                    Stage::FirmwareUpdate => phases.call_firmware_update(store).await?.map(|()| 0),
                    Stage::Runtest => phases.call_runtest(store).await?,
                    Stage::Allocate => phases.call_allocate(store).await?.map(|()| 0),
                    Stage::Reserve => phases.call_reserve(store).await?.map(|()| 0),
                    Stage::Cleanup => phases.call_cleanup(store).await?.map(|()| 0),
                }))
            }
            Bindings::V0_1(pre) => since_v0_1_0::call(pre, store, stage).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(served_line("0.1.0"), Some("0.1.0"));
        assert_eq!(served_line("0.1.9"), Some("0.1.0"));
        assert_eq!(served_line("0.2.0"), Some("0.2.0"));
        assert_eq!(served_line("0.2.4"), Some("0.2.0"));
        assert_eq!(served_line("0.3.0"), None);
        assert_eq!(served_line("1.0.0"), None);
        assert_eq!(served_line("0.1"), None);
        assert_eq!(served_line("0.1.0.1"), None);
        assert_eq!(served_text(), "0.1.x and 0.2.x");
        assert_eq!(
            interface_version("testflinger:connector/log@0.2.0"),
            Some("0.2.0")
        );
        assert_eq!(interface_version("testflinger:connector/log"), Some(""));
        assert_eq!(interface_version("wasi:io/streams@0.2.0"), None);
    }

    /// Each served version's WIT folder says the version it is listed as.
    #[test]
    fn served_folders_match() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for (dir, version) in [
            (root.join("v0.1.0"), since_v0_1_0::VERSION),
            (root.clone(), latest::VERSION),
        ] {
            let types = std::fs::read_to_string(dir.join("types.wit")).unwrap();
            assert!(
                types.contains(&format!("package testflinger:connector@{version};")),
                "{}",
                dir.display()
            );
        }
    }
}
