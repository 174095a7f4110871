//! The agent's errors, each with a stable numeric code for the flag record and the wire.
//!
//! Codes are on disk and on the wire: never renumber, never reuse; a new failure gets a new code
//! appended to its hundred. The match in [`AgentError::code`] is exhaustive with no catch-all, so
//! a new variant cannot ship without a code, and [`CODES`] is the table of every code ever given
//! out (retired ones included). A unit test checks [`CODES`] against the match and against the
//! table in `docs/agent.md`, so the three cannot drift apart.

use std::io;
use std::path::PathBuf;

mod steps;
pub use steps::{
    BmapCheckError, FlagLookupError, IndexCheckError, MountError, PartitionError, PlanError,
    SourceError,
};

use crate::disk::SelectError;
use crate::image::ImageError;
use crate::network::NetworkError;
use lazarus_node::backup::BackupError;
use lazarus_node::flag_store::StoreError;

/// Everything that can end a recovery, one variant per failing step.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid plan: {0}")]
    Plan(#[from] PlanError),
    #[error("configuring the network: {0}")]
    Network(#[from] NetworkError),
    #[error("mounting the image source: {0}")]
    MountSource(#[from] SourceError),
    #[error("opening image {0}: {1}")]
    ImageOpen(PathBuf, io::Error),
    #[error("block map {0}: {1}")]
    Bmap(PathBuf, BmapCheckError),
    #[error("chunk index {0}: {1}")]
    Index(PathBuf, IndexCheckError),
    #[error("choosing the target disk: {0}")]
    Disk(#[from] SelectError),
    #[error("opening target {0}: {1}")]
    TargetOpen(PathBuf, io::Error),
    /// The exclusive open (`O_EXCL`) failed with `EBUSY`: the disk or one of its partitions is
    /// mounted, or another program holds it.
    #[error("target {0} is in use (mounted, or held by another program); nothing was written")]
    TargetBusy(PathBuf),
    #[error("copying the image: {0}")]
    Image(#[from] ImageError),
    #[error("partitions of {0}: {1}")]
    Partitions(PathBuf, PartitionError),
    #[error("restored filesystem: {0}")]
    MountTarget(#[from] MountError),
    #[error("restoring business files: {0}")]
    Restore(#[from] BackupError),
    #[error("flag partition: {0}")]
    Flag(#[from] StoreError),
    #[error("no flag partition: {0}")]
    NoFlag(#[from] FlagLookupError),
    #[error("flushing {0} to stable storage: {1}")]
    Sync(PathBuf, io::Error),
    /// A step panicked; the panic's message is all there is to carry.
    #[error("internal error: a step panicked: {0}")]
    Panicked(String),
}

/// Every code ever given out: (code, variant, meaning). Retired codes stay, with the variant
/// `-`, so that nobody gives their number a new meaning.
pub const CODES: &[(u32, &str, &str)] = &[
    (100, "Plan", "the plan is invalid (checked before anything happens)"),
    (200, "Network::Netlink", "no netlink socket to configure the network with"),
    (201, "Network::NoInterface", "the plan's network interface does not exist"),
    (202, "Network::LinkUp", "an interface could not be brought up"),
    (203, "Network::NoCarrier", "the interface has no link"),
    (204, "Network::Address", "the plan's address could not be set"),
    (205, "Network::Route", "the default route could not be set"),
    (300, "MountSource::Mount", "the NFS export could not be mounted"),
    (301, "ImageOpen", "the image (or its block map) could not be opened in the export"),
    (302, "Bmap::Parse", "the block map is not a valid bmap file"),
    (303, "MountSource::NotADirectory", "host mode: the export directory is missing"),
    (304, "MountSource::MountPoint", "the source mount point could not be created"),
    (305, "Bmap::Digest", "the block map's SHA-256 is not the plan's"),
    (306, "Bmap::NotUtf8", "the block map is not UTF-8 text"),
    (307, "Bmap::Size", "the block map describes an image of another size than the plan's"),
    (308, "Index::Parse", "the chunk index is not a valid index file (bad magic, version, fields or own checksum)"),
    (309, "Index::Digest", "the chunk index's SHA-256 is not the plan's"),
    (310, "Index::Size", "the chunk index describes an image of another size than the plan's"),
    (400, "Disk::Empty", "the disk selector names nothing"),
    (401, "Disk::NoMatch", "no disk matches the selector"),
    (402, "Disk::Ambiguous", "several disks match the selector; none was written"),
    (403, "Disk::TooSmall", "the chosen disk or partition is smaller than the image"),
    (404, "Disk::NoPartition", "the disk has no partition of the number the plan gives"),
    (405, "Disk::Sysfs", "sysfs could not be read to list the disks"),
    (406, "Disk::NeverTarget", "the only disks the selector matches are never written: removable, on USB, or the rescue medium"),
    (410, "TargetOpen", "the target disk or partition could not be opened for writing"),
    (411, "TargetBusy", "the target is mounted or held by another program (its exclusive open failed with EBUSY); nothing was written"),
    (500, "Image::TargetTooSmall", "the copy engine's own size guard; a recovery checks first and reports 403, so only `lazarus-agent copy` reports 500"),
    (501, "Image::Read", "reading or decompressing the image failed"),
    (502, "Image::TooShort", "the image ended before its declared size"),
    (503, "Image::TooLong", "the image is longer than its declared size"),
    (504, "Image::DigestMismatch", "the image's SHA-256 is not the plan's; the disk header was zeroed"),
    (505, "Image::Write", "writing the target failed"),
    (506, "Image::Sync", "flushing the written image failed"),
    (507, "Image::Aborted", "the copy was aborted on request; the disk header was zeroed"),
    (508, "Image::RangeMismatch", "a block-map range's SHA-256 did not match"),
    (509, "Image::DataOutsideMap", "the image holds data where its block map says none"),
    (510, "Image::ReadTarget", "reading the target back (to compare it with the chunk index) failed"),
    (511, "Image::ChunkMismatch", "an image chunk's SHA-256 is not the chunk index's (or a chunk is missing); the disk header was zeroed"),
    (512, "Image::Checkpoint", "a copy checkpoint could not be recorded in the flag"),
    (513, "Image::SourceStalled", "the image source (NFS server) gave nothing for longer than the stall limit; the disk header was zeroed and the next Recover resumes the copy"),
    (600, "Partitions::Open", "the disk could not be opened to re-read its partitions"),
    (601, "Partitions::Gpt", "the written disk's GPT is unreadable or invalid"),
    (602, "Partitions::Remove", "a stale partition could not be removed from the kernel's view"),
    (603, "Partitions::Add", "a partition could not be registered with the kernel"),
    (604, "Partitions::NotReady", "partition device nodes did not appear in time"),
    (605, "Partitions::PastEnd", "a partition the image defines lies past the end of the disk"),
    (700, "MountTarget::Mount", "the restored filesystem could not be mounted"),
    (701, "-", "retired: a bad node name (NodeName now refuses one when a plan is decoded)"),
    (702, "Restore::List", "the backups directory could not be listed"),
    (703, "Restore::NoneBefore", "no complete backup of the node is older than the failure"),
    (704, "Restore::Manifest", "a backup manifest is invalid"),
    (705, "Restore::Read", "reading a backup failed"),
    (706, "Restore::Write", "writing a restored file failed"),
    (707, "Restore::Digest", "the backup archive's SHA-256 is not its manifest's"),
    (708, "Restore::Size", "the backup archive's size is not its manifest's"),
    (709, "Restore::UnsafeEntry", "the archive holds an entry that would escape the target"),
    (710, "Restore::Corrupt", "the backup archive is corrupt"),
    (711, "Restore::Restore", "a file could not be restored"),
    (712, "Restore::NothingToBackUp", "a backup names no paths (only when backing up)"),
    (713, "MountTarget::MountPoint", "the restored filesystem's mount point could not be created"),
    (714, "MountTarget::Unmount", "the restored filesystem could not be unmounted"),
    (715, "Restore::TooLarge", "the backup archive is larger than the plan's max_backup_bytes; nothing was read"),
    (716, "Restore::NotAFile", "the backup archive is not a regular file"),
    (717, "Restore::HeaderTooLarge", "the archive holds a GNU long-name or PAX header over 64 KiB; refused before it was read, nothing written"),
    (718, "Restore::UnsafeTarget", "a symlink or file on the restored disk is on an entry's path, or the restore root is reached through one; nothing was written"),
    (719, "Restore::Unrestorable", "the archive holds devices, fifos or other entries that are not restored, and the plan makes them fatal; nothing was written"),
    (720, "Restore::BadKey", "the plan's backup key is not a valid Ed25519 public key; nothing was read"),
    (800, "Flag", "reading or writing the flag record failed"),
    (801, "NoFlag::NotFound", "no flag partition with the plan's label"),
    (802, "NoFlag::Ambiguous", "several flag partitions with the plan's label; none was written"),
    (803, "NoFlag::NotInImage", "a wrecked disk has no flag partition and the image defines none"),
    (804, "NoFlag::NotBlockDevice", "the flag partition cannot be registered on a non-block device"),
    (805, "NoFlag::NotAPartition", "the plan's flag path is not a partition (a whole disk, say); nothing was written to it"),
    (806, "NoFlag::OnAnotherDisk", "the plan's flag path is a partition of another disk than the chosen one; nothing was written to it"),
    (807, "Flag::Foreign", "the flag device holds neither zeros nor flag records (the format guard); nothing was written to it"),
    (900, "Sync", "flushing the restored files or the disk to stable storage failed"),
    (999, "Panicked", "internal error: a step panicked"),
];

impl AgentError {
    /// The stable code (1xx plan, 2xx network, 3xx source, 4xx disk, 5xx copy, 6xx partitions,
    /// 7xx restore, 8xx flag, 9xx other). See [`CODES`].
    pub fn code(&self) -> u32 {
        // codes:begin (the unit test reads the numbers between these markers)
        match self {
            Self::Plan(_) => 100,
            Self::Network(e) => match e {
                NetworkError::Netlink(_) => 200,
                NetworkError::NoInterface { .. } => 201,
                NetworkError::LinkUp { .. } => 202,
                NetworkError::NoCarrier { .. } => 203,
                NetworkError::Address { .. } => 204,
                NetworkError::Route { .. } => 205,
            },
            Self::MountSource(e) => match e {
                SourceError::Mount { .. } => 300,
                SourceError::NotADirectory(_) => 303,
                SourceError::MountPoint(..) => 304,
            },
            Self::ImageOpen(..) => 301,
            Self::Index(_, e) => match e {
                IndexCheckError::Parse(_) => 308,
                IndexCheckError::Digest { .. } => 309,
                IndexCheckError::Size { .. } => 310,
            },
            Self::Bmap(_, e) => match e {
                BmapCheckError::Parse(_) => 302,
                BmapCheckError::Digest { .. } => 305,
                BmapCheckError::NotUtf8 => 306,
                BmapCheckError::Size { .. } => 307,
            },
            Self::Disk(e) => match e {
                SelectError::Empty => 400,
                SelectError::NoMatch(_) => 401,
                SelectError::Ambiguous { .. } => 402,
                SelectError::TooSmall { .. } => 403,
                SelectError::NoPartition { .. } => 404,
                SelectError::Sysfs(..) => 405,
                SelectError::NeverTarget { .. } => 406,
            },
            Self::TargetOpen(..) => 410,
            Self::TargetBusy(_) => 411,
            Self::Image(e) => match e {
                ImageError::TargetTooSmall { .. } => 500,
                ImageError::Read(_) => 501,
                ImageError::TooShort { .. } => 502,
                ImageError::TooLong { .. } => 503,
                ImageError::DigestMismatch { .. } => 504,
                ImageError::Write { .. } => 505,
                ImageError::Sync(_) => 506,
                ImageError::Aborted => 507,
                ImageError::RangeMismatch { .. } => 508,
                ImageError::DataOutsideMap { .. } => 509,
                ImageError::ReadTarget { .. } => 510,
                ImageError::ChunkMismatch { .. } => 511,
                ImageError::Checkpoint(_) => 512,
                ImageError::SourceStalled { .. } => 513,
            },
            Self::Partitions(_, e) => match e {
                PartitionError::Open(_) => 600,
                PartitionError::Gpt(_) => 601,
                PartitionError::Remove { .. } => 602,
                PartitionError::Add { .. } => 603,
                PartitionError::NotReady { .. } => 604,
                PartitionError::PastEnd { .. } => 605,
            },
            Self::MountTarget(e) => match e {
                MountError::Mount { .. } => 700,
                MountError::MountPoint(..) => 713,
                MountError::Unmount(..) => 714,
            },
            Self::Restore(e) => match e {
                BackupError::List(..) => 702,
                BackupError::NoneBefore { .. } => 703,
                BackupError::Manifest(..) => 704,
                BackupError::Read(..) => 705,
                BackupError::Write(..) => 706,
                BackupError::Digest { .. } => 707,
                BackupError::Size { .. } => 708,
                BackupError::UnsafeEntry { .. } => 709,
                BackupError::Corrupt(_) => 710,
                BackupError::Restore { .. } => 711,
                BackupError::NothingToBackUp(_) => 712,
                BackupError::TooLarge { .. } => 715,
                BackupError::NotAFile { .. } => 716,
                BackupError::HeaderTooLarge { .. } => 717,
                BackupError::UnsafeTarget { .. } => 718,
                BackupError::Unrestorable(_) => 719,
                BackupError::BadKey => 720,
            },
            Self::Flag(e) => match e {
                StoreError::Open(..)
                | StoreError::TooSmall(..)
                | StoreError::Read(..)
                | StoreError::Write(..)
                | StoreError::Sync(..)
                | StoreError::Encode(_)
                | StoreError::NotAFlagPartition(_)
                | StoreError::NotFileOrDevice(_)
                | StoreError::NoSuchDevice(_) => 800,
                StoreError::Foreign(_) => 807,
            },
            Self::NoFlag(e) => match e {
                FlagLookupError::NotFound { .. } => 801,
                FlagLookupError::Ambiguous { .. } => 802,
                FlagLookupError::NotInImage { .. } => 803,
                FlagLookupError::NotBlockDevice(_) => 804,
                FlagLookupError::NotAPartition(_) => 805,
                FlagLookupError::OnAnotherDisk { .. } => 806,
            },
            Self::Sync(..) => 900,
            Self::Panicked(_) => 999,
        }
        // codes:end
    }

    /// The code and message as sent on the wire.
    pub fn info(&self) -> lazarus_proto::ErrorInfo {
        lazarus_proto::ErrorInfo {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// The code table as `docs/agent.md` shows it (Markdown).
pub fn codes_markdown() -> String {
    let mut out = String::from("| code | variant | meaning |\n| --- | --- | --- |\n");
    for (code, variant, meaning) in CODES {
        let variant = match *variant {
            "-" => "-".to_string(),
            v => format!("`{v}`"),
        };
        out.push_str(&format!("| {code} | {variant} | {meaning} |\n"));
    }
    out
}

#[cfg(test)]
mod tests;
