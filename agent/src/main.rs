//! `lazarus-agent`: the rescue agent. Parses arguments, sets up logging, maps errors to exit
//! status 2. PID 1 mode (the rescue initramfs's `/init`) arrives with the rescue boot; host mode
//! runs the same engine, state machine and server as an ordinary process.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use lazarus_agent::logring::LogRing;
use lazarus_agent::platform::HostPlatform;
use lazarus_agent::service::Agent;
use lazarus_agent::{announce, identity, keyfile, server, sys};
use lazarus_proto::{BootId, Ready};

const USAGE: &str =
    "usage: lazarus-agent serve --host --listen ADDR --key-file FILE --workdir DIR \
[--export-dir DIR] [--flag PATH] [--controller HOST:PORT]";

/// Options of `serve --host`.
struct HostOptions {
    listen: SocketAddr,
    key_file: PathBuf,
    workdir: PathBuf,
    export_dir: Option<PathBuf>,
    flag: Option<PathBuf>,
    controller: Option<SocketAddr>,
}

fn parse(args: &[String]) -> anyhow::Result<HostOptions> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("serve") {
        bail!("{USAGE}");
    }
    let (mut host, mut listen, mut key_file, mut workdir) = (false, None, None, None);
    let (mut export_dir, mut flag, mut controller) = (None, None, None);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--host" => host = true,
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--key-file" => key_file = Some(PathBuf::from(value()?)),
            "--workdir" => workdir = Some(PathBuf::from(value()?)),
            "--export-dir" => export_dir = Some(PathBuf::from(value()?)),
            "--flag" => flag = Some(PathBuf::from(value()?)),
            "--controller" => controller = Some(value()?.parse().context("--controller")?),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if !host {
        bail!("PID 1 mode is not built yet: use serve --host");
    }
    Ok(HostOptions {
        listen: listen.context("--listen is required")?,
        key_file: key_file.context("--key-file is required")?,
        workdir: workdir.context("--workdir is required")?,
        export_dir,
        flag,
        controller,
    })
}

fn serve_host(opts: HostOptions) -> anyhow::Result<()> {
    let logs = LogRing::install(true, log::LevelFilter::Info);
    let key = keyfile::load(&opts.key_file)?;
    std::fs::create_dir_all(&opts.workdir)
        .with_context(|| format!("creating {}", opts.workdir.display()))?;
    let listener =
        TcpListener::bind(opts.listen).with_context(|| format!("listening on {}", opts.listen))?;
    let mut boot = [0u8; 16];
    sys::fill_random(&mut boot).context("drawing a boot id")?;
    let boot_id = BootId(boot);
    log::info!(
        "lazarus-agent {} (host mode), boot {boot_id}",
        env!("CARGO_PKG_VERSION")
    );
    let platform = Arc::new(HostPlatform::new(&opts.workdir, opts.export_dir, opts.flag));
    let root = platform.root.clone();
    let agent = Agent::start(boot_id, platform, Some(logs));
    if let Some(controller) = opts.controller {
        let mut identity = identity::read_identity(&root);
        identity.address = Some(listener.local_addr()?.ip());
        let ready = Ready {
            boot_id,
            identity,
            flag: agent.boot_flag.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        };
        let key = key.clone();
        std::thread::spawn(move || announce::announce(controller, &key, &ready, None));
    }
    server::serve(listener, agent, key)?;
    sys::sync_all();
    log::info!("host mode: Reboot accepted; exiting instead of rebooting the host");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("lazarus-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match parse(&args).and_then(serve_host) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazarus-agent: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
