//! Benchmark 5: a million tasks in the store. Redis memory per queued task
//! and per terminal task, and the latency of listing and of a status query
//! at that size.

use std::time::{Duration, Instant};

use futures::StreamExt;
use savestream_shared::task::TaskId;

use crate::{bench_store, new_task, quantile, redis_stats};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Scale {
    pub tasks: usize,
    pub bytes_per_queued_task: f64,
    pub bytes_per_terminal_task: f64,
    pub list_p50_ms: f64,
    pub list_p99_ms: f64,
    pub status_p50_ms: f64,
    pub status_p99_ms: f64,
}

pub async fn scale(url: &str, tasks: usize, samples: usize) -> anyhow::Result<Scale> {
    let prefix = format!("bench-scale-{}", std::process::id());
    let store = bench_store(url, &prefix).await?;
    let info = redis_stats::info_client(url).await?;
    let memory_before = redis_stats::used_memory(&info).await?;

    let mut task_ids: Vec<TaskId> = Vec::with_capacity(tasks);
    let batches: Vec<Vec<_>> = (0..tasks)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| chunk.iter().map(|&index| new_task(index)).collect())
        .collect();
    for batch in &batches {
        task_ids.extend(batch.iter().map(|new_task| new_task.task_id.clone()));
    }
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
    let memory_queued = redis_stats::used_memory(&info).await?;

    let (list_p50_ms, list_p99_ms) = timed(samples, || async { store.list(100).await.map(|_| ()) }).await?;
    let mut probe = 0usize;
    let (status_p50_ms, status_p99_ms) = timed(samples, || {
        probe = (probe + 7919) % task_ids.len();
        let task_id = task_ids[probe].clone();
        let store = store.clone();
        async move { store.get(&task_id).await.map(|_| ()) }
    })
    .await?;

    // Run every task to completion, so the second figure is a terminal task's.
    let reader = store.with_own_connection().await?;
    let mut done = 0;
    while done < tasks {
        let jobs = reader
            .read_jobs("bench-scale", 1000, Duration::from_millis(100))
            .await?;
        let leases: Vec<_> = reader
            .start_batch(&jobs, "bench-scale")
            .await?
            .into_iter()
            .collect::<Result<_, _>>()?;
        let completions: Vec<_> = leases
            .iter()
            .map(|lease| (lease, Some(1_048_576), "/downloads/file.bin"))
            .collect();
        for result in reader.complete_batch(&completions).await? {
            result?;
        }
        done += leases.len();
    }
    let memory_terminal = redis_stats::used_memory(&info).await?;
    Ok(Scale {
        tasks,
        bytes_per_queued_task: (memory_queued - memory_before) / tasks as f64,
        bytes_per_terminal_task: (memory_terminal - memory_before) / tasks as f64,
        list_p50_ms,
        list_p99_ms,
        status_p50_ms,
        status_p99_ms,
    })
}

/// Runs `operation` `samples` times, one at a time; p50 and p99 in ms.
async fn timed<F, Fut, E>(samples: usize, mut operation: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut millis = Vec::with_capacity(samples);
    for _ in 0..samples {
        let before = Instant::now();
        operation().await?;
        millis.push(before.elapsed().as_secs_f64() * 1000.0);
    }
    millis.sort_by(f64::total_cmp);
    Ok((quantile(&millis, 0.5), quantile(&millis, 0.99)))
}
