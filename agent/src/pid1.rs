//! PID 1 mode: the agent as `/init` of the rescue initramfs. It never returns: a fatal error or a
//! panic is logged (console and `/dev/kmsg`) and the agent keeps serving; only an accepted
//! `Reboot` ends it, with sync(2) and reboot(2).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lazarus_proto::BootId;

use crate::config::{BootConfig, StaticIp};
use crate::dhcp::DhcpError;
use crate::kmod::ModuleDb;
use crate::logring::LogRing;
use crate::network::NetworkError;
use crate::platform::RescueMachine;
use crate::root::Root;
use crate::service::Agent;
use crate::{announce, dhcp, network, server, sys};
use lazarus_node::agent_config::{AgentConfig, CONFIG_PATH, KEY_PATH, PUBLIC_KEY_PATH};
use lazarus_node::keyfile::{self, KeyFileError};

/// Why one boot attempt could not reach serving (PID 1 logs it and tries again).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("keys: {0} (the base image holds the controller's public key; the agent key comes with the node's or the repair's part)")]
    Key(#[from] KeyFileError),
    #[error("bootstrap network: {0}")]
    Network(#[from] NetworkError),
    #[error("{0} has no MAC address for DHCP")]
    NoMac(String),
    #[error("bootstrap address: {0}")]
    Dhcp(#[from] DhcpError),
    #[error("drawing a boot id: {0}")]
    Random(std::io::Error),
    #[error("listening on port {0}: {1}")]
    Listen(u16, std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Runs as PID 1. Never returns.
pub fn run() -> ! {
    // /proc must be mounted before the kernel command line can be read, /dev before the console
    // can be opened; the kernel hands init nothing but its initramfs.
    let mounted = early_mounts();
    let logs = LogRing::install(true, log::LevelFilter::Info);
    if let Ok(kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        logs.log_to_kmsg(kmsg);
    }
    for (what, err) in mounted {
        log::error!("mounting {what}: {err}");
    }
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));
    std::thread::spawn(reap_children);
    log::info!(
        "lazarus-agent {} starting as PID 1",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        match std::panic::catch_unwind(|| boot_and_serve(logs)) {
            Ok(Ok(())) => {
                log::info!("rebooting");
                let err = sys::reboot();
                log::error!("reboot(2) failed: {err}");
            }
            Ok(Err(e)) => log::error!("{e}; retrying in 10 s"),
            Err(_) => log::error!("the agent panicked; retrying in 10 s"),
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// mount /proc, /sys, /dev (devtmpfs), /run (tmpfs), and make /dev/console our stdio.
fn early_mounts() -> Vec<(&'static str, rustix::io::Errno)> {
    let mut errors = Vec::new();
    for (src, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = sys::mount_kernel_fs(Path::new(src), Path::new(target), fstype) {
            if e != rustix::io::Errno::BUSY {
                errors.push((target, e));
            }
        }
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = sys::dup_stdio(console.as_fd());
    }
    errors
}

/// Reaps every child that the kernel re-parents to PID 1.
fn reap_children() {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some(_)) => {}
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Boots (modules, network, flag) and serves until a `Reboot` is accepted.
fn boot_and_serve(logs: &'static LogRing) -> Result<(), BootError> {
    let root = Root::default();
    let cmdline = std::fs::read_to_string(root.proc.join("cmdline")).unwrap_or_default();
    let boot = BootConfig::parse(&cmdline).unwrap_or_else(|e| {
        log::error!("kernel command line: {e}");
        BootConfig::default()
    });
    let config = match std::fs::read_to_string(CONFIG_PATH) {
        Ok(text) => AgentConfig::parse(&text).unwrap_or_else(|e| {
            log::error!("{CONFIG_PATH}: {e}; using defaults");
            AgentConfig::default()
        }),
        Err(_) => AgentConfig::default(),
    };
    let keys = crate::server::Keys {
        controller: keyfile::load_public(Path::new(PUBLIC_KEY_PATH))?,
        agent: keyfile::load(Path::new(KEY_PATH))?,
    };

    load_modules(&root, &config);

    let timeout = Duration::from_secs(config.link_timeout_secs);
    let iface = network::choose(&root, boot.iface.as_deref(), timeout)?;
    network::bring_up(&root, &iface, timeout)?;
    let ip = match boot.ip.clone() {
        Some(ip) => ip,
        None => {
            let mac = iface
                .mac
                .ok_or_else(|| BootError::NoMac(iface.name.clone()))?;
            let lease = dhcp::acquire(
                &iface.name,
                mac,
                Duration::from_secs(config.dhcp_timeout_secs),
            )?;
            StaticIp {
                address: lease.address.into(),
                prefix_len: lease.prefix_len,
                gateway: lease.router.map(Into::into),
            }
        }
    };
    network::set_address(&iface, ip.address, ip.prefix_len, ip.gateway)?;

    // The flag itself is looked for when the agent starts (`Storage::boot_flag_device`): on the
    // disk or partition the command line names, else on every disk that may be written.
    let machine = RescueMachine::rescue(
        root.clone(),
        iface.clone(),
        PathBuf::from("/run/lazarus"),
        boot.flag.as_ref().map(PathBuf::from),
        boot.media.clone(),
    );
    let mut id = [0u8; 16];
    lazarus_node::random::fill(&mut id).map_err(BootError::Random)?;
    let boot_id = BootId(id);
    log::info!("boot {boot_id}");
    let agent = Agent::start(boot_id, Arc::new(machine), Some(logs));
    let listener = TcpListener::bind(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        config.listen_port,
    )))
    .map_err(|e| BootError::Listen(config.listen_port, e))?;
    let uptime = std::fs::read_to_string(root.proc.join("uptime")).unwrap_or_default();
    log::info!(
        "ready, {} s after the kernel started",
        uptime.split_whitespace().next().unwrap_or("?")
    );
    if let Some(controller) = boot.controller {
        announce::spawn_announcer(controller, &keys, &root, &agent, ip.address, None);
    }
    server::serve(listener, agent, keys).map_err(BootError::Serve)?;
    Ok(())
}

/// Loads the always-load modules, then coldplugs until no new module appears.
pub fn load_modules(root: &Root, config: &AgentConfig) {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let db = ModuleDb::open(&Path::new("/lib/modules").join(&release));
    if db.is_empty() {
        log::info!("no modules in the initramfs for kernel {release}");
        return;
    }
    let mut loaded = BTreeSet::new();
    for name in &config.modules.always {
        if let Err(e) = db.load(name, &mut loaded) {
            log::warn!("{e}");
        }
    }
    for _ in 0..8 {
        if db.coldplug(&root.sys, &mut loaded) == 0 {
            break;
        }
        // New buses (virtio, PCI bridges) create their devices asynchronously.
        std::thread::sleep(Duration::from_millis(300));
    }
    log::info!("{} modules loaded", loaded.len());
}
