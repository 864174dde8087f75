//! `power`: the lab's command lists, named by device-config key, and the
//! control host's power cycle (see [`crate::power`],
//! [`crate::control_host`]).

use super::HostError;
use super::outward::Outward;
use crate::capability::{Ask, Capability, funcs};
use crate::config::DeviceConfig;
use crate::control_host::{self, ControlHostError};
use crate::endpoints::CONTROL_HOST;
use crate::host::wit::latest::power::{ExecStyle, Host, RunOptions};
use crate::http::HttpClient;
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

impl From<ControlHostError> for HostError {
    fn from(e: ControlHostError) -> Self {
        match e {
            ControlHostError::NotBack { .. } => HostError::timeout(e.to_string()),
        }
    }
}

/// What `power` needs: the gate, the device config holding the command
/// lists, and the HTTP client for the control host's REST API.
pub struct PowerView<'a> {
    pub outward: Outward<'a>,
    pub config: &'a DeviceConfig,
    pub http: &'a HttpClient,
}

/// The [`wasmtime::component::HasData`] of `power`.
pub struct HasPower;

impl wasmtime::component::HasData for HasPower {
    type Data<'a> = PowerView<'a>;
}

impl Host for PowerView<'_> {
    async fn run(&mut self, key: String, opts: RunOptions) -> Result<(), HostError> {
        let style = match opts.style {
            ExecStyle::Split => Style::Split,
            ExecStyle::Shell => Style::Shell,
        };
        let config = self.config;
        self.outward
            .call(
                &funcs::POWER_RUN,
                &[Ask::Command(&key)],
                &key,
                Some(opts.timeout_per_entry),
                |per_entry| power::run_list(config, &key, style, per_entry),
            )
            .await
    }

    async fn cycle_control_host(
        &mut self,
        manage_dut_power: bool,
        timeout: u64,
    ) -> Result<(), HostError> {
        let mut asks = vec![Ask::Command("control_host_reboot_script")];
        if manage_dut_power {
            asks.extend([
                Ask::Command("poweroff_script"),
                Ask::Command("poweron_script"),
            ]);
        }
        asks.push(Ask::Name(Capability::Http, CONTROL_HOST));
        let (config, http) = (self.config, self.http);
        self.outward
            .call(
                &funcs::POWER_CYCLE_CONTROL_HOST,
                &asks,
                CONTROL_HOST,
                Some(timeout),
                |come_back| control_host::power_cycle(config, http, manage_dut_power, come_back),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context::{context, state};

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
        let cx = context(
            dir.path(),
            &config,
            "{}",
            &[
                (Capability::Power, "bmc_password"),
                (Capability::Power, "connector_runtime"),
            ],
        );
        let mut st = state(&cx);
        for key in ["bmc_password", "connector_runtime"] {
            let err = Host::run(
                &mut st.power(),
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

    /// Every key the cycle may run and the control host's API are asked
    /// for before anything runs.
    #[tokio::test]
    async fn the_cycle_asks_for_everything_it_touches() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let config = format!(
            "control_host: 127.0.0.1\ncontrol_host_reboot_script: ['touch {m}']\npoweroff_script: ['touch {m}']\npoweron_script: ['touch {m}']\n",
            m = marker.display()
        );
        let granted = [
            (Capability::Power, "control_host_reboot_script"),
            (Capability::Http, "control-host"),
        ];
        let cx = context(dir.path(), &config, "{}", &granted);
        let mut st = state(&cx);
        let err = Host::cycle_control_host(&mut st.power(), true, 1000)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("power: poweroff_script"), "{err}");
        let cx = context(dir.path(), &config, "{}", &granted[..1]);
        let mut st = state(&cx);
        let err = Host::cycle_control_host(&mut st.power(), false, 1000)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("http: control-host"), "{err}");
        assert!(!marker.exists());
    }
}
