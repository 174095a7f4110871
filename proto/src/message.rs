//! Every message that crosses the wire, as serde types encoded with postcard.
//!
//! Postcard encodes an enum variant by its index and a struct by its field order, so every enum
//! and struct here is **append only**: new variants and new trailing fields go at the end, nothing
//! is reordered or removed. A change that breaks this must raise [`crate::PROTOCOL_VERSION`].
//! The golden-byte tests at the bottom pin the encoding of every message.
//!
//! The same types are read from TOML (a plan file): digests and boot ids are hex strings there.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::flag::FlagSummary;
pub use crate::types::{BackupKey, BootId, MacAddr, NodeName, Sha256};

/// Controller to agent. `// WIRE: append only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Open a session on this connection: the agent answers who it is (boot id) and the session
    /// id and counter its next commands on this connection must carry. The only request accepted
    /// with any boot id, session and counter; it changes nothing else, and its reply is bound to
    /// it by the signature.
    Hello,
    /// Ask for the agent's [`Status`].
    GetStatus,
    /// Run this recovery plan. Idempotent for the plan id already running or done.
    Recover(Box<Plan>),
    /// Stop the running recovery; the flag says FAILED with the abort code.
    Abort,
    /// Sync and reboot (into the restored system once detached from the rescue media).
    Reboot,
    /// Log lines with sequence number `since` or later.
    GetLogs { since: u64 },
    /// Acknowledges a `Ready` announcement (sent on the announcement connection).
    AckReady,
}

/// Agent to controller. `// WIRE: append only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Reply to [`Request::Hello`].
    Hello(Hello),
    /// Reply to `GetStatus`, `Recover`, `Abort` and `Reboot`.
    Status(Status),
    /// Reply to `GetLogs`.
    Logs(Logs),
    /// Unsolicited, on the announcement connection: the agent booted and waits for a plan.
    Ready(Ready),
    /// The request was understood and authenticated but refused.
    Error(ErrorReply),
}

/// Who answered a `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub boot_id: BootId,
    /// The smallest counter the agent accepts on its next request.
    pub next_counter: u64,
    /// The agent's version string (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// The session the agent opened for this connection (random, drawn by the agent).
    pub session: u64,
}

/// A recovery plan: everything the agent needs to rebuild one node. Built by the controller from
/// the cluster file, or written by an operator as TOML (see `docs/plan.example.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Unique id of this repair attempt (at most 64 bytes, printable ASCII); stored in the flag.
    pub plan_id: String,
    /// The address the node takes for the repair.
    pub network: NetworkPlan,
    /// Where the image and backups are served from.
    pub nfs: NfsSource,
    /// The known-good system image.
    pub image: ImageSpec,
    /// Which disk to write.
    pub target: DiskSelector,
    /// Where the flag record lives.
    pub flag: FlagLocation,
    /// Business files to put back after the image, if any.
    pub restore: Option<RestoreSpec>,
    /// Accept a target selector that names the disk only by `path` and/or `size`. Without it a
    /// selector must name the disk by `serial` or `by_id` (a `wwn-…` name is a WWN); size and
    /// path are then only extra conditions. A failed node's dead system disk often vanishes from
    /// sysfs, and a size-only selector would then pick a data disk of the same size. For host
    /// mode (files as disks) and labs with disks that have no serial. Added after `restore`
    /// (postcard encodes fields in order); absent from a TOML plan it is `false`.
    #[serde(default)]
    pub allow_weak_selector: bool,
    /// Keep the setuid and setgid bits of restored files. Without it they are dropped (and
    /// counted in the log): a backup on a share that every node writes must not hand out root.
    /// Added after `allow_weak_selector`; absent from a TOML plan it is `false`.
    #[serde(default)]
    pub restore_setid: bool,
    /// What a backup entry that is not restored (a device, fifo or other special file) does to
    /// the restore: `warn` lists it in the status and the flag's message, `fatal` fails the
    /// restore before anything is written. Absent from a TOML plan it is `warn`.
    #[serde(default)]
    pub unrestorable: Unrestorable,
    /// The largest backup archive the agent accepts, in bytes. The agent reads the archive once
    /// into memory, checks its digest there and extracts from that copy, so this must fit in
    /// the rescue system's RAM. Absent from a TOML plan it is [`DEFAULT_MAX_BACKUP_BYTES`].
    #[serde(default = "default_max_backup_bytes")]
    pub max_backup_bytes: u64,
}

/// The default [`Plan::max_backup_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BACKUP_BYTES: u64 = 256 << 20;

