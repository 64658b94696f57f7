//! Benchmark 4: the download pipeline, next to `dd` writing the same size to
//! the same disk in the same run.
//!
//! - HTTP: the release `savestream-api` and `savestream-worker` processes
//!   save a file from a local file server into local storage; the figure is
//!   the size over the time from the task's creation to `completed`, and the
//!   worker's peak RSS (`VmHWM`).
//! - Telegram: the Telegram source's `Downloader` (parallel precise parts
//!   through the faithful fake) streaming into the worker's local storage
//!   (`LocalStorage`: the task's partial file written behind, synced and
//!   linked to its name), as the pipeline saves it. In-process, so its RSS
//!   would count the fake's in-memory file and is not reported.
//! - `dd if=/dev/zero bs=1M conv=fsync`: the disk's sequential write rate,
//!   synced as the storage syncs a finished file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use savestream_shared::task::TaskId;
use savestream_telegram::fake::{FakeChat, FakeMessage, FakeTelegram};
use savestream_telegram::{DownloadOptions, Downloader, TelegramApi};
use savestream_testkit::free_port;
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_worker::storage::path::{FileName, StorageDir};
use savestream_worker::storage::LocalStorage;
use savestream_worker::storage::Storage;

use crate::process::{sibling, Killed};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Download {
    pub path: String,
    pub bytes: u64,
    pub seconds: f64,
    pub megabytes_per_second: f64,
    /// Peak resident memory of the process that downloaded, when it is its own.
    pub peak_rss_mib: Option<f64>,
}

/// A file's content: a repeating pseudo-random MiB, so it does not compress
/// to nothing anywhere and costs no time to make.
fn content(size: u64) -> Bytes {
    let mut state: u64 = 0x9E3779B97F4A7C15;
    let pattern: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut body = Vec::with_capacity(size as usize);
    while (body.len() as u64) < size {
        let take = (size as usize - body.len()).min(pattern.len());
        body.extend_from_slice(&pattern[..take]);
    }
    Bytes::from(body)
}

fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1_000_000.0 / seconds
}

/// `dd` writing `size` bytes into `dir`, synced.
pub fn dd(dir: &Path, size: u64) -> anyhow::Result<Download> {
    let target = dir.join("dd.bin");
    let before = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={}", size >> 20))
        .arg("conv=fsync")
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "dd failed");
    let seconds = before.elapsed().as_secs_f64();
    std::fs::remove_file(&target)?;
    Ok(Download {
        path: "dd (bs=1M, conv=fsync)".into(),
        bytes: size,
        seconds,
        megabytes_per_second: megabytes_per_second(size, seconds),
        peak_rss_mib: None,
    })
}

/// The worker processes saving one `size`-byte file from a local HTTP server.
pub async fn http(redis_url: &str, dir: &Path, size: u64) -> anyhow::Result<Download> {
    let server = FileServer::start().await;
    server.add("/big.bin", ServedFile::new(content(size)));
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage)?;
    let port = free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 1\n[api]\nhost = \"127.0.0.1\"\nport = {port}\n\n[redis]\nurl = \"{redis_url}\"\nprefix = \"bench-download\"\n\n\
             [http]\nallow_private_networks = true\n\n[[storages]]\nname = \"local1\"\ntype = \"local\"\nbase_path = \"{}\"\n\n\
             [[users]]\nid = 123456789\nstorages = [\"local1\"]\n",
            storage.display()
        ),
    )?;
    let spawn = |binary: &str| -> anyhow::Result<Killed> {
        Ok(Killed(
            Command::new(sibling(binary)?)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?,
        ))
    };
    let _api = spawn("savestream-api")?;
    let worker = spawn("savestream-worker")?;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    while client.get(format!("{base}/health")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = Instant::now();
    let created: serde_json::Value = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&serde_json::json!({"url": server.url("/big.bin"), "user_id": 123456789}))
        .send()
        .await?
        .json()
        .await?;
    let task_id = created["task_id"].as_str().unwrap_or_default().to_owned();
    loop {
        let task: serde_json::Value = client
            .get(format!("{base}/api/v1/tasks/{task_id}"))
            .send()
            .await?
            .json()
            .await?;
        match task["status"].as_str() {
            Some("completed") => break,
            Some("failed") | Some("canceled") => {
                anyhow::bail!("the download ended {}: {}", task["status"], task["error"])
            }
            // Polling the status is the measurement's own clock; 5 ms is
            // far below the seconds a large download takes.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let seconds = before.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_kib(worker.0.id()).map(|kib| kib as f64 / 1024.0);
    let saved = std::fs::metadata(storage.join("big.bin"))?.len();
    anyhow::ensure!(saved == size, "the saved file has {saved} bytes, not {size}");
    std::fs::remove_file(storage.join("big.bin"))?;
    Ok(Download {
        path: "HTTP → worker → local storage".into(),
        bytes: size,
        seconds,
        megabytes_per_second: megabytes_per_second(size, seconds),
        peak_rss_mib,
    })
}

/// The Telegram source's parallel parts from the fake into a synced file.
pub async fn telegram(dir: &Path, size: u64, threads: usize) -> anyhow::Result<Download> {
    let fake = Arc::new(FakeTelegram::new());
    let file = fake.add_file(content(size), 2);
    fake.add_chat(FakeChat::public(1, "benchchannel"));
    fake.add_message(
        1,
        FakeMessage::document(10, file, Some("big.bin"), Some("application/octet-stream")),
    );
    let link = savestream_shared::link::TelegramLink::parse("https://t.me/benchchannel/10")?;
    let api: Arc<dyn TelegramApi> = fake.clone();
    let message = api
        .resolve(&link)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no message"))?;
    let downloader = Downloader::new(api, DownloadOptions::new(threads));
    let storage = LocalStorage::new("local1", dir)?;
    let owner = TaskId::generate();
    let before = Instant::now();
    let path = storage
        .reserve(
            &owner,
            &StorageDir::parse("/")?,
            &FileName::parse("telegram.bin")?,
            &[],
        )
        .await?;
    let mut partial = storage.open(&owner, &path).await?;
    let mut stream = downloader.stream(&message, 0)?;
    while let Some(chunk) = stream.next().await {
        partial.write(chunk?).await?;
    }
    let saved = partial.finish().await?;
    let seconds = before.elapsed().as_secs_f64();
    anyhow::ensure!(saved == size, "the saved file has {saved} bytes, not {size}");
    storage.remove(&path).await?;
    Ok(Download {
        path: format!("fake Telegram → {threads} parallel parts → local storage"),
        bytes: size,
        seconds,
        megabytes_per_second: megabytes_per_second(size, seconds),
        peak_rss_mib: None,
    })
}

/// `VmHWM` of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}
