//! The Lazarus lab, for the end-to-end tests and `scripts/lab`: network namespaces with taps or
//! a bridge, nfs-ganesha exporting images and backups, dnsmasq handing out node addresses, QEMU
//! guests (software emulation) booting the stock Debian kernel with our rescue initramfs or
//! rescue media through OVMF/SeaBIOS, a real Debian worker disk ([`debian`]), and a virtual BMC
//! (libvirt behind sushy-tools, [`libvirt`]). Everything runs as root, stays inside the
//! namespace, and is torn down on drop (processes stopped by pid); a failed test keeps its folder
//! (serial logs, disks) and says where.

pub mod debian;
pub mod disk;
pub mod libvirt;
mod qga;
mod vm;

pub use vm::{Firmware, Vm, VmBoot, VmSpec, OVMF_CODE, OVMF_VARS};

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lazarus_proto::{AgentKey, SigningKey};

/// The host's address on the lab network.
pub const HOST_IP: &str = "10.77.0.1";
/// The lab network prefix length.
pub const PREFIX: u8 = 24;

/// The workspace root (for scripts and the shared target folder).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether the lab can run here (root; QEMU and ganesha installed by scripts/test).
pub fn available() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root (network namespaces, loop devices)".into());
    }
    for tool in ["qemu-system-x86_64", "ganesha.nfsd", "ip"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Err(format!(
                "{tool} is not installed (scripts/test installs it)"
            ));
        }
    }
    Ok(())
}

/// The kernel, the static agent, the lab's keys and the rescue images built from them: the
/// public base (the controller's public key only) and a node's image (the base with the lab's
/// agent key appended as a part, as on a node's rescue medium).
pub struct Artifacts {
    pub vmlinuz: PathBuf,
    /// The unpacked kernel package (for building more initramfs images).
    pub kernel_dir: PathBuf,
    /// The public base image.
    pub base: PathBuf,
    /// The node's image: the base, then its part (the agent key).
    pub initramfs: PathBuf,
    /// The controller's signing key and its file (`controller.pub` beside it).
    pub signing: SigningKey,
    pub signing_path: PathBuf,
    pub public_path: PathBuf,
    /// The agent key every lab node's medium holds, and its file.
    pub key: AgentKey,
    pub key_path: PathBuf,
    pub initramfs_bytes: u64,
    pub agent_bytes: u64,
}

impl Artifacts {
    /// A folder of agent keys for the controller (`[controller] agent_keys`): `<node>.key` for
    /// each of `nodes`, each the lab's agent key.
    pub fn agent_keys(&self, dir: &Path, nodes: &[&str]) -> anyhow::Result<PathBuf> {
        let keys = dir.join("agents");
        std::fs::create_dir_all(&keys)?;
        for node in nodes {
            let path = keys.join(format!("{node}.key"));
            if !path.exists() {
                std::fs::copy(&self.key_path, &path)?;
            }
        }
        Ok(keys)
    }
}

/// Fetches the kernel (through apt, once), builds the static agent and the images into `dir`.
pub fn artifacts(dir: &Path) -> anyhow::Result<Artifacts> {
    std::fs::create_dir_all(dir)?;
    let kernel_dir = std::env::var_os("LAZARUS_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("lab/kernel"));
    let release = run(Command::new("bash").arg("-c").arg(format!(
        ". '{}/scripts/lib/setup.sh' && ensure_kernel '{}'",
        workspace().display(),
        kernel_dir.display()
    )))?;
    let vmlinuz = kernel_dir.join("boot").join(format!("vmlinuz-{release}"));
    let agent = static_build(
        "LAZARUS_AGENT_STATIC",
        "--bin",
        "lazarus-agent",
        "lazarus-agent",
    )?;
    let (signing_path, public_path) = (dir.join("controller.key"), dir.join("controller.pub"));
    if !signing_path.exists() {
        lazarus_node::keyfile::generate_controller(&signing_path, &public_path)?;
    }
    let key_path = dir.join("node.key");
    if !key_path.exists() {
        lazarus_node::keyfile::generate(&key_path)?;
    }
    let key = lazarus_node::keyfile::load(&key_path)?;
    let base = dir.join("base.gz");
    std::fs::write(dir.join("kernel-dir"), kernel_dir.display().to_string())?;
    let report = lazarus_initramfs::build(&lazarus_initramfs::BuildOptions {
        kernel_dir,
        agent: agent.clone(),
        controller_pub: public_path.clone(),
        config: None,
        output: base.clone(),
    })?;
    // The kernel reads concatenated archives: the node's image is the base, then its part.
    let initramfs = dir.join("initramfs.img");
    let image =
        lazarus_initramfs::with_part(&std::fs::read(&base)?, &lazarus_initramfs::agent_part(&key));
    std::fs::write(&initramfs, image)?;
    // It holds the lab's agent key: only its owner reads it (and so any medium made from it).
    std::fs::set_permissions(
        &initramfs,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(Artifacts {
        vmlinuz,
        kernel_dir: kernel_dir_for(&base),
        base,
        initramfs,
        signing: lazarus_node::keyfile::load_controller(&signing_path)?,
        signing_path,
        public_path,
        key,
        key_path,
        initramfs_bytes: report.compressed_bytes,
        agent_bytes: std::fs::metadata(&agent)?.len(),
    })
}

fn kernel_dir_for(initramfs: &Path) -> PathBuf {
    let note = initramfs.with_file_name("kernel-dir");
    PathBuf::from(std::fs::read_to_string(note).unwrap_or_default())
}

/// The `lazarus` CLI (the controller's binary), built (or found up to date) by cargo.
pub fn lazarus_bin() -> anyhow::Result<PathBuf> {
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "lazarus-controller",
            "--bin",
            "lazarus",
        ])
        .current_dir(workspace()))?;
    Ok(target_dir().join("debug/lazarus"))
}

