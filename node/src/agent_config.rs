//! The agent's baked-in configuration: `/etc/lazarus/agent.toml` in the initramfs. Shared by the
//! agent (which reads it at boot) and `lazarus-mkinitramfs` (which refuses a config that does not
//! parse), so both agree on the schema.

use serde::Deserialize;

/// Path of the config inside the initramfs.
pub const CONFIG_PATH: &str = "/etc/lazarus/agent.toml";
/// Path of the agent key inside the initramfs: from the node's or the repair's part, appended to
/// the public base image (never in the base itself).
pub const KEY_PATH: &str = "/etc/lazarus/agent.key";
/// Path of the controller's public key inside the initramfs (in the base image).
pub const PUBLIC_KEY_PATH: &str = "/etc/lazarus/controller.pub";

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub modules: ModulesConfig,
    /// TCP port the agent listens on.
    pub listen_port: u16,
    /// Seconds to wait for a network link to come up.
    pub link_timeout_secs: u64,
    /// Seconds to wait for a DHCP lease.
    pub dhcp_timeout_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            modules: ModulesConfig::default(),
            listen_port: lazarus_proto::AGENT_PORT,
            link_timeout_secs: 30,
            dhcp_timeout_secs: 60,
        }
    }
}

/// Which kernel modules the initramfs carries and the agent loads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    /// Loaded at every boot, dependencies first (filesystems, NFS).
    pub always: Vec<String>,
    /// Drivers carried for the hardware classes the fleet has; each is loaded only when a device
    /// in `/sys` has a matching modalias (coldplug). Ones the kernel lacks are skipped.
    pub hardware: Vec<String>,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        let list = |s: &[&str]| s.iter().map(|m| m.to_string()).collect();
        Self {
            always: list(&["nfsv4", "nfsv3", "ext4", "xfs"]),
            hardware: list(&[
                // virtual machines
                "virtio_pci",
                "virtio_blk",
                "virtio_scsi",
                "virtio_net",
                // storage
                "nvme",
                "ahci",
                "sd_mod",
                "megaraid_sas",
                "mpt3sas",
                // network
                "e1000",
                "e1000e",
                "igb",
                "ixgbe",
                "i40e",
                "ice",
                "mlx5_core",
                "bnxt_en",
                "tg3",
                "r8169",
                // USB rescue media
                "xhci_pci",
                "ehci_pci",
                "usb_storage",
                "uas",
            ]),
        }
    }
}

/// `agent.toml` did not parse: the line (where TOML knows it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map_or(String::new(), |l| format!("line {l}: ")))]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

impl AgentConfig {
    /// Parses `agent.toml`; the error names the line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            line: e.span().map(|s| text[..s.start].matches('\n').count() + 1),
            message: e.message().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_toml_and_names_the_bad_line() {
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
        let c = AgentConfig::parse("listen_port = 9000\n[modules]\nalways = [\"ext4\"]\n").unwrap();
        assert_eq!(
            (c.listen_port, c.modules.always.as_slice()),
            (9000, &["ext4".to_string()][..])
        );
        assert!(
            !c.modules.hardware.is_empty(),
            "defaults kept for unset fields"
        );
        let err = AgentConfig::parse("listen_port = 1\nbogus = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 2"), "{err}");
    }
}
