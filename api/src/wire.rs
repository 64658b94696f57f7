//! The API's wire types: every poem-openapi `Object` and `Enum` it serializes,
//! and their conversions from `shared`'s domain types.
//!
//! This module is the JSON boundary of the HTTP API (the event stream in
//! `shared::event` is the other serialization boundary of the project). It
//! owns field names, descriptions and examples, which become the OpenAPI
//! document; it does not decide anything. Field names of the five contract
//! fields (`task_id`, `status`, `title`, `created_at`, `error`) and of the
//! request body are SaveAny-Bot's and must not change.
//!
//! The request body is the one type parsed by hand ([`CreateTaskRequest::from_json`])
//! rather than by poem-openapi, whose errors do not say which field is wrong.

use poem_openapi::types::Example;
use poem_openapi::{Enum, Object};
use savestream_shared::config::StorageConfig;
use savestream_shared::event::EventKind;
use savestream_shared::store::webhooks::{TaskWebhook, WebhookState};
use savestream_shared::store::{LoggedEvent, Progress, TaskList, TaskRecord, TaskSummary, WorkerInfo};
use savestream_shared::task::{Millis, SourceKind, TaskStatus};
use serde_json::{Map, Value};

/// The longest string any field of a request body may hold, in bytes.
pub const MAX_FIELD_LEN: usize = 2048;

const EXAMPLE_TASK_ID: &str = "d4mq2nk0h9pc73b0qpag";
const EXAMPLE_TITLE: &str = "[tgfiles](file.pdf->local1:/downloads/file.pdf)";
const EXAMPLE_TIME: &str = "2024-01-19T04:30:00Z";

/// Every time in the API is written as the contract writes it: RFC 3339 in
/// UTC, whole seconds, with a `Z` (webhooks use the same function).
pub use savestream_shared::task::rfc3339;

/// The body of every response that is not a success.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename = "ErrorResponse", example)]
pub struct ErrorBody {
    /// What went wrong, in words a user can act on: which field or header, and what to change.
    pub error: String,
}

impl Example for ErrorBody {
    fn example() -> Self {
        ErrorBody {
            error: "error description".to_owned(),
        }
    }
}

/// `GET /health`.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct Health {
    /// Always `ok`: the process is up and serving HTTP.
    pub status: String,
}

impl Example for Health {
    fn example() -> Self {
        Health {
            status: "ok".to_owned(),
        }
    }
}

/// `GET /ready` when Redis answers.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct Ready {
    /// Always `ready`: Redis answers, so the API can create and read tasks.
    pub status: String,
}

impl Example for Ready {
    fn example() -> Self {
        Ready {
            status: "ready".to_owned(),
        }
    }
}

/// A task to create: exactly one of `telegram_url` or `url` (not empty), and the user it is for.
/// A body with neither or both is refused with 400 naming them. Fields not listed here are
/// ignored.
///
/// The one-source rule is stated here, not as a `oneOf` in the schema: client generators
/// (openapi-python-client, openapi-generator, progenitor) build a `oneOf` object from its
/// alternatives alone and drop the shared properties, `user_id` among them, so their typed
/// clients could not send a valid body.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example, skip_serializing_if_is_none)]
pub struct CreateTaskRequest {
    /// A Telegram message link, as Telegram's Copy Link gives it: `https://t.me/<channel>/<message>`,
    /// `https://t.me/c/<chat id>/<message>`, optionally with a topic id before the message id and
    /// `?single`, `?comment=<id>` or `?thread=<id>`. Give either this or `url`, not both.
    /// At most 2048 bytes. Example: `https://t.me/channel/123`.
    pub telegram_url: Option<String>,
    /// A direct `http://` or `https://` link to a file: the alternative to `telegram_url`.
    /// Hosts on loopback, private or link-local networks are refused unless the server allows them.
    /// At most 2048 bytes. Example: `https://example.com/file.zip`.
    pub url: Option<String>,
    /// The Telegram user id the task is for. It must have a `[[users]]` entry in the server's config.
    /// A positive whole number. Example: `123456789`.
    pub user_id: i64,
    /// The storage to save into. Absent or empty: the user's first allowed storage.
    /// Example: `local1`.
    pub storage_name: Option<String>,
    /// The directory inside the storage: absolute (starts with `/`), without `..`, at most 1024 bytes.
    /// `//` and a trailing `/` are normalised away. Absent or empty: `/`.
    /// Example: `/downloads`.
    pub dir_path: Option<String>,
}

impl Example for CreateTaskRequest {
    fn example() -> Self {
        CreateTaskRequest {
            telegram_url: Some("https://t.me/channel/123".to_owned()),
            url: None,
            user_id: 123456789,
            storage_name: Some("local1".to_owned()),
            dir_path: Some("/downloads".to_owned()),
        }
    }
}

