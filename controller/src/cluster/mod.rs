//! The cluster file (`cluster.toml`): the controller's whole configuration, validated at start.
//! Every error names the file, the line and the key (`cluster.toml:14: nodes[1].role: …`).
//!
//! See `docs/cluster.example.toml` for a commented example.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lazarus_proto::{DiskSelector, FsType, ImageFormat, ImageLayout, NfsVersion, Sha256};
use lazarus_proto::{MacAddr, NodeName};
use serde::Deserialize;

/// The whole cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub controller: ControllerSection,
    #[serde(default)]
    pub policy: Policy,
    pub promotion: Option<Hook>,
    /// Run when a restored node rejoins as a standby (`LAZARUS_NODE` in its environment): tell
    /// the load balancer or inventory what it is now.
    pub standby: Option<Hook>,
    pub nfs: NfsSection,
    pub images: std::collections::BTreeMap<String, Image>,
    pub nodes: Vec<Node>,
}

/// Where the controller listens and what it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// The HTTP API and `/metrics` (the CLI talks to it): a Unix socket, and TCP with a token.
    #[serde(default)]
    pub api: ApiSection,
    /// Where agents announce `Ready`.
    #[serde(default = "default_ready")]
    pub ready: SocketAddr,
    /// The controller's Ed25519 signing key (`lazarus keygen --controller`, mode 0600): it signs
    /// every command to an agent and never leaves this machine.
    pub signing_key: PathBuf,
    /// The folder of the nodes' agent keys: `<dir>/<node>.key` (`lazarus keygen --agent`).
    pub agent_keys: PathBuf,
    /// The rescue-media server: files of `dir` at `http://LISTEN/media/NAME`, for a BMC's
    /// InsertMedia (`image_url`), iPXE or a `command` provider.
    pub media: Option<MediaSection>,
}

/// `[controller] media`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    pub listen: SocketAddr,
    /// Files served as they are at `/media/NAME` (media made ahead of time).
    pub dir: PathBuf,
    /// Per-repair media: assembled for each repair with that repair's agent key, each at its own
    /// single-use, expiring URL (`{rescue_iso_url}`, `{rescue_kernel_url}`,
    /// `{rescue_initrd_url}` in a node's provider).
    pub rescue: Option<RescueMedia>,
}

/// `[controller.media.rescue]`: what a per-repair medium is made of.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescueMedia {
    /// The rescue kernel.
    pub kernel: PathBuf,
    /// The public base initramfs (`lazarus-mkinitramfs --controller-pub`, no agent key): each
    /// repair's part, holding its own agent key, is appended to it.
    pub initramfs: PathBuf,
    /// The kernel command line on a per-repair ISO, with `{node}`, `{mac}`, `{rescue_ip}`.
    #[serde(default = "default_rescue_cmdline")]
    pub cmdline: String,
    /// The media server's address as BMCs and nodes reach it (`http://10.0.0.1:7480`);
    /// default `http://` and `listen`.
    pub url: Option<String>,
    /// How long a per-repair URL can be fetched from after the attach that made it.
    #[serde(default = "default_media_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_rescue_cmdline() -> String {
    "console=tty0 console=ttyS0,115200 panic=0".into()
}

fn default_media_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

/// The placeholders a provider uses to name the per-repair medium.
pub const REPAIR_MEDIA_PLACEHOLDERS: [&str; 3] = [
    "{rescue_iso_url}",
    "{rescue_kernel_url}",
    "{rescue_initrd_url}",
];

