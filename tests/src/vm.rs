//! QEMU guests of the lab: the rescue kernel loaded directly, a node's disk through real firmware
//! and its boot loader, or rescue media as a CD or USB disk.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::qga::Qga;
use crate::Netns;

/// A QEMU guest booting the rescue initramfs.
pub struct Vm {
    child: Child,
    pub serial: PathBuf,
    /// The guest agent's socket (disk boots).
    qga: PathBuf,
    pub command_line: String,
    pub started: Instant,
}

/// How to boot a guest.
pub struct VmSpec<'a> {
    pub name: &'a str,
    /// The node's disk (a virtio disk with serial `disk_serial`), if it has one.
    pub disk: Option<&'a Path>,
    pub disk_serial: &'a str,
    pub mac: &'a str,
    pub boot: VmBoot<'a>,
    /// The UEFI variable store (NVRAM) to use, by name: a machine's across its boots. `None`: the
    /// guest's own (`name`).
    pub nvram: Option<&'a str>,
}

/// What a guest boots.
pub enum VmBoot<'a> {
    /// A kernel and initramfs loaded by QEMU itself, with this command line.
    Direct {
        vmlinuz: &'a Path,
        initramfs: &'a Path,
        append: String,
    },
    /// The node's own disk (`VmSpec::disk`) through real firmware and its bootloader.
    Disk { firmware: Firmware },
    /// A rescue medium through real firmware, as a CD or as a (USB) disk.
    Media {
        image: &'a Path,
        firmware: Firmware,
        as_disk: bool,
    },
}

/// The guest's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF (EDK II), UEFI without secure boot.
    Uefi,
    /// SeaBIOS, legacy BIOS (QEMU's default).
    Bios,
}

/// The pflash drives of OVMF, with a fresh copy of the variable store per guest; none for BIOS.
fn firmware_args(
    firmware: Firmware,
    dir: &Path,
    name: &str,
    args: &mut Vec<String>,
) -> anyhow::Result<()> {
    if firmware == Firmware::Uefi {
        let vars = dir.join(format!("{name}-vars.fd"));
        if !vars.exists() {
            std::fs::copy(OVMF_VARS, &vars).context("copying the OVMF variables")?;
        }
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ]);
    }
    Ok(())
}

fn qga_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-qga.sock"))
}

/// OVMF's code and variable-store template (Debian's `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Vm {
    pub fn boot(ns: &Netns, dir: &Path, spec: &VmSpec) -> anyhow::Result<Self> {
        let serial = dir.join(format!("{}-serial.log", spec.name));
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["-serial".into(), format!("file:{}", serial.display())]);
        match &spec.boot {
            VmBoot::Direct {
                vmlinuz,
                initramfs,
                append,
            } => args.extend([
                "-kernel".into(),
                vmlinuz.display().to_string(),
                "-initrd".into(),
                initramfs.display().to_string(),
                "-append".into(),
                format!("console=ttyS0 panic=-1 quiet {append}"),
            ]),
            VmBoot::Disk { firmware } => {
                firmware_args(*firmware, dir, spec.nvram.unwrap_or(spec.name), &mut args)?;
                // A channel to the QEMU guest agent (the Debian worker runs it): the lab's way
                // to run a command on a node, where a data centre would use ssh.
                args.extend([
                    "-device".into(),
                    "virtio-serial-pci".into(),
                    "-chardev".into(),
                    format!(
                        "socket,id=qga0,path={},server=on,wait=off",
                        qga_socket(dir, spec.name).display()
                    ),
                    "-device".into(),
                    "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
                ]);
            }
            VmBoot::Media {
                image,
                firmware,
                as_disk,
            } => {
                firmware_args(*firmware, dir, spec.nvram.unwrap_or(spec.name), &mut args)?;
                args.extend(if *as_disk {
                    [
                        "-drive".into(),
                        format!("file={},format=raw,if=virtio,readonly=on", image.display()),
                    ]
                } else {
                    ["-cdrom".into(), image.display().to_string()]
                });
            }
        }
        args.extend([
            "-netdev".into(),
            "tap,id=n0,ifname=tap0,script=no,downscript=no".into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
        ]);
        if let Some(disk) = spec.disk {
            args.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=none,id=d0,cache=writeback",
                    disk.display()
                ),
                "-device".into(),
                format!("virtio-blk-pci,drive=d0,serial={}", spec.disk_serial),
            ]);
        }
        let command_line = format!(
            "ip netns exec {} qemu-system-x86_64 {}",
            ns.name,
            args.iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        eprintln!("lab: {command_line}");
        let child = ns
            .command("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Self {
            child,
            serial,
            qga: qga_socket(dir, spec.name),
            command_line,
            started: Instant::now(),
        })
    }

    /// Runs `argv` in the guest through the QEMU guest agent and waits for it: its exit code
    /// and output (stdout, then stderr). Waits up to `timeout` for the agent to answer.
    pub fn guest_exec(&self, argv: &[&str], timeout: Duration) -> anyhow::Result<(i64, String)> {
        let mut qga = Qga::connect(&self.qga, Instant::now() + timeout)?;
        let pid = qga.exec(argv, true)?;
        loop {
            let status = qga.call(
                "guest-exec-status",
                serde_json::json!({ "pid": pid }),
                Instant::now() + Duration::from_secs(10),
            )?;
            if status["exited"].as_bool() == Some(true) {
                let text = |key: &str| -> String {
                    use base64::Engine;
                    let data = status[key].as_str().unwrap_or("");
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap_or_default();
                    String::from_utf8_lossy(&bytes).into_owned()
                };
                let code = status["exitcode"].as_i64().unwrap_or(-1);
                return Ok((code, format!("{}{}", text("out-data"), text("err-data"))));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `argv` in the guest through the QEMU guest agent without waiting (`systemctl
    /// reboot`, which takes the agent down with it).
    pub fn guest_spawn(&self, argv: &[&str], timeout: Duration) -> anyhow::Result<()> {
        Qga::connect(&self.qga, Instant::now() + timeout)?.exec(argv, false)?;
        Ok(())
    }

    /// Waits until `check` holds, at most `timeout`, then says how long after QEMU started it
    /// did; past `timeout`, panics with the command line and the serial log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what} not seen within {timeout:?}\n{}\n{}",
                self.command_line,
                self.serial_log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "lab: {what} {:.1} s after QEMU started",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Pulls the plug: SIGKILL, then reaps QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn serial_log(&self) -> String {
        // Firmware writes bytes that are not UTF-8 (OVMF's screen control) before the kernel.
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits for the guest to power off (a reboot ends QEMU with `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
