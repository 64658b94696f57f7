//! # savestream-bench
//!
//! Benchmarks, not timed tests: each measures one figure of BENCHMARKS.md
//! on a private `redis-server`, with its peer (BullMQ) in the same run where
//! the issue names one. `cargo test -p savestream-bench` runs a small smoke
//! of each so they keep working; the full runs are
//! `cargo run --release -p savestream-bench -- <benchmark>`.
//!
//! ## Layout
//! - [`queue`]: throughput (N tasks created in bulk, then processed) and
//!   latency (created → started → completed, one task at a time).
//! - [`scale`]: Redis memory per task and query latency with a million tasks.
//! - [`api`]: the HTTP API under `wrk`, next to `/health` as the ceiling.
//! - [`download`]: a large file through the HTTP and Telegram paths, next to `dd`.
//! - [`peer`]: runs the BullMQ scripts in `bench/bullmq` on the same Redis.
//! - [`process`]: the release binaries a benchmark runs, and a process's CPU.
//! - [`redis_stats`]: Redis CPU and memory from `INFO`.

pub mod api;
pub mod download;
pub mod peer;
pub mod process;
pub mod queue;
pub mod redis_stats;
pub mod scale;

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::store::{NewTask, Store};
use savestream_shared::task::{SourceKind, TaskId};

/// A store on `url` with a fresh prefix, its group made.
pub async fn bench_store(url: &str, prefix: &str) -> anyhow::Result<Store> {
    let store = Store::connect(
        &RedisConfig {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: 30,
            retention_hours: 1,
        },
    )
    .await?;
    store.ensure_group().await?;
    Ok(store)
}

/// A direct-link task like the ones users create.
pub fn new_task(index: usize) -> NewTask {
    let link = format!("https://example.com/files/{index}.bin");
    NewTask {
        task_id: TaskId::generate(),
        source: SourceKind::Http,
        title: savestream_shared::title::pending(SourceKind::Http, &link, "local1", "/downloads"),
        link,
        user_id: 123456789,
        storage: "local1".into(),
        dir: "/downloads".into(),
    }
}

/// A figure that swings from round to round, summed up by its median with
/// every round's after it: `2.07x, the median of 3 rounds (2.07x, 2.25x,
/// 2.01x)`. `None` when there are no rounds.
pub fn median_of_rounds(values: &[f64], unit: &str) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    };
    let each: Vec<String> = values.iter().map(|value| format!("{value:.2}{unit}")).collect();
    Some(format!(
        "{median:.2}{unit}, the median of {} rounds ({})",
        values.len(),
        each.join(", ")
    ))
}

/// The `q`-quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64) * q).floor() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_summed_up_by_their_median_and_listed_in_order() {
        assert_eq!(
            median_of_rounds(&[2.07, 2.25, 2.01], "x").as_deref(),
            Some("2.07x, the median of 3 rounds (2.07x, 2.25x, 2.01x)")
        );
        assert_eq!(
            median_of_rounds(&[0.40, 0.30], "").as_deref(),
            Some("0.35, the median of 2 rounds (0.40, 0.30)")
        );
        assert_eq!(median_of_rounds(&[], "x"), None);
    }
}
