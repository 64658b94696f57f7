//! `GET /api/v1/tasks/{task_id}/events`: the history as JSON, and the live
//! Server-Sent Events stream that follows a task until it ends.

use std::time::Duration;

use futures::StreamExt;
use savestream_tests::TestApp;

use fred::prelude::ClientLike;

use super::helpers::{contract_body, create_contract_task, redis, spawn_app, STEP};

/// One SSE event: its `id:` and its `data:` parsed as JSON.
#[derive(Debug)]
struct SseEvent {
    id: String,
    data: serde_json::Value,
}

/// Reads an SSE response event by event; keep-alive comments are skipped.
struct SseReader {
    bytes: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl SseReader {
    async fn open(app: &TestApp, task_id: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = app
            .client
            .get(app.url(&format!("/api/v1/tasks/{task_id}/events")))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("opening the event stream");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        SseReader {
            bytes: response
                .bytes_stream()
                .map(|chunk| chunk.map(|bytes| bytes.to_vec()))
                .boxed(),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the server ended the stream.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).expect("SSE data is JSON");
                return Some(SseEvent { id, data });
            }
            let chunk = tokio::time::timeout(STEP, self.bytes.next())
                .await
                .expect("the event stream went silent")?;
            self.buffer.push_str(&String::from_utf8_lossy(
                &chunk.expect("reading the event stream"),
            ));
        }
    }
}

#[tokio::test]
async fn events_are_listed_as_json_oldest_first() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let (canceled, _) = app.cancel_task(&task_id).await;
    assert_eq!(canceled, 200);

    let response = app
        .client
        .get(app.url(&format!("/api/v1/tasks/{task_id}/events")))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["task_id"], task_id.as_str());
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(events[0]["type"], "created");
    assert_eq!(events[0]["link"], "https://t.me/channel/123");
    assert_eq!(events[0]["storage_name"], "local1");
    assert_eq!(events[0]["dir_path"], "/downloads");
    assert_eq!(events[0]["source"], "telegram");
    assert!(events[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(events[1]["type"], "canceled");
    assert!(
        events[1].get("link").is_none(),
        "fields of other types are absent: {}",
        events[1]
    );
    assert!(events[0]["id"].as_str().unwrap() < events[1]["id"].as_str().unwrap());
}

#[tokio::test]
async fn event_stream_sends_history_then_live_events_and_ends_with_the_task() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let mut stream = SseReader::open(&app, &task_id, None).await;

    let created = stream.next().await.expect("the history's first event");
    assert_eq!(created.data["type"], "created");
    assert_eq!(created.id, created.data["id"].as_str().unwrap());

    // Another task's events are on the same log; the stream must skip them.
    let other_task = create_contract_task(&app).await;
    assert_eq!(app.cancel_task(&other_task).await.0, 200);
    assert_eq!(app.cancel_task(&task_id).await.0, 200);

    let canceled = stream.next().await.expect("the live cancel event");
    assert_eq!(canceled.data["type"], "canceled");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the task's last event"
    );
}

