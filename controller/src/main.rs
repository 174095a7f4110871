//! `lazarus`: the controller daemon and operator CLI. Parses arguments, maps errors to one line
//! on stderr and exit status 2.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lazarus_node::flag_store::FlagUpdate;
use std::time::Duration;

use lazarus_controller::agent_client::AgentClient;
use lazarus_controller::api_client::ApiClient;
use lazarus_controller::{agent_cmd, api_client, daemon, flag_cmd, image_cmd};
use lazarus_node::{backup, keyfile, rescue_entry};
use lazarus_proto::flag::{validate_plan_id, FlagState};
use lazarus_proto::Request;

/// Lazarus brings failed bare-metal cluster nodes back without a human at the console.
#[derive(Parser)]
#[command(name = "lazarus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller daemon.
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// The cluster's nodes: role, state, progress, since, last error; with NODE, that node and
    /// its repair timeline (each step's start, duration, bytes, outcome).
    Status {
        node: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Redraw the status every second while repairs run.
    Watch {
        #[command(flatten)]
        api: ApiArgs,
        /// Stop after N redraws (default: until interrupted or the reader goes away).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The event log (time, node, from, to, reason).
    Events {
        #[arg(long)]
        node: Option<String>,
        /// Times as seconds since the first event shown.
        #[arg(long)]
        relative: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Repair NODE now (also takes a node out of quarantine).
    Repair {
        node: String,
        /// Repair it even though it passes its health checks.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Confirm NODE is powered off (fencing = "required", a provider that cannot power it off).
    Fenced {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Return NODE to service as a standby without repairing it.
    Release {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The recent log of NODE's rescue agent.
    Logs {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a key: the controller's signing key or a node's backup key (each with its public key
    /// beside it, FILE with the extension .pub), or a node's agent key. An existing file is never
    /// replaced.
    #[command(group(clap::ArgGroup::new("which").required(true)))]
    Keygen {
        /// The controller's signing key file (mode 0600); its public key goes to FILE.pub.
        #[arg(long, group = "which")]
        controller: Option<PathBuf>,
        /// A node's backup key file (mode 0600; `lazarus backup` signs with it); its public key
        /// (for the cluster file's `restore.backup_key`) goes to FILE.pub.
        #[arg(long, group = "which")]
        backup: Option<PathBuf>,
        /// A node's agent key file (mode 0600), e.g. /etc/lazarus/agents/NODE.key.
        #[arg(long, group = "which")]
        agent: Option<PathBuf>,
    },
    /// Read or write the recovery flag of a file or partition.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Chunk indexes of system images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Talk to one rescue agent directly.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
        /// The agent's address (HOST:PORT; the agent listens on 7460).
        #[arg(long, global = true, default_value = "127.0.0.1:7460")]
        addr: String,
        /// The controller's signing key file (commands are signed with it).
        #[arg(long, global = true, default_value = "/etc/lazarus/controller.key")]
        signing_key: PathBuf,
        /// The agent key of the node asked (its replies are checked with it).
        #[arg(long, global = true)]
        agent_key: Option<PathBuf>,
        /// Seconds to wait for each answer.
        #[arg(long, global = true, default_value_t = 10)]
        timeout: u64,
    },
    /// The rescue kernel as a boot entry on this node's EFI system partition (systemd-boot).
    #[command(subcommand)]
    Rescue(RescueCommand),
    /// Back up business files of this node (atomically) for a later restore.
    Backup {
        /// This node's name in the cluster.
        #[arg(long)]
        node: lazarus_proto::NodeName,
        /// The backups directory (on the NFS share).
        #[arg(long)]
        to: PathBuf,
        /// The filesystem root PATHs are relative to.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// This node's backup key (`lazarus keygen --backup`): it signs the backup, and the
        /// rescue agent restores only what the node's public key in the cluster file verifies.
        #[arg(long, default_value = "/etc/lazarus/backup.key")]
        signing_key: PathBuf,
        /// Directories or files to back up.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// Where the controller's API is.
#[derive(clap::Args)]
struct ApiArgs {
    /// The API: unix:/PATH (the daemon's socket) or http://HOST:PORT (with --token-file).
    #[arg(long, default_value = api_client::DEFAULT_API)]
    api: String,
    /// The API's bearer token (a file only you can read), for an http:// API.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::from_args(&self.api, self.token_file.as_deref())?)
    }
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Print the agent's status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Send a recovery plan.
    Recover {
        /// The plan (TOML; see docs/plan.example.toml).
        #[arg(long)]
        plan: PathBuf,
        /// Wait until the plan ends; fail unless it recovered.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop the running plan.
    Abort,
    /// Have the agent sync and reboot.
    Reboot,
    /// Print the agent's recent log.
    Logs,
}

#[derive(Subcommand)]
enum RescueCommand {
    /// Put the rescue kernel and initramfs on the ESP with a boot entry (never the default).
    Install {
        /// The ESP's mount point.
        #[arg(long, default_value = "/boot/efi")]
        esp: PathBuf,
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initramfs: PathBuf,
        /// The rescue kernel's command line.
        #[arg(long, default_value = "console=ttyS0,115200 panic=-1")]
        cmdline: String,
    },
    /// Boot the rescue entry at the next boot, once (systemd-boot's LoaderEntryOneShot).
    Once {
        #[arg(long, default_value = "/boot/efi")]
        esp: PathBuf,
        /// The efivarfs folder.
        #[arg(long, default_value = rescue_entry::EFIVARS)]
        efivars: PathBuf,
    },
    /// Remove the rescue entry and its files.
    Remove {
        #[arg(long, default_value = "/boot/efi")]
        esp: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build IMAGE's chunk index (a SHA-256 per chunk, holes marked) on every core; prints the
    /// `index = { path, sha256 }` line for the cluster or plan file (path relative to the export).
    Index {
        image: PathBuf,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Chunk size in bytes (a power of two, 1-16 MiB).
        #[arg(long, default_value_t = lazarus_node::index::DEFAULT_CHUNK)]
        chunk_size: u32,
        /// Worker threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Pack IMAGE as seekable zstd (one independent frame per chunk, compressed on every core)
    /// with a packed index holding each frame's offset: a differential repair then fetches and
    /// decodes only the chunks it needs. The output is also an ordinary zstd stream.
    Pack {
        image: PathBuf,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Where the packed index goes.
        #[arg(long)]
        index: PathBuf,
        #[arg(long, default_value_t = lazarus_node::index::DEFAULT_CHUNK)]
        chunk_size: u32,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Check an index file; with --image, also that the image matches it chunk by chunk.
    Check {
        index: PathBuf,
        #[arg(long)]
        image: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FlagCommand {
    /// Format PATH as a flag partition (a missing file is created, 1 MiB).
    Init {
        path: PathBuf,
        /// Overwrite even if PATH holds data that is not a flag record.
        #[arg(long)]
        force: bool,
    },
    /// Print the current flag record.
    Show {
        path: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a flag record.
    Set {
        path: PathBuf,
        /// recovering, recovered, failed (or none).
        #[arg(long)]
        state: FlagState,
        #[arg(long, default_value = "")]
        plan_id: String,
        #[arg(long, default_value_t = 0)]
        error_code: u32,
        #[arg(long, default_value = "")]
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// Reset the flag to state none.
    Clear {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one command; its output, if any, is printed by `main`.
fn run(cli: Cli) -> anyhow::Result<Option<String>> {
    Ok(Some(match cli.command {
        Command::Serve { config, data_dir } => {
            daemon::serve(&config, &data_dir)?;
            return Ok(None);
        }
        Command::Status {
            node: Some(node),
            json,
            api,
        } => {
            let d = api.client()?.node(&node)?;
            if json {
                serde_json::to_string(&d)?
            } else {
                api_client::render_node(&d)
            }
        }
        Command::Status {
            node: None,
            json,
            api,
        } => {
            let s = api.client()?.status()?;
            if json {
                serde_json::to_string(&s)?
            } else {
                api_client::render_status(&s)
            }
        }
        Command::Watch { api, count } => {
            watch(&api.client()?, count)?;
            return Ok(None);
        }
        Command::Events {
            node,
            relative,
            api,
        } => {
            let events = api.client()?.events(node.as_deref())?;
            let start = events.first().map_or(0, |e| e.time);
            events
                .iter()
                .map(|e| {
                    let t = if relative {
                        format!("+{:>4}s", e.time - start)
                    } else {
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_secs(e.time),
                        )
                        .to_string()
                    };
                    format!("{t} {:<8} {} -> {}: {}", e.node, e.from, e.to, e.reason)
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Command::Repair { node, force, api } => {
            let query = if force { "?force=true" } else { "" };
            api.client()?.post(&format!("/api/repair/{node}{query}"))?;
            format!("repair of {node} requested")
        }
        Command::Fenced { node, api } => {
            api.client()?.post(&format!("/api/fenced/{node}"))?;
            format!("{node} confirmed off; its repair goes on")
        }
        Command::Release { node, api } => {
            api.client()?.post(&format!("/api/release/{node}"))?;
            format!("{node} released")
        }
        Command::Logs { node, api } => api.client()?.logs(&node)?.join("\n"),
        Command::Agent {
            command,
            addr,
            signing_key,
            agent_key,
            timeout,
        } => {
            let signing = keyfile::load_controller(&signing_key)?;
            let agent_key = keyfile::load(&agent_key.context("--agent-key is required")?)?;
            let mut client =
                AgentClient::connect(&addr, signing, agent_key, Duration::from_secs(timeout))?;
            match command {
                AgentCommand::Status { json } => {
                    agent_cmd::render_status(&client.status_of(&Request::GetStatus)?, json)
                }
                AgentCommand::Recover { plan, wait, json } => {
                    let plan = agent_cmd::read_plan(&plan)?;
                    agent_cmd::recover(&mut client, plan, wait, json)?
                }
                AgentCommand::Abort => {
                    agent_cmd::render_status(&client.status_of(&Request::Abort)?, false)
                }
                AgentCommand::Reboot => {
                    agent_cmd::render_status(&client.status_of(&Request::Reboot)?, false)
                }
                AgentCommand::Logs => agent_cmd::logs(&mut client)?,
            }
        }
        Command::Backup {
            node,
            to,
            root,
            signing_key,
            paths,
        } => {
            let signing = keyfile::load_backup(&signing_key)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let found = backup::create_backup(&backup::BackupRequest {
                node: &node,
                to: &to,
                root: &root,
                paths: &paths,
                now,
                signing: Some(&signing),
                // The key as this node sees it, and where it stands under a snapshot `--root`.
                exclude: &[
                    signing_key.clone(),
                    root.join(signing_key.strip_prefix("/").unwrap_or(&signing_key)),
                ],
            })?;
            format!(
                "wrote backup {} ({} bytes, sha256 {})",
                found.dir.display(),
                found.manifest.archive_size,
                found.manifest.archive_sha256
            )
        }
        Command::Rescue(cmd) => match cmd {
            RescueCommand::Install {
                esp,
                kernel,
                initramfs,
                cmdline,
            } => {
                let entry = rescue_entry::install(&rescue_entry::Install {
                    esp: &esp,
                    kernel: &kernel,
                    initramfs: &initramfs,
                    cmdline: &cmdline,
                })?;
                format!("installed the rescue entry {}", entry.display())
            }
            RescueCommand::Once { esp, efivars } => {
                rescue_entry::boot_once(&esp, &efivars)?;
                format!("the next boot starts {} (once)", rescue_entry::ENTRY_ID)
            }
            RescueCommand::Remove { esp } => {
                if rescue_entry::remove(&esp)? {
                    "removed the rescue entry".into()
                } else {
                    "no rescue entry was installed".into()
                }
            }
        },
        Command::Keygen {
            controller,
            backup,
            agent,
        } => match (controller, backup, agent) {
            (None, Some(file), _) => {
                let public = file.with_extension("pub");
                let key = keyfile::generate_backup(&file, &public)?;
                format!(
                    "wrote a backup key to {} (mode 0600; keep it on this node) and its public key \
                     to {}; in the cluster file: backup_key = \"{}\"",
                    file.display(),
                    public.display(),
                    key.to_text_as(lazarus_proto::key::Role::Backup).trim_end()
                )
            }
            (Some(file), _, _) => {
                let public = file.with_extension("pub");
                keyfile::generate_controller(&file, &public)?;
                format!(
                    "wrote the controller's signing key to {} (mode 0600; it never leaves this \
                     machine) and its public key to {} (for the rescue image)",
                    file.display(),
                    public.display()
                )
            }
            (None, None, Some(file)) => {
                keyfile::generate(&file)?;
                format!("wrote a new agent key to {} (mode 0600)", file.display())
            }
            (None, None, None) => {
                anyhow::bail!("keygen needs --controller FILE, --backup FILE or --agent FILE")
            }
        },
        Command::Image(cmd) => match cmd {
            ImageCommand::Index {
                image,
                output,
                chunk_size,
                threads,
            } => {
                let threads = threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                image_cmd::build_index(&image, &output, chunk_size, threads)?
            }
            ImageCommand::Pack {
                image,
                output,
                index,
                chunk_size,
                threads,
            } => {
                let threads = threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                image_cmd::pack(&image, &output, &index, chunk_size, threads)?
            }
            ImageCommand::Check { index, image } => {
                image_cmd::check_index(&index, image.as_deref())?
            }
        },
        Command::Flag(cmd) => match cmd {
            FlagCommand::Init { path, force } => flag_cmd::init(&path, force)?,
            FlagCommand::Show { path, json } => flag_cmd::show(&path, json)?,
            FlagCommand::Set {
                path,
                state,
                plan_id,
                error_code,
                message,
                json,
            } => {
                validate_plan_id(&plan_id).context("--plan-id")?;
                let update = FlagUpdate {
                    state,
                    plan_id,
                    error_code,
                    message,
                    ..FlagUpdate::default()
                };
                flag_cmd::set(&path, &update, json)?
            }
            FlagCommand::Clear { path, json } => flag_cmd::clear(&path, json)?,
        },
    }))
}

/// `lazarus watch`: the status table and progress bars, redrawn every second (the screen cleared
/// first on a terminal), `count` times or until the reader goes away.
fn watch(api: &ApiClient, count: Option<u64>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let clear = if stdout.is_terminal() {
        "\x1b[2J\x1b[H"
    } else {
        ""
    };
    for shown in 1.. {
        let s = api.status()?;
        let frame = format!(
            "{clear}{}\n{}",
            api_client::render_status(&s),
            api_client::render_progress(&s)
        );
        match stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing the output"),
        }
        if count.is_some_and(|c| shown >= c) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("LAZARUS_LOG", "info"))
        .format_target(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("lazarus: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(Some(out)) => print_out(&out),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazarus: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// Prints a command's output. A reader that went away (`lazarus flag show F | head -2`) ends it
/// quietly, as for any Unix tool; another write error is the command's error.
fn print_out(out: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazarus: writing the output: {e}");
            ExitCode::from(2)
        }
    }
}
