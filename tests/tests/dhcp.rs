//! The agent's DHCP client (smoltcp over a raw packet socket) against a real DHCP server
//! (dnsmasq) across a veth pair in a network namespace, then the lease set with netlink.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use lazarus_e2e::Netns;
use lazarus_testkit::{program, require, root};

#[test]
fn a_dhcp_lease_from_dnsmasq_is_set_on_the_interface() {
    let test = "a_dhcp_lease_from_dnsmasq_is_set_on_the_interface";
    if !require(test, root("network namespaces"))
        || !require(
            test,
            program("dnsmasq", "scripts/test installs dnsmasq-base"),
        )
    {
        return;
    }
    lazarus_agent::logring::LogRing::install(true, log::LevelFilter::Info);
    let ns = Netns::create(&format!("lz-dhcp-{}", std::process::id())).unwrap();
    let ip = |args: &[&str]| {
        let out = ns.command("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    ip(&[
        "link", "add", "dhcps", "type", "veth", "peer", "name", "dhcpc",
    ]);
    ip(&["addr", "add", "10.78.0.1/24", "dev", "dhcps"]);
    ip(&["link", "set", "dhcps", "up"]);
    ip(&["link", "set", "dhcpc", "address", "52:54:00:4c:5a:42"]);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ns
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--port=0",
            "--interface=dhcps",
            "--bind-interfaces",
            "--dhcp-range=10.78.0.50,10.78.0.60,255.255.255.0,1h",
        ])
        .arg("--dhcp-option=option:router,10.78.0.1")
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("leases").display()
        ))
        .arg("--log-dhcp")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("dnsmasq.log")).unwrap())
        .spawn()
        .expect("dnsmasq");
    std::thread::sleep(Duration::from_millis(500));

    let result = ns
        .enter(|| -> Result<(lazarus_agent::dhcp::Lease, bool), String> {
            // The interface index, from the kernel (sysfs shows the host's namespace here).
            let iface_index = rustix::net::netdevice::name_to_index(
                &rustix::net::socket(
                    rustix::net::AddressFamily::INET,
                    rustix::net::SocketType::DGRAM,
                    None,
                )
                .map_err(|e| e.to_string())?,
                "dhcpc",
            )
            .map_err(|e| e.to_string())?;
            let iface = lazarus_agent::network::Interface {
                name: "dhcpc".into(),
                index: iface_index,
                mac: Some(lazarus_proto::MacAddr([0x52, 0x54, 0, 0x4c, 0x5a, 0x42])),
            };
            let mut nl = lazarus_agent::sys::netlink::Netlink::open().map_err(|e| e.to_string())?;
            nl.set_link_up(iface.index).map_err(|e| e.to_string())?;
            let lease = lazarus_agent::dhcp::acquire(
                "dhcpc",
                lazarus_proto::MacAddr([0x52, 0x54, 0, 0x4c, 0x5a, 0x42]),
                Duration::from_secs(30),
            )
            .map_err(|e| e.to_string())?;
            lazarus_agent::network::set_address(
                &iface,
                lease.address.into(),
                lease.prefix_len,
                lease.router.map(Into::into),
            )
            .map_err(|e| e.to_string())?;
            // The address is really on the interface: a socket can bind to it.
            let bound = TcpListener::bind(SocketAddr::from((lease.address, 0))).is_ok();
            Ok((lease, bound))
        })
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let log = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
    let (lease, bound) = result.unwrap_or_else(|e| panic!("{e}\ndnsmasq:\n{log}"));
    let last = lease.address.octets()[3];
    assert!(
        lease.address.octets()[..3] == [10, 78, 0] && (50..=60).contains(&last),
        "{lease:?}"
    );
    assert_eq!(
        (lease.prefix_len, lease.router),
        (24, Some(Ipv4Addr::new(10, 78, 0, 1)))
    );
    assert!(bound, "the leased address is not on the interface");
}
