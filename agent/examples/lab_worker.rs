//! The lab's "worker system": what a restored node boots into in the QEMU lab. As `/init` of a
//! small initramfs it mounts the kernel filesystems, loads drivers, takes its address from
//! `lazarus.ip=`, mounts its own disk's root filesystem (`/dev/vda1`) and, when that holds the
//! known-good system (`/etc/os-release` says `lazarus-worker`), answers health checks on TCP port
//! 8080. A node whose disk is broken never becomes healthy. Not part of Lazarus itself: a stand-in
//! for the operating system a real node would boot, used only by the end-to-end tests.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use lazarus_agent::config::BootConfig;
use lazarus_agent::logring::LogRing;
use lazarus_agent::root::Root;
use lazarus_agent::{network, pid1, sys};
use lazarus_node::agent_config::AgentConfig;

fn main() {
    let _ = pid1::early_mounts();
    LogRing::install(true, log::LevelFilter::Info);
    LogRing::set_phase("worker");
    let root = Root::default();
    pid1::load_modules(&root, &AgentConfig::default());
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let boot = BootConfig::parse(&cmdline).unwrap_or_default();
    let result = (|| -> anyhow::Result<TcpListener> {
        use anyhow::Context;
        let iface = network::choose(&root, None, Duration::from_secs(30))?;
        network::bring_up(&root, &iface, Duration::from_secs(30))?;
        let ip = boot.ip.context("no lazarus.ip=")?;
        network::set_address(&iface, ip.address, ip.prefix_len, ip.gateway)?;
        std::fs::create_dir_all("/mnt/root").context("creating /mnt/root")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !Path::new("/dev/vda1").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        sys::mount_fs(
            Path::new("/dev/vda1"),
            Path::new("/mnt/root"),
            "ext4",
            true,
            "",
        )
        .context("mounting /dev/vda1")?;
        let os = std::fs::read_to_string("/mnt/root/etc/os-release").context("os-release")?;
        if !os.contains("lazarus-worker") {
            anyhow::bail!("not the known-good system: {os:?}");
        }
        TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080))).context("binding :8080")
    })();
    match result {
        Ok(listener) => {
            log::info!("worker system up from its own disk; healthy on :8080");
            for conn in listener.incoming() {
                drop(conn);
            }
        }
        Err(e) => log::error!("worker system is broken: {e:#}"),
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
