//! `power`: the lab's command lists, named by device-config key.

use super::{HostError, HostState, duration_ms};
use crate::capability::Capability;
use crate::config::{RUNTIME_KEY, is_secret_key};
use crate::host::wit::latest::power::{ExecStyle, Host, RunOptions};
use crate::power::{self, PowerError, Style};

impl From<PowerError> for HostError {
    fn from(e: PowerError) -> Self {
        match e {
            PowerError::NotConfigured { .. } => HostError::not_found(e.to_string()),
            PowerError::BadConfig(_) => HostError::invalid(e.to_string()),
            PowerError::Timeout { .. } => HostError::timeout(e.to_string()),
            PowerError::Failed { .. } => HostError::failed(e.to_string()),
            PowerError::Spawn { .. } => HostError::io(e.to_string()),
        }
    }
}

impl Host for HostState {
    async fn run(&mut self, key: String, opts: RunOptions) -> Result<(), HostError> {
        self.cx.gate.check(Capability::Power, &key)?;
        // Even when a lab grants it by mistake, a secret-named key or the
        // runtime's own section is not a command list: running its value
        // would execute (and quote in errors) a password.
        if is_secret_key(&key) || key == RUNTIME_KEY {
            let err = HostError::denied(format!(
                "`{key}` is a secret or runtime setting of the device config, which connectors never see; it cannot be run as a power command list"
            ));
            return Err(self.cx.gate.deny(Capability::Power, &key, err));
        }
        let style = match opts.style {
            ExecStyle::Split => Style::Split,
            ExecStyle::Shell => Style::Shell,
        };
        let timeout = duration_ms(opts.timeout_per_entry).min(self.cx.limits.host_call_timeout);
        let call = self.cx.gate.begin("power.run", &key);
        call.end(
            power::run_list(&self.cx.config, &key, style, timeout)
                .await
                .map_err(HostError::from),
        )
    }

    async fn cycle_control_host(
        &mut self,
        manage_dut_power: bool,
        timeout: u64,
    ) -> Result<(), HostError> {
        for key in ["control_host_reboot_script"].into_iter().chain(
            manage_dut_power
                .then_some(["poweroff_script", "poweron_script"])
                .into_iter()
                .flatten(),
        ) {
            self.cx.gate.check(Capability::Power, key)?;
        }
        self.cx.gate.check(Capability::Http, "control-host")?;
        let timeout = duration_ms(timeout).min(self.cx.limits.host_call_timeout);
        let call = self
            .cx
            .gate
            .begin("power.cycle-control-host", "control-host");
        call.end(
            crate::control_host::power_cycle(&self.cx, manage_dut_power, timeout)
                .await
                .map_err(|e| HostError::timeout(e.to_string())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab that grants a secret-named key by mistake still does not get
    /// its value run (or quoted back in an error).
    #[tokio::test]
    async fn secret_keys_are_never_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let config = format!(
            "bmc_password: ['touch {}']\nconnector_runtime: {{}}\n",
            marker.display()
        );
        let mut st = crate::host::test_state(
            dir.path(),
            &config,
            crate::limits::Limits::default(),
            &[
                (Capability::Power, "bmc_password"),
                (Capability::Power, "connector_runtime"),
            ],
        );
        for key in ["bmc_password", "connector_runtime"] {
            let err = Host::run(
                &mut st,
                key.into(),
                RunOptions {
                    style: ExecStyle::Split,
                    timeout_per_entry: 1000,
                },
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind(), "denied", "{key}");
            assert!(!err.to_string().contains("touch"), "{err}");
        }
        assert!(!marker.exists());
    }
}