/// `[controller] api`: where the API answers. The Unix socket always; a TCP listener only with a
/// bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The Unix socket (mode 0660), where the CLI looks by default.
    #[serde(default = "default_api_socket")]
    pub socket: PathBuf,
    /// The group owning the socket (a name from `/etc/group`, or a number): its members may use
    /// the API. None: the daemon's own group.
    pub group: Option<String>,
    /// A TCP listener besides the socket (`HOST:PORT`); needs `token_file`.
    pub listen: Option<SocketAddr>,
    /// The bearer token every request over TCP presents (a file only its owner can read).
    pub token_file: Option<PathBuf>,
    /// More `Host` values clients may use over TCP (`"ctl.example.net:7470"`), besides the
    /// listen address and `localhost`/`127.0.0.1`/`[::1]` with its port.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Where the API's Unix socket is unless the cluster file says otherwise (and where the CLI looks).
pub const DEFAULT_API_SOCKET: &str = "/run/lazarus/api.sock";

fn default_api_socket() -> PathBuf {
    PathBuf::from(DEFAULT_API_SOCKET)
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: default_api_socket(),
            group: None,
            listen: None,
            token_file: None,
            hosts: Vec::new(),
        }
    }
}

fn default_ready() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], lazarus_proto::CONTROLLER_PORT))
}

/// Timing, thresholds and brakes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive failed checks that mark a node failed.
    pub failure_threshold: u32,
    /// Consecutive good checks that mark a failing node healthy again.
    pub recovery_threshold: u32,
    pub max_concurrent_repairs: u32,
    /// More nodes than this failing at once pauses automatic repair (a network fault must not
    /// wipe a cluster).
    pub max_unhealthy: u32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub timeouts: Timeouts,
    /// Attempts of a step before the node is quarantined.
    pub retries: u32,
    /// `required` (the default): no standby takes a failed node's place before the node is
    /// confirmed off, by its boot provider or by an operator (`lazarus fenced NODE`).
    /// `best_effort`: a node that cannot be powered off is replaced anyway, with an alert.
    pub fencing: Fencing,
}

/// The fencing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fencing {
    #[default]
    Required,
    BestEffort,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            failure_threshold: 3,
            recovery_threshold: 2,
            max_concurrent_repairs: 1,
            max_unhealthy: 2,
            poll_interval: Duration::from_secs(2),
            timeouts: Timeouts::default(),
            retries: 2,
            fencing: Fencing::default(),
        }
    }
}

/// How long each repair step may take.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub fence: Duration,
    #[serde(with = "humantime_serde")]
    pub attach: Duration,
    #[serde(with = "humantime_serde")]
    pub ready: Duration,
    #[serde(with = "humantime_serde")]
    pub recover: Duration,
    #[serde(with = "humantime_serde")]
    pub reboot: Duration,
    #[serde(with = "humantime_serde")]
    pub verify: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            fence: Duration::from_secs(60),
            attach: Duration::from_secs(120),
            ready: Duration::from_secs(600),
            recover: Duration::from_secs(3600),
            reboot: Duration::from_secs(120),
            verify: Duration::from_secs(600),
        }
    }
}

/// An operator's hook: `[promotion]` runs when a standby takes a failed worker's place
/// (`LAZARUS_FAILED`, `LAZARUS_PROMOTED` in its environment); `[standby]` when a restored node
/// rejoins as a standby (`LAZARUS_NODE`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub command: Vec<String>,
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The share images and backups come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsSection {
    pub server: IpAddr,
    pub export: String,
    #[serde(default)]
    pub version: NfsVersion,
    #[serde(default)]
    pub options: String,
    /// Backups folder relative to the export (`<backups>/<node>/<UTC time>/`).
    #[serde(default = "default_backups")]
    pub backups: String,
}

fn default_backups() -> String {
    "backups".into()
}

/// A known-good system image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub path: String,
    pub format: ImageFormat,
    pub size: u64,
    pub sha256: Sha256,
    #[serde(default = "default_layout")]
    pub layout: ImageLayout,
    pub bmap: Option<lazarus_proto::BmapRef>,
    /// A chunk index (`lazarus image index`) and its SHA-256.
    #[serde(default)]
    pub index: Option<lazarus_proto::IndexRef>,
    /// `full`, `differential` or `auto` (the default).
    #[serde(default)]
    pub mode: lazarus_proto::CopyMode,
}

