//! `lazarus-agent`: the rescue agent. As process 1 (the rescue initramfs's `/init`) it runs
//! [`lazarus_agent::pid1::run`] and never returns. Otherwise it parses arguments, sets up
//! logging and maps errors to exit status 2: `serve --host` runs the same engine, state machine
//! and server as an ordinary process; `copy` writes one image with the copy engine.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use lazarus_agent::image::{
    write_image_with, Bmap, Checkpoints, ChunkIndex, CopySpec, Progress, Reopen, Target,
    Verification, WatchedRead,
};
use lazarus_agent::logring::LogRing;
use lazarus_agent::platform::HostMachine;
use lazarus_agent::recovery::{copy_with_index, Resume};
use lazarus_agent::service::Agent;
use lazarus_agent::{announce, server, sys};
use lazarus_node::flag_store::{FlagStore, FlagUpdate};
use lazarus_node::keyfile;
use lazarus_proto::flag::FlagState;
use lazarus_proto::CopyMode;
use lazarus_proto::{BootId, ImageFormat, Sha256};

const USAGE: &str =
    "usage: lazarus-agent serve --host --listen ADDR --controller-pub FILE --key-file FILE --workdir DIR \
[--export-dir DIR] [--flag PATH] [--controller HOST:PORT] [--mac MAC]
       lazarus-agent copy --image FILE --target PATH (--sha256 HEX | --bmap FILE) \
[--format raw|zstd] [--size BYTES] [--index FILE [--mode full|differential|auto] [--flag FILE]]";

/// Options of `serve --host`.
struct HostOptions {
    listen: SocketAddr,
    /// The controller's public key (what the agent obeys).
    controller_pub: PathBuf,
    /// The agent's own key (what it authenticates its replies with).
    key_file: PathBuf,
    workdir: PathBuf,
    export_dir: Option<PathBuf>,
    /// The flag to read at start: a flag partition or file, or a whole disk to look for it on.
    flag: Option<PathBuf>,
    controller: Option<SocketAddr>,
    /// Announce this MAC instead of the host's (several host-mode agents on one machine).
    mac: Option<lazarus_proto::MacAddr>,
}

fn parse(args: &[String]) -> anyhow::Result<HostOptions> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("serve") {
        bail!("{USAGE}");
    }
    let (mut host, mut listen, mut key_file, mut workdir) = (false, None, None, None);
    let mut controller_pub = None;
    let (mut export_dir, mut flag, mut controller, mut mac) = (None, None, None, None);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--host" => host = true,
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--key-file" => key_file = Some(PathBuf::from(value()?)),
            "--controller-pub" => controller_pub = Some(PathBuf::from(value()?)),
            "--workdir" => workdir = Some(PathBuf::from(value()?)),
            "--export-dir" => export_dir = Some(PathBuf::from(value()?)),
            "--flag" => flag = Some(PathBuf::from(value()?)),
            "--controller" => controller = Some(value()?.parse().context("--controller")?),
            "--mac" => mac = Some(value()?.parse::<lazarus_proto::MacAddr>()?),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if !host {
        bail!("rescue mode runs only as process 1 (the initramfs's /init); use serve --host");
    }
    Ok(HostOptions {
        listen: listen.context("--listen is required")?,
        key_file: key_file.context("--key-file is required")?,
        controller_pub: controller_pub.context("--controller-pub is required")?,
        workdir: workdir.context("--workdir is required")?,
        export_dir,
        flag,
        controller,
        mac,
    })
}

