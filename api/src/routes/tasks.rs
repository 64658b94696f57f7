//! SaveAny-Bot's task contract: `POST /api/v1/tasks`, `GET /api/v1/tasks`,
//! `GET /api/v1/tasks/{task_id}` and `DELETE /api/v1/tasks/{task_id}`.
//!
//! Handlers check, then call the store once; they hold no state between
//! requests, so any number of API replicas can serve the same Redis.

use poem::web::Data;
use poem::{Request, RequestBody};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, OpenApi};
use savestream_shared::store::{is_idempotency_key, StoreError};

use crate::auth::Authorized;
use crate::error::{
    ApiError, ErrorSet, Failure, BODY_TOO_LARGE, KEY_REUSED, STORE_UNAVAILABLE, TASK_NOT_FOUND, UNAUTHORIZED,
};
use crate::new_task;
use crate::routes::{parse_task_id, record_task_id, ApiTags};
use crate::state::AppState;
use crate::wire::{
    CreateTaskRequest, CreateTasksRequest, TaskCanceled, TaskCreated, TaskDetails, TaskListBody, TasksCreated,
};

/// `limit` when the request gives none.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// The largest `limit` accepted: enough for a page, small enough to answer fast.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// The longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct TasksApi;

/// The 403 of both creates.
const USER_MAY_NOT: &str =
    "`user_id` has no `[[users]]` entry in the server's config, or that user may not use \
     `storage_name`, or may use no enabled storage at all.";

pub struct CreateErrors;
impl ErrorSet for CreateErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "The request is malformed: the body is not JSON, a field is missing, has the wrong type, \
             is too long or holds a control character, neither or both of `telegram_url` and `url` \
             are given, `telegram_url` is not a message link, `url` is not a usable http(s) link, \
             `dir_path` is not absolute or contains `..`, or the `Idempotency-Key` header is not 1 \
             to 255 printable ASCII characters. `error` names the field or header and what to change.",
        ),
        (401, UNAUTHORIZED),
        (403, USER_MAY_NOT),
        (404, "No storage is named `storage_name`."),
        (413, BODY_TOO_LARGE),
        (422, KEY_REUSED),
        (
            503,
            "Redis, which holds the tasks, is not answering; retry after a few seconds. A create \
             that timed out waiting for Redis may or may not have taken effect: repeat it with the \
             same `Idempotency-Key` to be safe (the first task is answered if it was stored).",
        ),
    ];
}

pub struct CreateManyErrors;
impl ErrorSet for CreateManyErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "The request is malformed: the body is not JSON, `tasks` is missing, empty or longer \
             than 500, or in one of the tasks a field is missing, has the wrong type, is too long \
             or holds a control character, neither or both of `telegram_url` and `url` are given, \
             `telegram_url` is not a message link, `url` is not a usable http(s) link, or \
             `dir_path` is not absolute or contains `..`; or the `Idempotency-Key` header is not 1 \
             to 255 printable ASCII characters. `error` names the task (`tasks[3]`), the field or \
             header, and what to change.",
        ),
        (401, UNAUTHORIZED),
        (403, USER_MAY_NOT),
        (
            404,
            "No storage is named the `storage_name` of one of the tasks; `error` names the task.",
        ),
        (413, BODY_TOO_LARGE),
        (422, KEY_REUSED),
        (
            503,
            "Redis, which holds the tasks, is not answering; retry after a few seconds. A create \
             that timed out waiting for Redis may or may not have taken effect, for some or all of \
             its tasks: repeat it with the same `Idempotency-Key` and only the missing ones are \
             created.",
        ),
    ];
}

pub struct GetErrors;
impl ErrorSet for GetErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (401, UNAUTHORIZED),
        (404, TASK_NOT_FOUND),
        (503, STORE_UNAVAILABLE),
    ];
}

pub struct ListErrors;
impl ErrorSet for ListErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (400, "`limit` is not a whole number from 1 to 1000."),
        (401, UNAUTHORIZED),
        (503, STORE_UNAVAILABLE),
    ];
}

pub struct CancelErrors;
impl ErrorSet for CancelErrors {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (401, UNAUTHORIZED),
        (404, TASK_NOT_FOUND),
        (
            409,
            "The task has already ended (completed, failed or canceled), so it cannot be canceled.",
        ),
        (
            503,
            "Redis, which holds the tasks, is not answering; retry after a few seconds. A cancel \
             that timed out waiting for Redis may or may not have taken effect: read the task to \
             see whether it went through.",
        ),
    ];
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// The task was created and queued.
    #[oai(status = 201)]
    Created(Json<TaskCreated>),
    /// A request with the same `Idempotency-Key` created this task within the last 24 hours;
    /// nothing new was created. The body is the one the first request got.
    #[oai(status = 200)]
    Repeated(Json<TaskCreated>),
}

