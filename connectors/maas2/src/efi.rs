//! The EFI boot-order fix (reference §4.5): network (IPv4) boot entries
//! first, so MAAS can take the machine back over PXE.

/// The new `BootOrder` for the output of `efibootmgr -v`: the current boot
/// entry first if it boots over IPv4, then the other IPv4 entries in the
/// order they are listed, then the rest of the old order. `None` when the
/// output has no `BootOrder:` line.
pub fn new_boot_order(efibootmgr: &str) -> Option<String> {
    // Each line is "<key> <value>"; lines without a space carry nothing.
    let entries: Vec<(&str, &str)> = efibootmgr
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    let value = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim())
    };
    let old_order: Vec<&str> = value("BootOrder:")?
        .split(',')
        .map(str::trim)
        .filter(|e| is_entry_number(e))
        .collect();
    let mut order: Vec<String> = Vec::new();
    if let Some(current) = value("BootCurrent:").filter(|c| is_entry_number(c)) {
        let entry = format!("Boot{current}");
        if entries
            .iter()
            .find(|(k, _)| k.contains(&entry))
            .is_some_and(|(_, v)| v.contains("IPv4"))
        {
            order.push(current.to_string());
        }
    }
    for (key, v) in &entries {
        if v.contains("IPv4")
            && let Some(num) = boot_number(key)
            && !order.iter().any(|o| o == num)
        {
            order.push(num.to_string());
        }
    }
    for e in old_order {
        if !order.iter().any(|o| o == e) {
            order.push(e.to_string());
        }
    }
    Some(order.join(","))
}

/// `XXXX` of a `BootXXXX` (or `BootXXXX*`) key.
fn boot_number(key: &str) -> Option<&str> {
    let start = key.find("Boot")? + 4;
    key.get(start..start + 4).filter(|n| is_entry_number(n))
}

/// Boot entry numbers are four hexadecimal digits; nothing else from the
/// device's output ends up in the `efibootmgr -o` command line.
fn is_entry_number(s: &str) -> bool {
    s.len() == 4 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "BootCurrent: 0003\n\
Timeout: 1 seconds\n\
BootOrder: 0000,0001,0002,0003,0004\n\
Boot0000* ubuntu\tHD(1,GPT,abc)/File(\\EFI\\ubuntu\\shimx64.efi)\n\
Boot0001* UEFI: PXE IPv6 Intel(R) Ethernet\tPciRoot(0x0)/IPv6(...)\n\
Boot0002* UEFI: PXE IPv4 Intel(R) Ethernet\tPciRoot(0x0)/IPv4(...)\n\
Boot0003* UEFI: PXE IPv4 USB dongle\tPciRoot(0x0)/IPv4(...)\n\
Boot0004* UEFI: Built-in EFI Shell\n\
MirroredPercentageAbove4G: 0.00\n\
noise-without-space\n";

    #[test]
    fn ipv4_first_current_entry_leading() {
        assert_eq!(
            new_boot_order(OUTPUT).as_deref(),
            Some("0003,0002,0000,0001,0004")
        );
    }

    #[test]
    fn a_current_entry_that_is_not_ipv4_stays_in_place() {
        let out = OUTPUT.replace("BootCurrent: 0003", "BootCurrent: 0000");
        assert_eq!(
            new_boot_order(&out).as_deref(),
            Some("0002,0003,0000,0001,0004")
        );
        let out = OUTPUT.replace("BootCurrent: 0003\n", "");
        assert_eq!(
            new_boot_order(&out).as_deref(),
            Some("0002,0003,0000,0001,0004")
        );
    }

    #[test]
    fn only_entry_numbers_reach_the_command_line() {
        let out = "BootCurrent: 0001;reboot\nBootOrder: 0000,$(reboot),0001\n";
        assert_eq!(new_boot_order(out).as_deref(), Some("0000,0001"));
    }

    #[test]
    fn no_boot_order_means_nothing_to_fix() {
        assert_eq!(new_boot_order("BootCurrent: 0001\n"), None);
        assert_eq!(new_boot_order(""), None);
    }
}
