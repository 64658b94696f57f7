//! `POST /api/v1/tasks/batch`: many tasks in one request, created in the
//! request's order, all refused when one is, and repeatable with an
//! `Idempotency-Key`.

use savestream_client::types;
use savestream_tests::{TestApp, TEST_STORAGE, TEST_USER};

use super::helpers::{
    expect_json_error, generated_client, logged_events, redis_keys, spawn_app, OTHER_STORAGE,
};

/// A direct-link task whose link names its place in the batch.
fn numbered_task(index: usize) -> serde_json::Value {
    serde_json::json!({"url": format!("https://example.com/files/{index}.bin"), "user_id": TEST_USER})
}

fn batch_of(tasks: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({ "tasks": tasks })
}

async fn post_batch(app: &TestApp, body: &serde_json::Value, key: Option<&str>) -> reqwest::Response {
    let mut request = app.client.post(app.url("/api/v1/tasks/batch")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("POST /api/v1/tasks/batch")
}

/// The ids a successful batch answered, in order.
async fn created_ids(response: reqwest::Response, status: u16) -> Vec<String> {
    assert_eq!(response.status().as_u16(), status);
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    body["tasks"]
        .as_array()
        .expect("`tasks` is an array")
        .iter()
        .map(|task| {
            assert_eq!(task["message"], "task created successfully");
            task["task_id"].as_str().expect("a task id").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_generated_client_creates_a_batch_whose_tasks_are_queued_as_single_creates_are() {
    let app = spawn_app().await;
    let client = generated_client(&app);
    let telegram = types::CreateTaskRequest::builder()
        .telegram_url(Some("https://t.me/channel/123".to_owned()))
        .user_id(TEST_USER)
        .dir_path(Some("/downloads".to_owned()));
    let direct = types::CreateTaskRequest::builder()
        .url(Some("https://example.com/file.zip".to_owned()))
        .user_id(TEST_USER)
        .storage_name(Some(TEST_STORAGE.to_owned()));
    let body = types::CreateTasksRequest {
        tasks: vec![telegram.try_into().unwrap(), direct.try_into().unwrap()],
    };

    let created = client
        .create_tasks()
        .body(body)
        .send()
        .await
        .expect("create_tasks");
    assert_eq!(created.status(), 201);
    let ids: Vec<String> = created
        .into_inner()
        .tasks
        .into_iter()
        .map(|task| task.task_id)
        .collect();

    assert_eq!(ids.len(), 2);
    let first = client.get_task().task_id(&ids[0]).send().await.expect("get_task");
    assert_eq!(first.status, types::TaskStatus::Queued);
    assert_eq!(first.source, types::Source::Telegram);
    assert_eq!(
        first.title,
        "[tgfiles](https://t.me/channel/123->local1:/downloads)"
    );
    let second = client.get_task().task_id(&ids[1]).send().await.expect("get_task");
    assert_eq!(second.source, types::Source::Http);
    let list = client.list_tasks().limit(10).send().await.expect("list_tasks");
    let queued: Vec<String> = list.queued.iter().map(|task| task.id.clone()).collect();
    assert_eq!(queued, ids, "the batch's tasks are queued in the request's order");
    assert_eq!(logged_events(&app).await, 2, "one `created` event per task");
}

#[tokio::test]
async fn a_batch_larger_than_one_store_call_keeps_the_requests_order() {
    let app = spawn_app().await;
    // 300 tasks take three store calls of at most 128.
    let tasks: Vec<serde_json::Value> = (0..300).map(numbered_task).collect();

    let ids = created_ids(post_batch(&app, &batch_of(tasks), None).await, 201).await;

    assert_eq!(ids.len(), 300);
    for index in [0, 127, 128, 255, 256, 299] {
        let (status, task) = app.get_task(&ids[index]).await;
        assert_eq!(status, 200);
        assert_eq!(
            task["link"],
            format!("https://example.com/files/{index}.bin"),
            "task {index} of the batch: {task}"
        );
    }
    assert_eq!(logged_events(&app).await, 300);
}

#[tokio::test]
async fn one_refused_task_refuses_the_batch_naming_the_task_and_nothing_is_created() {
    let app = spawn_app().await;
    let valid = || numbered_task(0);
    let with = |field: &str, value: serde_json::Value| {
        let mut task = numbered_task(1);
        task[field] = value;
        task
    };
    let too_many: Vec<serde_json::Value> = (0..501).map(numbered_task).collect();
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            batch_of(vec![valid(), with("url", 5.into())]),
            400,
            "`tasks[1]`: `url` must be a string, not a number",
        ),
        (
            batch_of(vec![valid(), 7.into()]),
            400,
            "`tasks[1]` is a number, not a JSON object",
        ),
        (
            batch_of(vec![valid(), with("url", "ftp://example.com/a".into())]),
            400,
            "`tasks[1]`: `url`:",
        ),
        (
            batch_of(vec![valid(), with("user_id", 42.into())]),
            403,
            "`tasks[1]`: user 42 is not configured",
        ),
        (
            batch_of(vec![valid(), with("storage_name", OTHER_STORAGE.into())]),
            403,
            "`tasks[1]`: user 123456789 may not use storage `other`",
        ),
        (
            batch_of(vec![valid(), with("storage_name", "nowhere".into())]),
            404,
            "`tasks[1]`: storage `nowhere` does not exist",
        ),
        (batch_of(vec![]), 400, "`tasks` is empty"),
        (
            batch_of(too_many),
            400,
            "`tasks` holds 501 tasks, more than the 500 allowed",
        ),
        (
            serde_json::json!({"tasks": {}}),
            400,
            "`tasks` must be an array, not an object",
        ),
        (
            serde_json::json!([valid()]),
            400,
            "the request body is an array, not a JSON object",
        ),
        (serde_json::json!({}), 400, "`tasks` is missing"),
    ];
    let keys_before = redis_keys(&app).await;

    for (body, status, expected) in cases {
        let error = expect_json_error(post_batch(&app, &body, None).await, status).await;
        assert!(
            error.starts_with(expected),
            "expected {expected:?}, got {error:?}"
        );
    }

    assert_eq!(logged_events(&app).await, 0, "a refused batch created a task");
    assert_eq!(
        redis_keys(&app).await,
        keys_before,
        "a refused batch wrote to Redis"
    );
}

#[tokio::test]
async fn repeating_a_batch_with_its_idempotency_key_answers_the_first_ids_and_creates_nothing() {
    let app = spawn_app().await;
    let body = batch_of((0..3).map(numbered_task).collect());

    let first = created_ids(post_batch(&app, &body, Some("import-7")).await, 201).await;
    let repeated = created_ids(post_batch(&app, &body, Some("import-7")).await, 200).await;
    let other_key = created_ids(post_batch(&app, &body, Some("import-8")).await, 201).await;

    assert_eq!(repeated, first);
    assert!(
        other_key.iter().all(|id| !first.contains(id)),
        "another key made new tasks"
    );
    // A single create's key is another namespace: the same text creates a task of its own.
    let single = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("Idempotency-Key", "import-7")
        .json(&numbered_task(0))
        .send()
        .await
        .unwrap();
    assert_eq!(single.status().as_u16(), 201);
    assert_eq!(logged_events(&app).await, 7);
}

#[tokio::test]
async fn a_batch_repeated_with_its_key_but_a_changed_task_answers_422_naming_the_task() {
    let app = spawn_app().await;
    let first = created_ids(
        post_batch(
            &app,
            &batch_of((0..2).map(numbered_task).collect()),
            Some("import-9"),
        )
        .await,
        201,
    )
    .await;
    // The second task changed, and a third added after it: the request is
    // refused whole, and the third is not created either.
    let changed = batch_of(vec![numbered_task(0), numbered_task(7), numbered_task(2)]);

    let error = expect_json_error(post_batch(&app, &changed, Some("import-9")).await, 422).await;

    assert!(
        error.starts_with("`tasks[1]`: ") && error.contains(&first[1]),
        "names the changed task and the task its key created: {error}"
    );
    assert_eq!(logged_events(&app).await, 2, "nothing new was created");
}

#[tokio::test]
async fn a_batch_needs_the_token() {
    let app = spawn_app().await;

    let response = reqwest::Client::new()
        .post(app.url("/api/v1/tasks/batch"))
        .json(&batch_of(vec![numbered_task(0)]))
        .send()
        .await
        .unwrap();

    let error = expect_json_error(response, 401).await;
    assert!(error.starts_with("missing bearer token"), "{error}");
    assert_eq!(logged_events(&app).await, 0);
}
