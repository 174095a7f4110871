//! Bringing up the rescue network with netlink: choosing the interface, waiting for its link,
//! setting the address and default route.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::root::Root;
use crate::sys::netlink::Netlink;
use lazarus_proto::MacAddr;

/// Why the network could not be configured, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("opening a netlink socket: {0}")]
    Netlink(Errno),
    #[error("no network interface {}after {secs}s", want.as_ref().map_or(String::new(), |w| format!("{w} ")))]
    NoInterface { want: Option<String>, secs: u64 },
    #[error("bringing up {iface}: {source}")]
    LinkUp { iface: String, source: Errno },
    #[error("{iface}: no link after {secs}s")]
    NoCarrier { iface: String, secs: u64 },
    #[error("adding {address}/{prefix_len} to {iface}: {source}")]
    Address {
        iface: String,
        address: IpAddr,
        prefix_len: u8,
        source: Errno,
    },
    #[error("default route via {gateway}: {source}")]
    Route { gateway: IpAddr, source: Errno },
}

/// An interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Option<MacAddr>,
}

/// Interfaces other than loopback, sorted by name.
pub fn interfaces(root: &Root) -> Vec<Interface> {
    let dir = root.sys.join("class/net");
    let mut out: Vec<Interface> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let read = |f: &str| {
                std::fs::read_to_string(e.path().join(f))
                    .ok()
                    .map(|s| s.trim().to_string())
            };
            let index = read("ifindex")?.parse().ok()?;
            let mac = read("address").and_then(|m| m.parse::<MacAddr>().ok());
            (name != "lo").then_some(Interface { name, index, mac })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The interface named by `want` (a name or a MAC), or the first one; waits up to `timeout`
/// for drivers to create it.
pub fn choose(
    root: &Root,
    want: Option<&str>,
    timeout: Duration,
) -> Result<Interface, NetworkError> {
    let deadline = Instant::now() + timeout;
    let want_mac = want.and_then(|w| w.parse::<MacAddr>().ok());
    loop {
        let all = interfaces(root);
        let found = match want {
            Some(w) => all
                .into_iter()
                .find(|i| i.name == w || (want_mac.is_some() && i.mac == want_mac)),
            None => all.into_iter().next(),
        };
        if let Some(i) = found {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err(NetworkError::NoInterface {
                want: want.map(str::to_string),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ip link set lo up; ip link set IF up`, then waits for carrier (up to `timeout`).
pub fn bring_up(root: &Root, iface: &Interface, timeout: Duration) -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(NetworkError::Netlink)?;
    let up = |name: &str, source| NetworkError::LinkUp {
        iface: name.to_string(),
        source,
    };
    nl.set_link_up(1).map_err(|e| up("lo", e))?;
    nl.set_link_up(iface.index)
        .map_err(|e| up(&iface.name, e))?;
    let carrier = root.sys.join("class/net").join(&iface.name).join("carrier");
    let deadline = Instant::now() + timeout;
    while read_trim(&carrier).as_deref() != Some("1") {
        if Instant::now() > deadline {
            return Err(NetworkError::NoCarrier {
                iface: iface.name.clone(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `ip addr replace ADDR/PREFIX dev IF` and, with a gateway, `ip route replace default via GW`.
pub fn set_address(
    iface: &Interface,
    address: IpAddr,
    prefix_len: u8,
    gateway: Option<IpAddr>,
) -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(NetworkError::Netlink)?;
    nl.add_address(iface.index, address, prefix_len)
        .map_err(|source| NetworkError::Address {
            iface: iface.name.clone(),
            address,
            prefix_len,
            source,
        })?;
    if let Some(gateway) = gateway {
        nl.set_default_route(iface.index, gateway)
            .map_err(|source| NetworkError::Route { gateway, source })?;
    }
    log::info!(
        "{}: {address}/{prefix_len}{}",
        iface.name,
        gateway.map_or(String::new(), |g| format!(" via {g}"))
    );
    Ok(())
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}
