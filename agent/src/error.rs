//! The agent's errors, each with a stable numeric code for the flag record and the wire.
//!
//! Codes are on disk and on the wire: never renumber. The match in [`AgentError::code`] is
//! exhaustive with no catch-all, so a new variant cannot ship without a code.

use std::io;
use std::path::PathBuf;

use crate::disk::SelectError;
use crate::image::ImageError;
use lazarus_node::backup::BackupError;
use lazarus_node::flag_store::StoreError;

/// Everything that can end a recovery.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error("configuring the network: {0}")]
    Network(String),
    #[error("mounting the image source: {0}")]
    MountSource(String),
    #[error("opening image {0}: {1}")]
    ImageOpen(PathBuf, io::Error),
    #[error("block map {0}: {1}")]
    Bmap(PathBuf, String),
    #[error("choosing the target disk: {0}")]
    Disk(#[from] SelectError),
    #[error("opening target {0}: {1}")]
    TargetOpen(PathBuf, io::Error),
    #[error("copying the image: {0}")]
    Image(#[from] ImageError),
    #[error("re-reading the partition table of {0}: {1}")]
    Partitions(PathBuf, String),
    #[error("mounting the restored filesystem: {0}")]
    MountTarget(String),
    #[error("restoring business files: {0}")]
    Restore(#[from] BackupError),
    #[error("flag partition: {0}")]
    Flag(#[from] StoreError),
    #[error("no flag partition: {0}")]
    NoFlag(String),
    #[error("flushing to disk: {0}")]
    Sync(io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// The stable code (1xx plan, 2xx network, 3xx source, 4xx disk, 5xx copy, 6xx partitions,
    /// 7xx restore, 8xx flag, 9xx other).
    pub fn code(&self) -> u32 {
        match self {
            Self::Plan(_) => 100,
            Self::Network(_) => 200,
            Self::MountSource(_) => 300,
            Self::ImageOpen(..) => 301,
            Self::Bmap(..) => 302,
            Self::Disk(e) => match e {
                SelectError::Empty => 400,
                SelectError::NoMatch(_) => 401,
                SelectError::Ambiguous { .. } => 402,
                SelectError::TooSmall { .. } => 403,
                SelectError::NoPartition { .. } => 404,
                SelectError::Sysfs(..) => 405,
            },
            Self::TargetOpen(..) => 410,
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
            },
            Self::Partitions(..) => 600,
            Self::MountTarget(_) => 700,
            Self::Restore(e) => match e {
                // 701 (a bad node name) is retired: `NodeName` refuses one when a plan is decoded.
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
            },
            Self::Flag(_) => 800,
            Self::NoFlag(_) => 801,
            Self::Sync(_) => 900,
            Self::Internal(_) => 999,
        }
    }

    /// The code and message as sent on the wire.
    pub fn info(&self) -> lazarus_proto::ErrorInfo {
        lazarus_proto::ErrorInfo {
            code: self.code(),
            message: self.to_string(),
        }
    }
}
