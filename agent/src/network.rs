//! Bringing up the rescue network with netlink: choosing the interface, waiting for its link,
//! setting the address and default route.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::root::Root;
use crate::sys::netlink::Netlink;
use lazarus_proto::MacAddr;

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
pub fn choose(root: &Root, want: Option<&str>, timeout: Duration) -> Result<Interface, String> {
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
            return Err(format!(
                "no network interface {}after {}s",
                want.map_or(String::new(), |w| format!("{w} ")),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ip link set lo up; ip link set IF up`, then waits for carrier (up to `timeout`).
pub fn bring_up(root: &Root, iface: &Interface, timeout: Duration) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    nl.set_link_up(1)
        .map_err(|e| format!("bringing up lo: {e}"))?;
    nl.set_link_up(iface.index)
        .map_err(|e| format!("bringing up {}: {e}", iface.name))?;
    let carrier = root.sys.join("class/net").join(&iface.name).join("carrier");
    let deadline = Instant::now() + timeout;
    while read_trim(&carrier).as_deref() != Some("1") {
        if Instant::now() > deadline {
            return Err(format!(
                "{}: no link after {}s",
                iface.name,
                timeout.as_secs()
            ));
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
) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    nl.add_address(iface.index, address, prefix_len)
        .map_err(|e| format!("adding {address}/{prefix_len} to {}: {e}", iface.name))?;
    if let Some(gw) = gateway {
        nl.set_default_route(iface.index, gw)
            .map_err(|e| format!("default route via {gw}: {e}"))?;
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
