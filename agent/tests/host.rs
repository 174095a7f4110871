//! Host-mode recoveries on loop devices, as root: the disk safety rules against a real kernel.
//! A mounted disk is refused, a flag path that is not a partition of the chosen disk is never
//! written, the flag is found at boot after a copy was cut short, and a stale record inside a
//! whole-disk image never reaches the disk.
//!
//! This host's kernel does not register the GPT partitions of loop devices; the agent does it
//! with BLKPG (`platform::sync_partitions`), and so do these tests where they need partitions.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lazarus_agent::disk::{scan_disks, DiskInfo};
use lazarus_agent::image::Progress;
use lazarus_agent::platform::{sync_partitions, HostMachine};
use lazarus_agent::recovery::{recover, Observer};
use lazarus_agent::root::Root;
use lazarus_agent::service::Agent;
use lazarus_node::flag_store::{FlagStore, FlagUpdate};
use lazarus_proto::flag::{FlagRecord, FlagState, SlotsView, MIN_PARTITION_LEN};
use lazarus_proto::{BootId, FlagLocation, ImageFormat, ImageLayout, Plan, Step};
use lazarus_testkit::{noise, program, require, root, sha, Loop};

const MIB: u64 = 1 << 20;
/// The test layout: root at 1 MiB (16 MiB), `lazarus-flag` at 17 MiB (1 MiB).
const ROOT_AT: u64 = MIB;
const FLAG_AT: u64 = 17 * MIB;

fn can_run(test: &str) -> bool {
    require(test, root("loop devices")) && require(test, program("sfdisk", "util-linux"))
}

/// A file of `mib` MiB with the test GPT (sfdisk writes the primary and the backup table).
fn gpt_file(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib * MIB).unwrap();
    drop(f);
    let script = format!(
        "label: gpt\nstart={}, size={}, name=root\nstart={}, size=2048, name=lazarus-flag\n",
        ROOT_AT / 512,
        16 * MIB / 512,
        FLAG_AT / 512
    );
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
}

/// The agent's view of a loop device, its GPT partitions registered with the kernel.
fn disk_of(dev: &Loop, partitions: bool) -> DiskInfo {
    let root = Root::default();
    let disk = scan_disks(&root)
        .unwrap()
        .into_iter()
        .find(|d| d.name == dev.name())
        .expect("the loop device in sysfs");
    if partitions {
        let table = sync_partitions(&root, &disk).unwrap();
        assert_eq!(table.len(), 2, "{table:?}");
    }
    disk
}

fn read_at(path: &Path, at: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    buf
}

/// The flag slots at `FLAG_AT` of a disk's backing file.
fn flag_view(backing: &Path) -> SlotsView {
    SlotsView::decode(&read_at(backing, FLAG_AT, MIN_PARTITION_LEN))
}

fn write_flag(path: &Path, at: u64, state: FlagState, plan: &str) -> FlagRecord {
    FlagStore::open_at(path, at)
        .unwrap()
        .write_guarded(&FlagUpdate {
            state,
            plan_id: plan.into(),
            ..FlagUpdate::default()
        })
        .unwrap()
}

struct Quiet;

impl Observer for Quiet {
    fn step(&self, _step: Step) {}
    fn flag(&self, _record: &FlagRecord) {}
    fn unrestored(&self, _entries: &[String]) {}
}

/// A host machine with `image` in its export as `images/os.img`.
struct Host {
    dir: tempfile::TempDir,
    machine: HostMachine,
}

impl Host {
    fn new(image: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("export/images")).unwrap();
        std::fs::write(dir.path().join("export/images/os.img"), image).unwrap();
        let machine = HostMachine::host(dir.path(), None, None);
        Self { dir, machine }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A whole-disk raw plan of `image` onto `disk` (by path: loop devices have no serial).
    fn plan(&self, id: &str, image: &[u8], disk: &Path, flag: FlagLocation) -> Plan {
        let text = include_str!("../../docs/plan.example.toml");
        let mut plan: Plan = toml::from_str(text).unwrap();
        plan.plan_id = id.into();
        plan.image.path = "images/os.img".into();
        plan.image.format = ImageFormat::Raw;
        plan.image.size = image.len() as u64;
        plan.image.sha256 = sha(image);
        plan.image.layout = ImageLayout::WholeDisk;
        plan.image.bmap = None;
        plan.target = lazarus_proto::DiskSelector {
            path: Some(disk.display().to_string()),
            ..Default::default()
        };
        plan.allow_weak_selector = true;
        plan.flag = flag;
        plan.restore = None;
        plan
    }

