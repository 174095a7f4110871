//! One recovery, step by step, with the flag written ahead of every side effect.
//!
//! Order (DESIGN.md "The repair, step by step", step 5):
//!
//! 1. check the plan; configure the network; make the source readable; open the image;
//! 2. choose the disk (exactly one; large enough; never a removable, USB or rescue-medium disk;
//!    opened exclusively) and find its flag partition (a flag path must be a partition of it);
//! 3. flag RECOVERING — before the first byte of the disk changes; when a whole-disk image
//!    covers its own flag partition, the current record is copied to where the image puts the
//!    flag, and the copy leaves that range alone (the image's bytes there never land);
//! 4. copy the image (verified; first MiB last);
//! 5. whole-disk image: re-read the partition table, find the (new) flag partition and write
//!    RECOVERING there too, since the image just replaced it;
//! 6. restore business files into the mounted restored filesystem; flush it; unmount;
//! 7. flush the target; flag RECOVERED.
//!
//! Any error writes FAILED with the error's code and message (where a flag was found), and the
//! engine has already zeroed the disk's first MiB if the copy had begun. Every flag write goes
//! through the format guard (`FlagStore::write_guarded`): a device holding anything but zeros or
//! flag records is never written.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use lazarus_proto::flag::{
    validate_plan_id, FlagRecord, FlagState, DEFAULT_PARTLABEL, MIN_PARTITION_LEN,
};
use lazarus_proto::{FlagLocation, ImageLayout, Plan, Step};

use crate::disk::{self, DiskInfo};
use crate::error::FlagLookupError;
use crate::error::{AgentError, BmapCheckError, IndexCheckError, PlanError};
use crate::image::{
    sample, write_differential, write_image_with, Bmap, Checkpoints, ChunkIndex, ChunkSource,
    CopySpec, ImageError, Kept, Progress, Reopen, Target, Verification, WatchedFile, WatchedRead,
};
use crate::platform::{FlagSite, Platform};
use lazarus_node::backup::{restore_backup, ExtractOptions, ExtractReport, RestoreRequest};
use lazarus_node::flag_store::{FlagStore, FlagUpdate};
use lazarus_proto::CopyMode;

/// Callbacks from a running recovery to whoever reports its status.
pub trait Observer: Sync {
    fn step(&self, step: Step);
    fn flag(&self, record: &FlagRecord);
    /// The restore left these backup entries out (devices, fifos, ...): at most
    /// [`lazarus_node::backup::MAX_LISTED`] as `path (kind)`, then `and N more`.
    fn unrestored(&self, entries: &[String]);
}

/// Checks a plan before anything happens.
pub fn validate(plan: &Plan) -> Result<(), PlanError> {
    validate_plan_id(&plan.plan_id).map_err(PlanError::PlanId)?;
    if plan.plan_id.is_empty() {
        return Err(PlanError::EmptyPlanId);
    }
    if plan.image.size == 0 {
        return Err(PlanError::EmptyImage);
    }
    relative(&plan.image.path)?;
    if let Some(b) = &plan.image.bmap {
        relative(&b.path)?;
    }
    if let Some(i) = &plan.image.index {
        relative(&i.path)?;
    }
    if plan.image.mode == CopyMode::Differential && plan.image.index.is_none() {
        return Err(PlanError::DifferentialWithoutIndex);
    }
    let t = &plan.target;
    if t.by_id.is_none() && t.serial.is_none() && t.path.is_none() && t.size.is_none() {
        return Err(PlanError::NoTarget);
    }
    if !plan.allow_weak_selector && !disk::names_the_disk(t) {
        return Err(PlanError::WeakSelector(disk::describe(t)));
    }
    if let ImageLayout::Partition { number: 0 } = plan.image.layout {
        return Err(PlanError::PartitionZero);
    }
    if let Some(r) = &plan.restore {
        relative(&r.backups_dir)?;
        if r.filesystem.partition.is_none() && plan.image.layout == ImageLayout::WholeDisk {
            return Err(PlanError::RestoreNeedsPartition);
        }
    }
    let max_prefix = if plan.network.address.is_ipv4() {
        32
    } else {
        128
    };
    if plan.network.prefix_len > max_prefix {
        return Err(PlanError::PrefixTooLong(plan.network.prefix_len));
    }
    Ok(())
}

