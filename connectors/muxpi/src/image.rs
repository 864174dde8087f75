//! What kind of image was flashed (reference §4.8 (d) step 5), from the
//! control host's answers about its mounted partitions.

use serde_json::Value;

/// The image kinds the reference tells apart; each gets its own seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    /// ce-oem-iot images before 24.04 (build stamp below 2404, or a
    /// series below 24).
    CeOemIotBefore24,
    /// ce-oem-iot images from 24.04 on.
    CeOemIot24AndBeyond,
    /// NVIDIA Tegra (Jetson) images.
    Tegra,
    /// Raspberry Pi desktop images.
    PiDesktop,
    /// Ubuntu classic (server, preinstalled) images.
    Ubuntu,
    /// Ubuntu Core 16/18 (`writable/system-data`).
    Core,
    /// Ubuntu Core 20 and later (`ubuntu-seed/snaps`).
    Core20,
    /// Ubuntu cloud images (`cloudimg-rootfs`).
    UbuntuCpc,
    /// None of the above.
    Unknown,
}

impl ImageType {
    /// The reference's name for the type (logged).
    pub fn name(self) -> &'static str {
        match self {
            ImageType::CeOemIotBefore24 => "ce-oem-iot-before-24",
            ImageType::CeOemIot24AndBeyond => "ce-oem-iot-24-and-beyond",
            ImageType::Tegra => "tegra",
            ImageType::PiDesktop => "pi-desktop",
            ImageType::Ubuntu => "ubuntu",
            ImageType::Core => "core",
            ImageType::Core20 => "core20",
            ImageType::UbuntuCpc => "ubuntu-cpc",
            ImageType::Unknown => "unknown",
        }
    }
}

/// After the ce-oem-iot and tegra checks, the first of these paths (under
/// the mount root) that exists names the type.
pub const PATH_TYPES: [(&str, ImageType); 5] = [
    ("writable/usr/bin/firefox", ImageType::PiDesktop),
    ("writable/etc", ImageType::Ubuntu),
    ("writable/system-data", ImageType::Core),
    ("ubuntu-seed/snaps", ImageType::Core20),
    ("cloudimg-rootfs/etc/cloud/cloud.cfg", ImageType::UbuntuCpc),
];

/// The ce-oem-iot build stamp in `writable/.disk/info`
/// (`iot-<project>-<series>-classic-(server|desktop)-<N>` or
/// `iot-<project>-<series>-core-<N>`), as a `grep -oP` pattern printing
/// only `N`.
pub const BUILDSTAMP_PATTERN: &str = r"iot-[a-z]+-[a-z-]*(classic-(server|desktop)|core)-\K[0-9]+";

/// The ce-oem-iot type for the build number `grep` printed, if any: a
/// four-digit stamp (above 2000) is a release (`2404`), a smaller one a
/// series (`24`).
pub fn ce_oem_iot_type(grep_output: &str) -> Option<ImageType> {
    let n: u64 = grep_output.lines().find_map(|l| l.trim().parse().ok())?;
    let newer = if n > 2000 { n >= 2404 } else { n >= 24 };
    Some(if newer {
        ImageType::CeOemIot24AndBeyond
    } else {
        ImageType::CeOemIotBefore24
    })
}

/// The major version in `VERSION_ID` of an os-release text (`"25.04"` →
/// 25).
pub fn version_major(os_release: &str) -> Option<u32> {
    os_release.lines().find_map(|line| {
        let value = line.trim().strip_prefix("VERSION_ID=")?;
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        value.split('.').next()?.trim().parse().ok()
    })
}

/// The labelled partitions (`(name, label)`) of the first device in
/// `lsblk -o NAME,LABEL -J` output.
pub fn labelled_partitions(lsblk_json: &str) -> Result<Vec<(String, String)>, String> {
    let doc: Value = serde_json::from_str(lsblk_json)
        .map_err(|e| format!("lsblk did not print JSON ({e}): {}", lsblk_json.trim()))?;
    let children = doc
        .get("blockdevices")
        .and_then(|d| d.get(0))
        .and_then(|d| d.get("children"))
        .and_then(Value::as_array);
    Ok(children
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?.trim();
            let label = c.get("label")?.as_str()?.trim();
            (!name.is_empty() && !label.is_empty()).then(|| (name.to_string(), label.to_string()))
        })
        // A label is a folder name under /mnt/<agent_name>.
        .filter(|(_, label)| !label.contains('/') && label != "." && label != "..")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ce_oem_iot_series() {
        assert_eq!(
            ce_oem_iot_type("2404\n"),
            Some(ImageType::CeOemIot24AndBeyond)
        );
        assert_eq!(ce_oem_iot_type("2204"), Some(ImageType::CeOemIotBefore24));
        assert_eq!(ce_oem_iot_type("24"), Some(ImageType::CeOemIot24AndBeyond));
        assert_eq!(ce_oem_iot_type("20\n"), Some(ImageType::CeOemIotBefore24));
        assert_eq!(ce_oem_iot_type("2001"), Some(ImageType::CeOemIotBefore24));
        // Several stamps: the first counts.
        assert_eq!(
            ce_oem_iot_type("2604\n2004\n"),
            Some(ImageType::CeOemIot24AndBeyond)
        );
        assert_eq!(ce_oem_iot_type(""), None);
        assert_eq!(ce_oem_iot_type("abc"), None);
    }

    #[test]
    fn version_majors() {
        assert_eq!(
            version_major("NAME=\"Ubuntu\"\nVERSION_ID=\"25.04\"\n"),
            Some(25)
        );
        assert_eq!(version_major("VERSION_ID=22.04"), Some(22));
        assert_eq!(version_major("VERSION_ID=\"\"\n"), None);
        assert_eq!(version_major("NAME=x"), None);
    }

    #[test]
    fn partitions_from_lsblk() {
        let json = r#"{"blockdevices": [{"name": "sda", "label": null, "children": [
            {"name": "sda1", "label": "system-boot"}, {"name": "sda2", "label": "writable"},
            {"name": "sda3", "label": null}, {"name": "sda4", "label": "../evil"}]}]}"#;
        assert_eq!(
            labelled_partitions(json).unwrap(),
            [
                ("sda1".to_string(), "system-boot".to_string()),
                ("sda2".into(), "writable".into())
            ]
        );
        assert!(
            labelled_partitions(r#"{"blockdevices": [{"name": "sda"}]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(labelled_partitions("lsblk: oops").is_err());
    }
}