fn default_layout() -> ImageLayout {
    ImageLayout::WholeDisk
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Standby,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: NodeName,
    pub role: Role,
    /// MAC addresses (`aa:bb:cc:dd:ee:ff`): how a booted agent is matched to the node.
    #[serde(default)]
    pub macs: Vec<MacAddr>,
    pub system_uuid: Option<String>,
    /// The image the node is rebuilt from (a key of `[images]`).
    pub image: String,
    pub health: HealthCheck,
    pub boot: BootProvider,
    /// The node's address while it is repaired.
    pub rescue: RescueNet,
    /// The node's system disk.
    pub disk: DiskSelector,
    /// Where the restored business files go; none: no restore.
    pub restore: Option<RestoreTarget>,
    /// Where the node's flag record lives (the `lazarus-flag` partition by default).
    #[serde(default)]
    pub flag: lazarus_proto::FlagLocation,
    /// Accept a disk selector of size and/or path alone. A failed node's dead system disk often
    /// vanishes from sysfs, and "the one disk of that size" is then a data disk: leave it false.
    #[serde(default)]
    pub allow_weak_selector: bool,
}

/// How a node's health is checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum HealthCheck {
    /// A TCP connection to `target` succeeds.
    Tcp { target: SocketAddr },
    /// An HTTP GET of `url` answers 2xx.
    Http { url: String },
    /// The command exits 0.
    Exec { command: Vec<String> },
}

/// How the controller makes a node boot the rescue kernel, and powers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, tag = "provider", rename_all = "lowercase")]
pub enum BootProvider {
    /// Operator commands, templated with `{node}`, `{mac}`, `{rescue_ip}`.
    Command {
        /// Makes the node boot the rescue kernel once and (re)starts it: the node is off after
        /// fencing, and may be on when an attach is retried.
        attach: Vec<String>,
        /// Undoes what `attach` set up (rescue media, a boot override), before the agent reboots
        /// the node into its restored system.
        detach: Vec<String>,
        /// Powers the node off (fencing); without it the node is repaired unfenced.
        power_off: Option<Vec<String>>,
    },
    /// A person attaches the rescue media and confirms with `lazarus repair NODE`.
    Manual,
    /// A Redfish BMC: virtual media, one-time boot override, power.
    Redfish {
        endpoint: String,
        system: String,
        username: Option<String>,
        password_file: Option<PathBuf>,
        /// URL of the rescue ISO the BMC fetches.
        image_url: String,
        /// PEM file of the CA(s) that issued the BMC's certificate: the certificate is checked
        /// against these alone. Without it, against the public (Mozilla) roots.
        ca_file: Option<PathBuf>,
        /// Skip the certificate check (anyone on the path can then read the BMC's password).
        #[serde(default)]
        insecure: bool,
        /// Accept an `http://` endpoint (the password travels in clear).
        #[serde(default)]
        insecure_http: bool,
        /// After ejecting the ISO and clearing the override, power the node off and on: for BMCs
        /// that apply media and boot-order changes only at the next power-on (sushy-tools'
        /// libvirt driver), where the agent's own reboot would boot the ISO again. Safe: the
        /// agent reports RECOVERED only once the image and files are on stable storage.
        #[serde(default)]
        cold_boot_after_detach: bool,
    },
}

/// The node's address during a repair.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescueNet {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub interface: Option<String>,
}