#[derive(ApiResponse)]
pub enum CreateManyResponse {
    /// The tasks were created and queued.
    #[oai(status = 201)]
    Created(Json<TasksCreated>),
    /// Every task repeats one a request with the same `Idempotency-Key` created within the last
    /// 24 hours; nothing new was created. The body is the one the first request got.
    #[oai(status = 200)]
    Repeated(Json<TasksCreated>),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    /// The task.
    #[oai(status = 200)]
    Ok(Json<TaskDetails>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    /// Queued and running tasks, oldest first.
    #[oai(status = 200)]
    Ok(Json<TaskListBody>),
}

#[derive(ApiResponse)]
pub enum CancelResponse {
    /// The task was canceled; a running download stops within moments.
    #[oai(status = 200)]
    Ok(Json<TaskCanceled>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tasks")]
impl TasksApi {
    /// Create a download task
    ///
    /// Queues a task that saves the file of a Telegram message (`telegram_url`) or of a direct
    /// http(s) link (`url`) into a storage. Give exactly one of the two. Answers 201 with the new
    /// task's id; a worker picks the task up from the queue.
    ///
    /// With an `Idempotency-Key` header, a repeat of the request within 24 hours answers 200 with
    /// the first task's id instead of creating another, so a client may retry safely.
    #[oai(path = "/tasks", method = "post", operation_id = "create_task")]
    async fn create_task(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        /// Any text of 1 to 255 printable ASCII characters chosen by the client, for example a
        /// UUID. The same key within 24 hours returns the task the first request created.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        body: Body<CreateTaskRequest>,
        request: &poem::Request,
    ) -> Result<CreateResponse, Failure<CreateErrors>> {
        let idempotency_key = idempotency_key_of(idempotency_key, request)?;
        let new_task = new_task::validate(body.0, &state.config)?;
        let source = new_task.source;
        let storage = new_task.storage.clone();
        let created = state
            .creates
            .create(new_task, idempotency_key)
            .await
            .map_err(ApiError::from_create)?;
        record_task_id(&created.task_id);
        let body = Json(TaskCreated::new(created.task_id.to_string()));
        if created.is_new {
            crate::metrics::task_created(source);
            tracing::info!(
                task_id = %created.task_id,
                source = source.as_str(),
                storage = %storage,
                "task created"
            );
            Ok(CreateResponse::Created(body))
        } else {
            tracing::info!(task_id = %created.task_id, "repeated idempotency key: returning the first task");
            Ok(CreateResponse::Repeated(body))
        }
    }

    /// Create many download tasks at once
    ///
    /// Queues up to 500 tasks in one request, each as `POST /api/v1/tasks` takes one, and answers
    /// their ids in the request's order. Every task is checked first: if one is refused, the
    /// answer names it (`tasks[3]`) and no task is created.
    ///
    /// With an `Idempotency-Key` header, a repeat of the request within 24 hours answers 200 with
    /// the first request's ids. If the request fails partway (503 while Redis is unreachable),
    /// some tasks may stand created: repeat it with the same key and only the missing ones are
    /// created.
    #[oai(path = "/tasks/batch", method = "post", operation_id = "create_tasks")]
    async fn create_tasks(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        /// Any text of 1 to 255 printable ASCII characters chosen by the client, for example a
        /// UUID. The same key within 24 hours returns the tasks the first request created.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        body: Body<CreateTasksRequest>,
        request: &poem::Request,
    ) -> Result<CreateManyResponse, Failure<CreateManyErrors>> {
        let idempotency_key = idempotency_key_of(idempotency_key, request)?;
        let new_tasks = body
            .0
            .tasks
            .into_iter()
            .enumerate()
            .map(|(index, task)| {
                new_task::validate(task, &state.config).map_err(|error| error.for_task(index))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Each task's own key: the request's key and the task's place in
        // it. A newline cannot occur in a key a client sends, so no single
        // create's key can stand for a batch's task.
        let keys: Vec<Option<String>> = (0..new_tasks.len())
            .map(|index| idempotency_key.as_ref().map(|key| format!("{key}\n{index}")))
            .collect();
        // A key reused for a changed task refuses the whole request before
        // any task is written, as every other refusal does.
        if idempotency_key.is_some() {
            let requests = new_tasks.iter().zip(keys.iter().map(Option::as_deref));
            if let Some((index, first)) = state
                .store
                .first_reused_key(requests)
                .await
                .map_err(ApiError::from_create_many)?
            {
                return Err(ApiError::from(StoreError::IdempotencyKeyReused { first })
                    .for_task(index)
                    .into());
            }
        }
        let mut created = Vec::with_capacity(new_tasks.len());
        let mut any_new = false;
        // Calls of the create batcher's size keep each one short in Redis.
        // Each task is counted as it is created, so a call that fails
        // later leaves the earlier ones counted.
        for (tasks, keys) in new_tasks
            .chunks(crate::create_batcher::MAX_BATCH)
            .zip(keys.chunks(crate::create_batcher::MAX_BATCH))
        {
            let requests = tasks.iter().zip(keys.iter().map(Option::as_deref));
            let results = state
                .store
                .create_batch(requests)
                .await
                .map_err(ApiError::from_create_many)?;
            for (new_task, result) in tasks.iter().zip(results) {
                let index = created.len();
                let task = result.map_err(|error| ApiError::from_create_many(error).for_task(index))?;
                if task.is_new {
                    any_new = true;
                    crate::metrics::task_created(new_task.source);
                }
                created.push(task);
            }
        }
        tracing::info!(tasks = created.len(), new = any_new, "tasks created in a batch");
        let body = Json(TasksCreated {
            tasks: created
                .iter()
                .map(|created| TaskCreated::new(created.task_id.to_string()))
                .collect(),
        });
        if any_new {
            Ok(CreateManyResponse::Created(body))
        } else {
            Ok(CreateManyResponse::Repeated(body))
        }
    }

    /// List queued and running tasks
    ///
    /// Queued and running tasks, each list oldest first and at most `limit` long;
    /// `queued_total` and `running_total` say how many there are in all, so a list cut short
    /// shows. Ended tasks are not listed: ask for them by id.
    #[oai(path = "/tasks", method = "get", operation_id = "list_tasks")]
    async fn list_tasks(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        /// How many tasks each list may hold at most: 1 to 1000.
        #[oai(
            default = "default_list_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u32>,
    ) -> Result<ListResponse, Failure<ListErrors>> {
        // poem-openapi has enforced the range already; the spec and the
        // constants must agree, which a test checks.
        let limit = limit.0;
        let list = state.store.list(limit as usize).await?;
        Ok(ListResponse::Ok(Json(list.into())))
    }

    /// Get a task
    ///
    /// The task's status, title and times as SaveAny-Bot's contract has them, with savestream's
    /// own fields after them. Ended tasks stay readable for the retention period (a week by
    /// default).
    #[oai(path = "/tasks/:task_id", method = "get", operation_id = "get_task")]
    async fn get_task(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        /// The id `POST /api/v1/tasks` returned.
        task_id: Path<String>,
    ) -> Result<GetResponse, Failure<GetErrors>> {
        let task_id = parse_task_id(&task_id.0)?;
        record_task_id(&task_id);
        let record = state
            .store
            .get(&task_id)
            .await?
            .ok_or_else(|| ApiError::task_not_found(&task_id))?;
        Ok(GetResponse::Ok(Json(record.into())))
    }

    /// Cancel a task
    ///
    /// Cancels a queued or running task. A task that has already ended answers 409.
    #[oai(path = "/tasks/:task_id", method = "delete", operation_id = "cancel_task")]
    async fn cancel_task(
        &self,
        _authorized: Authorized,
        state: Data<&AppState>,
        /// The id `POST /api/v1/tasks` returned.
        task_id: Path<String>,
    ) -> Result<CancelResponse, Failure<CancelErrors>> {
        let task_id = parse_task_id(&task_id.0)?;
        record_task_id(&task_id);
        let previous = state.store.cancel(&task_id).await?;
        tracing::info!(task_id = %task_id, was = previous.as_str(), "task canceled");
        // The cancel answers with the previous status only; the source, which
        // labels the counter, is read back. A task's source never changes,
        // and the cancel has happened whatever this read answers.
        match state.store.get(&task_id).await {
            Ok(Some(record)) => crate::metrics::task_canceled(record.task.source),
            Ok(None) => {}
            Err(error) => {
                crate::metrics::redis_error();
                tracing::warn!(task_id = %task_id, %error, "canceled, but cannot read the task's source for the metrics");
            }
        }
        Ok(CancelResponse::Ok(Json(TaskCanceled::new())))
    }
}

fn default_list_limit() -> u32 {
    DEFAULT_LIST_LIMIT
}

/// The request's `Idempotency-Key`, checked.
fn idempotency_key_of(header: Header<Option<String>>, request: &Request) -> Result<Option<String>, ApiError> {
    // poem reads a header value that is not visible ASCII as absent; such a
    // key must be refused, not silently dropped (each repeat would then
    // create another task).
    if header.0.is_none() && request.headers().contains_key("idempotency-key") {
        return Err(invalid_idempotency_key());
    }
    check_idempotency_key(header.0)
}

/// A key that is absent is no key; a key that is given must be one a repeat
/// can match. An empty one (or only spaces, which HTTP parsers trim to
/// empty) is refused like any other bad key rather than read as absent:
/// a client sending it believes its retries are safe, and each would create
/// another task.
fn check_idempotency_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    match key {
        None => Ok(None),
        Some(key) if is_idempotency_key(&key, MAX_IDEMPOTENCY_KEY_LEN) => Ok(Some(key)),
        Some(_) => Err(invalid_idempotency_key()),
    }
}

fn invalid_idempotency_key() -> ApiError {
    ApiError::BadRequest(format!(
        "header `Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters: use a UUID, for example, or leave the header out"
    ))
}

/// A request body that reads itself from JSON, naming the field in every
/// error (`CreateTaskRequest::from_json`, `CreateTasksRequest::from_json`).
pub trait ReadBody: Type + Sized {
    /// The body's description in the OpenAPI document.
    const DESCRIPTION: &'static str;

    /// Registers the body's schema, with any rule the derive cannot state.
    fn register_schema(registry: &mut Registry);

    fn read(bytes: &[u8]) -> Result<Self, String>;
}

impl ReadBody for CreateTaskRequest {
    const DESCRIPTION: &'static str = "The task to create.";

    fn register_schema(registry: &mut Registry) {
        <CreateTaskRequest as Type>::register(registry);
    }

    fn read(bytes: &[u8]) -> Result<Self, String> {
        CreateTaskRequest::from_json(bytes)
    }
}

impl ReadBody for CreateTasksRequest {
    const DESCRIPTION: &'static str = "The tasks to create.";

    fn register_schema(registry: &mut Registry) {
        // Registers the single create's schema too: the tasks are its.
        <CreateTasksRequest as Type>::register(registry);
    }

    fn read(bytes: &[u8]) -> Result<Self, String> {
        CreateTasksRequest::from_json(bytes)
    }
}

/// A `POST` body read with [`ReadBody::read`].
///
/// poem-openapi's own `Json<T>` would do, but its errors name types rather
/// than fields, and it refuses bodies without a JSON `Content-Type`, which
/// SaveAny-Bot accepted (`curl -d` sends a form type). The OpenAPI document
/// still shows `T` as the body.
pub struct Body<T>(pub T);

impl<'a, T: ReadBody> ApiExtractor<'a> for Body<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register_schema(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some(T::DESCRIPTION),
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        _request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let bytes = body
            .take()?
            .into_bytes()
            .await
            .map_err(|error| ApiError::BadRequest(format!("cannot read the request body: {error}")))?;
        T::read(&bytes)
            .map(Body)
            .map_err(|message| ApiError::BadRequest(message).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_printable_ascii() {
        assert_eq!(check_idempotency_key(None).unwrap(), None);
        assert!(check_idempotency_key(Some(String::new())).is_err());
        assert!(check_idempotency_key(Some("   ".into())).is_err());
        assert_eq!(
            check_idempotency_key(Some("order 42".into())).unwrap().as_deref(),
            Some("order 42")
        );
        assert!(check_idempotency_key(Some("a".repeat(256))).is_err());
        assert!(check_idempotency_key(Some("tab\there".into())).is_err());
    }

    #[test]
    fn the_documented_limit_range_is_the_enforced_one() {
        let spec: serde_json::Value = serde_json::from_str(&crate::openapi_json()).unwrap();
        let parameters = spec["paths"]["/api/v1/tasks"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = parameters
            .iter()
            .find(|parameter| parameter["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["default"], DEFAULT_LIST_LIMIT);
        assert_eq!(limit["schema"]["maximum"], f64::from(MAX_LIST_LIMIT));
        assert_eq!(limit["schema"]["minimum"], 1.0);
    }
}
