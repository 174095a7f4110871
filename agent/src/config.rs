//! The kernel command line keys, parsed in one place into a [`BootConfig`] that is passed down.
//! The baked-in `agent.toml` schema is `lazarus_node::agent_config` (the initramfs builder
//! checks it too).

use std::net::{IpAddr, SocketAddr};

/// Kernel command line keys.
pub mod keys {
    /// `lazarus.ip=ADDR/PREFIX[,GATEWAY]`: static bootstrap address (else DHCP).
    pub const IP: &str = "lazarus.ip";
    /// `lazarus.iface=MAC|NAME`: the bootstrap interface (else the first interface by name, `lo`
    /// excepted, whether or not its cable is in; the agent then waits for its link).
    pub const IFACE: &str = "lazarus.iface";
    /// `lazarus.controller=HOST:PORT`: where to announce `Ready` (port 7461 by default).
    pub const CONTROLLER: &str = "lazarus.controller";
    /// `lazarus.flag=PATH`: the flag device to read at boot, or a whole disk to look for it on
    /// (else the partition labelled `lazarus-flag`, if exactly one disk has one).
    pub const FLAG: &str = "lazarus.flag";
    /// `lazarus.media=DISK[,DISK]`: the disks holding the rescue medium (kernel names, `/dev`
    /// paths or by-id names), never written. Removable and USB disks and disks holding an
    /// ISO 9660 volume are excluded without it.
    pub const MEDIA: &str = "lazarus.media";
}

/// A malformed `lazarus.` value on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("lazarus.ip={0}: expected ADDR/PREFIX[,GATEWAY]")]
    Ip(String),
    #[error("lazarus.controller={0}: expected HOST:PORT")]
    Controller(String),
}

/// The bootstrap address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

/// What the kernel command line says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootConfig {
    pub ip: Option<StaticIp>,
    pub iface: Option<String>,
    pub controller: Option<SocketAddr>,
    pub flag: Option<String>,
    pub media: Vec<String>,
}

impl BootConfig {
    /// Parses `/proc/cmdline`; unknown keys are ignored, a malformed `lazarus.` value is an error
    /// naming the key.
    pub fn parse(cmdline: &str) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                keys::IP => {
                    out.ip = Some(parse_ip(value).ok_or_else(|| ConfigError::Ip(value.into()))?)
                }
                keys::IFACE => out.iface = Some(value.to_string()),
                keys::CONTROLLER => {
                    let addr = value
                        .parse::<SocketAddr>()
                        .or_else(|_| {
                            value
                                .parse::<IpAddr>()
                                .map(|ip| SocketAddr::new(ip, lazarus_proto::CONTROLLER_PORT))
                        })
                        .map_err(|_| ConfigError::Controller(value.into()))?;
                    out.controller = Some(addr);
                }
                keys::FLAG => out.flag = Some(value.to_string()),
                keys::MEDIA => out.media.extend(
                    value
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string),
                ),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn parse_ip(value: &str) -> Option<StaticIp> {
    let (cidr, gateway) = match value.split_once(',') {
        Some((c, g)) => (c, Some(g.parse().ok()?)),
        None => (value, None),
    };
    let (addr, prefix) = cidr.split_once('/')?;
    let address: IpAddr = addr.parse().ok()?;
    let prefix_len: u8 = prefix.parse().ok()?;
    if prefix_len > if address.is_ipv4() { 32 } else { 128 } {
        return None;
    }
    Some(StaticIp {
        address,
        prefix_len,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_command_line() {
        let c = BootConfig::parse(
            "console=ttyS0 quiet lazarus.ip=10.0.0.5/24,10.0.0.1 lazarus.iface=52:54:00:12:34:56 lazarus.controller=10.0.0.1:7461 other=x",
        )
        .unwrap();
        assert_eq!(
            c.ip,
            Some(StaticIp {
                address: "10.0.0.5".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("10.0.0.1".parse().unwrap())
            })
        );
        assert_eq!(c.iface.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(c.controller, Some("10.0.0.1:7461".parse().unwrap()));
        assert_eq!(
            BootConfig::parse("lazarus.controller=10.0.0.1")
                .unwrap()
                .controller
                .unwrap()
                .port(),
            7461
        );
        assert_eq!(BootConfig::parse("").unwrap(), BootConfig::default());
        for bad in [
            "lazarus.ip=10.0.0.5",
            "lazarus.ip=10.0.0.5/33",
            "lazarus.ip=x/24",
            "lazarus.controller=nowhere",
        ] {
            let err = BootConfig::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(bad), "{err}");
        }
    }

    #[test]
    fn the_rescue_media_may_be_named_on_the_command_line() {
        let c = BootConfig::parse("lazarus.media=sr1,/dev/sdb lazarus.media=usb-Stick_1").unwrap();
        assert_eq!(c.media, ["sr1", "/dev/sdb", "usb-Stick_1"]);
    }
}
