//! [`ApiError`]: every way a request can fail, and the one place that maps
//! each to its status code and JSON body `{"error": "..."}` (its
//! `ResponseError` impl).
//!
//! Also here:
//! - [`Failure`] and [`ErrorSet`]: an `ApiError` as an operation's documented
//!   error responses, so each operation's OpenAPI entry lists the statuses it
//!   can really answer with, each with only the causes that apply to it;
//! - [`into_json_response`]: errors that poem and poem-openapi raise on their
//!   own (unknown path, wrong method, unparsable parameter) become `ApiError`s
//!   too, so no error leaves the server as plain text.

use std::marker::PhantomData;

use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError, ResponseError};
use poem::http::{header, Method, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::error::{ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::ApiResponse;
use savestream_shared::store::StoreError;
use savestream_shared::task::TaskId;

use crate::wire::ErrorBody;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const REDIS_UNAVAILABLE: &str =
    "the task store is unavailable (redis is not answering): try again in a few seconds";

/// [`REDIS_UNAVAILABLE`] said of a create. A store call that timed out may
/// still have run in Redis, so the client is not told that nothing changed:
/// only a repeat under the same key is sure not to make a second task.
const CREATE_UNAVAILABLE: &str =
    "the task store is unavailable (redis is not answering), so the task may or \
     may not have been created: try again in a few seconds with the same `Idempotency-Key` (without one, \
     a repeat may create a second task)";
const CREATE_MANY_UNAVAILABLE: &str =
    "the task store is unavailable (redis is not answering), so some or all \
     of the tasks may or may not have been created: try again in a few seconds with the same \
     `Idempotency-Key` and only the missing ones are created (without one, a repeat may create them twice)";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// `allow` is the `Allow` header's value: the methods the path answers.
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        allow: Option<&'static str>,
    },
    #[error("{0}")]
    Conflict(String),
    /// An `Idempotency-Key` repeated with a different request (422, as the
    /// IETF draft on the header answers it).
    #[error("{0}")]
    KeyReused(String),
    #[error("the request body is larger than {} KiB: send a smaller body", MAX_BODY_BYTES / 1024)]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    /// A status poem chose that none of the above covers (411, 414, ...).
    #[error("{message}")]
    Other { status: StatusCode, message: String },
    /// A bug or corrupt data: the details go to the log, not to the client.
    #[error("internal error: the api's log has the details")]
    Internal,
}

impl ApiError {
    pub fn task_not_found(task_id: &TaskId) -> ApiError {
        ApiError::NotFound(format!(
            "task {task_id} not found: it never existed, or it ended longer ago than the retention period"
        ))
    }

    pub fn store_unavailable() -> ApiError {
        ApiError::Unavailable(REDIS_UNAVAILABLE.to_owned())
    }

    /// A failed store call of `POST /api/v1/tasks` as its answer: an
    /// unavailable store says the task may have been created.
    pub fn from_create(error: StoreError) -> ApiError {
        match ApiError::from(error) {
            ApiError::Unavailable(_) => ApiError::Unavailable(CREATE_UNAVAILABLE.to_owned()),
            other => other,
        }
    }

    /// [`ApiError::from_create`] for `POST /api/v1/tasks/batch`.
    pub fn from_create_many(error: StoreError) -> ApiError {
        match ApiError::from(error) {
            ApiError::Unavailable(_) => ApiError::Unavailable(CREATE_MANY_UNAVAILABLE.to_owned()),
            other => other,
        }
    }

