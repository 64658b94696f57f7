//! Storm: the other tests' failures, all at once. Three workers with the
//! shortest lease download direct links and deliver each outcome to a
//! flapping webhook receiver, while a chaos loop SIGKILLs a random worker
//! every few seconds and starts a new one, and Redis (append-only file,
//! `appendfsync always`) is SIGKILLed and restarted in place (twice in CI,
//! five times in the soak), while a careful client keeps creating tasks
//! through it all.
//!
//! What must hold, read from the outside, is the union of what the single
//! failures promise:
//! - the client got a distinct task for every create, and the log holds no
//!   other task (nothing duplicated);
//! - every task has one `created` and exactly one `completed` event, and no
//!   other outcome (nothing lost, nothing ended twice);
//! - every file is byte-identical at the path asked for, with no `.part`
//!   and no other file left behind;
//! - every outcome reached the receiver (answered 200) at least once, every
//!   repeat under the same `webhook-id` with the same body.
//!
//! No worker may exit on its own, not even one the chaos loop starts while
//! Redis is away: it waits for Redis (`[redis] startup_wait_seconds`). The
//! first runs of this test found workers started during an outage exiting
//! at once, leaving the fleet smaller with every outage.
//!
//! A worker killed while Redis is away, a lease that runs out during an
//! outage, a delivery claimed by a worker that then dies: none of these
//! orderings is forced, the chaos meets them by chance. The seed it prints
//! repeats a run's kills (`SAVESTREAM_CHAOS_SEED`).
//!
//! Size: 120 tasks and two Redis outages in CI (about a minute);
//! `SAVESTREAM_SOAK=1` runs 1,000 tasks and five outages.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use savestream_tests::file_server::FileServer;
use savestream_tests::savestream_testkit::{eventually, RedisServer};
use savestream_tests::{TestApp, TestOptions};

use super::receiver::{assert_repeats_are_identical, Behaviour, FlappingReceiver};
use super::support::{
    assert_chaos_files_stored, assert_each_completed_once, assert_no_worker_exited, chaos_file,
    create_until_answered, direct_link_request, events_by_task, kill_and_replace_a_worker,
    kill_workers_until_no_task_is_pending, serve_chaos_files, soak, store_at, Chaos, Created, RedisProcess,
    REDIS_AOF_ALWAYS,
};

/// The size of a run: tasks, and Redis outages spread evenly over their creation.
struct Size {
    tasks: usize,
    outages: usize,
}

const CI: Size = Size {
    tasks: 120,
    outages: 2,
};
const SOAK: Size = Size {
    tasks: 1_000,
    outages: 5,
};

/// The client's pace, so the creates span the outages and the kills.
const CREATE_EVERY: Duration = Duration::from_millis(50);
const CLIENT_RETRY_DELAY: Duration = Duration::from_millis(100);
const OK: Behaviour = Behaviour::Status(200);

fn size() -> Size {
    if soak() {
        SOAK
    } else {
        CI
    }
}

/// Short failures only: a receiver that holds requests until the 15-second
/// try timeout (webhooks.rs) would stretch the run without testing more here.
fn receiver_script() -> Vec<Vec<Behaviour>> {
    vec![
        vec![Behaviour::Status(500), OK],
        vec![Behaviour::HangUp, Behaviour::Status(503), OK],
        vec![OK],
        vec![Behaviour::Status(502), Behaviour::HangUp, OK],
    ]
}

/// Redis as the run found it: the testkit's first server, or the process
/// the test restarted in its place.
enum Redis {
    First,
    Restarted(RedisProcess),
}

