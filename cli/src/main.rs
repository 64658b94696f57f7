//! `savestream`, the command-line client: flags, then one subcommand, then
//! an exit code. Each subcommand lives in its own module.
//!
//! `savestream up` runs a whole local instance (a private Redis when nothing
//! listens at `[redis] url`, the API and one worker) in the foreground. The others talk to a running API
//! through the generated `savestream-client` crate, at `--url` /
//! `SAVESTREAM_URL` with `--token` / `SAVESTREAM_TOKEN`.
//!
//! Exit codes (see `exit.rs`):
//! - 0 on success (`watch`: the task completed);
//! - 1 when the API refused or could not be reached (`watch`: the task
//!   failed or was canceled);
//! - 2 for a bad command line or input: clap's own usage errors, and ours
//!   (a `--url` that is not one, a link that is neither kind or has
//!   whitespace inside, `-` among links, no links on standard input or a
//!   line of it that is not UTF-8, `up`'s config missing or invalid);
//! - 3 when `watch` could not follow the task to its end (the API
//!   unreachable or refusing, the task unknown): how it ends is unknown, so
//!   a script must not take it for a failure and add the link again; and
//!   when `up`'s stop was not clean (the worker cut its drain short, or a
//!   child exited with an error or was killed: see `up.rs`);
//! - 141 when standard output's reader went away (`savestream ls | head`):
//!   quietly, as a shell reports a program that SIGPIPE killed (128 + 13),
//!   rather than 0, since the command stopped before it was done.
//!
//! Errors are one line on stderr.

mod add;
mod api;
mod cancel;
mod exit;
mod format;
mod ls;
mod out;
mod repeat;
mod sse;
mod status;
mod up;
mod watch;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "savestream",
    version,
    about = "Save Telegram media and direct links into storages"
)]
struct Cli {
    // Given before the subcommand (`savestream --url URL ls`).
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

/// `--url` and `--token`, for the subcommands that talk to a running API.
///
/// They are not `global`: clap would then offer them to `up` as well, which
/// serves its own API and reads neither. Instead the top level and each
/// client subcommand take them (`savestream --url URL ls` and
/// `savestream ls --url URL` both work), and `up` refuses the top level's.
#[derive(Args, Default)]
struct Connection {
    // Both are optional, and their variables are read in `connection`, not
    // by clap: clap counts a value from the environment as given, and its
    // usage line in an error then listed `--url <URL> --token <TOKEN>`
    // among what `add` requires.
    /// The API to talk to (every subcommand but `up`) [env: SAVESTREAM_URL] [default:
    /// http://127.0.0.1:8080]
    #[arg(long)]
    url: Option<String>,
    /// The API's [api] token (every subcommand but `up`); none is sent when absent or empty.
    /// Surrounding whitespace is ignored [env: SAVESTREAM_TOKEN]
    #[arg(long)]
    token: Option<String>,
}

impl Connection {
    /// `self` with the settings it lacks taken from `outer`: a flag after the
    /// subcommand wins over the same flag before it.
    fn or(self, outer: Connection) -> Connection {
        Connection {
            url: self.url.or(outer.url),
            token: self.token.or(outer.token),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a local instance: Redis (the one at [redis] url, or a private
    /// redis-server started for the run when nothing listens there), the API and one worker;
    /// exits 2 for a bad config, 3 if the stop was not clean (the worker's drain cut short).
    Up {
        /// The config file both services read.
        #[arg(long, default_value = "config.toml", env = "SAVESTREAM_CONFIG")]
        config: PathBuf,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// The subcommands that talk to a running API.
#[derive(Subcommand)]
enum ClientCommand {
    /// Create a task per link (a Telegram message's file or a direct link); prints their ids, one per line.
    Add {
        #[command(flatten)]
        args: add::AddArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a task: status, title, where it is saved, progress, error.
    Status {
        /// The id `savestream add` printed.
        task_id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List queued and running tasks, oldest first.
    Ls {
        /// How many of each to list at most: 1 to 1000.
        #[arg(long, default_value_t = ls::DEFAULT_LIMIT, value_parser = clap::value_parser!(u32).range(1..=ls::MAX_LIMIT as i64))]
        limit: u32,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a queued or running task.
    Cancel {
        /// The id `savestream add` printed.
        task_id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the live worker processes and the tasks they hold.
    Workers {
        #[command(flatten)]
        connection: Connection,
    },
    /// Follow a task with a progress bar until it ends; exits 0 if it completed, 1 if it
    /// failed or was canceled, 3 if it could not be followed to its end.
    Watch {
        /// The id `savestream add` printed.
        task_id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

impl ClientCommand {
    /// The `--url` and `--token` given after the subcommand.
    fn take_connection(&mut self) -> Connection {
        let connection = match self {
            ClientCommand::Add { connection, .. }
            | ClientCommand::Status { connection, .. }
            | ClientCommand::Ls { connection, .. }
            | ClientCommand::Cancel { connection, .. }
            | ClientCommand::Workers { connection }
            | ClientCommand::Watch { connection, .. } => connection,
        };
        std::mem::take(connection)
    }
}

/// The API's URL and token: the flag, else its variable when set and not
/// empty, else the default (no token).
fn connection(Connection { url, token }: Connection) -> anyhow::Result<(String, String)> {
    let from_env = |name: &str| match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(exit::usage(format_args!(
            "{name} is not UTF-8 text: set it to the API's URL or token alone, or unset it"
        ))),
    };
    let url = match url {
        Some(url) => url,
        None => from_env("SAVESTREAM_URL")?.unwrap_or_else(|| api::DEFAULT_URL.to_owned()),
    };
    let token = match token {
        Some(token) => token,
        None => from_env("SAVESTREAM_TOKEN")?.unwrap_or_default(),
    };
    Ok((url, token))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let watching = matches!(cli.command, Command::Client(ClientCommand::Watch { .. }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("savestream: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up { .. } if cli.connection.url.is_some() || cli.connection.token.is_some() => {
                Err(exit::usage(
                    "`up` takes neither --url nor --token: it serves the API its config describes; \
                     give them to the other subcommands",
                ))
            }
            Command::Up { config } => up::run(&config).await,
            Command::Client(mut command) => {
                let (url, token) = connection(command.take_connection().or(cli.connection))?;
                let api = api::Api::new(&url, &token)?;
                match command {
                    ClientCommand::Add { args, .. } => add::run(&api, args).await,
                    ClientCommand::Status { task_id, .. } => status::run(&api, &task_id).await,
                    ClientCommand::Ls { limit, .. } => ls::run(&api, limit).await,
                    ClientCommand::Cancel { task_id, .. } => cancel::run(&api, &task_id).await,
                    ClientCommand::Workers { .. } => workers::run(&api).await,
                    ClientCommand::Watch { task_id, .. } => watch::run(&api, &task_id).await,
                }
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            let (code, say) = exit::for_error(&error, watching);
            if say {
                eprintln!("savestream: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_help_names_the_default_url_and_the_variables() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains(&format!("[default: {}]", api::DEFAULT_URL)),
            "{help}"
        );
        assert!(help.contains("[env: SAVESTREAM_URL]"), "{help}");
        assert!(help.contains("[env: SAVESTREAM_TOKEN]"), "{help}");
    }
}