impl CreateTaskRequest {
    /// Reads a request body, naming the field in every error. Empty strings
    /// count as absent, as they did in SaveAny-Bot; `null` does not: the
    /// contract types every field as a string or a number, so a `null` is
    /// refused like any other value of the wrong type.
    pub fn from_json(body: &[u8]) -> Result<CreateTaskRequest, String> {
        let fields = body_object(
            body,
            "send a JSON object with `telegram_url` (or `url`) and `user_id`",
            TASK_SHAPE,
        )?;
        CreateTaskRequest::from_fields(fields)
    }

    /// Reads one task from a JSON value; `what` names the value in the
    /// error when it is not an object (`tasks[3]`).
    pub fn from_value(value: Value, what: &str) -> Result<CreateTaskRequest, String> {
        CreateTaskRequest::from_fields(json_object(value, what, TASK_SHAPE)?)
    }

    fn from_fields(mut fields: Map<String, Value>) -> Result<CreateTaskRequest, String> {
        let mut text = |name: &str| -> Result<Option<String>, String> {
            match fields.remove(name) {
                None => Ok(None),
                Some(Value::String(text)) if text.is_empty() => Ok(None),
                Some(Value::String(text)) => {
                    if text.len() > MAX_FIELD_LEN {
                        return Err(format!(
                            "`{name}` is {} bytes long, more than the {MAX_FIELD_LEN} allowed: shorten it",
                            text.len()
                        ));
                    }
                    if let Some(control) = text.chars().find(|c| c.is_control()) {
                        return Err(format!(
                            "`{name}` contains the control character U+{:04X}: use printable characters only",
                            u32::from(control)
                        ));
                    }
                    Ok(Some(text))
                }
                Some(Value::Null) => Err(format!(
                    "`{name}` must be a string, not null: leave `{name}` out of the body instead"
                )),
                Some(other) => Err(format!("`{name}` must be a string, not {}", describe(&other))),
            }
        };
        let telegram_url = text("telegram_url")?;
        let url = text("url")?;
        let storage_name = text("storage_name")?;
        let dir_path = text("dir_path")?;
        let user_id = match fields.remove("user_id") {
            None | Some(Value::Null) => {
                return Err("`user_id` is missing: give the Telegram user id the task is for".to_owned())
            }
            Some(Value::Number(number)) => match number.as_i64() {
                Some(id) if id > 0 => id,
                _ => {
                    return Err(format!(
                        "`user_id` must be a positive whole number (a Telegram user id), not {number}"
                    ))
                }
            },
            Some(other) => {
                return Err(format!(
                    "`user_id` must be a number (a Telegram user id), not {}",
                    describe(&other)
                ))
            }
        };
        Ok(CreateTaskRequest {
            telegram_url,
            url,
            user_id,
            storage_name,
            dir_path,
        })
    }
}

/// What a create body looks like, for the errors that refuse one.
const TASK_SHAPE: &str =
    "send an object such as {\"telegram_url\": \"https://t.me/channel/123\", \"user_id\": 123456789}";

/// A request body's JSON object, or the error that says what is wrong with
/// it: `empty_hint` for an empty body, `shape` for any other.
fn body_object(body: &[u8], empty_hint: &str, shape: &str) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("the request body is empty: {empty_hint}"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| format!("the request body is not valid JSON ({error}): {shape}"))?;
    json_object(value, "the request body", shape)
}

/// `value`'s fields when it is an object; `what` names it in the error.
fn json_object(value: Value, what: &str, shape: &str) -> Result<Map<String, Value>, String> {
    match value {
        Value::Object(fields) => Ok(fields),
        other => Err(format!(
            "{what} is {}, not a JSON object: {shape}",
            describe(&other)
        )),
    }
}

/// What a JSON value is, for error messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The most tasks one `POST /api/v1/tasks/batch` may carry.
pub const MAX_BATCH_TASKS: usize = 500;

/// Tasks to create in one request.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct CreateTasksRequest {
    /// The tasks, 1 to 500, each as `POST /api/v1/tasks` takes one. The whole body is at most 64 KiB.
    #[oai(validator(min_items = 1, max_items = 500))]
    pub tasks: Vec<CreateTaskRequest>,
}

impl Example for CreateTasksRequest {
    fn example() -> Self {
        CreateTasksRequest {
            tasks: vec![
                CreateTaskRequest::example(),
                CreateTaskRequest {
                    telegram_url: None,
                    url: Some("https://example.com/file.zip".to_owned()),
                    ..CreateTaskRequest::example()
                },
            ],
        }
    }
}

