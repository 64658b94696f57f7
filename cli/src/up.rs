//! `savestream up`: one command for a working local instance.
//!
//! It reads the config, uses the Redis at `[redis] url` when one answers and
//! otherwise starts a private `redis-server` (its own port and data dir under
//! `.savestream/redis`, AOF on), then runs `savestream-api` and one
//! `savestream-worker` with that config until Ctrl-C or SIGTERM. On the way
//! out it stops them in reverse order with SIGTERM, so running tasks drain
//! and Redis writes its AOF.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fred::prelude::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use savestream_shared::config::Config;

/// A child process stopped with SIGTERM when dropped.
struct Supervised {
    name: &'static str,
    child: Child,
}

impl Supervised {
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // Synchronous shutdown path: nothing to await but the child's exit.
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "savestream: {} did not stop within {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let loaded = Config::load(config_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    let config = loaded.config;
    let config_arg = config_path.display().to_string();

    let mut children: Vec<Supervised> = Vec::new();
    let redis_url = if redis_answers(&config.redis.url).await {
        eprintln!("savestream: using the Redis at [redis] url");
        None
    } else {
        let (redis, url) = start_private_redis(Path::new(".savestream/redis")).await?;
        eprintln!("savestream: no Redis answered at [redis] url; started a private redis-server at {url}");
        children.push(redis);
        Some(url)
    };

    let spawn = |binary: &'static str| -> anyhow::Result<Supervised> {
        let mut command = Command::new(sibling_binary(binary)?);
        command.arg("--config").arg(&config_arg);
        if let Some(url) = &redis_url {
            command.env("SAVESTREAM_REDIS_URL", url);
        }
        let child = command.spawn().with_context(|| format!("starting {binary}"))?;
        Ok(Supervised { name: binary, child })
    };
    children.push(spawn("savestream-api")?);
    children.push(spawn("savestream-worker")?);
    eprintln!(
        "savestream: API on http://{}:{} with one worker; Ctrl-C stops everything",
        if config.api.host == "0.0.0.0" {
            "127.0.0.1"
        } else {
            &config.api.host
        },
        config.api.port
    );

    let exit = wait_for_stop_or_exit(&mut children).await;
    let grace = config.worker.shutdown_grace() + Duration::from_secs(5);
    for child in children.iter_mut().rev() {
        child.stop(grace);
    }
    Ok(exit)
}

/// Waits for Ctrl-C / SIGTERM, or for a child to exit on its own (which
/// stops the whole instance: half an instance helps nobody).
async fn wait_for_stop_or_exit(children: &mut [Supervised]) -> ExitCode {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            eprintln!("savestream: cannot listen for SIGTERM: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = terminate.recv() => return ExitCode::SUCCESS,
            _ = poll.tick() => {
                for child in children.iter_mut() {
                    if let Ok(Some(status)) = child.child.try_wait() {
                        eprintln!("savestream: {} exited ({status}); stopping the rest", child.name);
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
}

async fn redis_answers(url: &str) -> bool {
    let Ok(config) = fred::prelude::Config::from_url(url) else {
        return false;
    };
    let Ok(client) = Builder::from_config(config)
        .with_connection_config(|connection| connection.connection_timeout = Duration::from_secs(1))
        .build()
    else {
        return false;
    };
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        client.init().await.ok()?;
        client.ping::<String>(None).await.ok()
    })
    .await;
    let _ = client.quit().await;
    matches!(answered, Ok(Some(_)))
}

/// Starts `redis-server` on a free loopback port with its data (AOF on) in
/// `data_dir`, and waits until it answers.
async fn start_private_redis(data_dir: &Path) -> anyhow::Result<(Supervised, String)> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("finding a free port for redis-server")?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
        ])
        .arg("--dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|error| {
            anyhow::anyhow!(
                "no Redis answers at [redis] url and redis-server cannot be started ({error}): \
                 install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) \
                 or point [redis] url at a running Redis"
            )
        })?;
    let mut redis = Supervised {
        name: "redis-server",
        child,
    };
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_answers(&url).await {
        if Instant::now() > deadline || matches!(redis.child.try_wait(), Ok(Some(_))) {
            redis.stop(Duration::from_secs(1));
            bail!(
                "the private redis-server on port {port} did not start; is {} writable?",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((redis, url))
}

/// The path of another savestream binary: the one next to this executable.
fn sibling_binary(binary: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable's path")?;
    let path = exe.with_file_name(format!("{binary}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} is missing: build every binary with `cargo build --release --bins`",
            path.display()
        );
    }
    Ok(path)
}