fn default_max_backup_bytes() -> u64 {
    DEFAULT_MAX_BACKUP_BYTES
}

/// What a backup entry that is not restored does to the restore. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unrestorable {
    /// Restore the rest; list the entries in the status and the flag's message.
    #[default]
    Warn,
    /// Fail the restore (nothing written).
    Fatal,
}

/// The node's address during the repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Interface by name or MAC (`aa:bb:..`); `None` keeps the bootstrap interface.
    pub interface: Option<String>,
}

/// An NFS export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsSource {
    pub server: IpAddr,
    /// Export path on the server, for example `/export`.
    pub export: String,
    pub version: NfsVersion,
    /// Extra mount options, comma separated (`timeo=600,retrans=2`).
    pub options: String,
}

/// NFS protocol version. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NfsVersion {
    V3,
    V4,
    #[default]
    #[serde(rename = "v4.1")]
    V4_1,
    #[serde(rename = "v4.2")]
    V4_2,
}

/// The system image to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Path of the image relative to the NFS export root.
    pub path: String,
    pub format: ImageFormat,
    /// Logical (uncompressed) size in bytes.
    pub size: u64,
    /// SHA-256 of the logical (uncompressed) bytes.
    pub sha256: Sha256,
    pub layout: ImageLayout,
    /// A block map (bmaptool's `.bmap`) of the image. When set, the copy is verified range by
    /// range against the map's SHA-256 digests, ranges the map leaves out must be zeros, and the
    /// whole-image digest is not recomputed: holes are neither hashed nor written.
    #[serde(default)]
    pub bmap: Option<BmapRef>,
    /// A chunk index (`lazarus image index`, `docs/copy-engine.md`): a SHA-256 per fixed-size
    /// chunk, holes marked. With one, the copy is verified chunk by chunk on every core, and a
    /// disk can be rewritten only where it differs and resumed after an interruption. Added
    /// after `bmap`; absent from a TOML plan it is `None`.
    #[serde(default)]
    pub index: Option<IndexRef>,
    /// Whether to rewrite the whole image or only the chunks that differ (needs `index`).
    /// Absent from a TOML plan it is `auto`.
    #[serde(default)]
    pub mode: CopyMode,
}

/// Where a chunk index lives and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// Path of the `.idx` file relative to the export root.
    pub path: String,
    /// SHA-256 of the `.idx` file itself: the index is trusted only through this.
    pub sha256: Sha256,
}

/// How much of the disk a copy rewrites. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Every byte of the image (holes punched or zeroed).
    Full,
    /// Read every chunk of the disk, compare it with the index, fetch and write only the chunks
    /// that differ. Needs an index.
    Differential,
    /// Differential when the disk is known to hold (part of) this image: its flag names the
    /// image, or most of a sample of chunks match; full for a blank or replaced disk, or
    /// without an index.
    #[default]
    Auto,
}

/// Where a block map lives and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmapRef {
    /// Path of the `.bmap` file relative to the export root.
    pub path: String,
    /// SHA-256 of the `.bmap` file itself: the map is trusted only through this.
    pub sha256: Sha256,
}

/// How the image file is encoded. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Zstd,
}

/// What the image covers. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageLayout {
    /// The image holds a partition table and is written from byte 0 of the disk.
    WholeDisk,
    /// The image is one filesystem, written into partition `number` of the disk.
    Partition { number: u32 },
}

/// Chooses the target disk. Every field that is set must match, and exactly one disk may match;
/// a selector with no field set matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiskSelector {
    /// A name under `/dev/disk/by-id/`.
    pub by_id: Option<String>,
    /// The disk's serial number as the kernel reports it.
    pub serial: Option<String>,
    /// A device path (`/dev/vda`), or a file in host mode.
    pub path: Option<String>,
    /// The disk's exact size in bytes.
    pub size: Option<u64>,
}

/// Where the flag record lives. `// WIRE: append only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagLocation {
    /// The GPT partition with this label (`lazarus-flag` by default).
    PartLabel(String),
    /// This device or file.
    Path(String),
}

impl Default for FlagLocation {
    fn default() -> Self {
        Self::PartLabel(crate::flag::DEFAULT_PARTLABEL.to_string())
    }
}