/// A path inside the export: relative, no `..`.
fn relative(path: &str) -> Result<PathBuf, PlanError> {
    let p = Path::new(path.trim_start_matches('/'));
    if p.as_os_str().is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(PlanError::OutsideExport(path.to_string()));
    }
    Ok(p.to_owned())
}

/// Runs `plan`. Returns the final flag record (RECOVERED) or the error (after writing FAILED).
pub fn recover(
    platform: &dyn Platform,
    plan: &Plan,
    progress: &Progress,
    observer: &dyn Observer,
) -> Result<FlagRecord, AgentError> {
    // The flag found so far; opened for each write, so no descriptor is held across the
    // partition table re-read (an open partition makes BLKRRPART fail with EBUSY).
    let mut flag: Option<FlagSite> = None;
    // A panic in a step is a failure like any other: FAILED goes to the flag found so far.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_steps(platform, plan, progress, observer, &mut flag)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(AgentError::Panicked(what))
    });
    match result {
        Ok(record) => Ok(record),
        Err(err) => {
            log::error!("plan {} failed: {err} (code {})", plan.plan_id, err.code());
            if let Some(site) = &flag {
                // With an index, bytes_done is the last durable checkpoint (what a resume
                // reads back first); otherwise how far the copy got.
                let done = match plan.image.index {
                    Some(_) => progress.checkpoint(),
                    None => progress.done(),
                };
                let update = FlagUpdate {
                    state: FlagState::Failed,
                    error_code: err.code(),
                    bytes_done: done,
                    bytes_total: plan.image.size,
                    image_sha256: plan.image.sha256,
                    plan_id: plan.plan_id.clone(),
                    message: err.to_string(),
                };
                match site.open().and_then(|s| s.write_guarded(&update)) {
                    Ok(rec) => observer.flag(&rec),
                    Err(e) => log::error!("writing FAILED to {site}: {e}"),
                }
            } else {
                log::warn!(
                    "no flag partition was found: FAILED is reported over the protocol only"
                );
            }
            Err(err)
        }
    }
}

