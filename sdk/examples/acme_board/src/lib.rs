//! `acme_board`, a made-up provision type, from its spec's step list:
//!
//! 1. needs `provision_data.url`, and `test_device` (the card on the
//!    control host) in the device config;
//! 2. pre-provision hook, `BEGIN provision`, serial console captured;
//! 3. on the control host: `acme-mux host`, the image streamed into
//!    `zstdcat | sudo dd of=<test_device> bs=16M`, `sync`, then
//!    `acme-mux dut`, also after a failed flash;
//! 4. `reboot_script` power cycles the board (failure: exit 46);
//! 5. up to `acme_boot_timeout` (default 10 min) for the board to accept
//!    an SSH login, else "Failed to boot test image!"; `END provision`.

use std::time::Duration;

use testflinger_connector::prelude::*;
use testflinger_connector::wait::Wait;

/// What a provision needs, checked before anything is touched.
pub struct Settings {
    url: String,
    device: String,
    boot_timeout: Duration,
}

impl Settings {
    fn load(cfg: &config::Config) -> Result<Settings, Error> {
        let data = config::Config::job_section("provision_data")?;
        Ok(Settings {
            url: data.text("url").required("<image URL>")?,
            device: cfg
                .text("test_device")
                .why("the card on the control host")
                .required("/dev/sda")?,
            boot_timeout: cfg
                .duration("acme_boot_timeout")
                .or(Duration::from_secs(600))?,
        })
    }
}

/// The connector.
pub struct AcmeBoard;

impl Connector for AcmeBoard {
    fn new() -> Self {
        AcmeBoard
    }

    fn provision(&mut self) -> PhaseResult<()> {
        provision::Frame::new()
            .capture_console()
            .run(Settings::load, flash_and_boot)
    }
}

export_connector!(AcmeBoard);

fn flash_and_boot(s: Settings) -> PhaseResult<()> {
    let host = ssh::connect("control-host")?;
    host.run("acme-mux host")
        .or_fail("Cannot switch the card to the control host")?;
    let sink = format!("zstdcat | sudo dd of={} bs=16M", s.device);
    let flashed = transfer::to_ssh(
        transfer::Source::Url(s.url),
        &host,
        &sink,
        Duration::from_secs(1800),
    )
    .and_then(|_| host.run("sync"))
    .map(drop)
    .or_fail_detailed("Cannot flash the image");
    // The card goes back to the board even when flashing failed.
    let back = host
        .run("acme-mux dut")
        .map(drop)
        .or_fail("Cannot switch the card back");
    PhaseError::merge(flashed, back, "switching back failed too")?;
    power::hardreset().or_recover("Cannot power cycle the board")?;
    Wait::new("the test image to boot", s.boot_timeout)
        .done("the test image booted")
        .until(|| ssh::wait_reachable("device", Duration::ZERO).into())
        .or_fail("Failed to boot test image!")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use testflinger_connector::testing::{FakeHost, err};

    use super::*;

    fn board() -> FakeHost {
        FakeHost::new()
            .config(json!({
                "agent_name": "acme-1", "device_ip": "10.0.0.5", "control_host": "10.0.0.2",
                "test_device": "/dev/sdb", "reboot_script": ["pdu 7 cycle"],
            }))
            .job(json!({"provision_data": {"url": "http://images/acme.img.zst"}}))
    }

    #[test]
    fn flashes_power_cycles_and_waits_for_the_board() {
        let refused = err(ErrorKind::Io, "connection refused");
        let host = board().reachable("device", [refused, Ok(())]).install();
        AcmeBoard::new().provision().unwrap();
        assert_eq!(
            host.commands("control-host"),
            [
                "acme-mux host",
                "zstdcat | sudo dd of=/dev/sdb bs=16M",
                "sync",
                "acme-mux dut"
            ]
        );
        assert!(host.logged("INFO Running pdu 7 cycle"));
        // 10 s between checks, on the fake host's virtual clock.
        assert!(host.logged("INFO The test image booted after 10 s, 2 checks"));
        assert_eq!(host.log().last().unwrap(), "INFO END provision");
    }

    #[test]
    fn a_failed_flash_still_gives_the_card_back() {
        let host = board()
            .transfers([err(ErrorKind::Failed, "HTTP 404")])
            .install();
        let e = AcmeBoard::new().provision().unwrap_err();
        assert_eq!(e.message(), "Cannot flash the image: HTTP 404");
        assert_eq!(
            host.commands("control-host").last().unwrap(),
            "acme-mux dut"
        );
        assert!(!host.trace().contains(&"power reboot_script".to_string()));
    }

    #[test]
    fn a_board_that_never_boots_fails_after_its_timeout() {
        let host = board()
            .reachable("device", [err(ErrorKind::Io, "no route")])
            .install();
        let e = AcmeBoard::new().provision().unwrap_err();
        assert_eq!(
            (e.message(), e.cause().is_some()),
            ("Failed to boot test image!", true)
        );
        assert_eq!(host.elapsed(), Duration::from_secs(600));
    }

    #[test]
    fn a_failing_power_cycle_needs_recovery() {
        let dead = err(ErrorKind::Failed, "pdu 7 cycle: exit 1");
        let _host = board().power("reboot_script", [dead]).install();
        assert!(AcmeBoard::new().provision().unwrap_err().is_recovery());
    }

    #[test]
    fn missing_settings_fail_before_anything_is_touched() {
        let host = board().job(json!({"provision_data": {}})).install();
        let e = AcmeBoard::new().provision().unwrap_err();
        assert!(
            e.message()
                .starts_with("`provision_data.url` is not set in the job"),
            "{e}"
        );
        assert!(host.trace().is_empty());
    }

    /// The README shows this crate as it is.
    #[test]
    fn the_readme_shows_these_files() {
        let readme = include_str!("../../../../README.md");
        for file in [
            include_str!("../Cargo.toml"),
            include_str!("../connector.toml"),
            include_str!("lib.rs"),
        ] {
            assert!(readme.contains(file), "README.md lacks:\n{file}");
        }
    }
}