impl CreateTasksRequest {
    /// Reads a batch body. An error in a task names it by its index
    /// (`tasks[3]`), so the client knows which one to fix.
    pub fn from_json(body: &[u8]) -> Result<CreateTasksRequest, String> {
        const SHAPE: &str = "send an object such as {\"tasks\": [{\"telegram_url\": \"https://t.me/channel/123\", \"user_id\": 123456789}]}";
        let mut fields = body_object(body, SHAPE, SHAPE)?;
        let tasks = match fields.remove("tasks") {
            None | Some(Value::Null) => return Err(format!("`tasks` is missing: {SHAPE}")),
            Some(Value::Array(tasks)) => tasks,
            Some(other) => {
                return Err(format!(
                    "`tasks` must be an array, not {}: {SHAPE}",
                    describe(&other)
                ))
            }
        };
        if tasks.is_empty() {
            return Err("`tasks` is empty: give at least one task".to_owned());
        }
        if tasks.len() > MAX_BATCH_TASKS {
            return Err(format!(
                "`tasks` holds {} tasks, more than the {MAX_BATCH_TASKS} allowed: split them into several requests",
                tasks.len()
            ));
        }
        let tasks = tasks
            .into_iter()
            .enumerate()
            .map(|(index, task)| {
                let what = format!("`tasks[{index}]`");
                CreateTaskRequest::from_value(task, &what).map_err(|error| {
                    // A field's error names the field alone; say whose.
                    if error.starts_with(&what) {
                        error
                    } else {
                        format!("{what}: {error}")
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CreateTasksRequest { tasks })
    }
}

/// `POST /api/v1/tasks` succeeded.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct TaskCreated {
    /// The new task's id (20 characters of `0-9a-v`); use it with `GET /api/v1/tasks/{task_id}`.
    pub task_id: String,
    /// Always `task created successfully`.
    pub message: String,
}

impl Example for TaskCreated {
    fn example() -> Self {
        TaskCreated::new(EXAMPLE_TASK_ID.to_owned())
    }
}

/// `POST /api/v1/tasks/batch` succeeded.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct TasksCreated {
    /// One entry per task of the request, in the request's order.
    pub tasks: Vec<TaskCreated>,
}

impl Example for TasksCreated {
    fn example() -> Self {
        TasksCreated {
            tasks: vec![TaskCreated::example()],
        }
    }
}

impl TaskCreated {
    pub fn new(task_id: String) -> TaskCreated {
        TaskCreated {
            task_id,
            message: "task created successfully".to_owned(),
        }
    }
}

/// Where a task is in its life (`status`): `queued`, `running`, `completed`, `failed` or `canceled`.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "TaskStatus", rename_all = "lowercase")]
pub enum TaskStatusWire {
    /// Waiting for a worker (also between retries).
    Queued,
    /// A worker is downloading it.
    Running,
    /// Saved into the storage.
    Completed,
    /// Gave up; `error` says why.
    Failed,
    /// Canceled by `DELETE /api/v1/tasks/{task_id}`.
    Canceled,
}

impl From<TaskStatus> for TaskStatusWire {
    fn from(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Queued => TaskStatusWire::Queued,
            TaskStatus::Running => TaskStatusWire::Running,
            TaskStatus::Completed => TaskStatusWire::Completed,
            TaskStatus::Failed => TaskStatusWire::Failed,
            TaskStatus::Canceled => TaskStatusWire::Canceled,
        }
    }
}

/// Where a task's bytes come from (`source`): `telegram` for a `telegram_url`, `http` for a `url`.
/// On events, only `created` events carry it.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "Source", rename_all = "lowercase")]
pub enum SourceWire {
    /// A Telegram message (`telegram_url`).
    Telegram,
    /// A direct http(s) link (`url`).
    Http,
}

impl From<SourceKind> for SourceWire {
    fn from(source: SourceKind) -> Self {
        match source {
            SourceKind::Telegram => SourceWire::Telegram,
            SourceKind::Http => SourceWire::Http,
        }
    }
}

/// Download progress of a running task.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Progress", example)]
pub struct ProgressBody {
    /// Bytes downloaded so far in the current attempt. Example: `1048576`.
    pub downloaded_bytes: i64,
    /// The file's size in bytes; absent while it is unknown. Example: `4194304`.
    #[oai(skip_serializing_if_is_none)]
    pub total_bytes: Option<i64>,
    /// Recent download speed in bytes per second; 0 once the task ended. Example: `524288`.
    pub bytes_per_second: i64,
}

impl Example for ProgressBody {
    fn example() -> Self {
        ProgressBody {
            downloaded_bytes: 1_048_576,
            total_bytes: Some(4_194_304),
            bytes_per_second: 524_288,
        }
    }
}

impl From<Progress> for ProgressBody {
    fn from(progress: Progress) -> Self {
        ProgressBody {
            downloaded_bytes: int64(progress.downloaded_bytes),
            total_bytes: progress.total_bytes.map(int64),
            bytes_per_second: int64(progress.bytes_per_second),
        }
    }
}

/// A task: the five fields of SaveAny-Bot's contract first, then savestream's own.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Task", example)]
pub struct TaskDetails {
    /// The task's id. Example: `d4mq2nk0h9pc73b0qpag`.
    pub task_id: String,
    // Enum-typed fields carry no doc comment: poem-openapi would wrap the
    // `$ref` in an `allOf` to attach it, which openapi-python-client cannot
    // read for enums. The enum's own description documents the field.
    pub status: TaskStatusWire,
    /// `[<source>](<file>-><storage>:<path>)`; before the file is known, the link stands for the
    /// file and the directory for the path. Example: `[tgfiles](file.pdf->local1:/downloads/file.pdf)`.
    pub title: String,
    /// When the task was created, RFC 3339 in UTC. Example: `2024-01-19T04:30:00Z`.
    pub created_at: String,
    /// Why the task failed, or, while it is queued to be tried again, why its last attempt ended;
    /// empty otherwise (a running attempt shows none).
    pub error: String,
    /// When the task last changed, RFC 3339 in UTC. Example: `2024-01-19T04:31:12Z`.
    pub updated_at: String,
    // No doc comment: see `status`.
    pub source: SourceWire,
    /// The `telegram_url` (in canonical `https://t.me/...` form) or `url` the task was created with.
    pub link: String,
    /// The storage the file is saved into. Example: `local1`.
    pub storage_name: String,
    /// The directory inside the storage, normalised. Example: `/downloads`.
    pub dir_path: String,
    /// The file's path inside the storage once the source has named the file; empty before.
    /// Example: `/downloads/file.pdf`.
    pub path: String,
    /// How many times a worker has started the task. Example: `1`.
    pub attempts: u32,
    /// How many of its retries the task has used up: one per retryable failure; a wait the source
    /// asked for (Telegram's FLOOD_WAIT) uses none. Example: `0`.
    pub retries: u32,
    /// Download progress of the current attempt.
    pub progress: ProgressBody,
    /// The delivery of the task's outcome to the webhook, once the task ended and a webhook
    /// dispatcher recorded it; absent before, and when no `webhook_url` is configured.
    #[oai(skip_serializing_if_is_none)]
    pub webhook: Option<WebhookBody>,
}

/// Where the delivery of a task's outcome to `[api] webhook_url` stands.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "WebhookState", rename_all = "snake_case")]
pub enum WebhookStateWire {
    /// Recorded, not tried yet.
    Pending,
    /// Tried without a 2xx; the next try waits out its backoff.
    Retrying,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: the tries or the time span (`[webhook]`) were used up, or the receiver answered
    /// 410 Gone (then `last_status` is 410).
    GaveUp,
}

impl From<WebhookState> for WebhookStateWire {
    fn from(state: WebhookState) -> Self {
        match state {
            WebhookState::Pending => WebhookStateWire::Pending,
            WebhookState::Retrying => WebhookStateWire::Retrying,
            WebhookState::Delivered => WebhookStateWire::Delivered,
            WebhookState::GaveUp | WebhookState::Gone => WebhookStateWire::GaveUp,
        }
    }
}

/// The delivery of a task's outcome to the webhook.
#[derive(Object, Debug, Clone)]
#[oai(rename = "WebhookDelivery", example)]
pub struct WebhookBody {
    /// The `webhook-id` header of every try, which the receiver dedupes on.
    /// Example: `msg_d4mq2nk0h9pc73b0qpag_1705638600000-0`.
    pub webhook_id: String,
    // No doc comment: see `TaskDetails::status`.
    pub state: WebhookStateWire,
    /// Tries made so far. Example: `1`.
    pub attempts: u32,
    /// The HTTP status of the receiver's last answer; absent before the first answer, and when
    /// the last try got none (a timeout, a refused connection). Example: `200`.
    #[oai(skip_serializing_if_is_none)]
    pub last_status: Option<u32>,
}

impl Example for WebhookBody {
    fn example() -> Self {
        WebhookBody {
            webhook_id: format!("msg_{EXAMPLE_TASK_ID}_1705638600000-0"),
            state: WebhookStateWire::Delivered,
            attempts: 1,
            last_status: Some(200),
        }
    }
}

impl From<TaskWebhook> for WebhookBody {
    fn from(webhook: TaskWebhook) -> Self {
        WebhookBody {
            webhook_id: webhook.webhook_id,
            state: webhook.state.into(),
            attempts: webhook.attempts,
            last_status: webhook.last_status.map(u32::from),
        }
    }
}

impl Example for TaskDetails {
    fn example() -> Self {
        TaskDetails {
            task_id: EXAMPLE_TASK_ID.to_owned(),
            status: TaskStatusWire::Completed,
            title: EXAMPLE_TITLE.to_owned(),
            created_at: EXAMPLE_TIME.to_owned(),
            error: String::new(),
            updated_at: "2024-01-19T04:31:12Z".to_owned(),
            source: SourceWire::Telegram,
            link: "https://t.me/channel/123".to_owned(),
            storage_name: "local1".to_owned(),
            dir_path: "/downloads".to_owned(),
            path: "/downloads/file.pdf".to_owned(),
            attempts: 1,
            retries: 0,
            progress: ProgressBody {
                downloaded_bytes: 4_194_304,
                total_bytes: Some(4_194_304),
                bytes_per_second: 0,
            },
            webhook: Some(WebhookBody::example()),
        }
    }
}

impl From<TaskRecord> for TaskDetails {
    fn from(record: TaskRecord) -> Self {
        let task = record.task;
        TaskDetails {
            task_id: task.id.to_string(),
            status: task.status.into(),
            title: task.title,
            created_at: rfc3339(task.created_at),
            error: task.error,
            updated_at: rfc3339(task.updated_at),
            source: task.source.into(),
            link: task.link,
            storage_name: task.storage,
            dir_path: task.dir,
            path: task.path.unwrap_or_default(),
            attempts: task.attempt,
            retries: task.retries,
            progress: ProgressBody {
                // The speed is of the attempt under way; an ended task
                // downloads nothing, whatever its last progress write said.
                bytes_per_second: if task.status.is_terminal() {
                    0
                } else {
                    int64(record.progress.bytes_per_second)
                },
                ..record.progress.into()
            },
            webhook: record.webhook.map(Into::into),
        }
    }
}

/// One line of the task list.
#[derive(Object, Debug, Clone)]
#[oai(rename = "TaskSummary", example)]
pub struct TaskLine {
    /// The task's id. Example: `d4mq2nk0h9pc73b0qpag`.
    pub id: String,
    /// The task's title. Example: `[tgfiles](file1.pdf->local1:/downloads/file1.pdf)`.
    pub title: String,
}

impl Example for TaskLine {
    fn example() -> Self {
        TaskLine {
            id: EXAMPLE_TASK_ID.to_owned(),
            title: EXAMPLE_TITLE.to_owned(),
        }
    }
}

impl From<TaskSummary> for TaskLine {
    fn from(summary: TaskSummary) -> Self {
        TaskLine {
            id: summary.id.to_string(),
            title: summary.title,
        }
    }
}

/// Queued and running tasks, oldest first.
#[derive(Object, Debug, Clone)]
#[oai(rename = "TaskList", example)]
pub struct TaskListBody {
    /// Tasks waiting for a worker, oldest first, at most `limit`.
    pub queued: Vec<TaskLine>,
    /// Tasks a worker is downloading, oldest first, at most `limit`.
    pub running: Vec<TaskLine>,
    /// How many tasks are queued in all. More than `queued` holds when the list was cut at
    /// `limit`: ask with a larger `limit` to see more.
    pub queued_total: i64,
    /// How many tasks are running in all. More than `running` holds when the list was cut at
    /// `limit`.
    pub running_total: i64,
}

impl Example for TaskListBody {
    fn example() -> Self {
        TaskListBody {
            queued: vec![TaskLine::example()],
            running: vec![TaskLine {
                id: "d4mq2nk0h9pc73b0qpb0".to_owned(),
                title: "[tgfiles](file2.pdf->local1:/downloads/file2.pdf)".to_owned(),
            }],
            queued_total: 1,
            running_total: 1,
        }
    }
}

impl From<TaskList> for TaskListBody {
    fn from(list: TaskList) -> Self {
        TaskListBody {
            queued: list.queued.into_iter().map(TaskLine::from).collect(),
            running: list.running.into_iter().map(TaskLine::from).collect(),
            queued_total: int64(list.queued_total),
            running_total: int64(list.running_total),
        }
    }
}

/// `DELETE /api/v1/tasks/{task_id}` succeeded.
#[derive(Object, Debug, Clone)]
#[oai(example)]
pub struct TaskCanceled {
    /// Always `task canceled`.
    pub message: String,
}

impl Example for TaskCanceled {
    fn example() -> Self {
        TaskCanceled::new()
    }
}

impl TaskCanceled {
    pub fn new() -> TaskCanceled {
        TaskCanceled {
            message: "task canceled".to_owned(),
        }
    }
}

impl Default for TaskCanceled {
    fn default() -> Self {
        TaskCanceled::new()
    }
}

/// What happened to a task (an event's `type`). `completed`, `failed` and `canceled` end the task.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "EventType", rename_all = "lowercase")]
pub enum EventTypeWire {
    /// The task was created (by `POST /api/v1/tasks`).
    Created,
    /// A worker started an attempt.
    Started,
    /// The source named the file: its name, size and path in the storage.
    Resolved,
    /// The attempt failed with a retryable error; the task is queued again until `due_at`.
    Retrying,
    /// The file is saved. The task has ended.
    Completed,
    /// The task gave up. The task has ended.
    Failed,
    /// The task was canceled. The task has ended.
    Canceled,
}

/// One event of a task's history. `id`, `type` and `at` are always present; the other fields
/// belong to some types only and are absent from the rest.
#[derive(Object, Debug, Clone)]
#[oai(rename = "TaskEvent", example, skip_serializing_if_is_none)]
pub struct TaskEventBody {
    /// The event's id on the log: increasing, usable as an SSE `Last-Event-ID`.
    /// Example: `1705638600000-0`.
    pub id: String,
    // Enum-typed fields carry no doc comment: poem-openapi would wrap the
    // `$ref` in an `allOf` to attach it, which openapi-python-client cannot
    // read for enums. The enum's own description documents the field.
    #[oai(rename = "type")]
    pub kind: EventTypeWire,
    /// When it happened, RFC 3339 in UTC. Example: `2024-01-19T04:30:00Z`.
    pub at: String,
    // `created` only. No doc comment: see `kind`.
    pub source: Option<SourceWire>,
    /// `created`: the link the task was created with.
    pub link: Option<String>,
    /// `created`: the Telegram user id the task is for.
    pub user_id: Option<i64>,
    /// `created`: the storage the file goes into.
    pub storage_name: Option<String>,
    /// `created`: the directory inside the storage.
    pub dir_path: Option<String>,
    /// `created`, `resolved`: the task's title from then on.
    pub title: Option<String>,
    /// Every worker event: the attempt it belongs to (1 for the first).
    pub attempt: Option<u32>,
    /// `started`: the worker that took the task.
    pub worker: Option<String>,
    /// `resolved`: the file's name.
    pub file_name: Option<String>,
    /// `resolved`, `completed`: the file's size in bytes, when known.
    pub size: Option<i64>,
    /// `resolved`, `completed`: the file's path inside the storage.
    pub path: Option<String>,
    /// `retrying`, `failed`: what went wrong.
    pub error: Option<String>,
    /// `retrying`: retryable failures so far.
    pub retries: Option<u32>,
    /// `retrying`: when the next attempt may start, RFC 3339 in UTC.
    pub due_at: Option<String>,
}

impl TaskEventBody {
    fn bare(id: String, kind: EventTypeWire, at: Millis) -> TaskEventBody {
        TaskEventBody {
            id,
            kind,
            at: rfc3339(at),
            source: None,
            link: None,
            user_id: None,
            storage_name: None,
            dir_path: None,
            title: None,
            attempt: None,
            worker: None,
            file_name: None,
            size: None,
            path: None,
            error: None,
            retries: None,
            due_at: None,
        }
    }

