//! The `savestream-worker` binary: parses the command line, loads
//! config.toml, installs logging, and runs an [`Application`] of the chosen
//! `--role` until SIGTERM or Ctrl-C, or runs `login`. Everything else lives
//! in the library.
//!
//! Exit codes: 0 after a graceful shutdown (or a login), 1 when the worker
//! cannot start (Redis still unreachable after `[redis]
//! startup_wait_seconds`, a storage that cannot be created, a webhook
//! dispatcher that cannot create its consumer group) or stops because its
//! webhook dispatcher cannot run (after a graceful shutdown of the rest),
//! or the login fails, 2 for a bad command line or config file (including Telegram
//! settings that `login` cannot use).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use savestream_shared::config::Config;
use savestream_shared::telemetry::{self, LogFormat};
use savestream_telegram::{LoginError, TelegramError};
use savestream_worker::login::TerminalPrompt;
use savestream_worker::{Application, Role};

#[derive(Debug, Parser)]
#[command(
    name = "savestream-worker",
    version,
    about = "Runs savestream tasks: downloads files into storages"
)]
struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "SAVESTREAM_CONFIG", default_value = "config.toml")]
    config: PathBuf,
    /// Log lines for people (`human`) or for machines (`json`).
    #[arg(long, global = true, env = "SAVESTREAM_LOG", default_value = "human")]
    log_format: LogFormat,
    /// What this process runs: `all` (tasks, and webhooks when `[api]
    /// webhook_url` is set), `tasks`, or `webhooks` (the dispatcher only).
    #[arg(long, env = "SAVESTREAM_ROLE", default_value = "all")]
    role: Role,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Logs a Telegram user account in (phone, code, 2FA password) and
    /// writes the session file `[telegram.userbot] session` names.
    Login,
}

/// Keeps freed memory in the process instead of giving it back to the kernel
/// at once (glibc only; other allocators decide for themselves).
///
/// A download cycles through the HTTP client's read buffers (up to ~400 KiB
/// each) at the speed of the network, and holds a few MiB of them queued for
/// the thread writing the partial file. glibc trimmed its heaps as they were
/// freed and faulted the pages in again for the next buffers: 200k page
/// faults per 2 GiB downloaded. Without trimming, the heap stays as large as
/// the most the worker ever held (peak RSS), which is bounded.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Both are set, because setting either turns off glibc's own
        // adjustment of the other. Buffers below 4 MiB come from the heap.
        const TRIM_THRESHOLD_BYTES: libc::c_int = 64 << 20;
        const MMAP_THRESHOLD_BYTES: libc::c_int = 4 << 20;
        // SAFETY: mallopt only changes allocator parameters; it runs before
        // any other thread exists. A refusal (0) leaves glibc's defaults.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let loaded = match Config::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    loaded.log_warnings();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    if let Some(Command::Login) = cli.command {
        return runtime.block_on(login(loaded.config));
    }
    match runtime.block_on(run(loaded.config, cli.role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    let application = Application::build_with_role(config, role)
        .await
        .context("starting the worker")?;
    application
        .run_until_stopped(shutdown_signal())
        .await
        .context("running the worker")?;
    Ok(())
}

/// `savestream-worker login`: the session path on success, one line on failure.
async fn login(config: Config) -> ExitCode {
    let mut prompt = TerminalPrompt::stdio();
    match savestream_telegram::login(&config.telegram, &mut prompt).await {
        Ok(path) => {
            println!("session written to {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error @ LoginError::Telegram(TelegramError::Config(_))) => {
            eprintln!("error: cannot log in: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: cannot log in: {error}");
            ExitCode::from(1)
        }
    }
}

/// Completes on SIGTERM (how containers are stopped) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
