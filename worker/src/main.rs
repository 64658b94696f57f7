//! The `savestream-worker` binary: parses the command line, loads
//! config.toml, installs logging, and runs an [`Application`] of the chosen
//! `--role` until SIGTERM or Ctrl-C, or runs `login` or `rebuild`.
//! Everything else lives in the library.
//!
//! `rebuild` recomputes the projection from the event log
//! ([`savestream_worker::rebuild`]): it connects with `[redis]` as a worker
//! does, refuses while any worker or API process is registered as live
//! (naming them; `--force` runs anyway), and prints what it rebuilt on
//! standard output, one count a line (`tasks rebuilt: N`, then `queued`,
//! `running`, `delayed`, `expired`, `kept`).
//!
//! Exit codes: 0 after a graceful shutdown (or a login, or a rebuild), 1
//! when the worker cannot start (Redis still unreachable after `[redis]
//! startup_wait_seconds`, a storage that cannot be created, a webhook
//! dispatcher that cannot create its consumer group) or stops because its
//! webhook dispatcher cannot run (after a graceful shutdown of the rest),
//! or the login fails, or the rebuild is refused (workers or API processes
//! registered as live: nothing was written) or fails (Redis unreachable or failing
//! midway: run it again), 2 for a bad command line or config file
//! (including Telegram settings that `login` cannot use), 3 when the
//! shutdown was cut short: a
//! second SIGTERM or Ctrl-C during the drain (the process exits at once), or
//! attempts that did not finish releasing their tasks within `RELEASE_WAIT`
//! (5 s) after the grace period (Redis not answering, or a write that
//! hangs). 3 wins over 1 when both happen (a dispatcher that failed, then
//! attempts abandoned): the dispatcher's failure is in the log. Nothing is
//! lost either way: the work items of the tasks still
//! running stay pending, and another worker takes them over once their
//! leases expire (`[queue] lease_seconds`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use savestream_shared::config::Config;
use savestream_shared::telemetry::{self, LogFormat};
use savestream_telegram::{LoginError, TelegramError};
use savestream_worker::login::TerminalPrompt;
use savestream_worker::{Application, Role, RunError};
use tokio_util::sync::CancellationToken;

/// The exit code of a shutdown cut short (see the exit codes above).
const EXIT_CUT_SHORT: u8 = 3;

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
    /// Rebuilds the projection (task hashes, queued/running/delayed sets)
    /// from the event log, after it was lost or damaged.
    ///
    /// Run it with nothing writing to Redis: stop every worker and every
    /// API process first. It refuses to run while a worker or API process
    /// is registered as live, and names them.
    /// Prints one count a line: tasks rebuilt, queued, running, delayed
    /// (queued, waiting out a retry's backoff), expired (ended past
    /// `[queue] retention_hours`, left out) and kept (their log trimmed at
    /// its start: their projection is kept as it was). Running it again is
    /// harmless. Exits 0 when rebuilt, 1 when refused or when Redis fails.
    Rebuild {
        /// Rebuilds even while processes are registered as live: for a
        /// registration left by a process that crashed, which stays for
        /// three `[queue] lease_seconds` after its last heartbeat. Make
        /// sure the processes named are really gone.
        #[arg(long)]
        force: bool,
    },
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime
/// does for every program: the limit a service manager or shell leaves
/// (1,024 under systemd) is small for a worker whose every download holds a
/// descriptor for each directory from the storage's base path down to its
/// file (see `storage::local`), besides its sockets and its file. The hard
/// limit is the operator's word and is left as it is.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is unlimited. A soft limit already unlimited needs nothing. An
    // unlimited hard one (macOS, where the soft one is 256) is not a number
    // the kernel takes for files: as Go's runtime does there, ask for
    // OPEN_MAX, 10,240, which macOS always allows.
    let Some(soft) = limit.current else {
        return;
    };
    let hard = limit.maximum.unwrap_or(10_240);
    if soft >= hard {
        return;
    }
    limit.current = Some(hard);
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open file limit"),
        Err(error) => tracing::debug!(%error, "cannot raise the open file limit: keeping {soft}"),
    }
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
    match cli.command {
        Some(Command::Login) => return runtime.block_on(login(loaded.config)),
        Some(Command::Rebuild { force }) => return runtime.block_on(rebuild(loaded.config, force)),
        None => {}
    }
    raise_open_file_limit();
    let exit_code = match runtime.block_on(run(loaded.config, cli.role)) {
        Ok(exit_code) => exit_code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    };
    // A shutdown cut short leaves attempts behind, possibly blocked in a
    // disk write on a blocking thread: dropping the runtime would wait for
    // them, forever if the disk hangs.
    runtime.shutdown_background();
    exit_code
}

async fn run(config: Config, role: Role) -> anyhow::Result<ExitCode> {
    let application = Application::build_with_role(config, role)
        .await
        .context("starting the worker")?;
    // Listened to from here on: until now the default action of a signal
    // (exit) was right, as nothing had started.
    let mut signals = ShutdownSignals::listen();
    let shutdown = CancellationToken::new();
    let second_signal = async {
        let first = signals.next().await;
        tracing::info!("{first} received: shutting down; send another to exit at once");
        shutdown.cancel();
        signals.next().await
    };
    tokio::select! {
        ran = application.run_until_stopped(shutdown.clone().cancelled_owned()) => match ran {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error @ RunError::Abandoned { .. }) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(EXIT_CUT_SHORT))
            }
            Err(error) => Err(error).context("running the worker"),
        },
        second = second_signal => {
            tracing::warn!(
                "{second} received again: exiting at once; the tasks still running stay pending and another worker takes them over once their leases expire"
            );
            Ok(ExitCode::from(EXIT_CUT_SHORT))
        }
    }
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

/// `savestream-worker rebuild`: the report on standard output on success,
/// one line on failure (the redis URL with its password redacted).
async fn rebuild(config: Config, force: bool) -> ExitCode {
    match savestream_worker::rebuild::run(&config, force).await {
        Ok(report) => {
            // The rebuild is done: a reader that went away does not undo
            // it, so a failed write changes neither the outcome nor the code.
            let report = savestream_worker::rebuild::report_lines(&report);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM (how containers are stopped) and Ctrl-C, as often as they come:
/// the first starts the graceful shutdown, a second cuts it short.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    #[cfg(unix)]
    fn listen() -> ShutdownSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let listen_to = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for {name}: it stops the worker without a graceful shutdown");
                None
            }
        };
        ShutdownSignals {
            interrupt: listen_to(SignalKind::interrupt(), "Ctrl-C"),
            terminate: listen_to(SignalKind::terminate(), "SIGTERM"),
        }
    }

    #[cfg(not(unix))]
    fn listen() -> ShutdownSignals {
        ShutdownSignals {}
    }

    /// Completes when the next signal arrives, naming it.
    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        async fn received(listener: &mut Option<tokio::signal::unix::Signal>) {
            let came = match listener {
                Some(listener) => listener.recv().await.is_some(),
                None => false,
            };
            if !came {
                // No listener, or its driver is gone: no signal comes
                // through it again.
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = received(&mut self.interrupt) => "Ctrl-C",
            () = received(&mut self.terminate) => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}
