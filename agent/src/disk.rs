//! Finding the target disk, its partitions and the flag partition, from sysfs alone (no udev in
//! the rescue initramfs).
//!
//! A plan's [`DiskSelector`] may name a `/dev/disk/by-id/` name, a serial, a path and a size;
//! every field given must match and exactly one disk may match (a plan must name the disk by
//! serial or by-id unless it allows a weak selector: `recovery::validate`). Since there is no
//! udev to make `/dev/disk/by-id`, the by-id names are also derived from sysfs the way udev names
//! them (`virtio-SERIAL`, `ata-MODEL_SERIAL`, `nvme-MODEL_SERIAL`, `wwn-0xWWN` from a SCSI/ATA
//! `naa.` WWID, `nvme-eui.…`), so a WWN is named as the by-id `wwn-0x…`.
//!
//! Read-only devices, optical drives, RAM disks and zram are not listed at all. Listed but never
//! written ([`Exclusion`]), even when a selector names them: removable disks (sysfs `removable`
//! is 1), disks on a USB bus (the rescue stick, a BMC's virtual media), a disk holding an
//! ISO 9660 volume (the rescue medium as a hybrid ISO) and the disks the kernel command line
//! names as the rescue medium (`lazarus.media=`).

use std::fs;
use std::path::{Path, PathBuf};

use lazarus_proto::DiskSelector;

use crate::root::Root;

/// A whole disk as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name (`vda`, `sda`, `nvme0n1`, `loop3`).
    pub name: String,
    /// Device node (`/dev/vda`).
    pub dev_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    pub serial: Option<String>,
    pub model: Option<String>,
    /// by-id names, derived and (where udev made them) found in `/dev/disk/by-id`.
    pub by_id: Vec<String>,
    /// Why this disk is never a target, if it is not.
    pub excluded: Option<Exclusion>,
}

/// Why a disk that exists is never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// sysfs `removable` is 1 (card readers, USB sticks, hot-pluggable media).
    Removable,
    /// The disk hangs off a USB bus (a stick, a BMC's virtual media).
    Usb,
    /// The disk holds an ISO 9660 volume: the rescue medium written as a hybrid ISO.
    RescueMedium,
    /// The kernel command line names it as the rescue medium (`lazarus.media=`).
    Named,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Removable => "it is removable",
            Self::Usb => "it is on a USB bus",
            Self::RescueMedium => "it holds an ISO 9660 volume (the rescue medium)",
            Self::Named => "the kernel command line names it as the rescue medium (lazarus.media=)",
        })
    }
}

/// A partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub name: String,
    pub dev_path: PathBuf,
    pub number: u32,
    /// GPT partition name (`PARTNAME` in the kernel's uevent), if any.
    pub label: Option<String>,
    /// Byte offset on the disk.
    pub start: u64,
    pub size: u64,
}

