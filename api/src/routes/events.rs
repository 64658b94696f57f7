//! `GET /api/v1/tasks/{task_id}/events`: a task's history from the event log,
//! as one JSON document, or with `Accept: text/event-stream` as a live
//! Server-Sent Events stream that ends with the task, or earlier, after
//! `[api] live_stream_max_seconds`, when the client reconnects with
//! `Last-Event-ID` and gets the rest (see `live_events`). A stream request for a
//! task that has ended, with nothing after its `Last-Event-ID`, answers 204,
//! which tells a browser's `EventSource` to stop reconnecting (an empty 200
//! would not: it reconnects to a closed stream every few seconds, forever).

use futures::stream::BoxStream;
use poem::http::HeaderMap;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, OpenApi, ResponseContent};

use crate::auth::Authorized;
use crate::error::{ApiError, ErrorSet, Failure, TASK_NOT_FOUND, UNAUTHORIZED};
use crate::live_events;
use crate::routes::{parse_task_id, record_task_id, ApiTags};
use crate::state::AppState;
use crate::wire::{TaskEventBody, TaskEvents};

/// How often an idle event stream sends a comment, so proxies keep it open
/// and a vanished client is noticed.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

pub struct EventsApi;

pub struct EventsErrors;
impl ErrorSet for EventsErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (401, UNAUTHORIZED),
        (404, TASK_NOT_FOUND),
        (
            503,
            "Redis, which holds the tasks, is not answering, or, with `Accept: text/event-stream`, \
             too many live event streams are open (256); retry after a few seconds.",
        ),
    ];
}

#[derive(ResponseContent)]
pub enum EventsContent {
    /// The whole history at once.
    Json(Json<TaskEvents>),
    /// The history, then each new event as it happens, one JSON `TaskEventBody` per `data:` line
    /// with the event's id as the SSE `id`. The stream ends after the task's last event
    /// (`completed`, `failed` or `canceled`), or earlier when it reaches the server's
    /// `[api] live_stream_max_seconds`: reconnect with `Last-Event-ID` to go on where it ended.
    Stream(EventStream<BoxStream<'static, TaskEventBody>>),
}

#[derive(ApiResponse)]
pub enum EventsResponse {
    /// The task's events, oldest first.
    #[oai(status = 200)]
    Ok(EventsContent),
    /// Only with `Accept: text/event-stream` and a `Last-Event-ID`: the task has ended and there
    /// is nothing after `Last-Event-ID`, so there is nothing to send, now or later. An
    /// `EventSource` stops reconnecting on this answer.
    #[oai(status = 204)]
    Ended,
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tasks")]
impl EventsApi {
    /// Get a task's events
    ///
    /// Everything that happened to the task, oldest first: created, started, resolved, retrying,
    /// and how it ended. With `Accept: text/event-stream` the answer is a Server-Sent Events stream
    /// that sends the history, then each new event as it happens, and ends after the task's last
    /// event, or earlier when it has been open for the server's `[api] live_stream_max_seconds`
    /// (10 minutes by default). A reconnecting client that sends `Last-Event-ID` gets only the
    /// events after it, or a 204 with no body when the task has ended and nothing comes after it.
    #[oai(
        path = "/tasks/:task_id/events",
        method = "get",
        operation_id = "get_task_events"
    )]
    async fn task_events(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        headers: &HeaderMap,
        /// The id `POST /api/v1/tasks` returned.
        task_id: Path<String>,
    ) -> Result<EventsResponse, Failure<EventsErrors>> {
        let task_id = parse_task_id(&task_id.0)?;
        record_task_id(&task_id);
        let wants_stream = headers
            .get_all(poem::http::header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|accept| accept.contains("text/event-stream"));
        // Read before the history: the live part may start after it (see
        // `live_events::follow`).
        let newest = if wants_stream {
            state.store.newest_log_id().await?
        } else {
            None
        };
        let history = state.store.events(&task_id).await?;
        if history.is_empty() {
            return Err(ApiError::task_not_found(&task_id).into());
        }
        if !wants_stream {
            return Ok(EventsResponse::Ok(EventsContent::Json(Json(TaskEvents {
                task_id: task_id.to_string(),
                events: history.into_iter().map(TaskEventBody::from).collect(),
            }))));
        }
        let last_event_id = headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let events = match live_events::follow(&state, task_id, history, newest, last_event_id).await? {
            live_events::Follow::Events(events) => events,
            live_events::Follow::Ended => return Ok(EventsResponse::Ended),
        };
        let stream = EventStream::new(events)
            .keep_alive(KEEP_ALIVE)
            .to_event(|event: TaskEventBody| {
                let id = event.id.clone();
                let data = poem_openapi::types::ToJSON::to_json_string(&event);
                poem::web::sse::Event::message(data).id(id)
            });
        Ok(EventsResponse::Ok(EventsContent::Stream(stream)))
    }
}
