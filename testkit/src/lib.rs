//! Test harness shared by every savestream test binary.
//!
//! It owns three things and nothing else:
//! - [`RedisServer`]: a private `redis-server` on a free port in a temp dir,
//!   killed when dropped, so no test depends on (or flushes) the Redis that
//!   may already run on 127.0.0.1:6379;
//! - [`free_port`]: a loopback port nobody listens on right now;
//! - [`eventually`]: polling with a deadline, the replacement for sleeps.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free when asked for.
///
/// The listener is dropped before returning, so another process may take the
/// port in between; the harnesses retry a start on a fresh port when that
/// happens, which makes the race harmless.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .expect("binding 127.0.0.1:0 always succeeds on a loopback interface");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// A `redis-server` child process owned by one test binary (or one test).
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port with persistence off, and waits
    /// until it answers `PING`.
    ///
    /// Panics with an actionable message when `redis-server` is not
    /// installed, because every store test needs it.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments
    /// (for example `["--appendonly", "yes"]`).
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("savestream-redis-")
            .tempdir()
            .expect("creating a temp dir for redis-server");
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .arg("--port")
                .arg(port.to_string())
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--save")
                .arg("")
                .arg("--appendonly")
                .arg("no")
                .arg("--dir")
                .arg(dir.path())
                .args(extra_args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|error| {
                    panic!(
                        "cannot start redis-server ({error}): install it \
                         (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
                    )
                });
            if wait_until_ready(&mut child, port, Duration::from_secs(10)) {
                return RedisServer { child, port, dir };
            }
            // The port was taken between `free_port` and the bind: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// The server's process id, for signals (SIGSTOP makes a Redis that
    /// holds its connections open and answers nothing).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, ready for `[redis] url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (as a crash would) without cleaning up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the child answers `PING`, or reports `false` when it exits
/// (its port was taken) or the timeout passes.
fn wait_until_ready(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_exit)) = child.try_wait() {
            return false;
        }
        if ping(port) {
            return true;
        }
        // A synchronous start-up wait: there is no event to await from a
        // child process that has not opened its port yet.
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Sends an inline `PING` and reports whether Redis answered it: `+PONG`,
/// or `-NOAUTH` from a server started with `--requirepass` (it answers, it
/// only wants a password first).
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
}

/// Polls `check` until it returns `Some`, or panics naming `what` after
/// `timeout`. Tests wait on observable state with this, never with a sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The names directly in `dir` (files and directories, hidden ones too),
/// sorted: what a test compares a storage directory against.
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The directory cargo builds binaries into, for tests that run the real
/// `savestream-api` and `savestream-worker` processes.
pub fn target_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/debug/deps/<test-binary> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_that_wants_a_password_starts_and_refuses_commands_without_it() {
        let redis = RedisServer::start_with(&["--requirepass", "a-test-password"]);

        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET x\r\n").unwrap();
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"-NOAUTH");
    }
}