#[tokio::test]
async fn a_live_stream_starts_after_the_backlog_that_was_on_the_log_when_it_opened() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    // A backlog behind it: 5,000 other tasks' events, ten XREADs' worth.
    for _ in 0..50 {
        let tasks: Vec<serde_json::Value> = (0..100).map(|_| contract_body()).collect();
        let response = app
            .client
            .post(app.url("/api/v1/tasks/batch"))
            .json(&serde_json::json!({ "tasks": tasks }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let reads_before = xread_calls(&app).await;

    let mut stream = SseReader::open(&app, &task_id, None).await;
    let created = stream.next().await.expect("the history's first event");
    let (canceled, _) = app.cancel_task(&task_id).await;
    let live = stream.next().await.expect("the live cancel event");

    assert_eq!(created.data["type"], "created");
    assert_eq!(canceled, 200);
    assert_eq!(live.data["type"], "canceled");
    assert!(stream.next().await.is_none(), "the stream ends with the task");
    let reads = xread_calls(&app).await - reads_before;
    assert!(
        reads <= 3,
        "{reads} XREADs: the stream read the backlog before it opened"
    );
}

/// How many `XREAD`s Redis has run, from `INFO commandstats`.
async fn xread_calls(app: &TestApp) -> u64 {
    let info: String = redis(app)
        .await
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_xread:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

#[tokio::test]
async fn event_stream_of_an_ended_task_replays_its_history_and_closes() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    app.cancel_task(&task_id).await;

    let mut stream = SseReader::open(&app, &task_id, None).await;

    assert_eq!(stream.next().await.unwrap().data["type"], "created");
    assert_eq!(stream.next().await.unwrap().data["type"], "canceled");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn event_stream_resumes_after_last_event_id() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let first = SseReader::open(&app, &task_id, None).await.next().await.unwrap();
    app.cancel_task(&task_id).await;

    let mut resumed = SseReader::open(&app, &task_id, Some(&first.id)).await;

    assert_eq!(resumed.next().await.unwrap().data["type"], "canceled");
    assert!(resumed.next().await.is_none());
}

/// A stream request for `task_id` with `Last-Event-ID: last_event_id`.
async fn request_stream_after(app: &TestApp, task_id: &str, last_event_id: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/v1/tasks/{task_id}/events")))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", last_event_id)
        .send()
        .await
        .expect("requesting the event stream")
}

/// The ids of a task's events, from the JSON form.
async fn event_ids(app: &TestApp, task_id: &str) -> Vec<String> {
    let body: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/tasks/{task_id}/events")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["events"]
        .as_array()
        .expect("the task's events")
        .iter()
        .map(|event| event["id"].as_str().expect("an event id").to_owned())
        .collect()
}

#[tokio::test]
async fn event_stream_of_an_ended_task_with_nothing_after_last_event_id_answers_204_so_eventsource_stops() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    assert_eq!(app.cancel_task(&task_id).await.0, 200);
    let ids = event_ids(&app, &task_id).await;
    assert_eq!(ids.len(), 2, "created, canceled: {ids:?}");
    let (ms, seq) = ids[1].split_once('-').expect("a stream id");
    let past_the_end = format!("{ms}-{}", seq.parse::<u64>().unwrap() + 1);

    for last_event_id in [ids[1].as_str(), past_the_end.as_str()] {
        let response = request_stream_after(&app, &task_id, last_event_id).await;

        assert_eq!(response.status(), 204, "Last-Event-ID {last_event_id}");
        assert!(
            response.headers().get("content-type").is_none(),
            "{:?}",
            response.headers()
        );
        assert!(response.bytes().await.unwrap().is_empty(), "a 204 has no body");
    }
}

#[tokio::test]
async fn event_stream_of_an_ended_task_sends_what_comes_after_an_earlier_last_event_id_then_ends() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    assert_eq!(app.cancel_task(&task_id).await.0, 200);
    let ids = event_ids(&app, &task_id).await;

    let mut resumed = SseReader::open(&app, &task_id, Some(&ids[0])).await;
    let canceled = resumed.next().await.expect("the event after Last-Event-ID");
    assert_eq!(canceled.data["type"], "canceled");
    assert_eq!(canceled.id, ids[1]);
    assert!(resumed.next().await.is_none(), "the stream ends with the task");

    // An unreadable Last-Event-ID is ignored: the whole history, not a 204.
    let mut whole = SseReader::open(&app, &task_id, Some("not an id")).await;
    assert_eq!(whole.next().await.unwrap().data["type"], "created");
    assert_eq!(whole.next().await.unwrap().data["type"], "canceled");
    assert!(whole.next().await.is_none());
}

#[tokio::test]
async fn event_stream_of_a_task_that_has_not_ended_stays_open_after_its_last_event_id() {
    let app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let ids = event_ids(&app, &task_id).await;
    assert_eq!(ids.len(), 1, "created: {ids:?}");

    let mut stream = SseReader::open(&app, &task_id, Some(&ids[0])).await;
    assert_eq!(app.cancel_task(&task_id).await.0, 200);

    let canceled = stream.next().await.expect("the live cancel event");
    assert_eq!(canceled.data["type"], "canceled");
    assert!(stream.next().await.is_none(), "the stream ends with the task");
}

#[tokio::test]
async fn event_streams_end_when_the_api_shuts_down() {
    let mut app = spawn_app().await;
    let task_id = create_contract_task(&app).await;
    let mut stream = SseReader::open(&app, &task_id, None).await;
    assert_eq!(stream.next().await.unwrap().data["type"], "created");

    let child = app.api.as_mut().unwrap().terminate().expect("the api is running");

    assert!(stream.next().await.is_none(), "the stream ends on shutdown");
    let status = savestream_tests::Process::wait_exit(child, Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
}