/// Where business files are restored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTarget {
    pub partition: Option<u32>,
    pub fstype: FsType,
    #[serde(default = "default_root")]
    pub root: String,
    #[serde(default)]
    pub paths: Vec<String>,
    /// Keep setuid/setgid bits of restored files (the plan's `restore_setid`); default false.
    #[serde(default)]
    pub restore_setid: bool,
    /// Devices, fifos and other entries that are not restored: `warn` (default) or `fatal`.
    #[serde(default)]
    pub unrestorable: lazarus_proto::Unrestorable,
    /// The largest backup archive the agent reads into memory (the plan's `max_backup_bytes`).
    #[serde(default = "default_max_backup_bytes")]
    pub max_backup_bytes: u64,
    /// The node's backup public key (`lazarus-backup-public-key:…`, the `.pub` that `lazarus keygen
    /// --backup` wrote beside the key `lazarus backup` signs with): only a backup this key
    /// signed is restored. Required: the share is writable by every node.
    #[serde(deserialize_with = "backup_key")]
    pub backup_key: lazarus_proto::BackupKey,
}

fn backup_key<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<lazarus_proto::BackupKey, D::Error> {
    let text = String::deserialize(d)?;
    lazarus_proto::PublicKey::from_text_as(&text, lazarus_proto::key::Role::Backup)
        .map(|k| lazarus_proto::BackupKey(*k.as_bytes()))
        .map_err(serde::de::Error::custom)
}

fn default_max_backup_bytes() -> u64 {
    lazarus_proto::DEFAULT_MAX_BACKUP_BYTES
}

fn default_root() -> String {
    "/".into()
}

/// A cluster file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