    /// Whether this event ends its task's history.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.kind,
            EventTypeWire::Completed | EventTypeWire::Failed | EventTypeWire::Canceled
        )
    }
}

impl Example for TaskEventBody {
    fn example() -> Self {
        TaskEventBody {
            source: Some(SourceWire::Telegram),
            link: Some("https://t.me/channel/123".to_owned()),
            user_id: Some(123456789),
            storage_name: Some("local1".to_owned()),
            dir_path: Some("/downloads".to_owned()),
            title: Some("[tgfiles](https://t.me/channel/123->local1:/downloads)".to_owned()),
            ..TaskEventBody::bare(
                "1705638600000-0".to_owned(),
                EventTypeWire::Created,
                1_705_638_600_000,
            )
        }
    }
}

impl From<LoggedEvent> for TaskEventBody {
    fn from(logged: LoggedEvent) -> Self {
        let LoggedEvent { id, event } = logged;
        let at = event.at;
        match event.kind {
            EventKind::Created {
                source,
                link,
                user_id,
                storage,
                dir,
                title,
            } => TaskEventBody {
                source: Some(source.into()),
                link: Some(link),
                user_id: Some(user_id),
                storage_name: Some(storage),
                dir_path: Some(dir),
                title: Some(title),
                ..TaskEventBody::bare(id, EventTypeWire::Created, at)
            },
            EventKind::Started { attempt, worker } => TaskEventBody {
                attempt: Some(attempt),
                worker: Some(worker),
                ..TaskEventBody::bare(id, EventTypeWire::Started, at)
            },
            EventKind::Resolved {
                attempt,
                file_name,
                size,
                path,
                title,
                // Internal to the worker's resume: not part of the API.
                validator: _,
            } => TaskEventBody {
                attempt: Some(attempt),
                file_name: Some(file_name),
                size: size.map(int64),
                path: Some(path),
                title: Some(title),
                ..TaskEventBody::bare(id, EventTypeWire::Resolved, at)
            },
            EventKind::Retrying {
                attempt,
                error,
                retries,
                due_at,
            } => TaskEventBody {
                attempt: Some(attempt),
                error: Some(error),
                retries: Some(retries),
                due_at: Some(rfc3339(due_at)),
                ..TaskEventBody::bare(id, EventTypeWire::Retrying, at)
            },
            EventKind::Completed { attempt, size, path } => TaskEventBody {
                attempt: Some(attempt),
                size: size.map(int64),
                path: Some(path),
                ..TaskEventBody::bare(id, EventTypeWire::Completed, at)
            },
            EventKind::Failed { attempt, error } => TaskEventBody {
                attempt: Some(attempt),
                error: Some(error),
                ..TaskEventBody::bare(id, EventTypeWire::Failed, at)
            },
            EventKind::Canceled => TaskEventBody::bare(id, EventTypeWire::Canceled, at),
        }
    }
}