#[tokio::test]
async fn every_task_completes_once_and_is_delivered_while_workers_and_redis_are_killed_at_random() {
    // Arrange: the receiver, the files, Redis with AOF, three workers.
    let Size { tasks, outages } = size();
    let receiver = FlappingReceiver::start(receiver_script()).await;
    let files = FileServer::start().await;
    serve_chaos_files(&files, "storm", tasks);
    let redis = RedisServer::start_with(&REDIS_AOF_ALWAYS);
    let (port, redis_dir) = (redis.port(), redis.dir().to_path_buf());
    let mut app = TestApp::spawn_with_redis(
        TestOptions {
            workers: 3,
            lease_seconds: 5,
            webhook_url: Some(receiver.url()),
            // Retries about 5 s apart, many more than a run needs.
            extra_config: "[webhook]\nmax_attempts = 100\nspan_hours = 1\n".to_owned(),
            ..TestOptions::default()
        },
        redis,
    )
    .await;
    // Deliveries start with the events after the first dispatcher started.
    eventually(
        "a webhook dispatcher to start",
        Duration::from_secs(20),
        || async {
            app.workers
                .iter()
                .any(|worker| worker.log().contains("webhook dispatcher started"))
                .then_some(())
        },
    )
    .await;

    // Act: the client creates at its pace; meanwhile, every 1.5–3.5 s a
    // worker dies and a new one starts. Before each of its creates number
    // `outage_at(j)` the client waits until Redis has been killed, so that
    // create meets the outage; Redis comes back once the client has been
    // refused, about five seconds later (the API's Redis timeout): longer
    // than a lease.
    let started_at = Instant::now();
    let outage_at = move |outage: usize| (outage + 1) * tasks / (outages + 1);
    let requests: Vec<serde_json::Value> = (0..tasks)
        .map(|index| {
            let url = files.url(&format!("/storm/{}", chaos_file("storm", index).0));
            direct_link_request(&url, Some("/storm"))
        })
        .collect();
    let (client, create_url) = (app.client.clone(), app.url("/api/v1/tasks"));
    let refused = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (redis_killed, mut kills_seen) = tokio::sync::watch::channel(0usize);
    let creator = {
        let (refused, answered) = (refused.clone(), answered.clone());
        tokio::spawn(async move {
            let mut created = Vec::with_capacity(requests.len());
            for (index, request) in requests.iter().enumerate() {
                if let Some(outage) = (0..outages).find(|&outage| outage_at(outage) == index) {
                    kills_seen
                        .wait_for(|&killed| killed > outage)
                        .await
                        .expect("the chaos loop outlives the client");
                }
                let key = format!("reliability-storm-{index}");
                created.push(
                    create_until_answered(&client, &create_url, request, &key, CLIENT_RETRY_DELAY, &refused)
                        .await,
                );
                answered.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(CREATE_EVERY).await;
            }
            created
        })
    };
    let mut chaos = Chaos::from_env();
    let (mut kills, mut outages_done) = (0usize, 0usize);
    let mut redis = Redis::First;
    // While Redis is down: the client's refusals when it was killed.
    let mut down_since_refusals: Option<usize> = None;
    while !creator.is_finished() {
        tokio::time::sleep(Duration::from_millis(chaos.between(1_500..3_500))).await;
        assert_no_worker_exited(&mut app);
        kill_and_replace_a_worker(&mut app, &mut chaos);
        kills += 1;
        if let Some(refusals) = down_since_refusals {
            if refused.load(Ordering::SeqCst) > refusals {
                redis = Redis::Restarted(RedisProcess::start(port, &redis_dir, &REDIS_AOF_ALWAYS).await);
                down_since_refusals = None;
                outages_done += 1;
            }
        } else if outages_done < outages && answered.load(Ordering::SeqCst) >= outage_at(outages_done) {
            match &mut redis {
                Redis::First => app.redis.kill(),
                Redis::Restarted(process) => process.kill(),
            }
            down_since_refusals = Some(refused.load(Ordering::SeqCst));
            redis_killed.send_replace(outages_done + 1);
        }
    }
    let created: Vec<Created> = creator.await.expect("the creating client panicked");
    // Every task ends while the kills go on.
    let store = store_at(&app.redis.url(), app.options.lease_seconds).await;
    let timeout = Duration::from_secs(120 + tasks as u64 / 4);
    kills += kill_workers_until_no_task_is_pending(&mut app, &mut chaos, &store, timeout).await;
    let given: BTreeSet<String> = created.iter().map(|created| created.task_id.clone()).collect();
    receiver
        .wait_until_delivered(&given, Duration::from_secs(120))
        .await;
    let elapsed = started_at.elapsed();

    // Assert: the tasks, from the client and the log.
    assert_eq!(given.len(), tasks, "two creates got the same task: {created:?}");
    let log = events_by_task(&store).await;
    let logged: BTreeSet<String> = log.keys().cloned().collect();
    assert_eq!(
        logged.difference(&given).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "tasks in the log that no client was given: duplicates"
    );
    let takeovers = assert_each_completed_once(given.iter().map(String::as_str), &log);

    // The files.
    let task_ids: Vec<&str> = created.iter().map(|created| created.task_id.as_str()).collect();
    assert_chaos_files_stored(&app, "storm", &task_ids, &log);

    // The webhooks: the task's outcome, repeated only as itself.
    let received = receiver.received();
    for request in &received {
        let json = request.json();
        let task_id = json["task_id"].as_str().unwrap_or_default();
        assert!(
            given.contains(task_id),
            "a webhook for a task nobody created: {}",
            request.body
        );
        assert_eq!(json["status"], "completed", "{}", request.body);
    }
    assert_repeats_are_identical(&received);

    // The run met what it was meant to.
    let repeats: usize = created.iter().map(|created| created.repeats).sum();
    assert_eq!(
        outages_done, outages,
        "Redis was not restarted as often as planned"
    );
    assert!(
        repeats > 0,
        "no create met an outage: the run proved nothing about them"
    );
    assert!(
        takeovers >= 1,
        "{kills} kills and {outages} outages, but no task was taken over"
    );
    assert!(
        received.len() > given.len(),
        "the receiver never made a sender repeat"
    );
    eprintln!(
        "storm: {tasks} tasks completed and delivered once each in {elapsed:.1?}: {kills} workers killed, \
         {outages} Redis restarts ({repeats} creates refused), {takeovers} tasks taken over, \
         {} webhook requests",
        received.len()
    );
}
