//! The lab's real worker: a Debian 12 system disk built without a loop device, booted by real
//! firmware (OVMF) through a real bootloader (systemd-boot) into systemd.
//!
//! - The root tree comes from `mmdebstrap` (Debian's packages through apt) and is cached under
//!   `target/lab/debian-<key>/`, the key being a digest of everything that shapes it (suite,
//!   packages, path excludes, hooks), so a second build costs nothing and a changed input
//!   rebuilds it.
//! - The golden image adds the node's services to a hard-linked copy of that tree (files are
//!   replaced, never written in place, so the cache stays intact): a business service serving
//!   `/srv/www` on port 8080 (its health check), a unit that reads the flag partition at boot and
//!   says whether the node came back from a Lazarus repair (then it is a standby), and a timer
//!   running `lazarus backup` of the business files to the NFS share.
//! - The disk: GPT with an EFI system partition (systemd-boot, the kernel and its initrd), an
//!   ext4 root (`mkfs.ext4 -d`) and the `lazarus-flag` partition near the end of the disk, past
//!   the image, assembled with `sfdisk` and `dd conv=notrunc,sparse` on plain files.
//!
//! What makes one node differ from another is not in the image: its name (`/etc/lazarus/node`)
//! is a business file, restored from its backup after a repair; its address comes from DHCP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sha2::Digest;

use crate::disk::MIB;

/// The Debian release.
pub const SUITE: &str = "bookworm";
/// The packages on top of `--variant=apt`.
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
    "systemd-boot-efi",
    "e2fsprogs",
    "kmod",
    "busybox",
    "nfs-common",
    "iproute2",
    "qemu-guest-agent",
];
/// Paths dpkg leaves out: documentation, and the drivers of hardware a lab VM does not have
/// (they are most of the kernel package). Virtio, block, SCSI/ATA, NVMe and the filesystems stay.
pub const PATH_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/lib/modules/*/kernel/sound/*",
    "path-exclude=/lib/modules/*/kernel/drivers/*",
    "path-include=/lib/modules/*/kernel/drivers/virtio/*",
    "path-include=/lib/modules/*/kernel/drivers/block/*",
    "path-include=/lib/modules/*/kernel/drivers/scsi/*",
    "path-include=/lib/modules/*/kernel/drivers/ata/*",
    "path-include=/lib/modules/*/kernel/drivers/nvme/*",
    "path-include=/lib/modules/*/kernel/drivers/net/virtio_net.ko",
    "path-include=/lib/modules/*/kernel/drivers/net/net_failover.ko",
    "path-include=/lib/modules/*/kernel/drivers/char/*",
    "path-include=/lib/modules/*/kernel/drivers/input/*",
    "path-include=/lib/modules/*/kernel/drivers/md/*",
];
/// Run inside the tree after the packages: a generic host, DHCP on every wired interface.
const CUSTOMIZE: &str = r#"set -e
echo lazarus-worker > "$1/etc/hostname"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' > "$1/etc/systemd/network/20-wired.network"
chroot "$1" systemctl enable systemd-networkd.service
chroot "$1" passwd -d root
"#;

