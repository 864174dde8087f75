//! The files that give each kind of image a login (reference §4.8 (d)
//! step 5, "Create user"), and where they go. The files live in
//! `connectors/muxpi/data/` and are compiled into the connector; each is
//! uploaded to `/tmp/<agent_name>/` on the control host and copied into the
//! mounted image with `sudo`.
//!
//! ce-oem-iot images: the reference's code falls through from its
//! ce-oem-iot branches into the classic one, so these images get the
//! ce-oem-iot user-data *and* the classic NoCloud seed in
//! `writable/var/lib/cloud/seed/nocloud-net`. That is kept on purpose: it
//! is what labs run today, and the classic seed is the one cloud-init uses
//! when the ce-oem-iot seed folder has no meta-data of its own.

use crate::image::ImageType;
use crate::shell::quote;

/// A file compiled into the connector.
#[derive(Debug, PartialEq, Eq)]
pub struct Seed {
    /// Its name in the upload folder on the control host.
    pub name: &'static str,
    /// Its content.
    pub text: &'static str,
}

/// NoCloud meta-data for classic images.
pub static CLASSIC_META_DATA: Seed = Seed {
    name: "classic-meta-data",
    text: include_str!("../data/classic/meta-data"),
};
/// NoCloud user-data for classic images: ubuntu/ubuntu.
pub static CLASSIC_USER_DATA: Seed = Seed {
    name: "classic-user-data",
    text: include_str!("../data/classic/user-data"),
};
/// user-data for ce-oem-iot images: creates ubuntu/ubuntu.
pub static CE_OEM_IOT_USER_DATA: Seed = Seed {
    name: "ce-oem-iot-user-data",
    text: include_str!("../data/ce-oem-iot/user-data"),
};
/// cloud.cfg.d drop-in for Ubuntu Core 20+ (ubuntu-seed).
pub static UC20_NOCLOUD: Seed = Seed {
    name: "uc20-99_nocloud.cfg",
    text: include_str!("../data/uc20/99_nocloud.cfg"),
};
/// oem-config unit for Raspberry Pi desktop images before 25.04.
pub static PI_DESKTOP_OEM_CONFIG: Seed = Seed {
    name: "pi-desktop-oem-config.service",
    text: include_str!("../data/pi-desktop/oem-config.service"),
};
/// oem-config answers for Raspberry Pi desktop images before 25.04.
pub static PI_DESKTOP_PRESEED: Seed = Seed {
    name: "pi-desktop-preseed.cfg",
    text: include_str!("../data/pi-desktop/preseed.cfg"),
};
/// NoCloud meta-data for Raspberry Pi desktop images from 25.04 on.
pub static PI_DESKTOP_PLUCKY_META_DATA: Seed = Seed {
    name: "pi-desktop-plucky-meta-data",
    text: include_str!("../data/pi-desktop-plucky/meta-data"),
};
/// NoCloud user-data for Raspberry Pi desktop images from 25.04 on.
pub static PI_DESKTOP_PLUCKY_USER_DATA: Seed = Seed {
    name: "pi-desktop-plucky-user-data",
    text: include_str!("../data/pi-desktop-plucky/user-data"),
};
/// `ubuntu ALL=(ALL) NOPASSWD:ALL`.
pub static SUDOERS: Seed = Seed {
    name: "sudoers",
    text: include_str!("../data/sudoers"),
};

/// One step of seeding an image.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// `sudo mkdir -p <dir>`.
    Mkdir(String),
    /// Upload `seed` (once) and `sudo cp` it to `dest`.
    Copy { seed: &'static Seed, dest: String },
    /// Upload [`SUDOERS`] and install it as `dest` with mode 0440.
    Sudoers(String),
    /// A command run as it is.
    Run(String),
}

impl Step {
    /// The command that performs the step once its seed is uploaded to
    /// `tmp/<seed name>`.
    pub fn command(&self, tmp: &str) -> String {
        match self {
            Step::Mkdir(dir) => format!("sudo mkdir -p {}", quote(dir)),
            Step::Copy { seed, dest } => format!(
                "sudo cp {} {}",
                quote(&format!("{tmp}/{}", seed.name)),
                quote(dest)
            ),
            Step::Sudoers(dest) => format!(
                "sudo install -m 0440 {} {}",
                quote(&format!("{tmp}/{}", SUDOERS.name)),
                quote(dest)
            ),
            Step::Run(cmd) => cmd.clone(),
        }
    }

