//! Benchmark 3: the API under load. `wrk` on loopback against the release
//! `savestream-api`: `GET /health` (the framework's ceiling, no Redis),
//! `POST /api/v1/tasks`, the same `POST` refused before its store call
//! ([`REFUSED`]), `GET /api/v1/tasks/{id}` and `POST /api/v1/tasks/batch`
//! with [`BATCH_TASKS`] tasks a request, each for the same duration and
//! connections, in the same run. A run is `rounds` rounds of the first four
//! against the same server and Redis, then `rounds` rounds of the batch: one
//! round's create/health ratio swings by a tenth or more on a shared
//! machine, so the figure is the median of the rounds'.
//!
//! The refused create splits a create's cost in two: it is the same request
//! (the token, the body, its parsing and its checks up to the user) answered
//! 403 because its user is not in the config, so it never reaches the store.
//! What it costs over `/health` is the HTTP work of a create; what a create
//! costs over it is the store call, in the API and in Redis.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use savestream_testkit::free_port;

use crate::process::{self, sibling, Killed};

/// The endpoints' names, as the tables show them.
pub const HEALTH: &str = "GET /health";
pub const CREATE: &str = "POST /api/v1/tasks";
pub const STATUS: &str = "GET /api/v1/tasks/{id}";
/// A create refused for its user, with the created one's shape and size.
pub const REFUSED: &str = "POST /api/v1/tasks (refused: 403, unknown user)";
/// How many tasks each batch request of the run carries.
pub const BATCH_TASKS: usize = 100;
pub const BATCH: &str = "POST /api/v1/tasks/batch (100 tasks)";

#[derive(Clone, Debug, serde::Serialize)]
pub struct Endpoint {
    /// Which round of the run, from 1.
    pub round: usize,
    pub name: String,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU the API process spent per request, in microseconds.
    pub api_cpu_us: f64,
    /// CPU Redis spent per request, in microseconds.
    pub redis_cpu_us: f64,
    /// Core time the machine left idle per request, in microseconds: with
    /// every process waiting on another, nobody had work.
    pub idle_us: f64,
    /// Core time the host kept from the machine per request, in
    /// microseconds (steal): time the machine's processes wanted and did
    /// not get, which a run's rates and tails pay for.
    pub steal_us: f64,
    /// Function calls (`FCALL`) Redis ran per request: below 1 when
    /// concurrent creates share a batch call.
    pub fcalls: f64,
}