    /// The same refusal said of one task of a batch (`` `tasks[3]`: ... ``),
    /// so the client knows which task to fix.
    pub fn for_task(self, index: usize) -> ApiError {
        let named = |message: String| format!("`tasks[{index}]`: {message}");
        match self {
            ApiError::BadRequest(message) => ApiError::BadRequest(named(message)),
            ApiError::Forbidden(message) => ApiError::Forbidden(named(message)),
            ApiError::NotFound(message) => ApiError::NotFound(named(message)),
            ApiError::Conflict(message) => ApiError::Conflict(named(message)),
            ApiError::KeyReused(message) => ApiError::KeyReused(named(message)),
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Other { status, .. } => *status,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut response = Response::builder()
            .status(ApiError::status(self))
            .content_type("application/json; charset=utf-8");
        if matches!(self, ApiError::Unauthorized(_)) {
            response = response.header(header::WWW_AUTHENTICATE, "Bearer realm=\"savestream\"");
        }
        if matches!(self, ApiError::Unavailable(_)) {
            response = response.header(header::RETRY_AFTER, "5");
        }
        // RFC 9110 section 15.5.6: a 405 lists the methods the resource has.
        if let ApiError::MethodNotAllowed {
            allow: Some(allow), ..
        } = self
        {
            response = response.header(header::ALLOW, *allow);
        }
        response.body(body)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound(task_id) => ApiError::task_not_found(&task_id),
            StoreError::Ended { task_id, status } => ApiError::Conflict(format!(
                "task {task_id} has already ended ({status}): only queued or running tasks can be canceled"
            )),
            StoreError::IdempotencyKeyReused { first } => ApiError::KeyReused(format!(
                "this `Idempotency-Key` was used within the last 24 hours for another request, which \
                 created task {first}: a key stands for one request, so send this one with a new key \
                 (nothing was created)"
            )),
            StoreError::Unavailable(error) => {
                crate::metrics::redis_error();
                tracing::warn!(%error, "redis is unavailable");
                ApiError::store_unavailable()
            }
            other => {
                tracing::error!(error = %other, "task store error");
                ApiError::Internal
            }
        }
    }
}

/// The error statuses one operation documents, each with the causes that
/// apply to that operation.
pub trait ErrorSet: Send + Sync + 'static {
    /// Every status the operation may answer with besides 500 (which every
    /// operation may answer: see [`INTERNAL`]), with its description.
    const RESPONSES: &'static [(u16, &'static str)];
}

/// The 401 of every operation that takes [`crate::auth::Authorized`].
pub const UNAUTHORIZED: &str =
    "The `Authorization: Bearer <token>` header is missing or holds the wrong token.";

/// The 404 of the operations on `/api/v1/tasks/{task_id}`.
pub const TASK_NOT_FOUND: &str =
    "No such task: it was never created, the id is malformed, or it ended longer ago than the \
     retention period.";

/// The 413 of the operations that take a body.
pub const BODY_TOO_LARGE: &str = "The request body is larger than 64 KiB.";

/// The 422 of the creates.
pub const KEY_REUSED: &str =
    "The `Idempotency-Key` was used within the last 24 hours for a different request (another \
     link, user, storage or directory); `error` names the task it created. Nothing was created: \
     send a new request with a new key.";

/// The 503 of the operations that only read.
pub const STORE_UNAVAILABLE: &str =
    "Redis, which holds the tasks, is not answering; retry after a few seconds.";

/// The 500 every operation may answer with.
const INTERNAL: &str =
    "An unexpected error in the API: data in Redis it cannot read, or a bug. `error` says only \
     that; the API's log has the details. Repeating the request gives the same answer until the \
     cause is fixed.";

/// An [`ApiError`] returned by an operation whose possible errors are `S`.
/// It answers exactly as the `ApiError` would; `S` only shapes the docs.
#[derive(Debug)]
pub struct Failure<S: ErrorSet> {
    error: ApiError,
    set: PhantomData<S>,
}

impl<S: ErrorSet> From<ApiError> for Failure<S> {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            set: PhantomData,
        }
    }
}

impl<S: ErrorSet> From<StoreError> for Failure<S> {
    fn from(error: StoreError) -> Self {
        Failure::from(ApiError::from(error))
    }
}

impl<S: ErrorSet> From<Failure<S>> for poem::Error {
    fn from(failure: Failure<S>) -> poem::Error {
        poem::Error::from(failure.error)
    }
}

impl<S: ErrorSet> IntoResponse for Failure<S> {
    fn into_response(self) -> Response {
        self.error.as_response()
    }
}

