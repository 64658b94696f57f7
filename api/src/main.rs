//! The `savestream-api` binary: flags, config, tracing, then the
//! [`Application`] until SIGTERM or SIGINT. Everything else is in the library.
//!
//! Exit codes: 0 after a clean shutdown (or when `[api] enable = false`),
//! 1 when the API cannot start or stops with an error, 2 for a bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use savestream_api::Application;
use savestream_shared::config::Config;
use savestream_shared::telemetry::{self, LogFormat};

// A request allocates a hundred-odd small blocks (a create's store call most
// of them); glibc's allocator spent about a quarter of a create's
// instructions on them, mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(name = "savestream-api", version, about = "savestream's HTTP task API")]
struct Cli {
    /// The config file.
    #[arg(long, env = "SAVESTREAM_CONFIG", default_value = "config.toml")]
    config: PathBuf,
    /// Log lines for people (`human`) or for collectors (`json`).
    #[arg(long, env = "SAVESTREAM_LOG", default_value = "human")]
    log_format: LogFormat,
    /// Print the OpenAPI document and exit, without reading the config or connecting to Redis.
    #[arg(long)]
    print_openapi: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_openapi {
        println!("{}", savestream_api::openapi_json());
        return ExitCode::SUCCESS;
    }
    let loaded = match Config::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log_format);
    loaded.log_warnings();
    let config = loaded.config;
    if !config.api.enable {
        tracing::warn!(
            "the API is disabled ([api] enable = false in {}): nothing to serve, exiting; set it to true (or SAVESTREAM_API_ENABLE=true) to serve the API",
            cli.config.display()
        );
        return ExitCode::SUCCESS;
    }
    let application = match Application::build(config).await {
        Ok(application) => application,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %application.local_addr(), "savestream-api listening");
    match application.run_until_stopped(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("savestream-api stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("the server stopped with an error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (`docker stop`) or SIGINT (Ctrl-C). The handlers
/// are installed here, before the future is first polled: the server
/// registers the process in Redis (up to 2 s) before it polls this, and a
/// signal meanwhile must stop it cleanly, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::error!(%error, "cannot listen for {name}");
                None
            }
        };
        let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C");
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            tokio::select! {
                () = received(interrupt.as_mut()) => {}
                () = received(terminate.as_mut()) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// Completes when `stream` delivers its signal; never without a stream.
#[cfg(unix)]
async fn received(stream: Option<&mut tokio::signal::unix::Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