pub async fn api(
    redis_url: &str,
    seconds: u64,
    connections: usize,
    threads: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Endpoint>> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nhost = \"127.0.0.1\"\nport = {port}\ntoken = \"bench-token\"\n\n[redis]\nurl = \"{redis_url}\"\nprefix = \"bench-api\"\n\n\
             [[storages]]\nname = \"local1\"\ntype = \"local\"\nbase_path = \"{}\"\n\n[[users]]\nid = 123456789\nstorages = [\"local1\"]\n",
            dir.path().display()
        ),
    )?;
    let api = Killed(
        Command::new(sibling("savestream-api")?)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let created = loop {
        let attempt = post_task(&client, &base, TASK_BODY).send().await;
        if let Ok(response) = attempt {
            break response.json::<serde_json::Value>().await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let task_id = created["task_id"].as_str().unwrap_or_default().to_owned();
    // wrk counts any answer but 2xx and 3xx as refused: make sure it is the
    // 403 the row is named for, not an error.
    let refused = post_task(&client, &base, REFUSED_BODY).send().await?;
    anyhow::ensure!(
        refused.status() == reqwest::StatusCode::FORBIDDEN,
        "{REFUSED}: the API answered {} ({}), not 403",
        refused.status(),
        refused.text().await.unwrap_or_default()
    );
    let post_script = dir.path().join("post.lua");
    std::fs::write(&post_script, post_script_text(TASK_BODY))?;
    let refused_script = dir.path().join("refused.lua");
    std::fs::write(&refused_script, post_script_text(REFUSED_BODY))?;
    let batch_script = dir.path().join("batch.lua");
    let batch_body = format!(r#"{{"tasks":[{}]}}"#, vec![TASK_BODY; BATCH_TASKS].join(","));
    std::fs::write(&batch_script, post_script_text(&batch_body))?;
    let get_script = dir.path().join("get.lua");
    std::fs::write(
        &get_script,
        "wrk.headers[\"Authorization\"] = \"Bearer bench-token\"\n",
    )?;
    let runs = [
        (HEALTH, format!("{base}/health"), None),
        (CREATE, format!("{base}/api/v1/tasks"), Some(&post_script)),
        (REFUSED, format!("{base}/api/v1/tasks"), Some(&refused_script)),
        (
            STATUS,
            format!("{base}/api/v1/tasks/{task_id}"),
            Some(&get_script),
        ),
        (BATCH, format!("{base}/api/v1/tasks/batch"), Some(&batch_script)),
    ];
    let info = crate::redis_stats::info_client(redis_url).await?;
    let load = Load {
        seconds,
        connections,
        threads,
    };
    // Every round of the single requests runs before the first of the
    // batches: a round of batches adds about a million tasks, and a create
    // costs Redis more in a larger store, so batches between the rounds
    // would make each round's create slower than the one before.
    let (batches, singles): (Vec<_>, Vec<_>) = runs.iter().partition(|(name, _, _)| *name == BATCH);
    let mut endpoints = Vec::new();
    for runs in [singles, batches] {
        for round in 1..=rounds {
            for (name, url, script) in &runs {
                endpoints
                    .push(run_endpoint(&api, &info, round, (*name, url.as_str(), *script), &load).await?);
            }
        }
    }
    Ok(endpoints)
}

/// The task every create of the run asks for.
const TASK_BODY: &str = r#"{"url":"https://example.com/a.bin","user_id":123456789}"#;
/// [`TASK_BODY`] for a user the run's config does not have (as many digits,
/// so the request is as long).
const REFUSED_BODY: &str = r#"{"url":"https://example.com/a.bin","user_id":987654321}"#;

/// `POST /api/v1/tasks` with `body` and the run's token, as the `wrk`
/// scripts send it.
fn post_task(client: &reqwest::Client, base: &str, body: &'static str) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth("bench-token")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
}

/// A `wrk` script that posts `body` (JSON, no `'`) with the run's token.
fn post_script_text(body: &str) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{body}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer bench-token\"\n"
    )
}

/// How `wrk` loads each endpoint.
struct Load {
    seconds: u64,
    connections: usize,
    threads: usize,
}

/// One endpoint's run of `wrk`, with the CPU the API and Redis spent on it.
async fn run_endpoint(
    api: &Killed,
    info: &fred::clients::Client,
    round: usize,
    (name, url, script): (&str, &str, Option<&PathBuf>),
    load: &Load,
) -> anyhow::Result<Endpoint> {
    let api_before = process::cpu_seconds(api.0.id())?;
    let redis_before = crate::redis_stats::cpu_seconds(info).await?;
    crate::redis_stats::reset_command_stats(info).await?;
    let idle_before = process::idle_seconds()?;
    let steal_before = process::steal_seconds()?;
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--latency");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .output()
        .map_err(|error| anyhow::anyhow!("running wrk ({error}): apt-get install wrk"))?;
    let idle = process::idle_seconds()? - idle_before;
    let steal = process::steal_seconds()? - steal_before;
    let api_cpu = process::cpu_seconds(api.0.id())? - api_before;
    let redis_cpu = crate::redis_stats::cpu_seconds(info).await? - redis_before;
    let fcalls = crate::redis_stats::command_stats(info)
        .await?
        .iter()
        .filter(|cost| cost.command == "fcall")
        .map(|cost| cost.calls)
        .sum::<u64>() as f64;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let requests = wrk_requests(&text).unwrap_or(f64::NAN);
    let refused = wrk_non_2xx(&text).unwrap_or(0.0);
    if name == REFUSED {
        // Every one refused, or the row would mix in creates.
        anyhow::ensure!(
            refused == requests,
            "{name}: wrk saw {refused} of {requests} requests refused; all should be:\n{text}"
        );
    } else {
        anyhow::ensure!(refused == 0.0, "{name}: wrk saw non-2xx answers:\n{text}");
    }
    Ok(Endpoint {
        round,
        name: name.to_owned(),
        requests_per_second: wrk_number(&text, "Requests/sec:").unwrap_or(f64::NAN),
        p50_ms: wrk_latency(&text, "50%").unwrap_or(f64::NAN),
        p99_ms: wrk_latency(&text, "99%").unwrap_or(f64::NAN),
        api_cpu_us: api_cpu * 1e6 / requests,
        redis_cpu_us: redis_cpu * 1e6 / requests,
        idle_us: idle * 1e6 / requests,
        steal_us: steal * 1e6 / requests,
        fcalls: fcalls / requests,
    })
}

/// Each round's create/health ratio, in round order.
pub fn create_health_ratios(endpoints: &[Endpoint]) -> Vec<f64> {
    ratios(endpoints, (CREATE, 1.0), HEALTH)
}

/// Each round's rate of creates refused before their store call, over its
/// health checks: the ceiling a create's HTTP work leaves it.
pub fn refused_health_ratios(endpoints: &[Endpoint]) -> Vec<f64> {
    ratios(endpoints, (REFUSED, 1.0), HEALTH)
}

/// Each round's tasks created per second through batch requests, over
/// those created one per request: what batching saves a client.
pub fn batch_create_ratios(endpoints: &[Endpoint]) -> Vec<f64> {
    ratios(endpoints, (BATCH, BATCH_TASKS as f64), CREATE)
}

/// Each round's rate of `numerator` (times its tasks per request) over
/// that of `denominator`, in round order.
fn ratios(endpoints: &[Endpoint], (numerator, scale): (&str, f64), denominator: &str) -> Vec<f64> {
    let rate = |round: usize, name: &str| {
        endpoints
            .iter()
            .find(|endpoint| endpoint.round == round && endpoint.name == name)
            .map(|endpoint| endpoint.requests_per_second)
    };
    let rounds = endpoints.iter().map(|endpoint| endpoint.round).max().unwrap_or(0);
    (1..=rounds)
        .filter_map(|round| Some(rate(round, numerator)? * scale / rate(round, denominator)?))
        .collect()
}

fn wrk_number(text: &str, label: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|value| value.trim().parse().ok())
}

