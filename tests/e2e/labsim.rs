//! The runtime's SSH client (`tfdc::ssh::SshPool`) against the simulated
//! control host and device of a YAML lab: an image streamed into
//! `zstdcat | sudo dd of=/dev/sda` lands on the card, the mux moves it, and
//! the device boots it.

use std::time::Duration;

use labsim::card::MuxSide;
use labsim::dut::PowerState;
use labsim::image::Image;
use labsim::lab::Lab;

fn pool(lab: &Lab, device: &str) -> tfdc::ssh::SshPool {
    let config = tfdc::config::DeviceConfig::load(&lab.config_path(device)).unwrap();
    let job = tfdc::job_file::JobFile::parse(std::path::Path::new("job.json"), "{}").unwrap();
    tfdc::ssh::SshPool::new(&config, &job, &tfdc::limits::Limits::default())
        .unwrap()
        .with_home(lab.home())
}

#[test]
fn an_image_streamed_to_the_control_host_boots_on_the_device() {
    let lab = Lab::start(
        r#"
devices:
  - name: mux-dut
    control_host: ctl
    boot_time: 200ms
    reboot_time: 200ms
control_hosts:
  - name: ctl
"#,
    )
    .unwrap();
    let image = Image::ubuntu("24.10", "oracular")
        .hostname("streamed")
        .file("ubuntu-seed", "snaps/pc.snap", "snap");
    let compressed = image.compressed(8 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = pool(&lab, "mux-dut");
    let t = Duration::from_secs(30);
    rt.block_on(async {
        let ch = pool.connect("control-host", None, t).await.unwrap();
        let out = ch.exec("stm -ts", t, false).await.unwrap();
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        // 256 KiB chunks, as a transfer would send them.
        let chunks: Vec<std::io::Result<bytes::Bytes>> = compressed
            .chunks(256 << 10)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let out = ch
            .exec_with_stdin(
                "zstdcat | sudo dd of=/dev/sda bs=16M",
                futures::stream::iter(chunks),
                t,
                false,
            )
            .await
            .unwrap();
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        let out = ch
            .exec(
                "sync && sudo hdparm -z /dev/sda && lsblk -o NAME,LABEL -J /dev/sda",
                t,
                false,
            )
            .await
            .unwrap();
        let lsblk: serde_json::Value = serde_json::from_slice(
            &out.stdout[out.stdout.iter().position(|b| *b == b'{').unwrap()..],
        )
        .unwrap();
        let labels: Vec<&str> = lsblk["blockdevices"][0]["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["system-boot", "writable", "ubuntu-seed"]);
        let out = ch.exec("stm -dut", t, false).await.unwrap();
        assert_eq!(out.status, 0);
    });
    let card = lab.card("mux-dut").unwrap();
    assert_eq!(card.side(), MuxSide::Dut);
    assert_eq!(card.bytes().unwrap(), image.to_bytes(8 << 20));
    let dut = lab.dut("mux-dut");
    dut.handle().power_cycle();
    assert!(dut.wait_state(PowerState::Booting, Duration::from_secs(5)));
    assert!(dut.wait_state(PowerState::Up, Duration::from_secs(10)));
    rt.block_on(async {
        let conn = pool
            .connect("device", None, Duration::from_secs(10))
            .await
            .unwrap();
        let out = conn
            .exec(
                "hostname; cat /etc/os-release",
                Duration::from_secs(10),
                false,
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.starts_with("streamed\n"), "{text}");
        assert!(text.contains("PRETTY_NAME=\"Ubuntu 24.10 LTS\""), "{text}");
    });
    let ch = lab.control_host("ctl");
    assert!(ch.ssh().files_written().contains(&"/dev/sda".to_string()));
    let calls: Vec<String> = ch
        .ssh()
        .fake_calls()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(calls, ["stm", "zstdcat", "hdparm", "lsblk", "stm"]);
}