/// Sizes on the 1 GiB lab disk: the ESP from 1 MiB, the root after it; the image covers both.
pub const DISK_MIB: u64 = 1024;
pub const ESP_MIB: u64 = 96;
pub const ROOT_MIB: u64 = 640;
/// The system image: everything up to the end of the root partition.
pub const IMAGE_MIB: u64 = 1 + ESP_MIB + ROOT_MIB;
/// The flag partition (1 MiB) lies 2 MiB before the end of the disk, past the image.
pub const FLAG_OFFSET: u64 = (DISK_MIB - 2) * MIB;
/// The root filesystem's UUID: fixed, so the bootloader entry names it.
pub const ROOT_UUID: &str = "4c5a5253-0001-4000-8000-000000000001";
/// The port of the business service (and health check).
pub const SERVICE_PORT: u16 = 8080;

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The cache key of the tree: a digest of every input of `mmdebstrap`.
pub fn tree_key() -> String {
    let mut h = sha2::Sha256::new();
    for part in [
        SUITE,
        &PACKAGES.join(","),
        &PATH_EXCLUDES.join("\n"),
        CUSTOMIZE,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    lazarus_proto::hex::encode(&d[..8])
}

/// The Debian tree, built once into `lab/debian-<key>/tree` (about 70 s and 120 MB of packages
/// the first time).
pub fn tree(lab: &Path) -> anyhow::Result<PathBuf> {
    let dir = lab.join(format!("debian-{}", tree_key()));
    let tree = dir.join("tree");
    if tree.join("etc/os-release").exists() {
        return Ok(tree);
    }
    std::fs::create_dir_all(&dir)?;
    let partial = dir.join(format!("tree.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=apt",
        "--mode=root",
        "--format=directory",
        "--quiet",
    ])
    .arg(format!("--include={}", PACKAGES.join(",")));
    for p in PATH_EXCLUDES {
        cmd.arg(format!("--dpkgopt={p}"));
    }
    // mmdebstrap runs the hook as `sh -c HOOK exec TREE`, so `$1` is the tree.
    cmd.arg(format!("--customize-hook={CUSTOMIZE}"))
        .arg(SUITE)
        .arg(&partial);
    run(&mut cmd).context("building the Debian worker tree with mmdebstrap")?;
    std::fs::rename(&partial, &tree)?;
    Ok(tree)
}

/// The files that make the golden image a Lazarus worker (paths relative to the root).
pub fn worker_files(backup_to: &str) -> Vec<(&'static str, String, u32)> {
    let role = r#"#!/bin/sh
# lazarus-role: at boot, read this disk's flag partition; RECOVERED means Lazarus rebuilt this
# node, which then comes back as a standby.
mkdir -p /srv/www
json=$(/usr/local/bin/lazarus flag show --json /dev/disk/by-partlabel/lazarus-flag)
state=$(echo "$json" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
case "$state" in
    recovered) echo standby > /srv/www/lazarus-role ;;
    *) echo worker > /srv/www/lazarus-role ;;
esac
echo "lazarus-role: flag ${state:-unreadable}, role $(cat /srv/www/lazarus-role)"
"#;
    let backup = format!(
        r#"#!/bin/sh
# lazarus-backup: the node's business files to the share, named for this node, signed with its
# backup key (/etc/lazarus/backup.key, itself among the files backed up).
set -e
node=$(cat /etc/lazarus/node)
exec /usr/local/bin/lazarus backup --node "$node" --to {backup_to} --root / srv/www etc/lazarus
"#
    );
    vec![
        ("usr/local/sbin/lazarus-role", role.to_string(), 0o755),
        ("usr/local/sbin/lazarus-backup", backup, 0o755),
        (
            "etc/systemd/system/lazarus-role.service",
            "[Unit]\nDescription=Lazarus: was this node rebuilt?\nBefore=business.service\n\
             Wants=dev-disk-by\\x2dpartlabel-lazarus\\x2dflag.device\n\
             After=local-fs.target dev-disk-by\\x2dpartlabel-lazarus\\x2dflag.device\n\n\
             [Service]\nType=oneshot\nExecStart=/usr/local/sbin/lazarus-role\n\
             RemainAfterExit=yes\nStandardOutput=journal+console\nStandardError=journal+console\n\n\
             [Install]\nWantedBy=multi-user.target\n"
                .into(),
            0o644,
        ),
        (
            "etc/systemd/system/business.service",
            format!(
                "[Unit]\nDescription=The business service: files from /srv/www\n\
                 After=lazarus-role.service\n\n[Service]\n\
                 ExecStart=/bin/busybox httpd -f -p {SERVICE_PORT} -h /srv/www\nRestart=always\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
            0o644,
        ),
        (
            "etc/systemd/system/lazarus-backup.service",
            "[Unit]\nDescription=Lazarus: back up the business files\n\
             RequiresMountsFor=/mnt/lazarus-backups\n\n[Service]\nType=oneshot\n\
             ExecStart=/usr/local/sbin/lazarus-backup\n"
                .into(),
            0o644,
        ),
        (
            "etc/systemd/system/lazarus-backup.timer",
            "[Unit]\nDescription=Lazarus: back up the business files often (lab pace)\n\n\
             [Timer]\nOnBootSec=20s\nOnUnitActiveSec=30s\n\n[Install]\nWantedBy=timers.target\n"
                .into(),
            0o644,
        ),
    ]
}

/// One node's disk, or the golden image.
pub struct DiskSpec<'a> {
    /// The Debian tree from [`tree`].
    pub tree: &'a Path,
    /// The `lazarus` binary the node runs (flag, backup).
    pub lazarus: &'a Path,
    /// The node's own files (name, backup key, business data), relative to the root; empty for
    /// the image. Files named `*.key` are written 0600.
    pub node_files: &'a [(&'a str, &'a [u8])],
    /// The NFS mount the backup timer writes to (`SERVER:/EXPORT`), as an fstab source.
    pub backups: &'a str,
    /// Where to put the result.
    pub out: &'a Path,
    /// Cut the file to this many MiB (a system image), or a whole disk of [`DISK_MIB`].
    pub len_mib: u64,
    /// Work folder (a staging tree, the ESP and root images).
    pub work: &'a Path,
    /// The seed's rescue entry, put on the ESP with `lazarus rescue install`, if wanted.
    pub rescue: Option<Rescue<'a>>,
}