fn run_steps(
    platform: &dyn Platform,
    plan: &Plan,
    progress: &Progress,
    observer: &dyn Observer,
    flag: &mut Option<FlagSite>,
) -> Result<FlagRecord, AgentError> {
    validate(plan)?;
    let recovering = |done: u64| FlagUpdate {
        state: FlagState::Recovering,
        bytes_done: done,
        bytes_total: plan.image.size,
        image_sha256: plan.image.sha256,
        plan_id: plan.plan_id.clone(),
        ..FlagUpdate::default()
    };

    // A flag at a fixed path is known before any disk is chosen: open it first, so that even
    // a plan failing to find its disk leaves FAILED there. It must already be a partition (in
    // host mode, or a file) holding nothing but zeros or flag records; whether it is on the
    // chosen disk is checked as soon as the disk is chosen.
    if let FlagLocation::Path(_) = plan.flag {
        let path = platform.flag_device(&plan.flag, None)?;
        if !FlagStore::open(&path)?.guard_passes()? {
            return Err(lazarus_node::flag_store::StoreError::Foreign(path).into());
        }
        *flag = Some(FlagSite::device(path));
    }

    observer.step(Step::ConfigureNetwork);
    platform.configure_network(&plan.network)?;

    observer.step(Step::MountSource);
    let source_root = platform.mount_source(&plan.nfs)?;
    let _unmount = Defer(|| platform.unmount_source(&source_root));
    let image_path = source_root.join(relative(&plan.image.path)?);
    let image =
        File::open(&image_path).map_err(|e| AgentError::ImageOpen(image_path.clone(), e))?;
    let verify = verification(&source_root, &plan.image)?;

    observer.step(Step::SelectDisk);
    let disks = platform.disks(&plan.target)?;
    let disk = disk::select(&disks, &plan.target, 0)?.clone();
    if let FlagLocation::Path(_) = plan.flag {
        // Not a partition of the chosen disk: nothing (not even FAILED) is written there.
        if let Err(e) = platform.flag_device(&plan.flag, Some(&disk)) {
            *flag = None;
            return Err(e);
        }
    }
    let target_path = match plan.image.layout {
        ImageLayout::WholeDisk => disk.dev_path.clone(),
        ImageLayout::Partition { number } => platform.partition(&disk, number)?,
    };
    let target = Target::open(&target_path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
            AgentError::TargetBusy(target_path.clone())
        } else {
            AgentError::TargetOpen(target_path.clone(), e)
        }
    })?;
    if target.len() < plan.image.size {
        return Err(disk::SelectError::TooSmall {
            name: target_path.display().to_string(),
            size: target.len(),
            image: plan.image.size,
        }
        .into());
    }
    let mut flag_path = match platform.flag_device(&plan.flag, Some(&disk)) {
        Ok(p) => p,
        // A wrecked disk (its partition table gone) that a whole-disk image replaces: the flag
        // partition is where the image puts it. Writing there first is writing to the disk that
        // was chosen and is about to be rewritten whole.
        Err(AgentError::NoFlag(why)) if plan.image.layout == ImageLayout::WholeDisk => {
            let FlagLocation::PartLabel(label) = &plan.flag else {
                return Err(AgentError::NoFlag(why));
            };
            let Some(part) = image_partition(&image_path, plan.image.format, label) else {
                return Err(FlagLookupError::NotInImage {
                    on_disk: Box::new(why),
                }
                .into());
            };
            log::warn!(
                "{why}; using the image's partition {} for the flag",
                part.number
            );
            platform.register_partition(&disk, part.number, part.start, part.len)?
        }
        Err(e) => return Err(e),
    };
    // What the disk's flag says of an earlier attempt at this image: the identity `auto`
    // trusts, and the checkpoint a resume reads back from (a hint only: see `copy_with_index`).
    let prior = FlagStore::open(&flag_path)?.read().ok();
    let resume = Resume::of(prior.as_ref(), plan.image.sha256, plan.image.size);
    let resume_from = resume.from;
    progress.set_checkpoint(resume_from.unwrap_or(0));
    // Write-ahead: RECOVERING is durable before the disk changes. It keeps the checkpoint, so
    // a second interruption before the first new one still has it.
    observer
        .flag(&FlagStore::open(&flag_path)?.write_guarded(&recovering(resume_from.unwrap_or(0)))?);
    *flag = Some(FlagSite::device(flag_path.clone()));
    let keep = match plan.image.layout {
        ImageLayout::WholeDisk => keep_flag(&image_path, plan, &flag_path, &target)?,
        ImageLayout::Partition { .. } => None,
    };
    if let Some(slots) = &keep {
        // From here the record lives at the image's flag range on the disk.
        *flag = Some(FlagSite {
            path: target_path.clone(),
            offset: slots.start,
        });
    }

    observer.step(Step::CopyImage);
    let spec = CopySpec {
        format: plan.image.format,
        size: plan.image.size,
        verify,
        keep: Kept::new(keep),
    };
    let site = flag.clone();
    let record = |upto: u64| -> std::io::Result<()> {
        let site = site
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no flag"))?;
        let rec = site
            .open()
            .and_then(|s| s.write_guarded(&recovering(upto)))
            .map_err(std::io::Error::other)?;
        observer.flag(&rec);
        Ok(())
    };
    let checkpoints = Checkpoints {
        every: match &spec.verify {
            Verification::Index(idx) => checkpoint_every(plan.image.size, idx.chunk_size()),
            _ => CHECKPOINT_EVERY,
        },
        record: &record,
    };
    let report = match &spec.verify {
        Verification::Index(idx) => {
            let idx = idx.clone();
            copy_with_index(
                &image_path,
                &image,
                &target,
                &spec,
                &idx,
                plan.image.mode,
                resume,
                progress,
                &checkpoints,
            )?
        }
        // Read on a thread of its own: a vanished server is a pause, and Abort takes effect
        // while a read is blocked (image::stall).
        _ => write_image_with(
            WatchedRead::new(Reopen::new(image_path.clone(), image), progress),
            &target,
            &spec,
            progress,
            None,
        )?,
    };
    let counters = progress.counters();
    log::info!(
        "image written: {} bytes verified, {} bytes written ({} checked on the disk, {} fetched){}",
        report.bytes,
        report.written,
        counters.checked,
        counters.fetched,
        if report.sparse {
            " (zero blocks skipped)"
        } else {
            ""
        }
    );
    drop(target);

    if plan.image.layout == ImageLayout::WholeDisk {
        observer.step(Step::RereadPartitions);
        platform.reread_partitions(&disk)?;
        // The image replaced the partition table and maybe the flag partition itself.
        flag_path = platform.flag_device(&plan.flag, Some(&disk))?;
        observer.flag(&FlagStore::open(&flag_path)?.write_guarded(&recovering(plan.image.size))?);
        *flag = Some(FlagSite::device(flag_path.clone()));
    }

    // What RECOVERED says besides: the backup entries that were not restored.
    let mut notes = String::new();
    if let Some(restore) = &plan.restore {
        observer.step(Step::MountTarget);
        let fs_dev = match (restore.filesystem.partition, plan.image.layout) {
            (Some(n), _) => platform.partition(&disk, n)?,
            (None, _) => target_path.clone(),
        };
        let mounted = platform.mount_target(&fs_dev, restore.filesystem.fstype)?;
        observer.step(Step::RestoreFiles);
        // Flushed while still mounted, so a write-back error is seen; unmounted whatever happened.
        let restored = restore_into(&source_root, plan, restore, &mounted)
            .and_then(|report| platform.sync(&mounted).map(|()| report));
        let unmounted = platform.unmount_target(&mounted);
        let report = restored?;
        unmounted?;
        if let Some(line) = report.unrestored_line() {
            log::warn!("restore: {line}");
            let mut listed = report.unrestored.clone();
            let more = report.unrestored_count - listed.len() as u64;
            if more > 0 {
                listed.push(format!("and {more} more"));
            }
            observer.unrestored(&listed);
            notes = line;
        }
    }

    observer.step(Step::Sync);
    platform.sync(&target_path)?;
    let done = FlagUpdate {
        state: FlagState::Recovered,
        message: notes,
        ..recovering(plan.image.size)
    };
    let record = FlagStore::open(&flag_path)?.write_guarded(&done)?;
    observer.flag(&record);
    log::info!("plan {} recovered", plan.plan_id);
    Ok(record)
}