/// A task's history, oldest first.
#[derive(Object, Debug, Clone)]
#[oai(rename = "TaskEventList", example)]
pub struct TaskEvents {
    /// The task's id. Example: `d4mq2nk0h9pc73b0qpag`.
    pub task_id: String,
    /// Every event of the task, oldest first.
    pub events: Vec<TaskEventBody>,
}

impl Example for TaskEvents {
    fn example() -> Self {
        TaskEvents {
            task_id: EXAMPLE_TASK_ID.to_owned(),
            events: vec![TaskEventBody::example()],
        }
    }
}

/// A storage a user may save into.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Storage", example)]
pub struct StorageBody {
    /// The storage's name, for `storage_name`. Example: `local1`.
    pub name: String,
    /// The storage's type. Example: `local`.
    #[oai(rename = "type")]
    pub kind: String,
}

impl Example for StorageBody {
    fn example() -> Self {
        StorageBody {
            name: "local1".to_owned(),
            kind: "local".to_owned(),
        }
    }
}

impl From<&StorageConfig> for StorageBody {
    fn from(storage: &StorageConfig) -> Self {
        StorageBody {
            name: storage.name.clone(),
            kind: storage.kind.as_str().to_owned(),
        }
    }
}

/// The storages a user may save into; the first is the default for `storage_name`.
#[derive(Object, Debug, Clone)]
#[oai(rename = "StorageList", example)]
pub struct StorageListBody {
    /// The user these storages are for. Example: `123456789`.
    pub user_id: i64,
    /// Enabled storages the user may use, in config order.
    pub storages: Vec<StorageBody>,
}