/// The rescue kernel, initramfs and command line for the ESP's rescue entry.
pub struct Rescue<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub cmdline: &'a str,
}

/// Writes a bootable disk (or image) as [`DiskSpec`] says.
pub fn build_disk(spec: &DiskSpec) -> anyhow::Result<()> {
    let stage = spec.work.join("root");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(spec.work)?;
    // Hard links: cheap, and the cache is safe as long as files are replaced, never edited.
    run(Command::new("cp").arg("-al").arg(spec.tree).arg(&stage))?;
    let mut files: Vec<(String, Vec<u8>, u32)> = worker_files("/mnt/lazarus-backups")
        .into_iter()
        .map(|(p, c, m)| (p.to_string(), c.into_bytes(), m))
        .collect();
    files.push((
        "etc/fstab".into(),
        format!(
            "UUID={ROOT_UUID} / ext4 defaults 0 1\n\
             PARTLABEL=esp /boot/efi vfat umask=0077,nofail 0 2\n\
             {} /mnt/lazarus-backups nfs4 vers=4.1,soft,timeo=50,retrans=2,_netdev,nofail 0 0\n",
            spec.backups
        )
        .into_bytes(),
        0o644,
    ));
    files.push((
        "usr/local/bin/lazarus".into(),
        std::fs::read(spec.lazarus)
            .with_context(|| format!("reading {}", spec.lazarus.display()))?,
        0o755,
    ));
    for (p, c) in spec.node_files {
        // Keys are private (lazarus refuses a key file others can read).
        let mode = if p.ends_with(".key") { 0o600 } else { 0o644 };
        files.push((p.to_string(), c.to_vec(), mode));
    }
    for (rel, content, mode) in &files {
        let path = stage.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        let _ = std::fs::remove_file(&path); // unlink the hard link first: never write the cache
        std::fs::write(&path, content)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))?;
    }
    std::fs::create_dir_all(stage.join("mnt/lazarus-backups"))?;
    std::fs::create_dir_all(stage.join("boot/efi"))?;
    for unit in [
        "lazarus-role.service",
        "business.service",
        "lazarus-backup.timer",
    ] {
        let wants = if unit.ends_with(".timer") {
            "timers.target.wants"
        } else {
            "multi-user.target.wants"
        };
        let dir = stage.join("etc/systemd/system").join(wants);
        std::fs::create_dir_all(&dir)?;
        let link = dir.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), link)?;
    }

    // The EFI system partition: systemd-boot, its entry, the kernel and initrd.
    let boot = stage.join("boot");
    let find = |prefix: &str| -> anyhow::Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    let (vmlinuz, initrd) = (find("vmlinuz-")?, find("initrd.img-")?);
    // Staged as a folder (what a mounted ESP is), then copied into a FAT image.
    let esp_dir = spec.work.join("esp");
    let _ = std::fs::remove_dir_all(&esp_dir);
    std::fs::create_dir_all(esp_dir.join("EFI/BOOT"))?;
    std::fs::create_dir_all(esp_dir.join("loader/entries"))?;
    std::fs::copy(
        spec.tree
            .join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        esp_dir.join("EFI/BOOT/BOOTX64.EFI"),
    )?;
    std::fs::write(
        esp_dir.join("loader/loader.conf"),
        "default debian.conf\ntimeout 0\nconsole-mode keep\n",
    )?;
    std::fs::write(
        esp_dir.join("loader/entries/debian.conf"),
        format!(
            "title Debian (Lazarus lab worker)\nlinux /vmlinuz\ninitrd /initrd.img\n\
             options root=UUID={ROOT_UUID} ro console=ttyS0,115200 loglevel=4\n"
        ),
    )?;
    std::fs::copy(&vmlinuz, esp_dir.join("vmlinuz"))?;
    std::fs::copy(&initrd, esp_dir.join("initrd.img"))?;
    if let Some(rescue) = &spec.rescue {
        run(Command::new(spec.lazarus)
            .args(["rescue", "install", "--esp"])
            .arg(&esp_dir)
            .arg("--kernel")
            .arg(rescue.kernel)
            .arg("--initramfs")
            .arg(rescue.initramfs)
            .args(["--cmdline", rescue.cmdline]))?;
    }
    let esp = spec.work.join("esp.img");
    let _ = std::fs::remove_file(&esp);
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "--invariant", "-n", "ESP", "-C"])
        .arg(&esp)
        .arg((ESP_MIB * 1024).to_string()))?;
    let mut copy = Command::new("mcopy");
    copy.args(["-s", "-i"]).arg(&esp);
    for entry in std::fs::read_dir(&esp_dir)? {
        copy.arg(entry?.path());
    }
    run(copy.arg("::/"))?;
    let _ = std::fs::remove_dir_all(&esp_dir);

    // The root filesystem.
    let root = spec.work.join("root.ext4");
    let _ = std::fs::remove_file(&root);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", ROOT_UUID, "-L", "root", "-d"])
        .arg(&stage)
        .arg(&root)
        .arg(format!("{ROOT_MIB}M")))?;
    let _ = std::fs::remove_dir_all(&stage);

    // The disk: GPT, then each piece at its offset (sparse: holes stay holes).
    let _ = std::fs::remove_file(spec.out);
    std::fs::File::create(spec.out)?.set_len(DISK_MIB * MIB)?;
    let script = format!(
        "label: gpt\n\
         start=2048, size={esp}, type=U, name=esp\n\
         start={root_start}, size={root}, type=L, name=root\n\
         start={flag}, size=2048, type=L, name=lazarus-flag\n",
        esp = ESP_MIB * 2048,
        root_start = (1 + ESP_MIB) * 2048,
        root = ROOT_MIB * 2048,
        flag = FLAG_OFFSET / 512,
    );
    let mut sf = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(spec.out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(sf.stdin.as_mut().unwrap(), script.as_bytes())?;
    drop(sf.stdin.take());
    let out = sf.wait_with_output()?;
    if !out.status.success() {
        bail!("sfdisk: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (piece, at_mib) in [(&esp, 1), (&root, 1 + ESP_MIB)] {
        run(Command::new("dd")
            .arg(format!("if={}", piece.display()))
            .arg(format!("of={}", spec.out.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={at_mib}")))?;
        let _ = std::fs::remove_file(piece);
    }
    if spec.len_mib < DISK_MIB {
        std::fs::OpenOptions::new()
            .write(true)
            .open(spec.out)?
            .set_len(spec.len_mib * MIB)?;
    }
    Ok(())
}

/// `mmdebstrap` and the tools the disk assembly needs, or why not.
pub fn available() -> Result<(), String> {
    for (tool, package) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
        ("dnsmasq", "dnsmasq-base"), // the worker gets its address by DHCP
    ] {
        lazarus_testkit::program(tool, &format!("scripts/test installs {package}"))?;
    }
    if !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists() {
        return Err("OVMF is not installed (scripts/test installs ovmf)".into());
    }
    Ok(())
}