/// Bytes of settled chunks between two durable checkpoints (an `fdatasync` and a flag write
/// each) at most: 8 for a 2 GiB image. Smaller images checkpoint every eighth of their size
/// (at least one chunk), so a slow copy of a small image still leaves some.
const CHECKPOINT_EVERY: u64 = 256 << 20;

fn checkpoint_every(size: u64, chunk: u32) -> u64 {
    (size / 8).clamp(chunk as u64, CHECKPOINT_EVERY)
}
/// Chunks `auto` reads to decide whether a disk without a flag naming the image is worth a
/// differential run.
const AUTO_SAMPLE: usize = 16;

/// What the disk's flag says of an earlier attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The flag names this image (any state): the disk held it, or part of it.
    pub same_image: bool,
    /// The checkpoint of an unfinished attempt at this image.
    pub from: Option<u64>,
}

impl Resume {
    /// What `prior` (the record on the disk's flag before this attempt) says about an image of
    /// this digest and size.
    pub fn of(prior: Option<&FlagRecord>, sha256: lazarus_proto::Sha256, size: u64) -> Self {
        let same = prior.filter(|r| r.image_sha256 == sha256 && r.bytes_total == size);
        Self {
            same_image: same.is_some(),
            from: same
                .filter(|r| r.state != FlagState::Recovered)
                .map(|r| r.bytes_done.min(size)),
        }
    }
}

