//! The client progenitor generated from `openapi/openapi.json`, end to end:
//! if the spec and the server disagree, these calls fail to decode.

use savestream_client::types;
use savestream_tests::{TEST_STORAGE, TEST_USER};

use super::helpers::{generated_client, logged_events, spawn_app, OTHER_STORAGE};

#[tokio::test]
async fn a_list_cut_at_its_limit_says_how_many_tasks_there_are_in_all() {
    let app = spawn_app().await;
    let client = generated_client(&app);
    let mut created = Vec::new();
    for index in 0..3 {
        let answer = client
            .create_task()
            .body_map(|body| {
                body.url(Some(format!("https://example.com/{index}.bin")))
                    .user_id(TEST_USER)
            })
            .send()
            .await
            .expect("create_task");
        created.push(answer.into_inner().task_id);
    }

    let cut = client
        .list_tasks()
        .limit(2)
        .send()
        .await
        .expect("list_tasks")
        .into_inner();
    let whole = client.list_tasks().send().await.expect("list_tasks").into_inner();

    let ids = |list: &types::TaskList| list.queued.iter().map(|task| task.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&cut), created[..2], "the oldest first");
    assert_eq!((cut.queued_total, cut.running_total), (3, 0));
    assert_eq!(ids(&whole), created);
    assert_eq!(whole.queued_total, 3);
}

#[tokio::test]
async fn generated_client_drives_a_task_from_creation_to_cancellation() {
    let app = spawn_app().await;
    let client = generated_client(&app);

    let created = client
        .create_task()
        .body_map(|body| {
            body.telegram_url(Some("https://t.me/channel/123".to_owned()))
                .user_id(TEST_USER)
                .storage_name(Some(TEST_STORAGE.to_owned()))
                .dir_path(Some("/downloads".to_owned()))
        })
        .send()
        .await
        .expect("create_task");
    assert_eq!(created.status(), 201);
    assert_eq!(created.message, "task created successfully");
    let task_id = created.into_inner().task_id;

    let task = client
        .get_task()
        .task_id(&task_id)
        .send()
        .await
        .expect("get_task");
    assert_eq!(task.status, types::TaskStatus::Queued);
    assert_eq!(task.source, types::Source::Telegram);
    assert_eq!(
        task.title,
        "[tgfiles](https://t.me/channel/123->local1:/downloads)"
    );

    let list = client.list_tasks().limit(10).send().await.expect("list_tasks");
    assert_eq!(list.queued.len(), 1);
    assert_eq!(list.queued[0].id, task_id);

    let canceled = client
        .cancel_task()
        .task_id(&task_id)
        .send()
        .await
        .expect("cancel_task");
    assert_eq!(canceled.message, "task canceled");

    let events = client
        .get_task_events()
        .task_id(&task_id)
        .send()
        .await
        .expect("get_task_events");
    let kinds: Vec<types::EventType> = events.events.iter().map(|event| event.type_).collect();
    assert_eq!(kinds, [types::EventType::Created, types::EventType::Canceled]);
}

#[tokio::test]
async fn generated_client_creates_a_direct_link_task() {
    let app = spawn_app().await;
    let client = generated_client(&app);

    let created = client
        .create_task()
        .body_map(|body| {
            body.url(Some("https://example.com/files/a.zip".to_owned()))
                .user_id(TEST_USER)
        })
        .send()
        .await
        .expect("create_task");
    let task = client
        .get_task()
        .task_id(&created.task_id)
        .send()
        .await
        .expect("get_task");

    assert_eq!(task.source, types::Source::Http);
    assert_eq!(task.link, "https://example.com/files/a.zip");
    assert_eq!(
        task.title,
        "[directlinks](https://example.com/files/a.zip->local1:/)"
    );
}

#[tokio::test]
async fn generated_client_sends_the_idempotency_key_and_gets_the_first_task_back() {
    let app = spawn_app().await;
    let client = generated_client(&app);
    let create = || {
        client
            .create_task()
            .idempotency_key("order-42")
            .body_map(|body| {
                body.telegram_url(Some("t.me/channel/5".to_owned()))
                    .user_id(TEST_USER)
            })
            .send()
    };

    let first = create().await.expect("first create");
    let repeat = create().await.expect("repeated create");

    assert_eq!(first.status(), 201);
    assert_eq!(repeat.status(), 200);
    assert_eq!(repeat.task_id, first.task_id);
    assert_eq!(repeat.message, "task created successfully");
    assert_eq!(logged_events(&app).await, 1, "the repeat created nothing");
}

#[tokio::test]
async fn generated_client_reads_typed_errors() {
    let app = spawn_app().await;
    let client = generated_client(&app);

    let error = client
        .get_task()
        .task_id("0123456789abcdefghij")
        .send()
        .await
        .expect_err("an unknown task");

    match error {
        savestream_client::Error::ErrorResponse(response) => {
            assert_eq!(response.status(), 404);
            assert!(
                response.error.contains("task 0123456789abcdefghij not found"),
                "{}",
                response.error
            );
        }
        other => panic!("expected a typed 404, got {other:?}"),
    }
}

#[tokio::test]
async fn generated_client_lists_the_users_storages_and_probes() {
    let app = spawn_app().await;
    let client = generated_client(&app);

    let storages = client
        .list_storages()
        .user_id(TEST_USER)
        .send()
        .await
        .expect("list_storages");
    let health = client.health().send().await.expect("health");
    let ready = client.ready().send().await.expect("ready");

    assert_eq!(storages.user_id, TEST_USER);
    let names: Vec<(&str, &str)> = storages
        .storages
        .iter()
        .map(|storage| (storage.name.as_str(), storage.type_.as_str()))
        .collect();
    assert_eq!(names, [(TEST_STORAGE, "local")]);
    assert!(!names.iter().any(|(name, _)| *name == OTHER_STORAGE));
    assert_eq!(health.status, "ok");
    assert_eq!(ready.status, "ready");
}