impl Example for StorageListBody {
    fn example() -> Self {
        StorageListBody {
            user_id: 123456789,
            storages: vec![StorageBody::example()],
        }
    }
}

/// A live worker process: where it runs, what it runs and what it holds now.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Worker", example)]
pub struct WorkerBody {
    /// The worker's name, unique per process: `<host>-<pid>-<xid>`. `started` events name it too.
    /// Example: `box1-4242-d4mq2nk0h9pc73b0qpcg`.
    pub name: String,
    /// The host it runs on. Example: `box1`.
    pub host: String,
    /// Its process id on that host. Example: `4242`.
    pub pid: u32,
    /// What it runs: `tasks`, `webhooks` or `all`. Example: `all`.
    pub role: String,
    /// How many tasks it runs at once. Example: `3`.
    pub slots: i64,
    /// The ids of the tasks it holds now, at most `slots`.
    pub tasks: Vec<String>,
    /// When it started, RFC 3339 in UTC. Example: `2024-01-19T04:00:00Z`.
    pub started_at: String,
    /// Its last heartbeat, RFC 3339 in UTC. A worker silent for three lease periods is not listed.
    /// Example: `2024-01-19T04:30:00Z`.
    pub seen_at: String,
}

impl Example for WorkerBody {
    fn example() -> Self {
        WorkerBody {
            name: "box1-4242-d4mq2nk0h9pc73b0qpcg".to_owned(),
            host: "box1".to_owned(),
            pid: 4242,
            role: "all".to_owned(),
            slots: 3,
            tasks: vec![EXAMPLE_TASK_ID.to_owned()],
            started_at: "2024-01-19T04:00:00Z".to_owned(),
            seen_at: EXAMPLE_TIME.to_owned(),
        }
    }
}

