//! A virtual BMC the way the anchors' CI has one: libvirt domains (QEMU under TCG, OVMF) behind
//! sushy-tools' Redfish emulator with its libvirt driver, all inside the lab's network namespace.
//!
//! libvirtd runs in a private mount namespace of its own, with its state under the run folder
//! (bind-mounted over `/run/libvirt` and `/var/lib/libvirt`, so it never meets a host libvirtd)
//! and `/dev/kvm` masked by an empty file of mode 0: KVM does not work on these machines, and a
//! `/dev/kvm` that QEMU's user could open makes libvirt re-probe QEMU about 19 times on every call
//! (35 s per define; masked, 0.02 s). Its `qemu.conf` sets `namespaces = [ ]` (no per-domain mount
//! namespace in an unprivileged-looking container), in a private copy of `/etc/libvirt`, so no
//! domain or pool it defines is left in the host's. Clients reach it through the socket path
//! (`qemu+unix:///system?socket=…`). Domains run as `libvirt-qemu`, which libvirt gives their
//! disk files to.
//!
//! Its pid files live in the run folder too, so two labs (a test and the demo) run side by side.
//! Everything is stopped by pid: domains are destroyed, then libvirtd, virtlogd and sushy.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{Netns, HOST_IP, OVMF_CODE, OVMF_VARS};

/// The Redfish emulator's port inside the namespace.
pub const REDFISH_PORT: u16 = 8000;

/// libvirtd, virtlogd and sushy-emulator in a lab namespace.
pub struct VirtLab {
    pub dir: PathBuf,
    /// `qemu+unix:///system?socket=…`
    pub uri: String,
    /// `http://HOST_IP:8000`
    pub redfish: String,
    libvirtd: Child,
    sushy: Option<Child>,
    domains: Vec<String>,
}

/// Everything a Redfish test with Debian workers needs: the QEMU lab, the Debian worker's
/// builder, libvirt with sushy-tools, and the rescue-ISO tools.
pub fn redfish_lab_available() -> Result<(), String> {
    crate::available()?;
    crate::debian::available()?;
    available()?;
    lazarus_initramfs::iso::check_tools().map_err(|e| e.to_string())
}

/// What the lab needs installed, or why not.
pub fn available() -> Result<(), String> {
    for (tool, package) in [
        ("libvirtd", "libvirt-daemon-system"),
        ("virtlogd", "libvirt-daemon-system"),
        ("virsh", "libvirt-clients"),
        ("sushy-emulator", "sushy-tools (pip)"),
        ("unshare", "util-linux"),
    ] {
        lazarus_testkit::program(tool, &format!("scripts/test installs {package}"))?;
    }
    if !Path::new("/usr/lib/python3/dist-packages/libvirt.py").exists() {
        return Err("python3-libvirt is not installed (scripts/test installs it)".into());
    }
    Ok(())
}

