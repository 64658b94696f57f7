//! `savestream`, the command-line client.
//!
//! `savestream up` runs a whole local instance (Redis when none answers, the
//! API and one worker) in the foreground; the other subcommands talk to a
//! running API.

mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "savestream",
    version,
    about = "Save Telegram media and direct links into storages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local instance: Redis (the one at [redis] url, or a private
    /// redis-server started for the run), the API and one worker.
    Up {
        /// The config file both services read.
        #[arg(long, default_value = "config.toml", env = "SAVESTREAM_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("savestream: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up { config } => up::run(&config).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("savestream: {error:#}");
            ExitCode::FAILURE
        }
    }
}
