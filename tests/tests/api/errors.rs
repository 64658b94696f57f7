//! Every refusal: its status, a JSON `{"error": ...}` body that names what to
//! change, and nothing written to Redis.

use savestream_tests::{TestApp, TEST_USER};

use super::helpers::{
    anonymous, contract_body, create_contract_task, expect_json_error, logged_events, redis_keys, spawn_app,
    OTHER_STORAGE, TOKEN,
};

async fn post_raw(app: &TestApp, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/tasks"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /api/v1/tasks")
}

#[tokio::test]
async fn malformed_create_requests_answer_400_naming_the_problem_and_write_nothing() {
    let app = spawn_app().await;
    let user = TEST_USER;
    let long = "x".repeat(3000);
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "the request body is empty"),
        ("{".into(), "the request body is not valid JSON"),
        ("not json".into(), "the request body is not valid JSON"),
        ("[1, 2]".into(), "the request body is an array, not a JSON object"),
        (
            r#"{"telegram_url": "https://t.me/channel/123"}"#.into(),
            "`user_id` is missing",
        ),
        (
            r#"{"telegram_url": "https://t.me/channel/123", "user_id": "123456789"}"#.into(),
            "`user_id` must be a number (a Telegram user id), not a string",
        ),
        (
            r#"{"telegram_url": "https://t.me/channel/123", "user_id": 1.5}"#.into(),
            "`user_id` must be a positive whole number",
        ),
        (
            format!(r#"{{"telegram_url": 123, "user_id": {user}}}"#),
            "`telegram_url` must be a string, not a number",
        ),
        (
            format!(r#"{{"user_id": {user}}}"#),
            "give `telegram_url` (a Telegram message link) or `url`",
        ),
        (
            format!(
                r#"{{"telegram_url": "t.me/a_chat/1", "url": "https://example.com/a", "user_id": {user}}}"#
            ),
            "give either `telegram_url` or `url`, not both",
        ),
        (
            format!(r#"{{"telegram_url": "https://example.com/channel/1", "user_id": {user}}}"#),
            "`telegram_url`: `example.com` is not a Telegram host",
        ),
        (
            format!(r#"{{"telegram_url": "https://t.me/channel", "user_id": {user}}}"#),
            "`telegram_url`: `/channel` links to a chat, not a message",
        ),
        (
            format!(r#"{{"telegram_url": "https://t.me/+AbCdEf123", "user_id": {user}}}"#),
            "`telegram_url`: `/+AbCdEf123` is an invite link",
        ),
        (
            format!(r#"{{"telegram_url": "https://t.me/channel/0", "user_id": {user}}}"#),
            "`telegram_url`: `0` is not a valid message id",
        ),
        (
            format!(r#"{{"url": "ftp://example.com/a", "user_id": {user}}}"#),
            "`url`: `ftp:` links are not supported",
        ),
        (
            format!(r#"{{"url": "https://", "user_id": {user}}}"#),
            "`url`: the link is not a valid URL (empty host)",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1", "dir_path": "downloads", "user_id": {user}}}"#),
            "`dir_path`: `downloads` is not absolute",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1", "dir_path": "/a/../../etc", "user_id": {user}}}"#),
            "`dir_path`: `/a/../../etc` contains a `..` segment",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1", "dir_path": "/a\u0000b", "user_id": {user}}}"#),
            "`dir_path` contains the control character U+0000",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1", "dir_path": null, "user_id": {user}}}"#),
            "`dir_path` must be a string, not null: leave `dir_path` out of the body instead",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1", "url": null, "user_id": {user}}}"#),
            "`url` must be a string, not null",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1\u0000", "user_id": {user}}}"#),
            "`telegram_url` contains the control character U+0000",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/1", "storage_name": "{long}", "user_id": {user}}}"#),
            "`storage_name` is 3000 bytes long, more than the 2048 allowed",
        ),
        (
            format!(r#"{{"telegram_url": "t.me/channel/{long}", "user_id": {user}}}"#),
            "`telegram_url` is 3013 bytes long",
        ),
        (
            format!(
                r#"{{"telegram_url": "t.me/channel/1", "dir_path": "/{}", "user_id": {user}}}"#,
                "d".repeat(1100)
            ),
            "`dir_path`: the path is 1101 bytes long, more than the 1024 allowed",
        ),
    ];

    for (body, expected) in &cases {
        let error = expect_json_error(post_raw(&app, body.clone()).await, 400).await;
        assert!(
            error.contains(expected),
            "body {body:?}\n  expected: {expected}\n  got: {error}"
        );
    }

    assert_eq!(logged_events(&app).await, 0);
    assert_eq!(redis_keys(&app).await, 0, "a refused request wrote to redis");
}

#[tokio::test]
async fn bad_query_parameters_answer_400_naming_the_parameter() {
    let app = spawn_app().await;
    let cases = [
        ("/api/v1/tasks?limit=0", "parameter `limit` must be at least 1"),
        (
            "/api/v1/tasks?limit=1001",
            "parameter `limit` must be at most 1000",
        ),
        ("/api/v1/tasks?limit=ten", "parameter `limit` is not a valid"),
        ("/api/v1/storages", "parameter `user_id` is missing"),
        (
            "/api/v1/storages?user_id=abc",
            "parameter `user_id` is not a valid",
        ),
        (
            "/api/v1/storages?user_id=-1",
            "`user_id` must be a positive whole number",
        ),
        (
            "/api/v1/storages?user_id=0",
            "`user_id` must be a positive whole number",
        ),
    ];

    for (path, expected) in cases {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let error = expect_json_error(response, 400).await;
        assert!(error.contains(expected), "{path}: {error}");
    }
}

#[tokio::test]
async fn a_bad_idempotency_key_answers_400() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("Idempotency-Key", "k".repeat(300))
        .json(&contract_body())
        .send()
        .await
        .unwrap();

    let error = expect_json_error(response, 400).await;
    assert!(error.contains("header `Idempotency-Key`"), "{error}");
    assert_eq!(logged_events(&app).await, 0);
}

#[tokio::test]
async fn missing_or_wrong_tokens_answer_401_json_on_every_protected_endpoint() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let http = anonymous();
    let requests = || {
        vec![
            http.post(app.url("/api/v1/tasks")).json(&contract_body()),
            http.post(app.url("/api/v1/tasks/batch"))
                .json(&serde_json::json!({"tasks": [contract_body()]})),
            http.get(app.url("/api/v1/tasks")),
            http.get(app.url(&format!("/api/v1/tasks/{task_id}"))),
            http.delete(app.url(&format!("/api/v1/tasks/{task_id}"))),
            http.get(app.url(&format!("/api/v1/tasks/{task_id}/events"))),
            http.get(app.url(&format!("/api/v1/storages?user_id={TEST_USER}"))),
        ]
    };

    for request in requests() {
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key("www-authenticate"));
        let error = expect_json_error(response, 401).await;
        assert!(error.starts_with("missing bearer token"), "{error}");
    }
    for request in requests() {
        let response = request.bearer_auth("not-the-token").send().await.unwrap();
        let error = expect_json_error(response, 401).await;
        assert!(error.starts_with("wrong bearer token"), "{error}");
        assert!(!error.contains(TOKEN));
    }
    for request in requests() {
        let response = request
            .header("Authorization", "Basic dXNlcjpwdw==")
            .send()
            .await
            .unwrap();
        let error = expect_json_error(response, 401).await;
        assert!(error.contains("not a bearer token"), "{error}");
    }
    let (_, task) = app.get_task(&task_id).await;
    assert_eq!(
        task["status"], "queued",
        "an unauthorized DELETE canceled the task"
    );
    assert_eq!(
        logged_events(&app).await,
        1,
        "an unauthorized POST created a task"
    );
}

#[tokio::test]
async fn unknown_users_and_storages_they_may_not_use_answer_403() {
    let app = spawn_app().await;

    let mut unknown_user = contract_body();
    unknown_user["user_id"] = 42.into();
    let error = expect_json_error(post_raw(&app, unknown_user.to_string()).await, 403).await;
    assert!(error.contains("user 42 is not configured"), "{error}");

    let mut other_storage = contract_body();
    other_storage["storage_name"] = OTHER_STORAGE.into();
    let error = expect_json_error(post_raw(&app, other_storage.to_string()).await, 403).await;
    assert!(error.contains("may not use storage `other`"), "{error}");

    let response = app
        .client
        .get(app.url("/api/v1/storages?user_id=42"))
        .send()
        .await
        .unwrap();
    let error = expect_json_error(response, 403).await;
    assert!(error.contains("user 42 is not configured"), "{error}");

    assert_eq!(redis_keys(&app).await, 0);
}

#[tokio::test]
async fn unknown_tasks_storages_and_paths_answer_404() {
    let app = spawn_app().await;
    let unknown = "0123456789abcdefghij";

    let mut unknown_storage = contract_body();
    unknown_storage["storage_name"] = "nope".into();
    let error = expect_json_error(post_raw(&app, unknown_storage.to_string()).await, 404).await;
    assert!(error.contains("storage `nope` does not exist"), "{error}");

    for path in [
        format!("/api/v1/tasks/{unknown}"),
        format!("/api/v1/tasks/{unknown}/events"),
        "/api/v1/tasks/not-a-task-id".to_owned(),
    ] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        let error = expect_json_error(response, 404).await;
        assert!(error.contains("not found"), "{path}: {error}");
    }
    let response = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{unknown}")))
        .send()
        .await
        .unwrap();
    expect_json_error(response, 404).await;

    for path in ["/nope", "/api/v1/nope", "/api/v2/tasks"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let error = expect_json_error(response, 404).await;
        assert!(error.contains("no such endpoint"), "{path}: {error}");
    }
    assert_eq!(redis_keys(&app).await, 0);
}

#[tokio::test]
async fn wrong_methods_answer_405_json() {
    let app = spawn_app().await;

    for (method, path) in [
        (reqwest::Method::PUT, "/api/v1/tasks"),
        (reqwest::Method::PATCH, "/api/v1/tasks/0123456789abcdefghij"),
        (reqwest::Method::POST, "/health"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        let error = expect_json_error(response, 405).await;
        assert!(
            error.contains(&format!("{method} is not allowed on {path}")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn wrong_methods_answer_405_with_an_allow_header_listing_the_paths_methods() {
    let app = spawn_app().await;

    for (method, path, allow) in [
        (reqwest::Method::PUT, "/api/v1/tasks", "GET, HEAD, POST"),
        (
            reqwest::Method::PATCH,
            "/api/v1/tasks/0123456789abcdefghij",
            "DELETE, GET, HEAD",
        ),
        (
            reqwest::Method::POST,
            "/api/v1/tasks/0123456789abcdefghij/events",
            "GET, HEAD",
        ),
        (reqwest::Method::TRACE, "/api/v1/storages", "GET, HEAD"),
        (reqwest::Method::DELETE, "/api/v1/workers", "GET, HEAD"),
        (reqwest::Method::POST, "/health", "GET, HEAD"),
        (reqwest::Method::PUT, "/ready", "GET, HEAD"),
        (reqwest::Method::POST, "/metrics", "GET, HEAD"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();

        let got_allow = response
            .headers()
            .get(reqwest::header::ALLOW)
            .map(|value| value.to_str().unwrap().to_owned());
        let error = expect_json_error(response, 405).await;
        assert_eq!(got_allow.as_deref(), Some(allow), "{method} {path}: {error}");
        assert!(
            error.ends_with(&format!("use one of {allow}")),
            "{method} {path}: {error}"
        );
    }
}

#[tokio::test]
async fn canceling_an_ended_task_answers_409() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let cancel = || {
        app.client
            .delete(app.url(&format!("/api/v1/tasks/{task_id}")))
            .send()
    };
    assert_eq!(cancel().await.unwrap().status(), 200);

    let error = expect_json_error(cancel().await.unwrap(), 409).await;

    assert!(error.contains("has already ended (canceled)"), "{error}");
    assert_eq!(logged_events(&app).await, 2, "created and canceled, nothing more");
}

#[tokio::test]
async fn bodies_over_64_kib_answer_413_json_whether_or_not_they_announce_their_length() {
    let app = spawn_app().await;
    let mut body = contract_body();
    body["padding"] = "p".repeat(70 * 1024).into();
    let text = body.to_string();

    let announced = post_raw(&app, text.clone()).await;
    let error = expect_json_error(announced, 413).await;
    assert!(error.contains("larger than 64 KiB"), "{error}");

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text
        .into_bytes()
        .chunks(8 * 1024)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let chunked = post_raw(&app, reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await;
    expect_json_error(chunked, 413).await;

    assert_eq!(redis_keys(&app).await, 0);
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_accepted() {
    let app = spawn_app().await;
    let mut body = contract_body();
    body["padding"] = "p".repeat(60 * 1024).into();

    let response = post_raw(&app, body.to_string()).await;

    assert_eq!(response.status(), 201);
}