/// `GET http://ADDR/PATH` from inside `ns`: the body, or `None` while the server does not answer.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> Option<String> {
    let url = format!("http://{addr}{path}");
    ns.enter(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        agent
            .get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    })
    .ok()
    .flatten()
}

/// A static musl build of the agent package's `kind` (`--bin`/`--example`) `name`: the path in
/// `env` (scripts/test builds it first), else built now.
fn static_build(env: &str, kind: &str, name: &str, output: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "x86_64-unknown-linux-musl",
            "-p",
            "lazarus-agent",
            kind,
            name,
        ])
        .current_dir(workspace()))?;
    Ok(target_dir()
        .join("x86_64-unknown-linux-musl/release")
        .join(output))
}

/// A network namespace with `tap0` at [`HOST_IP`].
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["tuntap", "add", "tap0", "mode", "tap"],
            vec!["addr", "add", &format!("{HOST_IP}/{PREFIX}"), "dev", "tap0"],
            vec!["link", "set", "tap0", "up"],
        ] {
            run(Command::new("ip")
                .args(["netns", "exec", name, "ip"])
                .args(&args))?;
        }
        Ok(ns)
    }

    /// A namespace whose bridge `br0` at [`HOST_IP`] joins the taps `taps` (one per guest).
    pub fn create_bridged(name: &str, taps: &[&str]) -> anyhow::Result<Self> {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        let ip = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", name, "ip"])
                .args(args))
        };
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "br0", "type", "bridge"])?;
        ip(&["addr", "add", &format!("{HOST_IP}/{PREFIX}"), "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        for tap in taps {
            ip(&["tuntap", "add", tap, "mode", "tap"])?;
            ip(&["link", "set", tap, "master", "br0"])?;
            ip(&["link", "set", tap, "up"])?;
        }
        Ok(ns)
    }

    /// A namespace joined to this one by a veth pair: `inside` at `ns_ip` in the namespace,
    /// `outside` at `host_ip` here (both `/PREFIX`). Deleting the namespace deletes the pair.
    pub fn create_veth(
        name: &str,
        outside: &str,
        host_ip: &str,
        inside: &str,
        ns_ip: &str,
    ) -> anyhow::Result<Self> {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        let _ = run(Command::new("ip").args(["link", "del", outside]));
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        run(Command::new("ip").args([
            "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name,
        ]))?;
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{host_ip}/{PREFIX}"),
            "dev",
            outside,
        ]))?;
        run(Command::new("ip").args(["link", "set", outside, "up"]))?;
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{ns_ip}/{PREFIX}"), "dev", inside],
            vec!["link", "set", inside, "up"],
        ] {
            run(Command::new("ip")
                .args(["netns", "exec", name, "ip"])
                .args(&args))?;
        }
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that entered the namespace: sockets it creates live there (and keep
    /// living there when handed back).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || -> anyhow::Result<T> {
            let fd = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .context("setns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// nfs-ganesha serving `export_dir` as `/export` (read-only) inside a namespace.
pub struct Nfs {
    child: Child,
}

/// One directory nfs-ganesha exports.
pub struct Export<'a> {
    pub path: &'a Path,
    /// The NFSv4 pseudo path clients mount (`/export`).
    pub pseudo: &'a str,
    pub writable: bool,
}

impl Nfs {
    /// `export_dir` as `/export`, read-only.
    pub fn start(ns: &Netns, dir: &Path, export_dir: &Path) -> anyhow::Result<Self> {
        Self::start_exports(
            ns,
            dir,
            &[Export {
                path: export_dir,
                pseudo: "/export",
                writable: false,
            }],
        )
    }

    /// The share a cluster of real workers needs: `export_dir` read-only as `/export` (images,
    /// and backups for the agent), and its `backups/` writable as `/backups` (for the nodes'
    /// `lazarus backup`).
    pub fn start_with_backups(ns: &Netns, dir: &Path, export_dir: &Path) -> anyhow::Result<Self> {
        let backups = export_dir.join("backups");
        std::fs::create_dir_all(&backups)?;
        Self::start_exports(
            ns,
            dir,
            &[
                Export {
                    path: export_dir,
                    pseudo: "/export",
                    writable: false,
                },
                Export {
                    path: &backups,
                    pseudo: "/backups",
                    writable: true,
                },
            ],
        )
    }

    /// Several exports (a read-only image share and a writable backup share, say).
    pub fn start_exports(ns: &Netns, dir: &Path, exports: &[Export]) -> anyhow::Result<Self> {
        Self::start_on(ns, dir, HOST_IP, exports)
    }

    /// Several exports, served at `addr` (an address of the namespace).
    pub fn start_on(
        ns: &Netns,
        dir: &Path,
        addr: &str,
        exports: &[Export],
    ) -> anyhow::Result<Self> {
        let conf = dir.join("ganesha.conf");
        let mut text = format!(
            "NFS_CORE_PARAM {{ Protocols = 4; Bind_addr = {addr}; NFS_Port = 2049; Enable_NLM = false; Enable_RQUOTA = false; }}\n\
             NFSV4 {{ Graceless = true; }}\n"
        );
        for (i, e) in exports.iter().enumerate() {
            text.push_str(&format!(
                "EXPORT {{ Export_Id = {}; Path = {}; Pseudo = {}; Access_Type = {}; Squash = No_Root_Squash; Protocols = 4; SecType = sys; FSAL {{ Name = VFS; }} }}\n",
                i + 1,
                e.path.display(),
                e.pseudo,
                if e.writable { "RW" } else { "RO" }
            ));
        }
        std::fs::write(&conf, text)?;
        let child = ns
            .command("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(dir.join("ganesha.log"))
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ganesha.nfsd")?;
        let nfs = Self { child };
        let addr: SocketAddr = format!("{addr}:2049").parse()?;
        let up = ns.enter(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })?;
        if !up {
            bail!(
                "nfs-ganesha did not listen on {addr}; see {}",
                dir.join("ganesha.log").display()
            );
        }
        Ok(nfs)
    }
}

impl Drop for Nfs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq as the lab's DHCP server (no DNS) on `iface` inside a namespace: each MAC in `hosts`
/// gets its fixed address, the way a data centre's DHCP hands out node addresses.
pub struct Dhcp {
    child: Child,
}

impl Dhcp {
    pub fn start(
        ns: &Netns,
        dir: &Path,
        iface: &str,
        hosts: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = ns.command("dnsmasq");
        cmd.args(["--no-daemon", "--port=0", "--bind-interfaces", "--log-dhcp"])
            .arg(format!("--interface={iface}"))
            .arg("--dhcp-range=10.77.0.200,10.77.0.250,255.255.255.0,1h")
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join("dnsmasq.leases").display()
            ));
        for (mac, ip) in hosts {
            cmd.arg(format!("--dhcp-host={mac},{ip}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dnsmasq.log"))?)
            .spawn()
            .context("starting dnsmasq")?;
        Ok(Self { child })
    }
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rescue medium of a lab of real workers: `dir/media/rescue.iso` (the lab kernel and
/// initramfs; the agent gets its address by DHCP and announces `Ready` to the lab host). Returns
/// the media folder, for the controller's media server or any web server.
pub fn rescue_media(art: &Artifacts, dir: &Path) -> anyhow::Result<PathBuf> {
    let media = dir.join("media");
    std::fs::create_dir_all(&media)?;
    lazarus_initramfs::iso::build_iso(&lazarus_initramfs::iso::IsoOptions {
        kernel: art.vmlinuz.clone(),
        initrds: vec![art.initramfs.clone()],
        cmdline: format!("console=ttyS0 panic=-1 lazarus.controller={HOST_IP}:7461"),
        output: media.join("rescue.iso"),
    })?;
    Ok(media)
}

/// The controller's side of `Ready`, inside `ns` at [`HOST_IP`]:7461: accepts one announcement,
/// acknowledges it and returns it with the address it came from.
pub fn receive_ready(
    ns: &Netns,
    art: &Artifacts,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<(lazarus_proto::Ready, SocketAddr)>>> {
    use lazarus_proto::frame::{read_frame, write_frame, AnnounceOpener};
    let listener = ns
        .enter(|| {
            std::net::TcpListener::bind(format!("{HOST_IP}:{}", lazarus_proto::CONTROLLER_PORT))
        })?
        .context("binding the Ready port")?;
    let (key, signing) = (art.key.clone(), art.signing.clone());
    Ok(std::thread::spawn(move || {
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let frame = read_frame(&mut s)?;
        let (_, _, body, reply) = AnnounceOpener::default().open("lab", &key, &frame)?;
        write_frame(&mut s, &reply.seal_ack(&signing)?)?;
        match body {
            lazarus_proto::Response::Ready(r) => Ok((r, peer)),
            other => bail!("not a Ready: {other:?}"),
        }
    }))
}

/// A run's folder: removed after success, kept (and named) after a failure.
pub struct RunDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl RunDir {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let path = target_dir()
            .join("lab/runs")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path, keep: false })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep {
            eprintln!(
                "lab: kept {} (serial logs, disks, ganesha log)",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