impl<S: ErrorSet> ApiResponse for Failure<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            // Every operation may answer 500: a record it cannot read, a bug.
            responses: S::RESPONSES
                .iter()
                .chain(&[(500, INTERNAL)])
                .map(|&(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// Turns any error into its JSON response. `ApiError`s answer for
/// themselves; errors raised by poem or poem-openapi are translated first.
pub fn into_json_response(error: poem::Error, method: &Method, path: &str) -> Response {
    if let Some(api_error) = error.downcast_ref::<ApiError>() {
        return api_error.as_response();
    }
    translate(&error, method, path).as_response()
}

fn translate(error: &poem::Error, method: &Method, path: &str) -> ApiError {
    if error.is::<NotFoundError>() {
        return ApiError::NotFound(format!(
            "no such endpoint: {path}: see /docs for the endpoints this API has"
        ));
    }
    if error.is::<MethodNotAllowedError>() {
        let allow = crate::routes::allowed_methods(path);
        let message = match allow {
            Some(allow) => format!("{method} is not allowed on {path}: use one of {allow}"),
            None => {
                format!("{method} is not allowed on {path}: see /docs for the methods each endpoint takes")
            }
        };
        return ApiError::MethodNotAllowed { message, allow };
    }
    if let Some(param) = error.downcast_ref::<ParseParamError>() {
        return ApiError::BadRequest(format!(
            "parameter `{}` {}",
            param.name,
            describe_parse_reason(&param.reason)
        ));
    }
    if let Some(param) = error.downcast_ref::<ParsePathError>() {
        return ApiError::BadRequest(format!(
            "path parameter `{}` {}",
            param.name,
            describe_parse_reason(&param.reason)
        ));
    }
    if let Some(payload) = error.downcast_ref::<ParseRequestPayloadError>() {
        return ApiError::BadRequest(format!("the request body is not valid: {}", payload.reason));
    }
    if let Some(content_type) = error.downcast_ref::<ContentTypeError>() {
        return ApiError::BadRequest(format!("{content_type}: send `Content-Type: application/json`"));
    }
    if let Some(ReadBodyError::PayloadTooLarge) = error.downcast_ref::<ReadBodyError>() {
        return ApiError::PayloadTooLarge;
    }
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(%error, %status, "request failed");
        return ApiError::Internal;
    }
    ApiError::Other {
        status,
        message: error.to_string(),
    }
}

/// poem-openapi's parse messages name types (`Type "integer(int64)" expects
/// an input value.`); say it in terms of the request instead.
fn describe_parse_reason(reason: &str) -> String {
    if reason.contains("expects an input value") {
        return "is missing: add it to the request".to_owned();
    }
    // A validator's refusal: `verification failed. maximum(1000, exclusive: false)`.
    if let Some(validator) = reason.strip_prefix("verification failed. ") {
        let bound = |prefix: &str| {
            validator
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once(','))
                .map(|(number, _)| number.to_owned())
        };
        if let Some(maximum) = bound("maximum(") {
            return format!("must be at most {maximum}");
        }
        if let Some(minimum) = bound("minimum(") {
            return format!("must be at least {minimum}");
        }
        return format!("is out of range ({validator})");
    }
    let reason = reason.trim_end_matches('.');
    match reason.strip_prefix("failed to parse \"") {
        Some(rest) => match rest.split_once("\": ") {
            Some((kind, why)) => format!("is not a valid {kind}: {why}"),
            None => format!("is not valid: {reason}"),
        },
        None => format!("is not valid: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reasons_are_said_in_terms_of_the_request() {
        assert_eq!(
            describe_parse_reason(r#"Type "integer(int64)" expects an input value."#),
            "is missing: add it to the request"
        );
        assert_eq!(
            describe_parse_reason(r#"failed to parse "integer(uint32)": invalid digit found in string"#),
            "is not a valid integer(uint32): invalid digit found in string"
        );
        assert_eq!(
            describe_parse_reason("verification failed. maximum(1000, exclusive: false)"),
            "must be at most 1000"
        );
        assert_eq!(
            describe_parse_reason("verification failed. minimum(1, exclusive: false)"),
            "must be at least 1"
        );
    }

    #[test]
    fn api_errors_answer_with_their_status_and_a_json_body() {
        let response = ApiError::NotFound("task x not found".into()).as_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json; charset=utf-8"
        );
        let response = ApiError::Unauthorized("no").as_response();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn a_wrong_method_answers_405_with_the_paths_methods_in_allow() {
        let response = into_json_response(MethodNotAllowedError.into(), &Method::PUT, "/api/v1/tasks");

        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET, HEAD, POST");
    }
}
