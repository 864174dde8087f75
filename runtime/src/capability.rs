//! The capability gate: the one place that decides whether a connector may
//! use a capability. Every host function asks it before doing anything.
//!
//! A call is allowed when the capability name is declared by the
//! connector's manifest **and** granted by the lab; whether the device
//! config configures it is checked by the host module that resolves the
//! name (an unconfigured target is `not-found`).

use std::collections::{BTreeMap, BTreeSet};

use crate::host::HostError;

/// The capability families of the WIT world that reach the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `power`: a device-config command list, by key.
    Power,
    /// `serial`: a console, by name.
    Serial,
    /// `ssh`: a target, by name.
    Ssh,
    /// `http`: an endpoint, by name, or `job-urls`.
    Http,
    /// `transfer`: `job-urls` or `attachments`.
    Transfer,
}

impl Capability {
    /// The manifest/grant key.
    pub fn key(self) -> &'static str {
        match self {
            Capability::Power => "power",
            Capability::Serial => "serial",
            Capability::Ssh => "ssh",
            Capability::Http => "http",
            Capability::Transfer => "transfer",
        }
    }
}

/// Capability names per family.
pub type CapabilitySet = BTreeMap<Capability, BTreeSet<String>>;

/// Decides whether a call is allowed.
#[derive(Debug, Clone)]
pub struct Gate {
    connector: String,
    declared: CapabilitySet,
    granted: Option<CapabilitySet>,
}

impl Gate {
    /// A gate for `connector` that allows what it declares; `granted`
    /// narrows it further when the lab grants explicitly (`None` = the
    /// lab granted what the connector declares).
    pub fn new(connector: &str, declared: CapabilitySet, granted: Option<CapabilitySet>) -> Self {
        Gate {
            connector: connector.to_string(),
            declared,
            granted,
        }
    }

    /// Checks `name` of `cap`. The error names the missing declaration or
    /// grant.
    pub fn check(&self, cap: Capability, name: &str) -> Result<(), HostError> {
        let declared = self
            .declared
            .get(&cap)
            .is_some_and(|names| names.contains(name) || names.contains("*"));
        if !declared {
            return Err(HostError::denied(format!(
                "connector {} did not declare capability {}: {name}; add `{} = [\"{name}\"]` under [capabilities] in its connector.toml",
                self.connector,
                cap.key(),
                cap.key()
            )));
        }
        if let Some(granted) = &self.granted {
            let ok = granted
                .get(&cap)
                .is_some_and(|names| names.contains(name) || names.contains("*"));
            if !ok {
                return Err(HostError::denied(format!(
                    "capability {}: {name} is not granted to connector {}; add `{}: [{name}]` to its grants in the lab file",
                    cap.key(),
                    self.connector,
                    cap.key()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(Capability, &str)]) -> CapabilitySet {
        let mut out = CapabilitySet::new();
        for (cap, name) in pairs {
            out.entry(*cap).or_default().insert(name.to_string());
        }
        out
    }

    #[test]
    fn declared_and_granted() {
        let gate = Gate::new("c", set(&[(Capability::Ssh, "device")]), None);
        assert!(gate.check(Capability::Ssh, "device").is_ok());
        let err = gate
            .check(Capability::Ssh, "control-host")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did not declare") && err.contains("control-host"),
            "{err}"
        );
        let gate = Gate::new(
            "c",
            set(&[
                (Capability::Ssh, "device"),
                (Capability::Power, "reboot_script"),
            ]),
            Some(set(&[(Capability::Ssh, "device")])),
        );
        assert!(gate.check(Capability::Ssh, "device").is_ok());
        let err = gate
            .check(Capability::Power, "reboot_script")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not granted") && err.contains("power: [reboot_script]"),
            "{err}"
        );
    }
}
