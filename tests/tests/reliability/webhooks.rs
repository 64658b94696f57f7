//! Webhook receiver flapping: the real workers, with `[api] webhook_url`
//! set, deliver the outcomes of tasks that complete, fail and are canceled
//! to a receiver ([`FlappingReceiver`]) that answers 5xx, hangs up without
//! answering, holds requests until the 15-second try timeout, and only then
//! answers 200, differently for each delivery.
//!
//! What must hold: every terminal event is delivered (answered 200) at
//! least once; every repeat carries the same `webhook-id` and the same body
//! (a task's outcome never arrives under two ids, and an id never names two
//! outcomes); every body is the task's real outcome; the projection records
//! each delivery as `delivered`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, HashesInterface};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{TestApp, TestOptions};

use super::receiver::{assert_repeats_are_identical, Behaviour, FlappingReceiver};
use super::support::{body, create, store, wait_until_no_task_is_pending};

const OK: Behaviour = Behaviour::Status(200);

/// The receiver's script: each delivery meets a different run of failures.
fn script() -> Vec<Vec<Behaviour>> {
    vec![
        vec![Behaviour::Status(500), Behaviour::HangUp, OK],
        vec![Behaviour::HangUp, Behaviour::Status(503), Behaviour::Hold, OK],
        vec![Behaviour::Hold, Behaviour::Status(502), OK],
        vec![Behaviour::Status(500), Behaviour::Status(500), OK],
    ]
}

#[tokio::test]
async fn every_terminal_event_reaches_a_flapping_receiver_and_repeats_carry_the_same_webhook_id() {
    // Arrange: the receiver, two workers that run the dispatcher, the files.
    let receiver = FlappingReceiver::start(script()).await;
    let files = FileServer::start().await;
    files.add(
        "/w/slow.bin",
        ServedFile::new(body(7, 2_000_000)).throttled(50_000),
    );
    for index in 0..4u64 {
        files.add(&format!("/w/{index}.bin"), ServedFile::new(body(index, 10_000)));
    }
    let app = TestApp::spawn(TestOptions {
        workers: 2,
        webhook_url: Some(receiver.url()),
        // Tries spread over an hour in 99 retries are about 5 s apart.
        extra_config: "[webhook]\nmax_attempts = 100\nspan_hours = 1\n".to_owned(),
        ..TestOptions::default()
    })
    .await;
    // Deliveries start with the events after the first dispatcher started.
    eventually("both dispatchers to start", Duration::from_secs(20), || async {
        let started = app
            .workers
            .iter()
            .filter(|worker| worker.log().contains("webhook dispatcher started"))
            .count();
        (started == 2).then_some(())
    })
    .await;
    let store = store(&app).await;

    // Act: four tasks complete, two fail, two are canceled mid-download.
    let mut expected = BTreeMap::new();
    for index in 0..4 {
        let task_id = create(&app, &files.url(&format!("/w/{index}.bin")), None).await;
        expected.insert(task_id, "completed");
    }
    for _ in 0..2 {
        let task_id = create(&app, &files.url("/w/missing.bin"), None).await;
        expected.insert(task_id, "failed");
    }
    for _ in 0..2 {
        let task_id = create(&app, &files.url("/w/slow.bin"), None).await;
        app.wait_for_status(&task_id, "running", Duration::from_secs(20))
            .await;
        let response = app
            .client
            .delete(app.url(&format!("/api/v1/tasks/{task_id}")))
            .send()
            .await
            .expect("DELETE the task");
        assert_eq!(response.status(), 200);
        expected.insert(task_id, "canceled");
    }
    wait_until_no_task_is_pending(&store, Duration::from_secs(30)).await;
    for (task_id, status) in &expected {
        let (_, task) = app.get_task(task_id).await;
        assert_eq!(task["status"], *status, "{task}");
    }
    let expected_tasks: BTreeSet<String> = expected.keys().cloned().collect();
    receiver
        .wait_until_delivered(&expected_tasks, Duration::from_secs(150))
        .await;

    // Assert.
    let received = receiver.received();
    for request in &received {
        let json = request.json();
        let task_id = json["task_id"].as_str().unwrap_or_default();
        let expected_status = expected
            .get(task_id)
            .unwrap_or_else(|| panic!("a webhook for a task nobody created: {}", request.body));
        assert_eq!(json["status"], *expected_status, "{}", request.body);
    }
    let outcomes = assert_repeats_are_identical(&received);
    let repeats = received.len() - outcomes;
    assert!(repeats > 0, "the receiver never made the sender repeat");
    let redis = Builder::from_config(Config::from_url(&app.redis.url()).expect("a valid redis url"))
        .build()
        .expect("building a redis client");
    redis.init().await.expect("connecting to the test redis");
    eventually(
        "the projection to record every delivery",
        Duration::from_secs(10),
        || async {
            for task_id in expected.keys() {
                let state: Option<String> = redis
                    .hget(format!("{{savestream}}:task:{task_id}"), "webhook_state")
                    .await
                    .ok()?;
                if state.as_deref() != Some("delivered") {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!(
        "webhooks: {} outcomes delivered through {} requests ({repeats} repeats)",
        expected.len(),
        received.len()
    );
}
