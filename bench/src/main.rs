//! `savestream-bench <benchmark>`: runs one benchmark on a private
//! redis-server and prints its figures as a Markdown table (and JSON lines
//! with `--json`). Build with `--release`; see BENCHMARKS.md.

use clap::{Parser, Subcommand};
use savestream_bench::{api, download, median_of_rounds, peer, process, queue, scale};
use savestream_testkit::RedisServer;

#[derive(Parser)]
#[command(about = "savestream's benchmarks, with BullMQ side by side")]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// 1. Queue throughput: N tasks created in bulk, then processed (no-op source).
    Queue {
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Tasks in flight: the worker's slots, and BullMQ's concurrency.
        #[arg(long, default_value_t = 64)]
        slots: usize,
        /// Reads in flight at once: the slots split into this many lanes.
        #[arg(long, default_value_t = 4)]
        lanes: usize,
        /// Rounds of savestream then BullMQ, one after the other; the
        /// summary is the median of the rounds' ratios. One run on a shared
        /// machine swings by a fifth either way.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Where the queue's Redis CPU goes: create, start and complete run one after the other.
    Phases {
        #[arg(long, default_value_t = 50_000)]
        tasks: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// 2. Latency from created to started and completed, one task at a time.
    Latency {
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        /// Rounds of savestream then BullMQ, one after the other; the
        /// summary is the median of the rounds' p99s. A tail is as long as
        /// the machine's longest pauses, which come and go.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// 3. API: requests/s and latency of create, batch create and status next to /health (needs wrk).
    Api {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Rounds of the four endpoints against the same server; the
        /// summary is the median of the rounds' create/health ratios.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// 4. Download: a large file via HTTP (worker process) and the Telegram fake, next to dd.
    Download {
        /// Bytes; a multiple of 1 MiB (default 2 GiB).
        #[arg(long, default_value_t = 2 << 30)]
        bytes: u64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// 5. Scale: memory per task and query latency with N tasks in the store.
    Scale {
        #[arg(long, default_value_t = 1_000_000)]
        tasks: usize,
        #[arg(long, default_value_t = 1_000)]
        samples: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A private Redis per run, persistence off, so runs do not disturb (or
    // get disturbed by) any other Redis on the machine.
    let redis = RedisServer::start();
    let url = redis.url();
    match cli.benchmark {
        Benchmark::Queue {
            tasks,
            slots,
            lanes,
            rounds,
        } => {
            anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
            println!("| round | system | tasks | slots | tasks/s | wall s | Redis CPU s | client CPU s | host steal |");
            println!("|---|---|---|---|---|---|---|---|---|");
            let mut ratios = Vec::new();
            for round in 1..=rounds {
                let (ours, steal) = process::with_steal(queue::throughput(&url, tasks, slots, lanes)).await?;
                eprintln!("{}", serde_json::to_string(&ours)?);
                println!(
                    "| {round} | savestream | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {steal:.1}% |",
                    ours.tasks,
                    ours.slots,
                    ours.tasks_per_second,
                    ours.total_seconds,
                    ours.redis_cpu_seconds,
                    ours.client_cpu_seconds
                );
                if !peer::available() {
                    continue;
                }
                let (bullmq, steal) = process::with_steal(async {
                    peer::run(
                        "throughput.mjs",
                        &[redis.port().to_string(), tasks.to_string(), slots.to_string()],
                    )
                })
                .await?;
                eprintln!("{bullmq}");
                let rate = bullmq["tasks_per_second"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "| {round} | BullMQ | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {steal:.1}% |",
                    tasks,
                    slots,
                    rate,
                    bullmq["total_seconds"].as_f64().unwrap_or(f64::NAN),
                    bullmq["redis_cpu_seconds"].as_f64().unwrap_or(f64::NAN),
                    bullmq["client_cpu_seconds"].as_f64().unwrap_or(f64::NAN)
                );
                ratios.push(ours.tasks_per_second / rate);
            }
            match median_of_rounds(&ratios, "x") {
                Some(summary) => println!("\nsavestream / BullMQ: {summary}"),
                None => println!("\n(BullMQ skipped: run `npm ci` in bench/bullmq)"),
            }
        }
        Benchmark::Phases { tasks, batch } => {
            let phases = queue::phases(&url, tasks, batch).await?;
            println!("{}", serde_json::to_string(&phases)?);
            println!("| tasks | batch | create µs/task | start µs/task | complete µs/task | total |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                phases.tasks,
                batch,
                phases.create_us_per_task,
                phases.start_us_per_task,
                phases.complete_us_per_task,
                phases.create_us_per_task + phases.start_us_per_task + phases.complete_us_per_task
            );
            println!("\n| phase | command | calls/task | µs/task | µs/call |");
            println!("|---|---|---|---|---|");
            for (phase, commands) in [
                ("create", &phases.create_commands),
                ("start", &phases.start_commands),
                ("complete", &phases.complete_commands),
            ] {
                for command in commands.iter().filter(|command| command.command != "info") {
                    println!(
                        "| {phase} | {} | {:.2} | {:.1} | {:.2} |",
                        command.command,
                        command.calls as f64 / phases.tasks as f64,
                        command.usec as f64 / phases.tasks as f64,
                        command.usec as f64 / command.calls.max(1) as f64
                    );
                }
            }
        }
        Benchmark::Latency { tasks, rounds } => {
            anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
            println!("| round | system | tasks | created→started p50 | p99 | created→completed p50 | p99 | max | host steal |");
            println!("|---|---|---|---|---|---|---|---|---|");
            let (mut our_p99s, mut peer_p99s, mut steals) = (Vec::new(), Vec::new(), Vec::new());
            for round in 1..=rounds {
                let (ours, steal) = process::with_steal(queue::latency(&url, tasks)).await?;
                eprintln!("{}", serde_json::to_string(&ours)?);
                println!(
                    "| {round} | savestream | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {steal:.1}% |",
                    ours.tasks,
                    ours.started_p50_ms,
                    ours.started_p99_ms,
                    ours.completed_p50_ms,
                    ours.completed_p99_ms,
                    ours.completed_max_ms
                );
                our_p99s.push(ours.completed_p99_ms);
                steals.push(steal);
                if !peer::available() {
                    continue;
                }
                let (bullmq, steal) = process::with_steal(async {
                    peer::run("latency.mjs", &[redis.port().to_string(), tasks.to_string()])
                })
                .await?;
                eprintln!("{bullmq}");
                let p99 = bullmq["p99_ms"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "| {round} | BullMQ (add→completed) | {tasks} | | | {:.3} ms | {p99:.3} ms | {:.3} ms | {steal:.1}% |",
                    bullmq["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    bullmq["max_ms"].as_f64().unwrap_or(f64::NAN)
                );
                peer_p99s.push(p99);
                steals.push(steal);
            }
            println!();
            if let Some(summary) = median_of_rounds(&our_p99s, " ms") {
                println!("savestream created→completed p99: {summary}");
            }
            if let Some(summary) = median_of_rounds(&peer_p99s, " ms") {
                println!("BullMQ add→completed p99: {summary}");
            }
            let most_stolen = steals.iter().copied().fold(0.0, f64::max);
            println!(
                "the host kept the cores from running for up to {most_stolen:.1}% of a run's time \
                 (steal, /proc/stat); a tail includes those pauses"
            );
        }
        Benchmark::Api {
            seconds,
            connections,
            threads,
            rounds,
        } => {
            anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
            let endpoints = api::api(&url, seconds, connections, threads, rounds).await?;
            println!("{}", serde_json::to_string(&endpoints)?);
            println!("| round | endpoint | requests/s | p50 | p99 | API CPU per request | Redis CPU per request | idle per request | host steal per request | FCALLs per request |");
            println!("|---|---|---|---|---|---|---|---|---|---|");
            for endpoint in &endpoints {
                println!(
                    "| {} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.3} |",
                    endpoint.round,
                    endpoint.name,
                    endpoint.requests_per_second,
                    endpoint.p50_ms,
                    endpoint.p99_ms,
                    endpoint.api_cpu_us,
                    endpoint.redis_cpu_us,
                    endpoint.idle_us,
                    endpoint.steal_us,
                    endpoint.fcalls
                );
            }
            if let Some(summary) = median_of_rounds(&api::create_health_ratios(&endpoints), "") {
                println!("\ncreate / health: {summary}");
            }
            if let Some(summary) = median_of_rounds(&api::refused_health_ratios(&endpoints), "") {
                println!("create refused before its store call / health: {summary}");
            }
            if let Some(summary) = median_of_rounds(&api::batch_create_ratios(&endpoints), "x") {
                println!(
                    "tasks created per second in batches of {} / one per request: {summary}",
                    api::BATCH_TASKS
                );
            }
        }
        Benchmark::Download { bytes, threads } => {
            // The same disk for every row: a directory under the working directory.
            let dir = tempfile::tempdir_in(".")?;
            let rows = vec![
                download::dd(dir.path(), bytes)?,
                download::http(&url, dir.path(), bytes).await?,
                download::telegram(dir.path(), bytes, threads).await?,
            ];
            println!("{}", serde_json::to_string(&rows)?);
            println!("| path | MB | seconds | MB/s | % of dd | peak RSS |");
            println!("|---|---|---|---|---|---|");
            let dd_rate = rows[0].megabytes_per_second;
            for row in &rows {
                println!(
                    "| {} | {:.0} | {:.2} | {:.0} | {:.0}% | {} |",
                    row.path,
                    row.bytes as f64 / 1e6,
                    row.seconds,
                    row.megabytes_per_second,
                    100.0 * row.megabytes_per_second / dd_rate,
                    row.peak_rss_mib
                        .map(|mib| format!("{mib:.1} MiB"))
                        .unwrap_or_else(|| "—".into())
                );
            }
        }
        Benchmark::Scale { tasks, samples } => {
            let figures = scale::scale(&url, tasks, samples).await?;
            println!("{}", serde_json::to_string(&figures)?);
            println!("| tasks | bytes/queued task | bytes/terminal task | list p50 | list p99 | status p50 | status p99 |");
            println!("|---|---|---|---|---|---|---|");
            println!(
                "| {} | {:.0} | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
                figures.tasks,
                figures.bytes_per_queued_task,
                figures.bytes_per_terminal_task,
                figures.list_p50_ms,
                figures.list_p99_ms,
                figures.status_p50_ms,
                figures.status_p99_ms
            );
        }
    }
    Ok(())
}
