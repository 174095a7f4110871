//! The two ways a recovery reaches its image: host mode (the host's network, a local directory)
//! and rescue mode (the plan's address with netlink, the export over NFS).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lazarus_proto::{NetworkPlan, NfsSource, NfsVersion};

use super::Source;
use crate::error::{AgentError, SourceError};
use crate::network::{self, Interface};
use crate::root::Root;
use crate::sys;

/// Host mode: the host keeps its network; the plan's export is this local directory.
#[derive(Debug, Clone)]
pub struct HostSource {
    pub export_dir: PathBuf,
}

impl Source for HostSource {
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError> {
        log::info!(
            "host mode: keeping the host's network (plan asks for {}/{})",
            net.address,
            net.prefix_len
        );
        Ok(())
    }

    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError> {
        log::info!(
            "host mode: export {}:{} is the local directory {}",
            nfs.server,
            nfs.export,
            self.export_dir.display()
        );
        if !self.export_dir.is_dir() {
            return Err(SourceError::NotADirectory(self.export_dir.clone()).into());
        }
        Ok(self.export_dir.clone())
    }

    fn unmount_source(&self, _dir: &Path) {}
}

/// Rescue mode: the plan's address goes on the bootstrap interface (or the one the plan names),
/// the export is mounted over NFS under `mount_dir`.
#[derive(Debug, Clone)]
pub struct RescueSource {
    pub root: Root,
    pub iface: Interface,
    pub mount_dir: PathBuf,
}

impl Source for RescueSource {
    fn configure_network(&self, net: &NetworkPlan) -> Result<(), AgentError> {
        let iface = match &net.interface {
            Some(want) => network::choose(&self.root, Some(want), Duration::from_secs(10))?,
            None => self.iface.clone(),
        };
        network::bring_up(&self.root, &iface, Duration::from_secs(30))?;
        network::set_address(&iface, net.address, net.prefix_len, net.gateway)?;
        Ok(())
    }

    fn mount_source(&self, nfs: &NfsSource) -> Result<PathBuf, AgentError> {
        Ok(mount_nfs(&self.mount_dir.join("source"), nfs)?)
    }

    fn unmount_source(&self, dir: &Path) {
        if let Err(e) = sys::unmount(dir, true) {
            log::warn!("unmounting {}: {e}", dir.display());
        }
    }
}

/// Mounts an NFS export read-only with mount(2): v4.x as `nfs4`, v3 as `nfs`, soft with
/// timeouts so a vanished server fails the plan instead of hanging it.
pub fn mount_nfs(target: &Path, nfs: &NfsSource) -> Result<PathBuf, SourceError> {
    fs::create_dir_all(target).map_err(|e| SourceError::MountPoint(target.to_owned(), e))?;
    let (fstype, vers) = match nfs.version {
        NfsVersion::V3 => ("nfs", "3"),
        NfsVersion::V4 => ("nfs4", "4.0"),
        NfsVersion::V4_1 => ("nfs4", "4.1"),
        NfsVersion::V4_2 => ("nfs4", "4.2"),
    };
    let mut data = format!("vers={vers},addr={},soft,timeo=600,retrans=3", nfs.server);
    if nfs.version == NfsVersion::V3 {
        data.push_str(",nolock,proto=tcp,mountproto=tcp");
    }
    if !nfs.options.is_empty() {
        data.push(',');
        data.push_str(&nfs.options);
    }
    let server = match nfs.server {
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    let export = PathBuf::from(format!("{server}:{}", nfs.export));
    sys::mount_fs(&export, target, fstype, true, &data).map_err(|source| SourceError::Mount {
        export: export.clone(),
        target: target.to_owned(),
        fstype,
        data: data.clone(),
        source,
    })?;
    log::info!(
        "mounted {} (NFS v{vers}) at {}",
        export.display(),
        target.display()
    );
    Ok(target.to_owned())
}