impl VirtLab {
    /// Starts libvirtd (and virtlogd) in `ns` with its state under `dir`, and a `default` storage
    /// pool (sushy puts inserted media there).
    pub fn start(ns: &Netns, dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join("libvirt");
        for d in ["run", "lib", "cache", "log", "pool"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let masked = dir.join("no-kvm");
        std::fs::write(&masked, "")?;
        std::fs::set_permissions(&masked, std::os::unix::fs::PermissionsExt::from_mode(0o000))?;
        // A private copy of /etc/libvirt: domains and pools defined here never land in the host's.
        let etc = dir.join("etc");
        let _ = std::fs::remove_dir_all(&etc);
        let out = Command::new("cp")
            .arg("-a")
            .arg("/etc/libvirt")
            .arg(&etc)
            .output()?;
        if !out.status.success() {
            bail!(
                "copying /etc/libvirt: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for defined in ["qemu", "storage"] {
            let _ = std::fs::remove_dir_all(etc.join(defined));
            std::fs::create_dir_all(etc.join(defined))?;
        }
        let host_conf = std::fs::read_to_string(etc.join("qemu.conf")).unwrap_or_default();
        let conf: String = host_conf
            .lines()
            .filter(|l| !l.trim_start().starts_with("namespaces"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + "namespaces = [ ]\n";
        std::fs::write(etc.join("qemu.conf"), conf)?;
        std::fs::create_dir_all("/run/libvirt")?;
        let script = format!(
            r#"set -e
mount --bind '{d}/run' /run/libvirt
mount --bind '{d}/lib' /var/lib/libvirt
mount --bind '{d}/cache' /var/cache/libvirt
mount --bind '{d}/log' /var/log/libvirt
mount --bind '{d}/no-kvm' /dev/kvm
mount --bind '{d}/etc' /etc/libvirt
virtlogd --pid-file '{d}/virtlogd.pid' &
exec libvirtd --pid-file '{d}/libvirtd.pid'
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("start.sh"), script)?;
        for d in ["/var/cache/libvirt", "/var/log/libvirt", "/var/lib/libvirt"] {
            std::fs::create_dir_all(d)?;
        }
        let libvirtd = ns
            .command("unshare")
            .args(["-m", "--propagation", "private", "sh"])
            .arg(dir.join("start.sh"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.log"))?)
            .spawn()
            .context("starting libvirtd")?;
        let uri = format!(
            "qemu+unix:///system?socket={}",
            dir.join("run/libvirt-sock").display()
        );
        let mut lab = Self {
            dir: dir.clone(),
            uri,
            redfish: format!("http://{HOST_IP}:{REDFISH_PORT}"),
            libvirtd,
            sushy: None,
            domains: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while lab.virsh(&["list"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "libvirtd did not answer on {}; see {}",
                    lab.uri,
                    dir.join("libvirtd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let pool = dir.join("pool");
        lab.virsh_path(&["pool-define-as", "default", "dir", "--target"], &pool)?;
        lab.virsh(&["pool-start", "default"])?;
        lab.start_sushy(ns)?;
        Ok(lab)
    }

    fn start_sushy(&mut self, ns: &Netns) -> anyhow::Result<()> {
        let conf = self.dir.join("sushy.conf");
        std::fs::write(
            &conf,
            format!(
                "SUSHY_EMULATOR_LISTEN_IP = '{HOST_IP}'\n\
                 SUSHY_EMULATOR_LISTEN_PORT = {REDFISH_PORT}\n\
                 SUSHY_EMULATOR_LIBVIRT_URI = '{}'\n\
                 SUSHY_EMULATOR_BOOT_LOADER_MAP = {{'UEFI': {{'x86_64': '{OVMF_CODE}'}}, \
                 'Legacy': {{'x86_64': '/usr/share/seabios/bios-256k.bin'}}}}\n\
                 SUSHY_EMULATOR_SECURE_BOOT_DISABLED_NVRAM = '{OVMF_VARS}'\n\
                 SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n",
                self.uri
            ),
        )?;
        // The Debian bindings of libvirt match the image's Python (cp311).
        let sushy = ns
            .command("sushy-emulator")
            .arg("--config")
            .arg(&conf)
            .env("PYTHONPATH", "/usr/lib/python3/dist-packages")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("sushy.log"))?)
            .spawn()
            .context("starting sushy-emulator")?;
        self.sushy = Some(sushy);
        let url = format!("{}/redfish/v1/Systems", self.redfish);
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::http_get(
            ns,
            &format!("{HOST_IP}:{REDFISH_PORT}"),
            "/redfish/v1/Systems",
        )
        .is_none()
        {
            if Instant::now() > deadline {
                bail!(
                    "sushy-emulator did not answer {url}; see {}",
                    self.dir.join("sushy.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    fn virsh_path(&self, args: &[&str], path: &Path) -> anyhow::Result<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push(path.display().to_string());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.virsh(&refs)
    }

    /// `virsh -c URI ARGS…`: its output, or the error it printed.
    pub fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running virsh")?;
        if !out.status.success() {
            bail!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Defines (does not start) a UEFI domain booting from `disk`, on the existing tap `tap`,
    /// its serial console logged to `serial`.
    pub fn define(&mut self, node: &DomainSpec) -> anyhow::Result<()> {
        let xml = node.xml(&self.dir);
        let file = self.dir.join(format!("{}.xml", node.name));
        std::fs::write(&file, xml)?;
        self.virsh_path(&["define"], &file)?;
        self.domains.push(node.name.to_string());
        Ok(())
    }

    /// The Redfish path of a domain's system: sushy names systems by domain UUID (a name in the
    /// path is answered with a redirect, which the provider does not follow, as with any BMC).
    pub fn system(&self, name: &str) -> anyhow::Result<String> {
        Ok(format!(
            "/redfish/v1/Systems/{}",
            self.virsh(&["domuuid", name])?
        ))
    }
}

impl Drop for VirtLab {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = self.virsh(&["destroy", d]);
        }
        // QEMU daemonizes away from libvirtd's group: a domain destroy missed leaves its pid file.
        if let Ok(dir) = std::fs::read_dir(self.dir.join("run/qemu")) {
            for e in dir.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Ok(pid) = std::fs::read_to_string(e.path()) {
                        if let Ok(pid) = pid.trim().parse::<u32>() {
                            lazarus_testkit::kill_pid(pid);
                        }
                    }
                }
            }
        }
        if let Some(mut s) = self.sushy.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        lazarus_testkit::kill_group(self.libvirtd.id());
        let _ = self.libvirtd.kill();
        let _ = self.libvirtd.wait();
    }
}

/// One node as a libvirt domain.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub disk: &'a Path,
    pub disk_serial: &'a str,
    pub mac: &'a str,
    pub tap: &'a str,
    pub memory_mib: u32,
    pub serial_log: &'a Path,
}

impl DomainSpec<'_> {
    fn xml(&self, dir: &Path) -> String {
        format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>{code}</loader>
    <nvram template='{vars}'>{dir}/{name}-vars.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <serial>{serial}</serial>
    </disk>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}' managed='no'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='{log}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{log}' append='on'/><target type='serial' port='0'/></console>
  </devices>
</domain>
"#,
            name = self.name,
            mem = self.memory_mib,
            code = OVMF_CODE,
            vars = OVMF_VARS,
            dir = dir.display(),
            disk = self.disk.display(),
            serial = self.disk_serial,
            mac = self.mac,
            tap = self.tap,
            log = self.serial_log.display(),
        )
    }
}
