//! How the controller recognises this machine: MAC addresses and DMI ids, from sysfs.

use std::fs;

use lazarus_proto::{Identity, MacAddr};

use crate::root::Root;

/// Reads the MACs of every non-loopback interface and the DMI system UUID and serial.
pub fn read_identity(root: &Root) -> Identity {
    let mut macs = Vec::new();
    if let Ok(entries) = fs::read_dir(root.sys.join("class/net")) {
        for e in entries.flatten() {
            let Ok(text) = fs::read_to_string(e.path().join("address")) else {
                continue;
            };
            if let Ok(mac) = text.trim().parse::<MacAddr>() {
                if mac != MacAddr::ZERO {
                    macs.push(mac);
                }
            }
        }
    }
    macs.sort();
    macs.dedup();
    let dmi = |f: &str| {
        fs::read_to_string(root.sys.join("class/dmi/id").join(f))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    Identity {
        macs,
        system_uuid: dmi("product_uuid"),
        serial: dmi("product_serial"),
        address: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_macs_and_dmi_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::under(dir.path());
        for (ifname, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:12:34:56")] {
            let d = root.sys.join("class/net").join(ifname);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("address"), format!("{mac}\n")).unwrap();
        }
        fs::create_dir_all(root.sys.join("class/dmi/id")).unwrap();
        fs::write(root.sys.join("class/dmi/id/product_uuid"), "1234-abcd\n").unwrap();
        let id = read_identity(&root);
        assert_eq!(id.macs, vec![MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])]);
        assert_eq!(id.system_uuid.as_deref(), Some("1234-abcd"));
        assert_eq!(id.serial, None);
    }
}
