//! `savestream up`: one command for a working local instance.
//!
//! It reads the config, uses the Redis at `[redis] url` when one answers and
//! starts a private `redis-server` (its own port and data dir under
//! `.savestream/redis`, AOF on) only when nothing listens there (the
//! connection is refused). Anything else there (a refused login, a timeout,
//! a name that does not resolve) stops `up` with what went wrong, since a
//! private Redis would then hold tasks the user's Redis never sees. Then it
//! runs `savestream-api` and one `savestream-worker` with that config until
//! Ctrl-C, SIGTERM or SIGHUP. On the way out it stops them in reverse order
//! with one SIGTERM each, so running tasks drain and Redis writes its AOF; a
//! second Ctrl-C or SIGTERM during that is passed on to the child being
//! stopped, which cuts the worker's drain short, as it would for the worker
//! alone.
//!
//! Each child runs in a process group of its own. A terminal sends Ctrl-C to
//! its whole foreground process group: children in `up`'s group would get
//! that SIGINT as well as `up`'s SIGTERM, and the worker takes a second
//! signal as "exit at once" (exit 3, running tasks left to their leases).
//! Outside the terminal's group only `up` hears the terminal, so `up` must
//! pass on every signal that ends it (SIGHUP included, unless `up` was
//! started with SIGHUP ignored, as `nohup` starts it) and stop its
//! children, and it does: no child outlives it. A signal `up` cannot catch
//! (SIGKILL from the OOM killer or `kill -9`) is covered on Linux by each
//! child asking the kernel for a SIGTERM when `up` dies
//! (`PR_SET_PDEATHSIG`), so they stop as they would for a Ctrl-C.
//!
//! The private Redis's data directory is locked (`flock` on
//! `.savestream/redis/up.lock`) for as long as `up` or that redis-server
//! runs: a second `up` in the same directory stops saying so, instead of
//! starting a second Redis appending to the same AOF.
//!
//! Exit codes: 0 after a clean stop; 1 when the instance could not start
//! (Redis, a missing binary, the data directory locked) or a child exited
//! on its own; 2 for a missing or invalid config, found before anything
//! starts; 3 when the stop was not clean: the worker cut its drain short
//! (exit 3, running tasks left to their leases), or a child exited with an
//! error or had to be killed.

use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `eprintln!` that cannot panic. Once the terminal hangs up, writing to it
/// fails (EIO) and `eprintln!` would panic, and a panic skips the orderly
/// stop that a closed terminal's SIGHUP asks for.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use anyhow::{bail, Context};

use crate::exit::{usage, SHUTDOWN_NOT_CLEAN};
use fred::prelude::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use savestream_shared::config::Config;
use tokio::signal::unix::{signal, SignalKind};

/// A child process, in a process group of its own, sent SIGTERM when
/// dropped while it still runs (an early error or a panic in `up`), so it
/// does not outlive `up`.
struct Supervised {
    name: &'static str,
    child: Child,
}

impl Supervised {
    /// Starts `command` in a process group of its own (see the module doc),
    /// with no standard input (only `up` reads the terminal), to be sent
    /// SIGTERM by the kernel if `up` dies first, and with `keep` (the data
    /// directory's lock) open in it, when given, so the lock lasts as long
    /// as the child.
    ///
    /// Called from `up`'s main thread: the kernel sends the death signal
    /// when the thread that forked the child ends, and the main thread
    /// ends only with the process.
    fn spawn(name: &'static str, command: &mut Command, keep: Option<RawFd>) -> std::io::Result<Supervised> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe system calls (prctl, getppid, fcntl) and
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                die_with_parent(parent)?;
                if let Some(fd) = keep {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.process_group(0).stdin(Stdio::null()).spawn()?;
        Ok(Supervised { name, child })
    }

    fn terminate(&self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Sends one SIGTERM and waits up to `grace` for the child to exit,
    /// then kills it. A further stop signal to `up` meanwhile is passed on
    /// as a second SIGTERM, which tells the worker to exit at once. Whether
    /// the child stopped cleanly: it exited 0 (the worker exits 3 when its
    /// drain was cut short), or the SIGTERM ended it before it had set up
    /// its handler (a child still starting, with nothing to drain), without
    /// being killed.
    async fn stop(&mut self, grace: Duration, signals: &mut StopSignals) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            // Exited before it was asked to: reported by
            // `wait_for_stop_or_exit`, which makes `up` exit 1.
            return status.success();
        }
        self.terminate();
        let deadline = tokio::time::Instant::now() + grace;
        // The std child has no exit future; polling its status is the
        // cheapest way to await it here.
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        self.report(status);
                        return status.success() || status.signal() == Some(libc::SIGTERM);
                    }
                }
                name = signals.next() => {
                    say!("savestream: {name} received again: passing it on to {}", self.name);
                    self.terminate();
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        say!(
            "savestream: {} did not stop within {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.report(status);
        }
        false
    }

    /// One line per stopped child, so a shutdown cut short (the worker's
    /// exit code 3) is not hidden behind `up`'s own exit.
    fn report(&self, status: ExitStatus) {
        say!("savestream: {} stopped ({status})", self.name);
    }
}

