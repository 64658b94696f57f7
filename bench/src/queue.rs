//! Benchmarks 1 and 2: the queue's throughput and latency, end to end
//! through the store — created event, work item, started, completed,
//! projection — with a no-op source (the work between start and complete
//! is nothing), so the figure is the queue's own cost.
//!
//! The consumer does what a worker with `slots` slots does: read as many
//! work items as it has free slots with `XREADGROUP ... BLOCK`, start them,
//! run them, complete them. It starts and completes each read's items in one
//! batch call (`Store::start_batch`, `Store::complete_batch`), which is what
//! makes the queue fast: one script invocation and one round trip per batch
//! instead of per task. Its slots are split into `lanes`, each reading on a
//! connection of its own, so one lane's round trips overlap another's work
//! in Redis, as BullMQ's worker keeps one command in flight per slot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use savestream_shared::store::{Lease, Store};
use savestream_shared::task::TaskId;
use tokio::sync::mpsc;

use crate::{bench_store, new_task, quantile, redis_stats};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    pub tasks: usize,
    pub slots: usize,
    pub lanes: usize,
    pub create_seconds: f64,
    pub total_seconds: f64,
    pub tasks_per_second: f64,
    pub redis_cpu_seconds: f64,
    /// CPU of the benchmark process: the creator and the consumer.
    pub client_cpu_seconds: f64,
}

/// A keyspace of its own for each run of a benchmark in this process. A
/// consumer's blocked read of the run before, aborted in the client but
/// still waiting in Redis until its timeout, would otherwise take the next
/// run's first item and leave it unprocessed.
fn run_prefix(benchmark: &str) -> String {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("bench-{benchmark}-{}-{run}", std::process::id())
}

/// Creates `tasks` tasks in batches of 1,000, then processes them all with
/// one consumer of `slots` slots, split into `lanes` lanes.
pub async fn throughput(url: &str, tasks: usize, slots: usize, lanes: usize) -> anyhow::Result<Throughput> {
    anyhow::ensure!(
        lanes > 0 && slots >= lanes,
        "slots ({slots}) must be at least the number of lanes ({lanes}), which is at least 1"
    );
    let prefix = run_prefix("throughput");
    let store = bench_store(url, &prefix).await?;
    let info = redis_stats::info_client(url).await?;
    let cpu_before = redis_stats::cpu_seconds(&info).await?;
    let client_before = crate::process::cpu_seconds(std::process::id())?;
    let started = Instant::now();

    let batches: Vec<Vec<_>> = (0..tasks)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| chunk.iter().map(|&index| new_task(index)).collect())
        .collect();
    let mut creations = futures::stream::iter(
        batches
            .iter()
            .map(|batch| store.create_batch(batch.iter().map(|new_task| (new_task, None)))),
    )
    .buffer_unordered(4);
    while let Some(results) = creations.next().await {
        for result in results? {
            result?;
        }
    }
    drop(creations);
    let created = Instant::now();

    let mut lanes_running = tokio::task::JoinSet::new();
    let (done_sender, mut done) = mpsc::unbounded_channel::<usize>();
    for lane in 0..lanes {
        let reader = store.with_own_connection().await?;
        let done_sender = done_sender.clone();
        // The slots split as evenly as they go: 64 in 3 lanes are 22, 21, 21.
        let lane_slots = slots / lanes + usize::from(lane < slots % lanes);
        lanes_running.spawn(async move {
            let consumer = "bench";
            loop {
                let jobs = reader
                    .read_jobs(consumer, lane_slots, Duration::from_millis(100))
                    .await?;
                if jobs.is_empty() {
                    continue;
                }
                let completed = run_batch(&reader, consumer, jobs).await?;
                if done_sender.send(completed).is_err() {
                    return anyhow::Ok(());
                }
            }
        });
    }
    drop(done_sender);
    let mut processed = 0;
    while processed < tasks {
        tokio::select! {
            completed = done.recv() => {
                processed += completed.ok_or_else(|| anyhow::anyhow!("every consumer lane stopped"))?;
            }
            // A lane only ends on an error: the rest cannot finish its
            // items, so the run stops with that error instead of waiting.
            Some(ended) = lanes_running.join_next() => {
                ended??;
                anyhow::bail!("a consumer lane stopped with {processed} of {tasks} tasks processed");
            }
        }
    }
    let ended = Instant::now();
    lanes_running.abort_all();
    let cpu_after = redis_stats::cpu_seconds(&info).await?;
    let client_cpu_seconds = crate::process::cpu_seconds(std::process::id())? - client_before;
    let total_seconds = (ended - started).as_secs_f64();
    Ok(Throughput {
        tasks,
        slots,
        lanes,
        create_seconds: (created - started).as_secs_f64(),
        total_seconds,
        tasks_per_second: tasks as f64 / total_seconds,
        redis_cpu_seconds: cpu_after - cpu_before,
        client_cpu_seconds,
    })
}

/// Starts, "runs" (a no-op) and completes one read's work items; returns how many completed.
async fn run_batch(
    store: &Store,
    consumer: &str,
    jobs: Vec<savestream_shared::store::Job>,
) -> anyhow::Result<usize> {
    let leases: Vec<Lease> = store
        .start_batch(&jobs, consumer)
        .await?
        .into_iter()
        .collect::<Result<_, _>>()?;
    let completions: Vec<(&Lease, Option<u64>, &str)> = leases
        .iter()
        .map(|lease| (lease, Some(0), "/downloads/file.bin"))
        .collect();
    for result in store.complete_batch(&completions).await? {
        result?;
    }
    Ok(leases.len())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    pub tasks: usize,
    pub started_p50_ms: f64,
    pub started_p99_ms: f64,
    pub completed_p50_ms: f64,
    pub completed_p99_ms: f64,
    pub completed_max_ms: f64,
}

