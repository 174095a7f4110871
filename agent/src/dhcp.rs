//! The bootstrap address by DHCPv4 when the kernel command line gives none: smoltcp's DHCP client
//! over a raw packet socket on the interface (which has no address yet, so the kernel's own stack
//! cannot do it), then the lease is set on the kernel interface with netlink.
//!
//! The agent lives for minutes; the lease is not renewed (its time is logged).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{wait as phy_wait, Checksum, Device, DeviceCapabilities, Medium, RawSocket};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

/// Why no lease was acquired.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("raw socket on {iface}: {source}")]
    Socket {
        iface: String,
        source: std::io::Error,
    },
    #[error("{iface}: no DHCP lease after {secs}s")]
    NoLease { iface: String, secs: u64 },
}

/// What the DHCP server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on interface `name` (already up) with hardware address `mac`
/// until a lease arrives or `timeout` passes.
pub fn acquire(
    name: &str,
    mac: lazarus_proto::MacAddr,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let mut device = NoRxChecksum(RawSocket::new(name, Medium::Ethernet).map_err(|source| {
        DhcpError::Socket {
            iface: name.to_string(),
            source,
        }
    })?);
    let start = StdInstant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as i64);
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
    let mut iface = Interface::new(config, &mut device, now());
    let mut storage = [smoltcp::iface::SocketStorage::EMPTY; 1];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let handle = sockets.add(dhcpv4::Socket::new());
    log::info!("{name}: asking for an address by DHCP");
    loop {
        iface.poll(now(), &mut device, &mut sockets);
        let event = sockets.get_mut::<dhcpv4::Socket>(handle).poll();
        if let Some(dhcpv4::Event::Configured(c)) = event {
            let lease = Lease {
                address: c.address.address(),
                prefix_len: c.address.prefix_len(),
                router: c.router,
                server: c.server.address,
            };
            log::info!(
                "{name}: DHCP lease {}/{} from {}{}",
                lease.address,
                lease.prefix_len,
                lease.server,
                lease
                    .router
                    .map_or(String::new(), |r| format!(", router {r}"))
            );
            return Ok(lease);
        }
        let elapsed = start.elapsed();
        if elapsed > timeout {
            return Err(DhcpError::NoLease {
                iface: name.to_string(),
                secs: timeout.as_secs(),
            });
        }
        let delay = iface
            .poll_delay(now(), &sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_millis(500))
            .min(timeout - elapsed);
        let _ = phy_wait(
            device.0.as_raw_fd(),
            Some(smoltcp::time::Duration::from_micros(
                delay.as_micros() as u64
            )),
        );
    }
}

/// The raw socket, with received checksums not verified: frames a packet socket sees on virtio-net
/// or veth may carry a partial checksum the NIC (or the kernel) would have completed
/// (`CHECKSUM_PARTIAL` offload), which smoltcp would otherwise drop as malformed.
struct NoRxChecksum(RawSocket);

impl Device for NoRxChecksum {
    type RxToken<'a> = <RawSocket as Device>::RxToken<'a>;
    type TxToken<'a> = <RawSocket as Device>::TxToken<'a>;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.0.receive(now)
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.0.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = self.0.capabilities();
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps
    }
}