/// Asks the kernel to send this (forked) process SIGTERM when its parent,
/// `up`, dies, even by SIGKILL; and exits at once when `up` is already
/// gone (died between the fork and here), since no signal would then come.
#[cfg(target_os = "linux")]
fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe system calls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Elsewhere there is no such request: a child of a killed `up` goes on.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_parent: libc::pid_t) -> std::io::Result<()> {
    Ok(())
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Whether this process was started with `signal` ignored (as `nohup`
/// starts it with SIGHUP).
fn ignored(signal: libc::c_int) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one
    // into `current`, a plain C struct for which all zeroes is valid.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == libc::SIG_IGN
    }
}

/// The signals that stop `up`: Ctrl-C, SIGTERM (service managers), SIGHUP
/// (the terminal closed) and SIGQUIT (Ctrl-\). Each used to reach the
/// children from the terminal directly; now `up` passes them on.
struct StopSignals {
    listeners: Vec<(&'static str, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn listen() -> anyhow::Result<StopSignals> {
        let kinds = [
            ("Ctrl-C", SignalKind::interrupt()),
            ("SIGTERM", SignalKind::terminate()),
            ("SIGHUP", SignalKind::hangup()),
            ("SIGQUIT", SignalKind::quit()),
        ];
        let mut listeners = Vec::with_capacity(kinds.len());
        for (name, kind) in kinds {
            // `nohup savestream up` ignores SIGHUP so that closing the
            // terminal stops nothing; listening would undo that.
            if kind == SignalKind::hangup() && ignored(libc::SIGHUP) {
                continue;
            }
            let listener = signal(kind).with_context(|| {
                format!("cannot listen for {name}, which must stop the children `up` starts")
            })?;
            listeners.push((name, listener));
        }
        Ok(StopSignals { listeners })
    }

    /// Completes when the next stop signal arrives, naming it.
    async fn next(&mut self) -> &'static str {
        let received = self.listeners.iter_mut().map(|(name, listener)| {
            Box::pin(async move {
                // `None` only when the runtime's signal driver is gone.
                if listener.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
                *name
            })
        });
        futures::future::select_all(received).await.0
    }
}

pub async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    // A config that cannot be read is bad input, found before anything
    // starts: exit 2, as savestream-worker exits for it.
    let loaded = Config::load(config_path).map_err(usage)?;
    let config = loaded.config;
    let config_arg = config_path.display().to_string();
    // Listened to before any child starts: from here on a stop signal no
    // longer ends `up` at once, which would leave the children running.
    let mut signals = StopSignals::listen()?;

    let mut children: Vec<Supervised> = Vec::new();
    // Held until `up` returns (and by the private redis-server while it runs).
    let mut _data_dir_lock = None;
    let redis_url = match probe_redis(&config.redis.url).await {
        RedisProbe::Answers => {
            say!("savestream: using the Redis at [redis] url");
            None
        }
        RedisProbe::NothingListens => {
            let data_dir = Path::new(PRIVATE_REDIS_DIR);
            let lock = lock_data_dir(data_dir)?;
            let (redis, url) = start_private_redis(data_dir, lock.as_raw_fd(), &mut signals).await?;
            _data_dir_lock = Some(lock);
            say!(
                "savestream: nothing listens at [redis] url ({}); started a private redis-server at {url}",
                config.redis.shown_url()
            );
            children.push(redis);
            Some(url)
        }
        RedisProbe::Fails { said, hint } => bail!(
            "cannot use the Redis at [redis] url: {said}; {hint} \
             (`up` starts a private Redis only when nothing listens there)"
        ),
    };

    let spawn = |binary: &'static str| -> anyhow::Result<Supervised> {
        let mut command = Command::new(sibling_binary(binary)?);
        command.arg("--config").arg(&config_arg);
        if let Some(url) = &redis_url {
            command.env("SAVESTREAM_REDIS_URL", url);
        }
        Supervised::spawn(binary, &mut command, None).with_context(|| format!("starting {binary}"))
    };
    children.push(spawn("savestream-api")?);
    children.push(spawn("savestream-worker")?);
    say!(
        "savestream: API on http://{}:{} with one worker; Ctrl-C stops everything",
        if config.api.host == "0.0.0.0" {
            "127.0.0.1"
        } else {
            &config.api.host
        },
        config.api.port
    );

    let private_redis = redis_url.is_some();
    let exit = wait_for_stop_or_exit(&mut children, &mut signals, private_redis).await;
    let grace = config.worker.shutdown_grace() + Duration::from_secs(5);
    let mut clean = true;
    for child in children.iter_mut().rev() {
        clean &= child.stop(grace, &mut signals).await;
    }
    if exit == ExitCode::SUCCESS && !clean {
        say!(
            "savestream: the stop was not clean (see above); a worker cut short leaves its running tasks \
             to their leases, and they run again once the lease runs out"
        );
        return Ok(ExitCode::from(SHUTDOWN_NOT_CLEAN));
    }
    Ok(exit)
}