/// The business-file restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// Directory of backups relative to the NFS export root; backups of a node are in
    /// `<backups_dir>/<node>/<UTC timestamp>/`.
    pub backups_dir: String,
    pub node: NodeName,
    /// Unix seconds: the newest complete backup strictly older than this is restored.
    pub failure_time: u64,
    /// The restored filesystem the files go into.
    pub filesystem: RestoreFilesystem,
    /// Paths within the backup to restore; empty restores everything.
    pub paths: Vec<String>,
    /// The node's backup public key: only a backup whose manifest it signed is restored (others
    /// are skipped, as if absent). `None`: backups are not checked for their origin (a plan
    /// file written by hand; the controller always sends the key). Added last.
    #[serde(default)]
    pub backup_key: Option<BackupKey>,
}

/// The filesystem business files are restored into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFilesystem {
    /// Partition number on the target disk (for a whole-disk image); `None` for the partition the
    /// image was written to.
    pub partition: Option<u32>,
    pub fstype: FsType,
    /// Directory inside that filesystem that archive paths are relative to (`/` by default).
    pub root: String,
}

/// A filesystem type the agent can mount. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

/// The agent's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub boot_id: BootId,
    pub phase: Phase,
    /// The step within `Recovering`, or the step that failed.
    pub step: Option<Step>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// What the flag record says now.
    pub flag: FlagSummary,
    pub plan_id: Option<String>,
    pub error: Option<ErrorInfo>,
    /// What the flag held when the agent started, before a stale record was cleared.
    pub found_at_boot: Option<FlagSummary>,
    /// Entries of the restored backup that were not restored (devices, fifos, ...), at most 16
    /// as `path (kind)`, then `and N more`; empty when there were none. Added last.
    #[serde(default)]
    pub unrestored: Vec<String>,
    /// What the copy did so far: bytes of the disk checked against the index, bytes of the
    /// image fetched from the source, bytes written. Added last.
    #[serde(default)]
    pub copy: CopyCounters,
}

/// Byte counters of a copy, for [`Status::copy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CopyCounters {
    /// Bytes of the target read and compared with the index.
    pub checked: u64,
    /// Bytes of the image read from the source.
    pub fetched: u64,
    /// Bytes written to the target.
    pub written: u64,
    /// While the image source gives nothing (an NFS server gone): since when, in Unix seconds.
    /// The copy waits for it, up to the agent's stall limit.
    pub source_stalled_since: Option<u64>,
}

/// The agent's lifecycle. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Mounting, loading drivers, configuring the bootstrap network.
    Booting,
    /// Waiting for a plan.
    Ready,
    /// Running a plan.
    Recovering,
    /// The plan completed and the flag says RECOVERED.
    Recovered,
    /// The plan failed; `error` says why; the flag says FAILED.
    Failed,
    /// A `Reboot` was accepted.
    Rebooting,
}

/// A step of a recovery, in order. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ConfigureNetwork,
    MountSource,
    SelectDisk,
    CopyImage,
    RereadPartitions,
    MountTarget,
    RestoreFiles,
    Sync,
}

/// A failure: a stable numeric code (the agent's error table) and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: u32,
    pub message: String,
}

/// Why an authenticated request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: Refusal,
    pub message: String,
}

/// Kinds of refusal. `// WIRE: append only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The plan or request is invalid.
    BadRequest,
    /// Another plan is running.
    Busy,
    /// Not allowed in the current phase.
    WrongPhase,
    /// The agent could not serve it.
    Internal,
}

/// The agent's log since a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    /// The `since` to ask for next.
    pub next: u64,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    /// Milliseconds since the agent started.
    pub time_ms: u64,
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace (the `log` crate's order).
    pub level: u8,
    pub message: String,
}

/// The announcement of a freshly booted agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub boot_id: BootId,
    pub identity: Identity,
    /// What the flag held at boot, before a stale recovery flag was cleared.
    pub flag: Option<FlagSummary>,
    pub agent_version: String,
}

/// How the controller recognises a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Identity {
    pub macs: Vec<MacAddr>,
    /// DMI system UUID, where present.
    pub system_uuid: Option<String>,
    /// DMI system serial, where present.
    pub serial: Option<String>,
    /// The agent's address as it sees it (useful behind NAT-free lab bridges).
    pub address: Option<IpAddr>,
}

impl Identity {
    /// A short description for a log line, however many MACs an (unauthenticated) peer lists:
    /// the count and the first four.
    pub fn summary(&self) -> String {
        let first: Vec<String> = self.macs.iter().take(4).map(|m| m.to_string()).collect();
        let more = self.macs.len().saturating_sub(4);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{} MACs: {}{more}", self.macs.len(), first.join(", "))
    }
}
