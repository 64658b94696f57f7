//! Running the API: its docs and spec, readiness through a Redis outage,
//! graceful shutdown, and what it logs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{Process, TestApp};

use super::helpers::{
    anonymous, contract_body, create_contract_task, expect_json_error, spawn_app, STEP, TOKEN,
};

#[tokio::test]
async fn swagger_ui_loads_at_docs_without_a_token() {
    let app = spawn_app().await;

    let response = anonymous().get(app.url("/docs")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    assert!(html.contains("/api/v1/tasks"), "the page embeds the spec");
}

#[tokio::test]
async fn openapi_json_is_served_and_is_the_committed_document() {
    let app = spawn_app().await;

    let response = anonymous().get(app.url("/openapi.json")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let served: serde_json::Value = response.json().await.unwrap();
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path).unwrap()).unwrap();
    assert_eq!(served, committed);
}

#[tokio::test]
async fn ready_answers_200_when_redis_answers() {
    let app = spawn_app().await;

    let response = anonymous().get(app.url("/ready")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ready"}));
}

/// A redis-server on a given port: the test's stand-in for Redis coming back
/// after an outage, on the address the API keeps reconnecting to.
struct RestartedRedis(Child);

impl RestartedRedis {
    fn start(port: u16, dir: &std::path::Path) -> RestartedRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server again");
        RestartedRedis(child)
    }
}

impl Drop for RestartedRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_outage_answers_503_json_and_the_api_recovers_when_redis_returns() {
    let mut app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let port = app.redis.port();

    app.redis.kill();

    let error = expect_json_error(anonymous().get(app.url("/ready")).send().await.unwrap(), 503).await;
    assert!(error.contains("redis"), "{error}");
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .json(&contract_body())
        .send()
        .await
        .unwrap();
    let error = expect_json_error(response, 503).await;
    assert!(error.contains("try again"), "{error}");
    let response = app
        .client
        .get(app.url(&format!("/api/v1/tasks/{task_id}")))
        .send()
        .await
        .unwrap();
    expect_json_error(response, 503).await;
    let health = anonymous().get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness does not depend on redis");

    // Redis returns empty (no persistence): the API reconnects and reloads
    // its function library by itself.
    let _redis = RestartedRedis::start(port, app.redis.dir());
    eventually("the api to be ready again", STEP, || async {
        let response = anonymous().get(app.url("/ready")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let (status, body) = app.create_task(contract_body()).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_create_redis_did_not_answer_says_it_may_have_been_stored_and_to_repeat_with_the_same_key() {
    // Arrange: Redis gone, so the store call of a create fails the way a
    // timed-out one does, and the API cannot know whether Redis ran it.
    let mut app = spawn_app().await;
    let spec: serde_json::Value = anonymous()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.redis.kill();

    // Act
    let single = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("Idempotency-Key", "outage-1")
        .json(&contract_body())
        .send()
        .await
        .unwrap();
    let single = expect_json_error(single, 503).await;
    let batch = app
        .client
        .post(app.url("/api/v1/tasks/batch"))
        .header("Idempotency-Key", "outage-2")
        .json(&serde_json::json!({ "tasks": [contract_body()] }))
        .send()
        .await
        .unwrap();
    let batch = expect_json_error(batch, 503).await;

    // Assert: neither the answers nor the document promise that nothing
    // was stored; each says how to repeat safely.
    for (what, error) in [
        ("POST /api/v1/tasks", &single),
        ("POST /api/v1/tasks/batch", &batch),
    ] {
        assert!(
            error.contains("may or may not have been created"),
            "{what}: {error}"
        );
        assert!(error.contains("same `Idempotency-Key`"), "{what}: {error}");
    }
    for path in ["/api/v1/tasks", "/api/v1/tasks/batch"] {
        let description = spec["paths"][path]["post"]["responses"]["503"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            !description.contains("Nothing was changed")
                && description.contains("may or may not have taken effect"),
            "{path}: {description}"
        );
        assert!(
            description.contains("same `Idempotency-Key`"),
            "{path}: {description}"
        );
    }
}

#[tokio::test]
async fn sigterm_stops_the_api_cleanly() {
    let mut app = spawn_app().await;
    create_contract_task(&app).await;

    let child = app.api.as_mut().unwrap().terminate().expect("the api is running");
    let status = Process::wait_exit(child, Duration::from_secs(15)).await;

    assert!(status.success(), "{status}");
    let log = app.api.as_ref().unwrap().log();
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test]
async fn request_logs_name_the_task_and_never_the_token() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let (status, _) = app.get_task(&task_id).await;
    assert_eq!(status, 200);

    let log = eventually("the request log lines", STEP, || async {
        let log = app.api.as_ref()?.log();
        (log.matches(&task_id).count() >= 2).then_some(log)
    })
    .await;

    assert!(log.contains("task created"), "{log}");
    assert!(!log.contains(TOKEN), "the token was logged:\n{log}");
}

#[tokio::test]
async fn an_api_without_a_token_accepts_requests_without_authorization() {
    let app = TestApp::spawn(savestream_tests::TestOptions::default()).await;

    let (status, body) = app.create_task(contract_body()).await;

    assert_eq!(status, 201, "{body}");
}