/// Waits for a stop signal, or for a child to exit on its own (which stops
/// the whole instance: half an instance helps nobody). `private_redis`:
/// whether `up` started the Redis, and so stops it.
async fn wait_for_stop_or_exit(
    children: &mut [Supervised],
    signals: &mut StopSignals,
    private_redis: bool,
) -> ExitCode {
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    // The user's own Redis is theirs to stop.
    let what = if private_redis {
        "the worker, the API and Redis"
    } else {
        "the worker and the API"
    };
    loop {
        tokio::select! {
            name = signals.next() => {
                say!("savestream: {name} received: stopping {what} in turn, each with one SIGTERM");
                return ExitCode::SUCCESS;
            }
            _ = poll.tick() => {
                for child in children.iter_mut() {
                    if let Ok(Some(status)) = child.child.try_wait() {
                        say!("savestream: {} exited ({status}); stopping the rest", child.name);
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
}

/// How long `up` waits for the Redis at `[redis] url` to accept a
/// connection, and then to answer PING.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `up` found at `[redis] url`.
#[derive(Debug)]
enum RedisProbe {
    /// A Redis answered PING: `up` uses it.
    Answers,
    /// Every address the URL names refused the connection: nothing listens
    /// there, so `up` starts a private Redis.
    NothingListens,
    /// Anything else (a refused login, a timeout, a name that does not
    /// resolve, something that does not speak Redis): `up` stops, saying
    /// what happened (`said`) and what to do (`hint`), rather than put the
    /// tasks in a private store that the user's Redis never sees.
    Fails { said: String, hint: &'static str },
}

/// What to do when the Redis refused the login.
const FIX_THE_PASSWORD: &str = "set its password in [redis] url (redis://:PASSWORD@host:port) \
     or in SAVESTREAM_REDIS_URL, which overrides it";
/// What to do about any other failure.
const FIX_THE_URL: &str = "make [redis] url (or SAVESTREAM_REDIS_URL, which overrides it) \
     name a Redis that answers, or start that Redis";

/// Probes the Redis at `url`: first whether anything listens at each
/// address it names (a refused connection is the one answer that means
/// nothing does), then whether what listens answers PING, logged in with
/// the URL's credentials.
async fn probe_redis(url: &str) -> RedisProbe {
    let config = match fred::prelude::Config::from_url(url) {
        Ok(config) => config,
        Err(error) => {
            return RedisProbe::Fails {
                said: format!("it is not a Redis URL ({})", error.details()),
                hint: FIX_THE_URL,
            }
        }
    };
    let mut listening = Vec::new();
    let mut failure = None;
    for server in config.server.hosts() {
        let address = format!("{}:{}", server.host, server.port);
        let connect = tokio::net::TcpStream::connect((&*server.host, server.port));
        match tokio::time::timeout(REDIS_PROBE_TIMEOUT, connect).await {
            Ok(Ok(_)) => listening.push(address),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(Err(error)) => {
                failure.get_or_insert(format!("cannot connect to {address}: {error}"));
            }
            Err(_) => {
                failure.get_or_insert(format!(
                    "{address} did not accept a connection within {} s",
                    REDIS_PROBE_TIMEOUT.as_secs()
                ));
            }
        }
    }
    if listening.is_empty() {
        return match failure {
            Some(said) => RedisProbe::Fails {
                said,
                hint: FIX_THE_URL,
            },
            None => RedisProbe::NothingListens,
        };
    }
    let at = listening.join(", ");
    match ping(config).await {
        Ok(()) => RedisProbe::Answers,
        Err(Some(error)) => RedisProbe::Fails {
            said: format!("{at} answered: {}", redis_error(&error)),
            hint: match error.kind() {
                fred::error::ErrorKind::Auth => FIX_THE_PASSWORD,
                _ => FIX_THE_URL,
            },
        },
        Err(None) => RedisProbe::Fails {
            said: format!(
                "{at} accepted a connection but did not answer PING within {} s (is it a Redis? is it overloaded?)",
                REDIS_PROBE_TIMEOUT.as_secs()
            ),
            hint: FIX_THE_URL,
        },
    }
}

/// Connects with `config` (its credentials included) and sends PING: the
/// error that came back, or `None` when nothing did in time.
async fn ping(config: fred::prelude::Config) -> Result<(), Option<fred::error::Error>> {
    let client = Builder::from_config(config)
        .with_connection_config(|connection| connection.connection_timeout = REDIS_PROBE_TIMEOUT)
        .build()
        .map_err(Some)?;
    let answered = tokio::time::timeout(REDIS_PROBE_TIMEOUT, async {
        client.init().await?;
        client.ping::<String>(None).await
    })
    .await;
    let _ = client.quit().await;
    match answered {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(Some(error)),
        Err(_) => Err(None),
    }
}

/// A fred error in words: its details, which carry the server's own reply
/// (`WRONGPASS invalid username-password pair or user is disabled`), after
/// the kind of error when it is not such a reply.
fn redis_error(error: &fred::error::Error) -> String {
    let details = error.details().trim().trim_end_matches('.');
    match error.kind() {
        _ if details.is_empty() => error.kind().to_str().to_owned(),
        // The server's reply as it came (`ERR ...`, `WRONGPASS ...`).
        fred::error::ErrorKind::Auth | fred::error::ErrorKind::Unknown => details.to_owned(),
        kind => format!("{}: {details}", kind.to_str()),
    }
}

/// Where the private Redis keeps its data, relative to where `up` runs.
const PRIVATE_REDIS_DIR: &str = ".savestream/redis";
/// The lock file in it.
const LOCK_FILE: &str = "up.lock";

/// Creates `data_dir` and takes an exclusive `flock` on its lock file,
/// writing this process' pid in it, or fails saying who holds it: two
/// redis-servers on one data directory would both append to its AOF.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == -1 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let holder = match text.trim().parse::<i32>() {
            Ok(pid) if kill(Pid::from_raw(pid), None).is_ok() => {
                format!("another `savestream up` (pid {pid})")
            }
            _ => "the redis-server that an earlier `savestream up` started and left running".to_owned(),
        };
        bail!(
            "{} is in use by {holder}: one private Redis per directory, or both would write its AOF; \
             stop that `savestream up` (Ctrl-C in its terminal, or `kill <pid>`) and try again, \
             or run this one in another directory (`fuser -v {}` shows what holds it)",
            data_dir.display(),
            path.display()
        );
    }
    // The pid is only a hint for the message above; the lock is the flock.
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    if let Err(error) = written {
        say!(
            "savestream: cannot write this pid into {}: {error}",
            path.display()
        );
    }
    Ok(file)
}

/// Starts `redis-server` on a free loopback port with its data (AOF on) in
/// `data_dir`, locked by `lock` (see `lock_data_dir`), which the server
/// holds open too, and waits until it answers.
async fn start_private_redis(
    data_dir: &Path,
    lock: RawFd,
    signals: &mut StopSignals,
) -> anyhow::Result<(Supervised, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("finding a free port for redis-server")?
        .port();
    let mut command = Command::new("redis-server");
    command
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
        .stdout(Stdio::null());
    let mut redis = Supervised::spawn("redis-server", &mut command, Some(lock)).map_err(|error| {
        anyhow::anyhow!(
            "nothing listens at [redis] url and redis-server cannot be started ({error}): \
                 install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) \
                 or point [redis] url at a running Redis"
        )
    })?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(probe_redis(&url).await, RedisProbe::Answers) {
        if Instant::now() > deadline || matches!(redis.child.try_wait(), Ok(Some(_))) {
            redis.stop(Duration::from_secs(1), signals).await;
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