/// With an idle consumer blocked on its read, creates `tasks` tasks one at a
/// time and measures, for each, the time from just before `create` to the
/// consumer's `start` returning and to its `complete` returning.
pub async fn latency(url: &str, tasks: usize) -> anyhow::Result<Latency> {
    let prefix = run_prefix("latency");
    let store = bench_store(url, &prefix).await?;
    let reader = store.with_own_connection().await?;
    let (sender, mut receiver) = mpsc::unbounded_channel::<(TaskId, Instant, Instant)>();
    let consumer = tokio::spawn(async move {
        loop {
            let jobs = reader
                .read_jobs("bench-latency", 1, Duration::from_secs(5))
                .await?;
            for job in jobs {
                let Ok(task_id) = job.task_id.clone() else {
                    continue;
                };
                // As a worker starts an item it read (`savestream-worker`'s intake).
                let lease = reader.start_job(&job, "bench-latency").await?;
                let started = Instant::now();
                reader.complete(&lease, Some(0), "/downloads/file.bin").await?;
                if sender.send((task_id, started, Instant::now())).is_err() {
                    return anyhow::Ok(());
                }
            }
        }
    });
    let mut to_started = Vec::with_capacity(tasks);
    let mut to_completed = Vec::with_capacity(tasks);
    let mut pending: HashMap<TaskId, Instant> = HashMap::new();
    for index in 0..tasks {
        let new_task = new_task(index);
        let before = Instant::now();
        pending.insert(new_task.task_id.clone(), before);
        store.create(&new_task, None).await?;
        // One at a time: wait for this task to complete before creating the next.
        let (task_id, started, completed) = receiver
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the consumer stopped"))?;
        let created = pending
            .remove(&task_id)
            .ok_or_else(|| anyhow::anyhow!("an unexpected task completed"))?;
        to_started.push((started - created).as_secs_f64() * 1000.0);
        to_completed.push((completed - created).as_secs_f64() * 1000.0);
    }
    consumer.abort();
    to_started.sort_by(f64::total_cmp);
    to_completed.sort_by(f64::total_cmp);
    Ok(Latency {
        tasks,
        started_p50_ms: quantile(&to_started, 0.5),
        started_p99_ms: quantile(&to_started, 0.99),
        completed_p50_ms: quantile(&to_completed, 0.5),
        completed_p99_ms: quantile(&to_completed, 0.99),
        completed_max_ms: to_completed.last().copied().unwrap_or(f64::NAN),
    })
}

/// Redis CPU seconds per phase (create, start, complete) for `tasks` tasks
/// run one phase after the other: where the queue's cost goes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Phases {
    pub tasks: usize,
    pub create_us_per_task: f64,
    pub start_us_per_task: f64,
    pub complete_us_per_task: f64,
    /// Each phase's commands, costliest first: `fcall` counts the whole
    /// function call, the commands it ran inside are listed on their own.
    pub create_commands: Vec<redis_stats::CommandCost>,
    pub start_commands: Vec<redis_stats::CommandCost>,
    pub complete_commands: Vec<redis_stats::CommandCost>,
}

pub async fn phases(url: &str, tasks: usize, batch: usize) -> anyhow::Result<Phases> {
    let prefix = format!("bench-phases-{}", std::process::id());
    let store = bench_store(url, &prefix).await?;
    let info = redis_stats::info_client(url).await?;
    let per_task = |before: f64, after: f64| (after - before) * 1e6 / tasks as f64;
    let cpu_start = redis_stats::cpu_seconds(&info).await?;
    redis_stats::reset_command_stats(&info).await?;
    let all: Vec<_> = (0..tasks).map(new_task).collect();
    for chunk in all.chunks(batch) {
        for result in store
            .create_batch(chunk.iter().map(|new_task| (new_task, None)))
            .await?
        {
            result?;
        }
    }
    let cpu_created = redis_stats::cpu_seconds(&info).await?;
    let create_commands = redis_stats::command_stats(&info).await?;
    redis_stats::reset_command_stats(&info).await?;
    let reader = store.with_own_connection().await?;
    let mut leases = Vec::with_capacity(tasks);
    while leases.len() < tasks {
        let jobs = reader
            .read_jobs("bench-phases", batch, Duration::from_millis(100))
            .await?;
        for result in store.start_batch(&jobs, "bench-phases").await? {
            leases.push(result?);
        }
    }
    let cpu_started = redis_stats::cpu_seconds(&info).await?;
    let start_commands = redis_stats::command_stats(&info).await?;
    redis_stats::reset_command_stats(&info).await?;
    for chunk in leases.chunks(batch) {
        let completions: Vec<(&Lease, Option<u64>, &str)> = chunk
            .iter()
            .map(|lease| (lease, Some(0), "/downloads/file.bin"))
            .collect();
        for result in store.complete_batch(&completions).await? {
            result?;
        }
    }
    let cpu_completed = redis_stats::cpu_seconds(&info).await?;
    let complete_commands = redis_stats::command_stats(&info).await?;
    Ok(Phases {
        tasks,
        create_us_per_task: per_task(cpu_start, cpu_created),
        start_us_per_task: per_task(cpu_created, cpu_started),
        complete_us_per_task: per_task(cpu_started, cpu_completed),
        create_commands,
        start_commands,
        complete_commands,
    })
}
