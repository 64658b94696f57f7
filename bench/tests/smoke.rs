//! A short run of each benchmark, so they keep working; the figures of a
//! smoke run mean nothing and are not checked beyond being sane.

use savestream_bench::{queue, scale};
use savestream_testkit::RedisServer;

#[tokio::test]
async fn the_throughput_benchmark_processes_every_task() {
    let redis = RedisServer::start();
    let figures = queue::throughput(&redis.url(), 2_500, 16, 4).await.unwrap();
    assert_eq!(figures.tasks, 2_500);
    assert!(figures.tasks_per_second > 0.0);
}

#[tokio::test]
async fn back_to_back_throughput_runs_each_process_every_task() {
    // Rounds run one right after another when BullMQ is not installed: the
    // first run's lanes, aborted with reads still blocked in Redis, must not
    // take the second run's items (that run then waited forever).
    let redis = RedisServer::start();
    let url = redis.url();
    for _ in 0..3 {
        let run = queue::throughput(&url, 2_000, 16, 4);
        let figures = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("a run right after another processed every task")
            .unwrap();
        assert_eq!(figures.tasks, 2_000);
    }
}

#[tokio::test]
async fn the_latency_benchmark_measures_every_task() {
    let redis = RedisServer::start();
    let figures = queue::latency(&redis.url(), 50).await.unwrap();
    assert!(figures.started_p50_ms <= figures.completed_p50_ms);
    assert!(figures.completed_p99_ms.is_finite());
}

#[tokio::test]
async fn back_to_back_latency_runs_each_measure_every_task() {
    // Rounds of the latency benchmark run in one process: the first run's
    // consumer, aborted with its read still blocked in Redis, must not take
    // the second run's first item (that run then failed: "the consumer
    // stopped").
    let redis = RedisServer::start();
    let url = redis.url();
    for _ in 0..2 {
        let run = queue::latency(&url, 50);
        let figures = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("a run right after another measured every task")
            .unwrap();
        assert_eq!(figures.tasks, 50);
    }
}

#[tokio::test]
async fn the_scale_benchmark_measures_memory_per_task() {
    let redis = RedisServer::start();
    let figures = scale::scale(&redis.url(), 2_000, 20).await.unwrap();
    assert!(figures.bytes_per_queued_task > 0.0);
    assert!(figures.bytes_per_terminal_task > 0.0);
}

#[tokio::test]
async fn the_telegram_download_benchmark_saves_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let row = savestream_bench::download::telegram(dir.path(), 4 << 20, 4)
        .await
        .unwrap();
    assert_eq!(row.bytes, 4 << 20);
    assert!(row.megabytes_per_second > 0.0);
}