    fn run(&self, plan: &Plan, progress: &Progress) -> Result<FlagRecord, u32> {
        recover(&self.machine, plan, progress, &Quiet).map_err(|e| {
            eprintln!("plan {}: {e} (code {})", plan.plan_id, e.code());
            e.code()
        })
    }
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_mounted_disk_is_refused_and_not_written() {
    let test = "a_mounted_disk_is_refused_and_not_written";
    if !can_run(test) || !require(test, program("mkfs.ext4", "e2fsprogs")) {
        return;
    }
    let image = noise(MIB as usize, 1);
    let host = Host::new(&image);
    let backing = host.path("disk.img");
    std::fs::write(&backing, vec![0u8; 16 * MIB as usize]).unwrap();
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&backing)
        .status()
        .unwrap()
        .success());
    let dev = Loop::attach(&backing, false, false).unwrap();
    let mnt = host.path("mnt-ext4");
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(Command::new("mount")
        .args(["-o", "ro,noload"])
        .arg(dev.path())
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let mounted = Mounted(mnt);
    let before = sha(&std::fs::read(&backing).unwrap());
    let flag = host.path("flag");
    FlagStore::format(&flag, false).unwrap();
    let plan = host.plan(
        "mounted",
        &image,
        dev.path(),
        FlagLocation::Path(flag.display().to_string()),
    );
    assert_eq!(host.run(&plan, &Progress::default()), Err(411));
    drop(mounted);
    assert_eq!(
        sha(&std::fs::read(&backing).unwrap()),
        before,
        "a mounted disk was written"
    );
    let record = FlagStore::open(&flag).unwrap().read().unwrap();
    assert_eq!((record.state, record.error_code), (FlagState::Failed, 411));
}

#[test]
fn a_flag_path_naming_the_whole_disk_ends_failed_and_writes_nothing() {
    if !can_run("a_flag_path_naming_the_whole_disk_ends_failed_and_writes_nothing") {
        return;
    }
    let image = noise(MIB as usize, 2);
    let host = Host::new(&image);
    let backing = host.path("disk.img");
    gpt_file(&backing, 24);
    let dev = Loop::attach(&backing, false, false).unwrap();
    disk_of(&dev, true);
    let before = std::fs::read(&backing).unwrap();
    // The typo: `/dev/loopN` for `/dev/loopNp2`.
    let plan = host.plan(
        "whole",
        &image,
        dev.path(),
        FlagLocation::Path(dev.path().display().to_string()),
    );
    assert_eq!(host.run(&plan, &Progress::default()), Err(805));
    assert!(
        std::fs::read(&backing).unwrap() == before,
        "the disk (its partition table) was written"
    );
}