/// The request count of wrk's `N requests in 10.00s, ...` line.
fn wrk_requests(text: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
}

/// The count of wrk's `Non-2xx or 3xx responses: N` line, absent when
/// every answer was 2xx.
fn wrk_non_2xx(text: &str) -> Option<f64> {
    wrk_number(text, "Non-2xx or 3xx responses:")
}

/// A latency line of `wrk --latency`, e.g. `     99%    1.23ms`, in ms.
fn wrk_latency(text: &str, percentile: &str) -> Option<f64> {
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(percentile))?
        .trim();
    let (number, scale) = if let Some(number) = value.strip_suffix("us") {
        (number, 0.001)
    } else if let Some(number) = value.strip_suffix("ms") {
        (number, 1.0)
    } else if let Some(number) = value.strip_suffix('s') {
        (number, 1000.0)
    } else {
        (value, 1.0)
    };
    number.parse::<f64>().ok().map(|number| number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(round: usize, name: &str, requests_per_second: f64) -> Endpoint {
        Endpoint {
            round,
            name: name.to_owned(),
            requests_per_second,
            p50_ms: 0.0,
            p99_ms: 0.0,
            api_cpu_us: 0.0,
            redis_cpu_us: 0.0,
            idle_us: 0.0,
            steal_us: 0.0,
            fcalls: 0.0,
        }
    }

    #[test]
    fn each_round_divides_its_own_creates_by_its_own_health_checks() {
        let endpoints = [
            endpoint(1, HEALTH, 80_000.0),
            endpoint(1, CREATE, 40_000.0),
            endpoint(1, STATUS, 50_000.0),
            endpoint(2, HEALTH, 60_000.0),
            endpoint(2, CREATE, 15_000.0),
        ];
        assert_eq!(create_health_ratios(&endpoints), vec![0.5, 0.25]);
    }

    #[test]
    fn a_batch_requests_rate_counts_every_task_it_carries() {
        let endpoints = [
            endpoint(1, CREATE, 20_000.0),
            endpoint(1, BATCH, 1_000.0),
            endpoint(2, CREATE, 25_000.0),
        ];
        assert_eq!(batch_create_ratios(&endpoints), vec![BATCH_TASKS as f64 / 20.0]);
        assert!(BATCH.ends_with(&format!("({BATCH_TASKS} tasks)")), "{BATCH}");
    }

    #[test]
    fn wrk_output_is_read_in_milliseconds() {
        let text = "  Latency Distribution\n     50%  310.00us\n     99%    2.50ms\n  412345 requests in 10.00s, 50.1MB read\nRequests/sec:  41234.56\n";
        assert_eq!(wrk_latency(text, "50%"), Some(0.31));
        assert_eq!(wrk_latency(text, "99%"), Some(2.5));
        assert_eq!(wrk_number(text, "Requests/sec:"), Some(41234.56));
        assert_eq!(wrk_requests(text), Some(412345.0));
        assert_eq!(wrk_non_2xx(text), None);
    }

    #[test]
    fn refused_answers_are_counted() {
        let text = "  412345 requests in 10.00s, 50.1MB read\n  Non-2xx or 3xx responses: 412345\nRequests/sec:  41234.56\n";
        assert_eq!(wrk_non_2xx(text), Some(412345.0));
    }

    #[test]
    fn the_refused_body_differs_from_the_created_one_only_in_its_user() {
        assert_eq!(REFUSED_BODY.len(), TASK_BODY.len());
        assert_eq!(REFUSED_BODY.replace("987654321", "123456789"), TASK_BODY);
    }
}
