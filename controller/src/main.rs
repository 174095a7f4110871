//! `lazarus`: the controller daemon and operator CLI. Parses arguments, maps errors to one line
//! on stderr and exit status 2.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lazarus_agent::flag_store::FlagUpdate;
use lazarus_controller::{flag_cmd, keyfile};
use lazarus_proto::flag::{validate_plan_id, FlagState};

/// Lazarus brings failed bare-metal cluster nodes back without a human at the console.
#[derive(Parser)]
#[command(name = "lazarus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new cluster key (32 random bytes as hex, mode 0600) to FILE.
    Keygen { file: PathBuf },
    /// Read or write the recovery flag of a file or partition.
    #[command(subcommand)]
    Flag(FlagCommand),
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

fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Keygen { file } => {
            keyfile::generate(&file)?;
            Ok(format!(
                "wrote a new cluster key to {} (mode 0600)",
                file.display()
            ))
        }
        Command::Flag(cmd) => match cmd {
            FlagCommand::Init { path, force } => Ok(flag_cmd::init(&path, force)?),
            FlagCommand::Show { path, json } => Ok(flag_cmd::show(&path, json)?),
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
                Ok(flag_cmd::set(&path, &update, json)?)
            }
            FlagCommand::Clear { path, json } => Ok(flag_cmd::clear(&path, json)?),
        },
    }
}

fn main() -> ExitCode {
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
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lazarus: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
