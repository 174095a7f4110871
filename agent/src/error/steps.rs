//! The errors of each step a recovery takes on the machine (network source, partitions, mounts,
//! the flag's place) and of checking a plan. They live here, below both [`crate::platform`] and
//! [`crate::recovery`], so that [`super::AgentError`] wraps them without either module and this
//! one using each other.

use std::path::PathBuf;

use lazarus_proto::flag::FlagError;
use rustix::io::Errno;

use crate::gpt::GptError;
use crate::image::BmapError;

/// Why a disk's partitions could not be made usable.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("opening: {0}")]
    Open(std::io::Error),
    #[error("{0}")]
    Gpt(GptError),
    #[error("removing partition {number}: {source}")]
    Remove { number: u32, source: Errno },
    #[error("adding partition {number}: {source}")]
    Add { number: u32, source: Errno },
    #[error("device nodes of partitions {numbers:?} did not appear within {secs}s")]
    NotReady { numbers: Vec<u32>, secs: u64 },
    #[error("partition {number} ({start}+{len}) lies past the end of the disk")]
    PastEnd { number: u32, start: u64, len: u64 },
}

/// Why the export is not readable.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("mount -t {fstype} -o {data} {} {}: {source}", export.display(), target.display())]
    Mount {
        export: PathBuf,
        target: PathBuf,
        fstype: &'static str,
        data: String,
        source: Errno,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("creating {}: {}", .0.display(), .1)]
    MountPoint(PathBuf, std::io::Error),
}

/// Why the restored filesystem could not be mounted or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount -t {fstype} {} {}: {source}", device.display(), target.display())]
    Mount {
        device: PathBuf,
        target: PathBuf,
        fstype: &'static str,
        source: Errno,
    },
    #[error("creating {}: {}", .0.display(), .1)]
    MountPoint(PathBuf, std::io::Error),
    #[error("unmounting {}: {}", .0.display(), .1)]
    Unmount(PathBuf, Errno),
}

/// Why no single flag partition was found, or why a plan's flag path is refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagLookupError {
    #[error("no GPT partition named {label:?}{}", disk.as_ref().map_or(String::new(), |d| format!(" on {d}")))]
    NotFound { label: String, disk: Option<String> },
    #[error("{count} partitions named {label:?}; refusing to guess")]
    Ambiguous { label: String, count: usize },
    #[error("{on_disk}, and the image has none either")]
    NotInImage { on_disk: Box<FlagLookupError> },
    #[error("{} is not a block device", .0.display())]
    NotBlockDevice(PathBuf),
    #[error("the flag path {} is not a partition (a whole disk, or not a disk at all); nothing was written to it", .0.display())]
    NotAPartition(PathBuf),
    #[error("the flag path {} is a partition of {disk}, not of the chosen disk {chosen}; nothing was written to it", flag.display())]
    OnAnotherDisk {
        flag: PathBuf,
        disk: String,
        chosen: String,
    },
}

/// Why a plan cannot run (all code 100: the plan is refused before anything happens).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    PlanId(FlagError),
    #[error("plan id is empty")]
    EmptyPlanId,
    #[error("image size is 0")]
    EmptyImage,
    #[error("path {0:?} must stay inside the export")]
    OutsideExport(String),
    #[error("the target selector names no disk")]
    NoTarget,
    #[error("partition numbers start at 1")]
    PartitionZero,
    #[error("restore into a whole-disk image needs filesystem.partition")]
    RestoreNeedsPartition,
    #[error("prefix length {0} is too long")]
    PrefixTooLong(u8),
    #[error("mode = \"differential\" needs a chunk index (image.index)")]
    DifferentialWithoutIndex,
    #[error("the target selector {0} names the disk by neither serial nor by_id (size and path are only extra conditions); set allow_weak_selector = true to accept it")]
    WeakSelector(String),
}

/// Why the plan's block map cannot check the copy.
#[derive(Debug, thiserror::Error)]
pub enum BmapCheckError {
    #[error("{0}")]
    Parse(BmapError),
    #[error("digest {got} is not the plan's {want}")]
    Digest {
        got: lazarus_proto::Sha256,
        want: lazarus_proto::Sha256,
    },
    #[error("not UTF-8")]
    NotUtf8,
    #[error("maps an image of {map} bytes, the plan says {plan}")]
    Size { map: u64, plan: u64 },
}

/// Why the plan's chunk index cannot check the copy.
#[derive(Debug, thiserror::Error)]
pub enum IndexCheckError {
    #[error("{0}")]
    Parse(lazarus_node::index::IndexError),
    #[error("digest {got} is not the plan's {want}")]
    Digest {
        got: lazarus_proto::Sha256,
        want: lazarus_proto::Sha256,
    },
    #[error("indexes an image of {index} bytes, the plan says {plan}")]
    Size { index: u64, plan: u64 },
}
