//! rtnetlink, hand-rolled for the three things the agent does: bring a link up, add an address,
//! set a default route. Each request asks for an acknowledgement and waits for it.

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

/// A route-netlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 2,  // AF_INET
        IpAddr::V6(_) => 10, // AF_INET6
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Netlink {
    /// socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), bound.
    pub fn open() -> rustix::io::Result<Self> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?; // protocol 0 is NETLINK_ROUTE
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request with `body` and waits for its acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> rustix::io::Result<()> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        rustix::net::sendto(
            &self.fd,
            &msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        let mut buf = [0u8; 8192];
        loop {
            let (n, _) = rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty())?;
            let mut at = 0;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                let typ = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let seq =
                    u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
                if typ == NLMSG_ERROR && seq == self.seq && at + 20 <= n {
                    let err = i32::from_ne_bytes([
                        buf[at + 16],
                        buf[at + 17],
                        buf[at + 18],
                        buf[at + 19],
                    ]);
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(rustix::io::Errno::from_raw_os_error(-err))
                    };
                }
                if len < 16 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
    }

    /// RTM_NEWLINK with IFF_UP: `ip link set IFINDEX up`.
    pub fn set_link_up(&mut self, ifindex: u32) -> rustix::io::Result<()> {
        let mut body = vec![0u8, 0]; // family AF_UNSPEC, pad
        body.extend_from_slice(&0u16.to_ne_bytes()); // type
        body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
        body.extend_from_slice(&IFF_UP.to_ne_bytes()); // change
        self.request(RTM_NEWLINK, 0, &body)
    }

    /// RTM_NEWADDR: `ip addr replace ADDR/PREFIX dev IFINDEX`.
    pub fn add_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> rustix::io::Result<()> {
        let mut body = vec![family(&addr), prefix_len, 0, 0];
        body.extend_from_slice(&ifindex.to_ne_bytes());
        attr(&mut body, IFA_LOCAL, &octets(&addr));
        attr(&mut body, IFA_ADDRESS, &octets(&addr));
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }

    /// RTM_NEWROUTE: `ip route replace default via GATEWAY dev IFINDEX`.
    pub fn set_default_route(&mut self, ifindex: u32, gateway: IpAddr) -> rustix::io::Result<()> {
        let mut body = vec![
            family(&gateway),
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            0,
            RTN_UNICAST,
        ];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, RTA_GATEWAY, &octets(&gateway));
        attr(&mut body, RTA_OIF, &ifindex.to_ne_bytes());
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }
}