impl From<WorkerInfo> for WorkerBody {
    fn from(info: WorkerInfo) -> Self {
        WorkerBody {
            name: info.name,
            host: info.host,
            pid: info.pid,
            role: info.role,
            slots: int64(info.slots as u64),
            tasks: info.tasks,
            started_at: rfc3339(info.started_at),
            seen_at: rfc3339(info.seen_at),
        }
    }
}

/// The live workers, by name.
#[derive(Object, Debug, Clone)]
#[oai(rename = "WorkerList", example)]
pub struct WorkerListBody {
    /// Every worker that sent a heartbeat within three lease periods, sorted by name.
    pub workers: Vec<WorkerBody>,
}

impl Example for WorkerListBody {
    fn example() -> Self {
        WorkerListBody {
            workers: vec![WorkerBody::example()],
        }
    }
}

/// A count or size as the document's `int64`: client generators map only
/// `int64` to a 64-bit integer (openapi-generator gives `uint64` a 32-bit
/// one, which a file over 2 GiB overflows). No count comes near `i64::MAX`;
/// one that did would read as `i64::MAX`, not wrap.
fn int64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CreateTaskRequest, String> {
        CreateTaskRequest::from_json(body.as_bytes())
    }

    #[test]
    fn an_ended_task_shows_no_download_speed_and_a_running_one_its_last() {
        let record = |status| TaskRecord {
            task: savestream_shared::task::Task {
                id: savestream_shared::task::TaskId::generate(),
                status,
                source: SourceKind::Http,
                link: "https://example.com/f.bin".into(),
                user_id: 1,
                storage: "local1".into(),
                dir: "/".into(),
                title: String::new(),
                file_name: None,
                size: None,
                path: None,
                validator: None,
                created_at: 0,
                updated_at: 0,
                started_at: None,
                ended_at: None,
                attempt: 1,
                retries: 0,
                error: String::new(),
                worker: None,
            },
            progress: Progress {
                downloaded_bytes: 2048,
                total_bytes: Some(4096),
                bytes_per_second: 512,
            },
            webhook: None,
        };

        let running = TaskDetails::from(record(TaskStatus::Running));
        assert_eq!(running.progress.bytes_per_second, 512);
        for status in [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Canceled] {
            let ended = TaskDetails::from(record(status));
            assert_eq!(ended.progress.bytes_per_second, 0, "{status:?}");
            assert_eq!(ended.progress.downloaded_bytes, 2048, "{status:?}");
        }
    }

    #[test]
    fn request_body_reads_the_contract_example() {
        let request = parse(
            r#"{"telegram_url": "https://t.me/channel/123", "user_id": 123456789,
                "storage_name": "local1", "dir_path": "/downloads", "extra": [1]}"#,
        )
        .unwrap();
        assert_eq!(request, CreateTaskRequest::example());
    }

    #[test]
    fn request_body_errors_name_the_field() {
        let error = |body: &str| parse(body).unwrap_err();
        assert!(error("").contains("empty"));
        assert!(error("{").contains("not valid JSON"));
        assert!(error("[]").contains("an array, not a JSON object"));
        assert!(error(r#"{"telegram_url": "x"}"#).starts_with("`user_id` is missing"));
        assert!(error(r#"{"user_id": "1"}"#).starts_with("`user_id` must be a number"));
        assert!(error(r#"{"user_id": 1.5}"#).starts_with("`user_id` must be a positive whole number"));
        assert!(error(r#"{"user_id": -1}"#).starts_with("`user_id` must be a positive whole number"));
        assert!(error(r#"{"user_id": 1, "dir_path": 5}"#).starts_with("`dir_path` must be a string"));
        assert!(error(r#"{"user_id": 1, "storage_name": "a\u0000"}"#)
            .starts_with("`storage_name` contains the control character U+0000"));
        let long = format!(r#"{{"user_id": 1, "url": "{}"}}"#, "a".repeat(MAX_FIELD_LEN + 1));
        assert!(error(&long).starts_with("`url` is 2049 bytes long"));
    }

    #[test]
    fn request_body_treats_empty_strings_as_absent() {
        let request = parse(r#"{"telegram_url": "", "url": "", "user_id": 7, "dir_path": ""}"#).unwrap();
        assert_eq!(request.telegram_url, None);
        assert_eq!(request.url, None);
        assert_eq!(request.dir_path, None);
        assert_eq!(request.user_id, 7);
    }

    #[test]
    fn request_body_refuses_null_for_every_string_field() {
        for field in ["telegram_url", "url", "storage_name", "dir_path"] {
            let body = format!(r#"{{"user_id": 7, "{field}": null}}"#);
            let error = parse(&body).unwrap_err();
            assert_eq!(
                error,
                format!("`{field}` must be a string, not null: leave `{field}` out of the body instead"),
                "{body}"
            );
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_z() {
        assert_eq!(rfc3339(1_705_638_600_000), "2024-01-19T04:30:00Z");
    }

    /// Every `YYYY-MM-DDTHH:MM:SS` in `text` and the character after it.
    fn timestamps(text: &str) -> Vec<(String, Option<char>)> {
        let shape = "dddd-dd-ddTdd:dd:dd";
        let bytes = text.as_bytes();
        (0..bytes.len().saturating_sub(shape.len() - 1))
            .filter(|&start| {
                shape
                    .bytes()
                    .zip(&bytes[start..])
                    .all(|(expected, &byte)| match expected {
                        b'd' => byte.is_ascii_digit(),
                        other => byte == other,
                    })
            })
            .map(|start| {
                let end = start + shape.len();
                (text[start..end].to_owned(), text[end..].chars().next())
            })
            .collect()
    }

    #[test]
    fn the_documents_example_times_have_whole_seconds_as_the_server_writes_them() {
        let document = crate::openapi_json();
        let found = timestamps(&document);

        assert!(found.len() >= 3, "the document shows example times: {found:?}");
        for (time, next) in found {
            // `rfc3339` writes whole seconds and `Z`: a fraction (`.345`)
            // would show clients a form the server never sends.
            assert_eq!(next, Some('Z'), "{time} is followed by {next:?}, not Z");
            let written = format!("{time}Z");
            let millis = chrono::DateTime::parse_from_rfc3339(&written)
                .unwrap_or_else(|error| panic!("{written}: {error}"))
                .timestamp_millis();
            assert_eq!(rfc3339(millis), written);
        }
    }
}