impl Cluster {
    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ClusterError::Read(path.to_owned(), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; errors name `file`.
    pub fn parse(text: &str, file: &str) -> Result<Self, ClusterError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let de = toml::Deserializer::parse(text).map_err(|e| ClusterError::Invalid {
            file: file.into(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            key: "-".into(),
            message: e.message().to_string(),
        })?;
        let cluster: Cluster = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ClusterError::Invalid {
                file: file.into(),
                line: inner
                    .span()
                    .map_or_else(|| line_of_key(text, &key), |s| line_of(s.start)),
                key,
                message: inner.message().to_string(),
            }
        })?;
        cluster
            .validate()
            .map_err(|(key, message)| ClusterError::Invalid {
                file: file.into(),
                line: line_of_key(text, &key),
                key,
                message,
            })?;
        Ok(cluster)
    }

    /// Checks what serde cannot: names unique, references resolved, MACs parse, brakes sane.
    fn validate(&self) -> Result<(), (String, String)> {
        let api = &self.controller.api;
        if !api.socket.is_absolute() {
            return Err((
                "controller.api.socket".into(),
                "must be an absolute path".into(),
            ));
        }
        match (api.listen, &api.token_file) {
            (Some(_), None) => {
                return Err((
                    "controller.api.listen".into(),
                    "a TCP listener needs token_file (a bearer token file, mode 0600); \
                     the Unix socket needs none"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "controller.api.token_file".into(),
                    "a token is only used over TCP: give listen too, or remove it".into(),
                ))
            }
            _ => {}
        }
        if !api.hosts.is_empty() && api.listen.is_none() {
            return Err((
                "controller.api.hosts".into(),
                "host names are only checked over TCP: give listen too, or remove them".into(),
            ));
        }
        let p = &self.policy;
        if p.failure_threshold == 0 || p.recovery_threshold == 0 {
            return Err((
                "policy.failure_threshold".into(),
                "thresholds must be at least 1".into(),
            ));
        }
        if p.max_concurrent_repairs == 0 {
            return Err((
                "policy.max_concurrent_repairs".into(),
                "must be at least 1".into(),
            ));
        }
        if p.health_timeout >= p.health_interval {
            return Err((
                "policy.health_timeout".into(),
                "must be shorter than policy.health_interval".into(),
            ));
        }
        if self.nodes.is_empty() {
            return Err(("nodes".into(), "the cluster has no nodes".into()));
        }
        let mut names = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let key = |k: &str| format!("nodes[{i}].{k}");
            if !names.insert(n.name.clone()) {
                return Err((key("name"), format!("node {} is named twice", n.name)));
            }
            if !self.images.contains_key(&n.image) {
                return Err((key("image"), format!("no image {:?} in [images]", n.image)));
            }
            for m in &n.macs {
                if !macs.insert(*m) {
                    return Err((key("macs"), format!("{m} belongs to two nodes")));
                }
            }
            if n.macs.is_empty() && n.system_uuid.is_none() {
                return Err((
                    key("macs"),
                    "give macs or system_uuid, to recognise the node's agent".into(),
                ));
            }
            let d = &n.disk;
            if d.by_id.is_none() && d.serial.is_none() && d.path.is_none() && d.size.is_none() {
                return Err((key("disk"), "the disk selector names no disk".into()));
            }
            if d.by_id.is_none() && d.serial.is_none() && !n.allow_weak_selector {
                return Err((
                    key("disk"),
                    "name the disk by serial or by_id (size and path only narrow the choice), \
                     or set allow_weak_selector = true"
                        .into(),
                ));
            }
            if let HealthCheck::Http { url } = &n.health {
                if !url.starts_with("http://") {
                    return Err((key("health"), format!("{url}: health URLs must be http://")));
                }
            }
            if let BootProvider::Redfish {
                endpoint,
                system,
                ca_file,
                insecure,
                insecure_http,
                ..
            } = &n.boot
            {
                crate::redfish::Origin::parse(endpoint.trim_end_matches('/'), *insecure_http)
                    .map_err(|e| (key("boot.endpoint"), format!("node {}: {e}", n.name)))?;
                if !system.starts_with('/') || system.starts_with("//") {
                    return Err((
                        key("boot.system"),
                        format!("{system:?}: a path on the BMC, like /redfish/v1/Systems/1"),
                    ));
                }
                if ca_file.is_some() && *insecure {
                    return Err((
                        key("boot.ca_file"),
                        "ca_file and insecure = true contradict each other".into(),
                    ));
                }
            }
            let uses = n.repair_media();
            if !uses.is_empty()
                && self
                    .controller
                    .media
                    .as_ref()
                    .is_none_or(|m| m.rescue.is_none())
            {
                return Err((
                    key("boot"),
                    format!(
                        "{} needs per-repair media: add [controller.media.rescue]",
                        uses[0]
                    ),
                ));
            }
            if let BootProvider::Command { attach, detach, .. } = &n.boot {
                if attach.is_empty() || detach.is_empty() {
                    return Err((
                        key("boot"),
                        "a command provider needs attach and detach commands".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

impl Node {
    /// The per-repair media placeholders this node's provider uses (none: its rescue medium is
    /// made ahead of time, with the node's own agent key).
    pub fn repair_media(&self) -> Vec<&'static str> {
        let texts: Vec<&str> = match &self.boot {
            BootProvider::Command {
                attach,
                detach,
                power_off,
            } => attach
                .iter()
                .chain(detach)
                .chain(power_off.iter().flatten())
                .map(String::as_str)
                .collect(),
            BootProvider::Redfish { image_url, .. } => vec![image_url.as_str()],
            BootProvider::Manual => Vec::new(),
        };
        REPAIR_MEDIA_PLACEHOLDERS
            .into_iter()
            .filter(|p| texts.iter().any(|t| t.contains(p)))
            .collect()
    }
}

/// Best-effort line of a dotted key path (`nodes[1].role`) for semantic errors.
fn line_of_key(text: &str, key: &str) -> usize {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    let index = key
        .split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse::<usize>().ok());
    let mut seen = 0usize;
    let mut in_target = index.is_none();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("[[nodes]]") {
            in_target = index == Some(seen);
            seen += 1;
        }
        if in_target && (t.starts_with(&format!("{leaf} ")) || t.starts_with(&format!("{leaf}="))) {
            return i + 1;
        }
    }
    // A key inside an inline table (`boot = { endpoint = … }`): the table's line.
    match key.rsplit_once('.') {
        Some((parent, _)) if parent.contains('.') => line_of_key(text, parent),
        _ => 1,
    }
}

#[cfg(test)]
mod tests;