    /// The seed the step needs on the control host first.
    pub fn seed(&self) -> Option<&'static Seed> {
        match self {
            Step::Copy { seed, .. } => Some(seed),
            Step::Sudoers(_) => Some(&SUDOERS),
            _ => None,
        }
    }
}

/// `sudo rm -f` of the `99-fake?cloud.cfg` drop-in under `base` (it keeps
/// cloud-init from reading the NoCloud seed on Raspberry Pi images).
fn remove_fake_cloud(base: &str) -> Step {
    Step::Run(format!(
        "sudo rm -f {}/99-fake?cloud.cfg",
        quote(&format!("{base}/etc/cloud/cloud.cfg.d"))
    ))
}

/// The classic NoCloud seed under `base`.
fn classic(steps: &mut Vec<Step>, base: &str) {
    let dir = format!("{base}/var/lib/cloud/seed/nocloud-net");
    steps.push(Step::Mkdir(dir.clone()));
    steps.push(Step::Copy {
        seed: &CLASSIC_META_DATA,
        dest: format!("{dir}/meta-data"),
    });
    steps.push(Step::Copy {
        seed: &CLASSIC_USER_DATA,
        dest: format!("{dir}/user-data"),
    });
}

/// The steps that seed an image of `kind` mounted under `mnt`
/// (`/mnt/<agent_name>`). `version_major` is the major `VERSION_ID` of a
/// Raspberry Pi desktop image.
pub fn plan(kind: ImageType, mnt: &str, version_major: Option<u32>) -> Vec<Step> {
    let writable = format!("{mnt}/writable");
    let sudoers = Step::Sudoers(format!("{writable}/etc/sudoers.d/ubuntu"));
    let mut steps = Vec::new();
    match kind {
        ImageType::CeOemIotBefore24 => {
            steps.push(Step::Copy {
                seed: &CE_OEM_IOT_USER_DATA,
                dest: format!("{mnt}/system-boot/user-data"),
            });
            steps.push(sudoers);
            // The reference's fall-through (see the module docs).
            classic(&mut steps, &writable);
        }
        ImageType::CeOemIot24AndBeyond => {
            let dir = format!("{writable}/var/lib/cloud/seed/nocloud");
            steps.push(Step::Mkdir(dir.clone()));
            steps.push(Step::Copy {
                seed: &CE_OEM_IOT_USER_DATA,
                dest: format!("{dir}/user-data"),
            });
            steps.push(sudoers);
            classic(&mut steps, &writable);
        }
        ImageType::Tegra => {
            let dir = format!("{writable}/var/lib/cloud/seed/nocloud");
            steps.push(Step::Mkdir(dir.clone()));
            steps.push(Step::Copy {
                seed: &CLASSIC_USER_DATA,
                dest: format!("{dir}/user-data"),
            });
            // No boot menu wait: stray serial input must not stop a reboot
            // in GRUB.
            steps.push(Step::Run(format!(
                "sudo sed -i -E 's/timeout=[0-9]+/timeout=0/g' {}",
                quote(&format!("{writable}/boot/grub/grub.cfg"))
            )));
            steps.push(Step::Run(format!(
                "grep -rl 'GRUB_TIMEOUT=' {} | xargs -r sudo sed -i -E 's/GRUB_TIMEOUT=[0-9]+/GRUB_TIMEOUT=0/g'",
                quote(&format!("{writable}/etc/default/"))
            )));
            steps.push(sudoers);
        }
        ImageType::PiDesktop => {
            if version_major.is_some_and(|v| v >= 25) {
                // 25.04 and later configure the first user with cloud-init.
                let dir = format!("{writable}/var/lib/cloud/seed/nocloud-net");
                steps.push(Step::Mkdir(dir.clone()));
                steps.push(Step::Copy {
                    seed: &PI_DESKTOP_PLUCKY_META_DATA,
                    dest: format!("{dir}/meta-data"),
                });
                steps.push(Step::Copy {
                    seed: &PI_DESKTOP_PLUCKY_USER_DATA,
                    dest: format!("{dir}/user-data"),
                });
                steps.push(remove_fake_cloud(&writable));
            } else {
                // Earlier ones run oem-config, answered by the preseed.
                steps.push(Step::Copy {
                    seed: &PI_DESKTOP_OEM_CONFIG,
                    dest: format!("{writable}/etc/systemd/system/oem-config.service"),
                });
                steps.push(Step::Copy {
                    seed: &PI_DESKTOP_PRESEED,
                    dest: format!("{writable}/preseed.cfg"),
                });
            }
            // The network must be up while the first boot configures the
            // system: NetworkManager is wanted by oem-config.target too.
            let units = format!("{writable}/etc/systemd/system");
            let wants = format!("{units}/oem-config.target.wants");
            steps.push(Step::Mkdir(wants.clone()));
            steps.push(Step::Run(format!(
                "sudo cp -a {} {}/",
                quote(&format!(
                    "{units}/multi-user.target.wants/NetworkManager.service"
                )),
                quote(&wants)
            )));
            steps.push(sudoers);
        }
        ImageType::Core20 => {
            let dir = format!("{mnt}/ubuntu-seed/data/etc/cloud/cloud.cfg.d");
            steps.push(Step::Mkdir(dir.clone()));
            steps.push(Step::Copy {
                seed: &UC20_NOCLOUD,
                dest: format!("{dir}/99_nocloud.cfg"),
            });
        }
        ImageType::Ubuntu => {
            classic(&mut steps, &writable);
            steps.push(remove_fake_cloud(&writable));
        }
        ImageType::Core => classic(&mut steps, &format!("{writable}/system-data")),
        ImageType::UbuntuCpc => classic(&mut steps, &format!("{mnt}/cloudimg-rootfs")),
        ImageType::Unknown => classic(&mut steps, &writable),
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(kind: ImageType, version: Option<u32>) -> Vec<String> {
        plan(kind, "/mnt/a", version)
            .iter()
            .map(|s| s.command("/tmp/a"))
            .collect()
    }

    const CLASSIC: [&str; 3] = [
        "sudo mkdir -p /mnt/a/writable/var/lib/cloud/seed/nocloud-net",
        "sudo cp /tmp/a/classic-meta-data /mnt/a/writable/var/lib/cloud/seed/nocloud-net/meta-data",
        "sudo cp /tmp/a/classic-user-data /mnt/a/writable/var/lib/cloud/seed/nocloud-net/user-data",
    ];
    const SUDO: &str = "sudo install -m 0440 /tmp/a/sudoers /mnt/a/writable/etc/sudoers.d/ubuntu";

    #[test]
    fn classic_kinds() {
        let mut ubuntu = CLASSIC.map(String::from).to_vec();
        ubuntu.push("sudo rm -f /mnt/a/writable/etc/cloud/cloud.cfg.d/99-fake?cloud.cfg".into());
        assert_eq!(commands(ImageType::Ubuntu, None), ubuntu);
        assert_eq!(commands(ImageType::Unknown, None), CLASSIC);
        assert_eq!(
            commands(ImageType::Core, None)[1],
            "sudo cp /tmp/a/classic-meta-data /mnt/a/writable/system-data/var/lib/cloud/seed/nocloud-net/meta-data"
        );
        assert_eq!(
            commands(ImageType::UbuntuCpc, None)[0],
            "sudo mkdir -p /mnt/a/cloudimg-rootfs/var/lib/cloud/seed/nocloud-net"
        );
    }

    #[test]
    fn ce_oem_iot_falls_through_to_classic() {
        let mut before = vec![
            "sudo cp /tmp/a/ce-oem-iot-user-data /mnt/a/system-boot/user-data".to_string(),
            SUDO.into(),
        ];
        before.extend(CLASSIC.map(String::from));
        assert_eq!(commands(ImageType::CeOemIotBefore24, None), before);
        let mut after = vec![
            "sudo mkdir -p /mnt/a/writable/var/lib/cloud/seed/nocloud".to_string(),
            "sudo cp /tmp/a/ce-oem-iot-user-data /mnt/a/writable/var/lib/cloud/seed/nocloud/user-data".into(),
            SUDO.into(),
        ];
        after.extend(CLASSIC.map(String::from));
        assert_eq!(commands(ImageType::CeOemIot24AndBeyond, None), after);
    }

    #[test]
    fn tegra_core20_and_pi_desktop() {
        let tegra = commands(ImageType::Tegra, None);
        assert_eq!(tegra.len(), 5);
        assert!(
            tegra[2].contains("timeout=0")
                && tegra[2].ends_with("/mnt/a/writable/boot/grub/grub.cfg")
        );
        assert!(
            tegra[3]
                .starts_with("grep -rl 'GRUB_TIMEOUT=' /mnt/a/writable/etc/default/ | xargs -r")
        );
        assert_eq!(tegra[4], SUDO);
        assert_eq!(
            commands(ImageType::Core20, None),
            [
                "sudo mkdir -p /mnt/a/ubuntu-seed/data/etc/cloud/cloud.cfg.d",
                "sudo cp /tmp/a/uc20-99_nocloud.cfg /mnt/a/ubuntu-seed/data/etc/cloud/cloud.cfg.d/99_nocloud.cfg"
            ]
        );
        let old = commands(ImageType::PiDesktop, Some(24));
        assert_eq!(
            old[0],
            "sudo cp /tmp/a/pi-desktop-oem-config.service /mnt/a/writable/etc/systemd/system/oem-config.service"
        );
        assert_eq!(
            old[1],
            "sudo cp /tmp/a/pi-desktop-preseed.cfg /mnt/a/writable/preseed.cfg"
        );
        assert_eq!(
            old[3],
            "sudo cp -a /mnt/a/writable/etc/systemd/system/multi-user.target.wants/NetworkManager.service /mnt/a/writable/etc/systemd/system/oem-config.target.wants/"
        );
        assert_eq!(
            commands(ImageType::PiDesktop, None),
            old,
            "unknown version: the old way"
        );
        let new = commands(ImageType::PiDesktop, Some(25));
        assert!(
            new[1].ends_with("nocloud-net/meta-data")
                && new[1].contains("pi-desktop-plucky-meta-data")
        );
        assert!(new[3].contains("99-fake?cloud.cfg"));
        assert_eq!(new.last().unwrap(), SUDO);
    }

    #[test]
    fn seeds_say_what_they_do() {
        for seed in [
            &CLASSIC_USER_DATA,
            &CE_OEM_IOT_USER_DATA,
            &UC20_NOCLOUD,
            &PI_DESKTOP_PLUCKY_USER_DATA,
        ] {
            assert!(seed.text.starts_with("#cloud-config\n"), "{}", seed.name);
        }
        assert!(CLASSIC_USER_DATA.text.contains("password: ubuntu"));
        assert!(
            CE_OEM_IOT_USER_DATA
                .text
                .contains("plain_text_passwd: ubuntu")
        );
        assert!(CLASSIC_META_DATA.text.contains("instance-id:"));
        assert_eq!(SUDOERS.text, "ubuntu ALL=(ALL) NOPASSWD:ALL\n");
        assert!(
            PI_DESKTOP_OEM_CONFIG
                .text
                .contains("WantedBy=oem-config.target")
        );
        assert!(
            PI_DESKTOP_PRESEED
                .text
                .contains("passwd/username string ubuntu")
        );
    }

    /// The pre-hashed passwords are SHA-512 crypt of "ubuntu" (checked with
    /// `openssl passwd -6` when it is installed).
    #[test]
    fn hashed_passwords_are_ubuntu() {
        for seed in [&UC20_NOCLOUD, &PI_DESKTOP_PLUCKY_USER_DATA] {
            let hash = seed
                .text
                .lines()
                .find_map(|l| l.trim().strip_prefix("passwd: "))
                .unwrap()
                .trim_matches('"');
            let salt = hash.split('$').nth(2).unwrap();
            let Ok(out) = std::process::Command::new("openssl")
                .args(["passwd", "-6", "-salt", salt, "ubuntu"])
                .output()
            else {
                eprintln!("openssl is not installed: not checking {}", seed.name);
                continue;
            };
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                hash,
                "{}",
                seed.name
            );
        }
    }
}
