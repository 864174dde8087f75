//! `noprovision` (reference §4.10): for devices that cannot be re-imaged.
//! Provisioning only guarantees the device answers over SSH: if it does
//! not, `reboot_script` power cycles it and the connector waits for it to
//! come back.

use std::time::Duration;

use testflinger_connector::prelude::*;

/// The reference waits 60 s after the reboot, then retries for 300 s; the
/// same upper bound, polled from the start so a fast device is used early.
const BOOT_TIMEOUT: Duration = Duration::from_secs(360);

/// The connector.
pub struct Noprovision;

impl Connector for Noprovision {
    fn new() -> Self {
        Noprovision
    }

    fn provision(&mut self) -> PhaseResult<()> {
        // `reboot_script` is only needed when the device does not answer.
        let device_ip = |cfg: &config::Config| cfg.text("device_ip").required("<address>");
        provision::Frame::new().run(device_ip, |_| ensure_test_image())
    }
}

export_connector!(Noprovision);

/// The reference's `ensure_test_image`.
fn ensure_test_image() -> PhaseResult<()> {
    info!("Booting the test image");
    // As ssh without a timeout: waits for silence, not for a refusal.
    match ssh::probe("device", ssh::OPENSSH_CONNECT_WAIT) {
        Ok(()) => return Ok(()),
        // Not configured, not granted ...: rebooting would not help.
        Err(e) if e.is_permanent() => return Err(e.into()),
        // Where the reference's agent log shows what ssh printed.
        Err(e) => info!("{e}"),
    }
    // A failing entry is the reference's CalledProcessError, exit 1.
    power::hardreset().or_recover_on_timeout("timeout reaching control host!")?;
    ssh::wait_reachable("device", BOOT_TIMEOUT).or_fail("Failed to boot test image!")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use testflinger_connector::testing::{FakeHost, Installed, err};

    use super::*;

    fn fake_host(config: Value) -> FakeHost {
        FakeHost::new()
            .config(config)
            .job(json!({"provision_data": {"skip": false}}))
    }

    fn device() -> Value {
        json!({"agent_name": "np-1", "device_ip": "10.0.0.5", "reboot_script": ["pdu 4 cycle"]})
    }

    fn provision(host: FakeHost) -> (Installed, PhaseResult<()>) {
        let host = host.install();
        let result = Noprovision::new().provision();
        (host, result)
    }

    #[test]
    fn a_reachable_device_is_left_alone() {
        let (host, result) = provision(fake_host(device()));
        result.unwrap();
        assert_eq!(
            host.trace(),
            ["ssh connect device", "ssh device: /bin/true"]
        );
        assert_eq!(
            host.log(),
            [
                "INFO Running pre-provision hook",
                "DEBUG No control host configured for this agent.",
                "INFO BEGIN provision",
                "INFO Booting the test image",
                "INFO END provision",
            ]
        );
    }

    #[test]
    fn an_unreachable_device_is_power_cycled_and_waited_for() {
        let refused = err(ErrorKind::Io, "10.0.0.5:22: connection refused");
        let (host, result) = provision(fake_host(device()).connect("device", [refused]));
        result.unwrap();
        assert_eq!(
            host.trace(),
            [
                "ssh connect device",
                "power reboot_script",
                "wait-reachable device"
            ]
        );
        assert!(host.logged("INFO 10.0.0.5:22: connection refused"));
        assert!(host.logged("INFO Running pdu 4 cycle"));
        assert_eq!(
            host.calls()[2],
            testflinger_connector::testing::Call::WaitReachable {
                target: "device".into(),
                timeout: BOOT_TIMEOUT
            }
        );
    }

    #[test]
    fn attempts_that_get_no_answer_are_repeated_for_two_minutes() {
        let silent = err(ErrorKind::Timeout, "no answer within 10 s");
        let (host, result) = provision(
            fake_host(device())
                .call_cost(Duration::from_secs(10))
                .connect("device", [silent.clone()])
                .reachable("device", [silent]),
        );
        let e = result.unwrap_err();
        // 120 s of 10 s attempts 1 s apart: 11 of them, then the reboot,
        // then the boot wait (which the script also leaves silent).
        let attempts = host
            .trace()
            .iter()
            .filter(|c| *c == "ssh connect device")
            .count();
        assert_eq!(attempts, 11);
        assert!(host.trace().contains(&"power reboot_script".to_string()));
        assert_eq!(e.message(), "Failed to boot test image!");
        assert!(e.cause().unwrap().contains("no answer"), "{e:?}");
    }

    #[test]
    fn a_device_that_is_not_configured_or_granted_is_not_rebooted() {
        let (host, result) = provision(fake_host(json!({"agent_name": "np-1"})));
        let e = result.unwrap_err();
        assert!(
            e.message()
                .contains("`device_ip` is not set in the device config of np-1"),
            "{e}"
        );
        assert!(
            host.trace().is_empty(),
            "not even the hook: {:?}",
            host.trace()
        );

        let denied = err(ErrorKind::Denied, "capability ssh: device is not granted");
        let (host, result) = provision(fake_host(device()).connect("device", [denied]));
        assert!(result.unwrap_err().message().contains("not granted"));
        assert_eq!(host.trace(), ["ssh connect device"]);
    }

    #[test]
    fn a_hanging_reboot_script_needs_recovery_and_a_failing_one_fails() {
        let refused = err(ErrorKind::Io, "connection refused");
        let hung = err(ErrorKind::Timeout, "`sleep 600` did not exit within 2 s");
        let (_host, result) = provision(
            fake_host(device())
                .connect("device", [refused.clone()])
                .power("reboot_script", [hung]),
        );
        let e = result.unwrap_err();
        assert!(e.is_recovery());
        assert_eq!(e.message(), "timeout reaching control host!");
        assert_eq!(e.cause(), Some("`sleep 600` did not exit within 2 s"));

        let failed = err(ErrorKind::Failed, "`false` exited with status 1");
        let (_host, result) = provision(
            fake_host(device())
                .connect("device", [refused])
                .power("reboot_script", [failed]),
        );
        let e = result.unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (PhaseKind::Failed, "`false` exited with status 1")
        );
    }

    #[test]
    fn a_device_that_never_comes_back_fails_to_boot() {
        let refused = err(ErrorKind::Io, "connection refused");
        let (host, result) = provision(
            fake_host(device())
                .connect("device", [refused.clone()])
                .reachable("device", [refused]),
        );
        let e = result.unwrap_err();
        assert_eq!(e.message(), "Failed to boot test image!");
        assert!(e.cause().unwrap().contains("within 6 min"), "{e:?}");
        assert!(!host.logged("END provision"));
        assert_eq!(host.elapsed(), BOOT_TIMEOUT);
    }
}