fn serve_host(opts: HostOptions) -> anyhow::Result<()> {
    let logs = LogRing::install(true, log::LevelFilter::Info);
    let keys = server::Keys {
        controller: keyfile::load_public(&opts.controller_pub)?,
        agent: keyfile::load(&opts.key_file)?,
    };
    std::fs::create_dir_all(&opts.workdir)
        .with_context(|| format!("creating {}", opts.workdir.display()))?;
    let listener =
        TcpListener::bind(opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    let mut boot = [0u8; 16];
    lazarus_node::random::fill(&mut boot).context("drawing a boot id")?;
    let boot_id = BootId(boot);
    log::info!(
        "lazarus-agent {} (host mode), boot {boot_id}",
        env!("CARGO_PKG_VERSION")
    );
    let platform = Arc::new(HostMachine::host(&opts.workdir, opts.export_dir, opts.flag));
    let root = platform.disks.root.clone();
    let agent = Agent::start(boot_id, platform, Some(logs));
    if let Some(controller) = opts.controller {
        let address = listener.local_addr()?.ip();
        announce::spawn_announcer(
            controller,
            &keys,
            &root,
            &agent,
            address,
            opts.mac.map(|m| vec![m]),
        );
    }
    server::serve(listener, agent, keys)?;
    sys::sync_all();
    log::info!("host mode: Reboot accepted; exiting instead of rebooting the host");
    Ok(())
}

/// `copy`: writes one image to one target with the recovery engine, verified; prints a summary.
fn copy(args: &[String]) -> anyhow::Result<()> {
    let (mut image, mut target, mut format, mut size, mut sha, mut bmap) =
        (None, None, ImageFormat::Raw, None, None, None);
    let (mut index, mut mode, mut flag) = (None, CopyMode::Auto, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--image" => image = Some(PathBuf::from(value()?)),
            "--target" => target = Some(PathBuf::from(value()?)),
            "--format" => {
                format = match value()?.as_str() {
                    "raw" => ImageFormat::Raw,
                    "zstd" => ImageFormat::Zstd,
                    other => bail!("unknown format {other:?} (raw or zstd)"),
                }
            }
            "--size" => size = Some(value()?.parse::<u64>().context("--size")?),
            "--sha256" => {
                sha = Some(Sha256::from_hex(value()?).context("--sha256 needs 64 hex characters")?)
            }
            "--bmap" => bmap = Some(PathBuf::from(value()?)),
            "--index" => index = Some(PathBuf::from(value()?)),
            "--flag" => flag = Some(PathBuf::from(value()?)),
            "--mode" => {
                mode = match value()?.as_str() {
                    "full" => CopyMode::Full,
                    "differential" => CopyMode::Differential,
                    "auto" => CopyMode::Auto,
                    other => bail!("unknown mode {other:?} (full, differential or auto)"),
                }
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let image = image.context("--image is required")?;
    if let Some(index) = index {
        return copy_indexed(CopyIndexed {
            image,
            target: target.context("--target is required")?,
            format,
            sha: sha.context("--index needs --sha256 too (the flag names the image by it)")?,
            index,
            mode,
            flag,
        });
    }
    let target = target.context("--target is required")?;
    let verify = match (sha, &bmap) {
        (Some(d), None) => Verification::Whole(d),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let map = Bmap::parse(&text)?;
            size = Some(size.unwrap_or(map.image_size));
            Verification::Ranges(map.ranges)
        }
        _ => bail!("give exactly one of --sha256 and --bmap"),
    };
    let size = match (size, format) {
        (Some(s), _) => s,
        (None, ImageFormat::Raw) => std::fs::metadata(&image)
            .with_context(|| format!("reading {}", image.display()))?
            .len(),
        (None, ImageFormat::Zstd) => bail!("--size is required for a zstd image"),
    };
    let source =
        std::fs::File::open(&image).with_context(|| format!("opening {}", image.display()))?;
    let dest = Target::open(&target).with_context(|| format!("opening {}", target.display()))?;
    let start = std::time::Instant::now();
    // The source as a recovery reads it: on a thread of its own, holes of the file not read.
    let progress = Progress::default();
    let report = write_image_with(
        WatchedRead::new(Reopen::new(image.clone(), source), &progress),
        &dest,
        &CopySpec {
            format,
            size,
            verify,
            keep: Default::default(),
        },
        &progress,
        None,
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "copied {} bytes (fetched {}, written {}{}) in {secs:.3} s: {:.0} MB/s, verified",
        report.bytes,
        progress.counters().fetched,
        report.written,
        if report.sparse {
            ", zero blocks skipped"
        } else {
            ""
        },
        report.bytes as f64 / secs / 1e6
    );
    Ok(())
}

struct CopyIndexed {
    image: PathBuf,
    target: PathBuf,
    format: ImageFormat,
    sha: Sha256,
    index: PathBuf,
    mode: CopyMode,
    flag: Option<PathBuf>,
}

/// `copy --index`: the recovery's indexed copy (full, differential or auto; resumed from the
/// flag's checkpoint, recorded there as it goes), without the rest of a recovery.
fn copy_indexed(o: CopyIndexed) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&o.index).with_context(|| format!("reading {}", o.index.display()))?;
    let idx = ChunkIndex::decode(&bytes)?;
    let size = idx.image_size();
    let store = o.flag.as_deref().map(FlagStore::open).transpose()?;
    let prior = store.as_ref().and_then(|s| s.read().ok());
    let resume = Resume::of(prior.as_ref(), o.sha, size);
    let update = |state: FlagState, done: u64| FlagUpdate {
        state,
        bytes_done: done,
        bytes_total: size,
        image_sha256: o.sha,
        plan_id: "copy".into(),
        ..FlagUpdate::default()
    };
    if let Some(s) = &store {
        s.write_guarded(&update(FlagState::Recovering, resume.from.unwrap_or(0)))?;
    }
    let record = |upto: u64| -> std::io::Result<()> {
        if let Some(s) = &store {
            s.write_guarded(&update(FlagState::Recovering, upto))
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    };
    let checkpoints = Checkpoints {
        every: std::env::var("LAZARUS_CHECKPOINT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256 << 20),
        record: &record,
    };
    let source =
        std::fs::File::open(&o.image).with_context(|| format!("opening {}", o.image.display()))?;
    let dest =
        Target::open(&o.target).with_context(|| format!("opening {}", o.target.display()))?;
    let spec = CopySpec {
        format: o.format,
        size,
        verify: Verification::Index(Arc::new(idx.clone())),
        keep: Default::default(),
    };
    let progress = Progress::default();
    let start = std::time::Instant::now();
    let report = copy_with_index(
        &o.image,
        &source,
        &dest,
        &spec,
        &idx,
        o.mode,
        resume,
        &progress,
        &checkpoints,
    )?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(s) = &store {
        s.write_guarded(&update(FlagState::Recovered, size))?;
    }
    let c = progress.counters();
    println!(
        "copied {} bytes in {secs:.3} s: checked {}, fetched {}, written {} bytes, verified",
        report.bytes, c.checked, c.fetched, c.written
    );
    Ok(())
}

fn main() -> ExitCode {
    if rustix::process::getpid().is_init() {
        lazarus_agent::pid1::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("lazarus-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let result = if args.first().map(String::as_str) == Some("copy") {
        copy(&args[1..])
    } else {
        parse(&args).and_then(serve_host)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazarus-agent: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