#[test]
fn a_flag_path_on_another_disk_ends_failed_and_writes_nothing() {
    if !can_run("a_flag_path_on_another_disk_ends_failed_and_writes_nothing") {
        return;
    }
    let image = noise(MIB as usize, 3);
    let host = Host::new(&image);
    let (a, b) = (host.path("a.img"), host.path("b.img"));
    gpt_file(&a, 24);
    gpt_file(&b, 24);
    let (da, db) = (
        Loop::attach(&a, false, false).unwrap(),
        Loop::attach(&b, false, false).unwrap(),
    );
    disk_of(&da, true);
    disk_of(&db, true);
    let other_flag = PathBuf::from(format!("{}p2", db.path().display()));
    assert!(other_flag.exists(), "{} registered", other_flag.display());
    let (before_a, before_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let plan = host.plan(
        "other-disk",
        &image,
        da.path(),
        FlagLocation::Path(other_flag.display().to_string()),
    );
    assert_eq!(host.run(&plan, &Progress::default()), Err(806));
    assert!(
        std::fs::read(&b).unwrap() == before_b,
        "the other disk's flag was written"
    );
    assert!(
        std::fs::read(&a).unwrap() == before_a,
        "the chosen disk was written"
    );
    // The same partition, on its own disk, is a flag path like any other.
    let own = host.plan(
        "own-disk",
        &image,
        db.path(),
        FlagLocation::Path(other_flag.display().to_string()),
    );
    host.run(&own, &Progress::default()).expect("recovers");
    let record = flag_view(&b).record();
    assert_eq!(
        (record.state, record.plan_id.as_str()),
        (FlagState::Recovered, "own-disk")
    );
}

#[test]
fn the_flag_is_found_at_boot_after_a_copy_was_cut_short() {
    if !can_run("the_flag_is_found_at_boot_after_a_copy_was_cut_short") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The primary GPT zeroed (a copy cut short), then also the backup (a disk-sized image cut
    // near its end): found from the backup table, then by the scan.
    for wipe_backup in [false, true] {
        let backing = dir.path().join(format!("disk-{wipe_backup}.img"));
        gpt_file(&backing, 40);
        write_flag(&backing, FLAG_AT, FlagState::Recovering, "cut-at-half");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap();
        f.write_all_at(&vec![0u8; MIB as usize], 0).unwrap();
        if wipe_backup {
            f.write_all_at(&vec![0u8; 33 * 512], 40 * MIB - 33 * 512)
                .unwrap();
        }
        drop(f);
        let dev = Loop::attach(&backing, false, false).unwrap();
        let machine = HostMachine::host(dir.path(), None, Some(dev.path().to_owned()));
        let agent = Agent::start(BootId([3; 16]), Arc::new(machine), None);
        let status = agent.status();
        let found = status.found_at_boot.expect("found_at_boot");
        assert_eq!(
            (found.state, found.plan_id.as_str()),
            (FlagState::Recovering, "cut-at-half"),
            "backup wiped: {wipe_backup}"
        );
        // Reported, then cleared where it was found.
        assert_eq!(status.flag.state, FlagState::None);
        assert_eq!(flag_view(&backing).record().state, FlagState::None);
    }
}

#[test]
fn a_stale_record_in_the_image_never_reaches_the_disk() {
    if !can_run("a_stale_record_in_the_image_never_reaches_the_disk") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // The golden image: the test layout, data in its root partition, and in its own flag
    // partition the RECOVERED record of the run it was captured from.
    // 96 MiB: the engine's reader runs up to 32 MiB ahead of its writers, so an abort is seen
    // mid-copy only in an image well past that.
    let image_path = work.path().join("golden.img");
    gpt_file(&image_path, 96);
    let data = noise(16 * MIB as usize, 8);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image_path)
        .unwrap()
        .write_all_at(&data, ROOT_AT)
        .unwrap();
    write_flag(
        &image_path,
        FLAG_AT,
        FlagState::Recovering,
        "golden-image-capture",
    );
    write_flag(
        &image_path,
        FLAG_AT,
        FlagState::Recovered,
        "golden-image-capture",
    );
    let image = std::fs::read(&image_path).unwrap();
    let host = Host::new(&image);
    let backing = host.path("disk.img");
    gpt_file(&backing, 128);
    let dev = Loop::attach(&backing, false, false).unwrap();
    disk_of(&dev, true);

    // Aborted before the first byte, once a tenth and once two fifths are written (the reader is
    // then further on); then whole.
    let size = image.len() as u64;
    let mut aborted_mid_copy = 0;
    for (i, abort_at) in [Some(0), Some(size / 10), Some(size * 2 / 5), None]
        .into_iter()
        .enumerate()
    {
        let id = format!("repair-{i}");
        let plan = host.plan(
            &id,
            &image,
            dev.path(),
            FlagLocation::PartLabel("lazarus-flag".into()),
        );
        let progress = Arc::new(Progress::default());
        if abort_at == Some(0) {
            progress.abort();
        }
        let done = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        // The disk's flag, read over and over while the plan runs.
        let watcher = {
            let (done, seen, backing) = (done.clone(), seen.clone(), backing.clone());
            std::thread::spawn(move || loop {
                let finished = done.load(Ordering::Relaxed);
                let view = flag_view(&backing);
                for slot in view.slots.iter().flatten() {
                    seen.lock()
                        .unwrap()
                        .push((slot.state, slot.plan_id.clone()));
                }
                if finished {
                    return;
                }
                std::thread::yield_now();
            })
        };
        let aborter = abort_at.filter(|&a| a > 0).map(|at| {
            let (done, progress) = (done.clone(), progress.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if progress.done() >= at {
                        progress.abort();
                        return;
                    }
                    std::thread::yield_now();
                }
            })
        });
        let outcome = host.run(&plan, &progress);
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        if let Some(a) = aborter {
            a.join().unwrap();
        }
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|(_, plan)| plan != "golden-image-capture"),
            "run {i}: the image's record reached the disk"
        );
        let now = flag_view(&backing).record();
        match outcome {
            Ok(_) => {
                assert!(abort_at.is_none_or(|a| a > 0), "run {i} was not aborted");
                assert_eq!(
                    (now.state, now.plan_id.as_str()),
                    (FlagState::Recovered, id.as_str())
                );
                // The image everywhere but the flag slots, which hold this repair's record.
                let disk = read_at(&backing, 0, size);
                let slots = FLAG_AT as usize..(FLAG_AT + MIN_PARTITION_LEN) as usize;
                assert!(disk[..slots.start] == image[..slots.start]);
                assert!(disk[slots.end..] == image[slots.end..]);
            }
            Err(code) => {
                assert_eq!(code, 507, "run {i}");
                aborted_mid_copy += usize::from(abort_at.is_some_and(|a| a > 0));
                assert_eq!(
                    (now.state, now.error_code, now.plan_id.as_str()),
                    (FlagState::Failed, 507, id.as_str()),
                    "run {i}"
                );
                assert!(
                    read_at(&backing, 0, MIB).iter().all(|&b| b == 0),
                    "run {i}: an aborted copy left a header"
                );
            }
        }
        if abort_at == Some(0) {
            assert!(outcome.is_err(), "an abort before the copy was not seen");
        }
    }
    eprintln!("copies aborted mid-way: {aborted_mid_copy} of 2");
}