/// Full or differential, as the plan's mode, the disk's flag and a sample decide.
///
/// A checkpoint only decides which chunks are read back before being written (those below it)
/// and which are written without a look (those past it). It is never trusted to skip a chunk:
/// every chunk either matches on the disk in this run or is written from bytes checked against
/// the index. So a wrong or stale checkpoint costs time, never correctness.
#[allow(clippy::too_many_arguments)]
pub fn copy_with_index(
    image_path: &Path,
    image: &File,
    target: &Target,
    spec: &CopySpec,
    idx: &ChunkIndex,
    mode: CopyMode,
    resume: Resume,
    progress: &Progress,
    checkpoints: &Checkpoints<'_>,
) -> Result<crate::image::CopyReport, AgentError> {
    let size = spec.size;
    let differential_from = match mode {
        CopyMode::Full => None,
        CopyMode::Differential => Some(resume.from.unwrap_or(size)),
        CopyMode::Auto if resume.from.is_some() => resume.from,
        CopyMode::Auto if resume.same_image => Some(size),
        CopyMode::Auto => {
            let (matching, sampled) = sample(target, idx, spec, AUTO_SAMPLE)?;
            log::info!("auto: {matching} of {sampled} sampled chunks on the disk match the index");
            (sampled > 0 && matching * 2 >= sampled).then_some(size)
        }
    };
    match differential_from {
        None => {
            log::info!("copy mode: full");
            let file = image.try_clone().map_err(ImageError::Read)?;
            let source = WatchedRead::new(Reopen::new(image_path.to_owned(), file), progress);
            Ok(write_image_with(
                source,
                target,
                spec,
                progress,
                Some(checkpoints),
            )?)
        }
        Some(from) => {
            log::info!(
                "copy mode: differential (chunks below byte {from} read back first, the rest written)"
            );
            let file = image.try_clone().map_err(ImageError::Read)?;
            let file = Reopen::new(image_path.to_owned(), file);
            let source = match spec.format {
                lazarus_proto::ImageFormat::Raw => {
                    ChunkSource::Watched(WatchedFile::new(file, progress))
                }
                // A packed image: chunks decoded alone from their frames.
                lazarus_proto::ImageFormat::Zstd if idx.frame(0).is_some() => ChunkSource::Packed {
                    file: WatchedFile::new(file, progress),
                    index: idx,
                    frame: Vec::new(),
                },
                format => ChunkSource::Stream {
                    reader: crate::image::decoder(format, WatchedRead::new(file, progress)),
                    pos: 0,
                },
            };
            Ok(write_differential(
                source,
                target,
                spec,
                idx,
                from,
                progress,
                Some(checkpoints),
            )?)
        }
    }
}

/// When a whole-disk image defines its own flag partition (the plan's label, or `lazarus-flag`
/// for a flag path) and covers its slots: copies the current record (`flag`) there on the
/// target, durably, and returns that range, which the copy then leaves alone. So what the disk
/// holds there is always the agent's record, never the image's bytes (a record captured with
/// the image, an old RECOVERED), mid-copy or after; and after a power cut the record is where the
/// new table, or a scan, finds it.
fn keep_flag(
    image_path: &Path,
    plan: &Plan,
    flag: &Path,
    target: &Target,
) -> Result<Option<std::ops::Range<u64>>, AgentError> {
    let label = match &plan.flag {
        FlagLocation::PartLabel(label) => label.as_str(),
        FlagLocation::Path(_) => DEFAULT_PARTLABEL,
    };
    let Some(part) = image_partition(image_path, plan.image.format, label) else {
        return Ok(None);
    };
    let Some(end) = part.start.checked_add(MIN_PARTITION_LEN) else {
        return Ok(None);
    };
    if part.len < MIN_PARTITION_LEN || end > plan.image.size || end > target.len() {
        return Ok(None);
    }
    let slots = FlagStore::open(flag)?.slots()?;
    target
        .write_at(&slots, part.start)
        .and_then(|()| target.sync())
        .map_err(|source| ImageError::Write {
            offset: part.start,
            source,
        })?;
    log::info!(
        "the image's flag partition {} covers bytes {}..{end}: the copy keeps the current record there",
        part.number,
        part.start
    );
    Ok(Some(part.start..end))
}

/// The partition labelled `label` in the image's own primary GPT (read from its first MiB).
fn image_partition(
    path: &Path,
    format: lazarus_proto::ImageFormat,
    label: &str,
) -> Option<crate::gpt::GptPartition> {
    use std::io::Read;
    // Only a source that reads the same twice: peeking at a pipe would take its first bytes
    // away from the copy that follows (its own flag range is then not kept; said in the log).
    if !std::fs::metadata(path).ok()?.is_file() {
        log::warn!(
            "{} is not a regular file: its partition table is not read before the copy",
            path.display()
        );
        return None;
    }
    let file = File::open(path).ok()?;
    let mut head = vec![0u8; crate::image::HEADER_LEN as usize];
    let mut reader = crate::image::decoder(format, file);
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head.truncate(got);
    [512u64, 4096]
        .iter()
        .filter_map(|&sector| crate::gpt::read_gpt_bytes(&head, sector).ok())
        .flatten()
        .find(|p| p.name == label)
}