/// Why no single target disk could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("the disk selector names nothing (set by_id, serial, path or size)")]
    Empty,
    #[error("no disk matches the selector {0}")]
    NoMatch(String),
    #[error("{count} disks match the selector {selector}: {names}; refusing to guess")]
    Ambiguous {
        selector: String,
        count: usize,
        names: String,
    },
    #[error("disk {name} is {size} bytes, smaller than the {image}-byte image")]
    TooSmall { name: String, size: u64, image: u64 },
    #[error("disk {disk} has no partition {number}")]
    NoPartition { disk: String, number: u32 },
    #[error("reading {0}: {1}")]
    Sysfs(PathBuf, String),
    #[error("disk {name} matches the selector {selector} but is never written: {why}")]
    NeverTarget {
        name: String,
        selector: String,
        why: Exclusion,
    },
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Lists whole disks under `<sys>/block`, sorted by name.
pub fn scan_disks(root: &Root) -> Result<Vec<DiskInfo>, SelectError> {
    let block = root.sys.join("block");
    let entries =
        fs::read_dir(&block).map_err(|e| SelectError::Sysfs(block.clone(), e.to_string()))?;
    let mut disks = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["ram", "zram", "sr", "fd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let dir = entry.path();
        if read_trimmed(&dir.join("ro")).as_deref() == Some("1") {
            continue;
        }
        let Some(sectors) = read_trimmed(&dir.join("size")).and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if sectors == 0 {
            continue; // an unbound loop device, an empty card reader
        }
        let serial =
            read_trimmed(&dir.join("serial")).or_else(|| read_trimmed(&dir.join("device/serial")));
        let model = read_trimmed(&dir.join("device/model"));
        let wwid =
            read_trimmed(&dir.join("device/wwid")).or_else(|| read_trimmed(&dir.join("wwid")));
        let by_id = derive_by_id(
            root,
            &name,
            serial.as_deref(),
            model.as_deref(),
            wwid.as_deref(),
        );
        let dev_path = root.dev.join(&name);
        let excluded = exclusion(&dir, &dev_path);
        disks.push(DiskInfo {
            dev_path,
            name,
            size: sectors.saturating_mul(512),
            serial,
            model,
            by_id,
            excluded,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// Byte offset of the first ISO 9660 volume descriptor's identifier (sector 16 of 2048 bytes,
/// after its type byte).
const ISO9660_ID_AT: u64 = 16 * 2048 + 1;

/// Why the disk at sysfs folder `dir` is never a target, if it is not: removable, on USB, or
/// holding an ISO 9660 volume (read from `dev`; a disk that cannot be read is not excluded).
fn exclusion(dir: &Path, dev: &Path) -> Option<Exclusion> {
    if read_trimmed(&dir.join("removable")).as_deref() == Some("1") {
        return Some(Exclusion::Removable);
    }
    // /sys/block/sdb -> ../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/.../block/sdb
    let on_usb = fs::canonicalize(dir).is_ok_and(|real| {
        real.components().any(|c| {
            c.as_os_str().to_str().is_some_and(|c| {
                c.strip_prefix("usb")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
    });
    if on_usb {
        return Some(Exclusion::Usb);
    }
    let mut id = [0u8; 5];
    let iso = fs::File::open(dev).is_ok_and(|f| {
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut id, ISO9660_ID_AT).is_ok()
            && &id == b"CD001"
    });
    iso.then_some(Exclusion::RescueMedium)
}

/// Marks the disks `media` names (kernel names, `/dev` paths or by-id names, as on the kernel
/// command line's `lazarus.media=`) as the rescue medium.
pub fn exclude_named(disks: &mut [DiskInfo], media: &[String]) {
    for d in disks.iter_mut() {
        let named = media.iter().any(|m| {
            let m = m.trim_start_matches("/dev/disk/by-id/");
            m == d.name || same_path(Path::new(m), &d.dev_path) || d.by_id.iter().any(|id| id == m)
        });
        if named && d.excluded.is_none() {
            d.excluded = Some(Exclusion::Named);
        }
    }
}

/// by-id names for a disk: udev's scheme, plus any `/dev/disk/by-id` link pointing at it.
fn derive_by_id(
    root: &Root,
    name: &str,
    serial: Option<&str>,
    model: Option<&str>,
    wwid: Option<&str>,
) -> Vec<String> {
    let clean = |s: &str| s.split_whitespace().collect::<Vec<_>>().join("_");
    let mut ids = Vec::new();
    if let Some(serial) = serial {
        let serial = clean(serial);
        if name.starts_with("vd") {
            ids.push(format!("virtio-{serial}"));
        }
        if let Some(model) = model {
            let model = clean(model);
            if name.starts_with("nvme") {
                ids.push(format!("nvme-{model}_{serial}"));
            } else if name.starts_with("sd") {
                ids.push(format!("ata-{model}_{serial}"));
            }
        }
    }
    if let Some(wwid) = wwid {
        let wwid = clean(wwid);
        match wwid.strip_prefix("naa.") {
            // udev's ID_WWN_WITH_EXTENSION: `wwn-0x5000c500a1b2c3d4`.
            Some(naa) => ids.push(format!("wwn-0x{}", naa.to_ascii_lowercase())),
            None if name.starts_with("nvme") => ids.push(format!("nvme-{wwid}")),
            None => {}
        }
        // The name earlier agents derived, still accepted.
        ids.push(format!("wwn-{}", wwid.trim_start_matches("naa.")));
    }
    if let Ok(links) = fs::read_dir(root.dev.join("disk/by-id")) {
        for link in links.flatten() {
            if let Ok(target) = fs::read_link(link.path()) {
                if target.file_name().is_some_and(|t| t == name) {
                    ids.push(link.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The selector in one line, for errors and logs.
pub fn describe(sel: &DiskSelector) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &sel.by_id {
        parts.push(format!("by_id={v}"));
    }
    if let Some(v) = &sel.serial {
        parts.push(format!("serial={v}"));
    }
    if let Some(v) = &sel.path {
        parts.push(format!("path={v}"));
    }
    if let Some(v) = sel.size {
        parts.push(format!("size={v}"));
    }
    format!("{{{}}}", parts.join(", "))
}

/// Whether the selector names one disk by something it alone has: a serial or a by-id name (a
/// `wwn-…` name is its WWN). A path or a size alone may name another disk once the intended one
/// has vanished from sysfs (a dead disk), so they are only extra conditions unless a plan allows
/// a weak selector.
pub fn names_the_disk(sel: &DiskSelector) -> bool {
    sel.serial.as_deref().is_some_and(|s| !s.trim().is_empty())
        || sel
            .by_id
            .as_deref()
            .is_some_and(|id| !id.trim_start_matches("/dev/disk/by-id/").trim().is_empty())
}

/// Whether `disk` matches every field the selector sets.
pub fn matches(disk: &DiskInfo, sel: &DiskSelector) -> bool {
    let by_id = sel
        .by_id
        .as_deref()
        .map(|id| id.trim_start_matches("/dev/disk/by-id/"));
    by_id.is_none_or(|id| disk.by_id.iter().any(|d| d == id))
        && sel
            .serial
            .as_ref()
            .is_none_or(|s| disk.serial.as_deref() == Some(s.as_str()))
        && sel
            .path
            .as_ref()
            .is_none_or(|p| same_path(Path::new(p), &disk.dev_path))
        && sel.size.is_none_or(|s| disk.size == s)
}

fn same_path(wanted: &Path, dev: &Path) -> bool {
    wanted == dev
        || fs::canonicalize(wanted)
            .ok()
            .is_some_and(|w| fs::canonicalize(dev).ok() == Some(w))
}

/// Chooses exactly one disk of `disks`, at least `min_size` bytes large.
pub fn select<'a>(
    disks: &'a [DiskInfo],
    sel: &DiskSelector,
    min_size: u64,
) -> Result<&'a DiskInfo, SelectError> {
    if sel.by_id.is_none() && sel.serial.is_none() && sel.path.is_none() && sel.size.is_none() {
        return Err(SelectError::Empty);
    }
    let (found, never): (Vec<&DiskInfo>, Vec<&DiskInfo>) = disks
        .iter()
        .filter(|d| matches(d, sel))
        .partition(|d| d.excluded.is_none());
    let disk = match found.as_slice() {
        [] => {
            return Err(match never.first() {
                Some(d) => SelectError::NeverTarget {
                    name: d.name.clone(),
                    selector: describe(sel),
                    why: d.excluded.unwrap_or(Exclusion::Named),
                },
                None => SelectError::NoMatch(describe(sel)),
            })
        }
        [one] => *one,
        many => {
            return Err(SelectError::Ambiguous {
                selector: describe(sel),
                count: many.len(),
                names: many
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    if disk.size < min_size {
        return Err(SelectError::TooSmall {
            name: disk.name.clone(),
            size: disk.size,
            image: min_size,
        });
    }
    Ok(disk)
}

/// Lists the partitions of disk `name` (sysfs subfolders with a `partition` file).
pub fn partitions(root: &Root, name: &str) -> Vec<PartitionInfo> {
    let dir = root.sys.join("block").join(name);
    let mut parts: Vec<PartitionInfo> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let number = read_trimmed(&p.join("partition"))?.parse().ok()?;
            let pname = e.file_name().to_string_lossy().into_owned();
            let label = fs::read_to_string(p.join("uevent")).ok().and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("PARTNAME=").map(str::to_string))
            });
            let sectors = |f: &str| {
                read_trimmed(&p.join(f))
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 512
            };
            let (start, size) = (sectors("start"), sectors("size"));
            Some(PartitionInfo {
                dev_path: root.dev.join(&pname),
                name: pname,
                number,
                label,
                start,
                size,
            })
        })
        .collect();
    parts.sort_by_key(|p| p.number);
    parts
}

/// Partition `number` of disk `name`.
pub fn partition(root: &Root, name: &str, number: u32) -> Result<PartitionInfo, SelectError> {
    partitions(root, name)
        .into_iter()
        .find(|p| p.number == number)
        .ok_or(SelectError::NoPartition {
            disk: name.to_string(),
            number,
        })
}

/// Every partition with GPT label `label`, across all disks that may be written.
pub fn find_by_label(root: &Root, label: &str) -> Vec<PartitionInfo> {
    scan_disks(root)
        .unwrap_or_default()
        .iter()
        .filter(|d| d.excluded.is_none())
        .flat_map(|d| partitions(root, &d.name))
        .filter(|p| p.label.as_deref() == Some(label))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, sectors, serial, read-only, partitions (number, label).
    type FakeDisk<'a> = (&'a str, u64, Option<&'a str>, bool, &'a [(u32, &'a str)]);

    /// A fake sysfs with the given disks.
    fn fake(disks: &[FakeDisk]) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::under(dir.path());
        for (name, sectors, serial, ro, parts) in disks {
            let d = root.sys.join("block").join(name);
            fs::create_dir_all(d.join("device")).unwrap();
            fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(d.join("ro"), if *ro { "1\n" } else { "0\n" }).unwrap();
            if let Some(s) = serial {
                fs::write(d.join("serial"), format!("{s}\n")).unwrap();
            }
            for (n, label) in *parts {
                let p = d.join(format!("{name}{n}"));
                fs::create_dir_all(&p).unwrap();
                fs::write(p.join("partition"), format!("{n}\n")).unwrap();
                fs::write(p.join("size"), "2048\n").unwrap();
                fs::write(
                    p.join("uevent"),
                    format!("MAJOR=8\nPARTN={n}\nPARTNAME={label}\n"),
                )
                .unwrap();
            }
        }
        (dir, root)
    }

    fn sel(f: impl FnOnce(&mut DiskSelector)) -> DiskSelector {
        let mut s = DiskSelector::default();
        f(&mut s);
        s
    }

    #[test]
    fn selects_exactly_one_disk_or_says_why_not() {
        let (_d, root) = fake(&[
            (
                "vda",
                2048,
                Some("SYS1"),
                false,
                &[(1, "root"), (2, "lazarus-flag")],
            ),
            ("vdb", 2048, Some("DATA2"), false, &[]),
            ("sr0", 2048, None, false, &[]),
            ("vdc", 4096, Some("RO"), true, &[]),
            ("loop0", 0, None, false, &[]),
        ]);
        let disks = scan_disks(&root).unwrap();
        assert_eq!(
            disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["vda", "vdb"]
        );
        assert_eq!(disks[0].by_id, ["virtio-SYS1"]);
        let one = |s: DiskSelector| select(&disks, &s, 0).map(|d| d.name.clone());
        assert_eq!(
            one(sel(|s| s.serial = Some("SYS1".into()))),
            Ok("vda".into())
        );
        assert_eq!(
            one(sel(
                |s| s.by_id = Some("/dev/disk/by-id/virtio-DATA2".into())
            )),
            Ok("vdb".into())
        );
        let p = root.dev.join("vdb").to_string_lossy().into_owned();
        assert_eq!(one(sel(|s| s.path = Some(p))), Ok("vdb".into()));
        assert_eq!(one(sel(|_| {})), Err(SelectError::Empty));
        assert!(matches!(
            one(sel(|s| s.serial = Some("NOPE".into()))),
            Err(SelectError::NoMatch(_))
        ));
        assert!(matches!(
            one(sel(|s| s.size = Some(2048 * 512))),
            Err(SelectError::Ambiguous { count: 2, .. })
        ));
        // Every field must match: the right serial with the wrong size matches nothing.
        assert!(matches!(
            one(sel(|s| {
                s.serial = Some("SYS1".into());
                s.size = Some(1);
            })),
            Err(SelectError::NoMatch(_))
        ));
        // A read-only disk is never a target, even named exactly.
        assert!(matches!(
            one(sel(|s| s.serial = Some("RO".into()))),
            Err(SelectError::NoMatch(_))
        ));
        assert!(matches!(
            select(
                &disks,
                &sel(|s| s.serial = Some("SYS1".into())),
                2048 * 512 + 1
            ),
            Err(SelectError::TooSmall { .. })
        ));
    }

    /// Adds sysfs attributes to a fake disk.
    fn set(root: &Root, disk: &str, file: &str, value: &str) {
        let p = root.sys.join("block").join(disk).join(file);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, value).unwrap();
    }

    #[test]
    fn removable_usb_and_rescue_media_disks_are_never_chosen_even_when_named() {
        let (_d, root) = fake(&[
            ("sda", 4096, Some("SYS"), false, &[]),
            ("sdb", 4096, Some("STICK"), false, &[]),
            ("sdc", 4096, Some("ISO"), false, &[]),
            ("sdd", 4096, Some("CARD"), false, &[]),
            ("sde", 4096, Some("MEDIA"), false, &[]),
        ]);
        set(&root, "sdd", "removable", "1\n");
        // sdb is a USB stick: its sysfs folder is a link into a USB controller's tree.
        let usb = root
            .sys
            .join("devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/block/sdb");
        fs::create_dir_all(usb.parent().unwrap()).unwrap();
        fs::rename(root.sys.join("block/sdb"), &usb).unwrap();
        std::os::unix::fs::symlink(&usb, root.sys.join("block/sdb")).unwrap();
        // sdc holds a hybrid ISO: "CD001" in the first volume descriptor.
        fs::create_dir_all(&root.dev).unwrap();
        let mut iso = vec![0u8; 40 << 10];
        iso[ISO9660_ID_AT as usize - 1..ISO9660_ID_AT as usize + 5].copy_from_slice(b"\x01CD001");
        fs::write(root.dev.join("sdc"), iso).unwrap();
        fs::write(root.dev.join("sda"), vec![0u8; 40 << 10]).unwrap();
        let mut disks = scan_disks(&root).unwrap();
        exclude_named(&mut disks, &["/dev/disk/by-id/ata-x".into(), "sde".into()]);
        let why = |n: &str| disks.iter().find(|d| d.name == n).unwrap().excluded;
        assert_eq!(why("sda"), None);
        assert_eq!(why("sdb"), Some(Exclusion::Usb));
        assert_eq!(why("sdc"), Some(Exclusion::RescueMedium));
        assert_eq!(why("sdd"), Some(Exclusion::Removable));
        assert_eq!(why("sde"), Some(Exclusion::Named));
        for (serial, why) in [
            ("STICK", Exclusion::Usb),
            ("ISO", Exclusion::RescueMedium),
            ("CARD", Exclusion::Removable),
            ("MEDIA", Exclusion::Named),
        ] {
            let got = select(&disks, &sel(|s| s.serial = Some(serial.into())), 0);
            assert!(
                matches!(&got, Err(SelectError::NeverTarget { why: w, .. }) if *w == why),
                "{serial}: {got:?}"
            );
        }
        // A size every disk has picks the one that may be written.
        let any = select(&disks, &sel(|s| s.size = Some(4096 * 512)), 0).unwrap();
        assert_eq!(any.name, "sda");
        // The flag is never looked for on them either.
        assert!(find_by_label(&root, "lazarus-flag").is_empty());
    }

    #[test]
    fn a_wwn_names_the_disk_as_udev_does() {
        let (_d, root) = fake(&[
            ("sda", 4096, None, false, &[]),
            ("nvme0n1", 4096, None, false, &[]),
        ]);
        set(&root, "sda", "device/wwid", "naa.5000C500A1B2C3D4\n");
        set(&root, "nvme0n1", "wwid", "eui.0025388b91b3d1a2\n");
        let disks = scan_disks(&root).unwrap();
        let one = |id: &str| {
            select(&disks, &sel(|s| s.by_id = Some(id.into())), 0).map(|d| d.name.clone())
        };
        assert_eq!(
            one("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"),
            Ok("sda".into())
        );
        assert_eq!(one("wwn-5000C500A1B2C3D4"), Ok("sda".into()));
        assert_eq!(one("nvme-eui.0025388b91b3d1a2"), Ok("nvme0n1".into()));
        assert!(names_the_disk(&sel(
            |s| s.by_id = Some("wwn-0x5000c500a1b2c3d4".into())
        )));
        assert!(names_the_disk(&sel(|s| s.serial = Some("S".into()))));
        assert!(!names_the_disk(&sel(|s| {
            s.size = Some(1);
            s.path = Some("/dev/sda".into());
        })));
        assert!(!names_the_disk(&sel(|s| s.serial = Some(" ".into()))));
    }

    #[test]
    fn finds_partitions_by_number_and_label() {
        let (_d, root) = fake(&[(
            "vda",
            2048,
            None,
            false,
            &[(1, "root"), (2, "lazarus-flag")],
        )]);
        assert_eq!(partition(&root, "vda", 2).unwrap().name, "vda2");
        assert!(matches!(
            partition(&root, "vda", 3),
            Err(SelectError::NoPartition { .. })
        ));
        let flags = find_by_label(&root, "lazarus-flag");
        assert_eq!(flags.len(), 1);
        assert_eq!(flags[0].dev_path, root.dev.join("vda2"));
    }
}
