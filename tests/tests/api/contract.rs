//! SaveAny-Bot's contract (`seed-api.md`): its curl and Python examples,
//! sent as they are written, get the documented answers.

use savestream_tests::TEST_USER;

use super::helpers::{
    anonymous, contract_body, create_contract_task, expect_json_error, logged_events, spawn_app, TOKEN,
};

#[tokio::test]
async fn health_answers_ok_without_a_token() {
    let app = spawn_app().await;

    let response = anonymous().get(app.url("/health")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn curl_create_example_answers_201_with_the_task_id_and_message() {
    let app = spawn_app().await;

    // curl -X POST .../api/v1/tasks -H "Content-Type: application/json" -H "Authorization: Bearer ..." -d '{...}'
    let response = anonymous()
        .post(app.url("/api/v1/tasks"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(
            r#"{
    "telegram_url": "https://t.me/channel/123",
    "user_id": 123456789,
    "storage_name": "local1",
    "dir_path": "/downloads"
  }"#,
        )
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    let mut fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["message", "task_id"]);
    assert_eq!(body["message"], "task created successfully");
    let task_id = body["task_id"].as_str().unwrap();
    assert_eq!(task_id.len(), 20, "{task_id}");
}

#[tokio::test]
async fn curl_get_example_answers_the_five_contract_fields() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;

    // curl http://localhost:8080/api/v1/tasks/<id> -H "Authorization: Bearer ..."
    let response = anonymous()
        .get(app.url(&format!("/api/v1/tasks/{task_id}")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["task_id"], task_id.as_str());
    assert_eq!(body["status"], "queued");
    assert_eq!(
        body["title"],
        "[tgfiles](https://t.me/channel/123->local1:/downloads)"
    );
    assert_eq!(body["error"], "");
    let created_at = body["created_at"].as_str().unwrap();
    assert!(created_at.ends_with('Z'), "{created_at}");
    let created = chrono::DateTime::parse_from_rfc3339(created_at).expect("created_at is RFC 3339");
    let age = chrono::Utc::now().signed_duration_since(created);
    assert!(age.num_seconds().abs() < 60, "created_at {created_at} is not now");
}

#[tokio::test]
async fn get_task_adds_savestreams_documented_fields() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;

    let (status, body) = app.get_task(&task_id).await;

    assert_eq!(status, 200);
    assert_eq!(body["source"], "telegram");
    assert_eq!(body["link"], "https://t.me/channel/123");
    assert_eq!(body["storage_name"], "local1");
    assert_eq!(body["dir_path"], "/downloads");
    assert_eq!(body["path"], "");
    assert_eq!(body["attempts"], 0);
    assert_eq!(body["retries"], 0);
    assert_eq!(body["created_at"], body["updated_at"]);
    assert_eq!(
        body["progress"],
        // `total_bytes` is absent while the size is unknown: the spec's field is not nullable.
        serde_json::json!({"downloaded_bytes": 0, "bytes_per_second": 0})
    );
}

/// A key stands for one request: repeated with another link it is refused
/// with 422 naming the first task, and creates nothing; repeated with the
/// same request it still answers the first task.
#[tokio::test]
async fn an_idempotency_key_repeated_with_another_request_answers_422_naming_the_first_task() {
    let app = spawn_app().await;
    let post = |message: u32| {
        let mut body = contract_body();
        body["telegram_url"] = format!("https://t.me/channel/{message}").into();
        app.client
            .post(app.url("/api/v1/tasks"))
            .header("Idempotency-Key", "nightly-import")
            .json(&body)
            .send()
    };
    let first = post(1).await.expect("the first POST");
    assert_eq!(first.status().as_u16(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let first_id = first["task_id"].as_str().unwrap().to_owned();
    let events_after_first = logged_events(&app).await;

    let other = expect_json_error(post(2).await.expect("the second POST"), 422).await;
    let same = post(1).await.expect("the repeat");

    assert!(
        other.contains("`Idempotency-Key`") && other.contains(&first_id) && other.contains("new key"),
        "{other}"
    );
    assert_eq!(
        logged_events(&app).await,
        events_after_first,
        "the refused request created nothing"
    );
    assert_eq!(same.status().as_u16(), 200);
    let same: serde_json::Value = same.json().await.unwrap();
    assert_eq!(same["task_id"], first_id.as_str());
}

/// Creates that arrive together share store calls (`create_batcher`); each
/// must still get its own task, and repeats of one `Idempotency-Key` among
/// them exactly one.
#[tokio::test]
async fn concurrent_creates_each_get_their_own_task_and_a_repeated_key_gets_one() {
    let app = spawn_app().await;
    let create = |message: u32, key: Option<&'static str>| {
        let mut body = contract_body();
        // The keyed creates repeat one request, as a key's repeats must.
        let message = if key.is_some() { 1000 } else { message };
        body["telegram_url"] = format!("https://t.me/channel/{message}").into();
        let mut request = app.client.post(app.url("/api/v1/tasks")).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move {
            let response = request.send().await.expect("POST /api/v1/tasks");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("a JSON body");
            let task_id = body["task_id"].as_str().map(str::to_owned);
            (
                status,
                task_id.unwrap_or_else(|| panic!("no task id in the answer {status} {body}")),
            )
        }
    };

    let answers = futures::future::join_all(
        (1..=60).map(|message| create(message, (message % 3 == 0).then_some("one-key"))),
    )
    .await;

    let (keyed, unkeyed): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .zip(1..)
        .partition(|(_, message)| message % 3 == 0);
    let mut unkeyed_ids: Vec<&str> = unkeyed
        .iter()
        .map(|((status, task_id), _)| {
            assert_eq!(*status, 201);
            task_id.as_str()
        })
        .collect();
    unkeyed_ids.sort_unstable();
    unkeyed_ids.dedup();
    assert_eq!(
        unkeyed_ids.len(),
        40,
        "every unkeyed create has a task of its own"
    );
    let keyed_ids: std::collections::HashSet<&str> =
        keyed.iter().map(|((_, task_id), _)| task_id.as_str()).collect();
    assert_eq!(keyed_ids.len(), 1, "one task for the key: {keyed_ids:?}");
    let firsts = keyed.iter().filter(|((status, _), _)| *status == 201).count();
    assert_eq!(firsts, 1, "exactly one 201 for the key, the rest 200");
    let list: serde_json::Value = app
        .client
        .get(app.url("/api/v1/tasks"))
        .send()
        .await
        .expect("GET /api/v1/tasks")
        .json()
        .await
        .expect("a JSON list");
    assert_eq!(list["queued"].as_array().expect("queued").len(), 41);
}

#[tokio::test]
async fn curl_list_example_lists_queued_tasks_oldest_first() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for message in 1..=3 {
        let mut body = contract_body();
        body["telegram_url"] = format!("https://t.me/channel/{message}").into();
        let (status, reply) = app.create_task(body).await;
        assert_eq!(status, 201, "{reply}");
        created.push(reply["task_id"].as_str().unwrap().to_owned());
    }

    let response = anonymous()
        .get(app.url("/api/v1/tasks"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let queued: Vec<&str> = body["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["id"].as_str().unwrap())
        .collect();
    assert_eq!(queued, created);
    assert_eq!(
        body["queued"][0]["title"],
        "[tgfiles](https://t.me/channel/1->local1:/downloads)"
    );
    assert_eq!(body["running"], serde_json::json!([]));
}

#[tokio::test]
async fn curl_cancel_example_cancels_a_queued_task() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;

    // curl -X DELETE http://localhost:8080/api/v1/tasks/<id> -H "Authorization: Bearer ..."
    let response = anonymous()
        .delete(app.url(&format!("/api/v1/tasks/{task_id}")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"message": "task canceled"}));
    let (_, task) = app.get_task(&task_id).await;
    assert_eq!(task["status"], "canceled");
}

#[tokio::test]
async fn python_example_headers_and_json_body_work() {
    let app = spawn_app().await;

    // requests.post(url, headers={"Authorization": ..., "Content-Type": "application/json"}, json={...})
    let response = anonymous()
        .post(app.url("/api/v1/tasks"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .json(&contract_body())
        .send()
        .await
        .unwrap();
    let task_id = response.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = anonymous()
        .get(app.url(&format!("/api/v1/tasks/{task_id}")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();

    assert_eq!(status["status"], "queued");
}

#[tokio::test]
async fn curl_data_without_a_json_content_type_is_still_read_as_json() {
    let app = spawn_app().await;

    // `curl -d '{...}'` without -H sends application/x-www-form-urlencoded;
    // SaveAny-Bot decoded the body as JSON regardless.
    let response = app
        .client
        .post(app.url("/api/v1/tasks"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(contract_body().to_string())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn optional_fields_default_to_the_users_first_storage_and_the_root() {
    let app = spawn_app().await;

    let (status, body) = app
        .create_task(serde_json::json!({"telegram_url": "t.me/channel/9", "user_id": TEST_USER}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, task) = app.get_task(body["task_id"].as_str().unwrap()).await;

    assert_eq!(task["storage_name"], "local1");
    assert_eq!(task["dir_path"], "/");
    assert_eq!(task["link"], "https://t.me/channel/9");
    assert_eq!(task["title"], "[tgfiles](https://t.me/channel/9->local1:/)");
}