/// How the copy is checked: the plan's whole-image digest, or its block map, which must itself
/// hash to the digest the plan gives and describe an image of the plan's size.
fn verification(
    source_root: &Path,
    image: &lazarus_proto::ImageSpec,
) -> Result<Verification, AgentError> {
    if let Some(index) = &image.index {
        let path = source_root.join(relative(&index.path)?);
        let bytes = std::fs::read(&path).map_err(|e| AgentError::ImageOpen(path.clone(), e))?;
        let fail = |e| AgentError::Index(path.clone(), e);
        let got = lazarus_proto::Sha256(<sha2::Sha256 as sha2::Digest>::digest(&bytes).into());
        if got != index.sha256 {
            return Err(fail(IndexCheckError::Digest {
                got,
                want: index.sha256,
            }));
        }
        let idx = ChunkIndex::decode(&bytes).map_err(|e| fail(IndexCheckError::Parse(e)))?;
        if idx.image_size() != image.size {
            return Err(fail(IndexCheckError::Size {
                index: idx.image_size(),
                plan: image.size,
            }));
        }
        return Ok(Verification::Index(std::sync::Arc::new(idx)));
    }
    let Some(bmap) = &image.bmap else {
        return Ok(Verification::Whole(image.sha256));
    };
    let path = source_root.join(relative(&bmap.path)?);
    let bytes = std::fs::read(&path).map_err(|e| AgentError::ImageOpen(path.clone(), e))?;
    let fail = |e| AgentError::Bmap(path.clone(), e);
    let got = lazarus_proto::Sha256(<sha2::Sha256 as sha2::Digest>::digest(&bytes).into());
    if got != bmap.sha256 {
        return Err(fail(BmapCheckError::Digest {
            got,
            want: bmap.sha256,
        }));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| fail(BmapCheckError::NotUtf8))?;
    let map = Bmap::parse(text).map_err(|e| fail(BmapCheckError::Parse(e)))?;
    if map.image_size != image.size {
        return Err(fail(BmapCheckError::Size {
            map: map.image_size,
            plan: image.size,
        }));
    }
    Ok(Verification::Ranges(map.ranges))
}

fn restore_into(
    source_root: &Path,
    plan: &Plan,
    restore: &lazarus_proto::RestoreSpec,
    mounted: &Path,
) -> Result<ExtractReport, AgentError> {
    let backups = source_root.join(relative(&restore.backups_dir)?);
    let root = match restore.filesystem.root.trim_matches('/') {
        "" => String::new(),
        sub => relative(sub)?.to_string_lossy().into_owned(),
    };
    let backup_key = restore
        .backup_key
        .map(|k| lazarus_proto::PublicKey::from_bytes(&k.0))
        .transpose()
        .map_err(|_| lazarus_node::backup::BackupError::BadKey)?;
    if backup_key.is_none() {
        log::warn!("the plan names no backup key: the backup's origin is not checked");
    }
    let (found, report) = restore_backup(&RestoreRequest {
        backups: &backups,
        backup_key: backup_key.as_ref(),
        node: &restore.node,
        failure_time: restore.failure_time,
        mount: mounted,
        root: &root,
        max_archive_bytes: plan.max_backup_bytes,
        options: ExtractOptions {
            paths: &restore.paths,
            allow_setid: plan.restore_setid,
            unrestorable: plan.unrestorable,
        },
    })?;
    log::info!(
        "restored backup {}: {} files, {} dirs, {} symlinks, {} hard links, {} bytes",
        found.dir.display(),
        report.files,
        report.dirs,
        report.symlinks,
        report.hardlinks,
        report.bytes
    );
    if report.setid_stripped > 0 {
        log::warn!(
            "restore: setuid/setgid dropped from {} files (the plan's restore_setid is false)",
            report.setid_stripped
        );
    }
    Ok(report)
}

/// Runs a closure when dropped (unmounting the source on every exit path).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// The disk a plan would choose, for logs.
pub fn describe_disk(d: &DiskInfo) -> String {
    format!(
        "{} ({} bytes{})",
        d.dev_path.display(),
        d.size,
        d.serial
            .as_ref()
            .map_or(String::new(), |s| format!(", serial {s}"))
    )
}

#[cfg(test)]
mod tests;
